"""CPU throughput of the evaluation suite's offline metrics, in pairs per second.

    python benchmarks/bench_eval.py --images 24 --out benchmarks/_work/eval

The pairs: 640-px-wide JPEG photos built from scikit-image's photographs (``bench_lite.build_photos``: astronaut,
camera, coffee, chelsea, rocket, Hubble field, cropped / mirrored / rescaled) and their anonymized versions from
the ``lite`` preset. For each metric (a ``PairMetric`` of hf_unsafe2safe.evaluation) it reports the model loading
time once, then the median time of ``metric.add(all pairs)`` over ``--repeats`` runs on pairs decoded beforehand
(steady state: decoding is measured separately), and finally one end-to-end ``evaluate()`` of the offline
privacy + cheating groups (decoding, model loading, every metric, the bootstrap, the report written). LPIPS
runs with random weights in the real architecture (speed does not depend on the weights' values).

It prints a markdown table and writes ``<out>/results.json``. ONNX Runtime and torch use their default threads;
the script records whether other processes used the CPU during each measurement.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_lite import Contention, build_photos, busy_cores, code_version, machine, med  # noqa: E402

OFFLINE = ("faces", "text", "age_gender", "pixels")


def build_pairs(folder: Path, n: int):
    """(original dataset, lite-anonymized dataset) over ``n`` photos, and the anonymization's statuses."""
    import datasets

    from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset

    paths = build_photos(folder, n)
    original = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": None} for p in paths], "name": [p.name for p in paths]},
        features=datasets.Features({"image": datasets.Image(), "name": datasets.Value("string")}),
    )
    safe = anonymize_dataset(original, Unsafe2Safe.from_preset("lite"), batch_size=8)
    statuses: dict = {}
    for row in safe["anonymization"]:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return original, safe, statuses


def decoded_pairs(original, safe):
    import numpy as np
    from datasets import Image

    from hf_unsafe2safe import columns as C
    from hf_unsafe2safe.evaluation import Pair
    from hf_unsafe2safe.utils.images import open_cell

    src, dst = original.cast_column("image", Image(decode=False)), safe.cast_column("image", Image(decode=False))
    pairs = []
    for j in range(len(dst)):
        a = np.asarray(open_cell(src[j]["image"]).convert("RGB"))
        b = np.asarray(open_cell(dst[j]["image"]).convert("RGB"))
        pairs.append(Pair(j, a, b, bool(dst[j][C.PRIVACY_FLAG]), dst[j][C.PRIVACY_REGIONS] or []))
    return pairs


def lpips_config(folder: Path, net: str):
    """LPIPSConfig over random weight files in the real formats (torchvision backbone, lpips calibration)."""
    import torch

    from hf_unsafe2safe.evaluation import LPIPSConfig
    from hf_unsafe2safe.evaluation.lpips import CHANNELS, _features

    torch.manual_seed(0)
    features = _features(net)
    folder.mkdir(parents=True, exist_ok=True)
    backbone, calibration = folder / f"{net}.pth", folder / f"{net}_lin.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, backbone)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS[net])}, calibration)
    return LPIPSConfig(net=net, backbone=str(backbone), calibration=str(calibration))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24, help="number of photo pairs (default: 24)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each steady measurement; the median is reported")
    ap.add_argument("--out", default="benchmarks/_work/eval", help="working folder: photos, results.json, the report")
    ap.add_argument("--skip-lpips", action="store_true", help="leave out the LPIPS rows (they import torch)")
    args = ap.parse_args()

    import datasets

    datasets.disable_caching()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    from hf_unsafe2safe.evaluation import evaluate
    from hf_unsafe2safe.evaluation.cheating import LPIPSMetric, PixelCheating
    from hf_unsafe2safe.evaluation.demographics import AgeGenderMetric
    from hf_unsafe2safe.evaluation.privacy import FaceSimMetric, TextSimMetric

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    busy = busy_cores()
    if busy > 0.2:
        print(f"WARNING: other processes keep {busy} of {os.cpu_count()} cores busy: timings will be off", flush=True)
    original, safe, statuses = build_pairs(out / "photos", args.images)
    n = len(original)
    contention = Contention()
    t = time.perf_counter()
    pairs = decoded_pairs(original, safe)
    decode_s = time.perf_counter() - t
    results = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "code": code_version(), "pairs": n, "repeats": args.repeats,
        "anonymization": statuses, "flagged": sum(p.flagged for p in pairs), "busy_cores_before": busy, "rows": [],
    }

    def record(name: str, load_s: float | None, times: list[float], note: str = "", items: int = n) -> None:
        foreign = contention.foreign_cores() or 0.0
        if foreign > 0.15:
            note = (note + "; " if note else "") + f"WARNING other processes used {foreign} cores"
        row = {"metric": name, "load_s": None if load_s is None else round(load_s, 2), "times_s": [round(x, 3) for x in times],
               "median_s": round(med(times), 3), "pairs": items, "pairs_per_s": round(items / med(times), 2), "foreign_cores": foreign, "note": note}
        results["rows"].append(row)
        load = "-" if load_s is None else f"{load_s:.2f}"
        print(f"  {name:<40} load {load:>6} s  {row['median_s']:7.2f} s  {row['pairs_per_s']:7.2f} pairs/s  {note}", flush=True)

    contention.reset()
    record("decode both images (PIL)", None, [decode_s])
    candidates = [("FaceSim (faces)", FaceSimMetric), ("TextSim (text)", TextSimMetric), ("SSIM / phash / regions (pixels)", PixelCheating),
                  ("gender / age (age_gender)", AgeGenderMetric)]
    if not args.skip_lpips:
        candidates += [(f"LPIPS {net}, 256 px, random weights", lambda net=net: LPIPSMetric(lpips_config(out / "lpips", net))) for net in ("alex", "vgg")]
    for name, factory in candidates:
        contention.reset()
        t = time.perf_counter()
        metric = factory()
        load_s = time.perf_counter() - t
        if metric.unavailable:
            print(f"  {name:<40} unavailable: {metric.unavailable}", flush=True)
            results["rows"].append({"metric": name, "unavailable": metric.unavailable})
            continue
        metric.add(pairs[:1])  # warm-up (first ONNX / torch run)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            metric.add(pairs)
            times.append(time.perf_counter() - t)
        if name.startswith("LPIPS"):  # it compares flagged pairs only: the rate is per flagged pair
            record(name, load_s, times, "per flagged pair", results["flagged"])
        else:
            record(name, load_s, times)

    contention.reset()
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        report = evaluate(original, safe, metrics=list(OFFLINE))
        report.write(str(out / "report"))
        times.append(time.perf_counter() - t)
    record(f"evaluate(): {', '.join(OFFLINE)}, end to end", None, times, "decode + load + metrics + bootstrap + report")
    results["figures"] = {k: v["value"] for k, v in report.metrics.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2))

    buf = io.StringIO()
    buf.write(f"\n{n} pairs ({results['flagged']} flagged; lite statuses {statuses}), repeats {args.repeats}\n\n")
    buf.write("| metric | model loading s | median s | pairs/s |\n|---|---|---|---|\n")
    for row in results["rows"]:
        if "unavailable" in row:
            buf.write(f"| {row['metric']} | unavailable | | |\n")
            continue
        load = "-" if row["load_s"] is None else f"{row['load_s']:.2f}"
        buf.write(f"| {row['metric']} | {load} | {row['median_s']:.2f} | {row['pairs_per_s']:.2f} |\n")
    print(buf.getvalue())
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
