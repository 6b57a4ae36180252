"""Cluster-wide objects the bootstrap unit applies: RBAC bindings, CoreDNS and flannel.

Reads `spec.network` (mode, dnsServiceIP, clusterDomain, dnsUpstreams), the CoreDNS image of
the release and the certificate inventory's subjects; compiler.render.flannel reads what
flannel needs. Writes /etc/kubernetes/addons/00-rbac.yaml, /etc/kubernetes/addons/10-coredns.yaml
and, in the flannel modes, /etc/kubernetes/addons/20-flannel.yaml (mode 0600, multi-document
YAML) on the first control plane only, whose one-shot bootstrap unit applies them in file-name
order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from compiler import paths
from compiler.files import MODE_SECRET, FileMap, text_file
from compiler.model import CONTROL_PLANE_TAINT_KEY, Cluster, Node
from compiler.pki import bundle, inventory
from compiler.render.flannel import build_flannel_objects
from compiler.serialize import dump_yaml_documents

NAMESPACE = "kube-system"
DNS_APP_LABEL = {"k8s-app": "kube-dns"}
COREDNS = "coredns"
COREDNS_CONFIG_DIR = "/etc/coredns"
COREDNS_METRICS_PORT = 9153
COREDNS_HEALTH_PORT = 8080
COREDNS_READY_PORT = 8181
# CoreDNS forwards here when the description names no upstreams: the resolv.conf the kubelet
# gives a pod with dnsPolicy Default, which is the node's resolvConf.
NODE_RESOLV_CONF = "/etc/resolv.conf"


def cluster_role_binding(name: str, role: str, kind: str, subject: str) -> dict[str, Any]:
    """Bind a ClusterRole to one subject, taking a ServiceAccount from kube-system."""
    subject_entry: dict[str, str] = {"kind": kind, "name": subject}
    if kind == "ServiceAccount":
        subject_entry["namespace"] = NAMESPACE
    else:
        subject_entry["apiGroup"] = "rbac.authorization.k8s.io"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [subject_entry],
    }


def build_rbac_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Build the bindings that kubecc's pre-issued identities need to built-in roles."""
    admin_group = inventory.entry(bundle.ADMIN).organizations[0]
    kubelet_client = inventory.entry(bundle.APISERVER_KUBELET_CLIENT).common_name
    return [
        # The operator's admin certificate carries this group as its O.
        cluster_role_binding(admin_group, "cluster-admin", "Group", admin_group),
        # Lets the controller-manager approve kubelets' client-certificate renewals
        # (rotateCertificates) without an operator.
        cluster_role_binding(
            "kubecc:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "Group", "system:nodes",
        ),
        # The kubelet's webhook authorizer checks this user on logs, exec and metrics requests.
        cluster_role_binding(
            "kubecc:apiserver-kubelet-api-admin", "system:kubelet-api-admin", "User",
            kubelet_client,
        ),
    ]


def build_corefile(cluster: Cluster) -> str:
    """Build CoreDNS's Corefile: cluster names from the API, everything else forwarded."""
    network = cluster.network
    upstreams = " ".join(str(ip) for ip in network.dns_upstreams) or NODE_RESOLV_CONF
    lines = [
        ".:53 {",
        "    errors",
        "    health {",
        "        lameduck 5s",
        "    }",
        "    ready",
        f"    kubernetes {network.cluster_domain} in-addr.arpa ip6.arpa {{",
        "        pods insecure",
        "        fallthrough in-addr.arpa ip6.arpa",
        "        ttl 30",
        "    }",
        f"    prometheus :{COREDNS_METRICS_PORT}",
        f"    forward . {upstreams} {{",
        "        max_concurrent 1000",
        "    }",
        "    cache 30",
        # Stops CoreDNS when a query comes back to it, as with a loopback upstream.
        "    loop",
        "    reload",
        "    loadbalance",
        "}",
    ]
    return "\n".join(lines) + "\n"


def build_coredns_rbac() -> list[dict[str, Any]]:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": COREDNS, "namespace": NAMESPACE},
    }
    binding = cluster_role_binding("system:coredns", "system:coredns", "ServiceAccount", COREDNS)
    return [account, role, binding]


def build_coredns_container(cluster: Cluster) -> dict[str, Any]:
    def http_probe(path: str, port: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port, "scheme": "HTTP"}}

    return {
        "name": COREDNS,
        "image": cluster.release.images.coredns,
        "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", f"{COREDNS_CONFIG_DIR}/Corefile"],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
            {"name": "metrics", "containerPort": COREDNS_METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            **http_probe("/health", COREDNS_HEALTH_PORT),
            "initialDelaySeconds": 60,
            "timeoutSeconds": 5,
            "successThreshold": 1,
            "failureThreshold": 5,
        },
        "readinessProbe": http_probe("/ready", COREDNS_READY_PORT),
        "resources": {
            "limits": {"memory": "170Mi"},
            "requests": {"cpu": "100m", "memory": "70Mi"},
        },
        # Binding port 53 needs NET_BIND_SERVICE, and CoreDNS needs no other capability.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [
            {"name": "config-volume", "mountPath": COREDNS_CONFIG_DIR, "readOnly": True},
        ],
    }


def build_coredns_deployment(cluster: Cluster) -> dict[str, Any]:
    pod_spec = {
        "serviceAccountName": COREDNS,
        "priorityClassName": "system-cluster-critical",
        # The node's resolv.conf, not the cluster DNS: CoreDNS cannot resolve through itself.
        "dnsPolicy": "Default",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": CONTROL_PLANE_TAINT_KEY, "effect": "NoSchedule"},
        ],
        # Spread the replicas so that losing one node keeps DNS up.
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": dict(DNS_APP_LABEL)},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }],
            },
        },
        "containers": [build_coredns_container(cluster)],
        "volumes": [{
            "name": "config-volume",
            "configMap": {"name": COREDNS, "items": [{"key": "Corefile", "path": "Corefile"}]},
        }],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": COREDNS, "namespace": NAMESPACE, "labels": dict(DNS_APP_LABEL)},
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "selector": {"matchLabels": dict(DNS_APP_LABEL)},
            "template": {"metadata": {"labels": dict(DNS_APP_LABEL)}, "spec": pod_spec},
        },
    }


def build_dns_service(cluster: Cluster) -> dict[str, Any]:
    # The name kube-dns is what clients and the kubelet's clusterDNS expect, whatever serves it.
    network = cluster.network
    spec: dict[str, Any] = {
        "selector": dict(DNS_APP_LABEL),
        "clusterIP": str(network.dns_service_ip),
    }
    if network.is_dual_stack:
        # The API server gives the Service an address of the secondary family too, so pods
        # can query CoreDNS over either family. clusterIP stays the primary address that
        # every kubelet's clusterDNS names.
        spec["ipFamilyPolicy"] = "PreferDualStack"
        spec["ipFamilies"] = [f"IPv{cidr.version}" for cidr in network.service_cidrs]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": NAMESPACE,
            "labels": {**DNS_APP_LABEL, "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            **spec,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {
                    "name": "metrics", "port": COREDNS_METRICS_PORT, "protocol": "TCP",
                    "targetPort": COREDNS_METRICS_PORT,
                },
            ],
        },
    }


def build_coredns_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Build CoreDNS: its RBAC, Corefile ConfigMap, Deployment and the kube-dns Service."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": COREDNS, "namespace": NAMESPACE},
        "data": {"Corefile": build_corefile(cluster)},
    }
    return [
        *build_coredns_rbac(),
        config_map,
        build_coredns_deployment(cluster),
        build_dns_service(cluster),
    ]


# File name -> builder. The bootstrap unit applies the files in name order, and a builder that
# returns no object writes no file.
ADDON_FILES: tuple[tuple[str, Callable[[Cluster], list[dict[str, Any]]]], ...] = (
    ("00-rbac.yaml", build_rbac_objects),
    ("10-coredns.yaml", build_coredns_objects),
    ("20-flannel.yaml", build_flannel_objects),
)


def build_addon_objects(cluster: Cluster) -> list[dict[str, Any]]:
    """Build every cluster-wide object, in the order the bootstrap unit applies them."""
    return [document for _, build in ADDON_FILES for document in build(cluster)]


def build_addon_files(cluster: Cluster, node: Node) -> FileMap:
    """Build the addon files, which only the first control plane gets because it applies them."""
    if node.name != cluster.first_control_plane.name:
        return {}
    files: FileMap = {}
    for name, build in ADDON_FILES:
        documents = build(cluster)
        if not documents:
            continue
        path = f"{paths.ADDONS_DIR}/{name}"
        files[path] = text_file(path, dump_yaml_documents(documents), MODE_SECRET)
    return files
