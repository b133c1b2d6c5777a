"""AVRT: visual/audio teachers, the both-correct filter, the merger and trace checks."""

from __future__ import annotations

import base64
import io
import json
import subprocess

import av
import numpy as np
import pytest
from conftest import avcurate_cmd
from helpers import jsonl_recipe, read_stage, run
from loopback import openai_server, wav_seconds

from avcurate.core.answers import extract_letter
from avcurate.media import frames as decode_frames
from avcurate.media import synth
from avcurate.merger.trace import TraceRules, check_trace
from avcurate.pipeline.recipe import StageSpec

OPTIONS = ["a red square and a medium tone", "a blue square and a high tone",
           "a green square and a low tone"]
QUESTION = "Which square moves, and which tone plays?"


def _model(server, **kw):
    return {"backend": "openai", "model": "m", "base_url": server.url + "/v1", **kw}


def _teach(server, require="both"):
    return [StageSpec("visual_teacher", _model(server)),
            StageSpec("audio_teacher", _model(server, audio_seconds=2.0)),
            StageSpec("teacher_filter", {"require": require})]


def _rows(media, markers):
    clips = {"red": (media["good"], "A"), "blue": (media["good2"], "B")}
    out = []
    for i, (clip, marker) in enumerate(markers):
        path, truth = clips[clip]
        out.append({"id": f"s{i}", "video": str(path), "question": f"{QUESTION} {marker}".strip(),
                    "options": OPTIONS, "answer": truth})
    return out


# -- answer extraction -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "letter", "how"), [
    ("Visual Description: ...\nReasoning: ...\nAnswer: (D) Action movie", "D", "answer_line"),
    ("Answer: D", "D", "answer_line"),
    ("so I pick **D** here", "D", "bold"),
    ("D.", "D", "bare_letter"),
    ("Action movie", "D", "option_text"),
    ("Answer: Action movie", "D", "option_text"),
    ("Answer: A or B", None, "ambiguous"),
    ("**A** or maybe **B**", None, "ambiguous"),
    ("Answer: E", None, "none"),
    ("I cannot tell.", None, "none"),
    # a thinking model's reply: only what follows its thinking is its answer
    ("<think>\nThe answer is A? No: the tone is low.\n</think>\n\nB", "B", "bare_letter"),
    ("It might be **A**... it is not.</think>\nAnswer: C", "C", "answer_line"),
    ("◁think▷Answer: A, I first thought.◁/think▷**D**", "D", "bold"),
    ("<think>Answer: A, I first thought, and ran out of tokens</think>", None, "none"),
    # what models write when they do not follow the prompt's "Answer: (X) text"
    ("<think>A film about love.</think><answer>C</answer>", "C", "answer_tag"),
    ("Reasoning: it is factual.\nThe correct option is B.", "B", "answer_line"),
    ("答案：D", "D", "answer_line"),
    ("Answer: (B) Documentary\nB is the correct option because it is factual.", "B",
     "answer_line"),  # the last answer line that names a letter
    ("answer: c", "C", "answer_line"),
    ("Answer: **c**", "C", "answer_line"),
    ("**Answer:**\n\n(B) Documentary", "B", "answer_line"),  # bold label, answer below
    ("### Answer:\nD. Action movie", "D", "answer_line"),  # a Markdown heading
    ("Option D", "D", "bare_letter"),  # asked for "just the letter"
    ("Choice: (B)", "B", "bare_letter"),
    ("Option E", None, "none"),
    # asked for just the letter, a model often explains it on the lines after (or before)
    ("B\n\nThe film follows a real trial.", "B", "bare_letter"),
    ("(c)\nA love story.", "C", "bare_letter"),
    ("It follows a real trial, so:\nB", "B", "bare_letter"),
    ("A\nor maybe\nB", None, "ambiguous"),
    ("D - Action movie", "D", "letter_echo"),
    # a model tuned for structured output answers in JSON, even when asked for a letter
    ('{"answer": "C"}', "C", "json"),
    ('```json\n{"Answer": "D. Action movie"}\n```', "D", "json"),
    ('{"reasoning": "The answer is A? No, it is factual.", "answer": "B"}', "B", "json"),
    ('{"answer": "A or B"}', None, "ambiguous"),
    ('{"answer": "Comedy"}', None, "none"),
    ("The answer is a", None, "none"),  # a reply cut after its article, maybe
    ("Answer: a dog", None, "none"),
    ("So the final answer is $\\boxed{A}$.", "A", "boxed"),
    ("\\boxed{\\text{D}}", "D", "boxed"),
    ("\\boxed{B. Documentary}", "B", "boxed"),  # with its option's text
    ("\\boxed{B. Comedy}", None, "none"),  # with another text
    ("\\boxed{A}, or maybe \\boxed{B}", None, "ambiguous"),
    ("It is a love story: **C. Romance**", "C", "bold"),
    ("**A. Crime** is ruled out and **B. Documentary** fits", None, "ambiguous"),
    ("D) Action movie\nThe chase and the explosions say so.", "D", "letter_echo"),
    ("D) Comedy", None, "none"),  # a letter with another text
    ("A dog chases a car.", None, "none"),
])
def test_extract_answer(text, letter, how):
    parsed = extract_letter(text, ["Crime", "Documentary", "Romance", "Action movie"])
    assert (parsed.letter, parsed.how) == (letter, how)


# -- teachers ----------------------------------------------------------------------------------

def test_teachers_and_both_correct_filter(tmp_path, media):
    markers = [("red", ""), ("blue", ""), ("red", "[v-wrong]"), ("blue", "[a-wrong]"),
               ("red", "[v-wrong] [a-wrong]"), ("blue", "[v-ambiguous]"),
               ("red", "[v-markdown] [a-headings]"), ("blue", "[v-headings] [a-markdown]")]
    with openai_server() as server:
        run(jsonl_recipe(tmp_path, _rows(media, markers), media["root"], _teach(server)),
            tmp_path / "run")
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    for stage in manifest["stages"]:
        assert stage["rows_in"] == stage["kept"] + stage["rejected"]
    visual_kept, visual_rej = read_stage(tmp_path / "run", "01")
    assert [r["reject_reason"] for r in visual_rej.to_pylist()] == ["visual_no_answer"]
    row = visual_kept.to_pylist()[0]
    assert row["visual_answer"] == "A" and row["visual_correct"] is True
    assert row["visual_parse"] == "answer_line" and "red square" in row["visual_description"]
    assert row["visual_reasoning"].startswith("Only option A")
    audio_kept, _ = read_stage(tmp_path / "run", "02")
    assert "medium-pitched tone" in audio_kept.to_pylist()[0]["audio_description"]
    kept, rej = read_stage(tmp_path / "run", "03")
    assert kept.column("id").to_pylist() == ["jsonl:ann/s0", "jsonl:ann/s1", "jsonl:ann/s6",
                                             "jsonl:ann/s7"]
    assert {r["id"]: r["reject_reason"] for r in rej.to_pylist()} == {
        "jsonl:ann/s2": "visual_wrong", "jsonl:ann/s3": "audio_wrong", "jsonl:ann/s4": "both_wrong"}
    # parts labelled as chat models format them: each part read without its markup
    rows = {r["id"]: r for r in kept.to_pylist()}
    for row in (rows["jsonl:ann/s6"], rows["jsonl:ann/s7"]):
        for p in ("visual", "audio"):
            description, reasoning = row[f"{p}_description"], row[f"{p}_reasoning"]
            assert description.startswith(("The frames show", "I hear")), description
            assert reasoning.startswith("Only option") and "\n" not in reasoning, reasoning
            assert row[f"{p}_parse"] == "answer_line"


def test_a_thinking_teacher_s_parts_are_those_after_its_thinking(tmp_path, media):
    """Kimi-VL-Thinking (AVRT's visual teacher) on vLLM without a reasoning parser writes its
    thinking into the reply, drafts of the labelled parts included: those drafts were
    stored as the description and reasoning the merger reads."""
    with openai_server(thinking=60) as server:
        run(jsonl_recipe(tmp_path, _rows(media, [("red", ""), ("blue", "")]), media["root"],
                         _teach(server)[:2]), tmp_path / "run")
    for stage, p in (("01", "visual"), ("02", "audio")):
        for row in read_stage(tmp_path / "run", stage)[0].to_pylist():
            assert "DRAFT" not in row[f"{p}_description"] + row[f"{p}_reasoning"], row
            assert row[f"{p}_reasoning"].startswith("Only option")
            assert row[f"{p}_raw"].startswith("<think>")  # the reply as it came, kept


@pytest.mark.parametrize(("require", "kept"), [("either", 4), ("any", 5)])
def test_filter_modes(tmp_path, media, require, kept):
    markers = [("red", ""), ("blue", ""), ("red", "[v-wrong]"), ("blue", "[a-wrong]"),
               ("red", "[v-wrong] [a-wrong]")]
    with openai_server() as server:
        run(jsonl_recipe(tmp_path, _rows(media, markers), media["root"], _teach(server, require)),
            tmp_path / "run")
    assert read_stage(tmp_path / "run", "03")[0].num_rows == kept


def test_teacher_requests_carry_the_right_frames_and_audio(tmp_path, media):
    clip = synth.write_clip(tmp_path / "long.mp4", seconds=12, color="green", freq=220)
    records = [{"id": "x", "video": str(clip), "question": QUESTION, "options": OPTIONS,
                "answer": "C"}]
    stages = [StageSpec("visual_teacher", _model_stub := {"backend": "openai", "model": "m"}),
              StageSpec("audio_teacher", dict(_model_stub))]
    with openai_server() as server:
        for s in stages:
            s.options["base_url"] = server.url + "/v1"
        run(jsonl_recipe(tmp_path, records, tmp_path, stages), tmp_path / "run")
        visual, audio = server.requests
    images = [p for p in visual["messages"][0]["content"] if p["type"] == "image_url"]
    assert len(images) == 8
    sent = np.stack([_jpeg(p["image_url"]["url"]) for p in images]).astype(int)
    expected, times = decode_frames(clip, 8)
    assert np.allclose(times, (np.arange(8) + 0.5) * 12 / 8, atol=0.05)
    assert np.abs(sent - expected).mean() < 4  # the same frames, up to JPEG loss
    shifted, _ = decode_frames(clip, 9)  # frames from other timestamps look different
    assert np.abs(sent[1:] - shifted[1:8].astype(int)).mean() > 2 * np.abs(sent - expected).mean()
    [sound] = [p for p in audio["messages"][0]["content"] if p["type"] == "input_audio"]
    assert wav_seconds(sound["input_audio"]["data"]) == pytest.approx(10.0, abs=0.01)
    assert not [p for p in audio["messages"][0]["content"] if p["type"] == "image_url"]
    row = read_stage(tmp_path / "run", "02")[0].to_pylist()[0]
    assert row["visual_answer"] == row["audio_answer"] == "C"  # green square, low tone


def _jpeg(url: str) -> np.ndarray:
    with av.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_frames_are_decoded_once_for_judge_and_teacher(tmp_path, media, monkeypatch):
    import avcurate.media.cache as cache

    calls = []
    real = cache.frames
    monkeypatch.setattr(cache, "frames", lambda p, n: calls.append((p, n)) or real(p, n))
    with openai_server() as server:
        stages = [StageSpec("score", _model(server, audio_seconds=2.0)),
                  StageSpec("visual_teacher", _model(server))]
        run(jsonl_recipe(tmp_path, _rows(media, [("red", ""), ("red", "again")]), media["root"],
                         stages), tmp_path / "run")
    assert calls == [(str(media["good"]), 8)]  # two rows, two stages, one decode


def test_the_media_cache_keeps_frames_as_the_jpegs_sent_and_keys_stay_the_same(tmp_path,
                                                                              media):
    """The cache kept raw frames (49.8 MB per 1080p video, terabytes at LLaVA-Video's
    scale). It keeps the JPEGs a request sends and their pixels' digests: the same bytes go
    out, a part built from the cache has the raw frame's key, and its file is a fraction of
    the raw frames' size."""
    from avcurate.core.images import encode_jpeg
    from avcurate.models.request import ImagePart

    clip = synth.write_clip(tmp_path / "big.mp4", seconds=4, size=(640, 480), color="green")
    records = [{"id": "x", "video": str(clip), "question": QUESTION, "options": OPTIONS,
                "answer": "C"}]
    with openai_server() as server:
        run(jsonl_recipe(tmp_path, records, tmp_path, [StageSpec("visual_teacher",
                                                                 _model(server))]),
            tmp_path / "run")
        [request] = server.requests
    sent = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
            for p in request["messages"][0]["content"] if p["type"] == "image_url"]
    pixels, times = decode_frames(clip, 8)
    assert sent == [encode_jpeg(f) for f in pixels]  # what was sent before, byte for byte
    [cached] = (tmp_path / "run/cache/media").rglob("*.npz")
    assert cached.stat().st_size < pixels.nbytes / 10  # 7.4 MB of raw frames
    raw = [ImagePart(f, float(t)) for f, t in zip(pixels, times, strict=True)]
    kept = [ImagePart.from_jpeg(j, r.digest(), r.timestamp_s) for j, r in zip(sent, raw,
                                                                                strict=True)]
    assert [p.digest() for p in kept] == [p.digest() for p in raw]  # cached answers still found
    assert [p.jpeg_b64 for p in kept] == [p.jpeg_b64 for p in raw]


def test_frames_over_the_pixel_cap_are_scaled_down_before_they_are_sent(tmp_path):
    """Frames went out at the video's own size: a 4K frame is ~10,600 tokens to a Qwen2.5
    server, and 8 of them overflow its context. A frame over --max-pixels (by default a
    1080p frame's) is scaled down, aspect kept; 0 sends it as decoded, and each size has
    its own cache entry."""
    qhd = synth.write_clip(tmp_path / "qhd.mp4", seconds=2, fps=4, size=(2560, 1440),
                           color="green")
    sd = synth.write_clip(tmp_path / "sd.mp4", seconds=2, fps=4, size=(640, 480))
    records = [{"id": k, "video": str(v), "question": QUESTION, "options": OPTIONS,
                "answer": "C"} for k, v in (("qhd", qhd), ("sd", sd))]
    with openai_server() as server:  # score and the teacher in one run, one cache
        run(jsonl_recipe(tmp_path, records, tmp_path, [
            StageSpec("score", _model(server, audio_seconds=1.0)),
            StageSpec("visual_teacher", _model(server, max_pixels=0))]), tmp_path / "run")
        requests = {"score": [r for r in server.requests if "response_format" in r],
                    "visual_teacher": [r for r in server.requests if "response_format" not in r]}
        server.requests.clear()
        run(jsonl_recipe(tmp_path, records, tmp_path, [StageSpec("probe", _model(
            server, conditions=["v"], n=1, max_pixels=40_000))]), tmp_path / "probe-run")
        requests["probe"] = list(server.requests)
    sent = {stage: {_video_of(r): [_jpeg(p["image_url"]["url"]) for p in
                                   r["messages"][0]["content"] if p["type"] == "image_url"]
                    for r in rs} for stage, rs in requests.items()}
    sizes = {stage: {k: {f.shape[:2] for f in v} for k, v in by.items()}
             for stage, by in sent.items()}
    assert sizes["score"] == {"green": {(1080, 1920)}, "red": {(480, 640)}}  # 1440p over the cap
    assert sizes["visual_teacher"] == {"green": {(1440, 2560)}, "red": {(480, 640)}}
    for (h, w), aspect in ((*sizes["probe"]["green"], 16 / 9), (*sizes["probe"]["red"], 4 / 3)):
        assert 0.95 * 40_000 < h * w <= 40_000 and abs(w / h - aspect) < 0.02
    full, _ = decode_frames(qhd, 8)  # the same pictures, smaller: alike cell by cell
    assert np.abs(_cells(np.stack(sent["score"]["green"])) - _cells(full)).mean() < 3
    # frames of each size and each clip's audio: the teacher did not get the judge's frames
    assert len(list((tmp_path / "run/cache/media").rglob("*.npz"))) == 2 * 2 + 2


def _video_of(request: dict) -> str:
    """Which test clip a request shows, by the colour of its first frame."""
    [first] = [p for p in request["messages"][0]["content"] if p["type"] == "image_url"][:1]
    r, g, b = _jpeg(first["image_url"]["url"]).reshape(-1, 3).mean(0)
    return "green" if g > r else "red"


def _cells(frames: np.ndarray, rows: int = 9, cols: int = 16) -> np.ndarray:
    """Mean colour of each cell of a rows x cols grid, per frame."""
    n, h, w, c = frames.shape
    grid = frames[:, : h // rows * rows, : w // cols * cols].astype(float)
    return grid.reshape(n, rows, h // rows, cols, w // cols, c).mean(axis=(2, 4))


# -- merger --------------------------------------------------------------------------------------

RULES = TraceRules(min_tokens=10, max_tokens=200)
GOOD = ("<think>In the frames I see a red square, and I hear a medium tone; both point to "
        "option A.</think><answer>A</answer>")


@pytest.mark.parametrize(("trace", "check"), [
    (GOOD, None),
    ("  " + GOOD + "\n", None),
    ("Sure. " + GOOD, "format"),
    (GOOD + " done", "format"),
    (GOOD.replace("<answer>A</answer>", ""), "format"),
    (GOOD + "<answer>A</answer>", "format"),
    (GOOD.replace("<think>", "<think><think>"), "format"),
    (GOOD.replace("<answer>A", "<answer>A, because"), "answer_format"),
    (GOOD.replace("<answer>A", "<answer>B"), "answer_mismatch"),
    ("<think> </think><answer>A</answer>", "empty_think"),
    ("<think>I see and hear.</think><answer>A</answer>", "too_short"),
    (GOOD.replace("both point", "the correct answer is A and both point"), "leak"),
    (GOOD.replace("and I hear a medium tone", "and it moves steadily to the right"),
     "missing_audio_evidence"),
    (GOOD.replace("In the frames I see a red square", "I hear a tone, then the tone rises"),
     "missing_visual_evidence"),
])
def test_check_trace(trace, check):
    assert check_trace(trace, "A", RULES)[0] == check


def test_merge_stage_retries_with_feedback_then_rejects(tmp_path, media):
    markers = [("red", ""), ("blue", "[leak-once]"), ("red", "[leak]"), ("blue", "[mismatch]"),
               ("red", "[outside]"), ("blue", "[noanswer]"), ("red", "[short]")]
    with openai_server() as server:
        stages = _teach(server, "any") + [StageSpec("merge", _model(server, max_attempts=3))]
        run(jsonl_recipe(tmp_path, _rows(media, markers), media["root"], stages), tmp_path / "run")
        feedback = [r for r in server.requests if len(r["messages"]) > 1]
    kept, rej = read_stage(tmp_path / "run", "04")
    by_id = {r["id"]: r for r in kept.to_pylist()}
    assert set(by_id) == {"jsonl:ann/s0", "jsonl:ann/s1"}
    assert by_id["jsonl:ann/s0"]["merge_attempts"] == 1 and by_id["jsonl:ann/s1"]["merge_attempts"] == 2
    trace = by_id["jsonl:ann/s1"]["trace"]
    assert trace.startswith("<think>") and trace.endswith("<answer>B</answer>")
    assert by_id["jsonl:ann/s1"]["trace_answer"] == "B" and by_id["jsonl:ann/s1"]["trace_tokens"] > 30
    assert {r["id"]: r["reject_reason"] for r in rej.to_pylist()} == {
        "jsonl:ann/s2": "trace_leak", "jsonl:ann/s3": "trace_answer_mismatch", "jsonl:ann/s4": "trace_format",
        "jsonl:ann/s5": "trace_format", "jsonl:ann/s6": "trace_too_short"}
    assert all(r["merge_attempts"] == 3 for r in rej.to_pylist())
    # the failure is fed back: the retry carries the failed trace and what was wrong
    assert feedback and feedback[0]["messages"][1]["role"] == "assistant"
    assert "did not pass a check" in feedback[0]["messages"][2]["content"][0]["text"]
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert all(s["rows_in"] == s["kept"] + s["rejected"] for s in manifest["stages"])


def test_a_thinking_merger_s_own_thinking_is_not_taken_for_the_trace(tmp_path, media):
    """Qwen3 on vLLM without a reasoning parser writes its own <think> block before the
    reply: every merged trace had two think blocks and was rejected as trace_format. The
    trace is what follows the model's thinking; a reply that is no trace stays rejected."""
    markers = [("red", ""), ("blue", ""), ("red", "[outside]"), ("blue", "[fenced]")]
    with openai_server(thinking=60) as server:
        stages = _teach(server, "any") + [StageSpec("merge", _model(server))]
        run(jsonl_recipe(tmp_path, _rows(media, markers), media["root"], stages), tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "04")
    traces = {r["id"]: r["trace"] for r in kept.to_pylist()}
    assert set(traces) == {"jsonl:ann/s0", "jsonl:ann/s1", "jsonl:ann/s3"}
    assert all(t.startswith("<think>") and "hmm" not in t for t in traces.values())
    assert traces["jsonl:ann/s1"].endswith("<answer>B</answer>")
    # a trace in a code block (after the thinking) is taken out of it, in one round
    assert traces["jsonl:ann/s3"].endswith("<answer>B</answer>") and "`" not in traces["jsonl:ann/s3"]
    assert {r["id"]: r["merge_attempts"] for r in kept.to_pylist()}["jsonl:ann/s3"] == 1
    assert rej.column("reject_reason").to_pylist() == ["trace_format"]


TRACE = "<think>The red square moves while a medium tone plays.</think><answer>A</answer>"


@pytest.mark.parametrize(("reply", "trace"), [
    (TRACE, TRACE),
    ("<think>Let me see.</think>\n\n" + TRACE, TRACE),
    ("Let me see; the template opened the block.</think>\n" + TRACE, TRACE),
    ("<think>Let me see.</think> prose, then " + TRACE, None),  # no whole trace after it
    ("<think>Only thinking.</think>", None),
    ("◁think▷Kimi-VL-Thinking's own thinking.◁/think▷" + TRACE, TRACE),
    ("◁think▷Thinking cut short, then " + TRACE, None),
    (f"```xml\n{TRACE}\n```", TRACE),
    (f"```\n{TRACE}\n```", TRACE),
    (f"<think>Let me see.</think>\n```xml\n{TRACE}\n```", TRACE),
    (f"Here it is:\n```xml\n{TRACE}\n```", None),  # prose outside the block
    (f"```xml\n{TRACE}\nSo A.\n```", None),  # the block holds more than a trace
])
def test_the_trace_after_a_model_s_own_thinking_and_out_of_a_code_block(reply, trace):
    from avcurate.merger.merge import unwrapped

    assert unwrapped(reply) == (trace if trace is not None else reply)


def test_teach_and_merge_traces_cli_with_report(tmp_path, media):
    ann = tmp_path / "ann.jsonl"
    markers = [("red", ""), ("blue", ""), ("red", "[v-wrong]"), ("blue", "[leak-once]")]
    ann.write_text("".join(json.dumps(r) + "\n" for r in _rows(media, markers)))
    cols = [f"--column={c}={c}" for c in ("id", "video", "question", "options", "answer")]
    run_dir = str(tmp_path / "run")
    subprocess.run(avcurate_cmd("ingest", "--source", "jsonl", "--annotations", str(ann),
                                "--media-root", str(media["root"]), "--out", run_dir, "-q", *cols),
                   check=True, capture_output=True)
    with openai_server() as server:
        url = server.url + "/v1"
        teach = subprocess.run(avcurate_cmd(
            "teach", run_dir, "--visual-model", "kimi", "--visual-base-url", url,
            "--audio-model", "af3", "--audio-base-url", url, "--audio-seconds", "2", "-q"),
            capture_output=True, text=True)
        assert teach.returncode == 0, teach.stderr
        other = subprocess.run(avcurate_cmd(  # teach again with another visual model
            "teach", run_dir, "--visual-model", "kimi2", "--visual-base-url", url,
            "--audio-model", "af3", "--audio-base-url", url, "--audio-seconds", "2", "-q"),
            capture_output=True, text=True)
        assert other.returncode == 2 and other.stderr.startswith(
            "error: 01-visual_teacher, 02-audio_teacher, 03-teacher_filter were done with "
            "other settings (visual_teacher.model: 'kimi' -> 'kimi2'). To redo them:"), \
            other.stderr
        merged = subprocess.run(avcurate_cmd("merge-traces", run_dir, "--model", "qwen",
                                             "--base-url", url, "-q"),
                                capture_output=True, text=True)
        assert merged.returncode == 0, merged.stderr
    text = merged.stdout
    assert "Trace report" in text and "format compliance 100.0%" in text
    assert "both teachers correct: 75.0%" in text and "merge retry rate: 33.3%" in text
    assert "warning" in text  # 2 of 3 answers are B: above the 40% bias threshold
    stats = json.loads(subprocess.run(avcurate_cmd("stats", run_dir, "--json"), check=True,
                                      capture_output=True, text=True).stdout)
    assert stats["traces"]["traces"] == 3 and stats["traces"]["letter_bias"] == ["B"]
