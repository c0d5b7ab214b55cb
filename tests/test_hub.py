"""Publishing to the Hub for real: `unsafe2safe push` / `hub.publish` against the loopback Hub server of
tests/hub_server.py (HTTP on 127.0.0.1, auth and private repositories enforced), loaded back with
`datasets.load_dataset` in fresh caches. The Hub clients run in subprocesses whose environment points
huggingface_hub and datasets at the server before they are imported (this test process is offline)."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from conftest import encode, image_dataset  # noqa: E402

from hf_unsafe2safe import columns as C  # noqa: E402
from hf_unsafe2safe.hub import NotPublishable, check_publishable, publish  # noqa: E402

USERS = {"alice": "hf_alice_token_1234", "bob": "hf_bob_token_5678"}


# ---- what may be published (no server needed) -----------------------------------------------------------


@pytest.fixture(scope="module")
def safe(lite):
    from skimage import data

    from hf_unsafe2safe import anonymize_dataset

    source = image_dataset([encode(data.astronaut()[::2, ::2]), encode(data.coffee()[::2, ::2]), b"junk"], name=["a", "b", "c"])
    return anonymize_dataset(source, lite, batch_size=2)


def test_only_a_complete_anonymization_output_is_publishable(safe, lite):
    check_publishable(safe)  # flagged / passed / invalid rows, every one with its status
    check_publishable(datasets.DatasetDict({"train": safe, "test": safe}))
    with pytest.raises(NotPublishable, match="not an anonymization output"):
        check_publishable(image_dataset([encode(np.zeros((8, 8, 3), np.uint8))]))
    with pytest.raises(NotPublishable, match="original_image"):
        check_publishable(safe.add_column(C.ORIGINAL_IMAGE, ["x"] * len(safe)))
    flagged = safe[C.PRIVACY_FLAG].index(True)

    def passed(row, i):
        if i == flagged:
            row[C.ANONYMIZATION] = dict(row[C.ANONYMIZATION], status=C.STATUS_PASSED)
        return row

    with pytest.raises(NotPublishable, match=f"row {flagged} .* flagged but its status is 'passed'"):
        check_publishable(safe.map(passed, with_indices=True))
    with pytest.raises(NotPublishable, match="split 'test'"):
        check_publishable(datasets.DatasetDict({"train": safe, "test": safe.remove_columns(C.EDIT_INSTRUCTION)}))
    with pytest.raises(ValueError, match="both or neither"):
        publish(safe, "alice/x")
    with pytest.raises(ValueError, match="both or neither"):
        publish(safe, "alice/x", lite, record={})


# ---- against the loopback Hub --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    from hub_server import start_hub

    server = start_hub(USERS)
    yield server
    server.stop()


def run_client(hub, user, tmp_path, code=None, args=None, check=True):
    """Run a client in a subprocess with a fresh HF_HOME pointed at the server (user None: anonymous)."""
    from hub_server import client_env

    home = tmp_path / f"hf-home-{user}-{len(list(tmp_path.iterdir()))}"
    env = client_env(hub.endpoint, USERS[user] if user else None, str(home))
    cmd = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "hf_unsafe2safe.cli", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"client failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


LOAD = """
import hashlib, json, sys
import datasets
from huggingface_hub import hf_hub_download
repo = sys.argv[1] if len(sys.argv) > 1 else {repo!r}
try:
    ds = datasets.load_dataset(repo)
except Exception as err:
    print(json.dumps({{"error": type(err).__name__, "message": str(err)[:300]}}))
    raise SystemExit(0)
out = {{}}
for split, part in ds.items():
    part = part.cast_column("image", datasets.Image(decode=False))
    out[split] = {{
        "columns": part.column_names,
        "images": [hashlib.sha256(im["bytes"]).hexdigest() if im else None for im in part["image"]],
        "rows": [{{k: v for k, v in row.items() if k != "image"}} for row in part],
    }}
card = open(hf_hub_download(repo, "README.md", repo_type="dataset")).read()
record = json.load(open(hf_hub_download(repo, "unsafe2safe_run.json", repo_type="dataset")))
stream = datasets.load_dataset(repo, streaming=True)
first = next(iter(stream[next(iter(stream))]))
print(json.dumps({{"splits": out, "card": card, "record": record, "streamed_first_name": first.get("name")}}))
"""


def load_from_hub(hub, user, tmp_path, repo):
    out = run_client(hub, user, tmp_path, LOAD.format(repo=repo))
    return json.loads(out.stdout.strip().splitlines()[-1])


def local_rows(path):
    ds = datasets.load_from_disk(path)
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [("train", ds)]
    out = {}
    for split, part in parts:
        part = part.cast_column("image", datasets.Image(decode=False))
        out[split] = {
            "images": [hashlib.sha256(im["bytes"]).hexdigest() if im else None for im in part["image"]],
            "rows": [{k: v for k, v in row.items() if k != "image"} for row in part],
        }
    return out


@pytest.fixture(scope="module")
def anonymized(tmp_path_factory):
    """`unsafe2safe anonymize` output with two splits (real photos, rendered text, junk bytes)."""
    from skimage import data

    from hf_unsafe2safe.cli import main
    from hf_unsafe2safe.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("anonymized")
    demo = build_demo_dataset()
    extra = image_dataset([encode(data.chelsea()[::2, ::2]), b"junk"], name=["chelsea", "junk"])
    source = datasets.DatasetDict({"train": demo.select(range(6)), "test": datasets.concatenate_datasets([demo.select(range(6, len(demo))), extra])})
    source.save_to_disk(str(root / "source"))
    assert main(["anonymize", str(root / "source"), "--output", str(root / "safe")]) == 0
    assert main(["anonymize", str(root / "source"), "--output", str(root / "with-originals"), "--keep-original"]) == 0
    return root


def test_push_then_load_dataset_gives_every_row_back(hub, anonymized, tmp_path):
    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/safe-demo"])
    assert "private" in out.stdout and "load_dataset('alice/safe-demo')" in out.stdout
    got = load_from_hub(hub, "alice", tmp_path, "alice/safe-demo")
    want = local_rows(str(anonymized / "safe"))
    assert set(got["splits"]) == {"train", "test"}
    for split in ("train", "test"):
        assert got["splits"][split]["images"] == want[split]["images"]  # the very bytes of every safe image
        assert got["splits"][split]["rows"] == want[split]["rows"]  # statuses, flags, regions, triplets...
        for column in (*C.TRIPLET_COLUMNS, C.ANONYMIZATION, C.PRIVACY_FLAG):
            assert column in got["splits"][split]["columns"]
    statuses = {r[C.ANONYMIZATION]["status"] for s in got["splits"].values() for r in s["rows"]}
    assert {C.STATUS_EDITED, C.STATUS_PASSED, C.STATUS_INVALID} <= statuses  # every row accounted for, junk included
    card = got["card"]
    assert 'load_dataset("alice/safe-demo")' in card and "## What was done" in card and "unsafe2safe-lite" in card
    assert "dataset_info" in card and "configs" in card  # datasets' metadata merged into our card
    with open(anonymized / "safe" / "unsafe2safe_run.json") as f:
        assert got["record"] == json.load(f)
    assert got["streamed_first_name"] is not None


def test_a_private_push_is_private(hub, anonymized, tmp_path):
    run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/private-demo"])
    for user in (None, "bob"):
        got = load_from_hub(hub, user, tmp_path, "alice/private-demo")
        assert "error" in got and "splits" not in got, (user, got)
    # bob cannot write into alice's namespace either
    out = run_client(hub, "bob", tmp_path, args=["push", str(anonymized / "safe"), "alice/bobs-attempt"], check=False)
    assert out.returncode != 0 and "the Hub refused the push to 'alice/bobs-attempt'" in out.stderr and "403" in out.stderr


def _private_strings(path):
    """What the local run wrote that a public reader must not see: every private caption, every text quoted in one
    (lite quotes what it read), every privacy review item and every error."""
    import re

    strings = set()
    for split in local_rows(path).values():
        for row in split["rows"]:
            caption = row[C.PRIVATE_CAPTION]
            if caption and caption != row[C.PUBLIC_CAPTION]:  # nothing found: both captions say so
                strings.add(caption)
                strings.update(q for q in re.findall(r'"([^"]{4,})"', caption))
            strings.update(r["item"] for r in row[C.PRIVACY_REVIEW])
            if row[C.ANONYMIZATION]["error"]:
                strings.add(row[C.ANONYMIZATION]["error"])
    return strings


def _all_text(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _all_text(v)
    elif isinstance(value, list):
        for v in value:
            yield from _all_text(v)


def test_a_public_push_leaves_the_private_text_out_unless_asked(hub, anonymized, tmp_path):
    secrets = _private_strings(str(anonymized / "safe"))
    assert "jane.example@mail.test" in secrets and "KX21 WPD" in secrets  # the demo's email and plate, read by lite

    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/public-demo", "--public"])
    assert "(public)" in out.stdout
    got = load_from_hub(hub, None, tmp_path, "alice/public-demo")  # an anonymous reader
    local = local_rows(str(anonymized / "safe"))
    assert {name: len(split["rows"]) for name, split in got["splits"].items()} == {name: len(split["rows"]) for name, split in local.items()}
    for split in got["splits"].values():
        assert C.PRIVATE_CAPTION not in split["columns"] and C.PRIVACY_REVIEW not in split["columns"] and C.PUBLIC_CAPTION in split["columns"]
        published = {t for row in split["rows"] for t in _all_text(row)}
        assert not any(secret in text for secret in secrets for text in published)
    assert not any(secret in got["card"] for secret in secrets)
    assert str(anonymized) not in got["card"] and str(anonymized) not in json.dumps(got["record"])  # the local source path
    assert got["record"]["source"].startswith("a local dataset")
    assert "private text of the run was left out" in got["card"] and "Warning" not in got["card"]
    files = run_client(hub, None, tmp_path, code="from huggingface_hub import HfApi; print(sorted(HfApi().list_repo_files('alice/public-demo', repo_type='dataset')))").stdout
    assert "unsafe2safe_files" not in files

    # the loud opt-in publishes it, and the card says so at the top
    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/public-all", "--public", "--publish-private-text"])
    got = load_from_hub(hub, None, tmp_path, "alice/public-all")
    assert all(C.PRIVATE_CAPTION in split["columns"] for split in got["splits"].values())
    assert "this public dataset includes private text" in got["card"]
    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/private-x", "--publish-private-text"], check=False)
    assert out.returncode != 0 and "--publish-private-text is for --public" in out.stderr


def test_without_private_text_keeps_everything_else(safe):
    from hf_unsafe2safe.hub import WITHHELD, without_private_text

    def vlm_label(row):
        row[C.PRIVACY_REGIONS] = [dict(r, label="Jane Roe's name tag") for r in row[C.PRIVACY_REGIONS]] + [
            {"label": "face", "category": "people", "box": [0, 0, 1, 1], "score": 1.0, "source": "retinaface-mnet025"}]
        row[C.ANONYMIZATION] = dict(row[C.ANONYMIZATION], notes=["vlm: malformed review item 'Jane Roe' dropped"])
        return row

    marked = safe.map(vlm_label)
    redacted = without_private_text(marked)
    assert redacted.column_names == [c for c in marked.column_names if c not in (C.PRIVATE_CAPTION, C.PRIVACY_REVIEW)]
    assert redacted.features[C.ANONYMIZATION] == marked.features[C.ANONYMIZATION]
    for before, after in zip(marked, redacted):
        assert [r["label"] for r in after[C.PRIVACY_REGIONS]] == [r["category"] for r in before[C.PRIVACY_REGIONS][:-1]] + ["face"]
        assert [r["box"] for r in after[C.PRIVACY_REGIONS]] == [r["box"] for r in before[C.PRIVACY_REGIONS]]
        assert after[C.ANONYMIZATION]["notes"] == [] and after[C.ANONYMIZATION]["status"] == before[C.ANONYMIZATION]["status"]
        assert after[C.ANONYMIZATION]["error"] == (None if before[C.ANONYMIZATION]["error"] is None else WITHHELD)
        assert after["image"] == before["image"] and after[C.PUBLIC_CAPTION] == before[C.PUBLIC_CAPTION]


def test_refusals_upload_nothing(hub, anonymized, tmp_path):
    check_exists = "import sys; from huggingface_hub import HfApi; print(HfApi().repo_exists(sys.argv[1], repo_type='dataset'))"
    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "with-originals"), "alice/originals"], check=False)
    assert out.returncode != 0 and "original_image" in out.stderr
    exists = run_client(hub, "alice", tmp_path, code=check_exists.replace("sys.argv[1]", "'alice/originals'"))
    assert exists.stdout.strip() == "False"
    # a public repository is not pushed to as if it were private (the default), nor the other way round
    run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/open", "--public"])
    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/open"], check=False)
    assert out.returncode != 0 and "exists and is public" in out.stderr
    out = run_client(hub, "alice", tmp_path, args=["push", str(tmp_path), "alice/not-a-run"], check=False)
    assert out.returncode != 0 and "unsafe2safe_run.json" in out.stderr


def test_publish_from_python_after_map(hub, tmp_path):
    code = """
import json
import numpy as np
import datasets
from skimage import data
from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset, publish
from hf_unsafe2safe.demo import build_demo_dataset

anonymize = Unsafe2Safe.from_preset("lite")
safe = anonymize_dataset(build_demo_dataset().select(range(4)), anonymize, batch_size=4)
done = publish(safe, "alice/from-python", anonymize, source="demo")
back = datasets.load_dataset("alice/from-python", split="train", download_mode="force_redownload")
print(json.dumps({"private": done.private, "rows": done.rows, "same": back.select_columns(["edit_instruction", "anonymization"]).to_list() == safe.select_columns(["edit_instruction", "anonymization"]).to_list()}))
"""
    got = json.loads(run_client(hub, "alice", tmp_path, code=code).stdout.strip().splitlines()[-1])
    assert got == {"private": True, "rows": 4, "same": True}


def test_the_card_carries_the_evaluation_figures_and_nothing_private(hub, anonymized, tmp_path):
    from hf_unsafe2safe.cli import main

    report = tmp_path / "report"
    assert main(["evaluate", "--original", str(anonymized / "source"), "--anonymized", str(anonymized / "safe"), "--split", "train", "--metrics", "cheating", "--report", str(report)]) == 0
    figures = json.loads((report / "report.json").read_text())["metrics"]
    run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/measured", "--report", str(report)])
    card = load_from_hub(hub, "alice", tmp_path, "alice/measured")["card"]
    assert "## Measured" in card and f"on {json.loads((report / 'report.json').read_text())['pairs']} pairs" in card
    assert "Warnings of the evaluation" in card and "privacy was not measured (not asked for)" in card  # --metrics cheating only
    for name, m in figures.items():
        if m["value"] is not None:
            assert f"| {name} | {m['value']:.4f} |" in card
    files = run_client(hub, "alice", tmp_path, code="from huggingface_hub import HfApi; print(sorted(HfApi().list_repo_files('alice/measured', repo_type='dataset')))").stdout
    assert "worst_" not in files and "report" not in files and ".png" not in files  # numbers only, never thumbnails
    out = run_client(hub, "alice", tmp_path, args=["push", str(anonymized / "safe"), "alice/measured", "--report", str(tmp_path)], check=False)
    assert out.returncode != 0 and "report.json" in out.stderr


def _files_holding(root, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_anonymizing_a_hub_dataset_leaves_no_private_caption_in_the_cache(hub, anonymized, tmp_path):
    """The run's outputs (lite's private captions quote the text read from the images, `reading "..."`) must
    not stay in HF_HOME, where datasets caches map results beside the downloaded source."""
    push_raw = f"""
import datasets
datasets.load_from_disk({str(anonymized / 'source')!r}).push_to_hub("alice/raw-photos", private=True)
"""
    run_client(hub, "alice", tmp_path, code=push_raw)
    out = run_client(hub, "alice", tmp_path, args=["anonymize", "alice/raw-photos", "--output", str(tmp_path / "safe"), "--chunk-rows", "3"])
    assert "rows            6" in out.stdout  # the train split, and the test split after it
    home = max((p for p in tmp_path.iterdir() if p.name.startswith("hf-home-alice")), key=lambda p: p.stat().st_mtime)
    assert list((home / "datasets").rglob("*.arrow"))  # the download itself is cached, as datasets does
    assert _files_holding(tmp_path / "safe", b'reading "')  # the output does hold them (what we look for exists)
    assert _files_holding(home, b'reading "') == []
    assert not (tmp_path / "safe.parts").exists()


def test_a_hub_dataset_with_several_subsets_needs_one_named(hub, tmp_path):
    push = """
import numpy as np, io, datasets
from PIL import Image
def ds(n):
    cells = []
    for i in range(n):
        buf = io.BytesIO(); Image.new("RGB", (16, 12), (i * 40, 80, 90)).save(buf, format="PNG"); cells.append({"bytes": buf.getvalue(), "path": None})
    return datasets.Dataset.from_dict({"image": cells}, features=datasets.Features({"image": datasets.Image()}))
ds(2).push_to_hub("alice/two-subsets", config_name="indoor", private=True)
ds(3).push_to_hub("alice/two-subsets", config_name="outdoor", private=True)
"""
    run_client(hub, "alice", tmp_path, code=push)
    out = run_client(hub, "alice", tmp_path, args=["anonymize", "alice/two-subsets", "--output", str(tmp_path / "all")], check=False)
    assert out.returncode != 0 and "has 2 subsets ['indoor', 'outdoor']" in out.stderr and "Traceback" not in out.stderr
    out = run_client(hub, "alice", tmp_path, args=["anonymize", "alice/two-subsets", "--subset", "outdoor", "--output", str(tmp_path / "outdoor")])
    assert "rows            3" in out.stdout


def test_a_model_runs_card_says_where_it_differs_from_the_paper():
    """The paper preset's card lists its differences from the paper (the VLM checkpoint, the region edits...),
    worked out from the run's own config: an override shows as what it is; lite cards have no such section."""
    from hf_unsafe2safe import Unsafe2Safe
    from hf_unsafe2safe import columns as C
    from hf_unsafe2safe.hub import render_dataset_card, run_record

    summary = {"rows": 1, "flagged": 0, "statuses": {s: 0 for s in C.STATUSES}, "categories": {}}
    paper = render_dataset_card(run_record(Unsafe2Safe.from_preset("paper"), "some/dataset", summary, local=False))
    assert "## Differences from the paper" in paper
    assert "InternVL2.5-8B" in paper and "regions" in paper
    other = Unsafe2Safe.from_preset("paper", vlm={"model": "OpenGVLab/InternVL3_5-8B-HF"})
    assert "OpenGVLab/InternVL3_5-8B-HF instead of the paper's InternVL2.5-8B" in render_dataset_card(run_record(other, "some/dataset", summary, local=False))
    assert "Differences from the paper" not in render_dataset_card(run_record(Unsafe2Safe.from_preset("lite"), "some/dataset", summary, local=False))
