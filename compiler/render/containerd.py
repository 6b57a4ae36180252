"""containerd configuration: /etc/containerd/config.toml for containerd 2.x (config version 3).

Reads cluster.release.images.pause (the sandbox image) and cluster.release.containerd_version,
and takes SystemdCgroup from the kubelet's cgroup driver; writes paths.CONTAINERD_CONFIG
(0644). The same file serves every node.
"""

from __future__ import annotations

from compiler import paths
from compiler.files import MODE_PUBLIC, FileMap, text_file
from compiler.model import Cluster, Node
from compiler.render.kubelet_config import SYSTEMD_CGROUP
from compiler.render.templates import render_template

# containerd 2.1 deprecated cni.bin_dir in favour of the list bin_dirs and schedules its
# removal for 2.3 (containerd RELEASES.md, "Deprecated features").
CNI_BIN_DIRS_SINCE = (2, 1)


def build_containerd_files(cluster: Cluster, node: Node) -> FileMap:
    """Build the containerd configuration file of one node."""
    text = render_containerd_config(cluster)
    return {paths.CONTAINERD_CONFIG: text_file(paths.CONTAINERD_CONFIG, text, MODE_PUBLIC)}


def render_containerd_config(cluster: Cluster) -> str:
    return render_template(
        "containerd/config.toml.j2",
        pause_image=cluster.release.images.pause,
        # Derived from the kubelet's cgroupDriver, the one cgroup driver setting.
        systemd_cgroup=SYSTEMD_CGROUP,
        cni_bin_dirs_list=uses_cni_bin_dirs(cluster.release.containerd_version),
        cni_bin_dir=paths.CNI_BIN_DIR,
        cni_conf_dir=paths.CNI_CONF_DIR,
    )


def uses_cni_bin_dirs(containerd_version: str) -> bool:
    """Return whether this containerd release reads CNI plugins from the list bin_dirs."""
    parts = containerd_version.removeprefix("v").split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return True
    return (int(parts[0]), int(parts[1])) >= CNI_BIN_DIRS_SINCE
