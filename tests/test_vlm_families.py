"""The preset VLM families (Qwen3-VL of `fast`, InternVL3.5-HF of `paper`) through the project's batched
ChatGenerator / VLMInspector: tiny random-weight models built from the real configs shipped in
benchmarks/configs (widths and depths shrunk, vocabularies, special token ids and image policies kept).

Their processors are built in memory with no video processor: transformers 5.24 refuses to build a video
processor without torchvision, which these CPU machines lack (the models and image processors are the real
ones). Loading through ``from_pretrained`` is covered by the LLaVA tests in test_vlm.py.
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_stage1 as s1  # noqa: E402

from hf_unsafe2safe.inspection.vlm import ChatGenerator, VLMInspector, fit_image  # noqa: E402
from hf_unsafe2safe.config import VLMInspectorConfig  # noqa: E402


def _images():
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    return [photo.resize((96, 96)), photo.crop((0, 0, 512, 256)).resize((160, 80)), photo.resize((64, 112))]


@pytest.mark.parametrize("preset, passes", [("fast", 1), ("paper", 2)])
def test_vlm_family_batched_answers_equal_one_at_a_time(preset, passes):
    name, family = s1.MODELS[preset]["vlm"]
    cfg = s1.model_config(name, family, tiny=True)
    torch.manual_seed(0)
    model = s1.build_model(cfg, True, "cpu", torch.float32)
    gen = ChatGenerator.from_objects(model, s1.build_processor(family, cfg, tiny=True), "cpu", vision=True)
    assert gen.tokenizer.padding_side == "left"
    inspector = VLMInspector(gen, VLMInspectorConfig(model="unused").category_list(), "auto", max_side=128, min_side=28, max_new_tokens=6, batch_size=3, repair=False,
                             passes=passes, flag_max_new_tokens=3)
    assert inspector.box_format == "relative1000"  # Qwen3-VL and InternVL: 0-1000 relative
    images = _images()
    lengths = {s1.prompt_tokens(gen, inspector._conversation(fit_image(img, 128, 28))) for img in images}
    assert len(lengths) > 1  # the batch is really padded: image token counts differ
    batched = inspector.inspect(images)
    inspector.batch_size = 1
    alone = inspector.inspect(images)
    assert [a.text for a in batched] == [a.text for a in alone]
    assert all(a.parsed is None and a.error for a in batched)  # random weights: unusable answers, reported


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_instructor_family_batched_equals_one_at_a_time(preset):
    from hf_unsafe2safe.inspection.vlm import EditInstructionWriter

    name, family = s1.MODELS[preset]["instructor"]
    cfg = s1.model_config(name, family, tiny=True)
    torch.manual_seed(0)
    gen = ChatGenerator.from_objects(s1.build_model(cfg, False, "cpu", torch.float32), s1.build_processor(family, cfg, tiny=True), "cpu", vision=False)
    captions = s1.CAPTIONS[:3]
    categories = s1.CATEGORIES[:3]
    writer = EditInstructionWriter(gen, max_new_tokens=6, batch_size=3, target_caption=True)
    batched = writer.write(captions, categories)
    writer.batch_size = 1
    assert writer.write(captions, categories) == batched
    assert len(batched[0]) == len(batched[1]) == 3


# ---- boxes: the box format of each family, and absolute boxes mapped through the processor's real resize -------

# family -> how its makers say it writes boxes (sources listed at inspection/vlm.py FAMILY_BOX_FORMATS)
FAMILY_BOXES = {"qwen2_vl": "relative1000", "qwen2_5_vl": "absolute", "qwen3_vl": "relative1000", "internvl": "relative1000"}
_GENERATORS = {}


class _Answering(ChatGenerator):
    """The real model and processor of a family (model type, image processor) whose answer is set by the test: the
    box mapping is under test, not what random weights say."""

    answer = ""

    def _generate(self, conversations, max_new_tokens):
        from hf_unsafe2safe.inspection.vlm import Generated

        return [Generated(self.answer) for _ in conversations]


def _family_generator(family):
    if family not in _GENERATORS:
        torch.manual_seed(0)
        if family in ("qwen2_vl", "qwen2_5_vl"):
            from tiny_models import build_tiny_qwen_vl

            model, processor = build_tiny_qwen_vl(family)
        else:
            name, _ = s1.MODELS["fast" if family == "qwen3_vl" else "paper"]["vlm"]
            cfg = s1.model_config(name, family, tiny=True)
            model, processor = s1.build_model(cfg, True, "cpu", torch.float32), s1.build_processor(family, cfg, tiny=True)
        _GENERATORS[family] = _Answering.from_objects(model, processor, "cpu", vision=True)
    return _GENERATORS[family]


def _model_frame(family, shown):
    """(width, height) the model's absolute boxes refer to, worked out here with transformers' own ``smart_resize``
    and the family's published pixel limits (the code under test asks the processor for image_grid_thw instead)."""
    from tiny_models import QWEN2_VL_IMAGES as p
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    h, w = smart_resize(shown.height, shown.width, factor=p["patch_size"] * p["merge_size"], min_pixels=p["min_pixels"], max_pixels=p["max_pixels"])
    return w, h


@pytest.mark.parametrize("family", sorted(FAMILY_BOXES))
@pytest.mark.parametrize("size", [(1024, 683), (3000, 200)])
def test_a_box_on_a_known_object_lands_on_it(family, size):
    import json
    import math

    import numpy as np
    from PIL import Image

    gen = _family_generator(family)
    assert gen.model_type == family
    inspector = VLMInspector(gen, VLMInspectorConfig(model="unused").category_list(), "auto", max_side=1024, min_side=28, max_new_tokens=64, batch_size=1, repair=False)
    assert inspector.box_format == FAMILY_BOXES[family]  # `auto` follows the family's convention
    w, h = size
    shown = fit_image(Image.new("RGB", size), 1024, 28)
    if inspector.box_format == "absolute":
        fw, fh = _model_frame(family, shown)
        assert (fw, fh) != shown.size  # the processor really resized what it was given
        box = [round(0.40 * fw), round(0.25 * fh), round(0.55 * fw), round(0.75 * fh)]
        exact = (box[0] * w / fw, box[1] * h / fh, box[2] * w / fw, box[3] * h / fh)
        # mapping through the pre-resize size (the former behaviour) misses the object by several pixels
        before = box[3] * h / shown.height
        assert abs(before - exact[3]) > 5
    else:
        box = [400, 250, 550, 750]
        exact = (box[0] * w / 1000, box[1] * h / 1000, box[2] * w / 1000, box[3] * h / 1000)
    # a known object: a white rectangle where the model's box points, in a black image
    obj = tuple(int(round(v)) for v in exact)
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[obj[1] : obj[3], obj[0] : obj[2]] = 255
    gen.answer = json.dumps({"private": True, "categories": ["people"], "review": [], "private_caption": "a face", "public_caption": "a person",
                             "regions": [{"label": "face", "category": "people", "box": box}]})
    answer = inspector.inspect([Image.fromarray(pixels)])[0]
    got = answer.parsed.regions[0].box
    assert all(abs(g - o) <= 1 for g, o in zip(got, obj)), (got, obj)
    ys, xs = np.nonzero(pixels[..., 0])
    assert got[0] <= xs.min() + 1 and got[1] <= ys.min() + 1 and got[2] >= xs.max() and got[3] >= ys.max()
    assert math.isclose(xs.max() + 1 - xs.min(), got[2] - got[0], abs_tol=2) and math.isclose(ys.max() + 1 - ys.min(), got[3] - got[1], abs_tol=2)


def test_an_explicit_box_format_wins_over_the_family():
    gen = _family_generator("qwen2_5_vl")
    cats = VLMInspectorConfig(model="unused").category_list()
    assert VLMInspector(gen, cats, "relative1000", 1024, 28, 8, 1).box_format == "relative1000"
    assert "0 to 1000" in VLMInspector(gen, cats, "relative1000", 1024, 28, 8, 1).prompt
    assert "in pixels of the image you see" in VLMInspector(gen, cats, "auto", 1024, 28, 8, 1).prompt
