"""Reading a manifest row's pixels as an RGB PIL image, and a torch Dataset over rows."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from featstore.choices import DEFAULT_MAX_PIXELS
from featstore.data.arrays import ArrayFiles
from featstore.data.manifest import Manifest
from featstore.errors import ImageReadError

_IN_MEMORY = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
_PIL_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """featstore checks the pixel limit (``--max-pixels``) itself, so that a refusal names
    the row and skips like any unreadable image. PIL's own decompression-bomb check stays as
    it is for everyone else in the process: its warning is silenced here, and only where
    ``max_pixels`` is above PIL's error threshold is its limit lifted, for this open, then
    put back."""
    pil = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if pil is None or (max_pixels is not None and max_pixels <= 2 * pil):
            yield
            return
        with _PIL_LIMIT_LOCK:
            Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max_pixels // 2 + 1
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = pil


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB; 16-bit greyscale is scaled by its full range, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def read_image(manifest: Manifest, i: int, arrays: ArrayFiles | None = None,
               draft: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Row ``i``'s pixels as an RGB image.

    With ``draft``, a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, by libjpeg's DCT
    scaling) that keeps its shorter side at or above ``draft`` pixels: a 15-MP fundus photo
    bound for a 256-px resize decodes at 1/8 of the cost. Other formats decode in full.

    Raises
    ------
    ImageReadError
        The file is missing, truncated, not an image, or declares more than ``max_pixels``
        pixels; the message names id and file.
    """
    return read_image_views(manifest, i, arrays, drafts=(draft,), max_pixels=max_pixels)[draft]


def read_image_views(manifest: Manifest, i: int, arrays: ArrayFiles | None = None,
                     drafts: Sequence[int | None] = (None,),
                     max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     ) -> dict[int | None, Image.Image]:
    """Row ``i`` decoded once per distinct draft size (once in all for a non-JPEG): the
    file is read once; see :func:`read_image`."""
    path = manifest.resolve(i)
    try:
        if manifest.array_keys is not None and manifest.array_keys[i]:
            arrays = arrays or ArrayFiles()
            arr = arrays.get(path, manifest.array_keys[i])
            j = int(manifest.index[i])
            if not 0 <= j < len(arr):
                raise ImageReadError(_out_of_range(manifest, i, path, len(arr)))
            px = arr[j]
            if px.ndim == 3 and px.shape[-1] == 1:
                px = px[..., 0]
            img = to_rgb(Image.fromarray(np.ascontiguousarray(px)))
            return dict.fromkeys(drafts, img)
        data = path.read_bytes()
        views: dict[int | None, Image.Image] = {}
        for d in dict.fromkeys(drafts):
            with _pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    raise ImageReadError(
                        f"id {str(manifest.ids[i])!r}: {path}: {img.width}x{img.height} "
                        f"= {img.width * img.height:,} pixels, above the limit of "
                        f"{max_pixels:,} (--max-pixels)")
                if img.format != "JPEG":  # no reduced decoding: one full decode serves all
                    img.load()
                    return dict.fromkeys(drafts, to_rgb(img))
                if d is not None:
                    img.draft(img.mode, (d, d))
                img.load()
                views[d] = to_rgb(img)
        return views
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"id {str(manifest.ids[i])!r}: file not found: {path}") from None
    except Image.DecompressionBombError:  # PIL's own threshold, at or above max_pixels
        raise ImageReadError(f"id {str(manifest.ids[i])!r}: {path}: declares more pixels "
                             f"than the limit of {max_pixels:,} (--max-pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, KeyError, SyntaxError) as e:
        why = _IN_MEMORY.sub("", str(e)).strip()  # PIL names the in-memory copy it read
        raise ImageReadError(f"id {str(manifest.ids[i])!r}: cannot read {path}: {why}") \
            from None


def _out_of_range(manifest: Manifest, i: int, path: Path, n: int) -> str:
    return (f"id {str(manifest.ids[i])!r}: index {int(manifest.index[i])} out of range for "
            f"{path.name}[{manifest.array_keys[i]}] with {n} rows")


@dataclass(frozen=True)
class View:
    """One way a backbone wants a row: ``transform`` to a tensor of ``shape`` and ``dtype``
    (JPEGs decoded at ``draft`` size); or, ``raw``, the row's array pixels as stored (uint8,
    ``shape`` (H, W) or (H, W, 3)), for the model's side to resize in batches."""

    transform: Callable[[Image.Image], torch.Tensor] | None
    shape: tuple[int, ...]
    draft: int | None = None
    dtype: torch.dtype = torch.float32
    raw: bool = False


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

    def __getitem__(self, item):
        i, wanted = item if isinstance(item, tuple) else (item, tuple(range(len(self.views))))
        if self._arrays is None:
            self._arrays = ArrayFiles()
        views = [self.views[v] for v in wanted]
        try:
            drafts = [v.draft for v in views if not v.raw]
            imgs = read_image_views(self.manifest, i, self._arrays, drafts,
                                    self.max_pixels) if drafts else {}
            xs = []
            for w, v in zip(wanted, views, strict=True):
                if v.raw:
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


def collate_views(items):
    """Stack a batch of :class:`ViewsDataset` items (one ``views`` tuple per batch):
    ({view: images}, rows, errors)."""
    if isinstance(items, _Collated):
        return items.xs, items.rows, items.errors
    xs, wanted, rows, errors = zip(*items, strict=True)
    stacked = {v: torch.stack([x[k] for x in xs]) for k, v in enumerate(wanted[0])}
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
