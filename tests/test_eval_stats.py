"""The statistics of the evaluation report, checked against references the project did not write: FID and KID
against torchmetrics, the Wilson interval against scipy, and the intervals' coverage against a known truth."""

import io

import numpy as np
import pytest

from hf_unsafe2safe.evaluation.base import Pair
from hf_unsafe2safe.evaluation.quality import directional_clip, frechet_distance, image_changed, kernel_inception_distance
from hf_unsafe2safe.evaluation.stats import ratio_figure, set_distance_figure, wilson_interval


def _feature_sets(n: int, d: int, shifted: bool, seed: int = 0):
    """Paired features: the 'anonymized' row is correlated with its 'original' (as real pairs are); shifted moves
    the mean and widens the spread of the second set."""
    rng = np.random.default_rng(seed)
    before = rng.standard_normal((n, d))
    after = 0.6 * before + 0.8 * rng.standard_normal((n, d))
    if shifted:
        after = 1.3 * after + 0.4
    return before, after


# ---- FID / KID intervals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shifted", [False, True], ids=["same", "shifted"])
@pytest.mark.parametrize("d", [8, 64, 256])
@pytest.mark.parametrize("n", [20, 60, 200])
def test_fid_and_kid_intervals_contain_their_value(n, d, shifted):
    """The old with-replacement bootstrap put both intervals above their own value (n=60, d=64: FID 47.07 with
    [64.26, 79.46]). 20 subsets, not the figure's 100, to keep the grid fast; the next test runs the default."""
    before, after = _feature_sets(n, d, shifted)
    for distance, floor in ((frechet_distance, 0.0), (kernel_inception_distance, None)):
        figure = set_distance_figure(distance, before, after, "def", seed=5, model="fixed", rounds=20, floor=floor)
        low, high = figure["ci95"]
        assert low <= figure["value"] <= high and low < high, (distance.__name__, figure)
        assert figure["n"] == n and "half-subsets" in figure["interval"]
        if floor is not None:
            assert low >= floor


def test_the_intervals_are_deterministic_under_the_seed():
    before, after = _feature_sets(60, 64, shifted=True)
    for distance in (frechet_distance, kernel_inception_distance):
        first = set_distance_figure(distance, before, after, "def", seed=3, model="fixed")  # 100 subsets
        assert first["ci95"][0] <= first["value"] <= first["ci95"][1]
        assert set_distance_figure(distance, before, after, "def", seed=3, model="fixed") == first
        assert set_distance_figure(distance, before, after, "def", seed=4, model="fixed")["ci95"] != first["ci95"]


def test_kid_interval_covers_the_true_value_of_two_alike_sets():
    """Two independent samples of one distribution: the population MMD^2 is 0 and KID is unbiased, so a 95 %
    interval must cover 0 about 19 times in 20. The old with-replacement bootstrap covered it 0 times (its
    duplicated rows pushed every resampled KID far above 0)."""
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        a, b = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
        low, high = set_distance_figure(kernel_inception_distance, a, b, "kid", seed=seed, model="fixed")["ci95"]
        covered += low <= 0.0 <= high
    assert covered >= 17


def test_fid_interval_is_about_as_wide_as_the_spread_of_fid_over_new_samples():
    """The interval estimates the sampling spread at n pairs: compare its width with the spread of FID over 60
    fresh draws of the same two distributions (95 % of a normal spread is about 3.9 standard deviations)."""
    values = [frechet_distance(*_feature_sets(60, 8, shifted=True, seed=s)) for s in range(60)]
    before, after = _feature_sets(60, 8, shifted=True, seed=999)
    low, high = set_distance_figure(frechet_distance, before, after, "fid", seed=0, model="fixed", floor=0.0)["ci95"]
    assert 0.5 < (high - low) / (3.92 * np.std(values)) < 2.0


def test_small_sets():
    before, after = _feature_sets(3, 4, shifted=True)
    three = set_distance_figure(frechet_distance, before, after, "fid", seed=0, model="fixed", floor=0.0)
    assert three["ci95"][0] <= three["value"] <= three["ci95"][1]  # the 3 subsets of 2 pairs, enumerated
    two = set_distance_figure(kernel_inception_distance, before[:2], after[:2], "kid", seed=0, model="fixed")
    assert two["value"] is not None and two["ci95"] is None and two["n"] == 2
    assert set_distance_figure(frechet_distance, before[:1], after[:1], "fid", seed=0, model="fixed")["value"] is None


# ---- FID / KID values against torchmetrics ------------------------------------------------------------------


def _given_features(d: int):
    """A torchmetrics 'feature extractor' that returns what it is given: the metric then runs on our features."""
    import torch

    class Given(torch.nn.Module):
        num_features = d

        def forward(self, x):
            return x

    return Given()


@pytest.mark.parametrize("n, d, shifted", [(50, 8, False), (120, 32, True), (300, 64, True), (40, 64, False)])
def test_fid_matches_torchmetrics(n, d, shifted):
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    before, after = _feature_sets(n, d, shifted, seed=n + d)
    reference = FrechetInceptionDistance(feature=_given_features(d))
    reference.update(torch.from_numpy(before), real=True)
    reference.update(torch.from_numpy(after), real=False)
    assert frechet_distance(before, after) == pytest.approx(float(reference.compute()), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("n, d, shifted", [(50, 8, False), (120, 32, True), (40, 256, True)])
def test_kid_matches_torchmetrics(n, d, shifted):
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    before, after = _feature_sets(n, d, shifted, seed=n + d)
    ours = kernel_inception_distance(before, after)
    assert ours == pytest.approx(float(poly_mmd(torch.from_numpy(before), torch.from_numpy(after))), rel=1e-9, abs=1e-12)
    whole = KernelInceptionDistance(feature=_given_features(d), subsets=1, subset_size=n)  # one subset: every row
    whole.update(torch.from_numpy(before), real=True)
    whole.update(torch.from_numpy(after), real=False)
    assert ours == pytest.approx(float(whole.compute()[0]), rel=1e-9, abs=1e-12)


# ---- proportions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hits, total", [(0, 14), (14, 14), (3, 10), (1, 1), (0, 1), (50, 200), (7, 1000)])
def test_wilson_interval_matches_scipy(hits, total):
    from scipy.stats import binomtest

    reference = binomtest(hits, total).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(hits, total)
    assert low == pytest.approx(reference.low, abs=1e-12) and high == pytest.approx(reference.high, abs=1e-12)


def test_shares_get_a_wilson_interval_on_the_pooled_counts():
    from scipy.stats import binomtest

    nothing = ratio_figure([0] * 7, [2] * 7, "share", seed=0, model="m")  # 0 of 14: not the degenerate [0, 0]
    assert nothing["value"] == 0.0 and nothing["n"] == 14 and nothing["ci95"][0] == 0.0
    assert nothing["ci95"][1] == pytest.approx(binomtest(0, 14).proportion_ci(method="wilson").high) and nothing["ci95"][1] > 0.2
    assert ratio_figure([2, 2, 2], [2, 2, 2], "share", 0, "m")["ci95"][1] == 1.0
    hits = list(np.random.default_rng(3).random(30) < 0.3)  # one unit per pair: nothing to cluster
    single = ratio_figure(hits, [1] * 30, "share", seed=0, model="m")
    reference = binomtest(int(sum(hits)), 30).proportion_ci(method="wilson")
    assert single["design_effect"] == pytest.approx(1.0) and single["ci95"] == pytest.approx([reference.low, reference.high])
    assert single["ci95"] == ratio_figure(hits, [1] * 30, "share", seed=9, model="m")["ci95"]  # no randomness left
    assert "Wilson" in single["interval"]
    empty = ratio_figure([0, 0], [0, 0], "share", 0, "m")
    assert empty["value"] is None and empty["ci95"] is None and empty["n"] == 0


def test_units_of_one_pair_count_as_fewer_than_independent_ones():
    """Ten photos of five faces each, three photos wholly re-identified: 15 of 50 faces, but the photo is the
    unit, so the interval should be about Wilson's for 3 of 10 photos, not for 15 of 50 faces."""
    from scipy.stats import binomtest

    figure = ratio_figure([5, 5, 5] + [0] * 7, [5] * 10, "share", seed=0, model="m")
    photos = binomtest(3, 10).proportion_ci(method="wilson")
    faces = binomtest(15, 50).proportion_ci(method="wilson")
    assert figure["value"] == 0.3 and figure["n"] == 50 and figure["design_effect"] > 4
    assert figure["ci95"] == pytest.approx([photos.low, photos.high], abs=0.015)
    assert figure["ci95"][1] - figure["ci95"][0] > 1.8 * (faces.high - faces.low)


def test_the_design_effect_matches_a_bootstrap_over_pairs():
    """The variance the design effect implies, p (1 - p) / (N - 1) * deff, against scipy's bootstrap of the
    pooled share over pairs (80 images of 1-6 units, each image with its own rate)."""
    from scipy import stats

    rng = np.random.default_rng(0)
    totals = rng.integers(1, 7, size=80)
    hits = rng.binomial(totals, rng.beta(2, 5, size=80))
    figure = ratio_figure(hits, totals, "share", seed=0, model="m")
    p, n = figure["value"], int(totals.sum())
    boot = stats.bootstrap(
        (hits.astype(float), totals.astype(float)), lambda h, t, axis=-1: h.sum(axis=axis) / t.sum(axis=axis),
        paired=True, vectorized=True, n_resamples=5000, method="percentile", random_state=np.random.default_rng(1),
    )
    assert np.sqrt(p * (1 - p) / (n - 1) * figure["design_effect"]) == pytest.approx(boot.standard_error, rel=0.1)
    assert figure["ci95"] == pytest.approx([boot.confidence_interval.low, boot.confidence_interval.high], abs=0.01)


# ---- directional CLIP over changed pairs ---------------------------------------------------------------------


def _jpeg_round_trip(array: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _blurred_patch(array: np.ndarray, fraction: float) -> np.ndarray:
    """A Gaussian blur over a centred square patch covering ``fraction`` of each side (a face-sized edit)."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(array)
    h, w = array.shape[:2]
    box = (int(w * (0.5 - fraction / 2)), int(h * (0.5 - fraction / 2)), int(w * (0.5 + fraction / 2)), int(h * (0.5 + fraction / 2)))
    img.paste(img.crop(box).filter(ImageFilter.GaussianBlur(8)), box)
    return np.asarray(img)


def _source():
    from skimage import data

    return _jpeg_round_trip(data.astronaut(), 90)  # a photo as datasets hold them: already a JPEG


def test_re_encoding_is_not_a_change_but_a_small_edit_is():
    source = _source()
    assert not image_changed(source, source.copy())
    for quality in (95, 85):  # the editor's default quality, and lower
        assert not image_changed(source, _jpeg_round_trip(source, quality))
    assert image_changed(source, _jpeg_round_trip(_blurred_patch(source, 0.15), 95))  # 2 % of the image blurred
    assert image_changed(source, source[:-1])  # another size
    grey = source.mean(axis=2).astype(np.uint8)
    assert not image_changed(grey, grey) and image_changed(grey, 255 - grey)


def test_directional_clip_is_undefined_without_a_change():
    before, after = np.eye(3), np.eye(3)[[1, 2, 0]]
    cos = directional_clip(before, after, before, after)
    assert np.allclose(cos, 1.0)
    assert np.isnan(directional_clip(before, before, before, after)).all()  # no image change: no direction


def test_directional_clip_skips_unchanged_pairs(tmp_path):
    from PIL import Image
    from tiny_models import build_tiny_clip

    from hf_unsafe2safe.evaluation.quality import ClipFeatures, ClipMetric

    path = build_tiny_clip(str(tmp_path / "clip"))
    source = _source()
    pairs = [
        Pair(0, source, source.copy()),  # a copy
        Pair(1, source, _jpeg_round_trip(source, 95)),  # re-encoded only
        Pair(2, source, _jpeg_round_trip(_blurred_patch(source, 0.3), 95)),
        Pair(3, source, _jpeg_round_trip(_blurred_patch(source, 0.6), 95)),
        Pair(4, source, _jpeg_round_trip(_blurred_patch(source, 0.5), 95)),  # changed, but the caption did not
    ]
    private = ["an astronaut named Eileen Collins"] * 5
    public = ["a person in a spacesuit", "a person", "a person in a suit", "someone smiling", "an astronaut named Eileen Collins"]
    metric = ClipMetric(path, private, public)
    assert metric.unavailable is None
    metric.add(pairs)
    figure = metric.report(seed=0)["directional_clip"]
    assert figure["n"] == 2 and figure["skipped"] == 3
    clip = ClipFeatures(path)
    measured = pairs[2:4]
    expected = directional_clip(
        clip.images([Image.fromarray(p.original) for p in measured]), clip.images([Image.fromarray(p.anonymized) for p in measured]),
        clip.texts(private[2:4]), clip.texts(public[2:4]),
    )
    assert figure["value"] == pytest.approx(float(np.mean(expected)), abs=1e-5)
    assert "skipped" in figure["definition"] and "changed" in figure["definition"]
