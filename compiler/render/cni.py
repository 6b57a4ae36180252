"""CNI configuration for static mode: the bridge conflist that hands out the node's pod block.

Reads cluster.network.mode, cluster.network.mtu and node.pod_cidrs. Writes
paths.CNI_CONFLIST (0644) in static mode and nothing in the other modes, where the network
add-on installs its own configuration.
"""

from __future__ import annotations

from typing import Any

from compiler import paths
from compiler.errors import ConsistencyError
from compiler.files import MODE_PUBLIC, FileMap, text_file
from compiler.model import Cluster, Node
from compiler.serialize import dump_json

CNI_VERSION = "1.0.0"
NETWORK_NAME = "kubecc"
BRIDGE_NAME = "cni0"


def build_cni_files(cluster: Cluster, node: Node) -> FileMap:
    """Build the CNI conflist of one node (static mode only)."""
    if cluster.network.mode != "static":
        return {}
    if not node.pod_cidrs:
        raise ConsistencyError(f"node {node.name} has no pod block in static mode")

    text = dump_json(build_conflist(cluster, node))
    return {paths.CNI_CONFLIST: text_file(paths.CNI_CONFLIST, text, MODE_PUBLIC)}


def build_conflist(cluster: Cluster, node: Node) -> dict[str, Any]:
    """Build the conflist: bridge with host-local IPAM, then portmap.

    The loopback plugin is not listed: containerd runs it from its CNI bin dir for every
    pod sandbox.
    ipMasq stays false since the pod-routes unit masquerades only traffic that leaves the
    pod network, while the bridge plugin would also rewrite traffic to other nodes' pods.
    """
    bridge = {
        "type": "bridge",
        "bridge": BRIDGE_NAME,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "mtu": cluster.network.mtu,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(block)}] for block in node.pod_cidrs],
            "routes": [
                {"dst": "0.0.0.0/0" if block.version == 4 else "::/0"}
                for block in node.pod_cidrs
            ],
        },
    }
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": [bridge, portmap]}
