"""Round badges on people (mission patches, school and club crests) letter their names along the rim, which PP-OCR's
detector, trained on straight lines, does not see. Lite unrolls the rim of each badge-sized circle below a face into
straight strips and detects text there. Checked on scikit-image's astronaut, whose crew patch names five people,
and on badges drawn with Pillow, letter by letter along the arc, on the same photo with its patch painted out."""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.config import LiteInspectorConfig
from hf_unsafe2safe.inspection.lite import EMBLEM_STRIP_PAD, LiteInspector, unrolled_rim
from hf_unsafe2safe.inspection.templates import TemplateCaptioner
from hf_unsafe2safe.taxonomy import load_taxonomy
from hf_unsafe2safe.utils.images import decode

from conftest import encode, image_dataset

# the crew patch on the astronaut's right arm (labelled by eye on the 512 x 512 photo): COLLINS ASHBY over the top,
# COLEMAN HAWLEY TOGNINI along the bottom
CREW_PATCH = (134, 349, 207, 422)


def _cover(box, other) -> float:
    """Share of ``other`` covered by ``box``."""
    w = max(0, min(box[2], other[2]) - max(box[0], other[0]))
    h = max(0, min(box[3], other[3]) - max(box[1], other[1]))
    return w * h / ((other[2] - other[0]) * (other[3] - other[1]))


def _anonymize(photo, **inspector):
    anonymize = Unsafe2Safe.from_preset("lite", inspector=inspector)
    ds = anonymize.prepare(image_dataset([encode(photo, "PNG")]))
    return ds.map(anonymize, batched=True, features=anonymize.output_features(ds.features))[0]


def test_the_astronauts_crew_patch_is_found_and_edited(astronaut):
    photo, _ = astronaut
    row = _anonymize(photo)
    text = [r["box"] for r in row[C.PRIVACY_REGIONS] if r["category"] == "text_symbols"]
    assert max(_cover(box, CREW_PATCH) for box in text) >= 0.85, text
    safe = np.asarray(row["image"].convert("RGB"), dtype=np.float64)
    x0, y0, x1, y1 = CREW_PATCH
    assert np.abs(safe[y0:y1, x0:x1] - photo[y0:y1, x0:x1]).mean() > 20  # the patch's pixels were replaced

    # without the looks at people (name tags, badges) the patch is left as it was
    plain = _anonymize(photo, person_text=False)
    assert all(_cover(r["box"], CREW_PATCH) < 0.2 for r in plain[C.PRIVACY_REGIONS] if r["category"] == "text_symbols")


def _draw_badge(photo, centre, radius, upper, lower, letter_px):
    """A round badge: a blue disk with a light border, ``upper`` lettered clockwise over the top (tops outwards) and
    ``lower`` along the bottom (tops inwards, read left to right), each letter drawn upright and rotated into place."""
    image = Image.fromarray(photo.copy())
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(40, 60, 150), outline=(230, 230, 230), width=2)
    font = ImageFont.load_default(size=letter_px)
    step = math.degrees(0.75 * letter_px / (0.78 * radius))  # degrees per letter on the circle the letters sit on
    for text, middle, clockwise in ((upper, 270, True), (lower, 90, False)):
        for i, char in enumerate(text):
            offset = (i - (len(text) - 1) / 2) * step
            angle = middle + offset if clockwise else middle - offset
            x = cx + 0.78 * radius * math.cos(math.radians(angle))
            y = cy + 0.78 * radius * math.sin(math.radians(angle))
            tile = Image.new("RGBA", (2 * letter_px, 2 * letter_px), (0, 0, 0, 0))
            ImageDraw.Draw(tile).text((letter_px, letter_px), char, font=font, fill=(255, 255, 255, 255), anchor="mm")
            tile = tile.rotate(-(angle - middle), resample=Image.BICUBIC)
            image.paste(tile, (int(x - letter_px), int(y - letter_px)), tile)
    return np.asarray(image)


@pytest.fixture(scope="module")
def patchless(astronaut):
    """The astronaut with her crew patch painted out (OpenCV's Telea inpainting of a disk over it)."""
    import cv2

    photo, _ = astronaut
    mask = np.zeros(photo.shape[:2], np.uint8)
    cv2.circle(mask, (166, 384), 42, 255, -1)
    return cv2.inpaint(photo, mask, 5, cv2.INPAINT_TELEA)


@pytest.fixture(scope="module")
def inspector():
    return LiteInspector(LiteInspectorConfig(), load_taxonomy(), TemplateCaptioner()).load()


def _regions(inspector, rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return inspector.inspect(decode(buf.getvalue(), 10**8)).regions


@pytest.mark.parametrize(
    ("centre", "radius", "letter_px", "upper", "lower"),
    [
        ((168, 385), 38, 9, "ALPHA BRAVO", "CHARLIE DELTA"),
        ((150, 390), 30, 8, "ALPHA BRAVO", "CHARLIE DELTA"),
        ((170, 380), 45, 11, "NORTH HIGH SCHOOL", ""),
    ],
)
def test_a_drawn_badge_is_found_whole_and_read(inspector, patchless, centre, radius, letter_px, upper, lower):
    disk = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
    assert all(_cover(r.box, disk) < 0.5 for r in _regions(inspector, patchless) if r.category == "text_symbols")

    badge = _draw_badge(patchless, centre, radius, upper, lower, letter_px)
    on_it = [r for r in _regions(inspector, badge) if r.category == "text_symbols" and _cover(r.box, disk) >= 0.9]
    assert on_it, "no text region covers the badge"
    # read, if not letter-perfect: a drawn word comes out whole
    assert any(word in (r.text or "") for r in on_it for word in f"{upper} {lower}".split()), [r.text for r in on_it]

    # the same disk without lettering is not a text region
    blank = _draw_badge(patchless, centre, radius, "", "", letter_px)
    assert all(_cover(r.box, disk) < 0.5 for r in _regions(inspector, blank) if r.category == "text_symbols")


def test_rim_strips_run_round_the_circle_with_the_letters_upright():
    # marks on a circle of radius 50 at 270 (top), 90 (bottom) and 0 degrees (right), image coordinates
    image = np.zeros((200, 200, 3), np.uint8)
    cx, cy, r = 100.0, 100.0, 50.0
    for angle, colour in ((270, (255, 0, 0)), (90, (0, 255, 0)), (0, (0, 0, 255))):
        x, y = cx + 0.95 * r * math.cos(math.radians(angle)), cy + 0.95 * r * math.sin(math.radians(angle))
        image[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3] = colour
    upper, lower = unrolled_rim(image, (cx, cy, r))
    assert upper.shape == lower.shape

    def where(strip, channel):
        inside = strip[EMBLEM_STRIP_PAD : strip.shape[0] - EMBLEM_STRIP_PAD, :, channel].astype(float)
        ys, xs = np.nonzero(inside > 128)
        return xs.mean() / inside.shape[1], ys.mean() / inside.shape[0]

    # the upper half runs from 135 to 405 degrees: the top of the circle in its middle, the right-hand point at
    # (360 - 135) / 270 of its length; the outer edge is on top
    x, y = where(upper, 0)
    assert abs(x - 0.5) < 0.02 and y < 0.4
    x, _ = where(upper, 2)
    assert abs(x - 225 / 270) < 0.02
    # the lower half, turned half round: the bottom of the circle in its middle, the outer edge at the bottom
    x, y = where(lower, 1)
    assert abs(x - 0.5) < 0.02 and y > 0.6


def test_the_patch_is_found_below_a_face_cut_by_the_top_edge(inspector, astronaut):
    # the same photo from y = 100 down: the face box is cut short, but the face's height is judged from its width
    photo, _ = astronaut
    cut = np.ascontiguousarray(photo[100:])
    regions = _regions(inspector, cut)
    face = next(r.box for r in regions if r.category == "people")
    assert face[1] <= 5 and face[3] - face[1] < 1.2 * (face[2] - face[0]), face
    x0, y0, x1, y1 = CREW_PATCH
    patch = (x0, y0 - 100, x1, y1 - 100)
    assert any(_cover(r.box, patch) >= 0.85 for r in regions if r.category == "text_symbols"), [r.box for r in regions]
