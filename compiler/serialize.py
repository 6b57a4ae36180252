"""Deterministic YAML and JSON serialisation of structured documents.

Every structured file (Pod manifests, kubeconfigs, component configurations, cloud-config) is
built as data and written here, so escaping is the emitter's job and never string pasting.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

# libyaml's emitter is about ten times faster than PyYAML's pure-Python one and writes the
# same documents; a 1,000-node build serialises several thousand of them.
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    """Safe dumper that writes multi-line strings as literal blocks and never uses aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # A literal block cannot carry trailing spaces or some control characters faithfully;
    # PyYAML falls back to a quoted scalar in those cases by itself.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(document: Any) -> str:
    """Serialise one document as block-style YAML, keys in the order given."""
    return yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
        allow_unicode=False, width=4096,
    )


def dump_yaml_documents(documents: list[Any]) -> str:
    """Serialise several documents into one multi-document YAML stream."""
    return yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
        allow_unicode=False, width=4096, explicit_start=True,
    )


def dump_json(document: Any) -> str:
    """Serialise as indented JSON with a trailing newline."""
    return json.dumps(document, indent=2) + "\n"
