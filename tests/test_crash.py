"""Crash safety of `kubecc build`: a build killed at any step leaves a usable state and out/.

Every build runs as a subprocess. compiler.faults sends it SIGKILL at its Nth write, fsync or
rename (KUBECC_FAULT_AT=N), so each disk-changing step is hit deterministically, without timers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from compiler.pki.bundle import CA
from compiler.state import STATE_FILE, State, load_state, locked
from tests.conftest import EXAMPLES, REPO
from tests.test_state import NODE_2, snapshot

CLUSTER = "hard-way"
OLD_NODES = ["server", "node-0", "node-1"]
NEW_NODES = [*OLD_NODES, "node-2"]
NODE_2_CERTIFICATES = {
    ("kubelet-client", "node-2"), ("kubelet-serving", "node-2"), ("kube-proxy", "node-2"),
}
INDEX_VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((REPO / "schemas/index.schema.json").read_text()),
    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
)

# A build of hard-way has about 25 checkpoints. Above MAX_CHECKPOINTS the test kills at every
# state and rename checkpoint but only at a sample of the per-file ones. Each killed build is
# followed by a full rebuild, and the sample keeps the test within the suite's budget of 60 s.
MAX_CHECKPOINTS = 150
PER_FILE_LABELS = {"out-write", "out-fsync", "out-fsync-folder"}
PER_FILE_SAMPLE_STEP = 5

# Labels of the steps that put the new state.json, or the new out/<cluster>/, in place of the
# previous one. A build killed at a later checkpoint leaves the new one in place.
STATE_SWAP_LABELS = {"state-rename"}
OUTPUT_SWAP_LABELS = {"out-exchange", "out-rename"}

# A SIGKILL runs no cleanup, so a killed build can leave these behind:
# - `.state.json.tmp` or `..gitignore.tmp` in the state folder: the temporary file of
#   write_file_atomically, partial or complete. The state folder is 0700, and the next build
#   truncates and reuses the file.
# - `.hard-way.new-*` (or `.hard-way.old-*` where renameat2 is unavailable) beside
#   out/hard-way, with mode 0700: the staging folder with part of the new tree, or, when the
#   build is killed after the exchange, the whole previous tree.
# The next build removes these folders, after moving a previous tree back into place.
# NOTE: where renameat2 cannot exchange (ENOSYS or EINVAL), output.py replaces the folder with
# two renames, and a kill between them leaves out/hard-way missing until the next build
# restores it. The test then fails at the `out-rename` checkpoint. Where renameat2 can
# exchange, that path does not run.
STATE_FOLDER_FILES = {".gitignore", ".lock", STATE_FILE}
STATE_LEFTOVER = re.compile(r"\.\.?[\w.-]+\.tmp")
OUTPUT_LEFTOVER = re.compile(rf"\.{re.escape(CLUSTER)}\.(new|old)-\w+")


def run_build(
    work: Path, fault_at: int | None = None, trace: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `kubecc build` on work/desc.yaml with the state in work/S and the output in work/O."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KUBECC_")}
    if fault_at is not None:
        env["KUBECC_FAULT_AT"] = str(fault_at)
    if trace is not None:
        env["KUBECC_FAULT_TRACE"] = str(trace)
    return subprocess.run(
        [sys.executable, "-m", "compiler", "build", "--state", "S", "-o", "O", "desc.yaml"],
        cwd=work, env=env, capture_output=True, text=True, check=False, timeout=60,
    )


def read_trace(path: Path) -> list[str]:
    """Return the checkpoint labels of a trace file in order, checking that none is missing."""
    labels = []
    for expected, line in enumerate(path.read_text().splitlines(), start=1):
        number, label = line.split("\t")
        assert int(number) == expected, line
        labels.append(label)
    return labels


def select_checkpoints(labels: list[str]) -> list[int]:
    """Return the checkpoint numbers to kill at: all of them, or a sample above the maximum.

    The sample keeps every checkpoint whose label is not per-file (state steps and renames), and
    of the per-file ones the first, the last and every PER_FILE_SAMPLE_STEP-th.
    """
    numbers = list(range(1, len(labels) + 1))
    if len(labels) <= MAX_CHECKPOINTS:
        return numbers
    per_file = [number for number in numbers if labels[number - 1] in PER_FILE_LABELS]
    chosen = {number for number in numbers if labels[number - 1] not in PER_FILE_LABELS}
    chosen.update(per_file[::PER_FILE_SAMPLE_STEP])
    chosen.update((per_file[0], per_file[-1]))
    return sorted(chosen)


def last_checkpoint(labels: list[str], kinds: set[str]) -> int:
    return max(number for number, label in enumerate(labels, start=1) if label in kinds)


def check_complete_output(target: Path, where: str) -> list[str]:
    """Check that out/<cluster>/ is a whole, self-consistent build, and return its node names."""
    index = json.loads((target / "index.json").read_bytes())
    INDEX_VALIDATOR.validate(index)
    names = [entry["name"] for entry in index["nodes"]]
    expected_files = {"index.json", "ca.crt", "admin.kubeconfig"}
    expected_files.update(f"nodes/{name}/user-data" for name in names)
    found = set(snapshot(target))
    # A build that changed running nodes' files (static pod routes) adds their bundles.
    bundles = {path for path in found if path.startswith("renewals/")}
    assert found - bundles == expected_files, where
    for node in {path.split("/")[1] for path in bundles}:
        assert f"renewals/{node}/apply.sh" in bundles, f"{where}: {node}"

    for entry in index["nodes"]:
        (artifact,) = entry["artifacts"]
        content = (target / artifact["path"]).read_bytes()
        assert artifact["bytes"] == len(content), f"{where}: {artifact['path']}"
        assert artifact["sha256"] == hashlib.sha256(content).hexdigest(), f"{where}: {artifact['path']}"
        assert content.startswith(b"#cloud-config\n"), f"{where}: {artifact['path']}"
        document = yaml.load(content, Loader=yaml.CSafeLoader)
        assert document["hostname"] == entry["name"], f"{where}: {artifact['path']}"

    ca = x509.load_pem_x509_certificate((target / "ca.crt").read_bytes())
    assert index["cluster"]["caCertificateSHA256"] == ca.fingerprint(hashes.SHA256()).hex(), where
    return names


def assert_extends(state: State, old: State, reference: State, where: str) -> None:
    """Assert that `state` has the reference's certificates and pod blocks and keeps old ones."""
    assert set(state.certificates) == set(reference.certificates), where
    assert state.pod_blocks == reference.pod_blocks, where
    for key, issued in old.certificates.items():
        assert state.certificates[key].cert_pem == issued.cert_pem, f"{where}: {key}"
        assert state.certificates[key].key_pem == issued.key_pem, f"{where}: {key}"
    assert (state.service_account is None) == (reference.service_account is None), where
    if old.service_account is not None:
        assert state.service_account == old.service_account, where


def assert_output_trusts_state_ca(target: Path, state_dir: Path, where: str) -> None:
    state = load_state(state_dir, CLUSTER)
    assert (target / "ca.crt").read_bytes() == state.certificates[(CA, None)].cert_pem, where


def check_leftovers(work: Path, where: str) -> None:
    """Assert that the killed build left only the temporary files and folders listed above."""
    for path in (work / "S").iterdir():
        if path.name not in STATE_FOLDER_FILES:
            assert STATE_LEFTOVER.fullmatch(path.name), f"{where}: {path}"
    output_dir = work / "O"
    if not output_dir.exists():
        return
    for path in output_dir.iterdir():
        if path.name == CLUSTER:
            continue
        assert OUTPUT_LEFTOVER.fullmatch(path.name), f"{where}: {path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, f"{where}: {path}"


def check_every_kill(tmp_path: Path, baseline: Path, new_nodes: list[str]) -> list[str]:
    """Kill the build of baseline/desc.yaml at each checkpoint and check what it leaves.

    `baseline` contains the description and the state (S) and output (O) of the previous build,
    if any. Returns the labels of an uninterrupted build's checkpoints.
    """
    old_state_path = baseline / "S" / STATE_FILE
    old_state_bytes = old_state_path.read_bytes() if old_state_path.exists() else None
    old_state = load_state(baseline / "S", CLUSTER)
    old_target = baseline / "O" / CLUSTER
    old_output = snapshot(old_target) if old_target.exists() else None

    # The certificates are random, so an uninterrupted build gives the expected names only.
    reference = tmp_path / "reference"
    shutil.copytree(baseline, reference, symlinks=True)
    finished = run_build(reference, trace=tmp_path / "reference.trace")
    assert finished.returncode == 0, finished.stderr
    labels = read_trace(tmp_path / "reference.trace")
    reference_state = load_state(reference / "S", CLUSTER)
    assert check_complete_output(reference / "O" / CLUSTER, "reference") == new_nodes
    state_swap = last_checkpoint(labels, STATE_SWAP_LABELS)
    output_swap = last_checkpoint(labels, OUTPUT_SWAP_LABELS)

    for number in select_checkpoints(labels):
        where = f"killed at checkpoint {number} ({labels[number - 1]})"
        work = tmp_path / f"killed-{number}"
        shutil.copytree(baseline, work, symlinks=True)
        trace = tmp_path / f"killed-{number}.trace"
        killed = run_build(work, fault_at=number, trace=trace)
        assert killed.returncode == -signal.SIGKILL, f"{where}: {killed.stderr}"
        assert read_trace(trace) == labels[:number], where

        # The state is the previous one byte for byte, or the whole new one.
        state_path = work / "S" / STATE_FILE
        state_bytes = state_path.read_bytes() if state_path.exists() else None
        state = load_state(work / "S", CLUSTER)
        state_is_new = state_bytes != old_state_bytes
        assert state_is_new == (number > state_swap), where
        if state_is_new:
            assert_extends(state, old_state, reference_state, where)
            assert stat.S_IMODE(state_path.stat().st_mode) == 0o600, where

        # out/<cluster>/ is the previous build byte for byte, or the whole new one.
        target = work / "O" / CLUSTER
        output = snapshot(target) if target.exists() else None
        output_is_new = output != old_output
        assert output_is_new == (number > output_swap), where
        if output_is_new:
            assert check_complete_output(target, where) == new_nodes
        if output is not None:
            assert_output_trusts_state_ca(target, work / "S", where)

        # Only the documented leftovers remain.
        check_leftovers(work, where)

        # The kernel released the lock with the process.
        with locked(work / "S"):
            pass

        # A plain rebuild succeeds, keeps what the killed build stored and writes all of out/.
        rebuilt = run_build(work)
        assert rebuilt.returncode == 0, f"{where}: {rebuilt.stderr}"
        assert "in use by another kubecc command" not in rebuilt.stderr, where
        assert_extends(load_state(work / "S", CLUSTER), old_state, reference_state, where)
        if state_is_new:
            assert state_path.read_bytes() == state_bytes, where
        assert check_complete_output(target, where) == new_nodes
        assert_output_trusts_state_ca(target, work / "S", where)
        assert sorted(path.name for path in (work / "O").iterdir()) == [CLUSTER], where
    return labels


def test_second_build_killed_keeps_previous(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    shutil.copy(EXAMPLES / "hard-way.yaml", baseline / "desc.yaml")
    first = run_build(baseline)
    assert first.returncode == 0, first.stderr
    assert check_complete_output(baseline / "O" / CLUSTER, "first build") == OLD_NODES
    with (baseline / "desc.yaml").open("a") as description:
        description.write(NODE_2)

    labels = check_every_kill(tmp_path, baseline, NEW_NODES)

    # The second build writes the state once, then every output file and folder, then swaps.
    assert labels.count("state-write") >= 1
    assert labels.count("state-fsync") == 1
    assert labels.count("state-rename") == 1
    assert labels.count("out-write") >= len(NEW_NODES) + 3
    assert labels.count("out-syncfs") == 1
    assert labels.count("out-fsync-folder") >= 1
    assert labels.count("out-exchange") == 1
    reference = load_state(tmp_path / "reference" / "S", CLUSTER)
    assert set(reference.certificates) >= NODE_2_CERTIFICATES


def test_first_build_killed_leaves_none_or_all(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    shutil.copy(EXAMPLES / "hard-way.yaml", baseline / "desc.yaml")

    labels = check_every_kill(tmp_path, baseline, OLD_NODES)

    # The first build also writes .gitignore, and renames out/<cluster>/ into place.
    assert labels.count("state-rename") == 2
    assert labels.count("out-rename") == 1
    assert "out-exchange" not in labels


def test_checkpoint_sample_keeps_state_and_renames() -> None:
    labels = (
        ["state-write", "state-fsync", "state-rename"]
        + ["out-write", "out-fsync"] * 100
        + ["out-fsync-folder"] * 20
        + ["out-exchange", "out-fsync-folder"]
    )
    chosen = select_checkpoints(labels)
    assert len(chosen) < MAX_CHECKPOINTS
    assert chosen[:4] == [1, 2, 3, 4]
    assert len(labels) - 1 in chosen
    assert len(labels) in chosen
    assert select_checkpoints(labels[:MAX_CHECKPOINTS]) == list(range(1, MAX_CHECKPOINTS + 1))


def test_build_rejected_while_state_locked(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "hard-way.yaml", tmp_path / "desc.yaml")
    assert run_build(tmp_path).returncode == 0
    with (tmp_path / "desc.yaml").open("a") as description:
        description.write(NODE_2)
    before = snapshot(tmp_path)

    with locked(tmp_path / "S"):
        result = run_build(tmp_path)

    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "error: S is in use by another kubecc command"
    assert snapshot(tmp_path) == before
