"""The probe stage against a loopback policy that really looks (colour) and listens (pitch).

Questions are built so that one needs the picture, one the sound, one both, one is
answerable from the text alone, one is never answered and one is answered right a
fixed share of the time; the measured columns must come out as designed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avcurate import curation
from avcurate.media import synth
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.runner import RunError, extend_run
from tests.conftest import avcurate_cmd
from tests.helpers import jsonl_recipe, read_stage, rows_by_id, run
from tests.loopback import gemini_server, openai_server

CLIPS = {"red_medium": ("red", 440.0), "green_low": ("green", 220.0),
         "blue_high": ("blue", 880.0)}
QUESTIONS = [
    # id, clip, question, options, answer
    ("colour", "red_medium", "What colour is the square?", ["blue", "red", "green", "yellow"],
     "B"),
    ("pitch", "green_low", "How high is the tone?", ["high", "low", "medium"], "B"),
    ("both", "blue_high", "Which square and tone are in the clip?",
     ["a blue square with a low tone", "a blue square with a high tone",
      "a red square with a high tone", "a red square with a low tone"], "B"),
    ("blind", "red_medium", "How many sides does a square have?", ["three", "four", "five"], "B"),
    ("never", "red_medium", "[never] What is going on?", ["x", "y", "z", "w"], "A"),
    ("cycle", "green_low", "[cycle] Which one?", ["p", "q", "r", "s"], "A"),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_media")
    for name, (color, freq) in CLIPS.items():
        synth.write_clip(root / f"{name}.mp4", seconds=2, size=(96, 64), color=color, freq=freq)
    return root


def records(clips, with_open=True):
    out = [{"id": i, "video": str(clips / f"{c}.mp4"), "question": q, "options": o, "answer": a}
           for i, c, q, o, a in QUESTIONS]
    if with_open:
        out.append({"id": "open", "video": str(clips / "red_medium.mp4"),
                    "question": "Describe the clip.", "answer": "A red square and a tone."})
    return out


def probe(server, backend="openai", **options):
    url = server.url + ("/v1" if backend == "openai" else "")
    return StageSpec("probe", {"backend": backend, "model": "policy", "base_url": url,
                               "concurrency": 4, **options})


def test_measured_columns_come_out_as_designed(tmp_path, clips):
    with openai_server() as server:
        recipe = jsonl_recipe(tmp_path, records(clips), clips, [probe(server)])
        run(recipe, tmp_path / "run")
        sent = len(server.requests)
        kept, rejected = read_stage(tmp_path / "run", "01")
        assert rejected.num_rows == 0
        rows = {k.split("/", 1)[1]: v for k, v in rows_by_id(kept).items()}
        # one request per condition and multiple-choice row, each asking for n = 8 answers
        assert sent == 4 * len(QUESTIONS)
        assert {b["n"] for b in server.requests} == {8}
        assert {b["temperature"] for b in server.requests} == {1.0}

        colour, pitch, both, blind = (rows[k] for k in ("colour", "pitch", "both", "blind"))
        assert colour["probe_acc_av"] == colour["probe_acc_v"] == 1.0
        assert colour["probe_acc_a"] < 1 and colour["probe_acc_t"] < 1
        assert colour["measured_video_dependency"] > 0.25
        assert colour["measured_audio_dependency"] == 0
        assert pitch["probe_acc_av"] == pitch["probe_acc_a"] == 1.0 and pitch["probe_acc_v"] < 1
        assert pitch["measured_audio_dependency"] > 0.25 and pitch["measured_video_dependency"] == 0
        assert both["probe_acc_av"] == 1.0
        assert 0 < both["probe_acc_v"] < 1 and 0 < both["probe_acc_a"] < 1
        assert both["measured_video_dependency"] > 0 and both["measured_audio_dependency"] > 0
        assert blind["probe_acc_t"] == 1.0
        assert blind["blind_answerable"] == pytest.approx(1 - 1 / 3)
        assert colour["blind_answerable"] == pytest.approx(colour["probe_acc_t"] - 1 / 4)
        assert rows["never"]["pass_rate"] == 0 and rows["never"]["probe_unparsed"] == 32
        assert rows["cycle"]["pass_rate"] == 0.25 and rows["cycle"]["probe_acc_t"] == 0.25
        assert all(r["probe_n"] == 8 for k, r in rows.items() if k != "open")
        assert all(r["pass_rate"] == r["probe_acc_av"] for k, r in rows.items() if k != "open")
        opened = rows["open"]
        assert all(opened[c] is None for c in ("probe_acc_av", "pass_rate", "probe_n",
                                               "blind_answerable"))
        # redoing the stage is answered from the run's cache: no request at all
        extend_run(tmp_path / "run", probe(server), redo=True, show_progress=False)
        assert len(server.requests) == sent
    again, _ = read_stage(tmp_path / "run", "01")
    assert again.to_pylist() == kept.to_pylist()
    # the stats say the open-ended row was kept but not asked
    from avcurate.reports.stats import collect
    from avcurate.reports.tables import probe_table

    summary = collect(tmp_path / "run")["probe"]
    assert summary["rows"] == len(QUESTIONS) and summary["not_probed"] == 1
    # the answers with no letter, counted wrong, are told apart from the wrong ones
    unlettered = sum(r["probe_unparsed"] for k, r in rows.items() if k != "open")
    assert summary["answers"] == 4 * 8 * len(QUESTIONS) and summary["unparsed"] == unlettered
    usage = json.loads((tmp_path / "run/manifest.json").read_text())["stages"][1]["usage"]
    assert (usage["answers"], usage["unlettered"]) == (4 * 8 * len(QUESTIONS), unlettered)
    assert str(probe_table(summary).title).endswith("questions; 1 open-ended row not asked)")


def test_the_difficulty_band_drops_exactly_the_always_and_never_right_rows(tmp_path, clips):
    band = StageSpec("threshold", {"rules": ["pass_rate > 0", "pass_rate < 1"]})
    blind = StageSpec("threshold", {"rules": ["blind_answerable <= 0.25"]})
    with openai_server() as server:
        recipe = jsonl_recipe(tmp_path, records(clips, with_open=False), clips,
                              [probe(server), band, blind])
        run(recipe, tmp_path / "run")
    kept, rejected = read_stage(tmp_path / "run", "02")
    assert [i.split("/", 1)[1] for i in kept.column("id").to_pylist()] == ["cycle"]
    reasons = {r["id"].split("/", 1)[1]: r["reject_reason"] for r in rejected.to_pylist()}
    assert reasons == {k: "failed(pass_rate < 1)" for k in ("colour", "pitch", "both", "blind")} \
        | {"never": "failed(pass_rate > 0)"}


def test_separate_requests_where_n_is_not_used_and_gemini_candidate_count(tmp_path, clips,
                                                                         monkeypatch):
    """Without the multi-sample parameter each answer is its own request (own cache entry);
    Gemini gets candidate_count. Both measure the same as one request with n."""
    with openai_server() as server:
        run(jsonl_recipe(tmp_path, records(clips), clips, [probe(server)]), tmp_path / "one")
        one, _ = read_stage(tmp_path / "one", "01")
    with openai_server() as server:
        spec = probe(server, multi_sample=False, conditions=["av", "t"], n=4)
        run(jsonl_recipe(tmp_path, records(clips), clips, [spec]), tmp_path / "sep")
        assert len(server.requests) == 2 * 4 * len(QUESTIONS)
        assert all("n" not in b for b in server.requests)
        sent = len(server.requests)
        extend_run(tmp_path / "sep", spec, redo=True, show_progress=False)
        assert len(server.requests) == sent
    sep = {r["id"]: r for r in read_stage(tmp_path / "sep", "01")[0].to_pylist()}
    assert sep["jsonl:ann/colour"]["probe_acc_v"] is None  # condition not run
    assert sep["jsonl:ann/blind"]["probe_acc_t"] == 1.0 and sep["jsonl:ann/blind"]["probe_n"] == 4
    # a server that ignores n (Ollama's OpenAI API) sends one answer: the rest are asked for
    with openai_server(ignore_n=True) as server:
        run(jsonl_recipe(tmp_path, records(clips), clips, [probe(server)]), tmp_path / "one_n")
        assert len(server.requests) == 8 * 4 * len(QUESTIONS)
        # n = 8, then 7 for the rest, ..., then the last one alone
        assert {b.get("ignored_n") for b in server.requests} == {None, *range(2, 9)}
    manifest = json.loads((tmp_path / "one_n" / "manifest.json").read_text())
    assert manifest["stages"][1]["usage"]["short_n"] == 4 * len(QUESTIONS)
    one_n = read_stage(tmp_path / "one_n", "01")[0]
    columns = [c for c in one_n.column_names if c.startswith("probe_") or c == "pass_rate"]
    assert one_n.select(columns).to_pylist() == one.select(columns).to_pylist()
    # a server that refuses n by name: one answer a call from then on
    with openai_server(one_answer=True) as server:
        run(jsonl_recipe(tmp_path, records(clips), clips, [probe(server)]), tmp_path / "no_n")
        refused = server.refused_n  # at most the 4 requests in flight when the first was
        assert 1 <= refused <= 4 and sum("n" in b for b in server.requests) == refused
    no_n = read_stage(tmp_path / "no_n", "01")[0]
    assert set(no_n.column("probe_n").to_pylist()) == {8, None}  # None: the open-ended row
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    # Gemini 3 models refuse candidate_count > 1 ("Multiple candidates is not enabled")
    with gemini_server(one_answer=True) as server:
        run(jsonl_recipe(tmp_path, records(clips), clips, [probe(server, backend="gemini")]),
            tmp_path / "gem1")
        assert 1 <= server.refused_n <= 4  # the requests in flight when the first was refused
        assert all("candidateCount" not in b["generationConfig"] for b in server.requests)
    gem1 = read_stage(tmp_path / "gem1", "01")[0]
    assert gem1.select(columns).to_pylist() == one.select(columns).to_pylist()
    with gemini_server() as server:
        run(jsonl_recipe(tmp_path, records(clips), clips, [probe(server, backend="gemini")]),
            tmp_path / "gem")
        counts = {b["generationConfig"]["candidateCount"] for b in server.requests}
    assert counts == {8}
    gem = read_stage(tmp_path / "gem", "01")[0]
    columns = [c for c in gem.column_names if c.startswith("probe_") or c == "pass_rate"]
    assert gem.select(columns).to_pylist() == one.select(columns).to_pylist()


def test_the_probe_command_says_when_the_server_ignored_n(tmp_path, clips):
    run(jsonl_recipe(tmp_path, records(clips, with_open=False)[:2], clips, []), tmp_path / "run")
    with openai_server(ignore_n=True) as server:
        done = subprocess.run(avcurate_cmd("probe", str(tmp_path / "run"), "--model", "policy",
                                           "--base-url", server.url + "/v1", "--n", "3",
                                           "--conditions", "av,t", "-q"),
                              capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "probe: 12 calls" in done.stdout  # 2 questions, 2 conditions, 3 answers each
    assert ("4 call(s) got fewer answers than the n asked for (the server ignores or refuses "
            "n) and asked again for the rest, one call at a time: --no-multi-sample "
            "(multi_sample = false) sends them side by side") in " ".join(done.stdout.split())


def test_the_probe_warns_when_many_answers_name_no_letter(tmp_path, clips):
    """An answer with no option letter counts as wrong. A model that reasons first and is
    cut at max_tokens, or one answering in prose, lowered every figure the probe measured,
    and only the per-row probe_unparsed column knew."""
    rows = [r for r in records(clips, with_open=False) if r["id"] in ("colour", "never")]
    run(jsonl_recipe(tmp_path, rows, clips, []), tmp_path / "run")
    with openai_server() as server:
        done = subprocess.run(avcurate_cmd("probe", str(tmp_path / "run"), "--model", "policy",
                                           "--base-url", server.url + "/v1", "--n", "2",
                                           "--conditions", "av,t", "-q"),
                              capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    assert ("warning: 01-probe: 4 of 8 answers (50%) named no single option letter and count as "
            "wrong, which lowers every figure it measured. A model that reasons before it "
            "answers may be cut at max_tokens (256: raise --max-tokens)") in said
    shown = subprocess.run(avcurate_cmd("stats", str(tmp_path / "run")), capture_output=True,
                           text=True)
    assert "answers with no single option letter (counted wrong): 4 of 8 (50%)" in " ".join(
        shown.stdout.split())
    status = subprocess.run(avcurate_cmd("status", str(tmp_path / "run")), capture_output=True,
                            text=True)  # the warning stays where the run is looked at again
    assert status.returncode == 0 and "warning: 01-probe: 4 of 8 answers (50%)" in " ".join(
        status.stdout.split())


def test_a_probe_whose_answers_all_name_a_letter_has_no_such_warning(tmp_path, clips):
    run(jsonl_recipe(tmp_path, records(clips, with_open=False)[:1], clips, []), tmp_path / "run")
    with openai_server() as server:
        done = subprocess.run(avcurate_cmd("probe", str(tmp_path / "run"), "--model", "policy",
                                           "--base-url", server.url + "/v1", "--n", "2", "-q"),
                              capture_output=True, text=True)
    assert done.returncode == 0 and "01-probe" in done.stdout, done.stderr
    assert "no option letter" not in done.stdout and "warning" not in done.stdout


def test_a_probe_answered_with_nothing_stops(tmp_path, clips):
    """The probe's answers are never invalid (an empty one counts as wrong), so a server
    that answers nothing gave every question a pass rate of 0 without a word."""
    rows = [r | {"question": f"[empty] {r['question']}"} for r in records(clips, False)]
    with openai_server() as server, pytest.raises(RunError, match="first 5 answers were all empty"):
        run(jsonl_recipe(tmp_path, rows, clips, [probe(server, n=2)]), tmp_path / "run")


def test_faults_behave_as_in_every_model_stage(tmp_path, clips):
    recs = records(clips, with_open=False)[:2]
    recs[0]["question"] = "[429] " + recs[0]["question"]
    recs[1]["question"] = "[500] " + recs[1]["question"]
    recs.append({"id": "gone", "video": str(clips / "nope.mp4"), "question": "Q?",
                 "options": ["a", "b"], "answer": "A"})
    with openai_server() as server:
        run(jsonl_recipe(tmp_path, recs, clips, [probe(server)]), tmp_path / "run")
    kept, rejected = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 2 and all(r["probe_n"] == 8 for r in kept.to_pylist())
    assert rejected.column("reject_reason").to_pylist() == ["missing_media"]
    usage = json.loads((tmp_path / "run/manifest.json").read_text())["stages"][1]["usage"]
    assert usage["retries"] == 2 * 4  # the first try of each condition's request, two rows


def test_the_omnivideo_recipe_probe_block_plans(tmp_path):
    """Uncommenting the recipe's optional probe block gives a recipe that plans."""
    from pathlib import Path

    from avcurate.pipeline.recipe import Recipe
    from avcurate.pipeline.runner import plan

    path = Path(__file__).resolve().parents[1] / "recipes/omnivideo_r1.toml"
    head, rest = path.read_text().split("# -- optional: measured", 1)
    block, tail = rest.split("\n# ----", 1)
    block = "\n".join(line[2:] if line.startswith("# ") else "" for line in block.splitlines()[1:])
    tail = tail.replace('# dependency = "measured"', 'dependency = "measured"')
    enabled = tmp_path / "omnivideo_r1.toml"
    enabled.write_text(head + block + "\n# ----" + tail)
    recipe = Recipe.load(enabled)
    names = [s.name for s in recipe.stages]
    assert names[names.index("probe") + 1] == "threshold"
    stages = dict((s.name, s) for s, _ in plan(recipe))
    assert stages["balance"].dependency == "measured" and stages["probe"].n == 8


def test_stats_show_what_the_probe_measured(tmp_path, clips):
    """Text and HTML stats: accuracy per condition and category, pass rates, blind share, and
    the judge's dependency scores against the measured ones (Spearman, scatter plot)."""
    import subprocess
    import sys

    from avcurate.pipeline.recipe import Recipe, SourceSpec
    from avcurate.reports.stats import collect
    from tests.helpers import COLUMNS

    judge = {"colour": (1.0, 0.1), "pitch": (0.2, 0.9), "both": (0.9, 0.8), "blind": (0.0, 0.0),
             "never": (0.5, 0.5), "cycle": (0.3, 0.2)}
    recs = [r | {"category": "sight" if r["id"] in ("colour", "both") else "other",
                 "video_dependency": judge[r["id"]][0], "audio_dependency": judge[r["id"]][1]}
            for r in records(clips, with_open=False)]
    ann = tmp_path / "scored.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
    types = {"category": "string", "video_dependency": "double", "audio_dependency": "double"}
    with openai_server() as server:
        source = SourceSpec("jsonl", str(ann), str(clips), {"columns": COLUMNS,
                                                            "extra_columns": types})
        run(Recipe([source], [probe(server)], shard_size=4, workers=1), tmp_path / "run")
    stats = collect(tmp_path / "run")["probe"]
    assert stats["rows"] == 6
    assert stats["by_category"]["sight"]["av"] == 1.0 and stats["by_category"]["sight"]["rows"] == 2
    assert stats["pass_rate_histogram"] == {"0.000": 1, "0.250": 1, "1.000": 4}
    assert stats["blind_answerable_share"]["above_0.25"] >= 1 / 6
    video = stats["judge_vs_measured"]["video"]
    assert video["n"] == 6 and video["spearman"] > 0.5  # the judge's ranking mostly agrees
    html = tmp_path / "report.html"
    shown = subprocess.run([sys.executable, "-m", "avcurate", "stats", str(tmp_path / "run"),
                            "--html", str(html)], capture_output=True, text=True, check=True)
    assert "Probe: accuracy per condition (6 questions)" in shown.stdout
    assert "Spearman rho" in shown.stdout
    assert "questions per pass rate with frames+audio: 1 at 0.000, 1 at 0.250, 4 at 1.000" in (
        " ".join(shown.stdout.split()))
    line = "answers with no single option letter (counted wrong): 32 of 192 (17%)"  # [never]'s 4 x 8
    assert line in " ".join(shown.stdout.split())
    page = html.read_text()
    assert "Probe: measured difficulty" in page and page.count("<circle") == 12
    assert f"<p>A{line[1:]}.</p>" in page
    svgs = re.findall(r"<svg[^>]*aria-label=\"\w+ dependency: Spearman.*?</svg>", page)
    assert len(svgs) == 2  # each scatter shows its scale's ends on both axes
    assert all(sorted(re.findall(r'fill="#666"[^>]*>([01])</text>', svg)) == ["0", "0", "1", "1"]
               for svg in svgs)


def test_dry_run_counts_requests_and_samples_and_sends_nothing(tmp_path, clips):
    import subprocess
    import sys

    with openai_server() as server:
        run(jsonl_recipe(tmp_path, records(clips), clips, []), tmp_path / "run")
        shown = subprocess.run(
            [sys.executable, "-m", "avcurate", "probe", str(tmp_path / "run"), "--model", "p",
             "--base-url", server.url + "/v1", "--dry-run"], capture_output=True, text=True,
            check=True)
        assert not server.requests
    # six multiple-choice rows x four conditions, eight answers each; the open row is not sent
    assert "24 calls to make, 192 samples in all" in shown.stdout


def test_a_dry_run_reads_only_the_shards_its_sample_is_in(tmp_path, monkeypatch):
    """A stage's plan is made from its first 2,000 rows; it read every input shard whole
    (10M rows, every column, in memory) to use them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avcurate.pipeline import dry_run

    files = []
    for i in range(5):
        files.append(tmp_path / f"part-{i:05d}.parquet")
        pq.write_table(pa.table({"id": [f"r{i}-{k}" for k in range(900)]}), files[-1])
    opened, read = [], dry_run.read_parquet
    monkeypatch.setattr(dry_run, "read_parquet",
                        lambda path, **kw: opened.append(path) or read(path, **kw))
    table = dry_run.first_rows(files, 2000)
    assert opened == files[:3]
    assert table.column("id").to_pylist() == [f"r{i}-{k}" for i in range(3)
                                              for k in range(900)][:2000]
    assert dry_run.first_rows(files[:1], 0).num_rows == 0


def test_limit_probes_a_stratified_sample_as_an_audit_and_leaves_the_run(tmp_path, clips):
    """`--limit N`: N multiple-choice rows, one request per condition each, figures in
    RUN/audits/probe-NAME/ and in `stats`, the run's stages untouched; a rerun sends nothing."""
    import subprocess
    import sys

    from tests.helpers import run_files

    run_dir = tmp_path / "run"
    run(jsonl_recipe(tmp_path, records(clips), clips, [StageSpec("validate")]), run_dir)
    before = run_files(run_dir)

    def limit(server, *extra):
        return subprocess.run(
            [sys.executable, "-m", "avcurate", "probe", str(run_dir), "--model", "policy",
             "--base-url", server.url + "/v1", "--n", "4", "--limit", "3", "-q", *extra],
            capture_output=True, text=True, timeout=120)

    with openai_server() as server:
        done = limit(server)
        assert done.returncode == 0, done.stderr
        assert len(server.requests) == 3 * 4  # three rows x four conditions, n in one request
        assert {b["n"] for b in server.requests} == {4}
        again = limit(server)
        assert again.returncode == 0 and len(server.requests) == 12  # from the cache
    assert "probe audit of 3 sampled rows (of 6 multiple-choice rows" in done.stdout
    assert run_files(run_dir) == before
    summary = json.loads((run_dir / "audits/probe-policy/summary.json").read_text())
    assert summary["kind"] == "probe" and summary["probe"]["rows"] == 3
    probed = pq.read_table(run_dir / "audits/probe-policy/pairs.parquet").to_pylist()
    assert len(probed) == 3 and all(r["probe_n"] == 4 for r in probed)
    for r in probed:  # as designed, on whichever rows were drawn
        if r["id"] == "colour":
            assert r["probe_acc_v"] == 1.0 and r["probe_acc_av"] == 1.0
        if r["id"] == "never":
            assert r["pass_rate"] == 0.0
    shown = subprocess.run([sys.executable, "-m", "avcurate", "stats", str(run_dir)],
                           capture_output=True, text=True, timeout=60)
    assert "Probe: accuracy per condition (3 questions, a sample: audit probe-policy)" in \
        " ".join(shown.stdout.split())
    bad = subprocess.run([sys.executable, "-m", "avcurate", "probe", str(run_dir), "--model",
                          "p", "--limit", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--limit must be at least 1" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "avcurate", "probe", str(run_dir), "--model",
                          "p", "--limit", "2", "--seed", "-1"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--seed must be at least 0" in bad.stderr
    assert "Traceback" not in bad.stderr
    with openai_server() as server:
        # a custom prompt edited after its audit: the audit is not taken as done
        prompt = tmp_path / "p.md"
        prompt.write_text((Path(curation.__file__).parent / "prompts/probe.md").read_text())
        custom = limit(server, "--prompt", str(prompt), "--name", "custom")
        assert custom.returncode == 0, custom.stderr  # the same text: answered from the cache
        prompt.write_text(prompt.read_text() + "\nAnswer carefully.\n")
        edited = limit(server, "--prompt", str(prompt), "--name", "custom")
        assert edited.returncode == 2 and "--redo" in edited.stderr
        redone = limit(server, "--prompt", str(prompt), "--name", "custom", "--redo")
        assert redone.returncode == 0 and len(server.requests) == 12, redone.stderr


def test_a_probe_whose_answers_are_cut_before_a_letter_stops_early(tmp_path, clips):
    """A reasoning model probed at the default 256 tokens is cut while it thinks: every
    answer named no letter and counted wrong, and the probe went on over every row (8
    answers a condition each) to measure every question as never answered. A run of such
    requests now stops the stage with the limit to raise; with room, the same rows pass."""
    rows = records(clips, with_open=False)[:3] * 3
    rows = [r | {"id": f"{r['id']}{k}"} for k, r in enumerate(rows)]
    with openai_server(thinking=100) as server:
        spec = probe(server, n=2, max_tokens=50, concurrency=1)
        with pytest.raises(RunError, match=r"the first 5 answers all stopped at max_tokens "
                                           r"\(50 tokens\).*raise max_tokens \(--max-tokens\)"):
            run(jsonl_recipe(tmp_path, rows, clips, [spec]), tmp_path / "run")
        assert len(server.requests) == 5  # not 4 conditions x 9 rows
        roomy = probe(server, n=2, max_tokens=400)
        run(jsonl_recipe(tmp_path, rows, clips, [roomy]), tmp_path / "run2")
    kept, rejected = read_stage(tmp_path / "run2", "01")
    assert rejected.num_rows == 0 and sum(kept.column("probe_unparsed").to_pylist()) == 0
