"""Address-plan checks that need more than one case each: overlaps and capacity."""

from __future__ import annotations

import pytest

from compiler.errors import DescriptionError
from compiler.pipeline import plan_text
from tests.conftest import MINIMAL


def with_network(pod: str, service: str, extra: str = "") -> str:
    return MINIMAL.replace(
        "podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24",
        f"podCIDR: {pod}, serviceCIDR: {service}{extra}",
    )


def messages(text: str) -> list[str]:
    with pytest.raises(DescriptionError) as caught:
        plan_text(text)
    return [problem.message for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("pod", "service"),
    [
        ("10.0.0.0/8", "10.96.0.0/12"),
        ("10.96.0.0/12", "10.96.0.0/12"),
        ("10.96.0.0/16", "10.96.0.0/12"),
    ],
    ids=["pod-encloses-service", "equal", "service-encloses-pod"],
)
def test_pod_and_service_ranges_must_be_disjoint(pod: str, service: str) -> None:
    text = with_network(pod, service).replace("ip: 10.0.0.", "ip: 192.168.10.")
    text = text.replace("host: 10.0.0.10", "host: 192.168.10.10")
    assert f"serviceCIDR {service} overlaps podCIDR {pod}; they must be disjoint" in messages(text)


def test_ipv6_variant_overlap_rejected() -> None:
    # The IPv6 variant of the overlap case: the /112 service range lies inside the /56 pod
    # range. Its IPv4 node address is a second, separate problem.
    text = MINIMAL.replace(
        "podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24",
        "podCIDR: 'fd00:42::/56', serviceCIDR: 'fd00:42:0:1::/112', nodeCIDRMaskSize: 64",
    ).replace("ip: 10.0.0.", "ip: 192.168.10.").replace("host: 10.0.0.10", "host: 192.168.10.10")
    assert messages(text)[0] == (
        "serviceCIDR fd00:42:0:1::/112 overlaps podCIDR fd00:42::/56; they must be disjoint"
    )


DUAL_STACK_NETWORK = (
    "podCIDR: [10.200.0.0/16, '{pod}'], serviceCIDR: [10.32.0.0/24, '{service}'], "
    "nodeCIDRMaskSize: {{ipv4: 24, ipv6: 64}}"
)


def dual_stack(pod: str, service: str) -> str:
    return MINIMAL.replace(
        "podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24",
        DUAL_STACK_NETWORK.format(pod=pod, service=service),
    ).replace("ip: 10.0.0.10}", "ips: [10.0.0.10, 'fd00::10']}").replace(
        "ip: 10.0.0.20}", "ips: [10.0.0.20, 'fd00::20']}"
    )


@pytest.mark.parametrize(
    ("pod", "service", "mask"),
    [
        ("fd00:42::/56", "fd00:42:0:1::/112", 64),
        ("fd00:42::/112", "fd00:42::/112", 120),
        ("fd00:42::/120", "fd00:42::/112", 124),
    ],
    ids=["pod-encloses-service", "equal", "service-encloses-pod"],
)
def test_dual_stack_ipv6_ranges_must_be_disjoint(pod: str, service: str, mask: int) -> None:
    assert messages(dual_stack(pod, service).replace("ipv6: 64", f"ipv6: {mask}")) == [
        f"serviceCIDR {service} overlaps podCIDR {pod}; they must be disjoint"
    ]


def test_dual_stack_adjacent_ipv6_ranges_accepted() -> None:
    cluster = plan_text(dual_stack("fd00:42::/56", "fd00:42:0:100::/112")).cluster
    assert [str(cidr) for cidr in cluster.network.service_cidrs] == [
        "10.32.0.0/24", "fd00:42:0:100::/112",
    ]


def test_ipv6_node_address_overlap() -> None:
    text = dual_stack("fd00::/56", "fd00:10:32::/112")
    assert messages(text) == [
        "podCIDR fd00::/56 overlaps the machine network (node cp-1 fd00::10, "
        "node worker-1 fd00::20)"
    ]


def test_adjacent_ranges_accepted() -> None:
    cluster = plan_text(with_network("10.200.0.0/16", "10.201.0.0/24")).cluster
    assert str(cluster.network.service_cidr) == "10.201.0.0/24"


def test_machine_network_overlap() -> None:
    text = with_network("10.1.0.0/16", "10.32.0.0/24", ", machineCIDRs: [10.1.2.0/24]")
    text = text.replace("10.0.0.", "10.1.2.")
    assert messages(text) == ["podCIDR 10.1.0.0/16 overlaps machine network 10.1.2.0/24"]


def test_node_address_overlap_without_machine_networks() -> None:
    text = with_network("10.1.0.0/16", "10.32.0.0/24").replace("10.0.0.", "10.1.2.")
    assert messages(text) == [
        "podCIDR 10.1.0.0/16 overlaps the machine network (node cp-1 10.1.2.10, "
        "node worker-1 10.1.2.20, endpoint 10.1.2.10)"
    ]


def test_service_range_overlaps_machine_network() -> None:
    text = with_network("10.200.0.0/16", "10.240.0.0/24", ", machineCIDRs: [10.240.0.0/16]")
    assert "serviceCIDR 10.240.0.0/24 overlaps machine network 10.240.0.0/16" in messages(text)


def test_base_example_capacity() -> None:
    from compiler.addressing import block_capacity

    cluster = plan_text(MINIMAL).cluster
    network = cluster.network
    assert block_capacity(network.node_cidr_mask_size, network.pod_cidr.prefixlen) == 256


@pytest.mark.parametrize(
    "pod",
    ["fe80::/56", "ff00:10:200::/56", "127.200.0.0/16", "224.32.0.0/24", "::ffff:0:0/104"],
)
def test_reserved_pod_range_rejected(pod: str) -> None:
    text = MINIMAL.replace("podCIDR: 10.200.0.0/16", f"podCIDR: '{pod}'")
    assert any("a reserved range" in message for message in messages(text))


@pytest.mark.parametrize("pod", ["fd00:10:200::%1/56", "fd00:10:200::", "10.200.0.0"])
def test_pod_range_needs_prefix_without_zone(pod: str) -> None:
    text = MINIMAL.replace("podCIDR: 10.200.0.0/16", f"podCIDR: '{pod}'")
    assert (
        f'found "{pod}"; expected a network in CIDR notation with a prefix length and no zone '
        "index"
    ) in messages(text)
