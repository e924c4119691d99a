"""Small whole objects beside the arrays (claims, catalog entries), through the same zarr store
the embeddings use: a local folder or an fsspec URL.

The one operation zarr's store API does not give safely is an *exclusive create*: zarr's
``set_if_not_exists`` checks, then writes. Here it is a real precondition:

- on a local or network file system, the object is written to a temporary file and
  hard-linked to its name, which fails when the name exists (and the content is there the
  moment the name is);
- on S3 (and S3-compatible servers: MinIO, moto, Ceph) it is a ``PUT`` with
  ``If-None-Match: *``, which the server refuses with 412 when the object exists (s3fs's
  ``mode="create"``); GCS's ``ifGenerationMatch=0`` the same way through gcsfs;
- elsewhere (``memory://``, a file system without a conditional write) it falls back to
  check-then-write, and :attr:`StoreObjects.exclusive` says so.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import zarr.storage

# file systems whose ``mode="create"`` is sent to the server as a precondition
CONDITIONAL_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "file", "local", "memory"}


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class StoreObjects:
    """Whole small objects under a zarr store's root, by ``/``-separated key."""

    def __init__(self, zstore: zarr.abc.store.Store) -> None:
        self.zstore = zstore
        self.local: Path | None = None
        self.fs = None
        if isinstance(zstore, zarr.storage.LocalStore):
            self.local = Path(zstore.root)
        elif isinstance(zstore, zarr.storage.FsspecStore):
            self.fs = zstore.fs
            self.prefix = zstore.path.rstrip("/")
        else:
            raise TypeError(f"unsupported zarr store {type(zstore).__name__}")
        protocol = self.fs.protocol if self.fs is not None else "file"
        protocol = protocol[0] if isinstance(protocol, (list, tuple)) else protocol
        self.protocol = protocol
        has_mode = self.fs is None or "mode" in inspect.signature(self.fs._pipe_file).parameters
        self.exclusive = self.local is not None or (has_mode and protocol in
                                                    CONDITIONAL_PROTOCOLS)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _temp(self, key: str, data: bytes) -> tuple[Path, Path]:
        """(the local path of ``key``, a temporary file beside it holding ``data``, named
        with the writer's pid so that one a killed writer left is known as stale)."""
        p = self.local / key
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        return p, tmp

    def remove_stale_temps(self, key: str) -> int:
        """Delete the temporary files beside ``key`` that writers killed mid-write left
        (their pid is gone from this host); the count removed. Object stores write whole
        objects and leave none."""
        if self.local is None:
            return 0
        p = self.local / key
        removed = 0
        for tmp in p.parent.glob(f"{p.name}.*.tmp"):
            pid = tmp.name[len(p.name) + 1:].split("-", 1)[0]
            if not pid.isdigit() or not pid_alive(int(pid)):  # no pid: an older featstore's
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist: True when this call created it."""
        if self.local is not None:
            p, tmp = self._temp(key, data)
            try:
                os.link(tmp, p)
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True
        if self.exclusive:
            try:
                _sync(self.fs._pipe_file(self._full(key), data, mode="create"))
            except FileExistsError:  # S3 412 Precondition Failed, GCS 412, xb on a file
                return False
            return True
        if self.get(key) is not None:  # best effort: check, write, read back
            return False
        self.put(key, data)
        return self.get(key) == data

    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` whole (readers see the old or the new object, never half of one)."""
        if self.local is not None:
            p, tmp = self._temp(key, data)
            os.replace(tmp, p)
        else:
            _sync(self.fs._pipe_file(self._full(key), data))

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        try:
            if self.local is not None:
                return (self.local / key).read_bytes()
            return _sync(self.fs._cat_file(self._full(key)))
        except FileNotFoundError:
            return None

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """Several objects at once (concurrent requests on an object store); missing ones are
        left out."""
        if not keys:
            return {}
        if self.local is not None:
            got = {k: self.get(k) for k in keys}
            return {k: v for k, v in got.items() if v is not None}
        out = _sync(self.fs._cat([self._full(k) for k in keys], on_error="return"))
        full = {self._full(k): k for k in keys}
        return {full[p]: v for p, v in out.items() if isinstance(v, bytes)}

    def list(self, prefix: str) -> list[str]:
        """Keys of the objects under ``prefix/`` (recursively), relative to the root."""
        return sorted(self.versions(prefix))

    def versions(self, prefix: str) -> dict[str, str]:
        """Keys under ``prefix/`` with a version tag that changes whenever the object is
        rewritten (ETag or generation on object stores; mtime and size on a file system),
        from one listing."""
        if self.local is not None:
            base = self.local / prefix
            if not base.is_dir():
                return {}
            out = {}
            for p in base.rglob("*"):
                if p.name.endswith(".tmp"):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:  # removed while listing
                    continue
                if p.is_file():
                    out[p.relative_to(self.local).as_posix()] = f"{st.st_mtime_ns}-{st.st_size}"
            return out
        try:
            found = _sync(self.fs._find(self._full(prefix), detail=True))
        except FileNotFoundError:
            return {}
        cut = len(self.prefix) + 1 if self.prefix else 0
        return {path[cut:]: str(info.get("ETag") or info.get("generation")
                                or f"{info.get('LastModified') or info.get('mtime')}-"
                                   f"{info.get('size')}")
                for path, info in found.items() if info.get("type", "file") == "file"}

    def age(self, key: str) -> float | None:
        """Seconds since ``key`` was last written, or None when it does not exist."""
        try:
            if self.local is not None:
                return time.time() - (self.local / key).stat().st_mtime
            info = _sync(self.fs._info(self._full(key)))
        except FileNotFoundError:
            return None
        stamp = info.get("LastModified") or info.get("updated") or info.get("mtime") \
            or info.get("created")
        if stamp is None:
            return None
        if hasattr(stamp, "timestamp"):
            return time.time() - stamp.timestamp()
        if isinstance(stamp, str):
            from datetime import datetime

            return time.time() - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        return time.time() - float(stamp)

    def delete(self, key: str) -> None:
        try:
            if self.local is not None:
                (self.local / key).unlink(missing_ok=True)
            else:
                _sync(self.fs._rm_file(self._full(key)))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix/``."""
        if self.local is not None:
            shutil.rmtree(self.local / prefix, ignore_errors=True)
            return
        try:
            _sync(self.fs._rm(self._full(prefix), recursive=True))
        except FileNotFoundError:
            pass
