"""The names featstore's store module has always exported, from the modules that now hold
them (kept so that code importing ``featstore.store.zarr_store`` keeps working):

- :mod:`featstore.store.layout`: format version, group names, ``EmbeddingKey``,
  ``Embeddings``, ``require_group``;
- :mod:`featstore.store.backend`: ``open_zarr_store``, ``default_results_store``;
- :mod:`featstore.store.feature_store`, :mod:`~featstore.store.dataset`,
  :mod:`~featstore.store.embedding_set`: ``FeatureStore``, ``DatasetGroup``, ``EmbeddingSet``;
- :mod:`featstore.store.runlog` and :mod:`~featstore.store.shards`: run logs, shard reads.
"""

from featstore.store.backend import (
    BUCKET_SCHEMES,
    READ_ONLY_ERRORS,
    RESULTS_STORE_ENV,
    default_results_store,
    open_zarr_store,
)
from featstore.store.dataset import DatasetGroup
from featstore.store.embedding_set import EmbeddingSet
from featstore.store.feature_store import FeatureStore
from featstore.store.layout import (
    CHECKPOINTS_GROUP,
    CLAIMS_GROUP,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_ROWS,
    FINETUNE_GROUP,
    FUSION_GROUP,
    KEY_CHARS,
    PROBES_GROUP,
    SKIPPED_GROUP,
    STORE_FORMAT_VERSION,
    EmbeddingKey,
    Embeddings,
    require_group,
)

__all__ = [
    "BUCKET_SCHEMES", "CHECKPOINTS_GROUP", "CLAIMS_GROUP", "DEFAULT_CHUNK_ROWS",
    "DEFAULT_SHARD_ROWS", "FINETUNE_GROUP", "FUSION_GROUP", "KEY_CHARS", "PROBES_GROUP",
    "READ_ONLY_ERRORS", "RESULTS_STORE_ENV", "SKIPPED_GROUP", "STORE_FORMAT_VERSION",
    "DatasetGroup", "EmbeddingKey", "EmbeddingSet", "Embeddings", "FeatureStore",
    "default_results_store", "open_zarr_store", "require_group",
]
