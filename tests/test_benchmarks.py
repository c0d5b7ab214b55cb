"""The GPU benchmarks' tiny CPU mode runs end to end (a smoke run: the figures are not checked, only that every
row was measured and the outputs were written). The scripts run in this process, so torch, transformers and
diffusers are imported once."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the benchmarks need the `models` extra")
pytest.importorskip("diffusers", reason="the benchmarks need the `models` extra")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_global_settings():
    """The scripts set one CPU thread and silence library warnings: undo that for the other tests."""
    import diffusers
    import torch
    import transformers

    threads = torch.get_num_threads()
    levels = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    yield
    torch.set_num_threads(threads)
    diffusers.utils.logging.set_verbosity(levels[0])
    transformers.utils.logging.set_verbosity(levels[1])


@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_stage1_tiny_cpu(tmp_path, preset):
    stage1 = _load("bench_stage1")
    args = ["--device", "cpu", "--tiny", "--preset", preset, "--batch-sizes", "2", "--loop-images", "1",
            "--vlm-new-tokens", "2", "--llm-new-tokens", "2", "--image-size", "64x48", "--out", str(tmp_path)]
    if preset == "paper":
        args += ["--stages", "vlm"]  # InternVL's tiled image processor; its instructor is a plain Qwen3 LM
    results = stage1.main(args)
    # the inspection prompt (taxonomy, JSON schema, box rules) is several hundred tokens before the image
    assert results["prompt_tokens"]["vlm_request"] > 400
    row = results["combined"]["rows"][0]
    assert row["batch"] == 2 and row["images_per_s"] > 0 and results["combined"]["loop_images_per_s"] > 0
    saved = json.loads((tmp_path / f"stage1_{preset}.json").read_text())
    assert saved["tiny"] is True and saved["models"]["vlm"]["config"]
    assert "TINY smoke run" in (tmp_path / f"stage1_{preset}.md").read_text()


def test_stage2_tiny_cpu(tmp_path):
    stage2 = _load("bench_stage2")
    results = stage2.main(["--device", "cpu", "--tiny", "--batch-sizes", "2", "--loop-images", "1",
                           "--extrapolate", "2,6", "--out", str(tmp_path)])
    for name in ("instruct-pix2pix", "flowedit"):
        rows = results["editors"][name]["rows"]
        assert all(not r.get("oom") and r["images_per_s"] > 0 for r in rows)
        # every call was timed at 2 and 6 work units and extrapolated to the preset's full count (or, when noise
        # hid the slope, measured at the full count)
        full = 20 if name == "instruct-pix2pix" else 33
        assert all(r["units"] == full and set(r.get("extrapolated_from") or r["extrapolation_failed"]) == {2, 6} for r in rows)
    assert [r["what"] for r in results["editors"]["flowedit"]["rows"]][-1].startswith("reference-like")
    assert (tmp_path / "stage2.json").exists() and "TINY smoke run" in (tmp_path / "stage2.md").read_text()
