"""Shared fixtures: planned examples and small descriptions built from text."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.model import Cluster
from compiler.pipeline import plan_file, plan_text
from compiler.pki.bundle import PkiBundle

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# The 1,000-node example is left out of the per-example and per-node tests: building and
# checking it once per test would take minutes. tests/test_large.py builds it once.
LARGE_EXAMPLES = frozenset({"large"})
EXAMPLE_NAMES = sorted(
    path.stem for path in EXAMPLES.glob("*.yaml") if path.stem not in LARGE_EXAMPLES
)
# Examples whose control planes run no etcd member because spec.etcd.external is set.
EXTERNAL_ETCD_EXAMPLES = frozenset({"external-etcd"})
STACKED_ETCD_EXAMPLE_NAMES = [name for name in EXAMPLE_NAMES if name not in EXTERNAL_ETCD_EXAMPLES]

MINIMAL = """\
apiVersion: kubecc/v1alpha1
kind: Cluster
metadata: {name: demo}
spec:
  kubernetes: {version: v1.36.2}
  network: {podCIDR: 10.200.0.0/16, serviceCIDR: 10.32.0.0/24, nodeCIDRMaskSize: 24}
  controlPlane: {endpoint: {host: 10.0.0.10, port: 6443}}
  nodes:
    - {name: cp-1, role: control-plane, ip: 10.0.0.10}
    - {name: worker-1, role: worker, ip: 10.0.0.20}
"""


def example_cluster(name: str) -> Cluster:
    return plan_file(EXAMPLES / f"{name}.yaml").cluster


def cluster_from_text(text: str) -> Cluster:
    return plan_text(text).cluster


@pytest.fixture(params=EXAMPLE_NAMES)
def example(request: pytest.FixtureRequest) -> Cluster:
    """Each bundled example, planned."""
    return example_cluster(request.param)


@pytest.fixture
def minimal() -> Cluster:
    """A one-control-plane, one-worker cluster on 10.0.0.0/24."""
    return cluster_from_text(MINIMAL)


@pytest.fixture(scope="module")
def issued() -> dict[str, tuple[Cluster, PkiBundle]]:
    """The hard-way and ha examples with their PKI, issued at the fixed test instant."""
    from tests.test_pki import issue

    return {name: (example_cluster(name), issue(example_cluster(name))) for name in ("hard-way", "ha")}
