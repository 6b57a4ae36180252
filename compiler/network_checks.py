"""Semantic checks of the address plan: node count, MTU, ranges, blocks, DNS and overlaps.

Reads `spec.network`, `spec.kubelet.maxPods`, `spec.controlPlane.endpoint` and the nodes'
count and addresses.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from compiler.checker import Checker
from compiler.model import IPAddress, IPNetwork

STATIC_MODE_MAX_NODES = 100
# Kubernetes' documented scalability limit ("Considerations for large clusters").
MAX_NODES = 5000
# flannel's VXLAN backend sets its device MTU to the underlay's minus 50 for an IPv4 underlay
# (outer Ethernet 14, IPv4 20, UDP 8 and VXLAN 8 bytes).
VXLAN_OVERHEAD = 50
# Every IPv4 host must accept 576-byte datagrams (RFC 791).
# NOTE: an IPv6 pod network needs 1280 (RFC 8200) and flannel's VXLAN overhead is 70 over
# IPv6; both come with IPv6 support.
IPV4_MIN_MTU = 576
SERVICE_HOST_BITS_MAX = 20  # kube-apiserver rejects service ranges with more host bits
NODE_MASK_MAX_EXTRA_BITS = 16  # kube-controller-manager: node mask at most pod prefix + 16
MIN_BLOCK_HOST_BITS = 4  # a /28 block holds 14 pods; kubeadm asks for at least that many
STUB_RESOLV_CONF = "/run/systemd/resolve/stub-resolv.conf"
DEFAULT_NODE_MASK = 24
DEFAULT_MAX_PODS = 110
DNS_SERVICE_OFFSET = 10  # kubeadm's convention: the 10th address of the service range
NETWORK = ("spec", "network")


def is_ip(text: str) -> bool:
    """Return True for an IPv4 or IPv6 address; a zone index (fe80::1%eth0) is not global."""
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def node_addresses(node: dict[str, Any]) -> list[str]:
    """Return a node's addresses as written: `ips`, or `[ip]`."""
    if "ips" in node:
        return [str(ip) for ip in node["ips"]]
    return [str(node["ip"])] if "ip" in node else []


def block_capacity(mask: int, prefix: int) -> int:
    return 1 << (mask - prefix)


def max_pods_for_block(mask: int) -> int:
    """Return the most pods a block holds: its addresses minus network and broadcast.

    The bridge's gateway address takes one more, but every node also runs kube-proxy with host
    networking, which counts against maxPods without using a block address.
    """
    return (1 << (32 - mask)) - 2


def default_dns_service_ip(service: IPNetwork) -> IPAddress:
    return service.network_address + DNS_SERVICE_OFFSET


def parse_range(check: Checker, key: str, value: Any) -> IPNetwork | None:
    """Parse podCIDR or serviceCIDR; only IPv4 single-stack is built so far."""
    items = value if isinstance(value, list) else [value]
    parts = (*NETWORK, key) if not isinstance(value, list) else (*NETWORK, key, 0)
    if len(items) > 1:
        check.error((*NETWORK, key), f"found {len(items)} ranges; expected one",
                    "dual-stack networks are not supported yet; give the IPv4 range only")
    text = str(items[0])
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            check.error(parts, f'found "{text}"; expected a network in CIDR notation',
                        'write it like "10.200.0.0/16"')
            return None
        check.error(parts, f'found "{text}", which has host bits set; expected the network '
                    f'address "{loose}"', f'write "{loose}"')
        return None
    if network.version == 6:
        check.error(parts, f'found "{text}"; expected an IPv4 range',
                    "IPv6 ranges are not supported yet")
        return None
    return network


def pod_mtu(mode: str, underlay_mtu: int) -> int:
    """Return the MTU pods get: the underlay's, less the VXLAN overhead in flannel-vxlan mode."""
    if mode == "flannel-vxlan":
        return underlay_mtu - VXLAN_OVERHEAD
    return underlay_mtu


def check_node_count(check: Checker, network: dict[str, Any], node_count: int) -> None:
    if node_count > MAX_NODES:
        check.error(
            ("spec", "nodes"), f"found {node_count} nodes; expected at most {MAX_NODES}",
            f"Kubernetes supports at most {MAX_NODES} nodes in one cluster (its documented "
            "scalability limit); split the nodes into several clusters",
        )
    elif network.get("mode", "static") == "static" and node_count > STATIC_MODE_MAX_NODES:
        check.error(
            (*NETWORK, "mode"),
            f"found {node_count} nodes in static mode; expected at most {STATIC_MODE_MAX_NODES}",
            "static mode installs a route per node on every node; use flannel-vxlan for "
            "larger clusters",
        )


def check_mtu(check: Checker, network: dict[str, Any]) -> None:
    mode = network.get("mode", "static")
    underlay = int(network.get("mtu", 1500))
    if pod_mtu(mode, underlay) >= IPV4_MIN_MTU:
        return
    check.error(
        (*NETWORK, "mtu"),
        f"found {underlay}, which leaves pods {pod_mtu(mode, underlay)} bytes after the "
        f"{VXLAN_OVERHEAD}-byte VXLAN overhead of {mode}; expected at least "
        f"{IPV4_MIN_MTU + VXLAN_OVERHEAD}",
        f"IPv4 needs an MTU of at least {IPV4_MIN_MTU}; use the node network's real MTU, or "
        "flannel-host-gw, which adds no overhead",
    )


def check_node_blocks(
    check: Checker, spec: dict[str, Any], pod: IPNetwork, node_count: int
) -> int | None:
    """Check nodeCIDRMaskSize against the pod range and node count; return the mask."""
    value = spec["network"].get("nodeCIDRMaskSize", DEFAULT_NODE_MASK)
    parts: tuple[str, ...] = (*NETWORK, "nodeCIDRMaskSize")
    if isinstance(value, dict):
        if "ipv6" in value:
            check.error((*parts, "ipv6"), "found an IPv6 block size; expected none",
                        "IPv6 pod ranges are not supported yet")
        value = value.get("ipv4", DEFAULT_NODE_MASK)
        parts = (*parts, "ipv4")
    mask = int(value)
    if pod.max_prefixlen - MIN_BLOCK_HOST_BITS < mask <= pod.max_prefixlen:
        largest = pod.max_prefixlen - MIN_BLOCK_HOST_BITS
        check.error(parts, f"found /{mask}; expected at most /{largest}, so that each node "
                    f"block holds at least {(1 << MIN_BLOCK_HOST_BITS) - 2} pods",
                    f"use /{largest} or a shorter prefix such as /24")
        return None
    if mask > 32 or mask < pod.prefixlen:
        check.error(parts, f"found /{mask}; expected a prefix length between /{pod.prefixlen} "
                    f"(podCIDR {pod}) and /32", "use /24 blocks for a /16 podCIDR")
        return None
    if mask - pod.prefixlen > NODE_MASK_MAX_EXTRA_BITS:
        check.error(
            parts,
            f"found /{mask}, {mask - pod.prefixlen} bits longer than podCIDR {pod}; expected at "
            f"most {NODE_MASK_MAX_EXTRA_BITS} bits longer",
            f"kube-controller-manager rejects more; use at most /{pod.prefixlen + 16}",
        )
        return None
    blocks = block_capacity(mask, pod.prefixlen)
    if blocks < node_count:
        noun = "node range" if blocks == 1 else "node ranges"
        check.error(
            parts,
            f"podCIDR {pod} split into /{mask} blocks gives {blocks} {noun}, but {node_count} "
            "nodes are declared",
            "use a larger podCIDR or a longer nodeCIDRMaskSize",
        )
    return mask


def check_max_pods(check: Checker, spec: dict[str, Any], mask: int) -> None:
    kubelet = spec.get("kubelet", {})
    if "maxPods" not in kubelet:
        return
    limit = max_pods_for_block(mask)
    if kubelet["maxPods"] > limit:
        check.error(("spec", "kubelet", "maxPods"),
                    f"found {kubelet['maxPods']}; expected at most {limit}, the pods a /{mask} "
                    "pod block can address", f"set maxPods to {limit} or less, or use "
                    "a shorter nodeCIDRMaskSize")


def check_service_range(check: Checker, network: dict[str, Any], service: IPNetwork) -> None:
    host_bits = service.max_prefixlen - service.prefixlen
    parts = (*NETWORK, "serviceCIDR")
    if host_bits > SERVICE_HOST_BITS_MAX:
        check.error(parts, f"found {service} with {host_bits} host bits; expected at most "
                    f"{SERVICE_HOST_BITS_MAX}", f"kube-apiserver rejects larger service ranges; "
                    f"use a /{service.max_prefixlen - SERVICE_HOST_BITS_MAX} or smaller")
    if host_bits < 4:
        check.error(parts, f"found {service}; expected at least 4 host bits",
                    "the range must hold the kubernetes Service, the DNS Service and more")
        return

    if "dnsServiceIP" not in network:
        return
    dns = ipaddress.ip_address(network["dnsServiceIP"])
    dns_parts = (*NETWORK, "dnsServiceIP")
    if dns not in service:
        check.error(dns_parts, f"dnsServiceIP {dns} is outside serviceCIDR {service}",
                    f"use an address inside {service}, such as {default_dns_service_ip(service)}")
    elif dns in (service.network_address, service.broadcast_address):
        which = "network" if dns == service.network_address else "broadcast"
        check.error(dns_parts, f"found {dns}, the {which} address of {service}; expected a "
                    "usable address", f"use {default_dns_service_ip(service)}")
    elif dns == service.network_address + 1:
        check.error(dns_parts, f"found {dns}, which the kubernetes Service takes; expected "
                    "another address", f"use {default_dns_service_ip(service)}")


def check_overlaps(
    check: Checker, spec: dict[str, Any], pod: IPNetwork | None, service: IPNetwork | None
) -> None:
    if pod is not None and service is not None and pod.overlaps(service):
        check.error((*NETWORK, "serviceCIDR"),
                    f"serviceCIDR {service} overlaps podCIDR {pod}; they must be disjoint",
                    "choose ranges that do not contain each other, e.g. 10.200.0.0/16 for pods "
                    "and 10.32.0.0/24 for services")
    ranges = [(key, net) for key, net in (("podCIDR", pod), ("serviceCIDR", service)) if net]
    machines = parse_machine_networks(check, spec["network"])
    for key, net in ranges:
        overlapping = [machine for machine in machines if net.overlaps(machine)]
        for machine in overlapping:
            check.error((*NETWORK, key), f"{key} {net} overlaps machine network {machine}",
                        f"choose a {key} outside every machine network")
        if overlapping:
            continue  # the node addresses inside are a consequence, not a second problem
        inside = []
        for node in spec["nodes"]:
            for text in node_addresses(node):
                if ipaddress.ip_address(text) in net:
                    inside.append(f"node {node['name']} {text}")
        host = str(spec["controlPlane"]["endpoint"]["host"])
        if is_ip(host) and ipaddress.ip_address(host) in net:
            inside.append(f"endpoint {host}")
        if inside:
            check.error((*NETWORK, key),
                        f"{key} {net} overlaps the machine network ({', '.join(inside)})",
                        f"choose a {key} that no node or load balancer address falls in")


def parse_machine_networks(check: Checker, network: dict[str, Any]) -> list[IPNetwork]:
    machines = []
    for index, text in enumerate(network.get("machineCIDRs", [])):
        try:
            machines.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            check.error((*NETWORK, "machineCIDRs", index),
                        f'found "{text}"; expected a network in CIDR notation',
                        'write it like "10.240.0.0/24"')
    return machines


def check_endpoint(check: Checker, spec: dict[str, Any]) -> None:
    endpoint = spec["controlPlane"]["endpoint"]
    host = str(endpoint["host"])
    port = endpoint.get("port", 6443)
    for node in spec["nodes"]:
        if host not in node_addresses(node):
            continue
        if node["role"] != "control-plane":
            check.error(("spec", "controlPlane", "endpoint", "host"),
                        f"found {host}, the address of worker {node['name']}; expected a "
                        "load balancer or a control-plane address",
                        "no API server runs on a worker")
        elif port != 6443:
            check.error(("spec", "controlPlane", "endpoint", "port"),
                        f"found {port}; expected 6443, the port the API server on "
                        f"{node['name']} listens on", "use port 6443 or a load balancer")


def check_dns_upstreams(
    check: Checker, network: dict[str, Any], service: IPNetwork | None
) -> None:
    if network.get("resolvConf") == STUB_RESOLV_CONF:
        check.error((*NETWORK, "resolvConf"),
                    f"found {STUB_RESOLV_CONF}, which names the local stub resolver 127.0.0.53; "
                    "expected a resolv.conf with real name servers",
                    "use /run/systemd/resolve/resolv.conf, or leave resolvConf out so that the "
                    "first boot chooses")
    for index, text in enumerate(network.get("dnsUpstreams", [])):
        if "%" in text:
            check.error((*NETWORK, "dnsUpstreams", index),
                        f'found "{text}"; expected an address without a zone index', None)
            continue
        address = ipaddress.ip_address(text)
        if service is not None and address in service:
            check.error((*NETWORK, "dnsUpstreams", index),
                        f"CoreDNS upstream {text} is inside serviceCIDR {service} and would loop",
                        "a Service address in the cluster is CoreDNS itself or another "
                        "in-cluster service; use the address of a name server outside the cluster")
        elif address.is_loopback:
            check.error((*NETWORK, "dnsUpstreams", index),
                        f"CoreDNS upstream {text} is a loopback address and would loop",
                        "inside the CoreDNS pod a loopback address is CoreDNS itself; use the "
                        "address of a real name server, or leave dnsUpstreams empty")
        elif address.is_unspecified or address.is_multicast:
            check.error((*NETWORK, "dnsUpstreams", index),
                        f'found "{text}"; expected a unicast name server address', None)


def check_network(check: Checker, spec: dict[str, Any]) -> None:
    network = spec["network"]
    node_count = len(spec["nodes"])
    check_node_count(check, network, node_count)
    check_mtu(check, network)
    pod = parse_range(check, "podCIDR", network["podCIDR"])
    service = parse_range(check, "serviceCIDR", network["serviceCIDR"])
    if pod is not None:
        mask = check_node_blocks(check, spec, pod, node_count)
        if mask is not None:
            check_max_pods(check, spec, mask)
    if service is not None:
        check_service_range(check, network, service)
    check_overlaps(check, spec, pod, service)
    check_endpoint(check, spec)
    check_dns_upstreams(check, network, service)
