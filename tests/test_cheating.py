"""The cheating and over-edit figures on real photos, checked against references the project did not write
(scikit-image's SSIM, imagehash's pHash) and against edits whose effect is known: a region edit as the lite editor
makes it must stay apart from a blackout, a global blur and a global pixelation of the whole image."""

import io
import time

import numpy as np
import pytest

from hf_unsafe2safe.evaluation.base import Pair
from hf_unsafe2safe.evaluation.cheating import CHANGED_LEVEL, OVER_EDITED, OverEditMetric, PixelCheating, over_edit
from hf_unsafe2safe.evaluation.metrics import hamming, phash, ssim

# sensitive boxes (x0, y0, x1, y1): the astronaut's face as RetinaFace finds it (score 0.999), the coffee's spoon,
# the cat's eyes
PHOTOS = {"astronaut": ((177, 56, 272, 176), "people"), "coffee": ((322, 66, 428, 328), "default"), "chelsea": ((130, 80, 350, 170), "default")}
TREATMENTS = ("identity", "lite", "blackout", "blur", "pixelate")


def _photo(name):
    from skimage import data

    return getattr(data, name)()


def _jpeg(rgb, quality=95):
    """What the pipeline writes for a JPEG source: quality 95, chroma at full resolution (4:4:4)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _treat(rgb, treatment, box, category):
    """The anonymized image: the lite editor's region edit, or a whole-image destruction, re-encoded as JPEG q95."""
    import cv2

    h, w = rgb.shape[:2]
    if treatment == "identity":
        return rgb.copy()
    if treatment == "lite":
        from hf_unsafe2safe.config import LiteEditorConfig
        from hf_unsafe2safe.editing.lite import RegionEditor
        from hf_unsafe2safe.inspection.base import Region

        out, _ = RegionEditor(LiteEditorConfig()).edit(rgb, [Region("test", category, box, 1.0, "test")])
    elif treatment == "blackout":
        out = np.zeros_like(rgb)
    elif treatment == "blur":  # strong enough to hide a face: sigma 1/64 of the longer side (7-9 px here)
        out = cv2.GaussianBlur(rgb, (0, 0), max(h, w) / 64)
    elif treatment == "pixelate":  # 16 cells across the longer side
        cell = int(np.ceil(max(h, w) / 16))
        small = cv2.resize(rgb, (max(1, w // cell), max(1, h // cell)), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    else:
        raise ValueError(treatment)
    return _jpeg(out)


@pytest.fixture(scope="module")
def measured():
    """photo -> treatment -> OverEdit."""
    out = {}
    for name, (box, category) in PHOTOS.items():
        rgb = _photo(name)
        out[name] = {t: over_edit(rgb, _treat(rgb, t, box, category), [{"box": list(box)}]) for t in TREATMENTS}
    return out


# ---- SSIM against scikit-image, pHash against imagehash --------------------------------------------------------


def _edits(rgb):
    import cv2

    return {
        "jpeg q75": _jpeg(rgb, 75), "blur": cv2.GaussianBlur(rgb, (0, 0), 3), "blackout": np.zeros_like(rgb),
        "mirrored": np.ascontiguousarray(rgb[:, ::-1]), "inverted": 255 - rgb, "copy": rgb.copy(),
    }


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_ssim_is_scikit_images_rgb_full_resolution(name):
    from skimage.metrics import structural_similarity

    rgb = _photo(name)
    for label, edited in _edits(rgb).items():
        expected = structural_similarity(rgb, edited, channel_axis=2, data_range=255)
        assert ssim(rgb, edited) == pytest.approx(expected, abs=1e-9), label


def test_ssim_of_another_size_and_of_tiny_images():
    import cv2
    from skimage.metrics import structural_similarity

    rgb = _photo("coffee")
    smaller = cv2.resize(rgb, (300, 200), interpolation=cv2.INTER_AREA)
    back = cv2.resize(smaller, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
    assert ssim(rgb, smaller) == pytest.approx(structural_similarity(rgb, back, channel_axis=2, data_range=255), abs=1e-9)
    assert ssim(rgb[:6, :40], rgb[:6, :40]) is None  # scikit-image refuses images under its 7x7 window


def test_ssim_is_fast_at_full_resolution():
    """A 640x427 photo: well under a second per pair on a shared 2-core machine (about 25 ms measured)."""
    import cv2

    rgb = _photo("rocket")
    blurred = cv2.GaussianBlur(rgb, (0, 0), 2)
    ssim(rgb, blurred)
    start = time.perf_counter()
    for _ in range(3):
        ssim(rgb, blurred)
    assert (time.perf_counter() - start) / 3 < 0.5


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera", "page"])
def test_phash_is_imagehash_bit_for_bit(name):
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    rgb = _photo(name)
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    reference = {label: imagehash.phash(Image.fromarray(img)) for label, img in {"source": rgb, **_edits(rgb)}.items()}
    ours = {label: phash(img) for label, img in {"source": rgb, **_edits(rgb)}.items()}
    for label in reference:
        assert ours[label] == int(str(reference[label]), 16), label
        assert hamming(ours["source"], ours[label]) == reference["source"] - reference[label], label


# ---- over-edit ---------------------------------------------------------------------------------------------------


def test_jpeg_q95_stays_under_the_thresholds():
    """The thresholds hold one JPEG q95 4:4:4 round trip of real photos with room to spare."""
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = _photo(name)
        again = _jpeg(rgb)
        per_pixel = np.abs(rgb.astype(np.int16) - again).mean(axis=2)
        assert per_pixel.max() < CHANGED_LEVEL * 0.75, name  # measured at most 10.7
        m = over_edit(rgb, again, [])
        assert m.changed == 0 and m.outside_change < OVER_EDITED / 2, name  # measured at most 1.8
        assert 0.97 < m.detail_ratio < 1.03, name


@pytest.mark.parametrize("name", list(PHOTOS))
def test_destruction_stands_out_from_a_region_edit(measured, name):
    m = measured[name]
    ident, lite = m["identity"], m["lite"]
    assert ident.outside_change == 0 and ident.changed == 0 and ident.detail_ratio == 1.0
    # the lite edit: only JPEG noise outside its grown regions, all its detail kept there
    assert lite.outside_change < 2.5 and lite.outside_changed == 0 and 0.95 < lite.detail_ratio < 1.05
    assert 0.03 < lite.changed / lite.pixels < 0.3  # it did change its region
    for treatment in ("blackout", "blur", "pixelate"):
        d = m[treatment]
        assert d.outside_change > max(8.0, 4 * lite.outside_change), treatment
        assert d.outside_change > 2 * OVER_EDITED, treatment
        assert d.outside_changed / d.outside_pixels > 0.1, treatment
        assert d.detail_ratio < 0.5, treatment
    assert m["blackout"].changed / m["blackout"].pixels > 0.75 and m["blackout"].detail_ratio < 0.01
    assert m["blur"].detail_ratio < 0.2


def test_regions_are_grown_as_the_editor_grows_them():
    """Without re-encoding, every lite method leaves the pixels outside the grown regions exactly as they were."""
    from hf_unsafe2safe.config import LiteEditorConfig
    from hf_unsafe2safe.editing.lite import RegionEditor
    from hf_unsafe2safe.inspection.base import Region

    rgb = _photo("astronaut")
    box = PHOTOS["astronaut"][0]
    for method in ("pixelate", "blur", "fill", "inpaint"):
        out, _ = RegionEditor(LiteEditorConfig(methods={"default": method})).edit(rgb, [Region("t", "default", box, 1.0, "t")])
        m = over_edit(rgb, out, [{"box": list(box)}], margin=0)
        assert m.outside_change == 0.0 and m.changed > 0, method


def test_over_edit_is_its_formula_on_the_whole_image():
    """The strip-wise measurements equal the formulas computed at once on the whole image (OpenCV, numpy)."""
    import cv2

    from hf_unsafe2safe.evaluation.cheating import DETAIL_SIGMA, protected_mask

    rgb = _photo("astronaut")  # 512 rows: two strips
    box, category = PHOTOS["astronaut"]
    for treatment in ("lite", "blur"):
        out = _treat(rgb, treatment, box, category)
        m = over_edit(rgb, out, [{"box": list(box)}])
        outside = ~protected_mask(rgb.shape, [{"box": list(box)}], 0.15, 4, 16)
        change = np.abs(rgb.astype(float) - out).mean(axis=2)
        grey = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(float) for x in (rgb, out)]
        detail = [np.abs(g - cv2.GaussianBlur(g, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT))[outside].sum() for g in grey]
        assert m.outside_pixels == outside.sum() and m.outside_change == pytest.approx(change[outside].mean(), rel=1e-9)
        assert m.changed == (change > CHANGED_LEVEL).sum() and m.detail_ratio == pytest.approx(detail[1] / detail[0], rel=1e-9)


def _pairs(treatment, flagged=True, regions=True):
    out = []
    for row, (name, (box, category)) in enumerate(PHOTOS.items()):
        rgb = _photo(name)
        out.append(Pair(row, rgb, _treat(rgb, treatment, box, category), flagged, [{"label": "x", "category": category, "box": list(box), "score": 1.0, "source": "t"}] if regions else []))
    return out


def _figures(metric, pairs):
    metric.add(pairs)
    return metric.report(seed=0)


def test_overedit_figures_flag_a_blackout_and_not_a_region_edit():
    lite = _figures(OverEditMetric(), _pairs("lite"))
    black = _figures(OverEditMetric(), _pairs("blackout"))
    for figures in (lite, black):
        for name, f in figures.items():
            assert {"value", "ci95", "n", "definition", "model"} <= set(f), name
            assert f["n"] == 3 and "flagged pairs" in f["definition"], name
    assert lite["over_edited_share"]["value"] == 0.0 and black["over_edited_share"]["value"] == 1.0
    assert lite["outside_region_change"]["value"] < 2.5 < 50 < black["outside_region_change"]["value"]
    assert lite["outside_region_change"]["pooled"]["value"] < 2.5 < 50 < black["outside_region_change"]["pooled"]["value"]
    assert lite["edited_area_share"]["outside"] < 0.001 and black["edited_area_share"]["outside"] > 0.75
    assert lite["edited_area_share"]["value"] < 0.3 < 0.75 < black["edited_area_share"]["value"]
    assert lite["detail_ratio"]["value"] > 0.95 and black["detail_ratio"]["value"] < 0.01
    lo, hi = black["outside_region_change"]["ci95"]
    assert lo <= black["outside_region_change"]["value"] <= hi


def test_pairs_without_regions_and_unflagged_pairs():
    from hf_unsafe2safe.config import LiteEditorConfig
    from hf_unsafe2safe.editing.lite import RegionEditor

    # a metadata-only edit (no region, pixels re-encoded): the whole image is outside and it is no over-edit
    kept = _figures(OverEditMetric(), _pairs("identity", regions=False))
    assert kept["outside_region_change"]["value"] == 0.0 and kept["over_edited_share"]["value"] == 0.0
    # the whole-image fallback (no region to edit): over-edited by design, and the figures say so
    editor = RegionEditor(LiteEditorConfig())
    fallback = [Pair(i, p.original, _jpeg(editor.fallback(p.original)), True, []) for i, p in enumerate(_pairs("identity"))]
    assert _figures(OverEditMetric(), fallback)["over_edited_share"]["value"] == 1.0
    # unflagged rows keep their bytes: no figure counts them
    assert _figures(OverEditMetric(), _pairs("blackout", flagged=False))["outside_region_change"]["n"] == 0
    assert _figures(PixelCheating(), _pairs("blackout", flagged=False))["ssim"]["n"] == 0


def test_pixel_cheating_over_flagged_pairs():
    from skimage.metrics import structural_similarity

    pairs = _pairs("lite") + [Pair(9, _photo("rocket"), _photo("rocket"), False, [])]
    f = _figures(PixelCheating(), pairs)
    assert f["ssim"]["n"] == 3 and "flagged pairs" in f["ssim"]["definition"]
    expected = np.mean([structural_similarity(p.original, p.anonymized, channel_axis=2, data_range=255) for p in pairs[:3]])
    assert f["ssim"]["value"] == pytest.approx(expected, abs=1e-9)
    assert f["region_unchanged_share"]["value"] == 0.0 and f["region_unchanged_share"]["n"] == 3
    assert f["near_duplicate_share"]["n"] == 3


def test_the_lite_preset_end_to_end_against_a_blackout(lite):
    """Real pipeline output (RetinaFace and OCR regions, lite edit, re-encoded) and the same rows blacked out,
    through ``evaluate``: only the blackout is over-edited; the unflagged coffee counts in no figure."""
    from conftest import encode, image_dataset

    from hf_unsafe2safe import anonymize_dataset, demo
    from hf_unsafe2safe import columns as C
    from hf_unsafe2safe.evaluation import evaluate

    images = [(_photo("astronaut"), "JPEG"), (demo.letter(), "PNG"), (_photo("coffee"), "JPEG")]
    originals = image_dataset([encode(img, fmt, **({"quality": 95} if fmt == "JPEG" else {})) for img, fmt in images], name=["a", "b", "c"])
    safe = anonymize_dataset(originals, lite)
    assert list(safe[C.PRIVACY_FLAG]) == [True, True, False] and all(safe[C.PRIVACY_REGIONS][:2])  # face and text found and edited
    black = safe.remove_columns("image").add_column("image", [{"bytes": encode(np.zeros_like(img), fmt), "path": None} for img, fmt in images])
    black = black.cast_column("image", safe.features["image"])
    kept = evaluate(originals, safe, metrics=[OverEditMetric(), PixelCheating()]).metrics
    gone = evaluate(originals, black, metrics=[OverEditMetric(), PixelCheating()]).metrics
    assert kept["outside_region_change"]["n"] == 2 and kept["ssim"]["n"] == 2
    assert kept["over_edited_share"]["value"] == 0.0 and kept["outside_region_change"]["value"] < 2.5
    assert kept["detail_ratio"]["value"] > 0.95 and kept["edited_area_share"]["outside"] < 0.001
    assert gone["over_edited_share"]["value"] == 1.0 and gone["outside_region_change"]["value"] > 50
    assert gone["detail_ratio"]["value"] < 0.01 and gone["ssim"]["value"] < 0.3 < 0.8 < kept["ssim"]["value"]
