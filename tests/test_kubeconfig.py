"""Kubeconfigs: document shape, which node gets which, servers, users and the SAN check."""

from __future__ import annotations

import base64
import dataclasses
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509

from compiler import paths
from compiler.errors import ConsistencyError
from compiler.model import Cluster, Endpoint
from compiler.pki.bundle import PkiBundle
from compiler.pki.place import build_pki_files
from compiler.render.kubeconfig import (
    build_admin_kubeconfig,
    build_kubeconfig,
    build_kubeconfig_files,
    validate_server_names,
)
from tests.conftest import MINIMAL, cluster_from_text, example_cluster
from tests.test_pki import (
    LOAD_BALANCER_TEXT,
    assert_verified,
    common_names,
    issue,
    openssl_verify,
    organizations,
)

CA_PEM = b"-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN EC PRIVATE KEY-----\nS0VZ\n-----END EC PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def node_kubeconfigs(cluster: Cluster, node_name: str, pki: PkiBundle) -> dict[str, Any]:
    files = build_kubeconfig_files(cluster, cluster.node(node_name), pki)
    return {path: yaml.safe_load(file.content) for path, file in files.items()}


def embedded_cert(document: dict[str, Any]) -> x509.Certificate:
    data = document["users"][0]["user"]["client-certificate-data"]
    return x509.load_pem_x509_certificate(base64.b64decode(data))


# ---------------------------------------------------------------------------------------------
# build_kubeconfig


def test_embedded_document() -> None:
    text = build_kubeconfig("demo", "https://10.0.0.10:6443", CA_PEM, "system:kube-scheduler",
                            client_cert_pem=CERT_PEM, client_key_pem=KEY_PEM)
    assert yaml.safe_load(text) == {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "demo", "cluster": {
            "certificate-authority-data": b64(CA_PEM), "server": "https://10.0.0.10:6443"}}],
        "contexts": [{"name": "system:kube-scheduler@demo",
                      "context": {"cluster": "demo", "user": "system:kube-scheduler"}}],
        "current-context": "system:kube-scheduler@demo",
        "preferences": {},
        "users": [{"name": "system:kube-scheduler", "user": {
            "client-certificate-data": b64(CERT_PEM), "client-key-data": b64(KEY_PEM)}}],
    }


def test_file_paths_document() -> None:
    text = build_kubeconfig("demo", "https://lb:6443", CA_PEM, "system:node:w",
                            client_cert_path="/c.pem", client_key_path="/k.pem")
    document = yaml.safe_load(text)
    assert document["users"] == [
        {"name": "system:node:w", "user": {"client-certificate": "/c.pem", "client-key": "/k.pem"}}
    ]
    assert document["current-context"] == "system:node:w@demo"


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"client_cert_pem": CERT_PEM},
        {"client_cert_path": "/c", "client_key_pem": KEY_PEM},
        {"client_cert_pem": CERT_PEM, "client_key_pem": KEY_PEM, "client_cert_path": "/c",
         "client_key_path": "/k"},
    ],
    ids=["none", "cert-only", "mixed", "both-kinds"],
)
def test_credentials_rejected(credentials: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as caught:
        build_kubeconfig("demo", "https://lb:6443", CA_PEM, "u", **credentials)
    assert str(caught.value) == (
        "a kubeconfig needs either the client certificate and key PEMs or both file paths"
    )
    assert "S0VZ" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Node kubeconfigs: paths, servers, users

CONTROLLER_MANAGER = "/etc/kubernetes/controller-manager.conf"
SCHEDULER = "/etc/kubernetes/scheduler.conf"
BOOTSTRAP = "/etc/kubernetes/bootstrap-admin.conf"
KUBELET = "/etc/kubernetes/kubelet.conf"
KUBE_PROXY = "/var/lib/kube-proxy/kubeconfig.conf"

# (example, node) -> {path: server}
SERVERS = {
    ("hard-way", "server"): {
        CONTROLLER_MANAGER: "https://10.240.0.10:6443", SCHEDULER: "https://10.240.0.10:6443",
        BOOTSTRAP: "https://10.240.0.10:6443", KUBELET: "https://10.240.0.10:6443",
        KUBE_PROXY: "https://10.240.0.10:6443",
    },
    ("hard-way", "node-0"): {KUBELET: "https://10.240.0.10:6443", KUBE_PROXY: "https://10.240.0.10:6443"},
    ("hard-way", "node-1"): {KUBELET: "https://10.240.0.10:6443", KUBE_PROXY: "https://10.240.0.10:6443"},
    ("ha", "cp-1"): {
        CONTROLLER_MANAGER: "https://10.0.1.10:6443", SCHEDULER: "https://10.0.1.10:6443",
        BOOTSTRAP: "https://10.0.1.10:6443", KUBELET: "https://10.0.1.10:6443",
        KUBE_PROXY: "https://10.0.1.10:6443",
    },
    ("ha", "cp-2"): {
        CONTROLLER_MANAGER: "https://10.0.1.11:6443", SCHEDULER: "https://10.0.1.11:6443",
        KUBELET: "https://10.0.1.11:6443", KUBE_PROXY: "https://10.0.1.11:6443",
    },
    ("ha", "cp-3"): {
        CONTROLLER_MANAGER: "https://10.0.1.12:6443", SCHEDULER: "https://10.0.1.12:6443",
        KUBELET: "https://10.0.1.12:6443", KUBE_PROXY: "https://10.0.1.12:6443",
    },
    ("ha", "worker-1"): {KUBELET: "https://lb.example.internal:6443", KUBE_PROXY: "https://lb.example.internal:6443"},
    ("ha", "worker-2"): {KUBELET: "https://lb.example.internal:6443", KUBE_PROXY: "https://lb.example.internal:6443"},
    ("ha", "worker-3"): {KUBELET: "https://lb.example.internal:6443", KUBE_PROXY: "https://lb.example.internal:6443"},
}

# path -> (inventory name, per node, user); "{node}" is the node's name.
CREDENTIALS = {
    CONTROLLER_MANAGER: ("controller-manager", False, "system:kube-controller-manager"),
    SCHEDULER: ("scheduler", False, "system:kube-scheduler"),
    BOOTSTRAP: ("bootstrap-admin", False, "kubecc:bootstrap"),
    KUBELET: ("kubelet-client", True, "system:node:{node}"),
    KUBE_PROXY: ("kube-proxy", True, "system:kube-proxy"),
}

SERVER_CASES = sorted(SERVERS)


@pytest.mark.parametrize("case", SERVER_CASES, ids=[f"{e}-{n}" for e, n in SERVER_CASES])
def test_node_kubeconfig_servers(
    issued: dict[str, tuple[Cluster, PkiBundle]], case: tuple[str, str]
) -> None:
    example_name, node_name = case
    cluster, pki = issued[example_name]
    documents = node_kubeconfigs(cluster, node_name, pki)
    assert {path: doc["clusters"][0]["cluster"]["server"] for path, doc in documents.items()} == SERVERS[case]


@pytest.mark.parametrize("case", SERVER_CASES, ids=[f"{e}-{n}" for e, n in SERVER_CASES])
def test_node_kubeconfig_users(
    issued: dict[str, tuple[Cluster, PkiBundle]], case: tuple[str, str]
) -> None:
    example_name, node_name = case
    cluster, pki = issued[example_name]
    ca_data = b64(pki.cert("ca").cert_pem)
    for path, document in node_kubeconfigs(cluster, node_name, pki).items():
        name, per_node, user = CREDENTIALS[path]
        user = user.replace("{node}", node_name)

        assert document["clusters"][0]["name"] == cluster.name
        assert document["clusters"][0]["cluster"]["certificate-authority-data"] == ca_data
        assert document["users"][0]["name"] == user
        assert document["contexts"] == [
            {"name": f"{user}@{cluster.name}", "context": {"cluster": cluster.name, "user": user}}
        ]
        assert document["current-context"] == f"{user}@{cluster.name}"
        credentials = document["users"][0]["user"]
        if path == KUBELET:
            assert credentials == {"client-certificate": paths.KUBELET_CLIENT_CURRENT,
                                   "client-key": paths.KUBELET_CLIENT_CURRENT}
            continue
        issued_cert = pki.cert(name, node_name if per_node else None)
        assert base64.b64decode(credentials["client-certificate-data"]) == issued_cert.cert_pem
        assert base64.b64decode(credentials["client-key-data"]) == issued_cert.key_pem
        assert common_names(embedded_cert(document).subject) == [user]


def test_node_kubeconfig_modes(issued: dict[str, tuple[Cluster, PkiBundle]]) -> None:
    for cluster, pki in issued.values():
        for node in cluster.nodes:
            for path, file in build_kubeconfig_files(cluster, node, pki).items():
                assert file.mode == 0o600, (node.name, path)


def test_admin_kubeconfig(issued: dict[str, tuple[Cluster, PkiBundle]]) -> None:
    cluster, pki = issued["ha"]
    document = yaml.safe_load(build_admin_kubeconfig(cluster, pki))
    cert = embedded_cert(document)

    assert document["clusters"][0]["cluster"]["server"] == "https://lb.example.internal:6443"
    assert document["current-context"] == "kubernetes-admin@ha"
    assert common_names(cert.subject) == ["kubernetes-admin"]
    assert organizations(cert.subject) == ["kubecc:cluster-admins"]


def test_load_balancer_servers() -> None:
    cluster = cluster_from_text(LOAD_BALANCER_TEXT)
    pki = issue(cluster)
    servers = {
        (node, path): document["clusters"][0]["cluster"]["server"]
        for node in ("cp-1", "cp-2", "worker-1")
        for path, document in node_kubeconfigs(cluster, node, pki).items()
    }
    admin = yaml.safe_load(build_admin_kubeconfig(cluster, pki))

    assert admin["clusters"][0]["cluster"]["server"] == "https://lb.example.internal:6443"
    assert servers[("worker-1", KUBELET)] == "https://lb.example.internal:6443"
    assert servers[("worker-1", KUBE_PROXY)] == "https://lb.example.internal:6443"
    for path in (CONTROLLER_MANAGER, SCHEDULER, KUBELET, KUBE_PROXY):
        assert servers[("cp-1", path)] == "https://10.0.0.10:6443"
        assert servers[("cp-2", path)] == "https://10.0.0.11:6443"
    validate_server_names(cluster, pki)


def test_kubelet_user_is_node_name() -> None:
    text = MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, hostname: ip-10-0-0-20}")
    cluster = cluster_from_text(text)
    pki = issue(cluster)
    kubelet = node_kubeconfigs(cluster, "worker-1", pki)[KUBELET]
    pem = build_pki_files(cluster, cluster.node("worker-1"), pki)[paths.KUBELET_CLIENT_INITIAL].content
    cert = x509.load_pem_x509_certificate(pem)

    assert kubelet["users"][0]["name"] == "system:node:worker-1"
    assert common_names(cert.subject) == ["system:node:worker-1"]
    assert organizations(cert.subject) == ["system:nodes"]


# ---------------------------------------------------------------------------------------------
# validate_server_names


def test_server_names_pass(example: Cluster) -> None:
    validate_server_names(example, issue(example))


def test_server_names_endpoint_missing() -> None:
    cluster = example_cluster("ha")
    pki = issue(cluster)
    moved = dataclasses.replace(cluster, endpoint=Endpoint("api.example.com", 6443))
    with pytest.raises(ConsistencyError) as caught:
        validate_server_names(moved, pki)
    assert str(caught.value) == "\n".join(
        "admin.kubeconfig: server https://api.example.com:6443 names host api.example.com, "
        f"which is missing from the SANs of the apiserver certificate of node {node}"
        for node in ("cp-1", "cp-2", "cp-3")
    )


def test_server_names_node_address_missing() -> None:
    cluster = cluster_from_text(MINIMAL)
    pki = issue(cluster)
    control_plane = dataclasses.replace(cluster.nodes[0], ips=(ip_address("10.0.0.11"),))
    moved = dataclasses.replace(cluster, nodes=(control_plane, cluster.nodes[1]))
    with pytest.raises(ConsistencyError) as caught:
        validate_server_names(moved, pki)
    assert str(caught.value) == (
        "/etc/kubernetes/controller-manager.conf on node cp-1: server https://10.0.0.11:6443 "
        "names host 10.0.0.11, which is missing from the SANs of the apiserver certificate of "
        "node cp-1"
    )


@pytest.mark.parametrize(
    ("host", "covered"),
    [("api.example.com", True), ("API.example.com", True), ("a.b.example.com", False),
     ("example.com", False)],
    ids=["one-label", "upper-case", "two-labels", "bare-domain"],
)
def test_server_names_wildcard(host: str, covered: bool) -> None:
    text = MINIMAL.replace("port: 6443}}", "port: 6443}, certSANs: ['*.example.com']}")
    cluster = cluster_from_text(text)
    pki = issue(cluster)
    moved = dataclasses.replace(cluster, endpoint=Endpoint(host, 6443))
    if covered:
        validate_server_names(moved, pki)
    else:
        with pytest.raises(ConsistencyError, match=f"names host {host}, which is missing"):
            validate_server_names(moved, pki)


# ---------------------------------------------------------------------------------------------
# Real TLS client: openssl verify


def answering_control_planes(cluster: Cluster, host: str) -> list[str]:
    """Return the control planes whose API server a client dialing `host` can reach."""
    if host == cluster.endpoint.host:
        return [node.name for node in cluster.control_planes]
    return [node.name for node in cluster.control_planes if str(node.ip) == host]


def kubeconfig_hosts(cluster: Cluster, pki: PkiBundle) -> set[str]:
    servers = {yaml.safe_load(build_admin_kubeconfig(cluster, pki))["clusters"][0]["cluster"]["server"]}
    for node in cluster.nodes:
        for document in node_kubeconfigs(cluster, node.name, pki).values():
            servers.add(document["clusters"][0]["cluster"]["server"])
    return {urlsplit(server).hostname or "" for server in servers}


@pytest.mark.consumer
@pytest.mark.parametrize("example_name", ["hard-way", "ha"])
def test_openssl_accepts_kubeconfig_hosts(
    issued: dict[str, tuple[Cluster, PkiBundle]], example_name: str, tmp_path: Path
) -> None:
    cluster, pki = issued[example_name]
    hosts = kubeconfig_hosts(cluster, pki)
    assert hosts == {cluster.endpoint.host, *(str(node.ip) for node in cluster.control_planes)}
    for host in sorted(hosts):
        answering = answering_control_planes(cluster, host)
        assert answering, host
        for node_name in answering:
            result = openssl_verify(pki.cert("ca").cert_pem, pki.cert("apiserver", node_name).cert_pem,
                                    "sslserver", tmp_path, host)
            assert_verified(result)

