"""Pixels held in array files (MedMNIST's .npz, PatchCamelyon's HDF5): opened once per
process, read by row or by batch. No torch here: what a row's array looks like is known
before any model or loader starts."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from featstore.data.manifest import Manifest

H5_SUFFIXES = (".h5", ".hdf5")
# what reading a damaged .npz member raises (a broken deflate stream, a bad CRC, short data)
DAMAGED_NPZ = (zipfile.BadZipFile, zlib.error, EOFError)


class ArrayFiles:
    """Per-process cache of arrays in .npz and HDF5 files, opened on first use.

    An .npz array is loaded whole (MedMNIST sizes); an HDF5 dataset stays on disk and is read
    one row at a time through h5py (PatchCamelyon's 262k patches are never loaded). A
    DataLoader worker builds its own cache after fork, so no file handle is shared.
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, str], Any] = {}
        self._files: list[Any] = []

    def get(self, path: Path, key: str) -> Any:
        """The array ``key`` of the file at ``path`` (indexable by row, with ``len``).

        Raises
        ------
        OSError, KeyError, ValueError
            The file or array cannot be read (a damaged .npz member: ValueError naming it).
        """
        k = (str(path), key)
        if k not in self._arrays:
            if path.suffix.lower() in H5_SUFFIXES:
                import h5py

                f = h5py.File(path, "r")
                self._files.append(f)
                self._arrays[k] = f[key]
            else:
                try:
                    with np.load(path, allow_pickle=False) as npz:
                        self._arrays[k] = npz[key]
                except (*DAMAGED_NPZ, ValueError) as e:
                    raise ValueError(f"array {key}: {e}") from None  # damaged, short, objects
        return self._arrays[k]

    def header(self, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of array ``key`` without reading its data (an .npz member's
        header, an HDF5 dataset's metadata).

        Raises
        ------
        OSError, KeyError, ValueError
            The file or array cannot be read (a damaged .npz header: ValueError naming it).
        """
        if path.suffix.lower() in H5_SUFFIXES:
            arr = self.get(path, key)
            return tuple(arr.shape), np.dtype(arr.dtype)
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())  # np.savez writes KEY.npy; a bare KEY loads too
                member = f"{key}.npy" if f"{key}.npy" in names or key not in names else key
                with z.open(member) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if major == 1 else
                            np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
        except DAMAGED_NPZ as e:
            raise ValueError(f"array {key}: {e}") from None
        return tuple(shape), np.dtype(dtype)

    def __del__(self) -> None:
        for f in self._files:
            try:
                f.close()
            except Exception:  # interpreter shutdown: nothing left to close properly
                pass


def uniform_array_shape(manifest: Manifest) -> tuple[int, ...] | None:
    """The per-row shape, (H, W) or (H, W, 3), when every row of ``manifest`` is a uint8
    row of an array file (.npz, HDF5) and all share it; else None. Such rows can go to the
    model as the arrays hold them, resized there in batches. Reads headers only."""
    keys = manifest.array_keys
    if keys is None or not len(manifest) or not all(keys):
        return None
    arrays, shapes = ArrayFiles(), set()
    for i in np.unique(np.unique(keys, return_index=True)[1]):  # one row per array key
        try:
            shape, dtype = arrays.header(manifest.resolve(int(i)), keys[int(i)])
        except (OSError, KeyError, ValueError):
            return None  # unreadable here: the row-by-row path names the rows
        if dtype != np.uint8:
            return None
        row = shape[1:]
        if len(row) == 3 and row[-1] == 1:
            row = row[:2]
        if len(row) not in (2, 3) or (len(row) == 3 and row[-1] != 3):
            return None
        shapes.add(row)
    for p in {str(manifest.resolve(int(i))) for i in range(len(manifest))}:
        if not Path(p).is_file():
            return None
    return shapes.pop() if len(shapes) == 1 else None
