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


# ---- the paper setting: an MAE ViT-B/16 encoder, mean pooling, torchvision's RandAugment ----------------------


def _torchvision_runs() -> bool:
    try:
        from torchvision.transforms import RandAugment  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or PyPI's build beside a CPU torch: RuntimeError "operator torchvision::nms does not exist"
        return False
    return True


@pytest.fixture(scope="module")
def tiny_mae(tmp_path_factory):
    """A random-weight ViTMAEForPreTraining (2 layers, width 32, 32 px, 8 px patches: 16 patches) with a ViT image
    processor, saved with save_pretrained like facebook/vit-mae-base (encoder under vit.*, plus the decoder)."""
    import torch
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )
    model = ViTMAEForPreTraining(config)
    path = str(tmp_path_factory.mktemp("mae") / "vit-mae-tiny")
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path, model.eval()


def test_paper_setting_matches_the_paper(tiny_mae):
    from hf_unsafe2safe.evaluation.utility import PAPER_BACKBONE

    assert PAPER_BACKBONE == "facebook/vit-mae-base"
    config = UtilityConfig.paper(augment="flip-shift")  # the explicit request for another augmentation
    assert (config.backbone, config.mode, config.epochs, config.learning_rate, config.image_size, config.pooling) == (PAPER_BACKBONE, "fine-tune", 100, 5e-4, 224, "auto")
    assert config.augment == "flip-shift"
    if _torchvision_runs():
        assert UtilityConfig.paper().augment == "randaugment"
    # the former boolean still means what it meant
    assert UtilityConfig(augment=True).augment == "flip-shift" and UtilityConfig(augment=False).augment == "none" == UtilityConfig().augment
    with pytest.raises(ValueError, match="utility.augment"):
        UtilityConfig(augment="autoaugment")
    with pytest.raises(ValueError, match="utility.pooling"):
        UtilityConfig(pooling="max")


def test_without_torchvision_the_paper_setting_is_refused_with_the_fix(monkeypatch, tmp_path):
    """No silent fallback: RandAugment without torchvision fails when the config is built (API and CLI), naming
    the fix; flip-and-shift runs only when asked for."""
    import sys

    from hf_unsafe2safe.cli import main
    from hf_unsafe2safe.evaluation.utility import TorchvisionUnavailable

    monkeypatch.setitem(sys.modules, "torchvision", None)  # what a machine without torchvision sees
    monkeypatch.setitem(sys.modules, "torchvision.transforms", None)
    with pytest.raises(TorchvisionUnavailable) as caught:
        UtilityConfig.paper()
    message = str(caught.value)
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ValueError)
    assert "needs torchvision.transforms.RandAugment" in message and "pip install 'torchvision==0." in message and "augment='flip-shift'" in message
    with pytest.raises(TorchvisionUnavailable):
        UtilityConfig(augment="randaugment")
    assert UtilityConfig.paper(augment="flip-shift").augment == "flip-shift"
    args = ["evaluate", "--original", str(tmp_path / "src"), "--split", "train", "--anonymized", str(tmp_path / "safe"), "--metrics", "utility", "--utility-paper", "--report", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="needs torchvision"):
        main(args)


def test_mae_checkpoint_loads_as_a_vit_that_sees_every_patch(tiny_mae):
    """The MAE encoder weights land in a ViTModel through the real from_pretrained; with every patch kept its
    output is the MAE encoder's at mask ratio 0 in the original patch order, and two passes are identical.
    ViTMAEModel itself, even at mask_ratio=0, shuffles the patch tokens anew on every pass (the pitfall)."""
    import torch
    from transformers import AutoConfig, ViTMAEModel, ViTModel

    from hf_unsafe2safe.evaluation.utility import load_backbone

    path, mae = tiny_mae
    bb = load_backbone(path)
    assert isinstance(bb.model, ViTModel) and bb.mae and bb.image_size == 32 and bb.feature_dim == 32
    assert bb.mean == [0.485, 0.456, 0.406] and bb.name == path
    for name, tensor in bb.model.state_dict().items():  # every encoder tensor is the checkpoint's
        assert torch.equal(tensor, mae.state_dict()[f"vit.{name}"]), name
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        first, second = bb.model(pixel_values=x).last_hidden_state, bb.model(pixel_values=x).last_hidden_state
        assert first.shape == (3, 1 + 16, 32) and torch.equal(first, second)  # CLS + all 16 patches, deterministic
        cfg = AutoConfig.from_pretrained(path)
        cfg.mask_ratio = 0.0
        masked = ViTMAEModel.from_pretrained(path, config=cfg).eval()
        in_order = masked(pixel_values=x, noise=torch.arange(16.0).expand(3, 16)).last_hidden_state  # identity "shuffle"
        assert torch.allclose(first, in_order, atol=1e-5)
        a, b = masked(pixel_values=x).last_hidden_state, masked(pixel_values=x).last_hidden_state
        assert a.shape == first.shape and not torch.allclose(a[:, 1:], b[:, 1:], atol=1e-3)  # ViTMAEModel: shuffled patches


def test_mae_fine_tuning_pools_the_patches_as_mae_does(tiny_mae, train, test_split):
    """pooling="auto" with an MAE backbone in fine-tune mode: mean of the patch tokens of the last block (the
    final LayerNorm dropped), a new LayerNorm, the linear head; in linear-probe mode the CLS token."""
    import torch

    from hf_unsafe2safe.evaluation.utility import UtilityTrainer

    path, _ = tiny_mae
    trainer = UtilityTrainer(UtilityConfig.paper(backbone=path, image_size=None, augment="flip-shift", epochs=1))
    assert trainer.pooling == "mean"
    model = trainer._module(False, 3)
    assert isinstance(model.backbone.layernorm, torch.nn.Identity) and not isinstance(trainer.backbone.model.layernorm, torch.nn.Identity)
    assert isinstance(model.head[0], torch.nn.LayerNorm) and model.head[1].out_features == 3
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        x = (pixels.float() / 255 - model.mean) / model.std
        encoded = trainer.backbone.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]  # last block, before the final LayerNorm
        assert torch.allclose(model(pixels), model.head(encoded[:, 1:].mean(1)), atol=1e-5)
        assert torch.equal(model(pixels), model(pixels))
    assert UtilityTrainer(UtilityConfig(backbone=path, mode="linear-probe")).pooling == "cls"
    assert UtilityTrainer(UtilityConfig(backbone=path, pooling="cls")).pooling == "cls"
    r = evaluate_utility(train, train, test_split, UtilityConfig.paper(backbone=path, image_size=None, augment="flip-shift", epochs=2, batch_size=8))
    assert r.pooling == "mean" and r.to_dict()["pooling"] == "mean" and r.model == path and len(r.original.loss) == 2
    assert r.original.loss == r.anonymized.loss  # the same data from the same state: the same classifier
    # a ViT backbone pools the mean on request, a non-ViT cannot
    assert UtilityTrainer(UtilityConfig(pooling="mean")).pooling == "mean"


def _fake_torchvision(monkeypatch, calls):
    """A stand-in torchvision.transforms.RandAugment that records its settings and, per call, adds a value drawn
    from torch's global generator: it shows how RandAugment is driven where torchvision cannot run."""
    import sys
    import types

    import torch

    class RandAugment:
        def __init__(self, num_ops=2, magnitude=9, **_):
            calls.append(("init", num_ops, magnitude))

        def __call__(self, image):
            assert image.dtype == torch.uint8 and image.ndim == 3  # one image at a time, uint8 CHW
            calls.append(("call", tuple(image.shape)))
            return (image.int() + int(torch.randint(0, 40, ()))).clamp(0, 255).to(torch.uint8)

    package, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    transforms.RandAugment = RandAugment
    package.transforms = transforms
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)


def test_randaugment_is_drawn_per_image_seeded_and_trains(monkeypatch, train, test_split):
    import torch

    from hf_unsafe2safe.evaluation.utility import _RandAugment

    calls = []
    _fake_torchvision(monkeypatch, calls)
    batch = torch.full((4, 3, 8, 8), 100, dtype=torch.uint8)
    state = torch.random.get_rng_state()
    out = _RandAugment(seed=0)(batch)
    assert torch.equal(torch.random.get_rng_state(), state)  # the model's random state is left alone
    assert calls[0] == ("init", 2, 9) and calls[1:] == [("call", (3, 8, 8))] * 4
    assert out.shape == batch.shape and out.dtype == torch.uint8 and len({int(o[0, 0, 0]) for o in out}) > 1  # per image
    assert torch.equal(_RandAugment(seed=0)(batch), out) and not torch.equal(_RandAugment(seed=1)(batch), out)
    config = UtilityConfig(epochs=2, batch_size=8, augment="randaugment")
    first = evaluate_utility(train, train, test_split, config)
    assert first.original.loss == first.anonymized.loss and first.to_dict()["augment"] == "randaugment"
    assert sum(c[0] == "call" for c in calls) >= 4 + 2 * 2 * 36


@pytest.mark.skipif(not _torchvision_runs(), reason="torchvision does not import beside this torch (CPU machines: PyPI's torchvision needs a CUDA torch)")
def test_paper_setting_with_real_randaugment(tiny_mae, train, test_split):
    """Where torchvision runs (GPU machines): the paper setting as is, on the tiny MAE checkpoint."""
    import torch

    from hf_unsafe2safe.evaluation.utility import _RandAugment

    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = _RandAugment(seed=0)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and torch.equal(_RandAugment(seed=0)(batch), out) and not torch.equal(out, batch)
    path, _ = tiny_mae
    config = UtilityConfig.paper(backbone=path, image_size=None, epochs=2, batch_size=8)
    assert config.augment == "randaugment"
    r = evaluate_utility(train, train, test_split, config)
    # the same data from the same state: the same classifier (exactly on a CPU; a GPU's kernels may round otherwise)
    assert r.pooling == "mean" and r.original.loss == pytest.approx(r.anonymized.loss, rel=1e-3) and len(r.original.loss) == 2
