"""LPIPS (Zhang et al., 2018): learned perceptual distance between two images, for the cheating dimension.

distance(x, y) = sum over tapped layers l of mean over positions (h, w) of
                 sum over channels c of  w_l[c] * (f_l(x)[c, h, w] - f_l(y)[c, h, w])^2
where f_l are the backbone's activations after layer l, each unit-normalised over channels at every position,
and w_l >= 0 the calibration weights ("lin" layers, version 0.1). Inputs are RGB in [-1, 1], shifted and
scaled per channel as the original (shift -0.030 -0.088 -0.188, scale 0.458 0.448 0.450).

Backbones: AlexNet (taps after the 5 ReLUs of its features) and VGG16 (relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3), built here in plain torch and loaded from torchvision-format state dicts (``features.N.weight``);
the calibration weights from the ``lpips`` package's files (``lin0.model.1.weight`` ...). No package ships the
ImageNet backbone weights offline, so the metric needs both paths (config) and reports itself unavailable
otherwise. The network is built once and used for every pair.
"""

from __future__ import annotations

import numpy as np

# (conv in, conv out) per conv layer, "M" for a max-pool; AlexNet's convs carry (kernel, stride, padding)
_ALEX = [(3, 64, 11, 4, 2), "M", (64, 192, 5, 1, 2), "M", (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# indices in `features` of the ReLUs whose outputs are compared
TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _features(net: str):
    """torchvision's ``features`` Sequential for AlexNet / VGG16 (same indices, so its state dicts load)."""
    from torch import nn

    layers: list = []
    if net == "alex":
        for spec in _ALEX:
            if spec == "M":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                cin, cout, k, s, p = spec
                layers += [nn.Conv2d(cin, cout, k, s, p), nn.ReLU(inplace=False)]
    elif net == "vgg":
        cin = 3
        for spec in _VGG16:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, spec, 3, padding=1), nn.ReLU(inplace=False)]
                cin = spec
    else:
        raise ValueError(f"Got {net!r} for `lpips.net`; expected 'alex' or 'vgg'.")
    return nn.Sequential(*layers)


class LPIPS:
    """LPIPS distance with a backbone state dict and calibration weights loaded once."""

    def __init__(self, net: str, backbone_weights: str, linear_weights: str, side: int = 256, device: str = "cpu"):
        import torch

        self._torch, self.net, self.side, self.device = torch, net, side, device
        self.features = _features(net)
        state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(state)  # strict: a state dict of another architecture is an error
        self.features.eval().requires_grad_(False).to(device)
        lin = torch.load(linear_weights, map_location="cpu", weights_only=True)
        self.weights = []
        for i, channels in enumerate(CHANNELS[net]):
            w = lin[f"lin{i}.model.1.weight"].reshape(-1)
            if w.numel() != channels:
                raise ValueError(f"lpips calibration lin{i} has {w.numel()} weights; the {net} backbone has {channels} channels")
            self.weights.append(w.to(device))
        self.shift = torch.tensor(_SHIFT).view(1, 3, 1, 1).to(device)
        self.scale = torch.tensor(_SCALE).view(1, 3, 1, 1).to(device)
        self.model_id = f"lpips-{net} (backbone {backbone_weights}, calibration {linear_weights})"

    def _tensor(self, rgb: np.ndarray, size: tuple[int, int]):
        import cv2

        resized = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if (rgb.shape[1], rgb.shape[0]) != size else rgb
        x = self._torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float() / 127.5 - 1.0
        return x.unsqueeze(0).to(self.device)

    def _taps(self, x):
        out, taps = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            out = layer(out)
            if i in TAPS[self.net]:
                taps.append(out / (out.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if i >= TAPS[self.net][-1]:
                break
        return taps

    def distance(self, original: np.ndarray, anonymized: np.ndarray) -> float:
        """LPIPS of two RGB uint8 arrays; both are resized to the original's aspect with ``side`` on the longer side."""
        h, w = original.shape[:2]
        scale = self.side / max(h, w)
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        with self._torch.inference_mode():
            total = 0.0
            for fa, fb, wl in zip(self._taps(self._tensor(original, size)), self._taps(self._tensor(anonymized, size)), self.weights):
                total += float(((fa - fb).pow(2) * wl.view(1, -1, 1, 1)).sum(dim=1).mean())
        return total
