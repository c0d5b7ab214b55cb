"""Stage 2's diffusion editors by name: ``build_editor`` loads the one a ``DiffusionEditorConfig`` names."""

from __future__ import annotations


def build_editor(config, device: str):
    from .diffusion import EDITORS, InpaintEditor, InstructPix2PixEditor, KontextEditor, QwenImageEditEditor
    from .flowedit import FlowEditEditor

    editors = {
        "instruct-pix2pix": InstructPix2PixEditor, "inpaint": InpaintEditor, "flowedit": FlowEditEditor, "kontext": KontextEditor,
        "qwen-image-edit": QwenImageEditEditor,
    }
    if config.name not in editors:
        raise ValueError(f"Got {config.name!r} for `diffusion.name`; expected one of {EDITORS}")
    return editors[config.name](config, device)
