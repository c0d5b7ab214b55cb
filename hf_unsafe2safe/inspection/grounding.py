"""Grounding (the ``grounder`` component of Stage 1, after the VLM): an open-vocabulary detector (OWLv2 / OWL-ViT from ``transformers``) locates the taxonomy's
objects in flagged images, so that Stage 2 can rewrite regions the VLM named but did not box well.

It only locates: its boxes are added to rows already flagged by the VLM or the detectors, never flag a row
on their own (an open-vocabulary detector fires on too much to be a judge).

Boxes come out of the model normalized to the image the model saw, which each family's processor builds
differently: OWLv2's pads the image with zeros at the right and bottom to a square, then resizes, so its boxes
are fractions of the padded square's side (max(w, h)) on both axes; OWL-ViT v1's resizes the image itself to
the model's input size (no padding), so its boxes are fractions of the image's own width and height. The
grounder reads the rule from the loaded processor's settings (an OWLv2 processor with ``do_pad`` off resizes
like v1) and refuses a v1 processor whose center crop cuts the image (its hub configs crop exactly the resized
size, a no-op), since the detector would never see the borders.
"""

from __future__ import annotations

import math

from ..prompts import load_json
from .base import Region
from .stage import InspectionComponent

FAMILIES = ("owlv2", "owlvit")


def grounding_queries(categories: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(phrase, category) pairs of ``prompts/grounding_queries.json`` for the configured categories."""
    return [(q["phrase"], q["category"]) for q in load_json("grounding_queries.json")["queries"] if q["category"] in categories]


def _side(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def box_frame_rule(model_type: str, image_processor, model_id: str = "") -> str:
    """How the model's normalized boxes relate to the input image: ``"square"`` (fractions of a max(w, h) square
    padded at the right and bottom: OWLv2) or ``"image"`` (fractions of the image's own width and height: OWL-ViT
    v1, or OWLv2 without padding). Raises ValueError for a model or processor whose boxes cannot be mapped back."""
    if model_type not in FAMILIES:
        raise ValueError(f"Got {model_id!r} ({model_type}) for `grounding.model`; expected an OWLv2 or OWL-ViT checkpoint (model_type one of {FAMILIES})")
    if model_type == "owlv2":
        # Owlv2ImageProcessor: rescale, pad to a square (zeros at the right and bottom), resize; it never crops
        return "square" if getattr(image_processor, "do_pad", True) else "image"
    # OwlViTImageProcessor: resize (to size: height x width, or by shortest edge), then an optional center crop
    if getattr(image_processor, "do_center_crop", False):
        size, crop = image_processor.size, image_processor.crop_size
        resized = (_side(size, "height"), _side(size, "width")) if getattr(image_processor, "do_resize", True) else (None, None)
        cropped = (_side(crop, "height"), _side(crop, "width"))
        if None in resized or resized != cropped:
            raise ValueError(
                f"Got {model_id!r} for `grounding.model`: its OWL-ViT image processor resizes to (height, width) {resized} and then "
                f"center-crops {cropped}, so the detector would not see the image's borders and its boxes would be relative to the crop; "
                "expected a processor that resizes to a height x width with no crop, or a crop of that same size "
                "(set do_center_crop to false in its preprocessor_config.json)"
            )
    return "image"


class RegionGrounder:
    """Batched zero-shot detection of the query phrases; boxes come back in each image's pixels."""

    source = "owl"

    def __init__(self, model_id: str, revision: str | None, dtype: str, device: str, queries: list[tuple[str, str]], threshold: float, batch_size: int):
        import torch
        import transformers

        from .vlm import pick_dtype

        self.processor = transformers.AutoProcessor.from_pretrained(model_id, revision=revision)
        self.model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(model_id, revision=revision, dtype=pick_dtype(dtype, device)).to(device).eval()
        # checked at load time: a processor whose boxes cannot be mapped back fails before any image is read
        self.frame_rule = box_frame_rule(self.model.config.model_type, self.processor.image_processor, model_id)
        self.device = device
        self.queries = queries
        self.threshold = threshold
        self.batch_size = batch_size
        self.text_length = self.model.config.text_config.max_position_embeddings
        self._torch = torch

    def pixel_boxes(self, boxes, size: tuple[int, int]):
        """Corner boxes (x0, y0, x1, y1) normalized to the model's input, as a (n, 4) tensor, in pixels of an
        image of ``size`` (w, h); not clipped."""
        w, h = size
        fw, fh = (max(w, h), max(w, h)) if self.frame_rule == "square" else (w, h)
        return boxes.float() * boxes.new_tensor([fw, fh, fw, fh], dtype=self._torch.float32)

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
            # scores, labels and normalized corner boxes from the family's own post-processing; the scaling to
            # pixels is ours (pixel_boxes), from the processor's settings
            results = self.processor.post_process_grounded_object_detection(outputs=outputs, threshold=self.threshold, target_sizes=None)
            for img, res in zip(chunk, results):
                w, h = img.size
                regions = []
                boxes = self.pixel_boxes(res["boxes"], (w, h)).tolist()
                for score, label, box in zip(res["scores"].tolist(), res["labels"].tolist(), boxes):
                    # outward to whole pixels (every pixel the box touches), clipped to the image
                    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
                    x1, y1 = min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
                    if x1 > x0 and y1 > y0:
                        phrase, category = self.queries[label]
                        regions.append(Region(phrase, category, (x0, y0, x1, y1), float(score), self.source))
                found.append(regions)
        return found


class Grounding(InspectionComponent):
    """The ``grounder`` component: ``RegionGrounder``'s boxes merged into the regions of the rows already flagged
    without an error (it never flags a row itself)."""

    name = "grounder"

    def __init__(self, grounder: RegionGrounder):
        self.grounder = grounder

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "Grounding | None":
        g, v = config.grounding, config.vlm
        if g is None or v is None:
            return None
        from .vlm import pick_device

        queries = grounding_queries([cid for cid, _ in v.category_list()])
        return cls(RegionGrounder(g.model, g.revision, g.dtype, pick_device(rank), queries, g.threshold, g.batch_size))

    def __call__(self, batch) -> None:
        from .vlm import merge_regions

        rows = [i for i, ins in enumerate(batch.inspections) if ins.flagged and ins.error is None]
        for i, extra in zip(rows, self.grounder.detect([batch.sources[i].image for i in rows])):
            batch.inspections[i].regions = merge_regions(batch.inspections[i].regions + extra)
