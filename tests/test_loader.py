"""Loader: positions of keys and values, and the errors of unreadable input."""

from __future__ import annotations

from pathlib import Path

import pytest

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
