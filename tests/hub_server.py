"""An in-memory Hugging Face Hub for tests: real HTTP on 127.0.0.1, standard library only.

It implements the Hub routes that ``huggingface_hub`` (HfApi, hf_hub_download, HfFileSystem) and
``datasets`` (push_to_hub, load_dataset, streaming included) call for dataset, model and space repos:

    GET    /api/whoami-v2
    GET    /api/agent-harnesses                       (an empty registry; huggingface_hub fetches it)
    POST   /api/repos/create                          {"name","organization","type","visibility"|"private"}
    DELETE /api/repos/delete                          {"name","organization","type"}
    POST   /api/validate-yaml
    GET    /api/{type}s/{ns}/{name}[/revision/{rev}]  repo info (private, sha, siblings ...)
    GET    /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]?recursive=&expand=
    POST   /api/{type}s/{ns}/{name}/paths-info/{rev}  form: paths=...&expand=...
    POST   /api/{type}s/{ns}/{name}/preupload/{rev}   -> "regular" / "lfs" per file
    POST   /api/{type}s/{ns}/{name}/commit/{rev}      NDJSON: header / file / lfsFile / deletedFile / deletedFolder
    GET    /api/{type}s/{ns}/{name}/refs
    GET    /api/{type}s/{ns}/{name}/commits/{rev}
    PUT    /api/{type}s/{ns}/{name}/settings          {"visibility"|"private","gated"}
    POST   /api/{type}s/{ns}/{name}/branch/{branch}   (DELETE removes it)
    POST   /[{type}s/]{ns}/{name}.git/info/lfs/objects/batch
    PUT    /__lfs__/upload/{ticket}                   (the upload href the batch answer hands out)
    HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path}   (Range -> 206)

State lives in memory: each repo has one git-like history (commits with 40-hex ids; a branch points at a
commit; a new repo starts with a ``.gitattributes`` commit, as on the Hub). Auth is ``Authorization: Bearer
TOKEN``; a private repo is invisible (404 RepoNotFound) to anybody but its owner; writes need the owner.

Command line (the port is written to PATH once the server listens; SIGTERM stops it)::

    python tests/hub_server.py --port-file PATH --users alice:TOKEN_A,bob:TOKEN_B

Helpers for tests (no huggingface_hub / datasets import here): ``start_hub(users)`` and ``client_env(...)``;
with ``HUB_SERVER_LOG=FILE`` in the environment, ``start_hub`` logs every request (and server errors) to FILE.
Clients must get the environment of ``client_env`` *before* importing huggingface_hub / datasets (they copy it
into module constants at import), so run them in subprocesses.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

# --------------------------------------------------------------------------------------------------
# helpers for tests
# --------------------------------------------------------------------------------------------------


@dataclass
class Hub:
    """A running server process (see :func:`start_hub`)."""

    endpoint: str
    process: subprocess.Popen
    users: dict[str, str]
    port_dir: str = field(default="", repr=False)

    def stop(self) -> None:
        """Terminate the server (by its PID) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        if self.port_dir:
            try:
                for name in os.listdir(self.port_dir):
                    os.remove(os.path.join(self.port_dir, name))
                os.rmdir(self.port_dir)
            except OSError:
                pass


def start_hub(users: dict[str, str], timeout: float = 20.0) -> Hub:
    """Start ``python tests/hub_server.py`` as a subprocess and wait until it listens."""
    for name, token in users.items():
        if not name or ":" in name or "," in name or "," in token or not token:
            raise ValueError(f"user names must not contain ':' or ',' and tokens no ',' (got {name!r})")
    port_dir = tempfile.mkdtemp(prefix="hub-server-")
    port_file = os.path.join(port_dir, "port")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--port-file",
        port_file,
        "--users",
        ",".join(f"{name}:{token}" for name, token in users.items()),
    ]
    log_path = os.environ.get("HUB_SERVER_LOG")  # debugging: log every request there
    if log_path:
        cmd.append("--verbose")
        with open(log_path, "ab") as log:
            process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    else:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else f"(see {log_path})"
            raise RuntimeError(f"hub server exited with {process.returncode}: {err}")
        try:
            with open(port_file) as f:
                text = f.read().strip()
            if text:
                port = int(text)
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    if port is None:
        process.terminate()
        process.wait(timeout=10)
        raise RuntimeError(f"hub server did not write its port within {timeout} s")
    if process.stderr is not None:
        # stderr is only read on failure: do not let a chatty server fill the pipe
        threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
    return Hub(endpoint=f"http://127.0.0.1:{port}", process=process, users=dict(users), port_dir=port_dir)


def _drain(stream) -> None:
    try:
        for _ in iter(lambda: stream.read(65536), b""):
            pass
    except (OSError, ValueError):
        pass


def client_env(endpoint: str, token: str | None, hf_home: str) -> dict[str, str]:
    """Environment for a client subprocess talking to the local hub (set before importing the HF libraries)."""
    env = dict(os.environ)
    for name in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_DATASETS_CACHE",
        "HF_XET_CACHE",
        "HF_ASSETS_CACHE",
    ):
        env.pop(name, None)
    env["HF_ENDPOINT"] = endpoint
    if token is not None:
        env["HF_TOKEN"] = token
    env["HF_HUB_DISABLE_XET"] = "1"
    env["HF_HOME"] = hf_home
    env["HF_HUB_CACHE"] = os.path.join(hf_home, "hub")
    env["HF_DATASETS_CACHE"] = os.path.join(hf_home, "datasets")
    env["HF_XET_CACHE"] = os.path.join(hf_home, "xet")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    no_proxy = [p for p in env.get("NO_PROXY", env.get("no_proxy", "")).split(",") if p]
    for host in ("127.0.0.1", "localhost"):
        if host not in no_proxy:
            no_proxy.append(host)
    env["NO_PROXY"] = env["no_proxy"] = ",".join(no_proxy)
    return env


# --------------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------------

REPO_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}
URL_PREFIX = {"dataset": "datasets/", "model": "", "space": "spaces/"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
LFS_EXTENSIONS = (
    ".parquet", ".arrow", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".h5", ".npy", ".npz", ".pkl",
    ".pickle", ".onnx", ".msgpack", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff",
    ".zip", ".gz", ".tar", ".zst", ".7z", ".wav", ".mp3", ".flac", ".mp4", ".avi", ".tfrecord",
)
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_EXTENSIONS).encode()


def git_blob_oid(data: bytes) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


class Blob:
    """A file's content, stored as a regular git blob or as an LFS object."""

    __slots__ = ("data", "lfs", "sha256", "oid", "pointer_size")

    def __init__(self, data: bytes, lfs: bool):
        self.data = data
        self.lfs = lfs
        self.sha256 = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(data)}\n"
            pointer = pointer.encode()
            self.oid = git_blob_oid(pointer)
            self.pointer_size = len(pointer)
        else:
            self.oid = git_blob_oid(data)
            self.pointer_size = 0

    def entry(self, path: str) -> dict:
        out = {"type": "file", "oid": self.oid, "size": len(self.data), "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": self.pointer_size}
        return out


@dataclass
class Commit:
    sha: str
    parent: str | None
    tree: dict[str, Blob]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    type: str  # "dataset" | "model" | "space"
    id: str  # "ns/name"
    owner: str
    private: bool
    gated: object = False
    created_at: str = field(default_factory=now_iso)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in self.branches:
            return self.commits[self.branches[revision[len("refs/heads/") :]]]
        if SHA_RE.match(revision) and revision in self.commits:
            return self.commits[revision]
        return None

    def history(self, commit: Commit) -> list[Commit]:
        out = []
        c: Commit | None = commit
        while c is not None:
            out.append(c)
            c = self.commits.get(c.parent) if c.parent else None
        return out

    def add_commit(self, branch: str, tree: dict[str, Blob], title: str, message: str, author: str) -> Commit:
        parent = self.branches.get(branch)
        seed = json.dumps(
            [parent, sorted((p, b.oid) for p, b in tree.items()), title, message, author, time.time_ns()]
            + [os.urandom(8).hex()]
        )
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(sha=sha, parent=parent, tree=tree, title=title, message=message, author=author, date=now_iso())
        self.commits[sha] = commit
        self.branches[branch] = sha
        return commit


def folders_of(tree: dict[str, Blob]) -> set[str]:
    out = set()
    for path in tree:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def folder_oid(tree: dict[str, Blob], folder: str) -> str:
    prefix = folder + "/"
    items = sorted((p, b.oid) for p, b in tree.items() if p.startswith(prefix))
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()


def last_commit_for(repo: Repo, commit: Commit, path: str, is_folder: bool) -> dict:
    """The newest commit (from ``commit`` backwards) that changed ``path`` (or something below it)."""

    def view(c: Commit):
        if is_folder:
            prefix = path + "/"
            return sorted((p, b.oid) for p, b in c.tree.items() if p.startswith(prefix))
        b = c.tree.get(path)
        return b.oid if b is not None else None

    chain = repo.history(commit)
    found = chain[-1]
    for newer, older in zip(chain, chain[1:]):
        if view(newer) != view(older):
            found = newer
            break
    return {"id": found.sha, "title": found.title, "date": found.date}


class HubError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}


def repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


class State:
    def __init__(self, users: dict[str, str]):
        self.users = dict(users)  # name -> token
        self.tokens = {token: name for name, token in users.items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tickets: dict[str, tuple[tuple[str, str], str, int]] = {}  # upload ticket -> (repo key, sha256, size)
        self.lock = threading.RLock()


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


def is_true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of the first range in a ``Range: bytes=...`` header; None if unsatisfiable."""
    spec = header.strip()
    if not spec.startswith("bytes="):
        raise HubError(400, f"Unsupported Range header: {header}")
    first = spec[len("bytes=") :].split(",")[0].strip()
    start_s, _, end_s = first.partition("-")
    try:
        if start_s == "":
            length = int(end_s)
            if length <= 0:
                return None
            return max(0, size - length), size - 1
        start = int(start_s)
        end = int(end_s) if end_s else size - 1
    except ValueError:
        raise HubError(400, f"Malformed Range header: {header}") from None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    state: State  # set on the subclass made in serve()
    verbose = False

    # ---- plumbing ---------------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002
        if self.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("truncated chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        # per-request state: the handler object lives as long as the (keep-alive) connection
        self.body = b""
        self.user = None
        self.query = {}
        self.method = method
        try:
            self.body = self._read_body()  # always drain the body, even where a route ignores it
        except (ValueError, ConnectionError, OSError):
            self.close_connection = True
            self._send_json(400, {"error": "could not read the request body"}, {"Connection": "close"})
            return
        try:
            self.user = self._authenticate()
            self._route(method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message
            self._send_json(e.status, {"error": e.message, **e.body}, headers)
        except Exception as e:  # pragma: no cover - a bug in the server: report it to the client
            import traceback

            traceback.print_exc()
            message = f"internal error: {type(e).__name__}: {e}"
            self._send_json(500, {"error": message}, {"X-Error-Message": message.replace("\n", " ")[:500]})

    def _authenticate(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.state.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.state.tokens[token]

    def _send(self, status: int, body: bytes, headers: dict | None = None, content_type: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            # header values must be latin-1 for http.server: escape the rest (paths may be unicode)
            value = str(value).replace("\r", " ").replace("\n", " ")
            self.send_header(key, value.encode("ascii", "backslashreplace").decode("ascii"))
        self.end_headers()
        if self.method != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_address[1]
        return f"http://{host}"

    # ---- routing ----------------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        raw = [s for s in url.path.split("/") if s != ""]
        segs = [unquote(s) for s in raw]

        if segs[:2] == ["api", "whoami-v2"] and method == "GET":
            return self.whoami()
        if segs[:3] == ["api", "repos", "create"] and method == "POST":
            return self.create_repo()
        if segs[:3] == ["api", "repos", "delete"] and method == "DELETE":
            return self.delete_repo()
        if segs[:2] == ["api", "agent-harnesses"] and method == "GET":  # client telemetry registry: empty
            return self._send_json(200, {"standardEnvVars": [], "harnesses": {}})
        if segs[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._send_json(200, {"errors": [], "warnings": []})
        if len(segs) >= 2 and segs[0] == "__lfs__" and segs[1] == "upload" and method == "PUT":
            return self.lfs_put(segs[2] if len(segs) > 2 else "")
        if len(segs) >= 4 and segs[0] == "api" and segs[1] in REPO_TYPES:
            return self.api_repo(method, REPO_TYPES[segs[1]], f"{segs[2]}/{segs[3]}", segs[4:])
        # git / resolve routes: [{type}s/]{ns}/{name}...
        rtype = "model"
        rest = segs
        if segs and segs[0] in ("datasets", "spaces"):
            rtype, rest = REPO_TYPES[segs[0]], segs[1:]
        if len(rest) >= 5 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
            if rest[5:] == ["batch"] and method == "POST":
                return self.lfs_batch(rtype, f"{rest[0]}/{rest[1][:-4]}")
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(rtype, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        raise HubError(404, f"Route not found: {method} {url.path}")

    def api_repo(self, method: str, rtype: str, repo_id: str, rest: list[str]) -> None:
        action = rest[0] if rest else None
        if action is None and method == "GET":
            return self.repo_info(rtype, repo_id, "main")
        if action == "revision" and method == "GET" and len(rest) >= 2:
            return self.repo_info(rtype, repo_id, "/".join(rest[1:]))
        if action == "tree" and method == "GET" and len(rest) >= 2:
            return self.tree(rtype, repo_id, rest[1], "/".join(rest[2:]))
        if action == "paths-info" and method == "POST" and len(rest) >= 2:
            return self.paths_info(rtype, repo_id, "/".join(rest[1:]))
        if action == "preupload" and method == "POST" and len(rest) >= 2:
            return self.preupload(rtype, repo_id, "/".join(rest[1:]))
        if action == "commit" and method == "POST" and len(rest) >= 2:
            return self.commit(rtype, repo_id, "/".join(rest[1:]))
        if action == "refs" and method == "GET":
            return self.refs(rtype, repo_id)
        if action == "commits" and method == "GET" and len(rest) >= 2:
            return self.list_commits(rtype, repo_id, "/".join(rest[1:]))
        if action == "settings" and method == "PUT":
            return self.settings(rtype, repo_id)
        if action == "branch" and method in ("POST", "DELETE") and len(rest) >= 2:
            return self.branch(method, rtype, repo_id, "/".join(rest[1:]))
        raise HubError(404, f"Route not found: {method} /api/{rtype}s/{repo_id}/{'/'.join(rest)}")

    # ---- access control ---------------------------------------------------------------------------

    def _repo(self, rtype: str, repo_id: str, write: bool = False) -> Repo:
        """The repo if the caller may see it (and write it, with ``write``); the Hub's errors otherwise."""
        repo = self.state.repos.get((rtype, repo_id))
        if repo is None or (repo.private and self.user != repo.owner):
            raise repo_not_found(repo_id)
        if write:
            if self.user is None:
                raise HubError(401, "You must be authenticated to write to this repo")
            if self.user != repo.owner:
                raise HubError(403, f"You don't have the rights to write to {rtype}s/{repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        return f"{self._base_url()}/{URL_PREFIX[repo.type]}{repo.id}"

    # ---- routes -----------------------------------------------------------------------------------

    def whoami(self) -> None:
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._send_json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "email": f"{self.user}@localhost",
                "emailVerified": True,
                "canPay": False,
                "isPro": False,
                "periodEnd": None,
                "avatarUrl": "",
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": "local-hub",
                        "role": "write",
                        "createdAt": "2024-01-01T00:00:00.000Z",
                    },
                },
            },
        )

    def _json_body(self) -> dict:
        try:
            obj = json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise HubError(400, "Body must be a JSON object")
        return obj

    def create_repo(self) -> None:
        if self.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = self._json_body()
        rtype = payload.get("type") or "model"
        if rtype not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {rtype}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or self.user
        if not NAME_RE.match(name) or not NAME_RE.match(namespace):
            raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        if namespace != self.user:
            raise HubError(403, f"You don't have the rights to create a {rtype} under the namespace \"{namespace}\"")
        visibility = payload.get("visibility")
        if visibility is None:
            private = bool(payload.get("private", False))
        elif visibility in ("private", "public"):
            private = visibility == "private"
        else:
            raise HubError(400, f"Invalid visibility: {visibility}")
        repo_id = f"{namespace}/{name}"
        with self.state.lock:
            existing = self.state.repos.get((rtype, repo_id))
            if existing is not None:
                url = self._repo_url(existing)
                # the client reads "url" from the body of a 409 when exist_ok=True
                raise HubError(409, f"You already created this {rtype} repo", body={"url": url})
            repo = Repo(type=rtype, id=repo_id, owner=self.user, private=private)
            repo.add_commit("main", {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}, "initial commit", "", self.user)
            self.state.repos[(rtype, repo_id)] = repo
        url = self._repo_url(repo)
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self) -> None:
        payload = self._json_body()
        rtype = payload.get("type") or "model"
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload.get('name')}"
        with self.state.lock:
            self._repo(rtype, repo_id, write=True)
            del self.state.repos[(rtype, repo_id)]
        self._send(200, b"", content_type="text/plain")

    def settings(self, rtype: str, repo_id: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id, write=True)  # access first: no detail leaks to others
            payload = self._json_body()
            visibility = payload.get("visibility")
            if visibility is not None:
                if visibility not in ("private", "public"):
                    raise HubError(400, f"Invalid visibility: {visibility}")
                repo.private = visibility == "private"
            elif "private" in payload:
                repo.private = bool(payload["private"])
            if "gated" in payload:
                repo.gated = payload["gated"]
        self._send_json(200, {})

    def repo_info(self, rtype: str, repo_id: str, revision: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id)
            commit = self._commit(repo, revision)
            blobs = is_true((self.query.get("blobs") or [None])[0])
            siblings = []
            for path in sorted(commit.tree):
                sib: dict = {"rfilename": path}
                if blobs:
                    b = commit.tree[path]
                    sib.update(size=len(b.data), blobId=b.oid)
                    if b.lfs:
                        sib["lfs"] = {"size": len(b.data), "sha256": b.sha256, "pointerSize": b.pointer_size}
                siblings.append(sib)
            head = repo.commits[repo.branches["main"]] if "main" in repo.branches else commit
            info = {
                "_id": hashlib.sha1(f"{rtype}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo.owner,
                "sha": commit.sha,
                "lastModified": head.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(b.data) for b in commit.tree.values()),
            }
            if rtype == "model":
                info["modelId"] = repo_id
            if rtype == "space":
                info["sdk"] = "static"
        self._send_json(200, info)

    def _entries(self, repo: Repo, commit: Commit, paths, expand: bool) -> list[dict]:
        folders = folders_of(commit.tree)
        out = []
        for path in paths:
            if path in commit.tree:
                entry = commit.tree[path].entry(path)
                if expand:
                    entry["lastCommit"] = last_commit_for(repo, commit, path, is_folder=False)
            elif path in folders:
                entry = {"type": "directory", "oid": folder_oid(commit.tree, path), "size": 0, "path": path}
                if expand:
                    entry["lastCommit"] = last_commit_for(repo, commit, path, is_folder=True)
            else:
                continue
            out.append(entry)
        return out

    def tree(self, rtype: str, repo_id: str, revision: str, path: str) -> None:
        path = path.strip("/")
        recursive = is_true((self.query.get("recursive") or [None])[0])
        expand = is_true((self.query.get("expand") or [None])[0])
        with self.state.lock:
            repo = self._repo(rtype, repo_id)
            commit = self._commit(repo, revision)
            folders = folders_of(commit.tree)
            if path and path in commit.tree:
                return self._send_json(200, self._entries(repo, commit, [path], expand))
            if path and path not in folders:
                raise HubError(
                    404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.sha}
                )
            prefix = path + "/" if path else ""
            names = set()
            for candidate in list(commit.tree) + sorted(folders):
                if not candidate.startswith(prefix) or candidate == path:
                    continue
                rel = candidate[len(prefix) :]
                if recursive or "/" not in rel:
                    names.add(candidate)
            dirs = sorted(n for n in names if n in folders)
            files = sorted(n for n in names if n not in folders)
            entries = self._entries(repo, commit, dirs + files, expand)
        self._send_json(200, entries)

    def paths_info(self, rtype: str, repo_id: str, revision: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id)  # access first: no detail leaks to others
            commit = self._commit(repo, revision)
            if "json" in self.headers.get("Content-Type", ""):
                payload = self._json_body()
                paths = payload.get("paths") or []
                expand = bool(payload.get("expand"))
            else:  # huggingface_hub sends a form: paths=a&paths=b&expand=false
                form = parse_qs(self.body.decode("utf-8", errors="replace"), keep_blank_values=True)
                paths = form.get("paths", [])
                expand = is_true((form.get("expand") or [None])[0])
            entries = self._entries(repo, commit, [p.strip("/") for p in paths], expand)
        self._send_json(200, entries)

    def refs(self, rtype: str, repo_id: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                for name, sha in sorted(repo.branches.items())
            ]
        self._send_json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def list_commits(self, rtype: str, repo_id: str, revision: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id)
            commit = self._commit(repo, revision)
            items = [
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author}],
                    "date": c.date,
                    "formatted": {"title": c.title, "message": c.message},
                }
                for c in repo.history(commit)
            ]
        self._send_json(200, items)

    def branch(self, method: str, rtype: str, repo_id: str, branch: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id, write=True)
            if method == "DELETE":
                if branch not in repo.branches:
                    raise HubError(404, f"Branch not found: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise HubError(403, "Cannot delete the main branch")
                del repo.branches[branch]
                return self._send_json(200, {})
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._json_body().get("startingPoint") or "main"
            repo.branches[branch] = self._commit(repo, start).sha
        self._send_json(200, {})

    def preupload(self, rtype: str, repo_id: str, revision: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id, write=True)  # access first: no detail leaks to others
            commit = self._commit(repo, revision)
            files = self._json_body().get("files")
            if not isinstance(files, list):
                raise HubError(400, "'files' must be a list")
            out = []
            for f in files:
                path = str(f.get("path", ""))
                size = int(f.get("size") or 0)
                sample = base64.b64decode(f.get("sample") or "")
                lfs = size > LFS_THRESHOLD or b"\0" in sample or path.lower().endswith(LFS_EXTENSIONS)
                existing = commit.tree.get(path)
                oid = None
                if existing is not None:
                    oid = existing.sha256 if existing.lfs else existing.oid
                out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            head = commit.sha
        self._send_json(200, {"files": out, "commitOid": head})

    def lfs_batch(self, rtype: str, repo_id: str) -> None:
        base = self._base_url()
        out = []
        with self.state.lock:
            repo = self._repo(rtype, repo_id, write=True)  # access first: no detail leaks to others
            payload = self._json_body()
            operation = payload.get("operation")
            objects = payload.get("objects") or []
            for obj in objects:
                oid, size = str(obj.get("oid", "")), int(obj.get("size") or 0)
                item: dict = {"oid": oid, "size": size}
                if not re.fullmatch(r"[0-9a-f]{64}", oid):
                    item["error"] = {"code": 422, "message": f"Invalid oid: {oid}"}
                elif operation == "upload":
                    if oid not in repo.lfs_objects:
                        ticket = os.urandom(16).hex()
                        self.state.tickets[ticket] = ((rtype, repo_id), oid, size)
                        item["actions"] = {"upload": {"href": f"{base}/__lfs__/upload/{ticket}", "header": {}}}
                else:
                    raise HubError(400, f"Unsupported LFS operation: {operation}")
                out.append(item)
        self._send(
            200, json.dumps({"transfer": "basic", "objects": out}).encode(), content_type="application/vnd.git-lfs+json"
        )

    def lfs_put(self, ticket: str) -> None:
        with self.state.lock:
            entry = self.state.tickets.get(ticket)
        if entry is None:
            raise HubError(403, "Invalid or expired upload URL")
        key, oid, size = entry
        data = self.body
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size} (got {len(data)} bytes)")
        with self.state.lock:
            self.state.tickets.pop(ticket, None)
            repo = self.state.repos.get(key)
            if repo is None:
                raise HubError(404, "Repository was deleted")
            repo.lfs_objects[oid] = data
        self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}, content_type="text/plain")

    def commit(self, rtype: str, repo_id: str, revision: str) -> None:
        with self.state.lock:
            self._repo(rtype, repo_id, write=True)  # access first: no detail leaks to others
        if is_true((self.query.get("create_pr") or [None])[0]):
            raise HubError(400, "Pull requests are not supported by this local hub")
        lines = [line for line in self.body.split(b"\n") if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError:
            raise HubError(400, "Commit payload is not valid NDJSON") from None
        if not items or items[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = items[0].get("value") or {}
        summary = str(header.get("summary") or "").strip()
        if not summary:
            raise HubError(400, "Commit summary must not be empty")
        with self.state.lock:
            repo = self._repo(rtype, repo_id, write=True)
            if revision not in repo.branches:
                if repo.resolve(revision) is not None:
                    raise HubError(400, f"Cannot commit to a commit id: {revision} (use a branch)")
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            parent = header.get("parentCommit")
            if parent and parent != head.sha:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(head.tree)
            for item in items[1:]:
                key, value = item.get("key"), item.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if key in ("file", "lfsFile") and (not path or any(p in ("", ".", "..") for p in path.split("/"))):
                    raise HubError(400, f"Invalid path: {value.get('path')!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding: {value.get('encoding')}")
                    tree[path] = Blob(base64.b64decode(value.get("content") or ""), lfs=False)
                elif key == "lfsFile":
                    oid = str(value.get("oid", ""))
                    data = repo.lfs_objects.get(oid)
                    if data is None:
                        raise HubError(422, f"LFS object {oid} for {path} was not uploaded to this repo")
                    if value.get("size") is not None and int(value["size"]) != len(data):
                        raise HubError(422, f"Size mismatch for LFS object {oid}")
                    tree[path] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    prefix = path + "/"
                    doomed = [p for p in tree if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del tree[p]
                else:
                    raise HubError(400, f"Unsupported commit operation: {key}")
            commit = repo.add_commit(revision, tree, summary, str(header.get("description") or ""), self.user)
            url = f"{self._repo_url(repo)}/commit/{commit.sha}"
        self._send_json(
            200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None, "hookOutput": ""}
        )

    def resolve(self, rtype: str, repo_id: str, revision: str, path: str) -> None:
        with self.state.lock:
            repo = self._repo(rtype, repo_id)
            commit = self._commit(repo, revision)
            blob = commit.tree.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        data = blob.data
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.sha256 if blob.lfs else blob.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(data))
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            span = parse_range(range_header, len(data))
            if span is None:
                unsatisfiable = {"Content-Range": f"bytes */{len(data)}"}
                raise HubError(416, "Requested range not satisfiable", headers=unsatisfiable)
            start, end = span
            data = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(blob.data)}"
            status = 206
        self._send(status, data, headers, content_type="application/octet-stream")


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def parse_users(spec: str) -> dict[str, str]:
    users = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition(":")
        if not sep or not name or not token:
            raise SystemExit(f"--users: expected NAME:TOKEN, got {item!r}")
        users[name] = token
    return users


def serve(users: dict[str, str], port: int = 0, verbose: bool = False) -> ThreadingHTTPServer:
    handler = type("LocalHubHandler", (Handler,), {"state": State(users), "verbose": verbose})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-file", required=True, help="where to write the port once listening")
    parser.add_argument("--users", default="", help="NAME:TOKEN,NAME:TOKEN")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    server = serve(parse_users(args.users), args.port, args.verbose)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
