"""Flannel objects of the flannel modes: API validity, configuration, MTU and DaemonSet."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from compiler import paths
from compiler.model import Cluster
from compiler.render.addons import build_addon_files
from compiler.render.flannel import build_flannel_objects
from tests.conftest import MINIMAL, cluster_from_text

MINOR_VERSIONS = {"1.34": "v1.34.11", "1.35": "v1.35.8", "1.36": "v1.36.4"}
FLANNEL_MODES = ["flannel-vxlan", "flannel-host-gw"]
FLANNEL_FILE = f"{paths.ADDONS_DIR}/20-flannel.yaml"
FLANNEL_IMAGE = "docker.io/flannel/flannel:v0.28.4"
CNI_PLUGIN_IMAGE = "docker.io/flannel/flannel-cni-plugin:v1.7.1-flannel1"


def with_mode(mode: str, extra: str = "") -> Cluster:
    """Plan the minimal cluster in a network mode, with more `spec.network` fields."""
    return cluster_from_text(MINIMAL.replace("podCIDR:", f"mode: {mode}, {extra}podCIDR:"))


def find(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [item for item in objects if item["kind"] == kind]
    assert len(matches) == 1, f"{kind}: {len(matches)} found"
    return matches[0]


def written_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Load the documents of 20-flannel.yaml back from the first control plane's file."""
    files = build_addon_files(cluster, cluster.first_control_plane)
    return list(yaml.safe_load_all(files[FLANNEL_FILE].content))


def config_data(cluster: Cluster, key: str) -> dict[str, Any]:
    """Parse one JSON document of the kube-flannel-cfg ConfigMap."""
    config_map = find(written_objects(cluster), "ConfigMap")
    document: dict[str, Any] = json.loads(config_map["data"][key])
    return document


def pod_spec(cluster: Cluster) -> dict[str, Any]:
    spec: dict[str, Any] = find(written_objects(cluster), "DaemonSet")["spec"]["template"]["spec"]
    return spec


def containers_by_name(spec: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for container in spec[key]}


# --- validity and placement --------------------------------------------------------------------


@pytest.mark.parametrize("mode", FLANNEL_MODES)
@pytest.mark.parametrize("minor", sorted(MINOR_VERSIONS))
def test_objects_valid_per_minor(minor: str, mode: str) -> None:
    cluster = cluster_from_text(
        MINIMAL.replace("v1.36.2", MINOR_VERSIONS[minor]).replace("podCIDR:", f"mode: {mode}, podCIDR:")
    )
    for item in build_flannel_objects(cluster):
        try:
            kubernetes_validate.validate(item, minor, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{item['kind']}/{item['metadata']['name']}: {error.message}")


@pytest.mark.parametrize("mode", FLANNEL_MODES)
def test_file_on_first_control_plane_only(mode: str) -> None:
    cluster = with_mode(mode)
    files = build_addon_files(cluster, cluster.first_control_plane)
    assert files[FLANNEL_FILE].mode == 0o600
    assert written_objects(cluster) == build_flannel_objects(cluster)
    assert build_addon_files(cluster, cluster.node("worker-1")) == {}


@pytest.mark.parametrize("mode", ["static", "none"])
def test_absent_outside_flannel_modes(mode: str) -> None:
    cluster = with_mode(mode)
    assert build_flannel_objects(cluster) == []
    assert FLANNEL_FILE not in build_addon_files(cluster, cluster.first_control_plane)


def test_object_kinds_and_namespace() -> None:
    objects = written_objects(with_mode("flannel-vxlan"))
    assert [(item["kind"], item["metadata"]["name"]) for item in objects] == [
        ("Namespace", "kube-flannel"),
        ("ServiceAccount", "flannel"),
        ("ClusterRole", "flannel"),
        ("ClusterRoleBinding", "flannel"),
        ("ConfigMap", "kube-flannel-cfg"),
        ("DaemonSet", "kube-flannel-ds"),
    ]
    for item in objects:
        if item["kind"] in ("ServiceAccount", "ConfigMap", "DaemonSet"):
            assert item["metadata"]["namespace"] == "kube-flannel", item["kind"]
        else:
            assert "namespace" not in item["metadata"], item["kind"]
    namespace = find(objects, "Namespace")
    assert namespace["metadata"]["labels"] == {"pod-security.kubernetes.io/enforce": "privileged"}


def test_rbac() -> None:
    objects = written_objects(with_mode("flannel-vxlan"))
    assert find(objects, "ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ]
    binding = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]
    assert pod_spec(with_mode("flannel-vxlan"))["serviceAccountName"] == "flannel"


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "backend"), [("flannel-vxlan", "vxlan"), ("flannel-host-gw", "host-gw")])
def test_net_conf(mode: str, backend: str) -> None:
    assert config_data(with_mode(mode), "net-conf.json") == {
        "Network": "10.200.0.0/16", "Backend": {"Type": backend},
    }


def test_cni_conf() -> None:
    document = config_data(with_mode("flannel-vxlan"), "cni-conf.json")
    assert document["name"] == "cbr0"
    assert document["cniVersion"] == "0.3.1"
    flannel, portmap = document["plugins"]
    assert flannel == {
        "type": "flannel",
        "delegate": {"hairpinMode": True, "isDefaultGateway": True, "mtu": 1450},
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


@pytest.mark.parametrize(
    ("mode", "extra", "mtu"),
    [
        ("flannel-vxlan", "mtu: 1450, ", 1400),
        ("flannel-vxlan", "", 1450),
        ("flannel-vxlan", "mtu: 9000, ", 8950),
        ("flannel-vxlan", "mtu: 626, ", 576),
        ("flannel-host-gw", "mtu: 1450, ", 1450),
        ("flannel-host-gw", "", 1500),
    ],
    ids=["vxlan-1450", "vxlan-default", "vxlan-jumbo", "vxlan-smallest", "host-gw-1450", "host-gw-default"],
)
def test_cni_conf_mtu(mode: str, extra: str, mtu: int) -> None:
    document = config_data(with_mode(mode, extra), "cni-conf.json")
    assert document["plugins"][0]["delegate"]["mtu"] == mtu


# --- DaemonSet -------------------------------------------------------------------------------


def test_daemon_set_pod() -> None:
    cluster = with_mode("flannel-vxlan")
    daemon_set = find(written_objects(cluster), "DaemonSet")
    spec = pod_spec(cluster)
    labels = daemon_set["spec"]["template"]["metadata"]["labels"]
    assert daemon_set["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists", "effect": "NoSchedule"}]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]


def test_init_containers_install_plugin_and_conflist() -> None:
    spec = pod_spec(with_mode("flannel-vxlan"))
    init = containers_by_name(spec, "initContainers")
    assert list(init) == ["install-cni-plugin", "install-cni"]

    plugin = init["install-cni-plugin"]
    assert plugin["image"] == CNI_PLUGIN_IMAGE
    assert [plugin["command"], plugin["args"]] == [["cp"], ["-f", "/flannel", "/opt/cni/bin/flannel"]]
    assert plugin["volumeMounts"] == [{"name": "cni-plugin", "mountPath": "/opt/cni/bin"}]

    conflist = init["install-cni"]
    assert conflist["image"] == FLANNEL_IMAGE
    assert conflist["command"] == ["cp"]
    assert conflist["args"] == ["-f", "/etc/kube-flannel/cni-conf.json", "/etc/cni/net.d/10-flannel.conflist"]
    assert {mount["name"]: mount["mountPath"] for mount in conflist["volumeMounts"]} == {
        "cni": "/etc/cni/net.d", "flannel-cfg": "/etc/kube-flannel/",
    }


def test_flannel_container() -> None:
    spec = pod_spec(with_mode("flannel-host-gw"))
    (main,) = spec["containers"]
    assert main["name"] == "kube-flannel"
    assert main["image"] == FLANNEL_IMAGE
    assert main["command"] == ["/opt/bin/flanneld"]
    assert main["args"] == ["--ip-masq", "--kube-subnet-mgr", "--iface=$(NODE_IP)"]
    assert main["env"] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
    ]
    assert main["securityContext"] == {"privileged": False, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}
    assert {mount["name"]: mount["mountPath"] for mount in main["volumeMounts"]} == {
        "run": "/run/flannel", "flannel-cfg": "/etc/kube-flannel/", "xtables-lock": "/run/xtables.lock",
    }


def test_volumes() -> None:
    cluster = with_mode("flannel-vxlan")
    spec = pod_spec(cluster)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes == {
        "run": {"name": "run", "hostPath": {"path": "/run/flannel"}},
        "cni-plugin": {"name": "cni-plugin", "hostPath": {"path": "/opt/cni/bin"}},
        "cni": {"name": "cni", "hostPath": {"path": "/etc/cni/net.d"}},
        "flannel-cfg": {"name": "flannel-cfg", "configMap": {"name": "kube-flannel-cfg"}},
        "xtables-lock": {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
    }
    mounted = {
        mount["name"]
        for container in [*spec["initContainers"], *spec["containers"]]
        for mount in container["volumeMounts"]
    }
    assert mounted == set(volumes)


def test_images_ignore_registry_mirror() -> None:
    cluster = cluster_from_text(
        MINIMAL.replace("podCIDR:", "mode: flannel-vxlan, podCIDR:")
        + "  images: {registry: mirror.example.internal/k8s}\n"
    )
    assert cluster.release.images.flannel == FLANNEL_IMAGE
    assert cluster.release.images.flannel_cni_plugin == CNI_PLUGIN_IMAGE
    assert cluster.release.images.kube_proxy.startswith("mirror.example.internal/k8s/")
    images = {
        container["image"]
        for container in [*pod_spec(cluster)["initContainers"], *pod_spec(cluster)["containers"]]
    }
    assert images == {FLANNEL_IMAGE, CNI_PLUGIN_IMAGE}
