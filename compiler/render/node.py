"""Assemble every file one node receives, from each concern's renderer."""

from __future__ import annotations

from compiler.files import FileMap, merge_files
from compiler.model import Cluster, Node
from compiler.pki.bundle import PkiBundle
from compiler.pki.place import build_pki_files
from compiler.render.addons import build_addon_files
from compiler.render.api_server_proxy import build_api_server_proxy_files
from compiler.render.cni import build_cni_files
from compiler.render.containerd import build_containerd_files
from compiler.render.host import build_host_files
from compiler.render.kube_proxy import build_kube_proxy_files
from compiler.render.kubeconfig import build_kubeconfig_files
from compiler.render.kubelet_config import build_kubelet_files
from compiler.render.static_pods import build_static_pod_files


def build_node_files(cluster: Cluster, node: Node, pki: PkiBundle) -> FileMap:
    """Merge every concern's files; two concerns writing one path is a bug."""
    return merge_files(
        build_pki_files(cluster, node, pki),
        build_kubeconfig_files(cluster, node, pki),
        build_kubelet_files(cluster, node),
        build_kube_proxy_files(cluster, node),
        build_static_pod_files(cluster, node),
        build_api_server_proxy_files(cluster, node),
        build_containerd_files(cluster, node),
        build_cni_files(cluster, node),
        build_host_files(cluster, node),
        build_addon_files(cluster, node),
    )
