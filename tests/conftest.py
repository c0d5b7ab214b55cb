"""Shared test set-up: an isolated Hugging Face cache, offline, and small real-image builders."""

import io
import os
import tempfile

# set before datasets / huggingface_hub are imported anywhere: they read these at import time
_HOME = tempfile.mkdtemp(prefix="u2s-hf-home-")
os.environ["HF_HOME"] = _HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HOME, "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def encode(array_or_image, fmt: str = "JPEG", **params) -> bytes:
    """Bytes of an image file built from a numpy array or a PIL image."""
    from PIL import Image

    img = Image.fromarray(array_or_image) if isinstance(array_or_image, np.ndarray) else array_or_image
    buf = io.BytesIO()
    if fmt == "JPEG":
        params.setdefault("quality", 92)
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def image_dataset(blobs, **extra_columns):
    """A ``datasets.Dataset`` with an ``image`` column holding these encoded files (plus any extra columns)."""
    from datasets import Dataset, Features, Image, Value

    features = {"image": Image()}
    features.update({name: Value("string") for name in extra_columns})
    data = {"image": [{"bytes": b, "path": None} if b is not None else None for b in blobs], **extra_columns}
    return Dataset.from_dict(data, features=Features(features))


@pytest.fixture(scope="session")
def lite():
    """One lite transform for the whole session (models load once, like in a real run)."""
    from hf_unsafe2safe import Unsafe2Safe

    return Unsafe2Safe.from_preset("lite")


@pytest.fixture(scope="session")
def astronaut():
    """scikit-image's astronaut photo and its face box as RetinaFace finds it (score 0.5)."""
    from skimage import data

    from hf_unsafe2safe.inspection.lite import FaceDetector

    face = data.astronaut()
    (x0, y0, x1, y1), _ = FaceDetector(0.5, 1280)(face)[0]
    return face, tuple(int(v) for v in (x0, y0, x1, y1))
