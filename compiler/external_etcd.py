"""External etcd: load and check the endpoints and credentials of `spec.etcd.external`.

Reads `spec.etcd.external` (endpoints, caFile, certFile, keyFile). Relative file paths are
relative to the description's folder. Writes no node paths: compiler.pki.place installs the
files on the control planes. No message contains the private key or any part of it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from compiler.errors import DescriptionError, Problem
from compiler.loader import Description, PathPart
from compiler.model import ExternalEtcd

FIELD = ("spec", "etcd", "external")


def load_external_etcd(description: Description) -> ExternalEtcd | None:
    """Read the external etcd endpoints and credentials; None when etcd is stacked.

    Raises DescriptionError with every problem found, each on the field that names the file.
    """
    external = description.data["spec"].get("etcd", {}).get("external")
    if external is None:
        return None

    problems: list[Problem] = []
    endpoints = tuple(str(url) for url in external["endpoints"])
    for index, url in enumerate(endpoints):
        message = endpoint_problem(url)
        if message is not None:
            problems.append(description.problem(
                (*FIELD, "endpoints", index), message,
                "write https://HOST:PORT, with an IPv6 address in brackets: https://[fd00::5]:2379",
            ))

    folder = Path(description.filename).parent
    read = {
        name: read_file(description, name, external[name], folder, problems)
        for name in ("caFile", "certFile", "keyFile")
    }
    contents = {name: content for name, content in read.items() if content is not None}
    # The credentials are checked against each other only when all three files were read.
    if len(contents) == len(read):
        problems.extend(check_credentials(description, external, contents))
    if problems:
        raise DescriptionError(description.filename, problems)
    return ExternalEtcd(
        endpoints=endpoints,
        ca_cert_pem=contents["caFile"],
        cert_pem=contents["certFile"],
        key_pem=contents["keyFile"],
    )


def endpoint_problem(url: str) -> str | None:
    """Return what is wrong with one etcd client URL, or None when it is valid."""
    expected = "expected an https:// URL of an etcd client endpoint"
    bracketed = f'found "{url}"; {expected}, with a valid IPv6 address in brackets'
    try:
        parts = urlsplit(url)
    except ValueError:
        # urlsplit rejects unbalanced brackets and a bracketed IPv4 address.
        return bracketed
    if parts.scheme != "https":
        return f'found "{url}"; {expected}'
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return f'found "{url}"; {expected}, without user, path or query'

    netloc = parts.netloc
    if netloc.startswith("["):
        close = netloc.find("]")
        host, port_part = netloc[1:close], netloc[close + 1:]
        if close < 0 or not is_ipv6(host):
            return bracketed
        if port_part and not port_part.startswith(":"):
            return f'found "{url}"; {expected}'
        port = port_part[1:]
    else:
        host, _, port = netloc.partition(":")
        if ":" in port:
            return f'found "{url}"; {expected}, with the IPv6 address in brackets'
    if not host:
        return f'found "{url}"; {expected}, with a host name or address'
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        return f'found "{url}"; {expected}, with a port in 1-65535'
    return None


def is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def read_file(
    description: Description, name: str, value: str, folder: Path, problems: list[Problem]
) -> bytes | None:
    """Read one referenced file; on failure add a problem and return None."""
    path = Path(value) if Path(value).is_absolute() else folder / value
    parts: tuple[PathPart, ...] = (*FIELD, name)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        problems.append(description.problem(
            parts, f"file {path} not found", "a relative path starts at the description's folder"
        ))
    except OSError as err:
        problems.append(description.problem(
            parts, f"failed to read {path}: {err.strerror}", "check the path and its permissions"
        ))
    return None


def check_credentials(
    description: Description, external: dict[str, Any], contents: dict[str, bytes]
) -> list[Problem]:
    """Check that the files hold a CA, a client certificate it signed and that certificate's key."""
    def problem(name: str, message: str, hint: str | None = None) -> Problem:
        return description.problem((*FIELD, name), message, hint)

    problems: list[Problem] = []
    ca = load_certificate(contents["caFile"])
    if ca is None:
        problems.append(problem("caFile", f"{external['caFile']} contains no PEM certificate; "
                                "expected the etcd CA certificate"))
    elif not is_ca(ca):
        problems.append(problem("caFile", f"the certificate in {external['caFile']} is not a CA "
                                "(no basicConstraints CA:TRUE); expected the CA that signs the "
                                "etcd client certificates"))

    certificate = load_certificate(contents["certFile"])
    if certificate is None:
        problems.append(problem("certFile", f"{external['certFile']} contains no PEM "
                                "certificate; expected the kube-apiserver etcd client "
                                "certificate"))
    elif not is_client_certificate(certificate):
        problems.append(problem("certFile", f"the certificate in {external['certFile']} has no "
                                "clientAuth extended key usage; expected a client certificate"))
    elif ca is not None and is_ca(ca) and not signed_by(certificate, ca):
        problems.append(problem("certFile", f"the certificate in {external['certFile']} is not "
                                f"signed by the CA in {external['caFile']}"))

    key_problem = private_key_problem(contents["keyFile"], certificate)
    if key_problem is not None:
        problems.append(problem("keyFile", f"{external['keyFile']} {key_problem}"))
    return problems


def load_certificate(pem: bytes) -> x509.Certificate | None:
    """Load the first certificate of a PEM file, or None when there is no valid one."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def is_client_certificate(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages.value


def signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def private_key_problem(pem: bytes, certificate: x509.Certificate | None) -> str | None:
    """Return what is wrong with the client key, or None. The text never quotes the key."""
    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError:
        return "contains an encrypted private key; expected an unencrypted PEM private key"
    except (ValueError, UnsupportedAlgorithm):
        return "contains no valid PEM private key; expected the client certificate's key"
    if certificate is None:
        return None
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    expected = certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    if public != expected:
        return "does not contain the private key of the client certificate in certFile"
    return None
