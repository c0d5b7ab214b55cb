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
def vlm_path(tmp_path_factory):
    return build_tiny_vlm(str(tmp_path_factory.mktemp("tiny-vlm")))


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    return build_tiny_lm(str(tmp_path_factory.mktemp("tiny-lm")))


@pytest.fixture(scope="module")
def vlm(vlm_path):
    return ChatGenerator(vlm_path, revision=None, dtype="auto", device="cpu", vision=True)


@pytest.fixture(scope="module")
def lm(lm_path):
    return ChatGenerator(lm_path, revision=None, dtype="auto", device="cpu", vision=False)


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


class ScriptedGenerator:
    """A stand-in model behind ChatGenerator's interface that answers from a script (for merge logic)."""

    vision = True

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def generate(self, conversations, max_new_tokens):
        self.calls.append(len(conversations))
        return [self.answers.pop(0) for _ in conversations]


def _lite_inspection(image_bytes):
    from hf_unsafe2safe.config import LiteInspectorConfig
    from hf_unsafe2safe.inspection.lite import LiteInspector
    from hf_unsafe2safe.inspection.templates import TemplateCaptioner
    from hf_unsafe2safe.utils.images import decode

    source = decode(image_bytes, 10**8)
    return source, LiteInspector(LiteInspectorConfig(), load_taxonomy(), TemplateCaptioner()).inspect(source)


def test_model_stage_merges_vlm_answers_with_the_detectors():
    from conftest import encode
    from skimage import data

    from hf_unsafe2safe.inspection.stage import InspectionBatch, run_inspection
    from hf_unsafe2safe.inspection.vlm import InstructionWriting, VLMInspection

    (face_src, face_ins), (plain_src, plain_ins), (bad_src, bad_ins) = (
        _lite_inspection(encode(data.astronaut())),
        _lite_inspection(encode(np.full((64, 96, 3), 120, np.uint8))),
        _lite_inspection(encode(np.full((64, 96, 3), 60, np.uint8))),
    )
    lite_face = next(r for r in face_ins.regions if r.label == "face")
    x0, y0, x1, y1 = (round(v * 1000 / 512) for v in lite_face.box)
    face_answer = {
        "private": True, "categories": ["people", "professional"],
        "review": [{"item": "name tag", "reason": "names her"}],
        "private_caption": "An astronaut named Eileen.", "public_caption": "An astronaut in an orange suit.",
        "regions": [
            {"label": "face", "category": "people", "box": [x0, y0, x1, y1]},  # same face: NMS keeps one
            {"label": "name tag", "category": "professional", "box": [600, 650, 700, 700]},
        ],
    }
    plain_answer = {"private": False, "categories": [], "review": [], "private_caption": "A grey surface.", "public_caption": "A grey surface.", "regions": []}
    vlm = ScriptedGenerator([json.dumps(face_answer), json.dumps(plain_answer), "Sorry, I can't.", "still no JSON"])
    llm = ScriptedGenerator(["Instruction: give the astronaut short grey hair, darker skin and a neutral expression", "An astronaut with short grey hair."])
    stage = [
        VLMInspection(VLMInspector(vlm, CATEGORIES, "relative1000", 1024, 28, 64, batch_size=8), load_taxonomy().ids),
        InstructionWriting(EditInstructionWriter(llm, 64, batch_size=8)),
    ]
    run_inspection(stage, InspectionBatch([face_src, plain_src, bad_src], [face_ins, plain_ins, bad_ins]))
    assert vlm.calls == [3, 1]  # one batched pass, then one repair turn for the unusable answer only
    # the VLM's categories, and text_symbols from the lite detectors (the astronaut's name tag)
    assert face_ins.flagged and face_ins.categories == ["people", "text_symbols", "professional"]
    faces = [r for r in face_ins.regions if r.category == "people"]
    # the VLM's face box and RetinaFace's overlap: merged into one box enclosing both, both sources named
    assert len(faces) == 1 and set(faces[0].source.split("+")) == {"vlm", "retinaface-mnet025"}
    assert all(a <= b for a, b in zip(faces[0].box[:2], lite_face.box[:2])) and all(a >= b for a, b in zip(faces[0].box[2:], lite_face.box[2:]))
    assert any(r.source == "vlm" and r.label == "name tag" for r in face_ins.regions)
    assert face_ins.public_caption == "An astronaut in an orange suit." and face_ins.caption_source == "vlm+llm"
    assert face_ins.edit_instruction == "give the astronaut short grey hair, darker skin and a neutral expression"
    assert face_ins.target_caption == "An astronaut with short grey hair."
    assert face_ins.review[0].item == "name tag"
    assert not plain_ins.flagged and plain_ins.caption_source == "vlm" and plain_ins.edit_instruction == ""
    assert bad_ins.flagged and "unusable VLM answer" in bad_ins.error and "Sorry, I can't." in bad_ins.error


def test_transform_with_real_tiny_models_fails_closed_on_garbage(vlm_path, lm_path):
    from conftest import encode
    from skimage import data

    from hf_unsafe2safe import Unsafe2Safe
    from hf_unsafe2safe import columns as C

    anonymize = Unsafe2Safe.from_preset(
        "lite", vlm={"model": vlm_path, "max_new_tokens": 8, "batch_size": 2}, instructor={"model": lm_path, "max_new_tokens": 8}
    )
    plain = encode(np.full((64, 96, 3), 120, np.uint8))
    batch = {"image": [{"bytes": encode(data.astronaut()[::4, ::4]), "path": None}, {"bytes": plain, "path": None}, {"bytes": b"junk", "path": None}]}
    out = anonymize(batch, rank=0)
    statuses = [a["status"] for a in out[C.ANONYMIZATION]]
    assert statuses == [C.STATUS_FALLBACK, C.STATUS_FALLBACK, C.STATUS_INVALID]
    # the plain image passes under lite, but an unusable VLM answer flags it: never published unchanged
    assert out["image"][1]["bytes"] != plain
    assert "unusable VLM answer" in out[C.ANONYMIZATION][1]["error"] and "raw answer" in out[C.ANONYMIZATION][1]["error"]
    # loaded once per process, reused by the next batch
    stages = anonymize._stages
    anonymize(batch, rank=0)
    assert anonymize._stages is stages


def test_merge_regions_never_uncovers_a_marked_pixel():
    from hf_unsafe2safe.inspection.base import Region
    from hf_unsafe2safe.inspection.vlm import merge_regions

    a = Region("face", "people", (10, 10, 50, 50), 0.9, "retinaface")
    b = Region("face", "people", (12, 8, 56, 52), 1.0, "vlm")
    c = Region("tag", "text_symbols", (12, 8, 56, 52), 0.5, "ppocr")
    d = Region("face", "people", (200, 200, 240, 240), 0.4, "retinaface")
    merged = merge_regions([a, b, c, d])
    assert [(r.category, r.box) for r in merged] == [("people", (10, 8, 56, 52)), ("text_symbols", (12, 8, 56, 52)), ("people", (200, 200, 240, 240))]
    assert merged[0].source == "vlm+retinaface"


@pytest.fixture(scope="module")
def owl_path(tmp_path_factory):
    from tiny_models import build_tiny_owlv2

    return build_tiny_owlv2(str(tmp_path_factory.mktemp("tiny-owl")))


def test_grounder_boxes_are_in_image_pixels_and_batch_independent(owl_path):
    from hf_unsafe2safe.inspection.grounding import RegionGrounder, grounding_queries

    queries = grounding_queries(["people", "text_symbols"])
    assert queries and {c for _, c in queries} == {"people", "text_symbols"}
    grounder = RegionGrounder(owl_path, None, "auto", "cpu", queries, threshold=1e-4, batch_size=3)
    images = _images()
    batched = grounder.detect(images)
    assert sum(len(r) for r in batched) > 0  # a near-zero threshold makes the random model fire
    for img, regions in zip(images, batched):
        for r in regions:
            x0, y0, x1, y1 = r.box
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
            assert (r.label, r.category) in queries and r.source == "owl"
    single = [grounder.detect([img])[0] for img in images]
    assert [[(r.box, r.label) for r in rs] for rs in single] == [[(r.box, r.label) for r in rs] for rs in batched]


def test_grounding_adds_boxes_to_flagged_rows_only(owl_path):
    from conftest import encode

    from hf_unsafe2safe.inspection.grounding import Grounding, RegionGrounder, grounding_queries
    from hf_unsafe2safe.inspection.stage import InspectionBatch, run_inspection
    from hf_unsafe2safe.inspection.vlm import VLMInspection

    (a_src, a_ins), (b_src, b_ins) = (
        _lite_inspection(encode(np.random.RandomState(1).randint(0, 255, (80, 120, 3), np.uint8))),
        _lite_inspection(encode(np.full((64, 96, 3), 120, np.uint8))),
    )
    grounder = RegionGrounder(owl_path, None, "auto", "cpu", grounding_queries(load_taxonomy().ids), threshold=1e-4, batch_size=4)
    # the random tiny detector finds some categories in image a and not others
    found = sorted({r.category for r in grounder.detect([a_src.image])[0]})
    unfound = next(c for c in load_taxonomy().ids if c not in found)
    private = {"private": True, "categories": found[:1], "review": [], "private_caption": "A man at a desk.", "public_caption": "A person at a desk.", "regions": []}
    public = {"private": False, "categories": [], "review": [], "private_caption": "A grey wall.", "public_caption": "A grey wall.", "regions": []}
    vlm = ScriptedGenerator([json.dumps(private), json.dumps(public)])
    stage = [VLMInspection(VLMInspector(vlm, CATEGORIES, "relative1000", 1024, 28, 64, 8), load_taxonomy().ids), Grounding(grounder)]
    run_inspection(stage, InspectionBatch([a_src, b_src], [a_ins, b_ins]))
    assert a_ins.flagged and any(r.source.endswith("owl") or "owl" in r.source.split("+") for r in a_ins.regions)
    assert a_ins.error is None  # located: region edits, not the whole-image fallback
    assert not b_ins.flagged and b_ins.regions == []  # grounding never flags on its own

    # a flagged category the grounder did not locate: the whole image is edited
    (c_src, c_ins) = _lite_inspection(encode(np.random.RandomState(1).randint(0, 255, (80, 120, 3), np.uint8)))
    missed = dict(private, categories=[*found[:1], unfound])
    stage = [VLMInspection(VLMInspector(ScriptedGenerator([json.dumps(missed)]), CATEGORIES, "relative1000", 1024, 28, 64, 8), load_taxonomy().ids), Grounding(grounder)]
    run_inspection(stage, InspectionBatch([c_src], [c_ins]))
    assert c_ins.error == f"flagged {unfound} without a located region: the whole image is edited"


def test_private_without_any_region_gets_the_whole_image_fallback():
    from conftest import encode

    from hf_unsafe2safe.inspection.stage import InspectionBatch, run_inspection
    from hf_unsafe2safe.inspection.vlm import VLMInspection

    src, ins = _lite_inspection(encode(np.full((64, 96, 3), 120, np.uint8)))
    private = {"private": True, "categories": ["location_time"], "review": [{"item": "a bedroom", "reason": "a private home"}],
               "private_caption": "A bedroom.", "public_caption": "A room.", "regions": []}
    stage = [VLMInspection(VLMInspector(ScriptedGenerator([json.dumps(private)]), CATEGORIES, "relative1000", 1024, 28, 64, 8), load_taxonomy().ids)]
    run_inspection(stage, InspectionBatch([src], [ins]))
    assert ins.flagged and "flagged location_time without a located region" in ins.error


def test_cli_with_local_tiny_models_and_a_clear_error_for_missing_ones(vlm_path, lm_path, tmp_path, capsys):
    import datasets
    from conftest import encode

    from hf_unsafe2safe import columns as C
    from hf_unsafe2safe.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(np.full((40, 60, 3), 90, np.uint8), "PNG"))
    (folder / "b.png").write_bytes(encode(np.full((50, 30, 3), 200, np.uint8), "PNG"))
    args = ["anonymize", str(folder), "--output", str(tmp_path / "out"), "--set", f"vlm.model={vlm_path}",
            "--set", "vlm.max_new_tokens=4", "--set", f"instructor.model={lm_path}", "--set", "instructor.max_new_tokens=4"]
    assert main(args) == 0
    safe = datasets.load_from_disk(str(tmp_path / "out"))["train"]  # no --split: every split, as a DatasetDict
    assert [a["status"] for a in safe[C.ANONYMIZATION]] == [C.STATUS_FALLBACK, C.STATUS_FALLBACK]  # garbage answers: fail closed
    assert "fallback" in capsys.readouterr().out
    # a model that is neither a local path nor in the (offline) cache: one clear line, before any row is processed
    with pytest.raises(SystemExit, match="could not load the models"):
        main(["anonymize", str(folder), "--output", str(tmp_path / "out2"), "--set", "vlm.model=nobody/no-such-model"])
    assert not (tmp_path / "out2").exists()


class _SmallMemoryGenerator(ChatGenerator):
    """The real tiny VLM on a device that runs out of memory above ``fits`` conversations per call: fault
    injection of the CUDA out-of-memory error, which cannot happen on the CPU."""

    fits = 1

    def _generate(self, conversations, max_new_tokens):
        self.calls.append(len(conversations))
        if len(conversations) > self.fits:
            raise self._torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super()._generate(conversations, max_new_tokens)


def test_out_of_memory_splits_the_generation_batch(vlm_path, vlm):
    small = _SmallMemoryGenerator(vlm_path, revision=None, dtype="auto", device="cpu", vision=True)
    small.calls = []
    convs = [[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "describe"}]}] for img in _images()]
    assert small.generate(convs, max_new_tokens=6) == vlm.generate(convs, max_new_tokens=6)
    assert small.calls == [3, 1, 2, 1, 1]
    small.fits = 0
    with pytest.raises(small._torch.cuda.OutOfMemoryError):
        small.generate(convs[:1], max_new_tokens=6)


def _scripted_transform(answers):
    """The real transform whose Stage 1 VLM answers from a script (the coverage rule is under test, not a model)."""
    from hf_unsafe2safe import Unsafe2Safe
    from hf_unsafe2safe.inspection.vlm import VLMInspection

    class Scripted(Unsafe2Safe):
        def build_component(self, name, rank=None):
            if name != "vlm":
                return super().build_component(name, rank)
            return VLMInspection(VLMInspector(ScriptedGenerator(answers), CATEGORIES, "relative1000", 1024, 28, 64, 8), load_taxonomy().ids)

    return Scripted.from_preset("lite", vlm={"model": "scripted", "repair": False})


def test_a_flagged_category_without_a_usable_box_gets_the_whole_image_fallback():
    from conftest import encode, image_dataset

    from hf_unsafe2safe import anonymize_dataset
    from hf_unsafe2safe import columns as C
    from hf_unsafe2safe.demo import gps_photo

    answer = {
        "private": True, "categories": ["people", "text_symbols"], "review": [],
        "private_caption": "Two people under a shop sign.", "public_caption": "A street.",
        "regions": [
            {"label": "people", "category": "people", "box": [100, 100, 100, 900]},  # zero width: dropped
            {"label": "sign", "category": "text_symbols", "box": [50, 50, 400, 200]},
        ],
    }
    covered = {"private": True, "categories": ["location_time"], "review": [], "private_caption": "A field.",
               "public_caption": "A field.", "regions": []}  # location_time, and the file's GPS is removed
    plain = np.full((120, 160, 3), 128, np.uint8)
    source = image_dataset([encode(plain), gps_photo(plain)])
    safe = anonymize_dataset(source, _scripted_transform([json.dumps(answer), json.dumps(covered)]), batch_size=2)
    first, second = safe[C.ANONYMIZATION]
    assert first["status"] == C.STATUS_FALLBACK and "flagged people without a located region" in first["error"]
    assert any("empty box" in note for note in first["notes"])  # the parser's note is in the row
    assert second["status"] == C.STATUS_EDITED and second["editor"] == "metadata-strip" and "exif:GPSInfo" in safe[C.METADATA_REMOVED][1]
