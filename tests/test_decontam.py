"""Decontamination against benchmarks read with the catalogs: the three signals on real
clips (a re-encode under another name, other motion in the same colours, an edited
question, a shared YouTube id), the formats, the switches, the cache and the CLI."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import avcurate_cmd
from helpers import jsonl_recipe, read_stage, rows_by_id, run

from avcurate.decontam.fingerprints import normalise_question, source_id
from avcurate.media import synth
from avcurate.pipeline.recipe import StageSpec

SQUARE = 0.4  # a square big enough that its motion shows at dHash's 9x8 resolution
BENCH_Q = "What colour is the square while the low tone plays, and where does it go?"


def _benchmark(root):
    """A Video-MME-format benchmark: two YouTube videos, one question each."""
    synth.write_clip(root / "vmme/data/fFjv93ACGo8.mp4", color="red", square=SQUARE, seconds=4)
    synth.write_clip(root / "vmme/data/Zb3C8XrAR2o.mp4", color="green", square=SQUARE,
                     seconds=4, speed=-4.0)
    pq.write_table(pa.table({
        "videoID": ["fFjv93ACGo8", "Zb3C8XrAR2o"], "question_id": ["001-1", "002-1"],
        "question": [BENCH_Q, "How many times does the square cross the frame?"],
        "options": [["A. Red.", "B. Blue.", "C. Green.", "D. Grey."],
                    ["A. Once.", "B. Twice.", "C. Three times.", "D. Never."]],
        "answer": ["A", "B"]}), root / "vmme/test.parquet")
    return f"video-mme=vmme/test.parquet:{root / 'vmme'}"


def _rows(root, edited="what COLOUR is the square, while the low tone plays -- and where does "
                        "it go ??"):
    media = root / "train"
    # (b) the benchmark's first video re-encoded smaller, at a low bitrate, under a new name
    synth.write_clip(media / "my_clip_001.mp4", color="red", square=SQUARE, seconds=4,
                     size=(160, 120), bitrate=60_000)
    # same colours, different motion: not the same video
    synth.write_clip(media / "other_motion.mp4", color="red", square=SQUARE, seconds=4, speed=5.0)
    # (a) the second benchmark video's YouTube id, as LLaVA-Video names files (other content)
    synth.write_clip(media / "ytb_Zb3C8XrAR2o.mp4", color="blue", square=SQUARE, seconds=4,
                     speed=1.0)
    synth.write_clip(media / "clean.mp4", color="yellow", square=SQUARE, seconds=4, speed=3.0)
    opts = ["red", "blue", "green", "grey"]
    q = "What colour is the square?"
    return media, [
        {"id": "reencoded", "video": "my_clip_001.mp4", "question": q, "options": opts,
         "answer": 0},
        {"id": "motion", "video": "other_motion.mp4", "question": q, "options": opts, "answer": 0},
        {"id": "youtube_id", "video": "ytb_Zb3C8XrAR2o.mp4", "question": q, "options": opts,
         "answer": 1},
        {"id": "question", "video": "clean.mp4", "question": edited, "options": opts, "answer": 3},
        {"id": "clean", "video": "clean.mp4", "question": "Which way does the square swing?",
         "options": ["left", "right"], "answer": 0},
    ]


def _ingested(root):
    """A run holding `_rows` as ingested by the CLI."""
    media, rows = _rows(root)
    ann = root / "a.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = root / "run"
    cols = ["--column", "id=id", "--column", "video=video", "--column", "question=question",
            "--column", "options=options", "--column", "answer=answer"]
    subprocess.run(avcurate_cmd("ingest", "--source", "jsonl", "--annotations", str(ann),
                                "--media-root", str(media), "--out", str(run_dir), "-q", *cols),
                   check=True, capture_output=True)
    return run_dir


def _run(tmp_path, question=None, **options):
    spec = _benchmark(tmp_path)
    media, rows = _rows(tmp_path, *([question] if question else []))
    (tmp_path / "vmme/test.parquet").rename(tmp_path / "test.parquet")
    spec = spec.replace("vmme/test.parquet", str(tmp_path / "test.parquet"))
    recipe = jsonl_recipe(tmp_path, rows, media,
                          [StageSpec("decontaminate", {"benchmarks": [spec], **options})])
    run(recipe, tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    return rows_by_id(kept), rows_by_id(rej)


def test_each_signal_catches_its_kind_of_contamination(tmp_path):
    kept, rej = _run(tmp_path)
    by = {k.split("/", 1)[1]: r for k, r in rej.items()}
    assert set(by) == {"reencoded", "youtube_id", "question"}
    assert {r["reject_reason"] for r in by.values()} == {"contaminated:video-mme"}
    assert "(frames: " in by["reencoded"]["reject_detail"]
    assert "001-1" in by["reencoded"]["reject_detail"]
    assert "(id: same source id 'zb3c8xrar2o')" in by["youtube_id"]["reject_detail"]
    assert by["question"]["reject_detail"].endswith("001-1 (question: same question)")
    assert {k.split("/", 1)[1] for k in kept} == {"motion", "clean"}


def test_signals_can_be_switched_off(tmp_path):
    kept, rej = _run(tmp_path, match_frames=False, match_ids=False)
    assert {k.split("/", 1)[1] for k in rej} == {"question"}


@pytest.mark.parametrize("min_overlap, caught", [(0.6, True), (1.0, False)])
def test_an_edited_question_is_caught_by_its_ngram_overlap(tmp_path, min_overlap, caught):
    edited = "What colour is the square while the low tone plays, and where does it move to?"
    kept, rej = _run(tmp_path, edited, min_overlap=min_overlap, match_frames=False,
                     match_ids=False)
    details = [r["reject_detail"] for r in rej.values()]
    assert details == (["video-mme:test/001-1 (question: 0.90 of 6-grams shared)"] if caught else [])


def test_every_benchmark_format_is_read_with_its_catalog(tmp_path):
    from avcurate.decontam.stage import Decontaminate
    from avcurate.stages.context import StageContext

    (tmp_path / "daily/vid9").mkdir(parents=True)
    (tmp_path / "daily.json").write_text(json.dumps([
        {"Question": "What does the speaker say?", "Choice": ["A. Hi", "B. Bye"],
         "Answer": "A", "video_id": "vid9"}]))
    (tmp_path / "ws.json").write_text(json.dumps({"Zb3C8XrAR2o": {"task0": {
        "question": "What sound plays?", "candidates": ["A. A tone.", "B. A voice."],
        "answer": "A"}}}))
    (tmp_path / "avqa.json").write_text(json.dumps([
        {"id": 7, "video_name": "-HG3Omg_89c_000030", "question_text": "Which one sounds?",
         "multi_choice": ["a", "b"], "answer": 0}]))
    (tmp_path / "mine.jsonl").write_text(json.dumps(
        {"clip": "abc", "q": "Is it loud?", "opts": ["yes", "no"], "gt": 0}) + "\n")
    # a CSV of option positions: its answers play no part, so it needs no `answers`
    (tmp_path / "nextqa.csv").write_text("video,question,answer,a0,a1\n"
                                         "4010069381,why does the dog bark,1,hungry,scared\n")
    stage = Decontaminate(benchmarks=[
        f"daily-omni={tmp_path / 'daily.json'}:{tmp_path / 'daily'}",
        f"worldsense={tmp_path / 'ws.json'}",
        f"avqa={tmp_path / 'avqa.json'}",
        f"mine@jsonl={tmp_path / 'mine.jsonl'}", f"nextqa@csv={tmp_path / 'nextqa.csv'}"],
        benchmark_columns={"mine": {"id": "clip", "video": "{clip}.mp4", "question": "q",
                                    "options": "opts", "answer": "gt"},
                           "nextqa": {"video": "{video}.mp4", "options": "a0,a1"}},
        match_frames=False)
    index = stage.build_index(StageContext(tmp_path / "run", tmp_path / "run/01"))
    assert {(i.benchmark, i.source_id) for i in index.items} == {
        ("daily-omni", "vid9_video"), ("worldsense", "zb3c8xrar2o"),
        ("avqa", "-hg3omg_89c"), ("mine", "abc"), ("nextqa", "4010069381")}
    stage.check()  # the CSV's header and answers pass the check before a run
    assert index.match_question(normalise_question("what sound plays"), 0.6).item.benchmark \
        == "worldsense"


@pytest.mark.parametrize("path, expected", [
    ("/data/liwei_youtube_videos/ytb_AbC-123_xYz.mp4", "abc-123_xyz"),
    ("v_AbC-123_xYz.mkv", "abc-123_xyz"), ("AbC-123_xYz_000030.mp4", "abc-123_xyz"),
    ("AbC-123_xYz_000030_000040.mp4", "abc-123_xyz"), ("clip.tar.mp4", "clip"), (None, None)])
def test_source_ids_are_normalised(path, expected):
    assert source_id(path) == expected


def test_bad_benchmark_specs_are_one_line_errors_before_any_row(tmp_path):
    run_dir = tmp_path / "run"
    media, rows = _rows(tmp_path)
    ann = tmp_path / "a.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = ["--column", "id=id", "--column", "video=video", "--column", "question=question",
            "--column", "options=options", "--column", "answer=answer"]
    subprocess.run(avcurate_cmd("ingest", "--source", "jsonl", "--annotations", str(ann),
                                "--media-root", str(media), "--out", str(run_dir), "-q", *cols),
                   check=True, capture_output=True)
    for args, message in [(["--benchmark", "nope"], "NAME[@FORMAT]=ANNOTATIONS"),
                          (["--benchmark", "mine=x.json"], "has no format"),
                          (["--benchmark", f"video-mme={tmp_path}/missing.parquet"],
                           "does not exist"),
                          # a URL's "https:" was taken for a file name, its rest for media
                          (["--benchmark", "vm@video-mme=https://hf.co/x/test.parquet"],
                           "benchmark 'vm': annotations https://hf.co/x/test.parquet is a URL"),
                          (["--benchmark", f"video-mme={tmp_path}/t.parquet:s3://b/videos"],
                           "benchmark 'video-mme': media root s3://b/videos is a URL")]:
        done = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), *args, "-q"),
                              capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not list(run_dir.glob("01-*"))  # all found before the run folder is touched
    recipe = tmp_path / "r.toml"  # a recipe's paths are made absolute: not a URL's parts
    recipe.write_text(f'[[sources]]\nname = "jsonl"\nannotations = "{ann}"\nmedia_root = '
                      f'"{media}"\ncolumns = {{ id = "id" }}\n[[stages]]\nname = '
                      '"decontaminate"\nbenchmarks = ["vm@video-mme=gs://b/test.parquet"]\n')
    done = subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "r2"), "-q"),
                          capture_output=True, text=True)
    assert done.returncode == 2 and "annotations gs://b/test.parquet is a URL" in done.stderr


def test_a_recipes_benchmark_paths_are_relative_to_the_recipe(tmp_path):
    """As its sources are (README: relative paths are relative to the recipe file), whatever
    folder the command is run from; they ran against the working folder before."""
    _benchmark(tmp_path)
    media, rows = _rows(tmp_path)
    (proj := tmp_path / "proj").mkdir()
    (proj / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = ", ".join(f'{c} = "{c}"' for c in ("id", "video", "question", "options", "answer"))
    (proj / "r.toml").write_text(
        f'[[sources]]\nname = "jsonl"\nannotations = "a.jsonl"\nmedia_root = "../train"\n'
        f'columns = {{ {cols} }}\n[[stages]]\nname = "decontaminate"\n'
        f'benchmarks = ["video-mme=../vmme/test.parquet:../vmme"]\nmatch_frames = false\n')
    (elsewhere := tmp_path / "else" / "where").mkdir(parents=True)  # ../vmme is not there
    done = subprocess.run(avcurate_cmd("run", "../../proj/r.toml", "--out", "run", "-q"),
                          capture_output=True, text=True, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    kept, rej = read_stage(elsewhere / "run", "01")
    assert sorted(rows_by_id(rej)) == ["jsonl:a/question", "jsonl:a/youtube_id"]
    assert sorted(rows_by_id(kept)) == ["jsonl:a/clean", "jsonl:a/motion", "jsonl:a/reencoded"]


def test_cli_caches_fingerprints_and_resumes(tmp_path):
    spec = _benchmark(tmp_path)
    spec = spec.replace("vmme/test.parquet", str(tmp_path / "vmme/test.parquet"))
    run_dir = _ingested(tmp_path)
    done = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--benchmark", spec),
                          capture_output=True, text=True, check=True)
    assert "contaminated │    3" in done.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"][-1]["benchmarks"]["video-mme"] == {
        "items": 2, "videos": 2, "videos_hashed": 2}
    from avcurate.core.kvcache import KVCache

    assert len(KVCache(run_dir / "cache/fingerprints.sqlite")) == 2 + 4  # benchmark + row videos
    # what it caught, by benchmark and signal, as `stats` gives it (the text, JSON and HTML)
    stats = subprocess.run(avcurate_cmd("stats", str(run_dir), "--json"), capture_output=True,
                           text=True, check=True)
    assert json.loads(stats.stdout)["decontamination"] == [{
        "stage": "01-decontaminate", "benchmark": "video-mme", "records": 2, "unread": 0,
        "videos": 2, "videos_hashed": 2, "rows_in": 5, "caught": 3, "by_id": 1,
        "by_frames": 1, "by_question": 1}]
    html = tmp_path / "r.html"
    stats = subprocess.run(avcurate_cmd("stats", str(run_dir), "--html", str(html)),
                           capture_output=True, text=True, check=True)
    assert "│ video-mme │       2 │ 2 of 2 │ 3 of 5 │     1 │       1 │        1 │" in stats.stdout
    assert "<tr><td>video-mme</td><td>2</td><td>2 of 2</td><td>3 of 5</td>" in html.read_text()
    again = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--benchmark", spec),
                           capture_output=True, text=True, check=True)
    assert "01-decontaminate" in again.stdout
    assert json.loads((run_dir / "manifest.json").read_text())["stages"][-1]["finished_at"] == \
        manifest["stages"][-1]["finished_at"]  # resumed, not redone
    # a redo with a mistyped benchmark path stops before it removes the stage it would redo
    kept = sorted(p.name for p in (run_dir / "01-decontaminate").rglob("*.parquet"))
    typo = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--benchmark",
                                       f"video-mme={tmp_path}/vmme/tset.parquet", "--redo", "-q"),
                          capture_output=True, text=True)
    assert typo.returncode == 2 and "tset.parquet does not exist" in typo.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["stages"] == manifest["stages"]
    assert sorted(p.name for p in (run_dir / "01-decontaminate").rglob("*.parquet")) == kept


def test_a_benchmark_holding_its_clips_is_matched_by_their_frames(tmp_path):
    """A benchmark from the Hub with a Video() column holds its clips in its Parquet file:
    each of its rows was dropped from the index ("video must be text"), so a training clip
    re-encoded from one went through. Its clips are written out and hashed like files."""
    import datasets
    from datasets.table import embed_table_storage

    _benchmark(tmp_path)
    clip = tmp_path / "vmme/data/fFjv93ACGo8.mp4"
    bench = datasets.Dataset.from_list([{
        "id": "b1", "video": str(clip), "question": "Where does the square go?",
        "options": ["left", "right"], "answer": "A"}]).cast_column("video", datasets.Video(
            decode=False))
    pq.write_table(embed_table_storage(bench.data.table), tmp_path / "hub.parquet")
    clip.unlink()  # the clip is only in the Parquet file now
    media, rows = _rows(tmp_path)
    rows = [r for r in rows if r["id"] in ("reencoded", "motion", "clean")]
    spec = f"hub@parquet={tmp_path / 'hub.parquet'}:{tmp_path}"
    recipe = jsonl_recipe(tmp_path, rows, media, [StageSpec("decontaminate", {
        "benchmarks": [spec], "match_ids": False, "match_questions": False})])
    run(recipe, tmp_path / "run")
    _, rej = read_stage(tmp_path / "run", "01")
    assert [(r["id"].split("/", 1)[1], r["reject_reason"]) for r in rej.to_pylist()] == [
        ("reencoded", "contaminated:hub")]
    assert "parquet:hub/b1 (frames: " in rej.column("reject_detail")[0].as_py()


def test_a_benchmark_whose_answers_are_withheld_is_still_compared(tmp_path):
    """Test splits often withhold their answers (EgoSchema, LongVideoBench, MLVU): every
    record was rejected as malformed ("answer is missing") and dropped from the index, so
    decontaminating against one caught nothing. Its clips and questions are compared; as a
    source for training, the same file still needs its answers."""
    from avcurate.catalogs import Reject, read_source
    from avcurate.decontam.stage import Decontaminate
    from avcurate.stages.context import StageContext

    _benchmark(tmp_path)
    table = pq.read_table(tmp_path / "vmme/test.parquet")
    pq.write_table(table.drop_columns(["answer"]), tmp_path / "vmme/test.parquet")
    (tmp_path / "ego.jsonl").write_text(json.dumps(
        {"q_uid": "e1", "question": "What does the person cut first?", "option 0": "bread",
         "option 1": "cheese"}) + "\n" + json.dumps(
        {"q_uid": "e2", "question": "Why does the dog bark?", "option 0": "a", "option 1": "b",
         "answer": None}) + "\n")
    (tmp_path / "lvb.csv").write_text("vid,q,a0,a1\nabc,Where is the red cup?,left,right\n")
    ego = {"id": "q_uid", "video": "{q_uid}.mp4", "options": ["option 0", "option 1"]}
    lvb = {"id": "vid", "video": "{vid}.mp4", "question": "q", "options": "a0,a1"}
    stage = Decontaminate(benchmarks=[
        f"video-mme={tmp_path / 'vmme/test.parquet'}:{tmp_path / 'vmme'}",
        f"ego@jsonl={tmp_path / 'ego.jsonl'}", f"lvb@csv={tmp_path / 'lvb.csv'}"],
        benchmark_columns={"ego": ego, "lvb": lvb})
    stage.check()  # a CSV header with no answer column passes for a benchmark
    index = stage.build_index(StageContext(tmp_path / "run", tmp_path / "run/01"))
    assert sorted((i.benchmark, i.id) for i in index.items) == [
        ("ego", "jsonl:ego/e1"), ("ego", "jsonl:ego/e2"), ("lvb", "csv:lvb/abc"),
        ("video-mme", "video-mme:test/001-1"), ("video-mme", "video-mme:test/002-1")]
    assert stage.summary()["benchmarks"]["video-mme"] == {
        "items": 2, "videos": 2, "videos_hashed": 2}
    assert index.match_question(normalise_question("why does the dog bark"), 0.6).item.id == \
        "jsonl:ego/e2"

    # read as a source, a record with no answer is still rejected
    read = list(read_source("video-mme", str(tmp_path / "vmme/test.parquet"),
                            str(tmp_path / "vmme")))
    assert [(r.reason, r.detail) for r in read] == [
        ("malformed_annotation", "record 0: missing field(s) 'answer'"),
        ("malformed_annotation", "record 1: missing field(s) 'answer'")]
    assert all(isinstance(r, Reject) for r in read)


def test_unreadable_benchmark_records_are_counted_and_warned_of(tmp_path):
    """A benchmark's records its catalog could not read were dropped from the index without
    a word: rows sharing their clip or question went through. They are counted in the
    manifest and named in a warning after the command and in `status`; a file none of
    whose records could be read (another format than the one named) stops the stage with
    one line before any row is touched."""
    run_dir = _ingested(tmp_path)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([
        {"videoID": "Zb3C8XrAR2o", "question_id": "1", "question": "Who?", "options": ["A. x"]},
        {"videoID": "abc", "question_id": "2", "options": ["A. x"]},
        {"question_id": "3", "question": "Why?", "options": ["A. x"]}]))
    done = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--no-match-frames",
                                       "--benchmark", f"video-mme={bench}:{tmp_path}"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "contaminated │    1" in done.stdout  # by the readable record's YouTube id
    warning = ("warning: 01-decontaminate: 2 of benchmark 'video-mme''s 3 records could not "
               "be read (2 malformed_annotation; the first: record 1: missing field(s) "
               "'question'), so rows sharing their clip or question are not caught")
    assert warning in " ".join(done.stdout.split())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"][-1]["benchmarks"]["video-mme"]["unread"] == {
        "malformed_annotation": 2}
    status = subprocess.run(avcurate_cmd("status", str(run_dir)), capture_output=True,
                            text=True, check=True)
    assert warning in " ".join(status.stdout.split())

    # a file in another format: every record unreadable, the stage stops before any row
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"clip": "c1", "q": "What plays?"}] * 3))
    wrong = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--no-match-frames",
                                        "--benchmark", f"bench@video-mme={other}", "--redo",
                                        "--yes"), capture_output=True, text=True)
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == [
        "error: stage 'decontaminate': benchmark 'bench': none of its first 3 records could "
        "be read as video-mme (the first: record 0: missing field(s) 'videoID', 'question', "
        "'options'); check its format (NAME@FORMAT=ANNOTATIONS) and, for jsonl, parquet or "
        "csv, its columns"]
    assert json.loads((run_dir / "manifest.json").read_text())["stages"] == manifest["stages"]


def test_benchmark_videos_that_cannot_be_hashed_are_warned_of(tmp_path):
    """Video-MME ships its clips as zip archives: left packed (or never downloaded), its
    videos could not be hashed and the picture signal compared against nothing, unsaid. The
    manifest counts them; a warning names the first, and the archives to unpack."""
    import zipfile

    spec = _benchmark(tmp_path)
    spec = spec.replace("vmme/test.parquet", str(tmp_path / "vmme/test.parquet"))
    packed = tmp_path / "vmme/data/Zb3C8XrAR2o.mp4"
    with zipfile.ZipFile(tmp_path / "vmme/videos_chunked_01.zip", "w") as z:
        z.write(packed, "data/Zb3C8XrAR2o.mp4")
    packed.unlink()
    run_dir = _ingested(tmp_path)
    done = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--benchmark", spec),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bench = json.loads((run_dir / "manifest.json").read_text())["stages"][-1]["benchmarks"]
    assert bench["video-mme"] | {"archives": None} == {
        "items": 2, "videos": 2, "videos_hashed": 1, "videos_missing": 1,
        "videos_unreadable": 0, "video_unhashed_first": str(tmp_path / "vmme/Zb3C8XrAR2o.mp4"),
        "archives": None}
    assert bench["video-mme"]["archives"] == [str(tmp_path / "vmme/videos_chunked_01.zip")]
    warning = (f"warning: 01-decontaminate: 1 of benchmark 'video-mme''s 2 videos could not "
               f"be hashed (1 missing; the first: {tmp_path}/vmme/Zb3C8XrAR2o.mp4), so "
               "re-encoded or renamed copies of them are not caught by their picture; the "
               "media root holds archives (videos_chunked_01.zip): unpack them where they "
               "are (tar -xf FILE -C FOLDER, unzip FILE -d FOLDER), then redo the stage "
               "(--redo)")
    assert warning in " ".join(done.stdout.split())

    # unpacked, the redone stage hashes both and says nothing
    with zipfile.ZipFile(tmp_path / "vmme/videos_chunked_01.zip") as z:
        z.extractall(tmp_path / "vmme")
    redone = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--benchmark", spec,
                                         "--redo", "--yes"), capture_output=True, text=True)
    assert redone.returncode == 0, redone.stderr
    assert "warning" not in redone.stdout
    assert json.loads((run_dir / "manifest.json").read_text())["stages"][-1]["benchmarks"][
        "video-mme"] == {"items": 2, "videos": 2, "videos_hashed": 2}


def test_a_benchmark_split_over_files_is_given_as_a_glob(tmp_path):
    """MVBench ships one JSON file per task, and a Hub dataset's test split is often several
    Parquet files: `--benchmark` took one file, so a user had to list each. A quoted glob
    reads every file it matches (ids tagged by file); one matching nothing, or a matched
    file that cannot be read, stops the command with one line naming it."""
    from avcurate.decontam.stage import Decontaminate
    from avcurate.stages.context import StageContext

    tasks = tmp_path / "mvbench/json"
    tasks.mkdir(parents=True)
    (tmp_path / "mvbench/video").mkdir()
    for task, question in (("action_count", "How many times does the man jump?"),
                           ("object_shuffle", "Where is the ball hidden at the end?")):
        (tasks / f"{task}.json").write_text(json.dumps([
            {"video": f"{task}_1.mp4", "question": question, "candidates": ["a", "b"],
             "answer": "a"}]))
    _benchmark(tmp_path)
    table = pq.read_table(tmp_path / "vmme/test.parquet")
    for k in range(2):
        pq.write_table(table.slice(k, 1), tmp_path / f"vmme/test-0000{k}-of-00002.parquet")
    columns = {"mvbench": {"video": "{video}", "options": "candidates"}}
    stage = Decontaminate(benchmarks=[
        f"mvbench@jsonl={tasks}/*.json:{tmp_path / 'mvbench/video'}",
        f"video-mme={tmp_path}/vmme/test-*.parquet:{tmp_path / 'vmme'}"],
        benchmark_columns=columns, match_frames=False)
    stage.check()
    index = stage.build_index(StageContext(tmp_path / "run", tmp_path / "run/01"))
    assert sorted(i.id for i in index.items) == [
        "jsonl:action_count/0", "jsonl:object_shuffle/0",
        "video-mme:test-00000-of-00002/001-1", "video-mme:test-00001-of-00002/002-1"]
    assert index.match_question(normalise_question("where is the ball hidden at the end"),
                                0.6).item.id == "jsonl:object_shuffle/0"
    assert stage.summary()["benchmarks"]["mvbench"]["items"] == 2

    (tasks / "notes.json").write_text(json.dumps([{"task": "x"}]))
    run_dir = _ingested(tmp_path)
    for spec, message in [
            (f"mvbench@jsonl={tasks}/*.json", f"benchmark 'mvbench': {tasks}/notes.json: none "
             "of its first 1 records could be read as jsonl"),
            (f"mvbench@jsonl={tasks}/*.jsonl", f"benchmark 'mvbench': no annotation file "
             f"matches '{tasks}/*.jsonl'")]:
        done = subprocess.run(avcurate_cmd("decontaminate", str(run_dir), "--benchmark", spec),
                              capture_output=True, text=True)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr
