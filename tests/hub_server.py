"""A loopback HTTP server that speaks the few Hub endpoints `create_repo` + `upload_folder` use.

It answers every preupload with `uploadMode: regular`, so files arrive base64-encoded inside
the NDJSON commit (no LFS or Xet storage involved), and keeps what it received:
`server.repos` (created repos with their settings) and `server.files` (path -> bytes).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                               "shouldIgnore": False, "oid": None}
                                              for f in files]})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    self.server.files[value["path"]] = base64.b64decode(value["content"])
            repo = self.path.split("/api/datasets/", 1)[1].split("/commit/", 1)[0]
            return self._send(200, {"success": True, "commitOid": "0" * 40,
                                    "commitUrl": f"{self.server.url}/datasets/{repo}/commit/"
                                                 + "0" * 40})
        return self._send(404, {"error": f"no route {self.path}"})

    def do_GET(self) -> None:
        self.server.log.append(("GET", self.path, self.headers.get("Authorization")))
        return self._send(404, {"error": f"no route {self.path}"})


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
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
