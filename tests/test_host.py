"""Host setup: kernel settings, containerd and CNI configuration, and the boot scripts.

The scripts run under bash with every external program replaced by a recording stub (the
stub folder is the whole PATH) and every host path they read redirected into a temp dir.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import checksums, paths
from compiler.errors import ConsistencyError
from compiler.escape import yaml_scalar
from compiler.files import FileMap
from compiler.model import Cluster, Node
from compiler.render.cni import build_cni_files
from compiler.render.containerd import build_containerd_files
from compiler.render.host import build_host_files, first_boot_command
from compiler.render.kubelet_config import build_kubelet_configuration
from compiler.render.templates import FILTERS, render_template, template_environment
from compiler.resources import resource_path
from tests.conftest import MINIMAL, cluster_from_text

BASH = "/bin/bash"

# Records "<argument count>\0<name>\0<arguments>\0...<stdin>\0" per call. A call whose
# "name arguments" text matches the regex in KUBECC_TEST_FAIL exits 1.
STUB = r"""#!/bin/bash
IFS= read -r -d '' input || true
name=${0##*/}
printf '%s\0' "$#" "$name" "$@" "$input" >> "$KUBECC_TEST_LOG"
if [[ $name == mktemp ]]; then
    printf '%s\n' "$KUBECC_TEST_TMP"
fi
if [[ -n ${KUBECC_TEST_FAIL:-} && "$name $*" =~ $KUBECC_TEST_FAIL ]]; then
    exit 1
fi
exit 0
"""

FIRST_BOOT_STUBS = (
    "curl", "id", "install", "ip", "iptables", "ln", "logger", "mktemp", "modprobe", "rm",
    "sha256sum", "swapoff", "sysctl", "systemctl", "tar", "touch",
)
# A redirection into anything but /dev/null would let a script write on the host.
FILE_REDIRECTION = re.compile(r">>?\s*(?!&|/dev/null\b)[/$\"']")


@dataclass(frozen=True)
class Call:
    argv: list[str]
    stdin: str


@dataclass(frozen=True)
class Run:
    returncode: int
    stderr: str
    calls: list[Call]

    def argvs(self, name: str) -> list[list[str]]:
        return [call.argv for call in self.calls if call.argv[0] == name]

    def index(self, *argv: str) -> int:
        for position, call in enumerate(self.calls):
            if call.argv == list(argv):
                return position
        raise AssertionError(f"no call {argv}")


def read_calls(log: Path) -> list[Call]:
    if not log.exists():
        return []
    fields = log.read_bytes().decode("utf-8").split("\0")[:-1]
    calls, position = [], 0
    while position < len(fields):
        count = int(fields[position])
        argv = fields[position + 1 : position + 2 + count]
        calls.append(Call(argv=argv, stdin=fields[position + 2 + count]))
        position += 3 + count
    return calls


def run_script(
    text: str,
    tmp_path: Path,
    stubs: tuple[str, ...],
    redirects: dict[str, str] | None = None,
    fail: str = "",
) -> Run:
    """Run a generated script with stubbed programs and redirected host paths."""
    assert not FILE_REDIRECTION.search(text)
    for old, new in (redirects or {}).items():
        text = text.replace(old, new)

    stub_dir = tmp_path / "stubs"
    stub_dir.mkdir()
    for name in stubs:
        write_executable(stub_dir / name, STUB)
    (tmp_path / "work").mkdir()
    script = tmp_path / "script.sh"
    script.write_text(text, encoding="utf-8")

    log = tmp_path / "calls"
    result = subprocess.run(
        [BASH, str(script)], capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
        env={"PATH": str(stub_dir), "KUBECC_TEST_LOG": str(log),
             "KUBECC_TEST_TMP": str(tmp_path / "work"), "KUBECC_TEST_FAIL": fail},
    )
    return Run(result.returncode, result.stderr, read_calls(log))


def write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


def script_text(cluster: Cluster, node: Node, path: str) -> str:
    return build_host_files(cluster, node)[path].content.decode("utf-8")


def host_redirects(tmp_path: Path) -> dict[str, str]:
    """Point the host paths first-boot.sh reads at files inside the temp dir."""
    cgroup = tmp_path / "cgroup.controllers"
    cgroup.write_text("cpu memory\n")
    return {
        "/sys/fs/cgroup/cgroup.controllers": str(cgroup),
        "/var/lib/kubelet/pki": str(tmp_path / "kubelet-pki"),
    }


def run_first_boot(
    cluster: Cluster, node: Node, tmp_path: Path, fail: str = "systemctl is-active",
    stubs: tuple[str, ...] = FIRST_BOOT_STUBS, redirects: dict[str, str] | None = None,
) -> Run:
    text = script_text(cluster, node, paths.FIRST_BOOT_SCRIPT)
    all_redirects = {**host_redirects(tmp_path), **(redirects or {})}
    return run_script(text, tmp_path, stubs, all_redirects, fail)


def with_install(text: str, install: str) -> str:
    return text.replace("controlPlane:", f"install: {install}\n  controlPlane:")


ARM64_WORKER = MINIMAL.replace(
    "{name: worker-1, role: worker, ip: 10.0.0.20}",
    "{name: worker-1, role: worker, ip: 10.0.0.20, arch: arm64}",
)


# -- kernel settings ---------------------------------------------------------------------

def config_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_modules_load_file(minimal: Cluster) -> None:
    files = build_host_files(minimal, minimal.nodes[0])
    text = files[paths.MODULES_CONF].content.decode()
    assert config_lines(text) == ["overlay", "br_netfilter"]


def test_modules_load_file_ipvs() -> None:
    cluster = cluster_from_text(MINIMAL + "  kubeProxy: {mode: ipvs}\n")
    text = build_host_files(cluster, cluster.nodes[0])[paths.MODULES_CONF].content.decode()
    assert config_lines(text) == [
        "overlay", "br_netfilter", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack",
    ]


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_modules_load_file_without_ipvs(mode: str) -> None:
    cluster = cluster_from_text(MINIMAL + f"  kubeProxy: {{mode: {mode}}}\n")
    text = build_host_files(cluster, cluster.nodes[0])[paths.MODULES_CONF].content.decode()
    assert config_lines(text) == ["overlay", "br_netfilter"]


def test_sysctl_file(minimal: Cluster) -> None:
    files = build_host_files(minimal, minimal.nodes[0])
    lines = config_lines(files[paths.SYSCTL_CONF].content.decode())
    settings = dict(line.split(" = ") for line in lines)
    assert settings == {
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.bridge.bridge-nf-call-ip6tables": "1",
        "net.ipv4.ip_forward": "1",
    }


FILE_MODES = [
    (paths.MODULES_CONF, 0o644),
    (paths.SYSCTL_CONF, 0o644),
    (paths.CONTAINERD_UNIT, 0o644),
    (paths.KUBELET_UNIT, 0o644),
    (paths.POD_ROUTES_UNIT, 0o644),
    (paths.BOOTSTRAP_UNIT, 0o644),
    (paths.FIRST_BOOT_SCRIPT, 0o700),
    (paths.POD_ROUTES_SCRIPT, 0o755),
    (paths.BOOTSTRAP_SCRIPT, 0o700),
]


@pytest.mark.parametrize(("path", "mode"), FILE_MODES, ids=[p for p, _ in FILE_MODES])
def test_host_file_mode(minimal: Cluster, path: str, mode: int) -> None:
    files = build_host_files(minimal, minimal.first_control_plane)
    assert files[path].mode == mode


def test_worker_lacks_bootstrap(minimal: Cluster) -> None:
    files = build_host_files(minimal, minimal.node("worker-1"))
    assert paths.BOOTSTRAP_UNIT not in files
    assert paths.BOOTSTRAP_SCRIPT not in files
    assert paths.POD_ROUTES_SCRIPT in files


def test_first_boot_command(minimal: Cluster) -> None:
    assert first_boot_command(minimal, minimal.nodes[0]) == ["/usr/local/lib/kubecc/first-boot.sh"]


# -- containerd and CNI ------------------------------------------------------------------

def containerd_config(cluster: Cluster, node: Node) -> dict[str, Any]:
    text = build_containerd_files(cluster, node)[paths.CONTAINERD_CONFIG].content.decode()
    return tomllib.loads(text)


def test_containerd_config_every_example_node(example: Cluster) -> None:
    for node in example.nodes:
        config = containerd_config(example, node)
        runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
        images = config["plugins"]["io.containerd.cri.v1.images"]
        assert config["version"] == 3
        assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
        assert runtime["containerd"]["runtimes"]["runc"]["runtime_type"] == "io.containerd.runc.v2"
        assert images["pinned_images"]["sandbox"] == example.release.images.pause
        assert runtime["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}


def test_containerd_sandbox_image(minimal: Cluster) -> None:
    config = containerd_config(minimal, minimal.nodes[0])
    sandbox = config["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
    assert sandbox == "registry.k8s.io/pause:3.10.2"


def test_containerd_file_mode(minimal: Cluster) -> None:
    files = build_containerd_files(minimal, minimal.nodes[0])
    assert files[paths.CONTAINERD_CONFIG].mode == 0o644


def test_containerd_cgroup_matches_kubelet(example: Cluster) -> None:
    for node in example.nodes:
        config = containerd_config(example, node)
        runc = config["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
        kubelet = build_kubelet_configuration(example, node)
        assert kubelet["cgroupDriver"] == "systemd"
        assert runc["options"]["SystemdCgroup"] is (kubelet["cgroupDriver"] == "systemd")


@pytest.mark.parametrize(("version", "expected"), [
    ("2.0.5", {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}),
    ("2.1.0", {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}),
    ("2.3.4", {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"}),
], ids=["2.0", "2.1", "2.3"])
def test_containerd_cni_dirs_by_version(
    minimal: Cluster, version: str, expected: dict[str, Any]
) -> None:
    release = dataclasses.replace(minimal.release, containerd_version=version)
    cluster = dataclasses.replace(minimal, release=release)
    config = containerd_config(cluster, cluster.nodes[0])
    assert config["plugins"]["io.containerd.cri.v1.runtime"]["cni"] == expected


def conflist(cluster: Cluster, node: Node) -> dict[str, Any]:
    file = build_cni_files(cluster, node)[paths.CNI_CONFLIST]
    assert file.mode == 0o644
    document: dict[str, Any] = json.loads(file.content)
    return document


def test_cni_conflist_every_example_node(example: Cluster) -> None:
    for node in example.nodes:
        document = conflist(example, node)
        bridge, portmap = document["plugins"]
        assert document["cniVersion"] == "1.0.0"
        assert document["name"] == "kubecc"
        assert bridge["type"] == "bridge"
        assert bridge["bridge"] == "cni0"
        assert bridge["isGateway"] is True
        assert bridge["ipMasq"] is False
        assert bridge["hairpinMode"] is True
        assert bridge["mtu"] == example.network.mtu
        assert bridge["ipam"]["type"] == "host-local"
        assert bridge["ipam"]["ranges"] == [[{"subnet": str(block)}] for block in node.pod_cidrs]
        default_routes = {4: "0.0.0.0/0", 6: "::/0"}
        assert bridge["ipam"]["routes"] == [
            {"dst": default_routes[block.version]} for block in node.pod_cidrs
        ]
        assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_cni_conflist_worker_block(minimal: Cluster) -> None:
    document = conflist(minimal, minimal.node("worker-1"))
    assert document["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.200.1.0/24"}]]


def test_cni_conflist_mtu() -> None:
    cluster = cluster_from_text(MINIMAL.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 24, mtu: 1450"))
    assert conflist(cluster, cluster.nodes[0])["plugins"][0]["mtu"] == 1450


def test_cni_absent_outside_static_mode(minimal: Cluster) -> None:
    network = dataclasses.replace(minimal.network, mode="none")
    cluster = dataclasses.replace(minimal, network=network)
    assert build_cni_files(cluster, cluster.nodes[0]) == {}
    files = build_host_files(cluster, cluster.nodes[0])
    assert paths.POD_ROUTES_UNIT not in files
    assert "kubecc-pod-routes" not in files[paths.FIRST_BOOT_SCRIPT].content.decode()


@pytest.mark.parametrize("mode", ["flannel-vxlan", "flannel-host-gw", "none"])
def test_no_routes_outside_static_mode(mode: str) -> None:
    cluster = cluster_from_text(MINIMAL.replace("podCIDR:", f"mode: {mode}, podCIDR:"))
    for node in cluster.nodes:
        assert node.pod_cidrs == ()
        assert build_cni_files(cluster, node) == {}
        files = build_host_files(cluster, node)
        assert paths.POD_ROUTES_UNIT not in files, node.name
        assert paths.POD_ROUTES_SCRIPT not in files, node.name
        assert "kubecc-pod-routes" not in files[paths.FIRST_BOOT_SCRIPT].content.decode()


# -- templates ---------------------------------------------------------------------------

TEMPLATE_DIR = resource_path("templates")
TEMPLATES = sorted(str(path.relative_to(TEMPLATE_DIR)) for path in TEMPLATE_DIR.rglob("*.j2"))
# Expressions allowed without a filter, with the reason. Empty: every value is escaped.
RAW_EXPRESSIONS: dict[str, str] = {}
EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
FILTERED = re.compile(r"\|\s*(haproxy|shell|systemd|toml|yaml)\s*$")
LOOP = re.compile(r"\{%-?\s*for\s+(.*?)\s+in\s+(.*?)\s*-?%\}")


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_escapes_every_value(name: str) -> None:
    text = (TEMPLATE_DIR / name).read_text(encoding="utf-8")
    for expression in EXPRESSION.findall(text):
        inner = expression.strip()
        assert FILTERED.search(inner) or inner in RAW_EXPRESSIONS, f"{name}: {{{{ {inner} }}}}"


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_loops_over_plain_names(name: str) -> None:
    text = (TEMPLATE_DIR / name).read_text(encoding="utf-8")
    for _, source in LOOP.findall(text):
        assert re.fullmatch(r"[a-z_]+", source), f"{name}: loop over {source}"


def test_template_filters_registered() -> None:
    assert sorted(template_environment().filters.keys() & FILTERS.keys()) == [
        "haproxy", "shell", "systemd", "toml", "yaml",
    ]


def test_template_environment_cached() -> None:
    assert template_environment() is template_environment()


def test_template_missing_value_raises() -> None:
    message = r"containerd/config\.toml\.j2 failed: 'pause_image' is undefined"
    with pytest.raises(ConsistencyError, match=message):
        render_template("containerd/config.toml.j2")


def test_template_unquotable_value_raises() -> None:
    with pytest.raises(ConsistencyError, match="contains NUL"):
        render_template("systemd/kubecc-bootstrap.service.j2", script="/bin/a\0b")


# -- script syntax -----------------------------------------------------------------------

SCRIPTS = (paths.FIRST_BOOT_SCRIPT, paths.POD_ROUTES_SCRIPT, paths.BOOTSTRAP_SCRIPT)


def assert_scripts_parse(files: FileMap) -> None:
    for path in SCRIPTS:
        if path not in files:
            continue
        result = subprocess.run([BASH, "-n"], input=files[path].content, capture_output=True,
                                timeout=30, check=False)
        assert result.stderr == b"", path
        assert result.returncode == 0, path


def test_scripts_parse_every_example_node(example: Cluster) -> None:
    for node in example.nodes:
        assert_scripts_parse(build_host_files(example, node))


@pytest.mark.parametrize("text", [
    with_install(MINIMAL, "{method: preinstalled}"),
    MINIMAL.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 24, resolvConf: /etc/resolv.conf"),
    MINIMAL.replace("v1.36.2", "v1.34.11"),
    MINIMAL.replace("podCIDR:", "mode: flannel-vxlan, podCIDR:"),
    MINIMAL.replace("podCIDR:", "mode: none, podCIDR:"),
    MINIMAL + "  kubeProxy: {mode: ipvs}\n",
    MINIMAL + "  cloudProvider: external\n",
], ids=["preinstalled", "forced-resolv-conf", "kubernetes-1.34", "flannel-vxlan", "none", "ipvs",
        "external-cloud"])
def test_scripts_parse_variants(text: str) -> None:
    cluster = cluster_from_text(text)
    for node in cluster.nodes:
        assert_scripts_parse(build_host_files(cluster, node))


# -- first-boot.sh: order ----------------------------------------------------------------

def line_index(text: str, line: str) -> int:
    return [candidate.strip() for candidate in text.splitlines()].index(line)


def test_first_boot_text_order(minimal: Cluster) -> None:
    text = script_text(minimal, minimal.nodes[0], paths.FIRST_BOOT_SCRIPT)
    kubelet = line_index(text, "systemctl enable --now kubelet.service")
    assert line_index(text, 'modprobe "$module"') < line_index(text, "sysctl --system")
    assert line_index(text, "sysctl --system") < kubelet
    assert line_index(text, "swapoff -a") < kubelet
    assert text.startswith("#!/bin/bash\n")
    assert "set -Eeuo pipefail" in text


def test_first_boot_run_order(minimal: Cluster, tmp_path: Path) -> None:
    run = run_first_boot(minimal, minimal.first_control_plane, tmp_path)
    assert run.returncode == 0, run.stderr

    kubelet = run.index("systemctl", "enable", "--now", "kubelet.service")
    assert run.index("modprobe", "overlay") < run.index("sysctl", "--system")
    assert run.index("modprobe", "br_netfilter") < run.index("sysctl", "--system")
    assert run.index("sysctl", "--system") < kubelet
    assert run.index("swapoff", "-a") < kubelet
    assert run.index("systemctl", "mask", "swap.target") < kubelet
    assert run.index("systemctl", "daemon-reload") < run.index(
        "systemctl", "enable", "--now", "kubecc-pod-routes.service")
    assert run.index("systemctl", "enable", "--now", "kubecc-pod-routes.service") < run.index(
        "systemctl", "enable", "--now", "containerd.service")
    assert run.index("systemctl", "enable", "--now", "containerd.service") < kubelet
    assert kubelet < run.index(
        "systemctl", "enable", "--now", "--no-block", "kubecc-bootstrap.service")


def test_first_boot_logs_to_journal(minimal: Cluster, tmp_path: Path) -> None:
    run = run_first_boot(minimal, minimal.nodes[1], tmp_path)
    messages = [argv[4] for argv in run.argvs("logger")]
    assert all(argv[1:4] == ["-t", "kubecc", "--"] for argv in run.argvs("logger"))
    assert messages[0] == "first boot of Kubernetes v1.36.2 node: checking prerequisites"
    assert messages[-1] == "first boot finished"
    assert "kubecc: first boot finished" in run.stderr


def test_first_boot_worker_skips_bootstrap(minimal: Cluster, tmp_path: Path) -> None:
    run = run_first_boot(minimal, minimal.node("worker-1"), tmp_path)
    assert run.returncode == 0, run.stderr
    assert not [argv for argv in run.argvs("systemctl") if "kubecc-bootstrap.service" in argv]


def test_first_boot_links_client_certificate(minimal: Cluster, tmp_path: Path) -> None:
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path)
    pki = str(tmp_path / "kubelet-pki")
    assert run.argvs("ln") == [
        ["ln", "-sf", "--", f"{pki}/kubelet-client-kubecc.pem", f"{pki}/kubelet-client-current.pem"],
    ]


def test_first_boot_keeps_rotated_certificate(minimal: Cluster, tmp_path: Path) -> None:
    pki = tmp_path / "kubelet-pki"
    pki.mkdir()
    (pki / "kubelet-client-current.pem").symlink_to("kubelet-client-2030.pem")
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.argvs("ln") == []


# -- first-boot.sh: prerequisites --------------------------------------------------------

def test_first_boot_missing_tools(minimal: Cluster, tmp_path: Path) -> None:
    stubs = tuple(name for name in FIRST_BOOT_STUBS if name not in ("swapoff", "iptables"))
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path, stubs=stubs)
    assert run.returncode == 1
    assert "missing required programs: swapoff iptables-or-nft;" in run.stderr
    assert run.argvs("modprobe") == []


def test_first_boot_nft_satisfies_prerequisite(minimal: Cluster, tmp_path: Path) -> None:
    stubs = (*(name for name in FIRST_BOOT_STUBS if name != "iptables"), "nft")
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path, stubs=stubs)
    assert run.returncode == 0, run.stderr


def test_first_boot_requires_cgroup_v2(minimal: Cluster, tmp_path: Path) -> None:
    redirects = {"/sys/fs/cgroup/cgroup.controllers": str(tmp_path / "absent")}
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path, redirects=redirects)
    assert run.returncode == 1
    assert "cgroup v2 is not mounted at /sys/fs/cgroup" in run.stderr
    assert run.argvs("modprobe") == []


def test_first_boot_cgroup_check_from_1_35() -> None:
    old = cluster_from_text(MINIMAL.replace("v1.36.2", "v1.34.11"))
    new = cluster_from_text(MINIMAL.replace("v1.36.2", "v1.35.8"))
    assert "cgroup.controllers" not in script_text(old, old.nodes[0], paths.FIRST_BOOT_SCRIPT)
    assert "cgroup.controllers" in script_text(new, new.nodes[0], paths.FIRST_BOOT_SCRIPT)


# -- first-boot.sh: binary installation --------------------------------------------------

# Release files of v1.36.2 with the versions the table pins for 1.36.
RELEASE_URLS = {
    "amd64": [
        "https://dl.k8s.io/release/v1.36.2/bin/linux/amd64/kubelet",
        "https://dl.k8s.io/release/v1.36.2/bin/linux/amd64/kubectl",
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-amd64.tar.gz",
        "https://github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-amd64.tar.gz",
        "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64",
        "https://github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz",
    ],
    "arm64": [
        "https://dl.k8s.io/release/v1.36.2/bin/linux/arm64/kubelet",
        "https://dl.k8s.io/release/v1.36.2/bin/linux/arm64/kubectl",
        "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-arm64.tar.gz",
        "https://github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-arm64.tar.gz",
        "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.arm64",
        "https://github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-arm64-v1.9.1.tgz",
    ],
}
RELEASE_VERSIONS = {
    "kubelet": "1.36.2", "kubectl": "1.36.2", "crictl": "1.36.0", "containerd": "2.3.4",
    "runc": "1.4.3", "cni-plugins": "1.9.1",
}
KUBELET_SHA256 = {
    "amd64": "3ba68cb4f0906053c08ab843131d5cec559cf8c718dbd679950a078b306abbb4",
    "arm64": "b0b45db96f0e6bf996780b8a2b8d868bf538dc7c3a60cf604cf0ea2d65c24b06",
}


def curl_urls(run: Run) -> list[str]:
    urls = []
    for argv in run.argvs("curl"):
        assert argv[1:6] == ["-fsSL", "--retry", "5", "--retry-all-errors", "-o"]
        urls.append(argv[7])
    return urls


def checked_sha256(run: Run) -> list[str]:
    return [call.stdin.split("  ")[0] for call in run.calls if call.argv[0] == "sha256sum"]


@pytest.mark.parametrize(("node_name", "arch"), [("cp-1", "amd64"), ("worker-1", "arm64")])
def test_first_boot_downloads_release(node_name: str, arch: str, tmp_path: Path) -> None:
    cluster = cluster_from_text(ARM64_WORKER)
    run = run_first_boot(cluster, cluster.node(node_name), tmp_path)
    assert run.returncode == 0, run.stderr

    assert curl_urls(run) == RELEASE_URLS[arch]
    expected = [checksums.SHA256[name][arch][version] for name, version in RELEASE_VERSIONS.items()]
    assert checked_sha256(run) == expected
    assert checked_sha256(run)[0] == KUBELET_SHA256[arch]
    assert all(argv == ["sha256sum", "--check", "--strict"] for argv in run.argvs("sha256sum"))


def test_first_boot_checks_download_before_install(minimal: Cluster, tmp_path: Path) -> None:
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path)
    work = tmp_path / "work"
    curl = run.index("curl", "-fsSL", "--retry", "5", "--retry-all-errors", "-o",
                     f"{work}/kubelet", RELEASE_URLS["amd64"][0])
    check = next(i for i, call in enumerate(run.calls) if call.argv[0] == "sha256sum")
    install = run.index("install", "-m", "0755", f"{work}/kubelet", "/usr/local/bin/kubelet")
    assert curl < check < install
    assert run.calls[check].stdin == f"{KUBELET_SHA256['amd64']}  {work}/kubelet\n"


INSTALL_COMMANDS = [
    ("kubelet", ["install", "-m", "0755", "{work}/kubelet", "/usr/local/bin/kubelet"]),
    ("kubectl", ["install", "-m", "0755", "{work}/kubectl", "/usr/local/bin/kubectl"]),
    ("runc", ["install", "-m", "0755", "{work}/runc", "/usr/local/bin/runc"]),
    ("crictl", ["tar", "-xzf", "{work}/crictl", "-C", "/usr/local/bin", "--no-same-owner"]),
    ("containerd", ["tar", "-xzf", "{work}/containerd", "-C", "/usr/local/bin",
                    "--no-same-owner", "--strip-components=1", "bin"]),
    ("cni-plugins", ["tar", "-xzf", "{work}/cni-plugins", "-C", "/opt/cni/bin",
                     "--no-same-owner"]),
]


@pytest.mark.parametrize("argv", [argv for _, argv in INSTALL_COMMANDS],
                         ids=[name for name, _ in INSTALL_COMMANDS])
def test_first_boot_install_command(minimal: Cluster, tmp_path: Path, argv: list[str]) -> None:
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path)
    expected = [part.format(work=tmp_path / "work") for part in argv]
    assert expected in run.argvs(expected[0])


def test_first_boot_mirror_urls(tmp_path: Path) -> None:
    cluster = cluster_from_text(with_install(MINIMAL, "{baseURL: 'https://mirror.example/k8s'}"))
    run = run_first_boot(cluster, cluster.nodes[0], tmp_path)
    assert curl_urls(run) == [
        url.replace("https://", "https://mirror.example/k8s/") for url in RELEASE_URLS["amd64"]
    ]
    assert curl_urls(run)[0] == "https://mirror.example/k8s/dl.k8s.io/release/v1.36.2/bin/linux/amd64/kubelet"


def test_first_boot_hostile_base_url(tmp_path: Path) -> None:
    base_url = "https://m.example/$(touch${IFS}pwned)/'a\"`touch${IFS}pwned`;id"
    cluster = cluster_from_text(with_install(MINIMAL, f"{{baseURL: {yaml_scalar(base_url)}}}"))
    files = build_host_files(cluster, cluster.nodes[0])
    assert_scripts_parse(files)

    run = run_first_boot(cluster, cluster.nodes[0], tmp_path)
    assert run.returncode == 0, run.stderr
    assert curl_urls(run)[0] == f"{base_url}/dl.k8s.io/release/v1.36.2/bin/linux/amd64/kubelet"
    assert run.argvs("touch") == []
    assert run.argvs("id") == []
    assert not (tmp_path / "work" / "pwned").exists()


def test_first_boot_preinstalled_has_no_install(tmp_path: Path) -> None:
    cluster = cluster_from_text(with_install(MINIMAL, "{method: preinstalled}"))
    text = script_text(cluster, cluster.nodes[0], paths.FIRST_BOOT_SCRIPT)
    assert "curl" not in text
    assert "fetch_and_install" not in text
    assert "sha256sum --check" not in text


def test_first_boot_preinstalled_missing_binaries(tmp_path: Path) -> None:
    cluster = cluster_from_text(with_install(MINIMAL, "{method: preinstalled, binDir: /nonexistent/bin}"))
    run = run_first_boot(cluster, cluster.nodes[1], tmp_path)
    assert run.returncode == 1
    assert ("missing required programs: /nonexistent/bin/containerd "
            "/nonexistent/bin/containerd-shim-runc-v2 /nonexistent/bin/kubelet "
            "/nonexistent/bin/runc /opt/cni/bin/bridge") in run.stderr


def test_first_boot_preinstalled_run(tmp_path: Path) -> None:
    bin_dir, cni_dir = tmp_path / "bin", tmp_path / "cni"
    cluster = cluster_from_text(
        with_install(MINIMAL, f"{{method: preinstalled, binDir: {bin_dir}}}"))
    for name in ("containerd", "containerd-shim-runc-v2", "kubelet", "kubectl", "runc"):
        write_executable(bin_dir / name, "#!/bin/sh\n")
    for name in ("bridge", "host-local", "loopback", "portmap"):
        write_executable(cni_dir / name, "#!/bin/sh\n")

    run = run_first_boot(cluster, cluster.nodes[0], tmp_path, redirects={"/opt/cni/bin": str(cni_dir)})
    assert run.returncode == 0, run.stderr
    assert run.argvs("curl") == []
    assert run.argvs("tar") == []
    assert run.index("systemctl", "enable", "--now", "kubelet.service") > 0


def test_first_boot_loads_ipvs_modules(tmp_path: Path) -> None:
    cluster = cluster_from_text(MINIMAL + "  kubeProxy: {mode: ipvs}\n")
    run = run_first_boot(cluster, cluster.node("worker-1"), tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.argvs("modprobe") == [
        ["modprobe", module]
        for module in ("overlay", "br_netfilter", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")
    ]
    assert run.index("modprobe", "nf_conntrack") < run.index("sysctl", "--system")


@pytest.mark.parametrize(
    ("mode", "cni_plugins"),
    [
        ("static", ["bridge", "host-local", "loopback", "portmap"]),
        ("flannel-vxlan", ["bridge", "host-local", "loopback", "portmap"]),
        ("flannel-host-gw", ["bridge", "host-local", "loopback", "portmap"]),
        ("none", []),
    ],
)
def test_first_boot_preinstalled_cni_plugins(mode: str, cni_plugins: list[str], tmp_path: Path) -> None:
    text = with_install(MINIMAL, "{method: preinstalled}").replace("podCIDR:", f"mode: {mode}, podCIDR:")
    cluster = cluster_from_text(text)
    script = script_text(cluster, cluster.node("worker-1"), paths.FIRST_BOOT_SCRIPT)
    required = [line.strip() for line in script.split("required_executables=(")[1].split(")")[0].splitlines()]
    assert [path.removeprefix("/opt/cni/bin/") for path in required if path.startswith("/opt/cni/bin/")] == cni_plugins


# -- first-boot.sh: resolv.conf ----------------------------------------------------------

@pytest.mark.parametrize(("fail", "resolv_conf"), [
    ("systemctl is-active", "/etc/resolv.conf"),
    ("", "/run/systemd/resolve/resolv.conf"),
], ids=["host", "systemd-resolved"])
def test_first_boot_resolv_conf_dropin(
    minimal: Cluster, tmp_path: Path, fail: str, resolv_conf: str
) -> None:
    run = run_first_boot(minimal, minimal.nodes[0], tmp_path, fail=fail)
    assert run.returncode == 0, run.stderr
    assert ["systemctl", "is-active", "--quiet", "systemd-resolved.service"] in run.argvs("systemctl")

    dropin = "/etc/kubernetes/kubelet.conf.d/10-resolv-conf.conf"
    (write,) = [call for call in run.calls
                if call.argv == ["install", "-m", "0644", "/dev/stdin", dropin]]
    assert yaml.safe_load(write.stdin) == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "resolvConf": resolv_conf,
    }
    assert run.index("install", "-d", "-m", "0755", "/etc/kubernetes/kubelet.conf.d") < run.index(
        "install", "-m", "0644", "/dev/stdin", dropin)


def test_first_boot_forced_resolv_conf(tmp_path: Path) -> None:
    cluster = cluster_from_text(
        MINIMAL.replace("nodeCIDRMaskSize: 24", "nodeCIDRMaskSize: 24, resolvConf: /etc/resolv.conf"))
    run = run_first_boot(cluster, cluster.nodes[0], tmp_path)
    assert run.returncode == 0, run.stderr
    assert not [argv for argv in run.argvs("systemctl") if "is-active" in argv]
    assert not [argv for argv in run.argvs("install") if "/dev/stdin" in argv]
    assert ["install", "-d", "-m", "0755", "/etc/kubernetes/kubelet.conf.d"] in run.argvs("install")


# -- pod-routes.sh -----------------------------------------------------------------------

ROUTE_STUBS = ("ip", "iptables", "logger")
CHAIN = "KUBECC-POD-MASQ"


def hard_way_server() -> tuple[Cluster, Node]:
    cluster = cluster_from_text((Path(__file__).parent.parent / "examples/hard-way.yaml").read_text())
    return cluster, cluster.node("server")


def test_pod_routes_first_run(tmp_path: Path) -> None:
    cluster, node = hard_way_server()
    text = script_text(cluster, node, paths.POD_ROUTES_SCRIPT)
    run = run_script(text, tmp_path, ROUTE_STUBS, fail="iptables -w -t nat -[SC]")
    assert run.returncode == 0, run.stderr

    assert run.argvs("ip") == [
        ["ip", "route", "replace", "10.200.1.0/24", "via", "10.240.0.20"],
        ["ip", "route", "replace", "10.200.2.0/24", "via", "10.240.0.21"],
    ]
    nat = ["iptables", "-w", "-t", "nat"]
    assert run.argvs("iptables") == [
        [*nat, "-S", CHAIN],
        [*nat, "-N", CHAIN],
        [*nat, "-F", CHAIN],
        [*nat, "-A", CHAIN, "-d", "10.200.0.0/16", "-j", "RETURN"],
        [*nat, "-A", CHAIN, "-j", "MASQUERADE"],
        [*nat, "-C", "POSTROUTING", "-s", "10.200.0.0/16", "-j", CHAIN],
        [*nat, "-A", "POSTROUTING", "-s", "10.200.0.0/16", "-j", CHAIN],
    ]


def test_pod_routes_rerun_keeps_one_jump(tmp_path: Path) -> None:
    cluster, node = hard_way_server()
    run = run_script(script_text(cluster, node, paths.POD_ROUTES_SCRIPT), tmp_path, ROUTE_STUBS)
    assert run.returncode == 0, run.stderr
    operations = [argv[4] for argv in run.argvs("iptables")]
    assert operations == ["-S", "-F", "-A", "-A", "-C"]


def test_pod_routes_nft(tmp_path: Path) -> None:
    cluster, node = hard_way_server()
    text = script_text(cluster, node, paths.POD_ROUTES_SCRIPT)
    run = run_script(text, tmp_path, ("ip", "logger", "nft"))
    assert run.returncode == 0, run.stderr

    (call,) = [call for call in run.calls if call.argv[0] == "nft"]
    assert call.argv == ["nft", "-f", "-"]
    lines = [line.strip() for line in call.stdin.splitlines()]
    assert lines[:3] == ["table inet kubecc", "delete table inet kubecc", "table inet kubecc {"]
    assert "type nat hook postrouting priority srcnat; policy accept;" in lines
    assert "ip saddr 10.200.0.0/16 ip daddr != 10.200.0.0/16 masquerade" in lines


def test_pod_routes_skip_own_block(example: Cluster) -> None:
    for node in example.nodes:
        text = script_text(example, node, paths.POD_ROUTES_SCRIPT)
        routes = [line for line in text.splitlines() if line.startswith("add_route ")]
        assert len(routes) == (len(example.nodes) - 1) * len(node.pod_cidrs)
        for block in node.pod_cidrs:
            assert f"add_route {block} " not in text


# -- bootstrap.sh ------------------------------------------------------------------------

BOOTSTRAP_STUBS = ("logger", "rm", "sleep")


def run_bootstrap(tmp_path: Path, credential: bool, fail: str = "") -> Run:
    cluster = cluster_from_text(MINIMAL)
    text = script_text(cluster, cluster.first_control_plane, paths.BOOTSTRAP_SCRIPT)
    kubeconfig = tmp_path / "bootstrap-admin.conf"
    if credential:
        kubeconfig.write_text("test credential\n")
    write_executable(tmp_path / "bin" / "kubectl", STUB)
    redirects = {
        "/usr/local/bin/kubectl": str(tmp_path / "bin" / "kubectl"),
        "/etc/kubernetes/bootstrap-admin.conf": str(kubeconfig),
    }
    return run_script(text, tmp_path, BOOTSTRAP_STUBS, redirects, fail)


def test_bootstrap_applies_then_deletes(tmp_path: Path) -> None:
    run = run_bootstrap(tmp_path, credential=True)
    assert run.returncode == 0, run.stderr

    kubeconfig = str(tmp_path / "bootstrap-admin.conf")
    assert run.argvs("kubectl") == [
        ["kubectl", "--kubeconfig", kubeconfig, "--request-timeout=10s", "get", "--raw", "/readyz"],
        ["kubectl", "--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts",
         "--field-manager=kubecc", "-f", "/etc/kubernetes/addons/"],
    ]
    assert run.argvs("rm") == [["rm", "-f", "--", kubeconfig]]
    assert run.index("rm", "-f", "--", kubeconfig) > 1


def test_bootstrap_without_credential_exits(tmp_path: Path) -> None:
    run = run_bootstrap(tmp_path, credential=False)
    assert run.returncode == 0, run.stderr
    assert run.argvs("kubectl") == []
    assert "is gone, so an earlier run finished" in run.stderr


def test_bootstrap_retry_is_bounded(tmp_path: Path) -> None:
    run = run_bootstrap(tmp_path, credential=True, fail="kubectl .*/readyz")
    assert run.returncode == 1
    assert len(run.argvs("kubectl")) == 40
    delays = [int(argv[1]) for argv in run.argvs("sleep")]
    assert delays[:6] == [2, 4, 8, 16, 30, 30]
    assert max(delays) == 30
    assert run.argvs("rm") == []
    assert "was not ready after 40 attempts" in run.stderr


def test_bootstrap_apply_failure_keeps_credential(tmp_path: Path) -> None:
    run = run_bootstrap(tmp_path, credential=True, fail="kubectl .* apply ")
    assert run.returncode == 1
    assert run.argvs("rm") == []
    assert "bootstrap failed" in run.stderr
