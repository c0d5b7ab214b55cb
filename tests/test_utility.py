"""The utility metric on a tiny labelled dataset of real photos: a classifier trained on the originals beats
chance, one trained on a destroyed copy falls to chance, and the comparison is fair, seeded and explicit."""

import json

import numpy as np
import pytest
from conftest import encode

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from hf_unsafe2safe.evaluation.utility import UtilityConfig, evaluate_utility  # noqa: E402

CLASSES = ("coffee", "cat", "rocket")
CHANCE = 1 / len(CLASSES)


def _dataset(per_class: int, seed: int, destroy: str | None = None):
    """Random crops (50-90 % of the short side, flipped, brightness-jittered, noisy) of three skimage photos,
    64 x 64 JPEG, labelled by photo. ``destroy``: "noise" or "grey" replaces every image, labels kept."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage
    from skimage import data

    photos = {"coffee": data.coffee(), "cat": data.chelsea(), "rocket": data.rocket()}
    rng = np.random.default_rng(seed)
    cells, labels, ids = [], [], []
    for label, name in enumerate(CLASSES):
        photo = photos[name]
        h, w = photo.shape[:2]
        for i in range(per_class):
            side = int(min(h, w) * rng.uniform(0.5, 0.9))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = np.ascontiguousarray(photo[y : y + side, x : x + side][:, :: rng.choice([1, -1])])
            img = np.asarray(PILImage.fromarray(crop).resize((64, 64), PILImage.Resampling.BILINEAR)).astype(np.float64)
            img = np.clip(img * rng.uniform(0.8, 1.2) + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            if destroy == "noise":
                img = rng.integers(0, 256, img.shape, dtype=np.uint8)
            elif destroy == "grey":
                img = np.full_like(img, 128)
            cells.append({"bytes": encode(img), "path": None})
            labels.append(label)
            ids.append(f"{name}-{seed}-{i}")
    features = Features({"image": Image(), "label": ClassLabel(names=list(CLASSES)), "id": Value("string")})
    return Dataset.from_dict({"image": cells, "label": labels, "id": ids}, features=features)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine torch's second intra-op thread mostly waits for the
    first (the determinism test took 65 s with 2 threads under load, 11 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train():
    return _dataset(12, seed=0)


@pytest.fixture(scope="module")
def test_split():
    return _dataset(10, seed=1)


@pytest.fixture(scope="module")
def noise_result(train, test_split):
    """Fine-tune mode (the default), original vs the same rows replaced by noise."""
    return evaluate_utility(train, _dataset(12, seed=0, destroy="noise"), test_split, UtilityConfig(epochs=10, batch_size=8), key="id")


def test_original_beats_chance_and_a_destroyed_copy_falls_to_chance(noise_result):
    r = noise_result
    assert r.original.accuracy >= 0.8  # chance is 1/3
    assert r.anonymized.accuracy <= CHANCE + 0.15
    m = r.metrics()
    assert m["utility_accuracy_difference"]["value"] == pytest.approx(r.anonymized.accuracy - r.original.accuracy)
    assert m["utility_accuracy_difference"]["ci95"][1] < 0  # the loss of utility is clear on 30 test rows
    for name, figure in m.items():
        lo, hi = figure["ci95"]
        assert lo <= figure["value"] <= hi and figure["n"] == 30 and figure["definition"] and "builtin:vit-tiny" in figure["model"]
    assert r.counts["original_train_used"] == r.counts["anonymized_train_used"] == 36 and r.counts["test_used"] == 30
    assert len(r.original.loss) == 10 and r.original.loss[-1] < r.original.loss[0]
    per_class = r.per_class()
    assert set(per_class) == set(CLASSES) and sum(c["n"] for c in per_class.values()) == 30
    assert sum(c["original"] * c["n"] for c in per_class.values()) / 30 == pytest.approx(r.original.accuracy)


def test_grey_images_carry_no_label(train, test_split):
    r = evaluate_utility(train, _dataset(12, seed=0, destroy="grey"), test_split, UtilityConfig(mode="linear-probe", epochs=10, batch_size=8), key="id")
    assert r.original.accuracy >= 0.75
    assert r.anonymized.accuracy <= CHANCE + 0.15


def test_same_data_same_seed_gives_the_same_classifier(train, test_split):
    """Training on an identical copy reproduces the original run exactly (same initial state, same batches),
    and a second call reproduces the first: the comparison is fair and seeded."""
    config = UtilityConfig(epochs=3, batch_size=8, augment=True)
    first = evaluate_utility(train, train, test_split, config)
    assert first.original.loss == first.anonymized.loss
    assert (first.original.predictions == first.anonymized.predictions).all() and first.difference == 0.0
    again = evaluate_utility(train, train, test_split, config)
    assert again.original.loss == first.original.loss and (again.original.predictions == first.original.predictions).all()
    other_seed = evaluate_utility(train, train, test_split, UtilityConfig(epochs=3, batch_size=8, augment=True, seed=1))
    assert other_seed.original.loss != first.original.loss


def test_linear_probe_caches_features_and_trains_the_head_only(train, test_split):
    r = evaluate_utility(train, train, test_split, UtilityConfig(mode="linear-probe", epochs=20, batch_size=8))
    assert r.config.learning_rate == 1e-2 and r.original.accuracy >= 0.8
    assert r.to_dict()["mode"] == "linear-probe"


def test_rows_must_match(train, test_split):
    config = UtilityConfig(epochs=1)
    renamed = train.map(lambda row, i: {"id": "x" if i == 3 else row["id"]}, with_indices=True)
    with pytest.raises(ValueError, match="no original with the same 'id'"):
        evaluate_utility(train, renamed, test_split, config, key="id")
    with pytest.raises(ValueError, match="not aligned"):
        evaluate_utility(train, train.shuffle(seed=0), test_split, config)
    with pytest.raises(ValueError, match="pairs 18 of the 36"):
        evaluate_utility(train, train.select(range(0, 36, 2)), test_split, config, key="id")
    relabelled = train.map(lambda row, i: {"label": (row["label"] + 1) % 3 if i == 5 else row["label"]}, with_indices=True)
    with pytest.raises(ValueError, match="another `label`"):
        evaluate_utility(train, relabelled, test_split, config, key="id")
    with pytest.raises(ValueError, match="category"):
        evaluate_utility(train, train, test_split, UtilityConfig(label_column="category"))
    with pytest.raises(ValueError, match="utility.mode"):
        UtilityConfig(mode="zero-shot")
    with pytest.raises(ValueError, match="utility.backbone"):
        UtilityConfig(backbone="builtin:resnet")


def _with_status(ds, statuses, drop_images):
    from datasets import Image

    raw = ds.cast_column("image", Image(decode=False))
    cells = [None if i in drop_images else cell for i, cell in enumerate(raw["image"])]
    out = raw.remove_columns("image").add_column("image", cells).cast_column("image", Image())
    return out.add_column("anonymization", [{"status": s, "editor": "lite", "seed": 0, "caption_source": "template", "error": None} for s in statuses])


def test_failed_rows_are_dropped_or_blanked_and_counted(train, test_split):
    statuses = ["edited"] * len(train)
    statuses[0], statuses[13], statuses[30] = "failed", "invalid_input", "failed"
    anonymized = _with_status(train, statuses, {0, 13, 30})
    dropped = evaluate_utility(train, anonymized, test_split, UtilityConfig(mode="linear-probe", epochs=2))
    assert dropped.counts["anonymized_failed"] == {"failed": 2, "invalid_input": 1}
    assert dropped.anonymized.train_samples == 33 and dropped.original.train_samples == 36
    blank = evaluate_utility(train, anonymized, test_split, UtilityConfig(mode="linear-probe", epochs=2, failed_rows="blank"))
    assert blank.anonymized.train_samples == 36 and blank.counts["failed_rows_policy"] == "blank"
    # an image missing from a row that claims success is a broken dataset, never a silent drop
    statuses[0] = "edited"
    with pytest.raises(ValueError, match="anonymized row 0 has no readable image but status 'edited'"):
        evaluate_utility(train, _with_status(train, statuses, {0}), test_split, UtilityConfig(epochs=1))


def test_backbone_from_a_local_path(train, test_split, tmp_path):
    """A transformers ViT saved with save_pretrained (with its image processor) is loaded through the real
    from_pretrained; its normalisation comes from the processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    path = str(tmp_path / "vit")
    ViTModel(ViTConfig(image_size=48, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.4, 0.45, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(path)
    from hf_unsafe2safe.evaluation.utility import UtilityTrainer

    trainer = UtilityTrainer(UtilityConfig(backbone=path, mode="linear-probe"))
    assert trainer.image_size == 48 and trainer.backbone.mean == [0.4, 0.45, 0.5] and trainer.backbone.feature_dim == 32
    r = evaluate_utility(train, train, test_split, UtilityConfig(backbone=path, mode="fine-tune", epochs=4, batch_size=8))
    assert r.model == path and 0.0 <= r.original.accuracy <= 1.0 and len(r.original.loss) == 4


def test_evaluate_report_and_command(train, test_split, tmp_path, capsys, noise_result):
    from datasets import DatasetDict

    from hf_unsafe2safe.cli import main
    from hf_unsafe2safe.evaluation import evaluate

    noise = _dataset(12, seed=0, destroy="noise")
    report = evaluate(train, noise, metrics=["utility"], key="id", test=test_split, utility=UtilityConfig(epochs=10, batch_size=8))
    # the same figures as the direct call (same data, same settings, same seed)
    assert report.metrics["utility_accuracy_original"]["value"] == noise_result.original.accuracy
    assert report.metrics["utility_accuracy_anonymized"]["value"] == noise_result.anonymized.accuracy
    paths = report.write(str(tmp_path / "report"))
    md = open(paths["md"]).read()
    assert "## Utility" in md and "utility_accuracy_difference" in md and "| rocket | 10 |" in md and "![utility.png](utility.png)" in md
    assert (tmp_path / "report" / "utility.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["utility"]["runs"]["original"]["loss"] == noise_result.original.loss and saved["metrics"]["utility_accuracy_original"]["definition"]
    with pytest.raises(ValueError, match="test split"):
        evaluate(train, noise, metrics=["utility"])
    # a Hub backbone cannot load offline: unavailable with the reason, no number
    offline = evaluate(train, noise, metrics=["utility"], key="id", test=test_split, utility=UtilityConfig(backbone="google/vit-base-patch16-224-in21k"))
    assert offline.metrics["utility_accuracy_original"]["value"] is None and "could not be loaded" in offline.metrics["utility_accuracy_original"]["unavailable"]

    DatasetDict({"train": train, "test": test_split}).save_to_disk(str(tmp_path / "src"))
    noise.save_to_disk(str(tmp_path / "safe"))
    args = ["evaluate", "--original", str(tmp_path / "src"), "--split", "train", "--anonymized", str(tmp_path / "safe"), "--key", "id", "--metrics", "utility"]
    assert main(args + ["--utility-mode", "linear-probe", "--utility-epochs", "10", "--utility-batch-size", "8", "--report", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "utility_accuracy_original" in out and "report:" in out
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["utility"]["mode"] == "linear-probe" and data["utility"]["config"]["epochs"] == 10 and data["utility"]["test_samples"] == 30
    assert data["metrics"]["utility_accuracy_original"]["value"] > data["metrics"]["utility_accuracy_anonymized"]["value"]
    with pytest.raises(SystemExit, match="test_split|splits"):
        main(args + ["--test-split", "validation", "--report", str(tmp_path / "r2")])
    with pytest.raises(SystemExit, match="utility.epochs"):
        main(args + ["--utility-epochs", "0", "--report", str(tmp_path / "r3")])


def test_two_processes_under_torchrun_train_together_and_write_one_report(train, test_split, tmp_path):
    """The CLI under torchrun (2 CPU processes, gloo): Accelerate shards the training batches and gathers the
    test predictions; both processes get the same figures and only rank 0 writes the report."""
    import os
    import subprocess
    import sys

    from datasets import DatasetDict

    DatasetDict({"train": train, "test": test_split}).save_to_disk(str(tmp_path / "src"))
    _dataset(12, seed=0, destroy="noise").save_to_disk(str(tmp_path / "safe"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "-m", "hf_unsafe2safe.cli",
        "evaluate", "--original", str(tmp_path / "src"), "--split", "train", "--anonymized", str(tmp_path / "safe"), "--key", "id",
        "--metrics", "utility", "--utility-cpu", "--utility-epochs", "10", "--utility-batch-size", "8", "--report", str(tmp_path / "r"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report:") == 1  # one writer
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    m = data["metrics"]
    assert m["utility_accuracy_original"]["value"] > CHANCE + 0.2 and m["utility_accuracy_anonymized"]["value"] < CHANCE + 0.15
    assert data["utility"]["test_samples"] == 30 and data["utility"]["processes"] == 2
