"""A small Hugging Face Hub-compatible HTTP server, so that tests push and download with the real client.

Standard library, and PyYAML for card metadata. The endpoints and headers are those `huggingface_hub`
2.4 and `datasets` 5.2 call (../shared/reference/hub-protocol.md). Repos live in memory: a branch
names a commit, a commit maps paths to blobs, LFS objects are kept by sha256. Every request is logged,
and faults can be injected: answer the next N requests whose path matches with a status, or drop the
connection.

Xet: the server has no Xet storage, so a client that uploads with Xet (hf_xet installed, HF_HUB_DISABLE_XET
unset) is refused its Xet write token with a 404, as a Hub without Xet does. With `xet_required`, it
answers like a Hub that stores the repo with Xet only: the LFS batch refuses every object, with the
Hub's message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Files committed through LFS, as the Hub's default .gitattributes does, and anything large.
LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".arrow", ".pt", ".pth", ".pkl", ".model")
LFS_MIN_SIZE = 10 * 2**20
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
KIND = r"(?P<kind>models|datasets)"
PREFIX = r"(?P<prefix>datasets/)?"
REVISION = r"(?P<rev>[^/]+)"  # URL-quoted, so a branch name with a slash is one segment
# What the Hub says when it refuses binary files that do not go through Xet storage.
XET_REQUIRED = (
    "Your push was rejected because it contains binary files. Please use https://huggingface.co/docs/hub/xet "
    "to store binary files."
)


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def oid(self) -> str:
        """What preupload reports and the client compares with its local file: sha256 for LFS files."""
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class Repo:
    kind: str  # "model" or "dataset"
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # commit sha -> path -> blob
    messages: list[str] = field(default_factory=list)  # every commit's summary and description

    def resolve(self, revision: str) -> str | None:
        """A branch name or a commit sha -> the commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int | None  # None: close the connection without answering
    remaining: int


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubState:
    """Everything the server holds; handlers take `lock` around each request."""

    def __init__(self, token: str, namespaces: set[str]) -> None:
        self.token = token  # the only bearer token accepted
        self.namespaces = namespaces  # where that token may create repos and push
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.xet_required = False  # refuse LFS uploads, as a Hub that stores files with Xet only
        self.requests: list[tuple[str, str, int | None]] = []  # method, path, status
        self.lock = threading.RLock()
        self._commit_counter = 0

    def inject(self, method: str, path_pattern: str, status: int | None, times: int) -> None:
        self.faults.append(Fault(method, re.compile(path_pattern), status, times))

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining and fault.method == method and fault.path.search(path):
                fault.remaining -= 1
                return fault
        return None

    def repo(self, kind: str, repo_id: str) -> Repo:
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def commit(self, repo: Repo, branch: str, files: dict[str, Blob], message: str) -> str:
        self._commit_counter += 1
        listing = sorted((path, blob.oid) for path, blob in files.items())
        sha = hashlib.sha1(json.dumps([self._commit_counter, repo.repo_id, listing]).encode()).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        repo.messages.append(message)
        return sha

    def stored_bytes(self) -> list[bytes]:
        """Every byte the server received and kept: blobs, LFS objects, commit messages."""
        blobs = [b.data for r in self.repos.values() for files in r.commits.values() for b in files.values()]
        messages = [m.encode() for r in self.repos.values() for m in r.messages]
        return [*blobs, *self.lfs_objects.values(), *messages]

    def files(self, kind: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[(kind, repo_id)]
        return {path: blob.data for path, blob in repo.commits[repo.resolve(revision)].items()}


def tree_entries(files: dict[str, Blob], folder: str, recursive: bool) -> list[dict[str, Any]]:
    """The /tree listing of `folder` ("" for the root): files, and the folders on the way."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, blob in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            directory = prefix + "/".join(parts[:depth])
            entries.setdefault(
                directory, {"type": "directory", "oid": "0" * 40, "size": 0, "path": directory}
            )
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[path] = file_entry(path, blob)
    return list(entries.values())


def file_entry(path: str, blob: Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.git_sha1, "size": len(blob.data), "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": 134}
    return entry


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the state's request log replaces stderr noise

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def endpoint(self) -> str:
        return f"http://{self.headers['Host']}"

    def do_GET(self) -> None:
        self.handle_request("GET")

    def do_HEAD(self) -> None:
        self.handle_request("HEAD")

    def do_POST(self) -> None:
        self.handle_request("POST")

    def do_PUT(self) -> None:
        self.handle_request("PUT")

    def do_DELETE(self) -> None:
        self.handle_request("DELETE")

    # -- plumbing -------------------------------------------------------------------------------------------

    def handle_request(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self.read_body()
        with self.state.lock:
            fault = self.state.take_fault(method, url.path)
            if fault is not None:
                self.state.requests.append((method, url.path, fault.status))
                if fault.status is None:
                    self.close_connection = True  # the client sees a reset, not an answer
                    return
                self.send_json(fault.status, {"error": "injected fault"})
                return
            try:
                self.check_token(url.path)
                status = self.route(method, url.path, parse_qs(url.query), body)
            except HubError as error:
                status = error.status
                headers = {"X-Error-Message": error.message}
                if error.code:
                    headers["X-Error-Code"] = error.code
                self.send_json(error.status, {"error": error.message}, headers)
            self.state.requests.append((method, url.path, status))

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def check_token(self, path: str) -> None:
        # LFS upload links carry their own authority, as the Hub's presigned storage URLs do; the
        # registry the client reads to detect AI agents is public.
        if path.startswith("/lfs-upload/") or path == "/api/agent-harnesses":
            return
        if self.headers.get("Authorization") != f"Bearer {self.state.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def send(
        self, status: int, body: bytes, headers: dict[str, str], content_length: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> int:
        body = json.dumps(data).encode()
        self.send(status, body, {"Content-Type": "application/json", **(headers or {})})
        return status

    # -- endpoints ------------------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> int:
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", lambda m, b: self.send_json(200, {"errors": [], "warnings": []})),
            ("GET", r"/api/whoami-v2", self.whoami),
            (
                "GET",
                r"/api/agent-harnesses",
                lambda m, b: self.send_json(200, {"standardEnvVars": [], "harnesses": {}}),
            ),
            ("POST", r"/api/telemetry/.*", lambda m, b: self.send_json(200, {})),
            ("POST", rf"/api/{KIND}/{REPO}/preupload/{REVISION}", self.preupload),
            ("POST", rf"/api/{KIND}/{REPO}/commit/{REVISION}", self.commit),
            ("POST", rf"/api/{KIND}/{REPO}/paths-info/{REVISION}", self.paths_info),
            ("POST", rf"/api/{KIND}/{REPO}/branch/{REVISION}", self.create_branch),
            ("GET", rf"/api/{KIND}/{REPO}/refs", self.refs),
            ("GET", rf"/api/{KIND}/{REPO}/tree/{REVISION}(?:/(?P<path>.+))?", self.tree),
            ("GET", rf"/api/{KIND}/{REPO}(?:/revision/{REVISION})?", self.repo_info),
            ("GET", rf"/api/{KIND}/{REPO}/xet-write-token/{REVISION}", self.xet_write_token),
            ("POST", rf"/{PREFIX}{REPO}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_upload),
            ("GET", rf"/{PREFIX}{REPO}/resolve/{REVISION}/(?P<path>.+)", self.resolve),
            ("HEAD", rf"/{PREFIX}{REPO}/resolve/{REVISION}/(?P<path>.+)", self.resolve),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                self.query = query
                return handler({k: unquote(v) for k, v in match.groupdict().items() if v is not None}, body)
        raise HubError(404, f"no route for {method} {path}")

    def kind_and_repo(self, match: dict[str, str]) -> tuple[str, Repo]:
        if "kind" in match:
            kind = match["kind"].removesuffix("s")
        else:
            kind = "dataset" if match.get("prefix") else "model"
        return kind, self.state.repo(kind, match["repo"])

    def commit_files(self, repo: Repo, revision: str) -> tuple[str, dict[str, Blob]]:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Revision {revision} not found in {repo.repo_id}", "RevisionNotFound")
        return sha, repo.commits[sha]

    def check_writable(self, repo_id: str) -> None:
        if repo_id.split("/")[0] not in self.state.namespaces:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")

    def repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{'datasets/' if repo.kind == 'dataset' else ''}{repo.repo_id}"

    def whoami(self, match: dict[str, str], body: bytes) -> int:
        user = sorted(self.state.namespaces)[0]
        return self.send_json(
            200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}}
        )

    def create_repo(self, match: dict[str, str], body: bytes) -> int:
        request = json.loads(body)
        kind = request.get("type") or "model"
        namespace = request.get("organization") or sorted(self.state.namespaces)[0]
        repo_id = f"{namespace}/{request['name']}"
        self.check_writable(repo_id)
        if (kind, repo_id) in self.state.repos:
            url = self.repo_url(self.state.repos[(kind, repo_id)])
            return self.send_json(409, {"error": "You already created this repo", "url": url})
        private = bool(request.get("private")) or request.get("visibility") == "private"
        repo = Repo(kind, repo_id, private)
        self.state.repos[(kind, repo_id)] = repo
        self.state.commit(repo, "main", {}, "initial commit")
        return self.send_json(200, {"url": self.repo_url(repo), "name": repo_id})

    def repo_info(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        sha, files = self.commit_files(repo, match.get("rev", "main"))
        info = {
            "id": repo.repo_id,
            "sha": sha,
            "private": repo.private,
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }
        card = files.get("README.md")
        if card is not None and card.data.startswith(b"---\n"):
            info["cardData"] = yaml.safe_load(card.data.decode().split("---\n")[1])  # the card's metadata
        return self.send_json(200, info)

    def refs(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in repo.branches.items()
        ]
        return self.send_json(200, {"branches": branches, "tags": [], "converts": []})

    def create_branch(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        self.check_writable(repo.repo_id)
        if match["rev"] in repo.branches:
            return self.send_json(409, {"error": f"Branch {match['rev']} already exists"})
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[match["rev"]] = self.commit_files(repo, start)[0]
        return self.send_json(200, {})

    def tree(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        _, files = self.commit_files(repo, match["rev"])
        folder = match.get("path", "").strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = tree_entries(files, folder, recursive)
        if folder and not entries:
            raise HubError(404, f"{folder} does not exist", "EntryNotFound")
        return self.send_json(200, entries)

    def paths_info(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        _, files = self.commit_files(repo, match["rev"])
        entries = []
        for path in parse_qs(body.decode()).get("paths", []):
            path = path.strip("/")
            if path in files:
                entries.append(file_entry(path, files[path]))
            elif any(name.startswith(path + "/") for name in files):
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path})
        return self.send_json(200, entries)

    def preupload(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        self.check_writable(repo.repo_id)
        _, files = self.commit_files(repo, match["rev"])
        answers = []
        for item in json.loads(body)["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE
            existing = files.get(item["path"])
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.oid if existing is not None and existing.lfs == lfs else None,
                }
            )
        return self.send_json(200, {"files": answers})

    def lfs_batch(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        self.check_writable(repo.repo_id)
        objects = []
        for item in json.loads(body)["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            if self.state.xet_required:
                answer["error"] = {"code": 422, "message": XET_REQUIRED}
            elif item["oid"] not in self.state.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{item['oid']}"}}
            objects.append(answer)
        data = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self.send(200, data, {"Content-Type": "application/vnd.git-lfs+json"})
        return 200

    def xet_write_token(self, match: dict[str, str], body: bytes) -> int:
        raise HubError(404, "Xet storage is not enabled on this server")

    def lfs_upload(self, match: dict[str, str], body: bytes) -> int:
        if hashlib.sha256(body).hexdigest() != match["oid"]:
            raise HubError(400, "uploaded bytes do not match their sha256")
        self.state.lfs_objects[match["oid"]] = body
        return self.send_json(200, {})

    def commit(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        self.check_writable(repo.repo_id)
        branch = match["rev"]
        head, files = self.commit_files(repo, branch)
        files = dict(files)
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                if value.get("parentCommit") not in (None, head):
                    raise HubError(412, "parentCommit is not the head of the branch")
                message = f"{value.get('summary', '')}\n{value.get('description', '')}"
            elif key == "file":
                files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = Blob(self.state.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: blob for path, blob in files.items() if not path.startswith(prefix)}
        sha = self.state.commit(repo, branch, files, message)
        url = f"{self.repo_url(repo)}/commit/{sha}"
        return self.send_json(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})

    def resolve(self, match: dict[str, str], body: bytes) -> int:
        _, repo = self.kind_and_repo(match)
        sha, files = self.commit_files(repo, match["rev"])
        blob = files.get(match["path"])
        headers = {"X-Repo-Commit": sha}
        if blob is None:
            headers.update({"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            return self.send_json(404, {"error": "Entry not found"}, headers)
        headers["ETag"] = f'"{blob.oid}"'
        headers["Content-Type"] = "application/octet-stream"
        headers["Accept-Ranges"] = "bytes"
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.data))
        data, status = blob.data, 200
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if byte_range:
            start = int(byte_range[1] or 0)
            end = int(byte_range[2]) if byte_range[2] else len(data) - 1
            if start >= len(data) and len(data) > 0:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self.send_json(416, {"error": "range not satisfiable"}, headers)
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self.send(status, data, headers)
        return status


class HubServer(ThreadingHTTPServer):
    """`with HubServer(token) as hub:` serves on 127.0.0.1 on an ephemeral port, at `hub.url`."""

    daemon_threads = True

    def __init__(self, token: str, namespaces: set[str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.state = HubState(token, namespaces or {"user"})
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
        self.server_close()
