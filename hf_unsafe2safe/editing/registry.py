"""Stage 2's diffusion editors by name: ``build_editor`` loads the one a ``DiffusionEditorConfig`` names.

Each name maps to the module and class of its editor; only the chosen editor's module is imported. Adding an
editor is one new module (a ``DiffusionEditor`` subclass) plus one line here, and its name, default checkpoint and
recommended steps / guidance in ``config.py`` (``EDITORS``, ``DEFAULT_EDITOR_MODELS``, ``EDITOR_DEFAULTS``).
"""

from __future__ import annotations

from ..utils.registry import lookup

# diffusion.name -> (module of hf_unsafe2safe.editing, class)
EDITOR_CLASSES = {
    "instruct-pix2pix": ("instruct_pix2pix", "InstructPix2PixEditor"),
    "inpaint": ("inpaint", "InpaintEditor"),
    "flowedit": ("flowedit", "FlowEditEditor"),
    "kontext": ("kontext", "KontextEditor"),
    "qwen-image-edit": ("qwen_image_edit", "QwenImageEditEditor"),
}


def editor_class(name: str) -> type:
    """The ``DiffusionEditor`` subclass of ``name``, importing its module (and no other editor's)."""
    return lookup(EDITOR_CLASSES, name, __package__, "`diffusion.name`")


def build_editor(config, device: str):
    """The editor ``config.name`` names, its pipeline loaded on ``device``."""
    return editor_class(config.name)(config, device)
