#!/usr/bin/env bash
# The GPU session's one script: installs the carried wheels (benchmarks/fetch_wheels.sh), prints the machine and
# the versions, then runs the Stage 1 and Stage 2 benchmarks at real sizes within TOTAL_BUDGET seconds (default
# 480), most important first, each in its own process with its own limit (one failure does not stop the rest):
#   1. Stage 1, fast preset (Qwen3-VL-2B + Qwen2.5-1.5B), batch 1..64 vs one at a time         ~2 min
#   2. Stage 2, InstructPix2Pix (fast: 20 steps, 512 px), batch 1..32 vs one at a time         ~1 min
#   3. Stage 2, FlowEdit on SD3-medium (paper: 50 steps, n_max 33, 3.5/13.5), batch 1..32 vs one at a time
#      and the reference-like loop (batch 1, float16); every call timed at 4 and 12 edited steps and
#      extrapolated to 33, plus one batch-1 call measured at 33 to show the extrapolation error    ~1.5 min
#   4. Stage 1, paper preset (InternVL3.5-8B + Qwen3-4B), batch 1,4,16,64, only if >= 100 s are left
# Results: $OUT/summary.md (every table), $OUT/<benchmark>.json (every figure, saved after each measurement, so
# a run cut by its limit keeps what it measured) and $OUT/gpu_check.log (everything printed).
#
# From the development machine (device tool): run(command="bash benchmarks/gpu_check.sh", carry=[".whl"],
# timeout_s=570), after `bash benchmarks/fetch_wheels.sh` here.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$PWD/benchmarks/_work/gpu}"
WORK="${WORK:-/tmp/u2s_bench}"
TOTAL_BUDGET="${TOTAL_BUDGET:-480}"
mkdir -p "$OUT" "$WORK"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# fewer fragmentation OOMs after a failed large batch; peak figures count allocated tensors, so unaffected
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

START=$SECONDS
left() { echo $((TOTAL_BUDGET - (SECONDS - START))); }

bench() {  # bench NAME LIMIT_S SCRIPT ARGS...
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  echo "=== [gpu_check] $name: limit ${limit}s, $(left)s of the budget left"
  # GPU_CHECK_EXTRA: arguments appended to every benchmark (a dry run here: "--device cpu --tiny --batch-sizes 1,2")
  # shellcheck disable=SC2086
  timeout -k 10 "$limit" python3 "$@" --out "$WORK" ${GPU_CHECK_EXTRA:-}
  rc=$?
  echo "=== [gpu_check] $name: exit $rc after $((SECONDS - t0))s"
}

main() {
  echo "=== [gpu_check] $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "=== [gpu_check] no .whl/ folder: using what is installed"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  python3 - <<'PY' || return 1
import importlib.metadata as md
import sys

print("python", sys.version.split()[0])
for name in ("torch", "torchvision", "transformers", "diffusers", "accelerate", "huggingface_hub", "tokenizers", "safetensors", "numpy", "pillow", "datasets", "pyarrow", "fsspec"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
import torch

print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
# what the benchmarks import from the project (no datasets, OpenCV or ONNX Runtime needed)
import hf_unsafe2safe.editing.flowedit  # noqa: F401
import hf_unsafe2safe.inspection.vlm  # noqa: F401
print("hf_unsafe2safe Stage 1 / Stage 2 model code imports: ok")
try:
    import datasets

    print("datasets imports:", datasets.__version__)
except Exception as err:  # informational: the benchmarks do not need it
    print("datasets does not import here:", repr(err)[:300])
PY

  # identical requests: 2 images are enough for the one-at-a-time baseline
  bench stage1_fast 230 benchmarks/bench_stage1.py --preset fast --loop-images 2 --time-budget 150
  bench stage2_instruct-pix2pix 150 benchmarks/bench_stage2.py --editors instruct-pix2pix --name stage2_instruct-pix2pix --time-budget 70
  bench stage2_flowedit 200 benchmarks/bench_stage2.py --editors flowedit --name stage2_flowedit --extrapolate 4,12 --validate --time-budget 100
  if [ "$(left)" -ge 100 ]; then
    bench stage1_paper $(($(left) - 5)) benchmarks/bench_stage1.py --preset paper --batch-sizes 1,4,16,64 --loop-images 2 --time-budget $(($(left) - 60))
  else
    echo "=== [gpu_check] stage1_paper skipped: $(left)s left"
  fi

  cat "$WORK"/*.md > "$OUT/summary.md" 2>/dev/null || true
  cp "$WORK"/*.json "$OUT/" 2>/dev/null || true
  echo "=== [gpu_check] done in $((SECONDS - START))s; files in $OUT:"
  ls -l "$OUT"
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
