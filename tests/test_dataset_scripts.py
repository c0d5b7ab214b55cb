"""The per-dataset drivers, run as users run them, on small local sources with the datasets' layout."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import encode

from hf_unsafe2safe import columns as C

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_scripts"


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_vispr_driver_keeps_ground_truth_and_anonymizes_every_split(tmp_path):
    import datasets
    from skimage import data

    plain = encode(np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    for split in ("train", "test"):
        folder = tmp_path / "vispr" / split
        folder.mkdir(parents=True)
        (folder / "face.jpg").write_bytes(encode(data.astronaut()[::2, ::2]))
        (folder / "plain.jpg").write_bytes(plain)
        meta = [{"file_name": "face.jpg", "labels": ["a9_face_complete"]}, {"file_name": "plain.jpg", "labels": ["a0_safe"]}]
        (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))
    printed = _run("vispr.py", "--source", str(tmp_path / "vispr"), "--output", str(tmp_path / "out"))
    assert "[train] saved" in printed and "[test] saved" in printed
    for split in ("train", "test"):
        safe = datasets.load_from_disk(str(tmp_path / "out" / split))
        by_private = dict(zip(safe["vispr_private"], (a["status"] for a in safe[C.ANONYMIZATION])))
        assert by_private == {True: C.STATUS_EDITED, False: C.STATUS_PASSED}
        passed = [r["image"]["bytes"] for r in safe.cast_column("image", datasets.Image(decode=False)) if not r[C.PRIVACY_FLAG]]
        assert passed == [plain]  # the extra ground-truth column did not re-encode the images


def test_classification_driver_writes_only_the_training_split(tmp_path):
    import datasets
    from skimage import data

    for split in ("train", "test"):
        for label, arr in (("cat", data.chelsea()[::3, ::3]), ("cup", data.coffee()[::3, ::3])):
            folder = tmp_path / "src" / split / label
            folder.mkdir(parents=True)
            (folder / "0.png").write_bytes(encode(arr, "PNG"))
    _run("caltech101.py", "--source", str(tmp_path / "src"), "--output", str(tmp_path / "out"), "--limit", "1")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train"]
    safe = datasets.load_from_disk(str(tmp_path / "out" / "train"))
    assert len(safe) == 1 and "label" in safe.column_names
