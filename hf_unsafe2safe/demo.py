"""A small demo dataset from real photos that installed packages ship, plus rendered privacy-prone images.

Real photos come from ``skimage.data`` (astronaut: a face and a name tag; coffee, chelsea, rocket: no
person). Rendered images carry fictitious personal data (a name, a phone number, an address, an ID
number, a licence plate) and one file carries EXIF GPS and a camera serial number.
"""

from __future__ import annotations

import io

import numpy as np

FAKE = {
    "name": "JANE Q. EXAMPLE",
    "birth": "DOB 1987-04-12",
    "id": "ID 4820 1937 5521",
    "address": "742 Evergreen Terrace, Springfield",
    "phone": "+1 555 014 2398",
    "plate": "KX21 WPD",
    "email": "jane.example@mail.test",
}


def _jpeg(img, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **params)
    return buf.getvalue()


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def id_card(face=None):
    """A fictitious ID card: photo, name, birth date, ID number, address."""
    from PIL import Image, ImageDraw

    card = Image.new("RGB", (640, 400), (226, 236, 246))
    d = ImageDraw.Draw(card)
    d.rectangle([0, 0, 640, 64], fill=(22, 60, 120))
    d.text((24, 14), "IDENTITY CARD", font=_font(32), fill="white")
    if face is not None:
        card.paste(face.resize((180, 220)), (24, 96))
    lines = [FAKE["name"], FAKE["birth"], FAKE["id"], "742 Evergreen Terrace", "Springfield"]
    for i, line in enumerate(lines):
        d.text((230, 100 + i * 48), line, font=_font(28), fill=(20, 20, 20))
    return card


def letter():
    """A note with a name, phone number, email and address on paper."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (560, 420), (250, 247, 238))
    d = ImageDraw.Draw(page)
    lines = ["Dear neighbour,", "please call me back:", FAKE["phone"], FAKE["email"], FAKE["address"], "- " + FAKE["name"]]
    for i, line in enumerate(lines):
        d.text((30, 30 + i * 62), line, font=_font(30), fill=(30, 30, 60))
    return page


def car_plate():
    """A car rear drawn with a licence plate."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (640, 420), (120, 150, 170))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 330, 640, 420], fill=(70, 70, 70))
    d.rounded_rectangle([90, 120, 550, 340], radius=40, fill=(170, 20, 30))
    d.rectangle([150, 150, 490, 230], fill=(40, 50, 60))
    d.ellipse([110, 250, 170, 290], fill=(255, 200, 0))
    d.ellipse([470, 250, 530, 290], fill=(255, 200, 0))
    d.rectangle([220, 262, 420, 312], fill=(250, 250, 250), outline=(0, 0, 0), width=3)
    d.text((236, 266), FAKE["plate"], font=_font(38), fill=(0, 0, 0))
    return img


def gps_photo(pixels: np.ndarray) -> bytes:
    """A JPEG whose EXIF holds a GPS position, a camera serial number and an owner name."""
    from PIL import Image

    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x010F] = "DemoCam"
    exif[0x0110] = "DC-1"
    exif[0x013B] = FAKE["name"]
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (40.0, 26.0, 46.0), 3: "W", 4: (79.0, 58.0, 56.0)})
    exif.get_ifd(0x8769)[0xA431] = "SN-00412-7781"
    return _jpeg(img, exif=exif.tobytes())


def build_demo_dataset():
    """The demo ``datasets.Dataset``: columns ``image`` (encoded files) and ``name``."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage
    from skimage import data

    astronaut = PILImage.fromarray(data.astronaut())
    face = astronaut.crop((150, 20, 330, 240))
    rows = [
        ("astronaut (real photo: face, name tag)", _jpeg(astronaut)),
        ("coffee (real photo)", _jpeg(PILImage.fromarray(data.coffee()))),
        ("chelsea the cat (real photo)", _jpeg(PILImage.fromarray(data.chelsea()))),
        ("rocket (real photo)", _jpeg(PILImage.fromarray(data.rocket()))),
        ("scene text (real photo)", _png(PILImage.fromarray(data.text()))),
        ("fictitious ID card", _png(id_card(face))),
        ("note with phone, email, address", _jpeg(letter())),
        ("car with licence plate", _jpeg(car_plate())),
        ("photo with EXIF GPS + serial", gps_photo(data.hubble_deep_field()[:300, :400])),
    ]
    features = Features({"image": Image(), "name": Value("string")})
    return Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for _, b in rows], "name": [n for n, _ in rows]}, features=features
    )
