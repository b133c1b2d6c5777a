"""The demo: every stage end to end against the built-in demo model, against a server the
user names (OpenAI wire and Gemini wire), resume, Ctrl-C, bad options; and the demo model's
own perception and judgements on real clips."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, avcurate_cmd
from helpers import chromium, imported_modules, read_stage
from loopback import gemini_server, openai_server

from avcurate.demo.model import DemoModel, options_in
from avcurate.demo.perception import perceive
from avcurate.demo.tour import Endpoint, serving
from avcurate.media import decode, synth
from avcurate.models.request import AudioPart, ImagePart

STAGES = ["validate", "dedup", "score", "classify", "threshold", "probe", "threshold", "balance",
          "subset", "visual_teacher", "audio_teacher", "teacher_filter", "merge"]


def sh(*args, env=None, check=True):
    return subprocess.run(avcurate_cmd(*args), capture_output=True, text=True, check=check,
                          env=env)


def _rejects(run_dir, stage):
    _, rej = read_stage(run_dir, stage)
    # the record's own id (LLaVA ids are `<position>-<record id>`)
    return {r["id"].rsplit("/", 1)[1].split("-", 1)[1]: r["reject_reason"]
            for r in rej.to_pylist()}


def _mtimes(run_dir):
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.parquet")}


@dataclass
class DemoRun:
    out: Path
    stdout: str
    imported: set[str]  # every module the command imported, from `python -X importtime`


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> DemoRun:
    """One whole `avcurate demo --train` as a user runs it, shared by the tests that read
    what it made (each run takes half a minute or more); they only read it or resume it."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("shared") / "demo"
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "avcurate", "demo",
                           "--out", str(out), "-q", "--train"],
                          capture_output=True, text=True, check=True)
    imported = imported_modules(done.stderr)
    return DemoRun(out, done.stdout, imported)


def test_demo_accounts_for_every_record(demo_run):
    out = demo_run.out
    assert "What happened" in demo_run.stdout and "avcurate status" in demo_run.stdout
    run_dir = out / "run"
    ingest_kept, ingest_rej = read_stage(run_dir, "00")
    kept, rej = read_stage(run_dir, "01")
    annotations = json.loads((out / "annotations/llava_video.json").read_text())
    avqa = json.loads((out / "annotations/avqa.json").read_text())
    vista = json.loads((out / "annotations/video_vista.json").read_text())
    assert len(list((out / "media").rglob("*.mp4"))) >= 38
    # every record is accounted for: llava multi-turn records give two samples
    multi = sum(1 for r in annotations if isinstance(r, dict)
                and len(r.get("conversations", [])) == 4)
    assert ingest_kept.num_rows + ingest_rej.num_rows == (len(annotations) + multi + len(avqa)
                                                          + len(vista))
    assert set(ingest_kept.column("source").to_pylist()) == {"llava-video", "video-vista", "avqa"}
    assert kept.num_rows + rej.num_rows == ingest_kept.num_rows
    reasons = set(rej.column("reject_reason").to_pylist())
    assert {"silent_audio", "no_audio_stream", "truncated", "missing_media", "unreadable_media",
            "answer_not_in_options", "empty_question", "duplicate_id",
            "too_few_options"} <= reasons
    assert set(ingest_rej.column("reject_reason").to_pylist()) == {"malformed_annotation",
                                                                   "unsafe_path"}
    assert kept.num_rows >= 25
    status = sh("status", str(run_dir))
    assert "01-validate" in status.stdout and "silent_audio" in status.stdout
    # the demo's folder is not the run, and the error names the run inside it
    outer = sh("status", str(out), check=False)
    assert outer.returncode == 2 and f"the run(s) inside it: {run_dir}" in outer.stderr
    outer = sh("dedup", str(out), check=False)  # every command says it the same way
    assert outer.returncode == 2 and f"the run(s) inside it: {run_dir}" in outer.stderr
    # running the demo recipe again resumes: nothing is recomputed
    again = sh("run", str(out / "demo.toml"), "--out", str(run_dir), "-q")
    assert "01-validate" in again.stdout


def test_the_demo_never_imports_ray(demo_run):
    """Ray takes seconds to import and is only for `--executor ray`."""
    assert "avcurate.pipeline.runner" in demo_run.imported  # the import list is read right
    assert not {m for m in demo_run.imported if m == "ray" or m.startswith("ray.")}


def test_demo_runs_every_stage_with_the_demo_model_and_resumes(demo_run, tmp_path):
    out, run_dir = demo_run.out, demo_run.out / "run"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"][1:]] == STAGES
    assert all(s["status"] == "done" and s["rows_in"] == s["kept"] + s["rejected"]
               for s in manifest["stages"])
    # the funnel is computed from the media: each planted row is rejected where designed
    assert _rejects(run_dir, "02") == {
        "demo_01": "duplicate_of:llava-video:llava_video/1-demo_01"}
    assert _rejects(run_dir, "05") == {
        "demo_wrong_key_0": "failed(answer_accuracy == 1)",
        "demo_wrong_key_6": "failed(answer_accuracy == 1)",
        "demo_no_media": "failed(composite_score >= 0.7)"}
    blind = _rejects(run_dir, "07")
    assert {k for k in blind if "gives_away" in k} == {"demo_gives_away_2", "demo_gives_away_8",
                                                       "demo_gives_away_14"}
    assert "over_cap" in _rejects(run_dir, "08").values()
    final, _ = read_stage(run_dir, "13")
    rows = final.to_pylist()
    assert rows and all(r["trace"].startswith("<think>") for r in rows)
    assert {r["judge_model"] for r in rows} == {"openai:avcurate-demo-model"}
    colour = [r for r in rows if r["category"] == "object attributes"]
    assert colour and all(r["probe_acc_v"] == 1 and r["probe_acc_a"] < 1 for r in colour)
    # labelled as the demo model's work everywhere it is shown
    assert "Demo model" in (out / "report.html").read_text()
    assert "Demo data" in (out / "export/README.md").read_text()
    assert "not a real judge" in demo_run.stdout and "load_dataset" in demo_run.stdout
    # the commands to copy stand whole on their lines (stdout is a pipe: 80 columns)
    shown = [line.strip() for line in demo_run.stdout.splitlines()]
    assert f"python -c \"import datasets; print(datasets.load_dataset('{out / 'export'}'))\"" \
        in shown
    assert ("avcurate demo --out demo_real --base-url http://localhost:8000/v1 --model "
            "Qwen/Qwen2.5-Omni-7B") in shown
    import datasets

    loaded = datasets.load_dataset(str(out / "export"), cache_dir=str(tmp_path / "hf"))
    assert loaded["train"].num_rows + loaded["validation"].num_rows == len(rows)
    _readme_shows_the_demo_card(out / "export", tmp_path / "hf")
    # --train: GSPO steps of a tiny policy, with a learning signal in some step
    metrics = [json.loads(x) for x in (out / "train/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert any(m["reward_std"] > 0 and m["loss"] != 0 for m in metrics)
    # a re-run resumes: no shard is rewritten, the trainer does not train again
    before = _mtimes(run_dir) | {out / "train/metrics.jsonl":
                                 (out / "train/metrics.jsonl").stat().st_mtime_ns}
    sh("demo", "--out", str(out), "-q", "--train")
    assert before == _mtimes(run_dir) | {out / "train/metrics.jsonl":
                                         (out / "train/metrics.jsonl").stat().st_mtime_ns}


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs "
                                               "it with apt-get)")
def test_the_report_in_a_real_browser_shows_every_label_whole(demo_run):
    """Each chart's text lies inside its chart (a scatter's title ran past its plot's width
    and was cut: "n = 3" for "n = 37"), and in every table numbers are right-aligned and
    text left-aligned, on one line (or the lines a header breaks into), within the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((demo_run.out / "report.html").as_uri())
        charts, clipped = page.evaluate("""() => {
            const svgs = [...document.querySelectorAll('svg')];
            const cut = svgs.flatMap(svg => {
                const box = svg.getBoundingClientRect();
                return [...svg.querySelectorAll('text')].filter(t => {
                    const r = t.getBoundingClientRect();
                    return r.left < box.left - 0.5 || r.right > box.right + 0.5
                        || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5;
                }).map(t => t.textContent);
            });
            return [svgs.length, cut];
        }""")
        funnel = page.evaluate("""() => {
            const table = [...document.querySelectorAll('table')].find(
                t => t.rows[0].cells[0].textContent === 'stage'
                     && t.rows[0].cells[1].textContent === 'status');
            return [...table.rows].map(r => [...r.cells].map(c => getComputedStyle(c).textAlign));
        }""")
        wrapped = page.evaluate("""() => [...document.querySelectorAll('td, th')].filter(c => {
            const range = document.createRange();
            range.selectNodeContents(c);
            const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
            return lines.size > c.querySelectorAll('br').length + 1;
        }).map(c => c.textContent)""")
        too_wide = page.evaluate("""() => {
            const body = document.body.getBoundingClientRect();
            return [...document.querySelectorAll('table')].filter(
                t => t.getBoundingClientRect().right > body.right + 0.5
            ).map(t => t.rows[0].textContent);
        }""")
        browser.close()
    assert charts >= 5 and clipped == []  # the funnel, categories, scores, the probe's scatters
    header, *rows = funnel
    assert header == ["left", "left", "right", "right", "right", "right"]
    assert all(row == header for row in rows)
    assert wrapped == []  # "llava-video" was cut at its hyphen in the sources table
    assert too_wide == []  # the sources table ran past the page with "rejected_validate"...


def test_demo_against_a_server_the_user_names(tmp_path):
    with openai_server() as server:
        sh("demo", "--out", str(tmp_path / "d"), "-q", "--base-url", server.url + "/v1",
           "--model", "served-model")
        assert server.requests and {b["model"] for b in server.requests} == {"served-model"}
    manifest = json.loads((tmp_path / "d/run/manifest.json").read_text())
    models = {s["model"]["model"] for s in manifest["stages"] if s.get("model")}
    assert models == {"served-model"}
    assert "Demo model" not in (tmp_path / "d/report.html").read_text()
    assert "Demo data" not in (tmp_path / "d/export/README.md").read_text()
    # the folder moved: refused in one line naming the move, and --force (which `demo` did
    # not have, though the refusal told the user to give it) redoes it from the run's cache
    shutil.move(tmp_path / "d", tmp_path / "moved")
    args = ("demo", "--out", str(tmp_path / "moved"), "-q", "--model", "served-model")
    with openai_server() as server:
        url = ("--base-url", server.url + "/v1")
        refused = sh(*args, *url, check=False)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
        assert f"ingested its sources under {tmp_path / 'd'}, and the recipe names the same " \
               f"files under {tmp_path / 'moved'}" in " ".join(refused.stderr.split())
        assert "Use --force" in refused.stderr
        sh(*args, *url, "--force")
        assert server.requests == []  # every answer came from the run's cache
    final, _ = read_stage(tmp_path / "moved/run", "13")
    assert final.num_rows and all(v.startswith(str(tmp_path / "moved/"))
                                  for v in final["video"].to_pylist())


def test_demo_with_gemini(tmp_path):
    """Gemini 2.5 thinks within max_output_tokens (2,000 tokens here): with a real model the
    demo gives every model stage room for it, where classify's 64 tokens ran out before
    any answer."""
    env = os.environ | {"GEMINI_API_KEY": "test-key"}
    with gemini_server(thinking=2000) as server:
        sh("demo", "--out", str(tmp_path / "d"), "-q", "--backend", "gemini", "--model",
           "gemini-2.5-pro", "--base-url", server.url, env=env)
        assert server.requests
        limits = {b["generationConfig"]["maxOutputTokens"] for b in server.requests}
    assert limits == {8192}
    final = read_stage(tmp_path / "d/run", "13")[0].to_pylist()
    assert final and {r["judge_model"] for r in final} == {"gemini:gemini-2.5-pro"}


@pytest.mark.parametrize("args, env, message", [
    (["--base-url", "http://127.0.0.1:9/v1"], {}, "--base-url needs --model"),
    (["--backend", "gemini", "--model", "gemini-2.5-pro"], {"GEMINI_API_KEY": ""},
     "needs GEMINI_API_KEY"),
    (["--backend", "vllm"], {}, "--backend must be openai or gemini"),
    # a wrong URL, or OpenAI's API without a key: once the clips were made and validate ran
    # before score's first calls stopped the demo
    (["--base-url", "http://127.0.0.1:9/v1", "--model", "m"], {},
     "cannot reach http://127.0.0.1:9/v1 (Connection refused); is the server up"),
    (["--model", "gpt-x"], {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""},
     "model 'gpt-x': set OPENAI_API_KEY"),
])
def test_demo_refuses_bad_options_before_making_anything(tmp_path, args, env, message):
    done = sh("demo", "--out", str(tmp_path / "d"), *args, env=os.environ | env, check=False)
    assert done.returncode == 2 and message in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and not (tmp_path / "d").exists()


def test_the_demo_server_stops_on_ctrl_c():
    with pytest.raises(KeyboardInterrupt), serving(Endpoint()) as live:
        port = int(live.base_url.rsplit(":", 1)[1].split("/")[0])
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        raise KeyboardInterrupt
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_client_hanging_up_leaves_no_traceback_on_the_demo_servers_terminal(capfd):
    """Ctrl-C on a run closes its connections while the demo server is answering them."""
    import struct

    from avcurate.demo.server import demo_server

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with demo_server(latency=0.3) as server:
        port = server.server_address[1]
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port), timeout=2)
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            # a reset, not a polite close: the answer's write then fails at once
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        deadline = time.monotonic() + 5
        while server.attempts["hi"] < 3 or server.in_flight:  # all three answered or failed
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert "Traceback" not in capfd.readouterr().err


def _request_media(path, frames=4, seconds=3.0):
    pixels, _ = decode.frames(str(path), frames)
    pcm = decode.audio(path, seconds)
    return [ImagePart(p, 0.0).jpeg for p in pixels], [AudioPart(pcm, 16000).wav]


@pytest.mark.parametrize("colour, freq, pitch", [("blue", 880.0, "high"),
                                                 ("orange", 220.0, "low")])
def test_the_demo_model_sees_and_hears_real_clips(tmp_path, colour, freq, pitch):
    clip = synth.write_clip(tmp_path / "c.mp4", color=colour, freq=freq)
    images, audios = _request_media(clip)
    p = perceive(images, audios)
    assert (p.colour, p.pitch) == (colour, pitch) and p.motion in ("left", "right")
    model = DemoModel()
    score = "Rate it on four scales.\n\nQuestion:\nWhat color is the square?\n\nOptions:\n" \
            f"A. green\nB. {colour}\nC. red\n\nAnswer key: "
    right = json.loads(model.answer(score + "B", images, audios))
    wrong = json.loads(model.answer(score + "A", images, audios))
    assert right["answer_accuracy"] == 10 and wrong["answer_accuracy"] == 1
    assert right["video_dependency"] > right["audio_dependency"]
    assert "demo model" in right["answer_accuracy_rationale"]
    teacher = ("Audio Description: ...\nQuestion: Is the tone low or high?\nOptions:\n"
               "A. low\nB. high\n")
    answer = model.answer(teacher, [], audios)
    assert f"Answer: ({'A' if pitch == 'low' else 'B'})" in answer
    assert options_in(teacher) == [("A", "low"), ("B", "high")]


def test_demo_train_without_torch_is_one_line(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from avcurate.cli import app

    monkeypatch.setitem(sys.modules, "torch", None)  # as if the train extra were missing
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--train", "-q"])
    assert result.exit_code == 2 and "--train needs torch" in result.output
    assert not (tmp_path / "d").exists()


def _readme_shows_the_demo_card(export: Path, cache: Path) -> None:
    """The README's trimmed card and load_dataset output are what the demo produces (the
    content hash aside, which depends on the Parquet writer's version)."""
    import datasets
    import yaml
    from huggingface_hub import DatasetCard

    readme = (REPO / "README.md").read_text()
    shown = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    card = DatasetCard.load(export / "README.md").data.to_dict()
    assert {k: card[k] for k in ("license", "pretty_name")} == {
        k: shown[k] for k in ("license", "pretty_name")}
    for mine, theirs in zip(shown["configs"], card["configs"], strict=True):
        assert mine["description"].split()[:2] == theirs["description"].split()[:2]
        assert {k: v for k, v in mine.items() if k != "description"} == {
            k: v for k, v in theirs.items() if k != "description"}
    [info] = [i for i in card["dataset_info"] if i["config_name"] == "default"]
    features = {f["name"]: f for f in info["features"]}
    for f in shown["dataset_info"][0]["features"]:
        assert features[f["name"]] == f
    assert {s["name"]: s["num_examples"] for s in shown["dataset_info"][0]["splits"]} == {
        s["name"]: s["num_examples"] for s in info["splits"]}
    loaded = datasets.load_dataset(str(export), "audio_visual", cache_dir=str(cache))
    assert str(loaded) in readme.split("Loading the `audio_visual` config:")[1]


def test_next_steps_show_paths_as_written_and_commands_unwrapped(capsys, monkeypatch):
    """A folder named with brackets and a space is not taken for markup and is quoted in
    the commands, and at 40 columns the prose wraps while each command stays whole."""
    from avcurate.cli.common import out, print_lines
    from avcurate.demo.tour import TourResult, next_steps

    where = Path("runs [v2]/demo")
    result = TourResult(run_dir=where / "run", report=where / "report.html",
                        export=where / "export", configs={"default": {"train": 3}})
    monkeypatch.setattr(out, "width", 40)
    print_lines(next_steps(where, result, Endpoint()))
    shown = capsys.readouterr().out.splitlines()
    assert "  avcurate status 'runs [v2]/demo/run'             # the funnel again" in shown
    assert "  avcurate demo --out demo_gemini --backend gemini --model gemini-2.5-pro" in shown
    assert all(len(line) <= 40 for line in shown if not line.startswith("  "))
    assert "runs [v2]/demo/annotations holds" in " ".join(x.strip() for x in shown)


def test_demo_never_writes_into_a_folder_of_the_users(tmp_path):
    """The demo writes annotations/, media/, run/, export/ and report.html: it takes a new
    or empty folder, or one it made, and a folder with the user's files (or a file) stops
    it with one line and leaves everything as it was."""
    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "report.html").write_text("my report")
    done = sh("demo", "--out", str(theirs), "-q", check=False)
    assert done.returncode == 2
    assert "is not empty (report.html) and is not a folder made by avcurate demo" in done.stderr
    assert [p.name for p in theirs.iterdir()] == ["report.html"]
    assert (theirs / "report.html").read_text() == "my report"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = sh("demo", "--out", str(a_file), "-q", check=False)
    assert done.returncode == 2 and "is a file" in done.stderr and a_file.read_text() == "x"


def test_make_demo_claims_its_folder_and_recognises_it_after_a_kill(tmp_path):
    """The marker is written before anything else, so a demo killed half-way (annotations
    but no demo.toml) is still the demo's folder; an empty folder is claimed."""
    from avcurate.demo.data import MARKER, claim, make_demo

    empty = tmp_path / "empty"
    empty.mkdir()
    claim(empty)
    assert (empty / MARKER).is_file()
    (empty / "annotations").mkdir()  # a demo killed half-way
    recipe = make_demo(empty)
    assert recipe.is_file() and (empty / "annotations" / "avqa.json").is_file()
    user = tmp_path / "user"
    user.mkdir()
    (user / "demo.toml").write_text("mine")
    made = r"is not empty \(demo.toml\) and is not a folder made by avcurate demo"
    with pytest.raises(ValueError, match=made):
        make_demo(user)
    assert (user / "demo.toml").read_text() == "mine"
