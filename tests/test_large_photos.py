"""Faces in large photos: a 12-MP phone photo (4032 x 3024) seen whole at 1280 px hides faces under ~126 px from
RetinaFace (it finds faces from ~40 px at its input). Lite also looks at such photos in overlapping tiles, at the
scale that shows a face of `inspector.face_min_px` (64) to the detector."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.inspection.lite import FaceDetector, _merge_faces, _tile_starts

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


def test_tiles_cover_the_whole_side_and_merging_keeps_one_box_per_face():
    for length, size, step in [(4032, 2048, 1638), (3024, 2048, 1638), (100, 2048, 1638), (5000, 1000, 999)]:
        starts = _tile_starts(length, size, step)
        assert starts[0] == 0 and starts[-1] + size >= length and all(b - a <= step for a, b in zip(starts, starts[1:]))
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
