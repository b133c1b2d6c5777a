"""Real HTTP servers on 127.0.0.1 speaking the OpenAI chat-completions and Gemini
generateContent wire formats. They answer deterministically from the request, and
inject faults when the question text carries a marker:

  [429]        first request answered 429 with Retry-After, then normally
  [500]        first request answered 500, then normally
  [slow]       first request sleeps past the client's timeout, then normally
  [flaky]      first answer is not JSON, then a good one
  [nonjson]    always answers prose, never JSON
  [range]      always answers scores of 14 (out of range)
  [none]       classification: "none"
  [weird]      classification: a category that is not in the taxonomy

Every request body is recorded (`server.requests`) so tests can check the media sent.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIMENSIONS = ("video_dependency", "audio_dependency", "question_logic", "answer_accuracy")


def score_answer(question: str) -> dict[str, Any]:
    h = int(hashlib.sha1(question.encode()).hexdigest(), 16)
    if "[range]" in question:
        return {d: 14 for d in DIMENSIONS} | {f"{d}_rationale": "x" for d in DIMENSIONS}
    scores = {"video_dependency": 6 + h % 5, "audio_dependency": 6 + (h >> 4) % 5,
              "question_logic": 8 + (h >> 8) % 3, "answer_accuracy": 10 if h % 7 else 9}
    return scores | {f"{d}_rationale": f"{d} looks like {v}." for d, v in scores.items()}


def classify_answer(question: str, categories: list[str]) -> dict[str, str]:
    if "[none]" in question:
        return {"category": "none"}
    if "[weird]" in question:
        return {"category": "basket weaving"}
    for cat in categories:
        if any(word in question.lower() for word in cat.split()):
            return {"category": cat.upper() if "[upper]" in question else cat}
    return {"category": categories[0]}


def answer_for(prompt: str, attempt: int) -> str:
    """The model's text for a prompt (all of its text parts joined)."""
    m = re.search(r"Question:\n(.*?)\n\nOptions:", prompt, re.DOTALL)
    question = m.group(1) if m else prompt
    if "[nonjson]" in question or ("[flaky]" in question and attempt == 1):
        return "Well, the sample looks fine to me overall."
    if "Taxonomy:" in prompt:
        cats = re.findall(r"^- (.+?):", prompt, re.MULTILINE)
        return json.dumps(classify_answer(question, cats))
    if "four scales" in prompt:
        return "```json\n" + json.dumps(score_answer(question)) + "\n```"
    return "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog: the default 5 drops bursts of new connections

    def __init__(self, handler, latency: float = 0.0, slow_seconds: float = 2.0) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[dict] = []
        self.uploads: list[bytes] = []
        self.headers_seen: list[dict] = []
        self.attempts: Counter[str] = Counter()
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    def record(self, body: dict, headers: dict, prompt: str) -> int:
        with self.lock:
            self.requests.append(body)
            self.headers_seen.append(headers)
            self.attempts[prompt] += 1
            return self.attempts[prompt]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as real inference servers do
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms ACK stalls

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _json(self, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _fault(self, prompt: str, attempt: int) -> bool:
        """Inject the first-attempt faults; True when a fault response was sent."""
        if "[429]" in prompt and attempt == 1:
            self._error(429, "rate limited", {"Retry-After": "0.2"})
            return True
        if "[500]" in prompt and attempt == 1:
            self._error(500, "internal error")
            return True
        if "[slow]" in prompt and attempt == 1:
            time.sleep(self.server.slow_seconds)
        return False

    def _read(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))


class OpenAIHandler(_Handler):
    def _error(self, code, message, headers=None):
        self._json(code, {"error": {"message": message, "type": "server_error", "code": code}},
                   headers)

    def do_POST(self) -> None:
        if not self.path.endswith("/chat/completions"):
            return self._error(404, f"no route {self.path}")
        body = self._read()
        prompt = "\n".join(p["text"] for m in body["messages"] for p in
                           (m["content"] if isinstance(m["content"], list)
                            else [{"type": "text", "text": m["content"]}])
                           if p["type"] == "text")
        attempt = self.server.record(body, {k.lower(): v for k, v in self.headers.items()}, prompt)
        if self.server.latency:
            time.sleep(self.server.latency)
        if self._fault(prompt, attempt):
            return None
        text = answer_for(prompt, attempt)
        self._json(200, {
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": (len(prompt) + len(text)) // 4}})


class GeminiHandler(_Handler):
    """generateContent, plus the Files API's resumable upload (start, then upload+finalize)
    and file lookup, which google-genai uses for large videos."""

    def _error(self, code, message, headers=None):
        status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}.get(code, "INVALID_ARGUMENT")
        self._json(code, {"error": {"code": code, "message": message, "status": status}}, headers)

    def _upload(self) -> None:
        command = self.headers.get("X-Goog-Upload-Command", "")
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if command == "start":
            self.send_response(200)
            self.send_header("X-Goog-Upload-URL", f"{self.server.url}/upload-session/1")
            self.send_header("X-Goog-Upload-Status", "active")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.uploads.append(data)
        name = f"files/{len(self.server.uploads)}"
        file = {"name": name, "uri": f"{self.server.url}/v1beta/{name}", "mimeType": "video/mp4",
                "sizeBytes": str(len(data)), "state": "ACTIVE"}
        self._json(200, {"file": file}, {"X-Goog-Upload-Status": "final"})

    def do_GET(self) -> None:
        name = self.path.split("/v1beta/", 1)[-1].split("?")[0]
        self._json(200, {"name": name, "uri": f"{self.server.url}/v1beta/{name}",
                         "mimeType": "video/mp4", "state": "ACTIVE"})

    def do_POST(self) -> None:
        if "/upload" in self.path:
            return self._upload()
        if ":generateContent" not in self.path:
            return self._error(404, f"no route {self.path}")
        body = self._read()
        parts = [p for c in body.get("contents", []) for p in c.get("parts", [])]
        prompt = "\n".join(p["text"] for p in parts if "text" in p)
        attempt = self.server.record(body, {k.lower(): v for k, v in self.headers.items()}, prompt)
        if self._fault(prompt, attempt):
            return None
        text = answer_for(prompt, attempt)
        self._json(200, {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": len(prompt) // 4,
                              "candidatesTokenCount": len(text) // 4,
                              "totalTokenCount": (len(prompt) + len(text)) // 4}})


def openai_server(**kw) -> _Server:
    return _Server(OpenAIHandler, **kw)


def gemini_server(**kw) -> _Server:
    return _Server(GeminiHandler, **kw)


def wav_seconds(b64_wav: str) -> float:
    import soundfile as sf

    info = sf.info(io.BytesIO(base64.b64decode(b64_wav)))
    return info.frames / info.samplerate
