"""What identifies a backbone's numbers, known without building it when it was built before.

Building a spec (timm, the checkpoint, hashing the weights) takes seconds; a cache hit, a
read-back probe or a plan needs only the result: the weights' sha256, the preprocessing
and the embedding width. Each build is remembered per user, under a fingerprint of
everything the result depends on: the spec, the weights file as the file system saw it just
before the build read it (path, device, inode, size, modification and change times;
``@random`` weights by the versions that draw them) and the versions of featstore, torch and
timm. A changed file, spec or version misses and builds again. The change time (``ctime``)
is what no user tool can set: a file overwritten with its old size and modification time
restored, or deleted and re-created on the same inode, has another. A build whose file
changed while it was read, or shortly before (:func:`featstore._hashing.settled`), is not
remembered. Specs whose weights timm resolves itself (``timm:<model>`` without ``@``) are
always built.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore._hashing import FileState, sha256_json
from featstore.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from featstore.models.registry import BackboneSpec, LoadedBackbone

IDENTITY_VERSION = 2  # 2: the file's state holds its device and change time


@dataclass(frozen=True)
class BackboneIdentity:
    """A backbone as its embedding key sees it: no model, just what fixes its numbers."""

    spec: BackboneSpec
    preprocessing: Preprocessing
    weights_sha256: str
    dim: int

    @property
    def alias(self) -> str:
        return self.spec.alias


def identity_cache() -> Path:
    """``$XDG_CACHE_HOME/featstore/backbones`` (default ``~/.cache/...``)."""
    base = os.path.expanduser(os.getenv("XDG_CACHE_HOME", "~/.cache"))
    return Path(base) / "featstore" / "backbones"


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def fingerprint(spec: BackboneSpec, state: FileState | None = None) -> str | None:
    """The cache name of ``spec``'s identity, its weights file in ``state`` (default: as it
    is now), or None when it cannot be known without building (weights resolved by timm, or
    a weights file not here)."""
    from featstore.models.weights import find_weights

    if spec.is_random:
        weights: Any = "random"
    elif spec.weights or spec.weights_file:
        path = find_weights(spec)
        if path is None:
            return None  # building names the missing file
        try:
            state = state or FileState.of(path)
        except OSError:
            return None
        weights = {"path": str(path.resolve()), **state.to_dict()}
    else:
        return None
    return sha256_json({"spec": asdict(spec), "weights": weights, "v": IDENTITY_VERSION,
                        "versions": {p: _version(p) for p in ("featstore", "torch", "timm")}})


def remembered(spec: BackboneSpec) -> BackboneIdentity | None:
    """The identity of a spec built before on this machine (unchanged since), else None."""
    name = fingerprint(spec)
    if name is None:
        return None
    try:
        d = json.loads((identity_cache() / f"{name}.json").read_text())
        prep = d["preprocessing"]
        return BackboneIdentity(spec, Preprocessing(**{**prep, "mean": tuple(prep["mean"]),
                                                       "std": tuple(prep["std"])}),
                                str(d["weights_sha256"]), int(d["dim"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not there, or unreadable: build again


def remember(loaded: LoadedBackbone, weights_state: FileState | None = None) -> None:
    """Keep a built backbone's identity (best effort: a read-only cache is skipped).

    ``weights_state``: its weights file's state before the build read the bytes it hashed
    and loaded; a file-backed spec without one (the file was changing) is not remembered.
    """
    if not loaded.spec.is_random and weights_state is None:
        return
    name = fingerprint(loaded.spec, weights_state)
    if name is None:
        return
    folder = identity_cache()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"weights_sha256": loaded.weights_sha256,
                                   "preprocessing": loaded.preprocessing.to_dict(),
                                   "dim": loaded.dim, "alias": loaded.alias}))
        os.replace(tmp, folder / f"{name}.json")
    except OSError:
        pass
