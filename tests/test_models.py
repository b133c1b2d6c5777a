"""Model backends, the executor and the score/classify stages against loopback servers."""

from __future__ import annotations

import base64
import json
import subprocess

import numpy as np
import pytest
from conftest import avcurate_cmd
from helpers import jsonl_recipe, read_stage, rows_by_id, run
from loopback import DIMENSIONS, gemini_server, openai_server, wav_seconds

from avcurate.models import BackendUnavailable, ModelSpec, make_backend
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.runner import RunError, extend_run

SECRET = "sk-test-SECRET-0123456789"


def _records(media, markers):
    return [{"id": f"q{i}", "video": str(media["good"] if m != "[missing]" else
                                          media["root"] / "gone.mp4"),
             "question": f"What color is the square? {m}".strip(), "options": ["red", "blue"],
             "answer": "A"} for i, m in enumerate(markers)]


MARKERS = ["", "[429]", "[500]", "[slow]", "[trickle]", "[flaky]", "[nonjson]", "[range]",
           "[missing]", "[strings]", "[nan]", "[nullparts]"]


def _score(server, **kw):
    return StageSpec("score", {"backend": "openai", "model": "judge",
                               "base_url": server.url + "/v1", "timeout": 1.0,
                               "max_attempts": 3, "concurrency": 4, "audio_seconds": 2.0} | kw)


def _no_secret_anywhere(root, *texts):
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def test_score_every_row_kept_or_rejected_under_faults(tmp_path, media, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with openai_server(slow_seconds=2.5) as server:
        recipe = jsonl_recipe(tmp_path, _records(media, MARKERS), media["root"], [_score(server)])
        run(recipe, tmp_path / "run")
        kept, rej = read_stage(tmp_path / "run", "01")
    # the client gave up on the answer that never ended at its 1 s timeout (it once waited
    # for as long as the server sent a byte now and then)
    [(hung_up, seconds)] = server.trickles
    assert hung_up and seconds < 5
    ids = {r: m for r, m in zip([f"jsonl:ann/q{i}" for i in range(len(MARKERS))], MARKERS, strict=True)}
    assert {ids[i] for i in kept.column("id").to_pylist()} == {"", "[429]", "[500]", "[slow]",
                                                                "[trickle]", "[flaky]",
                                                                "[strings]", "[nullparts]"}
    reasons = {ids[r["id"]]: r["reject_reason"] for r in rej.to_pylist()}
    assert reasons == {"[nonjson]": "judge_invalid_json", "[range]": "judge_out_of_range",
                       "[missing]": "missing_media", "[nan]": "judge_out_of_range"}
    row = rows_by_id(kept)["jsonl:ann/q0"]
    assert 0 <= row["video_dependency"] <= 1 and row["answer_accuracy"] in (0.9, 1.0)
    expected = sum(row[d] for d in ("video_dependency", "audio_dependency", "question_logic",
                                    "answer_accuracy")) / 4
    assert row["composite_score"] == pytest.approx(expected)
    assert set(json.loads(row["score_rationale"])) == {"video_dependency", "audio_dependency",
                                                       "question_logic", "answer_accuracy"}
    assert row["judge_model"] == "openai:judge"
    texts = rows_by_id(kept)[f"jsonl:ann/q{MARKERS.index('[strings]')}"]  # "8", "9/10"
    assert all(texts[d] in (0.6, 0.7, 0.8, 0.9, 1.0) for d in DIMENSIONS)
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    usage = manifest["stages"][1]["usage"]
    assert usage["retries"] >= 4 and usage["invalid_answers"] >= 1 + 3 + 3
    assert usage["prompt_tokens"] > 0 and usage["calls"] == len(server.requests)
    assert manifest["stages"][1]["model"] == {"backend": "openai", "model": "judge",
                                              "base_url": server.url + "/v1"}
    assert all(h.get("authorization") == f"Bearer {SECRET}" for h in server.headers_seen)
    _no_secret_anywhere(tmp_path / "run")


def test_request_carries_the_media(tmp_path, media):
    with openai_server() as server:
        recipe = jsonl_recipe(tmp_path, _records(media, [""]), media["root"], [_score(server)])
        run(recipe, tmp_path / "run")
        body = server.requests[0]
    parts = body["messages"][0]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    audio = [p for p in parts if p["type"] == "input_audio"]
    assert len(images) == 8 and all(p["image_url"]["url"].startswith("data:image/jpeg;base64,")
                                    for p in images)
    assert base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1])[:2] == b"\xff\xd8"
    assert len(audio) == 1 and audio[0]["input_audio"]["format"] == "wav"
    assert wav_seconds(audio[0]["input_audio"]["data"]) == pytest.approx(2.0, abs=0.01)
    assert body["response_format"]["type"] == "json_schema"
    assert "What color is the square?" in parts[-1]["text"]


@pytest.mark.parametrize("video_as", ["data", "file"])
def test_video_mode_sends_the_file(tmp_path, media, video_as):
    with openai_server() as server:
        stage = _score(server, media="video")
        recipe = jsonl_recipe(tmp_path, _records(media, [""]), media["root"], [stage])
        if video_as == "file":  # vLLM started with --allowed-local-media-path
            from avcurate.models.openai_backend import OpenAIBackend
            body = OpenAIBackend("m", video_as="file").render(
                __import__("avcurate.curation.score", fromlist=["Score"]).Score(
                    model="m", media="video").build(
                    {"question": "Q", "options": ["a", "b"], "answer": "A",
                     "video": str(media["good"])}, None, []))
            [video] = [p for p in body["messages"][0]["content"] if p["type"] == "video_url"]
            assert video["video_url"]["url"] == media["good"].resolve().as_uri()
            return
        run(recipe, tmp_path / "run")
        parts = server.requests[0]["messages"][0]["content"]
    [video] = [p for p in parts if p["type"] == "video_url"]
    data = base64.b64decode(video["video_url"]["url"].split(",", 1)[1])
    assert data == media["good"].read_bytes()
    assert not [p for p in parts if p["type"] in ("image_url", "input_audio")]


def test_second_run_makes_zero_calls_and_no_cache_opts_out(tmp_path, media):
    with openai_server() as server:
        recipe = jsonl_recipe(tmp_path, _records(media, ["", "[flaky]"]), media["root"],
                              [_score(server)])
        run(recipe, tmp_path / "run")
        first = len(server.requests)
        # same requests, new fingerprint (max_rounds changes results; concurrency would not)
        recipe.stages = [_score(server, max_rounds=2)]
        run(recipe, tmp_path / "run", force=True)
        assert len(server.requests) == first
        manifest = json.loads((tmp_path / "run/manifest.json").read_text())
        assert manifest["stages"][1]["usage"]["cached"] == 2
        assert manifest["stages"][1]["usage"]["calls"] == 0
        recipe.stages = [_score(server, cache=False)]
        run(recipe, tmp_path / "run", force=True)
        assert len(server.requests) == first + 2


def test_gemini_backend(tmp_path, media, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with gemini_server(slow_seconds=2.5) as server:
        stage = StageSpec("score", {"backend": "gemini", "model": "gemini-2.5-pro",
                                    "base_url": server.url, "timeout": 1.0, "max_attempts": 3,
                                    "audio_seconds": 2.0})
        records = _records(media, ["", "[429]", "[500]", "[slow]", "[trickle]", "[nonjson]"])
        run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
        kept, rej = read_stage(tmp_path / "run", "01")
        body = server.requests[0]
    assert kept.num_rows == 5  # [trickle] too: its first answer never ends, the second does
    [(hung_up, seconds)] = server.trickles
    assert hung_up and seconds < 5
    assert rej.column("reject_reason").to_pylist() == ["judge_invalid_json"]
    parts = body["contents"][0]["parts"]
    inline = [p["inlineData"] for p in parts if "inlineData" in p]
    mimes = [d.get("mimeType") or d.get("mime_type") for d in inline]  # the SDK sends either
    assert mimes.count("image/jpeg") == 8 and mimes.count("audio/wav") == 1
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert all(h.get("x-goog-api-key") == SECRET for h in server.headers_seen)
    _no_secret_anywhere(tmp_path / "run")


def test_openai_waits_as_long_as_retry_after_ms_says(tmp_path, media):
    """OpenAI and Azure name a 429's wait in retry-after-ms; it was not read."""
    with openai_server() as server:
        stage = StageSpec("score", {"backend": "openai", "model": "judge", "media": "none",
                                    "base_url": server.url + "/v1", "max_attempts": 2})
        run(jsonl_recipe(tmp_path, _records(media, ["[429ms]"]), media["root"], [stage]),
            tmp_path / "run")
        first, second = server.arrivals
    assert read_stage(tmp_path / "run", "01")[0].num_rows == 1
    assert second - first >= 1.4


def test_a_gemini_3_judge_below_temperature_1_gets_google_s_advice(tmp_path, media):
    """Google's guidance for Gemini 3: keep temperature at 1.0, lower may loop. The judges'
    default is 0, sent without a word."""
    run(jsonl_recipe(tmp_path, _records(media, ["a"]), media["root"], []), tmp_path / "run")
    env = {**__import__("os").environ, "GEMINI_API_KEY": SECRET}
    with gemini_server() as server:
        def score(model, *extra):
            done = subprocess.run(avcurate_cmd("score", str(tmp_path / "run"), "--backend",
                                               "gemini", "--model", model, "--base-url",
                                               server.url, "--media", "none", "-q", "--redo",
                                               "-y", *extra),
                                  capture_output=True, text=True, env=env)
            assert done.returncode == 0, done.stderr
            return " ".join((done.stdout + done.stderr).split())
        assert ("note: stage 'score': Google recommends temperature 1.0 for Gemini 3 models "
                "(gemini-3-pro-preview); lower may loop or degrade their reasoning. It is sent "
                "0: --temperature 1 (temperature = 1.0 in a recipe) follows the advice"
                ) in score("gemini-3-pro-preview")
        assert score("gemini-3-pro-preview").count("Google recommends") == 1  # a redo: once
        assert "Google recommends" not in score("gemini-3-pro-preview", "--temperature", "1")
        assert "Google recommends" not in score("gemini-2.5-pro")


def test_gemini_waits_as_long_as_a_quota_429_says(tmp_path, media, monkeypatch):
    """The Gemini API names a 429's wait in its body (RetryInfo), not in a header: the
    retries came at the backoff's first sub-second waits, all inside the quota's."""
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with gemini_server() as server:
        stage = StageSpec("score", {"backend": "gemini", "model": "gemini-2.5-pro",
                                    "base_url": server.url, "media": "none", "max_attempts": 2})
        run(jsonl_recipe(tmp_path, _records(media, ["[quota]"]), media["root"], [stage]),
            tmp_path / "run")
        first, second = server.arrivals
    assert read_stage(tmp_path / "run", "01")[0].num_rows == 1
    assert second - first >= 1.9


@pytest.mark.parametrize("thinking, sent", [("128", {"thinkingbudget": 128}),
                                             ("low", {"thinkinglevel": "LOW"})])
def test_gemini_thinking_is_sent_and_keys_the_cache(tmp_path, media, monkeypatch, thinking,
                                                    sent):
    """Gemini 2.5 thinks before it answers, billed and counted in max_output_tokens; a
    judge over a million rows needs its budget set (3 models take a level instead)."""
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    stage = {"backend": "gemini", "model": "gemini-2.5-pro", "media": "none",
             "thinking": thinking}
    with gemini_server() as server:
        run(jsonl_recipe(tmp_path, _records(media, [""]), media["root"],
                         [StageSpec("score", {"base_url": server.url} | stage)]),
            tmp_path / "run")
        [body] = server.requests
    config = body["generationConfig"]
    thinking_config = config.get("thinkingConfig") or config["thinking_config"]
    # the SDK writes some keys in snake case, some in camel case
    assert {k.replace("_", "").lower(): v for k, v in thinking_config.items()
            if v is not None} == sent
    from avcurate.models.request import Message, ModelRequest, TextPart

    plain = ModelRequest((Message("user", (TextPart("Q?"),)),))
    assert plain.key("gemini", "g") != ModelRequest(plain.messages, thinking=thinking).key(
        "gemini", "g")


@pytest.mark.parametrize("stage, message", [
    ({"backend": "openai", "thinking": "128"}, "thinking is Gemini's setting"),
    ({"backend": "gemini", "thinking": "lots"}, "thinking must be a token budget"),
])
def test_a_thinking_setting_gemini_cannot_take_stops_the_plan(tmp_path, media, stage, message):
    with pytest.raises(RunError, match=message):
        run(jsonl_recipe(tmp_path, _records(media, [""]), media["root"],
                         [StageSpec("score", {"model": "m", "media": "none"} | stage)]),
            tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_gemini_without_key_stops_before_any_row(tmp_path, media, monkeypatch):
    """No key is the command's problem, not the rows': the run stops when it is planned,
    even with the model stage after others, before the run folder is made."""
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    stages = [StageSpec("validate"),
              StageSpec("score", {"backend": "gemini", "model": "g", "media": "none"})]
    with pytest.raises(RunError, match="stage 'score': model 'g': set GEMINI_API_KEY"):
        run(jsonl_recipe(tmp_path, _records(media, [""]), media["root"], stages),
            tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_openai_api_without_key_or_url_stops_before_any_row(tmp_path, media, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    stage = StageSpec("score", {"backend": "openai", "model": "gpt-4o"})
    with pytest.raises(RunError, match="set OPENAI_API_KEY .* or give --base-url"):
        run(jsonl_recipe(tmp_path, _records(media, [""]), media["root"], [stage]),
            tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_vllm_backend_without_vllm_stops_before_any_row(tmp_path, media):
    stage = StageSpec("score", {"backend": "vllm", "model": "Qwen/Qwen2.5-Omni-7B"})
    with pytest.raises(RunError, match="needs vllm: .*vllm serve"):
        run(jsonl_recipe(tmp_path, _records(media, [""]), media["root"],
                         [StageSpec("validate"), stage]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_classify(tmp_path, media):
    questions = ["How many drum hits? counting", "[none] ???", "[weird] ???",
                 "Who is the speaker on the left? speaker [upper]",
                 "How many bells ring? counting [styled]",
                 "How many claps? counting [plain]", "[nonjson] counting",
                 "How many knocks? counting [bold-plain]"]
    records = [{"id": f"c{i}", "video": str(media["good"]), "question": q,
                "options": ["x", "y"], "answer": "A"} for i, q in enumerate(questions)]
    with openai_server() as server:
        stage = StageSpec("classify", {"backend": "openai", "model": "qwen",
                                       "base_url": server.url + "/v1", "max_attempts": 2})
        run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
        kept, rej = read_stage(tmp_path / "run", "01")
        prompt = server.requests[0]["messages"][0]["content"][0]["text"]
    assert prompt.count("\n- ") == 16  # the default taxonomy, one line per category
    cats = {r["id"]: r["category"] for r in kept.to_pylist()}
    assert cats == {"jsonl:ann/c0": "audio-visual counting", "jsonl:ann/c3": "speaker identification",
                    "jsonl:ann/c4": "audio-visual counting",  # "**Audio Visual Counting.**"
                    "jsonl:ann/c5": "audio-visual counting",  # "Category: Audio-visual ..."
                    "jsonl:ann/c7": "audio-visual counting"}  # "**Category:** audio-visual ..."
    assert {r["id"]: r["reject_reason"] for r in rej.to_pylist()} == {
        "jsonl:ann/c1": "no_category", "jsonl:ann/c2": "unclassifiable",
        "jsonl:ann/c6": "unclassifiable"}  # a sentence is not a category's name


@pytest.mark.parametrize("status", [400, 422])  # 422: TGI's answer to an unknown variant
def test_a_server_without_structured_output_gets_the_schema_in_the_prompt(tmp_path, media,
                                                                          status):
    """Every request in flight when the server first refused response_format is sent again
    without it; the schema goes in the prompt. (Only the first was: the others were rows
    rejected as model_error; a 422 rejected every row.)"""
    with openai_server(no_structured=status, latency=0.2) as server:
        stage = StageSpec("score", _score(server).options | {"concurrency": 4})
        run(jsonl_recipe(tmp_path, _records(media, [f"q{i}" for i in range(6)]), media["root"],
                         [stage]),
            tmp_path / "run")
        refused = [b for b in server.requests if "response_format" in b]
        later = [b for b in server.requests if "response_format" not in b]
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 6 and rej.num_rows == 0
    assert 1 <= len(refused) <= 4 and len(later) == 6  # refused: those in flight at first
    assert all("Reply with one JSON object that follows this JSON schema" in
               b["messages"][-1]["content"][-1]["text"] for b in later)


def test_a_vllm_server_that_takes_fewer_frames_says_how_to_start_it(tmp_path, media):
    """vLLM took one image a request by default (--limit-mm-per-prompt): every call of a
    frames stage was a 400 whose line named no way out."""
    with openai_server(image_limit=1) as server:
        stage = StageSpec("score", _score(server).options | {"frames": 4})
        with pytest.raises(RunError, match=r"At most 1 image\(s\) may be provided in one "
                                           r"request\.; a request here sends 4 image, 1 audio: "
                                           r"start vLLM with --limit-mm-per-prompt "
                                           r"'\{\"image\": 4, \"audio\": 1\}', or send fewer "
                                           r"\(--frames\)"):
            run(jsonl_recipe(tmp_path, _records(media, ["a", "b"]), media["root"], [stage]),
                tmp_path / "run")


def test_requests_longer_than_the_context_stop_the_stage_with_what_shortens_them(tmp_path,
                                                                                  media):
    with openai_server(context=2000) as server:
        stage = StageSpec("score", _score(server).options | {"frames": 4})
        with pytest.raises(RunError, match=r"maximum context length is 2000 tokens.*; fewer or "
                                           r"smaller frames \(--frames, --max-pixels\), less "
                                           r"audio \(--audio-seconds\) or a lower --max-tokens"):
            run(jsonl_recipe(tmp_path, _records(media, ["a", "b"]), media["root"], [stage]),
                tmp_path / "run")


def test_a_stage_whose_first_answers_are_all_empty_stops(tmp_path, media):
    """A base model under a chat template (or a template the server does not apply) ends
    its turn at once: every row was rejected as judge_invalid_json after its rounds, for
    the setup's fault. Empty answers among valid ones still reject only their rows."""
    with openai_server() as server:
        stage = StageSpec("score", _score(server).options | {"media": "none"})
        with pytest.raises(RunError, match=r"the first 5 answers were all empty; does the "
                                           r"server return the model's text\?"):
            run(jsonl_recipe(tmp_path, _records(media, [f"[empty] {i}" for i in range(8)]),
                             media["root"], [stage]), tmp_path / "run")
        mixed = [f"q{i}" for i in range(6)] + ["[empty] 1"]
        run(jsonl_recipe(tmp_path, _records(media, mixed), media["root"], [stage]),
            tmp_path / "run2")
    kept, rej = read_stage(tmp_path / "run2", "01")
    assert kept.num_rows == 6 and rej.column("reject_reason").to_pylist() == ["judge_invalid_json"]


def test_an_openai_reasoning_model_is_sent_what_it_takes(tmp_path, media):
    """OpenAI's reasoning models (o-series, gpt-5) refuse max_tokens for
    max_completion_tokens, refuse top_p, and take no temperature but 1: every call of a
    stage was a 400, and no option could change what was sent."""
    records = [{"id": f"c{i}", "video": str(media["good"]), "question": f"How many hits {i}? "
                "counting", "options": ["x", "y"], "answer": "A"} for i in range(3)]
    spec = {"backend": "openai", "model": "gpt-5", "max_attempts": 1, "concurrency": 1}
    with openai_server(reasoning_model=True) as server:
        stage = StageSpec("classify", spec | {"base_url": server.url + "/v1", "temperature": 1.0})
        run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
        sent = [sorted(set(b) & {"max_tokens", "max_completion_tokens", "top_p"})
                for b in server.requests]
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 3 and rej.num_rows == 0
    # refused once each, by name
    assert sent == [["max_tokens", "top_p"], ["max_completion_tokens", "top_p"]] + \
        [["max_completion_tokens"]] * 3
    # at the judges' temperature 0: the stage stops with the server's line and what to set
    with openai_server(reasoning_model=True) as server:
        stage = StageSpec("classify", spec | {"base_url": server.url + "/v1"})
        with pytest.raises(RunError, match=r"'temperature' does not support 0.0 with this model\. "
                                           r"Only the default \(1\) value is supported.*; this "
                                           r"model takes only some temperatures \(OpenAI's "
                                           r"reasoning models only 1\): set --temperature"):
            run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run0")


def test_a_row_with_more_options_than_letters_is_rejected_before_any_call(tmp_path, media):
    """A recipe without validate passed a 27-option question to a model stage, whose
    prompt letters the options: an IndexError ended the stage. The row is rejected before
    any call (too_many_options); the other rows are asked as usual, the dry run too."""
    records = [{"id": "wide", "video": str(media["good"]), "question": "How many? counting",
                "options": [f"o{i}" for i in range(27)], "answer": "B"},
               {"id": "ok", "video": str(media["good"]), "question": "How many? counting",
                "options": ["x", "y"], "answer": "A"}]
    run(jsonl_recipe(tmp_path, records, media["root"], []), tmp_path / "run")  # ingest only
    with openai_server() as server:
        dry = subprocess.run(avcurate_cmd("classify", str(tmp_path / "run"), "--model", "qwen",
                                          "--base-url", server.url + "/v1", "--dry-run"),
                             capture_output=True, text=True)
        assert "1 calls to make" in dry.stdout, dry.stdout + dry.stderr
        stage = StageSpec("classify", {"model": "qwen", "base_url": server.url + "/v1"})
        extend_run(tmp_path / "run", stage, show_progress=False)
        asked = len(server.requests)
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.column("id").to_pylist() == ["jsonl:ann/ok"] and asked == 1
    [row] = rej.to_pylist()
    assert row["reject_reason"] == "too_many_options"
    assert row["reject_detail"].startswith("27 options, more than the letters A-Z name")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr


def _questions(media, n):
    return [{"id": f"t{i}", "video": str(media["good"]), "question": f"How many drum hits {i}? counting",
             "options": ["x", "y"], "answer": "A"} for i in range(n)]


def test_a_thinking_model_cut_at_max_tokens_stops_the_stage(tmp_path, media):
    """Qwen3 served by vLLM thinks before it answers, and classify's 64 tokens end inside
    the thinking: every row used to be rejected as `unclassifiable` ("no category in
    '<think>...'"), with nothing said about the limit. Five answers in a row cut at
    max_tokens are the setting's fault: the stage stops, rejecting nothing, and says what
    to change; with room to think, the answers after the thinking are read."""
    records = _questions(media, 12)
    with openai_server(thinking=100) as server:
        stage = StageSpec("classify", {"backend": "openai", "model": "qwen3",
                                       "base_url": server.url + "/v1", "concurrency": 2})
        recipe = jsonl_recipe(tmp_path, records, media["root"], [stage])
        with pytest.raises(RunError) as stopped:
            run(recipe, tmp_path / "run")
        calls = len(server.requests)
        message = str(stopped.value)
        assert "answers all stopped at max_tokens (64 tokens) before they held a valid " \
               "answer" in message and "raise max_tokens (--max-tokens)" in message
        assert "enable_thinking" in message and len(message.splitlines()) == 1
        assert calls < 5 + 2  # the first five cut answers, and what was in flight beside them
        assert not list((tmp_path / "run").glob("01-*/rejects/*.parquet"))

        roomy = StageSpec("classify", {"backend": "openai", "model": "qwen3", "max_tokens": 256,
                                       "base_url": server.url + "/v1", "concurrency": 2})
        run(jsonl_recipe(tmp_path, records, media["root"], [roomy]), tmp_path / "run",
            force=True)
        kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 12 and rej.num_rows == 0
    assert set(kept.column("category").to_pylist()) == {"audio-visual counting"}


def test_a_few_cut_answers_reject_their_rows_and_say_why(tmp_path, media):
    """Fewer cut answers than the halt needs: their rows are rejected as before, and the
    detail now names the limit the answer stopped at."""
    with openai_server(thinking=100) as server:
        stage = StageSpec("classify", {"backend": "openai", "model": "qwen3", "max_rounds": 1,
                                       "base_url": server.url + "/v1"})
        run(jsonl_recipe(tmp_path, _questions(media, 2), media["root"], [stage]), tmp_path / "run")
    _, rej = read_stage(tmp_path / "run", "01")
    assert rej.column("reject_reason").to_pylist() == ["unclassifiable"] * 2
    assert all(d.endswith("(the answer stopped at max_tokens, 64 tokens)")
               for d in rej.column("reject_detail").to_pylist())
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["stages"][1]["usage"]["cut"] == 2


def test_gemini_thinking_past_max_tokens_stops_the_stage(tmp_path, media, monkeypatch):
    """Gemini 2.5 counts its hidden thinking in max_output_tokens: an answer cut there comes
    back empty with finishReason MAX_TOKENS. The score stage stops and names the limit; the
    same stage with room for the thinking scores every row."""
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with gemini_server(thinking=2000) as server:
        def stage(**kw):
            return StageSpec("score", {"backend": "gemini", "model": "gemini-2.5-pro",
                                       "base_url": server.url, "media": "none"} | kw)
        with pytest.raises(RunError, match=r"stopped at max_tokens \(1024 tokens\).*raise "
                                           r"max_tokens \(--max-tokens\)"):
            run(jsonl_recipe(tmp_path, _questions(media, 8), media["root"], [stage()]),
                tmp_path / "run")
        run(jsonl_recipe(tmp_path, _questions(media, 8), media["root"],
                         [stage(max_tokens=4096)]), tmp_path / "run", force=True)
    assert read_stage(tmp_path / "run", "01")[0].num_rows == 8


def test_an_answer_sent_as_a_list_of_content_parts_is_read(tmp_path, media):
    """Some OpenAI-compatible servers and proxies send `content` as a list of parts: the
    text parts are the answer (a thinking part beside them is not); before, the list
    itself was taken for the answer and the row was lost."""
    with openai_server(content_parts=True) as server:
        stage = StageSpec("score", {"model": "judge", "media": "none",
                                    "base_url": server.url + "/v1"})
        run(jsonl_recipe(tmp_path, _records(media, ["", ""]), media["root"], [stage]),
            tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 2 and rej.num_rows == 0
    assert kept.column("composite_score").null_count == 0


def test_a_200_whose_body_is_an_error_is_a_failed_call_and_retried(tmp_path, media):
    """OpenRouter and other proxies answer 200 with {"error": ...} when the provider
    failed: that is a failed call, retried, not an empty answer that costs one of the row's
    answer rounds (with one round, the row was rejected as judge_invalid_json)."""
    with openai_server() as server:
        stage = StageSpec("score", {"model": "judge", "media": "none", "max_rounds": 1,
                                    "base_url": server.url + "/v1"})
        run(jsonl_recipe(tmp_path, _records(media, ["[error200]"]), media["root"], [stage]),
            tmp_path / "run")
        prompts = [r for r in server.requests if "[error200]" in json.dumps(r)]
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 1 and rej.num_rows == 0 and len(prompts) == 2


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_an_answer_a_content_filter_stopped_says_so(tmp_path, media, monkeypatch, backend):
    """A prompt the provider's safety filter blocks is that row's: it is rejected, and its
    detail says the model was stopped, where it said only that '' held no JSON."""
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    serve = openai_server if backend == "openai" else gemini_server
    with serve() as server:
        stage = StageSpec("score", {"backend": backend, "model": "judge", "media": "none",
                                    "base_url": server.url + ("/v1" if backend == "openai"
                                                              else "")})
        run(jsonl_recipe(tmp_path, _records(media, ["", "[filtered]"]), media["root"],
                         [stage]), tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 1
    [row] = rej.to_pylist()
    stopped = "content_filter" if backend == "openai" else "blocked (PROHIBITED_CONTENT)"
    assert row["reject_reason"] == "judge_invalid_json"
    assert row["reject_detail"].endswith(f"(the model stopped: {stopped})")


@pytest.mark.parametrize(("text", "value"), [
    ('{"category": "b"}', {"category": "b"}),
    ('```json\n{"category": "b"}\n```', {"category": "b"}),
    ('<think>\nA first draft: {"category": "a"}. No.\n</think>\n\n{"category": "b"}',
     {"category": "b"}),
    ('<think>{"category": "a"}, and the tokens ran out', None),
    ('{"category": "a"} was a draft</think>', None),
])
def test_a_json_answer_is_read_after_the_model_s_thinking(text, value):
    from avcurate.models.request import parse_json_answer

    if value is None:
        with pytest.raises(ValueError):
            parse_json_answer(text)
    else:
        assert parse_json_answer(text) == value


def test_the_merger_names_its_own_token_flag():
    from avcurate.merger.merge import Merge

    merge = Merge(backend="openai", model="m", base_url="http://127.0.0.1:9/v1")
    assert merge._limit_name() == "max_tokens (--max-answer-tokens)"


def test_custom_taxonomy_and_prompt(tmp_path, media):
    (tmp_path / "tax.toml").write_text('[[category]]\nname = "colors"\ndefinition = "c"\n'
                                       '[[category]]\nname = "sounds"\ndefinition = "s"\n')
    (tmp_path / "p.md").write_text("MY PROMPT\nTaxonomy:\n{{categories}}\nQuestion:\n{{question}}"
                                   "\n\nOptions:\n{{options}}\n")
    with openai_server() as server:
        stage = StageSpec("classify", {"backend": "openai", "model": "q", "base_url":
                                       server.url + "/v1", "taxonomy": str(tmp_path / "tax.toml"),
                                       "prompt": str(tmp_path / "p.md")})
        run(jsonl_recipe(tmp_path, _records(media, ["sounds"]), media["root"], [stage]),
            tmp_path / "run")
        assert server.requests[0]["messages"][0]["content"][0]["text"].startswith("MY PROMPT")
    assert read_stage(tmp_path / "run", "01")[0].column("category").to_pylist() == ["sounds"]


def test_concurrency_is_the_stage_limit_across_shards(tmp_path, media):
    """Shards of 4 rows, concurrency 6: requests of several shards fill the six slots (a shard
    alone has 4), and never more than six are in flight (one limit for the stage, not one
    per shard)."""
    records = [{"id": f"r{i}", "video": str(media["good"]), "question": f"What is it {i}?",
                "options": ["red", "blue"], "answer": "A"} for i in range(16)]
    with openai_server(latency=0.3) as server:
        stage = _score(server, media="none", concurrency=6)
        run(jsonl_recipe(tmp_path, records, media["root"], [stage], shard_size=4),
            tmp_path / "run")
    assert len(server.requests) == 16
    assert server.peak_in_flight == 6
    assert read_stage(tmp_path / "run", "01")[0].num_rows == 16


def test_vllm_missing_is_clear():
    with pytest.raises(BackendUnavailable, match="vllm serve"):
        make_backend(ModelSpec("vllm", "Qwen/Qwen2.5-7B-Instruct"))


def test_bad_backend_name_fails_before_work(tmp_path, media):
    stage = StageSpec("score", {"backend": "opneai", "model": "m"})
    recipe = jsonl_recipe(tmp_path, _records(media, [""]), media["root"], [stage])
    with pytest.raises(RunError, match="backend = 'opneai' must be one of openai, gemini"):
        run(recipe, tmp_path / "run")


def test_score_cli_dry_run_and_one_go(tmp_path, media, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in _records(media, ["", "", "[nonjson]"])))
    cols = ["--column", "id=id", "--column", "video=video", "--column", "question=question",
            "--column", "options=options", "--column", "answer=answer"]
    with openai_server() as server:
        base = ["score", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                str(media["root"]), "--out", str(tmp_path / "run"), "--backend", "openai",
                "--model", "judge", "--base-url", server.url + "/v1", "--audio-seconds", "2", *cols]
        dry = subprocess.run(avcurate_cmd(*base, "--dry-run"), capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert "3 calls" in dry.stdout and "input tokens" in dry.stdout
        assert '"image_url"' in dry.stdout and "…" in dry.stdout  # base64 elided
        assert server.requests == []
        done = subprocess.run(avcurate_cmd(*base, "-q"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        # the two good rows ask the same prompt: sent once; the non-JSON one max_rounds times
        assert len(server.requests) == 1 + 3
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["ingest", "validate", "score"]
    assert manifest["stages"][2]["kept"] == 2
    _no_secret_anywhere(tmp_path / "run", dry.stdout, dry.stderr, done.stdout, done.stderr)


def test_gemini_large_video_goes_through_the_files_api(media, monkeypatch):
    import asyncio

    from avcurate.models.gemini_backend import GeminiBackend
    from avcurate.models.request import Message, ModelRequest, TextPart, VideoPart

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with gemini_server() as server:
        request = ModelRequest((Message("user", (VideoPart(str(media["good"])),
                                                 TextPart("Describe it."))),))
        small = GeminiBackend("g", server.url)  # 20 MB inline limit: sent inline
        asyncio.run(small.call(request))
        big = GeminiBackend("g", server.url, inline_limit=1000)  # forced through the Files API
        asyncio.run(big.call(request))
        inline, uploaded = (server.requests[0]["contents"][0]["parts"][0],
                            server.requests[1]["contents"][0]["parts"][0])
    assert "inlineData" in inline and server.uploads == [media["good"].read_bytes()]
    file_data = uploaded.get("fileData") or uploaded.get("file_data")
    assert file_data is not None and file_data.get("fileUri", file_data.get("file_uri")).endswith(
        "/v1beta/files/1")


@pytest.mark.parametrize("state, said", [
    ("FAILED", "upload_failed: the Gemini Files API could not process good.mp4 (Unsupported "
               "video codec)"),
    ("PROCESSING", "upload_timeout: the Gemini Files API was still processing good.mp4 after "
                   "0.5 s")])
def test_a_video_the_files_api_cannot_process_rejects_its_row(media, monkeypatch, state, said):
    """A file the server failed to process went into the request, whose 400 named no cause;
    one it kept processing was polled for ever, holding its row and the stage."""
    from avcurate.models import gemini_uploads
    from avcurate.models.executor import Executor
    from avcurate.models.gemini_backend import GeminiBackend
    from avcurate.models.request import Message, ModelRequest, TextPart, VideoPart

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.setattr(gemini_uploads, "POLL_SECONDS", 0.05)
    with gemini_server(upload_state=state) as server:
        backend = GeminiBackend("g", server.url, timeout=0.5, inline_limit=1000)
        executor = Executor(backend, max_failure_rate=1.0)
        try:
            [result] = executor.run([ModelRequest((Message("user", (
                VideoPart(str(media["good"])), TextPart("Describe it."))),))], lambda r: r.text)
        finally:
            executor.close()
        assert not server.requests  # no generateContent with a file that cannot be read
    assert result.reason == "model_error" and result.detail == said


def test_a_row_whose_request_failed_for_good_is_not_completed_by_its_other_requests(tmp_path):
    """With several requests per row, a call that failed after its retries rejects the row
    even when another of its requests is asked again and then answered."""
    from dataclasses import dataclass

    import pyarrow as pa

    from avcurate.models.errors import InvalidAnswer
    from avcurate.models.executor import CallResult, CallStats
    from avcurate.models.request import Message, ModelRequest, TextPart
    from avcurate.stages.context import StageContext
    from avcurate.stages.model_stage import ModelStage

    @dataclass
    class Pair(ModelStage):
        name = "pair"
        adds = {"both": pa.string()}

        def build_all(self, row, media, history):
            return [ModelRequest((Message("user", (TextPart(f"{row['id']}:{k}"),)),))
                    for k in range(2)]

        def combine(self, row, values):
            return {"both": "+".join(values)}

    class Scripted:
        """Row a: request 0 fails for good, request 1 is invalid once then good."""

        def __init__(self):
            self.stats, self.asked = CallStats(), []

        def run(self, requests, validators, stats=None):
            out = []
            for r in requests:
                self.asked.append(r.text)
                if r.text == "a:0":
                    out.append(CallResult(reason="model_error", detail="http_503: down"))
                elif r.text == "a:1" and self.asked.count("a:1") == 1:
                    out.append(CallResult(reason="bad", detail="no letter",
                                          error=InvalidAnswer("bad", "no letter")))
                else:
                    out.append(CallResult(value=r.text))
            return out

    stage = Pair(model="m", base_url="http://127.0.0.1:9/v1")
    stage._executor = Scripted()
    table = pa.table({"id": ["a", "b"], "video": ["v", "v"]})
    ctx = StageContext(run_dir=tmp_path, stage_dir=tmp_path / "01-pair", workers=1)
    try:
        result = stage.process(table, ctx, 0)
    finally:
        ctx.close()
    assert result.kept.column("both").to_pylist() == ["b:0+b:1"]
    assert result.rejected.column("reject_reason").to_pylist() == ["model_error"]
    assert "a:1" in stage._executor.asked and stage._executor.asked.count("a:1") == 1


def test_the_dry_runs_token_estimate_counts_frames_by_their_size(tmp_path):
    """The estimate counted 258 tokens for any frame (Gemini's figure): a Qwen2.5 server
    behind the OpenAI protocol makes one per 28x28 pixels, ~2,700 for a 1080p frame. The
    same rows with frames 4 times larger now cost that much more for it, and the same for
    Gemini; the JPEG's own size is read from its header."""
    import re

    from avcurate.core.images import encode_jpeg, jpeg_size
    from avcurate.media import synth
    from avcurate.pipeline.dry_run import dry_run

    for w, h in ((320, 240), (1918, 1080), (7, 5)):
        assert jpeg_size(encode_jpeg(np.zeros((h, w, 3), np.uint8))) == (w - w % 2, h - h % 2)
    tokens = {}
    for w, h in ((320, 240), (640, 480)):
        clip = synth.write_clip(tmp_path / f"{w}.mp4", seconds=2, fps=4, size=(w, h))
        records = [{"id": "x", "video": clip.name, "question": "Which colour?",
                    "options": ["red", "blue"], "answer": "A"}]
        folder = tmp_path / f"run{w}"
        folder.mkdir()
        run(jsonl_recipe(folder, records, tmp_path, []), folder / "run")
        for backend in ("openai", "gemini"):
            text = dry_run(folder / "run", StageSpec("score", {
                "backend": backend, "model": "m", "audio_seconds": 1.0}))
            tokens[backend, w] = int(re.search(r"about ([\d,]+) input tokens", text)[1]
                                     .replace(",", ""))
    assert tokens["openai", 640] - tokens["openai", 320] == 8 * (23 * 18 - 12 * 9)
    assert tokens["gemini", 640] == tokens["gemini", 320]


def test_whole_videos_in_prepared_requests_stay_within_the_executors_budget(tmp_path, media):
    """`--media video` puts each whole file, in base64, into its prepared body, and up to
    2 x concurrency bodies per shard, three shards at once, were held: ~25 GB for 200 MB
    videos. Bodies now wait while the executor's prepared videos would pass its budget
    (one alone always goes): here room for two files keeps two requests going, not four."""
    import shutil

    from avcurate.models.errors import EndpointError
    from avcurate.models.executor import Executor
    from avcurate.models.openai_backend import OpenAIBackend
    from avcurate.models.request import Message, ModelRequest, TextPart, VideoPart

    paths = []
    for i in range(8):
        paths.append(tmp_path / f"v{i}.mp4")
        shutil.copy(media["good"], paths[-1])
    size = paths[0].stat().st_size
    requests = [ModelRequest((Message("user", (VideoPart(str(p)), TextPart(f"Q{i}?"))),))
                for i, p in enumerate(paths)]
    peaks = {}
    for budget in (None, int(2.5 * size)):
        with openai_server(latency=0.3) as server:
            executor = Executor(OpenAIBackend("m", server.url + "/v1"), concurrency=4,
                                video_budget=budget)
            try:
                results = executor.run(requests, lambda r: r.text)
            finally:
                executor.close()
            assert [r.reason for r in results] == [None] * 8
            assert executor.videos.held == 0  # every request's bytes given back
            peaks[budget] = server.peak_in_flight
    assert peaks == {None: 4, int(2.5 * size): 2}
    with openai_server() as server:  # a call stopped with requests never started
        executor = Executor(OpenAIBackend("m", server.url + "/v1"), concurrency=1,
                            max_attempts=1, video_budget=int(2.5 * size))
        try:
            server.down = True
            with pytest.raises(EndpointError, match="all failed"):
                executor.run(requests, lambda r: r.text)
            assert executor.videos.held == 0  # or the executor's next call would wait
        finally:
            executor.close()


def test_gemini_uploads_a_large_video_once_and_deletes_its_uploads(tmp_path, media, monkeypatch):
    """Each request showing a large video uploaded it again, and no upload was deleted: a
    project holds 20 GB of files, which a `--media video` stage over a few hundred clips
    filled. Now one upload per file serves every request that shows it, uploads past the
    budget go least recently used first, a changed file is uploaded again, and the stage's
    end deletes the rest."""
    import os
    import shutil

    from avcurate.models.executor import Executor
    from avcurate.models.gemini_backend import GeminiBackend
    from avcurate.models.request import Message, ModelRequest, TextPart, VideoPart

    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for clip in clips:
        shutil.copy(media["good"], clip)
    size = clips[0].stat().st_size

    def asks(clip, n):
        return [ModelRequest((Message("user", (VideoPart(str(clip)), TextPart(f"Q{i}?"))),))
                for i in range(n)]

    with gemini_server(latency=0.2) as server:
        backend = GeminiBackend("g", server.url, inline_limit=1000)
        backend.uploads.budget = int(1.5 * size)  # room for one clip's upload
        executor = Executor(backend, concurrency=3)
        try:
            results = executor.run(asks(clips[0], 3), lambda r: r.text)
            assert [r.reason for r in results] == [None] * 3
            assert len(server.uploads) == 1 and server.deleted == []  # three questions, one upload
            executor.run(asks(clips[1], 2), lambda r: r.text)
            assert len(server.uploads) == 2 and server.deleted == ["files/1"]  # over budget: a's
            os.utime(clips[1], ns=(0, 10**18))  # the file changed: its old upload is stale
            executor.run(asks(clips[1], 1), lambda r: r.text)
            assert len(server.uploads) == 3 and server.deleted == ["files/1", "files/2"]
        finally:
            executor.close()
    assert server.deleted == ["files/1", "files/2", "files/3"]  # the stage's end: none left
    # on Ray each of n actors keeps 1/n of the project's room (as of the stage's --rpm)
    from avcurate.models import ModelSpec, make_backend
    from avcurate.models.gemini_uploads import UPLOAD_BUDGET
    assert make_backend(ModelSpec("gemini", "g"), share=0.25).uploads.budget == UPLOAD_BUDGET // 4


def test_a_whole_video_goes_out_under_its_containers_media_type(tmp_path, monkeypatch):
    """`--media video` labelled every file `video/mp4`, so a MOV or WebM clip reached Gemini
    under the wrong type, and a Matroska clip (a container Gemini does not take) was sent
    anyway. Now each file goes under its container's type, inline or uploaded, and a
    Matroska clip is refused for its row before any call, with the way round it."""
    import asyncio

    from avcurate.media import synth
    from avcurate.models.errors import ModelError
    from avcurate.models.gemini_backend import GeminiBackend
    from avcurate.models.openai_backend import OpenAIBackend
    from avcurate.models.request import Message, ModelRequest, TextPart, VideoPart

    mov = synth.write_clip(tmp_path / "clip.MOV", seconds=1)
    mkv = synth.write_clip(tmp_path / "clip.mkv", seconds=1)

    def ask(path):
        return ModelRequest((Message("user", (VideoPart(str(path)), TextPart("Describe."))),))

    [video] = [p for p in OpenAIBackend("m").render(ask(mov))["messages"][0]["content"]
               if p["type"] == "video_url"]
    assert video["video_url"]["url"].startswith("data:video/quicktime;base64,")
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    with gemini_server() as server:
        asyncio.run(GeminiBackend("g", server.url).call(ask(mov)))
        asyncio.run(GeminiBackend("g", server.url, inline_limit=1000).call(ask(mov)))
        with pytest.raises(ModelError) as refused:
            asyncio.run(GeminiBackend("g", server.url).call(ask(mkv)))
        inline, uploaded = (r["contents"][0]["parts"][0] for r in server.requests)
    sent = [part.get(camel) or part.get(snake) for part, camel, snake in (
        (inline, "inlineData", "inline_data"), (uploaded, "fileData", "file_data"))]
    assert [s.get("mimeType", s.get("mime_type")) for s in sent] == ["video/mov"] * 2
    assert server.upload_types == ["video/mov"]
    assert len(server.requests) == 2 and refused.value.kind == "unsupported_video"
    assert not refused.value.retryable and not refused.value.systemic
    assert ".mkv" in str(refused.value) and "--media frames" in str(refused.value)


def test_a_call_that_finds_a_cause_after_the_stop_raises_the_first_one():
    """Calls answered before a stop cancels them may find a cause too: a sixth empty answer
    on another shard's thread raised "the first 6 answers were all empty", and the stage
    named whichever shard failed last (a flake of the test above). Every later cause now
    raises the first."""
    from avcurate.models.errors import EndpointError
    from avcurate.models.executor import Executor
    from avcurate.models.openai_backend import OpenAIBackend
    from avcurate.models.request import ModelResponse

    executor = Executor(OpenAIBackend("m", "http://127.0.0.1:9/v1"))
    try:
        for _ in range(4):
            executor._all_empty(ModelResponse(""))
        with pytest.raises(EndpointError, match="the first 5 answers were all empty") as first:
            executor._all_empty(ModelResponse(""))
        with pytest.raises(EndpointError) as later:
            executor._all_empty(ModelResponse(""))
        assert later.value is first.value
    finally:
        executor.close()
