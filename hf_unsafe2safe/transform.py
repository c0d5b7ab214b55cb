"""The ``datasets.map`` callable: a batch of rows in, the same rows with safe images and the added columns out.

    anonymize = Unsafe2Safe.from_preset("lite")
    ds = anonymize.prepare(ds)   # image column undecoded, so safe images keep their exact bytes
    safe = ds.map(anonymize, batched=True, with_rank=True, features=anonymize.output_features(ds.features))

A batch goes: decode (unreadable rows: ``invalid_input``) -> Stage 1 -> Stage 2 -> the added columns. Each stage is
an ordered list of components built from the config (``build_stages``) under one fail-closed rule:

- Stage 1 (``inspection/stage.py``): detectors -> vlm -> grounder -> instructor, each adding to the inspections of
  the batch (``inspection/lite.py``, ``inspection/vlm.py``, ``inspection/grounding.py``);
- Stage 2 (``editing/stage.py``): diffusion -> compositor -> leak_check -> region_editor -> fallback, taking every
  flagged row to a safe image (``editing/registry.py`` for the diffusion editors, ``editing/compositing.py``,
  ``editing/leaks.py``, ``editing/lite.py``); the others keep their bytes.

The lite preset runs [detectors] and [region_editor, fallback]. Row components run on the row threads
(``inspector.num_threads``), model components batched over every readable row.

The object pickles to its config (models are never pickled; each process builds both stages once, on first use),
and its ``datasets`` fingerprint is made from config + package version + prompt/template hashes only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass

from . import columns as C
from .config import PipelineConfig
from .utils.images import describe_error
from .version import __version__

logger = logging.getLogger(__name__)


@dataclass
class RowResult:
    image: dict | None
    inspection: object | None  # inspection.base.Inspection
    status: str
    editor: str
    seed: int
    error: str | None
    metadata_removed: list
    original: dict | None = None


def holds_visual(feature) -> bool:
    """Whether a ``datasets`` feature holds an image, a video or a PDF anywhere inside it (in a list, a sequence or
    a struct)."""
    import datasets

    kinds = tuple(getattr(datasets, name) for name in ("Image", "Video", "Pdf") if hasattr(datasets, name))
    if isinstance(feature, kinds):
        return True
    if isinstance(feature, dict):
        return any(holds_visual(f) for f in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(holds_visual(f) for f in feature)
    inner = getattr(feature, "feature", None)  # Sequence, List, LargeList
    return inner is not None and holds_visual(inner)


def _looks_visual(values) -> bool:
    """Whether a batch column holds images as ``map`` hands them over: decoded (PIL), undecoded
    (``{"bytes", "path"}``), alone or in lists (the first few non-empty cells are looked at)."""
    from PIL import Image

    def visual(cell) -> bool:
        if isinstance(cell, Image.Image):
            return True
        if isinstance(cell, dict):
            return set(cell) == {"bytes", "path"}
        if isinstance(cell, (list, tuple)):
            return any(visual(c) for c in cell[:4])
        return False

    cells = values if isinstance(values, list) else [values]
    return any(visual(c) for c in [c for c in cells if c is not None][:4])


def header_pixels(data: bytes | None) -> int:
    """Pixels of an encoded image from its header alone (0 when it cannot be read: decode reports why later)."""
    if not data:
        return 0
    from .utils.images import open_bytes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_bytes(data) as img:
                w, h = img.size
        return w * h
    except Exception:  # noqa: BLE001 - unreadable here is unreadable in decode, which says why
        return 0


def pixel_groups(pixels: list[int], budget: int) -> list[list[int]]:
    """Consecutive row indices cut into groups of at most ``budget`` pixels (a larger row alone)."""
    groups: list[list[int]] = []
    total = budget + 1
    for i, n in enumerate(pixels):
        if total + n > budget:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups


def row_seed(global_seed: int, image_sha256: str) -> int:
    """Per-row seed from (global seed, image content): the same whatever batch, process or order."""
    digest = hashlib.sha256(f"{global_seed}:{image_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Unsafe2Safe:
    """Unsafe2Safe anonymization as a batched ``datasets.map`` transform."""

    def __init__(self, config: PipelineConfig | None = None, **overrides):
        if config is None:
            config = PipelineConfig.from_preset("lite", **overrides)
        elif overrides:
            raise TypeError("pass either a PipelineConfig or keyword overrides, not both")
        if not isinstance(config, PipelineConfig):
            raise TypeError(f"Got {type(config).__name__} for `config`; expected a PipelineConfig.")
        self.config = config
        self._stages = None  # (Stage 1, Stage 2) component lists, built on first use, never pickled
        self._pool = None  # the row threads (built on first use, never pickled)
        self._warned_decoded = False

    @classmethod
    def from_preset(cls, name: str = "lite", **overrides) -> "Unsafe2Safe":
        return cls(PipelineConfig.from_preset(name, **overrides))

    # ---- pickling and fingerprint -------------------------------------------------------------
    def fingerprint_state(self) -> dict:
        """Everything the output depends on, and nothing else (no models, no caches)."""
        from .prompts import prompts_digest
        from .taxonomy import load_taxonomy

        return {
            "config": self.config.to_dict(),
            "version": __version__,
            "prompts": prompts_digest(),
            "taxonomy": load_taxonomy().sha256,
        }

    def __reduce__(self):
        return (_restore, (self.fingerprint_state(),))

    def __repr__(self) -> str:
        return f"Unsafe2Safe(preset={self.config.preset!r}, image_column={self.config.image_column!r})"

    # ---- schema --------------------------------------------------------------------------------
    def output_features(self, input_features=None):
        """The features of the mapped dataset: the input's, image column as ``Image()``, plus the added columns."""
        from datasets import Features, Image

        feats = dict(input_features or {})
        col = self.config.image_column
        if input_features is not None and col not in feats:
            raise KeyError(f"Image column {col!r} not in the dataset; columns: {sorted(feats)}. Set `image_column`.")
        feats[col] = Image()
        for name, feature in C.added_features().items():
            if name in feats and input_features is not None and name not in C.ADDED_COLUMNS:
                continue
            feats[name] = feature
        if self.config.keep_original:
            feats[C.ORIGINAL_IMAGE] = Image()
        return Features(feats)

    def prepare(self, dataset):
        """The dataset with its image column undecoded, so safe images keep their exact bytes."""
        from datasets import Image

        col = self.config.image_column
        if col not in dataset.column_names:
            raise KeyError(f"Image column {col!r} not in the dataset; columns: {dataset.column_names}. Set `image_column`.")
        clashes = [c for c in C.ADDED_COLUMNS if c in dataset.column_names]
        if clashes:
            raise ValueError(f"The dataset already has output column(s) {clashes}: was it anonymized already?")
        self._refuse_unedited([name for name, feature in dataset.features.items() if holds_visual(feature)])
        self._find_class_label(dataset.features)
        return dataset.cast_column(col, Image(decode=False))

    def _refuse_unedited(self, visual: list[str]) -> None:
        """Only ``image_column`` is edited: any other column holding images (or video, PDF) would be published as it
        is, so it must be removed or named in ``unedited_columns`` first."""
        others = [c for c in visual if c != self.config.image_column and c not in self.config.unedited_columns]
        if others:
            raise ValueError(
                f"The dataset has image column(s) {others} besides `image_column` ({self.config.image_column!r}): "
                f"Unsafe2Safe edits only that one, so they would be published unedited. Remove them "
                f"(`dataset.remove_columns({others})`; command line: --drop-columns {','.join(others)}) or, if they "
                f"hold nothing identifying (segmentation masks, depth maps), name them in `unedited_columns` "
                f"(command line: --set unedited_columns='{json.dumps(others)}')."
            )

    def _find_class_label(self, features) -> None:
        """Two-pass Stage 1 names each image's class in its prompts (the paper's ``{image_class}``): the class column
        and its ClassLabel names go into the config, since they change what the transform writes (fingerprint)."""
        from datasets import ClassLabel

        v = self.config.vlm
        if v is None or v.passes != 2 or v.class_column is None:
            return
        column = v.class_column
        if column == "auto":
            found = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
            if not found:
                return
            column = "label" if "label" in found else found[0]
        elif column not in features:
            raise KeyError(f"Got {column!r} for `vlm.class_column`; the dataset has the columns {sorted(features)}.")
        v.class_column = column
        v.class_names = list(features[column].names) if isinstance(features[column], ClassLabel) else None

    def _row_classes(self, batch: dict, n: int) -> list[str | None]:
        """Each row's class name for the two-pass prompts (None where there is none: a -1 label, no column)."""
        v = self.config.vlm
        if v is None or v.passes != 2 or not v.class_column or v.class_column not in batch:
            return [None] * n
        out: list[str | None] = []
        for value in batch[v.class_column]:
            if isinstance(value, str) and value.strip():
                out.append(value)
            elif isinstance(value, int) and not isinstance(value, bool) and v.class_names and 0 <= value < len(v.class_names):
                out.append(v.class_names[value])
            else:
                out.append(None)
        return out

    # ---- the map function ----------------------------------------------------------------------
    def __call__(self, batch: dict, rank: int | None = None) -> dict:
        col = self.config.image_column
        if col not in batch:
            raise KeyError(f"Image column {col!r} not in the batch; columns: {sorted(batch)}. Set `image_column`.")
        # a plain `ds.map(anonymize)` has no `prepare`: other image columns arrive decoded and are refused here
        self._refuse_unedited([name for name, values in batch.items() if name != col and _looks_visual(values)])
        cells = batch[col]
        single = not isinstance(cells, list)
        if single:  # map(..., batched=False)
            batch = {k: [v] for k, v in batch.items()}
            cells = batch[col]
        # (bytes, read error, class name) per row
        items = [(*self._cell_bytes(cell), name) for cell, name in zip(cells, self._row_classes(batch, len(cells)))]
        results = []
        for group in pixel_groups([header_pixels(item[0]) for item in items], self.config.max_batch_pixels):
            results += self._run([items[i] for i in group], rank)
        out = dict(batch)
        out[col] = [r.image for r in results]
        out.update(self._columns(results))
        if self.config.keep_original:
            out[C.ORIGINAL_IMAGE] = [r.original for r in results]
        if single:
            out = {k: v[0] for k, v in out.items()}
        return out

    def _cell_bytes(self, cell) -> tuple[bytes | None, str | None]:
        from .utils.images import image_bytes

        try:
            data, err = image_bytes(cell)
        except (OSError, ValueError) as exc:
            return None, f"image could not be read: {describe_error(exc)}"
        if data is None and err is None:
            if not hasattr(cell, "save"):
                return None, f"unsupported image cell of type {type(cell).__name__}; expected bytes, a path, {{'bytes', 'path'}} or a PIL image"
            # a decoded PIL image: its original bytes are gone
            if not self._warned_decoded:
                logger.warning(
                    "The image column is decoded, so unflagged images cannot keep their original bytes; they are "
                    "re-encoded losslessly (PNG). Call `anonymize.prepare(ds)` (or cast the column to "
                    "Image(decode=False)) before `map` for byte-exact pass-through."
                )
                self._warned_decoded = True
            buf = io.BytesIO()
            try:
                cell.save(buf, format="PNG")
            except Exception as exc:  # noqa: BLE001 - any failure becomes this row's status
                return None, f"decoded image could not be serialised: {describe_error(exc)}"
            return buf.getvalue(), None
        return data, err

    # ---- the two stages ------------------------------------------------------------------------
    def build_component(self, name: str, rank: int | None = None):
        """The component registered as ``name`` (``inspection.stage.STAGE1`` or ``editing.stage.STAGE2``) for this
        config on the device of ``rank``, or None where the config leaves it out. Override it to plug in another
        implementation of one component."""
        from .editing import stage as stage2
        from .inspection import stage as stage1

        registry = stage1 if name in stage1.STAGE1 else stage2
        return registry.component_class(name).from_config(self.config, rank)

    def build_stages(self, rank: int | None = None) -> tuple[list, list]:
        """Stage 1 and Stage 2 of this config, as ordered lists of components (models loaded on the device of
        ``rank``); called once per process, on first use. Stage 2 is built from its end, so that a missing
        dependency of a cheap component (dlib, for the leak check) fails before a diffusion model loads."""
        from .editing.stage import STAGE2
        from .inspection.stage import STAGE1

        stage1 = [self.build_component(name, rank) for name in STAGE1]
        stage2 = [self.build_component(name, rank) for name in reversed(STAGE2)][::-1]
        return [c for c in stage1 if c is not None], [c for c in stage2 if c is not None]

    def stages(self, rank: int | None = None) -> tuple[list, list]:
        """Stage 1 and Stage 2 of this process (``build_stages`` on first use)."""
        if self._stages is None:
            self._stages = self.build_stages(rank)
        return self._stages

    def component(self, name: str, rank: int | None = None):
        """This process's component called ``name`` (of either stage), or None when the config leaves it out."""
        stage1, stage2 = self.stages(rank)
        return next((c for c in [*stage1, *stage2] if c.name == name), None)

    def load(self, rank: int | None = None) -> "Unsafe2Safe":
        """Build both stages now, in this process (``map`` otherwise builds them on the first batch), so that a
        wrong model id or a missing weight fails before any row is processed."""
        self.stages(rank)
        return self

    def release(self) -> None:
        """Drop this process's models and row threads (the next batch builds them again): what the command line does
        before writing the joined output, so that the writer's buffers do not come on top of the detectors'."""
        if self._pool is not None:
            self._pool.shutdown()
        self._stages, self._pool = None, None
        import gc

        gc.collect()

    def _run(self, items: list[tuple], rank: int | None) -> list[RowResult]:  # items: (bytes, read error, class name)
        """The rows of ``items`` through both stages. Where every component of both works one row at a time (lite),
        each row goes through all of them on its row thread, as a batch of one: only as many images are decoded at
        once as there are row threads (a batch of 16 12-MP photos otherwise holds 16 x 36 MB of pixels), and no
        thread waits at a stage's end for the other's last row. Every row's result is the same either way."""
        from .inspection.stage import serial

        stage1, stage2 = self.stages(rank)
        if _row_wise(stage1, stage2):
            return [r for rows in self._each_row(lambda item: self._through(stage1, stage2, [item], serial), items) for r in rows]
        return self._through(stage1, stage2, items, self._each_row)

    def _through(self, stage1: list, stage2: list, items: list[tuple], each_row) -> list[RowResult]:
        """``items`` decoded, through Stage 1 and Stage 2, with ``each_row`` spreading rows over threads."""
        from .editing.stage import EditRow, run_edits
        from .inspection.stage import InspectionBatch, run_inspection

        # 1. decode (bad input -> invalid_input, image emptied, the run goes on)
        decoded = each_row(self._decode, items)
        readable = [i for i, d in enumerate(decoded) if not isinstance(d, RowResult)]
        # 2. Stage 1 over the readable rows: row components on the row threads, model components batched
        batch = InspectionBatch([decoded[i] for i in readable], classes=[items[i][2] for i in readable], each_row=each_row)
        run_inspection(stage1, batch)
        # 3. Stage 2: flagged rows edited (fail closed), the others keep their bytes
        rows = [EditRow(source, ins, row_seed(self.config.seed, source.sha256), self.config.editor.jpeg_quality) for source, ins in zip(batch.sources, batch.inspections)]
        run_edits(stage2, rows, each_row)
        results = list(decoded)
        for i, row in zip(readable, rows):
            original = {"bytes": row.source.data, "path": None} if self.config.keep_original else None
            results[i] = RowResult(row.image, row.inspection, row.status, row.editor, row.seed, row.error, row.metadata_removed, original)
        return results

    def _decode(self, item: tuple):
        """The row's ``DecodedImage``, or its ``invalid_input`` result."""
        from .utils.images import InvalidImage, decode

        data, read_error = item[0], item[1]
        if data is None:
            return self._invalid(read_error or "image is missing")
        try:
            return decode(data, self.config.max_image_pixels)
        except InvalidImage as exc:
            return self._invalid(str(exc))

    def _each_row(self, fn, items) -> list:
        """``[fn(item) for item in items]``, the items spread over the row threads (ONNX Runtime, OpenCV and Pillow
        release the GIL; each detector call runs on one core, so rows, not operators, share the cores). Every row's
        result is independent of the threads: the same bytes come out either way."""
        from .inspection.lite import resolve_threads

        items = list(items)
        threads = resolve_threads(self.config.inspector.num_threads)
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="unsafe2safe-row")
        return list(self._pool.map(fn, items))

    def _invalid(self, message: str) -> RowResult:
        return RowResult(None, None, C.STATUS_INVALID, "none", -1, message, [])

    def _columns(self, results: list[RowResult]) -> dict:
        out = {name: [] for name in C.ADDED_COLUMNS}
        for r in results:
            ins = r.inspection
            out[C.PRIVACY_FLAG].append(True if ins is None else bool(ins.flagged))
            out[C.PRIVACY_CATEGORIES].append([] if ins is None else list(ins.categories))
            out[C.PRIVACY_REVIEW].append([] if ins is None else [{"item": i.item, "reason": i.reason} for i in ins.review])
            out[C.PRIVACY_REGIONS].append([] if ins is None else [reg.to_row() for reg in ins.regions])
            out[C.PRIVATE_CAPTION].append(None if ins is None else ins.private_caption)
            out[C.PUBLIC_CAPTION].append(None if ins is None else ins.public_caption)
            out[C.EDIT_INSTRUCTION].append(None if ins is None else ins.edit_instruction)
            out[C.TARGET_CAPTION].append(None if ins is None else ins.target_caption)
            out[C.ANONYMIZATION].append(
                {
                    "status": r.status,
                    "editor": r.editor,
                    "seed": r.seed,
                    "caption_source": C.CAPTION_NONE if ins is None else ins.caption_source,
                    "error": r.error,
                    "notes": [] if ins is None else list(ins.notes),
                }
            )
            out[C.METADATA_REMOVED].append(list(r.metadata_removed))
        return out


def _row_wise(stage1: list, stage2: list) -> bool:
    """Whether every component of both stages takes one row at a time and may run on any row thread."""
    from .inspection.stage import RowInspection

    return all(isinstance(c, RowInspection) for c in stage1) and all(not c.batched and c.thread_safe for c in stage2)


def _restore(state: dict) -> Unsafe2Safe:
    if state.get("version") != __version__:
        warnings.warn(
            f"Unsafe2Safe was pickled by hf_unsafe2safe {state.get('version')} and is restored by {__version__}",
            stacklevel=2,
        )
    return Unsafe2Safe(PipelineConfig.from_dict(state["config"]))
