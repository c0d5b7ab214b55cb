"""The paper's triplet filter (CLIP(edited, caption) / CLIP(original, caption) > threshold) on a tiny random-weight
CLIP saved and loaded through `from_pretrained`; the expected decisions come from the raw CLIPModel's
get_image_features / get_text_features, computed here independently of the filter's code."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import encode, image_dataset  # noqa: E402
from tiny_models import build_tiny_clip  # noqa: E402

from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.training.triplet_filter import filter_pairs  # noqa: E402

CAPTIONS = ["a person on a street", "a red car", "a cat", "a sign with text", "people at a table", "a kitchen", "a dog in a park", "a plate of food"]


def _photos() -> list[np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), np.stack([data.camera()] * 3, -1), data.rocket(), data.hubble_deep_field()]
    photos = [p[::8, ::8].copy() for p in photos]
    photos += [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(4)]
    return photos


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return build_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="module")
def reference(clip):
    """Cosine similarity of every photo (and of a pixelated version of each) with every caption, by the raw model."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip).eval(), CLIPProcessor.from_pretrained(clip)
    photos = [Image.fromarray(p) for p in _photos()]
    pixelated = [p.resize((p.width // 8, p.height // 8)).resize(p.size, Image.Resampling.NEAREST) for p in photos]

    def sims(images):
        with torch.no_grad():
            img = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).pooler_output
            tokens = processor(text=CAPTIONS, padding=True, return_tensors="pt")
            txt = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        return (img @ txt.T).numpy().astype(np.float64)  # [image, caption]

    return photos, pixelated, sims(photos), sims(pixelated)


def _pairs(edited, original, captions):
    """An anonymization-output-like dataset: the anonymized image, the original kept, the public caption."""
    ds = image_dataset([encode(e, "PNG") for e in edited], **{C.PUBLIC_CAPTION: captions})
    from datasets import Image

    return ds.add_column(C.ORIGINAL_IMAGE, [{"bytes": encode(o, "PNG"), "path": None} for o in original]).cast_column(C.ORIGINAL_IMAGE, Image())


def test_an_unchanged_image_has_ratio_one(clip, reference):
    photos, _, sim, _ = reference
    # (photo, caption) pairs that the tiny CLIP finds aligned: the only ones where the ratio is defined
    aligned = [(i, j) for i in range(len(photos)) for j in range(len(CAPTIONS)) if sim[i, j] > 0.05][:6]
    assert len(aligned) >= 3
    ds = _pairs([photos[i] for i, _ in aligned], [photos[i] for i, _ in aligned], [CAPTIONS[j] for _, j in aligned])
    rows = list(range(len(ds)))
    kept, record = filter_pairs(ds, rows, "image", clip, 0.7, "cpu")
    assert kept == rows and record["kept"] == len(rows) and record["dropped"] == 0
    assert record["ratios"]["min"] == pytest.approx(1.0, abs=1e-5) and record["ratios"]["max"] == pytest.approx(1.0, abs=1e-5)
    kept, record = filter_pairs(ds, rows, "image", clip, 1.01, "cpu")
    assert kept == [] and record["dropped_by_reason"]["below_threshold"] == len(rows)


def test_each_decision_matches_the_independent_clip_ratio(clip, reference):
    photos, pixelated, sim, sim_pix = reference
    n_photos = len(photos)
    # every photo pixelated (the "edit") with every caption, plus rows without a caption
    edited, original, captions, expected = [], [], [], []
    for i in range(n_photos):
        for j in range(len(CAPTIONS)):
            edited.append(pixelated[i])
            original.append(photos[i])
            captions.append(CAPTIONS[j])
            s_edit, s_orig = sim_pix[i, j], sim[i, j]
            expected.append("original_not_aligned" if s_orig <= 0 else ("kept" if s_edit / s_orig > 0.7 else "below_threshold"))
    for i in range(2):
        edited.append(pixelated[i])
        original.append(photos[i])
        captions.append("   " if i else "")
        expected.append("empty_caption")
    ds = _pairs(edited, original, captions)
    # only every other row is offered: the kept indices are the dataset's, not positions in `rows`
    rows = list(range(0, len(ds), 2)) + [len(ds) - 1]
    chosen = [expected[r] for r in rows]
    # the construction exercises every rule (ratios near the threshold would make the check fragile: none is)
    assert {"kept", "below_threshold", "original_not_aligned", "empty_caption"} <= set(chosen)
    ratios = [sim_pix[r // len(CAPTIONS), r % len(CAPTIONS)] / sim[r // len(CAPTIONS), r % len(CAPTIONS)] for r in rows if expected[r] in ("kept", "below_threshold")]
    assert min(abs(q - 0.7) for q in ratios) > 1e-4

    kept, record = filter_pairs(ds, rows, "image", clip, 0.7, "cpu", batch_size=5)
    assert kept == [r for r in rows if expected[r] == "kept"]
    assert record["applied"] and record["model"] == clip and record["threshold"] == 0.7
    assert record["considered"] == len(rows) and record["kept"] + record["dropped"] == len(rows)
    assert record["dropped_by_reason"] == {
        "empty_caption": chosen.count("empty_caption"), "missing_image": 0,
        "original_not_aligned": chosen.count("original_not_aligned"), "below_threshold": chosen.count("below_threshold"),
    }
    summary = record["ratios"]
    assert summary["count"] == len(ratios)
    assert summary["min"] == pytest.approx(min(ratios), rel=1e-4) and summary["max"] == pytest.approx(max(ratios), rel=1e-4)
    assert summary["median"] == pytest.approx(float(np.median(ratios)), rel=1e-4)
    # batching does not change a decision
    assert filter_pairs(ds, rows, "image", clip, 0.7, "cpu", batch_size=64)[0] == kept


def test_without_a_model_the_filter_is_off_and_says_so(reference):
    photos, pixelated, _, _ = reference
    ds = _pairs(pixelated[:2], photos[:2], ["", "a cat"])
    kept, record = filter_pairs(ds, [0, 1], "image", "", 0.7, "cpu")
    assert kept == [0, 1] and record["applied"] is False and record["dropped"] == 0 and "clip_model" in record["reason"]


@pytest.mark.parametrize("threshold", [0, -0.5, math.nan, math.inf])
def test_the_threshold_must_be_positive(reference, threshold):
    photos, _, _, _ = reference
    ds = _pairs(photos[:1], photos[:1], ["a cat"])
    with pytest.raises(ValueError, match="clip_threshold"):
        filter_pairs(ds, [0], "image", "unused", threshold, "cpu")


def test_the_original_column_is_required(clip, reference):
    photos, _, _, _ = reference
    ds = _pairs(photos[:1], photos[:1], ["a cat"]).remove_columns(C.ORIGINAL_IMAGE)
    with pytest.raises(ValueError, match=C.ORIGINAL_IMAGE):
        filter_pairs(ds, [0], "image", clip, 0.7, "cpu")
