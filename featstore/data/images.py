"""A torch Dataset over a manifest's rows, each decoded once (:mod:`featstore.data.decode`)
and turned into one tensor per view a backbone wants; the decoding names are re-exported."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featstore.choices import DEFAULT_MAX_PIXELS
from featstore.data.arrays import H5_SUFFIXES, ArrayFiles
from featstore.data.decode import (  # noqa: F401  (re-exported: featstore.data.images names)
    _out_of_range,
    read_encoded,
    read_image,
    read_image_views,
    to_rgb,
)
from featstore.data.manifest import Manifest
from featstore.errors import ImageReadError


@dataclass(frozen=True)
class View:
    """One way a backbone wants a row: ``transform`` to a tensor of ``shape`` and ``dtype``
    (JPEGs decoded at ``draft`` size); or, ``raw``, the row's array pixels as stored (uint8,
    ``shape`` (H, W) or (H, W, 3)), for the model's side to resize in batches; or,
    ``encoded``, a JPEG's bytes or other pixels decoded in full
    (:func:`featstore.data.decode.read_encoded`), for the model's side to decode and resize
    (a bad row: zeros of ``shape``). Encoded views collate to lists (rows of any size)."""

    transform: Callable[[Image.Image], torch.Tensor] | None
    shape: tuple[int, ...]
    draft: int | None = None
    dtype: torch.dtype = torch.float32
    raw: bool = False
    encoded: bool = False


class ViewsDataset(torch.utils.data.Dataset):
    """Rows of a manifest, each decoded once and turned into one tensor per wanted view.

    An item is requested as ``(row, views)`` (a tuple of view positions; a bare row wants
    all) and comes back as ``(tensors, views, row, error)``. Errors are returned, not
    raised, so the main process can name the row in one clean message (a raise inside a
    DataLoader worker arrives wrapped in a traceback) or record it as skipped.
    """

    def __init__(self, manifest: Manifest, views: Sequence[View], *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.manifest = manifest
        self.views = tuple(views)
        self.max_pixels = max_pixels
        self._arrays: ArrayFiles | None = None

    def __len__(self) -> int:
        return len(self.manifest)

    def __getstate__(self) -> dict:
        """Pickled (a loader worker started by spawn) without the arrays read so far: the
        worker reads its own, as it would have."""
        return {**self.__dict__, "_arrays": None}

    def share_arrays(self, rows: Sequence[int] | np.ndarray | None = None) -> None:
        """Read the .npz arrays that ``rows`` (default: all) come from here, once, before a
        DataLoader forks its workers: the workers then share this copy (copy-on-write, only
        ever read) instead of each reading its own before its first batch (one copy per
        worker of a 16 GB MedMNIST+ array does not fit). Nothing is read where workers do
        not fork (a spawn or forkserver start method: they read their own, as before), for
        HDF5 files (an h5py handle does not survive a fork), or for an array that cannot be
        read (the workers name its rows)."""
        import multiprocessing

        keys = self.manifest.array_keys
        method = (multiprocessing.get_start_method(allow_none=True)  # (not fixing it)
                  or multiprocessing.get_all_start_methods()[0])  # the platform's default
        if keys is None or method != "fork":
            return
        if self._arrays is None:
            self._arrays = ArrayFiles()
        at = np.arange(len(self.manifest)) if rows is None else np.asarray(rows, dtype=int)
        if not len(at):
            return
        paths = self.manifest.paths[at].astype(str)
        pairs = np.char.add(np.char.add(paths, "\0"), keys[at].astype(str))
        _, first = np.unique(pairs, return_index=True)
        for i in at[np.sort(first)].tolist():
            path = self.manifest.resolve(i)
            if not keys[i] or path.suffix.lower() in H5_SUFFIXES:
                continue
            try:
                self._arrays.get(path, keys[i])
            except (OSError, KeyError, ValueError):
                pass

    def __getitem__(self, item):
        i, wanted = item if isinstance(item, tuple) else (item, tuple(range(len(self.views))))
        if self._arrays is None:
            self._arrays = ArrayFiles()
        views = [self.views[v] for v in wanted]
        try:
            drafts = [v.draft for v in views if not (v.raw or v.encoded)]
            imgs = read_image_views(self.manifest, i, self._arrays, drafts,
                                    self.max_pixels) if drafts else {}
            encoded = (torch.from_numpy(read_encoded(self.manifest, i, self._arrays,
                                                     self.max_pixels))
                       if any(v.encoded for v in views) else None)
            xs = []
            for w, v in zip(wanted, views, strict=True):
                if v.encoded:
                    xs.append(encoded)
                elif v.raw:
                    raw, _, errors = self._raw_rows([i], (w,))
                    if errors[0]:
                        raise ImageReadError(errors[0])
                    xs.append(raw[w][0])
                else:
                    xs.append(v.transform(imgs[v.draft]))
            return tuple(xs), wanted, i, ""
        except ImageReadError as e:
            return tuple(torch.zeros(v.shape, dtype=torch.uint8 if v.raw else v.dtype)
                         for v in views), wanted, i, str(e)

    def __getitems__(self, items):
        """A whole batch (the DataLoader's batched fetch). Rows wanted as ``raw`` views only
        are read with one indexed read per array (no per-row work): a collated batch."""
        wanted = items[0][1] if isinstance(items[0], tuple) else tuple(range(len(self.views)))
        if not all(self.views[v].raw for v in wanted):
            return [self[item] for item in items]
        if self._arrays is None:
            self._arrays = ArrayFiles()
        rows = [item[0] if isinstance(item, tuple) else item for item in items]
        return _Collated(*self._raw_rows(rows, wanted))

    def _raw_rows(self, rows: Sequence[int], wanted: Sequence[int]):
        """({view: uint8 (B, *shape)}, rows, errors) of array rows read as stored."""
        if self._arrays is None:
            self._arrays = ArrayFiles()
        m = self.manifest
        shape = self.views[wanted[0]].shape
        out = np.zeros((len(rows), *shape), dtype=np.uint8)
        errors = [""] * len(rows)
        by_array: dict[tuple[str, str], list[int]] = {}
        for k, i in enumerate(rows):
            by_array.setdefault((str(m.resolve(i)), m.array_keys[i]), []).append(k)
        for (path, key), ks in by_array.items():
            try:
                arr = self._arrays.get(Path(path), key)
            except (OSError, KeyError, ValueError) as e:
                for k in ks:
                    errors[k] = f"id {str(m.ids[rows[k]])!r}: cannot read {path}: {e}"
                continue
            at = np.array([int(m.index[rows[k]]) for k in ks])
            ok = (at >= 0) & (at < len(arr))
            for k in np.asarray(ks)[~ok]:
                errors[k] = _out_of_range(m, rows[k], Path(path), len(arr))
            if ok.any():
                unique, inverse = np.unique(at[ok], return_inverse=True)
                if unique[-1] - unique[0] + 1 == len(unique):  # one contiguous read
                    px = np.asarray(arr[int(unique[0]):int(unique[-1]) + 1])
                else:
                    px = np.asarray(arr[unique.tolist()] if not isinstance(arr, np.ndarray)
                                    else arr[unique])
                out[np.asarray(ks)[ok]] = px.reshape(len(unique), *shape)[inverse]
        x = torch.from_numpy(out)
        return {v: x for v in wanted}, torch.tensor(list(rows)), errors


@dataclass
class _Collated:
    """A batch :meth:`ViewsDataset.__getitems__` already assembled."""

    xs: dict[int, torch.Tensor]
    rows: torch.Tensor
    errors: list[str]


def collate_views(items, lists: frozenset[int] = frozenset()):
    """Stack a batch of :class:`ViewsDataset` items (one ``views`` tuple per batch):
    ({view: images}, rows, errors); the views in ``lists`` (encoded) as lists of rows."""
    if isinstance(items, _Collated):
        return items.xs, items.rows, items.errors
    xs, wanted, rows, errors = zip(*items, strict=True)
    stacked = {v: [x[k] for x in xs] if v in lists else torch.stack([x[k] for x in xs])
               for k, v in enumerate(wanted[0])}
    return stacked, torch.tensor(rows), list(errors)


class RowDataset(ViewsDataset):
    """Rows of a manifest through one transform: item = (tensor, row, error message)."""

    def __init__(self, manifest: Manifest, transform: Callable[[Image.Image], torch.Tensor],
                 shape: Sequence[int], draft: int | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(manifest, [View(transform, tuple(shape), draft, dtype)])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        xs, _, row, error = super().__getitem__((i, (0,)))
        return xs[0], row, error


def _decoded_only(img: Image.Image) -> torch.Tensor:
    return torch.zeros(0)


def check_images(manifest: Manifest, workers: int = 0) -> None:
    """Raise naming the first row whose file is missing or whose pixels cannot be decoded:
    every row's image is read in full, across ``workers`` processes, so a truncated PNG or
    a corrupt JPEG is found before an extract meets it.

    Raises
    ------
    ManifestError
        A missing file, naming the row id and path.
    ImageReadError
        An unreadable or truncated image, naming the row id and file.
    """
    manifest.check_files()
    error = first_unreadable(manifest, workers=workers)
    if error:
        raise ImageReadError(f"{manifest.name}: {error}")


def first_unreadable(manifest: Manifest, workers: int = 0, batch_size: int = 64) -> str:
    """Decode every row's image in full; the error of the first unreadable row, or ``""``."""
    bad = unreadable_rows(manifest, workers, batch_size, first_only=True)
    return next(iter(bad.values()), "")


def unreadable_rows(manifest: Manifest, workers: int = 0, batch_size: int = 64, *,
                    draft: int | None = None, first_only: bool = False) -> dict[int, str]:
    """Decode every row's image (JPEGs at ``draft`` size, as the model will read them);
    {row: error} of those that cannot be read (with ``first_only``, the first one)."""
    loader = torch.utils.data.DataLoader(
        RowDataset(manifest, _decoded_only, (0,), draft=draft), batch_size=batch_size,
        num_workers=workers, collate_fn=collate_rows)
    bad: dict[int, str] = {}
    for _, rows, errors in loader:
        bad.update((int(r), e) for r, e in zip(rows.tolist(), errors, strict=True) if e)
        if bad and first_only:
            break
    return bad


def collate_rows(items: list[tuple[torch.Tensor, int, str]]):
    """Stack a batch of :class:`RowDataset` items: (images, rows, errors)."""
    xs, rows, errors = zip(*items, strict=True)
    return torch.stack(xs), torch.tensor(rows), list(errors)
