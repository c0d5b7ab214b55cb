"""The map contract: one row out per row in, explicit features, pickling, fingerprint, determinism."""

import os
import pickle

import numpy as np
import pytest
from conftest import encode, image_dataset

from hf_unsafe2safe import PipelineConfig, Unsafe2Safe, __version__
from hf_unsafe2safe import columns as C


@pytest.fixture(scope="module")
def photos():
    """Real photos (skimage) and rendered privacy-prone images, as encoded files."""
    from skimage import data

    from hf_unsafe2safe import demo

    astronaut = data.astronaut()
    gradient = np.tile(np.linspace(30, 220, 200, dtype=np.uint8)[None, :, None], (120, 1, 3))
    return [
        encode(astronaut),
        encode(data.coffee()[::2, ::2]),
        encode(demo.id_card(), "PNG"),
        encode(gradient),
        demo.gps_photo(gradient),
        encode(demo.car_plate()),
        b"not an image",
        encode(data.chelsea()[::2, ::2], "PNG"),
    ]


def _map(anonymize, ds, **kwargs):
    prepared = anonymize.prepare(ds)
    return prepared.map(anonymize, batched=True, features=anonymize.output_features(ds.features), **kwargs)


def _rows(ds):
    from datasets import Image

    return ds.cast_column("image", Image(decode=False)).to_list()


def test_one_row_out_per_row_in_with_declared_features(lite, photos):
    ds = image_dataset(photos, name=[f"row{i}" for i in range(len(photos))])
    out = _map(lite, ds, batch_size=3)
    assert len(out) == len(ds)
    assert out["name"] == ds["name"]  # same rows, same order, other columns untouched
    assert out.features == lite.output_features(ds.features)
    for name in C.ADDED_COLUMNS:
        assert name in out.column_names
    statuses = [a["status"] for a in out[C.ANONYMIZATION]]
    assert statuses[0] == C.STATUS_EDITED and "people" in out[C.PRIVACY_CATEGORIES][0]
    assert statuses[2] == C.STATUS_EDITED and "text_symbols" in out[C.PRIVACY_CATEGORIES][2]
    assert statuses[3] == C.STATUS_PASSED and out[C.PRIVACY_FLAG][3] is False
    assert statuses[4] == C.STATUS_EDITED and out[C.ANONYMIZATION][4]["editor"] == "metadata-strip"
    assert "location_time" in out[C.PRIVACY_CATEGORIES][4]
    assert statuses[6] == C.STATUS_INVALID and out[C.PRIVACY_FLAG][6] is True
    assert all(s in C.STATUSES for s in statuses)
    # lite captions are marked as template-written, never as a model's
    sources = {a["caption_source"] for a, s in zip(out[C.ANONYMIZATION], statuses) if s != C.STATUS_INVALID}
    assert sources == {C.CAPTION_TEMPLATE}
    assert "face" in out[C.PRIVATE_CAPTION][0] and "face" in out[C.EDIT_INSTRUCTION][0].lower()


def test_passed_rows_keep_their_exact_bytes(lite, photos):
    ds = image_dataset([photos[3]])
    row = _rows(_map(lite, ds))[0]
    assert row[C.ANONYMIZATION]["status"] == C.STATUS_PASSED
    assert row["image"]["bytes"] == photos[3]


def test_unbatched_and_with_rank_calls(lite, photos):
    ds = lite.prepare(image_dataset(photos[:2]))
    features = lite.output_features(image_dataset(photos[:2]).features)
    single = ds.map(lite, features=features)  # batched=False: one example at a time
    ranked = ds.map(lite, batched=True, with_rank=True, features=features)
    assert _rows(single) == _rows(ranked)


def test_extra_features_are_preserved(lite, photos):
    from datasets import ClassLabel, Dataset, Features, Image

    ds = Dataset.from_dict(
        {"image": [{"bytes": photos[3], "path": None}], "label": [1]},
        features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}),
    )
    out = _map(lite, ds)
    assert out.features["label"] == ClassLabel(names=["a", "b"])
    assert out["label"] == [1]


def test_prepare_refuses_an_already_anonymized_dataset(lite, photos):
    out = _map(lite, image_dataset(photos[:1]))
    with pytest.raises(ValueError, match="already"):
        lite.prepare(out)


def test_missing_image_column_is_a_clear_error(photos):
    anonymize = Unsafe2Safe.from_preset("lite", image_column="picture")
    ds = image_dataset(photos[:1])
    with pytest.raises(KeyError, match="picture"):
        anonymize.prepare(ds)
    with pytest.raises(KeyError, match="picture"):
        anonymize({"image": [None]})


def test_pickles_to_its_config_without_models(lite, photos):
    lite({"image": [{"bytes": photos[0], "path": None}]})  # loads the models
    assert lite._stages is not None
    blob = pickle.dumps(lite)
    assert len(blob) < 10_000  # config only: no ONNX sessions
    restored = pickle.loads(blob)
    assert restored.config == lite.config
    assert restored._stages is None


def test_fingerprint_state_is_config_version_and_prompt_hashes(lite):
    from datasets.fingerprint import Hasher

    from hf_unsafe2safe.prompts import prompts_digest

    state = lite.fingerprint_state()
    assert state["version"] == __version__
    assert state["prompts"] == prompts_digest()
    assert state["config"] == lite.config.to_dict()
    # models loaded or not, equal configs hash equal; any config change hashes differently
    fresh = Unsafe2Safe.from_preset("lite")
    assert Hasher.hash(fresh) == Hasher.hash(lite)
    assert Hasher.hash(Unsafe2Safe.from_preset("lite", seed=1)) != Hasher.hash(lite)
    assert Hasher.hash(Unsafe2Safe.from_preset("lite", editor={"strength": "low"})) != Hasher.hash(lite)


def test_same_config_is_a_cache_hit_and_changed_config_recomputes(tmp_path, photos):
    import datasets

    image_dataset(photos[:4]).save_to_disk(str(tmp_path / "src"))
    ds = datasets.load_from_disk(str(tmp_path / "src"))
    first = _map(Unsafe2Safe.from_preset("lite"), ds)
    cache = first.cache_files[0]["filename"]
    stamp = os.stat(cache).st_mtime_ns
    second = _map(Unsafe2Safe.from_preset("lite"), ds)  # a new, equal transform
    assert second._fingerprint == first._fingerprint
    assert second.cache_files[0]["filename"] == cache
    assert os.stat(cache).st_mtime_ns == stamp  # loaded, not rewritten
    changed = _map(Unsafe2Safe.from_preset("lite", seed=7), ds)
    assert changed._fingerprint != first._fingerprint
    assert changed.cache_files[0]["filename"] != cache
    assert [a["seed"] for a in changed[C.ANONYMIZATION]] != [a["seed"] for a in first[C.ANONYMIZATION]]


def test_same_output_for_any_batch_size_process_count_and_order(photos):
    anonymize = Unsafe2Safe.from_preset("lite")
    ds = image_dataset(photos, name=[str(i) for i in range(len(photos))])
    reference = _rows(_map(anonymize, ds, batch_size=8))
    two_procs = _rows(_map(anonymize, ds, batch_size=3, num_proc=2))
    assert two_procs == reference  # byte for byte, every column
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = _rows(_map(anonymize, ds.select(order), batch_size=1))
    assert [shuffled[order.index(i)] for i in range(len(order))] == reference


def test_row_threads_change_nothing_in_the_output(photos):
    """Rows of a batch are inspected and edited in threads (inspector.num_threads); one thread or three, the same
    bytes come out, every column."""
    ds = image_dataset(photos, name=[str(i) for i in range(len(photos))])
    serial = _rows(_map(Unsafe2Safe.from_preset("lite", inspector={"num_threads": 1}), ds, batch_size=8))
    threaded = Unsafe2Safe.from_preset("lite", inspector={"num_threads": 3})
    assert _rows(_map(threaded, ds, batch_size=8)) == serial
    assert threaded._pool is not None and len(threaded._pool._threads) > 1  # the rows really ran in threads


def test_row_seed_depends_on_global_seed_and_content_only(photos):
    from hf_unsafe2safe.transform import row_seed

    a = Unsafe2Safe.from_preset("lite", seed=3)
    out1 = a({"image": [{"bytes": photos[3], "path": None}, {"bytes": photos[0], "path": None}]})
    out2 = a({"image": [{"bytes": photos[0], "path": None}]})
    assert out1[C.ANONYMIZATION][1]["seed"] == out2[C.ANONYMIZATION][0]["seed"]
    assert row_seed(3, "ab") == row_seed(3, "ab") != row_seed(4, "ab")
    assert 0 <= row_seed(2**62, "x") < 2**63


def test_keep_original_adds_the_source_column(photos):
    anonymize = Unsafe2Safe.from_preset("lite", keep_original=True)
    ds = image_dataset(photos[:1])
    out = _map(anonymize, ds)
    from datasets import Image

    row = _rows(out.cast_column(C.ORIGINAL_IMAGE, Image(decode=False)))[0]
    assert row[C.ORIGINAL_IMAGE]["bytes"] == photos[0]
    assert row["image"]["bytes"] != photos[0]


def test_empty_dataset_maps_to_empty_dataset(lite):
    from hf_unsafe2safe import anonymize_dataset

    ds = image_dataset([])
    out = anonymize_dataset(ds, lite)
    assert len(out) == 0
    assert out.features == lite.output_features(ds.features)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"seed": -1}, "`seed`"),
        ({"editor": {"strength": "max"}}, "`editor.strength`"),
        ({"editor": {"methods": {"people": "erase"}}}, "editor.methods"),
        ({"editor": {"methods": {"pets": "blur"}}}, "editor.methods key"),
        ({"inspector": {"face_threshold": 1.5}}, "`inspector.face_threshold`"),
        ({"inspector": {"faces": False, "text": False, "metadata": False}}, "`inspector`"),
        ({"max_image_pixels": 0}, "`max_image_pixels`"),
    ],
)
def test_config_validates_itself(overrides, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[")):
        PipelineConfig.from_preset("lite", **overrides)


def test_unknown_preset_and_fields_are_named():
    with pytest.raises(ValueError, match="`preset`"):
        PipelineConfig.from_preset("turbo")
    with pytest.raises(ValueError, match="colour"):
        PipelineConfig.from_dict({"colour": "red"})


def test_config_round_trips_through_a_dict():
    config = PipelineConfig.from_preset("lite", seed=5, editor={"methods": {"people": "blur"}, "strength": "medium"})
    assert config.editor.method_for("people") == "blur"
    assert config.editor.method_for("text_symbols") == "inpaint"  # completed from the defaults
    assert PipelineConfig.from_dict(config.to_dict()) == config


def test_model_presets_pin_every_default_checkpoint_and_overrides_drop_the_pin():
    import re

    from hf_unsafe2safe.config import REVISIONS

    sha = re.compile(r"^[0-9a-f]{40}$")
    assert all(sha.match(rev) for rev in REVISIONS.values())
    for name in ("fast", "paper"):
        config = PipelineConfig.from_preset(name)
        for section in (config.vlm, config.instructor, config.grounding, config.diffusion):
            assert section.revision == REVISIONS[section.model], (name, section.model)
    from hf_unsafe2safe.config import EDITOR_DEFAULTS

    for editor in ("instruct-pix2pix", "inpaint", "flowedit", "kontext", "qwen-image-edit"):
        d = PipelineConfig.from_preset("fast", diffusion={"name": editor}).diffusion
        assert d.revision == REVISIONS[d.model]
        # another editor starts from its own defaults, not from the preset editor's settings
        assert (d.steps, d.guidance_scale) == EDITOR_DEFAULTS[editor]
    # another model without a revision does not inherit the preset's pin (it would name a commit of another repo)
    own = PipelineConfig.from_preset("fast", vlm={"model": "/models/my-vlm"}, instructor={"model": "org/llm", "revision": "v1"}, diffusion={"model": "/models/ip2p"})
    assert (own.vlm.revision, own.instructor.revision, own.diffusion.revision) == (None, "v1", None)
    assert own.grounding.revision == REVISIONS["google/owlv2-base-patch16-ensemble"]
    # the same model keeps its pin; a round trip through a dict keeps everything
    same = PipelineConfig.from_preset("fast", vlm={"model": "Qwen/Qwen3-VL-2B-Instruct", "batch_size": 2})
    assert same.vlm.revision == REVISIONS["Qwen/Qwen3-VL-2B-Instruct"]
    assert PipelineConfig.from_dict(same.to_dict()) == same


def test_importing_the_package_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = "import sys, hf_unsafe2safe; print(sorted(m for m in ('torch', 'onnxruntime', 'cv2', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def _onnx_threads(batch):
    from hf_unsafe2safe.inspection.lite import resolve_threads

    return {"threads": [resolve_threads(0)] * len(batch["x"])}


def test_onnx_uses_one_thread_per_datasets_worker():
    from datasets import Dataset

    from hf_unsafe2safe.inspection.lite import resolve_threads

    out = Dataset.from_dict({"x": list(range(4))}).map(_onnx_threads, batched=True, batch_size=2, num_proc=2)
    assert set(out["threads"]) == {1}  # two workers on two cores: no oversubscription
    assert resolve_threads(0) >= 1 and resolve_threads(3) == 3


def test_fingerprint_follows_every_prompt_file(tmp_path):
    import shutil
    from importlib import resources

    from hf_unsafe2safe.prompts import PROMPT_FILES, prompts_digest

    folder = tmp_path / "prompts"
    folder.mkdir()
    for name in PROMPT_FILES:
        shutil.copy(str(resources.files("hf_unsafe2safe.prompts").joinpath(name)), folder / name)
    assert prompts_digest(folder) == prompts_digest()
    seen = {prompts_digest()}
    for name in PROMPT_FILES:
        path = folder / name
        original = path.read_bytes()
        path.write_bytes(original + b" ")
        seen.add(prompts_digest(folder))
        path.write_bytes(original)
    assert len(seen) == len(PROMPT_FILES) + 1  # a one-byte change in any file gives a new digest


def test_a_batch_is_decoded_in_groups_bounded_by_pixels(lite):
    from skimage import data

    from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset

    calls = []

    class Recording(Unsafe2Safe):
        def _run(self, items, rank):
            calls.append(len(items))
            return super()._run(items, rank)

    face = encode(data.astronaut()[::4, ::4])  # 128 x 128
    small = encode(np.full((64, 64, 3), 90, np.uint8))  # 64 x 64
    source = image_dataset([face, face, small, face, b"junk"])
    bounded = anonymize_dataset(source, Recording.from_preset("lite", max_batch_pixels=2 * 128 * 128), batch_size=5)
    assert calls == [2, 3]  # 128*128 twice fills the budget; 64*64 + 128*128 + an unreadable row fit the next
    unbounded = anonymize_dataset(source, lite, batch_size=5)
    import datasets

    raw = datasets.Image(decode=False)
    for a, b in zip(bounded.cast_column("image", raw), unbounded.cast_column("image", raw)):
        assert a["image"] == b["image"] and a[C.ANONYMIZATION]["status"] == b[C.ANONYMIZATION]["status"]
    with pytest.raises(ValueError, match="max_batch_pixels"):
        Unsafe2Safe.from_preset("lite", max_batch_pixels=0)
