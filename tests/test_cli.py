"""The command line as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import avcurate_cmd
from helpers import jsonl_recipe, read_stage, run

from avcurate.pipeline.recipe import StageSpec


def sh(*args, check=True):
    return subprocess.run(avcurate_cmd(*args), capture_output=True, text=True, check=check)


def test_ingest_then_validate(tmp_path, media):
    ann = tmp_path / "mine.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in [
        {"uid": "a", "clip": "good.mp4", "q": "Color?", "opts": ["red", "blue"], "gt": 0},
        {"uid": "b", "clip": "silent.mp4", "q": "Color?", "opts": ["red", "blue"], "gt": 1},
        {"uid": "c", "clip": "../escape.mp4", "q": "Color?", "opts": ["red", "blue"], "gt": 1},
    ]))
    run_dir = tmp_path / "my [runs]" / "run"  # the next command, shell-quoted and whole
    ingested = sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                  str(media["root"]), "--out", str(run_dir), "--column", "id=uid", "--column",
                  "video=clip", "--column", "question=q", "--column", "options=opts",
                  "--column", "answer=gt", "-q")
    assert f"Next: avcurate validate '{run_dir}'" in ingested.stdout.splitlines()
    result = sh("validate", str(run_dir), "--silence-db", "-50", "-q")
    assert "01-validate" in result.stdout
    kept, rej = read_stage(run_dir, "01")
    assert kept.column("id").to_pylist() == ["jsonl:mine/a"]
    assert rej.column("reject_reason").to_pylist() == ["silent_audio"]
    assert read_stage(run_dir, "00")[1].column("reject_reason").to_pylist() == ["unsafe_path"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # the recipe records what the user gave; the stage entry records every option's value
    assert manifest["recipe"]["stages"] == [{"name": "validate", "silence_db": -50.0}]
    assert manifest["stages"][1]["options"]["min_duration_s"] == 1.0
    status = json.loads(sh("status", str(run_dir), "--json").stdout)
    assert status["stages"][1]["rejects_by_reason"] == {"silent_audio": 1}


def test_stage_commands_go_on_after_the_annotation_file_changed_or_went(tmp_path, media):
    """A stage command checked the run's annotation files as a recipe does: once the file
    was deleted after ingest (it is in the shards now), copied without its time or
    touched, every stage command on the run stopped ("does not exist", "ingested
    annotation files that changed since"), and the run could not go on. The run's ingest
    now stands, with a note; --force still ingests the file again."""
    ann = tmp_path / "mine.jsonl"
    ann.write_text("".join(json.dumps({"uid": u, "clip": "good.mp4", "q": f"Colour {u}?",
                                       "opts": ["red", "blue"], "gt": 0}) + "\n"
                           for u in "ab"))
    run_dir = tmp_path / "run"
    sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
       str(media["root"]), "--out", str(run_dir), "--column", "id=uid", "--column",
       "video=clip", "--column", "question=q", "--column", "options=opts", "--column",
       "answer=gt", "-q")
    ann.rename(tmp_path / "elsewhere.jsonl")
    gone = sh("validate", str(run_dir), "-q", check=False)
    assert gone.returncode == 0, gone.stderr
    assert f"the annotation file(s) this run ingested are gone ({ann})" in \
        " ".join(gone.stderr.split())
    (tmp_path / "elsewhere.jsonl").rename(ann)
    os.utime(ann, ns=(ann.stat().st_atime_ns, ann.stat().st_mtime_ns + 10**9))
    changed = sh("dedup", str(run_dir), "-q", check=False)
    assert changed.returncode == 0, changed.stderr
    assert "changed since" in changed.stderr
    assert sh("dedup", str(run_dir), "-q").returncode == 0  # done: nothing to do
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [e["name"] for e in manifest["stages"]] == ["ingest", "validate", "dedup"]
    ingested_from = manifest["stages"][0]["fingerprint"]  # the file's size and time then
    assert read_stage(run_dir, "02")[0].num_rows == 2
    sh("threshold", str(run_dir), "--rule", "duration_s > 0", "--force", "-q")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [e["name"] for e in manifest["stages"]] == ["ingest", "validate", "dedup", "threshold"]
    assert manifest["stages"][0]["fingerprint"] != ingested_from  # ingested again



def test_follow_links_reads_a_farm_of_links_to_shared_storage(tmp_path, media):
    """Clips linked into the media root from shared storage: refused as unsafe_path with a
    line naming --follow-links; with it (or follow_links = true in a recipe) every row is
    kept by its link's path, and validate reads the clip through the link."""
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "clip.mp4").symlink_to(media["good"])
    ann = tmp_path / "qa.jsonl"
    ann.write_text(json.dumps({"id": "a", "video": "clip.mp4", "question": "Color?",
                               "options": ["red", "blue"], "answer": "A"}) + "\n")
    base = ["ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root", str(farm),
            "-q"]
    refused = sh(*base, "--out", str(tmp_path / "no"), check=False)
    assert refused.returncode == 2 and "(--follow-links)" in refused.stderr
    sh(*base, "--out", str(tmp_path / "run"), "--follow-links")
    sh("validate", str(tmp_path / "run"), "-q")
    kept, _ = read_stage(tmp_path / "run", "01")
    assert kept.column("video").to_pylist() == [str(farm.resolve() / "clip.mp4")]
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[[sources]]\nname = "jsonl"\nannotations = "{ann}"\n'
                      f'media_root = "{farm}"\nfollow_links = true\n')
    sh("run", str(recipe), "--out", str(tmp_path / "recipe_run"), "-q")
    assert read_stage(tmp_path / "recipe_run", "00")[0].num_rows == 1
    recipe.write_text(recipe.read_text().replace("follow_links = true", 'follow_links = "yes"'))
    bad = sh("run", str(recipe), "--out", str(tmp_path / "bad_run"), "-q", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "error: source 'jsonl': follow_links must be true or false, not 'yes'"]
    assert not (tmp_path / "bad_run").exists()


def test_ingest_stops_when_a_source_is_read_with_the_wrong_format_or_media_root(tmp_path, media):
    """Every one of a source's first records rejected as malformed (the wrong --source) or
    as escaping the media root (the wrong --media-root) is the user's mistake: one line,
    exit 2, no shard written. Broken records among good ones are still rejected one by one."""
    llava = [{"id": f"v{i}", "video": "good.mp4", "data_source": "x", "conversations": [
        {"from": "human", "value": "<video>\nWhich colour?\nA. red\nB. blue"},
        {"from": "gpt", "value": "A"}]} for i in range(70)]
    ann = tmp_path / "llava.json"
    ann.write_text(json.dumps(llava))

    def ingest(source, root, out, path=ann):
        return sh("ingest", "--source", source, "--annotations", str(path), "--media-root",
                  str(root), "--out", str(tmp_path / out), "-q", check=False)

    wrong_format = ingest("avqa", media["root"], "a")
    assert wrong_format.returncode == 2
    [line] = wrong_format.stderr.strip().splitlines()
    assert "no sample from its first 70 records: 70 malformed_annotation" in line
    assert "missing field(s) 'video_name'" in line and "avcurate sources" in line
    # no run is left behind (status once showed one with an `incomplete` ingest): only the
    # lock files, and the right format then ingests into the same folder
    assert {p.name for p in (tmp_path / "a").iterdir()} <= {".avcurate.lock", ".avcurate.lock.json"}
    assert "not an avcurate run" in sh("status", str(tmp_path / "a"), check=False).stderr
    assert ingest("llava-video", media["root"], "a").returncode == 0
    assert read_stage(tmp_path / "a", "00")[0].num_rows == 70

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    absolute = [r | {"video": str(media["good"])} for r in llava]
    (tmp_path / "abs.json").write_text(json.dumps(absolute))
    wrong_root = ingest("llava-video", elsewhere, "b", tmp_path / "abs.json")
    assert wrong_root.returncode == 2 and "70 unsafe_path" in wrong_root.stderr
    assert "resolves outside the media root" in wrong_root.stderr
    assert not list((tmp_path / "b").rglob("part-*.parquet"))

    mixed = [{"id": "broken"}] * 3 + llava[:2]  # a few broken records first, then good ones
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    assert ingest("llava-video", media["root"], "c", tmp_path / "mixed.json").returncode == 0
    kept, rejected = read_stage(tmp_path / "c", "00")
    assert (kept.num_rows, rejected.num_rows) == (2, 3)

def test_media_named_by_url_is_rejected_at_ingest_as_a_url(tmp_path, media):
    """A URL in the video column was read as a folder 'https:' under the media root: the row
    passed ingest and validate said missing_media (or stopped: no file exists), with no
    word that nothing is downloaded. Now ingest rejects it saying so, and a source of URLs
    only stops with that line."""
    def record(i, video):
        return {"id": f"v{i}", "video": video, "q": "Which colour?", "opts": ["red", "blue"],
                "ans": "A"}

    def ingest(records, out):
        ann = tmp_path / f"{out}.jsonl"
        ann.write_text("".join(json.dumps(r) + "\n" for r in records))
        return sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                  str(media["root"]), "--out", str(tmp_path / out), "--column", "question=q",
                  "--column", "options=opts", "--column", "answer=ans", "-q", check=False)

    url = "https://example.com/clips/v1.mp4"
    mixed = ingest([record(0, "good.mp4"), record(1, url), record(2, "s3://bucket/v2.mp4")],
                   "mixed")
    assert mixed.returncode == 0, mixed.stderr
    rejected = read_stage(tmp_path / "mixed", "00")[1].to_pylist()
    assert [r["reject_reason"] for r in rejected] == ["unsafe_path"] * 2
    assert f"'{url}' is a URL; avcurate reads local files only" in rejected[0]["reject_detail"]
    only_urls = ingest([record(i, url) for i in range(5)], "urls")
    assert only_urls.returncode == 2
    [line] = only_urls.stderr.strip().splitlines()
    assert "is a URL" in line and "Traceback" not in only_urls.stderr


def test_a_url_for_the_annotations_or_the_media_root_is_one_line_and_file_urls_are_paths(
        tmp_path, media):
    """`--media-root s3://bucket/videos` was read as a folder 's3:' under the current one
    ("media root /home/me/s3:/bucket/videos is not a folder"); a recipe's too."""
    ann = tmp_path / "a.jsonl"
    ann.write_text(json.dumps({"id": "v", "video": "good.mp4", "q": "Which colour?",
                               "opts": ["red", "blue"], "ans": "A"}) + "\n")
    columns = ["--column", "question=q", "--column", "options=opts", "--column", "answer=ans"]
    for annotation_file, root, said in [
            (str(ann), "s3://bucket/videos", "media root s3://bucket/videos is a URL"),
            ("gs://bucket/a.jsonl", str(media["root"]), "annotations gs://bucket/a.jsonl is a URL")]:
        done = sh("ingest", "--source", "jsonl", "--annotations", annotation_file, "--media-root",
                  root, "--out", str(tmp_path / "run"), *columns, "-q", check=False)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"error: source 'jsonl': {said}; avcurate reads local files: download or sync it "
            "(`hf download`, `aws s3 sync`, `gcloud storage rsync`) or mount the bucket "
            "(s3fs, gcsfuse), and give the local path"]
        assert not (tmp_path / "run").exists()
    # a stage command that starts a run (`score --source ...`) reads its paths the same way
    done = sh("score", "--source", "jsonl", "--annotations", str(ann), "--media-root",
              "s3://bucket/videos", "--out", str(tmp_path / "run"), "--model", "m",
              "--base-url", "http://127.0.0.1:9/v1", check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: source 'jsonl': media root s3://bucket/videos is a URL; avcurate reads local "
        "files: download or sync it (`hf download`, `aws s3 sync`, `gcloud storage rsync`) or "
        "mount the bucket (s3fs, gcsfuse), and give the local path"]
    assert not (tmp_path / "run").exists()
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[[sources]]\nname = "jsonl"\nannotations = "{ann}"\n'
                      'media_root = "https://host/videos"\n')
    done = sh("run", str(recipe), "--out", str(tmp_path / "run"), check=False)
    assert done.returncode == 2 and "media root https://host/videos is a URL" in done.stderr
    # a file:// URL is the local path it names, on the command line as in a recipe
    done = sh("ingest", "--source", "jsonl", "--annotations", ann.as_uri(), "--media-root",
              media["root"].as_uri(), "--out", str(tmp_path / "run"), *columns, "-q",
              check=False)
    assert done.returncode == 0, done.stderr
    assert read_stage(tmp_path / "run", "00")[0].column("id").to_pylist() == ["jsonl:a/v"]


def test_an_output_given_as_a_url_is_one_line_and_writes_nothing(tmp_path, media,
                                                                   monkeypatch):
    """`export --out s3://bucket/x` made a folder `s3:` here and wrote the export in it."""
    ann = tmp_path / "a.jsonl"
    ann.write_text(json.dumps({"id": "v", "video": "good.mp4", "q": "Which colour?",
                               "opts": ["red", "blue"], "ans": "A"}) + "\n")
    run_dir = tmp_path / "run"
    sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
       str(media["root"]), "--out", str(run_dir), "--column", "question=q", "--column",
       "options=opts", "--column", "answer=ans", "-q")
    monkeypatch.chdir(tmp_path)
    for command in (["export", str(run_dir), "--out", "s3://bucket/export"],
                    ["query", str(run_dir), "SELECT 1", "--out", "s3://bucket/export"],
                    ["stats", str(run_dir), "--html", "s3://bucket/export"],
                    ["demo", "--out", "s3://bucket/export", "-q"]):
        done = sh(*command, check=False)
        option = "--html" if "--html" in command else "--out"
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            f"error: {option} s3://bucket/export is a URL; avcurate writes local files: write "
            "here, then copy it there (`aws s3 sync`, `gcloud storage rsync`)"), command
    assert not (tmp_path / "s3:").exists()


def test_counts_over_a_thousand_print_with_separators(tmp_path, media):
    """The reasons table and the HTML report print counts as the funnel table does
    (1,200, not 1200), so a user comparing them reads the same figure."""
    good = {"video": "good.mp4", "q": "Color?", "opts": ["red", "blue"], "gt": 0}
    ann = tmp_path / "big.jsonl"
    ann.write_text("".join(json.dumps({"uid": f"r{i}", **good} | ({"q": ""} if i % 2 else {}))
                           + "\n" for i in range(2400)))
    run_dir = tmp_path / "run"
    sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
       str(media["root"]), "--out", str(run_dir), "--column", "id=uid", "--column",
       "question=q", "--column", "options=opts", "--column", "answer=gt", "-q")
    result = sh("validate", str(run_dir), "-q")
    assert re.search(r"empty_question\s*│\s*1,200 │", result.stdout), result.stdout
    html = tmp_path / "r.html"
    sh("stats", str(run_dir), "--html", str(html))
    page = html.read_text()
    assert '<td>empty_question</td><td class="num">1,200</td>' in page
    assert '<td class="num">2,400</td>' in page and ">2400</td>" not in page


@pytest.mark.parametrize("name,content", [
    ("zero.json", b""), ("list.json", b"[]"), ("object.json", b"{}"),
    ("blank.jsonl", b"\n\n"), ("none.parquet", None)])
def test_ingest_stops_on_an_annotation_file_with_no_record(tmp_path, name, content):
    """A file with no record is a wrong path or a failed download far more often than an
    empty split: one line naming the source, exit 2, no shard, instead of an empty run."""
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"id": pa.array([], pa.string())}), path)
    else:
        path.write_bytes(content)
    source = "jsonl" if name.endswith(".jsonl") else "parquet" if content is None else "avqa"
    result = sh("ingest", "--source", source, "--annotations", str(path), "--media-root",
                str(tmp_path), "--out", str(tmp_path / "run"), "-q", check=False)
    assert result.returncode == 2, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert f"source '{source}' ({path}): holds no record" in line
    assert not list((tmp_path / "run").rglob("part-*.parquet"))


def test_a_csv_is_ingested_from_the_command_line_and_a_recipe(tmp_path, media):
    """`--source csv` with one option per column: whole-number answers without `--answers`
    stop the command with one line before the run folder is made; with it, and with the
    same source in a recipe, the rows come in with their answers as letters."""
    ann = tmp_path / "mine.csv"
    ann.write_text("clip,q,gt,o1,o2\ngood.mp4,Color?,0,red,blue\ngood2.mp4,Color?,1,red,blue\n")
    args = ["ingest", "--source", "csv", "--annotations", str(ann), "--media-root",
            str(media["root"]), "--column", "video=clip", "--column", "question=q",
            "--column", "answer=gt", "--column", "options=o1,o2", "-q", "--out"]
    refused = sh(*args, str(tmp_path / "run"), check=False)
    assert refused.returncode == 2 and not (tmp_path / "run").exists()
    [line] = refused.stderr.strip().splitlines()
    assert "'gt' column is a whole number: say whether" in line and "--answers index" in line
    bogus = sh(*args, str(tmp_path / "run"), "--answers", "zero-based", check=False)
    assert bogus.returncode == 2 and not (tmp_path / "run").exists()
    assert bogus.stderr.strip() == ("error: answers must be index, index1, text (\"index\": the "
                                    "option's position from 0, \"index1\": from 1), not "
                                    "'zero-based'")
    sh(*args, str(tmp_path / "run"), "--answers", "index")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""[[sources]]
name = "csv"
annotations = "{ann}"
media_root = "{media['root']}"
answers = "index"
columns = {{video = "clip", question = "q", answer = "gt", options = ["o1", "o2"]}}
""")
    sh("run", str(recipe), "--out", str(tmp_path / "run2"), "-q")
    for run_dir in ("run", "run2"):
        table = pq.read_table(tmp_path / run_dir / "00-ingest/part-00000.parquet")
        assert table.column("answer").to_pylist() == ["A", "B"]
        assert table.column("options").to_pylist() == [["red", "blue"]] * 2


def test_ingest_takes_a_glob_with_media_beside_each_file(tmp_path, media):
    """A quoted glob: one source per file, each file's clips under its own folder."""
    import shutil

    for part, color in (("part1", "red"), ("part2", "blue")):
        folder = tmp_path / "data" / part
        folder.mkdir(parents=True)
        shutil.copy(media["good"], folder / "clip.mp4")
        (folder / f"{part}.jsonl").write_text(json.dumps(
            {"video": "clip.mp4", "question": f"Color in {part}?", "answer": color}) + "\n")
    args = ["ingest", "--source", "jsonl", "--annotations", str(tmp_path / "data/*/*.jsonl"),
            "--media-root", "{annotations_dir}", "-q", "--out"]
    sh(*args, str(tmp_path / "run"))
    rows = pq.read_table(tmp_path / "run/00-ingest/part-00000.parquet").to_pylist()
    assert [(r["id"], r["video"]) for r in rows] == [
        ("jsonl:part1/0", str(tmp_path / "data/part1/clip.mp4")),
        ("jsonl:part2/0", str(tmp_path / "data/part2/clip.mp4"))]
    none = sh(*args[:4], str(tmp_path / "data/*/*.json"), *args[5:], str(tmp_path / "r2"),
              check=False)
    assert none.returncode == 2 and not (tmp_path / "r2").exists()
    assert none.stderr.startswith("error: no annotation file matches '")


def test_ingest_records_its_paths_resolved_as_before(tmp_path, media):
    """Runs ingested before globs recorded the annotation file and media root with their
    symlinks resolved; the same command must still match them (not 'another recipe')."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "qa.jsonl").write_text(json.dumps(
        {"video": "good.mp4", "question": "Color?", "answer": "red"}) + "\n")
    (tmp_path / "link").symlink_to(real)
    args = ["ingest", "--source", "jsonl", "--annotations", str(tmp_path / "link/qa.jsonl"),
            "--media-root", str(media["root"]), "-q", "--out", str(tmp_path / "run")]
    sh(*args)
    [source] = json.loads((tmp_path / "run/manifest.json").read_text())["recipe"]["sources"]
    assert source["annotations"] == str(real / "qa.jsonl")
    assert source["media_root"] == str(media["root"].resolve())
    assert sh(*args).returncode == 0  # the same command again: already done


def test_clear_errors(tmp_path):
    missing = sh("status", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 2 and "not an avcurate run" in missing.stderr
    bad = sh("ingest", "--source", "nope", "--annotations", "x", "--media-root", ".", "--out",
             str(tmp_path / "r"), check=False)
    assert bad.returncode == 2 and "unknown source 'nope'" in bad.stderr
    no_recipe = sh("run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "r"), check=False)
    assert no_recipe.returncode == 2 and "no recipe at" in no_recipe.stderr
    no_file = tmp_path / "r.toml"
    no_file.write_text('[[sources]]\nname = "avqa"\nannotations = "gone.json"\nmedia_root = "."\n')
    result = sh("run", str(no_file), "--out", str(tmp_path / "r2"), check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "r2").exists()  # found before the run folder is made
    (tmp_path / "folder").mkdir()
    no_file.write_text('[[sources]]\nname = "avqa"\nannotations = "folder"\nmedia_root = "."\n')
    result = sh("run", str(no_file), "--out", str(tmp_path / "r2"), check=False)
    assert result.returncode == 2 and "is a folder; name the annotation file in it" in result.stderr
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet"):
        (tmp_path / "folder/data" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "folder/data" / name).write_bytes(b"PAR1")
    (tmp_path / "folder/README.md").write_text("card")
    (tmp_path / "folder/dataset_info.json").write_text("{}")
    result = sh("run", str(no_file), "--out", str(tmp_path / "r2"), check=False)
    assert result.returncode == 2 and "name the annotation file in it, or a glob of them: " \
        f"'{tmp_path / 'folder/**/*.parquet'}' (2 files)" in " ".join(result.stderr.split())


def test_sources_and_help():
    listing = sh("sources").stdout
    for name in ("llava-video", "video-vista", "avqa", "daily-omni", "jsonl", "parquet"):
        assert name in listing
    assert "Every source also takes tag (names the file in sample ids), strip_prefix" \
        in " ".join(listing.split()) and "follow_links (read media through links" in (
            " ".join(listing.split()))
    assert "resumes" in sh("run", "--help").stdout
    # in 80 columns the descriptions line up, wrapped lines included
    shown = subprocess.run(avcurate_cmd("stages"), capture_output=True, text=True, check=True,
                           env=os.environ | {"COLUMNS": "80"}).stdout.splitlines()
    starts = {line.index(line.split()[1]) for line in shown if not line.startswith(" ")}
    wrapped = {len(line) - len(line.lstrip()) for line in shown if line.startswith(" ")}
    assert len(starts) == 1 and wrapped <= starts and len(shown) >= 13
    assert any(line.startswith("teacher_filter ") for line in shown)


# -- bad values: one line, exit 2, nothing touched ----------------------------------------------

@pytest.fixture(scope="module")
def ingested(tmp_path_factory, media):
    root = tmp_path_factory.mktemp("bad-values")
    records = [{"id": "a", "video": str(media["good"]), "question": "Q?", "options": ["x", "y"],
                "answer": "A"}]
    run(jsonl_recipe(root, records, media["root"], [StageSpec("validate")]), root / "run")
    bad_recipe = root / "bad.toml"
    bad_recipe.write_text(f'[[sources]]\nname = "jsonl"\nannotations = "{root / "ann.jsonl"}"\n'
                          f'media_root = "{media["root"]}"\n[expor]\nout = "x"\n')
    loud = root / "loud.toml"
    loud.write_text(bad_recipe.read_text().replace('[expor]\nout = "x"\n', "")
                    + '[[stages]]\nname = "validate"\nsilence_db = "loud"\n')
    for name, text in TAXONOMIES.items():
        (root / name).write_text(text)
    return root


TAXONOMIES = {  # each one, before its check, crashed or classified every row against it
    "nameless.toml": '[[category]]\ndefinition = "x"\n',
    "twice.toml": '[[category]]\nname = "a"\n[[category]]\nname = "a "\n',
    "typo.toml": '[[category]]\nname = "a"\ndefintion = "x"\n',
    "reserved.toml": '[[category]]\nname = "none"\n',
    "flat.toml": 'category = "a"\n',
}


BAD = [
    (["balance", "{run}", "--max-ratio", "nan"], "max_ratio = nan must be a finite number"),
    (["balance", "{run}", "--max-ratio", "inf"], "must be a finite number"),
    (["balance", "{run}", "--max-ratio", "1e308"], "must be at most"),
    (["balance", "{run}", "--max-ratio", "0"], "must be at least 1"),
    (["balance", "{run}", "--min-count", "-1"], "min_count = -1 must be at least 0"),
    (["threshold", "{run}", "--rule", "question >= 1 or"], "cannot parse rule"),
    (["score", "{run}", "--model", "m", "--max-attempts", "0"], "max_attempts = 0 must be at least 1"),
    (["score", "{run}", "--model", "m", "--concurrency", "0"], "concurrency = 0 must be at least 1"),
    (["score", "{run}", "--model", "m", "--timeout", "0"], "timeout = 0.0 must be greater than 0"),
    (["score", "{run}", "--model", "m", "--timeout", "-3"], "must be greater than 0"),
    (["score", "{run}", "--model", "m", "--weights", "1,x"], "--weights takes comma-separated numbers"),
    (["score", "{run}", "--model", "m", "--media", "sound"], "media = 'sound' must be one of"),
    (["score", "{run}", "--backend", "opneai", "--model", "m"], "backend = 'opneai' must be one of"),
    (["score", "{run}"], "a model name is required"),
    (["teach", "{run}", "--visual-model", "v", "--audio-model", "a", "--require", "most"],
     "require = 'most' must be one of both, either, any"),
    (["merge-traces", "{run}", "--model", "m", "--max-rounds", "0"], "max_rounds = 0 must be"),
    (["merge-traces", "{run}", "--model", "m", "--min-tokens", "100", "--max-tokens", "10"],
     "the longest reasoning, is 10, less than min_tokens = 100: no trace could pass"),
    (["merge-traces", "{run}", "--model", "m", "--max-answer-tokens", "20"],
     "the longest reply, is 20, less than min_tokens = 30"),
    (["teach", "{run}", "--visual-model", "v"], "--audio-model is required"),
    # credentials in a URL would be written to the manifest and echoed in messages
    (["score", "{run}", "--model", "m", "--base-url", "http://me:pw@127.0.0.1:9/v1"],
     "score': base_url holds credentials (USER:PASSWORD@); give the URL without them"),
    (["teach", "{run}", "--visual-model", "v", "--audio-model", "a", "--audio-base-url",
      "https://tok@h.example/v1"], "audio_teacher': base_url holds credentials"),
    (["probe", "{run}", "--model", "m", "--seed", "3"], "--seed and --name go with --limit"),
    (["probe", "{run}", "--model", "m", "--name", "x"], "--seed and --name go with --limit"),
    (["probe", "{run}", "--model", "m", "--limit", "3", "--append"],
     "--append adds the stage after the run's last one; it does not go with --limit"),
    (["export", "{run}", "--out", "{root}/e", "--hardlink"], "--hardlink goes with --copy-media"),
    (["validate", "{run}", "--workers", "0"], "--workers must be at least 1"),
    (["validate", "{run}", "--min-duration", "10", "--max-duration", "5", "--redo"],
     "max_duration_s = 5 (--max-duration) is less than min_duration_s = 10: no clip could pass"),
    (["balance", "{root}/nope"], "is not an avcurate run (no manifest.json); make one"),
    (["run", "{root}/bad.toml", "--out", "{root}/r2"], "unknown key 'expor'; did you mean 'export'"),
    (["run", "{root}/loud.toml", "--out", "{root}/r3"], "silence_db = 'loud' must be a number"),
    (["train", "--data", "d", "--model", "m", "--lr", "-1"], "lr = -1.0 must be greater than 0"),
    (["train", "--data", "d", "--model", "m", "--rewards", "fromat"], "unknown reward 'fromat'"),
    (["train", "--data", "d", "--model", "m", "--algo", "ppo"], "algo = 'ppo' must be one of"),
    (["train", "--data", "d", "--model", "m", "--dtype", "bf16"], "dtype = 'bf16' must be one of"),
    (["train", "--data", "d", "--model", "m", "--max-resample-rounds", "0"],
     "max_resample_rounds = 0 must be at least 1"),
    (["train", "--data", "d", "--model", "m", "--max-pixels", "100"],
     "max_pixels = 100 must be at least 784"),
    (["score", "{run}", "--model", "m", "--max-pixels", "-5"],
     "max_pixels = -5 must be at least 0"),
    (["teach", "{run}", "--visual-model", "v", "--audio-model", "a", "--max-pixels", "-1"],
     "max_pixels = -1 must be at least 0"),
    (["train", "--data", "d", "--model", "m", "--media-timeout", "0"],
     "media_timeout = 0.0 must be greater than 0"),
    (["train", "--data", "d", "--model", "m", "--media-timeout", "inf"],
     "media_timeout = inf must be a finite number"),
    (["train", "--data", "d", "--model", "m", "--eval-every", "-1"],
     "eval_every = -1 must be at least 0"),
    (["train", "--data", "d", "--model", "m", "--eval-rows", "0"],
     "eval_rows = 0 must be at least 1"),
    (["classify", "{run}", "--model", "m", "--rpm", "-1"], "rpm = -1.0 must be at least 0"),
    (["score", "{run}", "--model", "m", "--thinking", "128"], "thinking is Gemini's setting"),
    (["teach", "{run}", "--visual-backend", "gemini", "--visual-model", "g", "--audio-model", "a",
      "--visual-thinking", "1.5"],
     "thinking must be a token budget (a whole number, -1 for the model's choice) or a level"),
    (["classify", "{run}", "--model", "m", "--temperature", "nan"], "must be a finite number"),
    (["subset", "{run}", "--name", "Audio Visual"], "must be lower-case letters"),
    (["reset", "{root}/nope", "--from", "01-x"], "is not an avcurate run"),
    (["ingest", "--source", "lava", "--annotations", "a", "--media-root", "m", "--out", "o"],
     "unknown source 'lava'"),
    (["ingest", "--source", "jsonl", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--shard-size", "0"], "--shard-size must be at least 1"),
    (["ingest", "--source", "avqa", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--explode", "tasks"], "source 'avqa' has no option 'explode'"),
    (["ingest", "--source", "avqa", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--strip-prefix", "/"], "strip_prefix must be the folder written before each media path"),
    (["ingest", "--source", "jsonl", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--tag", "a/b"], "tag must be a short name without '/'"),
    (["probe", "{run}", "--model", "m", "--conditions", "av,xyz"],
     "conditions must be distinct values among av, v, a, t"),
    (["probe", "{run}", "--model", "m", "--n", "0"], "n = 0 must be at least 1"),
    (["classify", "{run}", "--model", "m", "--taxonomy", "{root}/nameless.toml"],
     "nameless.toml: category 1 has no name"),
    (["classify", "{run}", "--model", "m", "--taxonomy", "{root}/twice.toml"],
     "twice.toml: category 'a' is listed twice"),
    (["classify", "{run}", "--model", "m", "--taxonomy", "{root}/typo.toml"],
     "unknown key 'defintion'; did you mean 'definition'?"),
    (["classify", "{run}", "--model", "m", "--taxonomy", "{root}/reserved.toml"],
     "category 'none' is reserved"),
    (["classify", "{run}", "--model", "m", "--taxonomy", "{root}/flat.toml"],
     "categories are [[category]] tables"),
    (["classify", "{run}", "--model", "m", "--taxonomy", "{root}/nope.toml"],
     "nope.toml does not exist"),
    (["balance", "{run}", "--dependency", "judges"], "must be one of judge, measured"),
    (["ingest", "--source", "jsonl", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--column", "questoin=q"], "cannot map questoin"),
    (["ingest", "--source", "csv", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--column", "options=a0,,a2"], "options must name one column, or a list of the columns"),
    (["ingest", "--source", "csv", "--annotations", "a", "--media-root", "m", "--out", "o",
      "--answers", "1"], "answers must be index, index1, text"),
    (["export", "{run}", "--out", "{root}/e", "--val-fraction", "1.5"],
     "--val-fraction must be in [0, 1)"),
    (["export", "{run}", "--out", "{root}/e", "--split-by", "clip"],
     "--split-by must be one of video, id, not 'clip'"),
    (["export", "{run}", "--out", "{root}/e", "--license", "cc-by-99"], "not a Hub license id"),
    (["export", "{run}", "--out", "{root}/e", "--language", "en,??"], "not a language code"),
    (["export", "{run}", "--out", "{root}/e", "--revision", "dev"], "go with --push"),
    (["export", "{run}", "--out", "{root}/e", "--push", "--copy-media", "--repo-id", "a/b/c"],
     "--repo-id 'a/b/c' must be ORG/NAME"),
    (["export", "{run}", "--out", "{root}/e", "--shard-mb", "0"], "--shard-mb must be at least 1"),
    (["query", "{run}", "SELECT 1", "--limit", "-1"], "--limit must be at least 0"),
    (["stats", "{root}/nope"], "is not an avcurate run"),
    (["status", "{root}/nope"], "is not an avcurate run"),
    # what the command-line parser itself refuses was a usage line, a hint and a box
    (["balance", "{run}", "--max-ratio", "abc"],
     "Invalid value for '--max-ratio': Input should be a valid number"),
    (["score", "{run}", "--model", "m", "--max-pixels", "1.5"],
     "Invalid value for '--max-pixels': Input should be a valid integer"),
    (["balance", "{run}", "--max-ratoi", "3"],
     "No such option: --max-ratoi (Possible options: --max-per-category, --max-ratio) (see "
     "`avcurate balance --help`)"),
    (["scroe", "{run}"], "No such command 'scroe'. Did you mean 'score'"),
    (["balance"], "Missing argument 'RUN_DIR' (see `avcurate balance --help`)"),
    (["export"], "Missing argument 'RUN_DIR' (see `avcurate export --help`)"),  # was 'run_dir'
    (["reset", "{run}", "--from", "balance", "--yes"], "no stage 'balance'"),
    (["run", "{root}/missing.toml", "--out", "{root}/r4"], "no recipe at"),
    (["run", "{root}/bad.toml", "--out", "{root}/r5", "--executor", "spark"], "--executor must be"),
    (["run", "{root}/bad.toml", "--out", "{root}/r5", "--ray-actors", "3"],
     "--ray-actors 3 needs --executor ray"),  # was ignored: the run went local
    (["run", "{root}/bad.toml", "--out", "{root}/r5", "--executor", "ray", "--ray-actors", "0",
      "--dry-run"], "--ray-actors must be at least 1"),  # --dry-run took it
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[:1] + a[2:4]) for a, _ in BAD])
def test_bad_values_are_one_line_and_touch_nothing(ingested, args, message):
    run_dir = ingested / "run"
    before = (run_dir / "manifest.json").read_text()
    argv = [a.format(run=run_dir, root=ingested) for a in args]
    result = sh(*argv, check=False)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (run_dir / "manifest.json").read_text() == before  # no stage recorded, no row touched
    assert not (ingested / "r2").exists() and not (ingested / "r3").exists()


def test_a_bad_journal_setting_is_one_line_and_touches_nothing(ingested):
    """AVCURATE_SQLITE_JOURNAL takes wal or delete; anything else was once silently ignored."""
    good = ingested / "good.toml"
    good.write_text((ingested / "loud.toml").read_text().replace('silence_db = "loud"\n', ""))
    out = ingested / "r6"
    result = subprocess.run(avcurate_cmd("run", str(good), "--out", str(out)),
                            capture_output=True, text=True,
                            env=os.environ | {"AVCURATE_SQLITE_JOURNAL": "wall"})
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "AVCURATE_SQLITE_JOURNAL='wall': use wal or delete" in lines[0]
    assert not out.exists()  # stopped before the run folder was made
    env = {k: v for k, v in os.environ.items() if k != "AVCURATE_SQLITE_JOURNAL"}
    assert subprocess.run(avcurate_cmd("run", str(good), "--out", str(out)), capture_output=True,
                          env=env).returncode == 0  # the recipe itself is fine


def test_brackets_in_messages_are_shown_as_written(ingested):
    result = sh("threshold", str(ingested / "run"), "--rule", "[x] >= 1", check=False)
    assert result.returncode == 2 and "'[x] >= 1'" in result.stderr


def test_the_command_line_starts_without_media_or_query_libraries():
    """PyAV and DuckDB are imported by the code that uses them, not by every command's
    start-up (~0.1 s that `status`, filters, exports and resumed runs never need); the
    garbage collector, paused while the command line imports, is running again after."""
    probe = ("import gc, sys, avcurate.cli; "
             "print(sorted(m for m in ('av', 'duckdb') if m in sys.modules), gc.isenabled())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["[]", "True"]
    # what was imported is frozen out of collections; DuckDB objects among it are given
    # back before exit, else its bindings print "leaked instances" warnings on stderr
    probe = "import duckdb, avcurate.cli; duckdb.connect().sql('SELECT 1').fetchall()"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stderr == ""
    # a command imports DuckDB after the freeze: nothing of it is frozen, so the heap stays
    # frozen to the end (the exit does not walk it, ~0.1 s) and still nothing is printed
    probe = ("import atexit, gc; atexit.register(lambda: print(gc.get_freeze_count() > 0)); "
             "import avcurate.cli, duckdb; con = duckdb.connect(); "
             "con.sql('SELECT 1').fetchall()")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert (done.stdout, done.stderr) == ("True\n", "")


@pytest.mark.parametrize("chosen", [None, "system"])
def test_the_command_line_takes_arrow_memory_from_jemalloc_unless_told(chosen):
    """The console script picks jemalloc for its own process (mimalloc's huge pages cost
    ~28% of a filter run's CPU here); a pool the user names in ARROW_DEFAULT_MEMORY_POOL
    is kept, and importing the command line as a library changes nothing."""
    import pyarrow as pa

    if "jemalloc" not in pa.supported_memory_backends():
        pytest.skip("this pyarrow build has no jemalloc")
    probe = ("import sys, pyarrow as pa\n"
             "plain = pa.default_memory_pool().backend_name\n"
             "import avcurate.cli as cli\n"
             "assert pa.default_memory_pool().backend_name == plain\n"
             "sys.argv = ['avcurate', 'version']\n"
             "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
             "print(plain, pa.default_memory_pool().backend_name)")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, env=env)
    before, after = done.stdout.split()[-2:]
    if chosen:
        assert before == chosen
    assert after == (chosen or "jemalloc")


def test_every_commands_help_reads_as_paragraphs_not_source_lines():
    """Helps are printed as flowing text: the words on either side of a docstring's line
    break end up side by side, in the command list and in a command's later paragraphs
    (typer printed those breaks as they stand in the source)."""
    import inspect

    from typer.main import get_command
    from typer.testing import CliRunner

    from avcurate.cli import app

    def shown(*args: str) -> str:
        return CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "2000"}).output

    listing, checked = shown(), 0
    for name, command in get_command(app).commands.items():
        first, *later = inspect.cleandoc(command.callback.__doc__ or "").split("\n\n")
        # the first paragraph also stands in the command list
        for paragraph, page in [(first, listing)] + [(p, shown(name)) for p in later]:
            lines = paragraph.split("\n")
            for before, after in zip(lines, lines[1:], strict=False):
                if after[:1].isspace() or after[:2] in ("- ", "* "):
                    continue
                pair = f"{before.split()[-1]} {after.split()[0]}"
                assert pair in page, f"avcurate {name}: {pair!r} split over two lines"
                checked += 1
    assert checked >= 10  # demo, reset, export and spotcheck have such paragraphs


def _help_texts(command) -> list[str]:
    """A command's own help and each of its parameters', as written (rich markup)."""
    return [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]


def test_no_help_text_is_eaten_as_markup():
    """Help texts are rich markup: a bracketed word left unescaped (`[train]`, `[run]`)
    was taken for a style tag and vanished from `--help` ("(a  table or ...")."""
    from typer.main import get_command

    from avcurate.cli import app
    from avcurate.cli.help_layout import as_printed

    for name, command in get_command(app).commands.items():
        for text in _help_texts(command):
            assert as_printed(text) == text.replace("\\[", "["), f"avcurate {name}: {text!r}"


@pytest.mark.parametrize("columns", [60, 80, 99, 100, 140])
def test_help_cuts_no_word_or_option_name_at_any_width(columns):
    """At 80 columns (a default terminal, `--help | less`) rich squeezed the option table
    of six commands and cut option names and words with "…" (`--steps-per-generat…`);
    below the width where the table fits, the help is click's plain layout. Every option
    name and every help text is printed whole, at any width."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from avcurate.cli import app
    from avcurate.cli.help_layout import as_printed

    def squeezed(text: str) -> str:  # lines joined: no spaces, no panel borders
        return "".join(c for c in text if not c.isspace() and c not in "│╭╮╰╯─")

    for name, command in get_command(app).commands.items():
        page = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": str(columns)}).output
        whole = squeezed(page)
        for text in _help_texts(command):
            assert squeezed(as_printed(text)) in whole, f"avcurate {name} at {columns}: {text!r}"
        for param in command.params:
            for flag in [*param.opts, *getattr(param, "secondary_opts", [])]:
                assert flag in page or not flag.startswith("-"), f"avcurate {name} at {columns}: {flag}"
        if columns >= 80:
            assert max(map(len, page.splitlines())) <= columns, f"avcurate {name} at {columns}"
        if name in ("threshold", "decontaminate"):  # a type in brackets, not taken for markup
            assert "<list[str]>" in page, f"avcurate {name} at {columns}"


def test_plain_help_keeps_list_items_and_examples_on_their_own_lines():
    """In the plain layout a paragraph is rewrapped, but one with list items or indented
    example lines keeps its breaks (as `reflow` keeps them for rich)."""
    import typer
    from typer.testing import CliRunner

    from avcurate.cli.help_layout import WidthAwareHelp

    tiny = typer.Typer(rich_markup_mode="rich")

    @tiny.command(cls=WidthAwareHelp)
    def go(very_long_option_name_for_the_table: int = 1) -> None:
        """Do it.

        Two ways:
        - the first way
        - the second way

        A plain paragraph whose words are rewrapped to the width of the terminal it
        is printed on."""

    @tiny.command(cls=WidthAwareHelp)
    def other() -> None:
        """Nothing (a second command keeps `go` a subcommand)."""

    page = CliRunner().invoke(tiny, ["go", "--help"], env={"COLUMNS": "40"}).output
    assert "Options:" in page and "╭" not in page  # plain: the table would cut at 40
    assert "\n  Two ways:\n  - the first way\n  - the second way\n" in page
    assert "the terminal it is" in page  # the source's break after "it" is gone


def test_help_shows_each_default_as_it_would_be_typed():
    """A generated option's default reads `[default: 16]`, a flag's as the flag itself
    (click printed every one in parentheses, its mark for a default computed at run time)."""
    from typer.testing import CliRunner

    from avcurate.cli import app

    page = " ".join(CliRunner().invoke(app, ["score", "--help"], env={"COLUMNS": "2000"})
                    .output.split())
    for shown in ("[default: 16]", "[default: openai]", "[default: --cache]",
                  "[default: 0.25,0.25,0.25,0.25]", "[default: none]"):
        assert shown in page, shown
    assert "[default: (" not in page
    balance = CliRunner().invoke(app, ["balance", "--help"], env={"COLUMNS": "2000"}).output
    assert "[default: --no-cascade]" in " ".join(balance.split())


@pytest.mark.parametrize("under", [False, True])
def test_an_out_folder_that_is_a_file_or_lies_under_one_is_one_line(tmp_path, media, under):
    """run, ingest, export and demo name a folder with --out: a file there (or on the way
    there) stops each with one line before anything is written, the file untouched."""
    ann = tmp_path / "a.jsonl"
    ann.write_text(json.dumps({"id": "a", "video": "good.mp4", "question": "Colour?",
                               "options": ["red", "blue"], "answer": 0}) + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[[sources]]\nname = "jsonl"\nannotations = "{ann}"\n'
                      f'media_root = "{media["root"]}"\n')
    run_dir = tmp_path / "made"
    sh("run", str(recipe), "--out", str(run_dir), "-q")
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    out = blocker / "run" if under else blocker
    said = f"{blocker} is a file, not a folder" if under else f"{blocker} is a file"
    for args in (["run", str(recipe), "--out", str(out)],
                 ["ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                  str(media["root"]), "--out", str(out)],
                 ["export", str(run_dir), "--out", str(out)],
                 ["demo", "--out", str(out), "-q"]):
        done = sh(*args, check=False)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        [line] = done.stderr.strip().splitlines()
        assert said in line, (args, line)
    assert blocker.read_text() == "mine"


def test_outputs_inside_a_runs_stage_folder_or_cache_are_refused(ingested, media):
    """`reset` and `--redo` remove a stage's folder whole: a report, query result or run
    written there went with it (a `part-*.parquet` would even be read as a shard)."""
    run_dir = ingested / "run"
    stage, cache = run_dir / "01-validate", run_dir / "cache"
    before = sorted(p.name for p in stage.iterdir())
    for args, path in (
            (["query", str(run_dir), "SELECT 1", "--out", "{p}"], stage / "part-09999.parquet"),
            (["stats", str(run_dir), "--html", "{p}"], stage / "report.html"),
            (["spotcheck", str(run_dir), "--out", "{p}"], cache / "sheet.html"),
            (["ingest", "--source", "jsonl", "--annotations", "a", "--media-root",
              str(media["root"]), "--out", "{p}"], stage / "rejects" / "other-run")):
        done = sh(*[a.format(p=path) for a in args], check=False)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"is inside {path.relative_to(run_dir).parts[0]}/, which the run" in done.stderr
        assert not path.exists()
    assert sorted(p.name for p in stage.iterdir()) == before
    beside = ingested / "report.html"  # next to the run, as before
    assert sh("stats", str(run_dir), "--html", str(beside)).returncode == 0 and beside.is_file()


def test_a_recipe_default_that_fails_names_its_unset_variable(tmp_path, media):
    """`${NAME:-default}` with NAME not exported (or misspelt) ran on the default; the line
    that stops the run names the variable, and only the one whose default it shows."""
    (tmp_path / "a.jsonl").write_text(json.dumps(
        {"id": "x", "video": "good.mp4", "question": "Q?", "options": ["a", "b"],
         "answer": "A"}) + "\n")
    def recipe(annotations: str, stages: str = "") -> str:
        (tmp_path / "r.toml").write_text(
            f'[[sources]]\nname = "jsonl"\nannotations = "{annotations}"\n'
            f'media_root = "${{T_ROOT:-{media["good"].parent}}}"\n{stages}')
        return str(tmp_path / "r.toml")

    env = {k: v for k, v in os.environ.items() if not k.startswith("T_")}
    def stops(path: str, *, extra: dict[str, str] | None = None, lines: int = 1) -> str:
        done = subprocess.run(avcurate_cmd("run", path, "--out", str(tmp_path / "run"), "-q"),
                              capture_output=True, text=True, env=env | (extra or {}))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == lines, done.stderr
        return done.stderr
    line = stops(recipe("${T_ANN:-../data/qa.jsonl}"))  # relative, resolved in the message
    assert f"{tmp_path.parent / 'data' / 'qa.jsonl'} does not exist" in line
    assert "$T_ANN is not set" in line and "T_ROOT" not in line
    line = stops(recipe("${T_ANN:-data/*/qa.jsonl}"))  # a glob matching nothing: at load
    assert "no annotation file matches" in line and "$T_ANN is not set" in line
    line = stops(recipe("${T_ANN:-data/qa.jsonl}"), extra={"T_ANN": str(tmp_path / "b.jsonl")})
    assert "b.jsonl does not exist" in line and "not set" not in line  # it was set
    assert not (tmp_path / "run").exists()  # each stopped before the run folder was made
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    warned, line = stops(recipe(str(tmp_path / "a.jsonl"),
                                f'[[stages]]\nname = "score"\nmodel = "m"\n'
                                f'base_url = "${{T_URL:-http://127.0.0.1:{port}/v1}}"\n'),
                         lines=2).splitlines()
    assert warned.startswith("warning: stage 'score'") and "The run starts anyway" in warned
    for said in (warned, line):
        assert f"http://127.0.0.1:{port}/v1" in said and "$T_URL is not set" in said
        assert "T_ROOT" not in said


def test_a_run_the_recipe_does_not_match_is_refused_before_any_server_is_asked(tmp_path,
                                                                                media):
    """A recipe whose validate differs from the run's, with a score stage after it whose
    server is down: one line, the refusal. The warning about the server of a stage that
    would not run came first, as if the run were about to start."""
    (tmp_path / "a.jsonl").write_text(json.dumps(
        {"id": "x", "video": "good.mp4", "question": "Q?", "options": ["a", "b"],
         "answer": "A"}) + "\n")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = (f'[[sources]]\nname = "jsonl"\nannotations = "{tmp_path / "a.jsonl"}"\n'
            f'media_root = "{media["good"].parent}"\n[[stages]]\nname = "validate"\n')
    score = f'[[stages]]\nname = "score"\nmodel = "m"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
    for name, text in (("head", head), ("other", head + "min_duration_s = 3.0\n" + score)):
        (tmp_path / f"{name}.toml").write_text(text)
    run_dir = tmp_path / "run"
    made = subprocess.run(avcurate_cmd("run", str(tmp_path / "head.toml"), "--out", str(run_dir),
                                       "-q"), capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for extra in ([], ["--dry-run"]):
        refused = subprocess.run(avcurate_cmd("run", str(tmp_path / "other.toml"), "--out",
                                              str(run_dir), "-q", *extra),
                                 capture_output=True, text=True)
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert "01-validate was made with other options" in line and str(port) not in line


def test_train_without_torch_installed_is_one_line(tmp_path):
    """`pip install avcurate` without the train extra, then `avcurate train`: a line naming
    what to install, not a ModuleNotFoundError traceback."""
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['avcurate', 'train', "
            f"'--data', {str(tmp_path)!r}, '--model', {str(tmp_path)!r}]; "
            "from avcurate.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: avcurate train needs torch, which is not installed")
    assert "pip install 'avcurate[train]'" in result.stderr
