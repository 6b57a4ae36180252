"""PKI: the inventory table, issued certificates, key algorithms, validity and placement."""

from __future__ import annotations

import base64
import dataclasses
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from compiler import paths
from compiler.model import Cluster, KeyAlgorithm, Node
from compiler.pki import bundle, inventory
from compiler.pki.bundle import PkiBundle
from compiler.pki.issue import PrivateKey, build_pki, generate_private_key
from compiler.pki.place import build_pki_files
from compiler.render.kubeconfig import build_kubeconfig_files
from tests.conftest import MINIMAL, cluster_from_text, example_cluster

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    return NOW


def issue(cluster: Cluster) -> PkiBundle:
    return build_pki(cluster, clock=fixed_clock)


def with_pki_settings(cluster: Cluster, **changes: Any) -> Cluster:
    return dataclasses.replace(cluster, pki=dataclasses.replace(cluster.pki, **changes))


# ---------------------------------------------------------------------------------------------
# Parsing helpers

PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----\r?\n?", re.S)


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Split PEM data into (label, whole block) pairs. Fail on any text between blocks."""
    blocks = []
    position = 0
    for match in PEM_BLOCK.finditer(data):
        assert data[position:match.start()].strip() == b"", "text outside PEM blocks"
        blocks.append((match.group(1).decode(), match.group(0)))
        position = match.end()
    assert data[position:].strip() == b"", "text outside PEM blocks"
    return blocks


def common_names(name: x509.Name) -> list[str]:
    return [str(attribute.value) for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def organizations(name: x509.Name) -> list[str]:
    return [
        str(attribute.value)
        for attribute in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    ]


EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def extended_usages(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(EKU_NAMES.get(oid, oid.dotted_string) for oid in usages)


def key_usages(cert: x509.Certificate) -> set[str]:
    extension = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert extension.critical
    usage = extension.value
    flags = {
        "digitalSignature": usage.digital_signature,
        "contentCommitment": usage.content_commitment,
        "keyEncipherment": usage.key_encipherment,
        "dataEncipherment": usage.data_encipherment,
        "keyAgreement": usage.key_agreement,
        "keyCertSign": usage.key_cert_sign,
        "cRLSign": usage.crl_sign,
    }
    return {name for name, enabled in flags.items() if enabled}


def alt_names(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [f"DNS:{name}" for name in sans.get_values_for_type(x509.DNSName)]
    ips = [f"IP:{address}" for address in sans.get_values_for_type(x509.IPAddress)]
    return dns + ips


def public_der(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# ---------------------------------------------------------------------------------------------
# The inventory table


def test_inventory_names_unique() -> None:
    names = [spec.name for spec in inventory.CERTIFICATES]
    assert len(names) == len(set(names))


def test_inventory_names_match_bundle() -> None:
    assert {spec.name for spec in inventory.CERTIFICATES} == {
        bundle.CA, bundle.FRONT_PROXY_CA, bundle.ETCD_CA, bundle.APISERVER,
        bundle.APISERVER_KUBELET_CLIENT, bundle.FRONT_PROXY_CLIENT, bundle.ETCD_SERVER,
        bundle.ETCD_PEER, bundle.ETCD_HEALTHCHECK_CLIENT, bundle.APISERVER_ETCD_CLIENT,
        bundle.ADMIN, bundle.BOOTSTRAP_ADMIN, bundle.CONTROLLER_MANAGER, bundle.SCHEDULER,
        bundle.KUBELET_CLIENT, bundle.KUBELET_SERVING, bundle.KUBE_PROXY,
    }


def test_inventory_signers_come_first() -> None:
    seen: dict[str, inventory.CertificateSpec] = {}
    for spec in inventory.CERTIFICATES:
        if spec.signer is not None:
            assert spec.signer in seen, f"{spec.name} is signed by {spec.signer}, not listed before it"
            assert seen[spec.signer].is_ca, f"{spec.name} is signed by the leaf {spec.signer}"
        seen[spec.name] = spec


def test_inventory_cas_first() -> None:
    kinds = [spec.is_ca for spec in inventory.CERTIFICATES]
    assert kinds == sorted(kinds, reverse=True)
    assert kinds.count(True) == 3


@pytest.mark.parametrize("spec", [s for s in inventory.CERTIFICATES if s.is_ca], ids=lambda s: s.name)
def test_inventory_ca_shape(spec: inventory.CertificateSpec) -> None:
    assert spec.signer is None
    assert spec.usages == ()
    assert spec.sans == "ca-name"
    assert spec.scope == "cluster"
    assert "{node}" not in spec.common_name


@pytest.mark.parametrize("spec", inventory.CERTIFICATES, ids=lambda s: s.name)
def test_inventory_entry_consistent(spec: inventory.CertificateSpec) -> None:
    if "{node}" in spec.common_name:
        assert spec.is_per_node
    if spec.cert_on != "nowhere":
        assert spec.cert_path is not None
    if spec.key_on != "nowhere":
        assert spec.key_path is not None
    if not spec.is_ca:
        assert spec.usages, "a leaf needs an extended key usage"
    assert inventory.entry(spec.name) is spec


def test_inventory_paths_unique() -> None:
    placed: list[str] = []
    for spec in inventory.CERTIFICATES:
        placed.extend(path for path in {spec.cert_path, spec.key_path} if path is not None)
    placed += [inventory.SERVICE_ACCOUNT.key_path, inventory.SERVICE_ACCOUNT.public_key_path]
    assert len(placed) == len(set(placed))


def test_inventory_unknown_entry() -> None:
    with pytest.raises(KeyError, match="certificate nope is not in the inventory"):
        inventory.entry("nope")


# ---------------------------------------------------------------------------------------------
# Issued certificates against a literal table

CA_USAGE = {"digitalSignature", "keyCertSign", "cRLSign"}
EC_LEAF_USAGE = {"digitalSignature"}
RSA_LEAF_USAGE = {"digitalSignature", "keyEncipherment"}
SERVER = ("serverAuth",)
CLIENT = ("clientAuth",)
BOTH = ("serverAuth", "clientAuth")

# (name, node, subject CN, subject O, issuer CN, extended key usages, SANs)
Row = tuple[str, str | None, str, tuple[str, ...], str, tuple[str, ...], tuple[str, ...]]

CLUSTER_WIDE: list[Row] = [
    ("ca", None, "kubernetes", (), "kubernetes", (), ("DNS:kubernetes",)),
    ("front-proxy-ca", None, "front-proxy-ca", (), "front-proxy-ca", (), ("DNS:front-proxy-ca",)),
    ("etcd-ca", None, "etcd-ca", (), "etcd-ca", (), ("DNS:etcd-ca",)),
    ("apiserver-kubelet-client", None, "kube-apiserver-kubelet-client", (), "kubernetes", CLIENT, ()),
    ("front-proxy-client", None, "front-proxy-client", (), "front-proxy-ca", CLIENT, ()),
    ("etcd-healthcheck-client", None, "kube-etcd-healthcheck-client", (), "etcd-ca", CLIENT, ()),
    ("apiserver-etcd-client", None, "kube-apiserver-etcd-client", (), "etcd-ca", CLIENT, ()),
    ("admin", None, "kubernetes-admin", ("kubecc:cluster-admins",), "kubernetes", CLIENT, ()),
    ("bootstrap-admin", None, "kubecc:bootstrap", ("system:masters",), "kubernetes", CLIENT, ()),
    ("controller-manager", None, "system:kube-controller-manager", (), "kubernetes", CLIENT, ()),
    ("scheduler", None, "system:kube-scheduler", (), "kubernetes", CLIENT, ()),
]

SERVICE_NAMES = ("DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                 "DNS:kubernetes.default.svc.cluster.local")

HARD_WAY: list[Row] = [*CLUSTER_WIDE,
    ("apiserver", "server", "kube-apiserver", (), "kubernetes", SERVER,
     (*SERVICE_NAMES, "DNS:server", "IP:10.32.0.1", "IP:10.240.0.10")),
    ("etcd-server", "server", "server", (), "etcd-ca", BOTH,
     ("DNS:server", "DNS:localhost", "IP:10.240.0.10", "IP:127.0.0.1", "IP:::1")),
    ("etcd-peer", "server", "server", (), "etcd-ca", BOTH,
     ("DNS:server", "DNS:localhost", "IP:10.240.0.10", "IP:127.0.0.1", "IP:::1")),
    ("kubelet-client", "server", "system:node:server", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-serving", "server", "system:node:server", ("system:nodes",), "kubernetes", SERVER, ("DNS:server", "IP:10.240.0.10")),
    ("kube-proxy", "server", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kubelet-client", "node-0", "system:node:node-0", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-serving", "node-0", "system:node:node-0", ("system:nodes",), "kubernetes", SERVER, ("DNS:node-0", "IP:10.240.0.20")),
    ("kube-proxy", "node-0", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kubelet-client", "node-1", "system:node:node-1", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-serving", "node-1", "system:node:node-1", ("system:nodes",), "kubernetes", SERVER, ("DNS:node-1", "IP:10.240.0.21")),
    ("kube-proxy", "node-1", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
]

HA: list[Row] = [*CLUSTER_WIDE,
    ("apiserver", "cp-1", "kube-apiserver", (), "kubernetes", SERVER,
     (*SERVICE_NAMES, "DNS:cp-1", "DNS:lb.example.internal", "IP:10.32.0.1", "IP:10.0.1.10")),
    ("apiserver", "cp-2", "kube-apiserver", (), "kubernetes", SERVER,
     (*SERVICE_NAMES, "DNS:cp-2", "DNS:lb.example.internal", "IP:10.32.0.1", "IP:10.0.1.11")),
    ("apiserver", "cp-3", "kube-apiserver", (), "kubernetes", SERVER,
     (*SERVICE_NAMES, "DNS:cp-3", "DNS:lb.example.internal", "IP:10.32.0.1", "IP:10.0.1.12")),
    ("etcd-server", "cp-1", "cp-1", (), "etcd-ca", BOTH, ("DNS:cp-1", "DNS:localhost", "IP:10.0.1.10", "IP:127.0.0.1", "IP:::1")),
    ("etcd-server", "cp-2", "cp-2", (), "etcd-ca", BOTH, ("DNS:cp-2", "DNS:localhost", "IP:10.0.1.11", "IP:127.0.0.1", "IP:::1")),
    ("etcd-server", "cp-3", "cp-3", (), "etcd-ca", BOTH, ("DNS:cp-3", "DNS:localhost", "IP:10.0.1.12", "IP:127.0.0.1", "IP:::1")),
    ("etcd-peer", "cp-1", "cp-1", (), "etcd-ca", BOTH, ("DNS:cp-1", "DNS:localhost", "IP:10.0.1.10", "IP:127.0.0.1", "IP:::1")),
    ("etcd-peer", "cp-2", "cp-2", (), "etcd-ca", BOTH, ("DNS:cp-2", "DNS:localhost", "IP:10.0.1.11", "IP:127.0.0.1", "IP:::1")),
    ("etcd-peer", "cp-3", "cp-3", (), "etcd-ca", BOTH, ("DNS:cp-3", "DNS:localhost", "IP:10.0.1.12", "IP:127.0.0.1", "IP:::1")),
    ("kubelet-client", "cp-1", "system:node:cp-1", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-client", "cp-2", "system:node:cp-2", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-client", "cp-3", "system:node:cp-3", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-client", "worker-1", "system:node:worker-1", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-client", "worker-2", "system:node:worker-2", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-client", "worker-3", "system:node:worker-3", ("system:nodes",), "kubernetes", CLIENT, ()),
    ("kubelet-serving", "cp-1", "system:node:cp-1", ("system:nodes",), "kubernetes", SERVER, ("DNS:cp-1", "IP:10.0.1.10")),
    ("kubelet-serving", "cp-2", "system:node:cp-2", ("system:nodes",), "kubernetes", SERVER, ("DNS:cp-2", "IP:10.0.1.11")),
    ("kubelet-serving", "cp-3", "system:node:cp-3", ("system:nodes",), "kubernetes", SERVER, ("DNS:cp-3", "IP:10.0.1.12")),
    ("kubelet-serving", "worker-1", "system:node:worker-1", ("system:nodes",), "kubernetes", SERVER, ("DNS:worker-1", "IP:10.0.1.20")),
    ("kubelet-serving", "worker-2", "system:node:worker-2", ("system:nodes",), "kubernetes", SERVER, ("DNS:worker-2", "IP:10.0.1.21")),
    ("kubelet-serving", "worker-3", "system:node:worker-3", ("system:nodes",), "kubernetes", SERVER, ("DNS:worker-3", "IP:10.0.1.22")),
    ("kube-proxy", "cp-1", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kube-proxy", "cp-2", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kube-proxy", "cp-3", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kube-proxy", "worker-1", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kube-proxy", "worker-2", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
    ("kube-proxy", "worker-3", "system:kube-proxy", (), "kubernetes", CLIENT, ()),
]

EXPECTED = {"hard-way": HARD_WAY, "ha": HA}
ISSUERS = {"kubernetes": "ca", "front-proxy-ca": "front-proxy-ca", "etcd-ca": "etcd-ca"}
ROW_CASES = [(example, row) for example, rows in EXPECTED.items() for row in rows]


def row_id(case: tuple[str, Row]) -> str:
    example, row = case
    return f"{example}-{row[0]}" + (f"-{row[1]}" if row[1] else "")


@pytest.mark.parametrize("example_name", sorted(EXPECTED))
def test_issued_set_matches_table(
    issued: dict[str, tuple[Cluster, PkiBundle]], example_name: str
) -> None:
    _, pki = issued[example_name]
    assert set(pki.certs) == {(row[0], row[1]) for row in EXPECTED[example_name]}


@pytest.mark.parametrize("case", ROW_CASES, ids=[row_id(case) for case in ROW_CASES])
def test_issued_certificate_fields(
    issued: dict[str, tuple[Cluster, PkiBundle]], case: tuple[str, Row]
) -> None:
    example_name, (name, node, cn, orgs, issuer_cn, ekus, sans) = case
    _, pki = issued[example_name]
    cert = load_cert(pki.cert(name, node).cert_pem)
    is_ca = name in ISSUERS.values()

    assert common_names(cert.subject) == [cn]
    assert organizations(cert.subject) == list(orgs)
    assert common_names(cert.issuer) == [issuer_cn]
    assert extended_usages(cert) == ekus
    assert key_usages(cert) == (CA_USAGE if is_ca else EC_LEAF_USAGE)
    assert sorted(alt_names(cert)) == sorted(sans)
    assert len(alt_names(cert)) == len(set(alt_names(cert))), "duplicate SANs"


@pytest.mark.parametrize("case", ROW_CASES, ids=[row_id(case) for case in ROW_CASES])
def test_issued_certificate_chain(
    issued: dict[str, tuple[Cluster, PkiBundle]], case: tuple[str, Row]
) -> None:
    example_name, (name, node, _, _, issuer_cn, _, _) = case
    _, pki = issued[example_name]
    cert = load_cert(pki.cert(name, node).cert_pem)
    issuer = load_cert(pki.cert(ISSUERS[issuer_cn]).cert_pem)
    is_ca = name in ISSUERS.values()

    cert.verify_directly_issued_by(issuer)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is is_ca
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    if not is_ca:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == issuer_ski.digest
    assert public_der(load_pem_private_key(pki.cert(name, node).key_pem, None)) == public_der(cert)


def test_serials_random_and_unique(issued: dict[str, tuple[Cluster, PkiBundle]]) -> None:
    _, pki = issued["ha"]
    serials = [entry.certificate.serial_number for entry in pki.certs.values()]
    assert len(serials) == len(set(serials))
    for serial in serials:
        assert 1 <= serial < 2**63 - 1


# ---------------------------------------------------------------------------------------------
# openssl verify, the way TLS peers check these certificates


def openssl_verify(
    ca_pem: bytes, leaf_pem: bytes, purpose: str, work: Path, host: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `openssl verify` for one leaf; -verify_ip or -verify_hostname when host is given."""
    ca_file, leaf_file = work / "ca.pem", work / "leaf.pem"
    ca_file.write_bytes(ca_pem)
    leaf_file.write_bytes(leaf_pem)
    command = ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", purpose]
    if host is not None:
        try:
            ip_address(host)
            command += ["-verify_ip", host]
        except ValueError:
            command += ["-verify_hostname", host]
    command.append(str(leaf_file))
    return subprocess.run(command, capture_output=True, text=True, check=False)


def assert_verified(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK"), result.stdout


def server_hosts(row: Row) -> list[str]:
    """Hosts a TLS client dials for a server certificate of the table (its SAN values)."""
    return [san.split(":", 1)[1] for san in row[6]]


SERVER_CASES = [
    (example, row) for example, row in ROW_CASES if "serverAuth" in row[5]
]
CLIENT_CASES = [
    (example, row) for example, row in ROW_CASES if "clientAuth" in row[5]
]


@pytest.mark.consumer
@pytest.mark.parametrize("case", SERVER_CASES, ids=[row_id(case) for case in SERVER_CASES])
def test_openssl_server_names(
    issued: dict[str, tuple[Cluster, PkiBundle]], case: tuple[str, Row], tmp_path: Path
) -> None:
    example_name, row = case
    _, pki = issued[example_name]
    ca = pki.cert(ISSUERS[row[4]]).cert_pem
    for host in server_hosts(row):
        assert_verified(openssl_verify(ca, pki.cert(row[0], row[1]).cert_pem, "sslserver", tmp_path, host))


@pytest.mark.consumer
@pytest.mark.parametrize("case", CLIENT_CASES, ids=[row_id(case) for case in CLIENT_CASES])
def test_openssl_client_purpose(
    issued: dict[str, tuple[Cluster, PkiBundle]], case: tuple[str, Row], tmp_path: Path
) -> None:
    example_name, row = case
    _, pki = issued[example_name]
    ca = pki.cert(ISSUERS[row[4]]).cert_pem
    assert_verified(openssl_verify(ca, pki.cert(row[0], row[1]).cert_pem, "sslclient", tmp_path))


@pytest.mark.consumer
@pytest.mark.parametrize(
    ("name", "node", "ca", "purpose", "host"),
    [
        ("kubelet-client", "cp-1", "ca", "sslserver", None),
        ("apiserver", "cp-1", "ca", "sslclient", None),
        ("apiserver", "cp-1", "ca", "sslserver", "10.0.1.11"),
        ("apiserver", "cp-1", "ca", "sslserver", "lb.other.internal"),
        ("kubelet-serving", "worker-1", "ca", "sslserver", "10.0.1.21"),
        ("etcd-server", "cp-1", "ca", "sslserver", "10.0.1.10"),
        ("front-proxy-client", None, "ca", "sslclient", None),
    ],
    ids=["client-as-server", "server-as-client", "other-node-ip", "unknown-name",
         "kubelet-other-ip", "etcd-wrong-ca", "front-proxy-wrong-ca"],
)
def test_openssl_rejects_misuse(
    issued: dict[str, tuple[Cluster, PkiBundle]], tmp_path: Path,
    name: str, node: str | None, ca: str, purpose: str, host: str | None,
) -> None:
    _, pki = issued["ha"]
    result = openssl_verify(pki.cert(ca).cert_pem, pki.cert(name, node).cert_pem, purpose, tmp_path, host)
    assert result.returncode != 0, result.stdout


# ---------------------------------------------------------------------------------------------
# Key algorithms, signature hashes and validity


def minimal_with(algorithm: KeyAlgorithm) -> Cluster:
    return with_pki_settings(cluster_from_text(MINIMAL), key_algorithm=algorithm)


@pytest.mark.parametrize(
    ("algorithm", "key_type", "size", "digest", "leaf_usage", "pem_label"),
    [
        ("ecdsa-p256", ec.EllipticCurvePrivateKey, 256, hashes.SHA256, EC_LEAF_USAGE, "EC PRIVATE KEY"),
        ("ecdsa-p384", ec.EllipticCurvePrivateKey, 384, hashes.SHA384, EC_LEAF_USAGE, "EC PRIVATE KEY"),
        ("rsa-2048", rsa.RSAPrivateKey, 2048, hashes.SHA256, RSA_LEAF_USAGE, "RSA PRIVATE KEY"),
    ],
    ids=["p256", "p384", "rsa2048"],
)
def test_key_algorithm(
    algorithm: KeyAlgorithm, key_type: type, size: int, digest: type, leaf_usage: set[str],
    pem_label: str,
) -> None:
    pki = issue(minimal_with(algorithm))
    for (name, node), entry in pki.certs.items():
        cert = load_cert(entry.cert_pem)
        [(label, block)] = pem_blocks(entry.key_pem)
        key = load_pem_private_key(block, None)
        assert label == pem_label, name
        assert isinstance(key, key_type), name
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        assert key.key_size == size, name
        assert isinstance(cert.signature_hash_algorithm, digest), name
        expected_usage = CA_USAGE if name in ISSUERS.values() else leaf_usage
        assert key_usages(cert) == expected_usage, (name, node)

    [(label, block)] = pem_blocks(pki.sa().public_key_pem)
    public_key = load_pem_public_key(block)
    assert label == "PUBLIC KEY"
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    assert public_key.key_size == size
    [(label, block)] = pem_blocks(pki.sa().private_key_pem)
    assert label == pem_label
    assert public_der(load_pem_private_key(block, None)) == public_key.public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )


def test_key_generator_calls() -> None:
    cluster = example_cluster("ha")
    requested: list[str] = []
    keys: list[PrivateKey] = []

    def recording_generator(algorithm: KeyAlgorithm) -> PrivateKey:
        requested.append(algorithm)
        keys.append(generate_private_key(algorithm))
        return keys[-1]

    pki = build_pki(cluster, clock=fixed_clock, keys=recording_generator)
    # 3 CAs, 8 cluster-wide leaves, 3 per control plane, 3 per node, the service-account pair.
    assert len(requested) == 3 + 8 + 3 * 3 + 3 * 6 + 1
    assert set(requested) == {"ecdsa-p256"}
    assert len({public_der(key) for key in keys}) == len(keys)
    assert {public_der(entry.private_key) for entry in pki.certs.values()} < {public_der(key) for key in keys}


def test_unknown_key_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown key algorithm 'dsa-1024'"):
        generate_private_key("dsa-1024")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ca_days", "cert_days", "ca_after", "leaf_after"),
    [
        (3650, 365, NOW + timedelta(days=3650), NOW + timedelta(days=365)),
        (30, 7, NOW + timedelta(days=30), NOW + timedelta(days=7)),
        (100, 400, NOW + timedelta(days=100), NOW + timedelta(days=100)),
    ],
    ids=["defaults", "short", "leaf-capped-by-ca"],
)
def test_validity_follows_clock(
    ca_days: int, cert_days: int, ca_after: datetime, leaf_after: datetime
) -> None:
    cluster = with_pki_settings(
        cluster_from_text(MINIMAL), ca_validity_days=ca_days, cert_validity_days=cert_days
    )
    pki = issue(cluster)
    for (name, node), entry in pki.certs.items():
        cert = load_cert(entry.cert_pem)
        is_ca = name in ISSUERS.values()
        assert cert.not_valid_before_utc == NOW - timedelta(minutes=5), (name, node)
        assert cert.not_valid_after_utc == (ca_after if is_ca else leaf_after), (name, node)


def test_clock_in_other_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    pki = build_pki(
        cluster_from_text(MINIMAL),
        clock=lambda: datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=plus_two),
    )
    cert = load_cert(pki.cert("ca").cert_pem)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)


def test_naive_clock_rejected() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        build_pki(cluster_from_text(MINIMAL), clock=lambda: datetime(2026, 3, 1))


# ---------------------------------------------------------------------------------------------
# Real-world faults: SANs of the API server and kubelet serving certificates


def with_service_range(service: str, domain: str) -> str:
    return MINIMAL.replace(
        "serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}",
        f"serviceCIDR: {service}, nodeCIDRMaskSize: 24, clusterDomain: {domain}}}",
    )


@pytest.mark.parametrize(
    ("service", "domain", "service_ip", "service_name"),
    [
        ("10.32.0.0/24", "cluster.local", "10.32.0.1", "kubernetes.default.svc.cluster.local"),
        ("10.32.0.0/24", "corp.local", "10.32.0.1", "kubernetes.default.svc.corp.local"),
        ("10.96.0.0/12", "cluster.local", "10.96.0.1", "kubernetes.default.svc.cluster.local"),
    ],
    ids=["hard-way-range", "corp-domain", "kubeadm-range"],
)
def test_apiserver_has_service_names(
    service: str, domain: str, service_ip: str, service_name: str
) -> None:
    cluster = cluster_from_text(with_service_range(service, domain))
    pki = issue(cluster)
    sans = alt_names(load_cert(pki.cert("apiserver", "cp-1").cert_pem))

    assert f"IP:{service_ip}" in sans
    for name in ("kubernetes", "kubernetes.default", "kubernetes.default.svc", service_name):
        assert f"DNS:{name}" in sans
    assert [san for san in sans if san.startswith("DNS:kubernetes.default.svc.")] == [f"DNS:{service_name}"]


LOAD_BALANCER_TEXT = """\
apiVersion: kubecc/v1alpha1
kind: Cluster
metadata: {name: demo}
spec:
  kubernetes: {version: v1.36.2}
  network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}
  controlPlane:
    endpoint: {host: lb.example.internal, port: 6443}
    certSANs: [192.0.2.10]
  nodes:
    - {name: cp-1, role: control-plane, ip: 10.0.0.10}
    - {name: cp-2, role: control-plane, ip: 10.0.0.11}
    - {name: worker-1, role: worker, ip: 10.0.0.20}
"""
# Names of every kind in certSANs, and repeats of names the certificate carries anyway.
MANY_SANS_TEXT = LOAD_BALANCER_TEXT.replace(
    "certSANs: [192.0.2.10]",
    'certSANs: [192.0.2.10, api.example.com, "*.apps.example.com", "2001:db8::10", cp-1, '
    "10.0.0.10, kubernetes, 10.32.0.1, lb.example.internal]",
)
EXTRA_SANS = ("DNS:api.example.com", "DNS:*.apps.example.com", "IP:2001:db8::10")


@pytest.mark.parametrize(
    ("text", "node", "expected"),
    [
        (LOAD_BALANCER_TEXT, "cp-1", (*SERVICE_NAMES, "DNS:cp-1", "DNS:lb.example.internal",
                                      "IP:10.32.0.1", "IP:10.0.0.10", "IP:192.0.2.10")),
        (LOAD_BALANCER_TEXT, "cp-2", (*SERVICE_NAMES, "DNS:cp-2", "DNS:lb.example.internal",
                                      "IP:10.32.0.1", "IP:10.0.0.11", "IP:192.0.2.10")),
        (MANY_SANS_TEXT, "cp-1", (*SERVICE_NAMES, "DNS:cp-1", "DNS:lb.example.internal",
                                  "IP:10.32.0.1", "IP:10.0.0.10", "IP:192.0.2.10", *EXTRA_SANS)),
        (MANY_SANS_TEXT, "cp-2", (*SERVICE_NAMES, "DNS:cp-2", "DNS:lb.example.internal",
                                  "IP:10.32.0.1", "IP:10.0.0.11", "IP:192.0.2.10", *EXTRA_SANS,
                                  "DNS:cp-1", "IP:10.0.0.10")),
    ],
    ids=["lb-cp-1", "lb-cp-2", "many-sans-cp-1", "many-sans-cp-2"],
)
def test_apiserver_has_endpoint_and_cert_sans(text: str, node: str, expected: tuple[str, ...]) -> None:
    pki = issue(cluster_from_text(text))
    sans = alt_names(load_cert(pki.cert("apiserver", node).cert_pem))

    assert sorted(sans) == sorted(expected)
    assert len(sans) == len(set(sans)), "duplicate SANs"


def test_kubelet_serving_names_every_node(example: Cluster) -> None:
    pki = issue(example)
    ca = load_cert(pki.cert("ca").cert_pem)
    for node in example.nodes:
        files = build_pki_files(example, node, pki)
        cert = load_cert(files[paths.KUBELET_SERVING_CERT].content)

        cert.verify_directly_issued_by(ca)
        assert sorted(alt_names(cert)) == sorted(
            [f"DNS:{node.name}", *(f"IP:{address}" for address in node.ips)]
        )
        assert extended_usages(cert) == SERVER
        assert common_names(cert.subject) == [f"system:node:{node.name}"]


def test_kubelet_client_identity_uses_node_name() -> None:
    text = MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, hostname: ip-10-0-0-20}")
    cluster = cluster_from_text(text)
    pki = issue(cluster)
    files = build_pki_files(cluster, cluster.node("worker-1"), pki)
    blocks = pem_blocks(files[paths.KUBELET_CLIENT_INITIAL].content)
    [cert_block] = [block for label, block in blocks if label == "CERTIFICATE"]
    [key_block] = [block for label, block in blocks if label == "EC PRIVATE KEY"]
    cert = load_cert(cert_block)

    assert common_names(cert.subject) == ["system:node:worker-1"]
    assert organizations(cert.subject) == ["system:nodes"]
    assert extended_usages(cert) == CLIENT
    assert public_der(load_pem_private_key(key_block, None)) == public_der(cert)


# ---------------------------------------------------------------------------------------------
# Placement: files, modes and which private keys each node receives

CONTROL_PLANE_FILES = {
    "/etc/kubernetes/pki/ca.crt": (0o644, ("ca", None, "cert")),
    "/etc/kubernetes/pki/ca.key": (0o600, ("ca", None, "key")),
    "/etc/kubernetes/pki/front-proxy-ca.crt": (0o644, ("front-proxy-ca", None, "cert")),
    "/etc/kubernetes/pki/etcd/ca.crt": (0o644, ("etcd-ca", None, "cert")),
    "/etc/kubernetes/pki/apiserver.crt": (0o644, ("apiserver", "{node}", "cert")),
    "/etc/kubernetes/pki/apiserver.key": (0o600, ("apiserver", "{node}", "key")),
    "/etc/kubernetes/pki/apiserver-kubelet-client.crt": (0o644, ("apiserver-kubelet-client", None, "cert")),
    "/etc/kubernetes/pki/apiserver-kubelet-client.key": (0o600, ("apiserver-kubelet-client", None, "key")),
    "/etc/kubernetes/pki/front-proxy-client.crt": (0o644, ("front-proxy-client", None, "cert")),
    "/etc/kubernetes/pki/front-proxy-client.key": (0o600, ("front-proxy-client", None, "key")),
    "/etc/kubernetes/pki/apiserver-etcd-client.crt": (0o644, ("apiserver-etcd-client", None, "cert")),
    "/etc/kubernetes/pki/apiserver-etcd-client.key": (0o600, ("apiserver-etcd-client", None, "key")),
    "/etc/kubernetes/pki/etcd/server.crt": (0o644, ("etcd-server", "{node}", "cert")),
    "/etc/kubernetes/pki/etcd/server.key": (0o600, ("etcd-server", "{node}", "key")),
    "/etc/kubernetes/pki/etcd/peer.crt": (0o644, ("etcd-peer", "{node}", "cert")),
    "/etc/kubernetes/pki/etcd/peer.key": (0o600, ("etcd-peer", "{node}", "key")),
    "/etc/kubernetes/pki/etcd/healthcheck-client.crt": (0o644, ("etcd-healthcheck-client", None, "cert")),
    "/etc/kubernetes/pki/etcd/healthcheck-client.key": (0o600, ("etcd-healthcheck-client", None, "key")),
    "/etc/kubernetes/pki/sa.key": (0o600, ("sa", None, "key")),
    "/etc/kubernetes/pki/sa.pub": (0o644, ("sa", None, "cert")),
    "/var/lib/kubelet/pki/kubelet.crt": (0o644, ("kubelet-serving", "{node}", "cert")),
    "/var/lib/kubelet/pki/kubelet.key": (0o600, ("kubelet-serving", "{node}", "key")),
    "/var/lib/kubelet/pki/kubelet-client-kubecc.pem": (0o600, ("kubelet-client", "{node}", "both")),
}
WORKER_FILES = {
    path: CONTROL_PLANE_FILES[path]
    for path in ("/etc/kubernetes/pki/ca.crt", "/var/lib/kubelet/pki/kubelet.crt",
                 "/var/lib/kubelet/pki/kubelet.key", "/var/lib/kubelet/pki/kubelet-client-kubecc.pem")
}


def expected_content(pki: PkiBundle, source: tuple[str, str | None, str], node: Node) -> bytes:
    name, node_name, part = source
    if name == "sa":
        return pki.sa().private_key_pem if part == "key" else pki.sa().public_key_pem
    entry = pki.cert(name, node.name if node_name == "{node}" else None)
    return {"cert": entry.cert_pem, "key": entry.key_pem, "both": entry.cert_pem + entry.key_pem}[part]


def all_nodes(issued: dict[str, tuple[Cluster, PkiBundle]]) -> Iterator[tuple[Cluster, PkiBundle, Node]]:
    for cluster, pki in issued.values():
        for node in cluster.nodes:
            yield cluster, pki, node


def test_placed_files_and_modes(issued: dict[str, tuple[Cluster, PkiBundle]]) -> None:
    for cluster, pki, node in all_nodes(issued):
        files = build_pki_files(cluster, node, pki)
        expected = CONTROL_PLANE_FILES if node.is_control_plane else WORKER_FILES

        assert set(files) == set(expected), node.name
        for path, (mode, source) in expected.items():
            assert files[path].mode == mode, (node.name, path)
            assert files[path].content == expected_content(pki, source, node), (node.name, path)
            assert files[path].owner == "root:root"


def received_private_keys(files: dict[str, bytes]) -> list[bytes]:
    """Public keys (DER) of every private key in a node's files, PEM files and kubeconfigs."""
    found = []
    for path, content in files.items():
        pems = [content]
        if path.endswith(".conf"):
            document = yaml.safe_load(content)
            pems = [base64.b64decode(user["user"]["client-key-data"])
                    for user in document["users"] if "client-key-data" in user["user"]]
        for pem in pems:
            for label, block in pem_blocks(pem):
                if label.endswith("PRIVATE KEY"):
                    found.append(public_der(load_pem_private_key(block, None)))
    return found


CONTROL_PLANE_KEYS: set[tuple[str, str | None]] = {
    ("ca", None), ("apiserver", "{node}"), ("apiserver-kubelet-client", None),
    ("front-proxy-client", None), ("apiserver-etcd-client", None), ("etcd-server", "{node}"),
    ("etcd-peer", "{node}"), ("etcd-healthcheck-client", None), ("sa", None),
    ("controller-manager", None), ("scheduler", None),
    ("kubelet-client", "{node}"), ("kubelet-serving", "{node}"), ("kube-proxy", "{node}"),
}
FIRST_CONTROL_PLANE_KEYS = CONTROL_PLANE_KEYS | {("bootstrap-admin", None)}
WORKER_KEYS: set[tuple[str, str | None]] = {("kubelet-client", "{node}"), ("kubelet-serving", "{node}"), ("kube-proxy", "{node}")}


def key_owners(pki: PkiBundle) -> dict[bytes, tuple[str, str | None]]:
    owners = {public_der(entry.private_key): key for key, entry in pki.certs.items()}
    owners[load_pem_public_key(pki.sa().public_key_pem).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)] = ("sa", None)
    return owners


def test_private_keys_per_role(issued: dict[str, tuple[Cluster, PkiBundle]]) -> None:
    for cluster, pki, node in all_nodes(issued):
        files = {**build_pki_files(cluster, node, pki), **build_kubeconfig_files(cluster, node, pki)}
        owners = key_owners(pki)
        received = [owners[der] for der in received_private_keys({p: f.content for p, f in files.items()})]
        if not node.is_control_plane:
            allowed = WORKER_KEYS
        elif node.name == cluster.control_planes[0].name:
            allowed = FIRST_CONTROL_PLANE_KEYS
        else:
            allowed = CONTROL_PLANE_KEYS
        expected = {(name, node.name if owner == "{node}" else None) for name, owner in allowed}

        assert set(received) == expected, node.name
        assert ("admin", None) not in received
        for path in ("/etc/kubernetes/pki/front-proxy-ca.key", "/etc/kubernetes/pki/etcd/ca.key"):
            assert path not in files


def test_secret_files_are_private(issued: dict[str, tuple[Cluster, PkiBundle]]) -> None:
    for cluster, pki, node in all_nodes(issued):
        files = {**build_pki_files(cluster, node, pki), **build_kubeconfig_files(cluster, node, pki)}
        for path, file in files.items():
            secret = path.endswith(".conf") or bool(received_private_keys({path: file.content}))
            assert file.mode == (0o600 if secret else 0o644), (node.name, path)
