"""An embedding set: the embeddings of one key for one dataset, written and read shard by
shard, each shard with its checksum and done mark; sealed once complete (its checksums and
missing rows in its attrs, so that reading it needs no request per shard)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from featstore._hashing import array_sha256
from featstore.errors import CorruptShardError, NotExtractedError, StoreError
from featstore.store.catalog import publish
from featstore.store.layout import (
    CHECKPOINTS_GROUP,
    PROBES_GROUP,
    SKIPPED_GROUP,
    Embeddings,
    Provenance,
    require_group,
)
from featstore.store.runlog import RunLog
from featstore.store.shards import CachedShardReader, ShardReader, parallel

if TYPE_CHECKING:
    from featstore.store.dataset import DatasetGroup


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

    @cached_property
    def probe_runs(self) -> RunLog:
        """The probe runs of this set (``probes/<run id>``, next to the embeddings)."""
        return RunLog(self.dataset.store, self.group, self._path, PROBES_GROUP)

    def summary(self) -> dict[str, Any]:
        """The set as ``ls`` shows it (and its catalog entry holds): dataset, alias, key,
        size, how its pixels were made, shards done, status, missing rows, and who
        extracted it when on which host."""
        done = int(self.done_mask().sum())
        prov = self.provenance
        return {
            "dataset": self.dataset.name, "backbone": self.alias, "key": self.key,
            "rows": self.rows, "dim": self.dim, "dtype": self.dtype,
            "precision": self.precision, "pixels": self.pixels,
            "bytes": self.rows * self.dim * np.dtype(self.dtype).itemsize,
            "shards_done": done, "shards": self.n_shards,
            "status": "complete" if done == self.n_shards else "incomplete",
            "missing": int(self.missing_mask().sum()),
            "random_weights": bool(prov.random_weights),
            "user": prov.user, "host": prov.host,
            "started": prov.started, "finished": self.attrs.get("finished"),
        }

    @property
    def precision(self) -> str:
        """The precision the backbone computed in (``fp32``, ``bf16``, ``fp16``)."""
        return (self.attrs.get("key_fields") or {}).get("precision", "fp32")

    @property
    def pixels(self) -> str:
        """How the pixels were made, in words: ``PIL`` (decoded and resized in the loader),
        ``torch resize`` (resized on the device), ``nvjpeg, torch resize`` (decoded there)."""
        fields = self.attrs.get("key_fields") or {}
        decode = str(fields.get("decode", ""))
        return (f"{decode.split('-')[1]}, torch resize" if decode.startswith("device-")
                else "torch resize" if fields.get("resize") else "PIL")

    def publish(self) -> None:
        """Write (or rewrite) the set's catalog entry."""
        publish(self.dataset.store.objects, self.dataset.name, self.name, self.summary())

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def provenance(self) -> Provenance:
        """What produced the set (typed; see :class:`Provenance`)."""
        return Provenance.from_dict(self.attrs.get("provenance"))

    @property
    def rows(self) -> int:
        return self.dataset.rows

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """Row range [start, stop) of one shard."""
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    @cached_property
    def reader(self) -> ShardReader | CachedShardReader:
        """The shard reader (through the store's shard cache where it has one)."""
        reader = ShardReader(self.group["embeddings"], self.dataset.store._zstore,
                             rows=self.rows, dim=self.dim, shard_rows=self.shard_rows)
        cache = self.dataset.store.cache
        return reader if cache is None else CachedShardReader(reader, cache)

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
        self.publish()

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

        Read shard by shard (a selection: only the shards it touches, and only its rows are
        kept); with ``verify`` (the default) every shard read is checked against its checksum
        before its numbers are returned.

        Raises
        ------
        NotExtractedError
            Some shards are not done yet.
        CorruptShardError
            A shard fails its checksum or cannot be read (named, with the way to recompute).
        """
        if rows is None:
            return self.take([np.arange(self.rows)], verify=verify)[0]
        return self.take([np.arange(self.rows)[rows]], verify=verify)[0]

    def take(self, selections: list[np.ndarray], dtypes: list[Any] | None = None, *,
             verify: bool = True) -> list[np.ndarray]:
        """The rows of each selection (row indices, any order), each a compact array in its
        dtype (None: the stored one). Every shard the selections touch is read once (in a
        few threads, each into a buffer of one shard), checked against its checksum with
        ``verify``, and its rows copied out converted: the set is never held whole.

        Raises
        ------
        NotExtractedError, CorruptShardError
            As :meth:`read`.
        """
        self._check_done()
        dtypes = [None] * len(selections) if dtypes is None else list(dtypes)
        sels = [np.asarray(s, dtype=np.int64).reshape(-1) for s in selections]
        outs = [np.empty((len(s), self.dim), dtype=dt or self.dtype)
                for s, dt in zip(sels, dtypes, strict=True)]
        per_shard: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i, s in enumerate(sels):
            if len(s) and (s.min() < 0 or s.max() >= self.rows):
                raise IndexError(f"{self}: row {int(s.max())} of {self.rows}")
            shard = s // self.shard_rows
            order = np.argsort(shard, kind="stable")
            cuts = np.flatnonzero(np.diff(shard[order])) + 1
            for part in np.split(order, cuts) if len(s) else []:
                k = int(shard[part[0]])
                per_shard.setdefault(k, []).append((i, part, s[part] - k * self.shard_rows))
        reader = self.reader
        sums = self.checksums() if verify or reader.needs_checksums else None

        def load(shard: int) -> tuple[int, str] | None:
            start, stop = self.shard_bounds(shard)
            entries = per_shard[shard]
            i, part, local = entries[0]
            in_place = (len(entries) == 1 and len(part) == stop - start
                        and outs[i].dtype == np.dtype(self.dtype)
                        and bool((np.diff(part) == 1).all())
                        and bool((local == np.arange(len(local))).all()))
            # a whole shard in order, in the stored dtype: read straight into its place
            buf = (outs[i][int(part[0]):int(part[0]) + stop - start] if in_place
                   else np.empty((stop - start, self.dim), dtype=self.dtype))
            want = None if sums is None else sums[shard].tobytes()
            error = reader.load(shard, buf, want, verify)
            if error is not None:
                return shard, error
            if not in_place:
                for i, part, local in entries:
                    outs[i][part] = buf[local]
            return None

        bad = [b for b in parallel(load, sorted(per_shard)) if b is not None]
        if bad:
            raise CorruptShardError(self._corrupt_message(sorted(bad)))
        return outs

    def rows_source(self, *, verify: bool = True) -> SetRows:
        """The set as a :class:`featstore.rows.RowSource`: rows read when a stage takes
        them (:meth:`take`), never the whole set at once."""
        self._check_done()
        return SetRows(self, verify)

    def _check_done(self) -> None:
        pending = np.flatnonzero(~self.done_mask())
        if len(pending):
            raise NotExtractedError(
                f"{self.dataset.name}: embeddings {self.alias} ({self.key[:12]}) are "
                f"incomplete: {len(pending)} of {self.n_shards} shards not done; re-run "
                "'featstore extract' to resume"
            )

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

    def save_probe_head(self, run_id: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep a linear probe's weights (``_checkpoints/<dataset>/probe-heads/<run id>.npz``),
        so finetuning can start its head from them (LP-FT). A store that cannot be written
        keeps them in the results store, as it does runs; without one, the store's notes say
        that they were not kept (and why), so LP-FT's later "no linear probe" is explained."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        store = self.dataset.store
        try:
            store.objects.put(self._head_key(run_id), buf.getvalue())
            return
        except OSError as e:
            error = e
        if store.results is not None:
            try:
                store.results.objects.put(self._head_key(run_id), buf.getvalue())
                return
            except OSError as e:  # the results store refuses too: said below
                error = e
        store._note(f"probe heads are not kept: store {store.root} cannot be written "
                    f"({error.__class__.__name__}: {error}); 'featstore finetune --init-head "
                    "probe' cannot start from them (pass --results-store DIR to keep them)")

    def probe_head(self, run_id: str) -> dict[str, np.ndarray] | None:
        """A linear probe's weights kept by :meth:`save_probe_head` (in the store, else in
        its results store), or None."""
        store = self.dataset.store
        raw = store.objects.get(self._head_key(run_id))
        if raw is None and store.results is not None:
            raw = store.results.objects.get(self._head_key(run_id))
        if raw is None:
            return None
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def _head_key(self, run_id: str) -> str:
        return f"{CHECKPOINTS_GROUP}/{self.dataset.name}/probe-heads/{run_id}.npz"

    @property
    def _path(self) -> str:
        return f"{self.dataset.name}/{self.name}"

    def iter_shards(self, errors: list[tuple[int, str]] | None = None,
                    done: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(shard, data) for each done shard. A shard that cannot be read (a truncated file,
        a damaged shard index, a deleted file) raises CorruptShardError naming it, or, with
        ``errors``, is appended there as (shard, reason) and skipped."""
        for i in np.flatnonzero(self.done_mask() if done is None else done):
            start, stop = self.shard_bounds(int(i))
            data = np.empty((stop - start, self.dim), dtype=self.dtype)
            reason = self.reader.load(int(i), data)
            if reason:
                if errors is None:
                    raise CorruptShardError(self._corrupt_message([(int(i), reason)]))
                errors.append((int(i), reason))
                continue
            yield int(i), data

    def verify(self) -> list[int]:
        """Done shards whose stored bytes no longer match their checksum, or cannot be read
        (empty list: intact)."""
        # the done marks first: a writer puts a shard's checksum before its mark, so every
        # shard marked now has its checksum in what is read next (read the other way round,
        # a shard finished in between by another process would meet a stale zero checksum
        # and be invalidated: that process then finds its finished set incomplete)
        done = self.done_mask()
        sums = self.group["checksums"][...]
        bad: list[tuple[int, str]] = []
        mismatched = [i for i, data in self.iter_shards(errors=bad, done=done)
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
        self.publish()


class SetRows:
    """An embedding set as a :class:`featstore.rows.RowSource` (shape, dtype, ``take``)."""

    def __init__(self, es: EmbeddingSet, verify: bool) -> None:
        self.es, self.verify = es, verify
        self.shape = (es.rows, es.dim)
        self.dtype = np.dtype(es.dtype)

    def __repr__(self) -> str:
        return f"SetRows({self.es!r})"

    def take(self, selections: list[np.ndarray], dtypes: list[Any]) -> list[np.ndarray]:
        return self.es.take(selections, dtypes, verify=self.verify)
