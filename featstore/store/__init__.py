"""The Zarr feature store: layout, keys, shard writer, reader, verify."""

from featstore.store.dataset import DatasetGroup
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import STORE_FORMAT_VERSION, EmbeddingKey, Embeddings

__all__ = [
    "STORE_FORMAT_VERSION",
    "DatasetGroup",
    "EmbeddingKey",
    "EmbeddingSet",
    "Embeddings",
    "FeatureStore",
]
