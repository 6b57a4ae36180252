"""Plan: apply defaults in one place, resolve the release and allocate addresses.

Reads the whole validated description and returns the immutable `Cluster` model. Pod blocks are
allocated in node order, one from each family's pod range (static mode). The `kubernetes`
Service takes the first address of the primary service range and the DNS Service the 10th
unless the description names one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from compiler import versions
from compiler.addressing import (
    DEFAULT_MAX_PODS,
    as_list,
    default_dns_service_ip,
    max_pods_for_block,
    node_addresses,
    resolve_node_masks,
)
from compiler.external_etcd import load_external_etcd
from compiler.loader import Description
from compiler.model import (
    CONTROL_PLANE_TAINT_KEY,
    AdminUser,
    Arch,
    Cluster,
    Endpoint,
    EtcdMember,
    Install,
    IPNetwork,
    KubeletSettings,
    KubeProxySettings,
    Network,
    Node,
    PkiSettings,
    Taint,
    format_host,
)


def allocate_blocks(
    raw_nodes: list[dict[str, Any]], network: Network, previous: Mapping[str, list[str]]
) -> dict[str, tuple[IPNetwork, ...]]:
    """Give every node one pod block of each pod range, in the order of the ranges.

    In each range a node keeps its previous block when that still fits, and otherwise gets the
    lowest free block, in node order. Keeping previous blocks means that adding or removing a
    node moves no other node's pods.
    """
    per_range = [
        allocate_range_blocks(raw_nodes, pod, mask, previous)
        for pod, mask in zip(network.pod_cidrs, network.node_cidr_mask_sizes, strict=True)
    ]
    return {
        raw["name"]: tuple(blocks[raw["name"]] for blocks in per_range) for raw in raw_nodes
    }


def allocate_range_blocks(
    raw_nodes: list[dict[str, Any]], pod: IPNetwork, mask: int, previous: Mapping[str, list[str]]
) -> dict[str, IPNetwork]:
    """Give every node one block of one pod range, keeping the previous block that fits."""
    previous_blocks: dict[str, IPNetwork] = {}
    used_blocks: set[IPNetwork] = set()
    for raw in raw_nodes:
        for text in previous.get(raw["name"], []):
            block = ipaddress.ip_network(text)
            fits = (
                block.version == pod.version and block.prefixlen == mask
                and block.network_address in pod
            )
            if fits and block not in used_blocks:
                previous_blocks[raw["name"]] = block
                used_blocks.add(block)
                break
    free = (block for block in pod.subnets(new_prefix=mask) if block not in used_blocks)
    return {raw["name"]: previous_blocks.get(raw["name"]) or next(free) for raw in raw_nodes}


def build_network(raw: dict[str, Any]) -> Network:
    pods = tuple(ipaddress.ip_network(text) for text in as_list(raw["podCIDR"]))
    services = tuple(ipaddress.ip_network(text) for text in as_list(raw["serviceCIDR"]))
    dns = raw.get("dnsServiceIP")
    return Network(
        mode=raw.get("mode", "static"),
        pod_cidrs=pods,
        node_cidr_mask_sizes=resolve_node_masks(raw.get("nodeCIDRMaskSize"), pods),
        service_cidrs=services,
        cluster_domain=raw.get("clusterDomain", "cluster.local"),
        dns_service_ip=ipaddress.ip_address(dns) if dns else default_dns_service_ip(services[0]),
        kubernetes_service_ip=services[0].network_address + 1,
        mtu=int(raw.get("mtu", 1500)),
        dns_upstreams=tuple(ipaddress.ip_address(text) for text in raw.get("dnsUpstreams", [])),
        resolv_conf=raw.get("resolvConf"),
    )


def build_taints(raw: dict[str, Any]) -> tuple[Taint, ...]:
    if "taints" in raw:
        return tuple(
            Taint(key=taint["key"], value=taint.get("value"), effect=taint["effect"])
            for taint in raw["taints"]
        )
    if raw["role"] == "control-plane":
        return (Taint(key=CONTROL_PLANE_TAINT_KEY, effect="NoSchedule"),)
    return ()


def build_nodes(
    raw_nodes: list[dict[str, Any]], network: Network, previous: Mapping[str, list[str]]
) -> tuple[Node, ...]:
    blocks = allocate_blocks(raw_nodes, network, previous) if network.mode == "static" else None
    nodes = []
    for raw in raw_nodes:
        nodes.append(Node(
            name=raw["name"],
            role=raw["role"],
            ips=tuple(ipaddress.ip_address(text) for text in node_addresses(raw)),
            arch=raw.get("arch", "amd64"),
            hostname=raw.get("hostname") or raw["name"],
            labels=tuple(sorted(raw.get("labels", {}).items())),
            taints=build_taints(raw),
            pod_cidrs=blocks[raw["name"]] if blocks is not None else (),
        ))
    return tuple(nodes)


def build_admin(raw: dict[str, Any] | None) -> AdminUser | None:
    if not raw:
        return None
    return AdminUser(
        name=raw["name"],
        ssh_authorized_keys=tuple(raw.get("sshAuthorizedKeys", [])),
        password_hash=raw.get("passwordHash"),
    )


def build_max_pods(spec: dict[str, Any], network: Network) -> int:
    kubelet = spec.get("kubelet", {})
    if "maxPods" in kubelet:
        return int(kubelet["maxPods"])
    # The smallest block of any family limits the pods of a node.
    return min(DEFAULT_MAX_PODS, *(
        max_pods_for_block(mask, pod.max_prefixlen)
        for pod, mask in zip(network.pod_cidrs, network.node_cidr_mask_sizes, strict=True)
    ))


ETCD_PEER_PORT = 2380
ETCD_CLIENT_PORT = 2379


def peer_url(node: Node) -> str:
    return f"https://{format_host(node.ip)}:{ETCD_PEER_PORT}"


def plan_etcd_members(
    nodes: tuple[Node, ...], previous: Mapping[str, tuple[str, str]]
) -> tuple[EtcdMember, ...]:
    """Decide how each control plane's etcd starts.

    A first build starts every member at once from the full list. Later, a member keeps the
    flags it was created with (etcd reads them only on its first start), and a control plane
    the state does not know joins the running members: it starts with
    --initial-cluster-state=existing after its first boot added it as a member.
    """
    control_planes = [node for node in nodes if node.is_control_plane]
    running = [node for node in control_planes if node.name in previous]
    if not running:
        everyone = ",".join(f"{node.name}={peer_url(node)}" for node in control_planes)
        return tuple(EtcdMember(node.name, everyone, "new") for node in control_planes)
    members = []
    joining: list[Node] = []
    for node in control_planes:
        if node.name in previous:
            initial_cluster, initial_state = previous[node.name]
            members.append(EtcdMember(node.name, initial_cluster, cast(
                Literal["new", "existing"], initial_state
            )))
            continue
        # etcd adds one member at a time, so a later joiner counts the earlier ones as
        # members: they must boot in node order, each after the previous one is healthy.
        joining.append(node)
        joined = [*running, *joining]
        members.append(EtcdMember(
            node.name,
            ",".join(f"{member.name}={peer_url(member)}" for member in joined),
            "existing",
            tuple(f"https://{format_host(member.ip)}:{ETCD_CLIENT_PORT}" for member in running),
        ))
    return tuple(members)


def build_cluster(
    description: Description,
    pod_blocks: Mapping[str, list[str]] | None = None,
    etcd_members: Mapping[str, tuple[str, str]] | None = None,
) -> Cluster:
    """Build the cluster model from a description that passed both validation layers.

    `pod_blocks` are the blocks an earlier build gave each node, and `etcd_members` the
    (--initial-cluster, --initial-cluster-state) of each etcd member it created (both from
    the state).
    """
    data = description.data
    spec = data["spec"]
    kubernetes = spec.get("kubernetes", {})
    install = spec.get("install", {})
    pki = spec.get("pki", {})
    network = build_network(spec["network"])
    arches = {cast(Arch, node.get("arch", "amd64")) for node in spec["nodes"]}
    endpoint = spec["controlPlane"].get("endpoint")
    nodes = build_nodes(spec["nodes"], network, pod_blocks or {})
    external_etcd = load_external_etcd(description)
    # With external etcd no control plane runs a member, so there is nothing to plan.
    members = plan_etcd_members(nodes, etcd_members or {}) if external_etcd is None else ()

    return Cluster(
        name=data["metadata"]["name"],
        source=Path(description.filename).name,
        release=versions.build_release(
            kubernetes.get("version", versions.DEFAULT_KUBERNETES_VERSION),
            arches,
            kubernetes.get("pins", {}),
            install.get("baseURL"),
            spec.get("images", {}).get("registry"),
        ),
        endpoint=build_endpoint(endpoint),
        cert_sans=tuple(spec["controlPlane"].get("certSANs", [])),
        network=network,
        pki=PkiSettings(
            key_algorithm=pki.get("keyAlgorithm", "ecdsa-p256"),
            ca_validity_days=int(pki.get("caValidityDays", 3650)),
            cert_validity_days=int(pki.get("certValidityDays", 365)),
            renew_before_days=int(pki.get("renewBeforeDays", 30)),
        ),
        install=Install(
            method=install.get("method", "download"),
            base_url=install.get("baseURL"),
            bin_dir=install.get("binDir", "/usr/local/bin"),
        ),
        admin=build_admin(spec.get("admin")),
        kubelet=build_kubelet(spec, network),
        kube_proxy=KubeProxySettings(mode=spec.get("kubeProxy", {}).get("mode", "iptables")),
        cloud_provider=spec.get("cloudProvider", "none"),
        nodes=nodes,
        etcd_members=members,
        external_etcd=external_etcd,
    )


def build_kubelet(spec: dict[str, Any], network: Network) -> KubeletSettings:
    kubelet = spec.get("kubelet", {})
    return KubeletSettings(
        max_pods=build_max_pods(spec, network),
        container_log_max_size=kubelet.get("containerLogMaxSize", "10Mi"),
        container_log_max_files=int(kubelet.get("containerLogMaxFiles", 5)),
    )


def build_endpoint(endpoint: dict[str, Any] | None) -> Endpoint | None:
    """Build the load-balancer endpoint; None when the description names none."""
    if endpoint is None:
        return None
    return Endpoint(host=str(endpoint["host"]), port=int(endpoint.get("port", 6443)))
