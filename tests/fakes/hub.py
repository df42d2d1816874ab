"""A local stand-in of the Hugging Face Hub's HTTP API, for `orsc publish` (HF_ENDPOINT).

Serves what huggingface_hub's create_repo, list_repo_tree, upload_folder (the card's
metadata check, preupload and one ndjson commit, every file sent inline) and
update_repo_settings call, on 127.0.0.1.
Each dataset repo is a real git repository under `root/<org>/<name>`, created with a
`.gitattributes` as the Hub does: a commit writes the files that arrive and commits them,
so a test can check exactly what arrived and `git clone` the repo as people would.
Requests need `Authorization: Bearer <token>`; anything else is a 401, as on the Hub.

    hub = FakeHub(tmp_path / "hub", token="hf_test").start()
    ...  # HF_ENDPOINT=hub.url, HF_TOKEN=hf_test
    hub.stop()
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

GITATTRIBUTES = "*.parquet filter=lfs diff=lfs merge=lfs -text\n"
REPO_PATH = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/(?P<op>tree|preupload|commit|settings)"
                       r"(?:/(?P<rev>[^/]+))?)?/?$")


def card_errors(card: str) -> list[str]:
    """What the Hub's metadata check would reject in a dataset card's YAML header."""
    parts = card.split("---\n")
    if not card.startswith("---\n") or len(parts) < 3:
        return ["no YAML metadata block"]
    try:
        meta = yaml.safe_load(parts[1])
    except yaml.YAMLError as err:
        return [f"invalid YAML: {err}"]
    errors = []
    for config in meta.get("configs", []):
        if not config.get("config_name") or not config.get("data_files"):
            errors.append(f"config {config} needs config_name and data_files")
    if not isinstance(meta.get("license"), str):
        errors.append("license must be a string")
    return errors


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=hub", "-c", "user.email=hub@localhost", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


class FakeHub:
    def __init__(self, root: Path, token: str):
        self.root, self.token = root, token
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.settings: dict[str, dict[str, Any]] = {}
        self.created: dict[str, dict[str, Any]] = {}  # repo id -> the create payload

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                path = urlparse(self.path).path
                hub.requests.append((self.command, path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._reply(401, {"error": "Invalid credentials in Authorization header"},
                                {"X-Error-Message": "Invalid credentials in Authorization header"})
                    return
                status, reply, headers = hub.route(self.command, path, body)
                self._reply(status, reply, headers)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo_dir(self, repo: str) -> Path:
        return self.root / repo

    def commits(self, repo: str) -> int:
        return int(git(self.repo_dir(repo), "rev-list", "--count", "HEAD").strip())

    def files(self, repo: str) -> dict[str, bytes]:
        """Every file of the repo's HEAD, as it arrived."""
        d = self.repo_dir(repo)
        return {p: (d / p).read_bytes() for p in git(d, "ls-files").splitlines()}

    def route(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str] | None]:
        if method == "POST" and path == "/api/validate-yaml":
            errors = card_errors(json.loads(body)["content"])
            reply = {"errors": [{"message": e} for e in errors], "warnings": []}
            return (400 if errors else 200), reply, None
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}"
            if self.repo_dir(repo).exists():
                return 409, {"error": "You already created this dataset repo",
                             "url": f"{self.url}/datasets/{repo}"}, None
            d = self.repo_dir(repo)
            d.mkdir(parents=True)
            git(d, "init", "-q", "-b", "main")
            (d / ".gitattributes").write_text(GITATTRIBUTES)
            git(d, "add", "-A")
            git(d, "commit", "-q", "-m", "initial commit")
            self.created[repo] = payload
            return 200, {"url": f"{self.url}/datasets/{repo}", "name": repo}, None
        m = REPO_PATH.match(path)
        if not m:
            return 404, {"error": f"no route {method} {path}"}, None
        repo, op = m["repo"], m["op"]
        d = self.repo_dir(repo)
        if not d.exists():
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if method == "GET" and op == "tree":
            out = []
            for line in git(d, "ls-tree", "-r", "-l", "HEAD").splitlines():
                meta, name = line.split("\t", 1)
                _, _, oid, size = meta.split()
                out.append({"type": "file", "oid": oid, "size": int(size), "path": name})
            return 200, out, None
        if method == "GET" and op is None:
            sha = git(d, "rev-parse", "HEAD").strip()
            return 200, {"id": repo, "sha": sha, "private": self.created[repo].get("visibility") == "private",
                         "gated": self.settings.get(repo, {}).get("gated", False)}, None
        if method == "POST" and op == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}, None
        if method == "POST" and op == "commit":
            summary = ""
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"]["summary"]
                elif item["key"] == "file":
                    target = d / item["value"]["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(item["value"]["content"]))
                else:
                    return 400, {"error": f"the stand-in does not take {item['key']}"}, None
            git(d, "add", "-A")
            git(d, "commit", "-q", "-m", summary)
            sha = git(d, "rev-parse", "HEAD").strip()
            return 200, {"commitUrl": f"{self.url}/datasets/{repo}/commit/{sha}", "commitOid": sha,
                         "success": True}, None
        if method == "PUT" and op == "settings":
            self.settings.setdefault(repo, {}).update(json.loads(body))
            return 200, {}, None
        return 404, {"error": f"no route {method} {path}"}, None
