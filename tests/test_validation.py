"""Invalid descriptions: each one is rejected with exactly these messages."""

from __future__ import annotations

import pytest

from compiler.errors import DescriptionError
from compiler.pipeline import plan_text
from tests.conftest import MINIMAL


def many_workers(count: int, network: str | None = None) -> str:
    rows = "\n".join(
        f"    - {{name: n-{i}, role: worker, ip: 10.0.{1 + i // 250}.{i % 250 + 1}}}"
        for i in range(count)
    )
    head = MINIMAL.split("  nodes:")[0]
    if network is not None:
        head = head.replace(
            "network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}",
            network,
        )
    return head + "  nodes:\n    - {name: cp-1, role: control-plane, ip: 10.0.0.10}\n" + rows + "\n"


# Room for 8,192 node blocks, so that only the node limit is exceeded.
FLANNEL_LARGE = "network: {mode: flannel-vxlan, podCIDR: 10.128.0.0/11, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}"
UNINITIALIZED_TAINT = "taints: [{key: node.cloudprovider.kubernetes.io/uninitialized, value: 'true', effect: NoSchedule}]"
SINGLE_STACK_NETWORK = "network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}"
DUAL_STACK = MINIMAL.replace(
    SINGLE_STACK_NETWORK,
    "network: {podCIDR: [10.200.0.0/16, 'fd00:10:200::/56'], serviceCIDR: [10.32.0.0/24, 'fd00:10:32::/112'], nodeCIDRMaskSize: {ipv4: 24, ipv6: 64}}",
).replace("ip: 10.0.0.10}", "ips: [10.0.0.10, 'fd00::10']}").replace("ip: 10.0.0.20}", "ips: [10.0.0.20, 'fd00::20']}")
IPV6_ONLY = MINIMAL.replace(
    SINGLE_STACK_NETWORK, "network: {podCIDR: 'fd00:10:200::/56', serviceCIDR: 'fd00:10:32::/112'}",
).replace("10.0.0.10", "'fd00::10'").replace("10.0.0.20", "'fd00::20'")


CASES: dict[str, str] = {
 "bad-yaml": MINIMAL.replace("metadata: {name: demo}", "metadata: {name: demo"),
 "two-documents": MINIMAL + "---\n" + MINIMAL,
 "empty": "",
 "duplicate-key": MINIMAL.replace("kind: Cluster\n", "kind: Cluster\nkind: Cluster\n"),
 "unknown-key": MINIMAL.replace("podCIDR:", "podCIRD:"),
 "unknown-top-key": MINIMAL + "status: {}\n",
 "wrong-type": MINIMAL.replace("port: 6443", "port: '6443'"),
 "empty-endpoint": MINIMAL.replace("{endpoint: {host: 10.0.0.10, port: 6443}}", "{endpoint: {}}"),
 "wrong-api-version": MINIMAL.replace("kubecc/v1alpha1", "kubecc/v1"),
 "missing-nodes": MINIMAL.split("  nodes:")[0],
 "bad-enum": MINIMAL.replace("role: worker", "role: wroker"),
 "bad-ip": MINIMAL.replace("ip: 10.0.0.20", "ip: 10.0.0.300"),
 "upper-name": MINIMAL.replace("worker-1", "Worker_1"),
 "long-name": MINIMAL.replace("worker-1", "w" * 53),
 "duplicate-name": MINIMAL.replace("name: worker-1", "name: cp-1"),
 "duplicate-ip": MINIMAL.replace("ip: 10.0.0.20", "ip: 10.0.0.10").replace("host: 10.0.0.10", "host: lb.example.internal"),
 "no-control-plane": MINIMAL.replace("role: control-plane", "role: worker").replace("host: 10.0.0.10", "host: lb.example.internal"),
 "pod-service-overlap": MINIMAL.replace("podCIDR: 10.200.0.0/16", "podCIDR: 10.32.0.0/16").replace("serviceCIDR: 10.32.0.0/24", "serviceCIDR: 10.32.1.0/24"),
 "pod-node-overlap": MINIMAL.replace("podCIDR: 10.200.0.0/16", "podCIDR: 10.0.0.0/16"),
 "service-node-overlap": MINIMAL.replace("serviceCIDR: 10.32.0.0/24", "serviceCIDR: 10.0.0.0/24"),
 "host-bits": MINIMAL.replace("podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.1/16"),
 "mask-too-long": MINIMAL.replace("podCIDR: 10.200.0.0/16", "podCIDR: 100.64.0.0/10").replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 27"),
 "block-too-small": MINIMAL.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 31"),
 "mask-too-short": MINIMAL.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 12"),
 "too-few-blocks": MINIMAL.replace("podCIDR: 10.200.0.0/16", "podCIDR: 10.200.0.0/24"),
 "service-too-large": MINIMAL.replace("serviceCIDR: 10.32.0.0/24", "serviceCIDR: 10.32.0.0/11"),
 "dns-outside": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, dnsServiceIP: 10.96.0.10}"),
 "dns-first": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, dnsServiceIP: 10.32.0.1}"),
 "dns-network": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, dnsServiceIP: 10.32.0.0}"),
 "dns-broadcast": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, dnsServiceIP: 10.32.0.255}"),
 "max-pods": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 26}\n  kubelet: {maxPods: 110}"),
 "static-too-many": many_workers(101),
 "forbidden-label": MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, labels: {node-role.kubernetes.io/worker: ''}}"),
 "restricted-label": MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, labels: {node-restriction.kubernetes.io/pool: a}}"),
 "unknown-version": MINIMAL.replace("v1.36.2", "v1.36.99"),
 "old-minor": MINIMAL.replace("v1.36.2", "v1.31.0"),
 "http": MINIMAL.replace("port: 6443}}", "port: 6443}, securityModel: http}"),
 "loopback-upstream": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, dnsUpstreams: [127.0.0.53]}"),
 "ipv6-loopback-upstream": MINIMAL.replace("nodeCIDRMaskSize: 24}", "nodeCIDRMaskSize: 24, dnsUpstreams: ['::1']}"),
 "too-many-nodes": many_workers(5000, FLANNEL_LARGE),
 "vxlan-mtu-too-small": MINIMAL.replace("podCIDR:", "mode: flannel-vxlan, mtu: 625, podCIDR:"),
 "in-tree-cloud-provider": MINIMAL + "  cloudProvider: aws\n",
 "unknown-cloud-provider": MINIMAL + "  cloudProvider: externel\n",
 "duplicate-uninitialized-taint": MINIMAL.replace("ip: 10.0.0.20}", f"ip: 10.0.0.20, {UNINITIALIZED_TAINT}}}") + "  cloudProvider: external\n",
 "unknown-kube-proxy-mode": MINIMAL + "  kubeProxy: {mode: nftable}\n",
 "dual-stack-pods-only": MINIMAL.replace("podCIDR: 10.200.0.0/16", "podCIDR: [10.200.0.0/16, 'fd00:10:200::/56']").replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: {ipv4: 24, ipv6: 64}"),
 "dual-stack-services-only": DUAL_STACK.replace("podCIDR: [10.200.0.0/16, 'fd00:10:200::/56']", "podCIDR: 10.200.0.0/16").replace("ipv6: 64}", "}"),
 "dual-stack-node-one-address": DUAL_STACK.replace("ips: [10.0.0.20, 'fd00::20']", "ip: 10.0.0.20"),
 "dual-stack-node-address-order": DUAL_STACK.replace("ips: [10.0.0.20, 'fd00::20']", "ips: ['fd00::20', 10.0.0.20]"),
 "dual-stack-service-order": DUAL_STACK.replace("serviceCIDR: [10.32.0.0/24, 'fd00:10:32::/112']", "serviceCIDR: ['fd00:10:32::/112', 10.32.0.0/24]"),
 "two-ipv4-pod-ranges": DUAL_STACK.replace("'fd00:10:200::/56'", "10.201.0.0/16"),
 "two-ipv4-node-addresses": DUAL_STACK.replace("'fd00::20'", "10.0.0.21"),
 "dual-stack-single-mask": DUAL_STACK.replace("nodeCIDRMaskSize: {ipv4: 24, ipv6: 64}", "nodeCIDRMaskSize: 24"),
 "ipv6-mask-for-ipv4-pods": MINIMAL.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: {ipv4: 24, ipv6: 64}"),
 "ipv6-pod-service-overlap": DUAL_STACK.replace("'fd00:10:32::/112'", "'fd00:10:200:1::/112'"),
 "ipv6-mask-too-long": DUAL_STACK.replace("ipv6: 64", "ipv6: 73"),
 "ipv6-default-mask-too-short": IPV6_ONLY.replace("'fd00:10:200::/56'", "'fd00:10:200::/112'"),
 "ipv6-block-too-small": DUAL_STACK.replace("ipv6: 64", "ipv6: 125"),
 "ipv6-service-too-large": DUAL_STACK.replace("'fd00:10:32::/112'", "'fd00:10:32::/104'"),
 "ipv6-vxlan-mtu-too-small": DUAL_STACK.replace("podCIDR:", "mode: flannel-vxlan, mtu: 1330, podCIDR:"),
 "ipv6-mtu-too-small": IPV6_ONLY.replace("podCIDR:", "mtu: 1200, podCIDR:"),
 "dns-in-secondary-range": DUAL_STACK.replace("ipv6: 64}", "ipv6: 64}, dnsServiceIP: 'fd00:10:32::10'"),
 "ipv6-upstream-in-service-range": DUAL_STACK.replace("ipv6: 64}", "ipv6: 64}, dnsUpstreams: ['fd00:10:32::53']"),
 "ip-and-ips": MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, ips: [10.0.0.20]}"),
 "endpoint-on-worker": MINIMAL.replace("host: 10.0.0.10", "host: 10.0.0.20"),
 "bad-cert-san": MINIMAL.replace("port: 6443}}", "port: 6443}, certSANs: ['$(reboot)']}"),
 "bad-password-hash": MINIMAL + "  admin: {name: ops, passwordHash: '$plain$text'}\n",
}


EXPECTED: dict[str, list[str]] = {
    "bad-yaml": [
        "cluster.yaml:4:5: invalid YAML: expected ',' or '}', but got ':' (while parsing a flow mapping)\n  hint: check the indentation and quoting on this line and the one before it; quote values that contain ': ' or start with a special character",
    ],
    "two-documents": [
        'cluster.yaml: found 2 documents; expected exactly one YAML document\n  hint: put one Cluster description in the file',
    ],
    "empty": [
        'cluster.yaml: found an empty file; expected exactly one YAML document\n  hint: put one Cluster description in the file',
    ],
    "duplicate-key": [
        'cluster.yaml:3:1: kind: found the key "kind" twice; expected each key once\n  hint: remove one of the two entries',
    ],
    "unknown-key": [
        'cluster.yaml:6:13: spec.network.podCIRD: found unknown key "podCIRD"; expected one of: clusterDomain, dnsServiceIP, dnsUpstreams, machineCIDRs, mode, mtu, nodeCIDRMaskSize, podCIDR, resolvConf, serviceCIDR\n  hint: did you mean "podCIDR"?',
    ],
    "unknown-top-key": [
        'cluster.yaml:11:1: status: found unknown key "status"; expected one of: apiVersion, kind, metadata, spec\n  hint: remove it',
    ],
    "wrong-type": [
        'cluster.yaml:7:52: spec.controlPlane.endpoint.port: found "6443"; expected an integer',
    ],
    "empty-endpoint": [
        'cluster.yaml:7:28: spec.controlPlane.endpoint: missing required key "host"\n'
        '  hint: add "host" with the load balancer\'s name or IP, or remove "endpoint" so that '
        "every worker reaches the API servers through a local kube-apiserver-proxy",
    ],
    "wrong-api-version": [
        'cluster.yaml:1:13: apiVersion: found "kubecc/v1"; expected "kubecc/v1alpha1"',
    ],
    "missing-nodes": [
        'cluster.yaml:5:3: spec: missing required key "nodes"\n  hint: add "nodes" here',
    ],
    "bad-enum": [
        'cluster.yaml:10:30: spec.nodes[1].role: found "wroker"; expected one of "control-plane", "worker"\n  hint: did you mean "worker"?',
    ],
    "bad-ip": [
        'cluster.yaml:10:42: spec.nodes[1].ip: found "10.0.0.300"; expected an IPv4 or IPv6 address',
    ],
    "upper-name": [
        'cluster.yaml:10:14: spec.nodes[1].name: found "Worker_1"; expected a lowercase RFC 1123 name of at most 52 characters\n  hint: Kubernetes node names allow only a-z, 0-9 and "-"; use e.g. "worker-1"',
    ],
    "long-name": [
        'cluster.yaml:10:14: spec.nodes[1].name: found "wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww"; expected a lowercase RFC 1123 name of at most 52 characters\n  hint: Kubernetes node names allow only a-z, 0-9 and "-"; use e.g. "wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww"',
    ],
    "duplicate-name": [
        'cluster.yaml:10:14: spec.nodes[1].name: found "cp-1" again; expected unique node names\n  hint: spec.nodes[0] already uses this name; rename one of them',
    ],
    "duplicate-ip": [
        'cluster.yaml:10:42: spec.nodes[1].ip: found "10.0.0.10", which node "cp-1" already uses; expected unique node addresses\n  hint: give each node its own address',
    ],
    "no-control-plane": [
        'cluster.yaml:9:5: spec.nodes: found no control-plane node; expected at least one\n  hint: set role: control-plane on one node (three for high availability)',
    ],
    "pod-service-overlap": [
        'cluster.yaml:6:49: spec.network.serviceCIDR: serviceCIDR 10.32.1.0/24 overlaps podCIDR 10.32.0.0/16; they must be disjoint\n  hint: choose ranges that do not contain each other, e.g. 10.200.0.0/16 for pods and 10.32.0.0/24 for services',
    ],
    "pod-node-overlap": [
        'cluster.yaml:6:22: spec.network.podCIDR: podCIDR 10.0.0.0/16 overlaps the machine network (node cp-1 10.0.0.10, node worker-1 10.0.0.20, endpoint 10.0.0.10)\n  hint: choose a podCIDR that no node or load balancer address falls in',
    ],
    "service-node-overlap": [
        'cluster.yaml:6:50: spec.network.serviceCIDR: serviceCIDR 10.0.0.0/24 overlaps the machine network (node cp-1 10.0.0.10, node worker-1 10.0.0.20, endpoint 10.0.0.10)\n  hint: choose a serviceCIDR that no node or load balancer address falls in',
    ],
    "host-bits": [
        'cluster.yaml:6:22: spec.network.podCIDR: found "10.200.0.1/16", which has host bits set; expected the network address "10.200.0.0/16"\n  hint: write "10.200.0.0/16"',
    ],
    "mask-too-long": [
        'cluster.yaml:6:82: spec.network.nodeCIDRMaskSize: found /27, 17 bits longer than podCIDR 100.64.0.0/10; expected at most 16 bits longer\n  hint: kube-controller-manager rejects more; use at most /26',
    ],
    "block-too-small": [
        'cluster.yaml:6:82: spec.network.nodeCIDRMaskSize: found /31; expected at most /28, so that each node block holds at least 14 pods\n  hint: use /28 or a shorter prefix such as /24',
    ],
    "mask-too-short": [
        'cluster.yaml:6:82: spec.network.nodeCIDRMaskSize: found /12; expected a prefix length between /16 (podCIDR 10.200.0.0/16) and /32\n  hint: use /24 blocks for a /16 podCIDR',
    ],
    "too-few-blocks": [
        'cluster.yaml:6:82: spec.network.nodeCIDRMaskSize: podCIDR 10.200.0.0/24 split into /24 blocks gives 1 node range, but 2 nodes are declared\n  hint: use a larger podCIDR or a longer nodeCIDRMaskSize',
    ],
    "service-too-large": [
        'cluster.yaml:6:50: spec.network.serviceCIDR: found 10.32.0.0/11 with 21 host bits; expected at most 20\n  hint: kube-apiserver rejects larger service ranges; use a /12 or smaller',
    ],
    "dns-outside": [
        'cluster.yaml:6:100: spec.network.dnsServiceIP: dnsServiceIP 10.96.0.10 is outside serviceCIDR 10.32.0.0/24\n  hint: use an address inside 10.32.0.0/24, such as 10.32.0.10',
    ],
    "dns-first": [
        'cluster.yaml:6:100: spec.network.dnsServiceIP: found 10.32.0.1, which the kubernetes Service takes; expected another address\n  hint: use 10.32.0.10',
    ],
    "dns-network": [
        'cluster.yaml:6:100: spec.network.dnsServiceIP: found 10.32.0.0, the network address of 10.32.0.0/24; expected a usable address\n  hint: use 10.32.0.10',
    ],
    "dns-broadcast": [
        'cluster.yaml:6:100: spec.network.dnsServiceIP: found 10.32.0.255, the broadcast address of 10.32.0.0/24; expected a usable address\n  hint: use 10.32.0.10',
    ],
    "max-pods": [
        'cluster.yaml:7:22: spec.kubelet.maxPods: found 110; expected at most 62, the pods a /26 pod block can address\n  hint: set maxPods to 62 or less, or use a shorter nodeCIDRMaskSize',
    ],
    "static-too-many": [
        'cluster.yaml:6:12: spec.network.mode: found 102 nodes in static mode; expected at most 100\n  hint: static mode installs a route per node on every node; use flannel-vxlan for larger clusters',
    ],
    "forbidden-label": [
        'cluster.yaml:10:62: spec.nodes[1].labels["node-role.kubernetes.io/worker"]: found "node-role.kubernetes.io/worker"; expected a label the kubelet may set on itself\n  hint: the NodeRestriction admission plugin rejects a kubelet that sets labels under kubernetes.io or k8s.io other than its allow-list (kubernetes.io/hostname, topology.kubernetes.io/zone, node.kubernetes.io/*, ...), so the node would never register; use your own prefix such as example.com/role, or set this label with kubectl after the node joined',
    ],
    "restricted-label": [
        'cluster.yaml:10:62: spec.nodes[1].labels["node-restriction.kubernetes.io/pool"]: found "node-restriction.kubernetes.io/pool"; expected a label the kubelet may set on itself\n  hint: the NodeRestriction admission plugin rejects a kubelet that sets labels under kubernetes.io or k8s.io other than its allow-list (kubernetes.io/hostname, topology.kubernetes.io/zone, node.kubernetes.io/*, ...), so the node would never register; use your own prefix such as example.com/role, or set this label with kubectl after the node joined',
    ],
    "unknown-version": [
        'cluster.yaml:5:25: spec.kubernetes.version: found "v1.36.99", which has no published checksums in kubecc\'s version table (missing: kubelet 1.36.99 amd64; kubectl 1.36.99 amd64); expected one of: v1.36.4, v1.36.3, v1.36.2, v1.36.1, v1.36.0, v1.35.8, v1.35.7, v1.35.6, v1.35.5, v1.35.4, v1.35.3, v1.35.2, v1.35.1, v1.35.0, v1.34.11, v1.34.10, v1.34.9, v1.34.8, v1.34.7, v1.34.6, v1.34.5, v1.34.4, v1.34.3, v1.34.2, v1.34.1, v1.34.0\n  hint: choose a listed version, or add the release\'s published sha256 values under spec.kubernetes.pins',
    ],
    "old-minor": [
        'cluster.yaml:5:25: spec.kubernetes.version: found "v1.31.0"; expected a release of a supported minor (1.36, 1.35, 1.34)\n  hint: kubecc knows the flags of these minors only; choose one of: v1.36.4, v1.36.3, v1.36.2, v1.36.1, v1.36.0, v1.35.8, v1.35.7, v1.35.6, v1.35.5, v1.35.4, v1.35.3, v1.35.2, v1.35.1, v1.35.0, v1.34.11, v1.34.10, v1.34.9, v1.34.8, v1.34.7, v1.34.6, v1.34.5, v1.34.4, v1.34.3, v1.34.2, v1.34.1, v1.34.0',
    ],
    "http": [
        'cluster.yaml:7:74: spec.controlPlane.securityModel: found "http"; expected "https"\n  hint: Kubernetes 1.20 removed the API server\'s insecure port (--insecure-port and --insecure-bind-address), so a plain-HTTP cluster cannot be built; remove the field and kubecc secures every component with TLS',
    ],
    "loopback-upstream": [
        'cluster.yaml:6:101: spec.network.dnsUpstreams[0]: CoreDNS upstream 127.0.0.53 is a loopback address and would loop\n  hint: inside the CoreDNS pod a loopback address is CoreDNS itself; use the address of a real name server, or leave dnsUpstreams empty',
    ],
    "ipv6-loopback-upstream": [
        'cluster.yaml:6:101: spec.network.dnsUpstreams[0]: CoreDNS upstream ::1 is a loopback address and would loop\n  hint: inside the CoreDNS pod a loopback address is CoreDNS itself; use the address of a real name server, or leave dnsUpstreams empty',
    ],
    "too-many-nodes": [
        'cluster.yaml:9:5: spec.nodes: found 5001 nodes; expected at most 5000\n  hint: Kubernetes supports at most 5000 nodes in one cluster (its documented scalability limit); split the nodes into several clusters',
    ],
    "vxlan-mtu-too-small": [
        "cluster.yaml:6:39: spec.network.mtu: found 625, which leaves pods 575 bytes after the 50-byte VXLAN overhead of flannel-vxlan; expected at least 626\n  hint: IPv4 needs an MTU of at least 576; use the node network's real MTU, or flannel-host-gw, which adds no overhead",
    ],
    "in-tree-cloud-provider": [
        'cluster.yaml:11:18: spec.cloudProvider: found "aws"; expected "none" or "external"\n  hint: Kubernetes 1.31 removed the in-tree aws provider from the kubelet and kube-controller-manager; set "external" and install the cloud controller manager of aws',
    ],
    "unknown-cloud-provider": [
        'cluster.yaml:11:18: spec.cloudProvider: found "externel"; expected one of "none", "external"\n  hint: did you mean "external"?',
    ],
    "duplicate-uninitialized-taint": [
        'cluster.yaml:10:62: spec.nodes[1].taints[0]: found the taint node.cloudprovider.kubernetes.io/uninitialized:NoSchedule, which the kubelet adds itself with --cloud-provider=external; expected it only once\n  hint: the API server rejects a node with two taints of the same key and effect, so the node would never register; remove this taint',
    ],
    "unknown-kube-proxy-mode": [
        'cluster.yaml:11:21: spec.kubeProxy.mode: found "nftable"; expected one of "iptables", "nftables", "ipvs"\n  hint: did you mean "nftables"?',
    ],
    "dual-stack-pods-only": [
        "cluster.yaml:6:72: spec.network.serviceCIDR: found IPv4 only; expected IPv4 then IPv6, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
        "cluster.yaml:9:45: spec.nodes[0].ip: found 10.0.0.10 (IPv4 only); expected IPv4 then IPv6, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
        "cluster.yaml:10:42: spec.nodes[1].ip: found 10.0.0.20 (IPv4 only); expected IPv4 then IPv6, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
    ],
    "dual-stack-services-only": [
        "cluster.yaml:6:50: spec.network.serviceCIDR: found IPv4 then IPv6; expected IPv4 only, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
        "cluster.yaml:9:46: spec.nodes[0].ips: found 10.0.0.10, fd00::10 (IPv4 then IPv6); expected IPv4 only, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
        "cluster.yaml:10:43: spec.nodes[1].ips: found 10.0.0.20, fd00::20 (IPv4 then IPv6); expected IPv4 only, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
    ],
    "dual-stack-node-one-address": [
        "cluster.yaml:10:42: spec.nodes[1].ip: found 10.0.0.20 (IPv4 only); expected IPv4 then IPv6, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
    ],
    "dual-stack-node-address-order": [
        "cluster.yaml:10:43: spec.nodes[1].ips: found fd00::20, 10.0.0.20 (IPv6 then IPv4); expected IPv4 then IPv6, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
    ],
    "dual-stack-service-order": [
        "cluster.yaml:6:72: spec.network.serviceCIDR: found IPv6 then IPv4; expected IPv4 then IPv6, the address families of podCIDR\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
    ],
    "two-ipv4-pod-ranges": [
        "cluster.yaml:6:38: spec.network.podCIDR[1]: found two IPv4 ranges (10.200.0.0/16, 10.201.0.0/16); expected one IPv4 and one IPv6 range\n  hint: a dual-stack cluster lists one IPv4 and one IPv6 range in podCIDR and serviceCIDR and one address of each family in every node's ips, all in the same order, primary first; a single-stack cluster uses one family everywhere",
    ],
    "two-ipv4-node-addresses": [
        'cluster.yaml:10:55: spec.nodes[1].ips[1]: found two IPv4 addresses; expected one IPv4 and one IPv6 address\n  hint: a dual-stack node has one address of each family, in the order of podCIDR',
    ],
    "dual-stack-single-mask": [
        'cluster.yaml:6:126: spec.network.nodeCIDRMaskSize: found 24; expected one prefix length per address family, because podCIDR is dual-stack\n  hint: kube-controller-manager rejects --node-cidr-mask-size in a dual-stack cluster; write nodeCIDRMaskSize: {ipv4: 24, ipv6: 64}',
    ],
    "ipv6-mask-for-ipv4-pods": [
        'cluster.yaml:6:99: spec.network.nodeCIDRMaskSize.ipv6: found an IPv6 block size, but podCIDR has no IPv6 range; expected none\n  hint: remove it, or add an IPv6 range to podCIDR',
    ],
    "ipv6-pod-service-overlap": [
        'cluster.yaml:6:72: spec.network.serviceCIDR: serviceCIDR fd00:10:200:1::/112 overlaps podCIDR fd00:10:200::/56; they must be disjoint\n  hint: choose ranges that do not contain each other, e.g. fd00:10:200::/56 for pods and fd00:10:32::/112 for services',
    ],
    "ipv6-mask-too-long": [
        'cluster.yaml:6:143: spec.network.nodeCIDRMaskSize.ipv6: found /73, 17 bits longer than podCIDR fd00:10:200::/56; expected at most 16 bits longer\n  hint: kube-controller-manager rejects more; use at most /72',
    ],
    "ipv6-default-mask-too-short": [
        "cluster.yaml:6:12: spec.network.nodeCIDRMaskSize: found /64 (the default); expected a prefix length between /112 (podCIDR fd00:10:200::/112) and /128\n  hint: use /64 blocks, kube-controller-manager's IPv6 default, with an IPv6 podCIDR of /48 to /63, such as a /56",
    ],
    "ipv6-block-too-small": [
        'cluster.yaml:6:143: spec.network.nodeCIDRMaskSize.ipv6: found /125; expected at most /124, so that each node block holds at least 14 pods\n  hint: use /124 or a shorter prefix such as /64',
    ],
    "ipv6-service-too-large": [
        'cluster.yaml:6:87: spec.network.serviceCIDR[1]: found fd00:10:32::/104 with 24 host bits; expected at most 20\n  hint: kube-apiserver rejects larger service ranges; use a /108 or smaller',
    ],
    "ipv6-vxlan-mtu-too-small": [
        "cluster.yaml:6:39: spec.network.mtu: found 1330, which leaves pods 1260 bytes after the 70-byte VXLAN overhead of flannel-vxlan over IPv6; expected at least 1350\n  hint: IPv6 needs an MTU of at least 1280; use the node network's real MTU, or flannel-host-gw, which adds no overhead",
    ],
    "ipv6-mtu-too-small": [
        "cluster.yaml:6:18: spec.network.mtu: found 1200; expected at least 1280\n  hint: IPv6 needs an MTU of at least 1280; use the node network's real MTU",
    ],
    "dns-in-secondary-range": [
        'cluster.yaml:6:162: spec.network.dnsServiceIP: dnsServiceIP fd00:10:32::10 is outside the primary serviceCIDR 10.32.0.0/24\n  hint: use an address inside 10.32.0.0/24, such as 10.32.0.10',
    ],
    "ipv6-upstream-in-service-range": [
        'cluster.yaml:6:163: spec.network.dnsUpstreams[0]: CoreDNS upstream fd00:10:32::53 is inside serviceCIDR fd00:10:32::/112 and would loop\n  hint: a Service address in the cluster is CoreDNS itself or another in-cluster service; use the address of a name server outside the cluster',
    ],
    "ip-and-ips": [
        'cluster.yaml:10:7: spec.nodes[1]: found both "ip" and "ips"; expected exactly one of them\n  hint: give the node address as "ip" (or "ips" for dual-stack)',
    ],
    "endpoint-on-worker": [
        'cluster.yaml:7:35: spec.controlPlane.endpoint.host: found 10.0.0.20, the address of worker worker-1; expected a load balancer or a control-plane address\n  hint: no API server runs on a worker',
    ],
    "bad-cert-san": [
        'cluster.yaml:7:70: spec.controlPlane.certSANs[0]: found "$(reboot)"; expected an IP address or a lowercase DNS name\n  hint: use names like "api.example.com" or "*.example.com", or IP addresses',
    ],
    "bad-password-hash": [
        'cluster.yaml:11:36: spec.admin.passwordHash: found a value that is not a SHA-512, SHA-256 or yescrypt crypt(3) hash; expected a hash such as "$6$..."\n  hint: make one with `kubecc hash-password`; never put the password itself here',
    ],
}


def test_table_covers_every_case() -> None:
    assert set(CASES) == set(EXPECTED)
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_invalid_description_messages(name: str) -> None:
    with pytest.raises(DescriptionError) as caught:
        plan_text(CASES[name], "cluster.yaml")
    assert [problem.format("cluster.yaml") for problem in caught.value.problems] == EXPECTED[name]


@pytest.mark.parametrize(
    "password_hash",
    [
        "$6$rounds=656000$ZDwfXCKR1bjVTQ6e$wGDD1LBjQXYseTdYaSkthA4ek9VKWcvmkwnuUHmzbHhY/hfGU.F9IR6joeTwThhnC1OKLKFJ.Os3Od/8ARQYS/",
        "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
    ],
    ids=["sha512", "yescrypt"],
)
def test_accepted_password_hashes(password_hash: str) -> None:
    text = MINIMAL + f"  admin: {{name: ops, passwordHash: '{password_hash}'}}\n"
    assert plan_text(text).cluster.admin is not None


def test_md5_password_hash_rejected() -> None:
    text = MINIMAL + "  admin: {name: ops, passwordHash: '$1$saltsalt$qjXMvbEw8oaL.CzflDugX/'}\n"
    with pytest.raises(DescriptionError) as caught:
        plan_text(text)
    assert caught.value.problems[0].path == "spec.admin.passwordHash"


def test_etcd_pin_of_unknown_minor_rejected() -> None:
    text = MINIMAL.replace(
        "kubernetes: {version: v1.36.2}",
        "kubernetes: {version: v1.36.2, pins: {images: {etcd: 3.7.1}}}",
    )
    with pytest.raises(DescriptionError) as caught:
        plan_text(text, "cluster.yaml")
    assert [problem.format("cluster.yaml") for problem in caught.value.problems] == [
        'cluster.yaml:5:56: spec.kubernetes.pins.images.etcd: found "3.7.1"; expected an etcd '
        "release of 3.5 or 3.6\n  hint: kubecc writes etcd flags for these minors only"
    ]


def test_etcd_minors_match_static_pod_profiles() -> None:
    from compiler.render.static_pods import ETCD_PROFILES
    from compiler.versions import SUPPORTED_ETCD_MINORS

    assert set(ETCD_PROFILES) == set(SUPPORTED_ETCD_MINORS)


def test_control_planes_only_warns() -> None:
    text = MINIMAL.replace("role: worker", "role: control-plane").replace(
        "    - {name: cp-1, role: control-plane, ip: 10.0.0.10}\n", ""
    )
    warnings = plan_text(text).warnings
    assert [warning.format("cluster.yaml") for warning in warnings] == [
        "cluster.yaml:9:5: warning: spec.nodes: found only control-plane nodes; they carry the "
        "node-role.kubernetes.io/control-plane:NoSchedule taint, so ordinary pods (CoreDNS too) "
        "cannot run\n  hint: add a worker, or set taints: [] on a control plane to let it run "
        "workloads"
    ]


def test_ipvs_mode_warns() -> None:
    warnings = plan_text(MINIMAL + "  kubeProxy: {mode: ipvs}\n").warnings
    assert [warning.format("cluster.yaml") for warning in warnings] == [
        'cluster.yaml:11:21: warning: spec.kubeProxy.mode: found "ipvs"; Kubernetes 1.35 '
        'deprecated the ipvs mode of kube-proxy\n  hint: use "nftables" (GA since Kubernetes '
        '1.33) or "iptables"'
    ]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kube_proxy_mode_accepted(mode: str) -> None:
    planned = plan_text(MINIMAL + f"  kubeProxy: {{mode: {mode}}}\n")
    assert planned.warnings == ()
    assert planned.cluster.kube_proxy.mode == mode


def test_flannel_allows_more_than_static_limit() -> None:
    text = many_workers(150, FLANNEL_LARGE)
    assert len(plan_text(text).cluster.nodes) == 151


@pytest.mark.parametrize(
    ("mode", "mtu"),
    [("flannel-vxlan", 626), ("flannel-host-gw", 576), ("static", 576), ("none", 576)],
)
def test_smallest_mtu_accepted(mode: str, mtu: int) -> None:
    text = MINIMAL.replace("podCIDR:", f"mode: {mode}, mtu: {mtu}, podCIDR:")
    assert plan_text(text).cluster.network.mtu == mtu


def test_in_tree_providers_match_schema() -> None:
    from compiler.component_checks import IN_TREE_CLOUD_PROVIDERS
    from compiler.schema import load_cluster_schema

    schema = load_cluster_schema()["properties"]["spec"]["properties"]["cloudProvider"]
    assert set(schema["x-rejected"]) == IN_TREE_CLOUD_PROVIDERS
    assert set(schema["enum"]) == IN_TREE_CLOUD_PROVIDERS | {"none", "external"}


@pytest.mark.parametrize("provider", ["aws", "azure", "gce", "openstack", "vsphere"])
def test_in_tree_providers_rejected(provider: str) -> None:
    with pytest.raises(DescriptionError) as caught:
        plan_text(MINIMAL + f"  cloudProvider: {provider}\n")
    (problem,) = caught.value.problems
    assert problem.path == "spec.cloudProvider"
    assert problem.hint is not None
    assert "Kubernetes 1.31 removed the in-tree" in problem.hint


def test_uninitialized_taint_allowed_without_cloud_provider() -> None:
    text = MINIMAL.replace("ip: 10.0.0.20}", f"ip: 10.0.0.20, {UNINITIALIZED_TAINT}}}")
    assert plan_text(text).cluster.cloud_provider == "none"


def test_untainted_single_control_plane_accepted() -> None:
    text = MINIMAL.replace("    - {name: worker-1, role: worker, ip: 10.0.0.20}\n", "").replace(
        "ip: 10.0.0.10}", "ip: 10.0.0.10, taints: []}"
    )
    assert plan_text(text).warnings == ()


@pytest.mark.parametrize(
    ("admin", "path", "message"),
    [
        ("{name: root}", "spec.admin.name",
         'found "root", a system account; expected a personal login name'),
        ("{name: ops, sshAuthorizedKeys: ['ssh-ed25519 AAA A ops@example']}",
         "spec.admin.sshAuthorizedKeys[0]",
         'found a line that is not an OpenSSH public key; expected "<type> <base64 key> '
         '[comment]" with a type such as ssh-ed25519'),
        ("{name: ops, sshAuthorizedKeys: ['ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIFQpDhjrzg4h6j/Q8RLsgmtYNxrMESYKdgzt5Hp7rTeR']}",
         "spec.admin.sshAuthorizedKeys[0]",
         'found a line that is not an OpenSSH public key; expected "<type> <base64 key> '
         '[comment]" with a type such as ssh-ed25519'),
    ],
    ids=["root", "broken-key", "type-mismatch"],
)
def test_admin_rejected(admin: str, path: str, message: str) -> None:
    with pytest.raises(DescriptionError) as caught:
        plan_text(MINIMAL + f"  admin: {admin}\n")
    (problem,) = caught.value.problems
    assert (problem.path, problem.message) == (path, message)


def test_ssh_key_with_options_accepted() -> None:
    key = (
        'from="10.0.0.0/8" ssh-ed25519 '
        "AAAAC3NzaC1lZDI1NTE5AAAAIFQpDhjrzg4h6j/Q8RLsgmtYNxrMESYKdgzt5Hp7rTeR ops@example"
    )
    cluster = plan_text(MINIMAL + f"  admin: {{name: ops, sshAuthorizedKeys: ['{key}']}}\n").cluster
    assert cluster.admin is not None
    assert cluster.admin.ssh_authorized_keys == (key,)


@pytest.mark.parametrize(
    "admin",
    [
        "{name: ops, passwordHash: hunter2}",
        "{name: ops, sshAuthorizedKeys: ['-----BEGIN EC PRIVATE KEY----- MHcCAQEEIBmZ7']}",
    ],
    ids=["password", "pasted-private-key"],
)
def test_secret_values_not_echoed(admin: str) -> None:
    with pytest.raises(DescriptionError) as caught:
        plan_text(MINIMAL + f"  admin: {admin}\n", "cluster.yaml")
    text = caught.value.format()
    assert "hunter2" not in text
    assert "MHcCAQ" not in text
    assert "PRIVATE KEY" not in text
