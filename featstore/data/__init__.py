"""Datasets: manifests, readers of raw layouts, validation, pixel loading.

Importing this package loads neither torch nor h5py: the pixel readers
(:mod:`featstore.data.decode`) and the torch Dataset (:mod:`featstore.data.images`) load on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featstore.choices import TASKS
from featstore.data.manifest import SPLITS, Manifest, build_manifest
from featstore.data.readers import (
    load_dataset,
    read_image_folder,
    read_manifest_table,
    read_medmnist,
)

if TYPE_CHECKING:
    from featstore.data.decode import read_image
    from featstore.data.images import RowDataset

_LAZY = {"RowDataset": "featstore.data.images", "read_image": "featstore.data.decode"}

__all__ = [
    "SPLITS",
    "TASKS",
    "Manifest",
    "RowDataset",
    "build_manifest",
    "load_dataset",
    "read_image",
    "read_image_folder",
    "read_manifest_table",
    "read_medmnist",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
