"""Extraction: frozen backbones over a manifest into the store."""

from featstore.extract.engine import (
    ExtractProgress,
    ExtractResult,
    extract_embeddings,
)
from featstore.extract.keys import (
    embedding_key,
    resolve_embedding_set,
    resolve_embedding_sets,
    resolve_key,
)

__all__ = [
    "ExtractProgress",
    "ExtractResult",
    "embedding_key",
    "extract_embeddings",
    "resolve_embedding_set",
    "resolve_embedding_sets",
    "resolve_key",
]
