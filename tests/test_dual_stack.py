"""Dual-stack and IPv6-only clusters: flags, configurations, certificates and routes.

Most checks build examples/dual-stack.yaml (IPv4 primary) and parse what each renderer wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import paths
from compiler.errors import DescriptionError
from compiler.model import Cluster
from compiler.pipeline import plan_text
from compiler.pki.place import build_pki_files
from compiler.render.addons import build_addon_files
from compiler.render.flannel import build_net_conf
from compiler.render.host import build_host_files
from compiler.render.kube_proxy import build_kube_proxy_configuration
from compiler.render.kubelet_config import build_kubelet_configuration, kubelet_flags
from tests.conftest import EXAMPLES, example_cluster
from tests.test_host import ROUTE_STUBS, config_lines, conflist, run_first_boot, run_script
from tests.test_pki import alt_names, issue, load_cert
from tests.test_static_pods import flags_of, parsed_manifests
from tests.test_validation import DUAL_STACK, IPV6_ONLY

PODS = "10.200.0.0/16,fd00:10:200::/56"
SERVICES = "10.32.0.0/24,fd00:10:32::/112"


@pytest.fixture(scope="module")
def dual() -> Cluster:
    return example_cluster("dual-stack")


def flag_list(flags: list[str]) -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in flags)


def test_example_plan(dual: Cluster) -> None:
    network = dual.network
    assert [str(cidr) for cidr in network.pod_cidrs] == ["10.200.0.0/16", "fd00:10:200::/56"]
    assert network.node_cidr_mask_sizes == (24, 64)
    assert [str(cidr) for cidr in network.service_cidrs] == ["10.32.0.0/24", "fd00:10:32::/112"]
    assert str(network.kubernetes_service_ip) == "10.32.0.1"
    assert str(network.dns_service_ip) == "10.32.0.10"
    assert dual.kubelet.max_pods == 110


def test_pod_blocks_per_family_in_node_order(dual: Cluster) -> None:
    blocks = {node.name: [str(block) for block in node.pod_cidrs] for node in dual.nodes}
    assert blocks == {
        "cp-1": ["10.200.0.0/24", "fd00:10:200::/64"],
        "cp-2": ["10.200.1.0/24", "fd00:10:200:1::/64"],
        "cp-3": ["10.200.2.0/24", "fd00:10:200:2::/64"],
        "worker-1": ["10.200.3.0/24", "fd00:10:200:3::/64"],
        "worker-2": ["10.200.4.0/24", "fd00:10:200:4::/64"],
    }


def test_api_server_flags(dual: Cluster) -> None:
    for node in dual.control_planes:
        flags = flags_of(parsed_manifests(dual, node)["kube-apiserver"])
        assert flags["advertise-address"] == str(node.ips[0])
        assert flags["service-cluster-ip-range"] == SERVICES
        assert flags["etcd-servers"] == "https://127.0.0.1:2379"


def test_controller_manager_flags(dual: Cluster) -> None:
    pods = parsed_manifests(dual, dual.control_planes[0])
    flags = flags_of(pods["kube-controller-manager"])
    assert flags["cluster-cidr"] == PODS
    assert flags["service-cluster-ip-range"] == SERVICES
    assert flags["service-cluster-ip-range"] == flags_of(pods["kube-apiserver"])[
        "service-cluster-ip-range"
    ]
    # Static mode: kubecc allocates the blocks, so no mask flag is written.
    assert flags["allocate-node-cidrs"] == "false"
    assert not [name for name in flags if name.startswith("node-cidr-mask-size")]


@pytest.mark.parametrize("mode", ["flannel-vxlan", "flannel-host-gw", "none"])
def test_controller_manager_mask_per_family(mode: str) -> None:
    text = (EXAMPLES / "dual-stack.yaml").read_text().replace("mode: static", f"mode: {mode}")
    cluster = plan_text(text).cluster
    flags = flags_of(parsed_manifests(cluster, cluster.control_planes[0])["kube-controller-manager"])
    assert flags["allocate-node-cidrs"] == "true"
    assert flags["cluster-cidr"] == PODS
    assert flags["node-cidr-mask-size-ipv4"] == "24"
    assert flags["node-cidr-mask-size-ipv6"] == "64"
    # kube-controller-manager rejects the single-family flag in a dual-stack cluster.
    assert "node-cidr-mask-size" not in flags


def test_etcd_uses_primary_address(dual: Cluster) -> None:
    for node in dual.control_planes:
        flags = flags_of(parsed_manifests(dual, node)["etcd"])
        ipv4 = str(node.ips[0])
        assert flags["advertise-client-urls"] == f"https://{ipv4}:2379"
        assert flags["listen-peer-urls"] == f"https://{ipv4}:2380"
        assert flags["initial-advertise-peer-urls"] == f"https://{ipv4}:2380"
        assert flags["listen-client-urls"] == f"https://127.0.0.1:2379,https://{ipv4}:2379"
    assert flags["initial-cluster"] == (
        "cp-1=https://10.0.3.10:2380,cp-2=https://10.0.3.11:2380,cp-3=https://10.0.3.12:2380"
    )


def test_kubelet_node_ip_and_dns(dual: Cluster) -> None:
    for node in dual.nodes:
        flags = flag_list(kubelet_flags(dual, node))
        assert flags["node-ip"] == ",".join(str(address) for address in node.ips)
        assert flags["node-ip"].count(",") == 1
        assert build_kubelet_configuration(dual, node)["clusterDNS"] == ["10.32.0.10"]


def test_kube_proxy_cluster_cidr(dual: Cluster) -> None:
    for node in dual.nodes:
        config = build_kube_proxy_configuration(dual, node)
        assert config["clusterCIDR"] == PODS
        assert config["bindAddress"] == "0.0.0.0"


def test_api_server_certificate_sans(dual: Cluster) -> None:
    pki = issue(dual)
    for node in dual.control_planes:
        cert = load_cert(build_pki_files(dual, node, pki)[
            "/etc/kubernetes/pki/apiserver.crt"
        ].content)
        names = alt_names(cert)
        assert "IP:10.32.0.1" in names
        assert "IP:fd00:10:32::1" in names
        for address in node.ips:
            assert f"IP:{address}" in names
        assert "DNS:lb.example.internal" in names


def test_cni_ranges_per_family(dual: Cluster) -> None:
    node = dual.node("worker-1")
    ipam = conflist(dual, node)["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.200.3.0/24"}], [{"subnet": "fd00:10:200:3::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]


def test_pod_routes_both_families(dual: Cluster, tmp_path: Path) -> None:
    node = dual.node("cp-1")
    text = build_host_files(dual, node)[paths.POD_ROUTES_SCRIPT].content.decode()
    stubs = (*ROUTE_STUBS, "ip6tables")
    run = run_script(text, tmp_path, stubs, fail="ip6?tables -w -t nat -[SC]")
    assert run.returncode == 0, run.stderr

    routes = run.argvs("ip")
    assert ["ip", "route", "replace", "10.200.1.0/24", "via", "10.0.3.11"] in routes
    assert ["ip", "-6", "route", "replace", "fd00:10:200:1::/64", "via", "fd00:10:0:3::11"] in (
        routes
    )
    assert len(routes) == 8
    chain = "KUBECC-POD-MASQ"
    assert ["iptables", "-w", "-t", "nat", "-A", chain, "-d", "10.200.0.0/16", "-j", "RETURN"] in (
        run.argvs("iptables")
    )
    assert ["ip6tables", "-w", "-t", "nat", "-A", chain, "-d", "fd00:10:200::/56", "-j",
            "RETURN"] in run.argvs("ip6tables")
    assert ["ip6tables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "fd00:10:200::/56", "-j",
            chain] in run.argvs("ip6tables")


def sysctl_settings(cluster: Cluster) -> dict[str, str]:
    text = build_host_files(cluster, cluster.nodes[0])[paths.SYSCTL_CONF].content.decode()
    return dict(line.split(" = ") for line in config_lines(text))


def test_sysctl_ipv6_keys(dual: Cluster) -> None:
    settings = sysctl_settings(dual)
    assert settings["net.ipv4.ip_forward"] == "1"
    assert settings["net.ipv6.conf.all.forwarding"] == "1"
    assert settings["net.ipv6.conf.all.accept_ra"] == "2"
    assert settings["net.ipv6.conf.default.accept_ra"] == "2"


def test_sysctl_ipv4_only_has_no_ipv6_keys() -> None:
    assert not [key for key in sysctl_settings(example_cluster("ha")) if "ipv6" in key]


def test_first_boot_names_node_ipv6(dual: Cluster) -> None:
    text = build_host_files(dual, dual.node("worker-1"))[paths.FIRST_BOOT_SCRIPT].content.decode()
    assert "node_ipv6=fd00:10:0:3::20" in text.splitlines()
    assert f"uplink_sysctl_conf={paths.UPLINK_SYSCTL_CONF}" in text.splitlines()
    ha = example_cluster("ha")
    ipv4_only = build_host_files(ha, ha.nodes[0])[paths.FIRST_BOOT_SCRIPT].content.decode()
    assert "node_ipv6=" not in ipv4_only


UPLINK_LOOKUP = 'ip -o -6 addr show to "$node_ipv6"'


def run_uplink_step(dual: Cluster, tmp_path: Path, accept_ra: str, addresses: str) -> Any:
    """Run the worker's first boot with `ip` listing `addresses` and the uplink's accept_ra."""
    conf = tmp_path / "conf"
    (conf / "ens3").mkdir(parents=True)
    (conf / "ens3" / "accept_ra").write_text(f"{accept_ra}\n")
    redirects = {
        UPLINK_LOOKUP: f"printf '%s' {addresses!r}",
        "/proc/sys/net/ipv6/conf/": f"{conf}/",
    }
    return run_first_boot(dual, dual.node("worker-1"), tmp_path, redirects=redirects)


def test_first_boot_uplink_accept_ra_written(dual: Cluster, tmp_path: Path) -> None:
    listed = "3: ens3    inet6 fd00:10:0:3::20/64 scope global \\       valid_lft forever\n"
    run = run_uplink_step(dual, tmp_path, "1", listed)
    assert run.returncode == 0, run.stderr
    (write,) = [call for call in run.calls if call.argv[-1] == paths.UPLINK_SYSCTL_CONF]
    assert write.argv == ["install", "-m", "0644", "/dev/stdin", paths.UPLINK_SYSCTL_CONF]
    assert write.stdin == "net/ipv6/conf/ens3/accept_ra = 2\n"
    assert run.index(*write.argv) < run.index("sysctl", "--system")


@pytest.mark.parametrize(
    ("accept_ra", "listed"),
    [("0", "3: ens3    inet6 fd00:10:0:3::20/64 scope global\n"), ("1", "")],
    ids=["network-manager-handles-them", "address-missing"],
)
def test_first_boot_uplink_left_alone(
    dual: Cluster, tmp_path: Path, accept_ra: str, listed: str
) -> None:
    run = run_uplink_step(dual, tmp_path, accept_ra, listed)
    assert run.returncode == 0, run.stderr
    assert not [call for call in run.calls if call.argv[-1] == paths.UPLINK_SYSCTL_CONF]


def addon_documents(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    path = f"{paths.ADDONS_DIR}/{name}"
    content = build_addon_files(cluster, cluster.first_control_plane)[path].content
    return list(yaml.safe_load_all(content))


def test_dns_service_prefers_dual_stack(dual: Cluster) -> None:
    (service,) = [
        document for document in addon_documents(dual, "10-coredns.yaml")
        if document["kind"] == "Service"
    ]
    assert service["spec"]["clusterIP"] == "10.32.0.10"
    assert service["spec"]["ipFamilyPolicy"] == "PreferDualStack"
    assert service["spec"]["ipFamilies"] == ["IPv4", "IPv6"]


def test_dns_service_single_stack_unchanged() -> None:
    ha = example_cluster("ha")
    (service,) = [
        document for document in addon_documents(ha, "10-coredns.yaml")
        if document["kind"] == "Service"
    ]
    assert "ipFamilyPolicy" not in service["spec"]
    assert "ipFamilies" not in service["spec"]


def flannel_cluster(text: str, extra: str = "") -> Cluster:
    return plan_text(text.replace("podCIDR:", f"mode: flannel-vxlan, {extra}podCIDR:")).cluster


def test_flannel_net_conf_dual_stack() -> None:
    assert build_net_conf(flannel_cluster(DUAL_STACK)) == {
        "Network": "10.200.0.0/16",
        "EnableIPv6": True,
        "IPv6Network": "fd00:10:200::/56",
        "Backend": {"Type": "vxlan"},
    }


def test_flannel_net_conf_ipv6_only() -> None:
    assert build_net_conf(flannel_cluster(IPV6_ONLY)) == {
        "EnableIPv6": True,
        "IPv6Network": "fd00:10:200::/56",
        "EnableIPv4": False,
        "Backend": {"Type": "vxlan"},
    }


def flannel_pod_mtu(cluster: Cluster) -> int:
    (config_map,) = [
        document for document in addon_documents(cluster, "20-flannel.yaml")
        if document["kind"] == "ConfigMap"
    ]
    cni = json.loads(config_map["data"]["cni-conf.json"])
    mtu: int = cni["plugins"][0]["delegate"]["mtu"]
    return mtu


def test_flannel_ipv6_mtu_smallest_accepted() -> None:
    assert flannel_pod_mtu(flannel_cluster(DUAL_STACK, "mtu: 1350, ")) == 1280


def test_flannel_ipv6_mtu_too_small_rejected() -> None:
    with pytest.raises(DescriptionError) as caught:
        flannel_cluster(DUAL_STACK, "mtu: 1330, ")
    (problem,) = caught.value.problems
    assert problem.path == "spec.network.mtu"
    assert problem.message == (
        "found 1330, which leaves pods 1260 bytes after the 70-byte VXLAN overhead of "
        "flannel-vxlan over IPv6; expected at least 1350"
    )


def test_ipv6_only_cluster() -> None:
    cluster = plan_text(IPV6_ONLY).cluster
    node = cluster.node("cp-1")
    pods = parsed_manifests(cluster, node)
    api_server = flags_of(pods["kube-apiserver"])
    assert api_server["advertise-address"] == "fd00::10"
    assert api_server["etcd-servers"] == "https://[::1]:2379"
    assert flags_of(pods["etcd"])["advertise-client-urls"] == "https://[fd00::10]:2379"
    assert str(cluster.network.kubernetes_service_ip) == "fd00:10:32::1"
    assert str(cluster.network.dns_service_ip) == "fd00:10:32::a"
    assert [str(block) for block in node.pod_cidrs] == ["fd00:10:200::/64"]
    # The probes of the controller-manager and the scheduler reach them on their bind address.
    for name in ("kube-controller-manager", "kube-scheduler"):
        assert flags_of(pods[name])["bind-address"] == "::1"
        assert pods[name]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["host"] == "::1"
    assert cluster.api_server_url(node) == "https://[fd00::10]:6443"


def test_ipv6_dns_upstream_accepted() -> None:
    text = DUAL_STACK.replace("ipv6: 64}", "ipv6: 64}, dnsUpstreams: ['2001:db8::53']")
    assert [str(ip) for ip in plan_text(text).cluster.network.dns_upstreams] == ["2001:db8::53"]


def test_index_lists_both_families(dual: Cluster) -> None:
    from compiler.build import build_index

    index = build_index(dual, {node.name: b"" for node in dual.nodes}, "00")
    worker = index["nodes"][3]
    assert worker["ip"] == "10.0.3.20"
    assert worker["ips"] == ["10.0.3.20", "fd00:10:0:3::20"]
    assert worker["podCIDR"] == "10.200.3.0/24"
    assert worker["podCIDRs"] == ["10.200.3.0/24", "fd00:10:200:3::/64"]
