"""Error types. Every error names the offending item; the CLI prints it as one line."""

import contextlib
from collections.abc import Iterator


class FeatstoreError(Exception):
    """Base class of every error featstore raises on purpose."""

    #: a bad option value, (name, value, what is wrong, command-line name): each front end
    #: words it its own way (:mod:`featstore.options`); None for every other error
    option: tuple[str, object, str, str] | None = None


class ManifestError(FeatstoreError):
    """A manifest, or the raw dataset layout it is built from, is invalid."""


class ImageReadError(FeatstoreError):
    """An image named by a manifest row cannot be read or decoded."""


class BackboneError(FeatstoreError):
    """A backbone spec is unknown or cannot be built."""


class CheckpointError(BackboneError):
    """A checkpoint file does not load strictly into its architecture."""


class WeightsNotFoundError(BackboneError):
    """The weights a spec asks for are not on this machine."""


class StoreError(FeatstoreError):
    """The feature store is missing, inconsistent or corrupt."""


class CorruptShardError(StoreError):
    """Stored embeddings fail their checksum or cannot be read: they never reach a metric."""


class NotExtractedError(StoreError):
    """The embeddings asked for have not been (fully) extracted into the store."""


class ProbeError(FeatstoreError, ValueError):
    """A probe cannot be trained or scored on the given data, or got an invalid argument.

    Also a ``ValueError``, as scikit-learn estimators raise for invalid arguments.
    """


class FusionError(ProbeError):
    """Embedding sets cannot be fused (different datasets, rows that do not align), or the
    DVME head got invalid arguments or data."""


def retyped(e: FeatstoreError, cls: type[FeatstoreError]) -> FeatstoreError:
    """``e`` as a ``cls``: its message, and the option it names (so the command line still
    words it ``--fractions 2: ...``)."""
    out = cls(str(e))
    out.option = e.option
    return out


@contextlib.contextmanager
def as_fusion_error() -> Iterator[None]:
    """The shared task and probe checks raise ProbeError; fusion says FusionError (a
    subclass)."""
    try:
        yield
    except FusionError:
        raise
    except ProbeError as e:
        raise retyped(e, FusionError) from None


class FinetuneError(FeatstoreError, ValueError):
    """A finetuning run cannot start or continue (bad option, unknown or unfinished run)."""
