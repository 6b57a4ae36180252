"""Addon objects: RBAC bindings and CoreDNS, applied once by the first control plane."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from compiler import paths
from compiler.model import Cluster
from compiler.pki import bundle, inventory
from compiler.render.addons import build_addon_files, build_addon_objects, build_corefile
from compiler.render.kubelet_config import build_kubelet_configuration
from tests.conftest import MINIMAL, cluster_from_text

MINOR_VERSIONS = {"1.34": "v1.34.11", "1.35": "v1.35.8", "1.36": "v1.36.4"}
RBAC_FILE = f"{paths.ADDONS_DIR}/00-rbac.yaml"
COREDNS_FILE = f"{paths.ADDONS_DIR}/10-coredns.yaml"


def with_network(extra: str) -> Cluster:
    """Plan the minimal cluster with more `spec.network` fields, given as flow-mapping text."""
    return cluster_from_text(MINIMAL.replace("nodeCIDRMaskSize: 24}", f"nodeCIDRMaskSize: 24, {extra}}}"))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [item for item in objects if item["kind"] == kind and item["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def written_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Load every document of the first control plane's addon files, in apply order."""
    files = build_addon_files(cluster, cluster.first_control_plane)
    documents: list[dict[str, Any]] = []
    for path in sorted(files):
        documents.extend(yaml.safe_load_all(files[path].content))
    return documents


def corefile_lines(cluster: Cluster) -> list[str]:
    config_map = find(written_objects(cluster), "ConfigMap", "coredns")
    return [line.strip() for line in config_map["data"]["Corefile"].splitlines()]


def coredns_container(cluster: Cluster) -> dict[str, Any]:
    deployment = find(written_objects(cluster), "Deployment", "coredns")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


# --- validity and placement --------------------------------------------------------------------


def test_objects_valid_for_examples(example: Cluster) -> None:
    for item in written_objects(example):
        try:
            kubernetes_validate.validate(item, example.release.minor_text, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{item['kind']}/{item['metadata']['name']}: {error.message}")


@pytest.mark.parametrize("minor", sorted(MINOR_VERSIONS))
def test_objects_valid_per_minor(minor: str) -> None:
    cluster = cluster_from_text(MINIMAL.replace("v1.36.2", MINOR_VERSIONS[minor]))
    assert cluster.release.minor_text == minor
    for item in build_addon_objects(cluster):
        try:
            kubernetes_validate.validate(item, minor, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{item['kind']}/{item['metadata']['name']}: {error.message}")


def test_files_only_on_first_control_plane(example: Cluster) -> None:
    for node in example.nodes:
        files = build_addon_files(example, node)
        if node.name == example.first_control_plane.name:
            assert sorted(files) == [RBAC_FILE, COREDNS_FILE]
        else:
            assert files == {}, node.name


def test_files_mode_secret(minimal: Cluster) -> None:
    for file in build_addon_files(minimal, minimal.first_control_plane).values():
        assert file.mode == 0o600, file.path


def test_written_documents_match_objects(example: Cluster) -> None:
    assert written_objects(example) == build_addon_objects(example)


@pytest.mark.parametrize(
    ("path", "kinds"),
    [
        (RBAC_FILE, ["ClusterRoleBinding"] * 3),
        (COREDNS_FILE, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"]),
    ],
    ids=["rbac", "coredns"],
)
def test_file_contents(minimal: Cluster, path: str, kinds: list[str]) -> None:
    files = build_addon_files(minimal, minimal.first_control_plane)
    documents = list(yaml.safe_load_all(files[path].content))
    assert [document["kind"] for document in documents] == kinds


def test_namespaced_objects_in_kube_system(minimal: Cluster) -> None:
    for item in build_addon_objects(minimal):
        if item["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in item["metadata"]
        else:
            assert item["metadata"]["namespace"] == "kube-system"


# --- RBAC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "role", "subject"),
    [
        ("kubecc:cluster-admins", "cluster-admin", {"kind": "Group", "name": "kubecc:cluster-admins"}),
        (
            "kubecc:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            {"kind": "Group", "name": "system:nodes"},
        ),
        (
            "kubecc:apiserver-kubelet-api-admin",
            "system:kubelet-api-admin",
            {"kind": "User", "name": "kube-apiserver-kubelet-client"},
        ),
        ("system:coredns", "system:coredns", {"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}),
    ],
)
def test_cluster_role_binding(minimal: Cluster, name: str, role: str, subject: dict[str, str]) -> None:
    binding = find(build_addon_objects(minimal), "ClusterRoleBinding", name)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
    assert len(binding["subjects"]) == 1
    actual = {key: value for key, value in binding["subjects"][0].items() if key != "apiGroup"}
    assert actual == subject


def test_bindings_match_certificate_subjects(minimal: Cluster) -> None:
    objects = build_addon_objects(minimal)
    admin_group = inventory.entry(bundle.ADMIN).organizations[0]
    kubelet_client = inventory.entry(bundle.APISERVER_KUBELET_CLIENT).common_name
    admins = find(objects, "ClusterRoleBinding", "kubecc:cluster-admins")
    kubelet_api = find(objects, "ClusterRoleBinding", "kubecc:apiserver-kubelet-api-admin")
    assert admins["subjects"][0]["name"] == admin_group
    assert kubelet_api["subjects"][0]["name"] == kubelet_client


def test_coredns_cluster_role(minimal: Cluster) -> None:
    role = find(build_addon_objects(minimal), "ClusterRole", "system:coredns")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]


# --- Corefile --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstreams", "forward"),
    [
        ("[]", "forward . /etc/resolv.conf {"),
        ("[192.0.2.53]", "forward . 192.0.2.53 {"),
        ("[192.0.2.53, 198.51.100.53]", "forward . 192.0.2.53 198.51.100.53 {"),
    ],
    ids=["none", "one", "two"],
)
def test_corefile_forward(upstreams: str, forward: str) -> None:
    cluster = with_network(f"dnsUpstreams: {upstreams}")
    lines = corefile_lines(cluster)
    assert [line for line in lines if line.startswith("forward ")] == [forward]
    assert lines[lines.index(forward) + 1] == "max_concurrent 1000"


def test_corefile_default_forward(minimal: Cluster) -> None:
    assert minimal.network.dns_upstreams == ()
    assert "forward . /etc/resolv.conf {" in corefile_lines(minimal)


def test_corefile_cluster_domain() -> None:
    lines = corefile_lines(with_network("clusterDomain: corp.local"))
    assert "kubernetes corp.local in-addr.arpa ip6.arpa {" in lines


def test_corefile_plugins(minimal: Cluster) -> None:
    lines = build_corefile(minimal).splitlines()
    assert lines[0] == ".:53 {"
    assert lines[-1] == "}"
    directives = [line.strip() for line in lines if line.startswith("    ") and not line.startswith("     ")]
    assert directives == [
        "errors", "health {", "}", "ready", "kubernetes cluster.local in-addr.arpa ip6.arpa {", "}",
        "prometheus :9153", "forward . /etc/resolv.conf {", "}", "cache 30", "loop", "reload",
        "loadbalance",
    ]
    nested = [line.strip() for line in lines if line.startswith("        ")]
    assert nested == [
        "lameduck 5s", "pods insecure", "fallthrough in-addr.arpa ip6.arpa", "ttl 30",
        "max_concurrent 1000",
    ]


def test_corefile_braces_balanced(example: Cluster) -> None:
    text = build_corefile(example)
    assert text.count("{") == text.count("}")


# --- CoreDNS Deployment and Service ----------------------------------------------------------


def test_dns_service_ip_matches_kubelet() -> None:
    cluster = cluster_from_text(MINIMAL)
    service = find(build_addon_objects(cluster), "Service", "kube-dns")
    assert service["spec"]["clusterIP"] == "10.32.0.10"
    for node in cluster.nodes:
        assert build_kubelet_configuration(cluster, node)["clusterDNS"] == [service["spec"]["clusterIP"]]


def test_dns_ip_matches_kubelet_examples(example: Cluster) -> None:
    service = find(build_addon_objects(example), "Service", "kube-dns")
    for node in example.nodes:
        assert build_kubelet_configuration(example, node)["clusterDNS"] == [service["spec"]["clusterIP"]]


def test_dns_service(minimal: Cluster) -> None:
    service = find(build_addon_objects(minimal), "Service", "kube-dns")
    assert service["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert service["spec"]["selector"] == {"k8s-app": "kube-dns"}
    ports = {(port["name"], port["port"], port["protocol"]) for port in service["spec"]["ports"]}
    assert ports == {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")}


def test_service_selects_deployment_pods(minimal: Cluster) -> None:
    objects = build_addon_objects(minimal)
    service = find(objects, "Service", "kube-dns")
    deployment = find(objects, "Deployment", "coredns")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod_labels
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_deployment_pod_spec(minimal: Cluster) -> None:
    deployment = find(build_addon_objects(minimal), "Deployment", "coredns")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["serviceAccountName"] == "coredns"
    assert spec["dnsPolicy"] == "Default"
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in spec["tolerations"]
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in spec["tolerations"]
    preferred = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [term["podAffinityTerm"]["topologyKey"] for term in preferred] == ["kubernetes.io/hostname"]


def test_deployment_container(minimal: Cluster) -> None:
    main = coredns_container(minimal)
    assert main["image"] == minimal.release.images.coredns
    assert main["securityContext"]["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8181, "scheme": "HTTP"}
    assert main["resources"] == {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}}
    ports = {(port["name"], port["containerPort"], port["protocol"]) for port in main["ports"]}
    assert ports == {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")}


def test_deployment_mounts_corefile(minimal: Cluster) -> None:
    objects = build_addon_objects(minimal)
    spec = find(objects, "Deployment", "coredns")["spec"]["template"]["spec"]
    config_map = find(objects, "ConfigMap", "coredns")
    main = coredns_container(minimal)

    volume = spec["volumes"][0]
    mount = main["volumeMounts"][0]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert [item["key"] for item in volume["configMap"]["items"]] == list(config_map["data"])
    assert mount["name"] == volume["name"]
    assert main["args"] == ["-conf", f"{mount['mountPath']}/Corefile"]
