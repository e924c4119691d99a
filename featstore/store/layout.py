"""The store's layout: format version, group names, the content key of an embedding set,
the loaded-set record, and the group operations every part of the store shares.

Layout::

    <root>/<dataset name>-<identity[:12]>/   found by its ``identity`` attribute (what the
                                             data is; older groups: <name>-<path hash>)
        ids, split, labels, group            index arrays, rows in manifest (id) order
        fusion/<run id>, finetune/<run id>   run logs (attrs: config and records)
        <key[:20]>/
            embeddings  (N, D)   sharded by rows; a writer only writes whole shards
            checksums   (S, 32)  sha256 of each shard's bytes, one chunk per shard
            missing     (N,)     1 where the image was skipped (--on-error skip): the row
                                 holds NaN, never a made-up embedding
            skipped/s<shard>     attrs: {id: reason} of a shard's skipped rows
            done        (S,)     1 once the shard's data and checksum are written
            probes/<run id>      probe run log
            attrs: key, key_fields, alias, provenance, status
    _claims/<dataset>/<key[:20]>/   claim markers of running extracts (see extract.claims)
    _catalog/<dataset>/<key[:20]>.json   one entry per set for ``ls`` (see store.catalog)
    _checkpoints/<dataset>/...      finetuning checkpoints and probe heads (whole objects)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

from featstore._hashing import sha256_json
from featstore.errors import StoreError

if TYPE_CHECKING:  # the layout's constants and records import without numpy and zarr
    import numpy as np
    import zarr

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
INDEX_ARRAYS = ("ids", "split", "labels", "group")


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


@dataclass(frozen=True)
class Provenance:
    """What produced an embedding set: its attrs' ``provenance``, typed (written by
    :func:`featstore.extract.engine.provenance`). A set written before a field existed reads
    it as its default; keys this featstore does not know are kept in ``extra``.

    ``spec`` is the backbone spec extract was given (``timm:resnet18/64px@random``,
    ``finetuned:<run>``), stored under the key ``backbone``; records and tables name a set
    by its alias instead (:attr:`EmbeddingSet.alias`)."""

    spec: str = ""
    architecture: str = ""
    weights: str = ""
    random_weights: bool = False
    weights_sha256: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    decode: str = ""
    resize: str = ""
    layer: str | None = None
    manifest: str = ""
    manifest_sha256: str = ""
    dataset_identity: str = ""
    batch_size: int | None = None
    batch_size_auto: bool = False
    precision: str = "fp32"
    compiled: bool = False
    device: str = ""
    world_size: int = 1
    on_error: str = "fail"
    versions: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    user: str | None = None
    started: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _STORED = {"spec": "backbone"}  # field -> its key in the store, where they differ

    @classmethod
    def from_dict(cls, stored: dict[str, Any] | None) -> Provenance:
        stored = dict(stored or {})
        names = {f.name for f in fields(cls)} - {"extra"}
        values = {}
        for name in names:
            key = cls._STORED.get(name, name)
            if key in stored:
                values[name] = stored.pop(key)
        return cls(**values, extra=stored)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (the keys every set has always had)."""
        out = {self._STORED.get(f.name, f.name): getattr(self, f.name) for f in fields(self)
               if f.name != "extra"}
        return {**out, **self.extra}

    @property
    def finetuned_run(self) -> str | None:
        """The finetuning run (its id or prefix) a ``finetuned:`` set was embedded by."""
        prefix = "finetuned:"
        return self.spec.removeprefix(prefix) if self.spec.startswith(prefix) else None


def children(group: zarr.Group) -> list[str]:
    """Names under a group, listed from the store without parsing their metadata (so one
    unreadable ``zarr.json`` cannot hide its siblings)."""
    from zarr.core.sync import sync

    async def names() -> list[str]:
        return [n async for n in group.store.list_dir(group.path)]

    return sorted(n for n in sync(names()) if n != "zarr.json" and not n.startswith("."))


def open_child(group: zarr.Group, name: str, where: str) -> zarr.Group | None:
    """A child group, None for a non-group member; raises StoreError naming the file for a
    member whose metadata cannot be read."""
    try:
        child = group[name]
    except KeyError:
        return None  # a stray file or an empty folder, not a member
    except Exception as e:  # zarr raises assorted errors for broken metadata
        raise StoreError(f"{where}/{name}/zarr.json: unreadable ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    import zarr

    return child if isinstance(child, zarr.Group) else None


def require_group(parent: zarr.Group, name: str) -> zarr.Group:
    """``parent[name]``, created when missing. Another process (a teammate, a parallel
    pipeline, a second copy) creating it at the same moment is success, not an error: zarr's
    check-then-create loses that race with ContainsGroupError, and the group is then there."""
    from zarr.errors import ContainsGroupError

    try:
        return parent.require_group(name)
    except ContainsGroupError:
        return parent[name]
