"""Safe operations: one writer per run, systemic errors stop a stage without rejecting rows,
a stage is recorded only when complete, re-runs are no-ops or refusals, redo and reset."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import avcurate_cmd
from helpers import jsonl_recipe, read_stage, run, slow_recipe
from loopback import gemini_server, openai_server

from avcurate.core.lock import LOCK
from avcurate.models.errors import ModelError
from avcurate.models.request import Message, ModelRequest, TextPart
from avcurate.pipeline.recipe import StageSpec

KEY = "sk-test-0123456789"


def sh(*args, env=None):
    return subprocess.run(avcurate_cmd(*args), capture_output=True, text=True,
                          env=os.environ | (env or {}), timeout=300)


def _stages(run_dir: Path) -> list[str]:
    return [s["dir"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"]]


@pytest.fixture
def validated(tmp_path, media):
    """A run with 6 validated rows, two of them marked to answer prose instead of JSON."""
    records = [{"id": f"r{i}", "video": str(media["good"] if i % 2 else media["good2"]),
                "question": f"What is shown {i}?" + (" [nonjson]" if i >= 4 else ""),
                "options": ["red", "blue"], "answer": "AB"[i % 2]} for i in range(6)]
    run(jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")]), tmp_path / "run")
    return tmp_path / "run"


def _score(run_dir, url, *extra, media="none"):
    return ["score", str(run_dir), "--model", "judge", "--base-url", url, "--media", media,
            "-q", *extra]


# -- systemic errors abort, row errors reject ----------------------------------------------------

def test_auth_failure_stops_the_stage_and_the_fixed_command_succeeds(validated):
    """A server whose /models needs no key (some proxies): the first calls find the wrong
    key, and the executor stops the stage."""
    with openai_server(api_key=KEY, models_route_open=True) as server:
        bad = sh(*_score(validated, server.url + "/v1", "--concurrency", "2"),
                 env={"OPENAI_API_KEY": "wrong"})
        assert bad.returncode == 2 and "http_401" in bad.stderr and "Traceback" not in bad.stderr
        assert len([ln for ln in bad.stderr.splitlines() if ln.strip()]) == 1
        assert _stages(validated) == ["00-ingest", "01-validate"]  # not marked done
        assert not list((validated / "02-score").glob("rejects/part-*.parquet"))  # none rejected
        # a 401 is not retried and stops everything: no request starts after it, so only
        # those already in flight together (at most --concurrency 2) reached the server
        assert 1 <= len(server.requests) <= 2
        good = sh(*_score(validated, server.url + "/v1"), env={"OPENAI_API_KEY": KEY})
        assert good.returncode == 0, good.stderr
    kept, rej = read_stage(validated, "02")
    assert kept.num_rows == 4 and set(rej.column("reject_reason").to_pylist()) == {
        "judge_invalid_json"}  # bad answers still reject their own rows
    assert KEY not in (validated / "manifest.json").read_text()


def test_a_wrong_key_stops_before_the_stage_starts(validated):
    """vLLM with --api-key guards /models too: the check before the stage sees the 401."""
    with openai_server(api_key=KEY) as server:
        bad = sh(*_score(validated, server.url + "/v1"), env={"OPENAI_API_KEY": "wrong"})
        assert server.model_list_requests == 1 and server.requests == []  # no chat call
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert f"{server.url}/v1 refused the key (HTTP 401 for GET /models)" in bad.stderr
    assert "wrong" not in bad.stderr and not (validated / "02-score").exists()


def test_unknown_model_stops_the_stage(validated):
    with openai_server(models={"judge"}) as server:
        result = sh(*_score(validated, server.url + "/v1"), "--model", "jugde")
    assert result.returncode == 2 and "http_404" in result.stderr and "jugde" in result.stderr
    # the names it does serve (`vllm serve --served-model-name` names a model its own way)
    assert "; the server serves judge: give one as --model" in result.stderr, result.stderr
    assert _stages(validated) == ["00-ingest", "01-validate"]


def test_a_server_that_refuses_every_call_stops_a_small_stage_too(validated):
    """Frames sent to a text-only model: every call gets a 400. Above 20 calls the failure
    rate stops the stage; below, every row used to be rejected for the user's mistake.
    `--max-failure-rate 1` (never stop) rejects them, as asked."""
    with openai_server(text_only=True) as server:
        result = sh(*_score(validated, server.url + "/v1", media="frames+audio"))
        calls = len(server.requests)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "calls all failed (bad_request: " in result.stderr and "--media" in result.stderr, result.stderr
    assert "judge is not a multimodal model" in result.stderr
    assert "No row was rejected" in result.stderr
    assert 1 <= calls <= 6 and _stages(validated) == ["00-ingest", "01-validate"]
    with openai_server(text_only=True) as server:
        rejecting = sh(*_score(validated, server.url + "/v1", "--max-failure-rate", "1",
                               media="frames+audio"))
    assert rejecting.returncode == 0, rejecting.stderr
    kept, rejected = read_stage(validated, "02")
    assert kept.num_rows == 0 and rejected["reject_reason"].to_pylist() == ["model_error"] * 6
    assert "not a multimodal model" in rejected["reject_detail"][0].as_py()


def test_an_unfinished_stage_gives_way_to_the_stage_run_in_its_place(validated):
    """score stopped (every call refused), then dedup asked for instead: the unfinished
    02-score folder used to stay beside 02-dedup, listed as a second stage 02, and a reset
    of it by name removed 02-dedup too."""
    with openai_server(text_only=True) as server:
        stopped = sh(*_score(validated, server.url + "/v1", media="frames+audio"))
    assert stopped.returncode == 2 and (validated / "02-score/.fingerprint").is_file()
    other = sh("dedup", str(validated), "-q")
    assert other.returncode == 0, other.stderr
    assert "removed 02-score: an unfinished stage this run no longer makes at 02" in \
        " ".join(other.stderr.split())
    assert sorted(p.name for p in validated.glob("0*")) == ["00-ingest", "01-validate",
                                                           "02-dedup"]
    assert _stages(validated) == ["00-ingest", "01-validate", "02-dedup"]


@contextlib.contextmanager
def _silent_port() -> Iterator[int]:
    """A port of 127.0.0.1 that never completes a TCP handshake, as a firewalled address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)  # never accepted: once one connection fills the queue, SYNs are dropped
        with socket.create_connection(s.getsockname()):
            yield s.getsockname()[1]


def _failed_call(backend) -> ModelError:
    """The ModelError that one short request through `backend` raises."""
    async def call() -> ModelError:
        try:
            await backend.call(ModelRequest((Message("user", (TextPart("hi"),)),)))
        except ModelError as exc:
            return exc
        finally:
            await backend.aclose()
        raise AssertionError("the call succeeded")

    return asyncio.run(call())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_unreachable_endpoint_stops_before_the_stage_starts(validated):
    port = _closed_port()
    result = sh(*_score(validated, f"http://127.0.0.1:{port}/v1", "--max-attempts", "2"))
    assert result.returncode == 2 and result.stderr == (
        f"error: stage 'score': model 'judge': cannot reach http://127.0.0.1:{port}/v1 "
        "(Connection refused); is the server up and the URL right?\n")
    assert _stages(validated) == ["00-ingest", "01-validate"]
    assert not (validated / "02-score").exists()


@contextlib.contextmanager
def _routes_under_v1() -> Iterator[str]:
    """A server that, like vLLM, answers only under /v1: anything else is a JSON 404."""
    from http.server import ThreadingHTTPServer

    from avcurate.demo.server import JSONHandler

    class Handler(JSONHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/v1/"):
                return self._json(200, {"object": "list", "data": [{"id": "judge"}]})
            return self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_base_url_without_v1_is_named_with_the_url_to_use(validated):
    """`--base-url http://host:8000` for a vLLM server: its chat route is under /v1, so the
    first call's 404 stops the stage, and the line gives the URL with /v1."""
    with _routes_under_v1() as url:
        result = sh(*_score(validated, url))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"no chat route at {url}: OpenAI-compatible servers (vLLM, SGLang) answer under " \
           f"/v1, --base-url {url}/v1" in result.stderr
    assert _stages(validated) == ["00-ingest", "01-validate"]


def test_a_web_page_where_the_api_should_be_stops_the_stage_with_one_line(validated):
    """A base URL that leads to a web UI or a proxy's login page: every call got a 200 of
    HTML, and the stage ended with an AttributeError traceback."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        result = sh(*_score(validated, url))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert ("not_an_api: the server answered '<html><body>Sign in</body></html>', not a chat "
            f"completion in JSON; is {url} an OpenAI-compatible API") in line
    assert _stages(validated) == ["00-ingest", "01-validate"]


@pytest.mark.parametrize("route", ["/chat/completions", "/chat/completions/", "/completions"])
def test_a_base_url_that_names_the_chat_route_is_one_line_before_any_row(validated, route):
    """A URL pasted from a curl example (`.../v1/chat/completions`): the client adds the
    route again, and every call was a 404 at `/v1/chat/completions/chat/completions`."""
    with _routes_under_v1() as url:
        result = sh(*_score(validated, f"{url}/v1{route}"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: stage 'score': the base URL {url}/v1{route.rstrip('/')} ends in "
        f"{route.rstrip('/')}, which the client adds itself: give the server's root, {url}/v1"]
    assert _stages(validated) == ["00-ingest", "01-validate"]


def test_a_stage_command_asks_every_server_it_names_before_any_row(validated):
    """teach names two servers: a wrong audio URL stops the command before the visual
    teacher asks anything (it used to answer every row first, then stop at the audio)."""
    port = _closed_port()
    with openai_server() as visual:
        result = sh("teach", str(validated), "--visual-model", "v", "--visual-base-url",
                    visual.url + "/v1", "--audio-model", "a", "--audio-base-url",
                    f"http://127.0.0.1:{port}/v1", "-q")
        assert visual.requests == []
    assert result.returncode == 2 and result.stderr == (
        f"error: stage 'audio_teacher': model 'a': cannot reach http://127.0.0.1:{port}/v1 "
        "(Connection refused); is the server up and the URL right?\n")
    assert _stages(validated) == ["00-ingest", "01-validate"]
    assert not list(validated.glob("02-*"))


def test_a_later_stages_unreachable_server_is_a_warning_when_the_run_starts(tmp_path, media):
    """A recipe: validate, then score on a wrong port. The run is told at its start, not
    after validate (hours on a real dataset), and goes on, since a server may still be
    loading; score then stops it. With the server up, nothing is said."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(
        {"id": f"r{i}", "video": media["good"].name, "question": f"Q{i}?",
         "options": ["red", "blue"], "answer": "A"}) + "\n" for i in range(3)))
    port = _closed_port()
    path = tmp_path / "r.toml"
    path.write_text(f'[[sources]]\nname = "jsonl"\nannotations = "a.jsonl"\n'
                    f'media_root = "{media["root"]}"\n[[stages]]\nname = "validate"\n'
                    f'[[stages]]\nname = "score"\nmodel = "judge"\nmedia = "none"\n'
                    f'base_url = "http://127.0.0.1:{port}/v1"\n')
    result = sh("run", str(path), "--out", str(tmp_path / "run"), "-q")
    warning, error = result.stderr.splitlines()
    assert warning == (
        f"warning: stage 'score': model 'judge': cannot reach http://127.0.0.1:{port}/v1 "
        "(Connection refused); is the server up and the URL right? The run starts anyway (a "
        "server may still be loading) and stops at that stage if it is still unreachable "
        "then.")
    assert result.returncode == 2 and error.startswith("error: 02-score stopped"), error
    assert _stages(tmp_path / "run") == ["00-ingest", "01-validate"]  # it went on to score
    with openai_server() as server:
        path.write_text(path.read_text().replace(f"http://127.0.0.1:{port}/v1",
                                                 server.url + "/v1"))
        result = sh("run", str(path), "--out", str(tmp_path / "run2"), "-q")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_a_host_that_drops_connections_is_found_in_seconds(validated, backend):
    """A firewalled or wrong address never completes the TCP handshake: the check gives up
    after the connect timeout (5 s), not after --timeout (60 s here)."""
    with _silent_port() as port:
        start = time.perf_counter()
        if backend == "openai":
            result = sh(*_score(validated, f"http://127.0.0.1:{port}/v1", "--timeout", "60",
                                "--max-attempts", "1"))
        else:
            result = sh(*_gemini(validated, f"http://127.0.0.1:{port}", "--timeout", "60"),
                        env={"GEMINI_API_KEY": KEY})
    said = "no answer to the connection" if backend == "openai" else "no connection within 5 s"
    assert result.returncode == 2 and f"({said})" in result.stderr, result.stderr
    assert time.perf_counter() - start < 40
    assert not (validated / "02-score").exists()


def test_a_server_that_goes_away_is_named_for_what_happened():
    """Once a stage runs, its calls name a refused connection as one (the SDK's aiohttp
    transport calls every failure to connect "Request timed out."), and a silent host
    costs a call the connect timeout, not the whole --timeout."""
    from avcurate.models.openai_backend import OpenAIBackend

    def failure(url: str) -> ModelError:
        return _failed_call(OpenAIBackend("judge", url, timeout=60))

    port = _closed_port()
    refused = failure(f"http://127.0.0.1:{port}/v1")
    assert refused.kind == "connection" and refused.retryable
    assert str(refused).startswith(f"Cannot connect to host 127.0.0.1:{port}")
    with _silent_port() as port:
        start = time.perf_counter()
        silent = failure(f"http://127.0.0.1:{port}/v1")
    assert silent.kind == "timeout" and "Connection timeout to host" in str(silent)
    assert time.perf_counter() - start < 30


def test_a_late_answer_is_named_with_the_timeout(validated):
    with socket.socket() as s:  # accepts, reads, never answers (the check lets it through)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        result = sh(*_score(validated, f"http://127.0.0.1:{s.getsockname()[1]}/v1",
                            "--timeout", "1", "--max-attempts", "1"))
    # Which stops the stage depends on timing: the breaker once calls have failed after
    # their tries ("the first N calls all failed (... no answer within the 1 s timeout)"),
    # or the silent-port check once a wave of tries timed out ("the first N tries all got
    # no answer within the --timeout of 1 s"). The SDK's read timeout and answer_within's
    # deadline race too. Each line names the timeout.
    assert result.returncode == 2, result.stderr
    assert re.search(r"the first \d+ (calls all failed|tries all got no answer)",
                     result.stderr), result.stderr
    assert re.search(r"no answer within the (1 s timeout|--timeout of 1 s)", result.stderr)


def test_a_redo_that_cannot_run_asks_nothing_and_removes_nothing(validated):
    with openai_server() as server:
        assert sh(*_score(validated, server.url + "/v1")).returncode == 0
    sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q")
    before = _stages(validated)
    for url in (f"http://127.0.0.1:{_closed_port()}/v1", ""):  # a dead server; no key at all
        redo = subprocess.run(avcurate_cmd(*_score(validated, url), "--redo"), input="y\n",
                              capture_output=True, text=True, timeout=300,
                              env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"})
        assert redo.returncode == 2 and "removes" not in redo.stdout, redo.stdout
        assert ("cannot reach" if url else "OPENAI_API_KEY") in redo.stderr
        assert _stages(validated) == before


def _texts(body: dict) -> str:
    return " ".join(part["text"] for m in body["messages"] for part in
                    (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}])
                    if "text" in part)


def test_a_prompt_file_is_checked_before_any_call_then_used(validated, tmp_path):
    """A marker the stage does not fill would reach the model as written, and a prompt
    without the question has every row answered blind: both are the user's mistake."""
    from importlib import resources

    packaged = resources.files("avcurate.curation").joinpath("prompts", "score.md").read_text()
    (mine := tmp_path / "mine.md").write_text("House style 7.\n" + packaged)
    (typo := tmp_path / "typo.md").write_text(packaged.replace("{{question}}", "{{questoin}}"))
    (blind := tmp_path / "blind.md").write_text(packaged.replace("{{question}}", ""))
    (latin1 := tmp_path / "latin1.md").write_bytes("Qu\xe9 {{question}}".encode("latin-1"))
    wrong = {tmp_path / "nope.md": "does not exist",
             typo: "has {{questoin}}, which the stage does not fill; the stage fills "
                   "{{answer}}, {{options}}, {{question}}",
             blind: "never places the question ({{question}})",
             latin1: "cannot be read as UTF-8 text", tmp_path: "cannot be read as UTF-8 text"}
    with openai_server() as server:
        for path, why in wrong.items():
            bad = sh(*_score(validated, server.url + "/v1", "--prompt", str(path)))
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
            assert bad.stderr.startswith(f"error: stage 'score': prompt file {path} {why}")
        assert server.requests == [] and _stages(validated) == ["00-ingest", "01-validate"]
        good = sh(*_score(validated, server.url + "/v1", "--prompt", str(mine)))
        assert good.returncode == 0, good.stderr
        texts = [_texts(b) for b in server.requests]
    assert texts and all(t.startswith("House style 7.") for t in texts)
    assert {i for t in texts for i in range(6) if f"What is shown {i}?" in t} == set(range(6))
    assert all("{{" not in t for t in texts)
    assert sh(*_score(validated, server.url + "/v1", "--prompt", str(mine))).returncode == 0
    mine.write_text("House style 8.\n" + packaged)  # edited: the stage no longer matches it
    with openai_server() as server:
        stale = sh(*_score(validated, server.url + "/v1", "--prompt", str(mine)))
        assert stale.returncode == 2 and server.requests == []
        assert "02-score was done with other settings (score.prompt: the file's text changed " \
               "since the stage ran)" in stale.stderr
        redo = sh(*_score(validated, server.url + "/v1", "--prompt", str(mine), "--redo"))
        assert redo.returncode == 0 and server.requests, redo.stderr
        assert all(_texts(b).startswith("House style 8.") for b in server.requests)


def test_a_recipe_whose_prompt_file_was_edited_is_not_done(tmp_path, media):
    """A recipe names its prompt by path: the text is part of what a stage computes, so an
    edited file stops the run (it was taken as done), and --force recomputes that stage."""
    from importlib import resources

    from avcurate.pipeline.runner import RunError

    packaged = resources.files("avcurate.curation").joinpath("prompts", "score.md").read_text()
    (prompt := tmp_path / "rubric.md").write_text("Rubric A.\n" + packaged)
    records = [{"id": f"r{i}", "video": str(media["good"]), "question": f"What is shown {i}?",
                "options": ["red", "blue"], "answer": "A"} for i in range(3)]
    with openai_server() as server:
        recipe = jsonl_recipe(tmp_path, records, media["root"], [StageSpec("score", {
            "model": "judge", "base_url": server.url + "/v1", "media": "none",
            "prompt": str(prompt)})])
        run(recipe, tmp_path / "run")
        run(recipe, tmp_path / "run")  # unchanged: resumed, nothing asked again
        asked = len(server.requests)
        prompt.write_text("Rubric B.\n" + packaged)
        with pytest.raises(RunError, match=r"stage 01-score read a file whose text changed "
                                           r"since \(prompt of score\)"):
            run(recipe, tmp_path / "run")
        assert len(server.requests) == asked == 3
        run(recipe, tmp_path / "run", force=True)
        assert [_texts(b)[:9] for b in server.requests[3:]] == ["Rubric B."] * 3


def test_missing_gemini_key_stops_the_stage(validated):
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    result = subprocess.run(avcurate_cmd("score", str(validated), "--backend", "gemini",
                                         "--model", "gemini-2.5-pro", "--media", "none", "-q"),
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "GEMINI_API_KEY" in result.stderr
    assert _stages(validated) == ["00-ingest", "01-validate"]


def _gemini(run_dir, url, *extra):
    return ["score", str(run_dir), "--backend", "gemini", "--model", "gemini-x", "--base-url",
            url, "--media", "none", "-q", *extra]


def test_a_wrong_gemini_key_stops_before_the_stage_starts(validated):
    """Google answers a wrong key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID), not
    401: without the check before the stage, every row was rejected as `http_400`."""
    with gemini_server(api_key=KEY) as server:
        result = sh(*_gemini(validated, server.url), env={"GEMINI_API_KEY": "wrong-key-42"})
        calls = len(server.requests)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: stage 'score': model 'gemini-x': {server.url} "
                                    "refused the key (HTTP 400 API_KEY_INVALID")
    assert "GEMINI_API_KEY" in result.stderr and "wrong-key-42" not in result.stderr
    assert calls == 0 and server.model_list_requests == 1
    assert _stages(validated) == ["00-ingest", "01-validate"]
    with gemini_server(api_key=KEY) as server:  # the right key: the same command runs
        assert sh(*_gemini(validated, server.url), env={"GEMINI_API_KEY": KEY}).returncode == 0
    kept, rejected = read_stage(validated, "02")
    assert kept.num_rows == 4 and rejected["reject_reason"].to_pylist() == ["judge_invalid_json"] * 2


def test_a_wrong_gemini_key_met_by_a_call_stops_the_stage(monkeypatch):
    """Where the check could not ask (a proxy without the model list), the first call's
    API_KEY_INVALID is systemic: the stage stops instead of rejecting the row."""
    from avcurate.models.gemini_backend import GeminiBackend

    monkeypatch.setenv("GEMINI_API_KEY", "wrong")
    with gemini_server(api_key=KEY) as server:
        error = _failed_call(GeminiBackend("gemini-x", server.url))
    assert error.systemic and not error.retryable and error.kind == "api_key_invalid"


def test_an_unreachable_gemini_server_stops_before_the_stage_and_a_redo_removes_nothing(
        validated):
    port = _closed_port()
    result = sh(*_gemini(validated, f"http://127.0.0.1:{port}"), env={"GEMINI_API_KEY": KEY})
    assert result.returncode == 2 and result.stderr == (
        f"error: stage 'score': model 'gemini-x': cannot reach http://127.0.0.1:{port} "
        "(Connection refused); is the server up and the URL right?\n")
    assert _stages(validated) == ["00-ingest", "01-validate"]
    with gemini_server() as server:
        assert sh(*_gemini(validated, server.url), env={"GEMINI_API_KEY": KEY}).returncode == 0
    sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q")
    before = _stages(validated)
    redo = subprocess.run(avcurate_cmd(*_gemini(validated, f"http://127.0.0.1:{port}"),
                                       "--redo"), input="y\n", capture_output=True, text=True,
                          timeout=300, env=os.environ | {"GEMINI_API_KEY": KEY})
    assert redo.returncode == 2 and "removes" not in redo.stdout, redo.stdout
    assert "cannot reach" in redo.stderr and _stages(validated) == before


def test_behind_a_proxy_the_gemini_check_leaves_the_route_to_the_proxy(validated):
    """With HTTP_PROXY set, the client connects to the proxy, not to the host: a direct
    connection to a name only the proxy resolves must not stop the command."""
    with gemini_server(api_key=KEY) as proxy:  # answers absolute-URI requests as a proxy
        result = sh(*_gemini(validated, "http://gemini.invalid"),
                    env={"GEMINI_API_KEY": KEY, "HTTP_PROXY": proxy.url, "http_proxy": proxy.url,
                         "NO_PROXY": "", "no_proxy": ""})
        asked = proxy.model_list_requests, len(proxy.requests)
    assert result.returncode == 0, result.stderr
    assert asked[0] == 1 and asked[1] >= 6
    assert _stages(validated)[-1] == "02-score"


def test_gemini_connection_errors_are_retried_by_the_stage_only(validated):
    """google-genai, left to itself, sleeps 1-10 s and connects again after each connection
    error; --max-attempts is the only retry budget, so one try is one connection."""
    accepted, ended = [], threading.Event()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.settimeout(0.2)

        def hang_up() -> None:
            """Accept and close each connection, until the command has ended and none is
            left waiting (on a busy machine the last ones are accepted after it ends)."""
            while True:
                try:
                    conn, _ = s.accept()
                except TimeoutError:
                    if ended.is_set():
                        return
                    continue
                accepted.append(1)
                conn.close()

        server = threading.Thread(target=hang_up, daemon=True)
        server.start()
        result = sh("score", str(validated), "--backend", "gemini", "--model", "gemini-x",
                    "--base-url", f"http://127.0.0.1:{s.getsockname()[1]}", "--media", "none",
                    "--max-attempts", "1", "-q", env={"GEMINI_API_KEY": KEY})
        ended.set()
        server.join(10)
    assert result.returncode == 2 and "calls all failed (connection:" in result.stderr
    # the stage stops after 5 failed calls, or sooner when a shard ends with all its calls
    # failed; the calls still waiting are dropped, some before they connect
    failed = int(re.search(r"the first (\d+) calls all failed", result.stderr)[1])
    # the check before the stage opens two (the TCP probe, the model list, which the hang-up
    # leaves undecided); then one connection per failed call, at most one per row
    assert failed + 2 <= len(accepted) <= 6 + 2
    assert _stages(validated) == ["00-ingest", "01-validate"]


def test_a_port_that_takes_connections_and_never_answers_stops_the_stage_after_one_wave(
        validated):
    """Something holds the port and never replies (or the server is still loading). Each
    call used to wait out its --timeout on each of its --max-attempts before the breaker
    counted it: 8 minutes at the defaults. Now the first wave of tries that all time out
    before anything answered stops the stage, rows untouched, with one line."""
    connections: list[socket.socket] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.settimeout(0.2)
        ended = threading.Event()

        def hold() -> None:
            """Accept every connection and never write a byte."""
            while not ended.is_set():
                with contextlib.suppress(TimeoutError):
                    connections.append(s.accept()[0])

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        try:
            result = sh(*_score(validated, f"http://127.0.0.1:{s.getsockname()[1]}/v1",
                                "--timeout", "1", "--max-attempts", "4",
                                "--concurrency", "3"), env={"OPENAI_API_KEY": KEY})
        finally:
            ended.set()
            holder.join(10)
            for conn in connections:
                conn.close()
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "error: 02-score stopped (openai:judge: the first 3 tries all got no answer within "
        "the --timeout of 1 s; is it the server's port, and is the server done loading? "
        "Raise --timeout if its answers take longer)"), line
    assert "No row was rejected for it" in line, line
    # the check before the stage (its GET /models waits out its own 5 s), one wave of 3
    # tries, and the next rows' first tries, which take a slot as a timed-out try leaves
    # it; before, the first 3 calls made all 4 of their tries (25 connections here)
    assert len(connections) <= 1 + 3 + 3
    assert _stages(validated) == ["00-ingest", "01-validate"]


def test_failure_rate_breaker(tmp_path, media):
    records = [{"id": f"r{i}", "video": str(media["good"]), "question": f"Q {i}?"
                + (" [down]" if i % 3 else ""), "options": ["a", "b"], "answer": "A"}
               for i in range(40)]
    run(jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")], shard_size=40),
        tmp_path / "run")
    with openai_server() as server:
        result = sh(*_score(tmp_path / "run", server.url + "/v1", "--max-attempts", "1",
                            "--concurrency", "1"))
        assert result.returncode == 2 and "--max-failure-rate 0.5" in result.stderr
        tolerant = sh(*_score(tmp_path / "run", server.url + "/v1", "--max-attempts", "1",
                              "--concurrency", "1", "--max-failure-rate", "0.9", "--no-cache"))
    assert tolerant.returncode == 0, tolerant.stderr
    kept, rej = read_stage(tmp_path / "run", "02")
    assert kept.num_rows == 14 and rej.num_rows == 26
    assert set(rej.column("reject_reason").to_pylist()) == {"model_error"}


def test_a_server_that_goes_down_mid_stage_stops_it_instead_of_rejecting_the_rest(tmp_path,
                                                                                  media):
    """30 rows answered, then every call fails: 18 failures of 48 calls stay under the
    failure rate, so every remaining row used to be rejected as `model_error` and the stage
    recorded done. Five failures in a row stop it; the same command finishes it later."""
    records = [{"id": f"r{i}", "video": str(media["good"]), "question": f"Q {i}?",
                "options": ["a", "b"], "answer": "A"} for i in range(48)]
    run(jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")], shard_size=4),
        tmp_path / "run")
    with openai_server() as server:
        server.down_after = 30
        result = sh(*_score(tmp_path / "run", server.url + "/v1", "--max-attempts", "1",
                            "--concurrency", "4"))
        assert result.returncode == 2 and "the last 5 calls all failed (http_503" in result.stderr
        assert _stages(tmp_path / "run") == ["00-ingest", "01-validate"]
        server.down_after = None
        again = sh(*_score(tmp_path / "run", server.url + "/v1", "--max-attempts", "1"))
    assert again.returncode == 0, again.stderr
    kept, rejected = read_stage(tmp_path / "run", "02")
    # the failed calls of shards that finished before the stop stay rejected (`--redo` asks
    # them again, the others from the cache): 2 in most runs, 6 at most in 15, never all 18
    # (the fifth failure in a row stops its own shard)
    assert kept.num_rows + rejected.num_rows == 48 and rejected.num_rows < 18


# -- a stage is recorded once; re-runs are no-ops or refusals; redo; reset -------------------------

def test_rerun_is_a_no_op_refuses_other_settings_and_redo_reuses_the_cache(validated):
    with openai_server() as server:
        assert sh(*_score(validated, server.url + "/v1")).returncode == 0
        sent = len(server.requests)
        again = sh(*_score(validated, server.url + "/v1", "--timeout", "30", "--concurrency", "2"))
        assert again.returncode == 0 and "already done" in again.stdout
        other = sh(*_score(validated, server.url + "/v1", "--frames", "4", "--media",
                           "frames+audio"))
        assert other.returncode == 2
        assert "score.media: 'none' -> 'frames+audio'" in other.stderr and "--redo" in other.stderr
        assert _stages(validated) == ["00-ingest", "01-validate", "02-score"]
        # a redo this machine cannot run (no key for the backend) removes nothing
        keyless = {"GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""}
        cannot = sh(*_score(validated, server.url + "/v1", "--backend", "gemini", "--redo"),
                    env=keyless)
        assert cannot.returncode == 2 and "GEMINI_API_KEY" in cannot.stderr, cannot.stderr
        assert _stages(validated) == ["00-ingest", "01-validate", "02-score"]
        redo = sh(*_score(validated, server.url + "/v1", "--redo"))
        assert redo.returncode == 0, redo.stderr
        # the valid answers come from the cache; only the rows whose answers were invalid ask again
        assert len(server.requests) - sent == 2 * 3
    manifest = json.loads((validated / "manifest.json").read_text())
    assert [s["dir"] for s in manifest["stages"]] == ["00-ingest", "01-validate", "02-score"]
    assert manifest["stages"][2]["usage"]["cached"] == 4


def test_a_new_run_goes_into_a_new_or_empty_folder(tmp_path, media):
    """Stage folders, a cache and a manifest among a user's own files would mix the two."""
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"id": "r0", "video": str(media["good"]), "question": "Q?",
                               "options": ["a", "b"], "answer": "A"}) + "\n")
    theirs = tmp_path / "datasets"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    ingest = ("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
              str(media["root"]), "--out", str(theirs), "-q")
    refused = sh(*ingest)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: --out {theirs} is not empty (notes.txt) and is not an avcurate run (no "
        "manifest.json); choose a new or empty folder\n")
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    (theirs / "notes.txt").unlink()
    (theirs / LOCK).touch()  # all a run stopped before its manifest was written leaves
    assert sh(*ingest).returncode == 0
    assert _stages(theirs) == ["00-ingest"]
    assert sh(*ingest).returncode == 0  # a run folder is resumed as before
    assert _stages(theirs) == ["00-ingest"]


def test_a_failed_option_never_wedges_the_run(validated):
    bad = sh("balance", str(validated), "--max-ratio", "nan")
    assert bad.returncode == 2
    sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q")
    ok = sh("threshold", str(validated), "--rule", "duration_s >= 2", "--redo", "-q")
    assert ok.returncode == 0, ok.stderr
    assert _stages(validated) == ["00-ingest", "01-validate", "02-threshold"]
    assert json.loads((validated / "manifest.json").read_text())["stages"][2]["spec"] == {
        "rules": ["duration_s >= 2"]}


def test_a_redo_names_the_later_stages_it_removes_and_asks_first(validated):
    sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q")
    sh("dedup", str(validated), "-q")
    redo = ["threshold", str(validated), "--rule", "duration_s >= 2", "--redo", "-q"]
    for answer in ("n\n", ""):  # no, and no terminal to ask (a script): nothing is removed
        asked = subprocess.run(avcurate_cmd(*redo), input=answer, capture_output=True,
                               text=True, timeout=300)
        assert asked.returncode == 1
        assert "removes 02-threshold and the 1 later stage(s) made from it: 03-dedup" in \
            " ".join(asked.stdout.split())
        assert _stages(validated) == ["00-ingest", "01-validate", "02-threshold", "03-dedup"]
    done = sh(*redo, "--yes")
    assert done.returncode == 0, done.stderr
    assert _stages(validated) == ["00-ingest", "01-validate", "02-threshold"]
    assert json.loads((validated / "manifest.json").read_text())["stages"][2]["spec"] == {
        "rules": ["duration_s >= 2"]}


def test_a_forced_ingest_names_the_stages_it_drops_and_asks_first(validated, media):
    """`ingest --force` into a run redoes ingest and makes no later stage again."""
    ingest = ["ingest", "--source", "jsonl", "--annotations", str(validated.parent / "ann.jsonl"),
              "--media-root", str(media["root"]), "--out", str(validated), "--shard-size", "2",
              "--force", "-q"]
    asked = subprocess.run(avcurate_cmd(*ingest), input="", capture_output=True, text=True,
                           timeout=300)
    assert asked.returncode == 1
    assert "removes the 1 later stage(s) this recipe does not make again: 01-validate" in \
        " ".join(asked.stdout.split())
    assert _stages(validated) == ["00-ingest", "01-validate"]
    done = sh(*ingest, "--yes")
    assert done.returncode == 0, done.stderr
    assert _stages(validated) == ["00-ingest"]


def test_a_dry_run_of_a_recipe_checks_it_and_plans_each_stage_without_running_any(
        tmp_path, media):
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"id": f"r{i}", "video": str(media["good"]),
                                       "question": f"Q{i}?", "options": ["x", "y"],
                                       "answer": "A"}) + "\n" for i in range(9)))

    def recipe(name: str, score: str = "") -> Path:
        path = tmp_path / name
        path.write_text(f'[run]\nshard_size = 4\n[[sources]]\nname = "jsonl"\n'
                        f'annotations = "{ann}"\nmedia_root = "{media["root"]}"\n'
                        '[[stages]]\nname = "validate"\n' + score)
        return path

    run_dir = tmp_path / "run"
    with openai_server() as server:
        url = f'base_url = "{server.url}/v1"\n'
        full = recipe("full.toml", f'[[stages]]\nname = "score"\nmodel = "judge"\n{url}'
                                   'media = "none"\n')
        fresh = sh("run", str(full), "--out", str(run_dir), "--dry-run")
        assert fresh.returncode == 0, fresh.stderr
        plan = " ".join(fresh.stdout.split())
        for row in ("00-ingest │ runs", "01-validate │ runs", "02-score │ runs │ openai:judge"):
            assert row in plan, plan
        assert not run_dir.exists()
        assert sh("run", str(recipe("head.toml")), "--out", str(run_dir), "-q").returncode == 0
        manifest = (run_dir / "manifest.json").read_bytes()
        planned = sh("run", str(full), "--out", str(run_dir), "--dry-run")
        assert planned.returncode == 0, planned.stderr
        plan = " ".join(planned.stdout.split())
        assert "00-ingest │ done │ kept 9" in plan and "01-validate │ done │ kept 9" in plan
        assert "score with openai:judge on 9 rows 9 calls to make" in plan, plan
        assert "Nothing was run" in plan
        assert not server.requests and (run_dir / "manifest.json").read_bytes() == manifest
        other = tmp_path / "other.toml"  # validate with other settings than the run's
        other.write_text(full.read_text().replace('"validate"\n', '"validate"\nmin_duration_s = 3.0\n'))
        refused = sh("run", str(other), "--out", str(run_dir), "--dry-run")
        assert refused.returncode == 2, refused.stderr
        assert "01-validate was made with other options (validate.min_duration_s: 1.0 -> 3.0)" \
            in " ".join(refused.stderr.split()), refused.stderr
        keyless = tmp_path / "keyless.toml"  # OpenAI's own API, and no key
        keyless.write_text(full.read_text().replace(url, ""))
        stopped = sh("run", str(keyless), "--out", str(run_dir), "--dry-run",
                     env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
        assert stopped.returncode == 2 and "set OPENAI_API_KEY" in stopped.stderr


@pytest.mark.parametrize("stage", ["threshold", "subset"])
def test_a_rule_on_a_text_column_is_one_line_and_a_redo_with_it_removes_nothing(validated,
                                                                              stage):
    """`question > 1` compares text with a number: found when the recipe is planned, not by
    pyarrow in the first shard (a traceback, after --redo had removed the later stages)."""
    assert sh(stage, str(validated), "--rule", "duration_s >= 0", "-q").returncode == 0
    sh("dedup", str(validated), "-q")
    before = _stages(validated)
    for extra in ((), ("--redo", "--yes")):
        result = sh(stage, str(validated), "--rule", "duration_s >= 1 and question > 1", "-q",
                    *extra)
        assert result.returncode == 2 and result.stderr == (
            f"error: stage '{stage}': rule column 'question' holds string, not numbers; "
            "rules compare number columns (scores, duration_s)\n"), result.stderr
        assert _stages(validated) == before


def test_append_adds_a_stage_done_earlier_after_the_last_one_once(validated):
    """A stage command names the run's stage of that name: another validate after dedup was
    refused as "done with other settings", and --redo would have removed dedup. --append
    adds it at the end; the same command again finds it done."""
    assert sh("dedup", str(validated), "-q").returncode == 0
    same = sh("validate", str(validated), "-q")
    assert same.returncode == 0 and "01-validate already done with these settings; nothing " \
        "to do (--redo runs it again; --append adds another after the run's last stage)" in \
        " ".join(same.stdout.split())
    later = ("validate", str(validated), "--max-duration", "100", "-q")
    refused = sh(*later)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "01-validate was done with other settings" in refused.stderr
    assert "to add another after the run's last stage: the same command with --append" in \
        refused.stderr
    appended = sh(*later, "--append")
    assert appended.returncode == 0, appended.stderr
    assert _stages(validated) == ["00-ingest", "01-validate", "02-dedup", "03-validate"]
    again = sh(*later, "--append")
    assert again.returncode == 0 and "03-validate already done" in again.stdout
    assert _stages(validated) == ["00-ingest", "01-validate", "02-dedup", "03-validate"]
    other = sh("validate", str(validated), "--max-duration", "50", "--append", "-q")
    assert other.returncode == 2 and "03-validate was done with other settings" in other.stderr
    assert "with --append" not in other.stderr  # it is the run's last stage: no other place
    both = sh(*later, "--append", "--redo")
    assert both.returncode == 2 and "does not go with --redo" in both.stderr
    assert _stages(validated) == ["00-ingest", "01-validate", "02-dedup", "03-validate"]


def test_reset_lists_and_removes_later_stages(validated):
    sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q")
    sh("dedup", str(validated), "-q")
    ingest = sh("reset", str(validated), "--from", "ingest", "--yes")
    assert ingest.returncode == 2 and ingest.stdout == ""  # no list of what it would remove
    assert ingest.stderr == "error: ingest cannot be reset; start a new run folder instead\n"
    result = sh("reset", str(validated), "--from", "threshold", "--yes")
    assert result.returncode == 0, result.stderr
    assert "02-threshold, 03-dedup" in result.stdout
    assert _stages(validated) == ["00-ingest", "01-validate"]
    assert not (validated / "02-threshold").exists() and not (validated / "03-dedup").exists()
    assert (validated / "cache").is_dir()
    assert sh("reset", str(validated), "--from", "ingest", "--yes").returncode == 2
    assert sh("reset", str(validated), "--from", "balance", "--yes").returncode == 2



def test_reset_by_a_name_two_stages_share_lists_those_two(tmp_path, media):
    records = [{"id": "a", "video": str(media["good"]), "question": "Q?", "options": ["x", "y"],
                "answer": "A"}]
    rule = {"rules": ["duration_s >= 1"]}
    run(jsonl_recipe(tmp_path, records, media["root"], [
        StageSpec("validate"), StageSpec("threshold", rule), StageSpec("dedup"),
        StageSpec("threshold", rule)]), tmp_path / "run")
    twice = sh("reset", str(tmp_path / "run"), "--from", "threshold", "--yes")
    assert twice.returncode == 2 and twice.stderr == (
        "error: 'threshold' names several stages (02-threshold, 04-threshold); give the "
        "folder\n")  # it listed every stage of the run
    assert _stages(tmp_path / "run")[-1] == "04-threshold"


def test_reset_and_stages_never_touch_a_users_folder_named_like_a_stage(validated):
    """Only folders avcurate made (marked, or recorded in the manifest) are stage folders:
    a user's `05-notes` survives reset, and a user's `02-threshold` stops the stage that
    would have replaced it with one line instead of being deleted."""
    notes = validated / "05-notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    theirs = validated / "02-threshold"
    theirs.mkdir()
    (theirs / "mine.txt").write_text("mine too")
    blocked = sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q")
    assert blocked.returncode == 2
    [line] = blocked.stderr.strip().splitlines()
    assert "02-threshold is in the way: a folder avcurate did not make" in line
    assert (theirs / "mine.txt").read_text() == "mine too"
    assert _stages(validated) == ["00-ingest", "01-validate"]
    (theirs / "mine.txt").rename(validated / "mine.txt")  # moved out: an empty folder is reused
    assert sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q").returncode == 0
    status = sh("status", str(validated)).stdout
    assert "05-notes" not in status
    result = sh("reset", str(validated), "--from", "1", "--yes")
    assert result.returncode == 0 and "removes: 01-validate, 02-threshold" in result.stdout
    assert (notes / "todo.txt").read_text() == "keep me"
    assert sh("reset", str(validated), "--from", "5", "--yes").returncode == 2

# -- one writer per run folder ---------------------------------------------------------------------

def test_second_writer_is_refused_readers_are_not_and_kill_9_frees_the_lock(tmp_path, media,
                                                                          plugin_path):
    # 10 shards of 0.8 s: the three CLI calls below fit inside even on a slow machine
    recipe = slow_recipe(tmp_path, media, n=30, clips=["good", "good2"], seconds=0.8)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(avcurate_cmd("run", str(recipe), "--out", str(run_dir), "-q"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list((run_dir / "02-slow").glob("part-*.parquet")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    second = sh("threshold", str(run_dir), "--rule", "duration_s >= 1")
    assert second.returncode == 2
    assert f"in use by PID {proc.pid}" in second.stderr and "avcurate run" in second.stderr
    again = sh("run", str(recipe), "--out", str(run_dir), "-q")
    assert again.returncode == 2 and "in use" in again.stderr
    manifest = (run_dir / "manifest.json").read_bytes()
    workers = sh("validate", str(run_dir), "--append", "--workers", "3")
    assert workers.returncode == 2 and "in use" in workers.stderr
    # --workers was written into the manifest before the lock was asked for
    assert (run_dir / "manifest.json").read_bytes() == manifest
    status = sh("status", str(run_dir), "--json")  # readers never block
    assert status.returncode == 0
    assert {"stage": "02-slow", "status": "incomplete"}.items() <= json.loads(
        status.stdout)["stages"][2].items()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = sh("run", str(recipe), "--out", str(run_dir), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert _stages(run_dir) == ["00-ingest", "01-validate", "02-slow"]
    assert sh("validate", str(run_dir), "--append", "--workers", "3", "-q").returncode == 0
    assert json.loads((run_dir / "manifest.json").read_text())["recipe"]["run"]["workers"] == 3


def _worker_pool_of(proc: subprocess.Popen) -> list:
    """The processes under a run of the demo recipe once its validate stage's probe pool
    is up (the pool's server and workers)."""
    import psutil

    parent = psutil.Process(proc.pid)
    deadline = time.time() + 60
    workers: list[psutil.Process] = []
    while len(workers) < 2:
        assert proc.poll() is None and time.time() < deadline, "no worker pool seen"
        workers = parent.children(recursive=True)
        time.sleep(0.02)
    return workers


def test_a_dead_process_not_yet_reaped_is_not_alive():
    """A zombie holds no lock, no lease and no worker's output: it is dead."""
    from avcurate.core.lock import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline
        time.sleep(0.01)
    assert not pid_alive(child.pid) and pid_alive(os.getpid())
    child.wait()
    assert not pid_alive(child.pid)


def test_decode_workers_exit_when_their_parent_is_killed(tmp_path):
    """Even when the killed process is not reaped yet: its parent here reads the output to
    the end before it reaps it (as `subprocess.run(capture_output=True)` does), and the
    workers holding that output must not take the zombie for a live parent and wait."""
    import psutil

    from avcurate.demo import make_demo

    recipe = make_demo(tmp_path / "demo")
    env = os.environ | {"AVCURATE_DEMO_BASE_URL": "http://127.0.0.1:9/v1"}  # never reached
    proc = subprocess.Popen(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run"), "-q"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    workers = _worker_pool_of(proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"orphans still running: {[p.pid for p in alive]}"


def _sigint_held_or_ignored(pid: int) -> bool:
    """From /proc: SIGINT (bit 1 of the masks) is blocked or ignored by process `pid`."""
    fields = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if line.startswith(("SigBlk", "SigIgn")))
    return any(int(mask, 16) & 1 << (signal.SIGINT - 1) for mask in fields.values())


def _stopped_with_one_line(proc: subprocess.Popen, workers: list, run_dir: Path, code: int,
                           by: str) -> None:
    """The demo recipe's run, stopped in its validate stage: one line, no process left,
    validate not recorded as done."""
    import psutil

    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code
    assert f"stopped by {by}" in stderr and "the same command again" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"still running: {[p.pid for p in alive]}"
    status = sh("status", str(run_dir), "--json")
    assert [s["status"] for s in json.loads(status.stdout)["stages"]][:2] == ["done", "incomplete"]


def test_ctrl_c_stops_every_process_of_the_command_with_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the run's process and its decode workers at once."""

    from avcurate.demo import make_demo

    recipe = make_demo(tmp_path / "demo")
    env = os.environ | {"AVCURATE_DEMO_BASE_URL": "http://127.0.0.1:9/v1"}  # never reached
    proc = subprocess.Popen(  # its own process group, as a terminal's foreground job
        avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run")), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even under nohup
    workers = _worker_pool_of(proc)
    for child in workers:  # none can take a Ctrl-C itself, not even while it starts
        assert _sigint_held_or_ignored(child.pid), child.cmdline()
    os.killpg(proc.pid, signal.SIGINT)
    _stopped_with_one_line(proc, workers, tmp_path / "run", 130, "Ctrl-C")


def test_sigterm_stops_the_command_as_ctrl_c_does(tmp_path):
    """`kill PID`, a batch scheduler's time limit, `docker stop`: SIGTERM reaches the run's
    process alone. It stops as on Ctrl-C, with its one line and its clean-up."""
    from avcurate.demo import make_demo

    recipe = make_demo(tmp_path / "demo")
    env = os.environ | {"AVCURATE_DEMO_BASE_URL": "http://127.0.0.1:9/v1"}  # never reached
    cmd = avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    workers = _worker_pool_of(proc)
    proc.send_signal(signal.SIGTERM)
    _stopped_with_one_line(proc, workers, tmp_path / "run", 128 + signal.SIGTERM, "SIGTERM")


def test_a_child_forked_while_interrupts_are_held_ends_on_sigterm():
    """Ingest forks its workers while Ctrl-C and SIGTERM are held; a worker inherits the
    handler that holds them, and must still end on SIGTERM (a broken pool's clean-up sends
    it), not keep it for a parent it is not."""
    from avcurate.stages.context import interrupts_held

    before = signal.signal(signal.SIGTERM, lambda n, f: None)  # as the command line's own
    try:
        with interrupts_held():
            child = os.fork()
            if child == 0:  # pragma: no cover (the child)
                time.sleep(10)
                os._exit(0)
    finally:
        signal.signal(signal.SIGTERM, before)
    time.sleep(0.2)
    os.kill(child, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_atomic_writes_leave_the_old_file_or_the_new_one_never_half(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avcurate.core import store

    target = tmp_path / "deep" / "part-00000.parquet"
    store.write_parquet_atomic(pa.table({"id": ["a", "b"]}), target)
    assert pq.read_table(target).column("id").to_pylist() == ["a", "b"]

    def disk_full(table, sink):  # half the bytes reach the disk, then the write fails
        sink.write(b"PAR1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.write_parquet_atomic(pa.table({"id": ["c"]}), target)
    assert pq.read_table(target).column("id").to_pylist() == ["a", "b"]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left
    monkeypatch.undo()

    store.write_parquet_atomic(pa.table({"id": pa.array([], pa.string())}), target)
    assert pq.read_table(target).num_rows == 0
    store.atomic_write_bytes(tmp_path / "m.json", b"{}")
    assert (tmp_path / "m.json").read_bytes() == b"{}"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o007, 0o660)])
def test_written_files_follow_the_umask_like_any_other_tool(tmp_path, umask, mode):
    """A team reading a run or an export on a shared filesystem: files avcurate writes get
    the mode the umask gives (tempfile.mkstemp made every shard and manifest 0600)."""
    import pyarrow as pa

    from avcurate.core import store

    old = os.umask(umask)
    try:
        store.write_parquet_atomic(pa.table({"id": ["a"]}), tmp_path / "part-00000.parquet")
        store.atomic_write_bytes(tmp_path / "manifest.json", b"{}")
    finally:
        os.umask(old)
    for name in ("part-00000.parquet", "manifest.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize("damage", [b'{"format": 1, "stages": [', b"[1, 2]", b'{"stages": [{}]}',
                                    b"\xff\xfe\x00"])
def test_a_damaged_manifest_is_one_line_for_every_command(validated, damage):
    """avcurate writes manifest.json whole, so a damaged one was changed outside it (a
    partial copy, an editor): every command that reads it says so in one line, exit 2,
    and changes nothing."""
    (validated / "manifest.json").write_bytes(damage)
    before = sorted(p.relative_to(validated) for p in validated.rglob("*"))
    for args in (["status", str(validated)], ["validate", str(validated), "-q"],
                 ["reset", str(validated), "--from", "1", "--yes"],
                 ["stats", str(validated)], ["query", str(validated), "SELECT 1"],
                 ["export", str(validated), "--out", str(validated.parent / "export")]):
        done = sh(*args)
        assert done.returncode == 2, (args, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert "manifest.json is not" in line and "changed outside avcurate" in line, line
    assert sorted(p.relative_to(validated) for p in validated.rglob("*")) == before
    assert (validated / "manifest.json").read_bytes() == damage


def test_a_damaged_shard_is_named_in_one_line_with_the_stage_to_redo(validated):
    """A shard cut short outside avcurate (a partial copy) makes every reader fail inside
    Arrow or DuckDB; the command names the file and the stage to redo instead of a
    traceback, and redoing that stage as told mends the run."""
    assert sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q").returncode == 0
    shard = validated / "02-threshold" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:40])
    for args in (["status", str(validated)], ["stats", str(validated)],
                 ["query", str(validated), "SELECT count(*) FROM samples"],
                 ["export", str(validated), "--out", str(validated.parent / "export")],
                 ["dedup", str(validated), "-q"]):
        done = sh(*args)
        assert done.returncode == 2, (args, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert f"{shard} cannot be read as Parquet" in line, (args, line)
        assert f"avcurate reset {validated} --from 02-threshold" in line, (args, line)
    assert sh("reset", str(validated), "--from", "02-threshold", "--yes").returncode == 0
    assert sh("threshold", str(validated), "--rule", "duration_s >= 1", "-q").returncode == 0
    assert sh("status", str(validated)).returncode == 0


def test_a_damaged_cache_is_named_in_one_line_and_moving_it_aside_recovers(validated):
    """A cache file cut short or overwritten outside avcurate: the stage stops before it
    rejects a row, the line names the file, and without it the same command succeeds."""
    with openai_server() as server:
        assert sh(*_score(validated, server.url + "/v1")).returncode == 0
        responses = validated / "cache" / "responses.sqlite"
        responses.write_bytes(responses.read_bytes()[:3000])  # a partial copy
        (validated / "cache" / "probe.sqlite").write_bytes(b"not SQLite at all\n" * 64)
        for stage, file, done in (
                (["validate", str(validated)], "probe.sqlite", ["00-ingest"]),
                (_score(validated, server.url + "/v1"), "responses.sqlite",
                 ["00-ingest", "01-validate"])):
            stopped = sh(*stage, "--redo", "-y", "-q")
            assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
            [line] = stopped.stderr.strip().splitlines()
            assert f"cache/{file} is damaged" in line and "Move it aside" in line, line
            assert _stages(validated) == done  # stopped: not recorded, no row rejected
            (validated / "cache" / file).rename(validated / f"{file}.damaged")
            again = sh(*stage, "-q")
            assert again.returncode == 0, again.stderr
    status = json.loads(sh("status", str(validated), "--json").stdout)["stages"]
    assert [(s["stage"], s["status"]) for s in status] == [
        ("00-ingest", "done"), ("01-validate", "done"), ("02-score", "done")]
    assert status[2]["rows_in"] == status[2]["kept"] + status[2]["rejected"] == 6


@pytest.mark.parametrize("sent, room", [("none", "16k"), ("none", "48k"),
                                        ("frames+audio", "64k"), ("frames+audio", "160k")])
def test_a_full_disk_under_the_caches_rejects_no_row_and_the_command_resumes(
        validated, small_disk, sent, room):
    """The run's caches (SQLite files for responses and media digests, decoded frames and
    audio) on a disk that fills up. SQLite's own error once ended the command in a
    traceback, and the digest cache's error rejected every row as missing_media."""
    import shutil

    shutil.rmtree(validated / "cache")  # a cache: dropping it loses nothing
    (validated / "cache").symlink_to(small_disk.path, target_is_directory=True)
    small_disk.resize(room)
    with openai_server() as server:
        full = sh(*_score(validated, server.url + "/v1", media=sent))
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
        [line] = full.stderr.strip().splitlines()
        assert line.startswith(f"error: No space left on device: {validated / 'cache'}/"), line
        assert _stages(validated) == ["00-ingest", "01-validate"]
        assert not list((validated / "02-score").glob("rejects/part-*.parquet"))  # none rejected
        small_disk.resize("64m")
        done = sh(*_score(validated, server.url + "/v1", media=sent))
        assert done.returncode == 0, done.stderr
    kept, rej = read_stage(validated, "02")
    assert kept.num_rows == 4 and rej.num_rows == 2  # the two prose answers, as ever
    assert "missing_media" not in rej.column("reject_reason").to_pylist()


def test_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, media, monkeypatch,
                                                              capsys):
    """A write that fails for the machine's sake (here the third file's sync: no space
    left) ends the command with one line and exit 2, leaves no temporary file, and the
    same command, run again once there is room, finishes the run with every row."""
    import errno
    import sys

    import avcurate.cli as cli

    ann = tmp_path / "a.jsonl"
    ann.write_text("".join(json.dumps({"id": f"r{i}", "video": "good.mp4", "question": "Q?",
                                       "options": ["a", "b"], "answer": 0}) + "\n"
                           for i in range(6)))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[run]\nshard_size = 2\n[[sources]]\nname = "jsonl"\n'
                      f'annotations = "{ann}"\nmedia_root = "{media["root"]}"\n')
    out = tmp_path / "run"
    real, synced = os.fsync, []

    def full_disk(fd):
        synced.append(fd)
        if len(synced) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(cli, "use_jemalloc", lambda: None)  # this process's pool stays
    monkeypatch.setattr(sys, "argv", ["avcurate", "run", str(recipe), "--out", str(out), "-q"])
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: No space left on device: {out / '00-ingest/part-00000.parquet'}; "
                    "fix that and run the same command again (what finished is kept, and "
                    "nothing was left half-written)")  # the file it was writing, named
    assert not list(out.rglob("*.tmp")) and _stages(out) == []
    monkeypatch.setattr(os, "fsync", real)
    with pytest.raises(SystemExit) as finished:
        cli.main()
    assert finished.value.code == 0
    [ingest] = json.loads((out / "manifest.json").read_text())["stages"]
    assert ingest["rows_in"] == 6 and ingest["kept"] + ingest["rejected"] == 6
