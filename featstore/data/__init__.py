"""Datasets: manifests, readers of raw layouts, validation, pixel loading."""

from featstore.data.images import RowDataset, read_image
from featstore.data.manifest import SPLITS, TASKS, Manifest, build_manifest
from featstore.data.readers import (
    load_dataset,
    read_image_folder,
    read_manifest_table,
    read_medmnist,
)

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
