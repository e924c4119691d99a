"""The store on a real S3 server (moto's, on 127.0.0.1, see conftest.s3_server): every verb
runs against ``s3://bucket/prefix`` through s3fs, and a missing bucket or a dead endpoint is
one error naming it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from featstore.data import load_dataset
from featstore.store import FeatureStore
from featstore.store.listing import list_sets
from tests.conftest import SIZE, TINY, TINY_VIT, cli
from tests.extract.test_extract_scale import KILLER, SLOW, env, extract_args, one_thread, run, same

__all__ = ["one_thread"]  # a fixture, used by name

BACKBONES = ["-b", TINY, "-b", TINY_VIT, "--image-size", str(SIZE)]


def test_every_verb_on_an_s3_store(capsys, npz_file, s3_store, tmp_path):
    data = ["--data", str(npz_file)]
    store = ["--store", s3_store]
    code, out, err = cli(capsys, "extract", *data, *BACKBONES, *store, "--json")
    assert code == 0, err
    assert [r["status"] for r in json.loads(out)] == ["extracted", "extracted"]
    code, out, _ = cli(capsys, "extract", *data, *BACKBONES, *store, "--json")
    assert [r["status"] for r in json.loads(out)] == ["cached", "cached"]
    code, out, _ = cli(capsys, "ls", *store, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["status"] for r in rows] == ["complete", "complete"]
    fs = FeatureStore(s3_store)
    assert list_sets(fs) == list_sets(fs, use_catalog=False)  # the catalog tells the truth
    code, out, _ = cli(capsys, "info", *store, rows[0]["key"][:12])
    assert code == 0 and rows[0]["key"][:12] in out
    code, out, _ = cli(capsys, "verify", *store)
    assert code == 0 and out.count(" ok") == 2
    code, out, _ = cli(capsys, "probe", *data, *store, "-b", TINY, "--image-size", str(SIZE),
                       "--fractions", "0.5,1", "--seeds", "2", "--bootstrap", "20", "--json")
    runs = {(r["fraction"], r["seed"]) for r in json.loads(out)}
    assert code == 0 and runs == {(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)}
    code, out, _ = cli(capsys, "fuse", *data, *store, *BACKBONES, "--bootstrap", "20",
                       "--heads-dir", str(tmp_path / "heads"), "--json")
    assert code == 0 and {r["method"] for r in json.loads(out)} >= {"dvme-softmax", "concat"}
    code, out, _ = cli(capsys, "results", *data, *store, "--json")
    listed = json.loads(out)
    assert code == 0 and any("probe" in r for r in listed) and any("method" in r for r in listed)


def test_a_missing_bucket_is_one_error(capsys, s3_server, npz_file):
    for argv in (["ls", "--store", "s3://no-such-bucket/x"],
                 ["extract", "--data", str(npz_file), "-b", TINY, "--store",
                  "s3://no-such-bucket/x"]):
        code, _, err = cli(capsys, *argv)
        assert code == 1 and err.startswith(
            "error: --store s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"), err


def test_a_dead_endpoint_is_one_error(s3_server):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    proc = subprocess.run([sys.executable, "-m", "featstore", "ls", "--store", "s3://b/x"],
                          env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: --store s3://b/x: cannot reach the object store")
    assert f"127.0.0.1:{port}" in errors[0]


# ----- exclusive claims on the object store ------------------------------------------------

def test_a_claim_is_a_conditional_put_the_loser_is_refused(s3_store):
    """The server answers 412 to the second create (s3fs raises FileExistsError): exactly one
    of eight racing creators wins, and the object holds the winner's bytes."""
    from concurrent.futures import ThreadPoolExecutor

    objects = FeatureStore(s3_store).objects
    assert objects.exclusive
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: objects.create("_claims/x/000001.json", b"%d" % i),
                            range(8)))
    assert sum(won) == 1
    assert objects.get("_claims/x/000001.json") == b"%d" % won.index(True)
    assert objects.age("_claims/x/000001.json") < 60


@pytest.mark.parametrize("writers", [2, 3])
def test_concurrent_extracts_on_s3_write_each_shard_once(image_csv, tmp_path, s3_store,
                                                         one_thread, writers):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref, shard_rows=4)
    args = [sys.executable, "-c", SLOW, "0.3",  # 0.3 s per shard: the runs overlap
            *extract_args(image_csv, s3_store, "--shard-rows", "4", "--json")]
    procs = [subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(writers)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    written = [json.loads(o)[0]["shards_written"] for o, _ in outs]
    assert sum(written) == 16 and max(written) < 16  # each shard once, the work shared
    fs = FeatureStore(s3_store)
    assert same(fs.load(m, full.key).X, ref.load(m, full.key).X)
    es = fs.dataset(m).embedding_set(full.key)
    assert es.attrs["status"] == "complete" and es.verify() == []
    assert fs.objects.list("_claims/" + es.dataset.name) == []  # claims cleared


def test_sigkill_on_s3_then_resume(image_csv, tmp_path, s3_store, one_thread):
    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref)
    proc = subprocess.run([sys.executable, "-c", KILLER, "done", "3",
                           *extract_args(image_csv, s3_store)], env=env(), capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    fs = FeatureStore(s3_store)
    es = fs.dataset(m).embedding_set(full.key)
    done = es.done_mask()
    assert 0 < done.sum() < 4 and es.verify() == []
    # the dead extract's claim is still there; it ran on this host, its pid is gone: stale
    assert fs.objects.list("_claims/" + es.dataset.name)
    [res] = run(m, fs)
    assert res.status == "resumed" and res.shards_written == int((~done).sum())
    assert same(fs.load(m, full.key).X, ref.load(m, full.key).X)


def test_a_dead_hosts_claim_on_s3_is_taken_over_after_the_timeout_by_one(image_csv, tmp_path,
                                                                         s3_store):
    import threading
    import time

    from featstore.extract.claims import ClaimBoard

    m = load_dataset(image_csv)
    ref = FeatureStore(tmp_path / "ref")
    [full] = run(m, ref)
    fs = FeatureStore(s3_store)
    name = fs.dataset(m, create=True).name
    path = ClaimBoard.path(name, full.key[:20], 1)
    record = {"owner": "far", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    fs.objects.put(path, json.dumps(record).encode())
    boards = [ClaimBoard(fs, timeout=0.5) for _ in range(3)]
    assert not boards[0].try_claim(path)  # fresh heartbeat: not stale yet
    time.sleep(0.8)
    wins = []
    threads = [threading.Thread(target=lambda b=b: wins.append(b.try_claim(path)))
               for b in boards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, True]  # exactly one takes it over
    for b in boards:
        b.close()
    fs.objects.put(path, json.dumps({**record, "heartbeat": time.time()}).encode())
    t0 = time.perf_counter()
    [res] = run(m, fs, claim_timeout=1.0)
    assert res.shards_written == 4 and time.perf_counter() - t0 >= 1.0
    assert same(fs.load(m, full.key).X, ref.load(m, full.key).X)
