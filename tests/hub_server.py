"""A loopback HTTP server that speaks the Hub endpoints an avcurate push uses: create_repo,
create_branch, upload_folder (preupload + NDJSON commits, to a branch or a pull request),
create_pull_request and repo_info.

It answers every preupload with `uploadMode: regular`, so files arrive base64-encoded inside
the NDJSON commit (no LFS or Xet storage involved), and with the git blob id of a file it
already holds, as the Hub does, so a re-run push skips unchanged files. It keeps what it
received: `server.repos` (created repos with their settings), `server.files` (path -> bytes
on main), `server.refs` (revision -> path -> bytes), `server.commits` (revision, paths) and
`server.prs` (opened pull requests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's bytes (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:
        self.server.log.append(("POST", self.path, self.headers.get("Authorization")))
        body = self._body()
        if self.path == "/api/repos/create":
            spec = json.loads(body)
            name = f"{spec.get('organization') or 'user'}/{spec['name']}" \
                if "/" not in spec["name"] else spec["name"]
            self.server.repos[name] = spec
            return self._send(200, {"url": f"{self.server.url}/datasets/{name}", "name": name})
        if self.path == "/api/validate-yaml":  # the dataset card's YAML is checked before upload
            self.server.cards.append(json.loads(body).get("content", ""))
            return self._send(200, {"errors": [], "warnings": []})
        path = urlsplit(self.path).path
        if "/preupload/" in path:
            held = self.server.refs.get(unquote(path.rsplit("/preupload/", 1)[1]), {})
            files = json.loads(body)["files"]
            return self._send(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_id(held[f["path"]]) if f["path"] in held else None}
                for f in files]})
        if "/branch/" in path:
            branch = unquote(path.rsplit("/branch/", 1)[1])
            if branch in self.server.refs:
                return self._send(409, {"error": "branch exists"})
            self.server.refs[branch] = dict(self.server.refs["main"])
            return self._send(200, {})
        if path.endswith("/discussions"):
            spec = json.loads(body)
            num = len(self.server.prs) + 1
            self.server.prs.append(spec | {"num": num})
            self.server.refs[f"refs/pr/{num}"] = dict(self.server.refs["main"])
            return self._send(200, {"num": num})
        if "/commit/" in path:
            repo, revision = path.split("/api/datasets/", 1)[1].split("/commit/", 1)
            revision = unquote(revision)
            if revision not in self.server.refs:
                return self._send(404, {"error": f"revision {revision} not found"})
            paths = []
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    self.server.refs[revision][value["path"]] = base64.b64decode(value["content"])
                    paths.append(value["path"])
            self.server.commits.append((revision, paths))
            oid = hashlib.sha1(repr(self.server.commits).encode()).hexdigest()
            return self._send(200, {"success": True, "commitOid": oid,
                                    "commitUrl": f"{self.server.url}/datasets/{repo}/commit/"
                                                 + oid})
        return self._send(404, {"error": f"no route {self.path}"})

    def do_GET(self) -> None:
        self.server.log.append(("GET", self.path, self.headers.get("Authorization")))
        path = urlsplit(self.path).path
        if "/discussions/" in path:  # the pull request just opened
            repo, num = path.split("/api/datasets/", 1)[1].split("/discussions/", 1)
            pr = self.server.prs[int(num) - 1]
            return self._send(200, {
                "title": pr["title"], "num": pr["num"], "author": {"name": "me"},
                "createdAt": "2026-01-01T00:00:00.000Z", "status": "draft",
                "repo": {"name": repo, "type": "dataset"}, "isPullRequest": True,
                "events": [], "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []})
        if "/revision/" in path:  # repo_info, after a push that changed nothing
            repo = path.split("/api/datasets/", 1)[1].split("/revision/", 1)[0]
            return self._send(200, {"id": repo, "sha": "1" * 40, "private": False,
                                    "siblings": []})
        return self._send(404, {"error": f"no route {self.path}"})


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos: dict[str, dict] = {}
        self.refs: dict[str, dict[str, bytes]] = {"main": {}}
        self.files = self.refs["main"]
        self.commits: list[tuple[str, list[str]]] = []
        self.prs: list[dict] = []
        self.cards: list[str] = []
        self.log: list[tuple] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
