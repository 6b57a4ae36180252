"""Whole user-data of every example: cloud-init accepts it, and each node holds only its secrets.

Everything here is decoded from the emitted bytes, the way a node would see them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from compiler.build import build_output_files
from compiler.output import OutputFile
from tests.conftest import EXAMPLE_NAMES, REPO, example_cluster
from tests.test_pki import EXPECTED as CERTIFICATE_TABLE
from tests.test_pki import alt_names, common_names, extended_usages, organizations

# cloud-init 22.4 ignores unknown top-level keys, so a misspelt one would be lost silently.
ALLOWED_TOP_LEVEL_KEYS = {"hostname", "users", "ssh_pwauth", "write_files", "runcmd"}
WRITE_FILES_KEYS = {"path", "owner", "permissions", "content"}
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----\n.*?-----END \1-----\n?", re.DOTALL)


@cache
def built(name: str) -> dict[str, OutputFile]:
    return build_output_files(example_cluster(name))


def node_names(name: str) -> list[str]:
    return [node.name for node in example_cluster(name).nodes]


# The 1,000-node example is too large for every node; its first control plane and a worker
# go through the same checks.
LARGE_SAMPLE = [("large", "cp-1"), ("large", "worker-0001")]
ALL_NODES = [
    *((name, node) for name in EXAMPLE_NAMES for node in node_names(name)), *LARGE_SAMPLE,
]
NODE_IDS = [f"{name}-{node}" for name, node in ALL_NODES]


def user_data(example: str, node: str) -> bytes:
    return built(example)[f"nodes/{node}/user-data"].content


def cloud_config(example: str, node: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(user_data(example, node))
    return document


def written_files(example: str, node: str) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in cloud_config(example, node)["write_files"]}


@pytest.mark.parametrize(("example", "node"), ALL_NODES, ids=NODE_IDS)
def test_cloud_init_schema_accepts(example: str, node: str, tmp_path: Path) -> None:
    path = tmp_path / "user-data"
    path.write_bytes(user_data(example, node))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deprecat" not in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize(("example", "node"), ALL_NODES, ids=NODE_IDS)
def test_document_shape(example: str, node: str) -> None:
    content = user_data(example, node)
    document = cloud_config(example, node)
    assert content.startswith(b"#cloud-config\n")
    assert set(document) <= ALLOWED_TOP_LEVEL_KEYS
    assert document["hostname"] == node
    assert document["runcmd"] == [["/usr/local/lib/kubecc/first-boot.sh"]]
    for entry in document["write_files"]:
        assert set(entry) == WRITE_FILES_KEYS, entry["path"]
        assert re.fullmatch(r"0[0-7]{3}", entry["permissions"]), entry["path"]
        assert entry["owner"] == "root:root"


@pytest.mark.parametrize(("example", "node"), ALL_NODES, ids=NODE_IDS)
def test_no_template_leftovers(example: str, node: str) -> None:
    text = user_data(example, node).decode()
    for marker in ("{{", "}}", "{%", "%}", "{#"):
        assert marker not in text


def must_be_private(path: str, content: str) -> bool:
    """Private keys, kubeconfigs, manifests and component configurations are 0600."""
    return (
        "PRIVATE KEY" in content
        or is_kubeconfig(path, content)
        or path.startswith(("/etc/kubernetes/manifests/", "/etc/kubernetes/addons/"))
        or path in ("/var/lib/kubelet/config.yaml", "/var/lib/kube-proxy/config.conf")
    )


@pytest.mark.parametrize(("example", "node"), ALL_NODES, ids=NODE_IDS)
def test_secret_files_are_0600(example: str, node: str) -> None:
    private = [
        path for path, entry in written_files(example, node).items()
        if must_be_private(path, entry["content"])
    ]
    assert "/etc/kubernetes/kubelet.conf" in private
    for path in private:
        assert written_files(example, node)[path]["permissions"] == "0600", path


@dataclass(frozen=True)
class KeyHolder:
    """A private key found on a node and the certificate it belongs to."""

    path: str
    subject_cn: str
    subject_o: str
    issuer_cn: str
    server_auth: bool
    sans: tuple[str, ...]


def pem_blocks(data: bytes) -> list[bytes]:
    return [match.group(0) for match in PEM_BLOCK.finditer(data)]


def public_der(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def is_kubeconfig(path: str, content: str) -> bool:
    if not path.endswith((".conf", ".kubeconfig")) or "apiVersion" not in content:
        return False
    document = yaml.safe_load(content)
    return isinstance(document, dict) and document.get("kind") == "Config"


def collect_pem(files: dict[str, dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Return every PEM block on the node with its path, kubeconfig data included."""
    blocks = []
    for path, entry in files.items():
        content = entry["content"]
        if is_kubeconfig(path, content):
            kubeconfig = yaml.safe_load(content)
            for item in kubeconfig.get("users", []):
                for field in ("client-certificate-data", "client-key-data"):
                    if field in item["user"]:
                        blocks += [(path, b) for b in pem_blocks(base64.b64decode(item["user"][field]))]
            for item in kubeconfig.get("clusters", []):
                data = base64.b64decode(item["cluster"]["certificate-authority-data"])
                blocks += [(path, b) for b in pem_blocks(data)]
        else:
            blocks += [(path, b) for b in pem_blocks(content.encode())]
    return blocks


def name_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = [str(attribute.value) for attribute in name.get_attributes_for_oid(oid)]
    return ",".join(values)


def key_holders(example: str, node: str) -> list[KeyHolder]:
    """Match every private key on the node to a certificate on the node."""
    blocks = collect_pem(written_files(example, node))
    certificates = [
        x509.load_pem_x509_certificate(block) for _, block in blocks if b"CERTIFICATE" in block
    ]
    by_public_key = {
        certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ): certificate
        for certificate in certificates
    }
    holders = []
    for path, block in blocks:
        if b"PRIVATE KEY" not in block:
            continue
        key = serialization.load_pem_private_key(block, password=None)
        certificate = by_public_key.get(public_der(key))
        if certificate is None:
            holders.append(KeyHolder(path, "(no certificate)", "", "", False, ()))
            continue
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value \
            if not is_ca(certificate) else []
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            sans = tuple(sorted(str(value.value) for value in san.value))
        except x509.ExtensionNotFound:
            sans = ()
        holders.append(KeyHolder(
            path=path,
            subject_cn=name_attribute(certificate.subject, NameOID.COMMON_NAME),
            subject_o=name_attribute(certificate.subject, NameOID.ORGANIZATION_NAME),
            issuer_cn=name_attribute(certificate.issuer, NameOID.COMMON_NAME),
            server_auth=x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usages,
            sans=sans,
        ))
    return holders


def is_ca(certificate: x509.Certificate) -> bool:
    return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)


def worker_identities(node: str) -> set[tuple[str, str, str, bool]]:
    """(subject CN, subject O, issuer CN, serverAuth) of every key a worker may hold."""
    return {
        (f"system:node:{node}", "system:nodes", "kubernetes", False),  # kubelet client
        (f"system:node:{node}", "system:nodes", "kubernetes", True),  # kubelet serving
        ("system:kube-proxy", "", "kubernetes", False),
    }


def control_plane_identities(
    node: str, first: bool, external_etcd: bool
) -> set[tuple[str, str, str, bool]]:
    identities = worker_identities(node) | {
        ("kubernetes", "", "kubernetes", False),  # ca.key: the controller-manager signs CSRs
        ("kube-apiserver", "", "kubernetes", True),
        ("kube-apiserver-kubelet-client", "", "kubernetes", False),
        ("front-proxy-client", "", "front-proxy-ca", False),
        ("system:kube-controller-manager", "", "kubernetes", False),
        ("system:kube-scheduler", "", "kubernetes", False),
    }
    if external_etcd:
        # Only the client pair of examples/external-etcd/, signed by that example's own CA.
        identities.add(("kube-apiserver-etcd-client", "", "example-etcd-ca", False))
    else:
        identities |= {
            ("kube-apiserver-etcd-client", "", "etcd-ca", False),
            ("kube-etcd-healthcheck-client", "", "etcd-ca", False),
            (node, "", "etcd-ca", True),  # etcd server and peer
        }
    if first:
        identities.add(("kubecc:bootstrap", "system:masters", "kubernetes", False))
    return identities


@pytest.mark.parametrize(("example", "node"), ALL_NODES, ids=NODE_IDS)
def test_node_holds_only_its_keys(example: str, node: str) -> None:
    cluster = example_cluster(example)
    model = cluster.node(node)
    holders = key_holders(example, node)
    found = {(h.subject_cn, h.subject_o, h.issuer_cn, h.server_auth) for h in holders
             if h.path != "/etc/kubernetes/pki/sa.key"}
    if model.is_control_plane:
        expected = control_plane_identities(
            node, cluster.first_control_plane.name == node, cluster.external_etcd is not None
        )
    else:
        expected = worker_identities(node)
    assert found == expected
    unmatched = [h.path for h in holders if h.subject_cn == "(no certificate)"]
    assert unmatched == (["/etc/kubernetes/pki/sa.key"] if model.is_control_plane else [])
    for holder in holders:
        if holder.server_auth and holder.subject_cn != node:  # apiserver and kubelet serving
            assert str(model.ip) in holder.sans, holder.path


def test_service_account_key_shared_by_control_planes() -> None:
    keys = {
        hashlib.sha256(written_files("ha", node)["/etc/kubernetes/pki/sa.key"]["content"].encode())
        .hexdigest()
        for node in ("cp-1", "cp-2", "cp-3")
    }
    assert len(keys) == 1


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_index_matches_files(example: str) -> None:
    files = built(example)
    index = json.loads(files["index.json"].content)
    schema = json.loads((REPO / "schemas/index.schema.json").read_text())
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(index)
    cluster = example_cluster(example)
    assert [node["name"] for node in index["nodes"]] == [node.name for node in cluster.nodes]
    for entry in index["nodes"]:
        (artifact,) = entry["artifacts"]
        content = files[artifact["path"]].content
        assert artifact["bytes"] == len(content)
        assert artifact["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["podCIDR"] == str(cluster.node(entry["name"]).pod_cidr)


# Certificates each role receives, by inventory name (the admin certificate stays in out/).
WORKER_CERTIFICATES = {"ca", "kubelet-client", "kubelet-serving", "kube-proxy"}
CONTROL_PLANE_CERTIFICATES = WORKER_CERTIFICATES | {
    "front-proxy-ca", "etcd-ca", "apiserver", "apiserver-kubelet-client", "front-proxy-client",
    "etcd-healthcheck-client", "apiserver-etcd-client", "controller-manager", "scheduler",
    "etcd-server", "etcd-peer",
}
CertificateFields = tuple[str, tuple[str, ...], str, tuple[str, ...], tuple[str, ...]]


def certificate_fields(certificate: x509.Certificate) -> CertificateFields:
    return (
        ",".join(common_names(certificate.subject)),
        tuple(organizations(certificate.subject)),
        ",".join(common_names(certificate.issuer)),
        extended_usages(certificate),
        tuple(sorted(alt_names(certificate))),
    )


def expected_certificates(example: str, node: str) -> set[CertificateFields]:
    cluster = example_cluster(example)
    names = WORKER_CERTIFICATES
    if cluster.node(node).is_control_plane:
        names = CONTROL_PLANE_CERTIFICATES
        if cluster.first_control_plane.name == node:
            names = names | {"bootstrap-admin"}
    return {
        (subject, organization, issuer, usages, tuple(sorted(sans)))
        for name, owner, subject, organization, issuer, usages, sans in CERTIFICATE_TABLE[example]
        if name in names and owner in (None, node)
    }


TABLE_NODES = [(name, node) for name, node in ALL_NODES if name in CERTIFICATE_TABLE]


@pytest.mark.parametrize(
    ("example", "node"), TABLE_NODES, ids=[f"{name}-{node}" for name, node in TABLE_NODES]
)
def test_certificates_in_user_data_match_table(example: str, node: str) -> None:
    found = {
        certificate_fields(x509.load_pem_x509_certificate(block))
        for _, block in collect_pem(written_files(example, node))
        if b"CERTIFICATE" in block
    }
    assert found == expected_certificates(example, node)


@pytest.mark.parametrize("example", sorted(CERTIFICATE_TABLE))
def test_admin_kubeconfig_certificate(example: str) -> None:
    kubeconfig = yaml.safe_load(built(example)["admin.kubeconfig"].content)
    (user,) = kubeconfig["users"]
    certificate = x509.load_pem_x509_certificate(
        base64.b64decode(user["user"]["client-certificate-data"])
    )
    (row,) = [row for row in CERTIFICATE_TABLE[example] if row[0] == "admin"]
    assert certificate_fields(certificate) == (row[2], row[3], row[4], row[5], row[6])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == example_cluster(example).endpoint.url


def test_uppercase_os_hostname_keeps_node_name() -> None:
    from compiler.pipeline import plan_text
    from tests.conftest import MINIMAL

    text = MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, hostname: PHOST01}")
    files = build_output_files(plan_text(text).cluster)
    document = yaml.safe_load(files["nodes/worker-1/user-data"].content)
    assert document["hostname"] == "PHOST01"
    written = {entry["path"]: entry["content"] for entry in document["write_files"]}
    assert "--hostname-override=worker-1" in written["/etc/systemd/system/kubelet.service"]
    proxy = yaml.safe_load(written["/var/lib/kube-proxy/config.conf"])
    assert proxy["hostnameOverride"] == "worker-1"
    kubelet_conf = yaml.safe_load(written["/etc/kubernetes/kubelet.conf"])
    assert kubelet_conf["users"][0]["name"] == "system:node:worker-1"
