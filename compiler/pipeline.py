"""The compiler's stages in order: load, validate, plan (then pki, render, emit, write)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compiler.errors import Problem
from compiler.external_etcd import load_external_etcd
from compiler.loader import Description, load_description, load_description_text
from compiler.model import Cluster
from compiler.plan import build_cluster
from compiler.schema import validate_schema
from compiler.semantic import validate_semantics


@dataclass(frozen=True)
class Planned:
    description: Description
    cluster: Cluster
    warnings: tuple[Problem, ...]


def validate_description(description: Description) -> tuple[Problem, ...]:
    """Run both validation layers; raise DescriptionError, or return the warnings."""
    validate_schema(description)
    warnings = tuple(validate_semantics(description))
    # Reads the files of spec.etcd.external, so that a check alone reports them too.
    load_external_etcd(description)
    return warnings


def plan_description(description: Description) -> Planned:
    warnings = validate_description(description)
    return Planned(description, build_cluster(description), warnings)


def plan_file(path: Path) -> Planned:
    return plan_description(load_description(path))


def plan_text(text: str, filename: str = "cluster.yaml") -> Planned:
    return plan_description(load_description_text(text, filename))
