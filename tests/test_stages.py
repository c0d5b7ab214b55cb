"""The two stages as ordered lists of components built from the config, and their one fail-closed rule: a component
that raises closes the rows it was working on, and a flagged image never leaves unchanged."""

import numpy as np
import pytest
from imagegen import astronaut, call_rows, cell, encode, gradient, pixels
from PIL import Image

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.editing import stage as stage2
from hf_unsafe2safe.editing.lite import RegionEditor
from hf_unsafe2safe.inspection import stage as stage1
from hf_unsafe2safe.inspection.lite import LiteDetectors
from hf_unsafe2safe.inspection.stage import InspectionComponent, RowInspection


def _names(components) -> list[str]:
    return [c.name for c in components]


def test_every_registered_component_resolves_to_a_class_of_that_name():
    for registry in (stage1, stage2):
        registered = registry.STAGE1 if registry is stage1 else registry.STAGE2
        for name in registered:
            assert registry.component_class(name).name == name
        with pytest.raises(ValueError, match="nope"):
            registry.component_class("nope")


def test_the_lite_preset_runs_the_detectors_then_the_region_editor_and_the_fallback():
    lite = Unsafe2Safe.from_preset("lite")
    first, second = lite.stages()
    assert _names(first) == ["detectors"] and _names(second) == ["region_editor", "fallback"]
    assert isinstance(first[0], LiteDetectors) and isinstance(second[0].editor, RegionEditor)
    assert lite.stages() is lite.stages()  # built once per process
    assert lite.component("vlm") is None and lite.component("region_editor") is second[0]


def test_the_lite_detectors_are_built_once_before_the_first_row_and_shared_by_the_row_threads():
    """Built at `load` (a broken install fails there, before any row, instead of every row falling back), one
    ONNX Runtime session per detector for all row threads (built on first use, two threads starting at once could
    each build one)."""
    lite = Unsafe2Safe.from_preset("lite", inspector={"num_threads": 2}).load()
    inspector = lite.component("detectors").inspector
    faces, text = inspector._faces, inspector._text
    assert faces is not None and text is not None
    rows = call_rows(lite, [cell(encode(astronaut())) for _ in range(4)])
    assert [r[C.ANONYMIZATION]["status"] for r in rows] == [C.STATUS_EDITED] * 4
    assert inspector._faces is faces and inspector._text is text
    faces_only = Unsafe2Safe.from_preset("lite", inspector={"text": False}).load().component("detectors").inspector
    assert faces_only._faces is not None and faces_only._text is None  # what the config turns off is not built


class _Recording(Unsafe2Safe):
    """Records the order in which the components are built."""

    def build_component(self, name, rank=None):
        self.built = [*getattr(self, "built", []), name]
        return super().build_component(name, rank)


def test_a_model_preset_runs_the_longer_lists_and_builds_stage_2_from_its_end(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_models import build_tiny_instruct_pix2pix, build_tiny_lm, build_tiny_owlv2, build_tiny_vlm

    models = {
        "vlm": {"model": build_tiny_vlm(str(tmp_path / "vlm")), "revision": None},
        "instructor": {"model": build_tiny_lm(str(tmp_path / "lm")), "revision": None},
        "grounding": {"model": build_tiny_owlv2(str(tmp_path / "owl")), "revision": None},
        "diffusion": {"model": build_tiny_instruct_pix2pix(str(tmp_path / "ip2p")), "revision": None, "steps": 2, "max_side": 64},
    }
    fast = _Recording.from_preset("fast", **models)
    first, second = fast.stages(0)
    assert _names(first) == ["detectors", "vlm", "grounder", "instructor"]
    assert _names(second) == ["diffusion", "compositor", "leak_check", "region_editor", "fallback"]
    # the cheap end of Stage 2 first: a missing dlib fails before a diffusion model loads
    assert fast.built == ["detectors", "vlm", "grounder", "instructor", "fallback", "region_editor", "leak_check", "compositor", "diffusion"]
    assert fast.component("vlm").inspector.generator.vision and not fast.component("instructor").writer.generator.vision

    unchecked = Unsafe2Safe.from_preset("fast", **{**models, "grounding": None, "instructor": None, "diffusion": {**models["diffusion"], "leak_check": False}})
    first, second = unchecked.stages(0)
    assert _names(first) == ["detectors", "vlm"] and _names(second) == ["diffusion", "compositor", "region_editor", "fallback"]


# ---- Stage 1: one fail-closed rule ----------------------------------------------------------------------------


class _DetectorsThatCrashOnSmallImages(RowInspection):
    name = "detectors"

    def __init__(self, inner):
        self.inner = inner

    def inspect_row(self, source, inspection):
        if source.size[0] < 100:
            raise RuntimeError("detector crashed")
        self.inner.inspect_row(source, inspection)


class _CrashingModel(InspectionComponent):
    name = "vlm"

    def __call__(self, batch):
        raise RuntimeError("CUDA out of memory (simulated)")


class _Faulty(Unsafe2Safe):
    def build_component(self, name, rank=None):
        built = super().build_component(name, rank) if name != "vlm" else None
        if name == "detectors":
            return _DetectorsThatCrashOnSmallImages(built)
        if name == "vlm" and self.config.vlm is not None:
            return _CrashingModel()
        return built


def test_a_row_component_that_raises_closes_its_row_only():
    small, plain = encode(gradient(64, 48), "PNG"), encode(gradient(160, 120), "PNG")
    rows = call_rows(_Faulty.from_preset("lite"), [cell(small), cell(plain)])
    crashed, passed = rows
    assert crashed[C.PRIVACY_FLAG] is True and crashed[C.ANONYMIZATION]["status"] == C.STATUS_FALLBACK
    assert crashed[C.ANONYMIZATION]["error"] == "inspection failed: RuntimeError: detector crashed"
    assert crashed[C.ANONYMIZATION]["caption_source"] == C.CAPTION_NONE and crashed[C.PRIVACY_REGIONS] == []
    assert crashed["image"]["bytes"] != small  # never published unchanged
    assert passed[C.ANONYMIZATION]["status"] == C.STATUS_PASSED and passed["image"]["bytes"] == plain


def test_a_batched_component_that_raises_closes_every_readable_row_of_the_batch():
    face, plain = encode(astronaut(200), "PNG"), encode(gradient(160, 120), "PNG")
    rows = call_rows(_Faulty.from_preset("lite", vlm={"model": "scripted"}), [cell(face), cell(plain), cell(b"junk")])
    for row, original in zip(rows[:2], (face, plain)):
        assert row[C.PRIVACY_FLAG] is True and row[C.ANONYMIZATION]["status"] == C.STATUS_FALLBACK
        assert row[C.ANONYMIZATION]["error"] == "model inspection failed: RuntimeError: CUDA out of memory (simulated)"
        assert row["image"]["bytes"] != original
    assert rows[0][C.PRIVACY_REGIONS]  # what the detectors found stays in the row
    assert rows[2][C.ANONYMIZATION]["status"] == C.STATUS_INVALID


# ---- Stage 2: one fail-closed rule ----------------------------------------------------------------------------


class _Editor:
    """A diffusion editor stand-in: a blank image (what a safety filter returns) or the source unchanged."""

    name = "instruct-pix2pix"
    uses_mask = False
    uses_source_prompt = False

    def __init__(self, blank: bool):
        self.blank = blank

    def edit(self, images, prompts, seeds):
        return [Image.new("RGB", img.size) if self.blank else img.convert("RGB") for img in images]


def _with_editor(blank: bool):
    class WithEditor(Unsafe2Safe):
        def build_component(self, name, rank=None):
            if name == "diffusion":
                return stage2.DiffusionEdit(_Editor(blank), self.config.diffusion, self.config.editor)
            return super().build_component(name, rank)

    return WithEditor.from_preset("lite", diffusion={"model": "unused", "leak_check": False})


def test_a_failing_compositor_drops_the_diffusion_result_and_the_region_editor_edits_the_source():
    face = encode(astronaut(200), "PNG")
    (row,) = call_rows(_with_editor(blank=True), [cell(face)])
    status = row[C.ANONYMIZATION]
    assert status["status"] == C.STATUS_EDITED and status["editor"] == "lite"
    assert status["error"] == "instruct-pix2pix composite failed: ValueError: the editor returned a blank image"
    (lite,) = call_rows(Unsafe2Safe.from_preset("lite"), [cell(face)])
    assert row["image"]["bytes"] == lite["image"]["bytes"]  # the same lite edit as without a diffusion editor


def test_regions_the_diffusion_left_unchanged_get_the_region_edit_on_the_composite():
    face = encode(astronaut(200), "PNG")
    (row,) = call_rows(_with_editor(blank=False), [cell(face)])
    status = row[C.ANONYMIZATION]
    n = len(row[C.PRIVACY_REGIONS])
    assert status["status"] == C.STATUS_EDITED and status["editor"] == "instruct-pix2pix+lite"
    assert status["error"] == f"{n} region(s) left nearly unchanged by instruct-pix2pix got the lite edit"
    assert np.abs(pixels(row["image"]["bytes"]).astype(int) - pixels(face).astype(int)).max() > 0


# ---- how rows go through the stages ------------------------------------------------------------------------------


class _Traced(Unsafe2Safe):
    """Lite with its detectors and region edit wrapped to log each row (by image width) as Stage 1 and Stage 2 take
    it; ``staged``: plus a batched Stage 1 component that adds nothing (a model component's place), so that the rows
    go stage by stage."""

    staged = False

    def build_component(self, name, rank=None):
        import threading

        built = super().build_component(name, rank)
        self.events = getattr(self, "events", [])
        lock, events = getattr(self, "lock", None) or threading.Lock(), self.events
        self.lock = lock

        def log(kind, width):
            with lock:
                events.append((kind, width))

        if name == "detectors":
            class Detectors(RowInspection):
                def inspect_row(self, source, inspection):
                    log("inspect", source.size[0])
                    built.inspect_row(source, inspection)

            return Detectors()
        if name == "vlm" and self.staged:
            class Nothing(InspectionComponent):
                def __call__(self, batch):
                    """Adds nothing: its presence alone makes the stage batched."""

            return Nothing()
        if name == "region_editor":
            class Edit(stage2.EditComponent):
                def wants(self, row):
                    return built.wants(row)

                def edit_row(self, row):
                    built.edit_row(row)
                    log("edit", row.source.size[0])

            return Edit()
        return built


def _in_flight(events) -> int:
    """The most rows inspected and not yet edited at any point of ``events``."""
    inspected, edited, most = set(), set(), 0
    for kind, width in events:
        (inspected if kind == "inspect" else edited).add(width)
        most = max(most, len(inspected - edited))
    return most


@pytest.mark.parametrize("threads", [1, 2])
def test_lite_takes_each_row_through_both_stages_before_the_next_and_the_rows_come_out_the_same(threads):
    """Where every component works a row at a time (lite), a row is decoded, inspected and edited on its row thread
    before that thread takes the next: as many images are held decoded as there are threads (a batch of 16 12-MP
    photos would otherwise hold 580 MB of pixels). With a batched component the rows go stage by stage; every
    row's output is the same either way."""
    cells = [cell(encode(astronaut(size))) for size in range(160, 320, 20)]  # 8 rows, each with a face
    streamed = _Traced.from_preset("lite", inspector={"num_threads": threads})
    staged = type("Staged", (_Traced,), {"staged": True}).from_preset("lite", inspector={"num_threads": threads})
    rows, reference = call_rows(streamed, cells), call_rows(staged, cells)
    assert rows == reference and all(r[C.ANONYMIZATION]["status"] == C.STATUS_EDITED for r in rows)
    assert len(streamed.events) == len(staged.events) == 16
    assert _in_flight(streamed.events) <= threads and _in_flight(staged.events) == 8
