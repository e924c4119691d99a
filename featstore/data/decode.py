"""Reading a manifest row's pixels as an RGB PIL image: the file (or array row) decoded,
JPEGs at a reduced DCT scale on request, featstore's own pixel limit. Torch-free (PIL and
numpy), so checking a manifest's images loads no torch; the torch Dataset over rows is
:mod:`featstore.data.images`."""

from __future__ import annotations

import contextlib
import io
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from featstore.choices import DEFAULT_MAX_PIXELS
from featstore.data.arrays import ArrayFiles
from featstore.data.manifest import Manifest
from featstore.errors import ImageReadError

_IN_MEMORY = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
_PIL_LIMIT_LOCK = threading.Lock()
_lifts = 0  # opens in progress with PIL's limit lifted (under the lock)
_pil_limit: int | None = None  # PIL's limit as it was before the first of them


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """featstore checks the pixel limit (``--max-pixels``) itself, so that a refusal names
    the row and skips like any unreadable image. PIL's own decompression-bomb check stays as
    it is for everyone else in the process; only where ``max_pixels`` is above PIL's error
    threshold is it lifted, while such opens run, and put back after the last of them (the
    lifts of several threads are counted under one lock, so none restores another's)."""
    global _lifts, _pil_limit
    with _PIL_LIMIT_LOCK:
        pil = _pil_limit if _lifts else Image.MAX_IMAGE_PIXELS
        lift = pil is not None and (max_pixels is None or max_pixels > 2 * pil)
        if lift:
            if not _lifts:
                _pil_limit = pil
            _lifts += 1
            Image.MAX_IMAGE_PIXELS = None  # featstore's own check below applies
    try:
        yield
    finally:
        if lift:
            with _PIL_LIMIT_LOCK:
                _lifts -= 1
                if not _lifts:
                    Image.MAX_IMAGE_PIXELS = _pil_limit


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
    with _row_errors(manifest, i, path, max_pixels):
        if manifest.array_keys is not None and manifest.array_keys[i]:
            return dict.fromkeys(drafts, to_rgb(_array_row(manifest, i, path, arrays)))
        data = path.read_bytes()
        views: dict[int | None, Image.Image] = {}
        for d in dict.fromkeys(drafts):
            with _opened(data, manifest, i, path, max_pixels) as img:
                if img.format != "JPEG":  # no reduced decoding: one full decode serves all
                    img.load()
                    return dict.fromkeys(drafts, to_rgb(img))
                if d is not None:
                    img.draft(img.mode, (d, d))
                img.load()
                views[d] = to_rgb(img)
        return views


def read_encoded(manifest: Manifest, i: int, arrays: ArrayFiles | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Row ``i`` as ``--decode device`` hands it to the model's side: a JPEG file's bytes
    as read (1-D uint8; an RGB or grey JPEG without an EXIF orientation, its header
    checked), else the pixels decoded in full, grey (H, W) or RGB (H, W, 3) uint8 (as
    :func:`to_rgb` makes them). A JPEG tagged with an orientation is decoded here because
    TorchCodec's decoder turns it upright and PIL (the loader's path) does not.

    Raises
    ------
    ImageReadError
        As :func:`read_image`; a JPEG's body is only decoded on the model's side, which
        names the row in the same way.
    """
    path = manifest.resolve(i)
    with _row_errors(manifest, i, path, max_pixels):
        if manifest.array_keys is not None and manifest.array_keys[i]:
            img = _array_row(manifest, i, path, arrays)
        else:
            data = path.read_bytes()
            with _opened(data, manifest, i, path, max_pixels) as img:
                if img.format == "JPEG" and img.mode in ("RGB", "L") and not _oriented(img):
                    return np.frombuffer(bytearray(data), dtype=np.uint8)
                img.load()
                img = img.copy()
        return np.array(img if img.mode == "L" else to_rgb(img))  # writable, for torch


def _oriented(img: Image.Image) -> bool:
    """Whether a JPEG's EXIF asks for a rotation or flip (orientation other than 1)."""
    if "exif" not in img.info:
        return False
    return img.getexif().get(0x0112, 1) not in (0, 1)


def _array_row(manifest: Manifest, i: int, path: Path, arrays: ArrayFiles | None,
               ) -> Image.Image:
    """An array row's pixels as a PIL image (a trailing channel of 1 dropped)."""
    arrays = arrays or ArrayFiles()
    arr = arrays.get(path, manifest.array_keys[i])
    j = int(manifest.index[i])
    if not 0 <= j < len(arr):
        raise ImageReadError(_out_of_range(manifest, i, path, len(arr)))
    px = arr[j]
    if px.ndim == 3 and px.shape[-1] == 1:
        px = px[..., 0]
    return Image.fromarray(np.ascontiguousarray(px))


@contextlib.contextmanager
def _opened(data: bytes, manifest: Manifest, i: int, path: Path,
            max_pixels: int | None) -> Iterator[Image.Image]:
    """A file's bytes opened by PIL (its header read), refused above ``max_pixels``."""
    with _pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageReadError(
                f"id {str(manifest.ids[i])!r}: {path}: {img.width}x{img.height} "
                f"= {img.width * img.height:,} pixels, above the limit of "
                f"{max_pixels:,} (--max-pixels)")
        yield img


@contextlib.contextmanager
def _row_errors(manifest: Manifest, i: int, path: Path,
                max_pixels: int | None) -> Iterator[None]:
    """Any failure to read row ``i`` as one ImageReadError naming its id and file."""
    try:
        yield
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
