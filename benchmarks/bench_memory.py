"""Peak memory of `unsafe2safe anonymize` (lite) on huge photos, by batch size, with and without the pixel bound.

    python benchmarks/bench_memory.py --images 4 --megapixels 88 --out benchmarks/_work/memory

Each run is a whole CLI process (a fresh ``python -m hf_unsafe2safe.cli anonymize``) on the same folder; its
peak resident set size is the child's ``ru_maxrss``. The photos are an upscaled scikit-image astronaut (a face
and a name tag) with rendered text beside it, saved as JPEG; every one is flagged and edited, which is the
expensive path. ``max_batch_pixels`` is the transform's bound on the pixels a map batch decodes at once
(``--set max_batch_pixels=...``); a bound above the batch's total restores the unbounded behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(folder: Path, count: int, megapixels: float) -> None:
    from PIL import Image, ImageDraw
    from skimage import data

    from hf_unsafe2safe.demo import _font

    folder.mkdir(parents=True, exist_ok=True)
    side = int((megapixels * 1e6 / 1.1) ** 0.5)
    size = (int(side * 1.1), side)
    base = Image.fromarray(data.astronaut()).resize((size[1], size[1]), Image.Resampling.BILINEAR)
    for i in range(count):
        canvas = Image.new("RGB", size, (200 - 20 * i, 210, 190))
        canvas.paste(base, (0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((size[1] + 20, size[1] // 3), f"CALL +1 555 01{i} 2398", fill=(10, 10, 10), font=_font(max(40, size[1] // 60)))
        canvas.save(folder / f"huge_{i}.jpg", quality=90)
        print(f"built {folder / f'huge_{i}.jpg'}: {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} MP", flush=True)


def run(folder: Path, out: Path, batch_size: int, max_batch_pixels: int | None) -> dict:
    cmd = [sys.executable, "-m", "hf_unsafe2safe.cli", "anonymize", str(folder), "--output", str(out), "--overwrite", "--batch-size", str(batch_size)]
    if max_batch_pixels is not None:
        cmd += ["--set", f"max_batch_pixels={max_batch_pixels}"]
    # a fresh wrapper process per run, so that its RUSAGE_CHILDREN peak is this run's alone
    wrapper = "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    peak_kb = int(done.stdout.strip().splitlines()[-1])
    return {"batch_size": batch_size, "max_batch_pixels": max_batch_pixels, "peak_rss_mb": round(peak_kb / 1024), "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--megapixels", type=float, default=88.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="u2s-mem-"))
    folder = work / "photos"
    if not folder.exists():
        build(folder, args.images, args.megapixels)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    rows = []
    for batch_size, bound in ((1, None), (args.images, None), (args.images, 10**12)):
        row = run(folder, work / "safe", batch_size, bound)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| batch size | max_batch_pixels | peak RSS (MB) | seconds |\n|---|---|---|---|")
    for r in rows:
        bound = "default (50 M)" if r["max_batch_pixels"] is None else "unbounded"
        print(f"| {r['batch_size']} | {bound} | {r['peak_rss_mb']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
