"""The study's backbones, loaded from checkpoints in the exact key layouts of the releases.

Every checkpoint here holds random weights; what is real is the layout (prefixes, extra heads,
nesting, the Namespace in DINO's full checkpoint) and the comparison against the reference
architecture given the same weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

from featstore.cli import main
from featstore.demo import write_demo_dataset
from featstore.errors import CheckpointError, WeightsNotFoundError
from featstore.extract import resolve_key
from featstore.models import build_backbone, find_weights, list_specs, parse_backbone
from featstore.models.zoo import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import SHARED_MEDMNIST, TINY, cli


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.fixture(scope="module")
def tv_resnet50() -> torch.nn.Module:
    """torchvision's resnet50 with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    _randomise_bn(model, 0)
    return model.eval()


@pytest.fixture(scope="module")
def dino_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", num_classes=0).eval()


def resnet_layout(kind: str, sd: dict[str, torch.Tensor]) -> dict:
    """A torchvision resnet50 state dict written the way each release writes it."""
    trunk = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if kind == "supervised":  # 2017 file: torchvision keys with fc, no num_batches_tracked
        return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if kind == "swav":  # flat, every key under module., projection head + prototypes, no fc
        heads = {"projection_head.0.weight": torch.randn(2048, 2048),
                 "projection_head.0.bias": torch.randn(2048),
                 "projection_head.1.weight": torch.randn(2048),
                 "projection_head.1.bias": torch.randn(2048),
                 "projection_head.1.running_mean": torch.randn(2048),
                 "projection_head.1.running_var": torch.rand(2048),
                 "projection_head.1.num_batches_tracked": torch.tensor(5),
                 "projection_head.3.weight": torch.randn(128, 2048),
                 "projection_head.3.bias": torch.randn(128),
                 "prototypes.weight": torch.randn(3000, 128)}
        return {f"module.{k}": v for k, v in {**trunk, **heads}.items()}
    if kind == "dino":  # torchvision keys without fc
        return dict(trunk)
    if kind == "simclr":  # simclr-converter: {'state_dict': torchvision keys with fc}
        return {"state_dict": dict(sd)}
    if kind == "vissl":
        return {"classy_state_dict": {"base_model": {"model": {
            "trunk": {f"_feature_blocks.{k}": v for k, v in trunk.items()},
            "heads": {"0.clf.0.weight": torch.randn(128, 2048)}}}},
            "phase_idx": 999, "iteration": 10}
    raise ValueError(kind)


RESNET_SPECS = [("supervised-rn50", "supervised", "resnet50-0676ba61.pth"),
                ("swav-rn50", "swav", "swav_800ep_pretrain.pth.tar"),
                ("dino-rn50", "dino", "dino_resnet50_pretrain.pth"),
                ("simclr-rn50", "simclr", "resnet50-1x.pth"),
                ("simclr-rn50-vissl", "vissl", "model_final_checkpoint_phase999.torch")]


@pytest.mark.parametrize(("name", "kind", "filename"), RESNET_SPECS)
def test_resnet50_releases_load_strictly_and_match_torchvision(tmp_path, monkeypatch,
                                                                tv_resnet50, name, kind, filename):
    torch.save(resnet_layout(kind, tv_resnet50.state_dict()), tmp_path / filename)
    monkeypatch.setenv("FEATSTORE_WEIGHTS_DIR", str(tmp_path))
    spec = parse_backbone(name)
    assert find_weights(spec) == tmp_path / filename  # found by its release name
    loaded = build_backbone(spec)
    assert loaded.dim == 2048 and loaded.weights_sha256
    x = torch.randn(2, 3, 64, 64)
    ref = torch.nn.Sequential(*list(tv_resnet50.children())[:-1])  # up to avgpool
    with torch.inference_mode():
        expected = ref(x).flatten(1)
    torch.testing.assert_close(loaded.embed(x), expected, rtol=1e-4, atol=1e-4)


def test_dino_vit_pretrain_and_full_checkpoint(tmp_path, dino_vit):
    sd = dino_vit.state_dict()
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"} <= set(sd)
    torch.save(sd, tmp_path / "dino_deitsmall16_pretrain.pth")
    head = {"head.mlp.0.weight": torch.randn(2048, 384), "head.last_layer.weight_g":
            torch.randn(65536, 1)}
    torch.save({
        "student": {f"module.backbone.{k}": v + 1 for k, v in sd.items()},
        "teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, **head},
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
        "epoch": 100,
    }, tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = dino_vit(x)
        inter = dino_vit.forward_intermediates(x, indices=4, norm=True, intermediates_only=True,
                                               output_fmt="NLC", return_prefix_tokens=True)
        expected4 = torch.cat([prefix[:, 0] for _, prefix in inter], dim=-1)
    embeddings = []
    for f in ("dino_deitsmall16_pretrain.pth", "dino_deitsmall16_pretrain_full_checkpoint.pth"):
        loaded = build_backbone(parse_backbone(f"dino-vits16@{tmp_path / f}"))
        assert loaded.dim == 384
        torch.testing.assert_close(loaded.embed(x), expected, rtol=1e-4, atol=1e-4)
        embeddings.append(loaded.embed(x))
        last4 = build_backbone(parse_backbone(f"dino-vits16-last4@{tmp_path / f}"))
        assert last4.dim == 1536
        torch.testing.assert_close(last4.embed(x), expected4, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(embeddings[0], embeddings[1])  # teacher picked, not student


def test_renamed_or_removed_key_and_wrong_architecture_are_refused(tmp_path, tv_resnet50,
                                                                    dino_vit):
    sd = resnet_layout("dino", tv_resnet50.state_dict())
    sd["layer1.0.conv1.weightz"] = sd.pop("layer1.0.conv1.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: layer1\.0\.conv1\.weight.*"
                                              r"unexpected keys: layer1\.0\.conv1\.weightz"):
        build_backbone(parse_backbone(f"dino-rn50@{tmp_path / 'renamed.pth'}"))
    del sd["layer1.0.conv1.weightz"]
    torch.save(sd, tmp_path / "removed.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys: layer1\.0\.conv1\.weight"):
        build_backbone(parse_backbone(f"dino-rn50@{tmp_path / 'removed.pth'}"))
    torch.save(dino_vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="does not fit ResNet"):
        build_backbone(parse_backbone(f"dino-rn50@{tmp_path / 'vit.pth'}"))
    # a VISSL file given to the converter's spec: the unexpected nesting is named
    torch.save(resnet_layout("vissl", tv_resnet50.state_dict()), tmp_path / "vissl.torch")
    with pytest.raises(CheckpointError, match="classy_state_dict were not unwrapped"):
        build_backbone(parse_backbone(f"simclr-rn50@{tmp_path / 'vissl.torch'}"))


def test_key_follows_the_weights_file(tmp_path, tv_resnet50):
    sd = resnet_layout("dino", tv_resnet50.state_dict())
    torch.save(sd, tmp_path / "a.pth")
    sd["conv1.weight"] = sd["conv1.weight"] * 1.5
    torch.save(sd, tmp_path / "b.pth")
    keys = {resolve_key(parse_backbone(f"dino-rn50@{tmp_path / f}"))[1].digest
            for f in ("a.pth", "b.pth")}
    assert len(keys) == 2


def test_missing_weights_name_the_file_the_folder_and_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_WEIGHTS_DIR", str(tmp_path / "team"))
    with pytest.raises(WeightsNotFoundError) as exc:
        build_backbone(parse_backbone("swav-rn50"))
    msg = str(exc.value)
    assert "swav_800ep_pretrain.pth.tar" in msg and str(tmp_path / "team") in msg
    assert "featstore models --download swav-rn50" in msg
    with pytest.raises(WeightsNotFoundError, match="simclr-converter"):
        build_backbone(parse_backbone("simclr-rn50"))


def _reference_image() -> Image.Image:
    if (SHARED_MEDMNIST / "breastmnist.npz").exists():
        with np.load(SHARED_MEDMNIST / "breastmnist.npz") as npz:
            px = npz["test_images"][0]
    else:  # a fresh clone without ../shared: a generated greyscale image
        px = (np.add.outer(np.arange(28), np.arange(28)) * 4).astype(np.uint8)
    return Image.fromarray(px).resize((300, 260), Image.BILINEAR).convert("RGB")


@pytest.mark.parametrize(("name", "interp", "normalised"), [
    ("supervised-rn50", "bilinear", True), ("swav-rn50", "bilinear", True),
    ("dino-rn50", "bicubic", True), ("dino-vits16", "bicubic", True),
    ("simclr-rn50", "bilinear", False), ("simclr-rn50-vissl", "bilinear", True)])
def test_preprocessing_matches_the_authors_eval_transform(name, interp, normalised):
    prep = parse_backbone(name).preprocessing
    assert (prep.resize, prep.input_size, prep.interpolation) == (256, 224, interp)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    steps = [T.Resize(256, interpolation=mode[interp]), T.CenterCrop(224), T.ToTensor()]
    if normalised:
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    img = _reference_image()
    torch.testing.assert_close(prep.transform()(img), T.Compose(steps)(img))


def test_extract_each_study_backbone_from_local_files(tmp_path, capsys, monkeypatch,
                                                      tv_resnet50, dino_vit):
    image_csv = write_demo_dataset(tmp_path / "imgs", size=32,
                                   splits={"train": 4, "val": 2, "test": 2})
    weights = tmp_path / "weights"
    weights.mkdir()
    for _, kind, filename in RESNET_SPECS:
        torch.save(resnet_layout(kind, tv_resnet50.state_dict()), weights / filename)
    torch.save(dino_vit.state_dict(), weights / "dino_deitsmall16_pretrain.pth")
    names = [n for n, _, _ in RESNET_SPECS] + ["dino-vits16"]
    store = ["--store", str(tmp_path / "s")]
    args = ["extract", "--data", str(image_csv), *store, "--json", "--batch-size", "32"]
    for n, _, filename in RESNET_SPECS:  # explicit paths ...
        args += ["-b", f"{n}@{weights / filename}"]
    monkeypatch.setenv("FEATSTORE_WEIGHTS_DIR", str(weights))
    args += ["-b", "dino-vits16"]  # ... and a bare name, found in the team's weights folder
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["alias"].split("@")[0] for r in results] == names
    assert [r["dim"] for r in results] == [2048] * 5 + [384]
    assert len({r["key"] for r in results}) == 6 and not any(r["random_weights"] for r in results)
    with pytest.raises(SystemExit) as exc:  # probe finds it again by name (key from the file)
        main(["probe", "--data", str(image_csv), *store, "-b", "dino-vits16", "--json"])
    assert exc.value.code == 0
    assert {r["key"] for r in json.loads(capsys.readouterr().out)} == {results[-1]["key"]}


def test_models_lists_every_spec_and_where_its_weights_are(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATSTORE_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "dino_resnet50_pretrain.pth").write_bytes(b"x")
    with pytest.raises(SystemExit):
        main(["models", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {s.name for s in list_specs()}
    assert rows["dino-rn50"]["present"] == str(tmp_path / "dino_resnet50_pretrain.pth")
    assert rows["swav-rn50"]["present"] is None and rows["swav-rn50"]["where"] == str(tmp_path)
    assert Path(rows["supervised-rn50"]["url"]).name == "resnet50-0676ba61.pth"


def test_timm_tag_loads_from_the_hugging_face_cache(tmp_path):
    """timm:<model> with no '@' reads timm's own HF cache layout, with the tag's preprocessing."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ref = timm.create_model("test_resnet", num_classes=10).eval()
    repo = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--timm--test_resnet.r160_in1k"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    save_file(ref.state_dict(), str(snap / "model.safetensors"))
    loaded = build_backbone(parse_backbone("timm:test_resnet"))
    assert loaded.alias == "timm:test_resnet@pretrained"
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    assert loaded.preprocessing.input_size == cfg.input_size[-1]
    assert loaded.preprocessing.crop_pct == cfg.crop_pct
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
    torch.testing.assert_close(loaded.embed(x), expected)


@pytest.mark.parametrize("size", [64, 112])
def test_dino_vit_runs_at_another_input_size(tmp_path, dino_vit, size):
    """A fixed-size ViT (timm asserts 224) is built at --image-size, the checkpoint's position
    embeddings resampled to the new grid; the size is part of the key."""
    torch.save(dino_vit.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    spec = f"dino-vits16@{tmp_path / 'dino_deitsmall16_pretrain.pth'}"
    loaded = build_backbone(parse_backbone(spec, input_size=size))
    assert loaded.dim == 384 and loaded.preprocessing.input_size == size
    assert loaded.model.patch_embed.grid_size == (size // 16, size // 16)
    with torch.inference_mode():
        out = loaded.embed(torch.randn(2, 3, size, size))
    assert out.shape == (2, 384) and torch.isfinite(out).all()
    # the resampled grid is the original's, interpolated: at 224 it is the checkpoint itself
    same = build_backbone(parse_backbone(spec, input_size=224))
    torch.testing.assert_close(same.model.pos_embed, dino_vit.pos_embed)
    keys = {resolve_key(parse_backbone(spec, input_size=s))[1].digest for s in (size, 224)}
    assert len(keys) == 2
    last4 = f"dino-vits16-last4@{tmp_path / 'dino_deitsmall16_pretrain.pth'}"
    assert build_backbone(parse_backbone(last4, input_size=size)).dim == 1536


@pytest.fixture
def weights_server():
    """An HTTP server on 127.0.0.1: /full serves a whole file, /cut announces 100,000 bytes
    and closes after 1,000, /gone is a 404."""
    import http.server
    import threading

    body = bytes(range(256)) * 40

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/gone":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) if self.path == "/full"
                                                   else 100_000))
            self.end_headers()
            self.wfile.write(body if self.path == "/full" else body[:1000])
            self.close_connection = True

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", body
    server.shutdown()
    server.server_close()


def test_a_download_is_written_whole_or_is_one_error_and_leaves_no_file(tmp_path,
                                                                        weights_server):
    import dataclasses

    from featstore.models.weights import download_weights

    url, body = weights_server
    spec = parse_backbone("swav-rn50")
    got = download_weights(dataclasses.replace(spec, url=f"{url}/full"), tmp_path / "a")
    assert got == tmp_path / "a" / spec.weights_file and got.read_bytes() == body
    for path, said in (("cut", "the connection ended after 1000 of 100000 bytes"),
                       ("gone", "HTTPError: HTTP Error 404")):
        with pytest.raises(WeightsNotFoundError) as exc:
            download_weights(dataclasses.replace(spec, url=f"{url}/{path}"), tmp_path / path)
        msg = str(exc.value)
        assert msg.startswith(f"backbone swav-rn50: downloading {url}/{path} failed: "), msg
        assert said in msg and "\n" not in msg
        assert not any((tmp_path / path).iterdir())  # nothing, not even a .partial


def test_a_failed_hub_download_is_one_error_naming_the_spec_not_internal(tmp_path,
                                                                         monkeypatch, capsys):
    import timm

    from featstore.cli import main
    from featstore.models import weights

    class ReadError(Exception):  # the hub's HTTP client's errors are not OSErrors
        pass

    def cut(*a, **k):
        raise ReadError("[Errno 104] Connection reset by peer\n(more lines)")

    monkeypatch.setattr(timm, "create_model", cut)
    monkeypatch.setattr(weights, "_reach_hub", lambda *a, **k: None)  # the hub answered
    with pytest.raises(SystemExit) as exc:
        main(["models", "--download", "timm:resnet18"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code == 1 and len(lines) == 1 and "internal" not in err, err
    assert lines[0] == ("error: backbone timm:resnet18: downloading resnet18's pretrained "
                        "weights (timm, Hugging Face hub) failed: ReadError: [Errno 104] "
                        "Connection reset by peer"), err


def _no_download(*a, **k):
    raise AssertionError("nothing is to be downloaded")


def test_downloading_random_weights_says_there_is_nothing_to_download(capsys, monkeypatch):
    monkeypatch.setattr(timm, "create_model", _no_download)
    code, out, err = cli(capsys, "models", "--download", TINY)
    assert code == 0 and not err, err
    assert out.strip() == (f"{TINY}: random weights are made when the network is built; "
                           "nothing to download")


def test_downloading_a_given_checkpoint_says_whether_it_is_there(capsys, monkeypatch,
                                                                 tmp_path):
    monkeypatch.setattr(timm, "create_model", _no_download)
    ckpt = tmp_path / "x.pth"
    given = f"{TINY.split('@')[0]}@{ckpt}"
    code, out, err = cli(capsys, "models", "--download", given)
    assert code == 1 and err.strip().splitlines() == [
        f"error: {given}: nothing to download (the weights are the file after '@'), and "
        f"{ckpt} is not there; place it there, or download the spec's own weights with "
        f"'featstore models --download {TINY.split('@')[0]}'"], err
    ckpt.write_bytes(b"weights")
    code, out, err = cli(capsys, "models", "--download", given)
    assert code == 0 and out.strip() == (f"{given}: the weights are the file given, {ckpt}; "
                                         "nothing to download"), (out, err)


def test_an_unreachable_hub_fails_at_once_naming_the_spec(capsys, monkeypatch):
    """Offline, the hub's own download retried each file for a minute (51 s measured for
    timm:resnet18); one request tells."""
    import socket

    import huggingface_hub.constants as hub

    with socket.socket() as s:  # a port nobody listens on: refused at once, like no route
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(hub, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    given = "timm:test_resnet.r160_in1k"
    t0 = time.perf_counter()
    code, out, err = cli(capsys, "models", "--download", given)
    seconds = time.perf_counter() - t0
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "internal" not in err, err
    assert lines[0].startswith(f"error: backbone {given}: cannot reach the Hugging Face hub "
                               f"({endpoint})"), err
    assert seconds < 10, seconds
