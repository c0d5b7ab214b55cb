"""What lite reads in the text lines it finds: each line is recognised at its own width. The strings are checked
against the text that was rendered (Pillow's own font), not against another run of the project."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from skimage import data

from hf_unsafe2safe.config import LiteInspectorConfig
from hf_unsafe2safe.inspection.lite import LiteInspector, TextDetector
from hf_unsafe2safe.taxonomy import load_taxonomy
from hf_unsafe2safe.inspection.templates import TemplateCaptioner
from hf_unsafe2safe.utils.images import decode

from conftest import encode

# short and long lines, words with spaces between them (a line padded to 320 px, as rapidocr's recogniser does,
# read "NOPARKING" and "NY34VSA"), digits and punctuation
LINES = ["EXIT", "NO PARKING", "NY34 VSA", "Dr. O. Berg", "CALL 555-673-2993", "jane.doe@example.com"]


@pytest.fixture(scope="module")
def sign_photo():
    """scikit-image's coffee photo (600x400) at 1000x667 with the lines on light panels, 20-px capitals; each line's
    ink box."""
    photo = Image.fromarray(data.coffee()).resize((1000, 667))
    draw = ImageDraw.Draw(photo)
    font = ImageFont.load_default(size=28)
    boxes = []
    for i, text in enumerate(LINES):
        x, y = 40 + (i % 2) * 480, 40 + (i // 2) * 200
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle((left - 10, top - 10, right + 10, bottom + 10), fill=(245, 245, 240))
        draw.text((x, y), text, font=font, fill=(20, 20, 20))
        boxes.append((left, top, right, bottom))
    return np.asarray(photo), boxes


def _line_on(box, lines):
    """The detected line that covers most of ``box``."""
    def shared(line):
        x0, y0, x1, y1 = line[0]
        return max(0, min(x1, box[2]) - max(x0, box[0])) * max(0, min(y1, box[3]) - max(y0, box[1]))

    best = max(lines, key=shared)
    assert shared(best) > 0.5 * (box[2] - box[0]) * (box[3] - box[1]), (box, lines)
    return best


def test_every_line_is_read_as_rendered_spaces_included(sign_photo):
    photo, boxes = sign_photo
    detector = TextDetector(640, 960, 0.3, read_text=True, max_regions=64, min_chars=2, num_threads=1)
    lines = detector(photo)
    assert [_line_on(box, lines)[2] for box in boxes] == LINES


def test_a_line_narrower_than_it_is_high_is_read():
    """A single tall character is padded to a square before reading (the network needs the width)."""
    detector = TextDetector(640, 960, 0.3, read_text=True, max_regions=64, num_threads=1)
    canvas = Image.new("RGB", (40, 64), (245, 245, 240))
    ImageDraw.Draw(canvas).text((8, 4), "7", font=ImageFont.load_default(size=48), fill=(20, 20, 20))
    crop = np.ascontiguousarray(np.asarray(canvas)[..., ::-1])
    assert detector.recognizer([crop]) == ["7"]


def test_what_is_read_decides_the_kind_of_text(sign_photo):
    photo, _ = sign_photo
    inspector = LiteInspector(LiteInspectorConfig(faces=False, metadata=False), load_taxonomy(), TemplateCaptioner())
    found = inspector.inspect(decode(encode(photo, "PNG"), 10**8))
    kinds = sorted(r.label for r in found.regions)
    assert kinds == ["text", "text", "text", "text:email", "text:licence_plate", "text:phone_number"], found.regions
