"""A teammate who can read the shared store but not write it (read-only mount or credentials)
probes, fuses and lists results: runs that cannot be persisted in the store go to a local
results store with a one-line note, are read back from there, and the store is untouched."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, TINY_VIT, cli, make_medmnist

REPO = Path(__file__).resolve().parents[2]
CAP_DAC_OVERRIDE, PR_CAPBSET_DROP = 1, 24


def _drop_write_override() -> None:
    """In the child, before exec: root without CAP_DAC_OVERRIDE obeys write permission bits
    like any user (a read-only mount, for a test that cannot mount)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def shared(capsys, tmp_path):
    """A store extracted by its owner, then made read-only (every write bit cleared)."""
    data = make_medmnist(tmp_path / "pneumoniamnist.npz")
    store = tmp_path / "store"
    code, _, err = cli(capsys, "extract", "--data", str(data), "-b", TINY, "-b", TINY_VIT,
                       "--image-size", str(SIZE), "--store", str(store))
    assert code == 0, err
    for p in [store, *store.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    home = tmp_path / "home"  # the reader's own, writable folder
    home.mkdir()
    yield data, store, home
    for p in [store, *store.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def as_reader(store: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    """``featstore ARGS`` by a user who cannot write ``store``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "HOME": str(home),
           "PYTHONPATH": str(REPO)}
    env.pop("FEATSTORE_RESULTS_STORE", None)
    return subprocess.run([sys.executable, "-m", "featstore", *args], env=env, cwd=home,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_drop_write_override if os.getuid() == 0 else None)


def snapshot(store: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_reader_without_write_access_probes_fuses_and_lists(shared):
    data, store, home = shared
    before = snapshot(store)
    common = ["--data", str(data), "--store", str(store), "--image-size", str(SIZE),
              "--bootstrap", "20", "--json"]
    first = as_reader(store, home, "probe", "-b", TINY, *common)
    assert first.returncode == 0, first.stderr[-2000:]
    notes = [line for line in first.stderr.splitlines() if "cannot be written" in line]
    assert len(notes) == 1 and "results store" in notes[0], first.stderr
    assert not any(r["cached"] for r in json.loads(first.stdout))
    again = as_reader(store, home, "probe", "-b", TINY, *common)
    assert again.returncode == 0 and all(r["cached"] for r in json.loads(again.stdout))
    fused = as_reader(store, home, "fuse", "-b", TINY, "-b", TINY_VIT, *common,
                      "--heads-dir", str(home / "heads"))
    assert fused.returncode == 0, fused.stderr[-2000:]
    listed = as_reader(store, home, "results", "--data", str(data), "--store", str(store),
                       "--json")
    rows = json.loads(listed.stdout)
    assert any("probe" in r for r in rows) and any("method" in r for r in rows)
    assert (home / "cache" / "featstore" / "results").is_dir()
    assert snapshot(store) == before  # not one byte of the shared store changed


@pytest.mark.slow
def test_a_reader_runs_a_pipeline_on_a_read_only_store(shared):
    data, store, home = shared
    before = snapshot(store)
    grid = home / "grid.toml"
    grid.write_text(f'''store = "{store}"
fractions = [1.0]
bootstrap = 10
[datasets]
d = "{data}"
[backbones]
b = {{ spec = "{TINY}", image_size = {SIZE} }}
[extract]
device = "cpu"
[probe]
probes = ["linear"]
''')
    first = as_reader(store, home, "run", str(grid), "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    steps = json.loads(first.stdout)
    assert [s["status"] for s in steps] == ["cached", "done"], steps
    again = as_reader(store, home, "run", str(grid), "--json")
    assert [s["status"] for s in json.loads(again.stdout)] == ["cached", "cached"]
    elsewhere = home / "elsewhere"  # --results-store names another folder
    third = as_reader(store, home, "run", str(grid), "--results-store", str(elsewhere),
                      "--json")
    assert [s["status"] for s in json.loads(third.stdout)] == ["cached", "done"]
    assert elsewhere.is_dir() and snapshot(store) == before


@pytest.fixture
def iam_s3(tmp_path):
    """A second S3 server (moto's, 127.0.0.1) that enforces IAM after its first 7 requests:
    a bucket, a writer allowed s3:*, and a reader allowed only to get and list."""
    import socket
    import time

    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "7"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1",
              "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        boto3.client("s3", **kw).create_bucket(Bucket="team")
        iam = boto3.client("iam", **kw)
        creds = {}
        for user, actions in (("writer", ["s3:*"]),
                              ("reader", ["s3:GetObject", "s3:ListBucket"])):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="store", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            creds[user] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        yield creds
    finally:
        proc.terminate()
        proc.wait()


def featstore_as(creds: dict[str, str], home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **creds, "XDG_CACHE_HOME": str(home / "cache"),
           "PYTHONPATH": str(REPO)}
    env.pop("FEATSTORE_RESULTS_STORE", None)
    return subprocess.run([sys.executable, "-m", "featstore", *args], env=env, cwd=home,
                          capture_output=True, text=True, timeout=300)


def test_read_only_credentials_on_s3(iam_s3, tmp_path):
    data = make_medmnist(tmp_path / "pneumoniamnist.npz")
    store = "s3://team/features"
    for who in ("writer", "reader"):
        (tmp_path / who).mkdir()
    made = featstore_as(iam_s3["writer"], tmp_path / "writer", "extract", "--data", str(data),
                        "-b", TINY, "--image-size", str(SIZE), "--store", store)
    assert made.returncode == 0, made.stderr[-2000:]
    denied = featstore_as(iam_s3["reader"], tmp_path / "reader", "extract", "--data",
                          str(data), "-b", TINY_VIT, "--image-size", str(SIZE), "--store", store)
    assert denied.returncode == 1 and "internal" not in denied.stderr
    assert denied.stderr.startswith("error: permission denied"), denied.stderr
    common = ["--data", str(data), "--store", store, "-b", TINY, "--image-size", str(SIZE),
              "--bootstrap", "20", "--json"]
    first = featstore_as(iam_s3["reader"], tmp_path / "reader", "probe", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "cannot be written (PermissionError)" in first.stderr
    again = featstore_as(iam_s3["reader"], tmp_path / "reader", "probe", *common)
    assert all(r["cached"] for r in json.loads(again.stdout))
    listed = featstore_as(iam_s3["reader"], tmp_path / "reader", "ls", "--store", store,
                          "--json")
    assert [r["status"] for r in json.loads(listed.stdout)] == ["complete"]


def test_a_read_only_file_system_is_one_line_not_internal(capsys, tmp_path, monkeypatch):
    import errno

    from featstore.store.embedding_set import EmbeddingSet
    from tests.conftest import SIZE, TINY, cli, make_medmnist

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "s"))

    monkeypatch.setattr(EmbeddingSet, "write_shard", read_only)
    code, _, err = cli(capsys, "extract", "--data", str(make_medmnist(tmp_path / "m.npz")),
                       "-b", TINY, "--image-size", str(SIZE), "--store", str(tmp_path / "s"))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "read-only file system" in lines[0], err
    assert "internal" not in err


def test_probe_heads_a_store_refuses_go_to_the_results_store_or_are_noted(tmp_path,
                                                                          monkeypatch):
    """LP-FT starts from kept probe heads: a store that cannot be written keeps them in the
    results store (read back from there), and without one the store's notes say they were
    not kept and why (LP-FT's later "no linear probe" is then explained)."""
    from tests.store.test_read import make_set

    _, m, _, _ = make_set(tmp_path)
    head = {"coef": np.arange(6.0).reshape(3, 2), "intercept": np.zeros(2)}

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    reader = FeatureStore(tmp_path / "store", results_store=tmp_path / "results")
    monkeypatch.setattr(reader.objects, "put", denied)
    es = reader.dataset(m).embedding_set("t")
    es.save_probe_head("run-1", head)
    assert np.array_equal(es.probe_head("run-1")["coef"], head["coef"]) and not reader.notes
    assert (tmp_path / "results").is_dir() and not FeatureStore(
        tmp_path / "store").dataset(m).embedding_set("t").probe_head("run-1")

    bare = FeatureStore(tmp_path / "store")
    monkeypatch.setattr(bare.objects, "put", denied)
    es = bare.dataset(m).embedding_set("t")
    es.save_probe_head("run-2", head)
    assert es.probe_head("run-2") is None
    [note] = bare.notes
    assert "probe heads are not kept" in note and "PermissionError" in note
