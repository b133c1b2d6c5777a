"""The local runner: run folder layout, manifest, resume, invariants, column checks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import avcurate_cmd
from helpers import jsonl_recipe, read_stage, rows_by_id, run, slow_recipe

from avcurate.pipeline.ingest_pieces import _build_block as build_block
from avcurate.pipeline.recipe import Recipe, RecipeError, StageSpec, unset_note
from avcurate.pipeline.registry import register
from avcurate.pipeline.runner import RunError
from avcurate.stages import BaseStage, ShardResult, StageError


def _records(media, n=10):
    clips = [media["good"], media["good2"], media["silent"], media["noaudio"]]
    return [{"id": f"r{i:02d}", "video": str(clips[i % 4]), "question": f"Question {i}?",
             "options": ["x", "y"], "answer": "AB"[i % 2]} for i in range(n)]


def test_run_folder_layout_and_manifest(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")],
                          shard_size=3)
    run(recipe, tmp_path / "run")
    root = tmp_path / "run"
    assert sorted(p.name for p in (root / "00-ingest").glob("part-*")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "part-00003.parquet"]
    assert len(list((root / "01-validate").glob("part-*"))) == 4
    assert len(list((root / "01-validate/rejects").glob("part-*"))) == 4
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["recipe"]["stages"] == [{"name": "validate"}]
    assert manifest["recipe"]["run"]["shard_size"] == 3
    assert {"python", "avcurate", "pyarrow", "av"} <= set(manifest["versions"])
    ingest, validate = manifest["stages"]
    assert (ingest["rows_in"], ingest["kept"], ingest["rejected"]) == (10, 10, 0)
    assert validate["rows_in"] == 10 and validate["kept"] + validate["rejected"] == 10
    assert validate["rejects_by_reason"] == {"no_audio_stream": 2, "silent_audio": 2}
    assert validate["status"] == "done" and validate["seconds"] >= 0
    assert validate["options"]["silence_db"] == -60.0
    assert len(validate["fingerprint"]) == 16 and validate["fingerprint"] != ingest["fingerprint"]


def test_run_shards_are_lz4_and_read_alike_by_arrow_and_duckdb(tmp_path, media):
    """Run-internal shards trade zstd's size for LZ4's speed (core.store._write); every
    reader the run folder promises (pyarrow, DuckDB's SQL in reports) must still read
    them, reject shards and empty shards included."""
    import duckdb

    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")],
                          shard_size=3)
    run(recipe, tmp_path / "run")
    files = sorted((tmp_path / "run").rglob("part-*.parquet"))
    assert len(files) == 16  # 4 shards and 4 reject shards in each of the two stages
    for path in files:
        meta = pq.ParquetFile(path).metadata
        assert {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
                for c in range(meta.num_columns)} <= {"LZ4"}, path
        table = pq.read_table(path)
        by_sql = duckdb.sql("SELECT * FROM read_parquet($f)", params={"f": str(path)}).to_arrow_table()
        assert by_sql.num_rows == table.num_rows
        assert by_sql.to_pylist() == table.to_pylist(), path
    assert any(pq.ParquetFile(p).metadata.num_rows == 0 for p in files)  # an empty one too


def test_rerun_skips_finished_shards(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")])
    run(recipe, tmp_path / "run")
    shards = sorted((tmp_path / "run").rglob("part-*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    reports = run(recipe, tmp_path / "run")
    assert {p: p.stat().st_mtime_ns for p in shards} == before
    assert [r.seconds for r in reports] == [0.0, 0.0]


def test_changed_recipe_needs_force(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")])
    run(recipe, tmp_path / "run")
    recipe.stages = [StageSpec("validate", {"require_audio": False})]
    with pytest.raises(RunError, match=r"01-validate was made with other options "
                                       r"\(validate.require_audio: True -> False\)"):
        run(recipe, tmp_path / "run")
    run(recipe, tmp_path / "run", force=True)
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 10 and rej.num_rows == 0


def test_an_annotation_file_changed_since_ingest_is_named_as_such(tmp_path, media):
    """Same recipe, but the annotation file was edited (or copied without keeping its
    time): the refusal says the files changed, not that the recipe did."""
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [])
    run(recipe, tmp_path / "run")
    ann = Path(recipe.sources[0].annotations)
    os.utime(ann, ns=(ann.stat().st_atime_ns, ann.stat().st_mtime_ns + 10**9))
    with pytest.raises(RunError, match="00-ingest ingested annotation files that changed since"):
        run(recipe, tmp_path / "run")
    recipe.shard_size = 3  # the shard size changed too: that is the recipe
    with pytest.raises(RunError, match="different recipe"):
        run(recipe, tmp_path / "run")


def test_a_recipe_goes_on_when_its_annotation_file_is_gone(tmp_path, media, capsys):
    """An annotation file deleted after its ingest (a download in a temporary folder)
    stopped every later run of the recipe ("does not exist"), though there was nothing to
    ingest again and the rows were in the run. The run goes on from them, with a note; a
    file that is there but changed still stops the run, and --force still needs the file."""
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")])
    run(recipe, tmp_path / "run")
    ingested = json.loads((tmp_path / "run/manifest.json").read_text())["stages"][0]
    ann = Path(recipe.sources[0].annotations)
    ann.unlink()
    capsys.readouterr()
    recipe.stages.append(StageSpec("dedup"))
    reports = run(recipe, tmp_path / "run")
    assert [r.name for r in reports][-1] == "dedup"
    assert f"the annotation file(s) this run ingested are gone ({ann}); its stages go on " \
           "from the rows it holds" in " ".join(capsys.readouterr().err.split())
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["stages"][0] == ingested
    assert [e["name"] for e in manifest["stages"]] == ["ingest", "validate", "dedup"]
    with pytest.raises(RunError, match="does not exist"):
        run(recipe, tmp_path / "run", force=True)
    assert json.loads((tmp_path / "run/manifest.json").read_text())["stages"] == \
        manifest["stages"]


def test_sources_moved_or_changed_since_ingest_are_named(tmp_path, media):
    """A project folder moved (annotations and run together) was refused as "a different
    recipe (sources, options or order)", naming nothing. The refusal now says where the
    sources were and are, or which source setting changed."""
    import shutil

    (tmp_path / "old").mkdir()
    recipe = jsonl_recipe(tmp_path / "old", _records(media), media["root"], [])
    run(recipe, tmp_path / "run")
    shutil.move(tmp_path / "old", tmp_path / "new" / "place")
    source = recipe.sources[0]
    source.annotations = str(tmp_path / "new/place/ann.jsonl")
    with pytest.raises(RunError) as caught:
        run(recipe, tmp_path / "run")
    assert f"00-ingest ingested its sources under {tmp_path / 'old'}, and the recipe names " \
           f"the same files under {tmp_path / 'new/place'} (a moved or copied folder?" \
           in str(caught.value)
    assert "Use --force" in str(caught.value)
    source.options = {"columns": {**source.options["columns"], "question": "prompt"}}
    with pytest.raises(RunError, match=r"00-ingest was made with other sources \(jsonl.annota"
                                       r"tions: .*old/ann.jsonl' -> .*new/place/ann.jsonl'; "
                                       r"jsonl.columns: "):
        run(recipe, tmp_path / "run")


@register
@dataclass
class _NeedsScores(BaseStage):
    name = "_test_needs_scores"
    requires = ("composite_score",)

    def process(self, table, ctx, shard):  # pragma: no cover - never reached
        raise AssertionError("must not run")


@register
@dataclass
class _LosesRows(BaseStage):
    name = "_test_loses_rows"

    def process(self, table, ctx, shard):
        return ShardResult(kept=table.slice(1), rejected=table.slice(0, 0))


@register
@dataclass
class _Undeclared(BaseStage):
    name = "_test_undeclared"

    def process(self, table, ctx, shard):
        return ShardResult.split(table.append_column("surprise", pa.nulls(table.num_rows)),
                             self.name, [None] * table.num_rows)


def test_missing_columns_are_caught_before_any_work(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"],
                          [StageSpec("validate"), StageSpec("_test_needs_scores")])
    with pytest.raises(RunError, match="composite_score"):
        run(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "00-ingest").exists()
    merge = jsonl_recipe(tmp_path, _records(media), media["root"],
                         [StageSpec("merge", {"model": "m"})])
    with pytest.raises(RunError, match=r"audio_reasoning, which no earlier stage adds; add the "
                                       r"stage that produces them before it \(visual_teacher, "
                                       r"audio_teacher\)$"):
        run(merge, tmp_path / "run")
    # a column no stage adds is a typo: its neighbour is named, or else the columns there are
    typo = jsonl_recipe(tmp_path, _records(media), media["root"], [
        StageSpec("validate"), StageSpec("threshold", {"rules": ["audio_rms >= -40"]})])
    with pytest.raises(RunError, match=r"needs column\(s\) audio_rms, which no stage adds; did "
                                       r"you mean audio_rms_db\?$"):
        run(typo, tmp_path / "run")
    typo.stages[1] = StageSpec("threshold", {"rules": ["zzz >= 1"]})
    with pytest.raises(RunError, match=r"which no stage adds \(the columns there: answer, audio, "
                                       r"audio_rms_db, .*, video, width\)$"):
        run(typo, tmp_path / "run")
    assert not (tmp_path / "run" / "00-ingest").exists()


def test_invariant_violations_stop_the_run(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("_test_loses_rows")])
    with pytest.raises(RunError, match="rejected rows for"):
        run(recipe, tmp_path / "run")
    recipe.stages = [StageSpec("_test_undeclared")]
    with pytest.raises(StageError, match="undeclared column"):
        run(recipe, tmp_path / "run2")


def test_unknown_stage_and_option_are_clear(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("valdate")])
    with pytest.raises(RunError, match="unknown stage 'valdate'"):
        run(recipe, tmp_path / "run")
    recipe.stages = [StageSpec("validate", {"silence": -50})]
    with pytest.raises(RunError, match="unknown option 'silence'; did you mean 'silence_db'"):
        run(recipe, tmp_path / "run")
    # a command's name where its stages belong
    recipe.stages = [StageSpec("teach")]
    with pytest.raises(RunError, match="^'teach' is the command `avcurate teach`; in a recipe it "
                                       "is the stages 'visual_teacher', 'audio_teacher', "
                                       "'teacher_filter', each its own"):
        run(recipe, tmp_path / "run")
    recipe.stages = [StageSpec("merge_traces")]
    with pytest.raises(RunError, match="^'merge_traces' is the command `avcurate merge-traces`; "
                                       "in a recipe it is the stage 'merge'$"):
        run(recipe, tmp_path / "run")


def test_recipe_toml_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "r.toml").write_text(
        '[run]\nshard_size = 5\n[[sources]]\nname = "avqa"\nannotations = "a.json"\n'
        'media_root = "m"\n[[stages]]\nname = "validate"\nsilence_db = -50\n')
    recipe = Recipe.load(tmp_path / "r.toml")
    assert recipe.sources[0].annotations == str(tmp_path / "a.json")
    assert recipe.stages[0].options == {"silence_db": -50}
    (tmp_path / "s.toml").write_text(
        '[[sources]]\nname = "avqa"\nannotations = "a.json"\nmedia_root = "m"\n'
        '[[stages]]\nname = "score"\nmodel = "m"\nprompt = "p/score.md"\n'
        '[[stages]]\nname = "classify"\nmodel = "m"\ntaxonomy = "/etc/t.toml"\n'
        '[[stages]]\nname = "decontaminate"\nbenchmarks = ["b@jsonl=../b.jsonl:vids", '
        '"c=c.json", "malformed"]\n')
    score, classify, decontam = Recipe.load(tmp_path / "s.toml").stages
    assert score.options == {"model": "m", "prompt": str(tmp_path / "p/score.md")}
    assert classify.options["taxonomy"] == "/etc/t.toml"
    assert decontam.options["benchmarks"] == [
        f"b@jsonl={tmp_path.parent / 'b.jsonl'}:{tmp_path / 'vids'}",
        f"c={tmp_path / 'c.json'}", "malformed"]
    (tmp_path / "bad.toml").write_text("[run]\nshard_size = \n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        Recipe.load(tmp_path / "bad.toml")
    (tmp_path / "nosrc.toml").write_text("[run]\nshard_size = 5\n")
    with pytest.raises(RecipeError, match="at least one"):
        Recipe.load(tmp_path / "nosrc.toml")



@pytest.mark.parametrize(("message", "named"), [
    ("model 'Qwen/Qwen3-32B' is not served at http://h:8/v1.", "$MODEL, $URL are"),
    ("model 'Qwen/Qwen3-32B-Instruct' is not served", None),  # another model's name
    ("cannot reach http://h:8/v1/models (refused)", "$URL is"),  # a folder of the URL
    ("the license is unknown", None),  # not a path, URL or model id: never matched
    ("media root /r/data/vids is not a folder", "$ROOT is"),  # resolved against the recipe
])
def test_a_message_names_the_unset_variables_whose_default_it_shows(message, named):
    defaults = {"MODEL": ("Qwen/Qwen3-32B", "/r/Qwen/Qwen3-32B"), "URL": ("http://h:8/v1",),
                "LICENSE": ("unknown", "/r/unknown"), "ROOT": ("../data/vids", "/r/data/vids")}
    note = unset_note(message, defaults)
    assert (note == "" if named is None else note.startswith(f" ({named} not set")), note

def _all_rows(run_dir: Path) -> dict[str, list]:
    out = {}
    for prefix in ("00", "01", "02", "03"):
        kept, rej = read_stage(run_dir, prefix)
        out[prefix] = (sorted(json.dumps(r, sort_keys=True, default=str) for r in kept.to_pylist()),
                       sorted(json.dumps(r, sort_keys=True, default=str) for r in rej.to_pylist()))
    return out


@pytest.mark.parametrize("kill_after_shards", [1, 5])
def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tmp_path, media, plugin_path,
                                                            kill_after_shards):
    recipe = slow_recipe(tmp_path, media, n=30, clips=["good", "good2", "silent", "noaudio"],
                         seconds=0.15, extra_stages='[[stages]]\nname = "shout"\n')
    subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "ref"), "-q"),
                   check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(avcurate_cmd("run", str(recipe), "--out", str(killed), "-q"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow_dir = killed / "02-slow"
    deadline = time.time() + 60
    while len(list(slow_dir.glob("part-*.parquet"))) < kill_after_shards:
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(slow_dir.glob("part-*.parquet")))
    assert 0 < done_before < 10  # really killed in the middle of the stage
    manifest = json.loads((killed / "manifest.json").read_text())
    assert len(manifest["stages"]) == 2  # the killed stage is not recorded as done
    assert (slow_dir / ".fingerprint").is_file()  # but its finished shards are resumable
    subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(killed), "-q"), check=True,
                   capture_output=True)
    assert _all_rows(killed) == _all_rows(tmp_path / "ref")
    kept, rej = read_stage(killed, "03")
    ids = [r["id"] for r in kept.to_pylist()] + [r["id"] for r in rej.to_pylist()]
    assert len(ids) == len(set(ids))  # nothing duplicated
    status = subprocess.run(avcurate_cmd("status", str(killed), "--json"), check=True,
                            capture_output=True, text=True)
    stages = json.loads(status.stdout)["stages"]
    assert all(s["balanced"] for s in stages) and stages[0]["rows_in"] == 30


def test_plugin_stage_from_entry_points(tmp_path, media, plugin_path):
    from avcurate.pipeline.registry import available, create

    assert {"shout", "slow"} <= set(available())
    assert create("shout", {"max_len": 5}).options() == {"max_len": 5}
    listing = subprocess.run(avcurate_cmd("stages"), check=True, capture_output=True, text=True)
    assert "shout" in listing.stdout and "plugin avc_test_plugin:ShoutStage" in listing.stdout
    recipe = jsonl_recipe(tmp_path, _records(media, 4), media["root"],
                          [StageSpec("shout", {"max_len": 11})])
    run(recipe, tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert rows_by_id(kept)["jsonl:ann/r00"]["question_upper"] == "QUESTION 0?"
    assert rej.num_rows == 0
    recipe.stages = [StageSpec("shout", {"max_len": 5})]
    run(recipe, tmp_path / "run2")
    assert read_stage(tmp_path / "run2", "01")[1].column("reject_reason").to_pylist() == ["too_long"] * 4


def _conversation_records(media, n: int) -> list:
    """LLaVA-format records: one or two questions each, and some that are rejected."""
    out: list = []
    for i in range(n):
        turns = [{"from": "human", "value": f"<video>\nQuestion {i}?\nA. yes\nB. no"},
                 {"from": "gpt", "value": "AB"[i % 2]}]
        if i % 3 == 0:  # a second question in the same record
            turns += [{"from": "human", "value": f"And {i}?"}, {"from": "gpt", "value": "why"}]
        out.append({"id": f"c{i}", "video": media["good"].name, "conversations": turns})
    out[4] = {"id": "bad", "video": "x.mp4", "conversations": "not a list"}
    out[9] = 42                                                       # not an object
    out[13] = {"id": "out", "video": "../../etc/passwd", "conversations": out[0]["conversations"]}
    out[17] = {"id": "novideo", "conversations": out[0]["conversations"]}
    return out


def test_forked_ingest_writes_the_shards_one_process_writes(tmp_path, media, monkeypatch):
    """Large JSON sources are built in forked workers (here: blocks of 4 records); the
    shards, rows and rejects are exactly those of one process, across two sources whose
    items share a shard, and a killed ingest resumes with either."""
    from avcurate.pipeline import ingest_pieces
    from avcurate.pipeline.recipe import SourceSpec

    for k, n in ((1, 23), (2, 30)):
        (tmp_path / f"ann{k}.json").write_text(json.dumps(_conversation_records(media, n)))
    sources = [SourceSpec("llava-video", str(tmp_path / f"ann{k}.json"), str(media["root"]))
               for k in (1, 2)]
    forks = []
    real = ingest_pieces._forked
    monkeypatch.setattr(ingest_pieces, "_forked", lambda *a: forks.append(a[1]) or real(*a))
    monkeypatch.setattr(ingest_pieces, "BLOCK", 4)

    def files(run_dir):
        paths = sorted((run_dir / "00-ingest").rglob("part-*.parquet"))
        return {str(p.relative_to(run_dir)): pq.read_table(p) for p in paths}

    one = tmp_path / "one"
    run(Recipe(sources, [], shard_size=7, workers=1), one)
    assert forks == []
    forked = tmp_path / "forked"
    run(Recipe(sources, [], shard_size=7, workers=2), forked)
    assert forks == [23, 30]
    expected, got = files(one), files(forked)
    assert list(got) == list(expected) and len(expected) == 2 * 10  # 69 items in 10 shards
    for name, table in expected.items():
        assert got[name].equals(table), name
    kept, rejected = read_stage(forked, "00")
    assert (kept.num_rows, rejected.num_rows) == (61, 8)  # 26 + 35 rows, 4 + 4 rejects
    assert sorted(set(rejected.column("reject_reason").to_pylist())) == [
        "malformed_annotation", "unsafe_path"]

    # a killed ingest (not recorded, its last shards missing) resumes with workers=2
    manifest = json.loads((one / "manifest.json").read_text())
    manifest["stages"] = []
    (one / "manifest.json").write_text(json.dumps(manifest))
    for i in range(6, 10):
        (one / f"00-ingest/part-{i:05d}.parquet").unlink()
    reports = run(Recipe(sources, [], shard_size=7, workers=2), one)
    assert reports[0].resumed_shards == 6
    assert {n: t.equals(expected[n]) for n, t in files(one).items()} == dict.fromkeys(expected,
                                                                                      True)


def _worker_dies(bounds):
    import os

    os._exit(3)  # as a worker killed for memory would


def test_forked_ingest_stops_with_one_line_when_a_worker_dies(tmp_path, media, monkeypatch):
    from avcurate.pipeline import ingest_pieces
    from avcurate.pipeline.recipe import SourceSpec

    (tmp_path / "ann.json").write_text(json.dumps(_conversation_records(media, 30)))
    monkeypatch.setattr(ingest_pieces, "BLOCK", 4)
    monkeypatch.setattr(ingest_pieces, "_build_block", _worker_dies)
    recipe = Recipe([SourceSpec("llava-video", str(tmp_path / "ann.json"), str(media["root"]))],
                    [], shard_size=7, workers=2)
    with pytest.raises(RunError, match=r"ann.json\): a worker process building rows died"):
        run(recipe, tmp_path / "run")
    assert not (tmp_path / "run/manifest.json").exists()  # no shard written: no run left


def _stuck_on_the_third_block(bounds):
    """In a worker: as one waiting on a lock that another thread held at the fork."""
    import threading

    if bounds[0] == 8:
        threading.Event().wait()
    return build_block(bounds)


def _stuck_at_exit():
    """A worker initializer whose process cannot end (a finalizer that waits forever)."""
    import multiprocessing.util

    multiprocessing.util.Finalize(None, time.sleep, (3600,), exitpriority=100)


@pytest.mark.parametrize("stuck", ["on_a_block", "at_exit"])
def test_forked_ingest_never_waits_forever_on_a_stuck_worker(tmp_path, media, monkeypatch,
                                                            stuck):
    """A forked worker can inherit a lock that another thread held at the fork and wait for
    it forever, while it builds rows or as it exits. Ingest then kills the workers (the
    rest of the source built here, the same shards) instead of hanging."""
    import psutil

    from avcurate.pipeline import ingest_pieces
    from avcurate.pipeline.recipe import SourceSpec

    (tmp_path / "ann.json").write_text(json.dumps(_conversation_records(media, 30)))
    sources = [SourceSpec("llava-video", str(tmp_path / "ann.json"), str(media["root"]))]
    run(Recipe(sources, [], shard_size=7, workers=1), tmp_path / "one")
    monkeypatch.setattr(ingest_pieces, "BLOCK", 4)
    monkeypatch.setattr(ingest_pieces, "STALL_SECONDS", 2.0)
    monkeypatch.setattr(ingest_pieces, "EXIT_SECONDS", 1.0)
    if stuck == "on_a_block":
        monkeypatch.setattr(ingest_pieces, "_build_block", _stuck_on_the_third_block)
    else:
        monkeypatch.setattr(ingest_pieces, "leave_interrupts_to_parent", _stuck_at_exit)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    said = (pytest.warns(RuntimeWarning, match="sent no rows back for 2 s")
            if stuck == "on_a_block" else contextlib.nullcontext())
    with said:
        run(Recipe(sources, [], shard_size=7, workers=2), tmp_path / "forked")
    assert time.monotonic() - started < 30
    one, forked = ({str(p.relative_to(tmp_path / d)): pq.read_table(p)
                    for p in (tmp_path / d / "00-ingest").rglob("*.parquet")}
                   for d in ("one", "forked"))
    assert sorted(forked) == sorted(one) and len(one) == 2 * 6  # 6 shards and their rejects
    assert all(forked[name].equals(table) for name, table in one.items())
    deadline = time.monotonic() + 10  # the pool's thread reaps the killed workers
    while (left := {p.pid for p in psutil.Process().children(recursive=True)} - before):
        assert time.monotonic() < deadline, f"workers left running: {left}"
        time.sleep(0.05)


def test_end_of_run_summary_uses_the_recorded_counts(tmp_path, media, monkeypatch):
    """The table printed after a run takes each completed stage's counts from the manifest
    (counted from the shards as the stage completed); `status` recounts from the shards."""
    from avcurate.core.store import RunStore
    from avcurate.reports import tables

    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")],
                          shard_size=3)
    run(recipe, tmp_path / "run")
    store = RunStore(tmp_path / "run")
    on_disk = tables.stage_rows(store)
    assert [r["rejects_by_reason"] for r in on_disk] == [{}, {"no_audio_stream": 2,
                                                              "silent_audio": 2}]

    def no_reading(paths):
        raise AssertionError("read the shards")

    monkeypatch.setattr(tables, "parquet_rows", no_reading)
    assert tables.stage_rows(store, recorded=True) == on_disk
    with pytest.raises(AssertionError, match="read the shards"):
        tables.stage_rows(store)


def test_the_funnel_never_cuts_a_stage_name_in_80_columns():
    """A run of millions of rows, its last stage stopped: the table is wide, and the stage
    folder names (what `reset --from` takes) still print whole; other cells wrap."""
    from rich.console import Console

    from avcurate.reports import tables

    names = ["00-ingest", "10-visual_teacher", "11-audio_teacher", "12-teacher_filter"]
    rows = [{"stage": n, "status": "done", "rows_in": 12_345_678, "kept": 12_000_000,
             "rejected": 345_678, "balanced": True, "seconds": 12345.6} for n in names]
    rows.append({"stage": "13-merge", "status": "incomplete", "rows_in": None, "kept": 1_234,
                 "rejected": 0, "balanced": None, "seconds": None})
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(tables.summary_table(rows, "Run r"))
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert all(f"│ {name} " in text for name in [*names, "13-merge"])


def test_resuming_a_finished_run_reads_no_shard(tmp_path, media, monkeypatch):
    """Every stage done: the reports come from the manifest, so a resume of a run with
    thousands of shards does not open their footers (or anything else) again."""
    from avcurate.pipeline import runner as runner_module

    recipe = jsonl_recipe(tmp_path, _records(media), media["root"],
                          [StageSpec("validate"), StageSpec("dedup")], shard_size=3)
    first = run(recipe, tmp_path / "run")

    def no_reading(*args, **kwargs):
        raise AssertionError("read a shard")

    for name in ("parquet_rows", "read_parquet"):
        monkeypatch.setattr(runner_module, name, no_reading)
    monkeypatch.setattr(runner_module.pq, "ParquetFile", no_reading)
    monkeypatch.setattr(runner_module.pq, "read_schema", no_reading)
    again = run(recipe, tmp_path / "run")
    assert [(r.name, r.rows_in, r.kept, r.rejected) for r in again] == \
        [(r.name, r.rows_in, r.kept, r.rejected) for r in first]
    assert first[1].rejected == 4 and first[1].rows_in == first[0].kept


def test_a_stage_numbered_100_leaves_stage_10_alone(tmp_path, media):
    """Stage folders are numbered `{index:02d}`: at stage 100 the unfinished folders of
    another stage at that index are looked for by the whole number, not its first two
    digits (which named the done stage 10)."""
    from avcurate.pipeline.runner import Runner

    run_dir = tmp_path / "run"
    run(jsonl_recipe(tmp_path, _records(media, n=4), media["root"], [StageSpec("validate")]),
        run_dir)
    done = run_dir / "10-dedup"  # as a done stage 10 is: made by avcurate
    done.mkdir()
    (done / ".fingerprint").write_text("x")
    Runner(Recipe.from_dict(json.loads((run_dir / "manifest.json").read_text())["recipe"]),
           run_dir, show_progress=False)._drop_unfinished_others(run_dir / "100-threshold")
    assert done.is_dir()


def test_shards_past_99999_are_listed_by_number(tmp_path):
    """Shard names grow a sixth digit at 100,000: listed by name, part-100000 came before
    part-10001, and each stage (output shard i from its i-th input) reordered the rows of
    the stage before. Every reader lists them through RunStore."""
    from avcurate.core.store import RunStore

    numbers = [7, 10000, 10001, 99999, 100000, 100001, 1000000]
    for i in reversed(numbers):
        pq.write_table(pa.table({"id": [f"r{i}"]}), RunStore.shard_path(tmp_path, i))
        (tmp_path / "rejects").mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": [f"x{i}"]}), RunStore.reject_path(tmp_path, i))
    assert [int(p.stem[5:]) for p in RunStore.shards(tmp_path)] == numbers
    assert [int(p.stem[5:]) for p in RunStore.rejects(tmp_path)] == numbers
    assert pq.read_table(RunStore.shards(tmp_path)).column("id").to_pylist() == \
        [f"r{i}" for i in numbers]


def test_a_run_of_more_than_99_stages_is_listed_and_reset_by_number(tmp_path):
    """`{index:02d}` grows a third digit at stage 100. The stage folders were looked for
    by two digits, so `reset --from 99` dropped stages 99-101 from the manifest but left
    folders 100 and 101 on disk, and `reset --from 100` found nothing to remove."""
    from avcurate.core.store import RunStore
    from avcurate.pipeline.runner import reset_run, stage_index

    records = [{"id": f"r{i}", "video": "x.mp4", "question": f"Q{i}?", "options": ["a", "b"],
                "answer": "A"} for i in range(2)]
    run_dir = tmp_path / "run"
    recipe = jsonl_recipe(tmp_path, records, tmp_path, [StageSpec("dedup")] * 101)
    assert len(run(recipe, run_dir)) == 102
    store = RunStore(run_dir)
    assert [p.name for p in store.stage_dirs(98)] == ["98-dedup", "99-dedup", "100-dedup",
                                                       "101-dedup"]
    assert stage_index(run_dir, "100-dedup") == 100

    assert reset_run(run_dir, 100) == ["100-dedup", "101-dedup"]
    assert not (run_dir / "100-dedup").exists() and not (run_dir / "101-dedup").exists()
    run(recipe, run_dir)  # redone: the last two stages again, the rest resumed
    assert reset_run(run_dir, 99) == ["99-dedup", "100-dedup", "101-dedup"]
    on_disk = sorted(p.name for p in run_dir.iterdir() if p.name[0].isdigit())
    recorded = sorted(e["dir"] for e in store.load_manifest()["stages"])
    assert on_disk == recorded and len(recorded) == 99


@pytest.mark.parametrize("name", ["score", "classify", "probe", "visual_teacher",
                                  "audio_teacher", "merge"])
def test_thinking_unset_leaves_a_model_stages_identity_as_before_the_option(name):
    """Every model stage gained `thinking`; unset, it is not hashed, so the runs made before
    it stay done (and their cache keys: a request sends it only when set)."""
    from avcurate.core.options import identity
    from avcurate.pipeline.registry import create

    model = {"backend": "gemini", "model": "g"}
    assert "thinking" not in identity(create(name, model))
    assert identity(create(name, model | {"thinking": "128"}))["thinking"] == "128"


def test_a_run_made_before_an_option_existed_is_read_as_it_ran(tmp_path, media):
    """`max_pixels` was added to the frame stages after runs were made with them. Such a run
    (a manifest without it; a fingerprint without it, as max_pixels 0 still hashes) stays
    done for max_pixels 0, which is what it did; the new default makes a recipe and a stage
    command both name the option and its two values instead of 'a different recipe'."""
    from loopback import openai_server

    from avcurate.core.options import identity
    from avcurate.pipeline.registry import create
    from avcurate.pipeline.runner import AlreadyDone, extend_run

    with openai_server() as server:
        model = {"backend": "openai", "model": "m", "base_url": server.url + "/v1"}
        assert "max_pixels" not in identity(create("visual_teacher", {**model, "max_pixels": 0}))
        recipe = jsonl_recipe(tmp_path, _records(media, 2), media["root"],
                              [StageSpec("visual_teacher", {**model, "max_pixels": 0})])
        run(recipe, tmp_path / "run")
        path = tmp_path / "run/manifest.json"
        manifest = json.loads(path.read_text())  # as the code before the option wrote it
        for where in (manifest["stages"][1]["spec"], manifest["stages"][1]["options"],
                      manifest["recipe"]["stages"][0]):
            del where["max_pixels"]
        path.write_text(json.dumps(manifest))
        calls = len(server.requests)
        recipe.stages = [StageSpec("visual_teacher", dict(model))]
        with pytest.raises(RunError, match=r"01-visual_teacher was made with other options "
                                           r"\(visual_teacher.max_pixels: 0 -> 2073600\)"):
            run(recipe, tmp_path / "run")
        with pytest.raises(RunError, match=r"visual_teacher.max_pixels: 0 -> 2073600"):
            extend_run(tmp_path / "run", StageSpec("visual_teacher", dict(model)),
                       show_progress=False)
        with pytest.raises(AlreadyDone):
            extend_run(tmp_path / "run", StageSpec("visual_teacher", {**model, "max_pixels": 0}),
                       show_progress=False)
        recipe.stages = [StageSpec("visual_teacher", {**model, "max_pixels": 0})]
        run(recipe, tmp_path / "run")
        assert len(server.requests) == calls  # done: nothing asked again, nothing redone
        assert json.loads(path.read_text())["stages"] == manifest["stages"]
