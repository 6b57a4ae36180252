"""Debian's etcd 3.4 as a real consumer of the generated etcd manifests and certificates.

Each control plane's etcd runs with the `command` of its generated static Pod manifest and the
files decoded from its own user-data, in a network namespace that has its node address
exactly as generated (see tests/consumers_etcd_support.py). Only file paths and the etcd 3.6
flag spellings that etcd 3.4 lacks are changed, as the tables below list.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import shlex
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from compiler import paths
from compiler.build import BuildOptions, render_output_files
from compiler.build import build as build_with_state
from compiler.loader import load_description_text
from compiler.model import Cluster
from compiler.output import OutputFile
from compiler.pki import bundle
from compiler.pki.bundle import PkiBundle
from compiler.pki.issue import build_pki
from compiler.state import load_state
from tests.conftest import EXAMPLES, STACKED_ETCD_EXAMPLE_NAMES, example_cluster
from tests.consumers_etcd_support import (
    ClientTls,
    Member,
    NodeNetwork,
    ScriptRun,
    add_node,
    container_command,
    decode_write_files,
    describe_logs,
    endpoint_health,
    fail_if_exited,
    load_manifest,
    node_network,
    node_path,
    parse_flags,
    require_programs,
    run_etcdctl,
    run_script,
    running_members,
    start_member,
    wait_for_health,
    wait_until_reconfigurable,
    write_node_root,
)

pytestmark = pytest.mark.consumer

ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
API_SERVER_MANIFEST = "/etc/kubernetes/manifests/kube-apiserver.yaml"
ETCD_PEER_CERT = "/etc/kubernetes/pki/etcd/peer.crt"
ETCD_PEER_KEY = "/etc/kubernetes/pki/etcd/peer.key"
HEALTHCHECK_CERT = "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
HEALTHCHECK_KEY = "/etc/kubernetes/pki/etcd/healthcheck-client.key"

# In runs of this file on a Debian 12 container, etcd 3.4.23 was healthy after 0.1 to 3.5 s,
# depending on how soon the first election succeeded. The bound only keeps a broken cluster from hanging the suite.
HEALTH_TIMEOUT_SECONDS = 20.0
# How long a negative test waits for the rejection to show in a log once the other members
# are healthy. In the same runs the first rejection was logged within a second.
REJECTION_LOG_TIMEOUT_SECONDS = 10.0

# The control plane that a second build with the same state adds to examples/ha.yaml.
ADDED_NODE = "cp-4"
ADDED_NODE_ENTRY = f"    - name: {ADDED_NODE}\n      role: control-plane\n      ip: 10.0.1.13\n"
# The etcd join block of the generated first-boot script runs from the line that starts with
# the first marker up to, not including, the line equal to the second.
JOIN_BLOCK_START = "# This control plane joins a running cluster"
JOIN_BLOCK_END = 'log "starting containerd"'
# Runs of the join block against healthy members took under 0.1 s on a Debian 12 container.
# The block retries up to 30 times, 10 s apart, so this bound keeps a failing block from
# hanging the suite. Its log lines show whether the first attempt succeeded.
JOIN_TIMEOUT_SECONDS = 15.0
# Programs that the join block runs, with the Debian packages that install them.
JOIN_PROGRAMS = {"bash": "bash", "curl": "curl"}

# --- how each generated flag reaches etcd 3.4 ------------------------------------------------
# Every argument of the generated etcd command must match exactly one table below, and
# test_flag_table_covers_manifest fails on any other, so a new generated flag cannot go untested.

# Passed as generated. Each member has its own namespace, so the loopback listeners
# (https://127.0.0.1:2379 and the metrics URL http://127.0.0.1:2381) do not collide.
PASSED_UNCHANGED = frozenset({
    "advertise-client-urls",
    "client-cert-auth",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "name",
    "peer-client-cert-auth",
    "snapshot-count",
})

# Absolute node paths: the value moves below the node's temporary root, which contains the
# files decoded from that node's user-data. etcd creates the data directory itself.
NODE_PATHS = frozenset({
    "cert-file",
    "data-dir",
    "key-file",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "trusted-ca-file",
})

# etcd 3.6 spellings, which etcd 3.4 rejects with exit code 2, to the `--experimental-*`
# spelling of the same setting that etcd 3.4 and 3.5 accept. Matched on the whole argument.
MAPPED = {
    "--feature-gates=InitialCorruptCheck=true": "--experimental-initial-corrupt-check=true",
    "--watch-progress-notify-interval=5s": "--experimental-watch-progress-notify-interval=5s",
}

# Flags left out, by name, with the reason. Nothing is dropped: etcd 3.4 accepts every
# other generated flag.
DROPPED: Mapping[str, str] = {}


def classify_argument(argument: str) -> str | None:
    """Return the table that covers one generated argument, or None."""
    if argument in MAPPED:
        return "mapped"
    ((name, _value),) = parse_flags([argument])
    if name in DROPPED:
        return "dropped"
    if name in PASSED_UNCHANGED:
        return "passed unchanged"
    if name in NODE_PATHS:
        return "node path"
    return None


def etcd_arguments(command: list[str], root: Path, etcd: str) -> list[str]:
    """Translate a generated etcd `command` into the argv of Debian's etcd 3.4."""
    assert command[0] == "etcd", f"the etcd container runs {command[0]!r}, expected etcd"
    argv = [etcd]
    for argument in command[1:]:
        table = classify_argument(argument)
        ((name, value),) = parse_flags([argument])
        if table == "mapped":
            argv.append(MAPPED[argument])
        elif table == "passed unchanged":
            argv.append(argument)
        elif table == "node path":
            argv.append(f"--{name}={node_path(root, value)}")
        elif table == "dropped":
            continue
        else:
            raise AssertionError(
                f"the generated etcd flag {argument} is in none of the tables PASSED_UNCHANGED, "
                "NODE_PATHS, MAPPED or DROPPED; add it to the one that fits etcd 3.4"
            )
    return argv


# --- builds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """One build of an example: the output files and the PKI it issued, CA keys included."""

    example: str
    cluster: Cluster
    files: dict[str, OutputFile]
    pki: PkiBundle

    @property
    def control_planes(self) -> list[str]:
        return [node.name for node in self.cluster.control_planes]

    def node_files(self, node: str) -> dict[str, dict[str, Any]]:
        return decode_write_files(self.files[f"nodes/{node}/user-data"].content)

    def etcd_command(self, node: str) -> list[str]:
        return container_command(load_manifest(self.node_files(node), ETCD_MANIFEST), "etcd")

    def etcd_flag(self, node: str, name: str) -> str:
        return dict(parse_flags(self.etcd_command(node)[1:]))[name]

    def api_server_flag(self, node: str, name: str) -> str:
        manifest = load_manifest(self.node_files(node), API_SERVER_MANIFEST)
        return dict(parse_flags(container_command(manifest, "kube-apiserver")[1:]))[name]


@cache
def built(example: str, generation: int = 0) -> Build:
    """Build an example once per generation. Each generation issues new CAs and keys.

    These are the two steps of `build_output_files`, run apart to keep the PKI: the etcd CA
    key never reaches a node, and a negative test signs a certificate with it.
    """
    cluster = example_cluster(example)
    pki = build_pki(cluster)
    return Build(example, cluster, render_output_files(cluster, pki), pki)


def built_with_state(example: str, text: str, work: Path, now: datetime) -> Build:
    """Build a description as `kubecc build` does with the state folder work/state.

    Every call with the same `work` reuses that state, so a second build extends the cluster
    of the first. The returned PKI is the one the state stores after the build.
    """
    description = load_description_text(text, f"{example}.yaml")
    options = BuildOptions(out_dir=work / "out", state_dir=work / "state", clock=lambda: now)
    result = build_with_state(description, options).result
    state = load_state(options.state_dir, result.cluster.name)
    pki = PkiBundle(dict(state.certificates), state.service_account)
    return Build(example, result.cluster, result.files, pki)


def artifact(node: str, path: str) -> str:
    return f"nodes/{node}/user-data: {path}"


# --- a running cluster -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunningCluster:
    build: Build
    network: NodeNetwork
    members: list[Member]
    roots: dict[str, Path]

    @property
    def operator(self) -> str:
        """The control plane where etcdctl runs, as an administrator logged in there would."""
        return self.build.control_planes[0]

    def endpoints(self, nodes: list[str] | None = None) -> list[str]:
        """Return each member's advertise-client-urls, as generated."""
        chosen = self.build.control_planes if nodes is None else nodes
        return [self.build.etcd_flag(node, "advertise-client-urls") for node in chosen]

    def healthcheck_tls(self) -> ClientTls:
        root = self.roots[self.operator]
        return ClientTls(
            ca=node_path(root, paths.ETCD_CA_CERT),
            cert=node_path(root, HEALTHCHECK_CERT),
            key=node_path(root, HEALTHCHECK_KEY),
        )

    def api_server_tls(self, node: str) -> ClientTls:
        """Return the etcd client files that the node's kube-apiserver manifest names."""
        root = self.roots[node]
        return ClientTls(
            ca=node_path(root, self.build.api_server_flag(node, "etcd-cafile")),
            cert=node_path(root, self.build.api_server_flag(node, "etcd-certfile")),
            key=node_path(root, self.build.api_server_flag(node, "etcd-keyfile")),
        )


@contextmanager
def started_cluster(
    build: Build, tmp_path: Path, replaced: Mapping[str, Mapping[str, bytes]] | None = None
) -> Iterator[RunningCluster]:
    """Start an etcd member for every control plane of a build, in its own namespace.

    `replaced` maps a node to files (node path to content) that overwrite the decoded ones.
    Members are killed and namespaces deleted on exit.
    """
    programs = require_programs()
    addresses = {
        node.name: ipaddress.ip_address(str(node.ip)) for node in build.cluster.control_planes
    }
    roots: dict[str, Path] = {}
    argvs: dict[str, list[str]] = {}
    for node in build.control_planes:
        roots[node] = tmp_path / node
        write_node_root(build.node_files(node), roots[node])
        for path, content in (replaced or {}).get(node, {}).items():
            node_path(roots[node], path).write_bytes(content)
        argvs[node] = etcd_arguments(build.etcd_command(node), roots[node], programs["etcd"])

    with ExitStack() as stack:
        network = stack.enter_context(node_network(addresses))
        members = stack.enter_context(running_members())
        for node, argv in argvs.items():
            start_member(members, network, node, argv, tmp_path / f"{node}.log")
        yield RunningCluster(build, network, members, roots)


def wait_until_healthy(
    cluster: RunningCluster, nodes: list[str], stop_on_rejection: bool = False
) -> tuple[float, dict[str, str]]:
    """Poll the members' health from the operator's namespace with the healthcheck client.

    With `stop_on_rejection`, polling ends once any member has rejected a certificate.
    """
    return wait_for_health(
        cluster.network, cluster.operator, cluster.endpoints(nodes), cluster.healthcheck_tls(),
        cluster.members, HEALTH_TIMEOUT_SECONDS,
        give_up=lambda: stop_on_rejection and any(m.rejections() for m in cluster.members),
    )


def describe_rejections(cluster: RunningCluster) -> str:
    """Name the generated file behind every certificate rejection in the members' logs."""
    nodes_by_address = {str(node.ip): node.name for node in cluster.build.cluster.control_planes}
    lines = []
    for member in cluster.members:
        for rejection in member.rejections():
            node = nodes_by_address.get(rejection.address)
            if node is None:
                subject = f"the certificate presented by {rejection.address}"
            else:
                subject = f"the etcd peer certificate of {node} ({artifact(node, ETCD_PEER_CERT)})"
            if rejection.role == "client" and node == cluster.operator:
                subject += (
                    f" or etcdctl's client certificate ({artifact(node, HEALTHCHECK_CERT)})"
                )
            lines.append(
                f"{subject} was rejected by {rejection.observer} as a {rejection.role} "
                f"certificate: {rejection.error}"
            )
    return "\n".join(lines)


def describe_unhealthy(cluster: RunningCluster, nodes: list[str], health: dict[str, str]) -> str:
    lines = []
    for node, endpoint in zip(nodes, cluster.endpoints(nodes), strict=True):
        if health[endpoint]:
            lines.append(
                f"etcd member {node} at {endpoint} (started from {artifact(node, ETCD_MANIFEST)} "
                f"and the certificates under {paths.ETCD_PKI_DIR}): {health[endpoint]}"
            )
    return "\n".join(lines)


def wait_for_log_lines(
    members: list[Member], pattern: re.Pattern[str], timeout_seconds: float
) -> list[str]:
    """Poll the members' logs until a line matches `pattern` or the timeout passes.

    Returns the matching lines as "node: line".
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        matches = [
            f"{member.node}: {line}"
            for member in members for line in member.log().splitlines() if pattern.search(line)
        ]
        if matches or time.monotonic() > deadline:
            return matches
        time.sleep(0.1)


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("example", STACKED_ETCD_EXAMPLE_NAMES)
def test_flag_table_covers_manifest(example: str) -> None:
    tables = [PASSED_UNCHANGED, NODE_PATHS, frozenset(DROPPED)]
    for index, table in enumerate(tables):
        for other in tables[index + 1:]:
            assert not table & other, f"flags in two tables: {sorted(table & other)}"

    build = built(example)
    for node in build.control_planes:
        command = build.etcd_command(node)
        assert command[0] == "etcd", artifact(node, ETCD_MANIFEST)
        unclassified = [argument for argument in command[1:] if classify_argument(argument) is None]
        assert not unclassified, (
            f"generated etcd flags in no table ({artifact(node, ETCD_MANIFEST)}): {unclassified}; "
            "add each to PASSED_UNCHANGED, NODE_PATHS, MAPPED or DROPPED"
        )


def test_unknown_flag_fails_translation(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="--new-flag=1 is in none of the tables"):
        etcd_arguments(["etcd", "--name=cp-1", "--new-flag=1"], tmp_path, "/usr/bin/etcd")
    with pytest.raises(AssertionError, match="in none of the tables"):
        etcd_arguments(["etcd", "--feature-gates=InitialCorruptCheck=false"], tmp_path, "etcd")


# Every example whose control planes run etcd, the 1,000-node one included.
@pytest.mark.parametrize("example", [*STACKED_ETCD_EXAMPLE_NAMES, "large"])
def test_members_form_healthy_cluster(example: str, tmp_path: Path) -> None:
    build = built(example)
    nodes = build.control_planes
    with started_cluster(build, tmp_path) as cluster:
        waited, health = wait_until_healthy(cluster, nodes, stop_on_rejection=True)
        assert not any(health.values()), (
            f"etcd of examples/{example}.yaml is not healthy after {waited:.1f} s, checked from "
            f"{cluster.operator} with {artifact(cluster.operator, HEALTHCHECK_CERT)}:\n"
            f"{describe_unhealthy(cluster, nodes, health)}\n{describe_rejections(cluster)}\n"
            f"{describe_logs(cluster.members)}"
        )

        assert list_members(cluster, cluster.endpoints()) == generated_members(build, nodes)

        assert not describe_rejections(cluster), describe_rejections(cluster)
        for member in cluster.members:
            assert not member.tls_errors(), (
                f"etcd member {member.node} logged TLS errors although every member is "
                f"healthy (its files come from nodes/{member.node}/user-data):\n"
                + "\n".join(member.tls_errors())
            )

        # The API server of the first control plane writes through its local member, and every
        # control plane's API server reads the value back through its own local member.
        writer = nodes[0]
        key = f"/kubecc-test/{example}"
        value = secrets.token_hex(8)
        writer_servers = build.api_server_flag(writer, "etcd-servers").split(",")
        put = run_etcdctl(
            cluster.network, writer, writer_servers, cluster.api_server_tls(writer),
            ["put", key, value],
        )
        assert put.returncode == 0, (
            f"put through {writer_servers} with the API server's etcd client certificate "
            f"({artifact(writer, build.api_server_flag(writer, 'etcd-certfile'))}) failed: "
            f"{put.stderr.strip()}"
        )
        assert put.stdout.strip() == "OK", put.stdout

        for reader in nodes:
            servers = build.api_server_flag(reader, "etcd-servers").split(",")
            got = run_etcdctl(
                cluster.network, reader, servers, cluster.api_server_tls(reader),
                ["get", key, "--print-value-only"],
            )
            certificate = artifact(reader, build.api_server_flag(reader, "etcd-certfile"))
            assert got.returncode == 0, (
                f"get through {servers} with the API server's etcd client certificate "
                f"({certificate}) failed: {got.stderr.strip()}"
            )
            assert got.stdout.strip() == value, f"{reader} read {got.stdout!r} from {servers}"


def list_members(
    cluster: RunningCluster, endpoints: list[str]
) -> dict[str, tuple[list[str], list[str]]]:
    """Return (peer URLs, client URLs) by member name from `etcdctl member list`.

    A member that was added but has not started yet has the name "" and no client URLs.
    """
    listed = run_etcdctl(
        cluster.network, cluster.operator, endpoints, cluster.healthcheck_tls(),
        ["member", "list", "--write-out=json"],
    )
    assert listed.returncode == 0, f"etcdctl member list through {endpoints}: {listed.stderr}"
    return {
        member.get("name", ""): (member["peerURLs"], member.get("clientURLs", []))
        for member in json.loads(listed.stdout)["members"]
    }


def generated_members(build: Build, nodes: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Return (peer URLs, client URLs) by member name as the generated etcd flags set them."""
    return {
        node: (
            [build.etcd_flag(node, "initial-advertise-peer-urls")],
            [build.etcd_flag(node, "advertise-client-urls")],
        )
        for node in nodes
    }


def assert_member_rejected(
    cluster: RunningCluster, node: str, certificate: str, evidence: re.Pattern[str]
) -> None:
    """Assert that the other members are healthy, `node` is not, and a log shows why."""
    others = [other for other in cluster.build.control_planes if other != node]
    waited, health = wait_until_healthy(cluster, others)
    assert not any(health.values()), (
        f"the members other than {node} did not become healthy in {waited:.1f} s, so the "
        f"rejection of {certificate} cannot be told apart from a broken setup:\n"
        f"{describe_unhealthy(cluster, others, health)}\n{describe_logs(cluster.members)}"
    )

    matches = wait_for_log_lines(cluster.members, evidence, REJECTION_LOG_TIMEOUT_SECONDS)
    fail_if_exited(cluster.members)
    (endpoint,) = cluster.endpoints([node])
    health = endpoint_health(cluster.network, cluster.operator, [endpoint], cluster.healthcheck_tls())
    assert health[endpoint], (
        f"etcd member {node} became healthy although it was started with {certificate}"
    )
    assert matches, (
        f"no member logged a TLS error matching {evidence.pattern!r} for {certificate} within "
        f"{REJECTION_LOG_TIMEOUT_SECONDS:.0f} s:\n{describe_logs(cluster.members)}"
    )


def test_peer_certificate_from_other_build_rejected(tmp_path: Path) -> None:
    build = built("ha")
    other = built("ha", generation=1)
    node = "cp-2"
    assert build.node_files(node)[paths.ETCD_CA_CERT] != other.node_files(node)[paths.ETCD_CA_CERT]

    other_files = other.node_files(node)
    replaced = {
        node: {
            ETCD_PEER_CERT: other_files[ETCD_PEER_CERT]["content"].encode(),
            ETCD_PEER_KEY: other_files[ETCD_PEER_KEY]["content"].encode(),
        },
    }
    certificate = (
        f"the etcd peer certificate of {node} from another build "
        f"({artifact(node, ETCD_PEER_CERT)} of the second build)"
    )
    with started_cluster(build, tmp_path, replaced) as cluster:
        assert_member_rejected(
            cluster, node, certificate,
            re.compile(r"x509: certificate signed by unknown authority"),
        )


def reissue_without_ip(
    certificate: x509.Certificate, address: str, signer: x509.Certificate,
    signer_key: CertificateIssuerPrivateKeyTypes,
) -> x509.Certificate:
    """Sign a copy of `certificate` whose subjectAltName lacks one IP address."""
    removed = x509.IPAddress(ipaddress.ip_address(address))
    builder = (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(signer.subject)
        .public_key(certificate.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
    )
    for extension in certificate.extensions:
        value = extension.value
        if isinstance(value, x509.SubjectAlternativeName):
            assert removed in value, f"{address} is not in {value}"
            value = x509.SubjectAlternativeName([name for name in value if name != removed])
        builder = builder.add_extension(value, critical=extension.critical)
    algorithm = certificate.signature_hash_algorithm
    assert algorithm is not None
    return builder.sign(signer_key, algorithm)  # type: ignore[arg-type]


def test_peer_certificate_without_node_ip_rejected(tmp_path: Path) -> None:
    build = built("ha")
    node = "cp-2"
    address = str(next(n.ip for n in build.cluster.control_planes if n.name == node))
    files = build.node_files(node)
    etcd_ca = build.pki.cert(bundle.ETCD_CA)
    assert etcd_ca.cert_pem.decode() == files[paths.ETCD_CA_CERT]["content"]

    peer = x509.load_pem_x509_certificate(files[ETCD_PEER_CERT]["content"].encode())
    peer_key = load_pem_private_key(files[ETCD_PEER_KEY]["content"].encode(), password=None)
    assert peer_key.public_key() == peer.public_key()
    reissued = reissue_without_ip(peer, address, etcd_ca.certificate, etcd_ca.private_key)
    replaced = {node: {ETCD_PEER_CERT: reissued.public_bytes(Encoding.PEM)}}

    certificate = (
        f"an etcd peer certificate of {node} without its IP {address} "
        f"(a copy of {artifact(node, ETCD_PEER_CERT)} signed by the generated etcd CA)"
    )
    with started_cluster(build, tmp_path, replaced) as cluster:
        assert_member_rejected(
            cluster, node, certificate,
            # etcd's check of a peer's client certificate against its remote address, and
            # Go's check of a peer's server certificate against the dialed address.
            re.compile(
                rf'"{re.escape(address)}\\?" does not match any of|, not {re.escape(address)}\b'
            ),
        )


def etcd_join_script(first_boot: str, root: Path) -> str:
    """Return the etcd join block of a generated first-boot script as a script to run.

    The block runs under the generated script's `set` options, with a `log` that writes only
    to stderr (the generated one also writes to the journal). Only its certificate paths
    change, to the files below `root`. Everything else stays as generated, curl's timeouts and
    the 10 s sleep between attempts included.
    """
    lines = first_boot.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith(JOIN_BLOCK_START)]
    ends = [index for index, line in enumerate(lines) if line == JOIN_BLOCK_END]
    where = artifact(ADDED_NODE, paths.FIRST_BOOT_SCRIPT)
    assert len(starts) == 1, f"{where} has {len(starts)} lines starting {JOIN_BLOCK_START!r}"
    assert len(ends) == 1, f"{where} has {len(ends)} lines {JOIN_BLOCK_END!r}"
    assert starts[0] < ends[0], f"{where} has {JOIN_BLOCK_END!r} before the join block"
    block = "\n".join(lines[starts[0]:ends[0]]) + "\n"

    shell_options = [line for line in lines if line.startswith("set -")]
    assert len(shell_options) == 1, f"{where} has {len(shell_options)} `set -` lines"

    certificates = (paths.ETCD_CA_CERT, HEALTHCHECK_CERT, HEALTHCHECK_KEY)
    rest = block
    for path in certificates:
        assert block.count(path) == 1, f"the join block in {where} names {path} {block.count(path)} times"
        rest = rest.replace(path, "")
    assert "/etc/" not in rest, f"the join block in {where} names another node path:\n{block}"
    for path in certificates:
        block = block.replace(path, shlex.quote(str(node_path(root, path))))

    log_function = "log() {\n    printf '%s\\n' \"$*\" >&2\n}\n"
    return f"{shell_options[0]}\n{log_function}{block}"


def describe_join(run: ScriptRun, script: str) -> str:
    source = artifact(ADDED_NODE, paths.FIRST_BOOT_SCRIPT)
    return f"the etcd join block of {source}, run as:\n{script}\n{run.describe()}"


def test_added_control_plane_joins(tmp_path: Path) -> None:
    programs = require_programs(JOIN_PROGRAMS)
    work = tmp_path / "kubecc"
    now = datetime.now(UTC)
    ha = (EXAMPLES / "ha.yaml").read_text()
    first = built_with_state("ha", ha, work, now)

    with started_cluster(first, tmp_path) as running:
        waited, health = wait_until_healthy(running, first.control_planes, stop_on_rejection=True)
        assert not any(health.values()), (
            f"the first build's etcd members are not healthy after {waited:.1f} s:\n"
            f"{describe_unhealthy(running, first.control_planes, health)}\n"
            f"{describe_rejections(running)}\n{describe_logs(running.members)}"
        )

        # The second build, with the same state, adds cp-4 before the workers.
        second = built_with_state(
            "ha", ha.replace("    - name: worker-1\n", ADDED_NODE_ENTRY + "    - name: worker-1\n"),
            work, now,
        )
        nodes = second.control_planes
        assert nodes == [*first.control_planes, ADDED_NODE]
        for node in first.control_planes:
            assert second.etcd_command(node) == first.etcd_command(node), (
                f"the second build changed the etcd flags of the running member {node} "
                f"({artifact(node, ETCD_MANIFEST)})"
            )
        cluster = replace(running, build=second)

        # cp-4 gets a namespace on the same bridge and its own decoded files.
        root = tmp_path / ADDED_NODE
        files = second.node_files(ADDED_NODE)
        write_node_root(files, root)
        cluster.roots[ADDED_NODE] = root
        (added,) = [node for node in second.cluster.control_planes if node.name == ADDED_NODE]
        add_node(cluster.network, ADDED_NODE, ipaddress.ip_address(str(added.ip)))
        script = etcd_join_script(files[paths.FIRST_BOOT_SCRIPT]["content"], root)
        peer_url = second.etcd_flag(ADDED_NODE, "initial-advertise-peer-urls")
        (first_endpoint,) = cluster.endpoints(first.control_planes[:1])

        # Healthy is not enough for etcd to accept a member add (see
        # RECONFIGURE_CONNECTED_SECONDS), and the block must succeed on its first attempt.
        wait_until_reconfigurable(running.members, HEALTH_TIMEOUT_SECONDS)
        joined = run_script(cluster.network, ADDED_NODE, script, JOIN_TIMEOUT_SECONDS)
        assert joined.returncode == 0, describe_join(joined, script)
        assert f"added {peer_url} as an etcd member through {first_endpoint}" in (
            joined.stderr.splitlines()
        ), describe_join(joined, script)
        # Exactly these two lines mean that the first attempt succeeded at the first endpoint,
        # with no curl error and no retry.
        assert joined.stderr.splitlines() == [
            "joining the running etcd members",
            f"added {peer_url} as an etcd member through {first_endpoint}",
        ], describe_join(joined, script)

        # The member that served the add has applied it, so its non-linearizable list shows
        # the new member, which has no name until it starts.
        assert list_members(cluster, [first_endpoint]) == {
            **generated_members(first, first.control_planes), "": ([peer_url], []),
        }

        argv = etcd_arguments(second.etcd_command(ADDED_NODE), root, programs["etcd"])
        start_member(
            cluster.members, cluster.network, ADDED_NODE, argv, tmp_path / f"{ADDED_NODE}.log"
        )
        waited, health = wait_until_healthy(cluster, nodes, stop_on_rejection=True)
        assert not any(health.values()), (
            f"etcd is not healthy {waited:.1f} s after {ADDED_NODE} started with "
            f"--initial-cluster-state=existing:\n{describe_unhealthy(cluster, nodes, health)}\n"
            f"{describe_rejections(cluster)}\n{describe_logs(cluster.members)}"
        )

        # etcd 3.4 serves clients only after the member's publish of its name and client URLs
        # has been applied on it (EtcdServer.publish), so listing through it shows them.
        added_endpoints = cluster.endpoints([ADDED_NODE])
        assert list_members(cluster, added_endpoints) == generated_members(second, nodes)

        rerun = run_script(cluster.network, ADDED_NODE, script, JOIN_TIMEOUT_SECONDS)
        assert rerun.returncode == 0, describe_join(rerun, script)
        assert f"etcd already lists {peer_url} as a member" in rerun.stderr.splitlines(), (
            describe_join(rerun, script)
        )
        assert rerun.stderr.splitlines() == [
            "joining the running etcd members",
            f"etcd already lists {peer_url} as a member",
        ], describe_join(rerun, script)
        assert list_members(cluster, added_endpoints) == generated_members(second, nodes)

        assert not describe_rejections(cluster), describe_rejections(cluster)
