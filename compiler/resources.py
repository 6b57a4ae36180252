"""Locate the schemas and templates, inside the installed wheel or in a source checkout."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_path(kind: str, *parts: str) -> Path:
    """Return the path of a packaged resource folder (`schemas`, `templates`) or a file in it.

    The wheel carries the folders inside the package; a source checkout (or an editable
    install) keeps them at the top of the repository.
    """
    for base in (PACKAGE_DIR / kind, PACKAGE_DIR.parent / kind):
        if base.is_dir():
            return base.joinpath(*parts)
    raise FileNotFoundError(f"kubecc is installed without its {kind} folder")
