"""A local cache of whole shards of remote embedding sets (``--cache DIR``/``FEATSTORE_CACHE``).

Content-addressed by each shard's sha256 checksum (``<dir>/<hex[:2]>/<hex>.bin``, the shard's
raw little-endian bytes): a shard enters the cache only after its bytes matched the checksum
recorded in the store, so a cached shard is the shard, whichever store or set it came from,
and the second probe of a remote set reads its shards from local disk. A cached file that no
longer matches (a damaged disk) is dropped and fetched again. Writes are atomic (temporary
file, then rename); a cache that cannot be written only costs the network.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


class ShardCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def _path(self, checksum: bytes) -> Path:
        h = checksum.hex()
        return self.root / h[:2] / f"{h}.bin"

    def read_into(self, checksum: bytes, out: np.ndarray) -> bool:
        """Fill ``out`` with the cached shard; False when it is not cached (or has another
        size)."""
        target = out.reshape(-1).view(np.uint8)
        try:
            with open(self._path(checksum), "rb") as f:
                if os.fstat(f.fileno()).st_size != target.nbytes:
                    return False
                return f.readinto(target) == target.nbytes
        except OSError:
            return False

    def put(self, checksum: bytes, data: np.ndarray) -> None:
        """Keep a shard whose bytes matched ``checksum``."""
        path = self._path(checksum)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
            np.ascontiguousarray(data).tofile(tmp)
            os.replace(tmp, path)
        except OSError:
            pass

    def drop(self, checksum: bytes) -> None:
        self._path(checksum).unlink(missing_ok=True)
