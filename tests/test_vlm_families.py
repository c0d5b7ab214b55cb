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


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_vlm_family_batched_answers_equal_one_at_a_time(preset):
    name, family = s1.MODELS[preset]["vlm"]
    cfg = s1.model_config(name, family, tiny=True)
    torch.manual_seed(0)
    model = s1.build_model(cfg, True, "cpu", torch.float32)
    gen = ChatGenerator.from_objects(model, s1.build_processor(family, cfg, tiny=True), "cpu", vision=True)
    assert gen.tokenizer.padding_side == "left"
    inspector = VLMInspector(gen, VLMInspectorConfig(model="unused").category_list(), "relative1000", max_side=128, min_side=28, max_new_tokens=6, batch_size=3, repair=False)
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
