"""A backbone built once is known again without building it: its key from the remembered
identity, so a cache hit and a read-back import neither torch nor timm; any change to the
spec, the weights file or the versions builds it again. A key always names the bytes the
network was built from: a file changed in any way (size and mtime restored, deleted and
re-created, saved over while it was read) gets its own key, and a memory that outlived its
bytes never keys another network's numbers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import featstore._hashing
import featstore.models.identity as identity
from featstore._hashing import FileState, sha256_bytes
from featstore.data import load_dataset
from featstore.errors import BackboneError
from featstore.extract import extract_embeddings, resolve_key
from featstore.models import build_backbone, parse_backbone
from featstore.models.identity import identity_cache, remembered
from featstore.store import FeatureStore
from tests.conftest import SIZE, TINY, cli, make_medmnist

REPO = Path(__file__).resolve().parents[2]


def test_a_built_spec_is_remembered_with_what_its_key_needs():
    spec = parse_backbone(TINY, input_size=SIZE)
    assert remembered(spec) is None
    loaded = build_backbone(spec)
    known = remembered(spec)
    assert known is not None and len(list(identity_cache().glob("*.json"))) == 1
    assert (known.weights_sha256, known.preprocessing, known.dim) == (
        loaded.weights_sha256, loaded.preprocessing, loaded.dim)
    assert resolve_key(spec)[1].digest == resolve_key(spec)[1].digest
    assert remembered(parse_backbone(TINY, input_size=SIZE + 8)) is None  # another spec


@pytest.fixture
def no_racy_window(monkeypatch):
    """A file written a moment ago may be remembered (by default it is not: its change time
    is too recent to be told apart from a next change in the same clock tick), so these
    tests show that the file's state, not the window, tells old bytes from new."""
    monkeypatch.setattr(featstore._hashing, "RACY_NS", 0)


def two_checkpoints(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """``w.pth`` holding weights A; returns (path, A's bytes, B's bytes), B another network
    of the same architecture whose file has exactly A's size."""
    def saved(state: dict) -> bytes:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    state = build_backbone(parse_backbone(TINY, input_size=SIZE)).model.state_dict()
    a = saved({k: v.clone() for k, v in state.items()})
    b = saved({k: v + 1 if v.is_floating_point() else v for k, v in state.items()})
    assert len(a) == len(b) and a != b
    path = tmp_path / "w.pth"
    path.write_bytes(a)
    return path, a, b


def extract(tmp_path: Path, path: Path, store: str, data: str = "m.npz"):
    """Extract ``spec@path`` over a small MedMNIST file into ``store``: (result, set)."""
    npz = tmp_path / data
    if not npz.exists():
        make_medmnist(npz, seed=len(data))
    m = load_dataset(npz)
    fs = FeatureStore(tmp_path / store)
    [res] = extract_embeddings(m, [parse_backbone(f"{TINY.split('@')[0]}@{path}",
                                                  input_size=SIZE)], fs, batch_size=16,
                               shard_rows=16, num_workers=0)
    return res, fs.dataset(m).embedding_set(res.key)


def made_by(tmp_path: Path, res, es, weights: bytes, data: str = "m.npz") -> bool:
    """Whether set ``es`` (extracted as ``res``) is keyed by ``weights`` and holds the rows
    of the network built from exactly those bytes (a file of its own, a store of its own)."""
    ref = tmp_path / f"ref-{sha256_bytes(weights)[:8]}.pth"
    ref.write_bytes(weights)
    want, ref_set = extract(tmp_path, ref, f"store-{ref.stem}", data)
    sha = sha256_bytes(weights)
    return (res.key == want.key
            and es.attrs["key_fields"]["weights_sha256"] == sha
            and es.attrs["provenance"]["weights_sha256"] == sha
            and np.array_equal(es.load().X, ref_set.load().X))


def test_a_changed_weights_file_is_built_again(tmp_path, no_racy_window):
    path = tmp_path / "w.pth"
    spec = parse_backbone(f"{TINY.split('@')[0]}@{path}", input_size=SIZE)
    net = build_backbone(parse_backbone(TINY, input_size=SIZE)).model
    torch.save(net.state_dict(), path)
    first = resolve_key(spec)[1].digest
    assert remembered(spec) is not None
    state = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save(state, path)
    os.utime(path, ns=(1, 1))  # even with the old size, another modification time
    assert remembered(spec) is None
    assert resolve_key(spec)[1].digest != first  # rebuilt, rehashed: its own key


def test_a_cache_hit_and_a_read_back_import_neither_torch_nor_timm(capsys, npz_file,
                                                                    store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    spec = ["-b", TINY, "--image-size", str(SIZE)]
    for args in (["extract", *spec], ["probe", *spec, "--bootstrap", "10"]):
        code, _, err = cli(capsys, *args, *data)
        assert code == 0, err
    script = (
        "import sys, json\n"
        "from featstore.cli import main\n"
        "codes = []\n"
        f"for argv in {json.dumps([['extract', *spec, *data, '--json'], ['probe', *data, '--bootstrap', '10'], ['probe', *spec, *data, '--bootstrap', '10']])}:\n"  # noqa: E501
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code or 0)\n"
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'sklearn') if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=os.environ.copy(), timeout=300)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"codes": [0, 0, 0], "heavy": []}, out.stderr
    assert '"status": "cached"' in out.stdout


def test_a_file_written_moments_ago_is_used_but_not_remembered(tmp_path):
    path, a, _ = two_checkpoints(tmp_path)
    spec = parse_backbone(f"{TINY.split('@')[0]}@{path}", input_size=SIZE)
    assert build_backbone(spec).weights_sha256 == sha256_bytes(a)
    assert remembered(spec) is None  # changed within the racy window: hashed again next time


def test_a_checkpoint_overwritten_with_its_size_and_mtime_restored_gets_its_own_key(
        tmp_path, no_racy_window):
    path, a, b = two_checkpoints(tmp_path)
    first, _ = extract(tmp_path, path, "s")
    st = path.stat()
    path.write_bytes(b)  # same size; the modification time put back as touch -r does
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_ino)
    again, es = extract(tmp_path, path, "s")
    assert again.status == "extracted" and again.key != first.key  # not a cache hit on A
    assert made_by(tmp_path, again, es, b)
    other, es = extract(tmp_path, path, "s", data="other.npz")  # another dataset: B's key
    assert made_by(tmp_path, other, es, b, data="other.npz")


def test_a_checkpoint_deleted_and_recreated_gets_its_own_key(tmp_path, no_racy_window):
    path, a, b = two_checkpoints(tmp_path)
    first, _ = extract(tmp_path, path, "s")
    st = path.stat()
    path.unlink()
    path.write_bytes(b)  # the inode number often comes back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again, es = extract(tmp_path, path, "s")
    assert again.status == "extracted" and again.key != first.key
    assert made_by(tmp_path, again, es, b)


def test_a_checkpoint_saved_over_during_the_read_keys_the_bytes_that_were_loaded(
        tmp_path, monkeypatch, no_racy_window):
    """A training script saves over the file the moment featstore has read it: the set is
    keyed by and computed from the bytes read (A), the file is not remembered, and the next
    extract builds B under B's key (no cache hit on A's)."""
    path, a, b = two_checkpoints(tmp_path)
    real_open = open

    class SavedOverOnClose:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self.f

        def __exit__(self, *exc):
            self.f.close()
            path.write_bytes(b)  # torch.save of the next epoch, right after the read

        def __getattr__(self, name):
            return getattr(self.f, name)

    def saving_open(file, *args, **kwargs):
        f = real_open(file, *args, **kwargs)
        return SavedOverOnClose(f) if Path(file) == path and path.read_bytes() == a else f

    monkeypatch.setattr(featstore._hashing, "open", saving_open, raising=False)
    first, es = extract(tmp_path, path, "s")
    monkeypatch.undo()
    assert path.read_bytes() == b  # the save happened, during the extract
    assert made_by(tmp_path, first, es, a)
    again, es = extract(tmp_path, path, "s")
    assert again.status == "extracted" and made_by(tmp_path, again, es, b)


def test_a_stale_memory_never_keys_or_repairs_a_set_with_other_weights(tmp_path, monkeypatch,
                                                                       no_racy_window):
    """Even if a remembered identity outlived its bytes (a file system whose status cannot
    tell, simulated by freezing the weights file's state), a network built from other
    weights writes under their own key, and a set of the old key is never completed or
    repaired with them."""
    path, a, b = two_checkpoints(tmp_path)
    frozen = FileState.of(path)
    monkeypatch.setattr(identity.FileState, "of", classmethod(lambda cls, p: frozen))
    first, es_a = extract(tmp_path, path, "s")
    rows_a = es_a.load().X
    path.write_bytes(b)
    assert remembered(parse_backbone(f"{TINY.split('@')[0]}@{path}", input_size=SIZE))
    es_a.invalidate([0])  # a repair (verify --repair) left shard 0 to recompute
    again, es = extract(tmp_path, path, "s")
    assert again.key != first.key and made_by(tmp_path, again, es, b)
    assert es_a.pending_shards() == [0]  # not recomputed from B's network
    other, es = extract(tmp_path, path, "s", data="other.npz")
    assert made_by(tmp_path, other, es, b, data="other.npz")
    monkeypatch.undo()  # a file system that tells again
    path.write_bytes(a)  # A back: the set of A's key is completed from A, as before
    done, es = extract(tmp_path, path, "s")
    assert done.key == first.key and np.array_equal(es.load().X, rows_a)


def test_a_set_is_never_written_from_weights_its_key_does_not_name(tmp_path, monkeypatch,
                                                                   no_racy_window):
    """A finished set, undone by a teammate's ``verify --repair`` while this extract ran, and
    its file replaced meanwhile: the shard is not recomputed from the other network."""
    import featstore.extract.engine as engine
    import featstore.extract.run as extract_run

    path, a, b = two_checkpoints(tmp_path)
    first, es_a = extract(tmp_path, path, "s")
    claim_wait = engine.ClaimBoard.claim_wait

    def repaired_meanwhile(board, lock):  # after this extract's look, before its sets open
        if es_a.complete:
            es_a.invalidate([1])
            path.write_bytes(b)
        return claim_wait(board, lock)

    monkeypatch.setattr(engine.ClaimBoard, "claim_wait", repaired_meanwhile)
    monkeypatch.setattr(extract_run, "cached_results", lambda *a, **k: None)  # look again
    with pytest.raises(BackboneError, match="not computed from other weights"):
        extract(tmp_path, path, "s")
    assert es_a.pending_shards() == [1]


def test_verify_names_a_set_whose_numbers_came_from_other_weights_than_its_key(
        tmp_path, capsys):
    """Sets written before this fix could carry one model's key and another's numbers (their
    provenance says which weights made them): verify names them and exits 1."""
    path, a, _ = two_checkpoints(tmp_path)
    res, es = extract(tmp_path, path, "s")
    code, out, _ = cli(capsys, "verify", "--store", str(tmp_path / "s"))
    assert code == 0 and "WRONG WEIGHTS" not in out
    prov = {**es.attrs["provenance"], "weights_sha256": "b" * 64}
    es.group.attrs["provenance"] = prov
    code, out, _ = cli(capsys, "verify", "--store", str(tmp_path / "s"))
    assert code == 1
    assert f"WRONG WEIGHTS: made from weights bbbbbbbbbbbb but keyed by {sha256_bytes(a)[:12]}" \
        in out.replace("\n", " ")
