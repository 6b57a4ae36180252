"""Address-plan rules that the semantic checks and the plan share.

Reads the raw `spec.network` values (podCIDR, serviceCIDR, nodeCIDRMaskSize, mode, mtu) and the
nodes' `ip` or `ips`: address families, node block sizes, the pod MTU and the defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from compiler.model import IPAddress, IPNetwork

# kube-controller-manager's default node block per address family (--node-cidr-mask-size-ipv4
# and --node-cidr-mask-size-ipv6), which kubecc also uses when the description gives none.
DEFAULT_NODE_MASKS: Mapping[int, int] = {4: 24, 6: 64}
NODE_MASK_KEYS: Mapping[int, str] = {4: "ipv4", 6: "ipv6"}
DEFAULT_MAX_PODS = 110
DNS_SERVICE_OFFSET = 10  # kubeadm's convention: the 10th address of the service range
# The bytes VXLAN adds to each packet: outer Ethernet 14, UDP 8 and VXLAN 8, plus the outer IP
# header of the underlay (IPv4 20, IPv6 40). flannel's VXLAN backend subtracts 50 whatever the
# underlay, so kubecc writes the pod MTU into flannel's CNI configuration itself.
VXLAN_OVERHEAD: Mapping[int, int] = {4: 50, 6: 70}
# Every IPv4 host must accept 576-byte datagrams (RFC 791); every IPv6 link carries at least
# 1280 bytes (RFC 8200).
MIN_MTU: Mapping[int, int] = {4: 576, 6: 1280}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def node_addresses(node: dict[str, Any]) -> list[str]:
    """Return a node's addresses as written: `ips`, or `[ip]`."""
    if "ips" in node:
        return [str(ip) for ip in node["ips"]]
    return [str(node["ip"])] if "ip" in node else []


def families(items: Iterable[IPAddress | IPNetwork]) -> tuple[int, ...]:
    """Return the IP versions of addresses or ranges, in their order."""
    return tuple(item.version for item in items)


def describe_families(versions: tuple[int, ...]) -> str:
    """Return "IPv4 only", "IPv6 only", "IPv4 then IPv6" or "IPv6 then IPv4"."""
    names = [f"IPv{version}" for version in versions]
    return f"{names[0]} only" if len(names) == 1 else " then ".join(names)


def resolve_node_masks(value: Any, pods: Iterable[IPNetwork]) -> tuple[int, ...]:
    """Return the node block prefix length of each pod range, in the order of the ranges.

    `value` is nodeCIDRMaskSize as written: None, one prefix length for a single-family
    cluster, or a mapping with an `ipv4` and an `ipv6` prefix length.
    """
    masks = []
    for pod in pods:
        default = DEFAULT_NODE_MASKS[pod.version]
        if value is None:
            masks.append(default)
        elif isinstance(value, dict):
            masks.append(int(value.get(NODE_MASK_KEYS[pod.version], default)))
        else:
            masks.append(int(value))
    return tuple(masks)


def block_capacity(mask: int, prefix: int) -> int:
    return 1 << (mask - prefix)


def max_pods_for_block(mask: int, address_bits: int = 32) -> int:
    """Return the most pods a block holds: its addresses minus network and broadcast.

    The bridge's gateway address takes one more, but every node also runs kube-proxy with host
    networking, which counts against maxPods without using a block address. IPv6 has no
    broadcast address, and its first address is the subnet-router anycast address.
    """
    return (1 << (address_bits - mask)) - 2


def default_dns_service_ip(service: IPNetwork) -> IPAddress:
    return service.network_address + DNS_SERVICE_OFFSET


def vxlan_overhead(uses_ipv6: bool) -> int:
    """Return the VXLAN overhead of the underlay: IPv6 when the pod network has IPv6."""
    return VXLAN_OVERHEAD[6 if uses_ipv6 else 4]


def pod_mtu(mode: str, underlay_mtu: int, uses_ipv6: bool = False) -> int:
    """Return the MTU pods get: the underlay's, less the VXLAN overhead in flannel-vxlan mode.

    With an IPv6 family flannel runs a second VXLAN device over the nodes' IPv6 addresses,
    and one MTU serves both families of a pod, so the larger IPv6 overhead applies.
    """
    if mode == "flannel-vxlan":
        return underlay_mtu - vxlan_overhead(uses_ipv6)
    return underlay_mtu
