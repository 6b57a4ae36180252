"""Static Pod manifests: etcd and the control-plane components, plus kube-proxy on every node.

Reads `metadata.name`, the release resolved from `spec.kubernetes` (images, etcd version),
`spec.network` (mode, podCIDR, serviceCIDR, clusterDomain) and `spec.nodes` (names, roles, IPs).
Writes /etc/kubernetes/manifests/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler}.yaml
on control planes, without etcd.yaml when `spec.etcd.external` is set, and
/etc/kubernetes/manifests/kube-proxy.yaml on every node, all mode 0600.

The layout follows kubeadm's manifests: sorted `--flag=value` arguments, probes on a container
port named `probe-port`, and kubeadm's probe numbers and hostPath volumes. Two choices are
kubecc's own. Every kubelet certificate is issued in advance, so there is no bootstrap-token
authentication, and all etcd members start together from one `--initial-cluster` list.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from compiler import paths
from compiler.errors import ConsistencyError, KubeccError
from compiler.files import MODE_SECRET, FileMap, text_file
from compiler.model import (
    API_SERVER_PORT,
    Cluster,
    Images,
    IPNetwork,
    NetworkMode,
    Node,
    Release,
    format_host,
)
from compiler.pki import bundle, inventory
from compiler.serialize import dump_yaml

# Every supported minor gets the same manifests. In this range kubeadm differs only in the
# controller-manager's flex-volume hostPath, which kubeadm 1.36 dropped. kubecc never mounts
# it, because flex volumes need a custom controller-manager image anyway.
SUPPORTED_MINORS: frozenset[tuple[int, int]] = frozenset({(1, 34), (1, 35), (1, 36)})

NAMESPACE = "kube-system"
PRIORITY_CLASS = "system-node-critical"
PROBE_PORT_NAME = "probe-port"

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259

# Static mode: kubecc writes each node's pod block into its CNI configuration, so the
# controller-manager must not hand out blocks of its own.
ALLOCATES_NODE_CIDRS: Mapping[NetworkMode, bool] = {
    "static": False,
    "flannel-vxlan": True,
    "flannel-host-gw": True,
    "none": True,
}


@dataclass(frozen=True)
class ProbeTiming:
    initial_delay_seconds: int | None
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int


# kubeadm's numbers. The startup threshold gives a component 4 minutes to come up.
LIVENESS = ProbeTiming(10, 10, 15, 8)
READINESS = ProbeTiming(None, 1, 15, 3)
STARTUP = ProbeTiming(10, 10, 15, 24)


@dataclass(frozen=True)
class HealthEndpoints:
    """HTTP paths a component's probes request on its `probe-port`."""

    scheme: Literal["HTTP", "HTTPS"]
    port: int
    liveness: str
    readiness: str | None
    startup: str


@dataclass(frozen=True)
class HostPathVolume:
    name: str
    path: str
    # None leaves the hostPath unchecked, as kubeadm does for /lib/modules.
    type: str | None
    read_only: bool


@dataclass(frozen=True)
class EtcdProfile:
    """Flag spellings and health endpoints of one etcd minor."""

    flags: tuple[tuple[str, str], ...]
    health: HealthEndpoints


# etcd 3.6 deprecates the `--experimental-*` flags in favour of feature gates and un-prefixed
# names, while etcd 3.5 accepts only the experimental spellings. Every 3.6 release serves
# /livez and /readyz. On 3.5 only /health is served by every patch release.
ETCD_PROFILES: Mapping[tuple[int, int], EtcdProfile] = {
    (3, 6): EtcdProfile(
        flags=(
            ("feature-gates", "InitialCorruptCheck=true"),
            ("watch-progress-notify-interval", "5s"),
        ),
        health=HealthEndpoints("HTTP", ETCD_METRICS_PORT, "/livez", "/readyz", "/readyz"),
    ),
    (3, 5): EtcdProfile(
        flags=(
            ("experimental-initial-corrupt-check", "true"),
            ("experimental-watch-progress-notify-interval", "5s"),
        ),
        health=HealthEndpoints(
            "HTTP", ETCD_METRICS_PORT,
            "/health?exclude=NOSPACE&serializable=true", None, "/health?serializable=false",
        ),
    ),
}

API_SERVER_HEALTH = HealthEndpoints("HTTPS", API_SERVER_PORT, "/livez", "/readyz", "/livez")
CONTROLLER_MANAGER_HEALTH = HealthEndpoints(
    "HTTPS", CONTROLLER_MANAGER_PORT, "/healthz", None, "/healthz"
)
SCHEDULER_HEALTH = HealthEndpoints("HTTPS", SCHEDULER_PORT, "/livez", "/readyz", "/livez")

# The host's CA bundles, for outgoing TLS (webhooks, OIDC). kubeadm mounts the Debian set.
CA_BUNDLE_VOLUMES = (
    HostPathVolume("ca-certs", "/etc/ssl/certs", "DirectoryOrCreate", True),
    HostPathVolume("etc-ca-certificates", "/etc/ca-certificates", "DirectoryOrCreate", True),
    HostPathVolume(
        "usr-local-share-ca-certificates", "/usr/local/share/ca-certificates",
        "DirectoryOrCreate", True,
    ),
    HostPathVolume(
        "usr-share-ca-certificates", "/usr/share/ca-certificates", "DirectoryOrCreate", True
    ),
)
PKI_VOLUME = HostPathVolume("k8s-certs", paths.PKI_DIR, "DirectoryOrCreate", True)


def format_flags(flags: Mapping[str, str]) -> list[str]:
    """Return `--flag=value` arguments sorted by flag name, as kubeadm writes them."""
    return [f"--{name}={flags[name]}" for name in sorted(flags)]


def format_cidrs(networks: Iterable[IPNetwork]) -> str:
    """Return the comma-separated range list every component takes (primary family first)."""
    return ",".join(str(network) for network in networks)


def manifest_path(component: str) -> str:
    return f"{paths.MANIFESTS_DIR}/{component}.yaml"


def loopback(node: Node) -> str:
    """Return the loopback address of the node's primary address family."""
    return "127.0.0.1" if node.ip.version == 4 else "::1"


def url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{format_host(host)}:{port}"


def cert_and_key(name: str) -> tuple[str, str]:
    """Return the node paths of an inventory certificate and its key."""
    spec = inventory.entry(name)
    if spec.cert_path is None or spec.key_path is None:
        raise ConsistencyError(f"certificate {name} has no node path in the inventory")
    return spec.cert_path, spec.key_path


def signer_cert_path(name: str) -> str:
    """Return the node path of the CA certificate that signs an inventory certificate."""
    signer = inventory.entry(name).signer
    if signer is None:
        raise ConsistencyError(f"certificate {name} is a CA, not a leaf")
    return cert_and_key(signer)[0]


def etcd_profile(release: Release) -> EtcdProfile:
    try:
        return ETCD_PROFILES[release.etcd_minor]
    except KeyError:
        known = ", ".join(f"{major}.{minor}" for major, minor in sorted(ETCD_PROFILES))
        raise KubeccError(
            f"etcd {release.etcd_version} is not supported; kubecc has flag spellings for "
            f"etcd {known} only: pin an etcd image of one of those minors"
        ) from None


def validate_release(release: Release) -> None:
    """Raise unless the manifests below are known to fit the release."""
    if release.minor not in SUPPORTED_MINORS:
        raise ConsistencyError(
            f"static Pod manifests are defined for Kubernetes "
            f"{', '.join(f'{a}.{b}' for a, b in sorted(SUPPORTED_MINORS))}, "
            f"not {release.minor_text}"
        )
    etcd_profile(release)


# --- flags ---------------------------------------------------------------------------------


def etcd_flags(cluster: Cluster, node: Node) -> dict[str, str]:
    server_cert, server_key = cert_and_key(bundle.ETCD_SERVER)
    peer_cert, peer_key = cert_and_key(bundle.ETCD_PEER)
    ip = str(node.ip)
    flags = {
        "name": node.name,
        "data-dir": paths.ETCD_DATA_DIR,
        "advertise-client-urls": url("https", ip, ETCD_CLIENT_PORT),
        "listen-client-urls": ",".join(
            (url("https", loopback(node), ETCD_CLIENT_PORT), url("https", ip, ETCD_CLIENT_PORT))
        ),
        "listen-peer-urls": url("https", ip, ETCD_PEER_PORT),
        "initial-advertise-peer-urls": url("https", ip, ETCD_PEER_PORT),
        # A first build starts every member from the same list. A control plane added later
        # joins the running members, because its first boot adds it with the member API.
        "initial-cluster": cluster.etcd_member(node.name).initial_cluster,
        "initial-cluster-state": cluster.etcd_member(node.name).initial_state,
        "initial-cluster-token": cluster.name,
        # Plain HTTP on loopback only: the kubelet's probes cannot present a client certificate.
        "listen-metrics-urls": url("http", loopback(node), ETCD_METRICS_PORT),
        "cert-file": server_cert,
        "key-file": server_key,
        "trusted-ca-file": paths.ETCD_CA_CERT,
        "client-cert-auth": "true",
        "peer-cert-file": peer_cert,
        "peer-key-file": peer_key,
        "peer-trusted-ca-file": paths.ETCD_CA_CERT,
        "peer-client-cert-auth": "true",
        # kubeadm's value. etcd 3.6 raised its own default to 100000.
        "snapshot-count": "10000",
    }
    flags.update(etcd_profile(cluster.release).flags)
    return flags


def etcd_servers(cluster: Cluster, node: Node) -> str:
    """Return kube-apiserver's --etcd-servers: every external endpoint, or the local member."""
    if cluster.external_etcd is not None:
        return ",".join(cluster.external_etcd.endpoints)
    # Only the local member: each API server follows its own node's etcd.
    return url("https", loopback(node), ETCD_CLIENT_PORT)


def api_server_flags(cluster: Cluster, node: Node) -> dict[str, str]:
    etcd_client_cert, etcd_client_key = cert_and_key(bundle.APISERVER_ETCD_CLIENT)
    kubelet_client_cert, kubelet_client_key = cert_and_key(bundle.APISERVER_KUBELET_CLIENT)
    proxy_client_cert, proxy_client_key = cert_and_key(bundle.FRONT_PROXY_CLIENT)
    serving_cert, serving_key = cert_and_key(bundle.APISERVER)
    return {
        "advertise-address": str(node.ip),
        "allow-privileged": "true",
        "authorization-mode": "Node,RBAC",
        "client-ca-file": paths.CA_CERT,
        "enable-admission-plugins": "NodeRestriction",
        "etcd-cafile": paths.ETCD_CA_CERT,
        "etcd-certfile": etcd_client_cert,
        "etcd-keyfile": etcd_client_key,
        "etcd-servers": etcd_servers(cluster, node),
        # kubelet serving certificates are issued by kubecc, so the API server can verify them.
        "kubelet-certificate-authority": signer_cert_path(bundle.KUBELET_SERVING),
        "kubelet-client-certificate": kubelet_client_cert,
        "kubelet-client-key": kubelet_client_key,
        "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
        "proxy-client-cert-file": proxy_client_cert,
        "proxy-client-key-file": proxy_client_key,
        "requestheader-allowed-names": inventory.entry(bundle.FRONT_PROXY_CLIENT).common_name,
        "requestheader-client-ca-file": paths.FRONT_PROXY_CA_CERT,
        "requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "requestheader-group-headers": "X-Remote-Group",
        "requestheader-username-headers": "X-Remote-User",
        "secure-port": str(API_SERVER_PORT),
        "service-account-issuer": f"https://kubernetes.default.svc.{cluster.network.cluster_domain}",
        "service-account-key-file": paths.SERVICE_ACCOUNT_PUB,
        "service-account-signing-key-file": paths.SERVICE_ACCOUNT_KEY,
        "service-cluster-ip-range": format_cidrs(cluster.network.service_cidrs),
        "tls-cert-file": serving_cert,
        "tls-private-key-file": serving_key,
    }


def controller_manager_flags(cluster: Cluster, node: Node) -> dict[str, str]:
    kubeconfig = paths.CONTROLLER_MANAGER_KUBECONFIG
    flags = {
        "authentication-kubeconfig": kubeconfig,
        "authorization-kubeconfig": kubeconfig,
        "kubeconfig": kubeconfig,
        "bind-address": loopback(node),
        "client-ca-file": paths.CA_CERT,
        "cluster-cidr": format_cidrs(cluster.network.pod_cidrs),
        "cluster-name": cluster.name,
        # Signs the kubelets' client-certificate renewals.
        "cluster-signing-cert-file": paths.CA_CERT,
        "cluster-signing-key-file": paths.CA_KEY,
        # Without bootstrapsigner and tokencleaner: kubecc issues no bootstrap tokens.
        # No --cloud-provider, even when spec.cloudProvider is external. Upstream's "Cloud
        # Controller Manager Administration" guide states that kube-controller-manager must not
        # set it, and since Kubernetes 1.31 removed the in-tree providers, its cloud
        # controllers have nothing to run.
        "controllers": "*",
        "leader-elect": "true",
        "requestheader-client-ca-file": paths.FRONT_PROXY_CA_CERT,
        "root-ca-file": paths.CA_CERT,
        "service-account-private-key-file": paths.SERVICE_ACCOUNT_KEY,
        "service-cluster-ip-range": format_cidrs(cluster.network.service_cidrs),
        "use-service-account-credentials": "true",
    }
    flags.update(node_cidr_flags(cluster))
    return flags


def node_cidr_flags(cluster: Cluster) -> dict[str, str]:
    network = cluster.network
    if not ALLOCATES_NODE_CIDRS[network.mode]:
        return {"allocate-node-cidrs": "false"}
    if not network.is_dual_stack:
        return {
            "allocate-node-cidrs": "true",
            "node-cidr-mask-size": str(network.node_cidr_mask_size),
        }
    # kube-controller-manager rejects --node-cidr-mask-size in a dual-stack cluster and takes
    # one flag per family instead.
    flags = {"allocate-node-cidrs": "true"}
    for pod, mask in zip(network.pod_cidrs, network.node_cidr_mask_sizes, strict=True):
        flags[f"node-cidr-mask-size-ipv{pod.version}"] = str(mask)
    return flags


def scheduler_flags(cluster: Cluster, node: Node) -> dict[str, str]:
    kubeconfig = paths.SCHEDULER_KUBECONFIG
    return {
        "authentication-kubeconfig": kubeconfig,
        "authorization-kubeconfig": kubeconfig,
        "bind-address": loopback(node),
        "kubeconfig": kubeconfig,
        "leader-elect": "true",
    }


# --- control-plane components ---------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One control-plane static Pod: image, flags, probes, requests and volumes."""

    name: str
    image: Callable[[Images], str]
    flags: Callable[[Cluster, Node], dict[str, str]]
    health: Callable[[Release], HealthEndpoints]
    # The API server serves probes on the node address it advertises, the others on loopback.
    probe_host: Literal["node", "loopback"]
    requests: tuple[tuple[str, str], ...]
    volumes: tuple[HostPathVolume, ...]


def kubeconfig_volume(path: str) -> HostPathVolume:
    return HostPathVolume("kubeconfig", path, "FileOrCreate", True)


CONTROL_PLANE_COMPONENTS: tuple[Component, ...] = (
    Component(
        name="etcd",
        image=lambda images: images.etcd,
        flags=etcd_flags,
        health=lambda release: etcd_profile(release).health,
        probe_host="loopback",
        requests=(("cpu", "100m"), ("memory", "100Mi")),
        volumes=(
            HostPathVolume("etcd-certs", paths.ETCD_PKI_DIR, "DirectoryOrCreate", False),
            HostPathVolume("etcd-data", paths.ETCD_DATA_DIR, "DirectoryOrCreate", False),
        ),
    ),
    Component(
        name="kube-apiserver",
        image=lambda images: images.kube_apiserver,
        flags=api_server_flags,
        health=lambda release: API_SERVER_HEALTH,
        probe_host="node",
        requests=(("cpu", "250m"),),
        volumes=(*CA_BUNDLE_VOLUMES, PKI_VOLUME),
    ),
    Component(
        name="kube-controller-manager",
        image=lambda images: images.kube_controller_manager,
        flags=controller_manager_flags,
        health=lambda release: CONTROLLER_MANAGER_HEALTH,
        probe_host="loopback",
        requests=(("cpu", "200m"),),
        volumes=(
            *CA_BUNDLE_VOLUMES, PKI_VOLUME, kubeconfig_volume(paths.CONTROLLER_MANAGER_KUBECONFIG)
        ),
    ),
    Component(
        name="kube-scheduler",
        image=lambda images: images.kube_scheduler,
        flags=scheduler_flags,
        health=lambda release: SCHEDULER_HEALTH,
        probe_host="loopback",
        requests=(("cpu", "100m"),),
        volumes=(kubeconfig_volume(paths.SCHEDULER_KUBECONFIG),),
    ),
)


# --- Pod documents ---------------------------------------------------------------------------


def build_probe(path: str, host: str, scheme: str, timing: ProbeTiming) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"host": host, "path": path, "port": PROBE_PORT_NAME, "scheme": scheme},
    }
    if timing.initial_delay_seconds is not None:
        probe["initialDelaySeconds"] = timing.initial_delay_seconds
    probe["periodSeconds"] = timing.period_seconds
    probe["timeoutSeconds"] = timing.timeout_seconds
    probe["failureThreshold"] = timing.failure_threshold
    return probe


def build_probes(health: HealthEndpoints, host: str) -> dict[str, Any]:
    probes = {"livenessProbe": build_probe(health.liveness, host, health.scheme, LIVENESS)}
    if health.readiness is not None:
        probes["readinessProbe"] = build_probe(health.readiness, host, health.scheme, READINESS)
    probes["startupProbe"] = build_probe(health.startup, host, health.scheme, STARTUP)
    return probes


def build_volumes(volumes: Iterable[HostPathVolume]) -> list[dict[str, Any]]:
    entries = []
    for volume in sorted(volumes, key=lambda item: item.name):
        host_path = {"path": volume.path}
        if volume.type is not None:
            host_path["type"] = volume.type
        entries.append({"name": volume.name, "hostPath": host_path})
    return entries


def build_volume_mounts(volumes: Iterable[HostPathVolume]) -> list[dict[str, Any]]:
    return [
        {"name": volume.name, "mountPath": volume.path, "readOnly": volume.read_only}
        for volume in sorted(volumes, key=lambda item: item.name)
    ]


def build_pod(
    name: str, tier: str, container: dict[str, Any], volumes: Iterable[HostPathVolume],
    security_context: Mapping[str, Any],
) -> dict[str, Any]:
    """Wrap one container into a host-network static Pod in kube-system."""
    spec: dict[str, Any] = {
        "containers": [container],
        "hostNetwork": True,
        "priorityClassName": PRIORITY_CLASS,
    }
    if security_context:
        spec["securityContext"] = dict(security_context)
    spec["volumes"] = build_volumes(volumes)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"component": name, "tier": tier},
        },
        "spec": spec,
    }


def build_control_plane_pod(component: Component, cluster: Cluster, node: Node) -> dict[str, Any]:
    health = component.health(cluster.release)
    probe_host = str(node.ip) if component.probe_host == "node" else loopback(node)
    container: dict[str, Any] = {
        "name": component.name,
        "image": component.image(cluster.release.images),
        "imagePullPolicy": "IfNotPresent",
        "command": [component.name, *format_flags(component.flags(cluster, node))],
        # kubeadm 1.34+: probes name the port, so a changed port needs one edit.
        "ports": [{"name": PROBE_PORT_NAME, "containerPort": health.port, "protocol": "TCP"}],
        **build_probes(health, probe_host),
        "resources": {"requests": dict(component.requests)},
        "volumeMounts": build_volume_mounts(component.volumes),
    }
    return build_pod(
        component.name, "control-plane", container, component.volumes,
        {"seccompProfile": {"type": "RuntimeDefault"}},
    )


def kube_proxy_volumes() -> tuple[HostPathVolume, ...]:
    return (
        HostPathVolume(
            "kube-proxy", posixpath.dirname(paths.KUBE_PROXY_CONFIG), "DirectoryOrCreate", True
        ),
        HostPathVolume("lib-modules", "/lib/modules", None, True),
        # iptables takes this lock, so sharing the host's file serialises kube-proxy's updates
        # with those of other iptables users on the host.
        HostPathVolume("xtables-lock", "/run/xtables.lock", "FileOrCreate", False),
    )


def build_kube_proxy_pod(cluster: Cluster, node: Node) -> dict[str, Any]:
    """Build kube-proxy as a privileged static Pod, because it programs iptables."""
    volumes = kube_proxy_volumes()
    flags = {"config": paths.KUBE_PROXY_CONFIG, "hostname-override": node.name}
    container = {
        "name": "kube-proxy",
        "image": cluster.release.images.kube_proxy,
        "imagePullPolicy": "IfNotPresent",
        "command": ["kube-proxy", *format_flags(flags)],
        "securityContext": {"privileged": True},
        "volumeMounts": build_volume_mounts(volumes),
    }
    return build_pod("kube-proxy", "node", container, volumes, {})


def build_static_pod_manifests(cluster: Cluster, node: Node) -> list[tuple[str, dict[str, Any]]]:
    """Build every static Pod of one node as (node path, Pod object) pairs."""
    validate_release(cluster.release)
    manifests: list[tuple[str, dict[str, Any]]] = []
    if node.is_control_plane:
        for component in CONTROL_PLANE_COMPONENTS:
            # With external etcd the control planes run no etcd member.
            if component.name == "etcd" and cluster.external_etcd is not None:
                continue
            pod = build_control_plane_pod(component, cluster, node)
            manifests.append((manifest_path(component.name), pod))
    manifests.append((manifest_path("kube-proxy"), build_kube_proxy_pod(cluster, node)))
    return manifests


def build_static_pod_files(cluster: Cluster, node: Node) -> FileMap:
    """Build the node's static Pod manifest files, mode 0600 as kubeadm writes them."""
    return {
        path: text_file(path, dump_yaml(pod), MODE_SECRET)
        for path, pod in build_static_pod_manifests(cluster, node)
    }
