"""Host setup of a node: kernel settings, systemd units and the scripts that boot it.

Reads cluster.release (version, artifacts per architecture), cluster.install (method,
baseURL through the artifact URLs, binDir), cluster.network (mode, pod CIDRs, resolvConf),
cluster.kube_proxy.mode (kernel modules),
the node's name, addresses, labels, pod blocks and architecture, and the other nodes' pod
blocks and addresses (static mode). Writes paths.MODULES_CONF, paths.SYSCTL_CONF (with the IPv6
forwarding and router-advertisement keys when the pod network has IPv6), the units
paths.CONTAINERD_UNIT, paths.KUBELET_UNIT, paths.POD_ROUTES_UNIT (static mode) and
paths.BOOTSTRAP_UNIT (first control plane), and the scripts paths.FIRST_BOOT_SCRIPT,
paths.POD_ROUTES_SCRIPT (static mode) and paths.BOOTSTRAP_SCRIPT (first control plane).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compiler import paths
from compiler.errors import ConsistencyError
from compiler.files import (
    MODE_EXECUTABLE,
    MODE_PRIVATE_EXECUTABLE,
    MODE_PUBLIC,
    File,
    FileMap,
    merge_files,
    text_file,
)
from compiler.model import Artifact, Cluster, IPAddress, IPNetwork, Node, format_host
from compiler.render.kubelet_config import (
    RESOLV_CONF_DROPIN,
    build_resolv_conf_dropin,
    kubelet_flags,
)
from compiler.render.templates import render_template

InstallAction = Literal["binary", "archive", "archive-bin"]

# Kubernetes 1.35 made the kubelet refuse cgroup v1 by default (failCgroupV1: true).
CGROUP_V2_REQUIRED_SINCE = (1, 35)

# Programs first-boot.sh calls. The script checks "iptables or nft" apart, since either will do.
BASE_TOOLS = ("ip", "modprobe", "sha256sum", "swapoff", "sysctl", "systemctl", "tar")
DOWNLOAD_TOOLS = ("curl",)

# overlay for containerd's snapshotter, br_netfilter so that bridged pod traffic passes
# through netfilter.
BASE_KERNEL_MODULES = ("overlay", "br_netfilter")
# kube-proxy's ipvs mode needs the IPVS core, the schedulers it may choose and conntrack
# loaded on the host; its image cannot load them.
IPVS_KERNEL_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")
# CNI plugins the bridge networks of static and flannel mode run. flannel delegates to bridge
# and host-local, and containerd runs loopback for every pod sandbox.
BRIDGE_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


@dataclass(frozen=True)
class InstallStep:
    """One release file first-boot.sh downloads, checks and installs."""

    name: str
    url: str
    sha256: str
    action: InstallAction
    destination: str  # the target file for "binary", the target folder for the archives


def build_host_files(cluster: Cluster, node: Node) -> FileMap:
    """Build every host-setup file of one node."""
    return merge_files(
        build_kernel_files(cluster),
        build_runtime_units(cluster, node),
        build_first_boot_files(cluster, node),
        build_pod_route_files(cluster, node),
        build_bootstrap_files(cluster, node),
    )


def first_boot_command(cluster: Cluster, node: Node) -> list[str]:
    """Return the runcmd entry that starts the node's first-boot script."""
    return [paths.FIRST_BOOT_SCRIPT]


def kernel_modules(cluster: Cluster) -> list[str]:
    """Return the kernel modules every boot loads, in load order."""
    if cluster.kube_proxy.mode == "ipvs":
        return [*BASE_KERNEL_MODULES, *IPVS_KERNEL_MODULES]
    return list(BASE_KERNEL_MODULES)


def build_kernel_files(cluster: Cluster) -> list[File]:
    modules = render_template("host/modules-load.conf.j2", kernel_modules=kernel_modules(cluster))
    sysctl = render_template("host/sysctl.conf.j2", ipv6=cluster.network.uses_ipv6)
    return [
        text_file(paths.MODULES_CONF, modules, MODE_PUBLIC),
        text_file(paths.SYSCTL_CONF, sysctl, MODE_PUBLIC),
    ]


def node_ipv6(node: Node) -> str:
    """Return the node's IPv6 address, or "" for an IPv4-only node."""
    return next((str(address) for address in node.ips if address.version == 6), "")


def build_runtime_units(cluster: Cluster, node: Node) -> list[File]:
    containerd = render_template(
        "systemd/containerd.service.j2", containerd=binary_path(cluster, "containerd"),
    )
    kubelet = render_template(
        "systemd/kubelet.service.j2",
        kubelet=binary_path(cluster, "kubelet"),
        flags=kubelet_flags(cluster, node),
    )
    return [
        text_file(paths.CONTAINERD_UNIT, containerd, MODE_PUBLIC),
        text_file(paths.KUBELET_UNIT, kubelet, MODE_PUBLIC),
    ]


def binary_path(cluster: Cluster, name: str) -> str:
    return f"{cluster.install.bin_dir.rstrip('/')}/{name}"


def build_first_boot_files(cluster: Cluster, node: Node) -> list[File]:
    text = render_template("scripts/first-boot.sh.j2", **first_boot_values(cluster, node))
    return [text_file(paths.FIRST_BOOT_SCRIPT, text, MODE_PRIVATE_EXECUTABLE)]


def first_boot_values(cluster: Cluster, node: Node) -> dict[str, object]:
    download = cluster.install.method == "download"
    return {
        "bin_dir": cluster.install.bin_dir,
        "cni_bin_dir": paths.CNI_BIN_DIR,
        "kubernetes_version": cluster.release.kubernetes_version,
        "kubelet_client_initial": paths.KUBELET_CLIENT_INITIAL,
        "kubelet_client_current": paths.KUBELET_CLIENT_CURRENT,
        "kubelet_dropin_dir": paths.KUBELET_CONFIG_DROPIN_DIR,
        "kernel_modules": kernel_modules(cluster),
        "required_tools": sorted(BASE_TOOLS + (DOWNLOAD_TOOLS if download else ())),
        "required_executables": [] if download else preinstalled_executables(cluster, node),
        "require_cgroup_v2": cluster.release.minor >= CGROUP_V2_REQUIRED_SINCE,
        "download": download,
        "install_steps": build_install_steps(cluster, node) if download else [],
        "static_network": cluster.network.mode == "static",
        "node_ipv6": node_ipv6(node),
        "uplink_sysctl_conf": paths.UPLINK_SYSCTL_CONF,
        "bootstrap": is_bootstrap_node(cluster, node),
        **etcd_join_values(cluster, node),
        **resolv_conf_values(cluster),
    }


def etcd_join_values(cluster: Cluster, node: Node) -> dict[str, object]:
    """Values for the step that adds a new control plane to the running etcd members."""
    # With external etcd no control plane is a member, so none joins.
    stacked_member = node.is_control_plane and cluster.external_etcd is None
    member = cluster.etcd_member(node.name) if stacked_member else None
    endpoints = list(member.join_endpoints) if member is not None else []
    return {
        "etcd_join_endpoints": endpoints,
        "etcd_peer_url": f"https://{format_host(node.ip)}:2380" if endpoints else "",
        "etcd_ca": paths.ETCD_CA_CERT,
        # Any certificate of the etcd CA may change membership: kubeadm's etcd runs without
        # etcd's own RBAC, and so does kubecc's.
        "etcd_client_cert": f"{paths.ETCD_PKI_DIR}/healthcheck-client.crt",
        "etcd_client_key": f"{paths.ETCD_PKI_DIR}/healthcheck-client.key",
    }


def preinstalled_executables(cluster: Cluster, node: Node) -> list[str]:
    """List the programs a preinstalled image must already have, for the prerequisite check."""
    names = ["containerd", "containerd-shim-runc-v2", "kubelet", "runc"]
    if is_bootstrap_node(cluster, node):
        names.append("kubectl")
    executables = [binary_path(cluster, name) for name in names]
    # In mode none the CNI plugin the user installs brings its own binaries.
    if cluster.network.mode != "none":
        executables += [f"{paths.CNI_BIN_DIR}/{plugin}" for plugin in BRIDGE_CNI_PLUGINS]
    return sorted(executables)


def build_install_steps(cluster: Cluster, node: Node) -> list[InstallStep]:
    """Turn each release file of the node's architecture into a download-and-install step."""
    return [
        install_step(cluster, artifact) for artifact in cluster.release.artifacts_for(node.arch)
    ]


def install_step(cluster: Cluster, artifact: Artifact) -> InstallStep:
    action: InstallAction
    if artifact.name in ("kubelet", "kubectl", "runc"):
        # runc's release file is named runc.<arch>, and it is installed as plain runc.
        action, destination = "binary", binary_path(cluster, artifact.name)
    elif artifact.name == "crictl":
        action, destination = "archive", cluster.install.bin_dir
    elif artifact.name == "containerd":
        action, destination = "archive-bin", cluster.install.bin_dir
    elif artifact.name == "cni-plugins":
        action, destination = "archive", paths.CNI_BIN_DIR
    else:
        raise ConsistencyError(f"no install rule for release file {artifact.name}")
    return InstallStep(artifact.name, artifact.url, artifact.sha256, action, destination)


def resolv_conf_values(cluster: Cluster) -> dict[str, object]:
    """Return the two resolv.conf drop-ins first-boot.sh chooses between.

    A description that forces resolvConf gets it from the kubelet configuration instead, so
    no drop-in is written.
    """
    if cluster.network.resolv_conf is not None:
        return {"choose_resolv_conf": False}
    return {
        "choose_resolv_conf": True,
        "resolv_conf_dropin": RESOLV_CONF_DROPIN,
        "resolved_resolv_conf": paths.SYSTEMD_RESOLVED_RESOLV_CONF,
        "host_resolv_conf": paths.HOST_RESOLV_CONF,
        "resolved_dropin_document": build_resolv_conf_dropin(paths.SYSTEMD_RESOLVED_RESOLV_CONF),
        "host_dropin_document": build_resolv_conf_dropin(paths.HOST_RESOLV_CONF),
    }


def build_pod_route_files(cluster: Cluster, node: Node) -> list[File]:
    """Build the pod-routes unit and script (static mode only)."""
    if cluster.network.mode != "static":
        return []
    unit = render_template("systemd/kubecc-pod-routes.service.j2", script=paths.POD_ROUTES_SCRIPT)
    script = render_template(
        "scripts/pod-routes.sh.j2",
        pod_cidrs=masquerade_cidrs(cluster, node),
        routes=build_pod_routes(cluster, node),
    )
    return [
        text_file(paths.POD_ROUTES_UNIT, unit, MODE_PUBLIC),
        text_file(paths.POD_ROUTES_SCRIPT, script, MODE_EXECUTABLE),
    ]


def masquerade_cidrs(cluster: Cluster, node: Node) -> list[str]:
    """Return the pod ranges of the address families that contain node blocks."""
    families = {block.version for block in node.pod_cidrs}
    return [str(cidr) for cidr in cluster.network.pod_cidrs if cidr.version in families]


def build_pod_routes(cluster: Cluster, node: Node) -> list[tuple[str, str]]:
    """Return (pod block, gateway) for every block of every other node, in node order."""
    routes = []
    for other in cluster.nodes:
        if other.name == node.name:
            continue
        for block in other.pod_cidrs:
            routes.append((str(block), str(gateway_for(other, block))))
    return routes


def gateway_for(node: Node, block: IPNetwork) -> IPAddress:
    """Return the node's address of the block's family, the next hop to that block."""
    for address in node.ips:
        if address.version == block.version:
            return address
    raise ConsistencyError(f"node {node.name} has no IPv{block.version} address for {block}")


def is_bootstrap_node(cluster: Cluster, node: Node) -> bool:
    return node.name == cluster.first_control_plane.name


def build_bootstrap_files(cluster: Cluster, node: Node) -> list[File]:
    """Build the one-shot bootstrap unit and script (first control plane only)."""
    if not is_bootstrap_node(cluster, node):
        return []
    unit = render_template("systemd/kubecc-bootstrap.service.j2", script=paths.BOOTSTRAP_SCRIPT)
    script = render_template(
        "scripts/bootstrap.sh.j2",
        kubectl=binary_path(cluster, "kubectl"),
        kubeconfig=paths.BOOTSTRAP_KUBECONFIG,
        addons_dir=f"{paths.ADDONS_DIR}/",
    )
    return [
        text_file(paths.BOOTSTRAP_UNIT, unit, MODE_PUBLIC),
        text_file(paths.BOOTSTRAP_SCRIPT, script, MODE_PRIVATE_EXECUTABLE),
    ]
