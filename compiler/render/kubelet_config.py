"""The kubelet's KubeletConfiguration file and command-line flags for one node.

Reads `spec.network` (dnsServiceIP, clusterDomain, resolvConf), `spec.kubelet` (maxPods,
container log rotation), `spec.cloudProvider` and the node's name, IPs, labels and taints. Writes
/var/lib/kubelet/config.yaml (mode 0600). The flags belong to the kubelet unit, which renders
them from `kubelet_flags`. When resolvConf is not forced, the first-boot script writes a
document of `build_resolv_conf_dropin` into /etc/kubernetes/kubelet.conf.d.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from compiler import paths
from compiler.files import MODE_SECRET, FileMap, text_file
from compiler.model import Cluster, Node, Taint
from compiler.render.static_pods import format_flags
from compiler.serialize import dump_yaml

API_VERSION = "kubelet.config.k8s.io/v1beta1"
KIND = "KubeletConfiguration"

# The one cgroup driver setting: the kubelet and containerd must agree, or pods fail to start.
CGROUP_DRIVER: Final = "systemd"
# containerd's runc option `SystemdCgroup`, derived from the kubelet's driver.
SYSTEMD_CGROUP: Final = CGROUP_DRIVER == "systemd"

CONTAINER_RUNTIME_ENDPOINT = f"unix://{paths.CONTAINERD_SOCKET}"
# Node path of the resolvConf drop-in the first-boot script writes. The kubelet reads
# drop-ins in lexical order, and only files ending in `.conf`.
RESOLV_CONF_DROPIN = f"{paths.KUBELET_CONFIG_DROPIN_DIR}/10-resolv-conf.conf"


def build_taint(taint: Taint) -> dict[str, str]:
    entry = {"key": taint.key}
    if taint.value is not None:
        entry["value"] = taint.value
    entry["effect"] = taint.effect
    return entry


def build_kubelet_configuration(cluster: Cluster, node: Node) -> dict[str, Any]:
    """Build the node's KubeletConfiguration document."""
    network = cluster.network
    config: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": paths.CA_CERT},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": CGROUP_DRIVER,
        "clusterDNS": [str(network.dns_service_ip)],
        "clusterDomain": network.cluster_domain,
        "containerLogMaxFiles": cluster.kubelet.container_log_max_files,
        "containerLogMaxSize": cluster.kubelet.container_log_max_size,
        "containerRuntimeEndpoint": CONTAINER_RUNTIME_ENDPOINT,
        "failSwapOn": True,
        "healthzBindAddress": "127.0.0.1",
        "maxPods": cluster.kubelet.max_pods,
        # 0 disables the unauthenticated read-only port.
        "readOnlyPort": 0,
        "registerWithTaints": [build_taint(taint) for taint in node.taints],
    }
    if network.resolv_conf is not None:
        config["resolvConf"] = network.resolv_conf
    config.update({
        # Renewals are signed by the controller-manager with the cluster CA.
        "rotateCertificates": True,
        # The serving certificate is issued by kubecc, so no CSR for it is needed.
        "serverTLSBootstrap": False,
        "staticPodPath": paths.MANIFESTS_DIR,
        "tlsCertFile": paths.KUBELET_SERVING_CERT,
        "tlsPrivateKeyFile": paths.KUBELET_SERVING_KEY,
    })
    return config


# Every node's first-boot script carries the same two drop-ins.
@functools.cache
def build_resolv_conf_dropin(path: str) -> str:
    """Serialise a KubeletConfiguration drop-in that sets only resolvConf to `path`."""
    return dump_yaml({"apiVersion": API_VERSION, "kind": KIND, "resolvConf": path})


def kubelet_flags(cluster: Cluster, node: Node) -> list[str]:
    """Return the kubelet's command-line flags, sorted and unescaped.

    The unit template escapes each value. --hostname-override is always set, so the kubelet
    registers under the name in its certificate whatever the OS hostname is. With an external
    cloud provider the kubelet adds the node.cloudprovider.kubernetes.io/uninitialized taint
    itself, so registerWithTaints never lists it.
    """
    flags = {
        "config": paths.KUBELET_CONFIG,
        "config-dir": paths.KUBELET_CONFIG_DROPIN_DIR,
        "hostname-override": node.name,
        "kubeconfig": paths.KUBELET_KUBECONFIG,
        "node-ip": ",".join(str(ip) for ip in node.ips),
    }
    if cluster.cloud_provider == "external":
        # Deprecated since the kubelet of 1.23, yet still the only switch: the
        # KubeletConfiguration of 1.34 to 1.36 has no field for it.
        flags["cloud-provider"] = "external"
    if node.labels:
        flags["node-labels"] = ",".join(f"{key}={value}" for key, value in sorted(node.labels))
    return format_flags(flags)


def build_kubelet_files(cluster: Cluster, node: Node) -> FileMap:
    path = paths.KUBELET_CONFIG
    text = dump_yaml(build_kubelet_configuration(cluster, node))
    return {path: text_file(path, text, MODE_SECRET)}
