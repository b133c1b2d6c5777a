"""Real HTTP servers on 127.0.0.1 speaking the OpenAI chat-completions and Gemini
generateContent wire formats. They answer deterministically from the request, and
inject faults when the question text carries a marker:

  [429]        first request answered 429 with Retry-After, then normally
  [429ms]      first request answered 429 with retry-after-ms (OpenAI, Azure) only
  [quota]      Gemini: first request answered 429 naming its wait in the body (RetryInfo)
  [500]        first request answered 500, then normally
  [slow]       first request sleeps past the client's timeout, then normally
  [flaky]      first answer is not JSON, then a good one
  [nonjson]    always answers prose, never JSON
  [range]      always answers scores of 14 (out of range)
  [nan]        always answers a score of NaN (JSON as Python writes a float NaN)
  [none]       classification: "none"
  [weird]      classification: a category that is not in the taxonomy
  [plain]      classification: "Category: <name>." as plain text, no JSON
  [bold-plain] classification: "**Category:** <name>", the same in Markdown
  [v-wrong] [a-wrong]          that teacher picks a wrong option
  [v-ambiguous] [a-ambiguous]  that teacher answers "A or B"
  [v-markdown] [a-markdown]    that teacher labels its parts in bold ("**Reasoning:**")
  [v-headings] [a-headings]    that teacher heads its parts as Markdown ("### Reasoning")
  [leak] [mismatch] [outside] [noanswer] [short]   the merger's trace always fails that check
  [leak-once]  the merger leaks the answer until it is told what was wrong
  [fenced]     the merger writes its trace inside a ```xml code block
  [down]       always 503 (an endpoint that is failing)
  [error200]   OpenAI: the first attempt gets a 200 whose body is an error, as OpenRouter
               passes on a provider's failure
  [empty]      OpenAI: always an empty answer that ended normally (finish_reason "stop")
  [nullparts]  OpenAI: the first answer has nulls where objects belong (choices, message)
  [filtered]   an empty answer that a content filter stopped (OpenAI: finish_reason
               "content_filter"; Gemini: the prompt blocked, no candidate)

With `thinking=N` the server is a thinking model (Qwen3, Gemini 2.5): it spends about N
tokens thinking before each answer, within max_tokens. The OpenAI server writes the
thinking into the answer (`<think>…</think>`, as vLLM does without a reasoning parser);
Gemini hides it. An answer the limit leaves no room for is cut: finish_reason "length",
or MAX_TOKENS with no text. The thinking holds drafts (`DRAFT`: a letter, a JSON object)
that are not the answer.

With `api_key=...` a request without that bearer token gets 401 (GET /models too, unless
`models_route_open=True`); with `models={...}` a request for another model gets 404, as vLLM
answers for a model it does not serve, and GET /models lists them.

The server, the teachers, the merger and the probed policy are the package's demo model
(`avcurate.demo`): they really look and listen (dominant colour of the frames, pitch of
the clip). The tests add the markers above, a judge whose scores are spread by a hash of
the question (so threshold tests have every kind of row), the Gemini wire format and the
trainer's reward judge.

Every request body is recorded (`server.requests`) so tests can check the media sent.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from typing import Any

from avcurate.demo import model as demo_model
from avcurate.demo.model import merge_trace, options_in, question_in, teacher_pick, teacher_reply
from avcurate.demo.perception import dominant_colour, perceive
from avcurate.demo.server import JSONHandler, ModelServer, OpenAIHandler

DIMENSIONS = ("video_dependency", "audio_dependency", "question_logic", "answer_accuracy")


def score_answer(question: str) -> dict[str, Any]:
    h = int(hashlib.sha1(question.encode()).hexdigest(), 16)
    if "[range]" in question:
        return {d: 14 for d in DIMENSIONS} | {f"{d}_rationale": "x" for d in DIMENSIONS}
    if "[nan]" in question:
        return {d: float("nan") for d in DIMENSIONS} | {f"{d}_rationale": "x" for d in DIMENSIONS}
    scores = {"video_dependency": 6 + h % 5, "audio_dependency": 6 + (h >> 4) % 5,
              "question_logic": 8 + (h >> 8) % 3, "answer_accuracy": 10 if h % 7 else 9}
    rationales = {f"{d}_rationale": f"{d} looks like {v}." for d, v in scores.items()}
    if "[strings]" in question:  # as a model writes them without the schema's types
        scores = {d: f"{v}/10" if k % 2 else str(v) for k, (d, v) in enumerate(scores.items())}
    return scores | rationales


def classify_answer(question: str, categories: list[str]) -> dict[str, str]:
    if "[none]" in question:
        return {"category": "none"}
    if "[weird]" in question:
        return {"category": "basket weaving"}
    for cat in categories:
        if any(word in question.lower() for word in cat.split()):
            if "[styled]" in question:  # as a model writes it without the enum's schema
                return {"category": f"**{cat.title().replace('-', ' ')}.**"}
            return {"category": cat.upper() if "[upper]" in question else cat}
    return {"category": categories[0]}


def teacher_answer(kind: str, prompt: str, question: str, media: list[bytes]) -> str:
    """The demo model's teacher, with the tests' wrong/ambiguous markers applied."""
    options = options_in(prompt)
    p = perceive(media, []) if kind == "visual" else perceive([], media)
    seen, pick = teacher_pick(kind, options, p)
    tag = "v" if kind == "visual" else "a"
    pick = pick or options[0][0]
    if f"[{tag}-wrong]" in question:
        pick = next(x for x, _ in options if x != pick)
    final = "Answer: A or B" if f"[{tag}-ambiguous]" in question else None
    reply = teacher_reply(kind, seen, pick, options, p, final)
    labels = r"^((?:Visual|Audio) Description|Reasoning|Answer): "
    if f"[{tag}-markdown]" in question:
        reply = re.sub(labels, r"**\1:** ", reply, flags=re.MULTILINE)
    if f"[{tag}-headings]" in question:
        reply = re.sub(labels, r"### \1\n", reply, flags=re.MULTILINE)
    return reply


def probe_answer(prompt: str, question: str, images: list[bytes], audios: list[bytes],
                 sample: int) -> str:
    """The demo model's probe answer; `[never]` questions get no letter at all and
    `[cycle]` ones cycle through the options."""
    options = options_in(prompt)
    if "[never]" in question:
        return "I cannot tell."
    if "[cycle]" in question:
        return options[sample % len(options)][0]
    return demo_model.probe(prompt, perceive(images, audios), sample)


def merge_answer(prompt: str, question: str) -> str:
    think, truth = merge_trace(prompt)
    told = "did not pass a check" in prompt
    answer = truth
    if "[leak]" in question or ("[leak-once]" in question and not told):
        think += " The correct answer is given as " + truth + "."
    if "[mismatch]" in question:
        answer = "A" if truth != "A" else "B"
    if "[short]" in question:
        think = "I see and hear it."
    trace = f"<think>{think}</think><answer>{answer}</answer>"
    if "[outside]" in question:
        trace = "Sure! " + trace
    if "[noanswer]" in question:
        trace = f"<think>{think}</think> So: {answer}"
    if "[fenced]" in question:
        trace = f"```xml\n{trace}\n```"
    return trace


def clip_facts(mp4: bytes) -> tuple[str, float]:
    """(dominant colour of the first frame, duration in seconds) of an mp4."""
    import av

    with av.open(io.BytesIO(mp4)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
        duration = (c.duration or 0) / 1e6
    return dominant_colour(frame), duration


def judge_answer(prompt: str, videos: list[bytes]) -> str:
    """The fake judge behind the trainer's soft rewards: it really watches the clips."""
    if "student's answer" in prompt.lower():
        ref = re.search(r"Reference answer: (\S+)", prompt).group(1)
        got = re.search(r"Student's answer: (.*)", prompt).group(1).strip()
        return json.dumps({"score": 1.0 if got[:1] == ref[:1] else 0.0})
    color, duration = clip_facts(videos[0]) if videos else ("none", 0.0)
    if "described it as" in prompt:
        return json.dumps({"score": 1.0 if color in prompt.split("described it as", 1)[1] else 0.0})
    return json.dumps({"score": round(min(1.0, duration / 2.0), 3)})


def answer_for(prompt: str, attempt: int, images: list[bytes] = (), audios: list[bytes] = (),
               videos: list[bytes] = (), sample: int = 0) -> str:
    """The model's text for a prompt (all of its text parts joined) and its media; `sample`
    numbers the answers of a sampled question (several per request, or repeated requests)."""
    if '"score"' in prompt:
        return judge_answer(prompt, list(videos))
    question = question_in(prompt)
    if demo_model.PROBE_CUE in prompt:
        return probe_answer(prompt, question, list(images), list(audios), sample)
    if "Correct option:" in prompt:
        return merge_answer(prompt, question)
    if "Visual Description:" in prompt:
        return teacher_answer("visual", prompt, question, list(images))
    if "Audio Description:" in prompt:
        return teacher_answer("audio", prompt, question, list(audios))
    if "[nonjson]" in question or ("[flaky]" in question and attempt == 1):
        return "Well, the sample looks fine to me overall."
    if "Taxonomy:" in prompt:
        cats = re.findall(r"^- (.+?):", prompt, re.MULTILINE)
        if "[plain]" in question:  # the name alone, as a model without the JSON schema says it
            return f"Category: {classify_answer(question, cats)['category'].capitalize()}."
        if "[bold-plain]" in question:  # the same in Markdown
            return f"**Category:** {classify_answer(question, cats)['category']}"
        return json.dumps(classify_answer(question, cats))
    if "four scales" in prompt:
        return "```json\n" + json.dumps(score_answer(question)) + "\n```"
    return "ok"


# what a thinking model tries before it answers: a wrong letter, a JSON object with no valid
# field, a teacher's labelled parts (about 30 tokens); a parser that reads it for the answer
# gets the wrong one
DRAFT = ('Answer: A? **B**? {"category": "none", "video_dependency": 99} ...\n'
         'Visual Description: DRAFT\nAudio Description: DRAFT\nReasoning: DRAFT\n')


class _Server(ModelServer):
    """The package's model server with the tests' extras: an API key, a served-model list,
    the Gemini Files API's uploads, a slow first answer."""

    def __init__(self, handler, latency: float = 0.0, slow_seconds: float = 2.0,
                 api_key: str | None = None, models: set[str] | None = None,
                 models_route_open: bool = False, text_only: bool = False,
                 thinking: int = 0, content_parts: bool = False, ignore_n: bool = False,
                 reasoning_model: bool = False, one_answer: bool = False,
                 no_structured: int = 0, image_limit: int = 0,
                 upload_state: str = "ACTIVE", context: int = 0) -> None:
        super().__init__(handler, latency=latency, record=True)
        self.context = context  # OpenAI: a 400 for a longer request (a body byte as a token)
        # Gemini Files API: the state every upload is in, and stays in (FAILED, PROCESSING)
        self.upload_state = upload_state
        self.image_limit = image_limit  # OpenAI: a 400 for more images, as vLLM's default
        # OpenAI: this status (400; 422 as TGI answers) for any response_format, as older
        # servers without structured output answer
        self.no_structured = no_structured
        # a 400 for more than one answer a request, as Gemini 3 models answer candidateCount
        # > 1 (OpenAI: for n > 1, naming the parameter); Gemini's refusals are only counted
        self.one_answer, self.refused_n = one_answer, 0
        # OpenAI: refuse what OpenAI's reasoning models (o-series, gpt-5) refuse, in their words
        self.reasoning_model = reasoning_model
        self.ignore_n = ignore_n  # OpenAI: one answer per request whatever its n (as Ollama)
        # OpenAI: each answer's content as a list of parts, a "thinking" part before the
        # text, as some OpenAI-compatible servers and proxies send it
        self.content_parts = content_parts
        self.thinking = thinking  # tokens of thought before each answer (4 characters each)
        self.text_only = text_only  # 400 for any image, audio or video part, as vLLM answers
        # for a model that is not multimodal
        self.down = False  # set it: every call gets 503, as from a proxy whose backend died
        self.down_after: int | None = None  # the same, after this many calls
        self.api_key, self.models = api_key, models  # when set: 401 without it, 404 for others
        self.models_route_open = models_route_open
        self.model_list_requests = 0  # GET /models: the runner's check before a model stage
        self.uploads: list[bytes] = []
        self.upload_types: list[str] = []  # the media type each upload was started with
        self.deleted: list[str] = []  # Files API names deleted, in order
        self.trickles: list[tuple[bool, float]] = []  # [trickle]: (client hung up, seconds)
        self.slow_seconds = slow_seconds

    def answer(self, prompt, attempt, images, audios, videos, sample) -> str:
        text = answer_for(prompt, attempt, images, audios, videos, sample=sample)
        if not self.thinking:
            return text
        return "<think>\n" + DRAFT + "hmm " * (self.thinking - 34) + "\n</think>\n\n" + text


class _Faults:
    """The first-attempt faults the question markers ask for."""

    server: _Server

    def _fault(self, prompt: str, attempt: int) -> bool:
        """Inject the first-attempt faults; True when a fault response was sent."""
        if "[429]" in prompt and attempt == 1:
            self._error(429, "rate limited", {"Retry-After": "0.2"})
            return True
        if "[429ms]" in prompt and attempt == 1:  # OpenAI's and Azure's header, in ms
            self._error(429, "rate limited", {"retry-after-ms": "1500"})
            return True
        if "[500]" in prompt and attempt == 1:
            self._error(500, "internal error")
            return True
        if "[slow]" in prompt and attempt == 1:
            time.sleep(self.server.slow_seconds)
        if "[trickle]" in prompt and attempt == 1:
            self._trickle()
            return True
        return False

    def _trickle(self, seconds: float = 20.0) -> None:
        """A 200 whose body comes a space every 0.2 s, as from a proxy keeping a slow
        answer's connection open: no single read waits long, so only a deadline on the
        whole answer ends it. Stops when the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        start = time.monotonic()
        hung_up = False
        try:
            while time.monotonic() < start + seconds:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            hung_up = True
        self.server.trickles.append((hung_up, time.monotonic() - start))
        self.close_connection = True


def _unsupported(body: dict) -> tuple[str, str, str] | None:
    """What OpenAI answers a reasoning model's request that sets max_tokens, top_p or a
    temperature other than 1: (param, code, message)."""
    if "max_tokens" in body:
        return ("max_tokens", "unsupported_parameter", "Unsupported parameter: 'max_tokens' is "
                "not supported with this model. Use 'max_completion_tokens' instead.")
    if "top_p" in body:
        return ("top_p", "unsupported_parameter",
                "Unsupported parameter: 'top_p' is not supported with this model.")
    if body.get("temperature", 1) != 1:
        return ("temperature", "unsupported_value", f"Unsupported value: 'temperature' does "
                f"not support {body['temperature']} with this model. Only the default (1) "
                "value is supported.")
    return None


class OpenAIFaults(_Faults, OpenAIHandler):
    def _json(self, code: int, payload: dict, headers: dict | None = None) -> None:
        if self.server.content_parts and "choices" in payload:
            for choice in payload["choices"]:
                text = choice["message"]["content"]
                choice["message"]["content"] = [
                    {"type": "thinking", "thinking": [{"type": "text", "text": "Answer: A?"}]},
                    {"type": "text", "text": text[:5]}, {"type": "text", "text": text[5:]}]
        super()._json(code, payload, headers)

    def _refused_key(self) -> bool:
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._error(401, "Incorrect API key provided")
            return True
        return False

    def do_GET(self) -> None:
        """GET /models needs the key too (as `vllm serve --api-key` does), unless the server
        was made with `models_route_open=True` (as some proxies do)."""
        self.server.model_list_requests += 1
        if not self.server.models_route_open and self._refused_key():
            return None
        if self.server.models is None:
            return super().do_GET()
        self._json(200, {"object": "list", "data": [{"id": m, "object": "model"}
                                                    for m in sorted(self.server.models)]})

    def intercept(self, body: dict, prompt: str, attempt: int) -> bool:
        if self._refused_key():
            return True
        if self.server.reasoning_model and (refused := _unsupported(body)):
            param, code, message = refused
            self._json(400, {"error": {"message": message, "type": "invalid_request_error",
                                       "param": param, "code": code}})
            return True
        asked = len(json.dumps(body)) + int(body.get("max_tokens") or 0)
        if self.server.context and asked > self.server.context:
            self._json(400, {"object": "error", "message": "This model's maximum context length "
                             f"is {self.server.context} tokens. However, you requested {asked} "
                             "tokens. Please reduce the length of the messages or completion.",
                             "type": "BadRequestError", "param": None, "code": 400})
            return True
        images = sum(p["type"] == "image_url" for m in body["messages"]
                     if isinstance(m["content"], list) for p in m["content"])
        if self.server.image_limit and images > self.server.image_limit:
            self._json(400, {"object": "error", "message": f"At most {self.server.image_limit} "
                             "image(s) may be provided in one request.", "type":
                             "BadRequestError", "param": None, "code": 400})
            return True
        if self.server.no_structured and "response_format" in body:
            self._error(self.server.no_structured, "Failed to deserialize the JSON body: "
                        "response_format: unknown variant `json_schema`")
            return True
        if self.server.one_answer and body.get("n", 1) > 1:
            self.server.refused_n += 1
            self._json(400, {"error": {"message": "Unsupported value: 'n' must be 1 for this "
                                       "model.", "type": "invalid_request_error", "param": "n",
                                       "code": "unsupported_value"}})
            return True
        if self.server.ignore_n and "n" in body:
            body["ignored_n"] = body.pop("n")  # kept where the test can see it was sent
        if self.server.models is not None and body["model"] not in self.server.models:
            self._error(404, f"The model `{body['model']}` does not exist.")
            return True
        after = self.server.down_after
        if "[down]" in prompt or self.server.down or (
                after is not None and len(self.server.requests) > after):
            self._error(503, "service unavailable")
            return True
        if "[empty]" in prompt:  # the model ends its turn at once: a base model, a bad template
            self._json(200, {"id": "e", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": ""}}]})
            return True
        if "[nullparts]" in prompt and attempt == 1:  # nulls where objects belong
            self._json(200, {"choices": [None, {"message": None, "finish_reason": None}],
                             "usage": {"prompt_tokens": "12", "completion_tokens": None}})
            return True
        if "[error200]" in prompt and attempt == 1:
            self._json(200, {"error": {"message": "Provider returned error", "code": 502}})
            return True
        if "[filtered]" in prompt:
            self._json(200, {"id": "f", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "content_filter",
                                          "message": {"role": "assistant", "content": ""}}]})
            return True
        if self.server.text_only and any(isinstance(m["content"], list) and any(
                p["type"] != "text" for p in m["content"]) for m in body["messages"]):
            self._error(400, f"{body['model']} is not a multimodal model")
            return True
        return self._fault(prompt, attempt)


class GeminiHandler(_Faults, JSONHandler):
    """generateContent, plus the Files API's resumable upload (start, then upload+finalize),
    file lookup and delete, which google-genai uses for large videos."""

    def _error(self, code, message, headers=None):
        status = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}.get(code, "INVALID_ARGUMENT")
        self._json(code, {"error": {"code": code, "message": message, "status": status}}, headers)

    def _upload(self) -> None:
        command = self.headers.get("X-Goog-Upload-Command", "")
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if command == "start":
            self.server.upload_types.append(self.headers.get("X-Goog-Upload-Header-Content-Type"))
            self.send_response(200)
            self.send_header("X-Goog-Upload-URL", f"{self.server.url}/upload-session/1")
            self.send_header("X-Goog-Upload-Status", "active")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.uploads.append(data)
        name = f"files/{len(self.server.uploads)}"
        file = {"name": name, "uri": f"{self.server.url}/v1beta/{name}",
                "mimeType": self.server.upload_types[-1], "sizeBytes": str(len(data)),
                **self._upload_state()}
        self._json(200, {"file": file}, {"X-Goog-Upload-Status": "final"})

    def _upload_state(self) -> dict:
        state = self.server.upload_state
        return {"state": state} | ({"error": {"code": 400, "message": "Unsupported video codec"}}
                                   if state == "FAILED" else {})

    def _refused_key(self) -> bool:
        """Google's answer to a wrong key: 400 INVALID_ARGUMENT with the reason
        API_KEY_INVALID in its ErrorInfo (not a 401)."""
        if self.server.api_key and self.headers.get("x-goog-api-key") != self.server.api_key:
            info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID", "domain": "googleapis.com"}
            self._json(400, {"error": {"code": 400, "message": "API key not valid. Please "
                                       "pass a valid API key.", "status": "INVALID_ARGUMENT",
                                       "details": [info]}})
            return True
        return False

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.endswith("/models"):  # the model list: the runner's check before a stage
            self.server.model_list_requests += 1
            if self._refused_key():
                return None
            names = sorted(self.server.models or {"gemini-x"})
            return self._json(200, {"models": [{"name": f"models/{m}"} for m in names]})
        name = path.split("/v1beta/", 1)[-1]
        self._json(200, {"name": name, "uri": f"{self.server.url}/v1beta/{name}",
                         "mimeType": "video/mp4", **self._upload_state()})

    def do_DELETE(self) -> None:
        self.server.deleted.append("/".join(self.path.split("?")[0].split("/")[-2:]))
        self._json(200, {})

    def do_POST(self) -> None:
        if "/upload" in self.path:
            return self._upload()
        if ":generateContent" not in self.path:
            return self._error(404, f"no route {self.path}")
        body = self._read()
        if self._refused_key():
            return None
        parts = [p for c in body.get("contents", []) for p in c.get("parts", [])]
        prompt = "\n".join(p["text"] for p in parts if "text" in p)
        if self.server.one_answer and body.get("generationConfig", {}).get("candidateCount", 1) > 1:
            self.server.refused_n += 1
            return self._error(400, "Multiple candidates is not enabled for this model")
        attempt = self.server.record(body, {k.lower(): v for k, v in self.headers.items()}, prompt)
        if self._fault(prompt, attempt):
            return None
        if "[quota]" in prompt and attempt == 1:  # the wait in the body, as the Gemini API says it
            return self._json(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                              "message": "You exceeded your current quota. "
                                              "Please retry in 1.9s.", "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]}})
        if "[filtered]" in prompt:
            return self._json(200, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                    "usageMetadata": {"promptTokenCount": 10}})
        inline = [p.get("inlineData") or p.get("inline_data") for p in parts
                  if "inlineData" in p or "inline_data" in p]
        # the SDK may send URL-safe base64 without padding
        media = [(d.get("mimeType") or d.get("mime_type"),
                  base64.b64decode(d["data"] + "=" * (-len(d["data"]) % 4), altchars=b"-_"))
                 for d in inline]
        n = int(body.get("generationConfig", {}).get("candidateCount") or 1)
        texts = [answer_for(prompt, attempt, [b for m, b in media if m.startswith("image/")],
                            [b for m, b in media if m.startswith("audio/")],
                            sample=(attempt - 1) * n + k) for k in range(n)]
        limit = body.get("generationConfig", {}).get("maxOutputTokens") or 1 << 30
        cut = [self.server.thinking + len(t) // 4 > limit for t in texts]
        texts = ["" if c else t for t, c in zip(texts, cut, strict=True)]
        text = "".join(texts)
        self._json(200, {
            "candidates": [{"content": {"role": "model", "parts": [] if c else [{"text": t}]},
                            "finishReason": "MAX_TOKENS" if c else "STOP", "index": k}
                           for k, (t, c) in enumerate(zip(texts, cut, strict=True))],
            "usageMetadata": {"promptTokenCount": len(prompt) // 4,
                              "candidatesTokenCount": len(text) // 4,
                              "totalTokenCount": (len(prompt) + len(text)) // 4}})


def openai_server(**kw) -> _Server:
    return _Server(OpenAIFaults, **kw)


def gemini_server(**kw) -> _Server:
    return _Server(GeminiHandler, **kw)


def wav_seconds(b64_wav: str) -> float:
    import soundfile as sf

    info = sf.info(io.BytesIO(base64.b64decode(b64_wav)))
    return info.frames / info.samplerate
