"""FaceSim's pluggable face embedder: the ArcFace-style ONNX path on a small recognition model with the real
contract (N x 3 x 112 x 112 RGB in, 512-d out; random weights, since no ArcFace weights ship offline), the
5-point alignment, the config, the CLI options, and what happens when the model file is missing or broken."""

import hashlib
import json

import cv2
import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe.evaluation import FaceSimConfig, evaluate
from hf_unsafe2safe.evaluation.metrics import ARCFACE_TEMPLATE, align_face, arcface_transform

FACES = ["faces"]
FIGURES = (
    "face_sim", "face_sim_per_image", "face_reidentified_share", "face_vanished_share", "face_spot_distance",
    "face_spot_distance_per_image", "face_spot_blank_share",
)


def _recognition_model(path, side: int = 112, seed: int = 0) -> str:
    """Conv 8x8 / 8 -> ReLU -> flatten -> 512-d projection, seeded random weights, InsightFace's tensor names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cells = (side // 8) ** 2 * 16
    conv = (rng.standard_normal((16, 3, 8, 8)) / np.sqrt(3 * 64)).astype(np.float32)
    projection = (rng.standard_normal((cells, 512)) / np.sqrt(cells)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "conv"], ["features"], kernel_shape=[8, 8], strides=[8, 8]),
            helper.make_node("Relu", ["features"], ["active"]),
            helper.make_node("Flatten", ["active"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "projection"], ["683"]),
        ],
        "tiny-recognition",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])],
        initializer=[numpy_helper.from_array(conv, "conv"), numpy_helper.from_array(projection, "projection")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _recognition_model(tmp_path_factory.mktemp("arcface") / "w600k_tiny.onnx")


@pytest.fixture(scope="module")
def faces():
    """The astronaut and her mirror image (one real face each, found by RetinaFace)."""
    from skimage import data

    face = data.astronaut()
    return [face, np.fliplr(face).copy()]


def _arcface(path, cosine=0.9):
    return FaceSimConfig(embedder="arcface-onnx", model_path=path, same_person_cosine=cosine)


def test_landmarks_at_the_template_give_the_identity_transform():
    np.testing.assert_allclose(arcface_transform(ARCFACE_TEMPLATE), [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    # the same face twice as large, turned by 10 degrees and moved: the warp takes its landmarks onto the template
    turn = np.deg2rad(10)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    points = ARCFACE_TEMPLATE @ (2 * rotation).T + [150, 40]
    matrix = arcface_transform(points)
    np.testing.assert_allclose(np.c_[points, np.ones(5)] @ matrix.T, ARCFACE_TEMPLATE, atol=1e-4)


def test_alignment_recovers_a_scaled_face():
    rng = np.random.default_rng(1)
    face = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3)).astype(np.uint8), (0, 0), 3)
    image = np.zeros((300, 320, 3), np.uint8)
    image[30:254, 50:274] = cv2.resize(face, (224, 224), interpolation=cv2.INTER_LINEAR)
    landmarks = ARCFACE_TEMPLATE * 2 + [50.5, 30.5]  # resize by 2 with aligned pixel centres: x -> 2 x + 0.5
    aligned = align_face(image, (50, 30, 274, 254), landmarks)
    assert aligned.shape == (112, 112, 3)
    assert np.abs(aligned[4:-4, 4:-4].astype(int) - face[4:-4, 4:-4]).mean() < 0.5  # 0.09: resampling only; half a pixel off: 0.9
    # without landmarks the box is cropped instead: its centre goes where a RetinaFace box centre lands
    matrix = arcface_transform(None, (100, 100, 200, 200))
    np.testing.assert_allclose(matrix @ [150, 150, 1], [56, 67])


def test_the_detector_gives_five_landmarks_without_changing_its_boxes(faces):
    from hf_unsafe2safe.inspection.lite import FaceDetector

    detector = FaceDetector(0.5, 1280)
    found = detector.detect(faces[0])
    assert [(box, score) for box, score, _ in found] == detector(faces[0])
    box, _, points = found[0]
    assert points.shape == (5, 2)
    assert all(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in points)
    assert points[0, 0] < points[1, 0] and points[:2, 1].max() < points[2, 1] < points[3:, 1].min()  # eyes, nose, mouth


def test_a_copy_is_the_same_person_for_the_onnx_embedder(faces, model_path):
    ds = image_dataset([encode(f, "PNG") for f in faces], name=[str(i) for i in range(len(faces))])
    report = evaluate(ds, ds, metrics=FACES, faces=_arcface(model_path))
    m = report.metrics
    assert m["face_sim"]["value"] == pytest.approx(1.0, abs=1e-6) and m["face_sim"]["n"] == 2
    assert m["face_reidentified_share"]["value"] == 1.0 and m["face_vanished_share"]["value"] == 0.0
    assert m["face_spot_distance"]["value"] == pytest.approx(0.0, abs=1e-6)
    digest = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    for name in FIGURES:  # every figure names the model actually used
        assert model_path in m[name]["model"] and digest in m[name]["model"], name
    assert "ArcFace" in m["face_sim"]["definition"] and "0.9" in m["face_reidentified_share"]["definition"]
    assert digest in report.models["face embedding"]


def test_blurred_and_replaced_faces_score_lower(faces, model_path):
    from hf_unsafe2safe.inspection.lite import FaceDetector

    detector = FaceDetector(0.5, 1280)
    changed = []
    for k, face in enumerate(faces):
        (x0, y0, x1, y1), _ = detector(face)[0]
        out = face.copy()
        if k == 0:  # blurred: still found as a face, no longer the same embedding
            out[y0:y1, x0:x1] = cv2.GaussianBlur(face[y0:y1, x0:x1], (0, 0), 8)
        else:  # the box and a margin of a quarter of its width replaced by noise: no face left
            margin = (x1 - x0) // 4
            x0, y0, x1, y1 = max(0, x0 - margin), max(0, y0 - margin), x1 + margin, y1 + margin
            out[y0:y1, x0:x1] = np.random.default_rng(0).integers(0, 256, (y1 - y0, x1 - x0, 3))
        changed.append(encode(out, "PNG"))
    report = evaluate(image_dataset([encode(f, "PNG") for f in faces], name=[str(i) for i in range(len(faces))]), image_dataset(changed, name=[str(i) for i in range(len(changed))]), metrics=FACES, faces=_arcface(model_path))
    m = report.metrics
    print({name: m[name]["value"] for name in FIGURES})
    assert m["face_vanished_share"]["value"] == 0.5
    assert m["face_sim"]["n"] == 1 and m["face_sim"]["value"] < 0.9  # the blurred face's best match
    assert m["face_reidentified_share"]["value"] == 0.0
    assert m["face_spot_distance"]["value"] > 0.1 and m["face_spot_distance"]["n"] == 2  # noise is not blank: compared
    assert m["face_spot_blank_share"]["value"] == 0.0


@pytest.mark.parametrize("broken", ["missing", "not onnx", "wrong input"])
def test_a_model_that_cannot_be_loaded_makes_the_faces_figures_unavailable(faces, tmp_path, broken):
    path = tmp_path / "model.onnx"
    if broken == "not onnx":
        path.write_bytes(b"not a model")
    elif broken == "wrong input":
        _recognition_model(path, side=64)
    ds = image_dataset([encode(faces[0], "PNG")], name=["0"])
    report = evaluate(ds, ds, metrics=FACES, faces=_arcface(str(path)))
    for name in FIGURES:
        figure = report.metrics[name]
        assert figure["value"] is None and figure["n"] == 0, name
        assert str(path) in figure["unavailable"] and "could not be loaded" in figure["unavailable"], name
    reason = report.metrics["face_sim"]["unavailable"]
    assert {"missing": "no face recognition model", "not onnx": "INVALID_PROTOBUF", "wrong input": "112 x 112"}[broken] in reason
    assert ("file not found" in report.metrics["face_sim"]["model"]) == (broken == "missing")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"embedder": "insightface"}, "`faces.embedder`"),
        ({"embedder": "arcface-onnx", "same_person_cosine": 0.4}, "`faces.model_path`"),
        ({"embedder": "arcface-onnx", "model_path": "m.onnx"}, "`faces.same_person_cosine`"),
        ({"embedder": "arcface-onnx", "model_path": "m.onnx", "same_person_cosine": 1.5}, "`faces.same_person_cosine`"),
        ({"same_person_cosine": 0.4}, "`faces.same_person_cosine`"),
        ({"model_path": "m.onnx"}, "`faces.model_path`"),
        ({"detector_threshold": True}, "`faces.detector_threshold`"),
    ],
)
def test_the_config_names_the_wrong_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FaceSimConfig(**kwargs)


def test_evaluate_command_with_the_onnx_embedder(faces, model_path, tmp_path, capsys):
    from hf_unsafe2safe.cli import main

    ds = image_dataset([encode(f, "PNG") for f in faces], name=[str(i) for i in range(len(faces))])
    ds.save_to_disk(str(tmp_path / "src"))
    common = ["evaluate", "--original", str(tmp_path / "src"), "--anonymized", str(tmp_path / "src"), "--metrics", "faces"]
    arcface = ["--face-embedder", "arcface-onnx", "--face-model", model_path]
    assert main([*common, *arcface, "--face-same-person", "0.5", "--report", str(tmp_path / "r")]) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["metrics"]["face_sim"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert model_path in data["metrics"]["face_sim"]["model"] and ">= 0.5" in data["metrics"]["face_reidentified_share"]["definition"]
    with pytest.raises(SystemExit, match="same_person_cosine"):
        main([*common, *arcface, "--report", str(tmp_path / "r2")])
