"""Embedding keys, and what a ``--backbone`` argument names in a store.

The one place where the fields of an embedding key are assembled (:func:`embedding_key`):
architecture, sha256 of the weights actually loaded, preprocessing, layer, stored dtype, JPEG
decoding, and the compute precision when it is not fp32. :class:`EmbeddingKey` hashes them
with the store format version. Every verb that takes ``--backbone`` resolves it here
(:func:`resolve_embedding_sets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from featstore.choices import DTYPES, PRECISIONS
from featstore.errors import BackboneError, FeatstoreError, NotExtractedError
from featstore.store.layout import EmbeddingKey

if TYPE_CHECKING:
    from featstore.data.manifest import Manifest
    from featstore.models.identity import BackboneIdentity
    from featstore.models.registry import BackboneSpec, LoadedBackbone
    from featstore.store.dataset import DatasetGroup
    from featstore.store.embedding_set import EmbeddingSet
    from featstore.store.feature_store import FeatureStore

# JPEGs decode at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps the backbone's resize
# size; part of every key, because it changes the numbers of large JPEGs.
DECODE = "jpeg-draft"
# ``--decode device``: JPEGs decoded in full where the model runs (TorchCodec's or
# torchvision's decode_jpeg: nvJPEG on CUDA, libjpeg-turbo on CPU; the two may differ in the
# last bit of a pixel, so each names its own keys), then reduced by the scale PIL's draft
# takes (block means); other images decoded in full by PIL in the loader; every row resized
# on the device in batches (BATCHED_RESIZE).
DEVICE_DECODES = {"cuda": "device-nvjpeg-v1", "cpu": "device-libjpeg-v1"}


def check_precision(precision: str) -> str:
    """``precision`` itself, or one error naming the valid ones."""
    if precision not in PRECISIONS:
        raise FeatstoreError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def check_dtype(dtype: str) -> str:
    """``dtype`` itself, or one error naming the valid ones."""
    if dtype not in DTYPES:
        raise FeatstoreError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dtype


def key_fields(loaded: LoadedBackbone | BackboneIdentity, dtype: str = "float32",
               precision: str = "fp32", resize: str | None = None,
               decode: str = DECODE) -> dict[str, Any]:
    """Everything that changes the embedding numbers of a loaded backbone. ``resize``: the
    version of the batched device resize when it made the set
    (:data:`featstore.models.preprocessing.BATCHED_RESIZE`), None for PIL's; ``decode``:
    how JPEGs were decoded (:data:`DECODE`, or one of :data:`DEVICE_DECODES`)."""
    check_precision(precision)
    check_dtype(dtype)
    spec = loaded.spec
    fields: dict[str, Any] = {
        "architecture": spec.architecture,
        "weights_sha256": loaded.weights_sha256,
        "preprocessing": loaded.preprocessing.to_dict(),
        "layer": spec.layer,
        "dtype": dtype,
        "decode": decode,
    }
    if precision != "fp32":  # fp32 keys stay those written before precision existed
        fields["precision"] = precision
    if resize is not None:  # PIL-resized keys stay those written before the device resize
        fields["resize"] = resize
    return fields


def embedding_key(loaded: LoadedBackbone | BackboneIdentity, dtype: str = "float32",
                  precision: str = "fp32", resize: str | None = None,
                  decode: str = DECODE) -> EmbeddingKey:
    """The embedding key of a loaded backbone's numbers (see :func:`key_fields`)."""
    return EmbeddingKey(key_fields(loaded, dtype, precision, resize, decode))


def other_pixel_keys(loaded: LoadedBackbone | BackboneIdentity, dtype: str = "float32",
                     precision: str = "fp32") -> list[EmbeddingKey]:
    """The keys of the same backbone's numbers with its pixels made on a device, in the
    order a spec falls back to them when PIL's set is not there: resized on a GPU in
    batches (an extract on CUDA makes it), then decoded on CUDA, then decoded on a CPU by
    torch (``--decode device``)."""
    from featstore.models.preprocessing import BATCHED_RESIZE

    return [embedding_key(loaded, dtype, precision, BATCHED_RESIZE, decode)
            for decode in (DECODE, DEVICE_DECODES["cuda"], DEVICE_DECODES["cpu"])]


def check_weights(loaded: LoadedBackbone | BackboneIdentity, key: EmbeddingKey,
                   es: EmbeddingSet) -> None:
    """Refuse to write rows of set ``es`` (of ``key``) with a network whose weights are not
    the key's: a repair or a resume would mix two models' embeddings under one key.

    Raises
    ------
    BackboneError
        The weights' sha256 differs from the key's, both named.
    """
    want = key.fields["weights_sha256"]
    if loaded.weights_sha256 != want:
        raise BackboneError(
            f"backbone {loaded.alias}: its weights now hash to {loaded.weights_sha256[:12]}, "
            f"but set {es.key[:12]} in {es.dataset.name} was made from weights "
            f"{want[:12]}; its missing shards are not computed from other weights (put the "
            "original file back, or extract the new weights under their own key)")


def resolve_key(spec: BackboneSpec, dtype: str = "float32", precision: str = "fp32",
                ) -> tuple[BackboneIdentity | LoadedBackbone, EmbeddingKey]:
    """A spec's identity (remembered from an earlier build of the same spec and weights
    file, else built: weights hashed as loaded) and the key of its numbers.

    Raises
    ------
    BackboneError
        The spec cannot be built or its weights are missing; FeatstoreError for a bad
        ``dtype`` or ``precision``.
    """
    from featstore.models.resolve import identify

    check_precision(precision)
    check_dtype(dtype)
    loaded = identify(spec)
    return loaded, embedding_key(loaded, dtype, precision)


def resolve_embedding_set(ds: DatasetGroup, text: str, *, image_size: int | None = None,
                          dtype: str = "float32", precision: str = "fp32") -> EmbeddingSet:
    """The embedding set a ``--backbone`` argument names in one dataset group.

    ``text`` is the alias a set is listed under (``featstore ls``), a key prefix, or a spec
    (``timm:...``, a registered name, anything with ``@``) given as to extract: a spec is
    resolved to its key from the weights on disk, so changed weights never silently match
    older embeddings (the set made by PIL, else one whose pixels were made on a device:
    :func:`other_pixel_keys`).

    Raises
    ------
    NotExtractedError
        Nothing in the dataset group matches (the sets it has are listed), or several do.
    BackboneError
        ``text`` is a spec that cannot be built (e.g. its weights are missing).
    """
    from featstore.models.registry import backbone_spec

    if not text.strip():  # a key prefix of every set
        raise NotExtractedError(f"--backbone {text!r}: expected an alias, a key prefix or a "
                                "spec, not empty text")
    try:
        spec = backbone_spec(ds.store, text, input_size=image_size)
    except BackboneError as not_a_spec:
        try:  # an alias as listed by `featstore ls`, or a key prefix
            return ds.embedding_set(text)
        except NotExtractedError as not_in_store:
            ambiguous = any(s.alias == text or s.key.startswith(text)
                            for s in ds.embedding_sets())
            if ambiguous or not ("@" in text or text.startswith("timm:")):
                raise not_in_store from None  # several sets match: it lists their keys
            raise not_a_spec from None
    loaded, key = resolve_key(spec, dtype, precision)
    found = []  # pixels made on a device: keys of their own; a finished set first
    for k in (key, *other_pixel_keys(loaded, dtype, precision)):
        try:
            found.append(ds.embedding_set(k.digest))
        except NotExtractedError:
            continue
        if found[-1].complete:
            return found[-1]
    if found:
        return found[0]  # unfinished: reading it says so
    return ds.embedding_set(key.digest)  # raises, listing the sets there are


def resolve_embedding_sets(store: FeatureStore, manifest: Manifest,
                           backbones: Sequence[str] | None = None, *,
                           image_size: int | None = None, dtype: str = "float32",
                           precision: str = "fp32") -> list[EmbeddingSet]:
    """The embedding sets ``backbones`` name in ``manifest``'s dataset group, or, without
    ``backbones``, every complete set of it.

    Raises
    ------
    NotExtractedError
        The dataset is not in the store, a backbone names no set, or there is no complete
        set at all.
    """
    ds = store.dataset(manifest)
    if backbones:
        return [resolve_embedding_set(ds, b, image_size=image_size, dtype=dtype,
                                      precision=precision) for b in backbones]
    sets = [s for s in ds.embedding_sets() if s.complete]
    if not sets:
        raise NotExtractedError(f"dataset {ds.name}: no complete embedding sets in "
                                f"{store.root}; run 'featstore extract' first")
    return sets
