"""Backbone specs: parsing, strict checkpoint loading, preprocessing from timm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import featstore
from featstore.errors import BackboneError, CheckpointError, WeightsNotFoundError
from featstore.models import build_backbone, parse_backbone
from tests.conftest import SIZE


def reference_model(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=10).eval()


def test_local_checkpoint_with_wrapper_prefix_and_head_loads_strictly(tmp_path):
    ref = reference_model()
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}  # DataParallel-style save
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = build_backbone(parse_backbone(f"timm:test_resnet@{tmp_path / 'ckpt.pth'}",
                                           input_size=SIZE))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(loaded.embed(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert loaded.alias == f"timm:test_resnet/{SIZE}px@ckpt.pth"
    assert not loaded.spec.is_random


def test_checkpoint_with_a_missing_or_renamed_key_is_refused_with_the_keys(tmp_path):
    sd = reference_model().state_dict()
    removed = dict(sd)
    del removed["conv1.0.weight"]
    torch.save(removed, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys: conv1\.0\.weight"):
        build_backbone(parse_backbone(f"timm:test_resnet@{tmp_path / 'missing.pth'}"))
    renamed = dict(sd)
    renamed["conv1.0.weightx"] = renamed.pop("conv1.0.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: conv1\.0\.weightx"):
        build_backbone(parse_backbone(f"timm:test_resnet@{tmp_path / 'renamed.pth'}"))


def test_checkpoint_of_the_wrong_architecture_is_refused(tmp_path):
    torch.save(timm.create_model("test_vit").state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        build_backbone(parse_backbone(f"timm:test_resnet@{tmp_path / 'vit.pth'}"))


def test_corrupt_and_absent_checkpoint_files(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        build_backbone(parse_backbone(f"timm:test_resnet@{tmp_path / 'bad.pth'}"))
    with pytest.raises(WeightsNotFoundError, match=r"checkpoint not found: .*absent\.pth"):
        build_backbone(parse_backbone(f"timm:test_resnet@{tmp_path / 'absent.pth'}"))


def test_spec_parsing_errors():
    with pytest.raises(BackboneError, match="timm has no model 'no_such_net'"):
        parse_backbone("timm:no_such_net@random")
    with pytest.raises(WeightsNotFoundError, match="not in the local caches.*timm/resnet18"):
        build_backbone(parse_backbone("timm:resnet18"))
    with pytest.raises(BackboneError, match="unknown backbone 'dino'"):
        parse_backbone("dino")


def test_random_weights_are_seeded_and_labelled():
    a = build_backbone(parse_backbone("timm:test_resnet@random", input_size=SIZE))
    b = build_backbone(parse_backbone("timm:test_resnet@random", input_size=SIZE))
    assert a.weights_sha256 == b.weights_sha256 and a.alias.endswith("@random")
    x = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(a.embed(x), b.embed(x))


def test_preprocessing_comes_from_the_timm_config():
    loaded = build_backbone(parse_backbone("timm:resnet18@random"))
    p = loaded.preprocessing
    cfg = timm.create_model("resnet18").pretrained_cfg
    assert (p.input_size, p.crop_pct, p.interpolation) == (224, cfg["crop_pct"],
                                                           cfg["interpolation"])
    assert p.mean == tuple(cfg["mean"]) and p.resize == int(224 / cfg["crop_pct"])
    from PIL import Image

    grey = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400), np.uint8))
    x = p.transform()(grey)
    assert x.shape == (3, 224, 224)
    pixels = x * torch.tensor(p.std)[:, None, None] + torch.tensor(p.mean)[:, None, None]
    torch.testing.assert_close(pixels[0], pixels[1])  # grey copied to all three channels
    torch.testing.assert_close(pixels[1], pixels[2])


def test_embedding_width_is_the_pre_logits_width():
    # MobileNetV3's conv_head widens 576 features to 1024 pre-logits (head_hidden_size)
    loaded = build_backbone(parse_backbone("timm:mobilenetv3_small_050@random", input_size=SIZE))
    reference = timm.create_model("mobilenetv3_small_050", num_classes=0).eval()
    assert loaded.dim == reference.head_hidden_size == 1024 != reference.num_features


def test_listing_and_parsing_specs_imports_neither_torch_nor_timm():
    # featstore/__init__.py imports the whole pipeline; the claim is about featstore.models
    # (what `featstore models` needs), so the package is entered without its __init__
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('featstore')\n"
        f"pkg.__path__ = [{str(Path(featstore.__file__).parent)!r}]\n"
        "sys.modules['featstore'] = pkg\n"
        "import featstore._hashing\n"
        "from featstore.models import parse_backbone, spec_rows\n"
        "from featstore.models.weights import weights_dirs\n"
        "assert spec_rows()\n"
        "weights_dirs(), parse_backbone('dino-vits16-last4@random').preprocessing.to_dict()\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_build_names_load_lazily_from_the_package_and_the_registry():
    import featstore.models
    import featstore.models.registry
    from featstore.models.build import build_backbone as built_by
    from featstore.models.checkpoint import load_checkpoint_strict

    assert featstore.models.build_backbone is built_by is featstore.models.registry.build_backbone
    assert featstore.models.load_checkpoint_strict is load_checkpoint_strict
    assert {"build_backbone", "load_checkpoint_strict"} <= set(dir(featstore.models))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        featstore.models.no_such_name  # noqa: B018
