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


STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"


# Tags of short scalars already resolved, shared by every dump: the resolver's rules never
# change. Long values (file contents) are rarely repeated and would only fill memory.
_SCALAR_TAGS: dict[tuple[Any, Any], str] = {}
MAX_CACHED_SCALAR = 100


class _Dumper(_BaseDumper):  # type: ignore[valid-type,misc]
    """Safe dumper that writes multi-line strings as literal blocks and never uses aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        """Resolve a tag and cache the results for scalars, which the serializer resolves twice."""
        if kind is not yaml.ScalarNode or len(value) > MAX_CACHED_SCALAR:
            return str(super().resolve(kind, value, implicit))
        key = (value, implicit)
        tag = _SCALAR_TAGS.get(key)
        if tag is None:
            tag = _SCALAR_TAGS[key] = str(super().resolve(kind, value, implicit))
        return tag

    def represent_data(self, data: Any) -> yaml.Node:
        """Build the node of plain JSON-like data directly; anything else goes the usual way.

        PyYAML's generic representer dominated a 1,000-node build. The nodes are the ones it
        would build, and quoting stays with the serializer and emitter, which check how each
        scalar would be read back.
        """
        kind = type(data)
        if kind is str:
            # A literal block cannot carry trailing spaces or some control characters
            # faithfully; the emitter falls back to a quoted scalar in those cases by itself.
            return yaml.ScalarNode(STR_TAG, data, style="|" if "\n" in data else None)
        if kind is dict:
            pairs = [(self.represent_data(key), self.represent_data(value))
                     for key, value in data.items()]
            return yaml.MappingNode(MAP_TAG, pairs, flow_style=False)
        if kind is list:
            items = [self.represent_data(item) for item in data]
            return yaml.SequenceNode(SEQ_TAG, items, flow_style=False)
        if kind is bool:
            return yaml.ScalarNode(BOOL_TAG, "true" if data else "false")
        if kind is int:
            return yaml.ScalarNode(INT_TAG, str(data))
        if data is None:
            return yaml.ScalarNode(NULL_TAG, "null")
        node: yaml.Node = super().represent_data(data)
        return node


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
