"""The identity / text check after a diffusion edit: a region whose face or text survives gets the lite edit."""

import numpy as np
import pytest
from imagegen import astronaut, encode, pixels

from hf_unsafe2safe import Unsafe2Safe
from hf_unsafe2safe import columns as C
from hf_unsafe2safe.editing.leaks import LeakChecker, text_leaks
from hf_unsafe2safe.editing.stage import DiffusionEdit
from hf_unsafe2safe.inspection.base import Region
from PIL import Image

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def checker():
    return LeakChecker()


def _recoloured(img, seed=0):
    """What a diffusion editor that failed to anonymize gives: every pixel moved (tone, contrast, noise),
    the person and the words the same."""
    a = np.asarray(img.convert("RGB"), np.float64)
    noise = np.random.RandomState(seed).randint(-10, 11, a.shape)
    return Image.fromarray(np.clip(a * 0.8 + 40 + noise, 0, 255).astype(np.uint8))


def _blurred(img):
    from PIL import ImageFilter

    return img.filter(ImageFilter.GaussianBlur(12))


def _inspect(lite, img):
    from hf_unsafe2safe.utils.images import decode

    inspector = lite.component("detectors").inspector
    return inspector.inspect(decode(encode(img, "PNG"), 10**8))


def test_a_recoloured_face_is_caught_and_a_blurred_one_is_not(checker, lite):
    img = astronaut(512)
    found = _inspect(lite, img).regions
    assert [r.label for r in found] == ["face", "text", "text"]  # the face, and the name tag and crew patch below it
    regions = [r for r in found if r.label == "face"]
    leaks = checker.check(img, _recoloured(img), regions)
    assert [leak.kind for leak in leaks] == ["face"] and leaks[0].evidence < 0.6
    assert leaks[0].region.category == "people" and leaks[0].region.source == "leak-check"
    assert checker.check(img, _blurred(img), regions) == []
    # faces Stage 1 did not ask to edit are not this check's business
    assert checker.check(img, _recoloured(img), []) == []


def test_re_rendered_text_is_caught_and_unreadable_text_is_not(checker, lite):
    from hf_unsafe2safe.demo import id_card

    card = id_card().convert("RGB")
    regions = [r for r in _inspect(lite, card).regions if r.label.startswith("text")]
    assert len(regions) >= 4
    leaked = checker.check(card, _recoloured(card), regions)
    assert {leak.kind for leak in leaked} == {"text"} and len(leaked) == len(regions)
    assert checker.check(card, _blurred(card), regions) == []
    # without the text Stage 1 recognised, the source is read by the checker itself
    unread = [Region(r.label, r.category, r.box, r.score, "vlm") for r in regions]
    assert len(checker.check(card, _recoloured(card), unread)) == len(regions)


def test_text_rule():
    assert text_leaks(["ID 482019375521"], ["1D 482019375521"], 0.8)[0]  # the number survives
    assert text_leaks(["JANE DOE"], ["JANE D0E"], 0.8)[0]  # nearly the same words
    assert not text_leaks(["JANE DOE"], ["MARY ROE"], 0.8)[0]
    assert not text_leaks(["JANE DOE"], [], 0.8)[0]
    assert not text_leaks([], ["anything"], 0.8)[0]


class _RecolouringEditor:
    """A diffusion editor stand-in that moves every pixel but keeps who is there (plugged in through the
    ``build_component`` hook, like a model that ignored its instruction)."""

    name = "instruct-pix2pix"
    uses_mask = False
    uses_source_prompt = False

    def edit(self, images, prompts, seeds):
        return [_recoloured(img, seed % 1000) for img, seed in zip(images, seeds)]


class _RecolouringPipeline(Unsafe2Safe):
    def build_component(self, name, rank=None):
        if name == "diffusion":
            return DiffusionEdit(_RecolouringEditor(), self.config.diffusion, self.config.editor)
        return super().build_component(name, rank)


def _face_distance(a, b, box):
    from hf_unsafe2safe.evaluation.metrics import FaceMatcher

    matcher = FaceMatcher()
    return float(np.linalg.norm(matcher.embed(a, box) - matcher.embed(b, box)))


def test_the_transform_gives_a_leaking_face_the_lite_edit_and_says_so():
    face = encode(astronaut(512), "PNG")
    anonymize = _RecolouringPipeline.from_preset("lite", diffusion={"model": "unused"})
    out = anonymize({"image": [{"bytes": face, "path": None}]})
    status = out[C.ANONYMIZATION][0]
    assert status["status"] == C.STATUS_EDITED and status["editor"] == "instruct-pix2pix+lite"
    assert "1 face region(s) whose identity (dlib distance 0." in status["error"]
    box = out[C.PRIVACY_REGIONS][0][0]["box"]
    assert _face_distance(pixels(face), pixels(out["image"][0]["bytes"]), box) > 0.6  # no longer the same person

    # with the check off the recoloured face goes out as it is: the risk the check removes
    unchecked = _RecolouringPipeline.from_preset("lite", diffusion={"model": "unused", "leak_check": False})
    raw = unchecked({"image": [{"bytes": face, "path": None}]})
    assert raw[C.ANONYMIZATION][0]["editor"] == "instruct-pix2pix" and raw[C.ANONYMIZATION][0]["error"] is None
    assert _face_distance(pixels(face), pixels(raw["image"][0]["bytes"]), box) < 0.6


def test_leak_check_settings_are_validated():
    from hf_unsafe2safe.config import DiffusionEditorConfig

    with pytest.raises(ValueError, match="diffusion.leak_check"):
        DiffusionEditorConfig(leak_check="yes")
    with pytest.raises(ValueError, match="diffusion.face_leak_distance"):
        DiffusionEditorConfig(face_leak_distance=0)
