"""External etcd: file checks, API server flags, no etcd member or certificates, placed files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from compiler.build import BuildOptions, build
from compiler.errors import DescriptionError
from compiler.external_etcd import endpoint_problem
from compiler.loader import load_description
from compiler.pipeline import plan_file
from compiler.pki import bundle
from compiler.pki.issue import build_pki
from compiler.pki.place import build_pki_files
from compiler.render.static_pods import build_static_pod_files
from compiler.semantic import validate_semantics
from tests.conftest import EXAMPLES

EXAMPLE = EXAMPLES / "external-etcd.yaml"
FIXTURES = EXAMPLES / "external-etcd"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
STACKED_ETCD_CERTIFICATES = {
    bundle.ETCD_CA, bundle.ETCD_SERVER, bundle.ETCD_PEER, bundle.ETCD_HEALTHCHECK_CLIENT,
    bundle.APISERVER_ETCD_CLIENT,
}
CA_FIELD = "spec.etcd.external.caFile"
CERT_FIELD = "spec.etcd.external.certFile"
KEY_FIELD = "spec.etcd.external.keyFile"


def copy_example(folder: Path) -> Path:
    """Copy the example and its credentials into `folder`; return the description's path."""
    shutil.copytree(FIXTURES, folder / "external-etcd")
    path = folder / "external-etcd.yaml"
    path.write_text(EXAMPLE.read_text())
    return path


def problems_of(path: Path) -> list[str]:
    """Plan a description that must fail; return each problem as `dotted.path: message`."""
    with pytest.raises(DescriptionError) as caught:
        plan_file(path)
    return [f"{problem.path}: {problem.message}" for problem in caught.value.problems]


def make_certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey,
    *, ca: bool = False, usages: tuple[x509.ObjectIdentifier, ...] = (),
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(Encoding.PEM)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())


# --- validation ------------------------------------------------------------------------------


def test_example_valid_without_even_warning() -> None:
    description = load_description(EXAMPLE)
    assert [problem.message for problem in validate_semantics(description)] == []


def test_missing_file(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    (tmp_path / "external-etcd" / "etcd-ca.crt").unlink()
    missing = tmp_path / "external-etcd" / "etcd-ca.crt"
    assert problems_of(path) == [f"{CA_FIELD}: file {missing} not found"]


def test_unreadable_file(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    target = tmp_path / "external-etcd" / "apiserver-etcd-client.key"
    target.unlink()
    target.mkdir()
    assert problems_of(path) == [f"{KEY_FIELD}: failed to read {target}: Is a directory"]


def test_absolute_path_accepted(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    absolute = tmp_path / "external-etcd" / "etcd-ca.crt"
    path.write_text(path.read_text().replace("caFile: external-etcd/etcd-ca.crt",
                                             f"caFile: {absolute}"))
    cluster = plan_file(path).cluster
    assert cluster.external_etcd is not None
    assert cluster.external_etcd.ca_cert_pem == absolute.read_bytes()


@pytest.mark.parametrize(("file", "expected"), [
    ("etcd-ca.crt", f"{CA_FIELD}: external-etcd/etcd-ca.crt contains no PEM certificate; "
     "expected the etcd CA certificate"),
    ("apiserver-etcd-client.crt", f"{CERT_FIELD}: external-etcd/apiserver-etcd-client.crt "
     "contains no PEM certificate; expected the kube-apiserver etcd client certificate"),
    ("apiserver-etcd-client.key", f"{KEY_FIELD}: external-etcd/apiserver-etcd-client.key "
     "contains no valid PEM private key; expected the client certificate's key"),
], ids=["ca", "cert", "key"])
def test_not_pem(tmp_path: Path, file: str, expected: str) -> None:
    path = copy_example(tmp_path)
    (tmp_path / "external-etcd" / file).write_text("not a PEM file\n")
    assert problems_of(path) == [expected]


def test_key_not_matching_certificate(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    other = key_pem(new_key())
    (tmp_path / "external-etcd" / "apiserver-etcd-client.key").write_bytes(other)
    messages = problems_of(path)
    assert messages == [
        f"{KEY_FIELD}: external-etcd/apiserver-etcd-client.key does not contain the private key "
        "of the client certificate in certFile"
    ]
    for line in other.decode().splitlines()[1:-1]:
        assert line not in messages[0]


def test_encrypted_key(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    encrypted = new_key().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")
    )
    (tmp_path / "external-etcd" / "apiserver-etcd-client.key").write_bytes(encrypted)
    assert problems_of(path) == [
        f"{KEY_FIELD}: external-etcd/apiserver-etcd-client.key contains an encrypted private "
        "key; expected an unencrypted PEM private key"
    ]


def test_certificate_not_client(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    ca_key, key = new_key(), new_key()
    folder = tmp_path / "external-etcd"
    (folder / "etcd-ca.crt").write_bytes(make_certificate("ca", ca_key, ca_key, ca=True))
    (folder / "apiserver-etcd-client.crt").write_bytes(
        make_certificate("client", key, ca_key, usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    )
    (folder / "apiserver-etcd-client.key").write_bytes(key_pem(key))
    assert problems_of(path) == [
        f"{CERT_FIELD}: the certificate in external-etcd/apiserver-etcd-client.crt has no "
        "clientAuth extended key usage; expected a client certificate"
    ]


def test_ca_not_ca(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    ca_key = new_key()
    (tmp_path / "external-etcd" / "etcd-ca.crt").write_bytes(
        make_certificate("not-a-ca", ca_key, ca_key)
    )
    assert problems_of(path) == [
        f"{CA_FIELD}: the certificate in external-etcd/etcd-ca.crt is not a CA (no "
        "basicConstraints CA:TRUE); expected the CA that signs the etcd client certificates"
    ]


def test_client_not_signed_by_ca(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    other_key = new_key()
    (tmp_path / "external-etcd" / "etcd-ca.crt").write_bytes(
        make_certificate("other-ca", other_key, other_key, ca=True)
    )
    assert problems_of(path) == [
        f"{CERT_FIELD}: the certificate in external-etcd/apiserver-etcd-client.crt is not "
        "signed by the CA in external-etcd/etcd-ca.crt"
    ]


def test_http_endpoint_rejected_by_schema(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    path.write_text(path.read_text().replace("https://10.0.5.6:2379", "http://10.0.5.6:2379"))
    assert problems_of(path) == [
        'spec.etcd.external.endpoints[1]: found "http://10.0.5.6:2379"; expected an https:// '
        "URL of an etcd client endpoint"
    ]


@pytest.mark.parametrize(("url", "expected"), [
    ("https://10.0.5.5:2379", None),
    ("https://etcd-1.example.internal:2379", None),
    ("https://[fd00::5]:2379", None),
    ("https://[fd00::5]", None),
    ("https://fd00::5:2379", 'found "https://fd00::5:2379"; expected an https:// URL of an etcd '
     "client endpoint, with the IPv6 address in brackets"),
    ("https://[10.0.5.5]:2379", 'found "https://[10.0.5.5]:2379"; expected an https:// URL of '
     "an etcd client endpoint, with a valid IPv6 address in brackets"),
    ("https://10.0.5.5:99999", 'found "https://10.0.5.5:99999"; expected an https:// URL of an '
     "etcd client endpoint, with a port in 1-65535"),
    ("https://10.0.5.5:2379/v3", 'found "https://10.0.5.5:2379/v3"; expected an https:// URL of '
     "an etcd client endpoint, without user, path or query"),
    ("https://:2379", 'found "https://:2379"; expected an https:// URL of an etcd client '
     "endpoint, with a host name or address"),
], ids=["ipv4", "dns", "ipv6", "ipv6-no-port", "ipv6-unbracketed", "ipv4-bracketed",
        "bad-port", "path", "no-host"])
def test_endpoint_problem(url: str, expected: str | None) -> None:
    assert endpoint_problem(url) == expected


def test_invalid_endpoint_reported_on_field(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    path.write_text(path.read_text().replace("https://10.0.5.7:2379", "https://fd00::7:2379"))
    assert problems_of(path) == [
        'spec.etcd.external.endpoints[2]: found "https://fd00::7:2379"; expected an https:// '
        "URL of an etcd client endpoint, with the IPv6 address in brackets"
    ]


def test_endpoint_and_credential_problems_together(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    path.write_text(path.read_text().replace("https://10.0.5.7:2379", "https://fd00::7:2379"))
    (tmp_path / "external-etcd" / "etcd-ca.crt").write_text("not a PEM file\n")
    assert problems_of(path) == [
        'spec.etcd.external.endpoints[2]: found "https://fd00::7:2379"; expected an https:// '
        "URL of an etcd client endpoint, with the IPv6 address in brackets",
        f"{CA_FIELD}: external-etcd/etcd-ca.crt contains no PEM certificate; "
        "expected the etcd CA certificate",
    ]


def test_cli_build_fails_and_writes_nothing(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    (tmp_path / "external-etcd" / "etcd-ca.crt").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "compiler", "build", "--state", str(tmp_path / "state"),
         str(path)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{CA_FIELD}: file {tmp_path / 'external-etcd' / 'etcd-ca.crt'} not found" in (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


# --- output ----------------------------------------------------------------------------------


def test_api_server_etcd_flags() -> None:
    cluster = plan_file(EXAMPLE).cluster
    for node in cluster.control_planes:
        files = build_static_pod_files(cluster, node)
        pod = yaml.safe_load(files["/etc/kubernetes/manifests/kube-apiserver.yaml"].content)
        command = pod["spec"]["containers"][0]["command"]
        flags = dict(argument[2:].split("=", 1) for argument in command[1:])
        assert flags["etcd-servers"] == (
            "https://10.0.5.5:2379,https://10.0.5.6:2379,https://10.0.5.7:2379"
        )
        assert flags["etcd-cafile"] == "/etc/kubernetes/pki/etcd/ca.crt"
        assert flags["etcd-certfile"] == "/etc/kubernetes/pki/apiserver-etcd-client.crt"
        assert flags["etcd-keyfile"] == "/etc/kubernetes/pki/apiserver-etcd-client.key"


def test_no_etcd_manifest_or_data_volume() -> None:
    cluster = plan_file(EXAMPLE).cluster
    assert cluster.etcd_members == ()
    for node in cluster.nodes:
        files = build_static_pod_files(cluster, node)
        assert "/etc/kubernetes/manifests/etcd.yaml" not in files
        for file in files.values():
            assert b"/var/lib/etcd" not in file.content


def test_no_etcd_certificates_issued() -> None:
    cluster = plan_file(EXAMPLE).cluster
    pki = build_pki(cluster, clock=lambda: NOW)
    issued = {name for name, _ in pki.certs}
    assert issued & STACKED_ETCD_CERTIFICATES == set()
    assert bundle.APISERVER in issued


def test_control_planes_receive_user_files() -> None:
    cluster = plan_file(EXAMPLE).cluster
    pki = build_pki(cluster, clock=lambda: NOW)
    expected = {
        "/etc/kubernetes/pki/etcd/ca.crt": ((FIXTURES / "etcd-ca.crt").read_bytes(), 0o644),
        "/etc/kubernetes/pki/apiserver-etcd-client.crt": (
            (FIXTURES / "apiserver-etcd-client.crt").read_bytes(), 0o644
        ),
        "/etc/kubernetes/pki/apiserver-etcd-client.key": (
            (FIXTURES / "apiserver-etcd-client.key").read_bytes(), 0o600
        ),
    }
    for node in cluster.control_planes:
        files = build_pki_files(cluster, node, pki)
        for path, (content, mode) in expected.items():
            assert files[path].content == content, path
            assert files[path].mode == mode, path
        etcd_files = sorted(path for path in files if path.startswith("/etc/kubernetes/pki/etcd/"))
        assert etcd_files == ["/etc/kubernetes/pki/etcd/ca.crt"]
    for node in cluster.workers:
        files = build_pki_files(cluster, node, pki)
        assert not any("etcd" in path for path in files)


def test_switch_from_stacked_etcd(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    external = path.read_text()
    start = external.index("  etcd:\n")
    end = external.index("  network:\n")
    stacked = tmp_path / "stacked.yaml"
    stacked.write_text(external[:start] + external[end:])
    options = BuildOptions(
        out_dir=tmp_path / "out", state_dir=tmp_path / "state", clock=lambda: NOW
    )
    build(load_description(stacked), options)

    switched = build(load_description(path), options)
    assert switched.result.cluster.etcd_members == ()
    assert switched.warnings == (
        "control planes cp-1, cp-2 ran stacked etcd members in the previous build, and this "
        "build uses external etcd: kubecc copies no etcd data, so move it to the external etcd "
        "(etcdctl snapshot save, etcdutl snapshot restore) before kube-apiserver connects to it",
    )
    again = build(load_description(path), options)
    assert again.issued == ()
    assert again.state_changed is False
