"""Grounding: an open-vocabulary detector (OWLv2 / OWL-ViT from ``transformers``) locates the taxonomy's
objects in flagged images, so that Stage 2 can rewrite regions the VLM named but did not box well.

It only locates: its boxes are added to rows already flagged by the VLM or the detectors, never flag a row
on their own (an open-vocabulary detector fires on too much to be a judge).
"""

from __future__ import annotations

from ..prompts import load_json
from .base import Region


def grounding_queries(categories: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(phrase, category) pairs of ``prompts/grounding_queries.json`` for the configured categories."""
    return [(q["phrase"], q["category"]) for q in load_json("grounding_queries.json")["queries"] if q["category"] in categories]


class RegionGrounder:
    """Batched zero-shot detection of the query phrases; boxes come back in each image's pixels."""

    source = "owl"

    def __init__(self, model_id: str, revision: str | None, dtype: str, device: str, queries: list[tuple[str, str]], threshold: float, batch_size: int):
        import torch
        import transformers

        from .vlm import pick_dtype

        self.processor = transformers.AutoProcessor.from_pretrained(model_id, revision=revision)
        self.model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(model_id, revision=revision, dtype=pick_dtype(dtype, device)).to(device).eval()
        self.device = device
        self.queries = queries
        self.threshold = threshold
        self.batch_size = batch_size
        self.text_length = self.model.config.text_config.max_position_embeddings
        self._torch = torch

    def detect(self, images: list) -> list[list[Region]]:
        if not self.queries:
            return [[] for _ in images]
        phrases = [p for p, _ in self.queries]
        found: list[list[Region]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [img.convert("RGB") for img in images[start : start + self.batch_size]]
            inputs = self.processor(
                text=[phrases] * len(chunk), images=chunk, return_tensors="pt", padding="max_length", truncation=True, max_length=self.text_length
            ).to(self.device)
            with self._torch.inference_mode():
                outputs = self.model(**inputs)
            # OWLv2 pads every image to a square (right and bottom) before resizing: boxes are relative to it
            sides = [(max(img.size), max(img.size)) for img in chunk]
            results = self.processor.post_process_grounded_object_detection(outputs=outputs, threshold=self.threshold, target_sizes=sides)
            for img, res in zip(chunk, results):
                w, h = img.size
                regions = []
                for score, label, box in zip(res["scores"].tolist(), res["labels"].tolist(), res["boxes"].tolist()):
                    x0, y0, x1, y1 = max(0, int(box[0])), max(0, int(box[1])), min(w, round(box[2])), min(h, round(box[3]))
                    if x1 > x0 and y1 > y0:
                        phrase, category = self.queries[label]
                        regions.append(Region(phrase, category, (x0, y0, x1, y1), float(score), self.source))
                found.append(regions)
        return found
