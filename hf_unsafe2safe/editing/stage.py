"""Stage 2 as an ordered list of components that take each flagged row to a safe image.

    STAGE2 = diffusion -> compositor -> leak_check -> region_editor -> fallback

- ``diffusion`` (``DiffusionEdit``): the diffusers editor of ``config.diffusion`` (``registry.build_editor``), one
  bucketed, batched pass over the flagged rows with regions to edit;
- ``compositor`` (``Compositing``): its output pasted back inside the regions (``compositing``); regions it left
  nearly unchanged are still to edit;
- ``leak_check`` (``LeakCheck``): faces and text of the composited regions checked for what survived (``leaks``);
  those regions are still to edit;
- ``region_editor`` (``RegionEdit``): the lite region edit (``lite.RegionEditor``) of the regions still to edit on
  the composite, or of every region on the source when there is no composite; it writes the row;
- ``fallback`` (``WholeImageFallback``): the whole image pixelated, for every row nothing else wrote.

The first three are there only with a ``diffusion`` config (the leak check only with ``diffusion.leak_check``);
the lite preset's Stage 2 is [region_editor, fallback]. A component is built from the whole ``PipelineConfig`` by
``from_config(config, rank)`` (None where the config leaves it out); adding one is a class in its own module plus
one line in ``STAGE2``, in the place of the list where it runs.

Rows Stage 2 need not edit keep their bytes: unflagged rows, and rows flagged by their metadata alone (removing it
is the edit); only identifying metadata is removed, losslessly where the container allows (``keep``).

One fail-closed rule for the flagged rows (``run_edits``): a flagged image never leaves unchanged.
- A component that raises on a row holding a diffusion result drops that result (error ``"<editor> composite
  failed: ..."``) and runs again on the source image, as if there had been no diffusion.
- Otherwise its error (``"<failure> failed: ..."``) joins the row's errors and the next component takes over; a
  batched component that raises does so for every row it was given.
- A row no component wrote leaves empty with status ``failed`` and every error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import columns as C
from ..utils.images import describe_error, encode, from_edit_array, pass_through, to_edit_array

from ..utils.registry import lookup

logger = logging.getLogger(__name__)

# name -> (module of hf_unsafe2safe.editing, class), in the order the components run
STAGE2 = {
    "diffusion": ("stage", "DiffusionEdit"),
    "compositor": ("stage", "Compositing"),
    "leak_check": ("stage", "LeakCheck"),
    "region_editor": ("stage", "RegionEdit"),
    "fallback": ("stage", "WholeImageFallback"),
}


def component_class(name: str) -> type:
    """The Stage 2 component class registered as ``name``, importing its module."""
    return lookup(STAGE2, name, __package__, "a Stage 2 component")


@dataclass
class EditRow:
    """One readable row on its way through Stage 2: what Stage 1 said, what the components did, what comes out."""

    source: object  # utils.images.DecodedImage
    inspection: object  # inspection.base.Inspection
    seed: int
    jpeg_quality: int
    errors: list[str] = field(init=False)  # Stage 1's error, then every failure on the way, in order
    # the diffusion path: the editor's output, then its composite, the regions of that still to edit and why
    diffused: object = field(default=None, init=False)
    composite: object = field(default=None, init=False)
    diffusion_name: str = field(default="", init=False)
    pending: list = field(default_factory=list, init=False)
    reasons: list[str] = field(default_factory=list, init=False)
    # the outcome (status None: not written yet)
    image: dict | None = field(default=None, init=False)
    status: str | None = field(default=None, init=False)
    editor: str = field(default="none", init=False)
    error: str | None = field(default=None, init=False)
    metadata_removed: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.errors = [self.inspection.error] if self.inspection.error else []
        self.metadata_removed = list(self.source.metadata.removed)

    @property
    def needs_edit(self) -> bool:
        """Flagged with something in its pixels to edit: a region, or an error (then the whole image)."""
        ins = self.inspection
        return ins.flagged and (ins.error is not None or bool(ins.regions))

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def on_diffusion(self) -> bool:
        return self.diffused is not None or self.composite is not None

    def write(self, image, status: str, editor: str, error: str | None) -> None:
        """The row's output: ``image`` (PIL) encoded like its source."""
        data = encode(image, self.source, self.jpeg_quality)
        self.image, self.status, self.editor, self.error = {"bytes": data, "path": None}, status, editor, error

    def drop_diffusion(self, err: Exception) -> None:
        self.errors.append(f"{self.diffusion_name} composite failed: {describe_error(err)}")
        self.diffused = self.composite = None
        self.pending, self.reasons = [], []


class EditComponent:
    """One step of Stage 2. ``wants(row)`` says whether a row is its business; a row component edits one row at a
    time (``edit_row``), a batched one (``batched = True``) all the rows it wants at once (``edit_rows``).
    ``failure`` names the step in a row's error; ``thread_safe = False`` keeps the rows on one thread."""

    name: str = ""
    failure: str = ""
    batched: bool = False
    thread_safe: bool = True

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "EditComponent | None":
        """This component for the pipeline config ``config`` on the device of ``datasets`` rank ``rank``, or None
        where the config leaves it out."""
        raise NotImplementedError(f"{cls.__name__} does not define from_config")

    def wants(self, row: EditRow) -> bool:
        return not row.done

    def edit_row(self, row: EditRow) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define edit_row")

    def edit_rows(self, rows: list[EditRow]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define edit_rows")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def keep(row: EditRow) -> None:
    """A row Stage 2 need not edit: its own bytes, identifying metadata removed (``edited`` by ``metadata-strip``
    when that removal is the edit of a flagged row, else ``passed``)."""
    source = row.source
    try:
        data, reencoded = pass_through(source, row.jpeg_quality)
    except Exception as err:  # noqa: BLE001 - the container could not be rewritten: write the pixels anew
        logger.warning("pass-through failed (%s); re-encoding", describe_error(err))
        data, reencoded = encode(source.image, source, row.jpeg_quality), True
    row.status, row.editor = (C.STATUS_EDITED, "metadata-strip") if row.inspection.flagged else (C.STATUS_PASSED, "none")
    row.image = {"bytes": data, "path": None}
    row.metadata_removed += ["reencoded"] if reencoded else []


def run_edits(components: list[EditComponent], rows: list[EditRow], each_row=None) -> None:
    """Take every row to its output under the rule of the module docstring. ``each_row(fn, items)``:
    ``[fn(item) for item in items]``, spread over the transform's row threads."""
    each_row = each_row or (lambda fn, items: [fn(item) for item in items])
    todo = [row for row in rows if row.needs_edit]
    each_row(keep, [row for row in rows if not row.needs_edit])
    k = 0
    while k < len(components) and todo:
        if components[k].batched:
            _edit_batch(components[k], todo)
            k += 1
            continue
        group = []
        while k < len(components) and not components[k].batched:
            group.append(components[k])
            k += 1

        def edit(row: EditRow, group=group) -> None:
            for component in group:
                _edit_row(component, row)

        if all(c.thread_safe for c in group):
            each_row(edit, todo)
        else:
            for row in todo:
                edit(row)
    for row in todo:
        if not row.done:
            row.image, row.status, row.editor, row.error = None, C.STATUS_FAILED, "none", "; ".join(row.errors)


def _edit_batch(component: EditComponent, rows: list[EditRow]) -> None:
    chosen = [row for row in rows if component.wants(row)]
    if not chosen:
        return
    try:
        component.edit_rows(chosen)
    except Exception as err:  # noqa: BLE001 - e.g. out of memory: these rows go on to the next components
        logger.exception("%s failed on %d rows; the next Stage 2 components take them", component.name, len(chosen))
        for row in chosen:
            row.errors.append(f"{component.failure} failed: {describe_error(err)}")


def _edit_row(component: EditComponent, row: EditRow) -> None:
    if not component.wants(row):
        return
    try:
        component.edit_row(row)
    except Exception as err:  # noqa: BLE001 - any failure: the row goes on (fail closed)
        if row.on_diffusion:
            logger.exception("%s failed on a diffusion edit; the row is edited from its source", component.name)
            row.drop_diffusion(err)
            _edit_row(component, row)
            return
        logger.exception("%s failed on a row; the next Stage 2 components take it", component.name)
        row.errors.append(f"{component.failure} failed: {describe_error(err)}")


# ---- the components ------------------------------------------------------------------------------------------


class DiffusionEdit(EditComponent):
    """The diffusers editor on every flagged row with regions to edit (and no Stage 1 error), in one batched call
    (the editor buckets the rows by size and splits a batch that runs out of memory). Its prompt follows the editor:
    an inpainting editor repaints the region masks from the target caption, FlowEdit goes from the private caption
    to the target caption, instruction editors follow the edit instruction (and the public caption, dual-prompt)."""

    name = "diffusion"
    batched = True

    def __init__(self, editor, config, editor_config):
        self.editor = editor  # a DiffusionEditor (editing.registry)
        self.config = config  # its DiffusionEditorConfig
        self.editor_config = editor_config  # the LiteEditorConfig: the masks' dilation and feather

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "DiffusionEdit | None":
        if config.diffusion is None:
            return None
        from ..inspection.vlm import pick_device
        from .registry import build_editor

        return cls(build_editor(config.diffusion, pick_device(rank)), config.diffusion, config.editor)

    @property
    def failure(self) -> str:
        return self.editor.name

    def wants(self, row: EditRow) -> bool:
        ins = row.inspection
        return not row.done and ins.flagged and ins.error is None and bool(ins.regions)

    def edit_rows(self, rows: list[EditRow]) -> None:
        editor = self.editor
        images = [row.source.image for row in rows]
        seeds = [row.seed for row in rows]
        if editor.uses_mask:  # repaint the regions from a caption of what should be there
            from PIL import Image

            from .compositing import region_mask

            e = self.editor_config
            prompts = [row.inspection.target_caption or row.inspection.public_caption for row in rows]
            masks = [Image.fromarray((region_mask(img.size, row.inspection.regions, e.dilation, e.feather) > 0).astype("uint8") * 255) for row, img in zip(rows, images)]
            out = editor.edit(images, prompts, seeds, masks)
        elif editor.uses_source_prompt:  # FlowEdit: from a caption of the source to the target caption
            sources = [row.inspection.private_caption for row in rows]
            targets = [row.inspection.target_caption or row.inspection.public_caption for row in rows]
            out = editor.edit(images, targets, seeds, source_prompts=sources)
        else:
            prompts = [row.inspection.edit_instruction or row.inspection.public_caption for row in rows]
            if getattr(editor, "uses_caption", False):  # dual prompt: the public caption as a second conditioning
                out = editor.edit(images, prompts, seeds, captions=[row.inspection.public_caption for row in rows])
            else:
                out = editor.edit(images, prompts, seeds)
        for row, diffused in zip(rows, out):
            row.diffused, row.diffusion_name = diffused, self.config.name


class Compositing(EditComponent):
    """The diffusion output inside the row's regions only (or the whole image, ``diffusion.mode = "global"``);
    regions it left nearly unchanged (``diffusion.min_change``) are still to edit."""

    name = "compositor"
    failure = "composite"

    def __init__(self, config, editor_config):
        self.config = config  # DiffusionEditorConfig
        self.editor_config = editor_config  # LiteEditorConfig

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "Compositing | None":
        return None if config.diffusion is None else cls(config.diffusion, config.editor)

    def wants(self, row: EditRow) -> bool:
        return not row.done and row.diffused is not None

    def edit_row(self, row: EditRow) -> None:
        from .compositing import composite, is_blank, unchanged_regions

        d, e = self.config, self.editor_config
        if is_blank(row.diffused):
            raise ValueError("the editor returned a blank image")
        regions = row.inspection.regions
        result = composite(row.source.image, row.diffused, regions, e.dilation, e.feather, whole_image=d.mode == "global")
        stale = unchanged_regions(row.source.image, result, regions, d.min_change)
        row.composite, row.diffused = result, None
        if stale:
            row.pending += stale
            row.reasons.append(f"{len(stale)} region(s) left nearly unchanged by {row.diffusion_name}")


class LeakCheck(EditComponent):
    """Faces and text of the composited regions checked for what survived the edit (``leaks.LeakChecker``: dlib
    identity distance, OCR similarity); the leaking regions are still to edit. dlib's models are not shared between
    threads, so rows go through it one at a time."""

    name = "leak_check"
    failure = "leak check"
    thread_safe = False

    def __init__(self, checker):
        self.checker = checker

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "LeakCheck | None":
        d = config.diffusion
        if d is None or not d.leak_check:
            return None
        from .leaks import LeakChecker

        return cls(LeakChecker(d.face_leak_distance, d.text_leak_similarity))

    def wants(self, row: EditRow) -> bool:
        return not row.done and row.composite is not None

    def edit_row(self, row: EditRow) -> None:
        fresh = [r for r in row.inspection.regions if r not in row.pending]
        leaks = self.checker.check(row.source.image, row.composite, fresh) if fresh else []
        for kind in ("face", "text"):
            found = [leak for leak in leaks if leak.kind == kind]
            if found:
                what = "identity (dlib distance" if kind == "face" else "text (similarity"
                evidence = ", ".join(f"{leak.evidence:.2f}" for leak in found)
                row.reasons.append(f"{len(found)} {kind} region(s) whose {what} {evidence}) survived {row.diffusion_name}")
        row.pending += [leak.region for leak in leaks]


class _LiteEdit(EditComponent):
    """A component that edits with the lite editor (``lite.RegionEditor``, from ``config.editor``)."""

    def __init__(self, editor):
        self.editor = editor  # lite.RegionEditor

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "_LiteEdit":
        from .lite import RegionEditor

        return cls(RegionEditor(config.editor))


class RegionEdit(_LiteEdit):
    """The lite region edit (pixelate / blur / fill / inpaint per category, ``lite.RegionEditor``): of the regions
    still to edit on a diffusion composite, else of every region of a row without a Stage 1 error on its source.
    It writes the row (``edited``)."""

    name = "region_editor"
    failure = "region edit"

    def wants(self, row: EditRow) -> bool:
        return not row.done and (row.composite is not None or row.inspection.error is None)

    def edit_row(self, row: EditRow) -> None:
        if row.composite is not None:
            image, name = row.composite, row.diffusion_name
            if row.pending:
                pixels, mode = to_edit_array(image)
                pixels, _ = self.editor.edit(pixels, row.pending)
                image, name = from_edit_array(pixels, mode), f"{row.diffusion_name}+{self.editor.name}"
            notes = [f"{reason} got the {self.editor.name} edit" for reason in row.reasons]
            row.write(image, C.STATUS_EDITED, name, "; ".join(row.errors + notes) or None)
            return
        pixels, mode = to_edit_array(row.source.image)
        edited, _ = self.editor.edit(pixels, row.inspection.regions)
        row.write(from_edit_array(edited, mode), C.STATUS_EDITED, self.editor.name, "; ".join(row.errors) or None)


class WholeImageFallback(_LiteEdit):
    """The strongest lite edit, the whole source image pixelated (``lite.RegionEditor.fallback``), for every row
    no earlier component wrote (``fallback``)."""

    name = "fallback"
    failure = "fallback"

    def edit_row(self, row: EditRow) -> None:
        pixels, mode = to_edit_array(row.source.image)
        row.write(from_edit_array(self.editor.fallback(pixels), mode), C.STATUS_FALLBACK, f"{self.editor.name}-fallback", "; ".join(row.errors))
