"""Stage 2 with diffusers: a tiny random-weight InstructPix2Pix pipeline saved and loaded via from_pretrained."""

import io

import numpy as np
import pytest

pytest.importorskip("diffusers")

from conftest import encode  # noqa: E402
from imagegen import assert_rewritten_only_inside_regions  # noqa: E402
from tiny_models import build_tiny_instruct_pix2pix  # noqa: E402

from hf_unsafe2safe import Unsafe2Safe  # noqa: E402
from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.config import DiffusionEditorConfig  # noqa: E402
from hf_unsafe2safe.editing.compositing import region_mask, working_size  # noqa: E402
from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor  # noqa: E402
from hf_unsafe2safe.editing.stage import DiffusionEdit  # noqa: E402


@pytest.fixture(scope="module")
def ip2p_path(tmp_path_factory):
    return build_tiny_instruct_pix2pix(str(tmp_path_factory.mktemp("tiny-ip2p")))


@pytest.fixture(scope="module")
def editor(ip2p_path):
    return InstructPix2PixEditor(DiffusionEditorConfig(model=ip2p_path, steps=2, max_side=64, batch_size=4), "cpu")


def _pil(data):
    from PIL import Image

    return Image.open(io.BytesIO(data))


def test_working_size_keeps_aspect_and_snaps():
    assert working_size((640, 480), 512, 8) == (512, 384)
    assert working_size((1000, 333), 512, 16) == (512, 176)
    assert working_size((30, 20), 512, 8) == (32, 24)


def test_outputs_come_back_at_source_size_and_do_not_depend_on_the_batch(editor):
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in ((48, 64), (100, 50), (48, 64))]
    out = editor.edit(images, ["make it blue", "x", "y"], [1, 2, 3])
    assert [o.size for o in out] == [im.size for im in images]
    alone = editor.edit([images[2]], ["y"], [3])[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(out[2], np.int16)).max() <= 1  # float noise only
    other_seed = editor.edit([images[2]], ["y"], [4])[0]
    assert not np.array_equal(np.asarray(other_seed), np.asarray(alone))


def test_region_mask_is_one_inside_and_zero_far_away():
    from hf_unsafe2safe.inspection.base import Region

    weight = region_mask((100, 80), [Region("face", "people", (20, 20, 40, 40), 1.0, "x")], dilation=0.0, feather=3)
    assert weight[20:40, 20:40].min() == 1.0
    assert weight[:16].max() == 0.0 and weight[45:].max() == 0.0
    assert 0 < weight[18, 30] < 1  # the feather ramp


def test_transform_edits_regions_with_the_diffusion_editor_only(ip2p_path):
    from skimage import data

    anonymize = Unsafe2Safe.from_preset("lite", diffusion={"model": ip2p_path, "steps": 2, "max_side": 64})
    face = encode(data.astronaut()[::4, ::4], "PNG")
    plain = encode(np.full((40, 60, 3), 120, np.uint8), "PNG")
    out = anonymize({"image": [{"bytes": face, "path": None}, {"bytes": plain, "path": None}]})
    status = out[C.ANONYMIZATION][0]
    assert status["status"] == C.STATUS_EDITED and status["editor"].startswith("instruct-pix2pix")
    assert out["image"][1]["bytes"] == plain  # unflagged rows never reach the editor
    assert_rewritten_only_inside_regions(face, out, 0, anonymize.config.editor)


class _CrashingEditor:
    name = "instruct-pix2pix"
    uses_mask = False
    uses_source_prompt = False

    def edit(self, images, prompts, seeds):
        raise RuntimeError("CUDA out of memory (simulated)")


class _CrashingPipeline(Unsafe2Safe):
    """A diffusion editor that fails, plugged in through the build_component hook: fault injection."""

    def build_component(self, name, rank=None):
        if name == "diffusion":
            return DiffusionEdit(_CrashingEditor(), self.config.diffusion, self.config.editor)
        return super().build_component(name, rank)


def test_a_failing_diffusion_editor_falls_back_to_the_lite_region_edit():
    from skimage import data

    anonymize = _CrashingPipeline.from_preset("lite", diffusion={"model": "unused", "steps": 2})
    face = encode(data.astronaut()[::4, ::4], "PNG")
    out = anonymize({"image": [{"bytes": face, "path": None}]})
    status = out[C.ANONYMIZATION][0]
    assert status["status"] == C.STATUS_EDITED and status["editor"] == "lite"
    assert "out of memory" in status["error"]
    assert out["image"][0]["bytes"] != face


def test_cli_editor_option_runs_the_diffusion_editor(ip2p_path, tmp_path, capsys):
    import datasets
    from skimage import data

    from hf_unsafe2safe.cli import main

    with pytest.raises(SystemExit):
        main(["anonymize", "--help"])
    help_text = capsys.readouterr().out
    assert "--editor" in help_text and all(name in help_text for name in ("instruct-pix2pix", "inpaint", "flowedit", "kontext", "qwen-image-edit", "lite:"))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "face.png").write_bytes(encode(data.astronaut()[::4, ::4], "PNG"))
    args = ["anonymize", str(folder), "-o", str(tmp_path / "out"), "--split", "train", "--editor", "instruct-pix2pix",
            "--set", f"diffusion.model={ip2p_path}", "--set", "diffusion.steps=2", "--set", "diffusion.max_side=64"]
    assert main(args) == 0
    row = datasets.load_from_disk(str(tmp_path / "out"))[0]
    assert row[C.ANONYMIZATION]["editor"].startswith("instruct-pix2pix")


def test_global_mode_rewrites_the_whole_image(ip2p_path):
    from skimage import data

    anonymize = Unsafe2Safe.from_preset("lite", diffusion={"model": ip2p_path, "steps": 2, "max_side": 64, "mode": "global"})
    face = encode(data.astronaut()[::4, ::4], "PNG")
    out = anonymize({"image": [{"bytes": face, "path": None}]})
    before, after = np.asarray(_pil(face).convert("RGB"), np.int16), np.asarray(_pil(out["image"][0]["bytes"]).convert("RGB"), np.int16)
    assert (np.abs(before - after).sum(axis=2) > 0).mean() > 0.9  # nearly every pixel rewritten, as in the paper


def test_inpaint_editor_repaints_the_region_masks(tmp_path):
    from skimage import data
    from tiny_models import build_tiny_inpaint

    path = build_tiny_inpaint(str(tmp_path / "inpaint"))
    anonymize = Unsafe2Safe.from_preset("lite", diffusion={"name": "inpaint", "model": path, "steps": 2, "max_side": 64})
    face = encode(data.astronaut()[::4, ::4], "PNG")
    out = anonymize({"image": [{"bytes": face, "path": None}]})
    assert out[C.ANONYMIZATION][0]["editor"].startswith("inpaint")
    assert anonymize.component("diffusion").editor.pipe.__class__.__name__ == "StableDiffusionInpaintPipeline"
    assert_rewritten_only_inside_regions(face, out, 0, anonymize.config.editor)


def test_kontext_editor_keeps_sizes_seeds_and_regions(tmp_path):
    from PIL import Image
    from skimage import data
    from tiny_models import build_tiny_kontext

    from hf_unsafe2safe.editing.kontext import KontextEditor

    path = build_tiny_kontext(str(tmp_path / "kontext"))
    config = DiffusionEditorConfig(name="kontext", model=path, steps=2, max_side=64)
    assert (config.steps, config.guidance_scale) == (2, 2.5)  # guidance: Kontext's own default
    kontext = KontextEditor(config, "cpu")
    assert kontext.pipe.__class__.__name__ == "FluxKontextPipeline" and kontext.multiple == 4
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in ((48, 64), (100, 50), (48, 64))]
    out = kontext.edit(images, ["make it blue", "x", "y"], [1, 2, 3])
    assert [o.size for o in out] == [im.size for im in images]
    alone = kontext.edit([images[2]], ["y"], [3])[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(out[2], np.int16)).max() <= 1

    # attention through another diffusers backend: the same edit up to float noise; an unknown one fails at load
    math = KontextEditor(DiffusionEditorConfig(name="kontext", model=path, steps=2, max_side=64, attention_backend="_native_math"), "cpu")
    assert np.abs(np.asarray(math.edit([images[2]], ["y"], [3])[0], np.int16) - np.asarray(alone, np.int16)).max() <= 2
    with pytest.raises(ValueError, match="must be one of"):
        KontextEditor(DiffusionEditorConfig(name="kontext", model=path, steps=2, attention_backend="nonsense"), "cpu")

    anonymize = Unsafe2Safe.from_preset("lite", diffusion={"name": "kontext", "model": path, "steps": 2, "max_side": 64})
    face = encode(data.astronaut()[::4, ::4], "PNG")
    result = anonymize({"image": [{"bytes": face, "path": None}]})
    assert result[C.ANONYMIZATION][0]["editor"].startswith("kontext")
    assert_rewritten_only_inside_regions(face, result, 0, anonymize.config.editor)


def test_qwen_image_edit_editor_keeps_sizes_seeds_and_regions(tmp_path):
    """The real editor class on a tiny pipeline built in memory (its Qwen2-VL processor cannot go through
    from_pretrained without torchvision); only ``load_pipeline`` is replaced."""
    from PIL import Image
    from skimage import data
    from tiny_models import build_tiny_qwen_image_edit

    from hf_unsafe2safe.editing.qwen_image_edit import QwenImageEditEditor

    # the real loading path: QwenImageEditPipeline.from_pretrained, which names the folder it cannot find
    with pytest.raises((OSError, ValueError), match="no-such-model"):
        QwenImageEditEditor(DiffusionEditorConfig(name="qwen-image-edit", model=str(tmp_path / "no-such-model")), "cpu")

    class InMemoryQwenImageEdit(QwenImageEditEditor):
        def load_pipeline(self, config, dtype):
            return build_tiny_qwen_image_edit()  # float32, what pick_dtype gives on a CPU

    config = DiffusionEditorConfig(name="qwen-image-edit", model="in-memory", steps=2, max_side=64)
    assert config.guidance_scale == 4.0  # true CFG, the model card's value
    qwen = InMemoryQwenImageEdit(config, "cpu")
    pipe = qwen.pipe
    assert pipe.__class__.__name__ == "QwenImageEditPipeline" and qwen.multiple == 16
    # the pipeline drops the system prompt's hidden states by count: the tokenizer gives it Qwen's 64 tokens
    system = pipe.prompt_template_encode.split("<|vision_start|>")[0]
    assert len(pipe.tokenizer(system).input_ids) == pipe.prompt_template_encode_start_idx

    rng = np.random.RandomState(0)
    a, b = (Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in ((48, 64), (100, 50)))
    prompts = ["make the car blue", "blur the text", "make the car blue"]
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    out = qwen.edit([a, b, a], prompts, [1, 2, 3])
    hook.remove()
    assert sorted(set(batches)) == [1, 2]  # rows 0 and 2 share a bucket and go in one call, row 1 alone
    assert len(batches) == 2 * 2 * 2  # 2 calls x 2 steps x (conditional + negative-prompt pass): true CFG is on
    assert [o.size for o in out] == [(64, 48), (50, 100), (64, 48)]
    alone = qwen.edit([a], prompts[2:], [3])[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(out[2], np.int16)).max() <= 1
    # another seed, another edit (random weights move it little, but far beyond the batching noise above)
    assert np.abs(np.asarray(out[0], np.int16) - np.asarray(out[2], np.int16)).mean() > 0.5

    class QwenImageEditTransform(Unsafe2Safe):
        def build_component(self, name, rank=None):
            if name == "diffusion":
                return DiffusionEdit(qwen, self.config.diffusion, self.config.editor)
            return super().build_component(name, rank)

    anonymize = QwenImageEditTransform.from_preset("lite", diffusion={"name": "qwen-image-edit", "model": "in-memory", "steps": 2, "max_side": 64})
    face = encode(data.astronaut()[::4, ::4], "PNG")
    result = anonymize({"image": [{"bytes": face, "path": None}]})
    assert result[C.ANONYMIZATION][0]["editor"].startswith("qwen-image-edit")
    assert_rewritten_only_inside_regions(face, result, 0, anonymize.config.editor)


def test_speed_options_are_validated():
    with pytest.raises(ValueError, match="diffusion.compile"):
        DiffusionEditorConfig(compile="fast")
    with pytest.raises(ValueError, match="diffusion.attention_backend"):
        DiffusionEditorConfig(name="instruct-pix2pix", attention_backend="flash")
    assert DiffusionEditorConfig(name="kontext", attention_backend="flash", compile="max-autotune").compile == "max-autotune"
    assert DiffusionEditorConfig(name="qwen-image-edit", attention_backend="flash").attention_backend == "flash"


def test_dual_prompt_conditions_on_instruction_and_caption(ip2p_path):
    from PIL import Image

    dual = InstructPix2PixEditor(DiffusionEditorConfig(model=ip2p_path, steps=2, max_side=64, batch_size=4, dual_prompt=True), "cpu")
    assert dual.uses_caption
    seen = []
    dual.pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].shape), with_kwargs=True)
    rng = np.random.RandomState(1)
    images = [Image.fromarray(rng.randint(0, 255, (48, 64, 3), np.uint8)) for _ in range(3)]
    prompts, captions = ["make the face someone else", "x", "y"], ["a person on a street", "a room", "a car"]
    out = dual.edit(images, prompts, [1, 2, 3], captions=captions)
    assert seen[0][0] == 3 * 3 and seen[0][1] == 2 * dual.pipe.tokenizer.model_max_length  # 3 guidance branches x 3 rows; two windows
    alone = dual.edit([images[2]], ["y"], [3], captions=["a car"])[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(out[2], np.int16)).max() <= 1  # batch-independent
    other = dual.edit([images[2]], ["y"], [3], captions=["a dog on a beach"])[0]
    assert not np.array_equal(np.asarray(other), np.asarray(alone))  # the caption really conditions the edit
    with pytest.raises(ValueError, match="diffusion.dual_prompt"):
        DiffusionEditorConfig(name="kontext", dual_prompt=True)

    anonymize = Unsafe2Safe.from_preset("lite", diffusion={"model": ip2p_path, "steps": 2, "max_side": 64, "dual_prompt": True})
    from skimage import data

    result = anonymize({"image": [{"bytes": encode(data.astronaut()[::4, ::4], "PNG"), "path": None}]})
    assert result[C.ANONYMIZATION][0]["editor"].startswith("instruct-pix2pix")


class _SmallMemoryEditor(InstructPix2PixEditor):
    """The real editor on a device that runs out of memory above ``fits`` rows per call: fault injection of the
    CUDA out-of-memory error, which cannot happen on the CPU."""

    fits = 1

    def _call(self, prompts, images, masks, size, generators, sources, captions):
        self.calls.append(len(prompts))
        if len(prompts) > self.fits:
            raise self._torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super()._call(prompts, images, masks, size, generators, sources, captions)


def test_out_of_memory_splits_the_batch_and_gives_the_same_rows(ip2p_path, editor):
    from PIL import Image

    small = _SmallMemoryEditor(DiffusionEditorConfig(model=ip2p_path, steps=2, max_side=64, batch_size=4), "cpu")
    small.calls = []
    rng = np.random.RandomState(2)
    images = [Image.fromarray(rng.randint(0, 255, (48, 64, 3), np.uint8)) for _ in range(3)]
    out = small.edit(images, ["a", "b", "c"], [5, 6, 7])
    assert small.calls == [3, 1, 2, 1, 1]  # 3 -> 1 + 2 -> 1 + 1
    whole = editor.edit(images, ["a", "b", "c"], [5, 6, 7])  # the same model with memory to spare
    for a, b in zip(out, whole):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    small.fits = 0
    with pytest.raises(small._torch.cuda.OutOfMemoryError):  # a single row that does not fit: the error stands
        small.edit(images[:1], ["a"], [5])
