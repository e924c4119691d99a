"""featstore: an embedding cache and feature store for transfer learning on medical images.

The names below are imported on first use (PEP 562), so ``import featstore`` (and the
``featstore`` command's ``--help``) does not pay for torch, timm, zarr and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BackboneSpec": "featstore.models",
    "DVME": "featstore.fusion",
    "EmbeddingKey": "featstore.store",
    "FeatstoreError": "featstore.errors",
    "FeatureStore": "featstore.store",
    "KNNProbe": "featstore.probe",
    "LinearProbe": "featstore.probe",
    "Manifest": "featstore.data",
    "build_backbone": "featstore.models",
    "extract_embeddings": "featstore.extract",
    "fuse_grid": "featstore.fusion",
    "load_dataset": "featstore.data",
    "parse_backbone": "featstore.models",
    "probe_embeddings": "featstore.probe",
    "probe_grid": "featstore.probe",
    "resolve_embedding_sets": "featstore.extract",
}

__all__ = [
    "BackboneSpec",
    "DVME",
    "EmbeddingKey",
    "FeatstoreError",
    "FeatureStore",
    "KNNProbe",
    "LinearProbe",
    "Manifest",
    "build_backbone",
    "extract_embeddings",
    "fuse_grid",
    "load_dataset",
    "parse_backbone",
    "probe_embeddings",
    "probe_grid",
    "resolve_embedding_sets",
]

if TYPE_CHECKING:
    from featstore.data import Manifest, load_dataset
    from featstore.errors import FeatstoreError
    from featstore.extract import extract_embeddings, resolve_embedding_sets
    from featstore.fusion import DVME, fuse_grid
    from featstore.models import BackboneSpec, build_backbone, parse_backbone
    from featstore.probe import KNNProbe, LinearProbe, probe_embeddings, probe_grid
    from featstore.store import EmbeddingKey, FeatureStore


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'featstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
