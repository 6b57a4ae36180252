"""The 1,000-node flannel-vxlan example, built once: the index, a few nodes and the build steps.

The per-example tests leave this example out (see tests/conftest.py), so these checks stand in
for them on a sample of nodes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from compiler import paths
from tests.conftest import LARGE_EXAMPLES, REPO, example_cluster
from tests.test_userdata import built, cloud_config, user_data, written_files

EXAMPLE = "large"
FLANNEL_FILE = f"{paths.ADDONS_DIR}/20-flannel.yaml"
SAMPLE_NODES = ["cp-1", "cp-2", "cp-3", "worker-0001", "worker-0500", "worker-0997"]


def controller_manager_flags(node: str) -> dict[str, str]:
    manifest = written_files(EXAMPLE, node)[f"{paths.MANIFESTS_DIR}/kube-controller-manager.yaml"]
    pod = yaml.safe_load(manifest["content"])
    flags = {}
    for argument in pod["spec"]["containers"][0]["command"][1:]:
        name, _, value = argument.removeprefix("--").partition("=")
        flags[name] = value
    return flags


def test_large_example_excluded() -> None:
    assert EXAMPLE in LARGE_EXAMPLES
    cluster = example_cluster(EXAMPLE)
    assert len(cluster.nodes) == 1000
    assert [node.name for node in cluster.control_planes] == ["cp-1", "cp-2", "cp-3"]
    assert cluster.network.mode == "flannel-vxlan"


def test_index_without_pod_blocks() -> None:
    files = built(EXAMPLE)
    index = json.loads(files["index.json"].content)
    schema = json.loads((REPO / "schemas/index.schema.json").read_text())
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(index)

    cluster = example_cluster(EXAMPLE)
    assert [entry["name"] for entry in index["nodes"]] == [node.name for node in cluster.nodes]
    assert [entry["ip"] for entry in index["nodes"]][-1] == "10.10.5.206"
    for entry in index["nodes"]:
        assert "podCIDR" not in entry, entry["name"]
        (artifact,) = entry["artifacts"]
        content = files[artifact["path"]].content
        assert artifact["bytes"] == len(content)
        assert artifact["sha256"] == hashlib.sha256(content).hexdigest()
    assert len({files[f"nodes/{node.name}/user-data"].content for node in cluster.nodes}) == 1000


@pytest.mark.parametrize("node", ["cp-1", "worker-0997"])
def test_cloud_init_schema_accepts(node: str, tmp_path: Path) -> None:
    path = tmp_path / "user-data"
    path.write_bytes(user_data(EXAMPLE, node))
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("node", SAMPLE_NODES)
def test_no_static_network_files(node: str) -> None:
    document = cloud_config(EXAMPLE, node)
    files = written_files(EXAMPLE, node)
    assert document["hostname"] == node
    assert paths.CNI_CONFLIST not in files
    assert paths.POD_ROUTES_UNIT not in files
    assert paths.POD_ROUTES_SCRIPT not in files
    assert (FLANNEL_FILE in files) == (node == "cp-1")


@pytest.mark.parametrize("node", ["cp-1", "cp-2", "cp-3"])
def test_controller_manager_allocates_blocks(node: str) -> None:
    flags = controller_manager_flags(node)
    assert flags["allocate-node-cidrs"] == "true"
    assert flags["cluster-cidr"] == "10.64.0.0/14"
    assert flags["node-cidr-mask-size"] == "24"
    assert flags["service-cluster-ip-range"] == "10.96.0.0/16"


def test_flannel_config_mtu() -> None:
    documents = list(yaml.safe_load_all(written_files(EXAMPLE, "cp-1")[FLANNEL_FILE]["content"]))
    (config_map,) = [item for item in documents if item["kind"] == "ConfigMap"]
    cni: dict[str, Any] = json.loads(config_map["data"]["cni-conf.json"])
    net: dict[str, Any] = json.loads(config_map["data"]["net-conf.json"])
    assert cni["plugins"][0]["delegate"]["mtu"] == 1400
    assert net == {"Network": "10.64.0.0/14", "Backend": {"Type": "vxlan"}}


@pytest.mark.parametrize("node", ["worker-0001", "worker-0997"])
def test_worker_configuration(node: str) -> None:
    files = written_files(EXAMPLE, node)
    kubelet = yaml.safe_load(files[paths.KUBELET_CONFIG]["content"])
    kube_proxy = yaml.safe_load(files[paths.KUBE_PROXY_CONFIG]["content"])
    assert kubelet["maxPods"] == 110
    assert kubelet["clusterDNS"] == ["10.96.0.10"]
    assert kube_proxy["clusterCIDR"] == "10.64.0.0/14"
    assert kube_proxy["hostnameOverride"] == node
    kubeconfig = yaml.safe_load(files[paths.KUBELET_KUBECONFIG]["content"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://lb.example.internal:6443"
