"""The paper's Stage 1 (`paper` preset, ``vlm.passes = 2``): a flag pass for every image, a caption pass for the
flagged ones only, the image's class label in both prompts, and answers cut off at their token limit handled
explicitly (a retry with a larger budget, then fail closed with the reason in the row).

The pass logic runs on scripted answers behind the generator interface (as in test_vlm.py); cut-off detection
runs on a real tiny VLM loaded from disk through the real loading code, made never-ending with its own
``generation_config.suppress_tokens`` (the end-of-sequence token can never be chosen)."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import encode  # noqa: E402
from test_vlm import CATEGORIES, _lite_inspection  # noqa: E402
from tiny_models import build_tiny_vlm  # noqa: E402

from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.inspection.stage import InspectionBatch, run_inspection  # noqa: E402
from hf_unsafe2safe.inspection.vlm import ChatGenerator, Generated, VLMInspection, VLMInspector  # noqa: E402
from hf_unsafe2safe.taxonomy import load_taxonomy  # noqa: E402

ORDER = load_taxonomy().ids


def caption(n_regions: int = 1, **changes) -> str:
    """A caption-pass answer (JSON) with ``n_regions`` boxes: a crowd gives a long answer."""
    answer = {
        "categories": ["people"],
        "review": [{"item": "a face", "reason": "it identifies the person"}],
        "private_caption": "A man with a beard at a desk.",
        "public_caption": "A person at a desk.",
        "regions": [{"label": f"face {k}", "category": "people", "box": [10 * (k % 90), 100, 10 * (k % 90) + 9, 200]} for k in range(n_regions)],
    }
    answer.update(changes)
    return json.dumps(answer)


class WordBudgetGenerator:
    """Scripted answers behind the generator interface, one token per word: an answer longer than the budget is cut
    there and reported as cut off, as a real model's would be. Flag prompts and JSON prompts are answered from
    separate scripts; each call is recorded as (pass, rows, budget, prompt texts)."""

    vision = True

    def __init__(self, flags=(), answers=()):
        self.flags, self.answers = list(flags), list(answers)
        self.calls = []

    def generate_detailed(self, conversations, max_new_tokens):
        prompts = [conv[0]["content"][1]["text"] for conv in conversations]
        kind = "flag" if "Reply with one word only" in prompts[0] else "json"
        self.calls.append((kind, len(conversations), max_new_tokens, prompts))
        out = []
        for _ in conversations:
            words = (self.flags if kind == "flag" else self.answers).pop(0).split(" ")
            out.append(Generated(" ".join(words[:max_new_tokens]), len(words) > max_new_tokens))
        return out

    def generate(self, conversations, max_new_tokens):
        return [g.text for g in self.generate_detailed(conversations, max_new_tokens)]


def _two_pass(gen, max_new_tokens=400, **kw):
    return VLMInspector(gen, CATEGORIES, "relative1000", 1024, 28, max_new_tokens, 8, passes=2, flag_max_new_tokens=4, **kw)


def _plain(value):
    return _lite_inspection(encode(np.full((64, 96, 3), value, np.uint8)))


def test_flag_pass_for_every_image_and_caption_pass_for_the_flagged_only():
    from skimage import data

    rows = [_plain(120), _plain(60), _plain(200), _lite_inspection(encode(data.astronaut()[::4, ::4]))]
    assert [ins.flagged for _, ins in rows] == [False, False, False, True]  # the detectors found the astronaut's face
    # yes / no / unclear (fail closed) / no, but the detectors flagged it: it is edited, so it is captioned too
    gen = WordBudgetGenerator(["YES", "No.", "I cannot tell", "no"], [caption(), caption(), caption()])
    stage = [VLMInspection(_two_pass(gen), ORDER)]
    run_inspection(stage, InspectionBatch([src for src, _ in rows], [ins for _, ins in rows]))
    # one batched flag call over all rows, one batched caption call over the three flagged rows
    assert [(kind, n, budget) for kind, n, budget, _ in gen.calls] == [("flag", 4, 4), ("json", 3, 400)]
    (_, yes), (_, no), (_, unclear), (_, lite) = rows
    assert yes.flagged and yes.public_caption == "A person at a desk." and yes.caption_source == C.CAPTION_VLM
    assert "vlm: flag pass: yes" in yes.notes and yes.regions and yes.error is None
    # cleared by the flag pass: no caption pass, the template captions stay and nothing is edited
    assert not no.flagged and no.caption_source == "template" and no.public_caption and no.edit_instruction == ""
    assert "vlm: flag pass: no" in no.notes and no.regions == []
    assert unclear.flagged and any("flag pass: unclear answer 'I cannot tell'" in n and "treated as yes" in n for n in unclear.notes)
    assert lite.flagged and lite.public_caption == "A person at a desk." and "vlm: flag pass: no" in lite.notes
    assert any("flag pass said no but the caption pass named" in n for n in lite.notes)


def test_the_class_label_is_named_in_both_prompts():
    gen = WordBudgetGenerator(["yes", "yes"], [caption(), caption()])
    inspector = _two_pass(gen)
    src_a, _ = _plain(100)
    src_b, _ = _plain(150)
    answers = inspector.inspect([src_a.image, src_b.image], classes=["golden_retriever", None])
    assert all(a.parsed is not None and a.parsed.private for a in answers)
    (_, _, _, flag_prompts), (_, _, _, caption_prompts) = gen.calls
    for prompts in (flag_prompts, caption_prompts):
        assert 'labels it "golden retriever"' in prompts[0]
        assert "labels it" not in prompts[1] and "\x00" not in prompts[1]
    assert "YES or NO" in flag_prompts[0] and '"public_caption"' in caption_prompts[0] and '"private"' not in caption_prompts[0]


def test_a_cut_off_answer_is_asked_again_with_a_larger_budget():
    long = caption(n_regions=6)
    n_words = len(long.split(" "))
    gen = WordBudgetGenerator(["yes"], [long, long])
    src, _ = _plain(90)
    answer = _two_pass(gen, max_new_tokens=n_words - 10, retry_max_new_tokens=n_words + 5).inspect([src.image])[0]
    assert [(kind, budget) for kind, _, budget, _ in gen.calls] == [("flag", 4), ("json", n_words - 10), ("json", n_words + 5)]
    assert answer.parsed is not None and len(answer.parsed.regions) == 6 and not answer.truncated
    assert any(f"cut off at {n_words - 10} tokens; answered again with {n_words + 5}" in n for n in answer.parsed.notes)


def test_a_crowded_scene_beyond_the_retry_fails_closed_and_says_it_was_truncated():
    crowd = caption(n_regions=60)
    gen = WordBudgetGenerator(["yes"], [crowd, crowd])
    src, ins = _plain(90)
    stage = [VLMInspection(_two_pass(gen, max_new_tokens=100, retry_max_new_tokens=300), ORDER)]
    run_inspection(stage, InspectionBatch([src], [ins]))
    # no repair turn for a cut-off answer (it would be cut off again), no boxes guessed from half a list
    assert [(kind, budget) for kind, _, budget, _ in gen.calls] == [("flag", 4), ("json", 100), ("json", 300)]
    assert ins.flagged and ins.regions == []
    assert "answer truncated: it used all 300 new tokens without ending" in ins.error and "asked again with 300 tokens" in ins.error
    assert "vlm: answer truncated at its token limit (the whole image is edited)" in ins.notes

    # the one-pass prompt of `fast` handles it the same way; with repair off there is no second chance at all
    one = {"private": True, **json.loads(crowd)}
    gen = WordBudgetGenerator([], [json.dumps(one), json.dumps(one)])
    answer = VLMInspector(gen, CATEGORIES, "relative1000", 1024, 28, 100, 8, retry_max_new_tokens=300).inspect([src.image])[0]
    assert [budget for _, _, budget, _ in gen.calls] == [100, 300] and answer.parsed is None and answer.error.startswith("answer truncated: it used all 300")
    gen = WordBudgetGenerator([], [json.dumps(one)])
    answer = VLMInspector(gen, CATEGORIES, "relative1000", 1024, 28, 100, 8, repair=False).inspect([src.image])[0]
    assert len(gen.calls) == 1 and answer.truncated and answer.error.startswith("answer truncated: it used all 100")


def test_an_answer_complete_before_its_limit_is_used_and_noted():
    gen = WordBudgetGenerator(["yes"], [caption() + " " + "and some chatter after the object " * 20])
    src, _ = _plain(90)
    answer = _two_pass(gen, max_new_tokens=60).inspect([src.image])[0]
    assert len(gen.calls) == 2 and answer.parsed is not None and answer.truncated
    assert "the answer reached its 60-token limit after a complete JSON object" in answer.parsed.notes


def test_a_truncated_answer_in_the_transform_is_a_fallback_row_with_the_reason():
    from hf_unsafe2safe import Unsafe2Safe

    crowd = caption(n_regions=60)

    class Scripted(Unsafe2Safe):
        def build_component(self, name, rank=None):
            if name != "vlm":
                return super().build_component(name, rank)
            v = self.config.vlm
            gen = WordBudgetGenerator(["yes", "no"], [crowd, crowd])
            inspector = VLMInspector(gen, v.category_list(), v.box_format, 1024, 28, v.max_new_tokens, v.batch_size, v.repair,
                                     passes=v.passes, flag_max_new_tokens=v.flag_max_new_tokens, retry_max_new_tokens=v.retry_max_new_tokens)
            return VLMInspection(inspector, ORDER)

    anonymize = Scripted.from_preset("lite", vlm={"model": "scripted", "passes": 2, "max_new_tokens": 100, "retry_max_new_tokens": 300})
    # textured pixels (a uniform image is its own pixelation)
    crowded = encode(np.random.RandomState(3).randint(0, 255, (64, 96, 3), np.uint8), "PNG")
    empty = encode(np.full((64, 96, 3), 30, np.uint8), "PNG")
    out = anonymize({"image": [{"bytes": crowded, "path": None}, {"bytes": empty, "path": None}]})
    first, second = out[C.ANONYMIZATION]
    assert first["status"] == C.STATUS_FALLBACK and "answer truncated" in first["error"]
    assert out["image"][0]["bytes"] != crowded  # flagged: never published unchanged
    assert second["status"] == C.STATUS_PASSED and out["image"][1]["bytes"] == empty


# ---- a real tiny VLM: the generate call tells a cut-off answer from a finished one -------------------------------


@pytest.fixture(scope="module")
def never_ending(tmp_path_factory):
    """The tiny VLM saved to disk with a generation config that forbids its end-of-sequence token."""
    from transformers import AutoTokenizer, GenerationConfig

    path = build_tiny_vlm(str(tmp_path_factory.mktemp("never-ending-vlm")))
    config = GenerationConfig.from_pretrained(path)
    config.suppress_tokens = [AutoTokenizer.from_pretrained(path).eos_token_id]
    config.save_pretrained(path)
    return path


def _convs(n=2):
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (48, 64, 3), np.uint8)) for _ in range(n)]
    return [[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Describe the photo."}]}] for img in images]


def test_the_real_generator_reports_cut_off_and_finished_answers(never_ending):
    gen = ChatGenerator(never_ending, revision=None, dtype="auto", device="cpu", vision=True)
    cut = gen.generate_detailed(_convs(), max_new_tokens=5)
    assert all(g.truncated and g.text for g in cut)
    assert [g.text for g in cut] == gen.generate(_convs(), max_new_tokens=5)
    # the same model allowed nothing but its end-of-sequence token: it ends at once, nothing is cut off
    eos = gen.tokenizer.eos_token_id
    gen.model.generation_config.suppress_tokens = [i for i in range(gen.model.config.text_config.vocab_size) if i != eos]
    done = gen.generate_detailed(_convs(), max_new_tokens=5)
    assert [(g.text, g.truncated) for g in done] == [("", False), ("", False)]


def test_paper_stage1_on_a_real_model_that_never_ends_fails_closed(never_ending):
    from hf_unsafe2safe import Unsafe2Safe

    anonymize = Unsafe2Safe.from_preset(
        "lite", vlm={"model": never_ending, "passes": 2, "flag_max_new_tokens": 3, "max_new_tokens": 6, "retry_max_new_tokens": 9, "batch_size": 4}
    )
    plain = encode(np.random.RandomState(4).randint(0, 255, (64, 96, 3), np.uint8), "PNG")
    out = anonymize({"image": [{"bytes": plain, "path": None}, {"bytes": plain, "path": None}]})
    for status in out[C.ANONYMIZATION]:
        assert status["status"] == C.STATUS_FALLBACK
        # the flag answer was cut off mid-word (unclear: flagged), the caption answer twice (6, then 9 tokens)
        assert "flag pass: unclear answer" in status["error"] and "(cut off at the token limit): treated as yes" in status["error"]
        assert "answer truncated: it used all 9 new tokens without ending" in status["error"]
        assert "vlm: answer truncated at its token limit (the whole image is edited)" in status["notes"]
    assert all(image["bytes"] != plain for image in out["image"])


def test_a_classlabel_column_conditions_the_prompts_through_the_transform():
    import datasets

    from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset

    made = []

    class Scripted(Unsafe2Safe):
        def build_component(self, name, rank=None):
            if name != "vlm":
                return super().build_component(name, rank)
            v = self.config.vlm
            made.append(WordBudgetGenerator(["no", "no", "no"]))
            inspector = VLMInspector(made[-1], v.category_list(), v.box_format, 1024, 28, v.max_new_tokens, v.batch_size, passes=v.passes)
            return VLMInspection(inspector, ORDER)

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["golden_retriever", "tabby_cat"])})
    blobs = [encode(np.full((40, 60, 3), v, np.uint8), "PNG") for v in (10, 20, 30)]
    source = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in blobs], "label": [1, 0, -1]}, features=features)
    anonymize = Scripted.from_preset("lite", vlm={"model": "scripted", "passes": 2})
    safe = anonymize_dataset(source, anonymize, batch_size=3)
    assert (anonymize.config.vlm.class_column, anonymize.config.vlm.class_names) == ("label", ["golden_retriever", "tabby_cat"])
    assert anonymize.fingerprint_state()["config"]["vlm"]["class_names"] == ["golden_retriever", "tabby_cat"]
    (_, _, _, prompts), = made[-1].calls
    assert 'labels it "tabby cat"' in prompts[0] and 'labels it "golden retriever"' in prompts[1] and "labels it" not in prompts[2]
    assert [a["status"] for a in safe[C.ANONYMIZATION]] == [C.STATUS_PASSED] * 3 and safe["label"] == [1, 0, -1]

    # the one-pass prompt has no class slot: its config is left as it is
    one = Scripted.from_preset("lite", vlm={"model": "scripted"})
    one.prepare(source)
    assert (one.config.vlm.class_column, one.config.vlm.class_names) == ("auto", None)
    # a named column that is not there is a clear error
    with pytest.raises(KeyError, match="vlm.class_column"):
        Scripted.from_preset("lite", vlm={"model": "scripted", "passes": 2, "class_column": "species"}).prepare(source)


def test_the_paper_preset_says_what_it_is():
    from hf_unsafe2safe import PipelineConfig
    from hf_unsafe2safe.config import REVISIONS, paper_differences

    paper = PipelineConfig.from_preset("paper")
    v, d = paper.vlm, paper.diffusion
    assert (v.model, v.revision) == ("OpenGVLab/InternVL2_5-8B-MPO-hf", REVISIONS["OpenGVLab/InternVL2_5-8B-MPO-hf"])
    assert (v.passes, v.flag_max_new_tokens, v.max_new_tokens, v.retry_max_new_tokens, v.box_format, v.trust_remote_code) == (2, 16, 768, 1536, "auto", False)
    assert (d.name, d.dtype, d.steps, d.source_guidance, d.target_guidance, d.n_min, d.n_max, d.n_avg, d.mode) == ("flowedit", "float16", 50, 3.5, 13.5, 0, 33, 1, "regions")
    assert paper.seed == 42 and paper.instructor.model == "Qwen/Qwen3-4B-Instruct-2507"
    fast = PipelineConfig.from_preset("fast")
    assert (fast.vlm.passes, fast.vlm.box_format) == (1, "auto")

    said = "\n".join(paper_differences(paper))
    assert "stands in for the paper's InternVL2.5-8B" in said and "`diffusion.mode=global` is its exact setting" in said
    assert "FlowEdit:" not in said  # every FlowEdit setting is the paper's
    exact = PipelineConfig.from_preset("paper", diffusion={"mode": "global", "steps": 40}, vlm={"model": "org/other-vlm", "passes": 1})
    said = "\n".join(paper_differences(exact))
    assert "mode=global" not in said and "steps 40 (paper 50)" in said
    assert "org/other-vlm instead of the paper's InternVL2.5-8B" in said and "one JSON answer per image" in said

    for bad, match in (({"passes": 3}, "vlm.passes"), ({"retry_max_new_tokens": 10}, "vlm.retry_max_new_tokens"),
                       ({"flag_max_new_tokens": 0}, "vlm.flag_max_new_tokens"), ({"box_format": "xyxy"}, "vlm.box_format")):
        with pytest.raises(ValueError, match=match):
            PipelineConfig.from_preset("paper", vlm=bad)
