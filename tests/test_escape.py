"""Escaping filters: each value survives its target's real parser byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from compiler.escape import (
    haproxy_word,
    shell_quote,
    systemd_quote,
    toml_string,
    toml_value,
    yaml_scalar,
)
from tests.test_units import build_root, parse_exec_words, unit_values, verify_units

HOSTILE = [
    ("plain", "abc"),
    ("empty", ""),
    ("spaces", "a b  c "),
    ("single-quote", "it's"),
    ("double-quote", 'say "hi"'),
    ("backslash", "a\\b\\"),
    ("newline", "line1\nline2\n"),
    ("command-substitution", "$(touch pwned)"),
    ("backticks", "`touch pwned`"),
    ("variables", "$HOME ${HOME} $$ $"),
    ("percent", "100% %n %% %"),
    ("hash", "#not a comment"),
    ("semicolon", ";"),
    ("command-list", "a; rm -rf / && b || c | d &"),
    ("glob", "* ? [a-z] ~"),
    ("leading-dash", "-n"),
    ("yaml-tag", "!!python/object/apply:os.system ['id']"),
    ("yaml-indicators", "- [a]: {b} & *c | > ? ---"),
    ("toml-syntax", '"""x""" = [1] # \\u0041'),
    ("unicode", "zoné 東京 \u2028 \u00a0 \U0001f600"),
    ("control", "\t\r\x1b\x7f\x01"),
]
HOSTILE_IDS = [name for name, _ in HOSTILE]
HOSTILE_VALUES = [value for _, value in HOSTILE]


def run_shell(shell: str, values: list[str], tmp_path: Path) -> list[str]:
    """Run a generated script that prints each quoted value NUL-terminated; return them."""
    lines = [f"printf '%s\\0' {shell_quote(value)}" for value in values]
    script = tmp_path / "quoted.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        [shell, str(script)], capture_output=True, cwd=tmp_path, timeout=30, check=True,
        env={"PATH": "/nonexistent", "HOME": "/nonexistent"},
    )
    assert result.stderr == b""
    return result.stdout.decode("utf-8").split("\0")[:-1]


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
def test_shell_quote_round_trip(shell: str, tmp_path: Path) -> None:
    assert run_shell(shell, HOSTILE_VALUES, tmp_path) == HOSTILE_VALUES
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=HOSTILE_IDS)
def test_shell_quote_one_word(value: str, tmp_path: Path) -> None:
    script = tmp_path / "count.sh"
    script.write_text(f"set -- {shell_quote(value)}\nprintf '%s' \"$#\"\n", encoding="utf-8")
    result = subprocess.run(["/bin/bash", str(script)], capture_output=True, check=True,
                            timeout=30)
    assert result.stdout == b"1"


@pytest.mark.consumer
def test_systemd_quote_round_trip(tmp_path: Path, system_units_copy: Path) -> None:
    lines = ["[Service]", "Type=oneshot"]
    lines += [f"ExecStart=/opt/stub {systemd_quote(value)}" for value in HOSTILE_VALUES]
    unit = "\n".join(lines) + "\n"
    build_root(tmp_path / "root", system_units_copy, {"hostile.service": unit})

    result = verify_units(tmp_path / "root", ["hostile.service"])
    assert result.stderr == ""
    assert result.returncode == 0

    parsed = [parse_exec_words(value) for value in unit_values(unit, "Service", "ExecStart")]
    assert parsed == [("", ["/opt/stub", value]) for value in HOSTILE_VALUES]


@pytest.fixture(scope="module")
def system_units_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("system-units") / "system"
    shutil.copytree("/lib/systemd/system", copy, symlinks=True)
    return copy


SYSTEMD_CASES = [
    ("safe-flag", "--node-ip=10.0.0.1", "--node-ip=10.0.0.1"),
    ("path", "/usr/local/bin/kubelet", "/usr/local/bin/kubelet"),
    ("empty", "", '""'),
    ("space", "a b", '"a b"'),
    ("percent", "50%", '"50%%"'),
    ("dollar", "$x", '"$$x"'),
    ("quote-backslash", 'a"b\\', '"a\\"b\\\\"'),
    ("newline", "a\nb", '"a\\nb"'),
    ("control", "\x01", '"\\x01"'),
    ("semicolon", ";", '";"'),
]


@pytest.mark.parametrize(("value", "expected"), [(v, e) for _, v, e in SYSTEMD_CASES],
                         ids=[name for name, _, _ in SYSTEMD_CASES])
def test_systemd_quote_text(value: str, expected: str) -> None:
    assert systemd_quote(value) == expected


@pytest.mark.parametrize("value", [*HOSTILE_VALUES, "\0"], ids=[*HOSTILE_IDS, "nul"])
def test_toml_string_round_trip(value: str) -> None:
    document = tomllib.loads(f"key = {toml_string(value)}\n")
    assert document == {"key": value}


@pytest.mark.parametrize(("value", "expected"), [(True, "true"), (False, "false"), (3, "3"),
                                                  ("x", '"x"')],
                         ids=["true", "false", "integer", "string"])
def test_toml_value(value: str | bool | int, expected: str) -> None:
    assert toml_value(value) == expected


@pytest.mark.parametrize("value", [*HOSTILE_VALUES, "\0", "x" * 300],
                         ids=[*HOSTILE_IDS, "nul", "long"])
def test_yaml_scalar_round_trip(value: str) -> None:
    scalar = yaml_scalar(value)
    assert "\n" not in scalar
    assert yaml.safe_load(f"key: {scalar}\n") == {"key": value}
    assert yaml.safe_load(f"- {scalar}\n") == [value]
    assert yaml.safe_load(f"[{scalar}, x]\n") == [value, "x"]


@pytest.mark.parametrize("quote", [shell_quote, systemd_quote], ids=["shell", "systemd"])
def test_quote_rejects_nul(quote: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="NUL"):
        quote("a\0b")


@pytest.mark.parametrize("quote", [shell_quote, systemd_quote, toml_string, yaml_scalar],
                         ids=["shell", "systemd", "toml", "yaml"])
def test_quote_rejects_lone_surrogate(quote: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        quote("a\ud800")


@pytest.mark.parametrize("quote", [shell_quote, systemd_quote, toml_string, yaml_scalar],
                         ids=["shell", "systemd", "toml", "yaml"])
def test_quote_rejects_non_string(quote: Callable[[object], str]) -> None:
    with pytest.raises(TypeError, match="expects a string, found int"):
        quote(5)


@pytest.mark.parametrize("value", ["10.0.4.10:6443", "ipv6@fd00::10:6443", "cp-1", "/healthz"])
def test_haproxy_word_bare(value: str) -> None:
    assert haproxy_word(value) == value


@pytest.mark.parametrize(
    "value", ["two words", "a#comment", 'quote"d', "back\\slash", "$HOME", "line\nbreak", ""],
    ids=["space", "hash", "quote", "backslash", "dollar", "newline", "empty"],
)
def test_haproxy_word_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="is not a bare word"):
        haproxy_word(value)
