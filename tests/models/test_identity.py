"""A backbone built once is known again without building it: its key from the remembered
identity, so a cache hit and a read-back import neither torch nor timm; any change to the
spec, the weights file or the versions builds it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from featstore.extract import resolve_key
from featstore.models import build_backbone, parse_backbone
from featstore.models.identity import identity_cache, remembered
from tests.conftest import SIZE, TINY, cli

REPO = Path(__file__).resolve().parents[2]


def test_a_built_spec_is_remembered_with_what_its_key_needs():
    spec = parse_backbone(TINY, input_size=SIZE)
    assert remembered(spec) is None
    loaded = build_backbone(spec)
    known = remembered(spec)
    assert known is not None and len(list(identity_cache().glob("*.json"))) == 1
    assert (known.weights_sha256, known.preprocessing, known.dim) == (
        loaded.weights_sha256, loaded.preprocessing, loaded.dim)
    assert resolve_key(spec)[1].digest == resolve_key(spec)[1].digest
    assert remembered(parse_backbone(TINY, input_size=SIZE + 8)) is None  # another spec


def test_a_changed_weights_file_is_built_again(tmp_path):
    path = tmp_path / "w.pth"
    spec = parse_backbone(f"{TINY.split('@')[0]}@{path}", input_size=SIZE)
    net = build_backbone(parse_backbone(TINY, input_size=SIZE)).model
    torch.save(net.state_dict(), path)
    first = resolve_key(spec)[1].digest
    assert remembered(spec) is not None
    state = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save(state, path)
    os.utime(path, ns=(1, 1))  # even with the old size, another modification time
    assert remembered(spec) is None
    assert resolve_key(spec)[1].digest != first  # rebuilt, rehashed: its own key


def test_a_cache_hit_and_a_read_back_import_neither_torch_nor_timm(capsys, npz_file,
                                                                    store_dir):
    data = ["--data", str(npz_file), "--store", str(store_dir)]
    spec = ["-b", TINY, "--image-size", str(SIZE)]
    for args in (["extract", *spec], ["probe", *spec, "--bootstrap", "10"]):
        code, _, err = cli(capsys, *args, *data)
        assert code == 0, err
    script = (
        "import sys, json\n"
        "from featstore.cli import main\n"
        "codes = []\n"
        f"for argv in {json.dumps([['extract', *spec, *data, '--json'], ['probe', *data, '--bootstrap', '10'], ['probe', *spec, *data, '--bootstrap', '10']])}:\n"  # noqa: E501
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code or 0)\n"
        "heavy = [m for m in ('torch', 'timm', 'torchvision', 'sklearn') if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=os.environ.copy(), timeout=300)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"codes": [0, 0, 0], "heavy": []}, out.stderr
    assert '"status": "cached"' in out.stdout
