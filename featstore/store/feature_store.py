"""The feature store: a local folder or an object-store prefix (``s3://bucket/prefix``),
one group per dataset (found by the data's identity), each holding its embedding sets and
run logs. The layout is in :mod:`featstore.store.layout`; the backend is opened by
:mod:`featstore.store.backend`."""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import zarr

from featstore.data.manifest import Manifest
from featstore.errors import CorruptShardError, NotExtractedError, StoreError
from featstore.store.backend import local_root, open_zarr_store
from featstore.store.cache import ShardCache
from featstore.store.catalog import CATALOG_GROUP
from featstore.store.dataset import DatasetGroup, write_index
from featstore.store.layout import (
    CHECKPOINTS_GROUP,
    CLAIMS_GROUP,
    Embeddings,
    children,
    open_child,
    require_group,
)
from featstore.store.objects import StoreObjects


class FeatureStore:
    """A feature store rooted at a local folder or an object-store prefix."""

    def __init__(self, root: str | Path, *, results_store: str | Path | None = None,
                 cache: str | Path | None = None) -> None:
        self.root = str(root)
        self._zstore = open_zarr_store(root)
        # a local cache of whole shards, for stores that are not local folders
        self.cache = (ShardCache(cache) if cache is not None
                      and local_root(self._zstore) is None else None)
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
        for name in children(root):
            if name in (CLAIMS_GROUP, CATALOG_GROUP, CHECKPOINTS_GROUP):
                continue
            try:
                g = open_child(root, name, self.root)
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
                write_index(ds.group, manifest)
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
        write_index(g, manifest)
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
            except OSError:  # a read-only store: use it as it is
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
