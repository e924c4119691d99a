"""The canonical manifest: one row per image, with id, split, labels and where the pixels are."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from featstore._hashing import sha256_bytes
from featstore.choices import TASKS
from featstore.errors import ManifestError

SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = 1


# characters a group name keeps on every store backend (a folder, S3 keys and globs, GCS)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(eq=False)
class Manifest:
    """A validated dataset table, rows sorted by ``id``.

    Rows are kept in id order so that two tables with the same rows in another order are the
    same dataset: same :attr:`sha256`, same row positions in the store.

    Parameters
    ----------
    name : str
        Short human name (file stem); not part of the hash.
    ids, split, paths : array of str, shape (N,)
        ``paths`` are relative to ``root`` (an image file, or an array file for array rows).
    labels : int64 array, shape (N, K)
        K == 1 for binary/multiclass/ordinal tasks, K == number of labels for multilabel.
    label_names : tuple of str
        ``("label",)`` for single-label tasks, one name per column for multilabel.
    task : str
        One of :data:`TASKS`.
    num_classes : int
        Classes of a single-label task (2 for binary); K for multilabel.
    array_keys, index : optional arrays
        For rows whose pixels live in an array file (.npz, .h5): the array name and row index.
    group : optional array of str
        Patient id; fractions and splits never put one group on both sides.
    classes : tuple of str, optional
        Class names of a single-label task, position = label value.
    sources : dict
        sha256 of array files the rows point into (part of the hash).
    notes : tuple of str
        What the reader noticed about the release and kept as released (not part of the
        hash), printed by ``manifest build``.
    root : str
        Folder the paths are relative to (not part of the hash).
    """

    name: str
    ids: np.ndarray
    split: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    label_names: tuple[str, ...]
    task: str
    num_classes: int
    root: str = "."
    array_keys: np.ndarray | None = None
    index: np.ndarray | None = None
    group: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def sha256(self) -> str:
        """Hex sha256 over the canonical content: columns, array-file hashes, label names.

        It covers the paths as written, so it names one copy of a dataset: store groups are
        keyed by :attr:`identity` instead; this hash names the groups made before that
        (:attr:`legacy_sha256s`) and is recorded in provenance.
        """
        return self._sha256(self.paths)

    @cached_property
    def legacy_sha256s(self) -> tuple[str, ...]:
        """The hashes an earlier featstore gave this manifest: :attr:`sha256`, and for a
        table whose paths outside its folder are now written absolute, the hash with those
        paths relative to the table's folder (``../data/x.png``), as ``manifest build`` wrote
        them before."""
        hashes = [self.sha256]
        if any(posixpath.isabs(p) for p in self.paths.tolist()):
            here = Path(self.root).resolve()
            rel = np.asarray([Path(os.path.relpath(p, here)).as_posix()
                              if posixpath.isabs(p) else p for p in self.paths.tolist()])
            hashes.append(self._sha256(rel))
        return tuple(hashes)

    def _sha256(self, paths: np.ndarray) -> str:
        parts = [f"featstore-manifest/{MANIFEST_FORMAT}\n".encode()]
        cols: list[tuple[str, Sequence]] = [
            ("id", self.ids),
            ("split", self.split),
            ("path", paths),
            ("array", self.array_keys if self.array_keys is not None else ()),
            ("index", self.index if self.index is not None else ()),
            ("group", self.group if self.group is not None else ()),
        ]
        for name, values in cols:
            parts.append(f"\x1e{name}\x1d".encode())
            parts.append("\x1f".join(map(str, values)).encode())
        parts.append(b"\x1elabels\x1d" + ",".join(self.label_names).encode())
        parts.append(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        for key in sorted(self.sources):
            parts.append(f"\x1esource\x1d{key}={self.sources[key]}".encode())
        return sha256_bytes(b"".join(parts))

    @cached_property
    def identity(self) -> str:
        """Hex sha256 of what the dataset is -- rows, task, label names and the content of its
        files -- never where it is or what it is called (see :mod:`featstore.data.identity`).
        Stores find a dataset's group by it. Reads (fingerprints) every file once per user.

        Raises
        ------
        ManifestError
            A file the manifest points at is missing or unreadable, naming the row id.
        """
        from featstore.data.identity import dataset_identity

        return dataset_identity(self)

    @property
    def group_name(self) -> str:
        """Name of a new group for this dataset in a store: ``<name>-<identity[:12]>``, the
        name reduced to what every backend keeps as it is (letters, digits, ``._-``, no
        leading dot: a ``\\``, ``[x]`` or ``.hidden`` name made groups that listings skip
        or S3 globs choke on). Stores find the group by its ``identity`` attribute, whatever
        it is named."""
        safe = _UNSAFE.sub("-", self.name).lstrip(".-") or "dataset"
        return f"{safe}-{self.identity[:12]}"

    def summary(self) -> dict:
        """Name, rows, task, classes, rows per split, label names, whether it has patient
        groups, sha256 and the reader's notes (what ``manifest build/validate`` print)."""
        return {"name": self.name, "rows": len(self), "task": self.task,
                "num_classes": self.num_classes,
                "splits": {s: int((self.split == s).sum()) for s in ("train", "val", "test")},
                "labels": list(self.label_names), "groups": self.group is not None,
                "sha256": self.sha256, "notes": list(self.notes)}

    def split_indices(self, split: str) -> np.ndarray:
        """Row positions of one split, in row order."""
        return np.flatnonzero(self.split == split)

    def resolve(self, i: int) -> Path:
        """Absolute path of the file holding row ``i``'s pixels."""
        return Path(self.root) / str(self.paths[i])

    def check_files(self) -> None:
        """Raise naming the first row whose file does not exist. Each distinct file is
        checked once and nothing is opened (seconds for 112k files); decoding every image is
        :func:`featstore.data.images.check_images`.

        Raises
        ------
        ManifestError
            A missing file, naming the row id and path.
        """
        seen: set[str] = set()
        for i, rel in enumerate(self.paths):
            if rel in seen:
                continue
            seen.add(rel)
            p = Path(self.root) / str(rel)
            if not p.is_file():
                raise ManifestError(
                    f"{self.name}: row id {str(self.ids[i])!r}: file not found: {p}"
                )


def build_manifest(
    name: str,
    columns: Mapping[str, Sequence[str]],
    *,
    root: str | Path = ".",
    task: str | None = None,
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    sources: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    row_label: str = "row",
    first_row: int = 0,
) -> Manifest:
    """Validate a raw column table and return a :class:`Manifest` sorted by id.

    ``columns`` maps column names to equal-length sequences of strings: ``id``, ``split``,
    ``path``, optional ``array``/``index``/``group``, and either ``label`` or one
    ``label_<name>`` column per label of a multilabel task.

    Errors name the offending row as ``<row_label> <first_row + i>`` (e.g. a CSV line).

    Raises
    ------
    ManifestError
        Missing columns, duplicate ids, unknown split, missing or out-of-range label.
    """
    def where(i: int, rid: str | None = None) -> str:
        who = f"{row_label} {first_row + i}"
        return f"{name}: {who}" + (f" (id {rid!r})" if rid else "")

    for col in ("id", "split", "path"):
        if col not in columns:
            raise ManifestError(
                f"{name}: missing column {col!r} (have: {', '.join(columns) or 'none'})"
            )
    if "label" in columns:
        label_cols = ["label"]
        label_names: tuple[str, ...] = ("label",)
    else:
        label_cols = [c for c in columns if c.startswith("label_")]
        label_names = tuple(c[len("label_"):] for c in label_cols)
        if not label_cols:
            raise ManifestError(
                f"{name}: no label column: need 'label' or 'label_<name>' columns"
            )
    n = len(columns["id"])
    for col, values in columns.items():
        if len(values) != n:
            raise ManifestError(f"{name}: column {col!r} has {len(values)} rows, id has {n}")
    if n == 0:
        raise ManifestError(f"{name}: no rows (only a header?): a dataset needs at least one")
    for col in ("id", "path", "group"):
        for i, v in enumerate(columns.get(col, ())):
            try:
                str(v).encode("utf-8")
            except UnicodeEncodeError:  # a file name in another encoding (surrogate escapes)
                raise ManifestError(
                    f"{where(i)}: {col} {str(v)!r} is not valid UTF-8 (a file name in another "
                    "encoding?): rename it") from None

    ids = np.asarray([str(v).strip() for v in columns["id"]], dtype=object)
    first_seen: dict[str, int] = {}
    for i, rid in enumerate(ids):
        if not rid:
            raise ManifestError(f"{where(i)}: empty id")
        if rid in first_seen:
            raise ManifestError(
                f"{name}: duplicate id {rid!r} at {row_label}s "
                f"{first_row + first_seen[rid]} and {first_row + i}"
            )
        first_seen[rid] = i

    split = np.asarray([str(v).strip() for v in columns["split"]], dtype=object)
    for i, s in enumerate(split):
        if s not in SPLITS:
            raise ManifestError(
                f"{where(i, ids[i])}: unknown split {s!r} (expected one of {', '.join(SPLITS)})"
            )

    labels = np.empty((n, len(label_cols)), dtype=np.int64)
    for k, col in enumerate(label_cols):
        for i, raw in enumerate(columns[col]):
            text = str(raw).strip()
            if text == "" or text.lower() == "nan":
                raise ManifestError(f"{where(i, ids[i])}: missing label in column {col!r}")
            try:
                value = float(text)
            except ValueError:
                raise ManifestError(
                    f"{where(i, ids[i])}: label {text!r} in column {col!r} is not a number"
                ) from None
            if not abs(value) < 2**31:  # inf, 1e30: no class index
                raise ManifestError(
                    f"{where(i, ids[i])}: label {text!r} in column {col!r} is not a class "
                    "index (too large or infinite)")
            if value != int(value):
                raise ManifestError(
                    f"{where(i, ids[i])}: label {text!r} in column {col!r} is not an integer"
                )
            labels[i, k] = int(value)

    multilabel = len(label_cols) > 1 or (task == "multilabel")
    if multilabel:
        bad = np.argwhere((labels != 0) & (labels != 1))
        if len(bad):
            i, k = bad[0]
            raise ManifestError(
                f"{where(i, ids[i])}: label {labels[i, k]} in column {label_cols[k]!r} out of "
                "range (multilabel labels are 0 or 1)"
            )
        n_classes = len(label_cols)
        task = "multilabel"
    else:
        col = labels[:, 0]
        if num_classes is None and task == "binary":
            num_classes = 2
        if num_classes is None:
            num_classes = len(classes) if classes else max(int(col.max(initial=0)) + 1, 2)
        bad = np.flatnonzero((col < 0) | (col >= num_classes))
        if len(bad):
            i = bad[0]
            raise ManifestError(
                f"{where(i, ids[i])}: label {col[i]} out of range [0, {num_classes - 1}]"
            )
        n_classes = int(num_classes)
        if task is None:
            task = "binary" if n_classes == 2 else "multiclass"
    if task not in TASKS:
        raise ManifestError(f"{name}: unknown task {task!r} (expected one of {', '.join(TASKS)})")

    paths = np.asarray([str(v).strip() for v in columns["path"]], dtype=object)
    for i, p in enumerate(paths):
        if not p:
            raise ManifestError(f"{where(i, ids[i])}: empty path")
        if _escapes_root(p):
            raise ManifestError(
                f"{where(i, ids[i])}: path {p!r} leaves the manifest's folder ('..'); give "
                "paths inside it, or absolute paths")

    array_keys = index = None
    if "array" in columns:
        array_keys = np.asarray([str(v).strip() for v in columns["array"]], dtype=object)
    if "index" in columns:
        index = np.empty(n, dtype=np.int64)
        for i, raw in enumerate(columns["index"]):
            text = str(raw).strip()
            if array_keys is not None and array_keys[i] and not text.isdigit():
                raise ManifestError(f"{where(i, ids[i])}: array index {text!r} is not an integer")
            index[i] = int(text) if text.isdigit() else -1
    if array_keys is not None and index is None:
        raise ManifestError(f"{name}: column 'array' needs a column 'index'")
    group = None
    if "group" in columns:
        group = np.asarray([str(v).strip() for v in columns["group"]], dtype=object)
        _check_groups(name, ids, split, group)

    order = np.argsort(ids.astype(str), kind="stable")
    take = (lambda a: None if a is None else a[order])  # noqa: E731
    return Manifest(
        name=name,
        ids=ids[order].astype(str),
        split=split[order].astype(str),
        labels=labels[order],
        paths=paths[order].astype(str),
        label_names=label_names,
        task=task,
        num_classes=n_classes,
        root=str(root),
        array_keys=None if array_keys is None else take(array_keys).astype(str),
        index=take(index),
        group=None if group is None else take(group).astype(str),
        classes=tuple(classes) if classes else None,
        sources=dict(sources or {}),
        notes=tuple(notes),
    )


def _escapes_root(path: str) -> bool:
    """Whether a relative manifest path climbs out of the manifest's folder (``../x``,
    ``a/../../x``); absolute paths say where they are and are allowed."""
    p = path.replace("\\", "/")
    return not posixpath.isabs(p) and posixpath.normpath(p).split("/")[0] == ".."


def _check_groups(name: str, ids: np.ndarray, split: np.ndarray, group: np.ndarray) -> None:
    """A patient (group) must sit in one split only."""
    where_first: dict[str, tuple[str, str]] = {}
    for rid, s, g in zip(ids, split, group, strict=True):
        if not g:
            continue
        if g in where_first and where_first[g][0] != s:
            other_split, other_id = where_first[g]
            raise ManifestError(
                f"{name}: group {g!r} is in two splits: id {other_id!r} in {other_split!r} "
                f"and id {rid!r} in {s!r}"
            )
        where_first.setdefault(g, (s, rid))
