"""Shared body of the per-dataset drivers: load the source, anonymize the chosen splits, save, summarise.

Each driver states only what is specific to its dataset (image column, which splits to anonymize, extra
columns). Sources are Hub dataset ids or local paths (image folder or save_to_disk directory); nothing here
assumes a file layout or an extension.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class DatasetSpec:
    name: str
    image_column: str
    # splits whose images are anonymized; the paper trains on anonymized data and tests on the original test
    # split, so only the training split is rewritten and other splits are not written at all
    splits: tuple[str, ...] = ("train",)
    example_source: str = ""
    # optional extra column computed from a row before anonymization (e.g. VISPR's ground-truth flag)
    add_columns: Callable | None = None
    notes: list[str] = field(default_factory=list)


def parser(spec: DatasetSpec) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"Anonymize {spec.name} with hf_unsafe2safe ({', '.join(spec.splits)} split(s)).")
    p.add_argument("--source", required=True, help=f"Hub dataset id or local path{f' (e.g. {spec.example_source})' if spec.example_source else ''}")
    p.add_argument("--output", required=True, help="directory for the anonymized splits (save_to_disk, one folder per split)")
    p.add_argument("--preset", default="lite")
    p.add_argument("--num-proc", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of each split (a quick look)")
    return p


def load_split(spec: DatasetSpec, source: str, split: str):
    """One split of the source: a Hub id or save_to_disk folder gives it by name; a local folder of images holds
    one sub-folder per split (``SOURCE/train``, ``SOURCE/test``), every image file under it a row."""
    from pathlib import Path

    from hf_unsafe2safe.sources import is_saved_dataset, load_image_folder, load_source

    path = Path(source)
    if path.is_dir() and not is_saved_dataset(path):
        if not (path / split).is_dir():
            raise SystemExit(f"error: {source!r} has no folder {split!r}; a local source of {spec.name} holds one folder per split ({', '.join(spec.splits)})")
        return load_image_folder(path / split, split=split)
    return load_source(source, split)


def run(spec: DatasetSpec, argv=None) -> dict:
    from hf_unsafe2safe import Unsafe2Safe
    from hf_unsafe2safe.pipeline import anonymize_to_disk, format_summary, summarize, write_run_record

    args = parser(spec).parse_args(argv)
    anonymize = Unsafe2Safe.from_preset(args.preset, image_column=spec.image_column)
    summaries = {}
    for split in spec.splits:
        ds = load_split(spec, args.source, split)
        if args.limit is not None:
            ds = ds.select(range(min(args.limit, len(ds))))
        if spec.add_columns is not None:
            ds = ds.map(spec.add_columns, desc=f"{spec.name} columns")
        out = os.path.join(args.output, split)
        # chunks saved as they finish: a rerun resumes; under torchrun / accelerate launch the processes share them
        safe = anonymize_to_disk(ds, anonymize, out, batch_size=args.batch_size, num_proc=args.num_proc)
        if safe is None:
            continue  # another rank: rank 0 writes the record and the summary
        summaries[split] = summarize(safe)
        write_run_record(out, anonymize, f"{args.source} ({split})", summaries[split], local=os.path.exists(args.source))
        print(f"[{split}] saved to {out}\n{format_summary(summaries[split])}")
    return summaries
