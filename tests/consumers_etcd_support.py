"""Run Debian's etcd as the members of a generated cluster, one network namespace a node.

Every control plane gets its own network namespace, so each member owns 127.0.0.1 and its node
address, as on a real node. The generated flags listen on https://127.0.0.1:2379 and
http://127.0.0.1:2381 on every member, which could not work in one shared namespace. A shared
namespace would also make every peer connection leave from the address it dials, so etcd's
check of the peer client certificate against the remote address would see the wrong member.
The node namespaces hang off a bridge in one more namespace and have no route anywhere else.
So when etcd resolves the DNS names of a peer certificate that lacks the peer's IP, the lookup
fails at once with "network is unreachable" and no packet leaves the namespaces.

Only `ip` (iproute2) creates the namespaces. Everything runs as root, and the tests that use
this module fail with an install hint when a program is missing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import yaml

# program -> Debian package that installs it
REQUIRED_PROGRAMS = {"etcd": "etcd-server", "etcdctl": "etcd-client", "ip": "iproute2"}

# Timeouts of one etcdctl call, so that a member without a leader is reported unhealthy quickly.
ETCDCTL_TIMEOUT_FLAGS = ("--dial-timeout=1s", "--command-timeout=1s")
ETCDCTL_PROCESS_TIMEOUT_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.1
# Lines of etcd 3.4 and Go's crypto/tls that report a failed handshake or certificate check.
TLS_ERROR_MARKERS = ("tls:", "x509:", "bad certificate")
# etcd 3.4 log lines (capnslog format) that show which certificate a member rejected.
MEMBER_ADDED = re.compile(r"added member (?P<id>[0-9a-f]+) \[(?P<peer_urls>[^\]]+)\]")
CLIENT_REJECTED = re.compile(
    r'rejected connection from "(?P<address>.+):\d+" \(error "(?P<error>.*?)", ServerName'
)
SERVER_REJECTED = re.compile(r"peer (?P<id>[0-9a-f]+) could not connect: (?P<error>.*)$")
PEER_STATUS = re.compile(r"rafthttp: peer (?P<id>[0-9a-f]+) became (?P<status>active|inactive)")
# etcd 3.4 rejects a member add with "etcdserver: unhealthy cluster" (HTTP 503 through the
# JSON gateway) unless the member that serves it has been connected to every voting member for
# this long. This is etcdserver.HealthInterval in etcd 3.4's etcdserver/server.go, which
# EtcdServer.AddMember checks when --strict-reconfig-check is on, as it is by default.
RECONFIGURE_CONNECTED_SECONDS = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def require_programs(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the path of each required program, or fail the test with what to install.

    `extra` maps more programs that one test needs to their Debian packages.
    """
    required = {**REQUIRED_PROGRAMS, **(extra or {})}
    found = {program: shutil.which(program) for program in required}
    missing = sorted(program for program, path in found.items() if path is None)
    if missing:
        packages = " ".join(sorted({required[program] for program in missing}))
        pytest.fail(
            f"{', '.join(missing)} not found on PATH; the etcd consumer tests need them: "
            f"install them with `apt-get install -y --no-install-recommends {packages}`"
        )
    if os.geteuid() != 0:
        pytest.fail("the etcd consumer tests create network namespaces and must run as root")
    return {program: path for program, path in found.items() if path is not None}


# --- files decoded from user-data ------------------------------------------------------------


def decode_write_files(user_data: bytes) -> dict[str, dict[str, Any]]:
    """Return the `write_files` entries of a cloud-config document by node path."""
    document = yaml.safe_load(user_data)
    return {entry["path"]: entry for entry in document["write_files"]}


def node_path(root: Path, path: str) -> Path:
    """Return where an absolute node path lives inside a node's temporary root."""
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute node path, got {path!r}")
    return root / path.lstrip("/")


def write_node_root(files: Mapping[str, Mapping[str, Any]], root: Path) -> None:
    """Write every decoded file below `root` with the mode that cloud-init would set."""
    for path, entry in files.items():
        target = node_path(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["content"])
        target.chmod(int(entry["permissions"], 8))


def load_manifest(files: Mapping[str, Mapping[str, Any]], path: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(files[path]["content"])
    return manifest


def container_command(manifest: Mapping[str, Any], container: str) -> list[str]:
    """Return the `command` list of one container of a static Pod manifest."""
    for entry in manifest["spec"]["containers"]:
        if entry["name"] == container:
            command: list[str] = entry["command"]
            return command
    raise AssertionError(f"the manifest has no container named {container}")


def parse_flags(arguments: Sequence[str]) -> list[tuple[str, str]]:
    """Split `--name=value` arguments into (name, value) pairs in their original order."""
    flags = []
    for argument in arguments:
        name, separator, value = argument.partition("=")
        if not name.startswith("--") or not separator:
            raise AssertionError(f"expected a --name=value argument, got {argument!r}")
        flags.append((name.removeprefix("--"), value))
    return flags


# --- network namespaces ----------------------------------------------------------------------


def run_ip(*arguments: str) -> None:
    result = subprocess.run(
        ["ip", *arguments], capture_output=True, text=True, timeout=10, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"`ip {' '.join(arguments)}` failed with exit code {result.returncode}: "
            f"{result.stderr.strip()}; the etcd consumer tests need network namespaces, veth "
            "pairs and a bridge (root, kernel support for veth and bridge)"
        )


def host_prefix(address: IPAddress) -> str:
    return f"{address}/{address.max_prefixlen}"


@dataclass
class NodeNetwork:
    """Network namespaces named after one random prefix: a bridge and one per node."""

    prefix: str
    namespaces: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, IPAddress] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    def command(self, node: str, argv: Sequence[str]) -> list[str]:
        """Return `argv` wrapped to run inside the node's namespace."""
        return ["ip", "netns", "exec", self.namespaces[node], *argv]


def add_node(network: NodeNetwork, node: str, address: IPAddress) -> None:
    """Create the node's namespace on the bridge, with host routes to and from every other node.

    The namespace is recorded before anything else can fail, so `node_network` deletes it.
    """
    index = len(network.namespaces)
    namespace = f"{network.prefix}-{index}"
    run_ip("netns", "add", namespace)
    network.namespaces[node] = namespace
    network.addresses[node] = address

    port = f"port{index}"
    run_ip(
        "-n", network.switch, "link", "add", port, "type", "veth",
        "peer", "name", "eth0", "netns", namespace,
    )
    run_ip("-n", network.switch, "link", "set", port, "master", "br0")
    run_ip("-n", network.switch, "link", "set", port, "up")
    run_ip("-n", namespace, "link", "set", "lo", "up")
    run_ip("-n", namespace, "link", "set", "eth0", "up")
    # nodad: an IPv6 address is usable at once instead of after duplicate detection.
    nodad = ["nodad"] if address.version == 6 else []
    run_ip("-n", namespace, "addr", "add", host_prefix(address), "dev", "eth0", *nodad)

    for other, other_address in network.addresses.items():
        if other != node:
            run_ip("-n", namespace, "route", "add", host_prefix(other_address), "dev", "eth0")
            run_ip(
                "-n", network.namespaces[other], "route", "add", host_prefix(address),
                "dev", "eth0",
            )


@contextmanager
def node_network(addresses: Mapping[str, IPAddress]) -> Iterator[NodeNetwork]:
    """Create one namespace per node, each with its address, all joined by one bridge.

    A node's address is a /32 (or /128) address on its `eth0`, with a host route to every
    other node, so the namespaces reach each other and nothing else. `add_node` adds a node
    later. Deletes every namespace on exit, after the caller has stopped the processes inside
    them.
    """
    network = NodeNetwork(prefix=f"kubecc-etcd-{secrets.token_hex(4)}")
    switch_created = False
    try:
        run_ip("netns", "add", network.switch)
        switch_created = True
        run_ip("-n", network.switch, "link", "add", "br0", "type", "bridge")
        run_ip("-n", network.switch, "link", "set", "br0", "up")
        for node, address in addresses.items():
            add_node(network, node, address)
        yield network
    finally:
        created = [*network.namespaces.values(), *([network.switch] if switch_created else [])]
        for namespace in created:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)


# --- etcd members ----------------------------------------------------------------------------


def is_certificate_error(text: str) -> bool:
    return any(marker in text for marker in TLS_ERROR_MARKERS)


@dataclass
class Member:
    """One running etcd process and the file that receives its output."""

    node: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def active_peers(self) -> set[str]:
        """Return the IDs of the peers whose last status in the log is "active"."""
        status: dict[str, str] = {}
        for line in self.log().splitlines():
            if match := PEER_STATUS.search(line):
                status[match["id"]] = match["status"]
        return {peer for peer, value in status.items() if value == "active"}

    def tls_errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if is_certificate_error(line)]

    def rejections(self) -> list[Rejection]:
        """Return the distinct certificates of other members that this member rejected.

        A "client" rejection is a certificate presented by a connecting peer, or by etcdctl
        when it runs in that peer's namespace. A "server" rejection is the certificate of a
        peer this member dialed. "remote error" lines are skipped: the other side reports why.
        """
        peer_hosts: dict[str, str] = {}
        found: list[Rejection] = []
        for line in self.log().splitlines():
            if added := MEMBER_ADDED.search(line):
                peer_url = added["peer_urls"].split(",")[0]
                peer_hosts[added["id"]] = urlsplit(peer_url).hostname or peer_url
            elif client := CLIENT_REJECTED.search(line):
                # "EOF" and the like are handshakes that a client abandoned, not rejections.
                error = client["error"]
                if is_certificate_error(error) and not error.startswith("remote error"):
                    address = client["address"].strip("[]")
                    found.append(Rejection(self.node, address, "client", error))
            elif (server := SERVER_REJECTED.search(line)) and is_certificate_error(line):
                address = peer_hosts.get(server["id"], f"member {server['id']}")
                found.append(Rejection(self.node, address, "server", server["error"]))
        return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Rejection:
    """A certificate that a member rejected, and the address of the peer that presented it."""

    observer: str
    address: str
    role: Literal["client", "server"]
    error: str


@contextmanager
def running_members() -> Iterator[list[Member]]:
    """Yield a list that `start_member` fills, and SIGKILL every member in it on exit.

    SIGKILL by PID, because on SIGTERM each etcd 3.4 member waits for its peers: stopping
    three members at once took about 7 s in one run on a Debian 12 container.
    """
    members: list[Member] = []
    try:
        yield members
    finally:
        for member in members:
            if member.process.poll() is None:
                os.kill(member.process.pid, signal.SIGKILL)
        for member in members:
            member.process.wait(timeout=10)


def start_member(
    members: list[Member], network: NodeNetwork, node: str, argv: Sequence[str], log_path: Path
) -> Member:
    """Start etcd in the node's namespace and append it to `members`.

    `ip netns exec` replaces itself with etcd, so the process ID is etcd's.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            network.command(node, argv), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    member = Member(node, process, log_path)
    members.append(member)
    return member


def wait_until_reconfigurable(members: Sequence[Member], timeout_seconds: float) -> float:
    """Wait until each of `members` would accept a member add, and return the seconds waited.

    Polls the logs until each member has every other member as an active peer, then waits
    RECONFIGURE_CONNECTED_SECONDS more. The wait starts when a poll first finds every peer
    active, which is after etcd logged it, so the wait is never too short.
    """
    started = time.monotonic()
    while not all(len(member.active_peers()) == len(members) - 1 for member in members):
        fail_if_exited(members)
        if time.monotonic() - started > timeout_seconds:
            counts = ", ".join(f"{m.node}: {len(m.active_peers())}" for m in members)
            raise AssertionError(
                f"the etcd members did not all connect to each other within {timeout_seconds:.0f} s "
                f"(active peers {counts}):\n{describe_logs(members)}"
            )
        time.sleep(POLL_INTERVAL_SECONDS)
    time.sleep(RECONFIGURE_CONNECTED_SECONDS)
    return time.monotonic() - started


def describe_logs(members: Sequence[Member], max_lines: int = 15) -> str:
    """Return the last lines of every member's log, for assertion messages."""
    parts = []
    for member in members:
        lines = member.log().splitlines()[-max_lines:]
        state = "running" if member.process.poll() is None else (
            f"exited with code {member.process.returncode}"
        )
        parts.append(f"--- etcd member {member.node} ({state}):\n" + "\n".join(lines))
    return "\n".join(parts)


def fail_if_exited(members: Sequence[Member]) -> None:
    exited = [member.node for member in members if member.process.poll() is not None]
    if exited:
        raise AssertionError(
            f"etcd member(s) {', '.join(exited)} exited, so etcd rejected a generated flag or "
            f"file:\n{describe_logs(members)}"
        )


# --- etcdctl ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientTls:
    """The CA bundle, client certificate and key that etcdctl presents, as local paths."""

    ca: Path
    cert: Path
    key: Path

    def flags(self) -> list[str]:
        return [f"--cacert={self.ca}", f"--cert={self.cert}", f"--key={self.key}"]


def run_etcdctl(
    network: NodeNetwork, node: str, endpoints: Sequence[str], tls: ClientTls,
    arguments: Sequence[str],
) -> subprocess.CompletedProcess[str]:
    """Run `etcdctl` (API v3) inside the node's namespace."""
    argv = [
        "etcdctl", f"--endpoints={','.join(endpoints)}", *tls.flags(), *ETCDCTL_TIMEOUT_FLAGS,
        *arguments,
    ]
    return subprocess.run(
        network.command(node, argv), capture_output=True, text=True, check=False,
        timeout=ETCDCTL_PROCESS_TIMEOUT_SECONDS, env={**os.environ, "ETCDCTL_API": "3"},
    )


def endpoint_health(
    network: NodeNetwork, node: str, endpoints: Sequence[str], tls: ClientTls
) -> dict[str, str]:
    """Return "" for each healthy endpoint and etcdctl's error text for each other one."""
    result = run_etcdctl(network, node, endpoints, tls, ["endpoint", "health", "--write-out=json"])
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        reason = (result.stdout + result.stderr).strip() or f"exit code {result.returncode}"
        return {endpoint: reason for endpoint in endpoints}
    health = {endpoint: "no report" for endpoint in endpoints}
    for report in reports:
        health[report["endpoint"]] = "" if report["health"] else report.get("error", "unhealthy")
    return health


def wait_for_health(
    network: NodeNetwork, node: str, endpoints: Sequence[str], tls: ClientTls,
    members: Sequence[Member], timeout_seconds: float,
    give_up: Callable[[], bool] = lambda: False,
) -> tuple[float, dict[str, str]]:
    """Poll until every endpoint is healthy, the timeout passes or `give_up` returns True.

    Returns the seconds waited and the last health report. Raises as soon as a member exits.
    """
    started = time.monotonic()
    while True:
        fail_if_exited(members)
        health = endpoint_health(network, node, endpoints, tls)
        waited = time.monotonic() - started
        if not any(health.values()) or waited > timeout_seconds or give_up():
            return waited, health
        time.sleep(POLL_INTERVAL_SECONDS)


# --- shell scripts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptRun:
    """The outcome of a bash script run in a node's namespace."""

    returncode: int | None  # None when the timeout killed it
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        outcome = "timed out" if self.returncode is None else f"exit code {self.returncode}"
        return (
            f"{outcome} after {self.seconds:.1f} s\n--- stdout:\n{self.stdout}"
            f"--- stderr:\n{self.stderr}"
        )


def run_script(
    network: NodeNetwork, node: str, script: str, timeout_seconds: float
) -> ScriptRun:
    """Run `script` with bash inside the node's namespace.

    bash starts a new session, so on timeout SIGKILL reaches it and every child it started,
    such as curl or sleep.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        network.command(node, ["bash", "-c", script]), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    returncode: int | None
    try:
        stdout, stderr = process.communicate(timeout=timeout_seconds)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        returncode = None
    return ScriptRun(returncode, stdout, stderr, time.monotonic() - started)
