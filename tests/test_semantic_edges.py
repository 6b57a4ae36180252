"""Edge cases of the semantic checks: values that pass the schema but cannot work."""

from __future__ import annotations

import pytest

from compiler.errors import DescriptionError
from compiler.pipeline import plan_text
from tests.conftest import MINIMAL

WORKER = "ip: 10.0.0.20}"
CONTROL_PLANE = "port: 6443}}"
NETWORK = "nodeCIDRMaskSize: 24}"
VERSION = "kubernetes: {version: v1.36.2}"
HASH_X = "$6$rounds=5000$saltsalt$" + "a" * 86


def variant(old: str, new: str, extra: str = "") -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new, 1) + extra


REJECTED = {
    "label-empty-prefix": (variant(WORKER, "ip: 10.0.0.20, labels: {/x: v}}"),
                           'spec.nodes[1].labels["/x"]', 'found "/x"; expected a label key'),
    "label-restricted-subdomain": (
        variant(WORKER, "ip: 10.0.0.20, labels: {a.node-restriction.kubernetes.io/x: v}}"),
        'spec.nodes[1].labels["a.node-restriction.kubernetes.io/x"]',
        "expected a label the kubelet may set on itself"),
    "duplicate-taint": (
        variant(WORKER, "ip: 10.0.0.20, taints: [{key: a, effect: NoSchedule}, "
                "{key: a, value: b, effect: NoSchedule}]}"),
        "spec.nodes[1].taints[1]", 'found a second taint with key "a" and effect NoSchedule'),
    "hash-short-checksum": (MINIMAL + "  admin: {name: ops, passwordHash: '$6$x$y'}\n",
                            "spec.admin.passwordHash", "not a SHA-512, SHA-256 or yescrypt"),
    "hash-empty-checksum": (MINIMAL + "  admin: {name: ops, passwordHash: '$5$$'}\n",
                            "spec.admin.passwordHash", "not a SHA-512, SHA-256 or yescrypt"),
    "hash-too-few-rounds": (
        MINIMAL + "  admin: {name: ops, passwordHash: '" + HASH_X.replace("5000", "1") + "'}\n",
        "spec.admin.passwordHash", "not a SHA-512, SHA-256 or yescrypt"),
    "endpoint-loopback": (variant("host: 10.0.0.10", "host: 127.0.0.1"),
                          "spec.controlPlane.endpoint.host",
                          'found "127.0.0.1"; expected an address every node can reach'),
    "endpoint-unspecified": (variant("host: 10.0.0.10", "host: 0.0.0.0"),
                             "spec.controlPlane.endpoint.host",
                             'found "0.0.0.0"; expected an address every node can reach'),
    "endpoint-zone-index": (variant("host: 10.0.0.10", "host: 'fe80::1%eth0'"),
                            "spec.controlPlane.endpoint.host",
                            "expected an IP address or a lowercase DNS name"),
    "endpoint-long-label": (variant("host: 10.0.0.10", "host: " + "a" * 64 + ".example.com"),
                            "spec.controlPlane.endpoint.host",
                            "expected an IP address or a lowercase DNS name"),
    "endpoint-bad-address": (variant("host: 10.0.0.10", "host: 10.0.0.300"),
                             "spec.controlPlane.endpoint.host",
                             "expected an IP address or a lowercase DNS name"),
    "node-broadcast": (variant("ip: 10.0.0.20", "ip: 255.255.255.255"), "spec.nodes[1].ip",
                       "expected a unicast address other nodes can reach"),
    "node-link-local": (variant("ip: 10.0.0.20", "ip: 169.254.169.254"), "spec.nodes[1].ip",
                        "expected a unicast address other nodes can reach"),
    "san-unspecified": (variant(CONTROL_PLANE, "port: 6443}, certSANs: ['0.0.0.0']}"),
                        "spec.controlPlane.certSANs[0]",
                        "expected an IP address or a lowercase DNS name"),
    "stub-resolv-conf": (
        variant(NETWORK, "nodeCIDRMaskSize: 24, "
                "resolvConf: /run/systemd/resolve/stub-resolv.conf}"),
        "spec.network.resolvConf", "names the local stub resolver 127.0.0.53"),
    "upstream-cluster-dns": (variant(NETWORK, "nodeCIDRMaskSize: 24, dnsUpstreams: [10.32.0.10]}"),
                             "spec.network.dnsUpstreams[0]",
                             "CoreDNS upstream 10.32.0.10 is inside serviceCIDR 10.32.0.0/24"),
    "containerd-1": (
        variant(VERSION, "kubernetes: {version: v1.36.2, pins: {containerd: "
                "{version: 1.7.27, sha256: {amd64: '" + "0" * 64 + "'}}}}"),
        "spec.kubernetes.pins.containerd.version", 'found "1.7.27"; expected containerd 2.0'),
    "url-unknown-field": (
        variant(VERSION, "kubernetes: {version: v1.36.2, pins: {kubelet: "
                "{url: 'https://x/{foo}'}}}"),
        "spec.kubernetes.pins.kubelet.url", "placeholders other than {version} and {arch}"),
    "url-attribute": (
        variant(VERSION, "kubernetes: {version: v1.36.2, pins: {kubelet: "
                "{url: 'https://x/{version.__class__}'}}}"),
        "spec.kubernetes.pins.kubelet.url", "placeholders other than {version} and {arch}"),
    "url-unbalanced": (
        variant(VERSION, "kubernetes: {version: v1.36.2, pins: {kubelet: {url: 'https://x/{'}}}"),
        "spec.kubernetes.pins.kubelet.url", "placeholders other than {version} and {arch}"),
    "leaf-outlives-ca": (MINIMAL + "  pki: {caValidityDays: 1, certValidityDays: 365}\n",
                         "spec.pki.certValidityDays", "found 365 days, longer than caValidityDays"),
    "admin-system-account": (MINIMAL + "  admin: {name: sys}\n", "spec.admin.name",
                             'found "sys", a system account'),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected(name: str) -> None:
    text, path, fragment = REJECTED[name]
    with pytest.raises(DescriptionError) as caught:
        plan_text(text)
    found = [(problem.path, problem.message) for problem in caught.value.problems]
    assert any(path == where and fragment in message for where, message in found), found


ACCEPTED = {
    "beta-os-label": variant(WORKER, "ip: 10.0.0.20, labels: {beta.kubernetes.io/os: linux}}"),
    "node-namespace-subdomain": variant(
        WORKER, "ip: 10.0.0.20, labels: {pool.node.kubernetes.io/x: a}}"),
    "look-alike-namespace": variant(WORKER, "ip: 10.0.0.20, labels: {xkubernetes.io/x: a}}"),
    "kubelet-namespace": variant(WORKER, "ip: 10.0.0.20, labels: {kubelet.kubernetes.io/x: a}}"),
    "same-key-other-effect": variant(
        WORKER, "ip: 10.0.0.20, taints: [{key: a, effect: NoSchedule}, "
        "{key: a, effect: NoExecute}]}"),
    "sha512-hash": MINIMAL + f"  admin: {{name: ops, passwordHash: '{HASH_X}'}}\n",
    "upstream-outside": variant(NETWORK, "nodeCIDRMaskSize: 24, dnsUpstreams: [192.0.2.53]}"),
    "url-with-fields": variant(
        VERSION, "kubernetes: {version: v1.36.2, pins: {kubelet: "
        "{url: 'https://mirror.example/k8s/v{version}/{arch}/kubelet'}}}"),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted(name: str) -> None:
    planned = plan_text(ACCEPTED[name])
    assert planned.cluster.name == "demo"


def test_pinned_url_template_used() -> None:
    cluster = plan_text(ACCEPTED["url-with-fields"]).cluster
    (kubelet,) = [a for a in cluster.release.artifacts_for("amd64") if a.name == "kubelet"]
    assert kubelet.url == "https://mirror.example/k8s/v1.36.2/amd64/kubelet"
