"""The description schema itself, and every example (files and README) checked against it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import EXAMPLES, REPO

SCHEMA = json.loads((REPO / "schemas/cluster.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def walk_properties(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (dotted path, subschema) for every named property and list item."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), sub
        yield from walk_properties(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk_properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk_properties(schema["additionalProperties"], f"{path}.*")
    for branch in schema.get("oneOf", []):
        yield from walk_properties(branch, path)


def test_schema_is_valid_draft_2020_12() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", [path for path, _ in walk_properties(SCHEMA)])
def test_every_property_described_with_example(path: str) -> None:
    subschema = dict(walk_properties(SCHEMA))[path]
    assert subschema.get("description"), path
    assert subschema.get("examples"), path
    for example in subschema["examples"]:
        assert jsonschema.Draft202012Validator(subschema).is_valid(example) or "$ref" in subschema


def test_defaults_valid_for_their_property() -> None:
    for path, subschema in walk_properties(SCHEMA):
        if "default" in subschema:
            assert jsonschema.Draft202012Validator(subschema).is_valid(subschema["default"]), path


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_files_valid(path: Any) -> None:
    VALIDATOR.validate(yaml.safe_load(path.read_text()))


def readme_descriptions() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    return [block for block in blocks if "kind: Cluster" in block]


def test_readme_examples_valid() -> None:
    blocks = readme_descriptions()
    assert blocks
    for block in blocks:
        VALIDATOR.validate(yaml.safe_load(block))


def test_examples_spell_out_addresses() -> None:
    for path in EXAMPLES.glob("*.yaml"):
        network = yaml.safe_load(path.read_text())["spec"]["network"]
        for key in ("podCIDR", "nodeCIDRMaskSize", "serviceCIDR", "dnsServiceIP"):
            assert key in network, f"{path.name}: {key}"
