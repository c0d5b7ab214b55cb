"""The local Hub of ``tests/hub_server.py`` against the real clients: huggingface_hub and datasets over HTTP.

Every check runs a client script in a subprocess whose environment comes from ``client_env`` (the HF libraries
read it at import time); the script prints one ``RESULT {json}`` line that the test asserts on.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("datasets")
pytest.importorskip("huggingface_hub")
pytest.importorskip("PIL")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hub_server import client_env, start_hub  # noqa: E402

ALICE = "hf_alice_local_token_0001"
BOB = "hf_bob_local_token_0002"
REPO = "alice/private-images"  # Dataset with an Image column, + extra files and a card
REPO_DICT = "alice/private-splits"  # DatasetDict train/test
REPO_PUB = "alice/to-publish"  # private at first, made public by one test

# Shared by every client script: deterministic rows and helpers to summarise / report.
PRELUDE = textwrap.dedent(
    f"""
    import hashlib, io, json, sys
    import numpy as np

    REPO, REPO_DICT, REPO_PUB = {REPO!r}, {REPO_DICT!r}, {REPO_PUB!r}
    BOB = {BOB!r}

    def emit(obj):
        print("RESULT " + json.dumps(obj), flush=True)

    def png(seed, shape):
        from PIL import Image as PILImage
        arr = np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)
        buf = io.BytesIO()
        PILImage.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    def image_dataset(n, offset=0):
        from datasets import Dataset, Features, Image, Value
        shapes = [(12, 10, 3), (7, 9, 3), (16, 16, 3), (5, 11, 3), (9, 9, 3)]
        rows = {{
            "image": [{{"bytes": png(offset + i, shapes[(offset + i) % len(shapes)]), "path": None}} for i in range(n)],
            "caption": [f"caption {{offset + i}}: ünïcode ✓" for i in range(n)],
        }}
        return Dataset.from_dict(rows, features=Features({{"image": Image(), "caption": Value("string")}}))

    def summarize(rows):
        out = []
        for r in rows:
            img = r["image"]
            out.append({{
                "caption": r["caption"],
                "size": list(img.size),
                "mode": img.mode,
                "pixels": hashlib.sha256(np.asarray(img).tobytes()).hexdigest(),
            }})
        return out

    def upload(api, repo_id):
        return api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, repo_type="dataset")

    def attempt(fn):
        try:
            value = fn()
            plain = isinstance(value, (str, int, float, bool, list, dict, type(None)))
            return {{"ok": True, "value": value if plain else repr(value)}}
        except Exception as e:
            def status(exc):
                resp = getattr(exc, "response", None)
                return getattr(resp, "status_code", None)
            cause = e.__cause__ or e.__context__
            return {{
                "ok": False,
                "type": type(e).__name__,
                "status": status(e),
                "cause": type(cause).__name__ if cause is not None else None,
                "cause_status": status(cause) if cause is not None else None,
                "message": str(e)[:800],
            }}
    """
)

PUSH_SCRIPT = """
from datasets import DatasetDict, Image
from huggingface_hub import DatasetCard, HfApi

api = HfApi()
out = {"whoami": api.whoami()["name"]}

url = api.create_repo(REPO, repo_type="dataset", private=True)
out["create_url"] = str(url)
out["create_repo_id"] = url.repo_id
out["exist_ok"] = api.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True).repo_id
out["duplicate"] = attempt(lambda: api.create_repo(REPO, repo_type="dataset", private=True))

ds = image_dataset(4)
out["expected"] = summarize(ds)
raw = ds.cast_column("image", Image(decode=False))["image"]
out["expected_png_sha"] = [hashlib.sha256(b["bytes"]).hexdigest() for b in raw]
ds.push_to_hub(REPO, private=True)

dd = DatasetDict({"train": image_dataset(3), "test": image_dataset(2, offset=3)})
out["expected_dict"] = {split: summarize(d) for split, d in dd.items()}
dd.push_to_hub(REPO_DICT, private=True)

extra = {"name": "extra", "values": [1, 2, 3], "text": "ünïcode"}
api.upload_file(
    path_or_fileobj=json.dumps(extra).encode(), path_in_repo="extra/meta.json", repo_id=REPO, repo_type="dataset"
)
blob = png(99, (20, 20, 3))
out["blob_sha"] = hashlib.sha256(blob).hexdigest()
api.upload_file(path_or_fileobj=blob, path_in_repo="extra/sample.png", repo_id=REPO, repo_type="dataset")

card = DatasetCard.load(REPO, repo_type="dataset")
card.data["pretty_name"] = "Local hub round trip"
card.data["license"] = "mit"
card.text = "\\n# Local hub round trip\\n\\nPushed by the hub server test.\\n"
card.push_to_hub(REPO, repo_type="dataset")

info = api.repo_info(REPO, repo_type="dataset")
out["private"] = info.private
out["sha_is_main"] = info.sha == api.list_repo_refs(REPO, repo_type="dataset").branches[0].target_commit
out["n_commits"] = len(api.list_repo_commits(REPO, repo_type="dataset"))
out["files"] = sorted(api.list_repo_files(REPO, repo_type="dataset"))
out["files_dict"] = sorted(api.list_repo_files(REPO_DICT, repo_type="dataset"))
out["private_dict"] = api.repo_info(REPO_DICT, repo_type="dataset").private

# a repo to publish later
image_dataset(2).push_to_hub(REPO_PUB, private=True)
out["private_pub"] = api.repo_info(REPO_PUB, repo_type="dataset").private

# delete_repo
api.create_repo("alice/scratch", repo_type="dataset")
api.delete_repo("alice/scratch", repo_type="dataset")
out["deleted"] = attempt(lambda: api.repo_info("alice/scratch", repo_type="dataset"))
emit(out)
"""

LOAD_SCRIPT = """
from datasets import Image, load_dataset
from huggingface_hub import DatasetCard, HfApi, RepoFile, hf_hub_download

out = {}
ds = load_dataset(REPO)
out["splits"] = sorted(ds)
out["rows"] = summarize(ds["train"])
raw = ds["train"].cast_column("image", Image(decode=False))["image"]
out["png_sha"] = [hashlib.sha256(b["bytes"]).hexdigest() for b in raw]
out["stream_rows"] = summarize(load_dataset(REPO, streaming=True)["train"])

dd = load_dataset(REPO_DICT)
out["dict_splits"] = sorted(dd)
out["dict_rows"] = {split: summarize(d) for split, d in dd.items()}
sd = load_dataset(REPO_DICT, streaming=True)
out["dict_stream_rows"] = {split: summarize(d) for split, d in sd.items()}

with open(hf_hub_download(REPO, "extra/meta.json", repo_type="dataset")) as f:
    out["extra"] = json.load(f)
with open(hf_hub_download(REPO, "extra/sample.png", repo_type="dataset"), "rb") as f:
    out["blob_sha"] = hashlib.sha256(f.read()).hexdigest()
tree = HfApi().list_repo_tree(REPO, repo_type="dataset", recursive=True)
entries = {e.path: e for e in tree if isinstance(e, RepoFile)}
out["lfs"] = {p: (e.lfs is not None) for p, e in entries.items()}
card = DatasetCard.load(REPO, repo_type="dataset")
out["card"] = {"pretty_name": card.data.get("pretty_name"), "license": card.data.get("license"), "text": card.text}
emit(out)
"""

ANON_SCRIPT = """
from datasets import load_dataset
from huggingface_hub import HfApi, hf_hub_download

api = HfApi()
emit({
    "load": attempt(lambda: load_dataset(REPO)),
    "load_stream": attempt(lambda: next(iter(load_dataset(REPO_DICT, streaming=True)["train"]))),
    "files": attempt(lambda: api.list_repo_files(REPO, repo_type="dataset")),
    "download": attempt(lambda: hf_hub_download(REPO, "extra/meta.json", repo_type="dataset")),
    "info": attempt(lambda: api.repo_info(REPO, repo_type="dataset").private),
    "upload": attempt(lambda: upload(api, REPO)),
})
"""

BOB_SCRIPT = """
from datasets import load_dataset
from huggingface_hub import HfApi, hf_hub_download

api = HfApi()
ds = image_dataset(1, offset=7)
emit({
    "whoami": api.whoami()["name"],
    "load": attempt(lambda: load_dataset(REPO)),
    "info": attempt(lambda: api.repo_info(REPO, repo_type="dataset").private),
    "download": attempt(lambda: hf_hub_download(REPO, "README.md", repo_type="dataset")),
    "push_existing": attempt(lambda: ds.push_to_hub(REPO)),
    "push_new": attempt(lambda: ds.push_to_hub("alice/bob-was-here")),
    "create_in_alice": attempt(lambda: api.create_repo("alice/bob-repo", repo_type="dataset")),
    "upload": attempt(lambda: upload(api, REPO)),
    "own_repo": attempt(lambda: api.create_repo("bob/mine", repo_type="dataset", private=True).repo_id),
})
"""

PUBLISH_SCRIPT = """
from huggingface_hub import HfApi

api = HfApi()
before = attempt(lambda: HfApi(token=False).repo_info(REPO_PUB, repo_type="dataset").private)
api.update_repo_settings(REPO_PUB, private=False, repo_type="dataset")
emit({
    "before_anon": before,
    "private_after": api.repo_info(REPO_PUB, repo_type="dataset").private,
    "expected": summarize(image_dataset(2)),
})
"""

PUBLIC_ANON_SCRIPT = """
from datasets import load_dataset
from huggingface_hub import HfApi

ds = load_dataset(REPO_PUB)
emit({
    "rows": summarize(ds["train"]),
    "stream_rows": summarize(load_dataset(REPO_PUB, streaming=True)["train"]),
    "private": HfApi().repo_info(REPO_PUB, repo_type="dataset").private,
    "anon_upload": attempt(lambda: upload(HfApi(), REPO_PUB)),
    "bob_upload": attempt(lambda: upload(HfApi(token=BOB), REPO_PUB)),
    "still_private": attempt(lambda: load_dataset(REPO_DICT)),
})
"""

WHOAMI_SCRIPT = """
from huggingface_hub import HfApi
emit({"wrong": attempt(lambda: HfApi(token="hf_not_a_valid_token").whoami()), "alice": HfApi().whoami()["name"]})
"""


def _launch(hub, token, script, hf_home):
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        env=client_env(hub.endpoint, token, str(hf_home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc, timeout=240):
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"client script timed out\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-5000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"client script failed ({proc.returncode})\nstderr:\n{stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def run_clients(hub, jobs, tmp_path_factory):
    """Run (token, script) client jobs concurrently, each with a fresh HF_HOME; their results in order."""
    procs = [_launch(hub, token, script, tmp_path_factory.mktemp("hf-home")) for token, script in jobs]
    return [_result(p) for p in procs]


@pytest.fixture(scope="module")
def hub():
    server = start_hub({"alice": ALICE, "bob": BOB})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """alice's pushes (private repos); what they hold."""
    (out,) = run_clients(hub, [(ALICE, PUSH_SCRIPT)], tmp_path_factory)
    return out


def test_push(pushed, hub):
    assert pushed["whoami"] == "alice"
    assert pushed["create_url"] == f"{hub.endpoint}/datasets/{REPO}"
    assert pushed["create_repo_id"] == pushed["exist_ok"] == REPO
    assert pushed["duplicate"]["ok"] is False and pushed["duplicate"]["status"] == 409
    assert pushed["private"] is True and pushed["private_dict"] is True and pushed["private_pub"] is True
    assert pushed["sha_is_main"] is True
    assert pushed["n_commits"] >= 5  # initial, push_to_hub, 2x upload_file, card
    files = pushed["files"]
    assert "README.md" in files and "extra/meta.json" in files and "extra/sample.png" in files
    assert [f for f in files if f.startswith("data/")] == ["data/train-00000-of-00001.parquet"]
    dict_data = sorted(f for f in pushed["files_dict"] if f.startswith("data/"))
    assert dict_data == ["data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert "README.md" in pushed["files_dict"]
    assert pushed["deleted"]["ok"] is False and pushed["deleted"]["type"] == "RepositoryNotFoundError"


def test_load_round_trip(pushed, hub, tmp_path_factory):
    (out,) = run_clients(hub, [(ALICE, LOAD_SCRIPT)], tmp_path_factory)
    assert out["splits"] == ["train"]
    assert out["rows"] == pushed["expected"]
    assert len(out["rows"]) == 4 and len({r["pixels"] for r in out["rows"]}) == 4
    assert out["png_sha"] == pushed["expected_png_sha"]  # the PNG files themselves, byte for byte
    assert out["stream_rows"] == pushed["expected"]
    assert out["dict_splits"] == ["test", "train"]
    assert out["dict_rows"] == pushed["expected_dict"]
    assert out["dict_stream_rows"] == pushed["expected_dict"]
    assert out["extra"] == {"name": "extra", "values": [1, 2, 3], "text": "ünïcode"}
    assert out["blob_sha"] == pushed["blob_sha"]  # an LFS file resolves to the uploaded bytes
    assert out["lfs"]["extra/sample.png"] is True and out["lfs"]["data/train-00000-of-00001.parquet"] is True
    assert out["lfs"]["extra/meta.json"] is False and out["lfs"]["README.md"] is False
    assert out["card"]["pretty_name"] == "Local hub round trip" and out["card"]["license"] == "mit"
    assert "Pushed by the hub server test." in out["card"]["text"]


def test_private_repo_is_invisible(pushed, hub, tmp_path_factory):
    anon, bob = run_clients(hub, [(None, ANON_SCRIPT), (BOB, BOB_SCRIPT)], tmp_path_factory)

    for who in (anon, bob):
        assert who["load"]["ok"] is False
        assert who["load"]["type"] == "DatasetNotFoundError"
        # datasets re-raises it "from None" (the RepositoryNotFoundError of the README.md HEAD is not chained)
        assert "doesn't exist on the Hub or cannot be accessed" in who["load"]["message"]
        assert who["info"]["type"] == "RepositoryNotFoundError" and who["info"]["status"] == 404
        assert who["download"]["ok"] is False and who["download"]["status"] == 404
        assert who["download"]["type"] == "RepositoryNotFoundError"
        assert who["upload"]["ok"] is False and who["upload"]["status"] == 404
    assert anon["load_stream"]["ok"] is False and anon["load_stream"]["type"] == "DatasetNotFoundError"
    assert anon["files"]["type"] == "RepositoryNotFoundError" and anon["files"]["status"] == 404

    assert bob["whoami"] == "bob"
    for key in ("push_existing", "push_new", "create_in_alice"):
        assert bob[key]["ok"] is False, key
        assert bob[key]["status"] == 403, (key, bob[key])
    assert bob["own_repo"] == {"ok": True, "value": "bob/mine"}


def test_made_public_is_readable_anonymously(pushed, hub, tmp_path_factory):
    (published,) = run_clients(hub, [(ALICE, PUBLISH_SCRIPT)], tmp_path_factory)
    assert published["before_anon"]["ok"] is False and published["before_anon"]["status"] == 404
    assert published["private_after"] is False

    (anon,) = run_clients(hub, [(None, PUBLIC_ANON_SCRIPT)], tmp_path_factory)
    assert anon["private"] is False
    assert anon["rows"] == published["expected"]
    assert anon["stream_rows"] == published["expected"]
    assert anon["anon_upload"]["ok"] is False and anon["anon_upload"]["status"] == 401
    assert anon["bob_upload"]["ok"] is False and anon["bob_upload"]["status"] == 403
    assert anon["still_private"]["ok"] is False and anon["still_private"]["type"] == "DatasetNotFoundError"


def test_wrong_token_is_401(hub, tmp_path_factory):
    (out,) = run_clients(hub, [(ALICE, WHOAMI_SCRIPT)], tmp_path_factory)
    assert out["alice"] == "alice"
    assert out["wrong"]["ok"] is False and out["wrong"]["status"] == 401
    assert "Invalid user token" in out["wrong"]["message"]


def test_raw_http_keep_alive_ranges_and_errors(hub):
    """One keep-alive connection: bodies drained on error routes, chunked bodies, Range -> 206 / 416, error headers."""
    import base64
    import hashlib
    import http.client
    from urllib.parse import urlsplit

    port = urlsplit(hub.endpoint).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    auth = {"Authorization": f"Bearer {ALICE}"}

    def call(method, path, body=None, headers=None, chunked=False):
        hdrs = dict(headers or {})
        if chunked:
            conn.request(method, path, body=iter([body[:3], body[3:]]), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp, resp.read()

    # a body sent to a route that ignores it, then more requests on the same connection
    resp, _ = call("POST", "/api/no-such-route", b'{"junk": true}' * 100, {"Content-Type": "application/json"})
    assert resp.status == 404
    resp, body = call("GET", "/api/whoami-v2", headers=auth)
    assert resp.status == 200 and json.loads(body)["name"] == "alice"
    resp, _ = call("GET", "/api/whoami-v2", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401 and resp.getheader("X-Error-Message") == "Invalid credentials in Authorization header"

    # create a repo with a chunked JSON body, commit a regular file
    payload = json.dumps({"name": "raw", "type": "dataset", "visibility": "private"}).encode()
    resp, body = call("POST", "/api/repos/create", payload, {**auth, "Content-Type": "application/json"}, chunked=True)
    assert resp.status == 200, body
    content = bytes(range(256)) * 4
    ndjson = b"\n".join(
        json.dumps(line).encode()
        for line in (
            {"key": "header", "value": {"summary": "raw commit", "description": ""}},
            {"key": "file", "value": {"path": "blob.dat", "content": base64.b64encode(content).decode()}},
        )
    )
    ndjson_type = {**auth, "Content-Type": "application/x-ndjson"}
    resp, body = call("POST", "/api/datasets/alice/raw/commit/main", ndjson, ndjson_type)
    assert resp.status == 200, body
    sha = json.loads(body)["commitOid"]
    assert len(sha) == 40

    # HEAD / GET / ranges
    resp, body = call("HEAD", "/datasets/alice/raw/resolve/main/blob.dat", headers=auth)
    assert resp.status == 200 and body == b"" and resp.getheader("X-Repo-Commit") == sha
    assert int(resp.getheader("Content-Length")) == len(content) and resp.getheader("ETag").startswith('"')
    resp, body = call("GET", f"/datasets/alice/raw/resolve/{sha}/blob.dat", headers=auth)
    assert resp.status == 200 and body == content
    for rng, expected in (("bytes=10-19", content[10:20]), ("bytes=1000-", content[1000:]), ("bytes=-5", content[-5:])):
        resp, body = call("GET", "/datasets/alice/raw/resolve/main/blob.dat", headers={**auth, "Range": rng})
        assert resp.status == 206 and body == expected, rng
        assert resp.getheader("Content-Range").endswith(f"/{len(content)}")
    resp, _ = call("GET", "/datasets/alice/raw/resolve/main/blob.dat", headers={**auth, "Range": "bytes=5000-"})
    assert resp.status == 416

    # typed errors
    resp, _ = call("GET", "/datasets/alice/raw/resolve/main/missing.txt", headers=auth)
    assert resp.status == 404 and resp.getheader("X-Error-Code") == "EntryNotFound"
    resp, _ = call("GET", "/api/datasets/alice/raw/revision/nope", headers=auth)
    assert resp.status == 404 and resp.getheader("X-Error-Code") == "RevisionNotFound"
    for headers in ({}, {"Authorization": f"Bearer {BOB}"}):  # private: invisible to anonymous and to bob
        for method, path in (
            ("GET", "/api/datasets/alice/raw"),
            ("GET", "/api/datasets/alice/raw/tree/main"),
            ("HEAD", "/datasets/alice/raw/resolve/main/blob.dat"),
            ("POST", "/api/datasets/alice/raw/paths-info/main"),
            ("POST", "/api/datasets/alice/raw/preupload/main"),
            ("POST", "/api/datasets/alice/raw/commit/main"),
        ):
            resp, _ = call(method, path, b"paths=blob.dat" if method == "POST" else None, headers)
            assert resp.status == 404 and resp.getheader("X-Error-Code") == "RepoNotFound", (method, path, headers)

    # paths-info (form-encoded, as huggingface_hub sends it) and the LFS batch answer
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    query = b"paths=blob.dat&paths=nope&expand=false"
    resp, body = call("POST", "/api/datasets/alice/raw/paths-info/main", query, form)
    assert resp.status == 200 and [e["path"] for e in json.loads(body)] == ["blob.dat"]
    oid = hashlib.sha256(b"lfs").hexdigest()
    batch = json.dumps({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": 3}]}).encode()
    resp, body = call("POST", "/datasets/alice/raw.git/info/lfs/objects/batch", batch, auth)
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    resp, _ = call("PUT", urlsplit(href).path, b"LFS")  # wrong content for that oid
    assert resp.status == 400
    resp, _ = call("PUT", urlsplit(href).path, b"lfs")
    assert resp.status == 200
    conn.close()
