"""The VLM-judged figures (VLMScore, race): answers parsed robustly on scripted answers, and the real loading and
batched generation path on a tiny random-weight LLaVA built from config (its answers are noise: every one must be
counted as invalid, none guessed, nothing crashes)."""

import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe.evaluation.demographics import RACES, RaceMetric, parse_races
from hf_unsafe2safe.evaluation.judge import Judge, VLMJudgeConfig, VLMScoreMetric, parse_score


@pytest.mark.parametrize(
    "answer, score",
    [
        ("ANONYMIZATION_SCORE: 85", 85.0),
        ("The face was replaced.\nANONYMIZATION_SCORE: 72", 72.0),
        ("**Anonymization score**: 40/100", 40.0),
        ("anonymisation_score = 0", 0.0),
        ("ANONYMIZATION_SCORE: 55\nANONYMIZATION_SCORE: 55", 55.0),  # repeated, same value
        ('```json\n{"anonymization_score": 63}\n```', 63.0),
        ('{"score": "90"}', 90.0),
        ("100", 100.0),
        (" 37. ", 37.0),
        ("12.5", 12.5),
    ],
)
def test_scores_are_read_from_the_forms_models_use(answer, score):
    assert parse_score(answer) == (score, None)


@pytest.mark.parametrize(
    "answer, why",
    [
        ("", "empty"),
        ("ANONYMIZATION_SCORE: 150", "out of range"),
        ("ANONYMIZATION_SCORE: -5", "out of range"),
        ("ANONYMIZATION_SCORE: 20\nANONYMIZATION_SCORE: 80", "several"),
        ("ANONYMIZATION_SCORE: <an integer from 0 to 100>", "no ANONYMIZATION_SCORE"),
        ("I would say 40 or maybe 60", "no ANONYMIZATION_SCORE"),
        ('{"score": "high"}', "not a number"),
        ('{"score": true}', "not a number"),
        ('{"verdict": 50}', "without a score"),
        ("{not json", "no ANONYMIZATION_SCORE"),
    ],
)
def test_unusable_scores_are_invalid_with_the_reason(answer, why):
    score, reason = parse_score(answer)
    assert score is None and why in reason


def test_race_answers_are_parsed_with_every_category():
    assert parse_races('{"people": ["White", "middle-eastern", "INDIAN"]}') == (["White", "Middle Eastern", "Indian"], None)
    assert parse_races('Sure!\n```json\n{"people": [{"race": "Hispanic"}, {"race": "Martian"}]}\n```') == (["Hispanic", None], None)
    assert parse_races("NO_HUMAN") == ([], None) and parse_races("no human") == ([], None)
    assert parse_races('{"people": []}') == ([], None)
    for garbage in ("", "a person", '{"people": "Asian"}', '{"people": ["Asian"'):
        races, why = parse_races(garbage)
        assert races is None and why
    assert len(RACES) == 7  # all of the paper's categories, none dropped


def test_race_and_score_aggregation_on_scripted_answers():
    race = RaceMetric(Judge(None))  # no judge: the aggregation itself needs none
    assert "no VLM judge" in race.unavailable
    race.record(0, '{"people": ["White", "Black"]}', '{"people": ["Asian", "Black"]}')  # paired by order: 1 of 2 kept
    race.record(1, '{"people": ["White"]}', '{"people": ["Indian", "Other"]}')  # different counts: not paired
    race.record(2, "garbage", "NO_HUMAN")  # unparseable original: unknown, counted
    race.record(3, '{"people": ["Martian"]}', '{"people": ["Hispanic"]}')  # unknown label: not compared
    m = race.finish(seed=0)
    assert m["race_agreement"]["value"] == 0.5 and m["race_agreement"]["n"] == 2
    assert m["race_unparseable_share"]["value"] == pytest.approx(1 / 8) and m["race_unparseable_share"]["n"] == 8
    assert m["race_unparseable_share"]["invalid_examples"][0]["row"] == 2
    before, after = m["race_entropy_original"], m["race_entropy_anonymized"]
    assert before["distribution"]["White"] == 2 and before["distribution"]["Black"] == 1 and before["n"] == 3
    assert before["persons_with_unrecognized_race"] == 1
    assert after["n"] == 5 and after["value"] > before["value"]  # 5 persons over 5 categories vs 3 over 2
    assert after["value"] == pytest.approx(np.log(5) / np.log(7))  # 5 persons, one in each of 5 of the 7 categories

    score = VLMScoreMetric(Judge(None))
    for row, answer in enumerate(["ANONYMIZATION_SCORE: 80", "ANONYMIZATION_SCORE: 40", "no idea", "ANONYMIZATION_SCORE: 101"]):
        score.record(row, answer)
    s = score.finish(seed=0)
    assert s["vlm_score"]["value"] == 60.0 and s["vlm_score"]["n"] == 2
    assert s["vlm_score_invalid_share"]["value"] == 0.5 and s["vlm_score_invalid_share"]["n"] == 4
    assert [e["row"] for e in s["vlm_score_invalid_share"]["invalid_examples"]] == [2, 3]


def test_judge_config_validates_itself():
    with pytest.raises(ValueError, match="judge.model"):
        VLMJudgeConfig(model="")
    with pytest.raises(ValueError, match="judge.batch_size"):
        VLMJudgeConfig(model="x", batch_size=0)
    with pytest.raises(ValueError, match="judge.dtype"):
        VLMJudgeConfig(model="x", dtype="int4")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_models import build_tiny_vlm

    return build_tiny_vlm(str(tmp_path_factory.mktemp("judge-vlm")))


@pytest.fixture(scope="module")
def pairs():
    from skimage import data

    rng = np.random.RandomState(0)
    photos = [data.astronaut()[::8, ::8].copy(), data.chelsea()[::8, ::8].copy(), data.coffee()[::8, ::8].copy()]
    noisy = [np.clip(p + rng.normal(0, 40, p.shape), 0, 255).astype(np.uint8) for p in photos]
    original = image_dataset([encode(p, "PNG") for p in photos], name=["a", "b", "c"])
    anonymized = image_dataset([encode(p, "PNG") for p in noisy], name=["a", "b", "c"]).add_column("privacy_flag", [True, False, True])
    return original, anonymized


def test_tiny_vlm_judge_through_the_real_loading_code(tiny_vlm, pairs):
    from hf_unsafe2safe.evaluation import evaluate

    original, anonymized = pairs
    judge = VLMJudgeConfig(model=tiny_vlm, device="cpu", batch_size=2, max_side=56, score_max_new_tokens=8, race_max_new_tokens=8)
    report = evaluate(original, anonymized, metrics=["vlm_score", "race"], judge=judge)
    m = report.metrics
    # random weights answer noise: every answer counted as invalid / unknown, nothing guessed, nothing crashed
    assert m["vlm_score"]["value"] is None and m["vlm_score"]["n"] == 0 and "unavailable" not in m["vlm_score"]
    assert m["vlm_score_invalid_share"]["value"] == 1.0 and m["vlm_score_invalid_share"]["n"] == 2  # the 2 flagged pairs
    assert m["vlm_score_invalid_share"]["invalid_examples"][0]["answer"]
    assert m["race_unparseable_share"]["value"] == 1.0 and m["race_unparseable_share"]["n"] == 4  # 2 images per flagged pair
    assert m["race_entropy_anonymized"]["value"] is None and m["race_entropy_anonymized"]["n"] == 0
    assert "(local folder)" in report.models["vlm judge"] and "vlm_score_v1.txt (sha256" in m["vlm_score"]["model"]


def test_the_rubric_sees_both_images_in_one_turn(tiny_vlm, pairs):
    judge = Judge(VLMJudgeConfig(model=tiny_vlm, device="cpu", max_side=56))
    metric = VLMScoreMetric(judge)
    generator = judge.generator()
    original, anonymized = (np.asarray(ds[0]["image"].convert("RGB")) for ds in pairs)
    images = judge.images(original, anonymized)
    image_id = generator.model.config.image_token_index

    def image_tokens(conversation):
        inputs = generator.processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        return int((inputs["input_ids"] == image_id).sum())

    one = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": "x"}]}]
    assert image_tokens(metric.conversation(*images)) == 2 * image_tokens(one) > 0
    assert "ANONYMIZATION_SCORE" in metric.prompt and "90-100" in metric.prompt


def test_an_unreachable_judge_is_unavailable_with_the_reason(pairs):
    pytest.importorskip("transformers")
    from hf_unsafe2safe.evaluation import evaluate

    original, anonymized = pairs
    m = evaluate(original, anonymized, metrics=["vlm_score"], judge=VLMJudgeConfig(model="OpenGVLab/InternVL3_5-8B-HF", revision="main")).metrics
    assert m["vlm_score"]["value"] is None and "could not be loaded" in m["vlm_score"]["unavailable"]
    assert "OpenGVLab/InternVL3_5-8B-HF@main" in m["vlm_score"]["model"]


def test_vlm_judge_from_the_command_line(tiny_vlm, pairs, tmp_path):
    import json

    from hf_unsafe2safe.cli import main

    original, anonymized = pairs
    original.save_to_disk(str(tmp_path / "src"))
    anonymized.save_to_disk(str(tmp_path / "dst"))
    args = ["evaluate", "--original", str(tmp_path / "src"), "--anonymized", str(tmp_path / "dst"), "--key", "name", "--report", str(tmp_path / "r")]
    assert main(args + ["--metrics", "vlm_score", "--vlm-model", tiny_vlm, "--vlm-device", "cpu", "--vlm-max-side", "56", "--vlm-batch-size", "1"]) == 0
    figures = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]
    assert figures["vlm_score_invalid_share"]["value"] == 1.0 and figures["vlm_score_invalid_share"]["n"] == 2
    assert "Unusable model answers" in (tmp_path / "r" / "report.md").read_text()
