"""Shared fixtures: small generated datasets and tiny backbones, all on the CPU, offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from featstore.demo import write_demo_dataset

# Tiny timm test models at a small input size keep every forward pass in milliseconds.
TINY = "timm:test_resnet@random"
TINY_VIT = "timm:test_vit@random"
SIZE = 32
SHARED_MEDMNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"


def pytest_configure(config):
    """Under pytest-xdist each worker process computes with one thread (two workers with two
    threads each on two cores spend their time waiting on each other)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Every test on the S3 test server is ``slow`` (end to end), besides those marked so
    (SIGKILL, torchrun, pipeline runs): ``pytest -m "not slow"`` is the quick loop."""
    for item in items:
        if {"s3_server", "iam_s3"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``featstore ARGS`` in-process: (exit code, stdout, stderr)."""
    from featstore.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


@pytest.fixture(autouse=True)
def isolated_weight_caches(tmp_path_factory, monkeypatch):
    """No test sees a weights file or cache that happens to be on the machine."""
    import huggingface_hub.constants

    home = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg"))  # file fingerprints
    monkeypatch.delenv("FEATSTORE_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hf"))


def _atomic_conditional_puts() -> None:
    """moto answers a PUT with ``If-None-Match: *`` by checking that the key is absent, then
    writing it: two requests in its server's threads can both pass the check (seen with
    three test processes on two cores: two of eight racing creators won). S3 decides it
    atomically, so the test server is made to: one PUT at a time."""
    import threading

    from moto.s3.responses import S3Response

    put = S3Response._key_response_put
    if getattr(put, "atomic", False):
        return
    lock = threading.Lock()

    def atomic_put(self, *args, **kwargs):
        with lock:
            return put(self, *args, **kwargs)

    atomic_put.atomic = True
    S3Response._key_response_put = atomic_put


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto's) on 127.0.0.1 at a free port for the whole session,
    with the environment s3fs reads (endpoint, fake credentials). Yields the endpoint URL."""
    import logging
    import os

    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    _atomic_conditional_puts()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_store(s3_server) -> str:
    """``s3://<fresh bucket>/store`` on the session's S3 server."""
    import uuid

    import s3fs

    bucket = f"featstore-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/store"


@pytest.fixture
def image_csv(tmp_path: Path) -> Path:
    """A demo-style dataset of 64 PNG files (32/16/16) with a manifest CSV."""
    return write_demo_dataset(tmp_path / "imgs", size=32,
                              splits={"train": 32, "val": 16, "test": 16})


def make_medmnist(path: Path, *, n=(40, 12, 16), size=28, label_shape="n1", classes=2,
                  rgb=False, seed=0) -> Path:
    """Write a MedMNIST v2 layout .npz with a learnable class signal (brightness)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        if label_shape == "multi":
            labels = rng.integers(0, 2, (count, classes)).astype(np.uint8)
            signal = labels[:, 0]
        else:
            labels = (np.arange(count) % classes).astype(np.uint8)
            signal = labels
        shape = (count, size, size, 3) if rgb else (count, size, size)
        base = rng.integers(0, 120, shape)
        base = base + (signal * 100 // max(classes - 1, 1)).reshape((-1,) + (1,) * (len(shape) - 1))
        arrays[f"{split}_images"] = np.clip(base, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "n1" else labels
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    return make_medmnist(tmp_path / "pneumoniamnist.npz")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"
