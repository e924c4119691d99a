"""The Zarr feature store: layout, keys, shard writer, reader, verify."""

from featstore.store.zarr_store import (
    STORE_FORMAT_VERSION,
    DatasetGroup,
    EmbeddingKey,
    Embeddings,
    EmbeddingSet,
    FeatureStore,
)

__all__ = [
    "STORE_FORMAT_VERSION",
    "DatasetGroup",
    "EmbeddingKey",
    "EmbeddingSet",
    "Embeddings",
    "FeatureStore",
]
