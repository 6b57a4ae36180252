"""KubeletConfiguration, the resolv.conf drop-in and the kubelet's command-line flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from compiler import paths
from compiler.model import Cluster
from compiler.pki import bundle, inventory
from compiler.render.kube_proxy import build_kube_proxy_configuration
from compiler.render.kubelet_config import (
    CGROUP_DRIVER,
    RESOLV_CONF_DROPIN,
    SYSTEMD_CGROUP,
    build_kubelet_files,
    build_resolv_conf_dropin,
    kubelet_flags,
)
from compiler.render.static_pods import build_static_pod_manifests
from tests.conftest import MINIMAL, cluster_from_text

VALIDATORS = Path(__file__).resolve().parent / "validators"
# KubeletConfiguration of k8s.io/kubelet v0.34 serves 1.34 and 1.35, and v0.36 serves 1.36.
SCHEMA_FILES = {
    "1.34": "kubelet-config-v1beta1-v0.34.schema.json",
    "1.35": "kubelet-config-v1beta1-v0.34.schema.json",
    "1.36": "kubelet-config-v1beta1-v0.36.schema.json",
}
MINOR_VERSIONS = {"1.34": "v1.34.11", "1.35": "v1.35.8", "1.36": "v1.36.4"}

LABELLED = """\
apiVersion: kubecc/v1alpha1
kind: Cluster
metadata: {name: demo}
spec:
  kubernetes: {version: v1.36.4}
  network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}
  kubelet: {maxPods: 50, containerLogMaxSize: 20Mi, containerLogMaxFiles: 3}
  controlPlane: {endpoint: {host: 10.0.0.10, port: 6443}}
  nodes:
    - {name: cp-1, role: control-plane, ip: 10.0.0.10}
    - name: worker-1
      role: worker
      ip: 10.0.0.20
      hostname: ip-10-0-0-20
      labels: {topology.kubernetes.io/zone: zone-a, node.kubernetes.io/pool: blue}
      taints: [{key: dedicated, value: gpu, effect: NoSchedule}]
"""


def validator(minor: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((VALIDATORS / SCHEMA_FILES[minor]).read_text())
    return jsonschema.Draft202012Validator(schema)


def kubelet_config(cluster: Cluster, node_name: str) -> dict[str, Any]:
    """Load the node's written config.yaml back from its YAML bytes."""
    files = build_kubelet_files(cluster, cluster.node(node_name))
    document: dict[str, Any] = yaml.safe_load(files[paths.KUBELET_CONFIG].content)
    return document


def flag_values(flags: list[str]) -> dict[str, str]:
    values = {}
    for flag in flags:
        name, _, value = flag.removeprefix("--").partition("=")
        values[name] = value
    return values


@pytest.mark.parametrize("minor", sorted(MINOR_VERSIONS))
def test_config_schema_per_minor(minor: str) -> None:
    cluster = cluster_from_text(MINIMAL.replace("v1.36.2", MINOR_VERSIONS[minor]))
    assert cluster.release.minor_text == minor
    for node in cluster.nodes:
        validator(minor).validate(kubelet_config(cluster, node.name))


@pytest.mark.parametrize("minor", sorted(SCHEMA_FILES))
def test_schema_rejects_unknown_key(minor: str) -> None:
    assert not validator(minor).is_valid({"clusterDNSServers": ["10.32.0.10"]})
    assert not validator(minor).is_valid({"maxPods": "110"})


def test_config_schema_for_examples(example: Cluster) -> None:
    for node in example.nodes:
        validator(example.release.minor_text).validate(kubelet_config(example, node.name))


def test_config_file_mode(minimal: Cluster) -> None:
    files = build_kubelet_files(minimal, minimal.node("worker-1"))
    assert list(files) == [paths.KUBELET_CONFIG]
    assert files[paths.KUBELET_CONFIG].mode == 0o600


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("apiVersion", "kubelet.config.k8s.io/v1beta1"),
        ("kind", "KubeletConfiguration"),
        ("authentication", {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
        }),
        ("authorization", {"mode": "Webhook"}),
        ("cgroupDriver", "systemd"),
        ("clusterDNS", ["10.32.0.10"]),
        ("clusterDomain", "cluster.local"),
        ("containerRuntimeEndpoint", "unix:///run/containerd/containerd.sock"),
        ("staticPodPath", "/etc/kubernetes/manifests"),
        ("tlsCertFile", "/var/lib/kubelet/pki/kubelet.crt"),
        ("tlsPrivateKeyFile", "/var/lib/kubelet/pki/kubelet.key"),
        ("rotateCertificates", True),
        ("serverTLSBootstrap", False),
        ("healthzBindAddress", "127.0.0.1"),
        ("readOnlyPort", 0),
        ("failSwapOn", True),
        ("maxPods", 110),
        ("containerLogMaxSize", "10Mi"),
        ("containerLogMaxFiles", 5),
    ],
)
def test_config_value(minimal: Cluster, key: str, value: Any) -> None:
    assert kubelet_config(minimal, "worker-1")[key] == value


def test_serving_files_match_inventory(minimal: Cluster) -> None:
    serving = inventory.entry(bundle.KUBELET_SERVING)
    config = kubelet_config(minimal, "worker-1")
    assert config["tlsCertFile"] == serving.cert_path
    assert config["tlsPrivateKeyFile"] == serving.key_path


def test_config_settings_from_description() -> None:
    cluster = cluster_from_text(LABELLED)
    config = kubelet_config(cluster, "worker-1")
    assert config["maxPods"] == 50
    assert config["containerLogMaxSize"] == "20Mi"
    assert config["containerLogMaxFiles"] == 3


@pytest.mark.parametrize(
    ("node_name", "taints"),
    [
        ("cp-1", [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        ("worker-1", [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    ],
    ids=["control-plane-default", "worker-declared"],
)
def test_register_with_taints(node_name: str, taints: list[dict[str, str]]) -> None:
    cluster = cluster_from_text(LABELLED)
    assert kubelet_config(cluster, node_name)["registerWithTaints"] == taints


def test_untainted_worker_registers_none(minimal: Cluster) -> None:
    assert kubelet_config(minimal, "worker-1")["registerWithTaints"] == []


def test_cgroup_driver_shared() -> None:
    assert CGROUP_DRIVER == "systemd"
    assert SYSTEMD_CGROUP is True


def test_cgroup_driver_in_every_config(example: Cluster) -> None:
    for node in example.nodes:
        assert kubelet_config(example, node.name)["cgroupDriver"] == CGROUP_DRIVER


# --- resolv.conf -----------------------------------------------------------------------------


def test_resolv_conf_left_to_first_boot(minimal: Cluster) -> None:
    assert minimal.network.resolv_conf is None
    for node in minimal.nodes:
        assert "resolvConf" not in kubelet_config(minimal, node.name)


def test_resolv_conf_forced() -> None:
    text = MINIMAL.replace(
        "nodeCIDRMaskSize: 24}",
        "nodeCIDRMaskSize: 24, resolvConf: /run/systemd/resolve/resolv.conf}",
    )
    cluster = cluster_from_text(text)
    for node in cluster.nodes:
        config = kubelet_config(cluster, node.name)
        assert config["resolvConf"] == "/run/systemd/resolve/resolv.conf"
        validator("1.36").validate(config)


@pytest.mark.parametrize("minor", sorted(SCHEMA_FILES))
def test_resolv_conf_dropin(minor: str) -> None:
    document = yaml.safe_load(build_resolv_conf_dropin("/run/systemd/resolve/resolv.conf"))
    assert document == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "resolvConf": "/run/systemd/resolve/resolv.conf",
    }
    validator(minor).validate(document)


def test_resolv_conf_dropin_path() -> None:
    assert RESOLV_CONF_DROPIN.startswith(f"{paths.KUBELET_CONFIG_DROPIN_DIR}/")
    assert RESOLV_CONF_DROPIN.endswith(".conf")


# --- command-line flags ----------------------------------------------------------------------


def test_flags_without_labels(minimal: Cluster) -> None:
    assert kubelet_flags(minimal, minimal.node("worker-1")) == [
        "--config=/var/lib/kubelet/config.yaml",
        "--config-dir=/etc/kubernetes/kubelet.conf.d",
        "--hostname-override=worker-1",
        "--kubeconfig=/etc/kubernetes/kubelet.conf",
        "--node-ip=10.0.0.20",
    ]


def test_flags_external_cloud_provider() -> None:
    cluster = cluster_from_text(MINIMAL + "  cloudProvider: external\n")
    for node in cluster.nodes:
        flags = kubelet_flags(cluster, node)
        assert "--cloud-provider=external" in flags, node.name
        names = [flag.removeprefix("--").partition("=")[0] for flag in flags]
        assert names == sorted(names)


def test_flags_no_cloud_provider(minimal: Cluster) -> None:
    assert minimal.cloud_provider == "none"
    for node in minimal.nodes:
        assert "cloud-provider" not in flag_values(kubelet_flags(minimal, node)), node.name


def test_external_cloud_provider_adds_no_taint() -> None:
    # The kubelet registers with node.cloudprovider.kubernetes.io/uninitialized itself.
    plain = cluster_from_text(MINIMAL)
    external = cluster_from_text(MINIMAL + "  cloudProvider: external\n")
    for node in external.nodes:
        config = kubelet_config(external, node.name)
        assert config["registerWithTaints"] == kubelet_config(plain, node.name)["registerWithTaints"]
        keys = [taint["key"] for taint in config["registerWithTaints"]]
        assert "node.cloudprovider.kubernetes.io/uninitialized" not in keys
        validator(external.release.minor_text).validate(config)


def test_flags_with_labels() -> None:
    cluster = cluster_from_text(LABELLED)
    flags = flag_values(kubelet_flags(cluster, cluster.node("worker-1")))
    assert flags["node-labels"] == "node.kubernetes.io/pool=blue,topology.kubernetes.io/zone=zone-a"


def test_flags_sorted(example: Cluster) -> None:
    for node in example.nodes:
        flags = kubelet_flags(example, node)
        names = [flag.removeprefix("--").partition("=")[0] for flag in flags]
        assert names == sorted(names)
        assert len(set(names)) == len(names)


def test_flags_point_at_written_files(minimal: Cluster) -> None:
    node = minimal.node("worker-1")
    flags = flag_values(kubelet_flags(minimal, node))
    assert flags["config"] in build_kubelet_files(minimal, node)
    assert flags["kubeconfig"] == paths.KUBELET_KUBECONFIG
    assert flags["config-dir"] == paths.KUBELET_CONFIG_DROPIN_DIR


def test_node_name_agrees_across_components() -> None:
    cluster = cluster_from_text(LABELLED)
    node = cluster.node("worker-1")
    assert node.hostname == "ip-10-0-0-20"

    kubelet = flag_values(kubelet_flags(cluster, node))
    kube_proxy = build_kube_proxy_configuration(cluster, node)
    pods = dict(build_static_pod_manifests(cluster, node))
    proxy_command = pods[f"{paths.MANIFESTS_DIR}/kube-proxy.yaml"]["spec"]["containers"][0]["command"]
    client_cn = inventory.entry(bundle.KUBELET_CLIENT).subject_common_name(node.name)

    assert kubelet["hostname-override"] == "worker-1"
    assert kube_proxy["hostnameOverride"] == kubelet["hostname-override"]
    assert "--hostname-override=worker-1" in proxy_command
    assert client_cn == f"system:node:{kubelet['hostname-override']}"
    assert kubelet["node-ip"] == "10.0.0.20"
