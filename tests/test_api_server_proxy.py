"""The workers' kube-apiserver-proxy for clusters without an endpoint: Pod, config, addresses."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from compiler import paths
from compiler.files import MODE_PUBLIC, MODE_SECRET
from compiler.model import Cluster
from compiler.pki.bundle import PkiBundle
from compiler.render.api_server_proxy import build_api_server_proxy_files, build_proxy_pod
from compiler.render.kubeconfig import (
    build_admin_kubeconfig,
    build_kubeconfig_files,
    validate_server_names,
)
from compiler.render.static_pods import SUPPORTED_MINORS
from tests.conftest import EXAMPLES, MINIMAL, cluster_from_text, example_cluster
from tests.test_pki import assert_verified, issue, openssl_verify

MANIFEST = f"{paths.MANIFESTS_DIR}/kube-apiserver-proxy.yaml"
NO_ENDPOINT = MINIMAL.replace("{endpoint: {host: 10.0.0.10, port: 6443}}", "{}")
IPV6_ONLY = NO_ENDPOINT.replace(
    "network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}",
    "network: {podCIDR: 'fd00:10:200::/56', serviceCIDR: 'fd00:10:32::/112'}",
).replace("10.0.0.10", "'fd00::10'").replace("10.0.0.20", "'fd00::20'")
EXAMPLE_TEXT = (EXAMPLES / "no-lb.yaml").read_text()


@pytest.fixture(scope="module")
def no_lb() -> tuple[Cluster, PkiBundle]:
    cluster = example_cluster("no-lb")
    return cluster, issue(cluster)


def proxy_pod(cluster: Cluster) -> dict[str, Any]:
    files = build_api_server_proxy_files(cluster, cluster.workers[0])
    pod: dict[str, Any] = yaml.safe_load(files[MANIFEST].content)
    return pod


def parse_haproxy(text: str) -> dict[str, list[list[str]]]:
    """Split an HAProxy config into sections ("global", "frontend x", ...) of word lists."""
    sections: dict[str, list[list[str]]] = {}
    current = ""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not line[0].isspace():
            current = " ".join(words)
            sections[current] = []
        else:
            sections[current].append(words)
    return sections


def proxy_config(cluster: Cluster) -> dict[str, list[list[str]]]:
    files = build_api_server_proxy_files(cluster, cluster.workers[0])
    return parse_haproxy(files[paths.API_SERVER_PROXY_CONFIG].content.decode())


def server(document: dict[str, Any]) -> str:
    url: str = document["clusters"][0]["cluster"]["server"]
    return url


def test_no_lb_example_has_no_endpoint() -> None:
    cluster = example_cluster("no-lb")
    assert cluster.endpoint is None
    assert [str(node.ip) for node in cluster.control_planes] == [
        "10.0.4.10", "10.0.4.11", "10.0.4.12",
    ]


def test_description_without_endpoint_accepted() -> None:
    cluster = cluster_from_text(NO_ENDPOINT)
    assert cluster.endpoint is None
    assert cluster.has_local_api_server_proxy


def test_proxy_files_only_on_workers() -> None:
    cluster = example_cluster("no-lb")
    for node in cluster.control_planes:
        assert build_api_server_proxy_files(cluster, node) == {}
    for node in cluster.workers:
        files = build_api_server_proxy_files(cluster, node)
        assert sorted(files) == [paths.API_SERVER_PROXY_CONFIG, MANIFEST]
        assert files[paths.API_SERVER_PROXY_CONFIG].mode == MODE_PUBLIC
        assert files[MANIFEST].mode == MODE_SECRET


@pytest.mark.parametrize("name", ["hard-way", "ha"])
def test_no_proxy_with_endpoint(name: str) -> None:
    cluster = example_cluster(name)
    for node in cluster.nodes:
        assert build_api_server_proxy_files(cluster, node) == {}


def test_config_backends_every_control_plane() -> None:
    cluster = example_cluster("no-lb")
    backend = proxy_config(cluster)["backend kube-apiserver"]
    servers = [words for words in backend if words[0] == "server"]
    assert [words[1] for words in servers] == ["cp-1", "cp-2", "cp-3"]
    assert [words[2] for words in servers] == [
        f"{node.ip}:6443" for node in cluster.control_planes
    ]
    assert all(words[3:] == ["check"] for words in servers)


def test_config_listens_on_loopback() -> None:
    config = proxy_config(example_cluster("no-lb"))
    frontend = config["frontend kube-apiserver"]
    assert ["bind", "127.0.0.1:6443"] in frontend
    assert ["default_backend", "kube-apiserver"] in frontend
    assert ["mode", "tcp"] in config["defaults"]


def test_config_health_frontend() -> None:
    config = proxy_config(example_cluster("no-lb"))
    health = config["frontend healthz"]
    assert ["bind", "127.0.0.1:8081"] in health
    assert ["mode", "http"] in health
    assert ["monitor-uri", "/healthz"] in health


def test_config_ipv6_backend() -> None:
    backend = proxy_config(cluster_from_text(IPV6_ONLY))["backend kube-apiserver"]
    assert ["server", "cp-1", "ipv6@fd00::10:6443", "check"] in backend


@pytest.mark.parametrize("minor", sorted(f"{major}.{minor}" for major, minor in SUPPORTED_MINORS))
def test_pod_valid_per_minor(minor: str) -> None:
    kubernetes_validate.validate(build_proxy_pod(example_cluster("no-lb")), minor, strict=True)


def test_pod_fields() -> None:
    pod = proxy_pod(example_cluster("no-lb"))
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert pod["metadata"]["name"] == "kube-apiserver-proxy"
    assert pod["metadata"]["namespace"] == "kube-system"
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert container["image"] == "docker.io/library/haproxy:3.1.7-alpine"
    assert container["resources"]["requests"] == {"cpu": "25m", "memory": "32Mi"}
    assert container["command"][-2:] == ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
def test_pod_probe(probe: str) -> None:
    (container,) = proxy_pod(example_cluster("no-lb"))["spec"]["containers"]
    assert container[probe]["httpGet"] == {
        "host": "127.0.0.1", "path": "/healthz", "port": 8081, "scheme": "HTTP",
    }


def test_pod_mounts_config_directory() -> None:
    pod = proxy_pod(example_cluster("no-lb"))
    (container,) = pod["spec"]["containers"]
    assert pod["spec"]["volumes"] == [{
        "name": "kube-apiserver-proxy",
        "hostPath": {"path": paths.API_SERVER_PROXY_DIR, "type": "Directory"},
    }]
    assert container["volumeMounts"] == [{
        "name": "kube-apiserver-proxy", "mountPath": "/usr/local/etc/haproxy", "readOnly": True,
    }]
    assert Path(paths.API_SERVER_PROXY_CONFIG).parent == Path(paths.API_SERVER_PROXY_DIR)


def test_worker_kubeconfigs_use_proxy(no_lb: tuple[Cluster, PkiBundle]) -> None:
    cluster, pki = no_lb
    for node in cluster.workers:
        files = build_kubeconfig_files(cluster, node, pki)
        assert sorted(files) == [paths.KUBELET_KUBECONFIG, paths.KUBE_PROXY_KUBECONFIG]
        for file in files.values():
            assert server(yaml.safe_load(file.content)) == "https://127.0.0.1:6443"


def test_control_plane_kubeconfigs_own_address(no_lb: tuple[Cluster, PkiBundle]) -> None:
    cluster, pki = no_lb
    for node in cluster.control_planes:
        for file in build_kubeconfig_files(cluster, node, pki).values():
            assert server(yaml.safe_load(file.content)) == f"https://{node.ip}:6443"


def test_admin_kubeconfig_first_control_plane(no_lb: tuple[Cluster, PkiBundle]) -> None:
    cluster, pki = no_lb
    assert server(yaml.safe_load(build_admin_kubeconfig(cluster, pki))) == "https://10.0.4.10:6443"


def test_apiserver_sans_include_loopback(no_lb: tuple[Cluster, PkiBundle]) -> None:
    cluster, pki = no_lb
    for node in cluster.control_planes:
        certificate = pki.cert("apiserver", node.name).certificate
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
        assert node.ip in sans.get_values_for_type(x509.IPAddress)
        assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_apiserver_sans_without_loopback_with_endpoint() -> None:
    cluster = example_cluster("ha")
    certificate = issue(cluster).cert("apiserver", "cp-1").certificate
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") not in sans.get_values_for_type(x509.IPAddress)


def test_server_names_pass_without_endpoint(no_lb: tuple[Cluster, PkiBundle]) -> None:
    cluster, pki = no_lb
    validate_server_names(cluster, pki)


@pytest.mark.consumer
def test_openssl_accepts_proxy_host(no_lb: tuple[Cluster, PkiBundle], tmp_path: Path) -> None:
    cluster, pki = no_lb
    host = urlsplit(cluster.api_server_url(cluster.workers[0])).hostname
    assert host == "127.0.0.1"
    for node in cluster.control_planes:
        result = openssl_verify(pki.cert("ca").cert_pem, pki.cert("apiserver", node.name).cert_pem,
                                "sslserver", tmp_path, host)
        assert_verified(result)


@pytest.mark.consumer
@pytest.mark.parametrize("text", [EXAMPLE_TEXT, IPV6_ONLY], ids=["no-lb", "ipv6-only"])
def test_haproxy_accepts_config(text: str, tmp_path: Path) -> None:
    # NOTE: Debian 12 ships HAProxy 2.6 while the Pod runs 3.1.7, so this checks only the
    # syntax that 2.6 accepts.
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy not found; install it (Debian: apt-get install haproxy) or run "
                    "tests/run as root", pytrace=False)
    cluster = cluster_from_text(text)
    files = build_api_server_proxy_files(cluster, cluster.workers[0])
    config = tmp_path / "haproxy.cfg"
    config.write_bytes(files[paths.API_SERVER_PROXY_CONFIG].content)
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout, result.stdout
