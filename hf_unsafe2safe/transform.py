"""The ``datasets.map`` callable: a batch of rows in, the same rows with safe images and the added columns out.

    anonymize = Unsafe2Safe.from_preset("lite")
    ds = anonymize.prepare(ds)   # image column undecoded, so safe images keep their exact bytes
    safe = ds.map(anonymize, batched=True, with_rank=True, features=anonymize.output_features(ds.features))

The object pickles to its config (models are never pickled; each process loads them once, on first use),
and its ``datasets`` fingerprint is made from config + package version + prompt/template hashes only.
"""

from __future__ import annotations

import hashlib
import io
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


def header_pixels(data: bytes | None) -> int:
    """Pixels of an encoded image from its header alone (0 when it cannot be read: decode reports why later)."""
    if not data:
        return 0
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
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
        self._runtime = None
        self._model_stage = None
        self._pool = None  # the row threads of the lite stages (built on first use, never pickled)
        self._diffusion = None
        self._leaks = None
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
        self._find_class_label(dataset.features)
        return dataset.cast_column(col, Image(decode=False))

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

    def build_stages(self):
        """``(inspector, editor)`` for this config; called once per process, on first use.

        The inspector has ``inspect(DecodedImage) -> Inspection``; the editor has ``name``,
        ``edit(pixels, regions) -> (pixels, methods)`` and ``fallback(pixels) -> pixels``.
        """
        from .editing.lite import RegionEditor
        from .inspection.lite import LiteInspector
        from .inspection.templates import TemplateCaptioner
        from .taxonomy import load_taxonomy

        return (
            LiteInspector(self.config.inspector, load_taxonomy(), TemplateCaptioner()),
            RegionEditor(self.config.editor),
        )

    def load(self, rank: int | None = None) -> "Unsafe2Safe":
        """Build every stage now, in this process (``map`` otherwise builds them on the first batch), so that a
        wrong model id or a missing weight fails before any row is processed."""
        self.stages()
        self.model_stage(rank)
        self.diffusion_editor(rank)
        return self

    def stages(self):
        if self._runtime is None:
            self._runtime = self.build_stages()
        return self._runtime

    def build_model_stage(self, rank: int | None = None):
        """The model half of Stage 1 (VLM + instruction LLM) on the rank's device, or None for lite."""
        if self.config.vlm is None:
            return None
        from .inspection.vlm import EditInstructionWriter, ModelStage1, VLMInspector, build_chat_generator, pick_device
        from .taxonomy import load_taxonomy

        device = pick_device(rank)
        v = self.config.vlm
        vlm = build_chat_generator(v, device, vision=True)
        inspector = VLMInspector(vlm, v.category_list(), v.box_format, v.image_max_side, v.image_min_side, v.max_new_tokens, v.batch_size, v.repair,
                                 passes=v.passes, flag_max_new_tokens=v.flag_max_new_tokens, retry_max_new_tokens=v.retry_max_new_tokens)
        writer = None
        if self.config.instructor is not None:
            i = self.config.instructor
            llm = build_chat_generator(i, device, vision=False)
            writer = EditInstructionWriter(llm, i.max_new_tokens, i.batch_size, i.target_caption)
        grounder = None
        if self.config.grounding is not None:
            from .inspection.grounding import RegionGrounder, grounding_queries

            g = self.config.grounding
            queries = grounding_queries([cid for cid, _ in v.category_list()])
            grounder = RegionGrounder(g.model, g.revision, g.dtype, device, queries, g.threshold, g.batch_size)
        return ModelStage1(inspector, writer, load_taxonomy().ids, grounder)

    def model_stage(self, rank: int | None):
        if self.config.vlm is None:
            return None
        if self._model_stage is None:
            self._model_stage = self.build_model_stage(rank)
        return self._model_stage

    def _run(self, items: list[tuple], rank: int | None) -> list[RowResult]:  # items: (bytes, read error, class name)
        from .inspection.base import Inspection
        from .utils.images import InvalidImage, decode

        inspector, editor = self.stages()
        results: list[RowResult | None] = [None] * len(items)

        def inspect(item: tuple):  # (bytes, read error[, class name])
            data, read_error = item[0], item[1]
            # 1. decode (bad input -> invalid_input, image emptied, the run goes on)
            if data is None:
                return self._invalid(read_error or "image is missing")
            try:
                source = decode(data, self.config.max_image_pixels)
            except InvalidImage as exc:
                return self._invalid(str(exc))
            # 2. Stage 1, detectors: a failure flags the row (fail closed)
            try:
                inspection = inspector.inspect(source)
            except Exception as exc:  # noqa: BLE001
                logger.exception("inspection failed")
                inspection = Inspection(flagged=True, error=f"inspection failed: {describe_error(exc)}", caption_source=C.CAPTION_NONE)
            return source, inspection

        rows = []  # (index, source, inspection) of the readable rows
        for index, done in enumerate(self._each_row(inspect, items)):
            if isinstance(done, RowResult):
                results[index] = done
            else:
                rows.append((index, *done))
        # 3. Stage 1, models: one batched pass over every readable row of the batch
        models = self.model_stage(rank)
        if models is not None and rows:
            try:
                classes = [items[index][2] if len(items[index]) > 2 else None for index, _, _ in rows]
                models.apply([source.image for _, source, _ in rows], [ins for _, _, ins in rows], classes)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: every row of the batch fails closed
                logger.exception("model inspection failed")
                for _, _, ins in rows:
                    ins.flagged, ins.error = True, f"model inspection failed: {describe_error(exc)}"
        # every flagged category needs an edited region (or the metadata removal) that takes care of it; one that
        # has none cannot be edited region by region: the whole image is (fail closed)
        for _, _, ins in rows:
            ins.require_coverage()
        # 4. Stage 2, diffusion (when configured): one bucketed, batched pass over the rows with regions to edit
        diffused, diffusion_error = self._diffuse(rows, rank)
        # 5. Stage 2 for flagged rows only; unflagged rows keep their bytes

        def finish(k: int) -> RowResult:
            _, source, inspection = rows[k]
            result = self._finish(source, inspection, editor, row_seed(self.config.seed, source.sha256), diffused.get(k), diffusion_error)
            result.original = {"bytes": source.data, "path": None} if self.config.keep_original else None
            return result

        # the leak check's dlib models are not shared between threads: with a diffusion editor rows finish in turn
        finished = self._each_row(finish, range(len(rows))) if self.config.diffusion is None else [finish(k) for k in range(len(rows))]
        for (index, _, _), result in zip(rows, finished):
            results[index] = result
        return results

    def _each_row(self, fn, items) -> list:
        """``[fn(item) for item in items]``, the items spread over the lite stages' row threads (ONNX Runtime,
        OpenCV and Pillow release the GIL; each detector call runs on one core, so rows, not operators, share the
        cores). Every row's result is independent of the threads: the same bytes come out either way."""
        from .inspection.lite import resolve_threads

        items = list(items)
        threads = resolve_threads(self.config.inspector.num_threads)
        if threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="unsafe2safe-row")
        return list(self._pool.map(fn, items))

    def diffusion_editor(self, rank: int | None):
        """The diffusers editor on the rank's device (built once per process), or None."""
        if self.config.diffusion is None:
            return None
        if self._diffusion is None:
            from .editing.registry import build_editor
            from .inspection.vlm import pick_device

            self.leak_checker()  # before the editor: a missing dlib fails in seconds, not after a model load
            self._diffusion = build_editor(self.config.diffusion, pick_device(rank))
        return self._diffusion

    def leak_checker(self):
        """The identity/text check of diffusion edits (built once per process), or None when it is off."""
        d = self.config.diffusion
        if d is None or not d.leak_check:
            return None
        if self._leaks is None:
            from .editing.leaks import LeakChecker

            self._leaks = LeakChecker(d.face_leak_distance, d.text_leak_similarity)
        return self._leaks

    def _diffuse(self, rows, rank) -> tuple[dict, str | None]:
        editor = self.diffusion_editor(rank)
        todo = [k for k, (_, _, ins) in enumerate(rows) if editor is not None and ins.flagged and ins.error is None and ins.regions]
        if not todo:
            return {}, None
        try:
            images = [rows[k][1].image for k in todo]
            seeds = [row_seed(self.config.seed, rows[k][1].sha256) for k in todo]
            if editor.uses_mask:  # repaint the regions from a caption of what should be there
                from PIL import Image

                from .editing.compositing import region_mask

                e = self.config.editor
                prompts = [rows[k][2].target_caption or rows[k][2].public_caption for k in todo]
                masks = [Image.fromarray((region_mask(img.size, rows[k][2].regions, e.dilation, e.feather) > 0).astype("uint8") * 255) for k, img in zip(todo, images)]
                return dict(zip(todo, editor.edit(images, prompts, seeds, masks))), None
            if editor.uses_source_prompt:  # FlowEdit: from a caption of the source to the target caption
                sources = [rows[k][2].private_caption for k in todo]
                targets = [rows[k][2].target_caption or rows[k][2].public_caption for k in todo]
                return dict(zip(todo, editor.edit(images, targets, seeds, source_prompts=sources))), None
            prompts = [rows[k][2].edit_instruction or rows[k][2].public_caption for k in todo]
            if getattr(editor, "uses_caption", False):  # dual prompt: the public caption as a second conditioning
                captions = [rows[k][2].public_caption for k in todo]
                return dict(zip(todo, editor.edit(images, prompts, seeds, captions=captions))), None
            return dict(zip(todo, editor.edit(images, prompts, seeds))), None
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: these rows get the lite region edit
            logger.exception("diffusion editing failed; using the lite region editor")
            return {}, f"{editor.name} failed: {describe_error(exc)}"

    def _invalid(self, message: str) -> RowResult:
        return RowResult(None, None, C.STATUS_INVALID, "none", -1, message, [])

    def _finish(self, source, inspection, editor, seed: int, diffused=None, diffusion_error: str | None = None) -> RowResult:
        from .utils.images import encode, from_edit_array, pass_through, to_edit_array

        removed = list(source.metadata.removed)
        quality = self.config.editor.jpeg_quality
        if not inspection.flagged or (inspection.error is None and not inspection.regions):
            # unflagged, or flagged by metadata alone (removing it is the edit; the pixels hold nothing found)
            try:
                data, reencoded = pass_through(source)
            except Exception as exc:  # noqa: BLE001 - the container could not be rewritten: write the pixels anew
                logger.warning("pass-through failed (%s); re-encoding", describe_error(exc))
                data, reencoded = encode(source.image, source, quality), True
            status, editor_name = (C.STATUS_EDITED, "metadata-strip") if inspection.flagged else (C.STATUS_PASSED, "none")
            return RowResult({"bytes": data, "path": None}, inspection, status, editor_name, seed, None, removed + (["reencoded"] if reencoded else []))
        errors = [inspection.error] if inspection.error else []
        if diffusion_error and inspection.error is None:
            errors.append(diffusion_error)
        if diffused is not None:
            try:
                return self._composite(source, inspection, editor, seed, diffused, removed)
            except Exception as exc:  # noqa: BLE001
                logger.exception("diffusion composite failed; using the lite region editor")
                errors.append(f"{self.config.diffusion.name} composite failed: {describe_error(exc)}")
        if inspection.error is None:
            try:
                pixels, mode = to_edit_array(source.image)
                edited, _ = editor.edit(pixels, inspection.regions)
                data = encode(from_edit_array(edited, mode), source, quality)
                return RowResult({"bytes": data, "path": None}, inspection, C.STATUS_EDITED, editor.name, seed, "; ".join(errors) or None, removed)
            except Exception as exc:  # noqa: BLE001
                logger.exception("region edit failed; using the whole-image fallback")
                errors.append(f"region edit failed: {describe_error(exc)}")
        try:
            pixels, mode = to_edit_array(source.image)
            data = encode(from_edit_array(editor.fallback(pixels), mode), source, quality)
            return RowResult({"bytes": data, "path": None}, inspection, C.STATUS_FALLBACK, f"{editor.name}-fallback", seed, "; ".join(errors), removed)
        except Exception as exc:  # noqa: BLE001
            logger.exception("fallback edit failed; emptying the image")
            errors.append(f"fallback failed: {describe_error(exc)}")
            return RowResult(None, inspection, C.STATUS_FAILED, "none", seed, "; ".join(errors), removed)

    def _composite(self, source, inspection, editor, seed, diffused, removed) -> RowResult:
        """The diffusion output inside the regions; regions it left nearly unchanged get the lite edit too."""
        from .editing.compositing import composite, is_blank, unchanged_regions
        from .utils.images import encode, from_edit_array, to_edit_array

        d, e = self.config.diffusion, self.config.editor
        if is_blank(diffused):
            raise ValueError("the editor returned a blank image")
        result = composite(source.image, diffused, inspection.regions, e.dilation, e.feather, whole_image=d.mode == "global")
        stale = unchanged_regions(source.image, result, inspection.regions, d.min_change)
        notes = [f"{len(stale)} region(s) left nearly unchanged by {d.name} got the {editor.name} edit"] if stale else []
        checker = self.leak_checker()
        if checker is not None:
            fresh = [r for r in inspection.regions if r not in stale]
            leaks = checker.check(source.image, result, fresh) if fresh else []
            for kind in ("face", "text"):
                found = [leak for leak in leaks if leak.kind == kind]
                if found:
                    what = "identity (dlib distance" if kind == "face" else "text (similarity"
                    evidence = ", ".join(f"{leak.evidence:.2f}" for leak in found)
                    notes.append(f"{len(found)} {kind} region(s) whose {what} {evidence}) survived {d.name} got the {editor.name} edit")
            stale = stale + [leak.region for leak in leaks]
        name = d.name
        if stale:
            pixels, mode = to_edit_array(result)
            pixels, _ = editor.edit(pixels, stale)
            result = from_edit_array(pixels, mode)
            name = f"{d.name}+{editor.name}"
        note = "; ".join(notes) or None
        data = encode(result, source, e.jpeg_quality)
        return RowResult({"bytes": data, "path": None}, inspection, C.STATUS_EDITED, name, seed, note, removed)

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


def _restore(state: dict) -> Unsafe2Safe:
    if state.get("version") != __version__:
        warnings.warn(
            f"Unsafe2Safe was pickled by hf_unsafe2safe {state.get('version')} and is restored by {__version__}",
            stacklevel=2,
        )
    return Unsafe2Safe(PipelineConfig.from_dict(state["config"]))
