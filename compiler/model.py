"""Immutable model of a planned cluster, the only input of the PKI and the renderers.

Nothing after the plan step reads the raw description: every default is applied and every
address allocated before these objects are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

Role = Literal["control-plane", "worker"]
Arch = Literal["amd64", "arm64"]
KeyAlgorithm = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
NetworkMode = Literal["static", "flannel-vxlan", "flannel-host-gw", "none"]
InstallMethod = Literal["download", "preinstalled"]
ProxyMode = Literal["iptables", "nftables", "ipvs"]
CloudProvider = Literal["none", "external"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

API_SERVER_PORT = 6443
# Without a load balancer, every worker's kube-apiserver-proxy static Pod listens here and
# forwards each TCP connection to one control plane's API server.
LOCAL_API_SERVER_PROXY_HOST = "127.0.0.1"
CONTROL_PLANE_TAINT_KEY = "node-role.kubernetes.io/control-plane"


def format_host(host: str | IPAddress) -> str:
    """Return a host as it appears in a URL: IPv6 addresses in brackets (RFC 3986)."""
    text = str(host)
    return f"[{text}]" if ":" in text else text


@dataclass(frozen=True)
class Taint:
    key: str
    effect: TaintEffect
    value: str | None = None

    def format(self) -> str:
        """Return the kubelet's `key[=value]:effect` spelling."""
        if self.value is None:
            return f"{self.key}:{self.effect}"
        return f"{self.key}={self.value}:{self.effect}"


@dataclass(frozen=True)
class Node:
    name: str
    role: Role
    ips: tuple[IPAddress, ...]
    arch: Arch
    hostname: str
    labels: tuple[tuple[str, str], ...]
    taints: tuple[Taint, ...]
    # Pod blocks kubecc allocated (static mode); empty when the controller-manager allocates.
    pod_cidrs: tuple[IPNetwork, ...]

    @property
    def ip(self) -> IPAddress:
        """Primary node address: the kubelet's --node-ip, etcd's and the API server's address."""
        return self.ips[0]

    @property
    def is_control_plane(self) -> bool:
        return self.role == "control-plane"

    @property
    def pod_cidr(self) -> IPNetwork | None:
        return self.pod_cidrs[0] if self.pod_cidrs else None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"https://{format_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class Network:
    mode: NetworkMode
    pod_cidrs: tuple[IPNetwork, ...]
    node_cidr_mask_sizes: tuple[int, ...]
    service_cidrs: tuple[IPNetwork, ...]
    cluster_domain: str
    dns_service_ip: IPAddress
    kubernetes_service_ip: IPAddress
    mtu: int
    # Empty: CoreDNS forwards to the resolv.conf the kubelet hands to its pod.
    dns_upstreams: tuple[IPAddress, ...]
    # Forced kubelet resolvConf; None means "choose at first boot" (systemd-resolved or not).
    resolv_conf: str | None

    @property
    def pod_cidr(self) -> IPNetwork:
        return self.pod_cidrs[0]

    @property
    def service_cidr(self) -> IPNetwork:
        return self.service_cidrs[0]

    @property
    def node_cidr_mask_size(self) -> int:
        return self.node_cidr_mask_sizes[0]

    @property
    def is_dual_stack(self) -> bool:
        return len(self.pod_cidrs) > 1

    @property
    def uses_ipv6(self) -> bool:
        return any(cidr.version == 6 for cidr in self.pod_cidrs)

    @property
    def first_service_ips(self) -> tuple[IPAddress, ...]:
        """The first address of each service range, primary first.

        The primary one is the `kubernetes` Service's address. kube-apiserver gives that
        Service only the primary family, so the secondary address is never used.
        """
        return tuple(cidr.network_address + 1 for cidr in self.service_cidrs)


@dataclass(frozen=True)
class PkiSettings:
    key_algorithm: KeyAlgorithm
    ca_validity_days: int
    cert_validity_days: int
    # Leaves that expire within this many days are reissued by the next build.
    renew_before_days: int = 30


@dataclass(frozen=True)
class Artifact:
    """One release file a node downloads and checks before installing."""

    name: str  # kubelet, kubectl, crictl, containerd, runc, cni-plugins
    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Images:
    kube_apiserver: str
    kube_controller_manager: str
    kube_scheduler: str
    kube_proxy: str
    etcd: str
    coredns: str
    pause: str
    flannel: str
    flannel_cni_plugin: str
    # HAProxy for the workers' kube-apiserver-proxy static Pod (clusters without an endpoint).
    api_server_proxy: str


@dataclass(frozen=True)
class Release:
    kubernetes_version: str  # with the leading "v", as in image tags
    minor: tuple[int, int]
    etcd_version: str  # without "v" or the "-0" image suffix, e.g. "3.6.9"
    containerd_version: str
    artifacts: tuple[tuple[Arch, tuple[Artifact, ...]], ...]
    images: Images

    def artifacts_for(self, arch: Arch) -> tuple[Artifact, ...]:
        for candidate, artifacts in self.artifacts:
            if candidate == arch:
                return artifacts
        raise KeyError(f"no artifacts for architecture {arch}")

    @property
    def minor_text(self) -> str:
        return f"{self.minor[0]}.{self.minor[1]}"

    @property
    def etcd_minor(self) -> tuple[int, int]:
        major, minor = self.etcd_version.split(".")[:2]
        return int(major), int(minor)


@dataclass(frozen=True)
class KubeletSettings:
    max_pods: int
    container_log_max_size: str
    container_log_max_files: int


@dataclass(frozen=True)
class KubeProxySettings:
    mode: ProxyMode


@dataclass(frozen=True)
class Install:
    method: InstallMethod
    base_url: str | None
    bin_dir: str


@dataclass(frozen=True)
class AdminUser:
    name: str
    ssh_authorized_keys: tuple[str, ...]
    password_hash: str | None


@dataclass(frozen=True)
class EtcdMember:
    """Start-up settings of one control plane's etcd: with the first members, or joining them."""

    name: str
    # The --initial-cluster value, `name=https://ip:2380,...`, fixed when the member is created.
    initial_cluster: str
    initial_state: Literal["new", "existing"]
    # Client URLs of the running members that receive a joining member's member add request;
    # empty for a member that does not join.
    join_endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExternalEtcd:
    """An etcd cluster kubecc does not run: its client URLs and the API server's credentials."""

    endpoints: tuple[str, ...]
    ca_cert_pem: bytes
    cert_pem: bytes
    # Secret: goes to the control planes as a 0600 file and never into a message.
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class Cluster:
    name: str
    source: str  # the description's file name, for headers of generated files
    release: Release
    # None: no load balancer, so workers dial their local kube-apiserver-proxy and the
    # operator dials the first control plane.
    endpoint: Endpoint | None
    cert_sans: tuple[str, ...]
    network: Network
    pki: PkiSettings
    install: Install
    admin: AdminUser | None
    kubelet: KubeletSettings
    kube_proxy: KubeProxySettings
    # "external": a cloud controller manager the user installs initializes the nodes.
    cloud_provider: CloudProvider
    nodes: tuple[Node, ...]
    # One entry per control plane, in node order; empty with external etcd.
    etcd_members: tuple[EtcdMember, ...] = ()
    # None: every control plane runs an etcd member (stacked etcd).
    external_etcd: ExternalEtcd | None = None

    # Cached because the renderers read them once per node, which would otherwise make a
    # build quadratic in nodes. cached_property stores in the instance __dict__, which a
    # frozen dataclass without slots keeps.
    @cached_property
    def control_planes(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.is_control_plane)

    @cached_property
    def workers(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if not node.is_control_plane)

    @property
    def first_control_plane(self) -> Node:
        """The node that runs the one-shot bootstrap unit."""
        return self.control_planes[0]

    def etcd_member(self, name: str) -> EtcdMember:
        for member in self.etcd_members:
            if member.name == name:
                return member
        raise KeyError(name)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def has_local_api_server_proxy(self) -> bool:
        """Whether workers reach the API servers through their own kube-apiserver-proxy Pod."""
        return self.endpoint is None

    def api_server_url(self, node: Node) -> str:
        """Return the API server URL a node's own components dial.

        Control planes use their own API server, so they keep working while the load balancer
        is down. Workers use the endpoint, or their local proxy when there is none.
        """
        if node.is_control_plane:
            return f"https://{format_host(node.ip)}:{API_SERVER_PORT}"
        if self.endpoint is None:
            return f"https://{LOCAL_API_SERVER_PROXY_HOST}:{API_SERVER_PORT}"
        return self.endpoint.url

    @property
    def admin_server_url(self) -> str:
        """Return the operator's API server URL: the endpoint, else the first control plane."""
        if self.endpoint is None:
            return self.api_server_url(self.first_control_plane)
        return self.endpoint.url
