"""Reading pixels: featstore's pixel limit is its own, PIL's global one is left to others."""

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
