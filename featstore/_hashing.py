"""Canonical JSON and sha256: the one place where featstore hashes things."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal content gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of a bytes-like object."""
    return hashlib.sha256(data).hexdigest()


def array_sha256(data: Any) -> bytes:
    """Raw sha256 (32 bytes) of a numpy array's little-endian bytes: a shard's checksum."""
    import numpy as np

    le = np.ascontiguousarray(data.astype(data.dtype.newbyteorder("<"), copy=False))
    return hashlib.sha256(le.reshape(-1).view(np.uint8)).digest()  # no copy of the bytes


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """Hex sha256 over a state dict's names, dtypes, element counts and bytes, in key order.

    ``state`` maps names to torch tensors; torch is imported only when this is called. The
    digest is a random-weights model's ``weights_sha256`` and so part of embedding keys: the
    recipe must never change (the shape hashed is the flattened one, ``(numel,)``).
    """
    import torch

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
