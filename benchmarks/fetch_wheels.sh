#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), the wheels that the GPU machine lacks for benchmarks/gpu_check.sh.
# That machine has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, huggingface_hub 1.33, accelerate 1.15,
# tokenizers, safetensors, numpy, pillow, jinja2, torchvision, pandas, pyarrow, xxhash, fsspec, but no diffusers
# and no datasets; nothing can be downloaded there.
#   diffusers 0.42.1           Stage 2 pipelines (needs huggingface_hub >= 1.32: the machine's 1.33 does)
#   importlib_metadata 10.2.0  a declared dependency of diffusers (imported only on Python < 3.8)
#   datasets 5.2.0             the project's data layer (the benchmarks themselves do not import it)
#   dill 0.4.1, multiprocess 0.70.19   datasets' dependencies missing there
# transformers and huggingface_hub are NOT carried: the machine's transformers 5.17 requires huggingface_hub < 2,
# and the benchmarks run on 5.17 (checked here with transformers 5.17.0 + huggingface_hub 1.33.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS=(diffusers==0.42.1 importlib_metadata==10.2.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
