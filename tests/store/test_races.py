"""Teammates and processes racing on one store: creating a group that another process
created a moment before is success (zarr's check-then-create raises ContainsGroupError to
the loser; on S3 two `featstore run` or two `copy` lost probe and fusion runs to it)."""

from __future__ import annotations

import zarr
import zarr.errors

from featstore.data import load_dataset
from featstore.store import FeatureStore
from featstore.store.layout import require_group
from tests.conftest import SIZE, TINY, cli


def lose_every_race(monkeypatch, root_path):
    """Every require_group finds its group created by another process in between."""
    real = zarr.Group.require_group

    def racing(self, name, **kw):
        real(zarr.open_group(root_path, mode="a", path=self.path or None), name)  # the other
        raise zarr.errors.ContainsGroupError(f"{self.path}/{name}")

    monkeypatch.setattr(zarr.Group, "require_group", racing)


def test_a_group_created_meanwhile_is_success(tmp_path, monkeypatch):
    root = zarr.open_group(tmp_path / "s", mode="a")
    lose_every_race(monkeypatch, tmp_path / "s")
    g = require_group(require_group(root, "probes"), "run1")
    g.attrs["x"] = 1
    assert zarr.open_group(tmp_path / "s", mode="r")["probes/run1"].attrs["x"] == 1


def test_runs_saved_while_another_process_creates_their_groups(capsys, npz_file, store_dir,
                                                              monkeypatch):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, _, err = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE))
    assert code == 0, err
    lose_every_race(monkeypatch, store_dir)
    code, _, err = cli(capsys, "probe", *data, "--bootstrap", "10")
    assert code == 0, err
    monkeypatch.undo()
    [es] = FeatureStore(store_dir).dataset(load_dataset(npz_file)).embedding_sets()
    assert len(es.probe_runs.all()) == 1


def test_a_shard_finished_by_another_process_during_a_verify_is_not_invalidated(
        tmp_path, monkeypatch):
    """An extract that starts while another process writes shards verifies the done ones
    (its repair of a crashed run): a shard finished in the middle of that check must not be
    taken for corrupt (the other process would then find its finished set incomplete)."""
    import numpy as np

    from featstore.extract import extract_embeddings
    from featstore.models import parse_backbone
    from featstore.store.embedding_set import EmbeddingSet
    from tests.conftest import make_medmnist

    m = load_dataset(make_medmnist(tmp_path / "m.npz", n=(40, 12, 16)))
    fs = FeatureStore(tmp_path / "s")
    [res] = extract_embeddings(m, [parse_backbone(TINY, input_size=SIZE)], fs,
                               shard_rows=16, num_workers=0)
    es = fs.dataset(m).embedding_set(res.key)
    data = es.read()[16:32].copy()
    es.invalidate([1])  # shard 1: never written yet, being written by another process
    es.group["checksums"][1] = 0
    real_done, calls = EmbeddingSet.done_mask, []

    def the_other_process_finishes_shard_1(self):
        if not calls:  # the other process writes shard 1 between the verify's reads
            calls.append(1)
            self.write_shard(1, data)
        return real_done(self)

    checked = fs.dataset(m).embedding_set(res.key)
    monkeypatch.setattr(EmbeddingSet, "done_mask", the_other_process_finishes_shard_1)
    assert checked.verify() == []
    monkeypatch.setattr(EmbeddingSet, "done_mask", real_done)
    assert np.array_equal(checked.read()[16:32], data)
