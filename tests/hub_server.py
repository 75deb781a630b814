"""A local stand-in for the Hugging Face Hub: the HTTP endpoints that `huggingface_hub` calls to publish a
folder and to download it again, so that the real client code (Trainer.push_to_hub, upload_folder,
from_pretrained, pipeline) runs unchanged with `HF_ENDPOINT` pointing here.

No open-source server that does this runs here: the Hub itself is closed, the mirrors (olah, hf-mirror) only
proxy downloads from it, and the mocks found (pAIssive_income, faceberg) replace `HfApi` in-process, which
would leave the HTTP client untested. So this is the smallest one that covers what the client calls:

    GET  /api/whoami-v2                                   the token's user
    POST /api/repos/create                                 201; 409 if it exists; 403 outside the token's namespace
    GET  /api/models/{repo}[/revision/{rev}]               repo info with siblings (private repos: 401 to others)
    GET  /api/models/{repo}/tree/{rev}[/{path}]            file listing
    GET  /api/models/{repo}/refs                           branches
    POST /api/models/{repo}/branch/{name}                  create a branch (from main)
    POST /api/models/{repo}/preupload/{rev}                every file "regular": contents travel in the commit
    POST /api/models/{repo}/commit/{rev}                   ndjson commit: header, file (base64), deletedFile/Folder
    POST /api/validate-yaml                                the model card's metadata is a YAML mapping
    HEAD, GET /{repo}/resolve/{rev}/{path}                 a file with X-Repo-Commit and ETag

Errors carry the Hub's `X-Error-Code` (RepoNotFound, EntryNotFound, RevisionNotFound) so that the client
raises the same exception types as against the Hub. Only model repos; no LFS or Xet (the preupload answer keeps every file "regular"), no pull requests. `cut_commits` and `hold_commits` break commits midway, as a
network failure or a killed client does.
"""

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class Repo:
    def __init__(self, owner, private):
        self.owner, self.private = owner, private
        self.commits = {}  # sha -> {path: bytes}
        self.branches = {"main": self._commit({}, "initial commit")}

    def _commit(self, files, message):
        sha = hashlib.sha1(f"{time.time_ns()} {message} {len(self.commits)}".encode()).hexdigest()
        self.commits[sha] = dict(files)
        return sha

    def resolve(self, revision):
        """The commit of a branch name or a commit sha; None if unknown."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubServer:
    """`with HubServer(tokens={"hf_alice": "alice"}) as hub:` serves on `hub.url`; `hub.repos` holds the files."""

    def __init__(self, tokens):
        self.tokens = dict(tokens)
        self.repos: dict[str, Repo] = {}
        self.requests = []  # (method, path, token) of every request, for the tests to read
        self.cut_commits = 0  # close the connection of this many commits, as a network failure does
        self.hold_commits = False  # hold commits (until release_commits is set), then close their connection
        self.commit_arrived, self.release_commits = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id, revision="main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    def everything(self) -> bytes:
        """Every file of every commit of every repo, names and contents: what a test searches for what must
        never have been published (a commit that a later one replaced was published all the same)."""
        with self.lock:
            return b"\0".join(
                name.encode() + b"\0" + content
                for repo in self.repos.values()
                for files in repo.commits.values()
                for name, content in files.items()
            )


def _handler(hub: HubServer):
    """The request handler class of `hub` (http.server makes one handler object a request)."""
    return type("Handler", (HubHandler,), {"hub": hub})


class HubHandler(BaseHTTPRequestHandler):
    """The endpoints of the module's docstring, one method each, over the state of `hub` (a `HubServer`)."""

    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args):  # quiet: the tests read hub.requests
        pass

    # --------------------------------------------------------------------------------------- plumbing

    def user(self):
        auth = self.headers.get("Authorization", "")
        return self.hub.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status, payload=None, headers=(), raw=None, head=False):
        data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def error(self, status, message, code=None, head=False):
        self.reply(status, {"error": message}, [("X-Error-Code", code)] if code else [], head=head)

    def repo(self, repo_id, head=False, write=False):
        """The repo if this request may see it (and write to it), else an error was sent and None returned."""
        repo = self.hub.repos.get(repo_id)
        user = self.user()
        if repo is None or (repo.private and user != repo.owner):
            # The Hub answers 401 for a repo that does not exist or that the caller may not see.
            self.error(401, f"Repository Not Found for url: {self.path}.", "RepoNotFound", head=head)
            return None
        if write and user != repo.owner:
            self.error(403, f"You don't have the rights to write to {repo_id}", head=head)
            return None
        return repo

    def revision(self, repo, revision, head=False):
        """The commit sha of `revision`, else a RevisionNotFound error was sent and None returned."""
        sha = repo.resolve(revision)
        if sha is None:
            self.error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return sha

    # --------------------------------------------------------------------------------------- routes

    def do_HEAD(self):
        self.route("HEAD")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        with self.hub.lock:
            self.hub.requests.append((method, url.path, self.headers.get("Authorization")))
        if parts[:2] == ["api", "whoami-v2"]:
            return self.whoami()
        if method == "POST" and parts[:2] == ["api", "validate-yaml"]:
            return self.validate_yaml(json.loads(self.body()))
        if method == "POST" and parts[:3] == ["api", "repos", "create"]:
            return self.create_repo(json.loads(self.body() or b"{}"))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if method == "POST":
                return self.api_post(repo_id, rest)
            return self.api_get(repo_id, rest, parse_qs(url.query))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head=method == "HEAD")
        self.error(404, f"not served here: {method} {url.path}")

    def whoami(self):
        user = self.user()
        if user is None:
            return self.error(401, "Invalid credentials in Authorization header")
        auth = {"type": "access_token", "accessToken": {"role": "write"}}
        self.reply(200, {"type": "user", "name": user, "orgs": [], "auth": auth})

    def create_repo(self, payload):
        user = self.user()
        if user is None:
            return self.error(401, "Invalid credentials in Authorization header")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        with self.hub.lock:
            if namespace != user:
                message = f'You don\'t have the rights to create a model under the namespace "{namespace}"'
                return self.error(403, message)
            if repo_id in self.hub.repos:  # the Hub's answer names the repo: exist_ok reads its url
                message = "You already created this model repo"
                return self.reply(409, {"error": message, "url": f"{self.hub.url}/{repo_id}"})
            private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
            self.hub.repos[repo_id] = Repo(user, private)
        self.reply(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self, payload):
        """The model card's metadata must be a YAML mapping (the Hub checks more: its schema)."""
        import yaml

        content = payload["content"]
        if not content.startswith("---\n") or "\n---" not in content[3:]:
            return self.reply(400, {"errors": [{"message": "no metadata block (--- ... ---) at the top"}]})
        try:
            metadata = yaml.safe_load(content[4:].split("\n---", 1)[0])
        except yaml.YAMLError as error:
            return self.reply(400, {"errors": [{"message": f"YAML: {error}"}]})
        if not isinstance(metadata, dict):
            return self.reply(400, {"errors": [{"message": "metadata is not a mapping"}]})
        self.reply(200, {"warnings": []})

    # --------------------------------------------------------------------------------------- /api/models

    def api_get(self, repo_id, rest, query):
        repo = self.repo(repo_id)
        if repo is None:
            return
        if rest[:1] == ["refs"]:
            return self.refs(repo)
        sha = self.revision(repo, rest[1] if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main")
        if sha is None:
            return
        if rest[:1] == ["tree"]:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self.reply(200, _tree(repo.commits[sha], "/".join(rest[2:]), recursive))
        self.info(repo_id, repo, sha)

    def refs(self, repo):
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()]
        self.reply(200, {"branches": branches, "tags": [], "converts": []})

    def info(self, repo_id, repo, sha):
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        self.reply(
            200,
            {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "author": repo.owner}
            | {"siblings": siblings, "tags": [], "downloads": 0, "likes": 0},
        )

    def api_post(self, repo_id, rest):
        payload = self.body()
        repo = self.repo(repo_id, write=True)
        if repo is None:
            return
        if rest[:1] == ["branch"] and len(rest) >= 2:
            return self.create_branch(repo, rest[1])
        if rest[:1] == ["preupload"]:
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in json.loads(payload)["files"]
            ]
            return self.reply(200, {"files": files})
        if rest[:1] == ["commit"] and len(rest) >= 2:
            return self.commit(repo_id, repo, rest[1], payload)
        self.error(404, f"not served here: POST {self.path}")

    def create_branch(self, repo, name):
        with self.hub.lock:
            if name in repo.branches:
                return self.error(409, f"Branch {name} already exists")
            repo.branches[name] = repo.branches["main"]
        self.reply(200, {})

    def commit(self, repo_id, repo, revision, payload):
        if self.hub.cut_commits or self.hub.hold_commits:
            return self.cut_off()
        with self.hub.lock:
            if revision not in repo.branches:
                return self.error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            try:
                files, summary = _apply(repo.commits[repo.branches[revision]], payload)
            except ValueError as error:
                return self.error(400, str(error))
            new = repo.branches[revision] = repo._commit(files, summary)
        self.reply(200, {"success": True, "commitOid": new, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{new}"})

    def cut_off(self):
        """An upload cut off midway: the connection closes, nothing is committed."""
        if self.hub.cut_commits:
            self.hub.cut_commits -= 1
        else:
            self.hub.commit_arrived.set()
            self.hub.release_commits.wait(60)  # the test kills the client meanwhile
        self.close_connection = True
        self.connection.shutdown(2)

    # --------------------------------------------------------------------------------------- downloads

    def resolve(self, repo_id, revision, path, head):
        repo = self.repo(repo_id, head=head)
        sha = self.revision(repo, revision, head) if repo is not None else None
        if sha is None:
            return
        content = repo.commits[sha].get(path)
        if content is None:
            return self.error(404, f"Entry not found: {path}", "EntryNotFound", head=head)
        headers = [("X-Repo-Commit", sha), ("ETag", f'"{_git_blob_id(content)}"')]  # the Hub's ETag: git's blob id
        self.reply(200, raw=content, head=head, headers=headers)


def _apply(files, payload: bytes) -> tuple[dict, str]:
    """The files after an ndjson commit `payload` (header, file, deletedFile, deletedFolder lines), and its summary;
    a ValueError names a line kind this server does not take."""
    files, summary = dict(files), ""
    for line in payload.decode().splitlines():
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            summary = value.get("summary", "")
        elif key == "file":
            files[value["path"]] = base64.b64decode(value["content"])
        elif key == "deletedFile":
            files.pop(value["path"], None)
        elif key == "deletedFolder":
            prefix = value["path"].rstrip("/") + "/"
            files = {p: c for p, c in files.items() if not p.startswith(prefix)}
        else:
            raise ValueError(f"this test server does not take {key!r} commit lines")
    return files, summary


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _tree(files, prefix, recursive):
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    entries, folders = [], set()
    for path in sorted(files):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if "/" in rest and not recursive:
            folders.add(prefix + rest.split("/")[0])
            continue
        for i in range(rest.count("/")):
            folders.add(prefix + "/".join(rest.split("/")[: i + 1]))
        content = files[path]
        entries.append(
            {
                "type": "file",
                "path": path,
                "size": len(content),
                "oid": _git_blob_id(content),
            }
        )
    return [
        {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
        for f in sorted(folders)
    ] + entries
