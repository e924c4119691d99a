"""Opening a store's backend: a local folder or an fsspec URL (``s3://bucket/prefix``), as
one zarr store, and where runs go that a store refuses.

The rest of featstore reaches the bytes through zarr's store abstraction only; the few
places that must know the backend (reading a shard as one file, an exclusive create) ask
:func:`local_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

import zarr
import zarr.storage

from featstore.errors import StoreError

BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")
RESULTS_STORE_ENV = "FEATSTORE_RESULTS_STORE"
# what a write to a store it may not change raises: a read-only mount or file system
# (OSError: EROFS, EACCES), a denied PUT (s3fs: PermissionError, an OSError)
READ_ONLY_ERRORS = (OSError,)


def open_zarr_store(root: str | Path, *, read_only: bool = False) -> zarr.abc.store.Store:
    """A zarr store for a local folder or an fsspec URL (``s3://``, ``gs://``, ``memory://``)."""
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        try:
            store = zarr.storage.FsspecStore.from_url(text, read_only=read_only)
        except ImportError as e:  # fsspec names the missing package (s3fs, gcsfs, ...)
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
            how = f"pip install 'featstore[{extra}]'" if extra else "install its fsspec driver"
            raise StoreError(f"--store {text}: {scheme}:// needs a package that is not "
                             f"installed ({how}): {str(e).splitlines()[0]}") from None
        if scheme in BUCKET_SCHEMES:
            _check_bucket(store, text)
        return store
    path = Path(text.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise StoreError(f"--store {text}: a file, not a store folder")
    return zarr.storage.LocalStore(path, read_only=read_only)


def local_root(zstore: zarr.abc.store.Store) -> Path | None:
    """The folder of a local store (its objects are plain files there); None otherwise."""
    return Path(zstore.root) if isinstance(zstore, zarr.storage.LocalStore) else None


def _check_bucket(store: zarr.storage.FsspecStore, text: str) -> None:
    """One request to the store's bucket, so that a missing bucket or an endpoint that does
    not answer is one error naming them, not a failure deep inside a read.

    Raises
    ------
    StoreError
        The bucket does not exist, or the object store cannot be reached.
    """
    from zarr.core.sync import sync

    bucket = store.path.split("/", 1)[0]
    try:
        sync(store.fs._info(bucket))
    except FileNotFoundError:
        raise StoreError(f"--store {text}: bucket {bucket!r} does not exist (or these "
                         "credentials cannot see it)") from None
    except PermissionError:  # may still read and write under the prefix: carry on
        return
    except Exception as e:  # botocore/aiohttp connection errors, timeouts, bad endpoints
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise StoreError(f"--store {text}: cannot reach the object store ({first}); check "
                         "the endpoint (AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL), network "
                         "and credentials") from None


def default_results_store() -> str:
    """Where runs go that the store refuses (a reader without write access):
    ``$FEATSTORE_RESULTS_STORE``, else ``$XDG_CACHE_HOME/featstore/results``."""
    if os.environ.get(RESULTS_STORE_ENV):
        return os.environ[RESULTS_STORE_ENV]
    cache = os.path.expanduser(os.getenv("XDG_CACHE_HOME", "~/.cache"))
    return os.path.join(cache, "featstore", "results")
