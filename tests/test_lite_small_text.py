"""Small text on people (name tags, badges): the lite inspector looks at the chest below each face again,
magnified. Checked on scikit-image's astronaut photo, whose name tag (about x 283-318, y 362-380; letters ~4 px
high) the whole-image text pass does not find."""

import numpy as np

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.inspection.lite import person_zooms

from conftest import encode, image_dataset

NAME_TAG = (283, 362, 318, 380)


def _overlap(box, other) -> bool:
    return not (box[2] <= other[0] or other[2] <= box[0] or box[3] <= other[1] or other[3] <= box[1])


def _run(astronaut, **inspector):
    photo, _ = astronaut
    anonymize = Unsafe2Safe.from_preset("lite", inspector=inspector)
    ds = anonymize.prepare(image_dataset([encode(photo, "PNG")]))
    out = ds.map(anonymize, batched=True, features=anonymize.output_features(ds.features))
    return out[0]


def test_the_astronauts_name_tag_is_found_and_edited(astronaut):
    photo, face = astronaut
    row = _run(astronaut)
    text = [r for r in row[C.PRIVACY_REGIONS] if r["category"] == "text_symbols"]
    assert any(_overlap(r["box"], NAME_TAG) for r in text), row[C.PRIVACY_REGIONS]
    safe = np.asarray(row["image"].convert("RGB"), dtype=np.float64)
    x0, y0, x1, y1 = NAME_TAG
    assert np.abs(safe[y0:y1, x0:x1] - photo[y0:y1, x0:x1]).mean() > 20  # the tag's pixels were replaced

    # without the second look the same photo keeps its tag: the zoom is what finds it
    plain = _run(astronaut, person_text=False)
    assert not any(_overlap(r["box"], NAME_TAG) for r in plain[C.PRIVACY_REGIONS] if r["category"] == "text_symbols")


def test_zoom_parts_lie_below_the_face_and_are_skipped_when_the_face_is_already_large():
    face = (177, 56, 272, 176)  # 95 x 120
    [(part, scale)] = person_zooms([face], (512, 512), main_scale=1.25, face_px=240)
    assert part == (82, 176, 367, 416) and scale == 2.0
    # a face already 240 px high at the whole-image pass's scale gains nothing from a second look
    assert person_zooms([(100, 100, 300, 340)], (1000, 1000), main_scale=1.0, face_px=240) == []
    # the part is clipped to the image and its magnified side bounded
    [(part, scale)] = person_zooms([(10, 400, 40, 440)], (200, 460), main_scale=1.0, face_px=240, max_side=120)
    assert part == (0, 440, 70, 460) and scale == 120 / 70
