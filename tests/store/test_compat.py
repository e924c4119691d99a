"""A store written by featstore before the stage APIs moved (tests/fixtures/store_v1, made by
make_store_v1.py at commit 3d0b9d8) reads, resolves, verifies and reuses its runs today."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, TINY_VIT, cli

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_v1"
OLD_KEYS = {"fdb00f5ddc2d015b29c6", "b2036dfb2240ade7c5cf"}  # test_resnet, test_vit at 32px
# the old sets as `ls` names them: found on any CPU. A spec is found only where this CPU draws
# the same random weights: timm initialises a ViT through erfinv, whose vector kernels differ
# in the last bit from one CPU to another (test_resnet's uniform init does not), so
# timm:test_vit@random is another network, with another key, on some machines
OLD_SETS = ["-b", "timm:test_resnet/32px@random", "-b", "timm:test_vit/32px@random"]


def drawn_here(old: Path) -> dict[str, bool]:
    """{spec: whether this machine draws the weights the fixture's set of it was made by}."""
    from featstore.extract import resolve_key
    from featstore.models import parse_backbone
    from featstore.store import FeatureStore

    made = {es.provenance.architecture: es.provenance.weights_sha256
            for ds in FeatureStore(str(old / "store")).datasets() for es in ds.embedding_sets()}
    return {spec: resolve_key(parse_backbone(spec, input_size=32))[0].weights_sha256
            == made[parse_backbone(spec).architecture] for spec in (TINY, TINY_VIT)}


@pytest.fixture
def old(tmp_path) -> Path:
    """A private copy of the fixture (probes write runs into the store)."""
    shutil.copytree(FIXTURE, tmp_path / "v1")
    return tmp_path / "v1"



def test_old_store_lists_and_verifies(capsys, old):
    store = str(old / "store")
    code, out, _ = cli(capsys, "ls", "--store", store, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4
    assert {r["key"][:20] for r in rows} == OLD_KEYS
    assert {r["status"] for r in rows} == {"complete"}
    code, out, _ = cli(capsys, "verify", "--store", store)
    assert code == 0 and out.count(" ok") == 4


def test_specs_resolve_to_the_keys_written_before(capsys, old):
    """The key is assembled in one place now; it must give the very same digests (from the
    weights the fixture's sets were made by, where this CPU draws other random weights)."""
    from dataclasses import replace

    from featstore.extract import embedding_key, resolve_key
    from featstore.models import parse_backbone
    from featstore.store import FeatureStore

    store = str(old / "store")
    made = {es.provenance.architecture: es.provenance.weights_sha256
            for ds in FeatureStore(store).datasets() for es in ds.embedding_sets()}
    for spec in (TINY, TINY_VIT):
        ident = resolve_key(parse_backbone(spec, input_size=32))[0]
        then = replace(ident, weights_sha256=made[ident.spec.architecture])
        assert embedding_key(then).digest[:20] in OLD_KEYS
    same = drawn_here(old)
    assert same[TINY]  # test_resnet's random draw is the same on every CPU
    code, out, _ = cli(capsys, "extract", "--data", str(old / "tiny.npz"), "-b", TINY,
                       "-b", TINY_VIT, "--image-size", "32", "--store", store, "--json")
    results = json.loads(out)
    assert code == 0 and [r["status"] for r in results] == [
        "cached", "cached" if same[TINY_VIT] else "extracted"]
    assert ({r["key"][:20] for r in results} == OLD_KEYS) == same[TINY_VIT]
    # the cache hit seals the old sets: their checksums now sit in their attrs
    for ds in FeatureStore(store).datasets():
        for es in ds.embedding_sets():
            if es.key[:20] == results[0]["key"][:20] and ds.name.startswith("tiny"):
                assert es._sealed is not None
                assert np.array_equal(es.checksums(), es.group["checksums"][...])


def test_an_old_group_is_adopted_and_found_from_a_copy_of_the_data(capsys, old, tmp_path):
    """The old group is keyed by a hash of the paths; opened once with the data that made it,
    it gains the dataset's content identity, and a copy of the data under another name and
    folder then finds it (its sets are cache hits)."""
    from featstore.data import load_dataset
    from featstore.store import FeatureStore

    store = str(old / "store")
    m = load_dataset(old / "tiny.npz")
    group = FeatureStore(store).dataset(m)
    assert group.name == f"tiny-{m.sha256[:12]}" and group.attrs["identity"] == m.identity
    same = drawn_here(old)
    copy = tmp_path / "mounted" / "renamed.npz"
    copy.parent.mkdir()
    shutil.copy(old / "tiny.npz", copy)
    code, out, _ = cli(capsys, "extract", "--data", str(copy), "-b", TINY, "-b", TINY_VIT,
                       "--image-size", "32", "--store", store, "--json")
    assert code == 0 and [r["status"] for r in json.loads(out)] == [
        "cached", "cached" if same[TINY_VIT] else "extracted"]
    assert len(FeatureStore(store).datasets()) == 2  # tiny and noval/demo, nothing new


def test_old_probe_and_fusion_runs_are_listed_then_superseded_by_the_current_solver(
        capsys, old):
    """The fixture's runs were fitted by an earlier linear solver: they are listed as they
    are, never read back as the current solver's; once recomputed, only the new runs are."""
    from featstore.choices import LINEAR_SOLVER

    store = ["--store", str(old / "store")]
    data = ["--data", str(old / "tiny.npz")]
    code, out, _ = cli(capsys, "results", *data, *store, "--json")
    before = json.loads(out)
    old_probe = [r for r in before if r.get("probe") == "linear"]
    assert code == 0 and old_probe and all("solver" not in r["config"] for r in old_probe)
    assert any("method" in r for r in before)
    code, out, _ = cli(capsys, "probe", *data, *store, *OLD_SETS, "--bootstrap", "20",
                       "--json")
    records = json.loads(out)
    assert code == 0 and records and not any(r["cached"] for r in records)
    assert {r["config"]["solver"] for r in records} == {LINEAR_SOLVER}
    code, out, _ = cli(capsys, "fuse", *data, *store, *OLD_SETS, "--bootstrap", "20",
                       "--heads-dir", str(old / "heads"), "--json")
    assert code == 0
    fused = json.loads(out)
    assert {r["method"]: r["cached"] for r in fused} == {
        "dvme-softmax": False, "concat": False, "single:timm:test_resnet/32px@random": False,
        "single:timm:test_vit/32px@random": False}
    code, out, _ = cli(capsys, "results", *data, *store, "--json")
    listed = json.loads(out)
    probes = [r for r in listed if r.get("probe") == "linear"]
    assert len(probes) == len(old_probe)  # each run once: the old one superseded
    assert {r["config"]["solver"] for r in probes} == {LINEAR_SOLVER}
    assert {r["run_id"] for r in probes} == {r["run_id"] for r in records}
    methods = [r["method"] for r in listed if "method" in r and r["primary"]]
    assert sorted(methods) == ["concat", "dvme-softmax", "single:timm:test_resnet/32px@random",
                               "single:timm:test_vit/32px@random"]
    assert all(r["config"]["solver"] == LINEAR_SOLVER
               for r in listed if "method" in r)
    # read back from now on
    code, out, _ = cli(capsys, "probe", *data, *store, *OLD_SETS, "--bootstrap", "20",
                       "--json")
    assert code == 0 and all(r["cached"] for r in json.loads(out))


def test_runs_with_the_old_val_carve_are_superseded(capsys, old):
    """Without a val split, val used to be carved by rows, so a patient could sit on both
    sides: those runs are recomputed with the patient-safe carve, and no longer listed."""
    store = ["--store", str(old / "store")]
    data = ["--data", str(old / "noval" / "demo.csv")]
    code, out, err = cli(capsys, "results", *data, *store)
    assert code == 0 and "no probe, finetuning or fusion results" in err
    code, out, _ = cli(capsys, "probe", *data, *store, "-b", TINY, "--image-size", "32",
                       "--bootstrap", "20", "--json")
    records = json.loads(out)
    assert code == 0 and not any(r["cached"] for r in records)
    assert {r["val_source"] for r in records} == {"20% of train patients (seed 0)"}
    code, out, _ = cli(capsys, "results", *data, *store, "--json")
    assert len(json.loads(out)) == len(records)


def test_old_provenance_reads_typed_and_writes_back_the_same_keys(capsys, old, npz_file,
                                                                  tmp_path):
    from featstore.store import FeatureStore
    from featstore.store.layout import Provenance

    sets = [es for ds in FeatureStore(str(old / "store")).datasets()
            for es in ds.embedding_sets()]
    for es in sets:
        stored = es.attrs["provenance"]
        typed = es.provenance
        assert typed.spec == stored["backbone"] and typed.extra == {}
        assert typed.to_dict() == {**typed.to_dict(), **stored}  # every stored key kept
        assert Provenance.from_dict(typed.to_dict()) == typed
    # what today's extract writes has every key the old store's sets have (and newer ones)
    store = tmp_path / "new"
    assert cli(capsys, "extract", "--data", str(npz_file), "-b", TINY, "--image-size", "32",
               "--store", str(store))[0] == 0
    (new,) = [es for ds in FeatureStore(str(store)).datasets() for es in ds.embedding_sets()]
    assert set(sets[0].attrs["provenance"]) < set(new.attrs["provenance"])
    assert set(new.attrs["provenance"]) == set(Provenance().to_dict())
    assert new.provenance.spec.startswith("timm:test_resnet")
