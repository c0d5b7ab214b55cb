"""Who counts in the privacy figures: faces pooled over faces (intervals resample images), a vanished face or a
blank spot never compared, text only over flagged pairs whose original has real text. On fixed values, on the
astronaut (scikit-image) and on the demo's photos read by the real OCR."""

import io

import numpy as np
import pytest
from conftest import encode, image_dataset

pytest.importorskip("dlib")
pytest.importorskip("rapidfuzz")

from hf_unsafe2safe.evaluation.base import Pair  # noqa: E402
from hf_unsafe2safe.evaluation.metrics import BLANK_STD, FacePair, blank_crop, text_similarity  # noqa: E402
from hf_unsafe2safe.evaluation.stats import pooled_mean_figure  # noqa: E402


def test_one_face_at_0_9_and_nine_at_0_1_pool_to_0_18():
    groups = [[0.9], [0.1] * 9]
    figure = pooled_mean_figure(groups, "d", seed=0, model="m")
    assert figure["value"] == pytest.approx(0.18) and figure["n"] == 10 and figure["pairs"] == 2
    assert float(np.mean([np.mean(g) for g in groups])) == pytest.approx(0.5)  # what a per-image mean reports
    lo, hi = figure["ci95"]  # draws of pairs: only 0.9 (1 face), only 0.1, or both in some proportion
    assert 0.1 - 1e-12 <= lo <= 0.18 <= hi <= 0.9 + 1e-12
    assert pooled_mean_figure([[], *groups, []], "d", seed=0, model="m") == figure  # pairs without a face take no part
    assert pooled_mean_figure([[0.4, 0.6]], "d", 0, "m")["ci95"] is None  # one image: no interval over images
    assert pooled_mean_figure([[], []], "d", 0, "m")["value"] is None


def test_the_interval_is_a_bootstrap_over_pairs_as_scipy_computes_it():
    from scipy import stats

    rng = np.random.default_rng(5)
    # 60 images with 1-6 faces each; faces of one image share an image effect, so they are not independent
    groups = [list(rng.normal(0.5, 0.2) + rng.normal(0, 0.05, rng.integers(1, 7))) for _ in range(60)]
    figure = pooled_mean_figure(groups, "d", seed=0, model="m", rounds=4000)
    sums, sizes = np.array([sum(g) for g in groups]), np.array([len(g) for g in groups], dtype=float)
    assert figure["value"] == pytest.approx(sums.sum() / sizes.sum())
    reference = stats.bootstrap(
        (sums, sizes), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis), paired=True, vectorized=True,
        n_resamples=4000, method="percentile", random_state=np.random.default_rng(1),
    ).confidence_interval
    width = reference.high - reference.low
    assert figure["ci95"][0] == pytest.approx(reference.low, abs=0.1 * width)
    assert figure["ci95"][1] == pytest.approx(reference.high, abs=0.1 * width)
    faces = np.concatenate(groups)  # resampling faces as if independent: far too narrow
    naive = stats.bootstrap((faces,), np.mean, n_resamples=2000, method="percentile", random_state=np.random.default_rng(1)).confidence_interval
    assert naive.high - naive.low < 0.6 * width


def test_the_face_metric_pools_faces_and_keeps_per_image_figures_apart():
    from hf_unsafe2safe.evaluation.privacy import FaceSimMetric

    metric = FaceSimMetric()
    metric.record(0, FacePair(faces=1, best_cosine=[0.9], spot_distance=[0.2], reidentified=1))
    metric.record(1, FacePair(faces=9, best_cosine=[0.1] * 9, spot_distance=[0.8] * 9))
    metric.record(2, FacePair(faces=2, vanished=2, blank_spots=2))  # blacked out: nothing to compare
    metric.record(3, FacePair())  # no face
    m = metric.finish(seed=0)
    assert m["face_sim"]["value"] == pytest.approx(0.18) and m["face_sim"]["n"] == 10
    assert m["face_sim_per_image"]["value"] == pytest.approx(0.5) and m["face_sim_per_image"]["n"] == 2
    assert m["face_spot_distance"]["value"] == pytest.approx((0.2 + 9 * 0.8) / 10) and m["face_spot_distance"]["n"] == 10
    assert m["face_spot_distance_per_image"]["value"] == pytest.approx(0.5)
    assert m["face_reidentified_share"]["value"] == pytest.approx(1 / 10)  # over the faces with a counterpart
    assert m["face_vanished_share"]["value"] == pytest.approx(2 / 12) and m["face_spot_blank_share"]["value"] == pytest.approx(2 / 12)
    assert metric.risk == {0: 0.9, 1: pytest.approx(0.1), 2: 0.0, 3: 0.0}  # a row's most recognisable face ranks it
    assert set(m) == set(metric.figures)
    for name, figure in m.items():  # every definition states who counts
        assert "original faces" in figure["definition"] or "per pair first" in figure["definition"], name


def _jpeg(rgb):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_a_blank_crop_is_a_uniform_fill_not_a_blurred_face(astronaut):
    import cv2

    face, (x0, y0, x1, y1) = astronaut
    box = (x0, y0, x1, y1)
    black = face.copy()
    black[y0:y1, x0:x1] = 0
    grey = face.copy()
    grey[y0:y1, x0:x1] = 128
    blurred = face.copy()
    blurred[y0:y1, x0:x1] = cv2.GaussianBlur(face[y0:y1, x0:x1], (0, 0), 30)  # no face found there any more
    assert blank_crop(_jpeg(black), box) and blank_crop(_jpeg(grey), box) and blank_crop(face, (10, 10, 10, 40))
    assert not blank_crop(face, box) and not blank_crop(_jpeg(blurred), box)
    assert BLANK_STD == 3.0


def test_a_blacked_out_face_is_vanished_and_blank_never_compared(astronaut):
    from hf_unsafe2safe.evaluation.privacy import FaceSimMetric

    face, (x0, y0, x1, y1) = astronaut
    margin = (x1 - x0) // 4
    black_face = face.copy()
    black_face[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = 0
    for anonymized in (_jpeg(black_face), np.zeros_like(face)):
        metric = FaceSimMetric()
        metric.add([Pair(0, face, anonymized)])
        m = metric.finish(seed=0)
        assert m["face_vanished_share"]["value"] == 1.0 and m["face_spot_blank_share"]["value"] == 1.0
        assert m["face_sim"]["value"] is None and m["face_reidentified_share"]["n"] == 0
        assert m["face_spot_distance"]["value"] is None and m["face_spot_distance"]["n"] == 0  # no distance to black pixels
    metric = FaceSimMetric()
    metric.add([Pair(0, face, face)])
    m = metric.finish(seed=0)
    assert m["face_spot_blank_share"]["value"] == 0.0 and m["face_sim"]["value"] == pytest.approx(1.0, abs=1e-6)


def _demo_rows():
    """The demo's cat (OCR reads "O"), scene-text photo (read as "S=", "2") and note (name, phone, email, address)."""
    from datasets import Image

    from hf_unsafe2safe.demo import build_demo_dataset

    source = build_demo_dataset().select([2, 4, 6])
    return source, [cell["bytes"] for cell in source.cast_column("image", Image(decode=False))["image"]]


def _pixelated(blob, cell=24):
    from PIL import Image

    img = Image.open(io.BytesIO(blob)).convert("RGB")
    small = img.resize((img.width // cell, img.height // cell), Image.Resampling.BOX)
    return encode(small.resize(img.size, Image.Resampling.NEAREST), "PNG")


def test_text_sim_counts_flagged_pairs_whose_original_has_text():
    from hf_unsafe2safe.evaluation import evaluate
    from hf_unsafe2safe.evaluation.privacy import TextSimMetric

    source, blobs = _demo_rows()
    names = source["name"]
    # the photos pass through unchanged (unflagged, as the lite preset leaves them), the note is pixelated
    safe = image_dataset([blobs[0], blobs[1], _pixelated(blobs[2])], name=names).add_column("privacy_flag", [False, False, True])
    metric = TextSimMetric()
    m = evaluate(source, safe, metrics=[metric]).metrics
    assert m["text_sim"]["n"] == 1 and m["text_sim"]["value"] < 0.5  # the note only, its text gone
    assert m["text_sim"]["pairs_unflagged"] == 2 and m["text_leak_rate"]["pairs_unflagged"] == 2
    assert m["text_leak_rate"]["value"] == 0.0 and m["text_leak_rate"]["n"] >= 4  # phone, email, name, address strings
    assert set(metric.risk) == {2}  # the copied photos do not rank as the least private pairs
    # flagged all the same, the photos' OCR noise is no text: under 4 letters or digits
    flagged = safe.remove_columns("privacy_flag").add_column("privacy_flag", [True, True, True])
    metric = TextSimMetric()
    m = evaluate(source, flagged, metrics=[metric]).metrics
    assert m["text_sim"]["n"] == 1 and m["text_sim"]["pairs_short_text"] == 2 and set(metric.risk) == {2}
    assert text_similarity(["O"], ["O"]) is None and text_similarity(["S=", "2"], ["S=", "2"]) is None  # scored 1.0 before
    assert text_similarity(["KX21 WPD"], ["KX21 WPD"]) == 1.0
    for name in ("text_sim", "text_leak_rate"):
        assert "flagged pairs" in m[name]["definition"], name
