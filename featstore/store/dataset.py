"""A dataset group: one manifest's index arrays (ids, split, labels, group), its embedding
sets, and its fusion and finetuning run logs."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from featstore.data.manifest import Manifest
from featstore.errors import NotExtractedError, StoreError
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.layout import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_ROWS,
    FINETUNE_GROUP,
    FUSION_GROUP,
    INDEX_ARRAYS,
    EmbeddingKey,
    children,
    open_child,
    require_group,
)
from featstore.store.runlog import RunLog

if TYPE_CHECKING:
    from featstore.store.feature_store import FeatureStore


def index_arrays(manifest: Manifest) -> dict[str, np.ndarray]:
    """The index arrays a dataset group stores for a manifest, rows in manifest order."""
    groups = manifest.group if manifest.group is not None else np.full(len(manifest), "")
    return {"ids": np.asarray(manifest.ids, dtype=str),
            "split": np.asarray(manifest.split, dtype=str),
            "labels": manifest.labels.astype(np.int64),
            "group": np.asarray(groups, dtype=str)}


def write_index(g: zarr.Group, manifest: Manifest) -> None:
    write_index_arrays(g, index_arrays(manifest))


def write_index_arrays(g: zarr.Group, arrays: dict[str, np.ndarray]) -> None:
    chunk = max(min(len(arrays["ids"]), 65536), 1)
    for name, values in arrays.items():
        dtype = "int64" if values.dtype.kind == "i" else str
        a = g.create_array(name, shape=values.shape, dtype=dtype,
                           chunks=(chunk,) + values.shape[1:], overwrite=True)
        a[...] = values


class DatasetGroup:
    """One dataset (manifest) in a store: its index arrays and its embedding sets."""

    def __init__(self, store: FeatureStore, name: str, group: zarr.Group) -> None:
        self.store = store
        self.name = name
        self.group = group
        self.repaired_index: list[str] = []  # index arrays rewritten from the manifest

    def damaged_index(self, manifest: Manifest) -> list[str]:
        """The stored index arrays that differ from ``manifest``'s (or cannot be read), each
        with the first differing row: empty when the index is intact."""
        damaged, read = [], {}
        for name, want in index_arrays(manifest).items():
            try:
                have = read[name] = self.group[name][...]
            except Exception as e:  # a missing or undecodable chunk
                damaged.append(f"{name!r} unreadable ({e.__class__.__name__})")
                continue
            if have.shape != want.shape:
                damaged.append(f"{name!r} has shape {have.shape}, expected {want.shape}")
                continue
            same = have.astype(want.dtype) == want
            if not same.all():
                row = int(np.flatnonzero(~same.reshape(len(same), -1).all(axis=1))[0])
                damaged.append(f"{name!r} differs at row {row} (id {manifest.ids[row]!r})")
        if not damaged:  # what was just read is the index: no second read
            self.__dict__["index"] = read
        return damaged

    def __repr__(self) -> str:
        return f"DatasetGroup({self.name!r})"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def manifest_sha256(self) -> str:
        return str(self.group.attrs["manifest_sha256"])

    @property
    def rows(self) -> int:
        return int(self.group.attrs["rows"])

    @cached_property
    def index(self) -> dict[str, np.ndarray]:
        """``ids``, ``split``, ``labels`` (N, K) and ``group`` arrays, rows aligned."""
        return {k: self.group[k][...] for k in INDEX_ARRAYS}

    @cached_property
    def fusion_runs(self) -> RunLog:
        """The fusion runs of this dataset (``fusion/<run id>``: config and records)."""
        return RunLog(self.store, self.group, self.name, FUSION_GROUP)

    @cached_property
    def finetune_runs(self) -> RunLog:
        """The finetuning runs of this dataset, finished or not (``finetune/<run id>``:
        status, config, records)."""
        return RunLog(self.store, self.group, self.name, FINETUNE_GROUP)

    def set_names(self) -> list[str]:
        """Names of the members that may be embedding sets (one listing, no metadata read)."""
        return [n for n in children(self.group)
                if n not in (FUSION_GROUP, FINETUNE_GROUP, *INDEX_ARRAYS)]

    def open_set(self, name: str) -> EmbeddingSet | None:
        """The embedding set ``name``; None when it is not one, or when its metadata cannot
        be read (then recorded in the store's ``unreadable``)."""
        where = f"{self.store.root}/{self.name}"
        try:
            g = open_child(self.group, name, where)
            if g is not None and "key" in g.attrs:
                return EmbeddingSet(self, name, g)
        except (StoreError, KeyError, ValueError, TypeError) as e:
            self.store._note_unreadable(f"{where}/{name}", e)
        return None

    def embedding_sets(self) -> list[EmbeddingSet]:
        """All readable embedding sets of this dataset, by alias then key; a set whose
        metadata cannot be read is left out and recorded in the store's ``unreadable``."""
        sets = [es for name in self.set_names() if (es := self.open_set(name)) is not None]
        return sorted(sets, key=lambda s: (s.alias, s.key))

    def embedding_set(self, key_or_alias: str) -> EmbeddingSet:
        """The embedding set whose key starts with, or whose alias equals, ``key_or_alias``.

        Raises
        ------
        NotExtractedError
            None matches, or several do (they are listed so the user can pick a key).
        """
        sets = self.embedding_sets()
        hits = [s for s in sets if s.key.startswith(key_or_alias) or s.alias == key_or_alias]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            have = ", ".join(f"{s.alias} ({s.key[:12]})" for s in sets) or "none"
            raise NotExtractedError(
                f"dataset {self.name}: no embeddings for {key_or_alias!r} (have: {have})"
            )
        listing = ", ".join(f"{s.key[:12]} ({s.alias})" for s in hits)
        raise NotExtractedError(
            f"dataset {self.name}: {key_or_alias!r} matches {len(hits)} embedding sets: "
            f"{listing}; pass a key prefix"
        )

    def create_embedding_set(self, key: EmbeddingKey, *, dim: int, dtype: str, alias: str,
                             provenance: dict[str, Any],
                             shard_rows: int = DEFAULT_SHARD_ROWS,
                             chunk_rows: int = DEFAULT_CHUNK_ROWS) -> EmbeddingSet:
        """Open the set of ``key``, creating its arrays if it does not exist yet.

        An existing set is reused only if its key, dim, dtype and shard size match.
        """
        name = key.short
        if name in self.group:
            g = self.group[name]
            if "key" in g.attrs:
                es = EmbeddingSet(self, name, g)
                if es.key != key.digest:
                    raise StoreError(f"{self.name}/{name}: holds key {es.key}, not {key.digest}")
                if (es.dim, es.dtype) != (dim, dtype):
                    raise StoreError(
                        f"{self.name}/{name}: has dim {es.dim} {es.dtype}, the backbone gives "
                        f"{dim} {dtype}; the store is inconsistent"
                    )
                return es
        n = self.rows
        shard_rows = max(1, min(shard_rows, n))
        chunk_rows = max(1, min(chunk_rows, shard_rows))
        if shard_rows % chunk_rows:
            chunk_rows = shard_rows
        n_shards = -(-n // shard_rows)
        g = require_group(self.group, name)
        g.create_array("embeddings", shape=(n, dim), dtype=dtype, chunks=(chunk_rows, dim),
                       shards=(shard_rows, dim), compressors=None, fill_value=0,
                       overwrite=True)
        g.create_array("checksums", shape=(n_shards, 32), dtype="uint8", chunks=(1, 32),
                       compressors=None, fill_value=0, overwrite=True)
        g.create_array("missing", shape=(n,), dtype="uint8", chunks=(shard_rows,),
                       compressors=None, fill_value=0, overwrite=True)
        g.create_array("done", shape=(n_shards,), dtype="uint8", chunks=(1,),
                       compressors=None, fill_value=0, overwrite=True)
        g.attrs.update({
            "key": key.digest,
            "key_fields": key.fields,
            "alias": alias,
            "dim": dim,
            "dtype": dtype,
            "shard_rows": shard_rows,
            "n_shards": n_shards,
            "status": "incomplete",
            "provenance": provenance,
        })
        es = EmbeddingSet(self, name, g)
        es.publish()
        return es
