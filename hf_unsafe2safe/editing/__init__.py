"""Stage 2: rewrite only the sensitive regions found by Stage 1.

Where each piece lives:
- ``stage``: Stage 2 as an ordered list of components (diffusion editor -> compositor -> leak check -> region
  editor -> whole-image fallback) under one fail-closed rule;
- ``lite``: ``RegionEditor``, the classical region edits of the lite preset (pixelate, blur, fill, inpaint) and the
  whole-image fallback of the fail-closed rule;
- ``base``: ``DiffusionEditor``, what every ``diffusers`` editor is (loading, dtype, LoRA, attention backend,
  compile, batching by working size, out-of-memory split, per-row generators), and ``PackedLatentEditor``, the
  shared part of the editors with 2x2-packed latents;
- one module per diffusion editor: ``instruct_pix2pix`` (with the paper's dual prompt), ``inpaint``, ``flowedit``,
  ``kontext``, ``qwen_image_edit``;
- ``registry``: ``build_editor``, the editor a ``DiffusionEditorConfig`` names (its defaults live in ``config``);
- ``safe_attention``: the dual-prompt safe cross-attention processor, saved and loaded beside a UNet;
- ``compositing``: the working size, the blend mask of the regions, the composite of an edit into the source and
  the checks of the result;
- ``leaks``: the identity and text checks of every diffusion-edited region.
"""

from .lite import RegionEditor

__all__ = ["RegionEditor"]
