"""Command line: exit codes, summary, refusal to replace a build, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli import main
from tests.conftest import EXAMPLES, MINIMAL


def run_cli(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    if args[:1] == ("build",) and "--state" not in args:
        # Keep the state in the test's folder instead of beside the example.
        args = ("build", "--state", str(cwd / "state"), *args[1:])
    return subprocess.run(
        [sys.executable, "-m", "compiler", *args], cwd=cwd, input=stdin,
        capture_output=True, text=True, check=False,
    )


def test_validate_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES / "ha.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.endswith("valid; cluster ha, 6 nodes (3 control planes, 3 workers), "
                        "Kubernetes v1.36.4\n")


def test_validate_invalid_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace("worker-1", "Worker_1"))
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"{path}: 1 problem"


def test_build_invalid_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace("worker-1", "Worker_1"))
    result = run_cli("build", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"{path}: 1 problem; nothing was written"
    assert not (tmp_path / "out").exists()


def test_usage_error_exit_code(tmp_path: Path) -> None:
    assert run_cli("frobnicate", cwd=tmp_path).returncode == 2


def test_warning_printed_and_build_continues(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace("role: worker", "role: control-plane"))
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0
    assert "warning: spec.nodes: found 2 control-plane nodes" in result.stderr


def test_build_summary_and_files(tmp_path: Path) -> None:
    result = run_cli("build", str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cluster hard-way: Kubernetes v1.36.4, endpoint https://10.240.0.10:6443"
    assert lines[1] == (
        "  pods 10.200.0.0/16 in /24 blocks (room for 256 nodes), services 10.32.0.0/24 "
        "(kubernetes 10.32.0.1, DNS 10.32.0.10)"
    )
    assert "  node-0  worker         amd64  10.240.0.20      pods 10.200.1.0/24" in lines
    out = tmp_path / "out/hard-way"
    assert sorted(path.name for path in out.iterdir()) == [
        "admin.kubeconfig", "ca.crt", "index.json", "nodes",
    ]
    assert (out / "admin.kubeconfig").stat().st_mode & 0o777 == 0o600
    assert (out / "nodes/server/user-data").stat().st_mode & 0o777 == 0o600


def test_rebuild_with_same_state_is_identical(tmp_path: Path) -> None:
    assert run_cli("build", str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path).returncode == 0
    before = {path: path.read_bytes() for path in (tmp_path / "out").rglob("*") if path.is_file()}

    again = run_cli("build", str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == f"reused every certificate from {tmp_path / 'state'}"
    after = {path: path.read_bytes() for path in (tmp_path / "out").rglob("*") if path.is_file()}
    assert after == before


def test_other_state_rejected_without_force(tmp_path: Path) -> None:
    assert run_cli("build", str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path).returncode == 0
    before = (tmp_path / "out/hard-way/ca.crt").read_bytes()
    other = ("build", "--state", str(tmp_path / "other"), str(EXAMPLES / "hard-way.yaml"))

    rejected = run_cli(*other, cwd=tmp_path)
    assert rejected.returncode == 1
    assert rejected.stderr.startswith(
        "error: out/hard-way contains an earlier build whose nodes trust another cluster CA"
    )
    assert "hint: build with the state of that earlier build (--state)" in rejected.stderr
    assert (tmp_path / "out/hard-way/ca.crt").read_bytes() == before
    assert not (tmp_path / "other/state.json").exists()

    forced = run_cli(*other[:1], "--force", *other[1:], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "out/hard-way/ca.crt").read_bytes() != before
    assert forced.stderr == (
        "warning: replaced out/hard-way, whose nodes trust another cluster CA (--force): nodes "
        "booted from it cannot join this build's nodes\n"
    )


def test_output_option(tmp_path: Path) -> None:
    result = run_cli("build", "-o", "elsewhere", str(EXAMPLES / "scratch.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "elsewhere/scratch/index.json").read_text())
    assert index["cluster"]["name"] == "scratch"


def test_foreign_folder_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "out/hard-way"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    result = run_cli("build", str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    assert (foreign / "notes.txt").read_text() == "mine"


def test_hash_password_from_stdin(tmp_path: Path) -> None:
    from passlib.hash import sha512_crypt

    result = run_cli("hash-password", cwd=tmp_path, stdin="correct horse\n")
    assert result.returncode == 0
    assert sha512_crypt.verify("correct horse", result.stdout.strip())


def test_hash_password_empty(tmp_path: Path) -> None:
    result = run_cli("hash-password", cwd=tmp_path, stdin="\n")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "error: the password is empty; nothing was printed\n"


def test_hash_password_not_utf8(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compiler", "hash-password"], cwd=tmp_path, input=b"\xff\n",
        capture_output=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr == b"error: the password is not UTF-8 text; nothing was printed\n"


def test_verbose_after_command(tmp_path: Path) -> None:
    result = run_cli("validate", "-v", str(EXAMPLES / "ha.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_module_and_script_agree(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.stdout.startswith("kubecc ")


def test_encrypted_state_from_passphrase_file(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    built = run_cli(
        "build", "--state-passphrase-file", str(secret), str(EXAMPLES / "hard-way.yaml"),
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    assert "encryption" in json.loads((tmp_path / "state/state.json").read_text())

    without = run_cli("build", str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path)
    assert without.returncode == 1
    assert without.stderr.splitlines()[0] == f"error: {tmp_path / 'state/state.json'} is encrypted"

    listed = run_cli(
        "certs", "list", "--state", str(tmp_path / "state"), "--state-passphrase-file",
        str(secret), str(EXAMPLES / "hard-way.yaml"), cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].startswith("ca ")


def test_empty_passphrase_file_rejected(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("\n")
    result = run_cli(
        "build", "--state-passphrase-file", str(secret), str(EXAMPLES / "hard-way.yaml"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: the passphrase file {secret} is empty; its first line is the passphrase\n"
    )
    assert not (tmp_path / "out").exists()
