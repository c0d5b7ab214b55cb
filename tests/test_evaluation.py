"""The evaluation suite on real photos: known transformations move each metric the right way."""

import numpy as np
import pytest
from conftest import encode, image_dataset

pytest.importorskip("dlib")
pytest.importorskip("rapidfuzz")

from hf_unsafe2safe import Unsafe2Safe  # noqa: E402
from hf_unsafe2safe.evaluation import evaluate  # noqa: E402
from hf_unsafe2safe.evaluation.report import align, bootstrap_ci  # noqa: E402


@pytest.fixture(scope="module")
def originals():
    from skimage import data

    from hf_unsafe2safe import demo

    face = data.astronaut()
    return image_dataset([encode(face), encode(demo.letter(), "PNG"), encode(np.fliplr(face).copy())], name=["a", "b", "c"])


def _pixelated(originals, cell=32):
    from PIL import Image

    blobs = []
    for img in originals["image"]:
        small = img.convert("RGB").resize((max(1, img.width // cell), max(1, img.height // cell)), Image.Resampling.BOX)
        blobs.append(encode(small.resize(img.size, Image.Resampling.NEAREST), "PNG"))
    return image_dataset(blobs, name=originals["name"])


def test_identity_scores_as_a_copy(originals):
    report = evaluate(originals, originals)
    m = report.metrics
    assert m["face_sim"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert m["face_reidentified_share"]["value"] == 1.0 and m["face_vanished_share"]["value"] == 0.0
    assert m["text_sim"]["value"] == pytest.approx(1.0) and m["text_leak_rate"]["value"] == 1.0
    assert m["ssim"]["value"] == pytest.approx(1.0) and m["unchanged_share"]["value"] == 1.0  # caught as cheating
    assert m["near_duplicate_share"]["value"] == 1.0


def test_strong_pixelation_lowers_every_privacy_metric(originals):
    report = evaluate(originals, _pixelated(originals))
    m = report.metrics
    assert m["face_reidentified_share"]["value"] in (None, 0.0)
    assert m["face_spot_distance"]["value"] > 0.6
    assert m["text_leak_rate"]["value"] == 0.0 and (m["text_sim"]["value"] or 0.0) < 0.5
    assert m["unchanged_share"]["value"] == 0.0


def test_the_lite_preset_is_evaluated_end_to_end(originals, tmp_path):
    from hf_unsafe2safe import anonymize_dataset

    safe = anonymize_dataset(originals, Unsafe2Safe.from_preset("lite"))
    report = evaluate(originals, safe)
    assert report.metrics["face_reidentified_share"]["value"] in (None, 0.0)
    assert report.metrics["text_leak_rate"]["value"] == 0.0
    assert report.metrics["region_unchanged_share"]["value"] == 0.0  # every sensitive region really changed
    assert report.metrics["region_unchanged_share"]["n"] >= 2
    paths = report.write(str(tmp_path / "report"))
    md = open(paths["md"]).read()
    assert "face_sim" in md and "95% CI" in md and paths["plots"]
    assert "worst_" in md and list((tmp_path / "report").glob("worst_*.png"))
    lo, hi = report.metrics["region_unchanged_share"]["ci95"]
    assert lo <= report.metrics["region_unchanged_share"]["value"] <= hi
    assert (tmp_path / "report" / "report.json").exists()


def test_a_copy_with_the_output_columns_is_caught_region_by_region(originals):
    from hf_unsafe2safe import anonymize_dataset
    from hf_unsafe2safe import columns as C

    safe = anonymize_dataset(originals, Unsafe2Safe.from_preset("lite"))
    cheat = safe.cast_column("image", originals.features["image"])
    cheat = cheat.remove_columns("image").add_column("image", [{"bytes": encode(img), "path": None} for img in originals["image"]])
    cheat = cheat.cast_column("image", originals.features["image"])
    assert cheat[C.PRIVACY_FLAG] == safe[C.PRIVACY_FLAG]
    report = evaluate(originals, cheat, metrics=["cheating"])
    assert report.metrics["region_unchanged_share"]["value"] > 0.9


def test_rows_are_aligned_by_key_or_checked_position(originals):
    shuffled = originals.select([2, 0, 1])
    with pytest.raises(ValueError, match="not aligned"):
        align(originals, shuffled)
    assert align(originals, shuffled, key="name") == [(2, 0), (0, 1), (1, 2)]
    with pytest.raises(ValueError, match="rows"):
        align(originals, originals.select([0, 1]))


def test_bootstrap_is_deterministic_under_a_seed():
    values = list(np.random.RandomState(0).rand(50))
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < float(np.mean(values)) < hi
    assert bootstrap_ci([0.5]) is None


def test_evaluate_command(originals, tmp_path, capsys):
    import json

    from hf_unsafe2safe import anonymize_dataset
    from hf_unsafe2safe.cli import main

    originals.save_to_disk(str(tmp_path / "src"))
    anonymize_dataset(originals, Unsafe2Safe.from_preset("lite")).save_to_disk(str(tmp_path / "safe"))
    assert main(["evaluate", "--original", str(tmp_path / "src"), "--anonymized", str(tmp_path / "safe"), "--report", str(tmp_path / "r"), "--key", "name"]) == 0
    out = capsys.readouterr().out
    assert "face_reidentified_share" in out and "report:" in out
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["pairs"] == 3 and data["metrics"]["text_leak_rate"]["value"] == 0.0
    with pytest.raises(SystemExit, match="metrics"):
        main(["evaluate", "--original", str(tmp_path / "src"), "--anonymized", str(tmp_path / "safe"), "--report", str(tmp_path / "r2"), "--metrics", "vibes"])
