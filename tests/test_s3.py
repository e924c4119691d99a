"""The store on a real S3 server (moto's, on 127.0.0.1, see conftest.s3_server): every verb
runs against ``s3://bucket/prefix`` through s3fs, and a missing bucket or a dead endpoint is
one error naming it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.conftest import SIZE, TINY, TINY_VIT, cli

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
