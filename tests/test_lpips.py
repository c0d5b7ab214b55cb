"""LPIPS from torchvision-format backbone weights and lpips-format calibration weights (random here: no
package ships the ImageNet ones), checked against a plain per-position reference, against torchmetrics' LPIPS
formula, and on real photos."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import build_lpips_weights  # noqa: E402

from hf_unsafe2safe.evaluation.lpips import LPIPS, TAPS  # noqa: E402


def _weights(tmp_path, net, seed=0):
    return build_lpips_weights(str(tmp_path), net, seed)


def _reference(metric, a, b):
    """The definition written out: per tapped layer, per position, normalise over channels, weight, average."""
    size = (a.shape[1], a.shape[0])
    fa, fb = metric._taps(metric._tensor(a, size)), metric._taps(metric._tensor(b, size))
    total = 0.0
    for x, y, w in zip(fa, fb, metric.weights):
        x, y, w = x[0].numpy().astype(np.float64), y[0].numpy().astype(np.float64), w.numpy().astype(np.float64)
        per_position = []
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                per_position.append(float((w * (x[:, i, j] - y[:, i, j]) ** 2).sum()))
        total += float(np.mean(per_position))
    return total


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_on_copies_grows_with_damage_and_matches_the_definition(tmp_path, net):
    from skimage import data

    metric = LPIPS(net, *_weights(tmp_path, net), side=96)
    photo = data.astronaut()[::4, ::4].copy()
    rng = np.random.RandomState(0)
    assert metric.distance(photo, photo) == 0.0
    mild = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    strong = np.clip(photo + rng.normal(0, 60, photo.shape), 0, 255).astype(np.uint8)
    d_mild, d_strong = metric.distance(photo, mild), metric.distance(photo, strong)
    assert 0 < d_mild < d_strong
    assert metric.distance(photo, strong) == pytest.approx(metric.distance(strong, photo), rel=1e-5)
    small = photo[::3, ::3].copy()
    small_noisy = strong[::3, ::3].copy()
    metric.side = max(small.shape[:2])
    assert metric.distance(small, small_noisy) == pytest.approx(_reference(metric, small, small_noisy), rel=1e-4)
    assert len(TAPS[net]) == len(metric.weights) == 5


def test_wrong_files_are_clear_errors(tmp_path):
    alex = _weights(tmp_path, "alex")
    vgg = _weights(tmp_path, "vgg")
    with pytest.raises(RuntimeError):
        LPIPS("alex", vgg[0], alex[1])  # a VGG backbone file for AlexNet
    with pytest.raises(ValueError, match="calibration lin1"):
        LPIPS("vgg", vgg[0], alex[1])  # AlexNet calibration for VGG
    with pytest.raises(ValueError, match="lpips.net"):
        LPIPS("resnet", *alex)


def _photos():
    from skimage import data

    rng = np.random.RandomState(1)
    photos = [data.astronaut()[::4, ::4].copy(), data.coffee()[::4, ::4].copy()]
    destroyed = [np.clip(p + rng.normal(0, 70, p.shape), 0, 255).astype(np.uint8) for p in photos]
    return photos, destroyed


def test_lpips_in_the_report_is_zero_on_copies_higher_on_destroyed_copies_and_flagged_only(tmp_path):
    from conftest import encode, image_dataset

    from hf_unsafe2safe.evaluation import LPIPSConfig, evaluate

    photos, destroyed = _photos()
    original = image_dataset([encode(p, "PNG") for p in photos], name=["a", "b"])
    config = LPIPSConfig(net="alex", backbone=_weights(tmp_path, "alex")[0], calibration=str(tmp_path / "alex_lin.pth"), side=96)
    same = evaluate(original, original, metrics=["lpips"], lpips=config).metrics["lpips"]
    assert same["value"] == 0.0 and same["n"] == 2 and same["ci95"] == [0.0, 0.0]
    assert "alex" in same["model"] and "sha256" in same["model"]  # the weight files are identified by their hash
    worse = evaluate(original, image_dataset([encode(p, "PNG") for p in destroyed], name=["a", "b"]), metrics=["lpips"], lpips=config)
    m = worse.metrics["lpips"]
    assert m["value"] > 0.01 and m["ci95"][0] <= m["value"] <= m["ci95"][1]
    assert len(worse.per_pair["lpips"]) == 2
    # only flagged pairs count: the pass-through row is left out
    partly = image_dataset([encode(p, "PNG") for p in destroyed], name=["a", "b"]).add_column("privacy_flag", [True, False])
    assert evaluate(original, partly, metrics=["lpips"], lpips=config).metrics["lpips"]["n"] == 1
    # without weights: unavailable, with the reason and how to fix it, and no number
    off = evaluate(original, original, metrics=["cheating"]).metrics["lpips"]
    assert off["value"] is None and "--lpips-backbone PATH --lpips-calibration PATH" in off["unavailable"]


def test_lpips_config_and_command_line(tmp_path):
    import json

    from conftest import encode, image_dataset

    from hf_unsafe2safe.cli import main
    from hf_unsafe2safe.evaluation import LPIPSConfig

    backbone, calibration = _weights(tmp_path, "alex")
    with pytest.raises(ValueError, match="both paths or neither"):
        LPIPSConfig(backbone=backbone)
    with pytest.raises(ValueError, match="lpips.calibration"):
        LPIPSConfig(backbone=backbone, calibration=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="lpips.net"):
        LPIPSConfig(net="squeeze")
    photos, destroyed = _photos()
    image_dataset([encode(p, "PNG") for p in photos], name=["a", "b"]).save_to_disk(str(tmp_path / "src"))
    image_dataset([encode(p, "PNG") for p in destroyed], name=["a", "b"]).save_to_disk(str(tmp_path / "dst"))
    common = ["evaluate", "--original", str(tmp_path / "src"), "--anonymized", str(tmp_path / "dst"), "--metrics", "lpips"]
    assert main(common + ["--report", str(tmp_path / "r"), "--lpips-net", "alex", "--lpips-backbone", backbone, "--lpips-calibration", calibration]) == 0
    figure = json.loads((tmp_path / "r" / "report.json").read_text())["metrics"]["lpips"]
    assert figure["value"] > 0.01 and figure["n"] == 2 and figure["definition"] and figure["model"]
    assert "lpips.png" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(SystemExit, match="both paths or neither"):
        main(common + ["--report", str(tmp_path / "r2"), "--lpips-backbone", backbone])


def _torchmetrics_lpips(backbone_path, lin_path, net, a, b):
    """LPIPS as torchmetrics writes it (its ScalingLayer, NetLinLayer, _normalize_tensor and _spatial_average, and
    its slicing of torchvision's `features` into five stages), on a backbone Sequential laid out here as torchvision
    lays out AlexNet / VGG16 (torchmetrics itself would take it from torchvision, which cannot run beside this CPU
    torch) and loaded from the same files."""
    from torch import nn
    from torchmetrics.functional.image.lpips import NetLinLayer, ScalingLayer, _normalize_tensor, _spatial_average

    if net == "vgg":
        cfg, layers, cin = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"], [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        stages, chns = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)], [64, 128, 256, 512, 512]
    else:
        layers = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                  nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)]
        stages, chns = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], [64, 192, 384, 256, 256]
    features = nn.Sequential(*layers)
    state = torch.load(backbone_path, weights_only=True)
    features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    lin_state = torch.load(lin_path, weights_only=True)
    lins = []
    for i, c in enumerate(chns):
        lin = NetLinLayer(c, use_dropout=True)
        lin.load_state_dict({"model.1.weight": lin_state[f"lin{i}.model.1.weight"]})
        lins.append(lin.eval())
    scaling = ScalingLayer()
    total = 0.0
    with torch.no_grad():
        x0, x1 = scaling(a), scaling(b)
        for (start, end), lin in zip(stages, lins):
            x0, x1 = features[start:end](x0), features[start:end](x1)
            diff = (_normalize_tensor(x0) - _normalize_tensor(x1)) ** 2
            total += float(_spatial_average(lin(diff), keep_dim=True).sum())
    return total


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_torchmetrics_formula_on_real_photos(tmp_path, net):
    pytest.importorskip("torchmetrics")
    from skimage import data

    backbone, lin = _weights(tmp_path, net, seed=3)
    metric = LPIPS(net, backbone, lin, side=96)
    photo = data.astronaut()[::4, ::4].copy()
    mirrored = np.ascontiguousarray(photo[:, ::-1])  # another real image of the same size
    coffee = data.coffee()[::4, ::4].copy()
    for a, b in ((photo, mirrored), (coffee, np.ascontiguousarray(coffee[::-1]))):
        size = _side(a, 96)
        theirs = _torchmetrics_lpips(backbone, lin, net, metric._tensor(a, size), metric._tensor(b, size))
        assert metric.distance(a, b) == pytest.approx(theirs, rel=1e-4) and theirs > 0


def _side(rgb, side):
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    return (max(16, round(w * scale)), max(16, round(h * scale)))
