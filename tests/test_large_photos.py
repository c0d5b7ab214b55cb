"""Faces in large photos: a 12-MP phone photo (4032 x 3024) seen whole at 1280 px hides faces under ~126 px from
RetinaFace (it finds faces from ~40 px at its input). Lite also looks at such photos in overlapping tiles, at the
scale that shows a face of `inspector.face_min_px` (64) to the detector."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.inspection.lite import FaceDetector, _merge_faces, _tile_spans

HEAD = (150, 30, 300, 210)  # the astronaut's head in scikit-image's photo: her face is about 120 of its 180 px


def _phone_photo(face_px: int, size=(4032, 3024)):
    """Six real faces ``face_px`` high on a 12-MP photo (coffee, upscaled), spread over it (tile edges included);
    returns the image and where each head was pasted."""
    photo = Image.fromarray(data.coffee()).resize(size)
    head = Image.fromarray(data.astronaut()).crop(HEAD)
    scale = face_px / 120
    hw, hh = int(150 * scale), int(180 * scale)
    head = head.resize((hw, hh), Image.Resampling.LANCZOS)
    spots = [(min(100 + i * 640, size[0] - hw), min(200 + (i % 3) * 900, size[1] - hh)) for i in range(6)]
    for spot in spots:
        photo.paste(head, spot)
    return np.asarray(photo), [(x, y, x + hw, y + hh) for x, y in spots]


def _found(faces, heads) -> int:
    return sum(any(b[0] < x1 and x0 < b[2] and b[1] < y1 and y0 < b[3] for b, _ in faces) for x0, y0, x1, y1 in heads)


@pytest.fixture(scope="module")
def detectors():
    return FaceDetector(0.3, 1280, 1), FaceDetector(0.3, 1280, 1, min_face_px=64)


@pytest.mark.parametrize("face_px", [64, 100])
def test_small_faces_of_a_phone_photo_are_found_in_tiles(detectors, face_px):
    whole_only, tiled = detectors
    rgb, heads = _phone_photo(face_px)
    assert _found(whole_only(rgb), heads) <= 2  # what the 1280-px look alone finds (0 and 2 of 6 here)
    faces = tiled(rgb)
    assert _found(faces, heads) == 6 and len(faces) == 6  # every face, each once


def test_large_faces_are_still_found_once(detectors):
    rgb, heads = _phone_photo(600)
    faces = detectors[1](rgb)
    assert _found(faces, heads) == 6 and len(faces) == 6


def test_photos_up_to_2048_px_are_seen_as_before(detectors):
    """At 2048 px the 1280-px look already shows a 64-px face at 40 px: no tiles, the same boxes."""
    rgb, _ = _phone_photo(80, size=(2048, 1536))
    whole_only, tiled = detectors
    assert [f[:2] for f in whole_only.detect(rgb)] == [f[:2] for f in tiled.detect(rgb)]


def test_tiles_cover_the_whole_side_with_the_overlap_and_merging_keeps_one_box_per_face():
    for length, size, overlap in [(4032, 2048, 410), (3024, 2048, 410), (100, 2048, 410), (5000, 1000, 1), (2049, 2048, 256), (10000, 300, 100)]:
        spans = _tile_spans(length, size, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == length and all(0 < b - a <= size for a, b in spans)
        assert all(prev[1] - nxt[0] >= overlap for prev, nxt in zip(spans, spans[1:]))
        # the fewest tiles that can do it: one fewer could not cover the side with that overlap
        n = len(spans)
        assert n == 1 or (n - 1) * size - (n - 2) * overlap < length
    # a 12-MP photo's face tiles (1280 px at 0.625): 3 x 2 tiles of about 1620 x 1720 px, not 2048 x 2048
    assert [b - a for a, b in _tile_spans(4032, 2048, 410)] == [1619] * 3
    lm = np.zeros((5, 2))
    merged = _merge_faces([((0, 0, 100, 100), 0.9, lm), ((0, 0, 100, 70), 0.5, lm), ((200, 0, 300, 100), 0.4, lm)])
    assert [f[0] for f in merged] == [(0, 0, 100, 100), (200, 0, 300, 100)]


def test_the_lite_preset_edits_every_face_of_a_phone_photo():
    from conftest import encode

    rgb, heads = _phone_photo(64)
    out = Unsafe2Safe.from_preset("lite")({"image": [{"bytes": encode(rgb), "path": None}]})
    record = out[C.ANONYMIZATION][0]
    people = [(tuple(r["box"]), r["score"]) for r in out[C.PRIVACY_REGIONS][0] if r["category"] == "people"]
    assert record["status"] == C.STATUS_EDITED and _found(people, heads) == 6


# ---- text ---------------------------------------------------------------------------------------------------------
def _phone_text(cap_px: int, size=(4032, 3024)):
    """Rendered lines of capitals ``cap_px`` high on a 12-MP photo, one of them across the edge between two text tiles
    (starting 300 px before the first tile ends); returns the image and each line's ink box."""
    from PIL import ImageDraw, ImageFont

    from hf_unsafe2safe.inspection.lite import text_tiles

    edge = text_tiles(size, 960 / max(size), 13, 960)[0][0][2]

    photo = Image.fromarray(data.coffee()).resize(size)
    draw = ImageDraw.Draw(photo)
    font = ImageFont.load_default(size=round(cap_px / 0.72))
    boxes = []
    for x, y, text in [(300, 300, "CALL 555 014 2398"), (edge - 300, 1500, "JANE Q EXAMPLE 742 EVERGREEN TERRACE"), (3000, 2600, "NY34 VSA")]:
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 12, top - 12, right + 12, bottom + 12), fill=(245, 245, 240))
        draw.text((x, y), text, font=font, fill=(15, 15, 15))
        boxes.append(draw.textbbox((x, y), text, font=font))
    return np.asarray(photo), boxes


def _covered_by(box, regions) -> float:
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for rx0, ry0, rx1, ry1 in regions:
        mask[max(0, ry0 - y0) : max(0, ry1 - y0), max(0, rx0 - x0) : max(0, rx1 - x0)] = True
    return float(mask.mean())


def test_text_tiles_only_where_the_whole_image_look_would_miss_the_promised_capitals():
    from hf_unsafe2safe.inspection.lite import text_tiles

    assert text_tiles((2048, 1536), 960 / 2048, 13, 960) == []  # 13-px capitals are 6 px at 960: seen already
    assert text_tiles((4032, 3024), 960 / 4032, None, 960) == []
    tiles = text_tiles((4032, 3024), 960 / 4032, 13, 960)
    assert {scale for _, scale in tiles} == {6 / 13} and len(tiles) == 6
    covered = np.zeros((3024, 4032), bool)
    for (x0, y0, x1, y1), _ in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_small_text_of_a_phone_photo_is_found_whole_also_across_a_tile_edge():
    from conftest import encode

    rgb, lines = _phone_text(15)
    cell = [{"bytes": encode(rgb), "path": None}]
    regions = lambda anonymize: [r["box"] for r in anonymize({"image": cell})[C.PRIVACY_REGIONS][0] if r["category"] == "text_symbols"]  # noqa: E731
    tiled = regions(Unsafe2Safe.from_preset("lite"))
    assert all(_covered_by(line, tiled) >= 0.95 for line in lines), [(line, _covered_by(line, tiled)) for line in lines]
    whole_only = regions(Unsafe2Safe.from_preset("lite", inspector={"text_min_cap_px": None}))
    assert sum(_covered_by(line, whole_only) >= 0.5 for line in lines) <= 1  # 15-px capitals are 3.6 px at 960


# ---- the evaluation sees what lite promises ---------------------------------------------------------------------
def test_the_privacy_evaluation_looks_for_faces_as_small_as_lite_does():
    """FaceSim on a 12-MP photo: the 64-px faces lite finds (above) are also the evaluation's faces, so a photo
    that kept them unchanged scores 6 of 6 re-identified; looked at 1280 px only, it would not see them and would
    score the photo as if it held no face to leak."""
    pytest.importorskip("dlib")
    from hf_unsafe2safe.evaluation.metrics import FaceMatcher
    from hf_unsafe2safe.evaluation.privacy import FaceSimConfig

    rgb, _ = _phone_photo(64)
    unchanged = FaceMatcher(FaceSimConfig().detector_threshold, min_face_px=FaceSimConfig().detector_min_face_px).compare(rgb, rgb)
    assert unchanged.faces == 6 and unchanged.reidentified == 6
    assert FaceMatcher(min_face_px=None).compare(rgb, rgb).faces == 0


def test_the_evaluations_smallest_face_is_validated():
    from hf_unsafe2safe.evaluation.demographics import DemographicsConfig
    from hf_unsafe2safe.evaluation.privacy import FaceSimConfig

    assert FaceSimConfig().detector_min_face_px == DemographicsConfig().face_min_px == 64
    for bad in (4, 64.0, True):
        with pytest.raises(ValueError, match="faces.detector_min_face_px"):
            FaceSimConfig(detector_min_face_px=bad)
        with pytest.raises(ValueError, match="demographics.face_min_px"):
            DemographicsConfig(face_min_px=bad)
    assert FaceSimConfig(detector_min_face_px=None).detector_min_face_px is None
