"""Whole-dataset helpers around the transform: load a source, run the map, summarise the result."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from . import columns as C
from .transform import Unsafe2Safe

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def load_source(source: str, split: str | None = None):
    """A ``Dataset`` or ``DatasetDict`` from a ``save_to_disk`` directory, an image folder or a Hub dataset id."""
    import datasets

    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if split is None:
            return loaded
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Got {split!r} for `split`; {source!r} has splits {sorted(loaded)}")
            return loaded[split]
        if loaded.split is not None and str(loaded.split) != split:
            raise ValueError(f"Got {split!r} for `split`; {source!r} holds a single split, {loaded.split}")
        return loaded
    if path.is_dir():
        if not any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()):
            raise ValueError(f"{source!r} is a directory but neither a save_to_disk dataset nor a folder of images")
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    if path.exists():
        raise ValueError(f"{source!r} is a file; give a folder of images, a save_to_disk directory or a Hub dataset id")
    return datasets.load_dataset(source, split=split)


def find_image_column(dataset, requested: str | None) -> str:
    """The requested column, or the only ``Image`` column of the dataset."""
    from datasets import Image

    features = dataset.features
    if requested is not None:
        if requested not in features:
            raise ValueError(f"Got {requested!r} for `image_column`; the dataset has columns {sorted(features)}")
        return requested
    images = [name for name, feat in features.items() if isinstance(feat, Image)]
    if len(images) != 1:
        raise ValueError(f"Cannot tell the image column (Image columns: {images}); pass `image_column`")
    return images[0]


def anonymize_dataset(
    dataset, anonymize: Unsafe2Safe, batch_size: int = 16, num_proc: int | None = None, desc: str = "Unsafe2Safe",
    shard: tuple[int, int] | None = None, device_rank: int | None = None,
):
    """``prepare`` + ``map`` with the right features; works on a ``Dataset`` or a ``DatasetDict``.

    ``shard=(index, count)`` maps only that contiguous shard and ``device_rank`` puts the models on
    ``cuda:<device_rank>`` (one process of a multi-process launch; see ``anonymize_to_disk``); otherwise
    ``num_proc`` worker processes each take the GPU of their map rank."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {name: anonymize_dataset(part, anonymize, batch_size, num_proc, f"{desc} [{name}]", shard, device_rank) for name, part in dataset.items()}
        )
    prepared = anonymize.prepare(dataset)
    features = anonymize.output_features(dataset.features)
    if shard is not None:
        prepared = prepared.shard(num_shards=shard[1], index=shard[0], contiguous=True)
    if len(prepared) == 0:
        # datasets.map skips the function on an empty dataset and keeps the input schema
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features, split=dataset.split)
    placed = {"fn_kwargs": {"rank": device_rank}} if device_rank is not None else {"with_rank": True}
    return prepared.map(
        anonymize,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc and num_proc > 1 and len(prepared) > 1 and device_rank is None else None,
        features=features,
        desc=desc,
        **placed,
    )


def launched_processes() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process is one of several started by ``torchrun`` or
    ``accelerate launch`` (they set RANK / WORLD_SIZE / LOCAL_RANK), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def anonymize_to_disk(dataset, anonymize: Unsafe2Safe, output: str, batch_size: int = 16, num_proc: int | None = None, chunk_rows: int = 2000):
    """Anonymize ``dataset`` (a ``Dataset`` or ``DatasetDict``) into ``output`` (``save_to_disk``), resumably and
    across processes.

    Every split is cut into contiguous chunks of ``chunk_rows`` rows; each finished chunk is saved under
    ``<output>.parts/`` (written to a temporary folder, then renamed, so a chunk there is always whole). A rerun
    with the same settings skips the chunks already there: a crash costs at most the chunks in flight. Parts of a
    run with other settings (another transform fingerprint) are removed first, never mixed in. Under ``torchrun``
    / ``accelerate launch`` process ``r`` of ``W`` takes chunks ``r, r + W, ...`` with its models on its own GPU;
    then rank 0 joins the chunks in order (the same rows, in the same order, as one process gives), saves the
    result, removes the parts and returns it; the other ranks return None."""
    import hashlib
    import json
    import math
    import shutil

    import datasets

    launched = launched_processes()
    rank, world, local = launched or (0, 1, None)
    state = None
    if launched is not None:
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # gloo between CPU processes, nccl between GPUs
        num_proc = None  # each launched process is one worker
    parts = output.rstrip("/\\") + ".parts"
    key = hashlib.sha256(json.dumps(anonymize.fingerprint_state(), sort_keys=True, default=str).encode()).hexdigest()
    stamp = os.path.join(parts, "run.json")
    if rank == 0:
        if os.path.exists(parts):
            try:
                with open(stamp) as f:
                    previous = json.load(f).get("fingerprint")
            except (OSError, ValueError):
                previous = None
            if previous != key:
                logger.warning("removing %s: its parts come from a run with other settings", parts)
                shutil.rmtree(parts)
        os.makedirs(parts, exist_ok=True)
        with open(stamp, "w") as f:
            json.dump({"fingerprint": key, "chunk_rows": chunk_rows}, f)
    if state is not None:
        state.wait_for_everyone()

    splits = dataset.items() if isinstance(dataset, datasets.DatasetDict) else [(None, dataset)]
    plan = []  # (split, chunk folders in order)
    for name, part in splits:
        folder = os.path.join(parts, name or "_")
        count = math.ceil(len(part) / chunk_rows)
        chunks = [os.path.join(folder, f"chunk-{c:06d}") for c in range(count)]
        plan.append((name, part, chunks))
        todo = [c for c in range(rank, count, world) if not os.path.exists(chunks[c])]
        done = len(range(rank, count, world)) - len(todo)
        if done:
            logger.info("%s: %d of %d chunks already done, resuming", name or "dataset", done, len(range(rank, count, world)))
        for c in todo:
            rows = range(c * chunk_rows, min(len(part), (c + 1) * chunk_rows))
            desc = f"Unsafe2Safe{f' [{name}]' if name else ''} chunk {c + 1}/{count}" + (f" (rank {rank})" if launched else "")
            result = anonymize_dataset(part.select(rows), anonymize, batch_size, num_proc, desc, device_rank=local)
            tmp = f"{chunks[c]}.tmp-{rank}"
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            save_dataset(result, tmp)
            os.replace(tmp, chunks[c])
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        state.wait_for_everyone()  # until rank 0 has joined the chunks
        return None
    joined = {}
    for name, part, chunks in plan:
        if chunks:
            joined[name] = datasets.concatenate_datasets([datasets.load_from_disk(c) for c in chunks])
        else:  # an empty split: the output schema, no rows
            joined[name] = anonymize_dataset(part, anonymize, batch_size)
    result = datasets.DatasetDict(joined) if isinstance(dataset, datasets.DatasetDict) else joined[None]
    if os.path.exists(output):
        shutil.rmtree(output)
    save_dataset(result, output)
    if state is not None:
        state.wait_for_everyone()
    shutil.rmtree(parts)
    return datasets.load_from_disk(output)


def save_dataset(dataset, path: str) -> None:
    """``save_to_disk``, with an empty split written as one (empty) shard: datasets 5.2 otherwise writes no data
    file for it and ``load_from_disk`` fails on the result."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        empty = {name: 1 for name, part in dataset.items() if len(part) == 0}
        dataset.save_to_disk(path, num_shards=empty or None)
    else:
        dataset.save_to_disk(path, num_shards=1 if len(dataset) == 0 else None)


def summarize(dataset) -> dict:
    """Counts per status and per category of an anonymized ``Dataset`` (or ``DatasetDict``)."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return {name: summarize(part) for name, part in dataset.items()}
    table = dataset.select_columns([C.PRIVACY_FLAG, C.PRIVACY_CATEGORIES, C.ANONYMIZATION])
    statuses, categories = Counter(), Counter()
    flagged = 0
    for row in table.iter(batch_size=1000):
        flagged += sum(bool(f) for f in row[C.PRIVACY_FLAG])
        statuses.update(a["status"] for a in row[C.ANONYMIZATION])
        for cats in row[C.PRIVACY_CATEGORIES]:
            categories.update(cats)
    return {
        "rows": len(dataset),
        "flagged": flagged,
        "statuses": {s: statuses.get(s, 0) for s in C.STATUSES},
        "categories": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
    }


def format_summary(summary: dict) -> str:
    if "rows" not in summary:
        return "\n\n".join(f"[{name}]\n{format_summary(part)}" for name, part in summary.items())
    s = summary["statuses"]
    lines = [
        f"rows            {summary['rows']}",
        f"flagged         {summary['flagged']}",
        f"edited          {s[C.STATUS_EDITED]}",
        f"passed through  {s[C.STATUS_PASSED]}",
        f"fallback        {s[C.STATUS_FALLBACK]}",
        f"failed          {s[C.STATUS_FAILED]}",
        f"invalid input   {s[C.STATUS_INVALID]}",
    ]
    if summary["categories"]:
        lines.append("per category:")
        lines += [f"  {cat:<20}{n}" for cat, n in summary["categories"].items()]
    return "\n".join(lines)


def write_run_record(output_dir: str, anonymize: Unsafe2Safe, source: str, summary: dict) -> dict:
    """Next to the saved dataset: ``unsafe2safe_run.json`` (config, version, prompt hashes, counts) and a
    dataset card ``README.md``."""
    from .hub import CARD, RUN_RECORD, render_dataset_card, run_record

    record = run_record(anonymize, source, summary)
    run_path = os.path.join(output_dir, RUN_RECORD)
    with open(run_path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    card_path = os.path.join(output_dir, CARD)
    with open(card_path, "w", encoding="utf-8") as f:
        f.write(render_dataset_card(record))
    return {"run": run_path, "card": card_path}
