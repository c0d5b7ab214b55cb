"""Parsing model answers into inspections: the shapes real models produce, and the ones they get wrong."""

import json

import pytest

from hf_unsafe2safe.inspection.parsing import AnswerError, extract_json_object, parse_inspection, to_pixels
from hf_unsafe2safe.taxonomy import load_taxonomy

ALLOWED = load_taxonomy().ids
SIZE = (640, 480)

VALID = {
    "private": True,
    "categories": ["people", "text_symbols"],
    "review": [{"item": "a woman's face", "reason": "identifies her"}, {"item": "name tag", "reason": "names her"}],
    "private_caption": "A woman named Eileen in an orange flight suit with a name tag.",
    "public_caption": "A person in an orange flight suit in front of a flag.",
    "regions": [
        {"label": "face", "category": "people", "box": [300, 100, 500, 400]},
        {"label": "name tag", "category": "text_symbols", "box": [600, 650, 700, 700]},
    ],
}


def test_valid_json_is_parsed_and_boxes_become_pixels():
    parsed = parse_inspection(json.dumps(VALID), ALLOWED, SIZE)
    assert parsed.private is True and parsed.categories == ["people", "text_symbols"]
    assert parsed.review[0] == ("a woman's face", "identifies her")
    # relative 0-1000 -> pixels of a 640x480 image
    assert parsed.regions[0].box == (192, 48, 320, 192)
    assert parsed.regions[1].category == "text_symbols" and parsed.notes == []


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "Sure! Here is the analysis:\n```\n{}\n```\nLet me know if you need more.",
        "{} I hope this helps.",
        "Answer: {}",
    ],
)
def test_fenced_and_chatty_answers(wrap):
    parsed = parse_inspection(wrap.replace("{}", json.dumps(VALID, indent=2)), ALLOWED, SIZE)
    assert parsed.private and len(parsed.regions) == 2


def test_trailing_commas_are_tolerated():
    text = json.dumps(VALID).replace("]}", "],}").replace('"}]', '"},]')
    assert parse_inspection(text, ALLOWED, SIZE).categories == ["people", "text_symbols"]


def test_braces_inside_strings_do_not_confuse_the_extractor():
    data = dict(VALID, private_caption="A sign reading {HELLO} and a face.")
    assert parse_inspection(json.dumps(data), ALLOWED, SIZE).private_caption == "A sign reading {HELLO} and a face."


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("I cannot help with that.", "no JSON"),
        (json.dumps(VALID)[:120], "not closed"),
        ('{"private": true, "categories": ["people"]}', "missing field"),
        (json.dumps(dict(VALID, private="maybe")), "`private`"),
        (json.dumps(dict(VALID, categories="people")), "`categories`"),
        (json.dumps(dict(VALID, public_caption="")), "`public_caption`"),
        (json.dumps(dict(VALID, regions={"box": [1, 2, 3, 4]})), "`regions`"),
        ("[1, 2, 3]", "no JSON"),
    ],
)
def test_invalid_answers_name_the_problem(text, message):
    with pytest.raises(AnswerError, match=message):
        parse_inspection(text, ALLOWED, SIZE)


def test_bad_regions_are_dropped_with_a_note_not_the_answer():
    data = dict(
        VALID,
        regions=[
            {"label": "face", "category": "people", "box": [-50, -50, 2000, 1500]},  # out of bounds: clipped
            {"label": "tag", "category": "people", "box": [10, 10, 10, 300]},  # zero width
            {"label": "tag", "category": "people", "box": ["a", 1, 2, 3]},  # wrong types
            {"label": "tag", "category": "people", "box": [1, 2, 3]},  # wrong length
            {"label": "x", "category": "aliens", "box": [0, 0, 500, 500]},  # unknown category: kept, re-filed
            "not a region",
        ],
    )
    parsed = parse_inspection(json.dumps(data), ALLOWED, SIZE)
    assert [r.box for r in parsed.regions] == [(0, 0, 640, 480), (0, 0, 320, 240)]
    assert parsed.regions[1].category == "people"
    assert len(parsed.notes) == 6  # the clipped box, four dropped regions, the unknown category
    assert "clipped" in parsed.notes[0] and "empty box" in parsed.notes[1]


def test_unknown_categories_are_dropped_and_contradictions_fail_closed():
    data = dict(VALID, private=False, categories=["People", "weather"], regions=[])
    parsed = parse_inspection(json.dumps(data), ALLOWED, SIZE)
    assert parsed.categories == ["people"]
    assert parsed.private is True  # said "not private" but named a category: flagged
    assert any("weather" in n for n in parsed.notes)


def test_other_languages_in_values_are_fine_and_review_is_capped():
    data = dict(
        VALID,
        private_caption="Une femme en combinaison orange avec un badge nominatif.",
        public_caption="一个穿橙色飞行服的人。",
        review=[{"item": f"élément {i}", "reason": "raison"} for i in range(8)],
    )
    parsed = parse_inspection(json.dumps(data, ensure_ascii=False), ALLOWED, SIZE)
    assert parsed.public_caption == "一个穿橙色飞行服的人。"
    assert len(parsed.review) == 5 and any("beyond 5" in n for n in parsed.notes)


@pytest.mark.parametrize(
    "fmt, box, expected",
    [
        ("relative1000", [0, 0, 1000, 1000], (0, 0, 640, 480)),
        ("relative1", [0.5, 0.5, 1.0, 1.0], (320, 240, 640, 480)),
        ("absolute", [10.2, 20.7, 99.5, 120], (10, 20, 100, 120)),
        ("absolute", [99, 120, 10, 20], (10, 20, 99, 120)),  # corners given in the wrong order
    ],
)
def test_box_formats(fmt, box, expected):
    assert to_pixels(box, SIZE, fmt) == expected


def test_extract_json_object_skips_non_object_json():
    assert extract_json_object('["a"] then {"private": true}') == {"private": True}


@pytest.mark.parametrize(
    "text, flag",
    [
        ("YES", True), ("yes.", True), ("**Yes**", True), ("Answer: no", False), ("No, nothing private.", False), ('"NO"', False),
        ("Nope", None), ("Not sure", None), ("I think yes", None), ("", None), ("Ye", None),
    ],
)
def test_flag_answers(text, flag):
    from hf_unsafe2safe.inspection.parsing import parse_flag

    assert parse_flag(text) == flag  # None: unclear, which the inspector treats as yes (fail closed)


def test_caption_pass_answers_take_the_flag_from_the_flag_pass():
    caption = {k: v for k, v in VALID.items() if k != "private"}
    with pytest.raises(AnswerError, match="private"):
        parse_inspection(json.dumps(caption), ALLOWED, SIZE)  # one pass: the flag is required
    assert parse_inspection(json.dumps(caption), ALLOWED, SIZE, private=True).private is True
    # a flag pass's no is overruled by a caption pass that names what is sensitive, never the other way round
    parsed = parse_inspection(json.dumps(caption), ALLOWED, SIZE, private=False)
    assert parsed.private is True and any("flag pass said no" in n for n in parsed.notes)
    assert parse_inspection(json.dumps(dict(caption, private=False)), ALLOWED, SIZE, private=True).private is True
    clean = dict(caption, categories=[], regions=[])
    assert parse_inspection(json.dumps(clean), ALLOWED, SIZE, private=False).private is False


def test_absolute_boxes_in_a_resized_frame_map_in_floating_point():
    # a 3000x200 image seen by the model as 1036x56: the box maps within 1 px of the exact source box
    exact = (400 * 3000 / 1036, 14 * 200 / 56, 500 * 3000 / 1036, 42 * 200 / 56)
    box = to_pixels([400, 14, 500, 42], (3000, 200), "absolute", frame=(1036, 56))
    assert all(abs(b - e) <= 1 for b, e in zip(box, exact))
    assert to_pixels([400, 14, 500, 42], (3000, 200), "absolute") == (400, 14, 500, 42)  # no frame: already source pixels
