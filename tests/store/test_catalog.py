"""The store catalog: ``ls`` reads one small entry per set (who, when, where, how big) instead
of every set's arrays, and the entries always tell the same as the sets themselves."""

from __future__ import annotations

import json
import shutil

import zarr

from featstore.store import FeatureStore
from featstore.store.catalog import CATALOG_GROUP, read_catalog
from featstore.store.listing import list_sets
from tests.conftest import SIZE, TINY, TINY_VIT, cli
from tests.store.test_compat import FIXTURE


def extract(capsys, data, store) -> list[dict]:
    code, out, err = cli(capsys, "extract", "--data", str(data), "-b", TINY, "-b", TINY_VIT,
                         "--image-size", str(SIZE), "--store", str(store), "--shard-rows",
                         "16", "--json")
    assert code == 0, err
    return json.loads(out)


def test_ls_from_the_catalog_equals_opening_every_set(capsys, npz_file, store_dir):
    results = extract(capsys, npz_file, store_dir)
    fs = FeatureStore(store_dir)
    entries = read_catalog(fs.objects)
    assert sorted(k for _, k in entries) == sorted(r["key"][:20] for r in results)
    for row in entries.values():
        assert row["status"] == "complete" and row["host"] and row["finished"]
        assert row["bytes"] == row["rows"] * row["dim"] * 4
    assert list_sets(fs) == list_sets(fs, use_catalog=False)
    code, out, _ = cli(capsys, "ls", "--store", str(store_dir))
    assert code == 0 and "KiB" in out and row["host"] in out
    code, out, _ = cli(capsys, "info", "--store", str(store_dir), results[0]["key"][:12],
                       "--json")
    [info] = json.loads(out)
    assert info["bytes"] == info["rows"] * info["dim"] * 4
    assert info["provenance"]["host"] and "user" in info["provenance"] and info["finished"]


def test_a_repaired_set_is_listed_incomplete(capsys, npz_file, store_dir):
    [res, _] = extract(capsys, npz_file, store_dir)
    fs = FeatureStore(store_dir)
    es = next(e for d in fs.datasets() for e in d.embedding_sets() if e.key == res["key"])
    arr = zarr.open_array(store_dir / es.dataset.name / es.name / "embeddings", mode="r+")
    arr[0, 0] = arr[0, 0] + 1
    code, out, _ = cli(capsys, "verify", "--store", str(store_dir), "--repair")
    assert "marked for recompute" in out
    code, out, _ = cli(capsys, "ls", "--store", str(store_dir), "--json")
    status = {r["key"]: (r["status"], r["shards_done"]) for r in json.loads(out)}
    assert status[res["key"]] == ("incomplete", es.n_shards - 1)
    assert list_sets(fs) == list_sets(fs, use_catalog=False)


def test_a_store_from_before_the_catalog_gets_its_entries_on_first_ls(capsys, tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "v1")
    store = tmp_path / "v1" / "store"
    assert not (store / CATALOG_GROUP).exists()
    code, first, _ = cli(capsys, "ls", "--store", str(store), "--json")
    assert code == 0 and len(json.loads(first)) == 4
    assert len(read_catalog(FeatureStore(store).objects)) == 4
    code, second, _ = cli(capsys, "ls", "--store", str(store), "--json")
    assert json.loads(second) == json.loads(first)


def test_an_entry_without_its_set_is_not_listed(capsys, npz_file, store_dir):
    [res, other] = extract(capsys, npz_file, store_dir)
    fs = FeatureStore(store_dir)
    [ds] = fs.datasets()
    shutil.rmtree(store_dir / ds.name / res["key"][:20])  # deleted by hand
    code, out, _ = cli(capsys, "ls", "--store", str(store_dir), "--json")
    assert [r["key"] for r in json.loads(out)] == [other["key"]]


def test_the_snapshot_never_hides_a_change(capsys, npz_file, store_dir):
    code, out, err = cli(capsys, "extract", "--data", str(npz_file), "-b", TINY, "--image-size",
                         str(SIZE), "--store", str(store_dir), "--json")
    assert code == 0, err
    fs = FeatureStore(store_dir)
    assert len(list_sets(fs)) == 1 and (store_dir / CATALOG_GROUP / "snapshot.json").exists()
    extract(capsys, npz_file, store_dir)  # a second backbone completes after the snapshot
    assert len(list_sets(fs)) == 2 and list_sets(fs) == list_sets(fs, use_catalog=False)


def test_entries_from_before_pixels_were_listed_are_read_where_ls_needs_them(
        capsys, tmp_path, monkeypatch):
    """An entry written before ``pixels`` was listed is used as it is, except where one
    alias has several sets (ls then tells them apart by how their pixels were made): those
    sets are opened once and their entries written again."""
    from featstore.store.dataset import DatasetGroup
    from tests.conftest import make_medmnist

    npz = make_medmnist(tmp_path / "m.npz", size=28)
    store = tmp_path / "s"
    for resize in ("cpu", "device"):  # one alias, two sets: PIL's and the device's resize
        code, _, err = cli(capsys, "extract", "--data", str(npz), "-b", TINY, "--image-size",
                           str(SIZE), "--store", str(store), "--resize", resize)
        assert code == 0, err
    code, _, err = cli(capsys, "extract", "--data", str(npz), "-b", TINY_VIT, "--image-size",
                       str(SIZE), "--store", str(store))
    assert code == 0, err
    for path in (store / CATALOG_GROUP).rglob("*.json"):  # as an older featstore wrote them
        row = json.loads(path.read_text())
        row.pop("pixels", None)
        path.write_text(json.dumps(row))
    opened = []
    real = DatasetGroup.open_set
    monkeypatch.setattr(DatasetGroup, "open_set",
                        lambda self, name: opened.append(name) or real(self, name))
    code, out, _ = cli(capsys, "ls", "--store", str(store))
    assert code == 0 and "torch resize" in out
    assert len(opened) == 2  # the two sets of one alias; the third entry as it was
    rows = list_sets(FeatureStore(store))
    assert sorted(r.get("pixels", "-") for r in rows) == ["-", "PIL", "torch resize"]
    assert list_sets(FeatureStore(store), use_catalog=False)[0]["pixels"]
