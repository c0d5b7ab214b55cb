"""Turning a model's answer into a validated inspection, tolerant of how models actually answer.

Accepted: bare JSON, JSON in a code fence, JSON with text around it, trailing commas, single-quoted
keys are NOT guessed at (that is the repair prompt's job). Anything that fails validation raises
``AnswerError`` naming what is wrong, so the caller can retry once with a repair prompt and otherwise
flag the row (fail closed) keeping the raw text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

BOX_FORMATS = ("relative1000", "relative1", "absolute")
MAX_REVIEW_ITEMS = 5


class AnswerError(ValueError):
    """The answer is not a valid inspection; the message says why (it goes into the row's error)."""


@dataclass
class ParsedRegion:
    label: str
    category: str
    box: tuple[int, int, int, int]


@dataclass
class ParsedInspection:
    private: bool
    categories: list[str]
    review: list[tuple[str, str]]
    private_caption: str
    public_caption: str
    regions: list[ParsedRegion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was dropped or fixed while validating


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def extract_json_object(text: str) -> dict:
    """The first complete JSON object in ``text`` (inside a code fence or not)."""
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    last_error = "no JSON object found"
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            end = _matching_brace(candidate, start)
            if end is None:
                last_error = "JSON object is not closed (truncated answer?)"
                break
            chunk = candidate[start : end + 1]
            for attempt in (chunk, _TRAILING_COMMA.sub(r"\1", chunk)):
                try:
                    value = json.loads(attempt)
                except json.JSONDecodeError as err:
                    last_error = f"invalid JSON: {err.msg} at char {err.pos}"
                    continue
                if isinstance(value, dict):
                    return value
            start = candidate.find("{", start + 1)
    raise AnswerError(last_error)


def _matching_brace(text: str, start: int) -> int | None:
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    raise AnswerError(f"`{name}` must be true or false, got {value!r}")


def _as_text(value, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AnswerError(f"`{name}` must be a non-empty string, got {value!r}")
    return " ".join(value.split())


def to_pixels(box, size: tuple[int, int], box_format: str, notes: list[str] | None = None, frame: tuple[int, int] | None = None) -> tuple[int, int, int, int] | None:
    """A model box in ``box_format`` as pixel coordinates clipped to the image; None if degenerate. A box that
    reached beyond the image is noted in ``notes``. ``frame``: for ``absolute`` boxes, the size (width, height)
    of the image the model saw, when the boxes are to be mapped onto an image of another ``size`` (the model's
    processor resized it); mapped in floating point, so the result is within 1 px of the exact box."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise AnswerError(f"a box must be 4 numbers [x0, y0, x1, y1], got {box!r}")
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    if box_format == "relative1000":
        x0, x1, y0, y1 = x0 * w / 1000, x1 * w / 1000, y0 * h / 1000, y1 * h / 1000
    elif box_format == "relative1":
        x0, x1, y0, y1 = x0 * w, x1 * w, y0 * h, y1 * h
    elif frame is not None and tuple(frame) != (w, h):
        sx, sy = w / frame[0], h / frame[1]
        x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    px = (max(0, int(x0)), max(0, int(y0)), min(w, int(round(x1 + 0.4999))), min(h, int(round(y1 + 0.4999))))
    if px[2] - px[0] < 1 or px[3] - px[1] < 1:
        return None
    if notes is not None and (x0 < 0 or y0 < 0 or x1 > w or y1 > h):
        notes.append(f"region box {list(box)!r} reached beyond the image and was clipped to it")
    return px


_FLAG = re.compile(r"^[\W_]*(?:answer\s*[:\-]\s*)?[\W_]*(yes|no)\b", re.I)


def parse_flag(text: str) -> bool | None:
    """The privacy flag of a short yes/no answer (the two-pass flag prompt): True for yes, False for no, None when
    the answer does not start with either (the caller then flags the image: fail closed). Markdown emphasis,
    quotes and an "Answer:" label before the word are tolerated; "Not sure" or "Nope" are not a no."""
    if not isinstance(text, str):
        return None
    match = _FLAG.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower() == "yes"


def parse_inspection(text: str, allowed: tuple[str, ...], size: tuple[int, int], box_format: str = "relative1000",
                     private: bool | None = None, frame: tuple[int, int] | None = None) -> ParsedInspection:
    """Validate a VLM answer: the one-pass inspection (flag, categories, review, captions, regions), or with
    ``private`` given (the decision of a separate flag pass), the caption pass of the two-pass prompts, which has
    no ``private`` field. ``frame``: see ``to_pixels`` (absolute boxes given in a resized copy of the image)."""
    data = extract_json_object(text)
    notes: list[str] = []
    required = ("categories", "private_caption", "public_caption") if private is not None else ("private", "categories", "private_caption", "public_caption")
    missing = [k for k in required if k not in data]
    if missing:
        raise AnswerError(f"missing field(s) {missing}")
    said = _as_bool(data["private"], "private") if "private" in data else None
    # a flag pass's yes stays a yes whatever the caption pass says (fail closed)
    private = said if private is None else (private or bool(said))
    cats_raw = data["categories"]
    if not isinstance(cats_raw, list):
        raise AnswerError(f"`categories` must be a list, got {cats_raw!r}")
    categories = []
    for cat in cats_raw:
        cid = str(cat).strip().lower()
        if cid in allowed:
            if cid not in categories:
                categories.append(cid)
        else:
            notes.append(f"unknown category {cat!r} dropped")
    review_raw = data.get("review", [])
    if not isinstance(review_raw, list):
        raise AnswerError(f"`review` must be a list, got {review_raw!r}")
    review = []
    for item in review_raw[:MAX_REVIEW_ITEMS]:
        if isinstance(item, dict) and isinstance(item.get("item"), str) and isinstance(item.get("reason"), str):
            review.append((" ".join(item["item"].split()), " ".join(item["reason"].split())))
        else:
            notes.append(f"malformed review item {item!r} dropped")
    if len(review_raw) > MAX_REVIEW_ITEMS:
        notes.append(f"{len(review_raw) - MAX_REVIEW_ITEMS} review item(s) beyond {MAX_REVIEW_ITEMS} dropped")
    regions = []
    regions_raw = data.get("regions", [])
    if not isinstance(regions_raw, list):
        raise AnswerError(f"`regions` must be a list, got {regions_raw!r}")
    for reg in regions_raw:
        if not isinstance(reg, dict) or "box" not in reg:
            notes.append(f"malformed region {reg!r} dropped")
            continue
        try:
            box = to_pixels(reg["box"], size, box_format, notes, frame)
        except AnswerError as err:
            notes.append(f"region dropped: {err}")
            continue
        if box is None:
            notes.append(f"region {reg.get('category')!r} with an empty box {reg.get('box')!r} dropped")
            continue
        cat = str(reg.get("category", "")).strip().lower()
        if cat not in allowed:
            # a box the model marked as sensitive stays sensitive; its category falls back to the first one found
            notes.append(f"region category {reg.get('category')!r} unknown")
            cat = categories[0] if categories else allowed[0]
        label = reg.get("label") if isinstance(reg.get("label"), str) and reg.get("label").strip() else cat
        regions.append(ParsedRegion(" ".join(label.split()), cat, box))
    if private and not categories:
        notes.append("flagged without a category")
    if not private and (categories or regions):
        # the answer contradicts itself: anything named as sensitive keeps the image flagged (fail closed)
        if "private" in required:
            notes.append("`private` false but categories or regions given: treated as private")
        else:
            notes.append("the flag pass said no but the caption pass named categories or regions: treated as private")
        private = True
    return ParsedInspection(
        private=private,
        categories=categories,
        review=review,
        private_caption=_as_text(data["private_caption"], "private_caption"),
        public_caption=_as_text(data["public_caption"], "public_caption"),
        regions=regions,
        notes=notes,
    )
