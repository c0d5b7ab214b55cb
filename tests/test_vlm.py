"""Stage 1 with real transformers models (tiny, random weights, saved and loaded through from_pretrained)."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import build_tiny_lm, build_tiny_vlm  # noqa: E402

from hf_unsafe2safe.inspection.vlm import ChatGenerator, EditInstructionWriter, VLMInspector, clean_instruction, fit_image  # noqa: E402
from hf_unsafe2safe.taxonomy import load_taxonomy  # noqa: E402

CATEGORIES = [(c.id, c.description) for c in load_taxonomy().categories]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    path = build_tiny_vlm(str(tmp_path_factory.mktemp("tiny-vlm")))
    return ChatGenerator(path, revision=None, dtype="auto", device="cpu", vision=True)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = build_tiny_lm(str(tmp_path_factory.mktemp("tiny-lm")))
    return ChatGenerator(path, revision=None, dtype="auto", device="cpu", vision=False)


def _images():
    from PIL import Image

    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in ((60, 80), (120, 50), (33, 200))]


def test_batched_generation_equals_one_at_a_time(vlm):
    convs = [[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "x " * (i + 1)}]}] for i, img in enumerate(_images())]
    batched = vlm.generate(convs, max_new_tokens=8)
    single = [vlm.generate([c], max_new_tokens=8)[0] for c in convs]
    assert batched == single  # left padding + greedy: batch composition does not change an answer
    assert vlm.generate(convs, max_new_tokens=8) == batched  # deterministic
    assert vlm.tokenizer.padding_side == "left"


def test_garbage_answers_fail_closed_with_raw_text_kept(vlm):
    inspector = VLMInspector(vlm, CATEGORIES, "relative1000", max_side=64, min_side=28, max_new_tokens=12, batch_size=2)
    answers = inspector.inspect(_images())
    assert len(answers) == 3
    for answer in answers:
        # random weights never produce valid JSON: unusable, raw text kept, repair attempted once
        assert answer.parsed is None
        assert answer.error and "after repair" in answer.error
        assert "---repair---" in answer.text


def test_prompt_lists_the_configured_categories(vlm):
    inspector = VLMInspector(vlm, CATEGORIES[:2] + [("weapons", "guns, knives")], "relative1000", 64, 28, 4, 4)
    assert "- weapons: guns, knives" in inspector.prompt and "- people:" in inspector.prompt
    assert "text_symbols" not in inspector.prompt
    assert "0 to 1000" in inspector.prompt


def test_absolute_boxes_are_mapped_back_to_source_pixels(vlm):
    from PIL import Image

    inspector = VLMInspector(vlm, CATEGORIES, "absolute", max_side=100, min_side=10, max_new_tokens=4, batch_size=1)
    answer = {"private": True, "categories": ["people"], "review": [], "private_caption": "a face", "public_caption": "a person",
              "regions": [{"label": "face", "category": "people", "box": [10, 20, 50, 60]}]}
    # the model saw a 100x50 copy of a 400x200 image
    shown = fit_image(Image.new("RGB", (400, 200)), 100, 10)
    assert shown.size == (100, 50)
    parsed = inspector._parse(json.dumps(answer), (400, 200), shown.size).parsed
    assert parsed.regions[0].box == (40, 80, 200, 200)


def test_fit_image_keeps_aspect_ratio():
    from PIL import Image

    assert fit_image(Image.new("RGB", (4000, 1000)), 1024, 28).size == (1024, 256)
    assert fit_image(Image.new("L", (10, 40)), 1024, 28).size == (28, 112)
    assert fit_image(Image.new("RGB", (300, 200)), 1024, 28).size == (300, 200)


def test_instruction_writer_runs_batched_on_a_text_model(lm):
    writer = EditInstructionWriter(lm, max_new_tokens=16, batch_size=2)
    captions = ["A person in an orange suit.", "Two people at a table.", "A street with a car."]
    instructions, targets = writer.write(captions, [["people"], ["people", "interactions"], ["text_symbols"]])
    assert len(instructions) == 3 and len(targets) == 3
    assert all(len(i.split()) <= 45 for i in instructions)
    again, _ = writer.write(captions, [["people"], ["people", "interactions"], ["text_symbols"]])
    assert again == instructions


def test_clean_instruction():
    text = 'Instruction: "Give the man a beard, darker skin and a calm smile"\nExplanation: ...'
    assert clean_instruction(text, 45) == "Give the man a beard, darker skin and a calm smile"
    assert len(clean_instruction("word " * 80, 45).split()) == 45
