"""Loader: positions of keys and values, and the errors of unreadable input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compiler import loader
from compiler.errors import DescriptionError
from compiler.loader import format_path, load_description, load_description_text

TEXT = """\
apiVersion: kubecc/v1alpha1
spec:
  nodes:
    - name: a
      labels:
        topology.kubernetes.io/zone: z1
"""


def test_value_positions() -> None:
    description = load_description_text(TEXT, "c.yaml")
    assert description.positions[("apiVersion",)] == (1, 13)
    assert description.positions[("spec", "nodes", 0, "name")] == (4, 13)


def test_key_positions() -> None:
    description = load_description_text(TEXT, "c.yaml")
    assert description.key_positions[("spec", "nodes")] == (3, 3)


def test_problem_falls_back_to_parent() -> None:
    description = load_description_text(TEXT, "c.yaml")
    problem = description.problem(("spec", "nodes", 0, "ip"), "missing")
    assert (problem.line, problem.column) == (4, 7)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("spec", "nodes", 1, "name"), "spec.nodes[1].name"),
        (("spec", "nodes", 0, "labels", "topology.kubernetes.io/zone"),
         'spec.nodes[0].labels["topology.kubernetes.io/zone"]'),
        ((), ""),
    ],
    ids=["plain", "dotted-key", "root"],
)
def test_format_path(parts: tuple[str | int, ...], expected: str) -> None:
    assert format_path(parts) == expected


def test_python_tag_rejected() -> None:
    with pytest.raises(DescriptionError) as caught:
        load_description_text("a: !!python/object/apply:os.system ['true']\n", "c.yaml")
    assert "invalid YAML" in caught.value.problems[0].message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DescriptionError) as caught:
        load_description(tmp_path / "absent.yaml")
    assert caught.value.problems[0].message == "file not found"


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DescriptionError) as caught:
        load_description(path)
    assert caught.value.problems[0].message == "cannot read the file: it is not UTF-8 text"


def load_problems(text: str) -> list[str]:
    with pytest.raises(DescriptionError) as caught:
        load_description_text(text, "c.yaml")
    return [problem.format("c.yaml") for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('metadata: {name: "demo\\n"}\n',
         'c.yaml:1:18: metadata.name: found the control character U+000A in the value; '
         "expected text on one line"),
        ('a: "x\\u2028y"\n',
         "c.yaml:1:4: a: found the control character U+2028 in the value; expected text on "
         "one line"),
        ('a: "\\e[31mred"\n',
         "c.yaml:1:4: a: found the control character U+001B in the value; expected text on "
         "one line"),
        ('"a\\tb": 1\n',
         'c.yaml:1:1: ["a\\tb"]: found the control character U+0009 in the key; expected text '
         "on one line"),
    ],
    ids=["newline", "line-separator", "escape", "tab-in-key"],
)
def test_control_characters_rejected(text: str, expected: str) -> None:
    problems = load_problems(text)
    assert [problem.split("\n")[0] for problem in problems] == [expected]


@pytest.mark.parametrize(
    ("text", "shown"),
    [("metadata: {1: a}\n", "'1'"), ("labels: {~: a}\n", "'~'"), ("a: {[x]: 1}\n", "a collection")],
    ids=["integer", "null", "list"],
)
def test_non_string_keys_rejected(text: str, shown: str) -> None:
    (problem,) = load_problems(text)
    assert f"found the key {shown}, which is not text; expected a string key" in problem


def test_alias_bomb_rejected() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        previous = f"*a{level - 1}"
        levels.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    (problem,) = load_problems("\n".join(levels) + "\n")
    assert "more than 1000000 values after expanding aliases" in problem


def test_self_referencing_alias_rejected() -> None:
    (problem,) = load_problems("a: &r [*r]\n")
    assert "nested more than 64 levels deep" in problem


def test_deep_nesting_rejected() -> None:
    (problem,) = load_problems("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested more than 64 levels deep" in problem


def test_nul_character_position() -> None:
    (problem,) = load_problems("a: 1\nb: x\x00y\n")
    assert problem.startswith("c.yaml:2:5: found the character U+0000, which YAML does not allow")


def test_fifo_rejected(tmp_path: Path) -> None:
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    with pytest.raises(DescriptionError) as caught:
        load_description(fifo)
    assert caught.value.problems[0].message == "found something other than a regular file"


def test_large_file_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 10)
    path = tmp_path / "c.yaml"
    path.write_text("a: 123456789\n")
    with pytest.raises(DescriptionError) as caught:
        load_description(path)
    assert caught.value.problems[0].message == "found a file of 13 bytes; expected at most 10"
