"""Dataset specs (``data_manifests/<kind>.toml``): where a release comes from, its licence,
expected files, task, label names, metric and split rule."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from featstore.errors import ManifestError

SPECS_ENV = "FEATSTORE_SPECS_DIR"


def spec_dirs() -> list[Path]:
    """Folders searched for specs: ``$FEATSTORE_SPECS_DIR``, the source checkout, the install."""
    dirs = [Path(os.environ[SPECS_ENV])] if os.environ.get(SPECS_ENV) else []
    return [*dirs, Path(__file__).resolve().parents[2] / "data_manifests",
            Path(sys.prefix) / "share" / "featstore" / "data_manifests"]


def load_spec(kind: str) -> dict[str, Any]:
    """The spec of a release layout (``pcam``, ``nih``, ``eyepacs``, ...).

    Raises
    ------
    ManifestError
        No spec of that name in any spec folder, or a spec that is not valid TOML.
    """
    for d in spec_dirs():
        path = d / f"{kind}.toml"
        if path.is_file():
            try:
                return tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise ManifestError(f"{path}: not valid TOML ({e})") from None
    raise ManifestError(f"no dataset spec {kind!r} in {', '.join(map(str, spec_dirs()))}")
