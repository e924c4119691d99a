"""Canonical JSON and sha256: the one place where featstore hashes things."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# A file whose status changed this recently may change again within one tick of the file
# system's clock and keep every field of its status (git's "racily clean" entries): its hash
# is used, never remembered under that status. Two seconds cover coarse clocks (FAT's 2 s,
# a kernel's jiffies) and a little skew of a network file system's server.
RACY_NS = 2_000_000_000


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


@dataclass(frozen=True)
class FileState:
    """A file as ``stat`` sees it, enough to tell that its bytes may have changed.

    ``ctime_ns`` is the inode's change time: no user tool sets it (``touch -r`` and
    ``os.utime`` restore the modification time, not it), and deleting and re-creating a file
    changes it even where the inode number comes back.
    """

    dev: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> FileState:
        """The state of ``path`` now (raises OSError as ``os.stat`` does)."""
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def settled(before: FileState, after: FileState, looked_ns: int) -> bool:
    """Whether bytes read between ``before`` and ``after`` (``before`` taken at
    ``looked_ns``, ``time.time_ns()``) may be remembered under ``before``: the file did not
    change during the read, and its last change is older than :data:`RACY_NS`, so any later
    change gives it another state."""
    return before == after and before.ctime_ns < looked_ns - RACY_NS


def read_settled(path: str | Path) -> tuple[bytes, FileState | None]:
    """A file's bytes, read once, with its state before the read when that state names
    these bytes from now on (:func:`settled`), else None (it changed during the read, or
    too recently to be told apart from a next change)."""
    looked = time.time_ns()
    before = FileState.of(path)
    with open(path, "rb") as f:
        data = f.read()
    return data, before if settled(before, FileState.of(path), looked) else None


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
