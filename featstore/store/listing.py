"""What a store holds, as records: the rows of ``featstore ls``, ``info`` and ``verify``."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from featstore.errors import NotExtractedError, StoreError
from featstore.store.catalog import read_catalog
from featstore.store.feature_store import FeatureStore

if TYPE_CHECKING:
    from featstore.store.embedding_set import EmbeddingSet


def list_sets(store: FeatureStore, *, use_catalog: bool = True) -> list[dict[str, Any]]:
    """A summary of every embedding set of every dataset in the store (reads no embeddings).

    Complete sets are read from the catalog (one concurrent fetch); sets it lacks or holds
    as incomplete are opened, and a complete one's entry is written for the next time.
    ``use_catalog=False`` opens every set (what ``ls`` did before the catalog).
    """
    entries = read_catalog(store.objects) if use_catalog else {}
    rows = []
    where: list[tuple] = []  # each row's (dataset group, set name)
    for ds in store.datasets():
        for name in ds.set_names():
            row = entries.get((ds.name, name))
            if row is not None and row["status"] == "complete" and "precision" in row:
                rows.append(row)
                where.append((ds, name))
                continue  # (an entry from before precision was listed is written again)
            es = ds.open_set(name)
            if es is None:
                continue
            row = es.summary()
            if use_catalog and row["status"] == "complete":
                es.publish()  # a set made before the catalog, or completed by a killed run
            rows.append(row)
            where.append((ds, name))
    # entries written before pixels were listed: read from the set where ls shows them (an
    # alias with several sets), and the entry written again
    shared = Counter((r["dataset"], r["backbone"]) for r in rows)
    for k, (r, (ds, name)) in enumerate(zip(rows, where, strict=True)):
        if "pixels" not in r and shared[(r["dataset"], r["backbone"])] > 1:
            es = ds.open_set(name)
            if es is not None:
                rows[k] = es.summary()
                es.publish()
    return sorted(rows, key=lambda r: (r["dataset"], r["backbone"], r["key"]))


def find_sets(store: FeatureStore, target: str) -> list[dict[str, Any]]:
    """Provenance of every set whose key starts with, or whose alias equals, ``target``.

    Raises
    ------
    NotExtractedError
        No set in any dataset matches, or ``target`` is empty (a prefix of every key).
    """
    if not target.strip():
        raise NotExtractedError(f"{target!r}: expected an embedding key prefix or a backbone "
                                "alias ('featstore ls' lists them), not an empty name")
    hits = [es for ds in store.datasets() for es in ds.embedding_sets()
            if es.key.startswith(target) or es.alias == target]
    if not hits:
        raise NotExtractedError(f"store {store.root}: no embedding set matches {target!r}")
    return [{"dataset": es.dataset.name, "shards_done": int(es.done_mask().sum()),
             "rows": es.rows, "bytes": es.rows * es.dim * np.dtype(es.dtype).itemsize,
             **es.attrs} for es in hits]


def _wrong_weights(es: EmbeddingSet) -> dict[str, str] | None:
    """A set whose provenance names other weights than its key (written by a featstore whose
    remembered backbone identity could outlive its weights file): {"key": sha, "made_by":
    sha}; None when they agree or either is not recorded."""
    key = (es.attrs.get("key_fields") or {}).get("weights_sha256")
    made = (es.attrs.get("provenance") or {}).get("weights_sha256")
    return {"key": key, "made_by": made} if key and made and key != made else None


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
                         "marked_for_recompute": bad if repair else [],
                         "wrong_weights": _wrong_weights(es)})
    return rows
