"""featstore: an embedding cache and feature store for transfer learning on medical images."""

from featstore.data import Manifest, load_dataset
from featstore.errors import FeatstoreError
from featstore.extract import extract_embeddings
from featstore.models import BackboneSpec, build_backbone, parse_backbone
from featstore.probe import LinearProbe, probe_embeddings
from featstore.store import EmbeddingKey, FeatureStore

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "EmbeddingKey",
    "FeatstoreError",
    "FeatureStore",
    "LinearProbe",
    "Manifest",
    "build_backbone",
    "extract_embeddings",
    "load_dataset",
    "parse_backbone",
    "probe_embeddings",
]
