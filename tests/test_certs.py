"""certs list, check and renew: rows, expiry, CA safety and the renewal bundles."""

from __future__ import annotations

import base64
import json
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from compiler import certs, delivery, paths
from compiler.build import BuildOptions, StatefulBuild, build
from compiler.cli import main
from compiler.errors import InputError, StateError
from compiler.loader import Description, load_description_text
from compiler.pki.inventory import CERTIFICATES
from compiler.render.kubeconfig import KUBECONFIGS
from compiler.state import STATE_FILE, load_state
from tests.conftest import EXAMPLES

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HARD_WAY_PATH = EXAMPLES / "hard-way.yaml"
HARD_WAY = HARD_WAY_PATH.read_text()
CAS = ("ca", "front-proxy-ca", "etcd-ca")
LEAF_COUNT = 20
CertKey = tuple[str, str | None]


def description() -> Description:
    return load_description_text(HARD_WAY, "hard-way.yaml")


def build_at(work: Path, now: datetime = START, passphrase: str | None = None) -> StatefulBuild:
    options = BuildOptions(
        out_dir=work / "out", state_dir=work / "state", clock=lambda: now, passphrase=passphrase
    )
    return build(description(), options)


def renew(
    work: Path, names: list[str], renew_all: bool = False, now: datetime = START,
    passphrase: str | None = None,
) -> certs.Renewal:
    return certs.renew_certificates(
        description(), names, renew_all, work / "out", work / "state", lambda: now, passphrase
    )


def serials(work: Path, passphrase: str | None = None) -> dict[CertKey, int]:
    state = load_state(work / "state", "hard-way", passphrase)
    return {key: issued.certificate.serial_number for key, issued in state.certificates.items()}


def state_entries(work: Path) -> dict[CertKey, dict[str, str]]:
    """Return the state file's certificate entries, PEM text as stored, by (name, node)."""
    payload = json.loads((work / "state" / STATE_FILE).read_text())["payload"]
    return {(entry["name"], entry["node"]): entry for entry in payload["certificates"]}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def row_for(rows: list[certs.CertificateRow], name: str, node: str | None) -> certs.CertificateRow:
    return next(row for row in rows if (row.name, row.node) == (name, node))


# --- list -----------------------------------------------------------------------------------


def test_list_order_cas_inventory_nodes(tmp_path: Path) -> None:
    build_at(tmp_path)
    rows = certs.list_certificates(description(), tmp_path / "state", lambda: START)

    assert len(rows) == len(CAS) + LEAF_COUNT
    assert [row.name for row in rows[:3]] == list(CAS)
    inventory = [spec.name for spec in CERTIFICATES]
    assert [row.name for row in rows] == sorted(
        (row.name for row in rows), key=inventory.index
    )
    assert [row.node for row in rows if row.name == "kubelet-client"] == [
        "server", "node-0", "node-1",
    ]


@pytest.mark.parametrize(
    ("name", "node", "subject", "sans", "signer"),
    [
        ("ca", None, "CN=kubernetes", ("DNS:kubernetes",), None),
        ("apiserver", "server", "CN=kube-apiserver", (
            "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local", "DNS:server", "IP:10.32.0.1",
            "IP:10.240.0.10",
        ), "ca"),
        ("etcd-peer", "server", "CN=server", (
            "DNS:server", "DNS:localhost", "IP:10.240.0.10", "IP:127.0.0.1", "IP:::1",
        ), "etcd-ca"),
        ("front-proxy-client", None, "CN=front-proxy-client", (), "front-proxy-ca"),
        ("kubelet-serving", "node-0", "CN=system:node:node-0,O=system:nodes",
         ("DNS:node-0", "IP:10.240.0.20"), "ca"),
        ("admin", None, "CN=kubernetes-admin,O=kubecc:cluster-admins", (), "ca"),
    ],
    ids=["ca", "apiserver", "etcd-peer", "front-proxy-client", "kubelet-serving", "admin"],
)
def test_list_row_fields(
    tmp_path: Path, name: str, node: str | None, subject: str, sans: tuple[str, ...],
    signer: str | None,
) -> None:
    build_at(tmp_path)
    rows = certs.list_certificates(description(), tmp_path / "state", lambda: START)
    row = row_for(rows, name, node)
    assert row.subject == subject
    assert row.sans == sans
    assert row.signer == signer


def test_list_days_left_from_clock(tmp_path: Path) -> None:
    build_at(tmp_path)
    later = START + timedelta(days=10)
    rows = certs.list_certificates(description(), tmp_path / "state", lambda: later)
    assert row_for(rows, "ca", None).days_left == 3650 - 10
    assert row_for(rows, "apiserver", "server").days_left == 365 - 10
    assert row_for(rows, "apiserver", "server").not_after == START + timedelta(days=365)

    # Whole days are rounded down, and an expired certificate has a negative count.
    a_second_later = certs.list_certificates(
        description(), tmp_path / "state", lambda: later + timedelta(seconds=1)
    )
    assert row_for(a_second_later, "apiserver", "server").days_left == 365 - 11
    expired = certs.list_certificates(
        description(), tmp_path / "state", lambda: START + timedelta(days=366)
    )
    assert row_for(expired, "apiserver", "server").days_left == -1


def test_list_table_columns(tmp_path: Path) -> None:
    build_at(tmp_path)
    rows = certs.list_certificates(description(), tmp_path / "state", lambda: START)
    lines = certs.format_certificate_table(rows)

    assert re.split(r" {2,}", lines[0]) == [
        "NAME", "NODE", "SUBJECT", "SANS", "NOT AFTER", "DAYS LEFT", "SIGNER",
    ]
    assert lines[1].split() == [
        "ca", "-", "CN=kubernetes", "DNS:kubernetes", "2036-11-28T12:00:00Z", "3650",
        "self-signed",
    ]
    assert lines[-1].split() == [
        "kube-proxy", "node-1", "CN=system:kube-proxy", "-", "2027-12-01T12:00:00Z", "365", "ca",
    ]
    assert len(lines) == 1 + len(rows)


def test_list_only_reads_state(tmp_path: Path) -> None:
    build_at(tmp_path)
    before = snapshot(tmp_path)
    certs.list_certificates(description(), tmp_path / "state", lambda: START)
    assert snapshot(tmp_path) == before


def test_list_missing_state_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StateError) as caught:
        certs.list_certificates(description(), tmp_path / "state", lambda: START)
    assert str(caught.value) == (
        f"{tmp_path / 'state'} has no state.json, so there are no certificates to read"
    )
    assert caught.value.hint == (
        "run kubecc build first, or pass the cluster's state folder with --state"
    )
    assert not (tmp_path / "state").exists()


def test_list_encrypted_state_needs_passphrase(tmp_path: Path) -> None:
    build_at(tmp_path, passphrase="correct horse")
    rows = certs.list_certificates(
        description(), tmp_path / "state", lambda: START, passphrase="correct horse"
    )
    assert len(rows) == len(CAS) + LEAF_COUNT
    with pytest.raises(StateError):
        certs.list_certificates(description(), tmp_path / "state", lambda: START)


# --- check ----------------------------------------------------------------------------------


def test_check_fresh_state_has_none(tmp_path: Path) -> None:
    build_at(tmp_path)
    rows = certs.list_certificates(description(), tmp_path / "state", lambda: START)
    assert certs.find_expiring(rows, 30) == []


def test_check_finds_leaves_in_window(tmp_path: Path) -> None:
    build_at(tmp_path)
    late = START + timedelta(days=340)
    rows = certs.list_certificates(description(), tmp_path / "state", lambda: late)
    expiring = certs.find_expiring(rows, 30)
    assert len(expiring) == LEAF_COUNT
    assert all(row.signer is not None for row in expiring)
    assert certs.find_expiring(rows, 24) == []
    assert len(certs.find_expiring(rows, 25)) == LEAF_COUNT


def test_check_includes_expired(tmp_path: Path) -> None:
    build_at(tmp_path)
    rows = certs.list_certificates(
        description(), tmp_path / "state", lambda: START + timedelta(days=400)
    )
    assert len(certs.find_expiring(rows, 0)) == LEAF_COUNT


def test_check_cli_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build_at(tmp_path)
    command = ["certs", "check", str(HARD_WAY_PATH), "--state", str(tmp_path / "state")]

    monkeypatch.setenv("KUBECC_NOW", "2026-12-02T12:00:00Z")
    assert main(command) == 0
    assert capsys.readouterr().out == (
        "all 23 certificates are valid for more than 30 days; the first to expire is "
        "apiserver of node server on 2027-12-01\n"
    )

    monkeypatch.setenv("KUBECC_NOW", "2027-11-20T12:00:00+00:00")
    assert main(command) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME", "NODE", "SUBJECT", "SANS", "NOT", "AFTER", "DAYS", "LEFT", "SIGNER",
    ]
    assert len(lines) == 1 + LEAF_COUNT + 2
    assert lines[-2] == "20 of 23 certificates expire within 30 days (0 already expired)"
    assert lines[-1] == (
        f"  hint: renew the leaves with kubecc certs renew {HARD_WAY_PATH} NAME... or --all"
    )

    assert main([*command, "--days", "5"]) == 0


def test_check_cli_rejects_naive_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build_at(tmp_path)
    monkeypatch.setenv("KUBECC_NOW", "2027-01-01T00:00:00")
    command = ["certs", "check", str(HARD_WAY_PATH), "--state", str(tmp_path / "state")]
    assert main(command) == 1
    assert capsys.readouterr().err == (
        "error: KUBECC_NOW='2027-01-01T00:00:00' has no UTC offset; add Z or +00:00\n"
    )


# --- renew ----------------------------------------------------------------------------------


def test_renew_reissues_only_named(tmp_path: Path) -> None:
    build_at(tmp_path)
    before = serials(tmp_path)
    entries_before = state_entries(tmp_path)
    ca_before = (tmp_path / "out/hard-way/ca.crt").read_bytes()

    renewal = renew(tmp_path, ["apiserver", "kubelet-serving/node-0"], now=START + timedelta(1))

    named = {("apiserver", "server"), ("kubelet-serving", "node-0")}
    after = serials(tmp_path)
    assert renewal.requested == named
    assert {key for key in before if before[key] != after[key]} == named
    assert {(issuance.name, issuance.node) for issuance in renewal.built.issued} == named
    entries_after = state_entries(tmp_path)
    for name in CAS:
        assert entries_after[(name, None)] == entries_before[(name, None)]
    assert (tmp_path / "out/hard-way/ca.crt").read_bytes() == ca_before


def test_renew_writes_bundles_with_modes(tmp_path: Path) -> None:
    build_at(tmp_path)
    renewal = renew(tmp_path, ["apiserver", "kubelet-serving/node-0"])
    renewals = tmp_path / "out/hard-way/renewals"

    assert sorted(path.name for path in renewals.iterdir()) == ["node-0", "server"]
    expected_modes = {
        "server/files/etc/kubernetes/pki/apiserver.crt": 0o644,
        "server/files/etc/kubernetes/pki/apiserver.key": 0o600,
        "server/apply.sh": 0o700,
        "node-0/files/var/lib/kubelet/pki/kubelet.crt": 0o644,
        "node-0/files/var/lib/kubelet/pki/kubelet.key": 0o600,
        "node-0/apply.sh": 0o700,
    }
    written = {
        str(path.relative_to(renewals)): mode(path)
        for path in renewals.rglob("*") if path.is_file()
    }
    assert written == expected_modes

    state = load_state(tmp_path / "state", "hard-way")
    crt = renewals / "server/files/etc/kubernetes/pki/apiserver.crt"
    assert crt.read_bytes() == state.certificates[("apiserver", "server")].cert_pem
    assert [(bundle.node, bundle.restarts) for bundle in renewal.bundles] == [
        ("server", ("kube-apiserver",)), ("node-0", ("kubelet",)),
    ]


def install_lines(script: str) -> list[list[str]]:
    return [shlex.split(line) for line in script.splitlines() if line.startswith("install ")]


@pytest.mark.parametrize("node", ["server", "node-0"])
def test_apply_script_installs_each_file(tmp_path: Path, node: str) -> None:
    build_at(tmp_path)
    renew(tmp_path, ["apiserver", "kubelet-serving/node-0"])
    bundle = tmp_path / "out/hard-way/renewals" / node
    script_path = bundle / "apply.sh"

    checked = subprocess.run(["bash", "-n", str(script_path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr

    script = script_path.read_text()
    assert script.startswith("#!/bin/bash\n")
    files = {
        "/" + str(path.relative_to(bundle / "files")): path
        for path in (bundle / "files").rglob("*") if path.is_file()
    }
    installed = {}
    for words in install_lines(script):
        assert words[:2] == ["install", "-D"]
        assert words[4:8] == ["-o", "root", "-g", "root"]
        source, destination = words[-2], words[-1]
        assert source == "$files_dir" + destination
        installed[destination] = int(words[3], 8)
    assert installed == {path: mode(file) for path, file in files.items()}


def test_apply_script_restarts(tmp_path: Path) -> None:
    build_at(tmp_path)
    renew(tmp_path, ["apiserver", "etcd-peer", "kubelet-client/node-0", "kube-proxy/node-1"])
    renewals = tmp_path / "out/hard-way/renewals"

    server = (renewals / "server/apply.sh").read_text().splitlines()
    assert "restart_static_pod etcd" in server
    assert "restart_static_pod kube-apiserver" in server
    assert server.index("restart_static_pod etcd") < server.index(
        "restart_static_pod kube-apiserver"
    )
    assert "systemctl restart kubelet.service" not in server

    node_0 = (renewals / "node-0/apply.sh").read_text().splitlines()
    assert "systemctl restart kubelet.service" in node_0
    assert (
        f"ln -sfn -- {paths.KUBELET_CLIENT_INITIAL} {paths.KUBELET_CLIENT_CURRENT}" in node_0
    )
    assert not any(line.startswith("restart_static_pod ") for line in node_0)

    node_1 = (renewals / "node-1/apply.sh").read_text().splitlines()
    assert "restart_static_pod kube-proxy" in node_1
    assert "systemctl restart kubelet.service" not in node_1


def client_certificate(kubeconfig: Path) -> x509.Certificate:
    document = yaml.safe_load(kubeconfig.read_text())
    data = document["users"][0]["user"]["client-certificate-data"]
    return x509.load_pem_x509_certificate(base64.b64decode(data))


def test_renew_kubeconfig_bundles(tmp_path: Path) -> None:
    build_at(tmp_path)
    renew(tmp_path, ["kube-proxy/node-1", "controller-manager"])
    renewals = tmp_path / "out/hard-way/renewals"
    state = load_state(tmp_path / "state", "hard-way")

    proxy = renewals / "node-1/files" / paths.KUBE_PROXY_KUBECONFIG.lstrip("/")
    assert mode(proxy) == 0o600
    assert client_certificate(proxy) == state.certificates[("kube-proxy", "node-1")].certificate
    manager = renewals / "server/files" / paths.CONTROLLER_MANAGER_KUBECONFIG.lstrip("/")
    assert mode(manager) == 0o600
    assert client_certificate(manager) == state.certificates[
        ("controller-manager", None)
    ].certificate
    assert sorted(path.name for path in renewals.iterdir()) == ["node-1", "server"]


def test_renew_all_keeps_cas(tmp_path: Path) -> None:
    build_at(tmp_path)
    before = serials(tmp_path)
    entries_before = state_entries(tmp_path)
    out_before = snapshot(tmp_path / "out")

    renewal = renew(tmp_path, [], renew_all=True)

    after = serials(tmp_path)
    changed = {key for key in before if before[key] != after[key]}
    assert len(changed) == LEAF_COUNT
    assert not {name for name, _ in changed} & set(CAS)
    for name in CAS:
        assert state_entries(tmp_path)[(name, None)] == entries_before[(name, None)]
    out_after = snapshot(tmp_path / "out")
    assert out_after["hard-way/ca.crt"] == out_before["hard-way/ca.crt"]
    assert out_after["hard-way/admin.kubeconfig"] != out_before["hard-way/admin.kubeconfig"]
    assert [bundle.node for bundle in renewal.bundles] == ["server", "node-0", "node-1"]

    # The bootstrap unit deleted its kubeconfig after the first boot; no bundle restores it.
    bootstrap = paths.BOOTSTRAP_KUBECONFIG.lstrip("/")
    assert not any(path.endswith(bootstrap) for path in out_after)


def test_renew_keeps_encryption(tmp_path: Path) -> None:
    build_at(tmp_path, passphrase="correct horse")
    before = serials(tmp_path, "correct horse")
    renew(tmp_path, ["scheduler"], passphrase="correct horse")
    after = serials(tmp_path, "correct horse")
    assert {key for key in before if before[key] != after[key]} == {("scheduler", None)}
    assert "encryption" in json.loads((tmp_path / "state" / STATE_FILE).read_text())


def test_renew_ca_rejected_and_nothing_written(tmp_path: Path) -> None:
    build_at(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as caught:
        renew(tmp_path, ["ca"])
    assert str(caught.value) == (
        "ca: kubecc cannot renew a CA, because every running node trusts the current ca "
        "certificate and a new one would cut them off. Name leaf certificates or pass --all. "
        "A CA stays valid for pki.caValidityDays (3650 days by default)"
    )
    assert snapshot(tmp_path) == before


def test_renew_unknown_name_lists_valid(tmp_path: Path) -> None:
    build_at(tmp_path)
    with pytest.raises(InputError) as caught:
        renew(tmp_path, ["apiservr"])
    assert str(caught.value) == (
        "apiservr: unknown certificate apiservr (did you mean apiserver?). Valid names: "
        "apiserver, apiserver-kubelet-client, front-proxy-client, etcd-server, etcd-peer, "
        "etcd-healthcheck-client, apiserver-etcd-client, admin, bootstrap-admin, "
        "controller-manager, scheduler, kubelet-client, kubelet-serving, kube-proxy, each "
        "optionally followed by /NODE"
    )


def test_renew_wrong_nodes_listed_together(tmp_path: Path) -> None:
    build_at(tmp_path)
    with pytest.raises(InputError) as caught:
        renew(tmp_path, ["apiserver/node-0", "admin/server", "kube-proxy/node-9"])
    assert str(caught.value).splitlines() == [
        "apiserver/node-0: apiserver is issued only for server, not for node-0",
        "admin/server: admin is one certificate for the whole cluster, so name it without "
        "/server",
        "kube-proxy/node-9: kube-proxy is issued only for server, node-0, node-1, not for node-9",
    ]


def test_renew_without_state_creates_no_ca(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        renew(tmp_path, ["apiserver"])
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "out").exists()


def test_later_build_drops_bundles(tmp_path: Path) -> None:
    build_at(tmp_path)
    renew(tmp_path, ["apiserver"])
    assert (tmp_path / "out/hard-way/renewals/server/apply.sh").is_file()
    build_at(tmp_path)
    assert not (tmp_path / "out/hard-way/renewals").exists()


def test_file_readers_cover_inventory() -> None:
    node_paths = {
        path
        for spec in CERTIFICATES if not spec.is_ca
        for path in (spec.cert_path, spec.key_path) if path is not None
    }
    node_paths |= {spec.path for spec in KUBECONFIGS}
    # Besides credentials, a bundle carries the static pod-routes script of running nodes.
    node_paths.add(paths.POD_ROUTES_SCRIPT)
    assert node_paths - delivery.NOT_DELIVERED == set(delivery.FILE_READERS)
    for readers in delivery.FILE_READERS.values():
        assert set(readers) <= set(delivery.RESTART_ORDER)


# --- command line ---------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, now: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": "/usr/bin:/bin"}
    if now is not None:
        environment["KUBECC_NOW"] = now
    return subprocess.run(
        [sys.executable, "-m", "compiler", *args], cwd=cwd, env=environment,
        capture_output=True, text=True, check=False,
    )


def test_cli_renew_smoke(tmp_path: Path) -> None:
    state = ("--state", str(tmp_path / "state"))
    built = run_cli("build", *state, str(HARD_WAY_PATH), cwd=tmp_path)
    assert built.returncode == 0, built.stderr

    listed = run_cli("certs", "list", *state, str(HARD_WAY_PATH), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 + len(CAS) + LEAF_COUNT

    renewed = run_cli("certs", "renew", *state, str(HARD_WAY_PATH), "apiserver", cwd=tmp_path)
    assert renewed.returncode == 0, renewed.stderr
    assert renewed.stdout.splitlines() == [
        f"renewed 1 certificate (state: {tmp_path / 'state'}):",
        "  apiserver for server: renewal requested",
        "wrote out/hard-way/: nodes/<node>/user-data for nodes booted from now on, "
        "admin.kubeconfig, ca.crt, index.json, renewals/",
        "files for running nodes, which do not read their user-data again: copy each folder "
        "to its node and run `sudo bash apply.sh` there, one node at a time",
        "  out/hard-way/renewals/server/  2 files; restarts kube-apiserver",
    ]

    checked = run_cli(
        "certs", "check", *state, str(HARD_WAY_PATH), cwd=tmp_path, now="2099-01-01T00:00:00Z"
    )
    assert checked.returncode == 1
    assert checked.stdout.splitlines()[-3] == (
        "23 of 23 certificates expire within 30 days (23 already expired)"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "certs renew: name the certificates to renew, or pass --all"),
        (("apiserver", "--all"), "certs renew: pass either certificate names or --all, not both"),
    ],
    ids=["neither", "both"],
)
def test_cli_renew_usage_errors(
    tmp_path: Path, arguments: tuple[str, ...], message: str
) -> None:
    result = run_cli(
        "certs", "renew", "--state", str(tmp_path / "state"), str(HARD_WAY_PATH), *arguments,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"kubecc: error: {message}"
    assert not (tmp_path / "state").exists()


def test_cli_renew_ca_exit_code(tmp_path: Path) -> None:
    state = ("--state", str(tmp_path / "state"))
    assert run_cli("build", *state, str(HARD_WAY_PATH), cwd=tmp_path).returncode == 0
    result = run_cli("certs", "renew", *state, str(HARD_WAY_PATH), "etcd-ca", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: etcd-ca: kubecc cannot renew a CA")
    assert "Traceback" not in result.stderr
