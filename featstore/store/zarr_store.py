"""The Zarr v3 feature store: one group per dataset, one sub-group per embedding key.

Layout::

    <root>/<dataset name>-<manifest sha[:12]>/
        ids, split, labels, group            index arrays, rows in manifest (id) order
        <key[:20]>/
            embeddings  (N, D)   sharded by rows; a writer only writes whole shards
            checksums   (S, 32)  sha256 of each shard's bytes, one chunk per shard
            missing     (N,)     1 where the image was skipped (--on-error skip): the row
                                 holds NaN, never a made-up embedding
            skipped/s<shard>     attrs: {id: reason} of a shard's skipped rows
            done        (S,)     1 once the shard's data and checksum are written
            attrs: key, key_fields, alias, provenance, status
    _claims/<dataset>/<key[:20]>/   claim markers of running extracts (see extract.claims)

The store is reached through zarr's store abstraction, so the same code runs on a local
directory or an fsspec URL (``s3://bucket/prefix``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from featstore._hashing import array_sha256, sha256_json
from featstore.data.manifest import Manifest
from featstore.errors import NotExtractedError, StoreError

STORE_FORMAT_VERSION = 1
DEFAULT_SHARD_ROWS = 1024
DEFAULT_CHUNK_ROWS = 256
KEY_CHARS = 20
PROBES_GROUP = "probes"
SKIPPED_GROUP = "skipped"
CLAIMS_GROUP = "_claims"
FUSION_GROUP = "fusion"


@dataclass(frozen=True)
class EmbeddingKey:
    """Content key of one backbone configuration's embeddings.

    ``fields`` holds everything that changes the numbers (architecture, weights sha256,
    preprocessing, layer, dtype); the store format version is added when hashing.
    """

    fields: dict[str, Any]

    @cached_property
    def digest(self) -> str:
        """Hex sha256 of the canonical JSON of the fields plus the store format version."""
        return sha256_json({**self.fields, "store_format": STORE_FORMAT_VERSION})

    @property
    def short(self) -> str:
        """The group name of this key inside a dataset group."""
        return self.digest[:KEY_CHARS]


@dataclass
class Embeddings:
    """Embeddings of one key with the dataset index, rows aligned."""

    X: np.ndarray
    ids: np.ndarray
    split: np.ndarray
    labels: np.ndarray
    group: np.ndarray
    alias: str
    key: str
    dataset: str
    attrs: dict[str, Any]
    missing: np.ndarray | None = None  # bool (N,): rows skipped at extraction (NaN in X)

    @property
    def n_missing(self) -> int:
        return 0 if self.missing is None else int(self.missing.sum())


def open_zarr_store(root: str | Path, *, read_only: bool = False) -> zarr.abc.store.Store:
    """A zarr store for a local folder or an fsspec URL (``s3://``, ``gs://``, ``memory://``)."""
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(text, read_only=read_only)
    return zarr.storage.LocalStore(Path(text.removeprefix("file://")), read_only=read_only)


class FeatureStore:
    """A feature store rooted at a local folder or an object-store prefix."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._zstore = open_zarr_store(root)

    def __repr__(self) -> str:
        return f"FeatureStore({self.root!r})"

    def _root_group(self, *, create: bool = False) -> zarr.Group | None:
        """The root group; ``None`` when the store does not exist yet and ``create`` is false
        (reading a store never creates it)."""
        if create:
            root = zarr.open_group(store=self._zstore, mode="a")
            if CLAIMS_GROUP not in root:  # claim files live below it, out of the datasets' way
                root.require_group(CLAIMS_GROUP)
            return root
        try:  # mode "r" first: "r+" would create the root folder of a local store
            zarr.open_group(store=self._zstore, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        return zarr.open_group(store=self._zstore, mode="r+")

    def datasets(self) -> list[DatasetGroup]:
        """Every dataset group in the store, by name."""
        root = self._root_group()
        if root is None:
            return []
        groups = []
        for name, g in sorted(root.groups()):
            if name != CLAIMS_GROUP and "manifest_sha256" in g.attrs:
                groups.append(DatasetGroup(self, name, g))
        return groups

    def dataset(self, manifest: Manifest, *, create: bool = False) -> DatasetGroup:
        """The group of ``manifest``, optionally created with its index arrays.

        Raises
        ------
        NotExtractedError
            The dataset is not in the store and ``create`` is false.
        StoreError
            A group of that name exists with another manifest hash.
        """
        name = manifest.group_name
        root = self._root_group(create=create)
        if root is not None and name in root:
            g = root[name]
            have = g.attrs.get("manifest_sha256")
            if have is not None and have != manifest.sha256:
                raise StoreError(
                    f"store {self.root}: group {name} holds manifest {have[:12]}..., not "
                    f"{manifest.sha256[:12]}..."
                )
            if have is not None:
                return DatasetGroup(self, name, g)
        if not create or root is None:
            raise NotExtractedError(
                f"dataset {manifest.name} (manifest {manifest.sha256[:12]}) is not in store "
                f"{self.root}: run 'featstore extract' first"
            )
        g = root.require_group(name)
        n = len(manifest)
        chunk = max(min(n, 65536), 1)

        def put(arr_name: str, values: np.ndarray, dtype: Any) -> None:
            shape = values.shape
            a = g.create_array(arr_name, shape=shape, dtype=dtype,
                               chunks=(chunk,) + shape[1:], overwrite=True)
            a[...] = values

        put("ids", np.asarray(manifest.ids, dtype=str), str)
        put("split", np.asarray(manifest.split, dtype=str), str)
        put("labels", manifest.labels.astype(np.int64), "int64")
        groups = manifest.group if manifest.group is not None else np.full(n, "", dtype=object)
        put("group", np.asarray(groups, dtype=str), str)
        # attrs last: a group without manifest_sha256 is an unfinished creation, redone above
        g.attrs.update({
            "name": manifest.name,
            "manifest_sha256": manifest.sha256,
            "rows": n,
            "task": manifest.task,
            "num_classes": manifest.num_classes,
            "label_names": list(manifest.label_names),
            "classes": list(manifest.classes) if manifest.classes else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return DatasetGroup(self, name, g)

    def find_dataset(self, name_or_hash: str) -> DatasetGroup:
        """A dataset group by its group name, its name, or a manifest-hash prefix.

        Raises
        ------
        NotExtractedError
            No group matches, or more than one does (they are listed).
        """
        hits = [d for d in self.datasets()
                if name_or_hash in (d.name, d.attrs.get("name"))
                or d.manifest_sha256.startswith(name_or_hash)]
        if len(hits) != 1:
            have = ", ".join(d.name for d in self.datasets()) or "none"
            what = "no dataset" if not hits else f"{len(hits)} datasets"
            raise NotExtractedError(f"store {self.root}: {what} match {name_or_hash!r} "
                                    f"(have: {have})")
        return hits[0]

    def load(self, manifest: Manifest, backbone: str) -> Embeddings:
        """Complete embeddings of ``manifest`` for a key (prefix) or alias, index aligned."""
        return self.dataset(manifest).embedding_set(backbone).load()


class DatasetGroup:
    """One dataset (manifest) in a store: its index arrays and its embedding sets."""

    def __init__(self, store: FeatureStore, name: str, group: zarr.Group) -> None:
        self.store = store
        self.name = name
        self.group = group

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
        return {k: self.group[k][...] for k in ("ids", "split", "labels", "group")}

    def save_fusion_run(self, run_id: str, payload: dict[str, Any]) -> None:
        """Persist a fusion run (config + records) under ``fusion/<run_id>``."""
        runs = self.group.require_group(FUSION_GROUP)
        runs.require_group(run_id).attrs.update(_to_json(payload))

    def fusion_run(self, run_id: str) -> dict[str, Any] | None:
        """A persisted fusion run (its config and records), or None."""
        runs = self.group.get(FUSION_GROUP)
        if runs is None or run_id not in runs:
            return None
        return dict(runs[run_id].attrs)

    def fusion_runs(self) -> list[dict[str, Any]]:
        """Every persisted fusion run of this dataset."""
        runs = self.group.get(FUSION_GROUP)
        return [] if runs is None else [dict(g.attrs) for _, g in sorted(runs.groups())]

    def embedding_sets(self) -> list[EmbeddingSet]:
        """All embedding sets of this dataset, by alias then key."""
        sets = [EmbeddingSet(self, name, g) for name, g in self.group.groups()
                if "key" in g.attrs]
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
        g = self.group.require_group(name)
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
        return EmbeddingSet(self, name, g)


class EmbeddingSet:
    """The embeddings of one key for one dataset, written and read shard by shard."""

    def __init__(self, dataset: DatasetGroup, name: str, group: zarr.Group) -> None:
        self.dataset = dataset
        self.name = name
        self.group = group
        a = group.attrs
        self.key: str = a["key"]
        self.alias: str = a["alias"]
        self.dim: int = int(a["dim"])
        self.dtype: str = a["dtype"]
        self.shard_rows: int = int(a["shard_rows"])
        self.n_shards: int = int(a["n_shards"])

    def __repr__(self) -> str:
        return f"EmbeddingSet({self.dataset.name}/{self.name}, {self.alias})"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def rows(self) -> int:
        return self.dataset.rows

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of one shard."""
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    def done_mask(self) -> np.ndarray:
        """Boolean (n_shards,): which shards are finished."""
        return self.group["done"][...].astype(bool)

    def pending_shards(self) -> list[int]:
        """Shards not yet done, in order."""
        return [int(i) for i in np.flatnonzero(~self.done_mask())]

    @property
    def complete(self) -> bool:
        return bool(self.done_mask().all())

    def shard_done(self, shard: int) -> bool:
        """Whether one shard is finished (read fresh from the store)."""
        return bool(self.group["done"][shard])

    def write_shard(self, shard: int, data: np.ndarray, missing: np.ndarray | None = None,
                    reasons: dict[str, str] | None = None) -> None:
        """Write one whole shard: data, missing mask and reasons, checksum, then done mark.

        A crash between these steps leaves the shard not done, so it is redone on resume.
        Rows flagged in ``missing`` (images skipped at extraction) are stored as NaN, with
        their ids and reasons under ``skipped/``.

        Raises
        ------
        StoreError
            Wrong shape, or non-finite values in a row not flagged missing (a broken forward
            pass is never cached).
        """
        start, stop = self.shard_bounds(shard)
        data = np.array(data, dtype=self.dtype, order="C")
        if data.shape != (stop - start, self.dim):
            raise StoreError(f"{self}: shard {shard} needs shape {(stop - start, self.dim)}, "
                             f"got {data.shape}")
        miss = np.zeros(stop - start, bool) if missing is None else np.asarray(missing, bool)
        data[miss] = np.nan
        finite = np.isfinite(data).all(axis=1)
        if not (finite | miss).all():
            bad = start + int(np.flatnonzero(~(finite | miss))[0])
            raise StoreError(f"{self}: non-finite embedding at row {bad} "
                             f"(id {str(self.dataset.index['ids'][bad])!r}); nothing written")
        self.group["embeddings"][start:stop] = data
        if "missing" in self.group:
            self.group["missing"][start:stop] = miss.astype(np.uint8)
        elif miss.any():
            raise StoreError(f"{self}: created before missing rows were supported; re-extract "
                             "it to skip images")
        skipped = self.group.get(SKIPPED_GROUP)
        name = f"s{shard:06d}"
        if miss.any():  # replaces what an interrupted earlier attempt may have left
            skipped = skipped or self.group.require_group(SKIPPED_GROUP)
            skipped.require_group(name).attrs.put(dict(reasons or {}))
        elif skipped is not None and name in skipped:
            del skipped[name]
        self.group["checksums"][shard] = np.frombuffer(array_sha256(data), dtype=np.uint8)
        self.group["done"][shard] = 1

    def missing_mask(self) -> np.ndarray:
        """Boolean (N,): rows whose image was skipped at extraction (stored as NaN)."""
        if "missing" not in self.group:
            return np.zeros(self.rows, dtype=bool)
        return self.group["missing"][...].astype(bool)

    def skipped(self) -> dict[str, str]:
        """{id: reason} of every row skipped at extraction, over the done shards."""
        g = self.group.get(SKIPPED_GROUP)
        if g is None:
            return {}
        done = self.done_mask()
        out: dict[str, str] = {}
        for name, sub in sorted(g.groups()):
            if done[int(name[1:])]:
                out.update(dict(sub.attrs))
        return out

    def mark_complete(self, extra: dict[str, Any] | None = None) -> None:
        """Record status ``complete`` (and any extra provenance) once every shard is done."""
        if not self.complete:
            raise StoreError(f"{self}: {len(self.pending_shards())} shards are not done")
        self.group.attrs.update({"status": "complete", **(extra or {})})

    def read(self, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Embeddings (N, D) or a row selection, in the stored dtype.

        Raises
        ------
        NotExtractedError
            Some shards are not done yet.
        """
        pending = self.pending_shards()
        if pending:
            raise NotExtractedError(
                f"{self.dataset.name}: embeddings {self.alias} ({self.key[:12]}) are "
                f"incomplete: {len(pending)} of {self.n_shards} shards not done; re-run "
                "'featstore extract' to resume"
            )
        arr = self.group["embeddings"]
        return arr[...] if rows is None else arr[rows]

    def load(self) -> Embeddings:
        """The embeddings with the dataset index arrays, rows aligned."""
        idx = self.dataset.index
        missing = self.missing_mask()
        return Embeddings(X=self.read(), ids=idx["ids"], split=idx["split"],
                          labels=idx["labels"], group=idx["group"], alias=self.alias,
                          key=self.key, dataset=self.dataset.name, attrs=self.attrs,
                          missing=missing if missing.any() else None)

    def probe_run(self, run_id: str) -> dict[str, Any] | None:
        """A persisted probe run (its config and records), or None."""
        probes = self.group.get(PROBES_GROUP)
        if probes is None or run_id not in probes:
            return None
        return dict(probes[run_id].attrs)

    def save_probe_run(self, run_id: str, payload: dict[str, Any]) -> None:
        """Persist a probe run under ``probes/<run_id>`` (its attrs), next to the embeddings."""
        probes = self.group.require_group(PROBES_GROUP)
        probes.require_group(run_id).attrs.update(_to_json(payload))

    def probe_runs(self) -> list[dict[str, Any]]:
        """Every persisted probe run of this embedding set."""
        probes = self.group.get(PROBES_GROUP)
        if probes is None:
            return []
        return [dict(g.attrs) for _, g in sorted(probes.groups())]

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """(shard, data) for each done shard."""
        arr = self.group["embeddings"]
        for i in np.flatnonzero(self.done_mask()):
            start, stop = self.shard_bounds(int(i))
            yield int(i), arr[start:stop]

    def verify(self) -> list[int]:
        """Shards whose stored bytes no longer match their checksum (empty list: intact)."""
        sums = self.group["checksums"][...]
        return [i for i, data in self.iter_shards()
                if array_sha256(np.ascontiguousarray(data)) != sums[i].tobytes()]


def _to_json(obj: Any) -> Any:
    """NaN/inf are not JSON: stored as None (undefined metrics stay undefined)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj
