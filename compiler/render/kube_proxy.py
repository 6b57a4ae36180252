"""kube-proxy's KubeProxyConfiguration file for one node.

Reads `spec.network.podCIDR`, `spec.kubeProxy.mode` and the node's name and primary IP. Writes
/var/lib/kube-proxy/config.conf (mode 0600), which the kube-proxy static Pod reads with its
kubeconfig from the same directory.
"""

from __future__ import annotations

from typing import Any

from compiler import paths
from compiler.files import MODE_SECRET, FileMap, text_file
from compiler.model import Cluster, Node
from compiler.render.static_pods import format_cidrs
from compiler.serialize import dump_yaml

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"


def build_kube_proxy_configuration(cluster: Cluster, node: Node) -> dict[str, Any]:
    """Build the KubeProxyConfiguration document, leaving conntrack settings at their defaults."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "bindAddress": "0.0.0.0" if node.ip.version == 4 else "::",
        "clientConnection": {"kubeconfig": paths.KUBE_PROXY_KUBECONFIG},
        # kube-proxy masquerades Service traffic whose source lies outside this range.
        "clusterCIDR": format_cidrs(cluster.network.pod_cidrs),
        # Must equal the kubelet's --hostname-override: both act on the Node of that name.
        "hostnameOverride": node.name,
        # Always written, so that a change of kube-proxy's default (iptables on Linux) cannot
        # switch the mode under a running cluster.
        "mode": cluster.kube_proxy.mode,
    }


def build_kube_proxy_config(cluster: Cluster, node: Node) -> str:
    """Serialise the node's KubeProxyConfiguration as YAML."""
    return dump_yaml(build_kube_proxy_configuration(cluster, node))


def build_kube_proxy_files(cluster: Cluster, node: Node) -> FileMap:
    path = paths.KUBE_PROXY_CONFIG
    return {path: text_file(path, build_kube_proxy_config(cluster, node), MODE_SECRET)}
