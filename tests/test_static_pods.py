"""Static Pod manifests and the kube-proxy configuration: API validity, flags and topology."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from compiler import paths
from compiler.errors import ConsistencyError, KubeccError
from compiler.model import Cluster, Node
from compiler.pki import bundle, inventory
from compiler.plan import plan_etcd_members
from compiler.render.kube_proxy import (
    build_kube_proxy_config,
    build_kube_proxy_configuration,
    build_kube_proxy_files,
)
from compiler.render.static_pods import build_static_pod_files, build_static_pod_manifests
from tests.conftest import MINIMAL, cluster_from_text

VALIDATORS = Path(__file__).resolve().parent / "validators"
KUBE_PROXY_SCHEMA = json.loads(
    (VALIDATORS / "kube-proxy-config-v1alpha1-v0.34.schema.json").read_text()
)

MINOR_VERSIONS = {"1.34": "v1.34.11", "1.35": "v1.35.8", "1.36": "v1.36.4"}

# Three etcd members and a worker. Each test fills in the version.
THREE_CONTROL_PLANES = """\
apiVersion: kubecc/v1alpha1
kind: Cluster
metadata: {name: demo}
spec:
  kubernetes: {version: VERSION}
  network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}
  controlPlane: {endpoint: {host: 10.0.0.100, port: 6443}}
  nodes:
    - {name: cp-1, role: control-plane, ip: 10.0.0.11}
    - {name: cp-2, role: control-plane, ip: 10.0.0.12}
    - {name: cp-3, role: control-plane, ip: 10.0.0.13}
    - {name: worker-1, role: worker, ip: 10.0.0.20}
"""

CONTROL_PLANE_PODS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")

# Flags upstream removed; emitting one stops the component from starting.
REMOVED_FLAGS = (
    "insecure-port", "insecure-bind-address", "address", "port", "pod-infra-container-image",
    "admission-control", "basic-auth-file",
)


def three_control_planes(version: str = "v1.36.4") -> Cluster:
    return cluster_from_text(THREE_CONTROL_PLANES.replace("VERSION", version))


def parsed_manifests(cluster: Cluster, node: Node) -> dict[str, dict[str, Any]]:
    """Load each written manifest back from its YAML bytes, keyed by Pod name."""
    pods = {}
    for file in build_static_pod_files(cluster, node).values():
        pod = yaml.safe_load(file.content)
        pods[pod["metadata"]["name"]] = pod
    return pods


def container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def flags_of(pod: dict[str, Any]) -> dict[str, str]:
    """Parse `--name=value` arguments of the Pod's command into a mapping."""
    flags = {}
    for argument in container(pod)["command"][1:]:
        assert argument.startswith("--"), argument
        name, separator, value = argument[2:].partition("=")
        assert separator == "=", argument
        assert name not in flags, f"--{name} given twice"
        flags[name] = value
    return flags


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def with_etcd_version(cluster: Cluster, version: str) -> Cluster:
    release = dataclasses.replace(cluster.release, etcd_version=version)
    return dataclasses.replace(cluster, release=release)


# --- validity ------------------------------------------------------------------------------


def test_manifests_valid_for_examples(example: Cluster) -> None:
    for node in example.nodes:
        for path, pod in build_static_pod_manifests(example, node):
            try:
                kubernetes_validate.validate(pod, example.release.minor_text, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{node.name}:{path}: {error.message}")


@pytest.mark.parametrize("minor", sorted(MINOR_VERSIONS))
def test_manifests_valid_per_minor(minor: str) -> None:
    cluster = three_control_planes(MINOR_VERSIONS[minor])
    assert cluster.release.minor_text == minor
    for node in cluster.nodes:
        for path, pod in build_static_pod_manifests(cluster, node):
            try:
                kubernetes_validate.validate(pod, minor, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{node.name}:{path}: {error.message}")


def test_written_yaml_matches_objects(example: Cluster) -> None:
    for node in example.nodes:
        files = build_static_pod_files(example, node)
        for path, pod in build_static_pod_manifests(example, node):
            assert yaml.safe_load(files[path].content) == pod


@pytest.mark.parametrize(
    ("node_name", "expected"),
    [
        ("cp-1", [*CONTROL_PLANE_PODS, "kube-proxy"]),
        ("worker-1", ["kube-proxy"]),
    ],
    ids=["control-plane", "worker"],
)
def test_manifest_paths_per_role(minimal: Cluster, node_name: str, expected: list[str]) -> None:
    files = build_static_pod_files(minimal, minimal.node(node_name))
    assert sorted(files) == sorted(f"{paths.MANIFESTS_DIR}/{name}.yaml" for name in expected)
    for file in files.values():
        assert file.mode == 0o600, file.path


def test_no_placeholders_in_manifests(example: Cluster) -> None:
    for node in example.nodes:
        for text in strings_in(list(parsed_manifests(example, node).values())):
            for marker in ("{{", "{%", "${", "$("):
                assert marker not in text, f"{node.name}: {text!r}"


def test_no_removed_flags(example: Cluster) -> None:
    assert example.release.etcd_minor == (3, 6)
    for node in example.nodes:
        for name, pod in parsed_manifests(example, node).items():
            for flag in flags_of(pod):
                assert flag not in REMOVED_FLAGS, f"{name}: --{flag}"
                assert not flag.startswith("experimental-"), f"{name}: --{flag}"


# --- properties shared by every control-plane Pod ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("etcd", "etcd"),
        ("kube-apiserver", "kube_apiserver"),
        ("kube-controller-manager", "kube_controller_manager"),
        ("kube-scheduler", "kube_scheduler"),
    ],
)
def test_control_plane_pod_common(minimal: Cluster, name: str, image: str) -> None:
    pod = parsed_manifests(minimal, minimal.node("cp-1"))[name]
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["namespace"] == "kube-system"
    assert pod["metadata"]["labels"] == {"component": name, "tier": "control-plane"}
    assert pod["spec"]["hostNetwork"] is True
    assert pod["spec"]["priorityClassName"] == "system-node-critical"
    assert pod["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert container(pod)["image"] == getattr(minimal.release.images, image)
    assert container(pod)["imagePullPolicy"] == "IfNotPresent"
    assert container(pod)["command"][0] == name


def test_flags_sorted_by_name(example: Cluster) -> None:
    for node in example.nodes:
        for name, pod in parsed_manifests(example, node).items():
            assert list(flags_of(pod)) == sorted(flags_of(pod)), name


@pytest.mark.parametrize(
    ("name", "scheme", "port", "host", "liveness", "readiness", "startup"),
    [
        ("etcd", "HTTP", 2381, "127.0.0.1", "/livez", "/readyz", "/readyz"),
        ("kube-apiserver", "HTTPS", 6443, "10.0.0.10", "/livez", "/readyz", "/livez"),
        ("kube-controller-manager", "HTTPS", 10257, "127.0.0.1", "/healthz", None, "/healthz"),
        ("kube-scheduler", "HTTPS", 10259, "127.0.0.1", "/livez", "/readyz", "/livez"),
    ],
)
def test_probe_endpoints(
    minimal: Cluster, name: str, scheme: str, port: int, host: str,
    liveness: str, readiness: str | None, startup: str,
) -> None:
    main = container(parsed_manifests(minimal, minimal.node("cp-1"))[name])
    assert main["ports"] == [{"name": "probe-port", "containerPort": port, "protocol": "TCP"}]
    paths_by_kind = {"livenessProbe": liveness, "readinessProbe": readiness, "startupProbe": startup}
    for kind, path in paths_by_kind.items():
        if path is None:
            assert kind not in main
            continue
        assert main[kind]["httpGet"] == {
            "host": host, "path": path, "port": "probe-port", "scheme": scheme,
        }


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("livenessProbe", {"initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 15, "failureThreshold": 8}),
        ("readinessProbe", {"periodSeconds": 1, "timeoutSeconds": 15, "failureThreshold": 3}),
        ("startupProbe", {"initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 15, "failureThreshold": 24}),
    ],
)
def test_probe_timing(minimal: Cluster, kind: str, expected: dict[str, int]) -> None:
    for name, pod in parsed_manifests(minimal, minimal.node("cp-1")).items():
        probe = container(pod).get(kind)
        if probe is None:
            continue
        timing = {key: value for key, value in probe.items() if key != "httpGet"}
        assert timing == expected, name


@pytest.mark.parametrize(
    ("name", "requests"),
    [
        ("etcd", {"cpu": "100m", "memory": "100Mi"}),
        ("kube-apiserver", {"cpu": "250m"}),
        ("kube-controller-manager", {"cpu": "200m"}),
        ("kube-scheduler", {"cpu": "100m"}),
    ],
)
def test_resource_requests(minimal: Cluster, name: str, requests: dict[str, str]) -> None:
    main = container(parsed_manifests(minimal, minimal.node("cp-1"))[name])
    assert main["resources"] == {"requests": requests}


@pytest.mark.parametrize(
    ("name", "volumes"),
    [
        ("etcd", {
            "etcd-certs": ("/etc/kubernetes/pki/etcd", "DirectoryOrCreate", False),
            "etcd-data": ("/var/lib/etcd", "DirectoryOrCreate", False),
        }),
        ("kube-apiserver", {
            "ca-certs": ("/etc/ssl/certs", "DirectoryOrCreate", True),
            "etc-ca-certificates": ("/etc/ca-certificates", "DirectoryOrCreate", True),
            "k8s-certs": ("/etc/kubernetes/pki", "DirectoryOrCreate", True),
            "usr-local-share-ca-certificates": ("/usr/local/share/ca-certificates", "DirectoryOrCreate", True),
            "usr-share-ca-certificates": ("/usr/share/ca-certificates", "DirectoryOrCreate", True),
        }),
        ("kube-controller-manager", {
            "ca-certs": ("/etc/ssl/certs", "DirectoryOrCreate", True),
            "etc-ca-certificates": ("/etc/ca-certificates", "DirectoryOrCreate", True),
            "k8s-certs": ("/etc/kubernetes/pki", "DirectoryOrCreate", True),
            "kubeconfig": ("/etc/kubernetes/controller-manager.conf", "FileOrCreate", True),
            "usr-local-share-ca-certificates": ("/usr/local/share/ca-certificates", "DirectoryOrCreate", True),
            "usr-share-ca-certificates": ("/usr/share/ca-certificates", "DirectoryOrCreate", True),
        }),
        ("kube-scheduler", {
            "kubeconfig": ("/etc/kubernetes/scheduler.conf", "FileOrCreate", True),
        }),
        ("kube-proxy", {
            "kube-proxy": ("/var/lib/kube-proxy", "DirectoryOrCreate", True),
            "lib-modules": ("/lib/modules", None, True),
            "xtables-lock": ("/run/xtables.lock", "FileOrCreate", False),
        }),
    ],
)
def test_host_path_volumes(
    minimal: Cluster, name: str, volumes: dict[str, tuple[str, str | None, bool]]
) -> None:
    pod = parsed_manifests(minimal, minimal.node("cp-1"))[name]
    declared = {
        volume["name"]: (volume["hostPath"]["path"], volume["hostPath"].get("type"))
        for volume in pod["spec"]["volumes"]
    }
    mounts = {mount["name"]: (mount["mountPath"], mount["readOnly"]) for mount in container(pod)["volumeMounts"]}
    assert declared == {key: (path, kind) for key, (path, kind, _) in volumes.items()}
    assert mounts == {key: (path, read_only) for key, (path, _, read_only) in volumes.items()}
    assert list(declared) == sorted(declared)


# --- kube-apiserver, kube-controller-manager, kube-scheduler ----------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("advertise-address", "10.0.0.10"),
        ("allow-privileged", "true"),
        ("authorization-mode", "Node,RBAC"),
        ("client-ca-file", "/etc/kubernetes/pki/ca.crt"),
        ("enable-admission-plugins", "NodeRestriction"),
        ("etcd-cafile", "/etc/kubernetes/pki/etcd/ca.crt"),
        ("etcd-certfile", "/etc/kubernetes/pki/apiserver-etcd-client.crt"),
        ("etcd-keyfile", "/etc/kubernetes/pki/apiserver-etcd-client.key"),
        ("etcd-servers", "https://127.0.0.1:2379"),
        ("kubelet-certificate-authority", "/etc/kubernetes/pki/ca.crt"),
        ("kubelet-client-certificate", "/etc/kubernetes/pki/apiserver-kubelet-client.crt"),
        ("kubelet-client-key", "/etc/kubernetes/pki/apiserver-kubelet-client.key"),
        ("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname"),
        ("proxy-client-cert-file", "/etc/kubernetes/pki/front-proxy-client.crt"),
        ("proxy-client-key-file", "/etc/kubernetes/pki/front-proxy-client.key"),
        ("requestheader-allowed-names", "front-proxy-client"),
        ("requestheader-client-ca-file", "/etc/kubernetes/pki/front-proxy-ca.crt"),
        ("secure-port", "6443"),
        ("service-account-issuer", "https://kubernetes.default.svc.cluster.local"),
        ("service-account-key-file", "/etc/kubernetes/pki/sa.pub"),
        ("service-account-signing-key-file", "/etc/kubernetes/pki/sa.key"),
        ("service-cluster-ip-range", "10.32.0.0/24"),
        ("tls-cert-file", "/etc/kubernetes/pki/apiserver.crt"),
        ("tls-private-key-file", "/etc/kubernetes/pki/apiserver.key"),
    ],
)
def test_api_server_flag(minimal: Cluster, flag: str, value: str) -> None:
    pod = parsed_manifests(minimal, minimal.node("cp-1"))["kube-apiserver"]
    assert flags_of(pod)[flag] == value


@pytest.mark.parametrize(
    "flag", ["enable-bootstrap-token-auth", "anonymous-auth", "insecure-port", "bind-address"]
)
def test_api_server_flag_absent(minimal: Cluster, flag: str) -> None:
    pod = parsed_manifests(minimal, minimal.node("cp-1"))["kube-apiserver"]
    assert flag not in flags_of(pod)


def test_api_server_trusts_kubelet_signer(minimal: Cluster) -> None:
    signer = inventory.entry(bundle.KUBELET_SERVING).signer
    assert signer is not None
    pod = parsed_manifests(minimal, minimal.node("cp-1"))["kube-apiserver"]
    assert flags_of(pod)["kubelet-certificate-authority"] == inventory.entry(signer).cert_path


def test_api_server_advertises_own_address() -> None:
    cluster = three_control_planes()
    for node in cluster.control_planes:
        pod = parsed_manifests(cluster, node)["kube-apiserver"]
        assert flags_of(pod)["advertise-address"] == str(node.ip)
        assert container(pod)["livenessProbe"]["httpGet"]["host"] == str(node.ip)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("allocate-node-cidrs", "false"),
        ("authentication-kubeconfig", "/etc/kubernetes/controller-manager.conf"),
        ("authorization-kubeconfig", "/etc/kubernetes/controller-manager.conf"),
        ("bind-address", "127.0.0.1"),
        ("client-ca-file", "/etc/kubernetes/pki/ca.crt"),
        ("cluster-cidr", "10.200.0.0/16"),
        ("cluster-name", "demo"),
        ("cluster-signing-cert-file", "/etc/kubernetes/pki/ca.crt"),
        ("cluster-signing-key-file", "/etc/kubernetes/pki/ca.key"),
        ("controllers", "*"),
        ("kubeconfig", "/etc/kubernetes/controller-manager.conf"),
        ("leader-elect", "true"),
        ("requestheader-client-ca-file", "/etc/kubernetes/pki/front-proxy-ca.crt"),
        ("root-ca-file", "/etc/kubernetes/pki/ca.crt"),
        ("service-account-private-key-file", "/etc/kubernetes/pki/sa.key"),
        ("service-cluster-ip-range", "10.32.0.0/24"),
        ("use-service-account-credentials", "true"),
    ],
)
def test_controller_manager_flag(minimal: Cluster, flag: str, value: str) -> None:
    pod = parsed_manifests(minimal, minimal.node("cp-1"))["kube-controller-manager"]
    assert flags_of(pod)[flag] == value


def test_static_mode_allocates_no_blocks(minimal: Cluster) -> None:
    assert minimal.network.mode == "static"
    flags = flags_of(parsed_manifests(minimal, minimal.node("cp-1"))["kube-controller-manager"])
    assert flags["allocate-node-cidrs"] == "false"
    assert "node-cidr-mask-size" not in flags


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("static", {"allocate-node-cidrs": "false"}),
        ("flannel-vxlan", {"allocate-node-cidrs": "true", "node-cidr-mask-size": "24"}),
        ("flannel-host-gw", {"allocate-node-cidrs": "true", "node-cidr-mask-size": "24"}),
        ("none", {"allocate-node-cidrs": "true", "node-cidr-mask-size": "24"}),
    ],
)
def test_controller_manager_node_cidrs_per_mode(mode: str, expected: dict[str, str]) -> None:
    cluster = cluster_from_text(MINIMAL.replace("podCIDR:", f"mode: {mode}, podCIDR:"))
    flags = flags_of(parsed_manifests(cluster, cluster.node("cp-1"))["kube-controller-manager"])
    cidr_flags = {name: value for name, value in flags.items() if name.startswith(("allocate-", "node-cidr"))}
    assert cidr_flags == expected
    assert flags["cluster-cidr"] == "10.200.0.0/16"
    assert flags["service-cluster-ip-range"] == "10.32.0.0/24"


def test_controller_manager_mask_from_description() -> None:
    text = MINIMAL.replace("podCIDR:", "mode: flannel-vxlan, podCIDR:").replace(
        "nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 26"
    )
    cluster = cluster_from_text(text)
    flags = flags_of(parsed_manifests(cluster, cluster.node("cp-1"))["kube-controller-manager"])
    assert flags["node-cidr-mask-size"] == "26"


@pytest.mark.parametrize("provider", ["none", "external"])
def test_control_plane_without_cloud_provider_flag(provider: str) -> None:
    cluster = cluster_from_text(MINIMAL + f"  cloudProvider: {provider}\n")
    pods = parsed_manifests(cluster, cluster.node("cp-1"))
    for name in CONTROL_PLANE_PODS:
        flags = flags_of(pods[name])
        assert "cloud-provider" not in flags, name
        assert "cloud-config" not in flags, name
    assert flags_of(pods["kube-controller-manager"])["controllers"] == "*"


def test_scheduler_flags(minimal: Cluster) -> None:
    pod = parsed_manifests(minimal, minimal.node("cp-1"))["kube-scheduler"]
    assert flags_of(pod) == {
        "authentication-kubeconfig": "/etc/kubernetes/scheduler.conf",
        "authorization-kubeconfig": "/etc/kubernetes/scheduler.conf",
        "bind-address": "127.0.0.1",
        "kubeconfig": "/etc/kubernetes/scheduler.conf",
        "leader-elect": "true",
    }


def test_service_range_identical(example: Cluster) -> None:
    for node in example.control_planes:
        pods = parsed_manifests(example, node)
        api_server = flags_of(pods["kube-apiserver"])["service-cluster-ip-range"]
        controller_manager = flags_of(pods["kube-controller-manager"])["service-cluster-ip-range"]
        assert api_server == controller_manager
        assert api_server == ",".join(str(cidr) for cidr in example.network.service_cidrs)


def test_service_range_from_description(minimal: Cluster) -> None:
    pods = parsed_manifests(minimal, minimal.node("cp-1"))
    assert flags_of(pods["kube-apiserver"])["service-cluster-ip-range"] == "10.32.0.0/24"
    assert flags_of(pods["kube-controller-manager"])["service-cluster-ip-range"] == "10.32.0.0/24"


def test_issuer_follows_cluster_domain() -> None:
    text = MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, clusterDomain: corp.local}")
    cluster = cluster_from_text(text)
    pod = parsed_manifests(cluster, cluster.node("cp-1"))["kube-apiserver"]
    assert flags_of(pod)["service-account-issuer"] == "https://kubernetes.default.svc.corp.local"


# --- etcd ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("name", "cp-2"),
        ("advertise-client-urls", "https://10.0.0.12:2379"),
        ("listen-client-urls", "https://127.0.0.1:2379,https://10.0.0.12:2379"),
        ("listen-peer-urls", "https://10.0.0.12:2380"),
        ("initial-advertise-peer-urls", "https://10.0.0.12:2380"),
        ("initial-cluster", "cp-1=https://10.0.0.11:2380,cp-2=https://10.0.0.12:2380,cp-3=https://10.0.0.13:2380"),
        ("initial-cluster-state", "new"),
        ("initial-cluster-token", "demo"),
        ("listen-metrics-urls", "http://127.0.0.1:2381"),
        ("data-dir", "/var/lib/etcd"),
        ("cert-file", "/etc/kubernetes/pki/etcd/server.crt"),
        ("key-file", "/etc/kubernetes/pki/etcd/server.key"),
        ("trusted-ca-file", "/etc/kubernetes/pki/etcd/ca.crt"),
        ("client-cert-auth", "true"),
        ("peer-cert-file", "/etc/kubernetes/pki/etcd/peer.crt"),
        ("peer-key-file", "/etc/kubernetes/pki/etcd/peer.key"),
        ("peer-trusted-ca-file", "/etc/kubernetes/pki/etcd/ca.crt"),
        ("peer-client-cert-auth", "true"),
        ("snapshot-count", "10000"),
    ],
)
def test_etcd_flag_second_member(flag: str, value: str) -> None:
    cluster = three_control_planes()
    pod = parsed_manifests(cluster, cluster.node("cp-2"))["etcd"]
    assert flags_of(pod)[flag] == value


def test_etcd_name_in_initial_cluster(example: Cluster) -> None:
    for node in example.control_planes:
        manifests = parsed_manifests(example, node)
        if example.external_etcd is not None:
            assert "etcd" not in manifests
            continue
        flags = flags_of(manifests["etcd"])
        members = dict(entry.split("=", 1) for entry in flags["initial-cluster"].split(","))
        assert flags["name"] == node.name
        assert members[flags["name"]] == flags["initial-advertise-peer-urls"]
        assert list(members) == [member.name for member in example.control_planes]


def test_etcd_cluster_identical_on_members() -> None:
    cluster = three_control_planes()
    values = set()
    for node in cluster.control_planes:
        flags = flags_of(parsed_manifests(cluster, node)["etcd"])
        values.add((flags["initial-cluster"], flags["initial-cluster-token"], flags["initial-cluster-state"]))
    assert len(values) == 1


@pytest.mark.parametrize(
    ("etcd_version", "present", "absent"),
    [
        (
            "3.6.9",
            {"feature-gates": "InitialCorruptCheck=true", "watch-progress-notify-interval": "5s"},
            ("experimental-initial-corrupt-check", "experimental-watch-progress-notify-interval"),
        ),
        (
            "3.5.21",
            {"experimental-initial-corrupt-check": "true", "experimental-watch-progress-notify-interval": "5s"},
            ("feature-gates", "watch-progress-notify-interval"),
        ),
    ],
    ids=["etcd-3.6", "etcd-3.5"],
)
def test_etcd_flag_spelling(
    minimal: Cluster, etcd_version: str, present: dict[str, str], absent: tuple[str, ...]
) -> None:
    cluster = with_etcd_version(minimal, etcd_version)
    pod = parsed_manifests(cluster, cluster.node("cp-1"))["etcd"]
    flags = flags_of(pod)
    for flag, value in present.items():
        assert flags[flag] == value
    for flag in absent:
        assert flag not in flags
    kubernetes_validate.validate(pod, cluster.release.minor_text, strict=True)


def test_etcd_3_5_probes_health(minimal: Cluster) -> None:
    cluster = with_etcd_version(minimal, "3.5.21")
    main = container(parsed_manifests(cluster, cluster.node("cp-1"))["etcd"])
    assert main["livenessProbe"]["httpGet"]["path"] == "/health?exclude=NOSPACE&serializable=true"
    assert main["startupProbe"]["httpGet"]["path"] == "/health?serializable=false"
    assert "readinessProbe" not in main


def test_etcd_unknown_minor_rejected(minimal: Cluster) -> None:
    cluster = with_etcd_version(minimal, "3.4.30")
    with pytest.raises(KubeccError) as caught:
        build_static_pod_files(cluster, cluster.node("cp-1"))
    assert str(caught.value) == (
        "etcd 3.4.30 is not supported; kubecc has flag spellings for etcd 3.5, 3.6 only: "
        "pin an etcd image of one of those minors"
    )


def test_unsupported_kubernetes_minor_rejected(minimal: Cluster) -> None:
    release = dataclasses.replace(minimal.release, minor=(1, 33))
    cluster = dataclasses.replace(minimal, release=release)
    with pytest.raises(ConsistencyError):
        build_static_pod_files(cluster, cluster.node("cp-1"))


def test_etcd_ipv6_urls_bracketed(minimal: Cluster) -> None:
    address = ipaddress.ip_address("fd00::10")
    node = dataclasses.replace(minimal.node("cp-1"), ips=(address,))
    nodes = (node, minimal.node("worker-1"))
    cluster = dataclasses.replace(minimal, nodes=nodes, etcd_members=plan_etcd_members(nodes, {}))
    pods = parsed_manifests(cluster, node)
    etcd = flags_of(pods["etcd"])
    assert etcd["initial-cluster"] == "cp-1=https://[fd00::10]:2380"
    assert etcd["listen-client-urls"] == "https://[::1]:2379,https://[fd00::10]:2379"
    assert etcd["listen-metrics-urls"] == "http://[::1]:2381"
    assert container(pods["etcd"])["livenessProbe"]["httpGet"]["host"] == "::1"
    assert flags_of(pods["kube-apiserver"])["etcd-servers"] == "https://[::1]:2379"


# --- kube-proxy ------------------------------------------------------------------------------


def test_kube_proxy_pod(minimal: Cluster) -> None:
    pod = parsed_manifests(minimal, minimal.node("worker-1"))["kube-proxy"]
    main = container(pod)
    assert pod["metadata"]["namespace"] == "kube-system"
    assert pod["metadata"]["labels"] == {"component": "kube-proxy", "tier": "node"}
    assert pod["spec"]["hostNetwork"] is True
    assert pod["spec"]["priorityClassName"] == "system-node-critical"
    assert main["image"] == minimal.release.images.kube_proxy
    assert main["command"] == [
        "kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=worker-1",
    ]
    assert main["securityContext"] == {"privileged": True}


def test_kube_proxy_reads_written_config(minimal: Cluster) -> None:
    node = minimal.node("worker-1")
    pod = parsed_manifests(minimal, node)["kube-proxy"]
    config_flag = flags_of(pod)["config"]
    assert config_flag in build_kube_proxy_files(minimal, node)
    mounts = [mount["mountPath"] for mount in container(pod)["volumeMounts"]]
    assert str(Path(config_flag).parent) in mounts
    assert str(Path(paths.KUBE_PROXY_KUBECONFIG).parent) in mounts


@pytest.mark.parametrize("minor", sorted(MINOR_VERSIONS))
def test_kube_proxy_config_schema(minor: str) -> None:
    cluster = three_control_planes(MINOR_VERSIONS[minor])
    for node in cluster.nodes:
        document = yaml.safe_load(build_kube_proxy_config(cluster, node))
        jsonschema.Draft202012Validator(KUBE_PROXY_SCHEMA).validate(document)


def test_kube_proxy_schema_rejects_unknown_key() -> None:
    validator = jsonschema.Draft202012Validator(KUBE_PROXY_SCHEMA)
    assert not validator.is_valid({"hostnameOverrides": "worker-1"})


def test_kube_proxy_config_values(minimal: Cluster) -> None:
    node = minimal.node("worker-1")
    files = build_kube_proxy_files(minimal, node)
    assert list(files) == [paths.KUBE_PROXY_CONFIG]
    assert files[paths.KUBE_PROXY_CONFIG].mode == 0o600
    document = yaml.safe_load(files[paths.KUBE_PROXY_CONFIG].content)
    assert document == build_kube_proxy_configuration(minimal, node)
    assert document["apiVersion"] == "kubeproxy.config.k8s.io/v1alpha1"
    assert document["kind"] == "KubeProxyConfiguration"
    assert document["clientConnection"] == {"kubeconfig": "/var/lib/kube-proxy/kubeconfig.conf"}
    assert document["clusterCIDR"] == "10.200.0.0/16"
    assert document["hostnameOverride"] == "worker-1"
    assert document["mode"] == "iptables"
    assert document["bindAddress"] == "0.0.0.0"
    assert "conntrack" not in document


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_kube_proxy_mode_written(mode: str) -> None:
    cluster = cluster_from_text(MINIMAL + f"  kubeProxy: {{mode: {mode}}}\n")
    for node in cluster.nodes:
        document = yaml.safe_load(build_kube_proxy_config(cluster, node))
        assert document["mode"] == mode, node.name
        jsonschema.Draft202012Validator(KUBE_PROXY_SCHEMA).validate(document)


def test_cluster_cidr_matches_kube_proxy(example: Cluster) -> None:
    control_plane = example.control_planes[0]
    cluster_cidr = flags_of(parsed_manifests(example, control_plane)["kube-controller-manager"])["cluster-cidr"]
    for node in example.nodes:
        assert build_kube_proxy_configuration(example, node)["clusterCIDR"] == cluster_cidr
