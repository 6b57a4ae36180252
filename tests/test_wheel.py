"""The installed wheel, not the source tree, carries the schemas and templates and builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    # Build from a copy so that the wheel cannot pick up files outside the tracked layout.
    for name in ("compiler", "schemas", "templates", "pyproject.toml", "README.md"):
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), str(source)],
        check=True, capture_output=True,
    )
    (built,) = dist.glob("kubecc-*.whl")
    return built


def test_wheel_contains_resources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "compiler/schemas/cluster.schema.json" in names
    templates = {name for name in names if name.startswith("compiler/templates/")}
    expected = {
        "compiler/templates/" + str(path.relative_to(REPO / "templates"))
        for path in (REPO / "templates").rglob("*.j2")
    }
    assert expected
    assert templates >= expected


def test_installed_wheel_builds_example(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(EXAMPLES / "hard-way.yaml", work / "hard-way.yaml")
    environment = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", "import compiler; print(compiler.__file__)"],
        cwd=work, env=environment, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip().startswith(str(target))

    result = subprocess.run(
        [sys.executable, "-m", "compiler", "build", "hard-way.yaml"],
        cwd=work, env=environment, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    index = json.loads((work / "out/hard-way/index.json").read_text())
    assert [node["name"] for node in index["nodes"]] == ["server", "node-0", "node-1"]
