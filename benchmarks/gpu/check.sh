#!/usr/bin/env bash
# featstore's GPU checks for issue #20, as one call on a GPU machine, from the project root.
# What it needs beside the checkout is what ../shared/gpu/README.md describes: .whl (cp312
# wheels of zarr 3 and its compiled dependencies, featstore itself, and optionally torchcodec
# and nvidia-nvimgcodec-cu13) and .gpu (../shared/gpu's parity.py and subset.py, and the
# MedMNIST .npz files). Each part is time-boxed (the sum fits one 600-s call) and logs to
# $OUT/<part>.log; $OUT/summary.txt collects the lines that matter, kept when a part times out.
#
#   bash benchmarks/gpu/check.sh                       # PARTS="decode extract parity cli pipeline"
#   PARTS="finetune torchrun" bash benchmarks/gpu/check.sh   # the second call, if time is left
#   SKIP_WHL=1 OUT=/tmp/out DEV=cpu SMALL=1 bash benchmarks/gpu/check.sh   # dry run on a CPU
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ROOT=$PWD; ACC=${ACC:-$ROOT/.gpu}; DEV=${DEV:-cuda}; SMALL=${SMALL:-}
PARTS=${PARTS:-decode extract parity cli pipeline}
# the checkout first: a featstore wheel left in .whl from an older commit gives only its
# metadata (importlib.metadata), never its code
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT:/tmp/site MPLBACKEND=Agg
if [ -z "${SKIP_WHL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/tmp/setup.log 2>&1 || { cat /tmp/setup.log; exit 1; }
fi
S=/tmp/fsgpu; rm -rf $S; mkdir -p $S
summary=$OUT/summary.txt; : >"$summary"
fs() { python3 -m featstore "$@"; }
export -f fs; export S ACC ROOT DEV
part() {  # part NAME SECONDS COMMAND
  local name=$1 secs=$2; shift 2
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  local t0; t0=$(date +%s.%N)
  timeout -k 5 "$secs" bash -c "$*" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc $(python3 -c "import time;print(f'{time.time()-$t0:.1f}')")s" \
    | tee -a "$summary"
  grep -E "^(ok|FAIL)|img/s|of pure|x pil|^(pil|--decode|nvimgcodec|  x |  skipped)|JPEGs|PNGs|^(ResNet|ViT|5 in 1)|wall|target| ratio |plain|^featstore |featstore  |^device|AUC|error|Error|^│ (extract|probe|fuse|finetune) |steps: " \
    "$OUT/$name.log" | tail -n 60 >>"$summary"
  [ $rc -eq 0 ] || tail -n 15 "$OUT/$name.log" | sed 's/^/   | /' >>"$summary"
}
{ command -v nvidia-smi >/dev/null && nvidia-smi -L; nproc
  python3 - <<'EOF'
import importlib
for m in ("torch", "torchvision", "timm", "zarr", "numpy", "sklearn", "torchcodec"):
    try:
        print(m, importlib.import_module(m).__version__, end="; ")
    except Exception as e:  # an optional decoder that does not import is a result
        print(m, "absent:", type(e).__name__, str(e)[:80], end="; ")
import torch
from featstore.extract.pixels import jpeg_decoder
print("\ncuda", torch.cuda.is_available(), "| featstore decodes JPEGs with", jpeg_decoder()[1])
EOF
} >>"$summary" 2>&1

if [ -n "$SMALL" ]; then  # a dry run: tiny sizes, the same code paths
  N=64; NL=4; JN=8; EXTRA="--size 64 --iters 2 --backbones 1 --five 0 --workers 2"
  B=timm:resnet18@random; BIG=400; PN=16; IMG="--image-size 64"; PSECS=300
  FT="--arch resnet18 --size 64 --rows 256 --batch-size 32 --workers 2"
else
  N=20000; NL=256; JN=64; EXTRA="--workers 14"; B=timm:resnet50@random; BIG=50000; PN=256
  IMG=""; PSECS=100; FT="--arch resnet50 --size 224 --rows 4096 --batch-size 128 --workers 8"
fi
export N NL JN EXTRA B BIG PN IMG PSECS FT

# decode: JPEG and grey PNG -> 224 px uint8, PIL workers vs featstore's --decode device per
# decoder, and nvImageCodec
part decode 90 "python3 benchmarks/jpeg_decode.py --device $DEV --n $JN --reps 2 --sizes 500x375,4928x3264 --pngs 1024x1024"
# extract: every source against the pure forward pass (ResNet-50, ViT-S/16, bf16, 224 px)
part extract 210 "python3 benchmarks/gpu_extract.py --device $DEV --n $N --n-large $NL $EXTRA"
# parity: real PneumoniaMNIST test images as JPEG files, PIL path vs --decode device (fp32)
part parity 60 "set -e
python3 - \$ACC/pneumoniamnist_balanced.npz \$S/jpeg \$PN <<'EOF'
import csv, sys
from pathlib import Path
import numpy as np
from PIL import Image
src, out = sys.argv[1], Path(sys.argv[2]); out.mkdir(parents=True)
with np.load(src) as z:
    px = z['test_images'][:int(sys.argv[3])]
with open(out / 'm.csv', 'w', newline='') as f:
    w = csv.writer(f); w.writerow(['id', 'split', 'path', 'label'])
    for i, a in enumerate(px):  # at 28 px, and enlarged past a draft scale
        for tag, img in (('s', Image.fromarray(a)), ('l', Image.fromarray(a).resize((1000, 700), Image.BICUBIC))):
            img.save(out / f'{tag}{i}.jpeg', quality=90); w.writerow([f'{tag}{i}', 'test', f'{tag}{i}.jpeg', i % 2])
EOF
for d in cpu device; do fs extract --data \$S/jpeg/m.csv -b \$B \$IMG --device \$DEV --precision fp32 --decode \$d --store \$S/dec-\$d --workers 4; done
for d in cpu device; do fs export --data \$S/jpeg/m.csv \$IMG -b \$(fs ls --store \$S/dec-\$d --json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0][\"key\"][:16])') --store \$S/dec-\$d --format npy -o \$S/x-dec-\$d; done
python3 \$ACC/parity.py \$S/x-dec-device \$S/x-dec-cpu 'decode on the GPU vs PIL (real images)' 0.9999
fs ls --store \$S/dec-device"
# cli: 50k generated 64-px images -> 224 px through the CLI, end to end (target >= 8,000 img/s)
part cli 80 "set -e; python3 -c \"import numpy as np; r=np.random.default_rng(0); n=$BIG; np.savez('\$S/big.npz', train_images=r.integers(0,255,(n,64,64),dtype=np.uint8), train_labels=(np.arange(n)%2).astype(np.uint8), val_images=r.integers(0,255,(512,64,64),dtype=np.uint8), val_labels=(np.arange(512)%2).astype(np.uint8), test_images=r.integers(0,255,(512,64,64),dtype=np.uint8), test_labels=(np.arange(512)%2).astype(np.uint8))\"; t0=\$(date +%s%N); fs extract --data \$S/big.npz -b \$B \$IMG --device \$DEV --precision bf16 --dtype float16 --store \$S/big --workers 14; ms=\$(( (\$(date +%s%N)-t0)/1000000 )); echo \"CLI extract $((BIG + 1024)) images wall \$ms ms: \$(( ($BIG + 1024) * 1000 / ms )) img/s (target 8000)\""
# pipeline: the quick study with every stage on the device, cold (target <= 60 s on a GPU)
# (TOML literal strings inside double quotes, so that the shell expands \$ACC and \$DEV)
part pipeline $PSECS "t0=\$(date +%s); fs run pipelines/medmnist-quick.toml --set \"data_root='\$ACC'\" --store \$S/quick --set \"extract.device='\$DEV'\" --set 'extract.workers=4' --set \"finetune.device='\$DEV'\" --set \"probe.device='\$DEV'\" --set \"fuse.device='\$DEV'\" && echo \"pipeline wall \$(( \$(date +%s)-t0 )) s (target 60)\""
# finetune: img/s against a plain loop (ResNet-50, 224 px, bf16; target >= 0.90)
part finetune 130 "python3 benchmarks/finetune.py --device \$DEV --precision bf16 $FT"
# torchrun, one rank (the NCCL path): the same array as one process
part torchrun 60 "set -e; D=\$ACC/pneumoniamnist_balanced.npz; python3 -m torch.distributed.run --nproc-per-node=1 -m featstore extract --data \$D -b timm:resnet18@random --image-size 64 --device \$DEV --store \$S/tr && fs extract --data \$D -b timm:resnet18@random --image-size 64 --device \$DEV --store \$S/one && fs export --data \$D -b timm:resnet18@random --image-size 64 --store \$S/tr --format npy -o \$S/x-tr && fs export --data \$D -b timm:resnet18@random --image-size 64 --store \$S/one --format npy -o \$S/x-one && python3 \$ACC/parity.py \$S/x-tr \$S/x-one 'torchrun 1 rank vs 1 process' 0.99999"
cat "$summary"
