"""A tiny Hugging Face Hub look-alike on loopback, for end-to-end tests of the real client.

It speaks only the part of the Hub HTTP API that `huggingface_hub` (2.x) uses for
`create_repo`, `upload_folder` / `upload_file`, `repo_info`, `list_repo_tree`,
`snapshot_download` and `hf_hub_download`:

    POST /api/repos/create                          create a repo (409 if it exists)
    POST /api/validate-yaml                         README.md metadata check (always fine)
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]  repo info: "sha" of the revision
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/path] file listing (?recursive=true)
    POST /api/{type}s/{ns}/{name}/preupload/{rev}   always answers "regular" upload mode
    POST /api/{type}s/{ns}/{name}/commit/{branch}   ndjson commit of base64 file contents
    HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path}   file bytes + metadata headers

Because preupload says "regular" for every file, the client sends file contents inline
in the commit payload and never needs LFS or Xet storage. Errors carry the `X-Error-Code`
header (RepoNotFound, RevisionNotFound, EntryNotFound) from which the client raises
`RepositoryNotFoundError`, `RevisionNotFoundError` and `RemoteEntryNotFoundError`.

`create_repo` makes an empty initial commit, so "main" exists right away (as on the Hub).
No authentication: the Authorization header is accepted and ignored, private repos
are readable by anyone. Pull requests, tags, LFS/Xet files and pagination are not supported.

`HubServer(stall=...)` plays a Hub that accepts connections and never answers: a
request for which `stall(method, path)` is true is read, then left without an answer
until the server stops (`stall=lambda method, path: True`: every request).
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# URL segment after /api/ -> repo type, and repo type -> prefix of its web/resolve URLs.
API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(data):
    """The git object id of a file's content: what the Hub reports as ETag and tree "oid"."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An error answer: HTTP status, message, and the Hub's X-Error-Code (if any)."""

    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


class Response:
    def __init__(self, status=200, body=b"", headers=None):
        self.status, self.body, self.headers = status, body, headers or {}


def json_response(obj, status=200, headers=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    return Response(status, json.dumps(obj).encode(), headers)


def error_response(error):
    headers = dict(error.headers, **({"X-Error-Code": error.code} if error.code else {}))
    headers["X-Error-Message"] = error.message.encode("ascii", "backslashreplace").decode()
    return json_response({"error": error.message}, error.status, headers)


class Repo:
    """One repo: its commits (oldest first) and branches; files are {path: blob oid}."""

    def __init__(self, repo_type, repo_id, private):
        self.type, self.id, self.private = repo_type, repo_id, private
        self.commits = []  # [(sha, {path: oid})]
        self.branches = {}  # branch name -> commit sha

    def snapshot(self, revision):
        """(commit sha, files) of a branch name or a full commit sha."""
        sha = self.branches.get(revision, revision)
        for commit_sha, files in self.commits:
            if commit_sha == sha:
                return commit_sha, files
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def add_commit(self, branch, files, message):
        """Record a commit on top of `branch`; its sha depends on the whole history."""
        parent = self.branches.get(branch)
        state = [self.type, self.id, parent, message, sorted(files.items()), len(self.commits)]
        sha = hashlib.sha1(json.dumps(state).encode()).hexdigest()
        self.commits.append((sha, dict(files)))
        self.branches[branch] = sha
        return sha

    def url(self, endpoint):
        return f"{endpoint}/{URL_PREFIXES[self.type]}{self.id}"


class HubServer:
    """Serve a fresh, empty Hub on 127.0.0.1 (random port) while used as a context manager."""

    def __init__(self, root=None, stall=None):
        self.root = Path(root) if root is not None else None  # blob storage; None: in memory
        self.stall = stall  # (method, path) -> True: never answer that request
        self.stalled = []  # (method, path) of the requests left unanswered
        self._stopped = threading.Event()
        self.endpoint = None
        self.requests = []  # (method, path as sent: percent-encoded, no query) in arrival order
        self._repos = {}  # (repo type, repo id) -> Repo
        self._blobs = {}  # blob oid -> bytes, when root is None
        self._lock = threading.Lock()
        self._httpd = self._thread = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        """Stop serving (idempotent); later requests get "connection refused"."""
        self._stopped.set()  # stalled requests end (unanswered) now
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None

    def commits(self, repo_id, repo_type="model"):
        """Commit shas of a repo, oldest first (the first one is made by create_repo)."""
        with self._lock:
            return [sha for sha, _ in self._repo(repo_type, repo_id).commits]

    # -- storage ----------------------------------------------------------------------------

    def _put_blob(self, data):
        oid = git_blob_oid(data)
        if self.root is None:
            self._blobs[oid] = data
        else:
            (self.root / "blobs").mkdir(parents=True, exist_ok=True)
            (self.root / "blobs" / oid).write_bytes(data)
        return oid

    def _get_blob(self, oid):
        return self._blobs[oid] if self.root is None else (self.root / "blobs" / oid).read_bytes()

    def _repo(self, repo_type, repo_id):
        try:
            return self._repos[repo_type, repo_id]
        except KeyError:
            raise HubError(404, "Repository not found", "RepoNotFound") from None

    # -- routing ----------------------------------------------------------------------------

    def handle(self, method, path, query, body):
        """Answer one request; `path` is still percent-encoded (revisions may contain %2F)."""
        self.requests.append((method, path))
        parts = [unquote(part) for part in path.strip("/").split("/")]
        try:
            with self._lock:
                if parts[0] == "api":
                    return self._api(method, parts[1:], query, body)
                return self._resolve(method, parts)
        except HubError as error:
            return error_response(error)
        except Exception as error:  # a bug here, or a request this server does not understand
            return error_response(HubError(500, f"Test server error: {error!r}"))

    def _api(self, method, parts, query, body):
        if method == "POST" and parts == ["repos", "create"]:
            return self._create_repo(json.loads(body))
        if method == "POST" and parts == ["validate-yaml"]:
            return json_response({"errors": [], "warnings": []})
        if len(parts) < 3 or parts[0] not in API_REPO_TYPES:
            raise HubError(404, f"Not implemented by the test server: {method} /api/{'/'.join(parts)}")
        repo = self._repo(API_REPO_TYPES[parts[0]], "/".join(parts[1:3]))
        action, args = (parts[3], parts[4:]) if len(parts) > 3 else ("revision", [])
        revision = args[0] if args else "main"
        if method == "GET" and action == "revision":
            return self._repo_info(repo, revision)
        if method == "GET" and action == "tree" and args:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._tree(repo, revision, "/".join(args[1:]), recursive)
        if method == "POST" and action == "preupload" and args:
            return self._preupload(repo, revision, json.loads(body))
        if method == "POST" and action == "commit" and args:
            if query.get("create_pr", ["0"])[0] == "1":
                raise HubError(400, "Pull requests are not supported by the test server")
            return self._commit(repo, revision, body)
        raise HubError(404, f"Not implemented by the test server: {method} /api/{'/'.join(parts)}")

    # -- endpoints --------------------------------------------------------------------------

    def _create_repo(self, payload):
        if not payload.get("organization"):
            raise HubError(400, "The test server needs a 'namespace/name' repo id")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        if (repo_type, repo_id) in self._repos:
            url = self._repos[repo_type, repo_id].url(self.endpoint)
            return json_response({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        repo = self._repos[repo_type, repo_id] = Repo(repo_type, repo_id, payload.get("visibility") == "private")
        repo.add_commit("main", {}, "initial commit")
        return json_response({"url": repo.url(self.endpoint), "name": repo_id})

    def _repo_info(self, repo, revision):
        sha, files = repo.snapshot(revision)
        siblings = [{"rfilename": path} for path in sorted(files)]
        return json_response({"id": repo.id, "sha": sha, "private": repo.private, "siblings": siblings})

    def _tree(self, repo, revision, folder, recursive):
        """Files (and folders) under `folder`: one level deep, or all of them if recursive."""
        _, files = repo.snapshot(revision)
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries = {}
        for path, oid in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            names = path[len(prefix):].split("/")
            folders = [prefix + "/".join(names[:i]) for i in range(1, len(names))]  # on the way down
            for sub in folders if recursive else folders[:1]:
                entries[sub] = {"type": "directory", "path": sub, "oid": hashlib.sha1(sub.encode()).hexdigest()}
            if recursive or not folders:
                entries[path] = {"type": "file", "path": path, "oid": oid, "size": len(self._get_blob(oid))}
        if prefix and not entries:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        return json_response([entries[path] for path in sorted(entries)])

    def _preupload(self, repo, revision, payload):
        """Every file is "regular" (no LFS/Xet); "oid" lets the client skip unchanged files."""
        _, files = repo.snapshot(revision)
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
            for f in payload["files"]
        ]
        return json_response({"files": answer, "commitOid": repo.branches.get(revision)})

    def _commit(self, repo, branch, body):
        """Apply an ndjson commit (header line, then one operation per line) to a branch."""
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head, files = repo.snapshot(branch)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(files)
        for line in lines[1:]:
            self._apply(files, line["key"], line["value"])
        sha = repo.add_commit(branch, files, header.get("summary", ""))
        commit_url = f"{repo.url(self.endpoint)}/commit/{sha}"  # the client parses the repo from it
        return json_response({"success": True, "commitOid": sha, "commitUrl": commit_url})

    def _apply(self, files, key, value):
        path = value["path"]
        if key == "file":
            raw = value["content"].encode()
            files[path] = self._put_blob(base64.b64decode(raw) if value.get("encoding") == "base64" else raw)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            for name in [name for name in files if name.startswith(path.rstrip("/") + "/")]:
                del files[name]
        else:  # lfsFile, copies: would need LFS/Xet storage, which this server never asks for
            raise HubError(400, f"Commit operation '{key}' is not supported by the test server")

    def _resolve(self, method, parts):
        """HEAD/GET of a file: the headers hf_hub_download reads to fill its cache."""
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = API_REPO_TYPES[parts[0]], parts[1:]
        if method not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            raise HubError(404, f"Not implemented by the test server: {method} /{'/'.join(parts)}")
        repo = self._repo(repo_type, "/".join(parts[:2]))
        sha, files = repo.snapshot(parts[3])
        path = "/".join(parts[4:])
        if path not in files:
            raise HubError(404, f"{path} does not exist on {parts[3]}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{files[path]}"', "X-Repo-Commit": sha}
        return Response(200, self._get_blob(files[path]), headers)


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing only; HubServer.handle decides the answer."""

    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

    def do_GET(self):
        self._serve(send_body=True)

    def do_POST(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _serve(self, send_body):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hub = self.server.hub
        if hub.stall is not None and hub.stall(self.command, url.path):
            hub.stalled.append((self.command, url.path))
            hub._stopped.wait()
            self.close_connection = True
            return
        response = hub.handle(self.command, url.path, parse_qs(url.query), body)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))  # HEAD: the size of the file
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format, *args):
        pass  # keep test output clean
