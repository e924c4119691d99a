"""Rows of an embedding matrix, wherever they live: a whole array in memory, or a set in the
store read shard by shard (:meth:`featstore.store.embedding_set.EmbeddingSet.rows`).

A stage asks for the rows it uses, each selection as one compact array in the dtype it
computes in: ``take(X, [train, val], [np.float32, None])``. From the store only the shards
the selections touch are read, each shard once, converted as it is copied out; nothing
holds the whole set (nor a float32 copy of a float16 one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

BLOCK_ROWS = 8192  # rows a blockwise pass (scoring, statistics) holds at once


@runtime_checkable
class RowSource(Protocol):
    """What stages read rows from instead of an in-memory array."""

    shape: tuple[int, int]
    dtype: np.dtype

    def take(self, selections: Sequence[np.ndarray],
             dtypes: Sequence[Any]) -> list[np.ndarray]:
        """One compact array per selection (row indices), in its dtype (None: stored)."""
        ...


def take(X: np.ndarray | RowSource, selections: Sequence[np.ndarray],
         dtypes: Sequence[Any] | None = None) -> list[np.ndarray]:
    """The rows of each selection of ``X`` (an array or a :class:`RowSource`), each a new
    compact array in its dtype (None or omitted: ``X``'s own)."""
    dtypes = [None] * len(selections) if dtypes is None else list(dtypes)
    if len(dtypes) != len(selections):
        raise ValueError(f"{len(selections)} selections but {len(dtypes)} dtypes")
    if isinstance(X, np.ndarray):
        return [np.asarray(X[np.asarray(s)], dtype=dt or X.dtype) for s, dt in
                zip(selections, dtypes, strict=True)]
    return X.take([np.asarray(s) for s in selections], dtypes)


def blocks(n: int, block_rows: int = BLOCK_ROWS) -> Iterator[slice]:
    """Consecutive row slices covering ``range(n)``, ``block_rows`` at most each."""
    for start in range(0, n, block_rows):
        yield slice(start, min(start + block_rows, n))


def first_non_finite(X: np.ndarray, block_rows: int = BLOCK_ROWS) -> int | None:
    """The first row of ``X`` holding NaN or inf, or None; a block at a time (no (N, D)
    mask)."""
    for b in blocks(len(X), block_rows):
        bad = ~np.isfinite(X[b]).all(axis=1)
        if bad.any():
            return b.start + int(np.flatnonzero(bad)[0])
    return None


class ColumnBlocks:
    """Arrays of the same rows side by side, as one (N, sum of widths) matrix that is never
    materialised: the concatenation of several backbones' embeddings (fusion's concat
    probe), each part kept compact in its own dtype. ``block(rows)`` makes float32 rows of
    the concatenation a block at a time."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = [np.asarray(p) for p in parts]
        if not self.parts or any(p.ndim != 2 for p in self.parts):
            raise ValueError("ColumnBlocks takes one or more 2-D arrays")
        if len({len(p) for p in self.parts}) != 1:
            raise ValueError(f"parts of {sorted({len(p) for p in self.parts})} rows")
        self.widths = [p.shape[1] for p in self.parts]
        self.shape = (len(self.parts[0]), sum(self.widths))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes_float32(self) -> int:
        """What a float32 copy of the whole matrix would take."""
        return self.shape[0] * self.shape[1] * 4

    def block(self, rows: slice | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """float32 rows of the concatenation (into ``out`` when given)."""
        n = len(range(*rows.indices(len(self)))) if isinstance(rows, slice) else len(rows)
        out = np.empty((n, self.shape[1]), np.float32) if out is None else out[:n]
        start = 0
        for p, w in zip(self.parts, self.widths, strict=True):
            out[:, start:start + w] = p[rows]
            start += w
        return out

    def dense(self) -> np.ndarray:
        """The whole float32 matrix (what :func:`numpy.concatenate` gives)."""
        return self.block(slice(None))


def row_block(X: np.ndarray | ColumnBlocks, rows: slice) -> np.ndarray:
    """Rows of an array or of :class:`ColumnBlocks` (float32 for the latter)."""
    return X.block(rows) if isinstance(X, ColumnBlocks) else X[rows]
