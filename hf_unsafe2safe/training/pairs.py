"""The training pairs of an anonymization run: which rows are usable (``training_rows``), how an image cell opens
(``open_image``) and the pairs as tensors, cropped and flipped alike (``TrainingPairs``). Shared by both trainers
(``finetune``, ``kontext_lora``) and the triplet filter."""

from __future__ import annotations

from .. import columns as C


def training_rows(dataset) -> list[int]:
    """Rows usable as pairs: flagged, status ``edited``, source and result both present, an instruction."""
    missing = [c for c in (C.ORIGINAL_IMAGE, C.PRIVACY_FLAG, C.ANONYMIZATION, C.EDIT_INSTRUCTION, C.PUBLIC_CAPTION) if c not in dataset.column_names]
    if missing:
        hint = " (anonymize with --keep-original / keep_original=True to keep the sources)" if C.ORIGINAL_IMAGE in missing else ""
        raise ValueError(f"the dataset has no column {missing[0]!r}{hint}: fine-tuning needs the source and the anonymized image of each row")
    rows = []
    table = dataset.select_columns([C.PRIVACY_FLAG, C.ANONYMIZATION, C.EDIT_INSTRUCTION])
    for i, row in enumerate(table):
        if row[C.PRIVACY_FLAG] and (row[C.ANONYMIZATION] or {}).get("status") == C.STATUS_EDITED and (row[C.EDIT_INSTRUCTION] or "").strip():
            rows.append(i)
    if not rows:
        raise ValueError("no row was flagged and edited: nothing to learn from")
    return rows


class TrainingPairs:
    """The training pairs as tensors in [-1, 1], cropped and flipped alike, from seeded draws."""

    def __init__(self, dataset, rows: list[int], image_column: str, resolution: int, flip: bool):
        self.dataset, self.rows, self.image_column = dataset, rows, image_column
        self.resolution, self.flip = resolution, flip

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, i: int, rng) -> dict:
        row = self.dataset[self.rows[i]]
        source, target = (open_image(row[C.ORIGINAL_IMAGE]), open_image(row[self.image_column]))
        if target.size != source.size:
            target = target.resize(source.size)
        w, h = source.size
        scale = self.resolution / min(w, h)
        size = (max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale)))
        x = int(rng.integers(0, size[0] - self.resolution + 1))
        y = int(rng.integers(0, size[1] - self.resolution + 1))
        flip = self.flip and bool(rng.integers(0, 2))
        from PIL import Image

        tensors = []
        for img in (source, target):
            img = img.resize(size).crop((x, y, x + self.resolution, y + self.resolution))
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            tensors.append(_to_tensor(img))
        return {"source": tensors[0], "target": tensors[1], "instruction": row[C.EDIT_INSTRUCTION], "caption": row[C.PUBLIC_CAPTION] or ""}


def open_image(cell):
    """An RGB PIL image from an image cell: decoded, or undecoded (``{"bytes", "path"}``)."""
    import io

    from PIL import Image

    if isinstance(cell, dict):
        data = cell.get("bytes")
        return Image.open(io.BytesIO(data) if data is not None else cell["path"]).convert("RGB")
    return cell.convert("RGB")


def _to_tensor(img):
    """A (3, H, W) float32 tensor in [-1, 1] from an RGB PIL image."""
    import numpy as np
    import torch

    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)
