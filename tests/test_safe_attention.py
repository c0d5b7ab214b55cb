"""Safe cross-attention (the paper's dual-prompt editor) on a tiny random-weight InstructPix2Pix pipeline, saved and
loaded back through the real `from_pretrained` and the editor's own loading code."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tiny_models import build_tiny_instruct_pix2pix  # noqa: E402

from hf_unsafe2safe.config import DiffusionEditorConfig  # noqa: E402
from hf_unsafe2safe.editing import safe_attention as sa  # noqa: E402
from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor  # noqa: E402


def _pipeline(path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_instruct_pix2pix(str(tmp_path_factory.mktemp("ip2p")))


@pytest.fixture(scope="module")
def untrained(base, tmp_path_factory):
    """The base pipeline with fresh (untrained) safe cross-attention, saved as a pipeline folder."""
    pipe = _pipeline(base)
    sa.add_safe_attention(pipe.unet)
    out = str(tmp_path_factory.mktemp("safe-untrained"))
    sa.save_pipeline_with_safe_attention(pipe, out)
    return out


@pytest.fixture(scope="module")
def opened(untrained, tmp_path_factory):
    """The same folder with the gates opened and the caption projections moved (stands for a trained one)."""
    pipe = _pipeline(untrained)
    sa.load_safe_attention(pipe.unet, untrained + "/unet")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.unet.attn_processors.values():
            if isinstance(p, sa.SafeCrossAttentionProcessor):
                p.scale.fill_(1.0)
                p.gate_bias.fill_(2.0)
                p.caption_v_weight.add_(0.5 * torch.randn(p.caption_v_weight.shape, generator=gen))
    out = str(tmp_path_factory.mktemp("safe-opened"))
    sa.save_pipeline_with_safe_attention(pipe, out)
    return out


def _images(n=3, seed=1):
    from PIL import Image

    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 255, (48, 64, 3), np.uint8)) for _ in range(n)]


def _editor(model, **kw):
    return InstructPix2PixEditor(DiffusionEditorConfig(model=model, steps=2, max_side=64, batch_size=4, leak_check=False, **kw), "cpu")


def test_processors_go_on_cross_attention_only_and_start_as_the_instruction_branch(base):
    pipe = _pipeline(base)
    unet = pipe.unet
    x = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 154, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        single = unet(x, 10, encoder_hidden_states=context[:, :77]).sample
        layers = sa.add_safe_attention(unet)
        dual = unet(x, 10, encoder_hidden_states=context).sample
    assert layers and all(name.endswith("attn2.processor") for name in layers)
    kinds = {name: type(p).__name__ for name, p in unet.attn_processors.items()}
    assert {n for n, k in kinds.items() if k == "SafeCrossAttentionProcessor"} == set(layers)
    assert all(kinds[n] == "AttnProcessor2_0" for n in kinds if n.endswith("attn1.processor"))
    # untrained: bit for bit the single-prompt UNet, whatever the caption window holds
    assert torch.equal(single, dual)
    # the fusion weights are UNet parameters (trained with it), with their module path as key
    state = sa.safe_attention_state_dict(unet)
    assert {k.rsplit(".", 1)[0] for k in state} == set(layers)
    assert {id(p) for p in unet.parameters()} >= {id(p) for n, p in unet.named_parameters() if ".processor." in n}
    # the caption branch starts from the layer's own key/value projections
    attn = unet.get_submodule(layers[0].rsplit(".", 1)[0])
    assert torch.equal(attn.processor.caption_k_weight, attn.to_k.weight) and attn.processor.caption_k_weight.data_ptr() != attn.to_k.weight.data_ptr()
    with pytest.raises(ValueError, match="cross-attention layers only"):
        sa.SafeCrossAttentionProcessor(unet.get_submodule(layers[0].rsplit(".", 1)[0].replace("attn2", "attn1")))


def test_untrained_safe_attention_pipeline_equals_the_single_prompt_editor(base, untrained):
    """The acceptance criterion: before training, the dual-prompt editor reproduces the instruction-only editor
    exactly (pipeline output tensors and the editor's images)."""
    plain, safe = _pipeline(base), _pipeline(untrained)
    assert sa.find_safe_attention(base) is None and sa.find_safe_attention(untrained) == untrained + "/unet"
    sa.load_safe_attention(safe.unet, untrained + "/unet")
    images = [img.resize((32, 32)) for img in _images(2)]
    prompts, captions = ["make the face someone else", "blur the sign"], ["a person on a street", "a shop front"]
    kwargs = dict(image=images, num_inference_steps=2, guidance_scale=7.5, image_guidance_scale=1.5, output_type="pt")
    single = plain(prompt=prompts, generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **kwargs).images
    tok = safe.tokenizer

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        return safe.text_encoder(ids)[0]

    with torch.no_grad():
        empty = embed(["", ""])
        dual = safe(
            prompt_embeds=torch.cat([embed(prompts), embed(captions)], dim=1), negative_prompt_embeds=torch.cat([empty, empty], dim=1),
            generator=[torch.Generator().manual_seed(s) for s in (1, 2)], **kwargs,
        ).images
    assert torch.equal(single, dual)

    # the same through the editors: the folder is detected, the captions are used, the images are identical
    single_editor, safe_editor = _editor(base), _editor(untrained)
    assert not single_editor.uses_caption and single_editor.safe_attention is None
    assert safe_editor.uses_caption and safe_editor.safe_attention["layers"]
    rows = _images(3)
    a = single_editor.edit(rows, ["x", "y", "z"], [1, 2, 3])
    b = safe_editor.edit(rows, ["x", "y", "z"], [1, 2, 3], captions=["a room", "a car", "a dog"])
    assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(a, b))


def test_opened_gate_conditions_on_the_caption_batched_with_guidance(opened, untrained):
    editor = _editor(opened)
    seen = []
    editor.pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape), with_kwargs=True)
    images = _images(3)
    prompts, captions = ["make the face someone else", "x", "y"], ["a person on a street", "a room", "a car"]
    out = editor.edit(images, prompts, [1, 2, 3], captions=captions)
    # one UNet call per step for the whole batch: 3 guidance branches (text+image, image, none) x 3 rows, two windows
    assert seen[0] == (3 * 3, 2 * 77, 32) and len(seen) == 2
    alone = editor.edit([images[2]], ["y"], [3], captions=["a car"])[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(out[2], np.int16)).max() <= 1  # batch-independent
    other = editor.edit([images[2]], ["y"], [3], captions=["a dog on a beach"])[0]
    assert not np.array_equal(np.asarray(other), np.asarray(alone))  # the caption branch now matters
    untrained_edit = _editor(untrained).edit([images[2]], ["y"], [3], captions=["a car"])[0]
    assert not np.array_equal(np.asarray(untrained_edit), np.asarray(alone))  # and the loaded weights are the opened ones
    # no caption given: an empty caption window (the editor still runs)
    assert editor.edit([images[2]], ["y"], [3])[0].size == images[2].size


def test_fusion_weights_round_trip_and_a_plain_folder_stays_plain(opened):
    from safetensors.torch import load_file

    pipe = _pipeline(opened)
    config = sa.load_safe_attention(pipe.unet, opened + "/unet")
    saved = load_file(opened + "/unet/" + sa.WEIGHTS_NAME)
    assert set(saved) == set(sa.safe_attention_state_dict(pipe.unet))
    assert all(torch.equal(saved[k], v) for k, v in sa.safe_attention_state_dict(pipe.unet).items())
    assert config == json.loads(Path(opened, "unet", sa.CONFIG_NAME).read_text())
    assert config["instruction_tokens"] == 77 and config["format"] == sa.FORMAT
    # the UNet's own file is a plain UNet's: diffusers alone loads it with no unexpected key
    from diffusers import UNet2DConditionModel

    unet, info = UNet2DConditionModel.from_pretrained(opened + "/unet", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"] and not sa.has_safe_attention(unet)
    # saving restored the processors on the live UNet
    assert sa.has_safe_attention(pipe.unet)
    # half precision: the fusion weights follow the UNet's dtype
    half = InstructPix2PixEditor(DiffusionEditorConfig(model=opened, steps=1, max_side=64, dtype="bfloat16", leak_check=False), "cpu")
    assert {p.dtype for p in half.pipe.unet.parameters()} == {torch.bfloat16}
    # weights for another UNet (one more layer per block) are refused with a message
    wrong = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8,
    )
    with pytest.raises(ValueError, match="other layers"):
        sa.load_safe_attention(wrong, opened + "/unet")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(base):
    """The processors under the UNet's own gradient checkpointing: the same loss and gradients as without."""
    from diffusers import UNet2DConditionModel

    results = []
    for checkpointing in (False, True):
        unet = UNet2DConditionModel.from_pretrained(base + "/unet")
        sa.add_safe_attention(unet)
        with torch.no_grad():  # open the gates so that every branch carries gradient
            for p in unet.attn_processors.values():
                if isinstance(p, sa.SafeCrossAttentionProcessor):
                    p.scale.fill_(0.5)
        unet.train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        gen = torch.Generator().manual_seed(0)
        x, context, target = torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 154, 32, generator=gen), torch.randn(2, 4, 16, 16, generator=gen)
        loss = torch.nn.functional.mse_loss(unet(x, torch.tensor([10, 500]), encoder_hidden_states=context).sample, target)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in unet.named_parameters()}))
        assert unet.is_gradient_checkpointing == checkpointing
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and any(".processor.caption_k_weight" in n for n in grads_a)
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-7) for n in grads_a)
    assert all(grads_a[n].abs().sum() > 0 for n in grads_a if n.endswith(("processor.scale", "processor.gate_weight", "processor.caption_v_weight")))


HUB_CLIENT = """
import json, sys
from huggingface_hub import HfApi
from hf_unsafe2safe.config import DiffusionEditorConfig
from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor

api = HfApi()
found = {}
for name, folder in (("safe", sys.argv[1]), ("plain", sys.argv[2])):
    api.create_repo(f"alice/{name}-ip2p")
    api.upload_folder(repo_id=f"alice/{name}-ip2p", folder_path=folder)
    editor = InstructPix2PixEditor(DiffusionEditorConfig(model=f"alice/{name}-ip2p", steps=1, max_side=64, leak_check=False), "cpu")
    found[name] = {"safe": editor.safe_attention is not None, "uses_caption": editor.uses_caption}
print(json.dumps(found))
"""


def test_a_safe_attention_pipeline_loads_by_hub_id(opened, base, tmp_path):
    """Pushed to a Hub (the loopback test server), the folder loads by repo id with its fusion weights, which
    diffusers' own download does not fetch; a plain repo stays plain."""
    import subprocess
    import sys

    from hub_server import client_env, start_hub

    hub = start_hub({"alice": "token-alice"})
    try:
        env = client_env(hub.endpoint, "token-alice", str(tmp_path / "hf-home"))
        done = subprocess.run([sys.executable, "-c", HUB_CLIENT, opened, base], env=env, capture_output=True, text=True, timeout=300)
    finally:
        hub.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"safe": {"safe": True, "uses_caption": True}, "plain": {"safe": False, "uses_caption": False}}
