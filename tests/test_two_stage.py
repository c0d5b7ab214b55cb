"""Both stages together: Stage 1's answer (scripted, behind ChatGenerator's interface) drives a real tiny
InstructPix2Pix edit, composited inside the regions Stage 1 and the detectors found."""

import io
import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from conftest import encode  # noqa: E402
from test_vlm import CATEGORIES, ScriptedGenerator  # noqa: E402
from tiny_models import build_tiny_instruct_pix2pix  # noqa: E402

from hf_unsafe2safe import Unsafe2Safe  # noqa: E402
from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.editing.compositing import composite  # noqa: E402
from hf_unsafe2safe.inspection.base import Region  # noqa: E402
from hf_unsafe2safe.inspection.vlm import EditInstructionWriter, InstructionWriting, VLMInspection, VLMInspector  # noqa: E402
from hf_unsafe2safe.taxonomy import load_taxonomy  # noqa: E402
from hf_unsafe2safe.transform import row_seed  # noqa: E402
from hf_unsafe2safe.utils.images import decode  # noqa: E402

INSTRUCTION = "give the astronaut short grey hair, a rounder face and a neutral expression"
ANSWER = {
    "private": True, "categories": ["people", "professional"],
    "review": [{"item": "name patch", "reason": "a name patch can identify the astronaut"}],
    "private_caption": "Astronaut Eileen Collins in an orange suit before a flag.",
    "public_caption": "An astronaut in an orange suit before a flag.",
    "regions": [{"label": "name patch", "category": "professional", "box": [600, 650, 700, 700]}],
}


class _ScriptedStage1(Unsafe2Safe):
    """The model half of Stage 1 answering from a script (plugged in through the build_component hook)."""

    def build_component(self, name, rank=None):
        if name == "vlm":
            vlm = ScriptedGenerator([json.dumps(ANSWER)])
            return VLMInspection(VLMInspector(vlm, CATEGORIES, "relative1000", 1024, 28, 512, batch_size=8), load_taxonomy().ids)
        if name == "instructor":
            llm = ScriptedGenerator([f"Instruction: {INSTRUCTION}", "An astronaut with short grey hair in an orange suit."])
            return InstructionWriting(EditInstructionWriter(llm, 64, batch_size=8))
        return super().build_component(name, rank)


def test_the_instruction_of_stage_1_drives_the_diffusion_edit_inside_its_regions(tmp_path):
    from PIL import Image
    from skimage import data

    path = build_tiny_instruct_pix2pix(str(tmp_path / "ip2p"))
    anonymize = _ScriptedStage1.from_preset(
        "lite", vlm={"model": "scripted"}, instructor={"model": "scripted"}, diffusion={"model": path, "steps": 2, "max_side": 64}
    )
    photo = encode(data.astronaut()[::2, ::2], "PNG")
    out = anonymize({"image": [{"bytes": photo, "path": None}]})
    status = out[C.ANONYMIZATION][0]
    assert status["status"] == C.STATUS_EDITED and status["editor"] == "instruct-pix2pix" and status["caption_source"] == "vlm+llm"
    assert out[C.EDIT_INSTRUCTION][0] == INSTRUCTION
    assert out[C.PUBLIC_CAPTION][0] == ANSWER["public_caption"] and out[C.PRIVATE_CAPTION][0] == ANSWER["private_caption"]
    labels = {r["label"] for r in out[C.PRIVACY_REGIONS][0]}
    assert {"face", "name patch"} <= labels  # the detector's face and the VLM's name patch, merged

    # the same edit by hand: the editor run with the row's instruction and seed, composited in the row's regions
    source = decode(photo, 10**8)
    editor = anonymize.component("diffusion").editor
    edited = editor.edit([source.image], [INSTRUCTION], [row_seed(anonymize.config.seed, source.sha256)])[0]
    e = anonymize.config.editor
    regions = [Region(r["label"], r["category"], tuple(r["box"]), r["score"], r["source"]) for r in out[C.PRIVACY_REGIONS][0]]
    expected = np.asarray(composite(source.image, edited, regions, e.dilation, e.feather), np.int16)
    got = np.asarray(Image.open(io.BytesIO(out["image"][0]["bytes"])).convert("RGB"), np.int16)
    assert np.abs(expected - got).max() <= 1
    # and another instruction would have given another image
    other = editor.edit([source.image], ["turn the suit blue"], [row_seed(anonymize.config.seed, source.sha256)])[0]
    assert not np.array_equal(np.asarray(other), np.asarray(edited))
