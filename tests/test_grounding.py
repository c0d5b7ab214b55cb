"""Grounding boxes in image pixels for both OWL families, on non-square images.

OWLv2's processor pads each image to a square (right and bottom) before resizing; OWL-ViT v1's resizes the
image itself. Tiny random-weight models of both families are built from config, saved and loaded through the
grounder's real loading code; the grounder's pixel boxes are checked against transformers' own post-processing
of the same model outputs, and against where a painted object really is in the tensor each processor makes.
"""

import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")

from tiny_models import _byte_level_clip_vocab, build_tiny_owlv2  # noqa: E402

from hf_unsafe2safe.inspection.grounding import RegionGrounder, grounding_queries  # noqa: E402

INPUT = 32  # the tiny models' input side


def build_tiny_owlvit(path: str, seed: int = 0) -> str:
    """A two-layer OWL-ViT v1 detector with the image processor of the published checkpoints
    (google/owlvit-base-patch32: resize to a square input, then a center crop of that same size), scaled to 32 px."""
    import os

    import torch
    from transformers import CLIPTokenizer, OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    tokenizer = CLIPTokenizer(*_byte_level_clip_vocab(os.path.join(path, "_vocab")), pad_token="<|endoftext|>")
    image_processor = OwlViTImageProcessor(size=INPUT, crop_size=INPUT, do_center_crop=True, resample=3)
    config = OwlViTConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514,
                         max_position_embeddings=32, bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=INPUT, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    _tame_box_head(OwlViTForObjectDetection(config)).save_pretrained(path)
    OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def _tame_box_head(model):
    """Random box-head weights saturate the box logits (centres and sizes of exactly 0 or 1, boxes of zero width);
    shrunk, the boxes sit around each patch's default box (OWL's box bias), like a trained model's."""
    import torch

    with torch.no_grad():
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    return model


def _tamed(path: str) -> str:
    from transformers import AutoModelForZeroShotObjectDetection

    _tame_box_head(AutoModelForZeroShotObjectDetection.from_pretrained(path)).save_pretrained(path)
    return path


def _with_image_processor(source: str, dest: str, **settings) -> str:
    """A copy of a saved detector whose image processor has ``settings`` changed."""
    from transformers import AutoProcessor

    shutil.copytree(source, dest)
    processor = AutoProcessor.from_pretrained(dest)
    processor.image_processor = type(processor.image_processor)(**{**processor.image_processor.to_dict(), **settings})
    processor.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("owl")
    v2 = _tamed(build_tiny_owlv2(str(root / "owlv2")))
    return {
        "owlv2": v2,
        "owlvit": build_tiny_owlvit(str(root / "owlvit")),
        "owlv2-unpadded": _with_image_processor(v2, str(root / "owlv2-unpadded"), do_pad=False),
    }


QUERIES = grounding_queries(["people", "text_symbols"])


def _grounder(path, threshold=1e-4):
    return RegionGrounder(path, None, "float32", "cpu", QUERIES, threshold=threshold, batch_size=4)


def _noise_images():
    from PIL import Image

    rng = np.random.RandomState(0)
    # wider than tall and taller than wide, in one batch
    return [Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8)) for w, h in ((48, 30), (34, 44))]


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_boxes_are_what_the_family_post_processing_defines(models, family):
    """The grounder's regions equal transformers' own post-processing of the same outputs, called directly with
    each image's (height, width): OWLv2's scales by the longer side on both axes, OWL-ViT's by width and height."""
    import math

    import torch

    grounder = _grounder(models[family])
    assert grounder.model.config.model_type == family
    images = _noise_images()
    got = grounder.detect(images)

    phrases = [p for p, _ in QUERIES]
    processor, model = grounder.processor, grounder.model
    inputs = processor(text=[phrases] * len(images), images=images, return_tensors="pt", padding="max_length", truncation=True,
                       max_length=model.config.text_config.max_position_embeddings)
    with torch.inference_mode():
        outputs = model(**inputs)
    sizes = [(img.height, img.width) for img in images]
    expected = processor.image_processor.post_process_object_detection(outputs=outputs, threshold=1e-4, target_sizes=sizes)
    normalized = processor.image_processor.post_process_object_detection(outputs=outputs, threshold=1e-4)

    changed = 0
    for img, regions, res, norm in zip(images, got, expected, normalized):
        w, h = img.size
        want = []
        for score, label, box, unit in zip(res["scores"].tolist(), res["labels"].tolist(), res["boxes"].tolist(), norm["boxes"].tolist()):
            x0, y0, x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1])), min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
            if x1 > x0 and y1 > y0:
                want.append((QUERIES[label][0], (x0, y0, x1, y1), score))
            # what the grounder did before (both axes by the longer side) differs from the family's rule for v1 only
            side = max(w, h)
            changed += any(abs(a * side - b) > 1 for a, b in zip(unit, box))
        assert len(want) > 0  # a near-zero threshold makes the random model fire
        assert [(r.label, r.box) for r in regions] == [(label, box) for label, box, _ in want]
        assert [r.score for r in regions] == pytest.approx([s for _, _, s in want])
    assert (changed > 0) == (family == "owlvit")


def _painted(size, rect):
    """A black image of ``size`` (w, h) with a white rectangle ``rect`` (x0, y0, x1, y1)."""
    from PIL import Image

    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    x0, y0, x1, y1 = rect
    pixels[y0:y1, x0:x1] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("family", ["owlv2", "owlvit", "owlv2-unpadded"])
@pytest.mark.parametrize("size, rect", [((96, 48), (48, 12, 72, 36)), ((48, 96), (12, 48, 36, 72))])
def test_a_box_around_an_object_in_the_model_input_lands_on_it(models, family, size, rect):
    """Where the processor really puts a painted rectangle in the model's input tensor, as a normalized box, maps
    back through the grounder onto the rectangle in the image (to within one input pixel); the other family's
    rule misses it."""
    import torch

    grounder = _grounder(models[family])
    pixels = grounder.processor(images=[_painted(size, rect)], return_tensors="pt")["pixel_values"][0]
    assert pixels.shape[-2:] == (INPUT, INPUT)
    brightness = pixels.mean(0)
    rows, cols = torch.nonzero(brightness > (brightness.max() + brightness.min()) / 2, as_tuple=True)
    normalized = torch.tensor([[cols.min() / INPUT, rows.min() / INPUT, (cols.max() + 1) / INPUT, (rows.max() + 1) / INPUT]])

    one_input_pixel = max(size) / INPUT
    mapped = grounder.pixel_boxes(normalized, size)[0]
    assert (mapped - torch.tensor(rect, dtype=torch.float32)).abs().max() <= one_input_pixel
    expected_rule = "square" if family == "owlv2" else "image"
    assert grounder.frame_rule == expected_rule
    grounder.frame_rule = "image" if expected_rule == "square" else "square"
    wrong = grounder.pixel_boxes(normalized, size)[0]
    assert (wrong - torch.tensor(rect, dtype=torch.float32)).abs().max() > 4 * one_input_pixel


def test_an_owlvit_processor_that_crops_the_image_is_refused(models, tmp_path):
    """A v1 processor that resizes by the shortest edge and center-crops loses the borders of a non-square image:
    refused when the grounder loads, naming the model."""
    path = _with_image_processor(models["owlvit"], str(tmp_path / "cropping"), size={"shortest_edge": INPUT}, crop_size={"height": INPUT, "width": INPUT}, do_center_crop=True)
    with pytest.raises(ValueError, match=r"grounding\.model.*center-crops"):
        _grounder(path)
