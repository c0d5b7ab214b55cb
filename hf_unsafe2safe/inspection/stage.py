"""Stage 1 as an ordered list of components, each adding to the inspections of a batch of decoded images.

    STAGE1 = detectors -> vlm -> grounder -> instructor

- ``detectors`` (``lite.LiteDetectors``): the embedded detectors (faces, text, metadata) and template captions,
  row by row on the transform's row threads; every preset has them.
- ``vlm`` (``vlm.VLMInspection``): a vision-language model's flag, review, captions and boxes, merged with the
  detectors' (``vlm`` config).
- ``grounder`` (``grounding.Grounding``): an open-vocabulary detector's boxes for the flagged rows (``grounding``).
- ``instructor`` (``vlm.InstructionWriting``): a text LLM's edit instruction and target caption for the rows the
  VLM captioned and flagged (``instructor``).

A component is built from the whole ``PipelineConfig`` by ``from_config(config, rank)``, which returns None where
the config leaves it out; models load there, once per process. Adding one is a class in its own module plus one
line in ``STAGE1``, in the place of the list where it runs.

One fail-closed rule for the whole stage (``run_inspection``):
- a row component (``RowInspection``) that raises on a row closes that row: flagged, with the error
  ``"<failure> failed: <error>"``; the row goes on to the next components;
- a batched component that raises closes every row of the batch the same way and ends Stage 1 for the batch
  (every row is then edited as a whole; later components could not make that less strict);
- at the end every flagged category needs a region (or the metadata removal) that takes care of it, otherwise
  the row gets an error and its whole image is edited (``Inspection.require_coverage``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from .. import columns as C
from ..utils.images import describe_error
from .base import Inspection

from ..utils.registry import lookup

logger = logging.getLogger(__name__)

# name -> (module of hf_unsafe2safe.inspection, class), in the order the components run
STAGE1 = {
    "detectors": ("lite", "LiteDetectors"),
    "vlm": ("vlm", "VLMInspection"),
    "grounder": ("grounding", "Grounding"),
    "instructor": ("vlm", "InstructionWriting"),
}


def component_class(name: str) -> type:
    """The Stage 1 component class registered as ``name``, importing its module (and no other)."""
    return lookup(STAGE1, name, __package__, "a Stage 1 component")


def serial(fn, items) -> list:
    """``[fn(item) for item in items]`` on the calling thread."""
    return [fn(item) for item in items]


@dataclass
class InspectionBatch:
    """The readable rows of a batch on their way through Stage 1.

    ``sources``: the decoded images (``utils.images.DecodedImage``); ``inspections``: what the components found so
    far, one per row (they start with nothing found and no caption written); ``classes``: each row's class name
    for the prompts that name it, or None; ``each_row(fn, items)``: ``[fn(item) for item in items]``, spread over
    the transform's row threads; ``answers``: the VLM's answer per row (``vlm.RawAnswer``), once it has answered.
    """

    sources: list
    inspections: list[Inspection] = field(default_factory=list)
    classes: list[str | None] = field(default_factory=list)
    each_row: Callable = serial
    answers: list | None = None

    def __post_init__(self) -> None:
        n = len(self.sources)
        if not self.inspections:
            self.inspections = [Inspection(flagged=False, caption_source=C.CAPTION_NONE) for _ in range(n)]
        if not self.classes:
            self.classes = [None] * n
        if not len(self.inspections) == len(self.classes) == n:
            raise ValueError(f"Got {len(self.inspections)} inspections and {len(self.classes)} classes for {n} images; expected one of each per image")

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def images(self) -> list:
        """The PIL images in display orientation (decoded on first use: an unreadable one raises here)."""
        return [source.image for source in self.sources]


class InspectionComponent:
    """One step of Stage 1. ``__call__(batch)`` adds to ``batch.inspections`` (batched over every row);
    ``finish(batch)`` runs once every component has added to the batch; ``failure`` names the step in a closed
    row's error (``"<failure> failed: ..."``)."""

    name: str = ""
    failure: str = "model inspection"

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "InspectionComponent | None":
        """This component for the pipeline config ``config`` on the device of ``datasets`` rank ``rank``, or None
        where the config leaves it out."""
        raise NotImplementedError(f"{cls.__name__} does not define from_config")

    def __call__(self, batch: InspectionBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def finish(self, batch: InspectionBatch) -> None:
        """What to settle once every component has added to the batch (nothing by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class RowInspection(InspectionComponent):
    """A component that inspects one row at a time (``inspect_row``); ``run_inspection`` spreads the rows over the
    row threads and closes a row whose inspection raises, the others going on."""

    failure = "inspection"

    def inspect_row(self, source, inspection: Inspection) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define inspect_row")


def close(inspection: Inspection, component: InspectionComponent, err: Exception) -> None:
    """Fail closed: the row is flagged and says which component failed and why."""
    inspection.flagged, inspection.error = True, f"{component.failure} failed: {describe_error(err)}"


def run_inspection(components: list[InspectionComponent], batch: InspectionBatch) -> None:
    """Run Stage 1's components in order on ``batch`` under the rule of the module docstring."""
    if len(batch) == 0:
        return
    for component in components:
        if isinstance(component, RowInspection):
            batch.each_row(lambda i, c=component: _inspect_row(c, batch, i), range(len(batch)))
            continue
        try:
            component(batch)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: every row of the batch fails closed
            logger.exception("%s failed on a batch of %d rows; every row of it is edited as a whole", component.name, len(batch))
            for inspection in batch.inspections:
                close(inspection, component, err)
            break
    else:
        for component in components:
            component.finish(batch)
    for inspection in batch.inspections:
        inspection.require_coverage()


def _inspect_row(component: RowInspection, batch: InspectionBatch, i: int) -> None:
    try:
        component.inspect_row(batch.sources[i], batch.inspections[i])
    except Exception as err:  # noqa: BLE001 - any failure closes the row
        logger.exception("%s failed on a row; it is edited as a whole", component.name)
        close(batch.inspections[i], component, err)
