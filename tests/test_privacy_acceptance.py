"""Privacy acceptance tests of the "lite" preset, judged by detectors independent of the pipeline's own.

The transform is called as users call it (``prepare`` + ``datasets.map(batched=True)``), and its output
is judged by:

1. faces: dlib's HOG frontal detector and OpenCV's Haar cascade (not RetinaFace) must not find a face
   where one was, and dlib's 128-d face embedding of each face must move farther than dlib's
   same-person threshold (0.6);
2. text: the full RapidOCR pipeline (detection with upscaling + angle classification + recognition)
   must not read any of the fictitious personal data of ``hf_unsafe2safe.demo`` (it does read it on the
   originals);
3. pixels farther than the edit's reach from every region box are unchanged (exactly for PNG; within
   re-encoding noise for JPEG).

Numbers are printed (``pytest -rP`` shows them).
"""

from __future__ import annotations

import difflib
import io
import math
import re

import numpy as np
import pytest

dlib = pytest.importorskip("dlib")
cv2 = pytest.importorskip("cv2")
face_recognition_models = pytest.importorskip("face_recognition_models")
pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("skimage")

from datasets import Dataset, Features, Image as ImageFeature  # noqa: E402
from PIL import Image  # noqa: E402

from hf_unsafe2safe import Unsafe2Safe, demo  # noqa: E402
from hf_unsafe2safe.inspection.base import box_iou  # noqa: E402

# ---- independent judges ---------------------------------------------------------------------------

DLIB_SAME_PERSON = 0.6
HAAR_PARAMS = {"scaleFactor": 1.1, "minNeighbors": 5, "minSize": (40, 40)}


@pytest.fixture(scope="module")
def hog():
    return dlib.get_frontal_face_detector()


@pytest.fixture(scope="module")
def haar():
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    assert not cascade.empty()
    return cascade


@pytest.fixture(scope="module")
def face_embedder():
    shape = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    net = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def embed(rgb: np.ndarray, box) -> np.ndarray:
        rect = dlib.rectangle(*(int(v) for v in box))
        return np.asarray(net.compute_face_descriptor(rgb, shape(rgb, rect)))

    return embed


@pytest.fixture(scope="module")
def ocr():
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()

    def read(img: Image.Image, sensitive: bool = False) -> list[str]:
        bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[..., ::-1])
        # the keyword values are sticky in RapidOCR, so both modes pass all three explicitly
        thresholds = {"box_thresh": 0.3, "text_score": 0.3} if sensitive else {"box_thresh": 0.5, "text_score": 0.5}
        result, _ = engine(bgr, unclip_ratio=1.6, **thresholds)
        return [line[1] for line in (result or [])]

    return read


def detect_faces(rgb: np.ndarray, hog, haar) -> dict[str, list[tuple[int, int, int, int]]]:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    hog_boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in hog(rgb, 1)]
    haar_boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in haar.detectMultiScale(grey, **HAAR_PARAMS)]
    return {"hog": hog_boxes, "haar": haar_boxes}


def _center_inside(a, b) -> bool:
    cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return b[0] <= cx < b[2] and b[1] <= cy < b[3]


def _inside(a, b) -> bool:
    """Box ``a`` lies within box ``b``."""
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def same_place(a, b) -> bool:
    return box_iou(a, b) > 0.3 or _center_inside(a, b) or _center_inside(b, a)


# ---- the transform, called as users call it -----------------------------------------------------


@pytest.fixture(scope="module")
def anonymize():
    return Unsafe2Safe.from_preset("lite")


@pytest.fixture(scope="module")
def anonymize_faces_only():
    # the group photo judged once more with text detection off, so that faces are judged on the face
    # edit alone (the text detector also fires on rows of faces, see test_group_photo_text_regions)
    return Unsafe2Safe.from_preset("lite", inspector={"text": False})


def run_transform(anonymize, sources: list[bytes]) -> list[dict]:
    features = Features({"image": ImageFeature()})
    ds = Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in sources]}, features=features)
    ds = anonymize.prepare(ds)
    out = ds.map(anonymize, batched=True, features=anonymize.output_features(features))
    rows = list(out)
    for row in rows:
        assert isinstance(row["image"], Image.Image)
        assert row["anonymization"]["status"] == "edited", row["anonymization"]
    return rows


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _decode_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def region_reach_mask(shape, regions, editor) -> np.ndarray:
    """True where the editor may have written: each box grown by dilation * box size + feather + 2."""
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    for region in regions:
        x0, y0, x1, y1 = region["box"]
        reach = math.ceil(editor.dilation * max(x1 - x0, y1 - y0)) + editor.feather + 2
        mask[max(0, y0 - reach) : min(h, y1 + reach), max(0, x0 - reach) : min(w, x1 + reach)] = True
    return mask


# ---- 1. group photo ---------------------------------------------------------------------------------

GROUP_SIZE = (960, 540)
# (lfw_subset index, side in px, x, y); the last one is cut by the left border
LFW_FACES = [(0, 150, 310, 110), (5, 140, 530, 100), (10, 160, 750, 110), (20, 130, 360, 370), (33, 150, 590, 350), (42, 150, -60, 330)]


def _oval_paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int, feather: float) -> None:
    """Paste ``img`` at (x, y) through a soft oval mask (a portrait vignette); parts off-canvas are cut."""
    H, W = canvas.shape[:2]
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    r = np.sqrt(((xs - (w - 1) / 2) / (w / 2)) ** 2 + ((ys - (h - 1) / 2) / (h / 2)) ** 2)
    alpha = np.clip((1 - r) / feather, 0, 1)[..., None]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + img[y0 - y : y1 - y, x0 - x : x1 - x] * a


def make_group_photo() -> Image.Image:
    """A "group photo" from real faces: the astronaut's head and upscaled LFW faces on a neutral backdrop."""
    from skimage import data

    W, H = GROUP_SIZE
    canvas = np.empty((H, W, 3), np.float32)
    canvas[:] = np.array([176, 184, 170], np.float32)
    canvas *= (0.92 + 0.12 * np.arange(H) / H)[:, None, None]  # a soft vertical gradient
    head = Image.fromarray(data.astronaut()).crop((150, 20, 330, 240)).resize((180, 220), Image.LANCZOS)
    _oval_paste(canvas, np.asarray(head, np.float32), 60, 70, 0.12)
    lfw = data.lfw_subset()  # 25x25 grey crops; the first 100 are faces
    for index, side, x, y in LFW_FACES:
        grey = cv2.resize((lfw[index] * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
        _oval_paste(canvas, np.repeat(grey[..., None], 3, axis=2).astype(np.float32), x, y, 0.18)
    return Image.fromarray(canvas.clip(0, 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def group(hog, haar):
    """The group photo as a JPEG (quality 95) and its ground-truth faces: those an independent detector finds."""
    source = _encode(make_group_photo(), "JPEG", quality=95)
    rgb = _decode_rgb(source)
    found = detect_faces(rgb, hog, haar)
    truth: list[dict] = []  # {"box": dlib rectangle used for the embedding, "by": detectors}
    for name in ("hog", "haar"):
        for box in found[name]:
            match = next((t for t in truth if same_place(t["box"], box)), None)
            if match is None:
                truth.append({"box": box, "by": [name]})
            elif name not in match["by"]:
                match["by"].append(name)
    truth.sort(key=lambda t: (t["box"][1] > 300, t["box"][0]))
    print(f"group photo: placed {1 + len(LFW_FACES)} faces (one cut by the border); found on the original: "
          f"HOG {len(found['hog'])}, Haar {len(found['haar'])}, ground truth (either) {len(truth)}")
    for t in truth:
        print(f"  ground-truth face {t['box']} found by {'+'.join(t['by'])}")
    return {"source": source, "rgb": rgb, "found": found, "truth": truth}


@pytest.fixture(scope="module")
def group_outputs(group, anonymize, anonymize_faces_only):
    out = {}
    for variant, transform in (("lite", anonymize), ("lite, text off", anonymize_faces_only)):
        (row,) = run_transform(transform, [group["source"]])
        out[variant] = row
    return out


VARIANTS = ["lite", "lite, text off"]


def test_group_photo_ground_truth(group):
    # the composition is only a useful test if the independent detectors see most of its faces
    assert len(group["truth"]) >= 5, group["truth"]
    assert group["rgb"].shape[:2] == GROUP_SIZE[::-1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_group_photo_faces_not_detected_after(group, group_outputs, hog, haar, variant):
    row = group_outputs[variant]
    assert row["image"].format == "JPEG"
    after_rgb = np.asarray(row["image"].convert("RGB"))
    after = detect_faces(after_rgb, hog, haar)
    face_regions = [r["box"] for r in row["privacy_regions"] if r["label"] == "face"]
    print(f"[{variant}] pipeline face regions: {len(face_regions)}; after anonymization: "
          f"HOG {len(after['hog'])} {after['hog']}, Haar {len(after['haar'])} {after['haar']}")
    hits = [
        (name, box, t["box"])
        for name, boxes in after.items()
        for box in boxes
        for t in group["truth"]
        if same_place(box, t["box"])
    ]
    assert not hits, f"independent detectors still find faces at ground-truth locations: {hits}"


@pytest.mark.parametrize(
    "variant",
    [
        "lite",
        "lite, text off",
    ],
)
def test_group_photo_face_embeddings_moved(group, group_outputs, face_embedder, variant):
    after_rgb = np.ascontiguousarray(np.asarray(group_outputs[variant]["image"].convert("RGB")))
    distances = []
    for t in group["truth"]:
        before = face_embedder(group["rgb"], t["box"])
        after = face_embedder(after_rgb, t["box"])
        distances.append(float(np.linalg.norm(before - after)))
    text_boxes = [r["box"] for r in group_outputs[variant]["privacy_regions"] if r["category"] == "text_symbols"]
    inpainted = [any(_inside(t["box"], b) for b in text_boxes) for t in group["truth"]]
    print(f"[{variant}] dlib embedding distance original -> anonymized per ground-truth face: "
          f"{[round(d, 3) for d in distances]} (min {min(distances):.3f}; same person below {DLIB_SAME_PERSON}); "
          f"faces inside a text box (inpainted, not only pixelated): {sum(inpainted)}/{len(inpainted)}")
    assert all(d > DLIB_SAME_PERSON for d in distances), distances


def test_group_photo_faces_are_regions(group, group_outputs):
    """Every ground-truth face is covered by one of the pipeline's face regions (text off: faces alone)."""
    faces = [r["box"] for r in group_outputs["lite, text off"]["privacy_regions"] if r["label"] == "face"]
    missed = [t["box"] for t in group["truth"] if not any(same_place(t["box"], f) for f in faces)]
    assert not missed, missed
    # the face cut by the image border (no independent detector finds it) is found too: the reason for
    # face_threshold 0.5
    _, side, x, y = LFW_FACES[-1]
    visible = (max(0, x), y, x + side, y + side)
    assert any(same_place(visible, f) for f in faces), faces


def test_group_photo_text_regions(group_outputs):
    """Reports the text regions the lite preset finds on a photo with no text in it (rows of faces read as
    text lines); text detection must not change which faces are found."""
    text = [(r["label"], r["box"], round(r["score"], 2)) for r in group_outputs["lite"]["privacy_regions"] if r["category"] == "text_symbols"]
    W, H = GROUP_SIZE
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for _, b, _ in text) / (W * H)
    print(f"[lite] text regions on a text-free group photo: {text} ({area:.0%} of the image in boxes)")
    faces = {v: sorted(tuple(r["box"]) for r in row["privacy_regions"] if r["label"] == "face") for v, row in group_outputs.items()}
    assert faces["lite"] == faces["lite, text off"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_group_photo_jpeg_unchanged_outside_regions(group, group_outputs, anonymize, variant):
    row = group_outputs[variant]
    after = np.asarray(row["image"].convert("RGB")).astype(np.int16)
    before = group["rgb"].astype(np.int16)
    outside = ~region_reach_mask(before.shape, row["privacy_regions"], anonymize.config.editor)
    diff = np.abs(after - before)[outside]
    mad, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    print(f"[{variant}] JPEG q95 source -> output, outside the regions ({outside.mean():.0%} of the pixels): "
          f"mean |diff| {mad:.3f}, 99th percentile {p99:.0f}, max {int(diff.max())}")
    assert outside.mean() > 0.1
    assert mad < 1.5


# ---- 2. documents: text must not be readable --------------------------------------------------------

# what each rendered document shows, as it is printed there
DOCUMENT_SECRETS = {
    "id_card": [demo.FAKE["name"], demo.FAKE["birth"], demo.FAKE["id"], "742 Evergreen Terrace", "Springfield"],
    "letter": [demo.FAKE["phone"], demo.FAKE["email"], demo.FAKE["address"], demo.FAKE["name"]],
    "car_plate": [demo.FAKE["plate"]],
}
# every sensitive string, whatever the document
SECRETS = [demo.FAKE[k] for k in ("name", "birth", "id", "address", "phone", "plate", "email")] + ["742 Evergreen Terrace", "Springfield"]


def _norm(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def fuzzy(line: str, secret: str) -> float:
    """Best SequenceMatcher ratio of ``secret`` against the line or any same-length window of it."""
    a, b = _norm(line), _norm(secret)
    best = difflib.SequenceMatcher(None, a, b).ratio()
    for i in range(max(0, len(a) - len(b)) + 1):
        best = max(best, difflib.SequenceMatcher(None, a[i : i + len(b)], b).ratio())
    return best


def secret_digits() -> set[str]:
    runs = set()
    for s in SECRETS:
        runs.update(m for m in re.findall(r"\d+", s) if len(m) >= 4)
        digits = re.sub(r"\D", "", s)
        if len(digits) >= 4:
            runs.add(digits)
    return runs


def leaks(lines: list[str]) -> list[tuple[str, str, float]]:
    found = []
    for line in lines:
        for s in SECRETS:
            score = fuzzy(line, s)
            if score >= 0.8:
                found.append((line, s, round(score, 2)))
        compact = re.sub(r"\s+", "", line)
        found += [(line, run, 1.0) for run in secret_digits() if run in compact]
    return found


@pytest.fixture(scope="module")
def documents(anonymize):
    from skimage import data

    face = Image.fromarray(data.astronaut()).crop((150, 20, 330, 240))
    images = {"id_card": demo.id_card(face), "letter": demo.letter(), "car_plate": demo.car_plate()}
    sources = {name: _encode(img, "PNG") for name, img in images.items()}
    rows = run_transform(anonymize, list(sources.values()))
    return {name: {"source": sources[name], "row": row} for name, row in zip(sources, rows)}


@pytest.mark.parametrize("name", list(DOCUMENT_SECRETS))
def test_document_text_unreadable(documents, ocr, name):
    doc = documents[name]
    before = ocr(Image.open(io.BytesIO(doc["source"])))
    after = ocr(doc["row"]["image"], sensitive=True)
    print(f"{name}: OCR original {before}; OCR anonymized (box/text thresholds 0.3) {after}")
    # the judge can read every secret on the original, so its silence afterwards means something
    unread = [s for s in DOCUMENT_SECRETS[name] if not any(fuzzy(line, s) >= 0.8 for line in before)]
    assert not unread, f"OCR does not read {unread} on the original: {before}"
    assert leaks(before)
    assert not leaks(after), leaks(after)


# ---- 3. pixels outside the regions ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DOCUMENT_SECRETS))
def test_png_unchanged_outside_regions(documents, anonymize, name):
    doc = documents[name]
    row = doc["row"]
    assert row["image"].format == "PNG"
    before = _decode_rgb(doc["source"])
    after = np.asarray(row["image"].convert("RGB"))
    assert after.shape == before.shape
    reach = region_reach_mask(before.shape, row["privacy_regions"], anonymize.config.editor)
    outside = ~reach
    changed = np.any(after != before, axis=-1)
    print(f"{name}: {len(row['privacy_regions'])} regions; pixels outside their reach {outside.mean():.0%}, "
          f"changed there {int(changed[outside].sum())}; changed inside {changed[reach].mean():.0%}")
    assert outside.mean() > 0.1
    assert not changed[outside].any(), np.argwhere(changed & outside)[:10]
    assert changed[reach].any()
