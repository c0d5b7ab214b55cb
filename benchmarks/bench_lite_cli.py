"""The ``lite`` CLI against the ``deface`` CLI, as a user runs them: whole fresh processes, defaults (issue 14).

    python benchmarks/bench_lite_cli.py --out benchmarks/_work/cli            # the full run (tens of minutes)
    python benchmarks/bench_lite_cli.py --repeats 1 --large 4 --skip rss      # a quick check (a few minutes)

What it measures, side by side in one run (see benchmarks/README.md, "The CLI as a user runs it"):

1. speed on four photo sets: the 48 photos 640 px wide of ``bench_lite.py`` (and ``--many`` copies of them, where
   start-up no longer decides), ``--large`` composites 1024-2048 px
   (scikit-image photos upscaled as backgrounds, real faces pasted at 60-300 px, rendered signs / name tags / phone
   numbers / plates at cap heights 6-60 px, the demo's car with its plate) and ``--phone`` of the same composites
   at 4032 px, a 12-MP phone photo's size (the pasted items keep their pixel sizes). For each set: ``deface --backend B DIR``
   (on a fresh copy) with each backend deface's environment can run (OpenCV's DNN, what ``pip install deface`` gives;
   ONNX Runtime where onnx and onnxruntime are installed beside it), ``unsafe2safe anonymize DIR --output OUT`` (full lite, the defaults) and the same with faces only, each
   ``--repeats`` times, interleaved; wall seconds, images/s, the child's CPU seconds (user + sys) and its peak RSS
   (both from ``os.wait4``), and the ratios to the faster deface backend;
2. peak RSS of ``unsafe2safe anonymize`` on 200 vs 2000 distinct 1024-px photos (``--rss-rows``);
3. recall of the full-lite runs on the composites' ground truth (``<out>/large_truth.json``, ``phone_truth.json``):
   faces by height band, text by cap-height band, plates.

It prints a markdown table and writes ``<out>/lite_cli.md`` and ``<out>/lite_cli.json``. Rows measured while other
processes used the CPU are marked (``bench_lite.Contention``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import bench_lite  # noqa: E402  (also sets HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)

SECTIONS = ("photos", "many", "deface", "large", "phone", "rss", "recall")
NOISY = 0.15  # cores used by other processes during a measurement above which a row is marked

# --------------------------------------------------------------------------------------------------
# the large composite set
# --------------------------------------------------------------------------------------------------
# backgrounds: skimage photographs (astronaut and camera carry a real face, labelled too)
BACKGROUNDS = ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field", "camera")
# real heads from skimage.data, in the source image's pixels: the crop pasted (hair, neck, some background) and
# the face inside it (brows to chin, ear to ear / ear to nose), read off the photographs by eye
HEADS = {
    "astronaut": {"crop": (140, 22, 310, 212), "face": (178, 68, 272, 185)},
    "camera": {"crop": (150, 60, 282, 215), "face": (178, 108, 258, 195)},
}
FACE_BANDS = ((60, 100), (100, 160), (160, 230), (230, 301))  # pasted face heights, px (bands for recall)
FACE_REPORT_BANDS = FACE_BANDS + ((301, 10**6),)  # the background faces are larger
CAP_BANDS = ((6, 10), (10, 16), (16, 24), (24, 40), (40, 61))  # rendered text cap heights, px
LONG_SIDE = (1024, 2048)
PHONE_SIDE = (4032, 4032)  # a 12-MP phone photo's longer side (4032 x 3024)
FACES_PER_IMAGE = (1, 2, 3)  # cycled
TEXTS_PER_IMAGE = len(CAP_BANDS)  # one per cap band
MARGIN = 12  # px kept free around every pasted item
TRUTH = "large_truth.json"
PHONE_TRUTH = "phone_truth.json"

SIGNS = ("NO PARKING", "EXIT", "MAIN ST", "OPEN 9-5", "PRIVATE", "GATE 4", "STAFF ONLY", "ELM AVE", "PHARMACY",
         "BUS 42", "TAXI", "HOTEL", "KEEP CLEAR", "PLATFORM 2")
FIRST = ("JANE", "Omar", "Li", "Maria", "Tom", "Aisha", "Ken", "Sofia", "Raj", "Eva")
LAST = ("EXAMPLE", "Rivera", "Chen", "Novak", "Okafor", "Smith", "Tanaka", "Haddad", "Berg", "Costa")
# (panel colour, ink colour, border colour or None)
STYLES = {
    "sign": (((20, 60, 140), (250, 250, 250), (250, 250, 250)), ((20, 110, 60), (250, 250, 250), None),
             ((245, 245, 240), (20, 20, 20), (200, 30, 30)), ((250, 210, 40), (20, 20, 20), None)),
    "name_tag": (((250, 250, 250), (20, 30, 80), (120, 120, 130)), ((225, 230, 240), (10, 10, 10), None)),
    "phone": (((250, 247, 238), (30, 30, 60), None), ((40, 40, 40), (240, 240, 240), None)),
    "plate": (((250, 250, 250), (0, 0, 0), (0, 0, 0)), ((250, 205, 30), (0, 0, 0), (0, 0, 0))),
}


def _frac(i: int, shift: float) -> float:
    """A low-discrepancy sequence in [0, 1): image i's value does not depend on how many images are built."""
    return (i * 0.6180339887 + shift) % 1.0


def _rgb(arr):
    import numpy as np

    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]


def _source(name: str):
    from PIL import Image
    from skimage import data

    return Image.fromarray(_rgb(getattr(data, name)()))


def font_for_cap(cap: int):
    """``ImageFont.load_default(size)`` whose capital H is ``cap`` px high (the closest size), and that height."""
    from PIL import ImageFont

    best = None
    for size in range(4, 200):
        font = ImageFont.load_default(size=size)
        b = font.getbbox("H")
        got = b[3] - b[1]
        if best is None or abs(got - cap) < abs(best[2] - cap):
            best = (size, font, got)
        if got > cap + 2:
            break
    return best


def _text_string(style: str, rng) -> str:
    if style == "sign":
        return SIGNS[rng.integers(len(SIGNS))]
    if style == "name_tag":
        first, last = FIRST[rng.integers(len(FIRST))], LAST[rng.integers(len(LAST))]
        return f"{first} {last}" if rng.random() < 0.6 else f"Dr. {first[0]}. {last}"
    if style == "phone":
        n3, n4 = rng.integers(0, 1000), rng.integers(0, 10000)
        return f"+1 555 {n3:03d} {n4:04d}" if rng.random() < 0.5 else f"CALL 555-{n3:03d}-{n4:04d}"
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    pick = lambda k: "".join(letters[j] for j in rng.integers(0, len(letters), k))  # noqa: E731
    return f"{pick(2)}{rng.integers(10, 100)} {pick(3)}"


def render_panel(text: str, cap: int, style: tuple):
    """A panel holding one line of ``text`` with capitals ``cap`` px high. Returns the panel image and, in its
    pixels, the ink box of the text, the inner box (the panel colour outside the ink; a border lies around it)."""
    import numpy as np
    from PIL import Image, ImageDraw

    size, font, got_cap = font_for_cap(cap)
    bg, ink, border = style
    pad = max(3, round(0.45 * got_cap))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    inner = Image.new("RGB", (probe[2] - probe[0] + 2 * pad, probe[3] - probe[1] + 2 * pad), bg)
    ImageDraw.Draw(inner).text((pad - probe[0], pad - probe[1]), text, font=font, fill=ink)
    diff = np.any(np.asarray(inner) != np.array(bg, dtype=np.uint8), axis=2)
    ys, xs = np.nonzero(diff)
    if not len(xs):
        raise RuntimeError(f"nothing drawn for {text!r} at cap {cap}")
    bw = max(1, round(got_cap / 8)) if border else 0
    panel = Image.new("RGB", (inner.width + 2 * bw, inner.height + 2 * bw), border or bg)
    panel.paste(inner, (bw, bw))
    ink_box = (int(xs.min()) + bw, int(ys.min()) + bw, int(xs.max()) + 1 + bw, int(ys.max()) + 1 + bw)
    return panel, ink_box, (bw, bw, bw + inner.width, bw + inner.height), {"font_size": size, "cap_height": got_cap}


def car_plate_boxes(car):
    """The plate of ``hf_unsafe2safe.demo.car_plate()`` found in its pixels: the white plate rectangle and the
    ink inside it (read from the image, so a change of the demo's drawing is followed)."""
    import numpy as np

    arr = np.asarray(car).astype(int)
    white = np.all(arr >= 245, axis=2)
    ys, xs = np.nonzero(white)
    if not len(xs):
        raise RuntimeError("no plate found in demo.car_plate()")
    plate = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    inset = 6  # inside the plate's outline
    sub = arr[plate[1] + inset:plate[3] - inset, plate[0] + inset:plate[2] - inset]
    iy, ix = np.nonzero(sub.sum(axis=2) < 300)
    text = (plate[0] + inset + int(ix.min()), plate[1] + inset + int(iy.min()),
            plate[0] + inset + int(ix.max()) + 1, plate[1] + inset + int(iy.max()) + 1)
    return plate, text


def _free(box, taken) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + MARGIN <= a or b + MARGIN <= x0 or y1 + MARGIN <= c or d + MARGIN <= y0 for a, c, b, d in taken)


def _place(rng, size, canvas_size, taken):
    """A free position for an item of ``size``; None if 300 tries find none."""
    w, h = size
    cw, ch = canvas_size
    if w + 2 * MARGIN > cw or h + 2 * MARGIN > ch:
        return None
    for _ in range(300):
        x, y = int(rng.integers(MARGIN, cw - w - MARGIN + 1)), int(rng.integers(MARGIN, ch - h - MARGIN + 1))
        if _free((x, y, x + w, y + h), taken):
            return x, y
    return None


def compose(i: int, seed: int = 0, long_sides: tuple[int, int] = LONG_SIDE):
    """Composite ``i``: a PIL image (``long_sides`` px on its longer side) and its ground truth, a dict whose ``items``
    hold every labelled face (``box``: the face; ``paste_box``: the head crop pasted), text line (``box``: the ink;
    ``cap_height``) and plate (``box``: the plate's ink). Deterministic in (i, seed)."""
    import numpy as np
    from PIL import Image

    from hf_unsafe2safe.demo import FAKE, car_plate

    rng = np.random.default_rng([seed, i])
    name = BACKGROUNDS[i % len(BACKGROUNDS)]
    bg = _source(name)
    flip = bool(i // len(BACKGROUNDS) % 2)
    if flip:
        bg = bg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    long_side = long_sides[0] + round((long_sides[1] - long_sides[0]) * _frac(i, 0.3))
    scale = long_side / max(bg.size)
    canvas = bg.resize((round(bg.width * scale), round(bg.height * scale)), Image.Resampling.BICUBIC)
    items, taken = [], []

    def scaled(box):
        x0, y0, x1, y1 = box
        if flip:
            x0, x1 = bg.width - x1, bg.width - x0
        return [round(x0 * scale), round(y0 * scale), round(x1 * scale), round(y1 * scale)]

    if name in HEADS:  # the background's own face: labelled, and kept clear of pasted items
        face = scaled(HEADS[name]["face"])
        items.append({"kind": "face", "source": f"{name} (background)", "box": face, "height": face[3] - face[1]})
        taken.append(tuple(scaled(HEADS[name]["crop"])))

    # what to paste, largest first
    todo = []
    for k in range(FACES_PER_IMAGE[i % len(FACES_PER_IMAGE)]):
        lo, hi = FACE_BANDS[(i + k) % len(FACE_BANDS)]
        head = ("astronaut", "camera")[(i + k) % 2]
        todo.append(("face", head, int(rng.integers(lo, hi))))
    styles = ("sign", "name_tag", "phone", "plate")
    for k in range(TEXTS_PER_IMAGE):
        lo, hi = CAP_BANDS[(i + k) % len(CAP_BANDS)]
        style = styles[(i + k) % len(styles)]
        todo.append(("text", style, int(rng.integers(lo, hi))))
    if i % 2:
        todo.append(("car", "demo.car_plate", 0.45 + 0.9 * _frac(i, 0.7)))

    def build(kind, what, size):
        if kind == "face":
            spec = HEADS[what]
            cx0, cy0, cx1, cy1 = spec["crop"]
            fx0, fy0, fx1, fy1 = spec["face"]
            s = size / (fy1 - fy0)
            img = _source(what).crop(spec["crop"]).resize((round((cx1 - cx0) * s), round((cy1 - cy0) * s)),
                                                          Image.Resampling.LANCZOS)
            return img, {"source": what, "src_crop": list(spec["crop"]), "scale": s,
                         "face_in_crop": [round((fx0 - cx0) * s), round((fy0 - cy0) * s),
                                          round((fx1 - cx0) * s), round((fy1 - cy0) * s)]}
        if kind == "text":
            choices = STYLES[what]
            text = _text_string(what, rng)
            panel, ink, inner, info = render_panel(text, size, choices[int(rng.integers(len(choices)))])
            return panel, {"style": what, "text": text, "ink_in_panel": list(ink), "inner_in_panel": list(inner),
                           **info}
        car = car_plate()
        plate, ink = car_plate_boxes(car)
        img = car.resize((round(car.width * size), round(car.height * size)), Image.Resampling.LANCZOS)
        sx, sy = img.width / car.width, img.height / car.height
        sc = lambda b: [math.floor(b[0] * sx), math.floor(b[1] * sy), math.ceil(b[2] * sx), math.ceil(b[3] * sy)]  # noqa: E731
        return img, {"scale": size, "plate_in_car": sc(plate), "ink_in_car": sc(ink),
                     "cap_height": round((ink[3] - ink[1]) * sy)}

    built = []
    for kind, what, size in todo:
        img, info = build(kind, what, size)
        built.append((kind, what, size, img, info))
    built.sort(key=lambda b: -b[3].width * b[3].height)
    skipped = 0
    for kind, what, size, img, info in built:
        pos = None
        for _ in range(4):  # too large for the free space: shrink (faces and cars) and try again
            pos = _place(rng, img.size, canvas.size, taken)
            if pos is not None or kind == "text":
                break
            size = size * 0.8 if kind == "car" else max(FACE_BANDS[0][0], round(size * 0.8))
            img, info = build(kind, what, size)
        if pos is None:
            skipped += 1
            continue
        x, y = pos
        canvas.paste(img, (x, y))
        paste_box = [x, y, x + img.width, y + img.height]
        taken.append(tuple(paste_box))
        off = lambda b: [b[0] + x, b[1] + y, b[2] + x, b[3] + y]  # noqa: E731
        if kind == "face":
            box = off(info.pop("face_in_crop"))
            items.append({"kind": "face", "box": box, "height": box[3] - box[1], "paste_box": paste_box, **info})
        elif kind == "text":
            items.append({"kind": "text", "box": off(info.pop("ink_in_panel")), "paste_box": paste_box,
                          "panel_box": off(info.pop("inner_in_panel")), **info})
        else:
            items.append({"kind": "plate", "text": FAKE["plate"], "box": off(info.pop("ink_in_car")),
                          "plate_box": off(info.pop("plate_in_car")), "paste_box": paste_box, **info})
    return canvas, {"background": name, "flipped": flip, "size": list(canvas.size), "skipped": skipped, "items": items}


def build_large(folder: Path, n: int, seed: int = 0, long_sides: tuple[int, int] = LONG_SIDE, truth_name: str = TRUTH) -> dict:
    """``n`` composites as JPEGs (quality 90) in ``folder`` and their ground truth, also written to
    ``folder.parent / truth_name`` (beside the folder: ``deface DIR`` reads every file in DIR)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    truth = {"seed": seed, "note": "boxes [x0, y0, x1, y1] in image pixels; see bench_lite_cli.compose", "images": {}}
    for i in range(n):
        img, record = compose(i, seed, long_sides)
        name = f"{i:03d}_{record['background']}.jpg"
        img.save(folder / name, format="JPEG", quality=bench_lite.JPEG_QUALITY)
        truth["images"][name] = record
    (folder.parent / truth_name).write_text(json.dumps(truth, indent=1))
    return truth


def build_many(photos: Path, folder: Path, n: int) -> list[Path]:
    """``n`` files in ``folder``, copies of the photos in ``photos`` in turn (``0003_<name>``, ...)."""
    sources = sorted(photos.glob("*.jpg"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = [folder / f"{i:04d}_{sources[i % len(sources)].name}" for i in range(n)]
    for i, path in enumerate(paths):
        shutil.copy(sources[i % len(sources)], path)
    return paths


def build_rss(folder: Path, n: int, width: int = 1024) -> list[Path]:
    """``n`` distinct ``width``-px-wide JPEGs, cheaply: random crops, mirrors and colour gains of the skimage photos,
    a rendered phone number on every fourth one."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    sources = {name: np.asarray(_source(name)) for name in bench_lite.PHOTO_SOURCES}
    font = ImageFont.load_default(size=28)
    paths, seen = [], set()
    for i in range(n):
        rng = np.random.default_rng([1, i])
        name = bench_lite.PHOTO_SOURCES[i % len(bench_lite.PHOTO_SOURCES)]
        arr = sources[name]
        h, w = arr.shape[:2]
        fw, fh = rng.uniform(0.6, 1.0, 2)
        x0, y0 = int(rng.uniform(0, 1 - fw) * w), int(rng.uniform(0, 1 - fh) * h)
        crop = arr[y0:y0 + int(fh * h), x0:x0 + int(fw * w)]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.clip(crop * rng.uniform(0.85, 1.15, 3), 0, 255).astype(np.uint8)
        img = Image.fromarray(crop)
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.BILINEAR)
        if i % 4 == 3:
            ImageDraw.Draw(img).text((20, img.height - 60), f"CALL +1 555 {i % 1000:03d} {rng.integers(10000):04d}",
                                     font=font, fill=(250, 250, 250), stroke_width=2, stroke_fill=(0, 0, 0))
        path = folder / f"{i:05d}_{name}.jpg"
        img.save(path, format="JPEG", quality=bench_lite.JPEG_QUALITY)
        digest = hash(path.read_bytes())
        if digest in seen:
            raise RuntimeError(f"{path} duplicates another image")
        seen.add(digest)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# measured processes
# --------------------------------------------------------------------------------------------------
def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` as a whole process; its wall time, CPU time (user + sys) and peak RSS from ``os.wait4``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            out.seek(0)
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.read()[-2000:].decode(errors='replace')}\n"
                               f"{err.read()[-4000:].decode(errors='replace')}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "peak_rss_mb": ru.ru_maxrss / 1024}


def default_cli() -> list[str]:
    here = Path(sys.executable).with_name("unsafe2safe")
    if here.exists():
        return [str(here)]
    found = shutil.which("unsafe2safe")
    return [found] if found else [sys.executable, "-m", "hf_unsafe2safe.cli"]


LITE_TOOLS = {
    "lite full": [],
    "lite faces": ["--set", "inspector.text=false", "--set", "inspector.metadata=false"],
}


def tool_env(**extra) -> dict:
    """The environment both tools run in: this one, less ``PYTHONDONTWRITEBYTECODE``, so each keeps its compiled
    bytecode between runs as on a normal install (with it set, an editable install recompiles its own modules on
    every start, about 0.13 s here, while an installed package such as deface has pip's bytecode anyway)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def run_deface(deface: str, src: Path, backend: str) -> dict:
    """``deface --backend BACKEND DIR`` on a fresh copy of ``src`` (it writes <name>_anonymized.jpg beside the
    inputs)."""
    photos = sorted(src.glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="bench_cli_deface_") as tmp:
        for p in photos:
            shutil.copy(p, tmp)
        got = measure([deface, "--backend", backend, tmp], tool_env())
        made = len(list(Path(tmp).glob("*_anonymized.jpg")))
    if made != len(photos):
        raise RuntimeError(f"deface wrote {made} images for {len(photos)} inputs")
    return got


def deface_versions(deface: str) -> tuple[str, str]:
    """deface's version and those of the libraries its backends run on, read in deface's own environment."""
    python = Path(deface).with_name("python")
    probe = ("import importlib.metadata as m\n"
             "def v(name):\n"
             "    try:\n        return m.version(name)\n"
             "    except m.PackageNotFoundError:\n        return 'not installed'\n"
             "print(v('deface'))\n"
             "print(', '.join(f'{n} {v(n)}' for n in ('opencv-python', 'onnx', 'onnxruntime')))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    return out[0], out[1]


def run_lite(cli: list[str], src: Path, extra: list[str], keep: Path | None = None) -> dict:
    """``unsafe2safe anonymize SRC --output OUT [extra]`` with a fresh datasets cache; ``keep``: move OUT there."""
    with tempfile.TemporaryDirectory(prefix="bench_cli_lite_") as tmp:
        env = tool_env(HF_DATASETS_CACHE=os.path.join(tmp, "cache"))
        out = os.path.join(tmp, "out")
        got = measure([*cli, "anonymize", str(src), "--output", out, *extra], env)
        record = json.loads(Path(out, "unsafe2safe_run.json").read_text())
        got["summary"] = record.get("summary")
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.move(out, keep)
    return got


def statuses_note(summary: dict | None) -> str:
    if not summary:
        return ""
    parts = [summary] if "rows" in summary else list(summary.values())
    counts: dict = {}
    for p in parts:
        for k, v in p["statuses"].items():
            counts[k] = counts.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


# --------------------------------------------------------------------------------------------------
# recall
# --------------------------------------------------------------------------------------------------
def iou(a, b) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def covered(box, regions) -> float:
    """Share of ``box`` covered by the union of ``regions``."""
    import numpy as np

    x0, y0, x1, y1 = box
    mask = np.zeros((max(1, y1 - y0), max(1, x1 - x0)), dtype=bool)
    for r in regions:
        a, b = max(r[0], x0) - x0, max(r[1], y0) - y0
        c, d = min(r[2], x1) - x0, min(r[3], y1) - y0
        if c > a and d > b:
            mask[b:d, a:c] = True
    return float(mask.mean())


def found(box, regions, min_iou: float = 0.3, min_cover: float = 0.5) -> bool:
    return any(iou(box, r) >= min_iou for r in regions) or covered(box, regions) >= min_cover


CATEGORY = {"face": "people", "text": "text_symbols", "plate": "text_symbols"}


def _band(value, bands) -> str:
    for lo, hi in bands:
        if lo <= value < hi:
            return f"{lo}-{hi - 1} px" if hi < 10**6 else f">= {lo} px"
    return f"{value} px"


def recall(out_dir: Path, truth: dict) -> dict:
    """Recall of a saved CLI output against the composites' ground truth, per kind and size band."""
    import datasets

    manifest = json.loads((out_dir / "unsafe2safe_files.json").read_text())
    loaded = datasets.load_from_disk(str(out_dir))
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("_", loaded)]
    rows: dict = {}  # file name -> {category: [boxes]}
    for split, ds in parts:
        names = manifest["splits"][split]
        regions = ds.select_columns(["privacy_regions"])["privacy_regions"]
        if len(names) != len(regions):
            raise RuntimeError(f"manifest lists {len(names)} files, the output has {len(regions)} rows")
        for name, regs in zip(names, regions):
            by_cat: dict = {}
            for r in regs or []:
                by_cat.setdefault(r["category"], []).append(list(r["box"]))
            rows[name] = by_cat
    missing = sorted(set(truth["images"]) - set(rows))
    if missing:
        raise RuntimeError(f"no output row for {missing}")
    bands: dict = {}
    misses: list = []
    matched_regions = {c: [0, 0] for c in set(CATEGORY.values())}  # category -> [regions on a label, all regions]
    for name, record in truth["images"].items():
        for item in record["items"]:
            regs = rows[name].get(CATEGORY[item["kind"]], [])
            if item["kind"] == "face":
                key = ("faces", _band(item["height"], FACE_REPORT_BANDS))
            elif item["kind"] == "text":
                key = ("text", f"cap {_band(item['cap_height'], CAP_BANDS)}")
            else:
                key = ("plates (demo car)", "all")
            hit = found(item["box"], regs)
            # the privacy outcome, whatever the category: a text box lying mostly on a detected face is dropped by
            # lite (the face is edited anyway), so text on a false face counts here but not above
            anywhere = found(item["box"], [b for boxes in rows[name].values() for b in boxes])
            b = bands.setdefault(key, {"labelled": 0, "found": 0, "found_any_category": 0})
            b["labelled"] += 1
            b["found"] += int(hit)
            b["found_any_category"] += int(anywhere)
            if not hit:
                misses.append({"image": name, "kind": item["kind"], "text": item.get("text"), "band": key[1],
                               "box": item["box"], "found_any_category": anywhere,
                               "best_iou": round(max([iou(item["box"], r) for r in regs] or [0.0]), 2),
                               "covered": round(covered(item["box"], regs), 2)})
        for cat, regs in rows[name].items():
            if cat not in matched_regions:
                continue
            labels = [it["box"] for it in record["items"] if CATEGORY[it["kind"]] == cat]
            matched_regions[cat][1] += len(regs)
            matched_regions[cat][0] += sum(any(iou(r, lb) > 0 for lb in labels) for r in regs)
    table = []
    order = {"faces": 0, "text": 1, "plates (demo car)": 2}
    for (kind, band), v in sorted(bands.items(), key=lambda kv: (order[kv[0][0]], _band_key(kv[0][1]))):
        table.append({"kind": kind, "band": band, **v, "recall": round(v["found"] / v["labelled"], 3)})
    for kind in order:
        sel = [r for r in table if r["kind"] == kind]
        if len(sel) > 1:
            lab, fnd = sum(r["labelled"] for r in sel), sum(r["found"] for r in sel)
            table.append({"kind": kind, "band": "all", "labelled": lab, "found": fnd, "recall": round(fnd / lab, 3),
                          "found_any_category": sum(r["found_any_category"] for r in sel)})
    for r in table:
        r["recall_any_category"] = round(r["found_any_category"] / r["labelled"], 3)
    return {"rows": table, "misses": misses,
            "regions": {c: {"on_a_label": v[0], "all": v[1]} for c, v in matched_regions.items()},
            "criterion": "a labelled box is found when a region of its category has IoU >= 0.3 with it, or the "
                         "category's regions together cover >= 50 % of it"}


def _band_key(band: str) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in band).split()
    return int(digits[0]) if digits else -1


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def aggregate(set_name: str, tool: str, n: int, runs: list[dict], note: str = "") -> dict:
    walls = [r["wall_s"] for r in runs]
    cpus = [r["cpu_s"] for r in runs]
    foreign = [r["foreign_cores"] for r in runs if r.get("foreign_cores") is not None]
    worst = max(foreign) if foreign else None
    if worst is not None and worst > NOISY:
        note = (note + "; " if note else "") + f"WARNING other processes used {worst} cores"
    wall = statistics.median(walls)
    return {"set": set_name, "tool": tool, "images": n, "repeats": len(runs), "wall_s": [round(w, 3) for w in walls],
            "median_wall_s": round(wall, 3), "images_per_s": round(n / wall, 3),
            "median_cpu_s": round(statistics.median(cpus), 2),
            "median_user_s": round(statistics.median(r["user_s"] for r in runs), 2),
            "median_sys_s": round(statistics.median(r["sys_s"] for r in runs), 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)), "foreign_cores": worst, "noisy": bool(worst and worst > NOISY),
            "note": note}


def deface_tools(backends: list[str]) -> list[str]:
    return [f"deface ({b})" for b in backends]


def fastest_deface(speed: list[dict], set_name: str) -> dict | None:
    """The baseline of a set: the deface backend with the most images/s on it (each ratio is against it)."""
    rows = [r for r in speed if r["set"] == set_name and r["tool"].startswith("deface")]
    return max(rows, key=lambda r: r["images_per_s"]) if rows else None


def markdown(results: dict) -> str:
    m = results["machine"]
    code = results["code"]
    lines = [
        f"# lite CLI vs deface CLI ({results['date']})",
        "",
        f"- machine: nproc {m['nproc']} (affinity {m['affinity']}), {m['cpu']}; Python {m['python']}, datasets "
        f"{m['datasets']}, onnxruntime {m['onnxruntime']}",
        f"- hf_unsafe2safe {code.get('version')} at {code.get('commit')}"
        + (" (library with local edits)" if code.get("library_modified") else ""),
        f"- command: `{results['command']}`",
        f"- deface {results.get('deface_version', '')}: `{results.get('deface') or 'skipped'}`, backends "
        f"{', '.join(results.get('deface_backends') or ['-'])} ({results.get('deface_libraries', '')}); each ratio is "
        "against the faster deface backend on that set; "
        f"lite: `{' '.join(results['cli'])} anonymize DIR --output OUT` (defaults)",
        f"- other processes' CPU before / after: {results['busy_cores_before']} / {results.get('busy_cores_after')} cores",
        "- both tools run as fresh processes with Python's bytecode cache on (`PYTHONDONTWRITEBYTECODE` unset, as on a "
        "normal install); deface on a fresh copy of each set per run (it writes beside its inputs)",
        "",
    ]
    if results["speed"]:
        lines += ["| set | tool | images | median wall s | images/s | vs deface images/s | CPU s | CPU vs deface | "
                  "peak RSS MB | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["speed"]:
            base = fastest_deface(results["speed"], r["set"])
            ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
            cpu = f"{r['median_cpu_s'] / base['median_cpu_s']:.2f}x" if base else "-"
            flag = " (noisy)" if r["noisy"] else ""
            lines.append(f"| {r['set']} | {r['tool']}{flag} | {r['images']} | {r['median_wall_s']:.2f} | "
                         f"{r['images_per_s']:.2f} | {ratio} | {r['median_cpu_s']:.1f} | {cpu} | {r['peak_rss_mb']} | "
                         f"{r['note']} |")
        lines.append("")
    if results.get("rss"):
        lines += ["| RSS: full lite, 1024-px photos | rows | wall s | images/s | peak RSS MB | notes |", "|---|---|---|---|---|---|"]
        for r in results["rss"]["rows"]:
            lines.append(f"| {r['set']} | {r['images']} | {r['median_wall_s']:.1f} | {r['images_per_s']:.2f} | "
                         f"{r['peak_rss_mb']} | {r['note']} |")
        lines += [f"\nPeak RSS ratio {results['rss']['ratio']:.3f} (largest / smallest row count).", ""]
    for rec in (results.get("recall") or {}).values():
        lines += [f"Recall of full lite on the {rec['set']} ({rec['criterion']}):", "",
                  "| kind | band | labelled | found | recall | covered by a region of any category |",
                  "|---|---|---|---|---|---|"]
        for r in rec["rows"]:
            lines.append(f"| {r['kind']} | {r['band']} | {r['labelled']} | {r['found']} | {r['recall']:.2f} | "
                         f"{r['found_any_category']} ({r['recall_any_category']:.2f}) |")
        regs = ", ".join(f"{c}: {v['all']} ({v['on_a_label']} on a labelled box)" for c, v in rec["regions"].items())
        lines += ["", f"Regions detected: {regs}; the others lie on unlabelled content (the astronaut's own name tag "
                      "and patches, the cat, the foam...) or are false positives.", ""]
    if results.get("targets"):
        lines += ["| goal (issue 14) | result | met |", "|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['goal']} | {t['result']} | {'yes' if t['met'] else 'NO'}{' (noisy)' if t.get('noisy') else ''} |")
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    out = []
    for set_name in dict.fromkeys(r["set"] for r in results["speed"]):
        rows = {r["tool"]: r for r in results["speed"] if r["set"] == set_name}
        base = fastest_deface(results["speed"], set_name)
        if not base:
            continue
        for tool, need in (("lite full", 1.0), ("lite faces", 2.5)):
            r = rows.get(tool)
            if r:
                ratio = r["images_per_s"] / base["images_per_s"]
                out.append({"goal": f"{tool} >= {need}x deface images/s ({set_name})", "result": f"{ratio:.2f}x",
                            "met": ratio >= need, "noisy": r["noisy"] or base["noisy"]})
    rss = results.get("rss")
    if rss:
        rows = rss["rows"]
        out.append({"goal": f"peak RSS flat: {rows[-1]['images']} vs {rows[0]['images']} rows within 10 %",
                    "result": f"{rows[-1]['peak_rss_mb']} vs {rows[0]['peak_rss_mb']} MB ({100 * (rss['ratio'] - 1):+.1f} %)",
                    "met": abs(rss["ratio"] - 1) <= 0.10})
        top = max(r["peak_rss_mb"] for r in rows)
        out.append({"goal": "peak RSS under 1 GB on 1024-px photos", "result": f"{top} MB", "met": top < 1024})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/_work/cli", help="working folder: images, outputs, lite_cli.md/json")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each tool per set (the median is reported)")
    ap.add_argument("--images", type=int, default=48, help="photos 640 px wide (bench_lite.build_photos)")
    ap.add_argument("--many", type=int, default=480, help="the 640-px photos copied to this many files: a folder large "
                    "enough that each tool's start-up (lite ~0.5 s, deface ~0.3 s) no longer decides (0: skip)")
    ap.add_argument("--large", type=int, default=24, help="composites 1024-2048 px with ground truth")
    ap.add_argument("--phone", type=int, default=8, help="the same composites at 4032 px, a 12-MP phone photo's size")
    ap.add_argument("--rss-rows", default="200,2000", help="row counts of the RSS section (1024-px photos)")
    ap.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SECTIONS)}")
    ap.add_argument("--deface", default=shutil.which("deface") or str(Path(sys.executable).with_name("deface")),
                    help="the deface executable (default: on PATH, else next to this Python)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the composites")
    args = ap.parse_args(argv)

    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SECTIONS):
        ap.error(f"--skip: unknown {sorted(skip - set(SECTIONS))}; choose among {','.join(SECTIONS)}")
    with_deface = "deface" not in skip
    if with_deface and not Path(args.deface).exists():
        ap.error(f"deface not found at {args.deface!r}: install the `bench` extra, pass --deface PATH or --skip deface")
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cli = default_cli()
    reps = args.repeats

    busy = bench_lite.busy_cores()
    if busy > 0.2:
        print(f"WARNING: other processes keep {busy} of {os.cpu_count()} cores busy: timings will be off", flush=True)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": bench_lite.machine(), "code": bench_lite.code_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else f"main({argv})",
        "cli": cli, "deface": args.deface if with_deface else None, "repeats": reps, "busy_cores_before": busy,
        "speed": [], "large_images": args.large,
    }
    if with_deface:
        # `pip install deface` runs OpenCV's DNN; with onnx and onnxruntime beside it (deface's advice for speed) its
        # `--backend auto` takes ONNX Runtime. Both are timed where both are installed; the faster is the baseline.
        results["deface_backends"] = ["opencv"] + (["onnxrt"] if bench_lite.deface_backend(args.deface, dict(os.environ)) == "onnxrt" else [])
        results["deface_version"], results["deface_libraries"] = deface_versions(args.deface)
    contention = bench_lite.Contention()

    def timed(fn, *a, **k) -> dict:
        contention.reset()
        got = fn(*a, **k)
        got["foreign_cores"] = contention.foreign_cores()
        return got

    sets = []
    if "photos" not in skip:
        print(f"building {args.images} photos 640 px wide ...", flush=True)
        bench_lite.build_photos(out_dir / "photos", args.images)
        sets.append((f"{args.images} photos 640 px", out_dir / "photos", args.images))
        if args.many and "many" not in skip:
            build_many(out_dir / "photos", out_dir / "many", args.many)
            sets.append((f"{args.many} photos 640 px (the {args.images}, copied)", out_dir / "many", args.many))
    labelled = {}  # the sets with ground truth: key -> (set name, folder, truth, where the last full-lite run is kept)
    if "large" not in skip or "recall" not in skip:
        print(f"building {args.large} composites 1024-2048 px ...", flush=True)
        name = f"{args.large} composites 1024-2048 px"
        labelled["large"] = (name, out_dir / "large", build_large(out_dir / "large", args.large, args.seed), out_dir / "large_lite_out")
        if "large" not in skip:
            sets.append((name, out_dir / "large", args.large))
    if args.phone and "phone" not in skip:
        print(f"building {args.phone} composites 4032 px ...", flush=True)
        name = f"{args.phone} composites 4032 px (12 MP)"
        truth = build_large(out_dir / "phone", args.phone, args.seed, PHONE_SIDE, PHONE_TRUTH)
        labelled["phone"] = (name, out_dir / "phone", truth, out_dir / "phone_lite_out")
        sets.append((name, out_dir / "phone", args.phone))
    keep_for = {folder: kept for _, folder, _, kept in labelled.values()}

    # 1. speed: every tool once per repeat, interleaved, so that slow drifts of the machine hit every tool alike
    for set_name, folder, n in sets:
        tools = (deface_tools(results["deface_backends"]) if with_deface else []) + list(LITE_TOOLS)
        runs: dict = {t: [] for t in tools}
        for rep in range(reps):
            for tool in tools:
                if tool.startswith("deface"):
                    got = timed(run_deface, args.deface, folder, tool[len("deface ("):-1])
                else:
                    keep = keep_for.get(folder) if (tool == "lite full" and rep == reps - 1) else None
                    got = timed(run_lite, cli, folder, LITE_TOOLS[tool], keep)
                runs[tool].append(got)
                print(f"  {set_name}: {tool:<10} run {rep + 1}/{reps}: {got['wall_s']:7.2f} s wall, {got['cpu_s']:7.1f} s CPU, "
                      f"{got['peak_rss_mb']:6.0f} MB, other processes {got['foreign_cores']} cores", flush=True)
        for tool in tools:
            note = "" if tool.startswith("deface") else statuses_note(runs[tool][-1].get("summary"))
            results["speed"].append(aggregate(set_name, tool, n, runs[tool], note))

    # 2. RSS flatness
    if "rss" not in skip:
        counts = sorted(int(c) for c in args.rss_rows.split(","))
        print(f"building {counts[-1]} photos 1024 px wide ...", flush=True)
        big = out_dir / f"rss_{counts[-1]}"
        paths = build_rss(big, counts[-1])
        rows = []
        for c in counts:
            folder = big
            if c != counts[-1]:
                folder = out_dir / f"rss_{c}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                for p in paths[:c]:
                    shutil.copy(p, folder)
            got = timed(run_lite, cli, folder, [])
            print(f"  RSS {c} rows: {got['wall_s']:.1f} s, peak {got['peak_rss_mb']:.0f} MB", flush=True)
            rows.append(aggregate(f"{c} photos 1024 px", "lite full", c, [got], statuses_note(got.get("summary"))))
        results["rss"] = {"rows": rows, "ratio": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]}

    # 3. recall on the composites' ground truth (the last timed full-lite run's output, or one untimed run)
    if "recall" not in skip:
        results["recall"] = {}
        for key, (name, folder, truth, kept) in labelled.items():
            if not (kept / "unsafe2safe_files.json").exists() or key in skip:
                print(f"full lite on the {name} (for recall) ...", flush=True)
                run_lite(cli, folder, [], kept)
            results["recall"][key] = {"set": name, **recall(kept, truth)}

    if bench_lite.code_version() != results["code"]:
        print("WARNING: the library code changed during the run", flush=True)
        results["code_after"] = bench_lite.code_version()
    results["busy_cores_after"] = bench_lite.busy_cores()
    results["targets"] = targets(results)
    text = markdown(results)
    (out_dir / "lite_cli.md").write_text(text + "\n")
    (out_dir / "lite_cli.json").write_text(json.dumps(results, indent=2))
    print()
    print(text)
    print(f"\nwritten: {out_dir / 'lite_cli.md'}, {out_dir / 'lite_cli.json'}")
    return results


if __name__ == "__main__":
    main()
