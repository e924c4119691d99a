"""Reading pixels: featstore's pixel limit is its own, PIL's global one is left to others;
loader workers share the arrays the main process read."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featstore import load_dataset
from featstore.data.images import read_image
from featstore.errors import ImageReadError


def one_png(tmp_path, size=32):
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("id,split,path,label\na,train,a.png,0\n")
    return load_dataset(str(tmp_path / "m.csv"))


def test_importing_featstore_leaves_pils_own_decompression_bomb_limit_alone():
    assert Image.MAX_IMAGE_PIXELS is not None  # other code in the process keeps its guard


def test_a_limit_above_pils_reads_the_image_and_puts_pils_limit_back(tmp_path, monkeypatch):
    manifest = one_png(tmp_path)  # 1,024 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone would refuse above 200
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "a.png")
    assert read_image(manifest, 0, max_pixels=10_000).size == (32, 32)
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.parametrize("max_pixels, pil", [(500, None), (500, 100), (150, 100)])
def test_an_image_above_the_limit_is_refused_naming_the_row_and_the_option(
        tmp_path, monkeypatch, max_pixels, pil):
    manifest = one_png(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil)
    with pytest.raises(ImageReadError, match=r"id 'a': .*a\.png.*limit of .*--max-pixels"):
        read_image(manifest, 0, max_pixels=max_pixels)
    assert Image.MAX_IMAGE_PIXELS == pil


def test_overlapping_lifts_in_threads_put_pils_limit_back_once_the_last_is_done():
    import threading
    import time

    from featstore.data.decode import _pixel_limit

    before = Image.MAX_IMAGE_PIXELS
    inside = threading.Event()

    def lifting():
        with _pixel_limit(10 ** 12):
            inside.set()
            time.sleep(0.2)

    def plain():  # enters while the other thread has lifted the limit
        inside.wait()
        with _pixel_limit(None):
            time.sleep(0.01)

    threads = [threading.Thread(target=f) for f in (lifting, plain, lifting)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Image.MAX_IMAGE_PIXELS == before


def _pixels(img: Image.Image):
    import torch

    return torch.from_numpy(np.asarray(img).copy())


@pytest.mark.parametrize("raw", [True, False], ids=["stored rows", "PIL per row"])
def test_loader_workers_share_the_arrays_read_before_they_start(tmp_path, raw):
    """After ``share_arrays`` the forked workers read no file (the .npz can be gone and
    every row still arrives, as it is stored): one copy of the arrays, read once, instead of
    one per worker. Pickled for a spawned worker, the dataset carries none of them."""
    import pickle

    import torch

    from featstore.data.images import View, ViewsDataset, collate_views
    from tests.conftest import make_medmnist

    npz = make_medmnist(tmp_path / "m.npz", n=(40, 12, 16), size=28)
    manifest = load_dataset(str(npz))
    with np.load(npz) as z:
        stored = np.stack([z[manifest.array_keys[i]][int(manifest.index[i])]
                           for i in range(len(manifest))])
    view = (View(None, (28, 28), raw=True) if raw else
            View(_pixels, (28, 28, 3), dtype=torch.uint8))
    dataset = ViewsDataset(manifest, [view])
    dataset.share_arrays()
    assert pickle.loads(pickle.dumps(dataset))._arrays is None
    npz.unlink()
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2,
                                         collate_fn=collate_views,
                                         multiprocessing_context="fork")
    rows, errors, pixels = [], [], []
    for xs, r, e in loader:
        rows += r.tolist()
        errors += e
        pixels.append(xs[0].numpy())
    assert rows == list(range(len(manifest))) and not any(errors), errors[:1]
    got = np.concatenate(pixels)
    assert np.array_equal(got if raw else got[..., 0], stored)


def test_only_the_arrays_of_the_rows_to_load_are_shared_and_only_for_forked_workers(
        tmp_path, monkeypatch):
    """``share_arrays(rows)`` reads the arrays those rows come from, not the whole file's (a
    validation pass must not read train), and nothing where workers are not forked (they
    would read their own anyway: one more copy, not one fewer)."""
    import multiprocessing

    import torch

    from featstore.data.images import View, ViewsDataset, collate_views
    from tests.conftest import make_medmnist

    npz = make_medmnist(tmp_path / "m.npz", n=(40, 12, 16), size=28)
    manifest = load_dataset(str(npz))
    val = np.flatnonzero(manifest.split == "val")

    def errors_after_the_file_is_gone(dataset, rows) -> list[str]:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, rows.tolist()), batch_size=8, num_workers=2,
            collate_fn=collate_views, multiprocessing_context="fork")
        return [e for _, _, errors in loader for e in errors]

    view = View(None, (28, 28), raw=True)
    kept = npz.read_bytes()
    shared = ViewsDataset(manifest, [view])
    shared.share_arrays(val)
    npz.unlink()
    assert not any(errors_after_the_file_is_gone(shared, val))
    train_errors = errors_after_the_file_is_gone(shared, np.flatnonzero(manifest.split == "train"))
    assert train_errors and all("No such file" in e for e in train_errors)

    npz.write_bytes(kept)
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda *a, **k: "spawn")
    unshared = ViewsDataset(manifest, [view])
    unshared.share_arrays(val)
    npz.unlink()
    errors = errors_after_the_file_is_gone(unshared, val)
    assert errors and all("No such file" in e for e in errors)
