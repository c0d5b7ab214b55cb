"""Lite decodes RetinaFace's raw output itself (only the anchors over the threshold): checked against
``retinaface.postprocess``, the decoding that ships with the network, on real photos at odd sizes."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from hf_unsafe2safe.inspection.lite import FaceDetector, retinaface_faces


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(0.3, 1280, num_threads=1)


def _photos():
    astronaut = Image.fromarray(data.astronaut())
    group = Image.new("RGB", (1003, 517), (90, 110, 120))  # three faces of different sizes on one wide photo
    for x, side in ((10, 300), (400, 160), (700, 90)):
        group.paste(astronaut.crop((140, 22, 310, 212)).resize((side, round(side * 190 / 170))), (x, 40))
    return {
        "astronaut 512": astronaut,
        "astronaut 333x517": astronaut.resize((333, 517)),
        "group 1003x517": group,
        "coffee 601x401": Image.fromarray(data.coffee()).resize((601, 401)),
        "chelsea (a cat) 451x300": Image.fromarray(data.chelsea()),
    }


@pytest.mark.parametrize("threshold", [0.3, 0.02])
def test_same_faces_as_retinaface_postprocess(detector, threshold):
    from retinaface.postprocess import postprocess
    from retinaface.preprocess import preprocess

    found_any = 0
    for name, photo in _photos().items():
        inputs = preprocess(np.asarray(photo.convert("RGB")))
        outputs = detector.session.run(None, {"input": inputs})
        ours = retinaface_faces([o.copy() for o in outputs], inputs.shape[2], inputs.shape[3], threshold)
        theirs = postprocess([o.copy() for o in outputs], *inputs.shape, score_threshold=threshold)[0]
        assert len(ours) == len(theirs), name
        for (box, score, points), face in zip(ours, theirs):
            assert box == (face.x, face.y, face.width, face.height), name
            assert score == pytest.approx(face.score, abs=1e-7), name
            assert points.tolist() == [[p.x, p.y] for p in face.landmarks], name
        found_any += len(ours)
    assert found_any >= 5  # the astronaut's face (three sizes), the group's three faces


def test_no_anchor_over_the_threshold_gives_no_face(detector):
    from retinaface.preprocess import preprocess

    inputs = preprocess(np.full((200, 320, 3), 128, np.uint8))
    outputs = detector.session.run(None, {"input": inputs})
    assert retinaface_faces(outputs, 200, 320, 0.99) == []
    with pytest.raises(ValueError, match="anchors"):
        retinaface_faces(outputs, 200, 352, 0.3)  # outputs of another input size
