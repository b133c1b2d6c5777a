"""A small HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions wire format.

The demo starts one around `DemoModel` so every model stage runs end to end with no
download and no key; the tests start the same server (with fault injection added in
their handler) as the endpoint the model stages talk to. Built on the standard
library's `ThreadingHTTPServer` rather than a web framework: it needs two routes,
and the standard library keeps the package's dependencies as they are.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from avcurate.demo.model import DemoModel


def data_url_bytes(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])


class ModelServer(ThreadingHTTPServer):
    """Serves `model.answer` on a free port; a context manager that starts and stops it.

    `attempts` counts requests per prompt, so repeated asks of one sampled question get
    new samples; with `record=True` every request body is kept (tests check what was sent).
    """

    daemon_threads = True
    request_queue_size = 256  # listen backlog: the default 5 drops bursts of new connections

    def __init__(self, handler: type | None = None, *, model: Any = None, latency: float = 0.0,
                 record: bool = False, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), handler or OpenAIHandler)
        self.model = model or DemoModel()
        self.latency, self.record_bodies = latency, record
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.attempts: Counter[str] = Counter()
        self.arrivals: list[float] = []  # time.monotonic() as each request was read
        self.in_flight = self.peak_in_flight = 0  # requests being answered now / at most
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> ModelServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread = None
        self.server_close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up before its answer (Ctrl-C, a timeout) is not an error
        worth a traceback on the user's terminal; anything else still prints one."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def record(self, body: dict, headers: dict, prompt: str) -> int:
        """Count (and with `record`, keep) a request; returns its attempt number for the prompt."""
        with self.lock:
            self.arrivals.append(time.monotonic())
            if self.record_bodies:
                self.requests.append(body)
                self.headers_seen.append(headers)
            self.attempts[prompt] += 1
            return self.attempts[prompt]

    def answer(self, prompt: str, attempt: int, images: list[bytes], audios: list[bytes],
               videos: list[bytes], sample: int) -> str:
        return self.model.answer(prompt, images, audios, videos, sample)


class JSONHandler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real inference servers do
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms ACK stalls

    def log_message(self, *args: object) -> None:  # no access log on the user's terminal
        pass

    _answer_at: float = 0.0  # monotonic time this request's answer is due (see do_POST)

    def _json(self, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        time.sleep(max(0.0, self._answer_at - time.monotonic()))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _read(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))


def _parts(body: dict) -> list[dict]:
    return [p for m in body["messages"] for p in
            (m["content"] if isinstance(m["content"], list)
             else [{"type": "text", "text": m["content"]}])]


class OpenAIHandler(JSONHandler):
    """POST …/chat/completions (with `n` answers) and GET …/models."""

    def _error(self, code: int, message: str, headers: dict | None = None) -> None:
        self._json(code, {"error": {"message": message, "type": "server_error", "code": code}},
                   headers)

    def intercept(self, body: dict, prompt: str, attempt: int) -> bool:
        """A hook for the tests' faults: True when it has already sent a response."""
        return False

    def do_GET(self) -> None:
        if not self.path.rstrip("/").endswith("/models"):
            return self._error(404, f"no route {self.path}")
        name = getattr(self.server.model, "name", "demo")
        self._json(200, {"object": "list", "data": [{"id": name, "object": "model"}]})

    def do_POST(self) -> None:
        if not self.path.endswith("/chat/completions"):
            return self._error(404, f"no route {self.path}")
        body = self._read()
        parts = _parts(body)
        prompt = "\n".join(p["text"] for p in parts if p["type"] == "text")
        attempt = self.server.record(body, {k.lower(): v for k, v in self.headers.items()}, prompt)
        # With a latency, the answer (or fault) leaves `latency` seconds after the request was
        # read, however long working it out took: a benchmark's ideal is concurrency/latency,
        # so the demo model's own looking and listening must not add to it.
        self._answer_at = time.monotonic() + self.server.latency
        with self.server.lock:
            self.server.in_flight += 1
            self.server.peak_in_flight = max(self.server.peak_in_flight, self.server.in_flight)
        try:
            self._respond(body, parts, prompt, attempt)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _respond(self, body: dict, parts: list[dict], prompt: str, attempt: int) -> None:
        if self.intercept(body, prompt, attempt):
            return None
        images = [data_url_bytes(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
        audios = [base64.b64decode(p["input_audio"]["data"]) for p in parts
                  if p["type"] == "input_audio"]
        videos = [data_url_bytes(p["video_url"]["url"]) for p in parts if p["type"] == "video_url"]
        n = int(body.get("n") or 1)
        texts = [self.server.answer(prompt, attempt, images, audios, videos, (attempt - 1) * n + k)
                 for k in range(n)]
        # max_tokens is honoured as a server honours it (a token taken as 4 characters): an
        # answer beyond it is cut there, with finish_reason "length"
        limit = 4 * int(body.get("max_completion_tokens") or body.get("max_tokens") or 1 << 30)
        finish = ["length" if len(t) > limit else "stop" for t in texts]
        texts = [t[:limit] for t in texts]
        text = "".join(texts)
        self._json(200, {
            "id": f"demo-{attempt}", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": k, "finish_reason": f,
                         "message": {"role": "assistant", "content": t}}
                        for k, (t, f) in enumerate(zip(texts, finish, strict=True))],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": (len(prompt) + len(text)) // 4}})


def demo_server(**kw: Any) -> ModelServer:
    """The demo model behind an OpenAI-compatible endpoint (`url + "/v1"`); not started."""
    return ModelServer(OpenAIHandler, **kw)
