"""The Zarr v3 feature store: one group per dataset, one sub-group per embedding key.

Layout::

    <root>/<dataset name>-<identity[:12]>/   found by its ``identity`` attribute (what the
                                             data is; older groups: <name>-<path hash>)
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
    _catalog/<dataset>/<key[:20]>.json   one entry per set for ``ls`` (see store.catalog)

The store is reached through zarr's store abstraction, so the same code runs on a local
directory or an fsspec URL (``s3://bucket/prefix``).
"""

from __future__ import annotations

import os
import sys
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
from featstore.errors import CorruptShardError, NotExtractedError, StoreError
from featstore.store.cache import ShardCache
from featstore.store.catalog import CATALOG_GROUP, publish
from featstore.store.objects import StoreObjects

STORE_FORMAT_VERSION = 1
DEFAULT_SHARD_ROWS = 1024
DEFAULT_CHUNK_ROWS = 256
KEY_CHARS = 20
PROBES_GROUP = "probes"
SKIPPED_GROUP = "skipped"
CLAIMS_GROUP = "_claims"
FUSION_GROUP = "fusion"
FINETUNE_GROUP = "finetune"
CHECKPOINTS_GROUP = "_checkpoints"  # finetuning checkpoints and weights (whole objects)


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

    X: np.ndarray | None  # None: the index alone (EmbeddingSet.load(index_only=True))
    ids: np.ndarray
    split: np.ndarray
    labels: np.ndarray
    group: np.ndarray
    alias: str
    key: str
    dataset: str
    attrs: dict[str, Any]
    missing: np.ndarray | None = None  # bool (N,): rows skipped at extraction (NaN in X)
    label_names: tuple[str, ...] = ()  # the dataset's label names (multilabel: findings)

    @property
    def n_missing(self) -> int:
        return 0 if self.missing is None else int(self.missing.sum())


def _children(group: zarr.Group) -> list[str]:
    """Names under a group, listed from the store without parsing their metadata (so one
    unreadable ``zarr.json`` cannot hide its siblings)."""
    from zarr.core.sync import sync

    async def names() -> list[str]:
        return [n async for n in group.store.list_dir(group.path)]

    return sorted(n for n in sync(names()) if n != "zarr.json" and not n.startswith("."))


def _open_child(group: zarr.Group, name: str, where: str) -> zarr.Group | None:
    """A child group, None for a non-group member; raises StoreError naming the file for a
    member whose metadata cannot be read."""
    try:
        child = group[name]
    except KeyError:
        return None  # a stray file or an empty folder, not a member
    except Exception as e:  # zarr raises assorted errors for broken metadata
        raise StoreError(f"{where}/{name}/zarr.json: unreadable ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return child if isinstance(child, zarr.Group) else None


def require_group(parent: zarr.Group, name: str) -> zarr.Group:
    """``parent[name]``, created when missing. Another process (a teammate, a parallel
    pipeline, a second copy) creating it at the same moment is success, not an error: zarr's
    check-then-create loses that race with ContainsGroupError, and the group is then there."""
    try:
        return parent.require_group(name)
    except zarr.errors.ContainsGroupError:
        return parent[name]


def open_zarr_store(root: str | Path, *, read_only: bool = False) -> zarr.abc.store.Store:
    """A zarr store for a local folder or an fsspec URL (``s3://``, ``gs://``, ``memory://``)."""
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        try:
            store = zarr.storage.FsspecStore.from_url(text, read_only=read_only)
        except ImportError as e:  # fsspec names the missing package (s3fs, gcsfs, ...)
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
            how = f"pip install 'featstore[{extra}]'" if extra else "install its fsspec driver"
            raise StoreError(f"--store {text}: {scheme}:// needs a package that is not "
                             f"installed ({how}): {str(e).splitlines()[0]}") from None
        if scheme in BUCKET_SCHEMES:
            _check_bucket(store, text)
        return store
    path = Path(text.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise StoreError(f"--store {text}: a file, not a store folder")
    return zarr.storage.LocalStore(path, read_only=read_only)


BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")


def _check_bucket(store: zarr.storage.FsspecStore, text: str) -> None:
    """One request to the store's bucket, so that a missing bucket or an endpoint that does
    not answer is one error naming them, not a failure deep inside a read.

    Raises
    ------
    StoreError
        The bucket does not exist, or the object store cannot be reached.
    """
    from zarr.core.sync import sync

    bucket = store.path.split("/", 1)[0]
    try:
        sync(store.fs._info(bucket))
    except FileNotFoundError:
        raise StoreError(f"--store {text}: bucket {bucket!r} does not exist (or these "
                         "credentials cannot see it)") from None
    except PermissionError:  # may still read and write under the prefix: carry on
        return
    except Exception as e:  # botocore/aiohttp connection errors, timeouts, bad endpoints
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise StoreError(f"--store {text}: cannot reach the object store ({first}); check "
                         "the endpoint (AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL), network "
                         "and credentials") from None


RESULTS_STORE_ENV = "FEATSTORE_RESULTS_STORE"


def default_results_store() -> str:
    """Where runs go that the store refuses (a reader without write access):
    ``$FEATSTORE_RESULTS_STORE``, else ``$XDG_CACHE_HOME/featstore/results``."""
    if os.environ.get(RESULTS_STORE_ENV):
        return os.environ[RESULTS_STORE_ENV]
    cache = os.path.expanduser(os.getenv("XDG_CACHE_HOME", "~/.cache"))
    return os.path.join(cache, "featstore", "results")


class FeatureStore:
    """A feature store rooted at a local folder or an object-store prefix."""

    def __init__(self, root: str | Path, *, results_store: str | Path | None = None,
                 cache: str | Path | None = None) -> None:
        self.root = str(root)
        self._zstore = open_zarr_store(root)
        # a local cache of whole shards, for stores that are not local folders
        self.cache = (ShardCache(cache) if cache is not None
                      and not isinstance(self._zstore, zarr.storage.LocalStore) else None)
        # where runs go when this store cannot be written (read-only credentials or mount)
        self.results_root = None if results_store is None else str(results_store)
        self.notes: list[str] = []  # one-line notes for the user (runs saved elsewhere)
        # members whose metadata could not be read: (path, error), found while listing
        self.unreadable: list[tuple[str, str]] = []

    def __repr__(self) -> str:
        return f"FeatureStore({self.root!r})"

    @cached_property
    def results(self) -> FeatureStore | None:
        """The local results store that holds runs this store could not take, or None."""
        if self.results_root is None or self.results_root == self.root:
            return None
        return FeatureStore(self.results_root)

    def _results_group(self, path: str, *, create: bool) -> zarr.Group | None:
        """The group mirroring ``path`` (dataset or dataset/set) in the results store."""
        if self.results is None:
            return None
        root = self.results._root_group(create=create)
        if root is None:
            return None
        try:
            return require_group(root, path) if create else root[path]
        except KeyError:
            return None

    def _note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)

    @cached_property
    def objects(self) -> StoreObjects:
        """Whole small objects under the root (claims, catalog), with exclusive create."""
        return StoreObjects(self._zstore)

    def _root_group(self, *, create: bool = False) -> zarr.Group | None:
        """The root group; ``None`` when the store does not exist yet and ``create`` is false
        (reading a store never creates it)."""
        if create:
            root = zarr.open_group(store=self._zstore, mode="a")
            if CLAIMS_GROUP not in root:  # claim files live below it, out of the datasets' way
                require_group(root, CLAIMS_GROUP)
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
        for name in _children(root):
            if name in (CLAIMS_GROUP, CATALOG_GROUP, CHECKPOINTS_GROUP):
                continue
            try:
                g = _open_child(root, name, self.root)
            except StoreError as e:
                self._note_unreadable(f"{self.root}/{name}", e)
                continue
            if g is not None and "manifest_sha256" in g.attrs:
                groups.append(DatasetGroup(self, name, g))
        return groups

    def _note_unreadable(self, path: str, error: Exception) -> None:
        if all(p != path for p, _ in self.unreadable):
            self.unreadable.append((path, str(error)))

    def exists(self) -> bool:
        """Whether a store is at the root (reading never creates one)."""
        return self._root_group() is not None

    def dataset(self, manifest: Manifest, *, create: bool = False) -> DatasetGroup:
        """The group of ``manifest``, optionally created with its index arrays.

        The group is found by the dataset's content :attr:`~Manifest.identity`, whatever it is
        named and wherever the data was mounted when it was made. A group written before
        groups carried an identity (named ``<name>-<path hash>``) is taken over when the
        manifest that made it opens it: its ``identity`` attribute is added (when the store is
        writable), and from then on every copy of the data finds it.

        Raises
        ------
        NotExtractedError
            The dataset is not in the store and ``create`` is false.
        """
        root = self._root_group(create=create)
        ds = self._find(root, manifest) if root is not None else None
        if ds is not None:
            damaged = ds.damaged_index(manifest)
            if damaged and not create:
                raise CorruptShardError(
                    f"store {self.root}: dataset {ds.name}: index {'; '.join(damaged)} does "
                    "not match the manifest (the store is damaged); run 'featstore "
                    "extract' on this dataset to rewrite the index")
            if damaged:  # the manifest matches the group's identity: it is the truth
                _write_index(ds.group, manifest)
                ds.repaired_index = damaged
                ds.__dict__.pop("index", None)
            return ds
        if not create or root is None:
            raise NotExtractedError(
                f"dataset {manifest.name} (identity {manifest.identity[:12]}) is not in store "
                f"{self.root}: run 'featstore extract' first"
            )
        name = manifest.group_name
        g = require_group(root, name)
        n = len(manifest)
        _write_index(g, manifest)
        # attrs last: a group without manifest_sha256 is an unfinished creation, redone above
        g.attrs.update({
            "name": manifest.name,
            "identity": manifest.identity,
            "manifest_sha256": manifest.sha256,
            "rows": n,
            "task": manifest.task,
            "num_classes": manifest.num_classes,
            "label_names": list(manifest.label_names),
            "classes": list(manifest.classes) if manifest.classes else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return DatasetGroup(self, name, g)

    def _find(self, root: zarr.Group, manifest: Manifest) -> DatasetGroup | None:
        """The group holding ``manifest``'s dataset: by identity, else its legacy group."""
        groups = self.datasets()
        for ds in groups:  # sorted by name: of two groups with one identity, the first wins
            if ds.attrs.get("identity") == manifest.identity:
                return ds
        names = {f"{manifest.name}-{h[:12]}": h for h in manifest.legacy_sha256s}
        legacy = next((d for d in groups if names.get(d.name) == d.manifest_sha256
                       and d.attrs.get("identity") is None), None)
        if legacy is not None:  # made before identities: adopt it
            try:
                legacy.group.attrs["identity"] = manifest.identity
            except (OSError, PermissionError):  # a read-only store: use it as it is
                pass
        return legacy

    def find_dataset(self, name_or_hash: str) -> DatasetGroup:
        """A dataset group by its group name, its name, or a manifest-hash prefix.

        Raises
        ------
        NotExtractedError
            No group matches, or more than one does (they are listed).
        """
        hits = [d for d in self.datasets()
                if name_or_hash in (d.name, d.attrs.get("name"))
                or d.manifest_sha256.startswith(name_or_hash)
                or str(d.attrs.get("identity") or "").startswith(name_or_hash)]
        if len(hits) != 1:
            have = ", ".join(d.name for d in self.datasets()) or "none"
            what = "no dataset" if not hits else f"{len(hits)} datasets"
            raise NotExtractedError(f"store {self.root}: {what} match {name_or_hash!r} "
                                    f"(have: {have})")
        return hits[0]

    def load(self, manifest: Manifest, backbone: str) -> Embeddings:
        """Complete embeddings of ``manifest`` for a key (prefix) or alias, index aligned."""
        return self.dataset(manifest).embedding_set(backbone).load()


def _index_arrays(manifest: Manifest) -> dict[str, np.ndarray]:
    """The index arrays a dataset group stores for a manifest, rows in manifest order."""
    groups = manifest.group if manifest.group is not None else np.full(len(manifest), "")
    return {"ids": np.asarray(manifest.ids, dtype=str),
            "split": np.asarray(manifest.split, dtype=str),
            "labels": manifest.labels.astype(np.int64),
            "group": np.asarray(groups, dtype=str)}


def _write_index(g: zarr.Group, manifest: Manifest) -> None:
    _write_index_arrays(g, _index_arrays(manifest))


def _write_index_arrays(g: zarr.Group, arrays: dict[str, np.ndarray]) -> None:
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
        for name, want in _index_arrays(manifest).items():
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
        return {k: self.group[k][...] for k in ("ids", "split", "labels", "group")}

    def save_fusion_run(self, run_id: str, payload: dict[str, Any]) -> None:
        """Persist a fusion run (config + records) under ``fusion/<run_id>``."""
        _save_run(self.store, self.group, self.name, FUSION_GROUP, run_id, payload)

    def fusion_run(self, run_id: str) -> dict[str, Any] | None:
        """A persisted fusion run (its config and records), or None."""
        return _run(self.store, self.group, self.name, FUSION_GROUP, run_id)

    def fusion_runs(self) -> list[dict[str, Any]]:
        """Every persisted fusion run of this dataset."""
        return list(self.fusion_runs_by_id().values())

    def fusion_runs_by_id(self) -> dict[str, dict[str, Any]]:
        """Every persisted fusion run of this dataset, by run id."""
        return _runs(self.store, self.group, self.name, FUSION_GROUP)

    def save_finetune_run(self, run_id: str, payload: dict[str, Any]) -> None:
        """Persist a finetuning run (status, config, records) under ``finetune/<run_id>``."""
        _save_run(self.store, self.group, self.name, FINETUNE_GROUP, run_id, payload)

    def finetune_run(self, run_id: str) -> dict[str, Any] | None:
        """A persisted finetuning run, or None."""
        return _run(self.store, self.group, self.name, FINETUNE_GROUP, run_id)

    def finetune_runs_by_id(self) -> dict[str, dict[str, Any]]:
        """Every persisted finetuning run of this dataset (finished or not), by run id."""
        return _runs(self.store, self.group, self.name, FINETUNE_GROUP)

    def finetune_runs(self) -> list[dict[str, Any]]:
        return list(self.finetune_runs_by_id().values())

    def set_names(self) -> list[str]:
        """Names of the members that may be embedding sets (one listing, no metadata read)."""
        return [n for n in _children(self.group)
                if n not in (FUSION_GROUP, FINETUNE_GROUP, "ids", "split", "labels", "group")]

    def open_set(self, name: str) -> EmbeddingSet | None:
        """The embedding set ``name``; None when it is not one, or when its metadata cannot
        be read (then recorded in the store's ``unreadable``)."""
        where = f"{self.store.root}/{self.name}"
        try:
            g = _open_child(self.group, name, where)
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
        publish(es)
        return es


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

    @property
    def _sealed(self) -> dict[str, Any] | None:
        """A complete set's attrs when they carry its shard checksums and missing rows
        (written by :meth:`mark_complete`): then reading the set needs no request per shard
        for its done marks, checksums and missing mask (on S3, one GET each)."""
        a = self.group.attrs
        if a.get("status") != "complete" or len(a.get("shard_checksums") or ()) != self.n_shards:
            return None
        return dict(a)

    def done_mask(self) -> np.ndarray:
        """Boolean (n_shards,): which shards are finished."""
        if self._sealed is not None:
            return np.ones(self.n_shards, dtype=bool)
        return self.group["done"][...].astype(bool)

    def checksums(self) -> np.ndarray:
        """uint8 (n_shards, 32): each shard's sha256 (zeros for shards not done)."""
        sealed = self._sealed
        if sealed is not None:
            return np.frombuffer(bytes.fromhex("".join(sealed["shard_checksums"])),
                                 dtype=np.uint8).reshape(self.n_shards, 32)
        return self.group["checksums"][...]

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
        if self._sealed is not None:  # rewriting a shard of a finished set: drop the seal
            self.group.attrs.update({"shard_checksums": None, "missing_rows": None})
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
            skipped = skipped or require_group(self.group, SKIPPED_GROUP)
            require_group(skipped, name).attrs.put(dict(reasons or {}))
        elif skipped is not None and name in skipped:
            del skipped[name]
        self.group["checksums"][shard] = np.frombuffer(array_sha256(data), dtype=np.uint8)
        self.group["done"][shard] = 1

    def missing_mask(self) -> np.ndarray:
        """Boolean (N,): rows whose image was skipped at extraction (stored as NaN)."""
        sealed = self._sealed
        if sealed is not None and "missing_rows" in sealed:
            mask = np.zeros(self.rows, dtype=bool)
            mask[np.asarray(sealed["missing_rows"], dtype=np.int64)] = True
            return mask
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
        self.group.attrs.update({"status": "complete", **(extra or {}), **self._seal()})
        publish(self)

    def seal(self) -> None:
        """Write a complete set's shard checksums and missing rows into its attrs (sets
        completed before sealing existed); nothing for an incomplete or sealed set."""
        if self._sealed is None and self.attrs.get("status") == "complete" and self.complete:
            self.group.attrs.update(self._seal())

    def _seal(self) -> dict[str, Any]:
        """What reading the set needs, for the attrs it opens anyway."""
        sums = self.group["checksums"][...]
        return {"shard_checksums": [bytes(row).hex() for row in sums],
                "missing_rows": [int(i) for i in np.flatnonzero(self.missing_mask())]}

    def read(self, rows: slice | np.ndarray | None = None, *,
             verify: bool = True) -> np.ndarray:
        """Embeddings (N, D) or a row selection, in the stored dtype.

        Read shard by shard (a selection: only the shards it touches); with ``verify`` (the
        default) every shard read is checked against its checksum before its numbers are
        returned.

        Raises
        ------
        NotExtractedError
            Some shards are not done yet.
        CorruptShardError
            A shard fails its checksum or cannot be read (named, with the way to recompute).
        """
        done = self.done_mask()
        pending = np.flatnonzero(~done)
        if len(pending):
            raise NotExtractedError(
                f"{self.dataset.name}: embeddings {self.alias} ({self.key[:12]}) are "
                f"incomplete: {len(pending)} of {self.n_shards} shards not done; re-run "
                "'featstore extract' to resume"
            )
        out = np.empty((self.rows, self.dim), dtype=self.dtype)
        cache = self.dataset.store.cache
        sums = self.checksums() if verify or cache else None

        def load(shard: int) -> tuple[int, str] | None:
            start, stop = self.shard_bounds(shard)
            view = out[start:stop]
            want = None if sums is None else sums[shard].tobytes()
            cached = cache is not None and cache.read_into(want, view)
            if cached and not verify:  # checked when it entered the cache
                return None
            if cached and array_sha256(view) == want:
                return None
            if cached:  # a damaged cache file: fetch the shard again
                cache.drop(want)
            error = self._load_shard(shard, view)
            if error:
                return shard, error
            if want is not None and array_sha256(view) != want:
                return shard, "fails its checksum"
            if cache is not None:
                cache.put(want, view)
            return None

        needed = range(self.n_shards) if rows is None else np.unique(
            np.arange(self.rows)[rows] // self.shard_rows)  # a selection reads its shards only
        bad = [b for b in _parallel(load, [int(s) for s in needed]) if b is not None]
        if bad:
            raise CorruptShardError(self._corrupt_message(sorted(bad)))
        return out if rows is None else out[rows]

    def _corrupt_message(self, bad: list[tuple[int, str]]) -> str:
        what = "; ".join(f"shard {s} (rows {self.shard_bounds(s)[0]}-"
                         f"{self.shard_bounds(s)[1] - 1}) {why}" for s, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return (f"{self.dataset.name}/{self.name} ({self.alias}): {what}{more}; its numbers "
                "are not used. Run the same 'featstore extract' with --verify (or "
                "'featstore verify --repair', then extract) to recompute it")

    def load(self, *, verify: bool = True, index_only: bool = False) -> Embeddings:
        """The embeddings with the dataset index arrays, rows aligned; every shard checked
        against its checksum unless ``verify`` is false (see :meth:`read`). With
        ``index_only``, ``X`` is None and no shard is read (what a run id needs)."""
        idx = self.dataset.index
        missing = self.missing_mask()
        X = None if index_only else self.read(verify=verify)
        return Embeddings(X=X, ids=idx["ids"], split=idx["split"],
                          labels=idx["labels"], group=idx["group"], alias=self.alias,
                          key=self.key, dataset=self.dataset.name, attrs=self.attrs,
                          missing=missing if missing.any() else None,
                          label_names=tuple(self.dataset.attrs.get("label_names") or ()))

    def probe_run(self, run_id: str) -> dict[str, Any] | None:
        """A persisted probe run (its config and records), or None."""
        return _run(self.dataset.store, self.group, self._path, PROBES_GROUP, run_id)

    def save_probe_run(self, run_id: str, payload: dict[str, Any]) -> None:
        """Persist a probe run under ``probes/<run_id>`` (its attrs), next to the embeddings."""
        _save_run(self.dataset.store, self.group, self._path, PROBES_GROUP, run_id, payload)

    def save_probe_head(self, run_id: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep a linear probe's weights (``_checkpoints/<dataset>/probe-heads/<run id>.npz``),
        so finetuning can start its head from them (LP-FT); a read-only store skips it."""
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        try:
            self.dataset.store.objects.put(self._head_key(run_id), buf.getvalue())
        except (OSError, PermissionError):
            pass

    def probe_head(self, run_id: str) -> dict[str, np.ndarray] | None:
        """A linear probe's weights kept by :meth:`save_probe_head`, or None."""
        import io

        raw = self.dataset.store.objects.get(self._head_key(run_id))
        if raw is None:
            return None
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def _head_key(self, run_id: str) -> str:
        return f"{CHECKPOINTS_GROUP}/{self.dataset.name}/probe-heads/{run_id}.npz"

    def probe_runs(self) -> list[dict[str, Any]]:
        """Every persisted probe run of this embedding set."""
        return list(self.probe_runs_by_id().values())

    def probe_runs_by_id(self) -> dict[str, dict[str, Any]]:
        """Every persisted probe run of this embedding set, by run id."""
        return _runs(self.dataset.store, self.group, self._path, PROBES_GROUP)

    @property
    def _path(self) -> str:
        return f"{self.dataset.name}/{self.name}"

    @cached_property
    def _embeddings(self) -> zarr.Array:
        """The embeddings array, opened once (its metadata read once) per set object."""
        return self.group["embeddings"]

    @cached_property
    def _direct(self) -> tuple[int, int] | None:
        """(chunk rows, index bytes) when shards can be read as plain bytes: zarr's sharding
        codec with uncompressed little-endian chunks and its index at the end (how featstore
        writes every set); None for any other encoding (then zarr decodes)."""
        meta = self._embeddings.metadata.to_dict()
        codecs = meta.get("codecs") or []
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0].get("configuration", {})
        inner = [c.get("name") for c in conf.get("codecs", [])]
        index = [c.get("name") for c in conf.get("index_codecs", [])]
        chunk = tuple(conf.get("chunk_shape", ()))
        if (inner != ["bytes"] or index != ["bytes", "crc32c"] or sys.byteorder != "little"
                or conf.get("index_location", "end") != "end" or len(chunk) != 2
                or chunk[1] != self.dim or self.shard_rows % chunk[0]
                or any(c.get("configuration", {}).get("endian", "little") != "little"
                       for c in conf.get("codecs", []))):
            return None
        return chunk[0], (self.shard_rows // chunk[0]) * 16 + 4

    def _load_shard(self, shard: int, out: np.ndarray) -> str | None:
        """Read one shard's rows into ``out``; the reason when it cannot be read.

        Shards written by featstore are read as bytes straight into ``out`` (one read or one
        GET per shard, no per-chunk decoding); the shard index is checked first (every chunk
        present, in order, whole), and anything unexpected goes through zarr instead.
        """
        arr = self._embeddings
        start, stop = self.shard_bounds(shard)
        if self._direct is not None:
            chunk_rows, index_bytes = self._direct
            key = f"{arr.path}/{arr.metadata.encode_chunk_key((shard, 0))}"
            try:
                if self._read_direct(key, out, chunk_rows, index_bytes):
                    return None
            except FileNotFoundError:
                return "is missing (its shard file was deleted)"
        try:
            out[...] = arr[start:stop]
        except Exception as e:  # zarr/numcodecs raise assorted errors on damaged bytes
            return f"cannot be read ({e.__class__.__name__})"
        return None

    def _read_direct(self, key: str, out: np.ndarray, chunk_rows: int,
                     index_bytes: int) -> bool:
        """Fill ``out`` from the shard object ``key`` when its index is the plain layout."""
        rows = len(out)
        n_chunks = -(-rows // chunk_rows)
        chunk_bytes = chunk_rows * self.dim * out.itemsize
        data_bytes = n_chunks * chunk_bytes
        target = out.reshape(-1).view(np.uint8)
        zstore = self.dataset.store._zstore
        if isinstance(zstore, zarr.storage.LocalStore):
            with open(Path(zstore.root) / key, "rb") as f:
                size = f.seek(0, 2)
                if size != data_bytes + index_bytes:
                    return False
                f.seek(size - index_bytes)
                if not _plain_index(f.read(index_bytes), n_chunks, chunk_bytes):
                    return False
                f.seek(0)
                return f.readinto(target) == target.nbytes
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(zstore.get(key, prototype=default_buffer_prototype()))
        if buf is None:
            raise FileNotFoundError(key)
        raw = buf.as_numpy_array()
        if len(raw) != data_bytes + index_bytes or not _plain_index(
                raw[data_bytes:].tobytes(), n_chunks, chunk_bytes):
            return False
        target[...] = raw[:target.nbytes]
        return True

    def iter_shards(self, errors: list[tuple[int, str]] | None = None,
                    done: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(shard, data) for each done shard. A shard that cannot be read (a truncated file,
        a damaged shard index, a deleted file) raises CorruptShardError naming it, or, with
        ``errors``, is appended there as (shard, reason) and skipped."""
        for i in np.flatnonzero(self.done_mask() if done is None else done):
            start, stop = self.shard_bounds(int(i))
            data = np.empty((stop - start, self.dim), dtype=self.dtype)
            reason = self._load_shard(int(i), data)
            if reason:
                if errors is None:
                    raise CorruptShardError(self._corrupt_message([(int(i), reason)]))
                errors.append((int(i), reason))
                continue
            yield int(i), data

    def verify(self) -> list[int]:
        """Done shards whose stored bytes no longer match their checksum, or cannot be read
        (empty list: intact)."""
        sums = self.group["checksums"][...]
        bad: list[tuple[int, str]] = []
        mismatched = [i for i, data in self.iter_shards(errors=bad)
                      if array_sha256(data) != sums[i].tobytes()]
        return sorted(mismatched + [s for s, _ in bad])

    def invalidate(self, shards: list[int]) -> None:
        """Mark shards not done (and the set incomplete), so the next extract recomputes them."""
        if not shards:
            return
        self.group.attrs.update({"status": "incomplete", "shard_checksums": None,
                                 "missing_rows": None})  # unsealed first, then the marks
        for shard in shards:
            self.group["done"][shard] = 0
        publish(self)


READ_ONLY_ERRORS = (PermissionError, OSError)  # read-only mount, denied PUT (s3fs: PermissionError)


def _save_run(store: FeatureStore, group: zarr.Group, path: str, kind: str, run_id: str,
              payload: dict[str, Any]) -> None:
    """Write a run under ``<group>/<kind>/<run_id>``; when the store cannot be written
    (read-only credentials, a read-only mount), write it to the same path in the results
    store instead and note it once.

    Raises
    ------
    StoreError
        The store is read-only and there is no results store.
    """
    payload = _to_json(payload)
    try:
        require_group(require_group(group, kind), run_id).attrs.update(payload)
        return
    except READ_ONLY_ERRORS as e:
        error = e
    mirror = store._results_group(path, create=True)
    if mirror is None:
        raise StoreError(f"store {store.root} cannot be written ({error.__class__.__name__}: "
                         f"{error}); pass --results-store DIR to keep runs elsewhere") from None
    require_group(require_group(mirror, kind), run_id).attrs.update(payload)
    store._note(f"store {store.root} cannot be written ({error.__class__.__name__}): runs "
                f"are saved to the results store {store.results_root}")


def _run(store: FeatureStore, group: zarr.Group, path: str, kind: str,
         run_id: str) -> dict[str, Any] | None:
    """A persisted run: from the store, else from the results store."""
    for g in (group, store._results_group(path, create=False)):
        runs = None if g is None else g.get(kind)
        if runs is not None and run_id in runs:
            return dict(runs[run_id].attrs)
    return None


def _runs(store: FeatureStore, group: zarr.Group, path: str,
          kind: str) -> dict[str, dict[str, Any]]:
    """Every persisted run by id: the store's, then the results store's it does not have."""
    seen: dict[str, dict[str, Any]] = {}
    for g in (group, store._results_group(path, create=False)):
        runs = None if g is None else g.get(kind)
        if runs is not None:
            for name, run in sorted(runs.groups()):
                seen.setdefault(name, dict(run.attrs))
    return seen


def _plain_index(index: bytes, n_chunks: int, chunk_bytes: int) -> bool:
    """Whether a shard index (uint64 offset, nbytes per chunk, then a crc32c) says the first
    ``n_chunks`` chunks are stored whole, in order, back to back from offset 0."""
    pairs = np.frombuffer(index[:-4], dtype="<u8").reshape(-1, 2)
    want = np.arange(n_chunks, dtype=np.uint64) * np.uint64(chunk_bytes)
    return bool((pairs[:n_chunks, 0] == want).all() and (pairs[:n_chunks, 1] == chunk_bytes).all())


def _parallel(fn: Any, items: Any) -> list[Any]:
    """``fn`` over ``items`` in a few threads (file reads and sha256 release the GIL)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _to_json(obj: Any) -> Any:
    """NaN/inf are not JSON: stored as None (undefined metrics stay undefined)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj
