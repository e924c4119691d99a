"""Memory is a feature: the cached stages hold a bounded multiple of the rows they use.

Each stage runs in its own process on float16 sets the test writes first; the process resets
its RSS high-water mark (``/proc/self/clear_refs``) once the store is open and torch is
loaded, runs the stage, and reports how far its high-water mark rose above that. The bound
is twice the sets' stored bytes S (what a whole read in the stored dtype holds) and fixed
work buffers: a probe holds its training rows once in float32 (1.6 S for 80% of the rows)
and val and test in the stored dtype; the fusion run holds every backbone's train and val
rows compact (0.9 S) and reads the concatenation a block at a time. Before, a probe rose
~6.8 S (the set whole, its train copy, a float32 copy, a finite mask, two standardised
copies), kNN ~5.9 S and fusion ~7.5 S.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from featstore.data.manifest import build_manifest
from featstore.store import EmbeddingKey, FeatureStore

ROWS = 40_000

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="needs Linux's /proc/self/clear_refs")


def _write(tmp: Path, dims: list[int], rows: int = ROWS) -> tuple[str, str]:
    """A binary dataset of ``rows`` rows (80% train, 10% val, 10% test) and one float16 set
    per entry of ``dims`` (a class signal in a few dimensions); (store root, manifest)."""
    rng = np.random.default_rng(0)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "px.bin").write_bytes(b"px")
    split = np.where(np.arange(rows) % 10 == 0, "test",
                     np.where(np.arange(rows) % 10 == 1, "val", "train"))
    y = rng.integers(0, 2, rows)
    m = build_manifest("mem", {"id": [f"r{i:06d}" for i in range(rows)], "split": list(split),
                               "path": ["px.bin"] * rows, "label": [str(v) for v in y]},
                       root=tmp, task="binary")
    store = FeatureStore(tmp / "store")
    ds = store.dataset(m, create=True)
    for i, dim in enumerate(dims):
        X = rng.standard_normal((rows, dim), dtype=np.float32)
        X[:, :4] += m.labels[:, :1]
        es = ds.create_embedding_set(EmbeddingKey({"mem": i}), dim=dim, dtype="float16",
                                     alias=f"set{i}", provenance={})
        for shard in range(es.n_shards):
            start, stop = es.shard_bounds(shard)
            es.write_shard(shard, X[start:stop].astype(np.float16))
        es.mark_complete()
    import pickle

    (tmp / "manifest.pkl").write_bytes(pickle.dumps(m))
    return str(tmp / "store"), str(tmp / "manifest.pkl")


CHILD = """
import json, pickle, sys
import torch
from featstore.fusion import fuse_grid
from featstore.probe import ProbeConfig, probe_grid
import featstore.probe.linear as linear
from featstore.store import FeatureStore

stage = sys.argv[1]
linear.DENSE_BYTES = 0  # the concatenation read a block at a time, as at full size

def run(root, manifest):
    sets = FeatureStore(root).dataset(pickle.load(open(manifest, "rb"))).embedding_sets()
    if stage == "fuse":
        fuse_grid(sets, task="binary", fractions=[1.0], seeds=1, n_bootstrap=10,
                  max_epochs=2)
    else:
        probe_grid(sets, ProbeConfig(task="binary", n_bootstrap=10), probes=[stage],
                   fractions=[1.0], seeds=1)
    return sets

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

run(*sys.argv[4:6])  # a small run first: every module loaded, every pool started
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark from here
base = status("VmRSS")
sets = run(*sys.argv[2:4])
print(json.dumps({"grew": status("VmHWM") - base,
                  "stored": sum(s.rows * s.dim * 2 for s in sets)}))
"""


# work buffers whose size does not grow with the rows: the D x D covariance from at most
# 8,192 rows and its eigendecomposition, a block of similarities and its top k, a block of
# rows being standardised or scored
FIXED = 160 * 2**20


@pytest.mark.parametrize("stage, dims", [
    ("linear", [1024]),
    ("knn", [1024]),
    ("fuse", [512, 512, 256]),
])
def test_a_stage_holds_at_most_twice_its_sets_stored_bytes(tmp_path, stage, dims):
    root, manifest = _write(tmp_path / "big", dims)
    small = _write(tmp_path / "small", dims, rows=2000)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), stage, root, manifest,
                          *small],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["grew"] <= 2 * got["stored"] + FIXED, (
        f"{stage}: peak rose {got['grew'] / 2**20:.0f} MiB over "
        f"{got['stored'] / 2**20:.0f} MiB of stored rows")
