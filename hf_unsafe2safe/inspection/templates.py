"""Lite captions and edit instructions, written from templates over the detections.

They say only what the detectors found (how many faces and text lines, where, what the text reads, what
the metadata held); the row's ``caption_source`` is ``template`` so nobody takes them for a VLM's words.
"""

from __future__ import annotations

from ..prompts import load_json
from .base import Inspection, Region

_WHERE = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))


def where(box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    w, h = size
    cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
    return _WHERE[min(2, int(cy * 3))][min(2, int(cx * 3))]


def _places(regions: list[Region], size) -> str:
    return ", ".join(dict.fromkeys(where(r.box, size) for r in regions))


class TemplateCaptioner:
    def __init__(self, templates_file: str = "lite_templates.json"):
        self.t = load_json(templates_file)

    def write(self, inspection: Inspection, size: tuple[int, int], metadata_items: list[str]) -> None:
        t = self.t
        w, h = size
        faces = [r for r in inspection.regions if r.label == "face"]
        texts = [r for r in inspection.regions if r.category == "text_symbols"]
        if not inspection.flagged:
            inspection.private_caption = t["private_caption_clean"].format(width=w, height=h)
            inspection.public_caption = t["public_caption_clean"].format(width=w, height=h)
            inspection.edit_instruction = t["instruction_clean"]
            inspection.target_caption = inspection.public_caption
            return
        findings, anonymized, changes = [], [], []
        if faces:
            n = len(faces)
            plural = {"faces": "faces" if n > 1 else "face", "is_are": "are" if n > 1 else "is"}
            findings.append(t["finding"]["face"].format(count=n, where=_places(faces, size), **plural))
            anonymized.append(t["anonymized"]["face"].format(**plural))
            changes.append(
                t["change"]["face"].format(
                    the_faces="the face" if n == 1 else f"all {n} faces",
                    different_faces="a different person's face" if n == 1 else "different people's faces",
                )
            )
        if texts:
            n = len(texts)
            quoted = [f'"{r.text}"' for r in texts if r.text][: t["max_quoted_texts"]]
            reading = f" reading {', '.join(quoted)}" if quoted else ""
            plural = {"regions": "regions" if n > 1 else "region", "is_are": "are" if n > 1 else "is"}
            findings.append(t["finding"]["text"].format(count=n, where=_places(texts, size), reading=reading, **plural))
            anonymized.append(t["anonymized"]["text"].format(**plural))
            changes.append(t["change"]["text"])
        if metadata_items:
            findings.append(t["finding"]["metadata"].format(items="; ".join(metadata_items)))
            anonymized.append(t["anonymized"]["metadata"])
        inspection.private_caption = t["private_caption"].format(width=w, height=h, findings="; ".join(findings))
        inspection.public_caption = t["public_caption"].format(width=w, height=h, anonymized=" and ".join(anonymized))
        instruction = t["instruction"].format(changes="; ".join(changes)) if changes else t["instruction_clean"]
        inspection.edit_instruction = instruction[:1].upper() + instruction[1:]
        inspection.target_caption = inspection.public_caption
        inspection.caption_source = "template"
