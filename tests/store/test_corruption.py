"""Corrupt data never reaches a metric: reads check every shard against its checksum and the
index against the manifest; a damaged store is named, repaired by extract, and the rest of it
stays usable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE, TINY, TINY_VIT, cli


@pytest.fixture
def extracted(capsys, npz_file, store_dir):
    """Two backbones over a 68-row dataset, 16-row shards; returns (data args, keys)."""
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    code, out, _ = cli(capsys, "extract", *data, "-b", TINY, "-b", TINY_VIT, "--image-size",
                       str(SIZE), "--shard-rows", "16", "--json")
    assert code == 0
    return data, [r["key"] for r in json.loads(out)]


def set_dir(store: Path, key: str) -> Path:
    [d] = [p for p in store.glob(f"*/{key[:20]}") if p.is_dir()]
    return d


def shard_file(store: Path, key: str, shard: int) -> Path:
    return set_dir(store, key) / "embeddings" / "c" / str(shard) / "0"


def flip_exponent_byte(path: Path, offset: int = 3) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40  # the high byte of a little-endian float32: sign and exponent
    path.write_bytes(bytes(raw))


def embeddings(store: Path, npz: Path, key: str) -> np.ndarray:
    from featstore import FeatureStore, load_dataset

    return FeatureStore(store).dataset(load_dataset(npz)).embedding_set(key).read()


def test_a_flipped_byte_is_refused_named_and_recomputed(capsys, extracted, npz_file,
                                                         store_dir):
    data, (key, _) = extracted
    before = embeddings(store_dir, npz_file, key)
    flip_exponent_byte(shard_file(store_dir, key, 1))
    code, out, err = cli(capsys, "probe", *data, "-b", key[:12], "--bootstrap", "0")
    assert code == 1 and "shard 1 (rows 16-31) fails its checksum" in err and out == ""
    code, _, _ = cli(capsys, "probe", *data, "-b", key[:12], "--bootstrap", "0", "--no-verify")
    assert code == 0  # the opt-out reads the numbers as they are
    code, out, _ = cli(capsys, "verify", "--store", str(store_dir))
    assert code == 1 and "CORRUPT shards [1]" in out
    # a cache hit reads nothing (the sealed checksums say it is finished) ...
    code, out, _ = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE),
                       "--shard-rows", "16")
    assert code == 0 and "cache hit" in out and "recomputed" not in out
    # ... and with --verify it checks every shard and recomputes exactly that one
    code, out, _ = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE),
                       "--shard-rows", "16", "--verify")
    assert code == 0 and "shards [1] failed their checksum and were recomputed" in out
    assert "1/5 shards written" in out
    np.testing.assert_array_equal(embeddings(store_dir, npz_file, key), before)
    code, out, _ = cli(capsys, "verify", "--store", str(store_dir))
    assert code == 0 and "CORRUPT" not in out


def test_a_row_selection_reads_and_checks_only_its_shards(extracted, npz_file, store_dir):
    from featstore import FeatureStore, load_dataset

    _, (key, _) = extracted
    whole = embeddings(store_dir, npz_file, key)
    flip_exponent_byte(shard_file(store_dir, key, 1))  # rows 16-31
    es = FeatureStore(store_dir).dataset(load_dataset(npz_file)).embedding_set(key)
    rows = np.array([3, 40, 67])  # shards 0, 2 and 4: the damaged one is never read
    np.testing.assert_array_equal(es.read(rows), whole[rows])
    np.testing.assert_array_equal(es.read(slice(32, 48)), whole[32:48])
    from featstore.errors import CorruptShardError

    with pytest.raises(CorruptShardError, match="shard 1 "):
        es.read(np.array([3, 20]))


def test_verify_repair_marks_shards_for_the_next_extract(capsys, extracted, store_dir):
    data, (key, _) = extracted
    flip_exponent_byte(shard_file(store_dir, key, 2))
    code, out, _ = cli(capsys, "verify", "--store", str(store_dir), "--repair")
    assert code == 0 and "marked for recompute" in out
    code, _, err = cli(capsys, "probe", *data, "-b", key[:12])
    assert code == 1 and "incomplete: 1 of 5 shards not done" in err
    code, out, _ = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE),
                       "--shard-rows", "16")
    assert code == 0 and "resumed: 1/5 shards written" in out


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_a_missing_or_damaged_shard_file_is_named_not_read_as_zeros(capsys, extracted,
                                                                     store_dir, damage):
    data, (key, other) = extracted
    f = shard_file(store_dir, key, 3)
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    else:
        f.write_bytes(b"\x00" * 40)
    code, _, err = cli(capsys, "probe", *data, "-b", key[:12], "--bootstrap", "0")
    assert code == 1 and "shard 3 (rows 48-63)" in err and "internal" not in err
    code, out, err = cli(capsys, "verify", "--store", str(store_dir))
    assert code == 1 and "CORRUPT shards [3]" in out and "internal" not in err
    code, _, _ = cli(capsys, "probe", *data, "-b", other[:12], "--bootstrap", "0")
    assert code == 0  # the other set is untouched and usable


def test_a_damaged_index_is_refused_and_rewritten_by_extract(capsys, extracted, store_dir):
    data, (key, _) = extracted
    [ids_chunk] = list(set_dir(store_dir, key).parent.glob("ids/c/*"))
    ids_chunk.unlink()  # reads back as empty strings
    code, _, err = cli(capsys, "probe", *data, "-b", key[:12], "--bootstrap", "0")
    assert code == 1 and "index 'ids'" in err and "does not match the manifest" in err
    code, out, _ = cli(capsys, "extract", *data, "-b", TINY, "--image-size", str(SIZE),
                       "--shard-rows", "16")
    assert code == 0 and "cache hit" in out
    code, _, _ = cli(capsys, "probe", *data, "-b", key[:12], "--bootstrap", "0")
    assert code == 0


def test_one_unreadable_set_is_named_and_the_rest_stays_usable(capsys, extracted, store_dir):
    data, (key, other) = extracted
    meta = set_dir(store_dir, key) / "zarr.json"
    meta.write_text("{ not json")
    code, out, err = cli(capsys, "ls", "--store", str(store_dir), "--json")
    assert code == 0 and other in [r["key"] for r in json.loads(out)]  # from the catalog
    shutil.rmtree(store_dir / "_catalog")  # a store from before the catalog: sets are opened
    code, out, err = cli(capsys, "ls", "--store", str(store_dir), "--json")
    assert code == 0 and [r["key"] for r in json.loads(out)] == [other]
    assert str(meta.parent) in err
    code, out, _ = cli(capsys, "verify", "--store", str(store_dir))
    assert code == 1 and f"{meta.parent}/zarr.json: unreadable" in out
    code, _, _ = cli(capsys, "probe", *data, "-b", other[:12], "--bootstrap", "0")
    assert code == 0


def test_store_that_is_a_file_is_an_error(capsys, tmp_path):
    f = tmp_path / "store.txt"
    f.write_text("x")
    code, _, err = cli(capsys, "ls", "--store", str(f))
    assert code == 1 and "a file, not a store folder" in err
