"""What a store holds, as records: the rows of ``featstore ls``, ``info`` and ``verify``."""

from __future__ import annotations

from typing import Any

from featstore.errors import NotExtractedError, StoreError
from featstore.store.zarr_store import EmbeddingSet, FeatureStore


def set_summary(es: EmbeddingSet) -> dict[str, Any]:
    """One embedding set: dataset, alias, key, size, shards done, status, missing rows."""
    done = int(es.done_mask().sum())
    return {
        "dataset": es.dataset.name, "backbone": es.alias, "key": es.key,
        "rows": es.rows, "dim": es.dim, "dtype": es.dtype,
        "shards_done": done, "shards": es.n_shards,
        "status": "complete" if done == es.n_shards else "incomplete",
        "missing": int(es.missing_mask().sum()),
        "random_weights": bool(es.attrs.get("provenance", {}).get("random_weights")),
    }


def list_sets(store: FeatureStore) -> list[dict[str, Any]]:
    """A summary of every embedding set of every dataset in the store (reads no embeddings)."""
    return [set_summary(es) for ds in store.datasets() for es in ds.embedding_sets()]


def find_sets(store: FeatureStore, target: str) -> list[dict[str, Any]]:
    """Provenance of every set whose key starts with, or whose alias equals, ``target``.

    Raises
    ------
    NotExtractedError
        No set in any dataset matches.
    """
    hits = [es for ds in store.datasets() for es in ds.embedding_sets()
            if es.key.startswith(target) or es.alias == target]
    if not hits:
        raise NotExtractedError(f"store {store.root}: no embedding set matches {target!r}")
    return [{"dataset": es.dataset.name, "shards_done": int(es.done_mask().sum()),
             **es.attrs} for es in hits]


def verify_store(store: FeatureStore, *, repair: bool = False) -> list[dict[str, Any]]:
    """Recompute every done shard's checksum: one row per set with its corrupt shards (ones
    that fail their checksum or cannot be read). With ``repair``, those shards are marked
    not done, so the next extract of the set recomputes them.

    Raises
    ------
    StoreError
        No store at the root.
    """
    if not store.exists():
        raise StoreError(f"no store at {store.root}")
    rows = []
    for ds in store.datasets():
        for es in ds.embedding_sets():
            checked = int(es.done_mask().sum())
            bad = es.verify()
            if repair and bad:
                es.invalidate(bad)
            rows.append({"dataset": ds.name, "backbone": es.alias, "key": es.key,
                         "shards_checked": checked, "corrupt_shards": bad,
                         "marked_for_recompute": bad if repair else []})
    return rows
