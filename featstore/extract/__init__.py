"""Extraction: frozen backbones over a manifest into the store.

Names load on first use (:mod:`featstore._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featstore._lazy import lazy_exports

_EXPORTS = {
    "ExtractProgress": "featstore.extract.results",
    "ExtractResult": "featstore.extract.results",
    "embedding_key": "featstore.extract.keys",
    "extract_embeddings": "featstore.extract.run",
    "resolve_embedding_set": "featstore.extract.keys",
    "resolve_embedding_sets": "featstore.extract.keys",
    "resolve_key": "featstore.extract.keys",
}
__all__ = [
    "ExtractProgress",
    "ExtractResult",
    "embedding_key",
    "extract_embeddings",
    "resolve_embedding_set",
    "resolve_embedding_sets",
    "resolve_key",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from featstore.extract.keys import (
        embedding_key,
        resolve_embedding_set,
        resolve_embedding_sets,
        resolve_key,
    )
    from featstore.extract.results import ExtractProgress, ExtractResult
    from featstore.extract.run import extract_embeddings
