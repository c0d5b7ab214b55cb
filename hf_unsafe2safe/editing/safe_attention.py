"""Safe cross-attention: the paper's dual-prompt InstructPix2Pix editor as a diffusers attention processor.

The UNet's context stays what ``diffusion.dual_prompt`` feeds it, two CLIP windows ``[instruction ; caption]``
(77 tokens each). On every cross-attention layer :class:`SafeCrossAttentionProcessor` splits that context and
attends to each text with its own branch, both from the layer's one query:

- the instruction branch uses the layer's own key / value projections (``to_k`` / ``to_v``), exactly as the
  stock processor does;
- the caption branch has its own key / value projections, initialised as copies of the layer's;
- a small learned module fuses the two attention outputs, per head and per image token::

      lam = tanh(scale_h) * sigmoid(w . [o_instruction ; o_caption] + b)
      o   = o_instruction + lam * (o_caption - o_instruction)

  (``w``, ``b`` shared by the heads of a layer, ``scale_h`` one per head), then the layer's ``to_out``.

``scale`` starts at zero, so ``lam`` is exactly 0 and the untrained processor returns the instruction branch
alone: a pipeline with it gives bit for bit the single-prompt editor's output (the caption window changes
nothing until fine-tuning opens the gate; the gradient of ``scale`` is not zero, so it opens at the first step).
A context of one window (no caption) also gives the instruction branch alone.

Where the weights live: the processors are ``torch.nn.Module`` children of the UNet's ``Attention`` modules
(set with ``unet.set_attn_processor``), so ``unet.parameters()`` trains them along with the UNet, and they are
saved apart from it, in the pipeline folder's ``unet/`` next to the UNet's own files:
``safe_attention.safetensors`` (keys = their module paths in the UNet, e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.scale``) and ``safe_attention.json`` (format,
window length, layers). The UNet's own weight file stays a plain UNet's, so any diffusers code loads the folder;
:func:`find_safe_attention` / :func:`load_safe_attention` put the processors back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "safe_attention.safetensors"
CONFIG_NAME = "safe_attention.json"
FORMAT = "unsafe2safe.safe_cross_attention"
VERSION = 1


class SafeCrossAttentionProcessor(torch.nn.Module):
    """Two cross-attention branches (instruction, caption) from one query, fused by a zero-initialised gate.

    ``attn`` is the diffusers ``Attention`` module it will serve (its projections give the shapes and the
    caption branch's initial weights); ``instruction_tokens`` the length of the instruction window at the front
    of the context."""

    def __init__(self, attn, instruction_tokens: int = 77):
        super().__init__()
        if not getattr(attn, "is_cross_attention", False):
            raise ValueError("safe cross-attention goes on cross-attention layers only")
        self.instruction_tokens = int(instruction_tokens)
        self.heads = attn.heads
        head_dim = attn.to_k.out_features // attn.heads

        def copy(t):
            return None if t is None else torch.nn.Parameter(t.detach().clone())

        self.caption_k_weight, self.caption_k_bias = copy(attn.to_k.weight), copy(attn.to_k.bias)
        self.caption_v_weight, self.caption_v_bias = copy(attn.to_v.weight), copy(attn.to_v.bias)
        ref = attn.to_k.weight
        self.gate_weight = torch.nn.Parameter(torch.zeros(1, 2 * head_dim, dtype=ref.dtype, device=ref.device))
        self.gate_bias = torch.nn.Parameter(torch.zeros(1, dtype=ref.dtype, device=ref.device))
        self.scale = torch.nn.Parameter(torch.zeros(attn.heads, dtype=ref.dtype, device=ref.device))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, instruction_tokens={self.instruction_tokens}"

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("SafeCrossAttentionProcessor needs the text context (it serves cross-attention layers)")
        # 1. the same input handling as diffusers' AttnProcessor2_0 (so the instruction branch is its twin)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, context_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        # 2. split the context: [instruction window ; caption window]
        n = self.instruction_tokens
        instruction = encoder_hidden_states[:, :n] if context_length > n else encoder_hidden_states
        caption = encoder_hidden_states[:, n:] if context_length > n else None

        def branch(context, to_k, to_v, mask):
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            key, value = to_k(context), to_v(context)
            key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)

        # 3. the instruction branch: the layer's own projections, as the stock processor
        mask_i = attention_mask[..., :n] if attention_mask is not None and caption is not None else attention_mask
        out = branch(instruction, attn.to_k, attn.to_v, mask_i)
        # 4. the caption branch and the gated fusion (lam == 0 exactly while scale == 0)
        if caption is not None:
            mask_c = attention_mask[..., n:] if attention_mask is not None else None
            out_c = branch(
                caption,
                lambda x: F.linear(x, self.caption_k_weight, self.caption_k_bias),
                lambda x: F.linear(x, self.caption_v_weight, self.caption_v_bias),
                mask_c,
            )
            gate = torch.sigmoid(F.linear(torch.cat([out, out_c], dim=-1), self.gate_weight, self.gate_bias))
            lam = torch.tanh(self.scale).view(1, -1, 1, 1) * gate
            out = out + lam * (out_c - out)

        # 5. the same output handling as AttnProcessor2_0
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def cross_attention_layers(unet) -> list[str]:
    """Processor names (``unet.attn_processors`` keys) of the UNet's cross-attention layers."""
    from diffusers.models.attention_processor import Attention

    return [f"{name}.processor" for name, module in unet.named_modules() if isinstance(module, Attention) and module.is_cross_attention]


def _attention_module(unet, processor_name: str):
    return unet.get_submodule(processor_name.rsplit(".", 1)[0])


def add_safe_attention(unet, instruction_tokens: int = 77) -> list[str]:
    """Put fresh (untrained: instruction-only) safe cross-attention processors on every cross-attention layer of
    ``unet`` through ``unet.set_attn_processor``; self-attention keeps its processor. Returns the layers."""
    layers = cross_attention_layers(unet)
    if not layers:
        raise ValueError("the UNet has no cross-attention layer to give safe cross-attention")
    processors = dict(unet.attn_processors)
    for name in layers:
        processors[name] = SafeCrossAttentionProcessor(_attention_module(unet, name), instruction_tokens)
    unet.set_attn_processor(processors)
    return layers


def has_safe_attention(unet) -> bool:
    return any(isinstance(p, SafeCrossAttentionProcessor) for p in unet.attn_processors.values())


def safe_attention_state_dict(unet) -> dict:
    """The fusion weights, keyed by their module path in the UNet."""
    return {k: v for k, v in unet.state_dict().items() if ".processor." in k}


@contextlib.contextmanager
def plain_processors(unet):
    """Within the block, the safe processors are replaced by diffusers' stock one (e.g. to save a plain UNet);
    they come back, with their weights, afterwards."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = dict(unet.attn_processors)
    safe = {k for k, p in saved.items() if isinstance(p, SafeCrossAttentionProcessor)}
    unet.set_attn_processor({k: (AttnProcessor2_0() if k in safe else p) for k, p in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def save_safe_attention(unet, folder: str) -> None:
    """Write the fusion weights and their config into ``folder`` (a pipeline's ``unet/``)."""
    from safetensors.torch import save_file

    processors = {k: p for k, p in unet.attn_processors.items() if isinstance(p, SafeCrossAttentionProcessor)}
    if not processors:
        raise ValueError("the UNet has no safe cross-attention processor to save")
    lengths = {p.instruction_tokens for p in processors.values()}
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in safe_attention_state_dict(unet).items()}, os.path.join(folder, WEIGHTS_NAME))
    config = {
        "format": FORMAT, "version": VERSION, "instruction_tokens": lengths.pop(), "layers": sorted(processors),
        "fusion": "o = o_instruction + tanh(scale_h) * sigmoid(w . [o_instruction ; o_caption] + b) * (o_caption - o_instruction)",
        "context": "[instruction window ; public caption window] (CLIP, model_max_length tokens each)",
    }
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)


def save_pipeline_with_safe_attention(pipe, output: str) -> None:
    """``pipe.save_pretrained(output)`` with the UNet saved plain and the fusion weights next to it in ``unet/``."""
    with plain_processors(pipe.unet):
        pipe.save_pretrained(output)
    save_safe_attention(pipe.unet, os.path.join(output, "unet"))


def find_safe_attention(model: str, revision: str | None = None) -> str | None:
    """The folder holding a pipeline's fusion weights (its ``unet/``), or None for a plain pipeline. ``model`` is
    a local pipeline folder or a Hub id (``from_pretrained`` does not fetch these files, so they are fetched here:
    from the cache when it knows them, else one request, recorded in the cache either way)."""
    if os.path.isdir(model):
        local = os.path.join(model, "unet")
        return local if os.path.isfile(os.path.join(local, CONFIG_NAME)) else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    try:
        cached = try_to_load_from_cache(model, f"unet/{CONFIG_NAME}", revision=revision)
        if cached is not None and not isinstance(cached, str):  # the cache knows the repo has no such file
            return None
        config = cached if isinstance(cached, str) else hf_hub_download(model, f"unet/{CONFIG_NAME}", revision=revision)
    except EntryNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - offline, no such repo: the pipeline loaded, so it is a plain one here
        logger.info("could not look for safe cross-attention weights in %r (%s); loading it as a plain pipeline", model, err)
        return None
    hf_hub_download(model, f"unet/{WEIGHTS_NAME}", revision=revision)  # next to the config in the same snapshot
    return os.path.dirname(config)


def load_safe_attention(unet, folder: str) -> dict:
    """Install safe cross-attention on ``unet`` with the weights saved in ``folder``; returns its config."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, CONFIG_NAME)) as f:
        config = json.load(f)
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"{os.path.join(folder, CONFIG_NAME)} is not a safe cross-attention config this version reads (format {config.get('format')!r}, version {config.get('version')!r})")
    layers = add_safe_attention(unet, config["instruction_tokens"])
    if sorted(layers) != sorted(config["layers"]):
        raise ValueError(f"the safe cross-attention weights in {folder} were made for other layers than this UNet's")
    ref = next(unet.parameters())
    state = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in load_file(os.path.join(folder, WEIGHTS_NAME)).items()}
    expected = set(safe_attention_state_dict(unet))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{os.path.join(folder, WEIGHTS_NAME)} does not match the UNet: missing {missing[:3]}, unexpected {extra[:3]}")
    unet.load_state_dict(state, strict=False)
    return config
