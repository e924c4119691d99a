"""Extraction: frozen backbones over a manifest into the store."""

from featstore.extract.engine import (
    ExtractProgress,
    ExtractResult,
    extract_embeddings,
    resolve_key,
)

__all__ = ["ExtractProgress", "ExtractResult", "extract_embeddings", "resolve_key"]
