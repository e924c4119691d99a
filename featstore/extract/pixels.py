"""How pixels travel from the loader workers to a model: uint8 across the worker boundary,
the float work (normalisation, channels_last, and for fixed-size arrays the resize) batched
on the model's device.

Workers hand over uint8: a file image decoded and resized/cropped by PIL (timm's eval
transform up to its to-tensor), or, for a source of equal-sized uint8 arrays (MedMNIST's
.npz, PatchCamelyon's HDF5), the rows as the arrays hold them, read in one indexed read per
batch. On the device, :meth:`Preprocessing.normalize` repeats torchvision's float ops, so a
PIL-resized row gives the bits of the per-image transform. The batched resize
(:meth:`Preprocessing.resize_batch`) does not give PIL's bits; a set made with it carries
:data:`BATCHED_RESIZE` in its key, and only when it actually resized (arrays already at the
backbone's size go to it unresized either way, bit for bit).

With ``--decode device`` (files, or arrays of several sizes), workers hand over a JPEG's
bytes as read (others decoded in full by PIL); the model's side decodes the JPEGs in batches
(:func:`decode_rows`: torchvision's ``decode_jpeg``, nvJPEG on CUDA) and resizes every row
there. Such a set's key names the decoder (:data:`featstore.extract.keys.DEVICE_DECODES`)
and the batched resize.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from featstore.choices import DECODES, RESIZES
from featstore.data.arrays import uniform_array_shape
from featstore.errors import FeatstoreError
from featstore.extract.keys import DECODE, DEVICE_DECODES
from featstore.models.preprocessing import BATCHED_RESIZE, Preprocessing

if TYPE_CHECKING:
    import torch

    from featstore.data.images import View
    from featstore.data.manifest import Manifest


def check_resize(resize: str) -> str:
    """``resize`` itself, or one error naming the valid ones."""
    if resize not in RESIZES:
        raise FeatstoreError(f"--resize {resize!r}: expected one of {', '.join(RESIZES)}")
    return resize


def check_decode(decode: str) -> str:
    """``decode`` itself, or one error naming the valid ones."""
    if decode not in DECODES:
        raise FeatstoreError(f"--decode {decode!r}: expected one of {', '.join(DECODES)}")
    return decode


@dataclass(frozen=True)
class PixelPath:
    """How one preprocessing's pixels reach the model."""

    prep: Preprocessing
    raw_shape: tuple[int, ...] | None  # rows go as stored arrays of this shape (None: PIL)
    keyed: bool  # the batched resize changes bits: BATCHED_RESIZE enters the key
    decoder: str | None = None  # rows go encoded, decoded on the device (a DEVICE_DECODES)

    @property
    def key_resize(self) -> str | None:
        """The key's ``resize`` field of sets made this way (None: PIL's bits)."""
        return BATCHED_RESIZE if self.keyed or self.decoder else None

    @property
    def key_decode(self) -> str:
        """The key's ``decode`` field of sets made this way."""
        return self.decoder or DECODE

    @property
    def encoded(self) -> bool:
        """Whether workers hand over encoded rows (see :func:`decode_rows`)."""
        return self.decoder is not None

    @cached_property
    def view(self) -> View:
        """What a loader worker hands over (built on first use: timm's transform factory
        is imported only when there is work)."""
        import torch

        from featstore.data.images import View

        p = self.prep
        if self.decoder is not None:
            return View(None, (8, 8), dtype=torch.uint8, encoded=True)
        if self.raw_shape is not None:
            return View(None, self.raw_shape, raw=True)
        return View(p.pixel_stage(), (3, p.input_size, p.input_size), p.resize, torch.uint8)

    def to_model(self, x: torch.Tensor | Decoded) -> torch.Tensor:
        """A batch of this view's uint8 pixels (on the model's device) -> model input; for
        an encoded view, the rows :func:`decode_rows` decoded, of any sizes."""
        if self.decoder is not None:
            x = resize_rows(self.prep, x)
        elif self.raw_shape is not None:
            x = self.prep.resize_batch(x)
        return self.prep.normalize(x)


# rows decoded at once: a batch of 15-MP fundus photos in full is 45 MB a row on the device
DECODE_CHUNK = 32
_TORCHVISION_SOURCE = re.compile(r"^.*?\.cpp:\d+, ")


def jpeg_decoder(device: torch.device | str = "cpu"):
    """(decode_jpeg, its name and version) that works on ``device``: TorchCodec's (``pip
    install 'featstore[decode]'``), which supersedes torchvision's image decoders, else
    torchvision's (deprecated since 0.29). Both decode with libjpeg-turbo on the CPU (PIL's
    bits) and nvJPEG on CUDA, and take the same arguments. Each is tried on a small JPEG
    first (once per device), so a decoder that imports but cannot run there (a wheel built
    for another torch, no nvJPEG) gives way to the next instead of failing every file.

    Raises
    ------
    FeatstoreError
        Neither decodes a JPEG on ``device``; the message says why each failed.
    """
    return _working_decoder(str(device))


@functools.cache
def _working_decoder(device: str):
    import io
    from importlib.metadata import PackageNotFoundError, version

    import torch
    from PIL import Image

    sample = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 90)).save(sample, "JPEG")
    data = torch.frombuffer(bytearray(sample.getvalue()), dtype=torch.uint8)
    why = []
    for lib, module in (("torchcodec", "torchcodec.decoders"), ("torchvision", "torchvision.io")):
        try:
            decode_jpeg = importlib.import_module(module).decode_jpeg
            if lib == "torchvision":  # its mode as the enum (a name only since 0.19)
                decode_jpeg = functools.partial(_torchvision_decode, decode_jpeg)
            if decode_jpeg([data], mode="RGB", device=device)[0].shape != (3, 8, 16):
                raise RuntimeError("decoded a 16x8 JPEG to the wrong shape")
        except Exception as e:  # not installed, or cannot run here: the next one
            first = str(e).splitlines()[0][:200] if str(e) else ""
            why.append(f"{lib}: {type(e).__name__}: {first}")
            continue
        try:
            return decode_jpeg, f"{lib} {version(lib)}"
        except PackageNotFoundError:  # importable without its metadata (a bare copy)
            return decode_jpeg, lib
    raise FeatstoreError(f"--decode device: no JPEG decoder runs on {device} ("
                         + "; ".join(why) + ")")


def _torchvision_decode(decode_jpeg, data, *, mode: str, device):
    from torchvision.io import ImageReadMode

    return decode_jpeg(data, mode=ImageReadMode[mode], device=device)


@dataclass
class Decoded:
    """Rows decoded on the device (:func:`decode_rows`): uint8 (3, H, W) each, and which
    were JPEGs (PIL would have decoded those at a reduced DCT scale)."""

    rows: list[torch.Tensor]
    jpeg: list[bool]


def decode_rows(rows: Sequence[torch.Tensor], device: torch.device, *, decoder=None,
                ) -> tuple[Decoded, dict[int, str]]:
    """Rows as a worker hands them over for ``--decode device`` -> (the rows decoded on
    ``device``, {position: why} of rows that cannot be decoded, each then a placeholder).
    A 1-D row is a JPEG's bytes, decoded on ``device`` in batches by ``decoder`` (default
    :func:`jpeg_decoder`'s: nvJPEG on CUDA, libjpeg-turbo on CPU); a 2-D (grey) or 3-D
    (H, W, 3) row is pixels PIL decoded already."""
    import torch

    where = device if device.type == "cuda" else torch.device("cpu")
    decode_jpeg = decoder or jpeg_decoder(where)[0]
    out: list[torch.Tensor | None] = [None] * len(rows)
    bad: dict[int, str] = {}
    jpegs = [k for k, r in enumerate(rows) if r.ndim == 1]
    for c in range(0, len(jpegs), DECODE_CHUNK):
        at = jpegs[c:c + DECODE_CHUNK]
        data = [rows[k].cpu() for k in at]  # the decoders read their input on the CPU
        try:
            decoded = decode_jpeg(data, mode="RGB", device=where)
        except RuntimeError as e:  # one bad file fails the batch: find it
            _not_the_file(e)
            decoded = []
            for k, d in zip(at, data, strict=True):
                try:
                    decoded.append(decode_jpeg(d, mode="RGB", device=where))
                except RuntimeError as e:
                    _not_the_file(e)
                    bad[k] = _TORCHVISION_SOURCE.sub("", str(e)).strip()
                    decoded.append(None)
        for k, x in zip(at, decoded, strict=True):
            out[k] = x
    for k, r in enumerate(rows):
        if r.ndim != 1:
            r = r.to(device, non_blocking=True)
            out[k] = r[None].expand(3, -1, -1) if r.ndim == 2 else r.permute(2, 0, 1)
        elif out[k] is None:
            out[k] = torch.zeros((3, 8, 8), dtype=torch.uint8, device=device)
    return Decoded(out, [r.ndim == 1 and k not in bad for k, r in enumerate(rows)]), bad


def _not_the_file(e: RuntimeError) -> None:
    """Raise ``e`` again when the device failed, not the file: out of memory, or a CUDA
    error (an image it names would otherwise be skipped, or blamed, for the device)."""
    import torch

    if isinstance(e, torch.OutOfMemoryError) or str(e).lstrip().startswith("CUDA error"):
        raise e


def draft_scale(height: int, width: int, size: int) -> int:
    """The DCT scale divisor (1, 2, 4 or 8) PIL's ``draft`` takes for a JPEG of
    ``height`` x ``width`` asked for at least ``size`` x ``size`` (Pillow's rule)."""
    scale = min(width // size, height // size)
    return next((m for m in (8, 4, 2) if scale >= m), 1)


def reduce_like_draft(x: torch.Tensor, size: int) -> torch.Tensor:
    """A JPEG decoded in full (3, H, W) uint8, reduced as PIL's ``draft`` to ``size``
    would have decoded it: by the same scale, to the same size, each pixel the mean of its
    m x m block (libjpeg's reduced IDCT keeps about that), rounded half up."""
    import torch.nn.functional as F

    m = draft_scale(*x.shape[-2:], size)
    if m == 1:
        return x
    y = F.avg_pool2d(x[None].float(), m, ceil_mode=True, count_include_pad=False)[0]
    return y.add_(0.5).floor_().clamp_(0, 255).to(x.dtype)


def resize_rows(prep: Preprocessing, decoded: Decoded) -> torch.Tensor:
    """Decoded rows of any sizes -> uint8 (B, 3, input_size, input_size): JPEGs first
    reduced as PIL's draft would have (:func:`reduce_like_draft`), then rows of one size
    resized together (:meth:`Preprocessing.resize_crop`), in their order."""
    import torch

    rows = [reduce_like_draft(r, prep.resize) if j else r
            for r, j in zip(decoded.rows, decoded.jpeg, strict=True)]
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, r in enumerate(rows):
        by_size.setdefault(tuple(r.shape[-2:]), []).append(k)
    s = prep.input_size
    out = torch.empty((len(rows), 3, s, s), dtype=torch.uint8, device=rows[0].device)
    for ks in by_size.values():
        out[ks] = prep.resize_crop(torch.stack([rows[k] for k in ks]))
    return out


def batched_resize(prep: Preprocessing, array_shape: tuple[int, ...] | None, resize: str,
                   device_type: str) -> tuple[bool, bool]:
    """(whether rows go to the device as stored arrays, whether that changes bits) for
    one preprocessing over a source whose rows all have ``array_shape`` (None: files or
    mixed arrays, always the PIL path)."""
    check_resize(resize)
    if array_shape is None or not prep.can_resize_batch(*array_shape[:2]):
        return False, False
    changes = prep.batched_resize_changes_bits(*array_shape[:2])
    on_device = resize == "device" or (resize == "auto" and device_type == "cuda")
    if changes and not on_device:
        return False, False
    return True, changes


def device_decoder(prep: Preprocessing, array_shape: tuple[int, ...] | None, decode: str,
                   device_type: str) -> str | None:
    """The decoder (one of :data:`DEVICE_DECODES`) that makes ``prep``'s pixels on a device
    of ``device_type``, or None where the loader's PIL path does: ``--decode cpu``, a
    source of equal-sized arrays (nothing to decode; ``--resize`` decides) or a
    preprocessing the batched resize cannot do."""
    check_decode(decode)
    if decode != "device" or array_shape is not None or not prep.can_resize_any():
        return None
    return DEVICE_DECODES["cuda" if device_type == "cuda" else "cpu"]


def pixel_paths(manifest: Manifest, preps: Sequence[Preprocessing], *, resize: str = "auto",
                device_type: str = "cpu", decode: str = "cpu") -> list[PixelPath]:
    """One :class:`PixelPath` per preprocessing, for ``manifest`` extracted on a device of
    ``device_type``. Reads array headers only."""
    shape = uniform_array_shape(manifest)
    paths = []
    for p in preps:
        raw, changes = batched_resize(p, shape, resize, device_type)
        paths.append(PixelPath(p, shape if raw else None, raw and changes,
                               device_decoder(p, shape, decode, device_type)))
    return paths


def device_type(device: str) -> str | None:
    """``cuda`` or ``cpu`` for a named device (``cuda:1``, ``cpu``, ...); None for ``auto``
    (not known without asking torch)."""
    return None if device == "auto" else "cuda" if device.startswith("cuda") else "cpu"


def key_pixels(manifest: Manifest, prep: Preprocessing, resize: str = "auto",
               device_type: str | None = None, decode: str = "cpu",
               ) -> list[tuple[str | None, str]]:
    """The key ``(resize, decode)`` fields of the sets of ``manifest`` made with ``prep``
    that an extract with these options accepts as done, the one it would make on a device
    of ``device_type`` first (None: not known, CUDA's first for a device decoder, else
    PIL's). Under ``--resize auto`` a set resized either way; under ``--decode device`` a
    set decoded on either kind of device; otherwise only the set these options make."""
    shape = uniform_array_shape(manifest)
    if device_decoder(prep, shape, decode, "cpu") is not None:
        order = ("cpu", "cuda") if device_type == "cpu" else ("cuda", "cpu")
        return [(BATCHED_RESIZE, DEVICE_DECODES[t]) for t in order]
    ways = [device_type or "cpu"]
    if resize == "auto":
        ways.append("cuda" if ways[0] == "cpu" else "cpu")
    out: list[tuple[str | None, str]] = []
    for way in ways:
        raw, changes = batched_resize(prep, shape, resize, way)
        fields = (BATCHED_RESIZE if raw and changes else None, DECODE)
        if fields not in out:
            out.append(fields)
    return out
