"""Flannel, the pod network of the flannel-vxlan and flannel-host-gw modes, as API objects.

Reads `spec.network` (mode, podCIDR of each family, mtu) and the flannel images of the release.
Returns the objects of /etc/kubernetes/addons/20-flannel.yaml, which the bootstrap unit on the
first control plane applies, and no object in the other modes.

The objects follow flannel's own kube-flannel.yml: flanneld runs with --kube-subnet-mgr, so it
reads each node's block from Node.spec.podCIDR (allocated by kube-controller-manager) and
stores its own lease in node annotations. One choice is kubecc's own: the pod MTU comes from
spec.network.mtu and is written into the CNI configuration, where flannel would otherwise
derive it from the interface flanneld runs on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from compiler import paths
from compiler.addressing import pod_mtu
from compiler.model import Cluster, NetworkMode

NAMESPACE = "kube-flannel"
NAME = "flannel"
CONFIG_MAP = "kube-flannel-cfg"
DAEMON_SET = "kube-flannel-ds"
SELECTOR = {"app": "flannel", "k8s-app": "flannel"}
LABELS = {**SELECTOR, "tier": "node"}
CONFIG_DIR = "/etc/kube-flannel/"
RUN_DIR = "/run/flannel"
XTABLES_LOCK = "/run/xtables.lock"
CNI_CONFLIST = f"{paths.CNI_CONF_DIR}/10-flannel.conflist"
# The flannel CNI plugin delegates to the bridge and host-local plugins of the cni-plugins
# release, which first boot installs into the same folder.
CNI_PLUGIN = f"{paths.CNI_BIN_DIR}/flannel"
# flannel's manifest uses network name cbr0 and CNI version 0.3.1, which every CNI library
# containerd 2.x ships still accepts.
CNI_NETWORK_NAME = "cbr0"
CNI_VERSION = "0.3.1"

BACKENDS: Mapping[NetworkMode, str] = {"flannel-vxlan": "vxlan", "flannel-host-gw": "host-gw"}


def build_net_conf(cluster: Cluster) -> dict[str, Any]:
    """Build flanneld's net-conf.json: the pod range of each family and the backend.

    flanneld routes IPv4 unless EnableIPv4 is false and IPv6 only when EnableIPv6 is true.
    """
    network = cluster.network
    conf: dict[str, Any] = {}
    for pod in network.pod_cidrs:
        if pod.version == 4:
            conf["Network"] = str(pod)
        else:
            conf["EnableIPv6"] = True
            conf["IPv6Network"] = str(pod)
    if "Network" not in conf:
        conf["EnableIPv4"] = False
    conf["Backend"] = {"Type": BACKENDS[network.mode]}
    return conf


def build_cni_conf(cluster: Cluster) -> dict[str, Any]:
    """Build the conflist the install-cni init container copies to every node.

    The flannel plugin keeps an "mtu" given in its delegate and otherwise takes the MTU
    flanneld derived from its interface.
    """
    network = cluster.network
    flannel = {
        "type": "flannel",
        "delegate": {
            "hairpinMode": True,
            "isDefaultGateway": True,
            "mtu": pod_mtu(network.mode, network.mtu, network.uses_ipv6),
        },
    }
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    return {"name": CNI_NETWORK_NAME, "cniVersion": CNI_VERSION, "plugins": [flannel, portmap]}


def build_rbac() -> list[dict[str, Any]]:
    """Build the ServiceAccount and what flanneld may do with it: read nodes, patch their status."""
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NAME},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NAME},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }
    return [account, role, binding]


def build_config_map(cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "data": {
            "cni-conf.json": json.dumps(build_cni_conf(cluster), indent=2) + "\n",
            "net-conf.json": json.dumps(build_net_conf(cluster), indent=2) + "\n",
        },
    }


def copy_container(name: str, image: str, source: str, target: str) -> dict[str, Any]:
    """Build an init container that copies one file from its image or a volume to the host."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp"],
        "args": ["-f", source, target],
    }


def build_init_containers(cluster: Cluster) -> list[dict[str, Any]]:
    images = cluster.release.images
    plugin = copy_container("install-cni-plugin", images.flannel_cni_plugin, "/flannel", CNI_PLUGIN)
    plugin["volumeMounts"] = [{"name": "cni-plugin", "mountPath": paths.CNI_BIN_DIR}]
    conflist = copy_container(
        "install-cni", images.flannel, f"{CONFIG_DIR}cni-conf.json", CNI_CONFLIST
    )
    conflist["volumeMounts"] = [
        {"name": "cni", "mountPath": paths.CNI_CONF_DIR},
        {"name": "flannel-cfg", "mountPath": CONFIG_DIR},
    ]
    return [plugin, conflist]


def field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def build_flannel_container(cluster: Cluster) -> dict[str, Any]:
    return {
        "name": "kube-flannel",
        "image": cluster.release.images.flannel,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/opt/bin/flanneld"],
        # --ip-masq masquerades pod traffic that leaves the pod range. --iface takes the
        # interface that carries NODE_IP, so that a node with several interfaces sends pod
        # traffic from the address of the description and not from the default route's.
        "args": ["--ip-masq", "--kube-subnet-mgr", "--iface=$(NODE_IP)"],
        # flanneld finds its own Node through the Pod it runs in. For a hostNetwork pod
        # status.hostIP is the Node's InternalIP, which is the kubelet's --node-ip.
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("NODE_IP", "status.hostIP"),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "50Mi"}},
        # Routes, links and iptables rules need NET_ADMIN and NET_RAW, not a privileged container.
        "securityContext": {
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
        },
        "volumeMounts": [
            {"name": "run", "mountPath": RUN_DIR},
            {"name": "flannel-cfg", "mountPath": CONFIG_DIR},
            {"name": "xtables-lock", "mountPath": XTABLES_LOCK},
        ],
    }


def host_path_volume(name: str, path: str, kind: str | None = None) -> dict[str, Any]:
    source: dict[str, str] = {"path": path}
    if kind is not None:
        source["type"] = kind
    return {"name": name, "hostPath": source}


def build_daemon_set(cluster: Cluster) -> dict[str, Any]:
    pod_spec = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
            ]}],
        }}},
        "hostNetwork": True,
        "priorityClassName": "system-node-critical",
        # Every node needs its pod network, whatever NoSchedule taints it carries: the control
        # planes' and, with an external cloud provider, the uninitialized one.
        "tolerations": [{"operator": "Exists", "effect": "NoSchedule"}],
        "serviceAccountName": NAME,
        "initContainers": build_init_containers(cluster),
        "containers": [build_flannel_container(cluster)],
        "volumes": [
            host_path_volume("run", RUN_DIR),
            host_path_volume("cni-plugin", paths.CNI_BIN_DIR),
            host_path_volume("cni", paths.CNI_CONF_DIR),
            {"name": "flannel-cfg", "configMap": {"name": CONFIG_MAP}},
            # Shared with kube-proxy, so that their iptables updates do not interleave.
            host_path_volume("xtables-lock", XTABLES_LOCK, "FileOrCreate"),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": DAEMON_SET, "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "selector": {"matchLabels": dict(SELECTOR)},
            "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod_spec},
        },
    }


def build_flannel_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Build flannel's namespace, RBAC, configuration and DaemonSet; none outside its modes."""
    if cluster.network.mode not in BACKENDS:
        return []
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        # flannel mounts host paths and adds capabilities, which only the privileged Pod
        # Security level allows.
        "metadata": {
            "name": NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
        },
    }
    return [namespace, *build_rbac(), build_config_map(cluster), build_daemon_set(cluster)]
