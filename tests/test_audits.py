"""Audits of the judge: a second judge (`agree`), the spot-check page and a person's labels
(`agree --human`), against real loopback servers, real clips and a real browser.

The second judge is the test judge with one difference: on questions marked [harsh] it
gives answer accuracy 5. So every figure is known in advance from the first judge's
scores: identical dimensions agree perfectly, accuracy differs by a computable amount,
and exactly the harsh rows the first judge keeps flip to rejected.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from avcurate import curation
from avcurate.audits.sample import allocate, stratified
from avcurate.demo.model import question_in
from avcurate.media import synth
from avcurate.pipeline.recipe import StageSpec
from tests.conftest import avcurate_cmd
from tests.helpers import chromium, jsonl_recipe, read_stage, run, run_files
from tests.loopback import OpenAIFaults, _Server, openai_server

DIMS = ("video_dependency", "audio_dependency", "question_logic", "answer_accuracy")
TOPICS = ("counting", "sound", "colour")  # words of taxonomy categories the test judge matches


class HarshJudge(_Server):
    """The test judge, but answer accuracy 5 on [harsh] questions."""

    def answer(self, prompt, attempt, images, audios, videos, sample) -> str:
        text = super().answer(prompt, attempt, images, audios, videos, sample)
        if "four scales" in prompt and "[harsh]" in question_in(prompt):
            scores = json.loads(text.strip("`\n").removeprefix("json"))
            return json.dumps(scores | {"answer_accuracy": 5})
        return text


def records(root: Path) -> list[dict]:
    out = []
    for i in range(30):
        harsh = " [harsh]" if i % 4 == 0 else ""
        fault = " [429]" if i == 5 else ""
        out.append({"id": f"q{i:02d}", "video": str(root / f"clip{i % 3}.mp4"),
                    "question": f"Question {i} about {TOPICS[i % 3]}{harsh}{fault}?",
                    "options": ["one", "two", "three"], "answer": "B"})
    return out


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A run: validate -> score -> classify -> threshold (default rules), done once."""
    tmp = tmp_path_factory.mktemp("audit")
    media = tmp / "media"
    media.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        synth.write_clip(media / f"clip{i}.mp4", seconds=1.5, size=(96, 64), color=colour)
    with openai_server() as judge:
        model = {"backend": "openai", "model": "judge-a", "base_url": judge.url + "/v1"}
        recipe = jsonl_recipe(tmp, records(media), media, [
            StageSpec("validate"), StageSpec("score", dict(model)),
            StageSpec("classify", dict(model)), StageSpec("threshold")], shard_size=8)
        run(recipe, tmp / "run")
    return tmp / "run"


@pytest.fixture
def run_dir(scored_run, tmp_path):
    """A private copy of the scored run (audits write into it)."""
    target = tmp_path / "run"
    shutil.copytree(scored_run, target)
    return target


def agree_cmd(run_dir, server, *extra):
    return subprocess.run(avcurate_cmd("agree", str(run_dir), "--model", "judge-b",
                                       "--base-url", server.url + "/v1", *extra),
                          capture_output=True, text=True, timeout=180)


def first_judge(run_dir: Path) -> dict[str, dict]:
    kept, _ = read_stage(run_dir, "02")
    return {r["id"]: r for r in kept.to_pylist()}


def keeps(scores: dict) -> bool:
    """OmniVideo-R1's default threshold rules, written out independently of the package."""
    return (scores["answer_accuracy"] >= 1 - 1e-9 and scores["question_logic"] >= 0.8 - 1e-9
            and scores["composite_score"] >= 0.7 - 1e-9)


def kappa(pairs: list[tuple[bool, bool]]) -> float:
    """Cohen's kappa from its definition (po - pe) / (1 - pe)."""
    n = len(pairs)
    po = sum(a == b for a, b in pairs) / n
    pa_, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    pe = pa_ * pb + (1 - pa_) * (1 - pb)
    return (po - pe) / (1 - pe)


def test_a_second_judge_gives_the_figures_designed_and_leaves_the_run_alone(run_dir):
    before = run_files(run_dir)
    with HarshJudge(OpenAIFaults) as second:
        done = agree_cmd(run_dir, second, "--sample", "all")
        assert done.returncode == 0, done.stderr
        calls = sum(second.attempts.values())
        assert calls == 30 + 1  # every row once, and the [429] row's retry
        again = agree_cmd(run_dir, second, "--sample", "all")
        assert again.returncode == 0, again.stderr
        assert sum(second.attempts.values()) == calls  # a rerun is answered from the cache
    assert run_files(run_dir) == before  # the run's stages and manifest are untouched
    audit = run_dir / "audits" / "agree-judge-b"
    summary = json.loads((audit / "summary.json").read_text())
    first = first_judge(run_dir)
    assert summary["sample"]["rows"] == len(first) == 30
    (comp,) = summary["comparisons"]
    for d in ("video_dependency", "audio_dependency", "question_logic"):
        assert comp["dimensions"][d]["mad"] == 0
        assert comp["dimensions"][d]["kappa"] == pytest.approx(1.0)
        assert comp["dimensions"][d]["spearman"] == pytest.approx(1.0)
    harsh = [r for r in first.values() if "[harsh]" in r["question"]]
    expected_mad = sum(abs(round(r["answer_accuracy"] * 10) - 5) for r in harsh) / len(first)
    assert comp["dimensions"]["answer_accuracy"]["mad"] == pytest.approx(expected_mad)
    assert comp["dimensions"]["answer_accuracy"]["kappa"] < 1
    verdicts = [(keeps(r), keeps(r) and "[harsh]" not in r["question"]) for r in first.values()]
    confusion = comp["decision"]["confusion"]
    assert confusion == {
        "both_keep": sum(a and b for a, b in verdicts),
        "both_reject": sum(not a and not b for a, b in verdicts),
        "only_first_keeps": sum(a and not b for a, b in verdicts),
        "only_second_keeps": 0}
    assert confusion["only_first_keeps"] > 0 and confusion["both_keep"] > 0
    assert comp["decision"]["kappa"] == pytest.approx(kappa(verdicts))
    pairs = pq.read_table(audit / "pairs.parquet").to_pylist()
    assert {p["id"] for p in pairs} == set(first)
    assert all(p["second_answer_accuracy"] == 0.5 for p in pairs if "[harsh]" in
               first[p["id"]]["question"])
    assert "Agreement of first judge and second judge" in done.stdout
    assert "openai:judge-a vs openai:judge-b" in done.stdout.replace("\n", " ")


def test_the_sample_is_stratified_reproducible_and_printed_by_stats(run_dir, tmp_path):
    with HarshJudge(OpenAIFaults) as second:
        done = agree_cmd(run_dir, second, "--sample", "6", "--seed", "3", "--name", "six")
        assert done.returncode == 0, done.stderr
        assert len(second.attempts) == 6  # six distinct rows asked
    summary = json.loads((run_dir / "audits/agree-six/summary.json").read_text())
    assert summary["sample"]["rows"] == 6
    categories = {k.split(" / ")[0] for k in summary["sample"]["strata"]}
    kept, _ = read_stage(run_dir, "03")
    assert categories == set(kept.column("category").to_pylist())  # every category is in it
    stats = subprocess.run(avcurate_cmd("stats", str(run_dir), "--html",
                                        str(tmp_path / "r.html")),
                           capture_output=True, text=True, timeout=120)
    assert stats.returncode == 0, stats.stderr
    assert "audit agree-six" in stats.stdout and "keep/reject" in stats.stdout
    html = (tmp_path / "r.html").read_text()
    assert "Judge agreement (audit agree-six)" in html and "kappa (quadratic)" in html


def test_allocation_and_sampling():
    # one each, then 7 by largest remainder of 7 x (49, 4, 0) / 53 = (6.47, 0.53, 0)
    assert allocate({"a": 50, "b": 5, "c": 1}, 10) == {"a": 7, "b": 2, "c": 1}
    assert sum(allocate({"a": 50, "b": 5, "c": 1}, 30).values()) == 30
    assert allocate({"a": 3, "b": 2, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    import pyarrow as pa

    table = pa.table({"id": [f"r{i}" for i in range(100)],
                      "category": ["big"] * 90 + ["small"] * 10, "bucket": [i % 4 for i in
                                                                         range(100)]})
    one, two = stratified(table, 12, seed=1), stratified(table, 12, seed=1)
    assert one.equals(two) and one.num_rows == 12
    assert not one.equals(stratified(table, 12, seed=2))
    assert {(c, b) for c, b in zip(one.column("category").to_pylist(),
                                   one.column("bucket").to_pylist(), strict=True)} == \
        {(c, b) for c in ("big", "small") for b in range(4)}
    assert stratified(table, None, seed=0).num_rows == 100


class Failing(OpenAIFaults):
    """Up (it lists its models) but every answer is a 503: the audit starts, then stops."""

    def intercept(self, body: dict, prompt: str, attempt: int) -> bool:
        self._error(503, "service unavailable")
        return True


def test_a_stopped_audit_continues_and_settings_clashes_are_one_line(run_dir):
    same = ("--sample", "5", "--max-attempts", "1", "--timeout", "5")
    with HarshJudge(OpenAIFaults) as second:
        gone = SimpleNamespace(url=second.url)  # nothing listens there once it stops
    refused = agree_cmd(run_dir, gone, *same)  # found before the audit starts
    assert refused.returncode == 2 and "cannot reach" in refused.stderr
    assert not (run_dir / "audits/agree-judge-b").exists()
    with HarshJudge(Failing) as failing:
        down = agree_cmd(run_dir, failing, *same)
    assert down.returncode == 2 and "the audit stopped" in down.stderr
    assert "Traceback" not in down.stderr and len(down.stderr.strip().splitlines()) <= 3
    assert not (run_dir / "audits/agree-judge-b/summary.json").exists()
    with HarshJudge(OpenAIFaults) as second:
        ok = agree_cmd(run_dir, second, *same)  # the same command again, the server back up
        assert ok.returncode == 0, ok.stderr
        other = agree_cmd(run_dir, second, "--sample", "7", "--max-attempts", "1")
        assert other.returncode == 2 and "--redo" in other.stderr
        redo = agree_cmd(run_dir, second, "--sample", "7", "--max-attempts", "1", "--redo")
        assert redo.returncode == 0, redo.stderr
    summary = json.loads((run_dir / "audits/agree-judge-b/summary.json").read_text())
    assert summary["sample"]["rows"] == 7


@pytest.mark.parametrize("args, message", [
    (["--sample", "x"], "--sample takes a number of rows or 'all'"),
    (["--sample", "0"], "--sample must be at least 1"),
    (["--model", "m", "--backend", "nope"], "must be one of"),
    (["--model", "m", "--rule", "accuracy >> 1"], "cannot parse rule"),
    (["--model", "m", "--rule", "question > 1"], "agree: --rule reads 'question', but a "
     "judge's decision is made from its scores: video_dependency, audio_dependency, "
     "question_logic, answer_accuracy, composite_score"),
    (["--human", "labels.csv", "--rule", "composite_score >= 0.7 and nonexistent < 2"],
     "agree: --rule reads 'nonexistent', but"),
    (["--model", "m", "--frames", "0"], "frames = 0 must be at least 1"),
    (["--model", "m", "--seed", "-1"], "seed = -1 must be at least 0"),
    ([], "name the second judge"),
    (["--human", "labels.csv", "--model", "m"], "takes no judge options"),
    (["--human", "missing.csv"], "does not exist"),
])
def test_bad_options_stop_with_one_line(run_dir, args, message):
    done = subprocess.run(avcurate_cmd("agree", str(run_dir), *args), capture_output=True,
                          text=True, timeout=60, cwd=run_dir.parent)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (run_dir / "audits").exists()


def test_an_audit_without_a_key_stops_before_it_calls_or_writes(run_dir):
    """No key and no --base-url: the one line a stage command gives, at once, not after
    five calls that time out against an API this machine cannot reach."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    for cmd in (["agree", str(run_dir), "--model", "m"],
                ["probe", str(run_dir), "--model", "m", "--limit", "3"]):
        done = subprocess.run(avcurate_cmd(*cmd), capture_output=True, text=True, timeout=60,
                              env=env)
        assert done.returncode == 2 and "set OPENAI_API_KEY" in done.stderr, done.stderr
        assert not (run_dir / "audits").exists()


def test_a_run_without_a_score_stage_is_refused(tmp_path):
    media = tmp_path / "m"
    media.mkdir()
    synth.write_clip(media / "c.mp4", seconds=1, size=(64, 48))
    recipe = jsonl_recipe(tmp_path, [{"id": "a", "video": str(media / "c.mp4"),
                                      "question": "Q?", "options": ["x", "y"], "answer": "A"}],
                          media, [StageSpec("validate")])
    run(recipe, tmp_path / "run")
    for cmd in (["agree", str(tmp_path / "run"), "--model", "m"],
                ["spotcheck", str(tmp_path / "run"), "--out", str(tmp_path / "s.html")]):
        done = subprocess.run(avcurate_cmd(*cmd), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "no finished score stage" in done.stderr


def write_labels(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", *DIMS, "decision", "note"])
        writer.writeheader()
        writer.writerows(rows)


def test_human_labels_are_compared_with_every_judge(run_dir, tmp_path):
    with HarshJudge(OpenAIFaults) as second:
        assert agree_cmd(run_dir, second, "--sample", "all").returncode == 0
    first = first_judge(run_dir)
    ids = sorted(first)[:8]
    # the person agrees with the first judge on everything but rejects q00 and q04
    rows = [{"id": i, **{d: round(first[i][d] * 10) for d in DIMS},
             "decision": "reject" if i in ("q00", "q04") else
             ("keep" if keeps(first[i]) else "reject"), "note": "checked, \"ok\""}
            for i in ids]
    rows.append({"id": sorted(first)[9]})  # not labelled: skipped
    labels = tmp_path / "labels.csv"
    write_labels(labels, rows)
    done = subprocess.run(avcurate_cmd("agree", str(run_dir), "--human", str(labels)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "audits/human-labels/summary.json").read_text())
    assert summary["sample"]["rows"] == 8
    person_vs = {c["b"]: c for c in summary["comparisons"]}
    assert set(person_vs) == {"openai:judge-a", "openai:judge-b"}
    a = person_vs["openai:judge-a"]
    assert all(a["dimensions"][d]["mad"] == 0 for d in DIMS)
    expected = [(r["decision"] == "keep", keeps(first[r["id"]])) for r in rows[:8]]
    assert a["decision"]["confusion"]["only_second_keeps"] == sum(
        (not p) and j for p, j in expected)
    b = person_vs["openai:judge-b"]
    harsh = [i for i in ids if "[harsh]" in first[i]["question"]]
    assert b["dimensions"]["answer_accuracy"]["mad"] == pytest.approx(
        sum(abs(round(first[i]["answer_accuracy"] * 10) - 5) for i in harsh) / 8)


@pytest.mark.parametrize("content, message", [
    ("id,video_dependency\nnope,5\n", "not rows this run scored"),
    ("id,video_dependency\nq01,eleven\n", "line 2: video_dependency = 'eleven' is not an "
                                          "integer from 0 to 10"),
    ("id,video_dependency\nq01,11\n", "is not an integer from 0 to 10"),
    ("id,decision\nq01,maybe\n", "write keep, reject or leave it empty"),
    ("id,decision\nq01,keep\nq01,reject\n", "labelled twice"),
    ("video_dependency\n5\n", "with 'id'"),
    ("id,decision\nq01,\n", "no labelled rows"),
])
def test_bad_label_files_are_one_line_errors(run_dir, tmp_path, content, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    done = subprocess.run(avcurate_cmd("agree", str(run_dir), "--human", str(labels)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_the_spotcheck_page_shows_each_sample_and_refuses_foreign_files(run_dir, tmp_path):
    with HarshJudge(OpenAIFaults) as second:
        assert agree_cmd(run_dir, second, "--sample", "all").returncode == 0
    sheet = tmp_path / "sheet.html"
    done = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out", str(sheet),
                                       "--sample", "9", "--copy-media"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = sheet.read_text()
    assert page.count('<section class="sample"') == 9 and page.count("<video ") == 9
    assert "openai:judge-a" in page and "openai:judge-b" in page
    media = tmp_path / "sheet_media"
    copied = sorted(p.name for p in media.iterdir() if not p.name.startswith("."))
    assert len(copied) == len(set(copied)) <= 3  # one copy per distinct clip
    # a new page in its place keeps only the clips it shows (they piled up); a file of the
    # user's in that folder stops the command and is left alone
    again = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out", str(sheet),
                                        "--sample", "1", "--copy-media"),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    [clip] = [p.name for p in media.iterdir() if not p.name.startswith(".")]
    assert f'src="sheet_media/{clip}"' in sheet.read_text()
    (media / "notes.txt").write_text("mine")
    mixed = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out", str(sheet),
                                        "--sample", "9", "--copy-media"),
                           capture_output=True, text=True, timeout=60)
    assert mixed.returncode == 2 and "is not empty (notes.txt)" in mixed.stderr
    assert sorted(p.name for p in media.iterdir() if not p.name.startswith(".")) == sorted(
        [clip, "notes.txt"]) and sheet.read_text().count('<section class="sample"') == 1
    assert "http" not in page.split("<main>")[0]  # nothing fetched from the network
    for args, message in ((["--sample", "x"], "--sample takes a number of rows or 'all'"),
                          (["--seed", "-1"], "--seed must be at least 0")):
        bad = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out",
                                          str(tmp_path / "bad.html"), *args),
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad.html").exists()
    foreign = tmp_path / "mine.html"
    foreign.write_text("<p>my notes</p>")
    refused = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out", str(foreign)),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not written by avcurate" in refused.stderr
    assert foreign.read_text() == "<p>my notes</p>"


def test_clip_copies_on_a_full_disk_are_whole_or_absent(run_dir, small_disk):
    """The page's clip copies were written in place: a full disk left half a clip under its
    name, and the error named the source clip as the file without room."""
    sheet = small_disk.path / "sheet.html"
    cmd = avcurate_cmd("spotcheck", str(run_dir), "--out", str(sheet), "--sample", "9",
                       "--copy-media")
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert full.returncode == 2 and "Traceback" not in full.stderr
    assert full.stderr.startswith(f"error: No space left on device: {sheet.parent}/sheet_media/")
    media = sheet.parent / "sheet_media"
    assert [p.name for p in media.iterdir() if not p.name.startswith(".avcurate")] == []
    assert not sheet.exists()
    # what a kill during a copy leaves: the copy's temporary file, half written
    planned = json.loads((media / ".avcurate-spotcheck.json").read_text())["files"]
    (media / f".{planned[0]}.tmp").write_bytes(b"half a clip")
    small_disk.resize("4m")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {r["id"]: r for r in first_judge(run_dir).values()}
    copies = [p for p in media.iterdir() if not p.name.startswith(".")]
    originals = {Path(r["video"]).name: Path(r["video"]) for r in rows.values()}
    assert copies and all(c.read_bytes() == originals[c.name.split("-", 1)[1]].read_bytes()
                          for c in copies)
    assert sorted(c.name for c in copies) == sorted(planned)  # the half copy was replaced
    assert not list(media.glob(".*.tmp"))


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs "
                                               "it with apt-get)")
def test_the_page_in_a_real_browser_round_trips_to_agreement_figures(run_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    sheet = tmp_path / "sheet.html"
    done = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out", str(sheet),
                                       "--sample", "6", "--copy-media"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first = first_judge(run_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True)
        page.goto(sheet.as_uri())
        page.wait_for_function("[...document.querySelectorAll('video')]"
                               ".every(v => v.readyState >= 1)", timeout=20000)
        durations = page.evaluate("[...document.querySelectorAll('video')].map(v => v.duration)")
        assert all(d == pytest.approx(1.5, abs=0.1) for d in durations)  # the clips play
        sections = page.locator("section.sample")
        ids = [sections.nth(k).get_attribute("data-id") for k in range(sections.count())]
        for k, sid in enumerate(ids[:4]):  # label four rows: the judge's scores, +1 on logic
            s = sections.nth(k)
            for d in DIMS:
                value = round(first[sid][d] * 10) + (1 if d == "question_logic" and k == 0
                                                     and first[sid][d] < 1 else 0)
                s.locator(f"input[name={d}]").fill(str(value))
            s.locator("input[value=keep]" if k % 2 == 0 else "input[value=reject]").check()
        sections.nth(1).locator("input[name=note]").fill('too easy, "blind"')
        assert page.inner_text("#progress") == f"4 of {len(ids)} labelled"
        # what was typed is kept in local storage and put back when the page opens: the
        # form is emptied and the page's own restore run. (A real reload read the storage
        # as a new document, which on a loaded CI machine twice came up empty, a race
        # inside the browser that a person typing never meets.)
        page.evaluate("""() => { for (const i of document.querySelectorAll("input")) {
            if (i.type === "radio") i.checked = false; else i.value = ""; } }""")
        assert page.evaluate("labels().filter(labelled).length") == 0
        page.evaluate("restore(); refresh();")
        assert page.inner_text("#progress") == f"4 of {len(ids)} labelled"
        assert sections.nth(1).locator("input[name=note]").input_value() == 'too easy, "blind"'
        sections.nth(4).locator("input[name=video_dependency]").fill("11")
        page.click("#save-csv")
        assert "not integers from 0 to 10" in page.inner_text("#status")
        sections.nth(4).locator("input[name=video_dependency]").fill("")
        with page.expect_download() as download:
            page.click("#save-csv")
        labels_csv = tmp_path / "labels.csv"
        download.value.save_as(labels_csv)
        with page.expect_download() as download:
            page.click("#save-json")
        labels_json = tmp_path / "labels.json"
        download.value.save_as(labels_json)
        browser.close()
    saved = list(csv.DictReader(labels_csv.open()))
    assert [r["id"] for r in saved] == ids[:4]
    assert saved[1]["note"] == 'too easy, "blind"'
    assert json.loads(labels_json.read_text())["labels"][1]["decision"] == "reject"
    for labels in (labels_csv, labels_json):
        done = subprocess.run(avcurate_cmd("agree", str(run_dir), "--human", str(labels)),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        summary = json.loads((run_dir / f"audits/human-{labels.stem}/summary.json").read_text())
        (comp,) = summary["comparisons"]
        dims = comp["dimensions"]
        assert dims["video_dependency"]["n"] == 4 and dims["video_dependency"]["mad"] == 0
        bumped = first[ids[0]]["question_logic"] < 1
        assert dims["question_logic"]["mad"] == pytest.approx(0.25 if bumped else 0)
        expected = [(k % 2 == 0, keeps(first[sid])) for k, sid in enumerate(ids[:4])]
        c = comp["decision"]["confusion"]
        assert c["both_keep"] == sum(a and b for a, b in expected)
        assert c["only_first_keeps"] == sum(a and not b for a, b in expected)


def _clip_as(path: Path, container: str, codec: str, pix_fmt: str = "yuv420p") -> None:
    """A clip in a container or video codec that browsers do not play, written at `path`."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=container) as c:
        v = c.add_stream(codec, rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, pix_fmt
        for _ in range(10):
            c.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8),
                                                      format="rgb24")))
        c.mux(v.encode())


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs "
                                               "it with apt-get)")
def test_a_clip_the_browser_cannot_play_says_so_beside_its_player(run_dir, tmp_path):
    """An .avi clip (an error), or MPEG-4 Part 2 or HEVC video (no error, no picture),
    showed a blank player that a person could take for a clip with nothing in it; the page
    now says the browser cannot play it and links the file. Clips that play get no line."""
    import re

    from playwright.sync_api import sync_playwright

    sheet = tmp_path / "sheet.html"
    done = subprocess.run(avcurate_cmd("spotcheck", str(run_dir), "--out", str(sheet),
                                       "--sample", "6", "--copy-media"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    sources = re.findall(r'<video controls preload="metadata" src="([^"]+)"', sheet.read_text())
    broken = list(dict.fromkeys(sources))[:2]  # two of the copies the page shows
    _clip_as(sheet.parent / broken[0], "avi", "mjpeg", "yuvj420p")
    _clip_as(sheet.parent / broken[1], "mp4", "mpeg4")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(sheet.as_uri())
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => "
                               "v.readyState >= 1 || v.error)", timeout=20000)
        notes = page.evaluate("[...document.querySelectorAll('section.sample')].map(s => {"
                              " const n = s.querySelector('.unplayable');"
                              " return n && [n.textContent, n.querySelector('a').href]; })")
        browser.close()
    for src, note in zip(sources, notes, strict=True):
        if src not in broken:
            assert note is None, src
            continue
        name = src.rsplit("/", 1)[-1]
        text, href = note
        assert text.startswith(f"This browser cannot play {name} (its container or video")
        assert href.endswith(name)


def test_an_audit_whose_prompt_file_was_edited_is_not_taken_as_done(run_dir, tmp_path):
    """The second judge's rubric file is part of the audit's settings by its text, not only
    its path: after an edit, the old figures are not shown as the new prompt's."""
    prompt = tmp_path / "rubric.md"
    prompt.write_text((Path(curation.__file__).parent / "prompts/score.md").read_text())
    same = ("--sample", "5", "--prompt", str(prompt))
    with HarshJudge(OpenAIFaults) as second:
        first = agree_cmd(run_dir, second, *same)
        assert first.returncode == 0, first.stderr
        asked = len(second.requests)
        prompt.write_text(prompt.read_text() + "\nBe strict about the answer key.\n")
        edited = agree_cmd(run_dir, second, *same)
        assert edited.returncode == 2 and "--redo" in edited.stderr
        assert len(second.requests) == asked
        redone = agree_cmd(run_dir, second, *same, "--redo")
        assert redone.returncode == 0, redone.stderr
        assert len(second.requests) == 2 * asked  # the new text is sent for every row
    assert "Be strict" in second.requests[-1]["messages"][0]["content"][-1]["text"]


def test_clips_named_at_the_file_name_limit_are_copied_beside_the_page(tmp_path, media):
    from avcurate.audits.spotcheck import _copy_media, _plan_copies

    names = ["x" * 246 + ".mp4", "é" * 123 + ".mp4"]  # 250 bytes each: the folder holds them
    for name, clip in zip(names, ("good", "good2"), strict=True):
        shutil.copy(media[clip], tmp_path / name)
    copies = _plan_copies([{"video": str(tmp_path / n)} for n in names])
    _copy_media(copies, tmp_path / "page_media")
    made = sorted((tmp_path / "page_media").iterdir())
    assert [p.name for p in made] == sorted(copies.values())
    assert all(len(p.name.encode()) <= 240 and p.suffix == ".mp4" for p in made)
    assert sorted(p.read_bytes() for p in made) == sorted(
        (tmp_path / n).read_bytes() for n in names)


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_labels_saved_again_by_a_spreadsheet_are_read(tmp_path, separator):
    """The person opens the page's CSV in a spreadsheet and saves it: with a byte-order mark,
    CRLF line ends, the locale's separator (";" in much of Europe, or tabs), and a note
    holding a line break and the separator. The same labels come out."""
    from avcurate.audits.labels import FIELDS, read_labels

    rows = [["q01", "8", "3", "10", "10", "keep", f"fine{separator} mostly"],
            ["q02", "", "", "", "", "reject", "the key is wrong\nsee the clip at 0:02"],
            ["q03", "", "", "", "", "", ""]]  # not labelled
    path = tmp_path / "labels.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f, delimiter=separator, lineterminator="\r\n").writerows([FIELDS, *rows])
    labels = read_labels(path, {"q01", "q02", "q03"})
    assert labels["id"] == ["q01", "q02"] and labels["keep"] == [True, False]
    assert labels["video_dependency"] == [0.8, None] and labels["answer_accuracy"] == [1.0, None]


def test_a_bad_label_after_a_note_on_two_lines_is_named_by_its_own_line(tmp_path):
    """A note holding a line break takes two lines of the file: the line named for a bad
    score further down is the file's own line, as an editor shows it."""
    from avcurate.audits.labels import read_labels
    from avcurate.audits.sample import AuditError

    path = tmp_path / "labels.csv"
    path.write_text('id,video_dependency,note\nq01,8,"two\nlines"\nq02,eleven,\n')
    with pytest.raises(AuditError, match=r"labels.csv line 4: video_dependency = 'eleven'"):
        read_labels(path, {"q01", "q02"})
