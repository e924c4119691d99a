"""Dataset specs: one TOML file per release layout in this package (``<kind>.toml``), read as
package data. A spec says where a release comes from, its licence, task, metric, label names
and split rule for people, and (tables ``[layout]``, ``[split_rule]``, ``[datasets]``) the
file names, columns, fractions and seeds its reader uses."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from featstore.errors import ManifestError


def spec_kinds() -> list[str]:
    """Names of the specs shipped with featstore, sorted."""
    return sorted(f.name.removesuffix(".toml") for f in resources.files(__name__).iterdir()
                  if f.name.endswith(".toml"))


def load_spec(kind: str) -> dict[str, Any]:
    """The spec of a release layout (``pcam``, ``nih``, ``eyepacs``, ...).

    Raises
    ------
    ManifestError
        No spec of that name, or a spec that is not valid TOML.
    """
    path = resources.files(__name__) / f"{kind}.toml"
    if not path.is_file():
        raise ManifestError(f"no dataset spec {kind!r} (known: {', '.join(spec_kinds())})")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{kind}.toml: not valid TOML ({e})") from None
