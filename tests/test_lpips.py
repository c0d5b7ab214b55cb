"""LPIPS from torchvision-format backbone weights and lpips-format calibration weights (random here: no
package ships the ImageNet ones), checked against a plain per-position reference and on real photos."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hf_unsafe2safe.evaluation.lpips import CHANNELS, LPIPS, TAPS, _features  # noqa: E402


def _weights(tmp_path, net, seed=0):
    torch.manual_seed(seed)
    features = _features(net)
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    backbone = {f"features.{k}": v for k, v in features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS[net])}
    torch.save(backbone, tmp_path / f"{net}.pth")
    torch.save(lin, tmp_path / f"{net}_lin.pth")
    return str(tmp_path / f"{net}.pth"), str(tmp_path / f"{net}_lin.pth")


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
