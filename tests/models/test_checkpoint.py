"""Checkpoint files: safe reading, strict loading through an adapter, and weights digests."""

from __future__ import annotations

import argparse
import collections

import pytest
import timm
import torch

from featstore._hashing import state_dict_sha256
from featstore.errors import CheckpointError
from featstore.models import CheckpointAdapter, build_backbone, parse_backbone
from featstore.models.checkpoint import load_checkpoint_strict, read_checkpoint

# Digests computed by registry.state_dict_sha256 before it moved to featstore._hashing
# (torch 2.14, timm 1.0.31). A weights sha256 is part of every embedding key: these must never
# change, or every cached random-weights embedding is silently orphaned. test_vit is not
# pinned: timm draws a ViT's weights through erfinv, whose vector kernels differ in the last
# bit between CPUs (16fae79f... on the machine that pinned it, 94e6a73d... on a Sapphire
# Rapids), so its digest is what this CPU draws: another network, rightly another key.
TEST_RESNET_SEED0_SHA256 = "ad5375aba2cc686a4663acfdaa2e0190cdfd6749b91f71ffdf0350a3a7ed7b98"
HANDMADE_SHA256 = "60b0fdd7d3e92ac1f2f1a107e344251c0fa28bd1d7908b6fefbc0733ffaa6433"


def handmade_state_dict() -> dict[str, torch.Tensor]:
    """Fixed values over several dtypes, an empty tensor and unsorted keys (no RNG, no timm)."""
    return {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
            "a.bias": torch.tensor([1.5, -2.0], dtype=torch.float16),
            "bn.num_batches_tracked": torch.tensor(5),
            "empty": torch.zeros(0, 4),
            "mask": torch.tensor([True, False, True])}


def seeded(architecture: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(architecture, num_classes=0)


def test_state_dict_sha256_is_the_digest_it_was_before_the_move():
    assert state_dict_sha256(handmade_state_dict()) == HANDMADE_SHA256
    assert state_dict_sha256(seeded("test_resnet").state_dict()) == TEST_RESNET_SEED0_SHA256
    vit = seeded("test_vit").state_dict()
    assert state_dict_sha256(vit) == state_dict_sha256(dict(reversed(list(vit.items()))))


def test_random_weights_sha256_is_the_pinned_state_dict_digest():
    loaded = build_backbone(parse_backbone("timm:test_resnet@random"))
    assert loaded.weights_sha256 == TEST_RESNET_SEED0_SHA256


def test_state_dict_sha256_ignores_key_order_but_not_values_or_dtypes():
    sd = handmade_state_dict()
    assert state_dict_sha256(collections.OrderedDict(reversed(sd.items()))) == HANDMADE_SHA256
    changed = {**sd, "a.bias": sd["a.bias"] + 1}
    assert state_dict_sha256(changed) != HANDMADE_SHA256
    assert state_dict_sha256({**sd, "a.bias": sd["a.bias"].float()}) != HANDMADE_SHA256


def test_strict_load_names_the_missing_and_unexpected_keys(tmp_path):
    model = seeded("test_resnet")
    sd = dict(model.state_dict())
    sd["stem.extra"] = sd.pop("conv1.0.weight")  # renamed
    del sd["conv1.1.bias"]
    torch.save(sd, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint_strict(seeded("test_resnet"), tmp_path / "ckpt.pth",
                               CheckpointAdapter(), label="mine")
    msg = str(exc.value)
    assert msg.startswith("checkpoint mine (ckpt.pth) does not fit ResNet: ")
    assert "2 missing keys: conv1.0.weight, conv1.1.bias" in msg
    assert "1 unexpected keys: stem.extra" in msg


def test_strict_load_names_wrappers_it_did_not_unwrap_and_mismatched_shapes(tmp_path):
    sd = seeded("test_resnet").state_dict()
    torch.save({"ema": dict(sd), "epoch": 3}, tmp_path / "wrapped.pth")
    with pytest.raises(CheckpointError, match="top-level dicts ema were not unwrapped"):
        load_checkpoint_strict(seeded("test_resnet"), tmp_path / "wrapped.pth",
                               CheckpointAdapter())
    torch.save({"ema": dict(sd)}, tmp_path / "wrapped.pth")
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", num_classes=0)  # other weights until loaded
    load_checkpoint_strict(model, tmp_path / "wrapped.pth", CheckpointAdapter(subdicts=("ema",)))
    assert state_dict_sha256(model.state_dict()) == TEST_RESNET_SEED0_SHA256
    bad = {**sd, "conv1.0.weight": torch.zeros(1, 1, 1, 1)}
    torch.save(bad, tmp_path / "shapes.pth")
    with pytest.raises(CheckpointError,
                       match=r"1 shape mismatches: conv1\.0\.weight \(1, 1, 1, 1\) vs"):
        load_checkpoint_strict(seeded("test_resnet"), tmp_path / "shapes.pth",
                               CheckpointAdapter())


def test_strict_load_fills_only_a_missing_batchnorm_counter(tmp_path):
    ref = seeded("test_resnet")
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in ref.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "old.pth")
    model = seeded("test_resnet")
    load_checkpoint_strict(model, tmp_path / "old.pth", CheckpointAdapter())
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


class _NotAllowed:
    pass


def test_reading_unpickles_an_argparse_namespace_but_no_other_class(tmp_path):
    torch.save({"args": argparse.Namespace(arch="vit_small"), "w": torch.ones(2)},
               tmp_path / "dino.pth")
    assert read_checkpoint(tmp_path / "dino.pth")["args"].arch == "vit_small"
    torch.save({"obj": _NotAllowed(), "w": torch.ones(2)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: not a readable checkpoint"):
        read_checkpoint(tmp_path / "evil.pth")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="checkpoint holds a list, expected a dict"):
        read_checkpoint(tmp_path / "list.pth")
