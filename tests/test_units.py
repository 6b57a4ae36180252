"""systemd units: every generated unit passes `systemd-analyze verify` with no output.

Also contains a reader of unit files and Exec*= command lines that follows systemd 252's rules
(line continuation, `%` specifiers, quotes, C escapes, `$` expansion). It is only a second
check beside systemd-analyze, which reports bad syntax but never prints the argv it parsed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from compiler import paths
from compiler.files import FileMap
from compiler.model import Cluster, Node
from compiler.render.host import build_host_files
from tests.conftest import MINIMAL, cluster_from_text, example_cluster

pytestmark = pytest.mark.consumer

SYSTEM_UNITS = Path("/lib/systemd/system")
STUB_SCRIPT = b"#!/bin/sh\n"
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost")
EXEC_PREFIXES = "-@:+!"
WHITESPACE = " \t\n\r"

SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}


# -- reader ------------------------------------------------------------------------------

def read_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse a unit file into section -> [(key, value)], joining continued lines.

    systemd replaces a line-ending backslash with a space and appends the next line.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    pending = ""
    # Only "\n" ends a line: str.splitlines() would also split at U+2028 and similar.
    for line in text.split("\n"):
        if not pending and (not line.strip() or line.lstrip().startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(text: str, section: str, key: str) -> list[str]:
    return [value for name, value in read_unit(text).get(section, []) if name == key]


def expand_specifiers(text: str) -> str:
    """Expand `%%`; any other specifier is unexpected in kubecc's units."""
    result, index = [], 0
    while index < len(text):
        if text[index] == "%":
            if text[index + 1 : index + 2] != "%":
                raise ValueError(f"unexpected specifier in {text!r}")
            result.append("%")
            index += 2
            continue
        result.append(text[index])
        index += 1
    return "".join(result)


def read_escape(text: str, index: int) -> tuple[str, int]:
    """Decode the C escape starting at text[index] (a backslash); return it and the next index."""
    code = text[index + 1 : index + 2]
    if code in SIMPLE_ESCAPES:
        return SIMPLE_ESCAPES[code], index + 2
    widths = {"x": 2, "u": 4, "U": 8}
    if code in widths:
        digits = text[index + 2 : index + 2 + widths[code]]
        value = int(digits, 16)
        if value == 0:
            raise ValueError("systemd rejects an escaped NUL")
        return chr(value), index + 2 + widths[code]
    if code.isdigit():
        return chr(int(text[index + 1 : index + 4], 8)), index + 4
    raise ValueError(f"unknown escape \\{code} in {text!r}")


def expand_dollars(word: str) -> str:
    """Apply systemd's exec-time `$` expansion with an empty environment: `$$` is `$`."""
    result, index = [], 0
    while index < len(word):
        if word[index] == "$":
            if word[index + 1 : index + 2] != "$":
                raise ValueError(f"unexpected variable reference in {word!r}")
            result.append("$")
            index += 2
            continue
        result.append(word[index])
        index += 1
    return "".join(result)


def parse_exec_words(value: str) -> tuple[str, list[str]]:
    """Split an Exec*= value into its prefix characters and argv, as systemd 252 does."""
    text = expand_specifiers(value).lstrip(WHITESPACE)
    prefix = ""
    while text and text[0] in EXEC_PREFIXES:
        prefix, text = prefix + text[0], text[1:]

    words: list[str] = []
    index = 0
    while True:
        while index < len(text) and text[index] in WHITESPACE:
            index += 1
        if index == len(text):
            return prefix, words
        start = index
        word, index = read_word(text, index)
        if text[start:index] == ";":
            raise ValueError(f"a bare ; starts a second command in {value!r}")
        words.append(expand_dollars(word))


def read_word(text: str, index: int) -> tuple[str, int]:
    chars: list[str] = []
    quote = ""
    while index < len(text):
        char = text[index]
        if not quote and char in WHITESPACE:
            break
        if char == "\\":
            decoded, index = read_escape(text, index)
            chars.append(decoded)
            continue
        if not quote and char in "\"'":
            quote = char
        elif char == quote:
            quote = ""
        else:
            chars.append(char)
        index += 1
    if quote:
        raise ValueError(f"unterminated quote in {text!r}")
    return "".join(chars), index


# -- systemd-analyze verify --------------------------------------------------------------

@pytest.fixture(scope="module")
def system_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copy /lib/systemd/system once per module; each root hard-links it."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing; install the systemd package")
    copy = tmp_path_factory.mktemp("system-units") / "system"
    shutil.copytree(SYSTEM_UNITS, copy, symlinks=True)
    return copy


def build_root(root: Path, system_units: Path, units: dict[str, str]) -> None:
    """Write a verify root: the stock units, the given units and a stub for every Exec path."""
    shutil.copytree(system_units, root / "lib/systemd/system", symlinks=True,
                    copy_function=os.link)
    unit_dir = root / paths.SYSTEMD_DIR.lstrip("/")
    unit_dir.mkdir(parents=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text, encoding="utf-8")
        for key in EXEC_KEYS:
            for value in unit_values(text, "Service", key):
                _, argv = parse_exec_words(value)
                write_stub(root, argv[0])


def write_stub(root: Path, executable: str) -> None:
    stub = root / executable.lstrip("/")
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_bytes(STUB_SCRIPT)
    stub.chmod(0o755)


def verify_units(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *names],
        capture_output=True, text=True, timeout=60, check=False,
    )


def assert_units_verify(tmp_path: Path, system_units: Path, units: dict[str, str]) -> None:
    build_root(tmp_path / "root", system_units, units)
    result = verify_units(tmp_path / "root", sorted(units))
    assert result.stderr == ""
    assert result.returncode == 0


def node_units(files: FileMap) -> dict[str, str]:
    prefix = paths.SYSTEMD_DIR + "/"
    return {
        path.removeprefix(prefix): file.content.decode("utf-8")
        for path, file in files.items()
        if path.startswith(prefix)
    }


def kubelet_argv(cluster: Cluster, node: Node) -> list[str]:
    unit = build_host_files(cluster, node)[paths.KUBELET_UNIT].content.decode("utf-8")
    (value,) = unit_values(unit, "Service", "ExecStart")
    return parse_exec_words(value)[1]


# -- tests -------------------------------------------------------------------------------

def test_units_verify_every_example_node(
    example: Cluster, system_units: Path, tmp_path: Path
) -> None:
    for node in example.nodes:
        units = node_units(build_host_files(example, node))
        assert_units_verify(tmp_path / node.name, system_units, units)


def test_units_verify_large_example_sample(system_units: Path, tmp_path: Path) -> None:
    large = example_cluster("large")
    for node in (large.node("cp-1"), large.node("worker-0001")):
        units = node_units(build_host_files(large, node))
        assert_units_verify(tmp_path / node.name, system_units, units)


def test_units_verify_preinstalled(system_units: Path, tmp_path: Path) -> None:
    text = MINIMAL.replace("controlPlane:", "install: {method: preinstalled}\n  controlPlane:")
    cluster = cluster_from_text(text)
    for node in cluster.nodes:
        units = node_units(build_host_files(cluster, node))
        assert_units_verify(tmp_path / node.name, system_units, units)


BROKEN_UNITS = [
    ("unknown-specifier", '[Service]\nExecStart=/opt/stub "100%z"\n'),
    ("unknown-escape", '[Service]\nExecStart=/opt/stub "a\\qb"\n'),
    ("unknown-key", "[Service]\nExecStart=/opt/stub\nNoSuchKey=1\n"),
]


@pytest.mark.parametrize("text", [text for _, text in BROKEN_UNITS],
                         ids=[name for name, _ in BROKEN_UNITS])
def test_verify_reports_broken_unit(system_units: Path, tmp_path: Path, text: str) -> None:
    root = tmp_path / "root"
    build_root(root, system_units, {})
    (root / paths.SYSTEMD_DIR.lstrip("/") / "broken.service").write_text(text)
    write_stub(root, "/opt/stub")
    result = verify_units(tmp_path / "root", ["broken.service"])
    assert "broken.service" in result.stderr


HOSTILE_LABELS = (
    ("quotes", "it's \"quoted\""),
    ("specifiers", "100% %n %%"),
    ("variables", "$HOME ${HOME} $(id) `id`"),
    ("separators", "; # a && b"),
    ("backslashes", "a\\b\\"),
    ("newline", "one\ntwo"),
    ("unicode", "zoné 東京 \u2028"),
)


@pytest.mark.parametrize("value", [value for _, value in HOSTILE_LABELS],
                         ids=[name for name, _ in HOSTILE_LABELS])
def test_kubelet_unit_hostile_label(
    minimal: Cluster, system_units: Path, tmp_path: Path, value: str
) -> None:
    node = dataclasses.replace(minimal.nodes[1], labels=(("example.com/a", value),))
    cluster = dataclasses.replace(minimal, nodes=(minimal.nodes[0], node))
    units = node_units(build_host_files(cluster, node))

    assert_units_verify(tmp_path, system_units, units)
    argv = kubelet_argv(cluster, node)
    assert f"--node-labels=example.com/a={value}" in argv
    assert len(argv) == 7


def test_kubelet_unit_argv(minimal: Cluster) -> None:
    node = minimal.node("worker-1")
    assert kubelet_argv(minimal, node) == [
        "/usr/local/bin/kubelet",
        "--config=/var/lib/kubelet/config.yaml",
        "--config-dir=/etc/kubernetes/kubelet.conf.d",
        "--hostname-override=worker-1",
        "--kubeconfig=/etc/kubernetes/kubelet.conf",
        "--node-ip=10.0.0.20",
    ]


def test_kubelet_unit_hostname_override_differs() -> None:
    text = MINIMAL.replace("ip: 10.0.0.20}", "ip: 10.0.0.20, hostname: PHOST01}")
    cluster = cluster_from_text(text)
    argv = kubelet_argv(cluster, cluster.node("worker-1"))
    assert "--hostname-override=worker-1" in argv


UNIT_SETTINGS = [
    ("containerd.service", "Unit", "After", "network.target local-fs.target"),
    ("containerd.service", "Service", "ExecStartPre", "-/sbin/modprobe overlay"),
    ("containerd.service", "Service", "ExecStart", "/usr/local/bin/containerd"),
    ("containerd.service", "Service", "Delegate", "yes"),
    ("containerd.service", "Service", "KillMode", "process"),
    ("containerd.service", "Service", "Restart", "always"),
    ("containerd.service", "Service", "RestartSec", "5"),
    ("containerd.service", "Service", "LimitNOFILE", "infinity"),
    ("containerd.service", "Service", "TasksMax", "infinity"),
    ("containerd.service", "Service", "OOMScoreAdjust", "-999"),
    ("kubelet.service", "Unit", "After", "network-online.target containerd.service"),
    ("kubelet.service", "Unit", "Requires", "containerd.service"),
    ("kubelet.service", "Unit", "Wants", "network-online.target"),
    ("kubelet.service", "Unit", "StartLimitIntervalSec", "0"),
    ("kubelet.service", "Service", "Restart", "always"),
    ("kubelet.service", "Service", "RestartSec", "10"),
    ("kubecc-pod-routes.service", "Unit", "After", "network-online.target"),
    ("kubecc-pod-routes.service", "Unit", "Wants", "network-online.target"),
    ("kubecc-pod-routes.service", "Unit", "Before", "kubelet.service"),
    ("kubecc-pod-routes.service", "Service", "Type", "oneshot"),
    ("kubecc-pod-routes.service", "Service", "RemainAfterExit", "yes"),
    ("kubecc-pod-routes.service", "Service", "ExecStart", paths.POD_ROUTES_SCRIPT),
    ("kubecc-pod-routes.service", "Install", "WantedBy", "multi-user.target"),
    ("kubecc-bootstrap.service", "Unit", "After", "kubelet.service"),
    ("kubecc-bootstrap.service", "Service", "Type", "oneshot"),
    ("kubecc-bootstrap.service", "Service", "Restart", "on-failure"),
    ("kubecc-bootstrap.service", "Service", "RestartSec", "30"),
    ("kubecc-bootstrap.service", "Service", "ExecStart", paths.BOOTSTRAP_SCRIPT),
]


@pytest.mark.parametrize(
    ("unit", "section", "key", "expected"), UNIT_SETTINGS,
    ids=[f"{unit}-{key}" for unit, _, key, _ in UNIT_SETTINGS],
)
def test_unit_setting(minimal: Cluster, unit: str, section: str, key: str, expected: str) -> None:
    units = node_units(build_host_files(minimal, minimal.first_control_plane))
    assert unit_values(units[unit], section, key) == [expected]


def test_units_only_on_their_nodes(minimal: Cluster) -> None:
    worker = node_units(build_host_files(minimal, minimal.node("worker-1")))
    control_plane = node_units(build_host_files(minimal, minimal.node("cp-1")))
    assert sorted(worker) == ["containerd.service", "kubecc-pod-routes.service", "kubelet.service"]
    assert "kubecc-bootstrap.service" in control_plane


READER_CASES = [
    ("bare", "/bin/x a b", ("", ["/bin/x", "a", "b"])),
    ("prefix", "-/sbin/modprobe overlay", ("-", ["/sbin/modprobe", "overlay"])),
    ("quoted", '/bin/x "a b" c', ("", ["/bin/x", "a b", "c"])),
    ("escapes", r'/bin/x "a\"b\\c\nd"', ("", ["/bin/x", 'a"b\\c\nd'])),
    ("specifier", '/bin/x "100%%"', ("", ["/bin/x", "100%"])),
    ("dollar", '/bin/x "$$(id)"', ("", ["/bin/x", "$(id)"])),
    ("quoted-semicolon", '/bin/x ";"', ("", ["/bin/x", ";"])),
]


@pytest.mark.parametrize(("value", "expected"), [(v, e) for _, v, e in READER_CASES],
                         ids=[name for name, _, _ in READER_CASES])
def test_exec_reader(value: str, expected: tuple[str, list[str]]) -> None:
    assert parse_exec_words(value) == expected


@pytest.mark.parametrize("value", ["/bin/x ;", "/bin/x %n", "/bin/x $HOME", "/bin/x 'a"],
                         ids=["semicolon", "specifier", "variable", "unterminated"])
def test_exec_reader_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_exec_words(value)
