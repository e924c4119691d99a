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
