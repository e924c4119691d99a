"""The Zarr feature store: layout, keys, shard writer, reader, verify.

Names load on first use (:mod:`featstore._lazy`): the layout's constants import without zarr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS = {
    "STORE_FORMAT_VERSION": "featstore.store.layout",
    "DatasetGroup": "featstore.store.dataset",
    "EmbeddingKey": "featstore.store.layout",
    "EmbeddingSet": "featstore.store.embedding_set",
    "Embeddings": "featstore.store.layout",
    "FeatureStore": "featstore.store.feature_store",
}
__all__ = [
    "STORE_FORMAT_VERSION",
    "DatasetGroup",
    "EmbeddingKey",
    "EmbeddingSet",
    "Embeddings",
    "FeatureStore",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from featstore.store.dataset import DatasetGroup
    from featstore.store.embedding_set import EmbeddingSet
    from featstore.store.feature_store import FeatureStore
    from featstore.store.layout import STORE_FORMAT_VERSION, EmbeddingKey, Embeddings
