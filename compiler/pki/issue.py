"""Issue the cluster PKI: every CA, leaf certificate and the service-account key pair.

Reads `spec.pki` (keyAlgorithm, caValidityDays, certValidityDays), `spec.nodes` (names, roles,
IPs), `spec.controlPlane` (endpoint host, certSANs) and `spec.network` (first address of
each service range, clusterDomain). Writes no node paths: compiler.pki.place decides which node
receives what.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from compiler.errors import StateError
from compiler.model import LOCAL_API_SERVER_PROXY_HOST, Cluster, IPAddress, KeyAlgorithm, Node
from compiler.pki.bundle import IssuedCert, KeyPair, PkiBundle
from compiler.pki.inventory import CERTIFICATES, CertificateSpec, ExtendedUsage, SanRule

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Clock = Callable[[], datetime]
KeyGenerator = Callable[[KeyAlgorithm], PrivateKey]

# kubeadm backdates every certificate by 5 minutes so that nodes whose clocks run a little
# behind accept it at once.
BACKDATE = timedelta(minutes=5)
# Serial numbers are random in [1, 2**63 - 1), the range kubeadm uses.
SERIAL_LIMIT = 2**63 - 1
RSA_PUBLIC_EXPONENT = 65537
# A leaf is reissued during the last 30 days of its life (kubeadm warns at 30 days as well).
DEFAULT_RENEW_BEFORE = timedelta(days=30)

EC_CURVES: dict[KeyAlgorithm, ec.EllipticCurve] = {
    "ecdsa-p256": ec.SECP256R1(),
    "ecdsa-p384": ec.SECP384R1(),
}
RSA_KEY_SIZES: dict[KeyAlgorithm, int] = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}

EXTENDED_USAGE_OIDS: dict[ExtendedUsage, x509.ObjectIdentifier] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def generate_private_key(algorithm: KeyAlgorithm) -> PrivateKey:
    """Generate a new private key of one of the description's key algorithms."""
    if algorithm in EC_CURVES:
        return ec.generate_private_key(EC_CURVES[algorithm])
    if algorithm in RSA_KEY_SIZES:
        return rsa.generate_private_key(RSA_PUBLIC_EXPONENT, RSA_KEY_SIZES[algorithm])
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """Return the signature hash for a signing key: SHA-384 for P-384, else SHA-256.

    These are Go's crypto/x509 defaults for the key types kubecc generates.
    """
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def encode_private_key(key: PrivateKey) -> bytes:
    """Encode a key as PEM: SEC1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY"."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())


@dataclass(frozen=True)
class Signer:
    """A CA as leaves need it: subject, key, key identifier and end of validity."""

    subject: x509.Name
    key: PrivateKey
    key_identifier: x509.SubjectKeyIdentifier
    not_after: datetime


@dataclass(frozen=True)
class IssueContext:
    """Values shared by every certificate of one build."""

    cluster: Cluster
    now: datetime
    keys: KeyGenerator


def build_pki(
    cluster: Cluster, clock: Clock = utc_now, keys: KeyGenerator = generate_private_key
) -> PkiBundle:
    """Issue every certificate of the inventory for a cluster, CAs first, and the SA key pair.

    `clock` must return an aware datetime, and `keys` generates one private key per call.
    """
    return renew_pki(cluster, Previous(), clock, keys).bundle


@dataclass(frozen=True)
class Previous:
    """Certificates and keys of an earlier build, read from the state; empty for a first build."""

    certs: Mapping[tuple[str, str | None], IssuedCert] = field(default_factory=dict)
    service_account: KeyPair | None = None
    renew_before: timedelta = DEFAULT_RENEW_BEFORE
    # Names (with node) that must be reissued whatever their state, as `certs renew` requests.
    force: frozenset[tuple[str, str | None]] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not self.certs and self.service_account is None


@dataclass(frozen=True)
class Issuance:
    """One certificate this build issued, and why."""

    name: str
    node: str | None
    reason: str


@dataclass(frozen=True)
class PkiResult:
    bundle: PkiBundle
    issued: tuple[Issuance, ...]
    warnings: tuple[str, ...]


def renew_pki(
    cluster: Cluster,
    previous: Previous,
    clock: Clock = utc_now,
    keys: KeyGenerator = generate_private_key,
) -> PkiResult:
    """Reuse every previous certificate that still fits the cluster; issue the rest.

    A leaf is reused while its subject, SANs, usages, signer and key algorithm match and it is
    outside the renewal window. A CA is always reused: a missing one in a non-empty state is
    an error, because every running node trusts the old CA.
    """
    context = IssueContext(cluster, read_clock(clock), keys)
    signers: dict[str, Signer] = {}
    signer_certs: dict[str, x509.Certificate] = {}
    certs: dict[tuple[str, str | None], IssuedCert] = {}
    issued: list[Issuance] = []
    warnings: list[str] = []

    for spec in CERTIFICATES:
        subjects = list_subjects(spec, cluster, cluster.control_planes)
        if not subjects:
            continue
        signer = signers[spec.signer] if spec.signer is not None else None
        signer_cert = signer_certs[spec.signer] if spec.signer is not None else None
        for node in subjects:
            key = (spec.name, node.name if spec.is_per_node and node is not None else None)
            old = previous.certs.get(key)
            if spec.is_ca:
                current = reuse_ca(context, spec, old, previous, warnings)
            else:
                reason = reissue_reason(context, spec, node, signer_cert, old, previous)
                current = old if reason is None and old is not None else issue_certificate(
                    context, spec, node, signer
                )
                if reason is not None:
                    issued.append(Issuance(spec.name, key[1], reason))
            certs[key] = current
            if spec.is_ca:
                signers[spec.name] = build_signer(current)
                signer_certs[spec.name] = current.certificate
                if old is None:
                    issued.append(Issuance(spec.name, None, "new"))

    service_account = reuse_service_account(context, previous)
    return PkiResult(
        PkiBundle(certs=certs, service_account=service_account), tuple(issued), tuple(warnings)
    )


def reuse_ca(
    context: IssueContext,
    spec: CertificateSpec,
    old: IssuedCert | None,
    previous: Previous,
    warnings: list[str],
) -> IssuedCert:
    if old is None:
        if not previous.is_empty:
            raise StateError(
                "the state", f"has no {spec.name} certificate although it has other keys",
                "restore the state from your backup; a new CA would break every running node",
            )
        return issue_certificate(context, spec, None, None)
    if not is_ca_certificate(old.certificate, build_subject(spec, None)):
        raise StateError(
            "the state", f"has a {spec.name} entry that is not the self-signed {spec.name} CA "
            "certificate", "restore the state from your backup",
        )
    expires = old.certificate.not_valid_after_utc
    if context.now >= expires - previous.renew_before:
        warnings.append(
            f"CA {spec.name} expires on {expires:%Y-%m-%d}; kubecc does not rotate CAs yet, "
            "so plan a new cluster or a manual CA rotation before then"
        )
    return old


def is_ca_certificate(certificate: x509.Certificate, subject: x509.Name) -> bool:
    """Return True for a self-signed CA certificate with the given subject."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return (
        constraints.value.ca and certificate.subject == subject and certificate.issuer == subject
    )


def reuse_service_account(context: IssueContext, previous: Previous) -> KeyPair:
    if previous.service_account is not None:
        return previous.service_account
    if not previous.is_empty:
        raise StateError(
            "the state", "has no service-account key although it has certificates",
            "restore the state from your backup; a new key would invalidate every "
            "service-account token",
        )
    return build_service_account(context)


def reissue_reason(
    context: IssueContext,
    spec: CertificateSpec,
    node: Node | None,
    signer_cert: x509.Certificate | None,
    old: IssuedCert | None,
    previous: Previous,
) -> str | None:
    """Return why a leaf must be issued anew, or None when the previous one still fits."""
    if old is None:
        return "new"
    if (spec.name, old.node) in previous.force:
        return "renewal requested"
    certificate = old.certificate
    if certificate.subject != build_subject(spec, node.name if node is not None else None):
        return "subject changed"
    if set(read_alt_names(certificate)) != set(build_alt_names(spec, context.cluster, node)):
        return "subject alternative names changed"
    if read_usages(certificate) != [EXTENDED_USAGE_OIDS[usage] for usage in spec.usages]:
        return "usages changed"
    if signer_cert is None or not signed_by(certificate, signer_cert):
        return "signer changed"
    if key_algorithm_of(old.private_key) != context.cluster.pki.key_algorithm:
        return f"key algorithm changed to {context.cluster.pki.key_algorithm}"
    expires = certificate.not_valid_after_utc
    if context.now >= expires - previous.renew_before:
        days = previous.renew_before.days
        return f"expires on {expires:%Y-%m-%d}, within the {days}-day renewal window"
    return None


def read_alt_names(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value)



def read_usages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Return True when the issuer's name and key identifier match the certificate's.

    The state's checksum already guards against edits, so comparing the authority key
    identifier is enough to notice a changed CA, and far cheaper than checking 5,000
    signatures.
    """
    if certificate.issuer != issuer.subject:
        return False
    try:
        authority = certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
        subject = issuer.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return False
    return authority == subject


def key_algorithm_of(key: CertificateIssuerPrivateKeyTypes) -> KeyAlgorithm | None:
    """Return the description's name of a key's algorithm, or None for another kind of key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        for name, curve in EC_CURVES.items():
            if isinstance(key.curve, type(curve)):
                return name
    if isinstance(key, rsa.RSAPrivateKey):
        for name, size in RSA_KEY_SIZES.items():
            if key.key_size == size:
                return name
    return None


def read_clock(clock: Clock) -> datetime:
    now = clock()
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("the PKI clock returned a naive datetime; expected an aware one")
    # X.509 times have one-second resolution; dropping microseconds keeps NotBefore exact.
    return now.astimezone(UTC).replace(microsecond=0)


def list_subjects(
    spec: CertificateSpec, cluster: Cluster, control_planes: tuple[Node, ...]
) -> Sequence[Node | None]:
    """Return the nodes one entry is issued for. None is a single cluster-wide entry.

    An entry of stacked etcd has no subjects when the cluster uses external etcd.
    """
    if spec.stacked_etcd_only and cluster.external_etcd is not None:
        return ()
    if spec.scope == "nodes":
        return cluster.nodes
    if spec.scope == "control-planes":
        return control_planes
    return (None,)


def build_signer(issued: IssuedCert) -> Signer:
    key = issued.private_key
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return Signer(
        subject=issued.certificate.subject,
        key=key,
        key_identifier=x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        not_after=issued.certificate.not_valid_after_utc,
    )


def issue_certificate(
    context: IssueContext, spec: CertificateSpec, node: Node | None, signer: Signer | None
) -> IssuedCert:
    """Generate a key and sign one certificate. A CA (signer None) signs itself."""
    pki = context.cluster.pki
    key = context.keys(pki.key_algorithm)
    node_name = node.name if node is not None else None
    subject = build_subject(spec, node_name)
    days = pki.ca_validity_days if spec.is_ca else pki.cert_validity_days
    not_after = context.now + timedelta(days=days)
    if signer is not None:
        # A leaf never outlives its CA, even when certValidityDays exceeds caValidityDays.
        not_after = min(not_after, signer.not_after)

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.subject if signer is not None else subject)
        .public_key(key.public_key())
        .serial_number(1 + secrets.randbelow(SERIAL_LIMIT - 1))
        .not_valid_before(context.now - BACKDATE)
        .not_valid_after(not_after)
    )
    for extension, critical in build_extensions(context.cluster, spec, node, key, signer):
        builder = builder.add_extension(extension, critical=critical)
    signing_key = signer.key if signer is not None else key
    certificate = builder.sign(signing_key, signature_hash(signing_key))

    return IssuedCert(
        name=spec.name,
        node=node_name if spec.is_per_node else None,
        certificate=certificate,
        private_key=key,
        cert_pem=certificate.public_bytes(Encoding.PEM),
        key_pem=encode_private_key(key),
    )


def build_subject(spec: CertificateSpec, node_name: str | None) -> x509.Name:
    """Build the subject: organizations first, then the CN (Go's attribute order)."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in spec.organizations]
    attributes.append(
        x509.NameAttribute(NameOID.COMMON_NAME, spec.subject_common_name(node_name))
    )
    return x509.Name(attributes)


def build_extensions(
    cluster: Cluster,
    spec: CertificateSpec,
    node: Node | None,
    key: PrivateKey,
    signer: Signer | None,
) -> Iterator[tuple[x509.ExtensionType, bool]]:
    """Yield (extension, critical) pairs: constraints, usages, key identifiers and SANs."""
    yield x509.BasicConstraints(ca=spec.is_ca, path_length=0 if spec.is_ca else None), True
    yield build_key_usage(spec.is_ca, key), True
    if spec.usages:
        yield x509.ExtendedKeyUsage([EXTENDED_USAGE_OIDS[usage] for usage in spec.usages]), False
    yield x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
    if signer is not None:
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            signer.key_identifier
        )
        yield authority, False
    names = build_alt_names(spec, cluster, node)
    if names:
        yield x509.SubjectAlternativeName(names), False


def build_key_usage(is_ca: bool, key: PrivateKey) -> x509.KeyUsage:
    """Build key usage: CAs sign certificates and CRLs, and RSA leaves also encipher keys."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        # RSA key exchange (TLS 1.2 and earlier) encrypts the premaster secret to the key.
        key_encipherment=not is_ca and isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def build_alt_names(
    spec: CertificateSpec, cluster: Cluster, node: Node | None
) -> list[x509.GeneralName]:
    """Build the subjectAltName entries that the entry's SAN rule names."""
    rule: SanRule = spec.sans
    if rule == "ca-name":
        return [x509.DNSName(spec.subject_common_name(None))]
    if rule == "none":
        return []
    assert node is not None, f"SAN rule {rule} needs a node"
    if rule == "apiserver":
        return build_apiserver_names(cluster, node)
    if rule == "etcd-member":
        return unique_names([node.name, "localhost"], [*node.ips, "127.0.0.1", "::1"])
    return unique_names([node.name], node.ips)


def build_apiserver_names(cluster: Cluster, node: Node) -> list[x509.GeneralName]:
    """Build the API server's names: Service names and IP, the node, endpoint and certSANs.

    Without an endpoint, the names of the workers' local proxy (localhost, 127.0.0.1) replace it.
    """
    service_name = "kubernetes.default.svc"
    dns = [
        "kubernetes",
        "kubernetes.default",
        service_name,
        f"{service_name}.{cluster.network.cluster_domain}",
        node.name,
    ]
    # Dual-stack: the first address of the secondary service range too. Clients use the
    # primary one, which kubeadm's certificate carries alone, so the extra SAN costs nothing.
    ips: list[IPAddress | str] = [*cluster.network.first_service_ips, *node.ips]
    if cluster.endpoint is None:
        # Workers dial https://127.0.0.1:6443, their kube-apiserver-proxy, which passes the TLS
        # connection through to this server unchanged.
        dns.append("localhost")
        ips.append(LOCAL_API_SERVER_PROXY_HOST)
    balanced = () if cluster.endpoint is None else (cluster.endpoint.host,)
    for host in (*balanced, *cluster.cert_sans):
        (ips if is_ip_address(host) else dns).append(host)
    return unique_names(dns, ips)


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def unique_names(
    dns_names: Iterable[str], addresses: Iterable[IPAddress | str]
) -> list[x509.GeneralName]:
    """Build DNS then IP entries in the given order, dropping repeats (case-insensitive DNS)."""
    names: list[x509.GeneralName] = []
    seen_dns: set[str] = set()
    for name in dns_names:
        if name.lower() not in seen_dns:
            seen_dns.add(name.lower())
            names.append(x509.DNSName(name))
    seen_ips: set[IPAddress] = set()
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address not in seen_ips:
            seen_ips.add(address)
            names.append(x509.IPAddress(address))
    return names


def build_service_account(context: IssueContext) -> KeyPair:
    """Generate the service-account key pair: private key PEM and PKIX "PUBLIC KEY" PEM."""
    key = context.keys(context.cluster.pki.key_algorithm)
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private_key_pem=encode_private_key(key), public_key_pem=public)
