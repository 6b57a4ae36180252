"""cloud-init 22.4 boots kubecc's user-data on a real Debian root, and the result matches it.

Each case applies one node's user-data of the hard-way or the ha example to an overlay of the cached
bookworm root (tests/prepare-rootfs builds it, and tests/rootfs_support.py describes how the
kernel, the host and the network stay out of reach). The checks read cloud-init's own report,
every written file, the calls of the first-boot script and the written systemd units. Each
check returns a list of problems, every one starting with the name of the output file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import checksums, paths
from compiler.build import build_output_files
from tests.conftest import example_cluster
from tests.rootfs_support import (
    CLOUD_INIT_STAGES,
    AppliedRoot,
    StubCall,
    applied_root,
    remove_tree,
    resolve_in_root,
    rootfs_cache,
    unpack_rootfs,
    verify_units,
)

pytestmark = pytest.mark.consumer

EXAMPLE = "hard-way"
WORKER = "node-0"
# (example, node): the first control plane, which also runs the bootstrap unit, and a worker of
# each example.
CASES = [("hard-way", "server"), ("hard-way", WORKER), ("ha", "cp-1"), ("ha", "worker-1")]
BOOTSTRAP_NODES = {"server", "cp-1"}
UNIT_DIR = "/etc/systemd/system/"
BIN_DIR = "/usr/local/bin/"

# Release files of Kubernetes v1.36.4 on amd64, with the component versions that the version
# table (compiler/versions.py) pins for 1.36, in the order first-boot.sh installs them.
RELEASE_FILES = (
    ("kubelet", "1.36.4", "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubelet"),
    ("kubectl", "1.36.4", "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubectl"),
    ("crictl", "1.36.0", "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-amd64.tar.gz"),
    ("containerd", "2.3.4", "https://github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-amd64.tar.gz"),
    ("runc", "1.4.3", "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64"),
    ("cni-plugins", "1.9.1", "https://github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-amd64-v1.9.1.tgz"),
)

# The stub reports systemd-resolved as inactive, so first-boot.sh picks the host's file.
RESOLV_CONF_DROPIN = f"{paths.KUBELET_CONFIG_DROPIN_DIR}/10-resolv-conf.conf"
EXPECTED_RESOLV_CONF_DROPIN = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "resolvConf": "/etc/resolv.conf",
}

# A cloud-init 22.4 schema error of a write_files entry, as `cloud-init schema --system`
# prints it, for example "write_files.14.permissions: 600 is not of type 'string'". Several
# errors are separated by ", ".
SCHEMA_ERROR = re.compile(r"(write_files\.(\d+)\.[\w.]+): (.+?)(?:,|$)", re.MULTILINE)
LOG_PROBLEM = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]|Traceback")


@cache
def built_files(example: str) -> dict[str, bytes]:
    files = build_output_files(example_cluster(example))
    return {path: file.content for path, file in files.items()}


def built_user_data(node: str, example: str = EXAMPLE) -> bytes:
    return built_files(example)[f"nodes/{node}/user-data"]


def artifact_name(node: str) -> str:
    return f"nodes/{node}/user-data"


@pytest.fixture(scope="session")
def lower_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cached root, unpacked once and only ever used as an overlay's lower layer."""
    tarball = rootfs_cache()
    if os.geteuid() != 0:
        pytest.fail("these tests mount overlayfs and create namespaces, so they must run as root")
    if not tarball.is_file():
        pytest.fail(
            f"the test root filesystem {tarball} is missing: run tests/prepare-rootfs as root "
            "(it needs deb.debian.org and takes about a minute), or point KUBECC_ROOTFS_CACHE at "
            "an existing tarball"
        )
    lower = tmp_path_factory.mktemp("rootfs-lower")
    unpack_rootfs(tarball, lower)
    yield lower
    remove_tree(lower)


@pytest.fixture(scope="module", params=CASES, ids=[f"{e}-{n}" for e, n in CASES])
def booted(
    request: pytest.FixtureRequest, lower_root: Path, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AppliedRoot]:
    """A root booted once with the node's user-data, mounted while the module's tests run."""
    example, node = request.param
    case = tmp_path_factory.mktemp(f"boot-{example}-{node}")
    user_data = built_user_data(node, example)
    with applied_root(lower_root, case, artifact_name(node), user_data, node) as root:
        yield root


# -- checks ------------------------------------------------------------------------------


def check_applied(applied: AppliedRoot) -> list[str]:
    """Run every check on a booted root."""
    return [
        *check_cloud_init_report(applied),
        *check_written_files(applied),
        *check_first_boot_calls(applied),
        *check_first_boot_results(applied),
        *check_units(applied),
    ]


def cloud_config(applied: AppliedRoot) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(applied.user_data)
    return document


def named(applied: AppliedRoot, problems: list[str]) -> list[str]:
    return [f"{applied.artifact}: {problem}" for problem in problems]


def check_cloud_init_report(applied: AppliedRoot) -> list[str]:
    """Check cloud-init's exit codes, status, result.json, log and schema report."""
    problems = []
    stage_output = applied.read_output("cloud-init-stages.log")
    exit_codes = applied.exit_codes()
    for stage in CLOUD_INIT_STAGES:
        if exit_codes[stage] != 0:
            problems.append(
                f"cloud-init {stage} exited {exit_codes[stage]}; output:\n{stage_output[-2000:]}"
            )

    status = applied.read_output("status.txt")
    if exit_codes["status"] != 0 or "status: done" not in status:
        problems.append(
            f"cloud-init status --long exited {exit_codes['status']} and reports:\n{status}"
        )

    result_path = resolve_in_root(applied.root, "/var/lib/cloud/data/result.json")
    if not result_path.is_file():
        problems.append("cloud-init wrote no /var/lib/cloud/data/result.json")
    else:
        result = json.loads(result_path.read_text())["v1"]
        if result["errors"]:
            problems.append(f"cloud-init result.json lists errors: {result['errors']}")
        if not result["datasource"].startswith("DataSourceNoCloud"):
            problems.append(f"cloud-init used {result['datasource']}, not the NoCloud seed")

    log = resolve_in_root(applied.root, "/var/log/cloud-init.log")
    if not log.is_file():
        problems.append("cloud-init wrote no /var/log/cloud-init.log")
    else:
        problems += [
            f"cloud-init.log: {line}"
            for line in log.read_text(errors="replace").splitlines()
            if LOG_PROBLEM.search(line)
        ]

    output_log = resolve_in_root(applied.root, "/var/log/cloud-init-output.log")
    if output_log.is_file():
        problems += [
            f"cloud-init-output.log: {line}"
            for line in output_log.read_text(errors="replace").splitlines()
            if line.startswith("kubecc: first boot failed")
        ]

    problems += schema_problems(applied)
    return named(applied, problems)


def schema_problems(applied: AppliedRoot) -> list[str]:
    """Turn `cloud-init schema --system` errors into messages that name the file entry."""
    if applied.exit_codes()["schema"] == 0:
        return []
    report = applied.read_output("schema.txt")
    entries = cloud_config(applied)["write_files"]
    problems = []
    for key, index, message in SCHEMA_ERROR.findall(report):
        path = entries[int(index)]["path"]
        problems.append(f"cloud-init schema: {key} ({path}): {message}")
    if not problems:
        problems.append(f"cloud-init schema --system failed:\n{report}")
    return problems


def check_written_files(applied: AppliedRoot) -> list[str]:
    """Check that every write_files entry is in the upper folder with its content, mode and owner."""
    users = id_table(applied.root, "/etc/passwd")
    groups = id_table(applied.root, "/etc/group")
    problems = []
    for entry in cloud_config(applied)["write_files"]:
        path = entry["path"]
        written = applied.upper / path.lstrip("/")
        if written.is_symlink() or not written.is_file():
            problems.append(f"{path} was not written")
            continue
        if "encoding" in entry:
            problems.append(f"{path} uses encoding {entry['encoding']}, which this check does not decode")
            continue

        content = written.read_bytes()
        declared = entry["content"].encode()
        if content != declared:
            problems.append(
                f"{path} differs from the user-data: {len(content)} bytes written, "
                f"{len(declared)} declared"
            )

        status = written.stat()
        mode = status.st_mode & 0o7777
        permissions = entry.get("permissions", "0644")
        if not isinstance(permissions, str):
            problems.append(
                f"{path} declares its permissions as the {type(permissions).__name__} "
                f"{permissions!r}, not an octal string such as '0600', and cloud-init "
                f"applied mode {mode:#o}"
            )
        elif mode != int(permissions, 8):
            problems.append(f"{path} has mode {mode:#o}, but the user-data declares {permissions}")

        user, _, group = entry.get("owner", "root:root").partition(":")
        expected_owner = (users.get(user), groups.get(group or user))
        if (status.st_uid, status.st_gid) != expected_owner:
            problems.append(
                f"{path} is owned by {status.st_uid}:{status.st_gid}, but the user-data "
                f"declares {entry.get('owner')} ({expected_owner[0]}:{expected_owner[1]})"
            )
    return named(applied, problems)


def id_table(root: Path, path: str) -> dict[str, int]:
    """Map names to ids from the root's /etc/passwd or /etc/group."""
    table = {}
    for line in resolve_in_root(root, path).read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 3:
            table[fields[0]] = int(fields[2])
    return table


def expected_milestones(applied: AppliedRoot) -> list[tuple[str, ...]]:
    """Return the calls first-boot.sh must make, in order. A download is ("curl", url)."""
    milestones = [
        ("modprobe", "overlay"),
        ("modprobe", "br_netfilter"),
        ("sysctl", "--system"),
        ("swapoff", "-a"),
        ("systemctl", "mask", "swap.target"),
        *[("curl", url) for _, _, url in RELEASE_FILES],
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "--now", "kubecc-pod-routes.service"),
        ("systemctl", "enable", "--now", "containerd.service"),
        ("systemctl", "enable", "--now", "kubelet.service"),
    ]
    if applied.artifact in {artifact_name(node) for node in BOOTSTRAP_NODES}:
        milestones.append(("systemctl", "enable", "--now", "--no-block", "kubecc-bootstrap.service"))
    return milestones


def milestone(call: StubCall) -> tuple[str, ...]:
    if call.program == "curl" and call.arguments:
        return ("curl", call.arguments[-1])
    return (call.program, *call.arguments)


def check_first_boot_calls(applied: AppliedRoot) -> list[str]:
    """Check the order of the recorded calls, the download URLs and the checksums checked."""
    calls = applied.stub_calls()
    recorded = [milestone(call) for call in calls]
    problems = []

    position = 0
    previous = "the start of first boot"
    for expected in expected_milestones(applied):
        try:
            position = recorded.index(expected, position) + 1
        except ValueError:
            problems.append(
                f"first-boot.sh did not call `{' '.join(expected)}` after {previous}; "
                f"recorded calls: {[str(call) for call in calls if call.program != 'logger']}"
            )
            break
        previous = f"`{' '.join(expected)}`"

    downloads = [call for call in calls if call.program == "curl"]
    urls = [call.arguments[-1] for call in downloads]
    expected_urls = [url for _, _, url in RELEASE_FILES]
    if urls != expected_urls:
        problems.append(f"first-boot.sh downloaded {urls}, expected {expected_urls}")

    # Each download is checked against the published sha256 right after it is fetched.
    checks = [call.stdin for call in calls if call.program == "sha256sum"]
    expected_checks = [
        f"{checksums.SHA256[name]['amd64'][version]}  {download_target(call)}"
        for (name, version, _), call in zip(RELEASE_FILES, downloads, strict=False)
    ]
    if checks != expected_checks:
        problems.append(f"first-boot.sh checked sha256 lines {checks}, expected {expected_checks}")

    systemctl_calls = [call for call in calls if call.program == "systemctl"]
    if systemctl_calls and milestone(systemctl_calls[-1]) != expected_milestones(applied)[-1]:
        problems.append(f"the last systemctl call is `{systemctl_calls[-1]}`")

    messages = [call.arguments[-1] for call in calls if call.program == "logger"]
    if not messages or messages[-1] != "first boot finished":
        problems.append(f"first-boot.sh did not finish, and its last log message is {messages[-1:]}")
    return named(applied, problems)


def download_target(call: StubCall) -> str:
    arguments = list(call.arguments)
    return arguments[arguments.index("-o") + 1] if "-o" in arguments else ""


def check_first_boot_results(applied: AppliedRoot) -> list[str]:
    """Check the kubelet client certificate link and the resolv.conf drop-in."""
    problems = []
    current = applied.upper / paths.KUBELET_CLIENT_CURRENT.lstrip("/")
    if not current.is_symlink():
        problems.append(f"{paths.KUBELET_CLIENT_CURRENT} is not a symlink")
    elif os.readlink(current) != paths.KUBELET_CLIENT_INITIAL:
        problems.append(
            f"{paths.KUBELET_CLIENT_CURRENT} points at {os.readlink(current)}, "
            f"expected {paths.KUBELET_CLIENT_INITIAL}"
        )

    # The kubelet reads its client certificate and key through the paths kubelet.conf names.
    kubeconfig_entry = next(
        entry for entry in cloud_config(applied)["write_files"]
        if entry["path"] == paths.KUBELET_KUBECONFIG
    )
    user = yaml.safe_load(kubeconfig_entry["content"])["users"][0]["user"]
    if user.get("client-certificate") != paths.KUBELET_CLIENT_CURRENT:
        problems.append(
            f"{paths.KUBELET_KUBECONFIG} names client-certificate {user.get('client-certificate')}, "
            f"not {paths.KUBELET_CLIENT_CURRENT}"
        )
    for key in ("client-certificate", "client-key"):
        if key in user and not resolve_in_root(applied.root, user[key]).is_file():
            problems.append(f"{paths.KUBELET_KUBECONFIG} names {key} {user[key]}, which does not exist")

    dropin = applied.upper / RESOLV_CONF_DROPIN.lstrip("/")
    if not dropin.is_file():
        problems.append(f"{RESOLV_CONF_DROPIN} was not written")
    else:
        if yaml.safe_load(dropin.read_text()) != EXPECTED_RESOLV_CONF_DROPIN:
            problems.append(f"{RESOLV_CONF_DROPIN} contains {dropin.read_text()!r}")
        if dropin.stat().st_mode & 0o7777 != 0o644:
            problems.append(f"{RESOLV_CONF_DROPIN} has mode {dropin.stat().st_mode & 0o7777:#o}")
    return named(applied, problems)


def check_units(applied: AppliedRoot) -> list[str]:
    """Check the written units with systemd-analyze verify, and that every enabled unit exists.

    The placeholder downloads leave no programs from the release archives (containerd, for
    one), so an executable stub is created for each missing ExecStart program under BIN_DIR.
    """
    units = {
        entry["path"].removeprefix(UNIT_DIR): entry["content"]
        for entry in cloud_config(applied)["write_files"]
        if entry["path"].startswith(UNIT_DIR)
    }
    problems = []
    for call in applied.stub_calls():
        if call.program == "systemctl" and call.arguments[:1] == ("enable",):
            problems += [
                f"first-boot.sh enables {unit}, which the user-data does not write"
                for unit in call.arguments[1:]
                if not unit.startswith("-") and unit not in units
            ]

    for content in units.values():
        for program in exec_programs(content):
            installed = resolve_in_root(applied.root, program)
            if program.startswith(BIN_DIR) and not installed.exists():
                installed.write_text("#!/bin/sh\n# Placeholder for a program from a release archive.\n")
                installed.chmod(0o755)

    result = verify_units(applied.root, applied.output, sorted(units))
    if result.returncode != 0 or result.stderr:
        problems.append(
            f"systemd-analyze verify {' '.join(sorted(units))} exited {result.returncode}:\n"
            f"{result.stderr}{result.stdout}"
        )
    return named(applied, problems)


def exec_programs(unit: str) -> list[str]:
    """Return the program path of every Exec*= line of a unit, without systemd's prefixes."""
    programs = []
    for line in unit.replace("\\\n", " ").splitlines():
        key, separator, value = line.partition("=")
        if separator and key.strip().startswith("Exec") and value.strip():
            programs.append(value.split()[0].lstrip("-@:+!"))
    return programs


# -- tests -------------------------------------------------------------------------------


def test_cloud_init_reports_success(booted: AppliedRoot) -> None:
    assert check_cloud_init_report(booted) == []


def test_written_files_match_user_data(booted: AppliedRoot) -> None:
    assert check_written_files(booted) == []


def test_first_boot_calls_in_order(booted: AppliedRoot) -> None:
    assert check_first_boot_calls(booted) == []


def test_first_boot_links_and_dropin(booted: AppliedRoot) -> None:
    assert check_first_boot_results(booted) == []


def test_units_pass_systemd_verify(booted: AppliedRoot) -> None:
    assert check_units(booted) == []


@pytest.mark.parametrize(("permissions", "applied_mode"), [(600, 0o1130), (384, 0o600)])
def test_integer_permissions_reported(
    lower_root: Path, tmp_path: Path, permissions: int, applied_mode: int,
) -> None:
    """An unquoted mode in write_files is reported by name, whatever mode cloud-init applies.

    cloud-init 22.4 reads an integer as a decimal mode number: 600 gives 0o1130, while 384
    happens to give 0o600.
    """
    target = "/var/lib/kubelet/config.yaml"
    document = yaml.safe_load(built_user_data(WORKER))
    index = next(i for i, entry in enumerate(document["write_files"]) if entry["path"] == target)
    document["write_files"][index]["permissions"] = permissions
    user_data = b"#cloud-config\n" + yaml.safe_dump(document, sort_keys=False).encode()
    artifact = artifact_name(WORKER)

    with applied_root(lower_root, tmp_path, artifact, user_data, WORKER) as applied:
        problems = check_applied(applied)
        first_boot_problems = check_first_boot_calls(applied)

    assert (
        f"{artifact}: {target} declares its permissions as the int {permissions}, not an octal "
        f"string such as '0600', and cloud-init applied mode {applied_mode:#o}"
    ) in problems
    assert (
        f"{artifact}: cloud-init schema: write_files.{index}.permissions ({target}): "
        f"{permissions} is not of type 'string'"
    ) in problems
    assert all(problem.startswith(f"{artifact}: ") for problem in problems)
    assert first_boot_problems == []
