"""Extraction at scale: one pass for many backbones, precision, skipped images, JPEG draft
decoding, shard claims, SIGKILL at any point, concurrent extracts and torchrun ranks."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featstore.data.images as images
from featstore.cli import main
from featstore.data import load_dataset, read_image
from featstore.errors import ImageReadError
from featstore.extract import extract_embeddings, resolve_key
from featstore.extract.claims import ClaimBoard
from featstore.models import Preprocessing, parse_backbone
from featstore.probe import probe_embeddings
from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, TINY_VIT

REPO = Path(__file__).resolve().parents[2]


def spec(name=TINY, size=SIZE):
    return parse_backbone(name, input_size=size)


def run(m, fs, specs=None, **kw):
    kw = {"batch_size": 8, "num_workers": 0, "shard_rows": 16, **kw}
    return extract_embeddings(m, specs or [spec()], fs, **kw)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def test_one_pass_decodes_each_image_once_for_three_backbones(image_csv, tmp_path,
                                                              monkeypatch):
    m = load_dataset(image_csv)
    specs = [spec(), spec(TINY_VIT), spec(TINY, 48)]  # three backbones, three preprocessings
    opened = []
    real_open = images.Image.open

    def counting_open(fp, *a, **k):
        opened.append(fp)
        return real_open(fp, *a, **k)

    monkeypatch.setattr(images.Image, "open", counting_open)
    fs = FeatureStore(tmp_path / "one-pass")
    res = run(m, fs, specs)
    assert len(opened) == len(m)  # one decode per image, not one per backbone
    monkeypatch.setattr(images.Image, "open", real_open)
    assert len({r.key for r in res}) == 3
    for s, r in zip(specs, res, strict=True):  # each set equals a run of that backbone alone
        alone = FeatureStore(tmp_path / f"alone-{r.key[:8]}")
        [ref] = run(m, alone, [s])
        assert ref.key == r.key and same(fs.load(m, r.key).X, alone.load(m, r.key).X)


def test_precision_is_part_of_the_key_and_bf16_runs(image_csv, store_dir):
    keys = {p: resolve_key(spec(), precision=p)[1] for p in ("fp32", "bf16", "fp16")}
    assert len({k.digest for k in keys.values()}) == 3
    assert "precision" not in keys["fp32"].fields and keys["bf16"].fields["precision"] == "bf16"
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [fp32] = run(m, fs)
    [bf16] = run(m, fs, precision="bf16")
    a, b = fs.load(m, fp32.key).X, fs.load(m, bf16.key).X
    assert bf16.key != fp32.key and not np.array_equal(a, b)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()  # bf16 rounding, same features
    attrs = fs.dataset(m).embedding_set(bf16.key).attrs["provenance"]
    assert attrs["precision"] == "bf16" and attrs["batch_size"] == 8
    with pytest.raises(Exception, match="precision = 'fp8'"):
        run(m, fs, precision="fp8")


def corrupt_two(image_csv: Path, m) -> list[str]:
    """A corrupt JPEG (garbage after a JPEG header) and a truncated PNG."""
    root = image_csv.parent
    jpeg_row, png_row = 3, 40  # shards 0 and 2 at 16 rows per shard
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / m.paths[jpeg_row], format="JPEG")
    data = (root / m.paths[jpeg_row]).read_bytes()
    (root / m.paths[jpeg_row]).write_bytes(data[:20] + b"\x00" * 200)
    png = (root / m.paths[png_row]).read_bytes()
    (root / m.paths[png_row]).write_bytes(png[: len(png) // 2])
    return [str(m.ids[jpeg_row]), str(m.ids[png_row])]


def test_on_error_fail_and_skip(image_csv, store_dir, capsys):
    m = load_dataset(image_csv)
    bad = corrupt_two(image_csv, m)
    fs = FeatureStore(store_dir)
    with pytest.raises(ImageReadError, match=f"id '{bad[0]}'"):
        run(m, fs)
    es = fs.dataset(m).embedding_sets()[0]
    assert es.done_mask().tolist() == [False, False, False, False] and es.skipped() == {}
    [res] = run(m, fs, on_error="skip")
    assert res.status == "extracted" and res.skipped == sorted(bad)
    emb = fs.load(m, res.key)
    rows = [int(np.flatnonzero(emb.ids == b)[0]) for b in bad]
    assert emb.missing.tolist() == [i in rows for i in range(len(m))]
    assert np.isnan(emb.X[rows]).all() and np.isfinite(np.delete(emb.X, rows, 0)).all()
    prov = fs.dataset(m).embedding_set(res.key).attrs
    assert prov["skipped"]["ids"] == sorted(bad) and "truncated" in str(prov["skipped"])
    assert fs.dataset(m).embedding_set(res.key).verify() == []
    recs = probe_embeddings(emb, n_bootstrap=10)
    r = recs[0]
    assert r.n_excluded == 2 and r.n_train + r.n_val + r.n_test == len(m) - 2
    with pytest.raises(SystemExit):  # the CLI says which rows were left out, and why
        main(["probe", "--data", str(image_csv), "--store", str(store_dir), "--bootstrap", "10"])
    assert "2 rows left out (images skipped at extraction" in capsys.readouterr().err


def test_cli_skip_lists_skipped_ids(image_csv, store_dir, capsys):
    m = load_dataset(image_csv)
    bad = corrupt_two(image_csv, m)
    args = ["extract", "--data", str(image_csv), "-b", TINY, "--image-size", str(SIZE),
            "--store", str(store_dir), "--workers", "0"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1 and bad[0] in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*args, "--on-error", "skip"])
    err = capsys.readouterr().err
    assert exc.value.code == 0 and "skipped 2 unreadable images" in err
    assert bad[0] in err and bad[1] in err
    with pytest.raises(SystemExit):
        main(["ls", "--store", str(store_dir), "--json"])
    [row] = json.loads(capsys.readouterr().out)
    assert row["missing"] == 2 and row["status"] == "complete"


def test_large_jpeg_decodes_at_reduced_size_close_to_full(tmp_path):
    yy, xx = np.mgrid[0:1800, 0:2400]
    px = np.stack([(xx * 255 // 2400), (yy * 255 // 1800), ((xx + yy) % 256)], -1)
    path = tmp_path / "fundus.jpeg"
    Image.fromarray(px.astype(np.uint8)).save(path, quality=95)
    m = load_dataset_of(tmp_path, "fundus.jpeg")
    prep = Preprocessing(224, 0.875, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    small = read_image(m, 0, draft=prep.resize)
    assert small.size == (600, 450)  # 1/4 scale: the smallest that keeps the 256-px side
    assert read_image(m, 0, draft=200).size == (300, 225)  # 1/8 keeps a 200-px side
    full = read_image(m, 0)
    assert full.size == (2400, 1800)
    tf = prep.transform()
    diff = (tf(small) - tf(full)).abs()
    assert tf(small).shape == tf(full).shape == (3, 224, 224)
    assert diff.mean() < 0.02 and diff.max() < 0.5
    # the speed of draft decoding is measured by benchmarks/jpeg_draft.py, not asserted here


def test_16bit_png_becomes_the_expected_tensor(tmp_path):
    px = np.full((40, 40), 32768, dtype=np.uint16)
    px[:, 20:] = 65535
    Image.fromarray(px).save(tmp_path / "xray.png")
    m = load_dataset_of(tmp_path, "xray.png")
    prep = Preprocessing(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = prep.transform()(read_image(m, 0))
    left, right = x[:, :, 2].numpy(), x[:, :, -3].numpy()
    assert np.allclose(left, (128 / 255 - 0.5) / 0.25, atol=1e-5)  # scaled, not clipped
    assert np.allclose(right, (1.0 - 0.5) / 0.25, atol=1e-5)


def load_dataset_of(folder: Path, name: str):
    csv = folder / "one.csv"
    csv.write_text(f"id,split,path,label\nimg,test,{name},0\n")
    return load_dataset(csv)


# ----- claims --------------------------------------------------------------------------


def test_claims_are_exclusive_kept_alive_and_taken_over_once(tmp_path):
    a, b, c = (ClaimBoard(str(tmp_path), timeout=0.6) for _ in range(3))
    path = ClaimBoard.path("ds", "key", 3)
    assert a.try_claim(path) and not b.try_claim(path)
    time.sleep(1.0)  # past the timeout, but a's heartbeat keeps the claim fresh
    assert not b.try_claim(path) and a.still_ours(path)
    a.release(path)
    assert b.try_claim(path) and not a.still_ours(path)
    b.close()
    # a claim left by a process that died on this host is stale at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record = {"owner": "dead", "host": platform.node(), "pid": int(dead.stdout),
              "heartbeat": time.time()}
    (tmp_path / path).write_text(json.dumps(record))
    assert c.try_claim(path) and c.still_ours(path)
    c.close()
    # a claim from another host goes stale only after the timeout; one taker wins
    record = {"owner": "far", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    (tmp_path / path).write_text(json.dumps(record))
    d, e = ClaimBoard(str(tmp_path), timeout=0.3), ClaimBoard(str(tmp_path), timeout=0.3)
    assert not d.try_claim(path)
    time.sleep(0.5)
    wins = []
    threads = [threading.Thread(target=lambda x=x: wins.append(x.try_claim(path)))
               for x in (d, e)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, True]
    d.close()
    e.close()


@pytest.mark.slow
def test_extract_waits_for_a_live_claim_and_takes_over_a_stale_one(image_csv, tmp_path):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref)
    fs = FeatureStore(tmp_path / "store")
    name = m.group_name
    other = ClaimBoard(str(tmp_path / "store"), timeout=30)
    path = ClaimBoard.path(name, full.key[:20], 1)
    assert other.try_claim(path)  # a live process holds shard 1
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("res", run(m, fs)))
    worker.start()
    time.sleep(3.0)
    assert worker.is_alive()  # everything else is done; it waits for shard 1
    es = fs.dataset(m).embedding_set(full.key)
    assert es.done_mask().tolist() == [True, False, True, True]
    other.close()  # the holder goes away without writing: the waiting extract takes over
    worker.join(30)
    [res] = out["res"]
    assert res.shards_written == 4 and same(fs.load(m, full.key).X, ref.load(m, full.key).X)
    # a claim whose heartbeat stopped on another host is taken over after the timeout
    fs2 = FeatureStore(tmp_path / "store2")
    stale = tmp_path / "store2" / path
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1,
                                 "heartbeat": time.time()}))
    t0 = time.perf_counter()
    [res] = run(m, fs2, claim_timeout=1.0)
    assert res.shards_written == 4 and time.perf_counter() - t0 >= 1.0
    assert same(fs2.load(m, full.key).X, ref.load(m, full.key).X)


# ----- subprocesses: SIGKILL, concurrent extracts, torchrun ------------------------------

KILLER = """
import os, signal, sys, zarr
target, nth = sys.argv[1], int(sys.argv[2])
real = zarr.Array.__setitem__
seen = [0]
def setitem(self, sel, value):
    if self.path.rsplit("/", 1)[-1] == target:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, sel, value)
zarr.Array.__setitem__ = setitem
from featstore.cli import main
main(sys.argv[3:])
"""

SLOW = """
import sys, time
import featstore.store.embedding_set as z
real = z.EmbeddingSet.write_shard
def slow(self, *a, **k):
    time.sleep(float(sys.argv[1]))
    return real(self, *a, **k)
z.EmbeddingSet.write_shard = slow
from featstore.cli import main
main(sys.argv[2:])
"""


def extract_args(image_csv: Path, store: Path, *more: str) -> list[str]:
    return ["extract", "--data", str(image_csv), "-b", TINY, "--image-size", str(SIZE),
            "--store", str(store), "--workers", "0", "--batch-size", "8", "--shard-rows",
            "16", *more]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    """Bit-for-bit equality holds at equal thread counts (CPU kernels split reductions by
    thread): references run with one thread, like the subprocesses (and torchrun ranks)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("target,nth", [
    ("embeddings", 2),  # between shards: shard 0 done, shard 1 not started
    ("checksums", 2),   # shard 1's data written, no checksum, no done mark
    ("done", 3),        # shard 2's data and checksum written, no done mark
])
def test_sigkill_at_any_point_then_resume(image_csv, tmp_path, one_thread, target, nth):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref)
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", KILLER, target, str(nth),
                           *extract_args(image_csv, store)], env=env(), capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    fs = FeatureStore(store)
    es = fs.dataset(m).embedding_set(full.key)
    done = es.done_mask()
    assert 0 < done.sum() < 4 and es.verify() == []  # every done shard has data + checksum
    before = {int(s): es.group["embeddings"][s * 16:(s + 1) * 16] for s in np.flatnonzero(done)}
    [res] = run(m, fs)
    assert res.status == "resumed" and res.shards_written == int((~done).sum())
    assert same(fs.load(m, full.key).X, ref.load(m, full.key).X)
    for s, data in before.items():  # finished shards were not recomputed or rewritten
        assert same(data, es.group["embeddings"][s * 16:(s + 1) * 16])


@pytest.mark.slow
def test_sigkill_during_forward_then_resume(image_csv, tmp_path, one_thread):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref, shard_rows=8)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "featstore",
                             *extract_args(image_csv, store, "--shard-rows", "8")], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = None
    deadline = time.time() + 60
    while time.time() < deadline:  # kill as soon as the first shard is done
        hits = list(store.glob("*/*/done/c/0"))
        if hits:
            done_dir = hits[0]
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert done_dir is not None
    fs = FeatureStore(store)
    es = fs.dataset(m).embedding_set(full.key)
    pending = int((~es.done_mask()).sum())
    assert es.verify() == [] and 0 < pending < 8
    [res] = run(m, fs, shard_rows=8)
    assert res.status == "resumed" and res.shards_written == pending
    assert same(fs.load(m, full.key).X, ref.load(m, full.key).X)


@pytest.mark.slow
def test_two_concurrent_extracts_of_one_key(image_csv, tmp_path, one_thread):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref, shard_rows=4)
    store = tmp_path / "store"
    args = [sys.executable, "-c", SLOW, "0.3",  # 0.3 s per shard: the two runs overlap
            *extract_args(image_csv, store, "--shard-rows", "4", "--json")]
    procs = [subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    results = [json.loads(o)[0] for o, _ in outs]
    assert sum(r["shards_written"] for r in results) == 16  # each shard written exactly once
    assert min(r["shards_written"] for r in results) > 0  # and the work was shared
    fs = FeatureStore(store)
    assert same(fs.load(m, full.key).X, ref.load(m, full.key).X)
    es = fs.dataset(m).embedding_set(full.key)
    assert es.attrs["status"] == "complete" and es.verify() == []
    assert not (store / "_claims" / m.group_name / full.key[:20]).exists()


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_one_process(image_csv, tmp_path, one_thread):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    res_ref = run(m, ref, [spec(), spec(TINY_VIT)], shard_rows=8)
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "featstore", *extract_args(image_csv, store, "-b", TINY_VIT, "--shard-rows",
                                          "8", "--json")],
        env=env(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = json.loads(proc.stdout)  # rank 0 reports for the job
    fs = FeatureStore(store)
    for r, want in zip(results, res_ref, strict=True):
        assert r["key"] == want.key
        assert r["shards_written"] + r["shards_by_others"] == 8 and r["shards_by_others"] > 0
        assert same(fs.load(m, r["key"]).X, ref.load(m, want.key).X)
        attrs = fs.dataset(m).embedding_set(r["key"]).attrs
        assert attrs["provenance"]["world_size"] == 2 and attrs["status"] == "complete"
    assert torch.distributed.is_available()


def test_batch_size_fit_from_measured_peaks():
    from featstore.extract.engine import CPU_BATCH_SIZE, auto_batch_size, fit_batch_size

    mib = 2**20
    # 500 MiB fixed + 40 MiB per image; 80% of 10 GiB free -> (8192 - 500) / 40 = 192
    peaks = {8: 500 * mib + 8 * 40 * mib, 16: 500 * mib + 16 * 40 * mib}
    assert fit_batch_size(peaks, 0.8 * 10240 * mib) == 192
    assert fit_batch_size(peaks, 0.8 * 10240 * mib, multiple=64) == 192
    assert fit_batch_size(peaks, 0.8 * 10240 * mib, cap=128) == 128
    assert fit_batch_size(peaks, 600 * mib) == 8  # never below one multiple
    assert auto_batch_size([], torch.device("cpu")) == CPU_BATCH_SIZE


def test_a_redone_shard_replaces_its_skipped_record(image_csv, store_dir):
    m = load_dataset(image_csv)
    fs = FeatureStore(store_dir)
    [res] = run(m, fs)
    es = fs.dataset(m).embedding_set(res.key)
    data = es.read(slice(0, 16))
    miss = np.zeros(16, bool)
    miss[2] = True
    es.write_shard(0, data, missing=miss, reasons={str(m.ids[2]): "cannot read"})
    assert es.skipped() == {str(m.ids[2]): "cannot read"} and np.isnan(es.read()[2]).all()
    es.write_shard(0, data)  # the image was fixed and the shard redone
    assert es.skipped() == {} and not es.missing_mask().any()
    assert same(es.read(slice(0, 16)), data)
