"""What a dataset *is*, whatever folder it is mounted at and whatever its manifest is called.

A dataset's identity is a sha256 over its rows (ids, split, labels, patient groups), its task
(task, classes, label names) and the content of the files its rows point at (each file's
fingerprint, and for array rows the array name and row index) -- never over paths or names.
So ``--data ROOT``, ``--data KIND:ROOT``, the CSV ``manifest build`` writes and a copy of the
data at another path are one dataset, and one group in a store.

A file's fingerprint is its size and a sha256 of its bytes: all of them for files up to
:data:`FULL_HASH_BYTES`, three :data:`SAMPLE_BYTES` blocks (start, middle, end) for larger
ones (array files of several GB). It catches a replaced, truncated, re-encoded or resized
file; it does not catch an edit that keeps the size and falls between the samples of a large
file. Fingerprints are cached per user, keyed by the file's path, device, inode, size,
modification and change times (``$XDG_CACHE_HOME/featstore/fingerprints.sqlite``), so the
second look at a dataset costs one ``stat`` per file. The change time is what no user tool
sets: an image replaced in place by another of the same size, its modification time
restored, is hashed again. A file that changed while it was hashed, or shortly before
(:func:`featstore._hashing.settled`), is not cached.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featstore._hashing import FileState, settled
from featstore.errors import ManifestError

if TYPE_CHECKING:
    from featstore.data.manifest import Manifest

IDENTITY_FORMAT = 1
SAMPLE_BYTES = 1 << 16
FULL_HASH_BYTES = 3 * SAMPLE_BYTES
_THREADS = 8
_SQL_BATCH = 500


def cache_path() -> Path:
    """The fingerprint cache: ``$XDG_CACHE_HOME/featstore/fingerprints.sqlite``."""
    base = os.path.expanduser(os.getenv("XDG_CACHE_HOME", "~/.cache"))
    return Path(base) / "featstore" / "fingerprints.sqlite"


def file_fingerprint(path: str | Path, size: int | None = None) -> str:
    """``<size>:<sha256 hex[:32]>`` of a file's bytes (sampled above FULL_HASH_BYTES)."""
    if size is None:
        size = os.stat(path).st_size
    h = hashlib.sha256(f"featstore-file/{IDENTITY_FORMAT}:{size}\n".encode())
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            h.update(f.read())
        else:
            for offset in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
                f.seek(offset)
                h.update(f.read(SAMPLE_BYTES))
    return f"{size}:{h.hexdigest()[:32]}"


class _Cache:
    """The stat-keyed fingerprint cache; every failure of it only costs a recomputation."""

    def __init__(self, path: Path) -> None:
        self.db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30)
            # fp2: the state holds the change time (fp, the table before it, is not read)
            self.db.execute("CREATE TABLE IF NOT EXISTS fp2 (path TEXT PRIMARY KEY, dev INT, "
                            "ino INT, size INT, mtime INT, ctime INT, fp TEXT)")
        except (OSError, sqlite3.Error):
            self.db = None

    def get(self, stats: dict[str, FileState]) -> dict[str, str]:
        if self.db is None:
            return {}
        hits: dict[str, str] = {}
        names = list(stats)
        try:
            for i in range(0, len(names), _SQL_BATCH):
                batch = names[i:i + _SQL_BATCH]
                rows = self.db.execute(
                    f"SELECT path, dev, ino, size, mtime, ctime, fp FROM fp2 WHERE path IN "
                    f"({','.join('?' * len(batch))})", batch)
                for path, *state, fp in rows:
                    if FileState(*state) == stats[path]:
                        hits[path] = fp
        except sqlite3.Error:
            return {}
        return hits

    def put(self, stats: dict[str, FileState], fps: dict[str, str]) -> None:
        if self.db is None or not fps:
            return
        try:
            with self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO fp2 VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(p, *astuple(stats[p]), fp) for p, fp in fps.items()])
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def fingerprints(paths: Sequence[Path], *, who: Sequence[str] | None = None) -> list[str]:
    """Fingerprints of ``paths`` (in order), from the cache where the file is unchanged.

    Raises
    ------
    ManifestError
        A file that does not exist or cannot be read, named (with ``who[i]``, e.g. its row id).
    """
    def missing(i: int, e: OSError) -> ManifestError:
        label = f"{who[i]}: " if who is not None else ""
        reason = "file not found" if isinstance(e, FileNotFoundError) else e.strerror
        return ManifestError(f"{label}{reason}: {paths[i]}")

    full = [os.path.abspath(p) for p in paths]
    looked = time.time_ns()
    stats: dict[str, FileState] = {}
    for i, p in enumerate(full):
        try:
            stats[p] = FileState.of(p)
        except OSError as e:
            raise missing(i, e) from None
    cache = _Cache(cache_path())
    try:
        known = cache.get(stats)
        todo = [i for i, p in enumerate(full) if p not in known]

        def one(i: int) -> tuple[str, bool]:
            """The file's fingerprint, and whether it may be cached under its state."""
            try:
                fp = file_fingerprint(full[i], stats[full[i]].size)
                return fp, settled(stats[full[i]], FileState.of(full[i]), looked)
            except OSError as e:
                raise missing(i, e) from None

        with ThreadPoolExecutor(min(_THREADS, max(len(todo), 1))) as pool:
            done = dict(zip((full[i] for i in todo), pool.map(one, todo), strict=True))
        new = {p: fp for p, (fp, _) in done.items()}
        cache.put(stats, {p: fp for p, (fp, keep) in done.items() if keep})
    finally:
        cache.close()
    known.update(new)
    return [known[p] for p in full]


def dataset_identity(manifest: Manifest) -> str:
    """Hex sha256 of what ``manifest`` is: rows, task and file content, not paths or names.

    Raises
    ------
    ManifestError
        A file the manifest points at is missing or unreadable, naming the row id.
    """
    distinct, first = np.unique(manifest.paths, return_index=True)
    fps = fingerprints([manifest.resolve(int(i)) for i in first],
                       who=[f"{manifest.name}: row id {str(manifest.ids[i])!r}" for i in first])
    fp_of = dict(zip(distinct.tolist(), fps, strict=True))
    content = [fp_of[p] for p in manifest.paths.tolist()]
    if manifest.array_keys is not None:
        content = [f"{c}/{a}/{i}" for c, a, i in
                   zip(content, manifest.array_keys.tolist(), manifest.index.tolist(),
                       strict=True)]
    groups = manifest.group if manifest.group is not None else ()
    parts = [
        f"featstore-dataset/{IDENTITY_FORMAT}".encode(),
        f"task={manifest.task};classes={manifest.num_classes}".encode(),
        ("names=" + ",".join(manifest.classes or ())).encode(),
        ("labels=" + ",".join(manifest.label_names)).encode(),
        "\x1f".join(manifest.ids.tolist()).encode(),
        "\x1f".join(manifest.split.tolist()).encode(),
        "\x1f".join(map(str, groups)).encode(),
        np.ascontiguousarray(manifest.labels, dtype="<i8").tobytes(),
        "\x1f".join(content).encode(),
    ]
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()
