"""The GPU benchmarks' tiny CPU mode runs end to end (a smoke run: the figures are not checked, only that every
row was measured and the outputs were written). The scripts run in this process, so torch, transformers and
diffusers are imported once. Also: the ground truth of bench_lite_cli.py's composites lies on what was drawn."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def _restore_global_settings():
    """The GPU scripts need the `models` extra; they set one CPU thread and silence library warnings: undo that for
    the other tests."""
    pytest.importorskip("transformers", reason="the benchmarks need the `models` extra")
    pytest.importorskip("diffusers", reason="the benchmarks need the `models` extra")
    import diffusers
    import torch
    import transformers

    threads = torch.get_num_threads()
    levels = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    yield
    torch.set_num_threads(threads)
    diffusers.utils.logging.set_verbosity(levels[0])
    transformers.utils.logging.set_verbosity(levels[1])


@pytest.mark.usefixtures("_restore_global_settings")
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


@pytest.mark.usefixtures("_restore_global_settings")
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


def test_lite_cli_composites_ground_truth(tmp_path):
    """bench_lite_cli.py's labelled composites: every box lies on what was drawn. A pasted head equals the canvas at
    its paste box and holds its face box; a text box is exactly the ink of its line on its panel, at the cap height
    recorded; a plate box is dark ink inside the white plate of the pasted demo car; pasted items never overlap."""
    import numpy as np
    from PIL import Image, ImageFont
    from skimage import data

    from hf_unsafe2safe.demo import car_plate

    bench = _load("bench_lite_cli")
    lanczos = Image.Resampling.LANCZOS
    kinds = {}
    for i in range(6):  # every background once; the car on odd images
        img, truth = bench.compose(i)
        canvas = np.asarray(img)
        w, h = img.size
        assert 1024 <= max(w, h) <= 2048 and truth["skipped"] == 0
        pasted = []
        for item in truth["items"]:
            kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
            x0, y0, x1, y1 = item["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, item
            if "paste_box" not in item:  # the background's own face (astronaut, camera)
                assert item["kind"] == "face" and truth["background"] in bench.HEADS
                continue
            px0, py0, px1, py1 = item["paste_box"]
            pasted.append(item["paste_box"])
            assert px0 <= x0 and py0 <= y0 and x1 <= px1 and y1 <= py1, item
            if item["kind"] == "face":
                src = getattr(data, item["source"])()
                src = np.stack([src] * 3, axis=2) if src.ndim == 2 else src
                crop = Image.fromarray(src).crop(tuple(item["src_crop"])).resize((px1 - px0, py1 - py0), lanczos)
                assert np.array_equal(canvas[py0:py1, px0:px1], np.asarray(crop))
                fx0, fy0, fx1, fy1 = bench.HEADS[item["source"]]["face"]
                cx0, cy0 = item["src_crop"][:2]
                s = item["scale"]
                expect = [px0 + (fx0 - cx0) * s, py0 + (fy0 - cy0) * s, px0 + (fx1 - cx0) * s, py0 + (fy1 - cy0) * s]
                assert np.allclose(item["box"], expect, atol=1), (item, expect)
                assert 60 <= item["height"] <= 300
            elif item["kind"] == "text":
                bx0, by0, bx1, by1 = item["panel_box"]
                panel = canvas[by0:by1, bx0:bx1]
                ys, xs = np.nonzero(np.any(panel != panel[0, 0], axis=2))
                assert [xs.min() + bx0, ys.min() + by0, xs.max() + 1 + bx0, ys.max() + 1 + by0] == item["box"], item
                font = ImageFont.load_default(size=item["font_size"])
                assert font.getbbox("H")[3] - font.getbbox("H")[1] == item["cap_height"]
                assert 5 <= item["cap_height"] <= 61 and len(item["text"]) >= 2
            else:
                car = car_plate()
                car = car.resize((px1 - px0, py1 - py0), lanczos)
                assert np.array_equal(canvas[py0:py1, px0:px1], np.asarray(car))
                qx0, qy0, qx1, qy1 = item["plate_box"]
                assert qx0 <= x0 and qy0 <= y0 and x1 <= qx1 and y1 <= qy1
                assert canvas[y0:y1, x0:x1].sum(axis=2).min() < 200  # ink on the white plate
        for a in range(len(pasted)):
            for b in range(a + 1, len(pasted)):
                p, q = pasted[a], pasted[b]
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1], (p, q)
    assert kinds["face"] >= 12 and kinds["text"] == 6 * len(bench.CAP_BANDS) and kinds["plate"] == 3
    # the written set: JPEGs in the folder, the ground truth beside it (deface reads every file in the folder)
    truth = bench.build_large(tmp_path / "large", 2)
    assert sorted(p.name for p in (tmp_path / "large").iterdir()) == sorted(truth["images"])
    assert json.loads((tmp_path / bench.TRUTH).read_text()) == truth
