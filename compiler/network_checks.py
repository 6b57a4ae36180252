"""Semantic checks of the address plan: node count, MTU, ranges, blocks, DNS and overlaps.

Reads `spec.network`, `spec.kubelet.maxPods`, `spec.controlPlane.endpoint` and the nodes'
count and addresses. A single-stack network has one range of one family in podCIDR and
serviceCIDR and one address a node. A dual-stack network has one IPv4 and one IPv6 range in
each and one address of each family a node, all in the same order, primary family first.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from compiler.addressing import (
    DEFAULT_NODE_MASKS,
    MIN_MTU,
    NODE_MASK_KEYS,
    as_list,
    block_capacity,
    default_dns_service_ip,
    describe_families,
    families,
    max_pods_for_block,
    node_addresses,
    pod_mtu,
    resolve_node_masks,
    vxlan_overhead,
)
from compiler.checker import Checker
from compiler.loader import PathPart
from compiler.model import IPNetwork

STATIC_MODE_MAX_NODES = 100
# Kubernetes' documented scalability limit ("Considerations for large clusters").
MAX_NODES = 5000
# kube-apiserver rejects service ranges with more host bits, for IPv6 too (a /108 at most).
SERVICE_HOST_BITS_MAX = 20
NODE_MASK_MAX_EXTRA_BITS = 16  # kube-controller-manager: node mask at most pod prefix + 16
MIN_BLOCK_HOST_BITS = 4  # a /28 block has room for 14 pods, kubeadm's minimum
STUB_RESOLV_CONF = "/run/systemd/resolve/stub-resolv.conf"
DISJOINT_EXAMPLES = {
    4: "10.200.0.0/16 for pods and 10.32.0.0/24 for services",
    6: "fd00:10:200::/56 for pods and fd00:10:32::/112 for services",
}
NETWORK = ("spec", "network")
FAMILY_HINT = (
    "a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one "
    "address of each family in every node's ips, all in the same order, primary first; a "
    "single-stack cluster uses one family everywhere"
)


def is_ip(text: str) -> bool:
    """Return True for an IPv4 or IPv6 address; a zone index (fe80::1%eth0) is not global."""
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def range_parts(key: str, value: Any, index: int) -> tuple[PathPart, ...]:
    """Return the path of one range of podCIDR or serviceCIDR, a string or a list."""
    return (*NETWORK, key, index) if isinstance(value, list) else (*NETWORK, key)


def is_special_network(network: IPNetwork) -> bool:
    """Return True for a range that cannot hold pod or Service addresses."""
    address = network.network_address
    mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
    return mapped or network.is_loopback or network.is_link_local or network.is_multicast or (
        network.is_unspecified or (network.is_reserved and network.version == 4)
    )


def parse_cidr(check: Checker, parts: tuple[PathPart, ...], text: str) -> IPNetwork | None:
    if "/" not in text or "%" in text:
        # A bare address would be read as a /32 or /128, and Go rejects a zone index in a CIDR.
        check.error(parts, f'found "{text}"; expected a network in CIDR notation with a '
                    "prefix length and no zone index", 'write it like "10.200.0.0/16"')
        return None
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    else:
        if is_special_network(network):
            check.error(parts, f'found "{text}", a reserved range (loopback, link-local, '
                        "multicast, unspecified or IPv4-mapped); expected a private or global "
                        "range", "use a private range such as 10.200.0.0/16 or fd00:10:200::/56")
            return None
        return network
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        check.error(parts, f'found "{text}"; expected a network in CIDR notation',
                    'write it like "10.200.0.0/16"')
        return None
    check.error(parts, f'found "{text}", which has host bits set; expected the network '
                f'address "{loose}"', f'write "{loose}"')
    return None


def parse_ranges(check: Checker, key: str, value: Any) -> list[IPNetwork] | None:
    """Parse podCIDR or serviceCIDR: one range, or one IPv4 and one IPv6 range, primary first."""
    parsed = [
        parse_cidr(check, range_parts(key, value, index), str(text))
        for index, text in enumerate(as_list(value))
    ]
    networks = [network for network in parsed if network is not None]
    if len(networks) != len(parsed):
        return None
    if len(networks) == 2 and networks[0].version == networks[1].version:
        check.error(
            range_parts(key, value, 1),
            f"found two IPv{networks[0].version} ranges ({networks[0]}, {networks[1]}); "
            "expected one IPv4 and one IPv6 range", FAMILY_HINT,
        )
        return None
    return networks


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
    uses_ipv6 = any(":" in str(text) for text in as_list(network["podCIDR"]))
    family = 6 if uses_ipv6 else 4
    minimum = MIN_MTU[family]
    pods = pod_mtu(mode, underlay, uses_ipv6)
    if pods >= minimum:
        return
    if pods == underlay:
        check.error(
            (*NETWORK, "mtu"), f"found {underlay}; expected at least {minimum}",
            f"IPv{family} needs an MTU of at least {minimum}; use the node network's real MTU",
        )
        return
    overhead = vxlan_overhead(uses_ipv6)
    underlay_family = " over IPv6" if uses_ipv6 else ""
    check.error(
        (*NETWORK, "mtu"),
        f"found {underlay}, which leaves pods {pods} bytes after the {overhead}-byte VXLAN "
        f"overhead of {mode}{underlay_family}; expected at least {minimum + overhead}",
        f"IPv{family} needs an MTU of at least {minimum}; use the node network's real MTU, or "
        "flannel-host-gw, which adds no overhead",
    )


def check_families(
    check: Checker, spec: dict[str, Any], pods: list[IPNetwork] | None,
    services: list[IPNetwork] | None,
) -> None:
    """Check that service ranges and node addresses have the pod ranges' families, in order."""
    if pods is not None and services is not None and families(services) != families(pods):
        check.error(
            (*NETWORK, "serviceCIDR"),
            f"found {describe_families(families(services))}; expected "
            f"{describe_families(families(pods))}, the address families of podCIDR",
            FAMILY_HINT,
        )
    reference, source = (pods, "podCIDR") if pods is not None else (services, "serviceCIDR")
    if reference is None:
        return
    expected = families(reference)
    for index, node in enumerate(spec["nodes"]):
        addresses = [ipaddress.ip_address(text) for text in node_addresses(node)]
        found = families(addresses)
        if not found or found == expected or len(set(found)) < len(found):
            continue  # a node without addresses or with two of one family fails elsewhere
        field = "ips" if "ips" in node else "ip"
        check.error(
            ("spec", "nodes", index, field),
            f"found {', '.join(str(address) for address in addresses)} "
            f"({describe_families(found)}); expected {describe_families(expected)}, the "
            f"address families of {source}",
            FAMILY_HINT,
        )


def node_mask_values(
    check: Checker, network: dict[str, Any], pods: list[IPNetwork]
) -> list[tuple[int, tuple[PathPart, ...], bool]] | None:
    """Return (mask, path, whether it is a default) per pod range, or None after an error."""
    value = network.get("nodeCIDRMaskSize")
    parts: tuple[PathPart, ...] = (*NETWORK, "nodeCIDRMaskSize")
    present = {pod.version for pod in pods}
    if isinstance(value, int) and len(pods) == 2:
        ipv4 = value if value <= 32 else DEFAULT_NODE_MASKS[4]
        check.error(
            parts, f"found {value}; expected one prefix length per address family, because "
            "podCIDR is dual-stack",
            "kube-controller-manager rejects --node-cidr-mask-size in a dual-stack cluster; "
            f"write nodeCIDRMaskSize: {{ipv4: {ipv4}, ipv6: {DEFAULT_NODE_MASKS[6]}}}",
        )
        return None
    if isinstance(value, dict):
        for version, key in NODE_MASK_KEYS.items():
            if key in value and version not in present:
                check.error(
                    (*parts, key),
                    f"found an IPv{version} block size, but podCIDR has no IPv{version} range; "
                    "expected none", f"remove it, or add an IPv{version} range to podCIDR",
                )
    masks = resolve_node_masks(value, pods)
    entries = []
    for pod, mask in zip(pods, masks, strict=True):
        if isinstance(value, dict):
            key = NODE_MASK_KEYS[pod.version]
            entries.append((mask, (*parts, key), key not in value))
        else:
            entries.append((mask, parts, value is None))
    return entries


def mask_too_short_hint(pod: IPNetwork) -> str:
    if pod.version == 4:
        return "use /24 blocks for a /16 podCIDR"
    return (
        f"use /{DEFAULT_NODE_MASKS[6]} blocks, kube-controller-manager's IPv6 default, with an "
        "IPv6 podCIDR of /48 to /63, such as a /56"
    )


def check_node_block(
    check: Checker, parts: tuple[PathPart, ...], pod: IPNetwork, mask: int, is_default: bool,
    node_count: int,
) -> bool:
    """Check one family's node block size against its pod range and the node count."""
    found = f"/{mask} (the default)" if is_default else f"/{mask}"
    largest = pod.max_prefixlen - MIN_BLOCK_HOST_BITS
    if largest < mask <= pod.max_prefixlen:
        suggestion = DEFAULT_NODE_MASKS[pod.version]
        check.error(parts, f"found {found}; expected at most /{largest}, so that each node "
                    f"block holds at least {(1 << MIN_BLOCK_HOST_BITS) - 2} pods",
                    f"use /{largest} or a shorter prefix such as /{suggestion}")
        return False
    if mask > pod.max_prefixlen or mask < pod.prefixlen:
        check.error(parts, f"found {found}; expected a prefix length between /{pod.prefixlen} "
                    f"(podCIDR {pod}) and /{pod.max_prefixlen}", mask_too_short_hint(pod))
        return False
    if mask - pod.prefixlen > NODE_MASK_MAX_EXTRA_BITS:
        check.error(
            parts,
            f"found {found}, {mask - pod.prefixlen} bits longer than podCIDR {pod}; expected at "
            f"most {NODE_MASK_MAX_EXTRA_BITS} bits longer",
            f"kube-controller-manager rejects more; use at most /{pod.prefixlen + 16}",
        )
        return False
    blocks = block_capacity(mask, pod.prefixlen)
    if blocks < node_count:
        noun = "node range" if blocks == 1 else "node ranges"
        check.error(
            parts,
            f"podCIDR {pod} split into /{mask} blocks gives {blocks} {noun}, but {node_count} "
            "nodes are declared",
            "use a larger podCIDR or a longer nodeCIDRMaskSize",
        )
    return True


def check_node_blocks(
    check: Checker, spec: dict[str, Any], pods: list[IPNetwork], node_count: int
) -> list[tuple[int, IPNetwork]] | None:
    """Check nodeCIDRMaskSize against the pod ranges and node count; return (mask, range) pairs."""
    entries = node_mask_values(check, spec["network"], pods)
    if entries is None:
        return None
    valid = [
        check_node_block(check, parts, pod, mask, is_default, node_count)
        for pod, (mask, parts, is_default) in zip(pods, entries, strict=True)
    ]
    if not all(valid):
        return None
    return [(mask, pod) for pod, (mask, _, _) in zip(pods, entries, strict=True)]


def check_max_pods(
    check: Checker, spec: dict[str, Any], blocks: list[tuple[int, IPNetwork]]
) -> None:
    kubelet = spec.get("kubelet", {})
    if "maxPods" not in kubelet:
        return
    # The smallest block of any family limits the pods of a node.
    limit, mask = min((max_pods_for_block(mask, pod.max_prefixlen), mask) for mask, pod in blocks)
    if kubelet["maxPods"] > limit:
        check.error(("spec", "kubelet", "maxPods"),
                    f"found {kubelet['maxPods']}; expected at most {limit}, the pods a /{mask} "
                    "pod block can address", f"set maxPods to {limit} or less, or use "
                    "a shorter nodeCIDRMaskSize")


def check_service_range(
    check: Checker, parts: tuple[PathPart, ...], service: IPNetwork
) -> bool:
    host_bits = service.max_prefixlen - service.prefixlen
    if host_bits > SERVICE_HOST_BITS_MAX:
        check.error(parts, f"found {service} with {host_bits} host bits; expected at most "
                    f"{SERVICE_HOST_BITS_MAX}", f"kube-apiserver rejects larger service ranges; "
                    f"use a /{service.max_prefixlen - SERVICE_HOST_BITS_MAX} or smaller")
    if host_bits < 4:
        check.error(parts, f"found {service}; expected at least 4 host bits",
                    "the range must hold the kubernetes Service, the DNS Service and more")
        return False
    return True


def check_dns_service_ip(
    check: Checker, network: dict[str, Any], services: list[IPNetwork]
) -> None:
    """Check dnsServiceIP against the primary service range, where the DNS Service lives."""
    if "dnsServiceIP" not in network:
        return
    service = services[0]
    which_range = "the primary serviceCIDR" if len(services) > 1 else "serviceCIDR"
    dns = ipaddress.ip_address(network["dnsServiceIP"])
    dns_parts = (*NETWORK, "dnsServiceIP")
    if dns not in service:
        check.error(dns_parts, f"dnsServiceIP {dns} is outside {which_range} {service}",
                    f"use an address inside {service}, such as {default_dns_service_ip(service)}")
    elif dns in (service.network_address, service.broadcast_address):
        which = "network" if dns == service.network_address else "broadcast"
        check.error(dns_parts, f"found {dns}, the {which} address of {service}; expected a "
                    "usable address", f"use {default_dns_service_ip(service)}")
    elif dns == service.network_address + 1:
        check.error(dns_parts, f"found {dns}, which the kubernetes Service takes; expected "
                    "another address", f"use {default_dns_service_ip(service)}")


def check_overlaps(
    check: Checker, spec: dict[str, Any], pods: list[IPNetwork], services: list[IPNetwork]
) -> None:
    for service in services:
        for pod in pods:
            if pod.version != service.version or not pod.overlaps(service):
                continue
            check.error((*NETWORK, "serviceCIDR"),
                        f"serviceCIDR {service} overlaps podCIDR {pod}; they must be disjoint",
                        "choose ranges that do not contain each other, e.g. "
                        f"{DISJOINT_EXAMPLES[pod.version]}")
    ranges = [("podCIDR", net) for net in pods] + [("serviceCIDR", net) for net in services]
    machines = parse_machine_networks(check, spec["network"])
    for key, net in ranges:
        overlapping = [
            machine for machine in machines
            if machine.version == net.version and net.overlaps(machine)
        ]
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
        host = str(spec["controlPlane"].get("endpoint", {}).get("host", ""))
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
    endpoint = spec["controlPlane"].get("endpoint")
    if endpoint is None:
        return  # workers use their local kube-apiserver-proxy, which has no address to check
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
    check: Checker, network: dict[str, Any], services: list[IPNetwork]
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
        service = next((service for service in services if address in service), None)
        if service is not None:
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
    pods = parse_ranges(check, "podCIDR", network["podCIDR"])
    services = parse_ranges(check, "serviceCIDR", network["serviceCIDR"])
    check_families(check, spec, pods, services)
    if pods is not None:
        blocks = check_node_blocks(check, spec, pods, node_count)
        if blocks is not None:
            check_max_pods(check, spec, blocks)
    if services is not None:
        valid = [
            check_service_range(check, range_parts("serviceCIDR", network["serviceCIDR"], i), net)
            for i, net in enumerate(services)
        ]
        if all(valid):
            check_dns_service_ip(check, network, services)
    check_overlaps(check, spec, pods or [], services or [])
    check_endpoint(check, spec)
    check_dns_upstreams(check, network, services or [])
