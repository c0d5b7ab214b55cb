"""Whole-dataset helpers around the transform: run the map (resumably, across processes), summarise the result
and write it with its run record and card to disk. The counts (``summarize``) and the record and card themselves
are ``hub``'s, which publishes them too; ``summarize`` is re-exported here."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

from . import columns as C
from .hub import CARD, RUN_RECORD, render_dataset_card, run_record, summarize
from .transform import Unsafe2Safe

__all__ = [
    "anonymize_dataset", "anonymize_to_disk", "format_summary", "join_chunks", "launched_processes", "resume_key", "save_dataset", "summarize",
    "time_left", "write_manifest", "write_run_record",
]

logger = logging.getLogger(__name__)

WRITER_BATCH_ROWS = 100


def anonymize_dataset(
    dataset, anonymize: Unsafe2Safe, batch_size: int = 16, num_proc: int | None = None, desc: str = "Unsafe2Safe",
    shard: tuple[int, int] | None = None, device_rank: int | None = None, cache_dir: str | None = None,
):
    """``prepare`` + ``map`` with the right features; works on a ``Dataset`` or a ``DatasetDict``.

    ``shard=(index, count)`` maps only that contiguous shard and ``device_rank`` puts the models on
    ``cuda:<device_rank>`` (one process of a multi-process launch; see ``anonymize_to_disk``); otherwise
    ``num_proc`` worker processes each take the GPU of their map rank.

    ``cache_dir``: where ``map`` writes its result (fresh files, never a cached result reused); without it,
    ``datasets`` caches as it always does: beside the source's own cache files (under ``HF_HOME`` for a Hub
    dataset, inside the folder for one loaded with ``load_from_disk``), and in memory for an in-memory dataset.
    Those cache files hold the outputs, private captions included: remove them with ``cleanup_cache_files()`` on
    the source, or pass a ``cache_dir`` you delete."""
    import datasets

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Got {batch_size!r} for `batch_size`; expected an int >= 1")
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"Got {num_proc!r} for `num_proc`; expected None or an int >= 1")
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {
                name: anonymize_dataset(part, anonymize, batch_size, num_proc, f"{desc} [{name}]", shard, device_rank, cache_dir and os.path.join(cache_dir, name))
                for name, part in dataset.items()
            }
        )
    prepared = anonymize.prepare(dataset)
    features = anonymize.output_features(dataset.features)
    if shard is not None:
        prepared = prepared.shard(num_shards=shard[1], index=shard[0], contiguous=True)
    if len(prepared) == 0:
        # datasets.map skips the function on an empty dataset and keeps the input schema
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features, split=dataset.split)
    placed = {"fn_kwargs": {"rank": device_rank}} if device_rank is not None else {"with_rank": True}
    cached = {}
    if cache_dir is not None:
        os.makedirs(cache_dir, exist_ok=True)
        cached = {"cache_file_name": os.path.join(cache_dir, "map.arrow"), "load_from_cache_file": False}
    return prepared.map(
        anonymize,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc and num_proc > 1 and len(prepared) > 1 and device_rank is None else None,
        features=features,
        desc=desc,
        # map's default buffers 1000 output rows (encoded images) before each write: memory would follow the row
        # count up to 1000 rows; this is the record batch size `datasets` itself uses for image datasets
        writer_batch_size=WRITER_BATCH_ROWS,
        **placed,
        **cached,
    )


def launched_processes() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process is one of several started by ``torchrun`` or
    ``accelerate launch`` (they set RANK / WORLD_SIZE / LOCAL_RANK), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def resume_key(dataset, anonymize: Unsafe2Safe, chunk_rows: int) -> dict:
    """Everything the saved chunks depend on: the transform (config, version, prompts), the chunking, and the input
    (every split's name, length and ``datasets`` fingerprint; for a folder of images ``sources`` makes that a hash
    of the file list, sizes and modification times)."""
    import datasets

    splits = dataset.items() if isinstance(dataset, datasets.DatasetDict) else [(None, dataset)]
    transform = hashlib.sha256(json.dumps(anonymize.fingerprint_state(), sort_keys=True, default=str).encode()).hexdigest()
    return {
        "settings": transform,
        "chunk_rows": chunk_rows,
        "input": [[name, len(part), part._fingerprint] for name, part in splits],  # noqa: SLF001 - datasets' own content hash
    }


def _open_parts(parts: str, key: dict) -> None:
    """Keep ``parts`` when it was written under ``key``; otherwise remove it, saying what changed."""
    import shutil

    stamp = os.path.join(parts, "run.json")
    if os.path.exists(parts):
        try:
            with open(stamp) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}
        changed = [name for name in key if previous.get(name) != key[name]]
        if changed:
            what = {"settings": "the settings (config, version or prompts)", "chunk_rows": "--chunk-rows", "input": "the input data"}
            logger.warning("removing %s: its chunks were made under other %s; starting over", parts, " and ".join(what[c] for c in changed))
            shutil.rmtree(parts)
    os.makedirs(parts, exist_ok=True)
    with open(stamp, "w") as f:
        json.dump(key, f)


def time_left(elapsed: float, done: int, total: int) -> str | None:
    """``total - done`` rows at the pace of ``done`` rows in ``elapsed`` seconds, in words ("2 h 05 min", "14 min",
    "under a minute"); None before any row is done or once all are."""
    if done <= 0 or done >= total or elapsed <= 0:
        return None
    seconds = round(elapsed / done * (total - done))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return "under a minute"


def anonymize_to_disk(dataset, anonymize: Unsafe2Safe, output: str, batch_size: int = 16, num_proc: int | None = None, chunk_rows: int = 2000):
    """Anonymize ``dataset`` (a ``Dataset`` or ``DatasetDict``) into ``output`` (``save_to_disk``), resumably and
    across processes.

    Every split is cut into contiguous chunks of ``chunk_rows`` rows; each finished chunk is saved under
    ``<output>.parts/`` (written to a temporary folder, then renamed, so a chunk there is always whole). A rerun
    skips the chunks already there, when it has the same settings, chunking and input (``resume_key``): a crash
    costs at most the chunks in flight. Parts written under another key are removed first, with a warning, never
    mixed in. The map's cache files live in ``<output>.parts/cache`` and are removed once each chunk is saved, so
    no output (private captions included) is left in a shared cache. Under ``torchrun`` / ``accelerate launch``
    process ``r`` of ``W`` takes chunks ``r, r + W, ...`` with its models on its own GPU; then rank 0 joins the
    chunks in order (the same rows, in the same order, as one process gives), saves the result, removes the parts
    and returns it; the other ranks return None."""
    import math
    import shutil

    import datasets
    from datasets import config
    from datasets.fingerprint import Hasher

    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"Got {chunk_rows!r} for `chunk_rows`; expected an int >= 1")
    launched = launched_processes()
    rank, world, local = launched or (0, 1, None)
    state = None
    if launched is not None:
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # gloo between CPU processes, nccl between GPUs
        num_proc = None  # each launched process is one worker
    parts = output.rstrip("/\\") + ".parts"
    key = resume_key(dataset, anonymize, chunk_rows)
    if rank == 0:
        _open_parts(parts, key)
    if state is not None:
        state.wait_for_everyone()

    splits = dataset.items() if isinstance(dataset, datasets.DatasetDict) else [(None, dataset)]
    cache = os.path.join(parts, "cache", str(rank))
    plan = []  # (split, chunk folders in order)
    work = []  # (split name, split, chunk index, chunk count, its rows, its folder): what this process still has to do
    for name, part in splits:
        folder = os.path.join(parts, name or "_")
        count = math.ceil(len(part) / chunk_rows)
        chunks = [os.path.join(folder, f"chunk-{c:06d}") for c in range(count)]
        plan.append((name, part, chunks))
        mine = range(rank, count, world)
        todo = [c for c in mine if not os.path.exists(chunks[c])]
        if len(todo) < len(mine):
            logger.warning("%s: resuming: %d of %d chunks already done in %s", name or "dataset", len(mine) - len(todo), len(mine), parts)
        work += [(name, part, c, count, range(c * chunk_rows, min(len(part), (c + 1) * chunk_rows)), chunks[c]) for c in todo]
    total, done, started = sum(len(w[4]) for w in work), 0, time.monotonic()
    for name, part, c, count, rows, chunk in work:
        # every chunk has its own progress bar; its title also says how long the whole run needs at the pace so far
        left = time_left(time.monotonic() - started, done, total)
        desc = (f"Unsafe2Safe{f' [{name}]' if name else ''} chunk {c + 1}/{count}" + (f" (rank {rank})" if launched else "")
                + (f", about {left} left in all" if left else ""))
        result = anonymize_dataset(part.select(rows), anonymize, batch_size, num_proc, desc, device_rank=local, cache_dir=cache)
        tmp = f"{chunk}.tmp-{rank}"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        _keep_chunk(result, tmp)
        del result
        os.replace(tmp, chunk)
        shutil.rmtree(cache, ignore_errors=True)
        done += len(rows)
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        state.wait_for_everyone()  # until rank 0 has joined the chunks
        return None
    # the models are done: the joined output is written without them in memory
    anonymize.release()
    if os.path.exists(output):
        shutil.rmtree(output)
    fingerprint = Hasher.hash(key)
    if isinstance(dataset, datasets.DatasetDict):
        os.makedirs(output)
        with open(os.path.join(output, config.DATASETDICT_JSON_FILENAME), "w", encoding="utf-8") as f:
            json.dump({"splits": [name for name, _, _ in plan]}, f)
    for name, part, chunks in plan:
        info = part.info.copy()
        info.features = anonymize.output_features(part.features)
        join_chunks(chunks, info, part.split, f"{fingerprint}-{name}" if name else fingerprint, os.path.join(output, name) if name else output)
    if state is not None:
        state.wait_for_everyone()
    shutil.rmtree(parts)
    return datasets.load_from_disk(output)


def write_manifest(output_dir: str, source: str, dataset, image_column: str) -> str | None:
    """For a source that is a local folder of images: ``unsafe2safe_files.json`` in ``output_dir``, the source file
    of every row (path relative to the folder, per split, in row order), so that a ``failed`` or ``invalid_input``
    row can be traced back. File names can identify people: the file stays local (``push`` never uploads it).
    None for other sources."""
    from pathlib import Path

    from .sources import MANIFEST, folder_manifest, is_saved_dataset

    path = Path(source)
    if not path.is_dir() or is_saved_dataset(path):
        return None
    splits = dataset.items() if hasattr(dataset, "keys") else [(None, dataset)]
    manifest = {
        "source": os.path.abspath(source),
        "note": "row -> source file, relative to `source`; local only: file names can identify people, do not publish",
        "splits": {name or "_": folder_manifest(part, source, image_column) for name, part in splits},
    }
    target = os.path.join(output_dir, MANIFEST)
    with open(target, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return target


def _keep_chunk(result, folder: str) -> None:
    """A finished chunk into ``folder``: the Arrow files ``map`` wrote for it (its ``cache_files``, one per worker,
    in row order), moved (``save_to_disk`` would read and write every image again, holding up to 100 MB of them in
    memory at once, while the models are loaded); an empty chunk, which ``map`` does not write, is saved."""
    files = [f["filename"] for f in result.cache_files]
    if not files:
        save_dataset(result, folder)
        return
    os.makedirs(folder)
    for k, path in enumerate(files):
        os.replace(path, os.path.join(folder, f"rows-{k:05d}.arrow"))


def _chunk_files(folder: str) -> list[str]:
    """The Arrow files of a chunk that ``_keep_chunk`` wrote, in row order."""
    state = os.path.join(folder, "state.json")
    if os.path.exists(state):  # an empty chunk, saved with save_to_disk
        with open(state, encoding="utf-8") as f:
            return [os.path.join(folder, d["filename"]) for d in json.load(f)["_data_files"]]
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".arrow")]


def join_chunks(chunks: list[str], info, split, fingerprint: str, path: str, max_shard_bytes: int | None = None) -> None:
    """The rows of ``chunks`` (folders ``_keep_chunk`` wrote, in order) into ``path`` as one dataset in the layout
    ``save_to_disk`` writes and ``load_from_disk`` reads (``data-XXXXX-of-YYYYY.arrow`` shards of at most
    ``max_shard_bytes``, by default ``datasets``' own 500 MB; ``state.json``; ``dataset_info.json`` from ``info``),
    an image pointing to a local file embedded, as ``save_to_disk`` does.

    Read one record batch at a time with plain file reads: ``save_to_disk`` memory-maps every chunk and each page
    it reads stays in the process's resident memory until the whole dataset is written (+260 MB at 2000 rows of
    1024-px photos); read this way, memory stays one record batch whatever the row count."""
    import pyarrow as pa
    from datasets import config
    from datasets.arrow_writer import ArrowWriter
    from datasets.utils.py_utils import convert_file_size_to_int

    limit = max_shard_bytes or convert_file_size_to_int(config.MAX_SHARD_SIZE)
    os.makedirs(path)
    written: list[str] = []
    writer, size = None, 0

    def start():
        written.append(os.path.join(path, f"shard-{len(written):05d}.tmp"))
        return ArrowWriter(features=info.features, path=written[-1], embed_local_files=True), 0

    for folder in chunks:
        for source in _chunk_files(folder):
            with pa.OSFile(source) as f:
                for batch in pa.ipc.open_stream(f):
                    if writer is None or size >= limit:
                        if writer is not None:
                            writer.finalize()
                            writer.close()
                        writer, size = start()
                    writer.write_table(pa.Table.from_batches([batch]))
                    size += batch.nbytes
    if writer is None:  # no rows: one empty shard, as `save_dataset` writes
        writer, size = start()
    writer.finalize()
    writer.close()
    files = []
    for k, tmp in enumerate(written):
        files.append(f"data-{k:05d}-of-{len(written):05d}.arrow")
        os.replace(tmp, os.path.join(path, files[-1]))
    state = {
        "_data_files": [{"filename": f} for f in files], "_fingerprint": fingerprint, "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None if split is None else str(split),
    }
    with open(os.path.join(path, config.DATASET_STATE_JSON_FILENAME), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    info.write_to_directory(path, pretty_print=True)


def save_dataset(dataset, path: str) -> None:
    """``save_to_disk``, with an empty split written as one (empty) shard: datasets 5.2 otherwise writes no data
    file for it and ``load_from_disk`` fails on the result."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        empty = {name: 1 for name, part in dataset.items() if len(part) == 0}
        dataset.save_to_disk(path, num_shards=empty or None)
    else:
        dataset.save_to_disk(path, num_shards=1 if len(dataset) == 0 else None)


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


def write_run_record(output_dir: str, anonymize: Unsafe2Safe, source: str, summary: dict, local: bool | None = None) -> dict:
    """Next to the saved dataset: ``unsafe2safe_run.json`` (config, version, prompt hashes, counts) and a
    dataset card ``README.md``; ``local`` as in ``hub.run_record``."""
    record = run_record(anonymize, source, summary, local)
    run_path = os.path.join(output_dir, RUN_RECORD)
    with open(run_path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    card_path = os.path.join(output_dir, CARD)
    with open(card_path, "w", encoding="utf-8") as f:
        f.write(render_dataset_card(record))
    return {"run": run_path, "card": card_path}
