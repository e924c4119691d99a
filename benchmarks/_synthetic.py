"""Synthetic datasets and embedding sets for the store benchmarks (no images decoded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.data.manifest import Manifest, build_manifest
from featstore.store import EmbeddingKey, FeatureStore


def manifest(folder: Path, rows: int, name: str = "bench") -> Manifest:
    """A binary dataset of ``rows`` rows whose pixels all sit in one small file (the store
    fingerprints the files a dataset points at, so the file must exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.bin").write_bytes(name.encode())
    return build_manifest(name, {
        "id": [f"r{i:07d}" for i in range(rows)],
        "split": ["test" if i % 10 == 0 else "train" for i in range(rows)],
        "path": [f"{name}.bin"] * rows,
        "label": [str(i % 2) for i in range(rows)]}, root=folder, task="binary")


def write_set(store: FeatureStore, m: Manifest, X: np.ndarray, key: dict, alias: str):
    """One complete embedding set holding ``X``, written through the store's own writer."""
    ds = store.dataset(m, create=True)
    es = ds.create_embedding_set(EmbeddingKey(key), dim=X.shape[1], dtype=str(X.dtype),
                                 alias=alias, provenance={"host": "bench", "user": "bench"})
    for shard in range(es.n_shards):
        start, stop = es.shard_bounds(shard)
        es.write_shard(shard, X[start:stop])
    es.mark_complete()
    return es


class MotoServer:
    """moto's S3 server in its own process on 127.0.0.1 (so it does not share the measured
    process's GIL), with the environment s3fs reads set for this process and its children."""

    def __enter__(self) -> MotoServer:
        import os
        import socket
        import subprocess
        import sys
        import time

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.port}",
                          AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait()
