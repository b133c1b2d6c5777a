"""Export to the Hub layout, the dataset card, push errors, and both recipes end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, avcurate_cmd
from loopback import openai_server
from test_filters import row, scored_recipe

from avcurate.hub.export import export_run
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.runner import Runner

datasets = pytest.importorskip("datasets")
SECRET = "hf_SECRET_token_0123456789"


def _load(path: Path, config: str | None = None):
    return datasets.load_dataset(str(path), config, cache_dir=str(path.parent / "hf-cache"))


def test_export_layout_splits_and_datasets_load(balanced_run, tmp_path, media):
    out = tmp_path / "export"
    result = export_run(balanced_run, out, val_fraction=0.1, split_by="id")
    assert result.configs == {"default": {"train": 72, "validation": 8},
                              "audio_visual": {"train": 54, "validation": 6}}
    assert sorted(p.name for p in (out / "data").glob("*.parquet")) == [
        "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    ds = _load(out)
    assert {k: len(v) for k, v in ds.items()} == {"train": 72, "validation": 8}
    val = ds["validation"]
    assert sorted(val["category"]) == ["music"] * 2 + ["speech"] * 6  # stratified: 10% of each
    sub = _load(out, "audio_visual")
    assert {k: len(v) for k, v in sub.items()} == {"train": 54, "validation": 6}
    assert set(sub["validation"]["id"]) <= set(val["id"])  # one split assignment for all configs
    assert set(ds["train"].column_names) == {"id", "source", "question", "options", "answer",
                                             "video", "audio", "category", "video_dependency",
                                             "audio_dependency", "question_logic",
                                             "answer_accuracy", "composite_score"}
    video = ds["train"][0]["video"]  # relative to the data file's folder
    assert video == "../../clips/good.mp4" or video == "../../clips/good2.mp4"
    assert (out / "data" / video).resolve() == (tmp_path / "clips" / Path(video).name)
    assert (out / "data/audio_visual" / sub["train"][0]["video"]).resolve().is_file()
    again = export_run(balanced_run, tmp_path / "export2", val_fraction=0.1, split_by="id")
    assert again.configs == result.configs
    assert pq.read_table(tmp_path / "export2/data/validation-00000-of-00001.parquet").column(
        "id").to_pylist() == val["id"]  # deterministic


def test_validation_holds_whole_clips_so_none_is_in_both_splits(tmp_path):
    """Datasets ask several questions about one clip (LLaVA-Video about seven). A split by
    row put most validation clips in training too, so validation rewarded what training had
    shown. By default every question of a clip is on one side, the categories are each
    represented, and the split stays near --val-fraction; `split_by="id"` splits rows."""
    rows = [row(f"{cat}{c:02d}-{q}", cat, video=f"clips/{cat}{c:02d}.mp4")
            for cat, clips in (("speech", 40), ("music", 15)) for c in range(clips)
            for q in range(4)]
    Runner(scored_recipe(tmp_path, rows, [StageSpec("threshold")]), tmp_path / "run",
           show_progress=False).run()

    def sides(split_by):
        export_run(tmp_path / "run", tmp_path / split_by, val_fraction=0.2, split_by=split_by)
        return {split: pq.read_table(sorted((tmp_path / split_by / "data").glob(
            f"{split}-*.parquet"))[0]).to_pylist() for split in ("train", "validation")}

    by_clip = sides("video")
    assert "every question about a clip is in the same split" in (
        tmp_path / "video/README.md").read_text()
    clips = {k: {r["video"] for r in v} for k, v in by_clip.items()}
    assert not clips["train"] & clips["validation"]
    val = by_clip["validation"]
    assert sorted({r["category"] for r in val}) == ["music", "speech"]
    assert 32 - 4 < sum(r["category"] == "speech" for r in val) <= 32  # of 160 rows, 20%
    assert 12 - 4 < sum(r["category"] == "music" for r in val) <= 12  # of 60
    by_row = sides("id")
    assert len(by_row["validation"]) == 32 + 12
    leaked = {r["video"] for r in by_row["train"]} & {r["video"] for r in by_row["validation"]}
    assert len(leaked) > 10  # what the split by row did
    # the same rows in a run elsewhere (their clips' paths differ): the same split
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    Runner(scored_recipe(moved, rows, [StageSpec("threshold")]), moved / "run",
           show_progress=False).run()
    export_run(moved / "run", moved / "export", val_fraction=0.2)
    again = pq.read_table(sorted((moved / "export/data").glob("validation-*.parquet"))[0])
    assert sorted(again.column("id").to_pylist()) == sorted(r["id"] for r in val)
    # a share too small for any clip's four questions: no validation split, and both the
    # command and the card say so and why (the card once promised "about 2%")
    done = subprocess.run(avcurate_cmd("export", str(moved / "run"), "--out",
                                       str(tmp_path / "none"), "--val-fraction", "0.02"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "none/data").glob("validation-*"))
    why = "no category's 2% share could hold a whole clip's questions"
    assert f"note: no validation split ({why}): every row is in train" in " ".join(
        done.stdout.split())
    card = (tmp_path / "none/README.md").read_text()
    assert f"There is no validation split ({why}): every row is in train." in card
    assert "Validation holds" not in card


def test_card(balanced_run, tmp_path):
    out = tmp_path / "export"
    export_run(balanced_run, out, license="cc-by-4.0")
    text = (out / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == "cc-by-4.0" and header["size_categories"] == ["n<1K"]
    assert "audio-visual" in header["tags"] and header["task_categories"]
    names = [c["config_name"] for c in header["configs"]]
    assert names == ["default", "audio_visual"]
    assert header["configs"][1]["data_files"][0] == {"split": "train",
                                                     "path": "data/audio_visual/train-*"}
    for part in ("Stage funnel", "02-balance", "over_cap", "Categories before and after",
                 "| speech | 70 | 60 |", "Score summary", "composite_score", "## Columns",
                 "## Recipe"):
        assert part in text, part
    # numbers right-aligned where a column holds only numbers (Markdown's `---:`)
    assert "| category | before | after |\n|---|---:|---:|" in text
    assert "| stage | in | kept | rejected | top reject reasons |\n|---|---:|---:|---:|---|" in text
    assert "| column | meaning |\n|---|---|" in text


def test_sharding_copy_media_and_all_columns(balanced_run, tmp_path, media):
    out = tmp_path / "export"
    result = export_run(balanced_run, out, max_shard_bytes=2000, copy_media="copy",
                        all_columns=True, val_fraction=0.0)
    card = (out / "README.md").read_text()
    assert "There is no validation split (`--val-fraction 0`): every row is in train." in card
    assert not result.notes  # not asked for: nothing to note
    shards = sorted((out / "data").glob("train-*.parquet"))
    assert len(shards) > 1 and all(f"-of-{len(shards):05d}" in p.name for p in shards)
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in shards) == 80
    assert result.media_copied == 2 and len(list((out / "videos").iterdir())) == 2
    table = pq.read_table(shards[0])
    assert "meta" in table.column_names and "subset_audio_visual" in table.column_names
    assert table.column("video")[0].as_py().startswith("../videos/")
    assert (out / "data" / table.column("video")[0].as_py()).read_bytes() in (
        media["good"].read_bytes(), media["good2"].read_bytes())
    linked = export_run(balanced_run, tmp_path / "linked", copy_media="hardlink")
    assert linked.media_copied == 2
    [first] = [p for p in (tmp_path / "linked/videos").iterdir() if p.name.endswith("good.mp4")]
    assert first.stat().st_ino == (tmp_path / "clips/good.mp4").stat().st_ino


def _on_a_terminal(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd` with a pseudo-terminal (100 columns) as its stdin, stdout and stderr; its
    exit status and everything it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower,
                            env=os.environ | env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the command and its children closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_an_export_shows_each_configs_rows_on_a_terminal_only(balanced_run, tmp_path):
    """A config's rows are read, then written in id order, under a bar (10M rows with
    traces take minutes, which passed in silence); in a pipe or a log there is none."""
    status, shown = _on_a_terminal(avcurate_cmd("export", str(balanced_run), "--out",
                                                str(tmp_path / "tty")),
                                   {"TQDM_MININTERVAL": "0"})  # every step drawn: it is quick
    assert status == 0, shown
    # 80 final rows read and written; the subset's 60 of them written
    assert "exporting default: 100%" in shown and "160/160" in shown, shown
    assert "exporting audio_visual: 100%" in shown and "140/140" in shown, shown
    piped = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out",
                                        str(tmp_path / "pipe")), capture_output=True, text=True)
    assert piped.returncode == 0 and "exporting" not in piped.stdout + piped.stderr


def test_a_full_disk_stops_the_export_with_one_line_and_frees_what_it_staged(
        balanced_run, small_disk, media):
    """A disk that fills up while the data files or the media copies are written: one line
    naming the file it was writing, no staged or half-copied file left to take the room,
    and the same command exports everything once there is room."""
    out = small_disk.path / "export"
    cmd = avcurate_cmd("export", str(balanced_run), "--out", str(out), "--copy-media",
                       "--split-by", "id")

    def stopped_at(folder: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"error: No space left on device: {out / folder}/"), line
        assert line.endswith("fix that and run the same command again (what finished is "
                             "kept, and nothing was left half-written)")
        assert not (out / ".avcurate-staging").exists()
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    stopped_at("videos")  # 16 KiB: the first clip does not fit
    assert not (out / "data").exists()
    clips = sum(media[k].stat().st_size for k in ("good", "good2"))
    small_disk.resize(f"{(clips + 8192) // 4096 * 4096 + 8192}")  # the clips, not the data
    stopped_at(".avcurate-staging/.sort")  # the rows on their way into id order, then data/
    assert sorted(p.read_bytes() for p in (out / "videos").iterdir()) == sorted(
        media[k].read_bytes() for k in ("good", "good2"))  # whole copies, kept
    small_disk.resize("4m")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {k: len(v) for k, v in _load(out).items()} == {"train": 76, "validation": 4}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_errors_are_one_line_and_keep_the_export(balanced_run, tmp_path):
    out = tmp_path / "export"
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # no token saved by `hf auth login` either
    cmd = avcurate_cmd("export", str(balanced_run), "--out", str(out), "--push", "--repo-id",
                       "me/demo", "--copy-media")
    no_token = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert no_token.returncode == 2 and "set HF_TOKEN or run `hf auth login`" in no_token.stderr
    assert len(no_token.stderr.strip().splitlines()) == 1
    assert not out.exists()  # stopped before writing anything
    env |= {"HF_TOKEN": SECRET, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
            "HF_HUB_DISABLE_TELEMETRY": "1"}
    offline = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert offline.returncode == 2 and "cannot reach the Hub" in offline.stderr
    assert f"at {env['HF_ENDPOINT']} (ConnectError: " in offline.stderr  # and what happened
    assert "Connection refused" in offline.stderr
    assert offline.stderr.strip().endswith(f"the export in {out} is kept, and the same command "
                                           "pushes it once the Hub answers")
    assert (out / "README.md").is_file()
    assert len(offline.stderr.strip().splitlines()) == 1
    assert SECRET not in offline.stdout + offline.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_push_to_a_loopback_hub(balanced_run, tmp_path):
    from hub_server import HubServer

    out = tmp_path / "export"
    with HubServer() as hub:
        env = os.environ | {"HF_TOKEN": SECRET, "HF_ENDPOINT": hub.url,
                            "HF_HUB_DISABLE_TELEMETRY": "1"}
        result = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out", str(out),
                                             "--push", "--repo-id", "me/av-demo", "--private",
                                             "--copy-media"),
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
    assert hub.repos["me/av-demo"]["type"] == "dataset"
    assert hub.repos["me/av-demo"].get("visibility") == "private" or hub.repos["me/av-demo"].get(
        "private") is True
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and not p.name.startswith(".avcurate")}
    assert hub.files == local  # every file, byte for byte (not avcurate's own marker)
    assert all(auth == f"Bearer {SECRET}" for _, _, auth in hub.log)
    assert f"to {hub.url}/datasets/me/av-demo" in result.stdout.replace("\n", "")
    assert "one commit" in result.stdout and SECRET not in result.stdout + result.stderr
    assert SECRET.encode() not in b"".join(local.values())


def _demo(tmp_path: Path) -> Path:
    """The demo's clips and annotations (its data only; the recipes under test run them)."""
    from avcurate.demo import make_demo

    make_demo(tmp_path / "demo")
    return tmp_path / "demo"


def test_omnivideo_r1_recipe_end_to_end(tmp_path):
    demo = _demo(tmp_path)
    with openai_server() as server:
        env = os.environ | {
            "LLAVA_VIDEO_ANNOTATIONS": str(demo / "annotations/llava_video.json"),
            "LLAVA_VIDEO_ROOT": str(demo / "media/llava"),
            "VIDEO_VISTA_ANNOTATIONS": str(demo / "annotations/video_vista.json"),
            "VIDEO_VISTA_ROOT": str(demo / "media/llava"),
            "JUDGE_BACKEND": "openai", "JUDGE_MODEL": "judge",
            "JUDGE_BASE_URL": server.url + "/v1", "CLASSIFIER_BASE_URL": server.url + "/v1",
            "EXPORT_DIR": str(tmp_path / "export"), "OPENAI_API_KEY": "sk-local"}
        result = subprocess.run(avcurate_cmd("run", str(REPO / "recipes/omnivideo_r1.toml"),
                                             "--out", str(tmp_path / "run"), "-q"),
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == [
        "ingest", "validate", "score", "classify", "threshold", "balance", "subset"]
    assert all(s["rows_in"] == s["kept"] + s["rejected"] for s in manifest["stages"])
    final = manifest["stages"][-1]["kept"]
    assert final > 10
    ds = _load(tmp_path / "export")
    assert sum(len(v) for v in ds.values()) == final
    av = _load(tmp_path / "export", "audio_visual")
    assert sum(len(v) for v in av.values()) == manifest["stages"][-1]["subsets"]["audio_visual"]["rows"]
    assert "exported to" in result.stdout


def test_avrt_recipe_end_to_end(tmp_path):
    demo = _demo(tmp_path)
    with openai_server() as server:
        url = server.url + "/v1"
        env = os.environ | {
            "AVQA_ANNOTATIONS": str(demo / "annotations/avqa.json"),
            "AVQA_ROOT": str(demo / "media/avqa"), "VISUAL_BASE_URL": url,
            "AUDIO_BASE_URL": url, "MERGER_BASE_URL": url, "EXPORT_DIR": str(tmp_path / "export")}
        result = subprocess.run(avcurate_cmd("run", str(REPO / "recipes/avrt.toml"), "--out",
                                             str(tmp_path / "run"), "-q"),
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == [
        "ingest", "validate", "visual_teacher", "audio_teacher", "teacher_filter", "merge"]
    assert all(s["rows_in"] == s["kept"] + s["rejected"] for s in manifest["stages"])
    ds = _load(tmp_path / "export")
    rows = [r for split in ds.values() for r in split]
    assert len(rows) == manifest["stages"][-1]["kept"] > 5
    for r in rows:
        assert r["trace"].startswith("<think>") and r["trace"].endswith(f"<answer>{r['answer']}</answer>")


# -- export never destroys or mixes what it does not own -------------------------------------------

def test_export_refuses_a_foreign_folder_and_never_deletes_user_files(balanced_run, tmp_path,
                                                                       media):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "important.json").write_text("{}")
    from avcurate.hub.export import ExportError

    with pytest.raises(ExportError, match=r"is not empty \(data\) and is not an avcurate export"):
        export_run(balanced_run, proj)
    clips = sorted(p.name for p in media["root"].rglob("*.mp4"))
    with pytest.raises(ExportError, match="not an avcurate export"):
        export_run(balanced_run, media["root"])  # the media root itself
    assert sorted(p.name for p in media["root"].rglob("*.mp4")) == clips
    stage = sorted(p for p in Path(balanced_run).iterdir() if p.name[:2].isdigit())[-1]
    files = sorted(p.name for p in stage.iterdir())
    with pytest.raises(ExportError, match="is inside the run folder"):
        export_run(balanced_run, stage, overwrite=True)  # a stage's folder: mixed, then reset
    assert sorted(p.name for p in stage.iterdir()) == files
    export_run(balanced_run, proj, overwrite=True)
    assert (proj / "data" / "important.json").read_text() == "{}"
    export_run(balanced_run, proj)  # now it is an avcurate export: no --overwrite needed
    assert (proj / "data" / "important.json").read_text() == "{}"
    cli = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out", str(tmp_path / "x"),
                                      "--push", "--repo-id", "me/x"), capture_output=True,
                         text=True)
    assert cli.returncode == 2 and "--push needs --copy-media" in cli.stderr
    cli = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out", str(tmp_path / "x"),
                                      "--hardlink"), capture_output=True, text=True)
    assert cli.returncode == 2 and "--hardlink goes with --copy-media" in cli.stderr
    assert not (tmp_path / "x").exists()


SLOW_EXPORT = """
import sys, time
from pathlib import Path
import avcurate.hub.export as export
run, out, go = sys.argv[1:]
place = export.place_media

def waits_for_go(*args):  # the first copy waits until the test says go
    while not Path(go).exists():
        time.sleep(0.02)
    return place(*args)

export.place_media = waits_for_go
export.export_run(run, out, copy_media="copy")
"""


def test_a_second_export_into_the_same_folder_is_refused_while_the_first_writes(
        balanced_run, tmp_path):
    """Two exports into one folder used to clear each other's staging files and both fail
    with a missing-file error; now the second stops at once with one line naming the first,
    and the first finishes a whole export."""
    out, go = tmp_path / "export", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(balanced_run), str(out),
                              str(go)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / ".avcurate-staging").is_dir():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.02)
    second = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out", str(out)),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    [line] = second.stderr.strip().splitlines()
    assert f"export folder {out} is in use by PID {first.pid}" in " ".join(line.split())
    assert first.poll() is None and not (out / "data").exists()  # nothing touched
    go.touch()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert _load(out)["train"].num_rows > 0
    again = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out", str(out),
                                        "--copy-media"), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr  # the lock went with its holder


def test_a_truncated_copy_is_replaced_and_stale_files_removed(balanced_run, tmp_path):
    out = tmp_path / "export"
    first = export_run(balanced_run, out, copy_media="copy")
    videos = sorted((out / "videos").iterdir())
    assert first.media_copied == len(videos) > 0
    victim = videos[0]
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[: size // 10])  # what a killed copy used to leave
    (out / "videos" / f".{victim.name}.tmp").write_bytes(b"half")
    again = export_run(balanced_run, out, copy_media="copy")
    assert again.media_copied == 1 and victim.stat().st_size == size
    plain = export_run(balanced_run, out)  # no media this time: the old copies go
    assert plain.media_copied == 0 and not any((out / "videos").glob("*.mp4"))
    assert json.loads((out / ".avcurate-export.json").read_text())["files"] == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
        and not p.name.startswith(".avcurate"))
    from avcurate.hub.push import PushError, push

    with pytest.raises(PushError, match="point outside"):
        push(out, "me/x")


def test_an_export_of_an_unchanged_run_with_the_same_options_writes_nothing(balanced_run,
                                                                          tmp_path):
    """The same export again (a re-queued job, a recipe's [export] after a resumed run)
    rewrote every row; now, while the run, the options and the export's files are as they
    were, nothing is written and the last result is given back. Any of them changed, and
    the export is made again."""
    import os

    from avcurate.pipeline.recipe import Recipe

    def dates(folder: Path) -> dict[str, int]:
        return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
                for p in folder.rglob("*") if p.is_file() and ".avcurate" not in p.name}

    out = tmp_path / "export"
    first = export_run(balanced_run, out, copy_media="copy")
    made = dates(out)
    again = export_run(balanced_run, out, copy_media="copy")
    assert dates(out) == made and again.media_copied == 0
    assert (again.configs, again.columns, again.fingerprint, again.infos) == (
        first.configs, first.columns, first.fingerprint, first.infos)
    assert any("nothing was written" in note for note in again.notes)
    # a resume that did nothing (the manifest's time of the last command changes) is the
    # same run
    recipe = json.loads((balanced_run / "manifest.json").read_text())["recipe"]
    Runner(Recipe.from_dict(recipe), balanced_run, show_progress=False).run()
    export_run(balanced_run, out, copy_media="copy")
    assert dates(out) == made

    def remade(**options) -> bool:
        before = dates(out)
        result = export_run(balanced_run, out, **({"copy_media": "copy"} | options))
        return dates(out) != before and not any("nothing was written" in n for n in result.notes)

    data = sorted((out / "data").glob("train-*.parquet"))[0]
    data.unlink()  # a file of the export removed by hand
    assert remade() and data.is_file()
    assert remade(val_fraction=0.2)  # another option
    assert remade() and not remade()  # back to the first options, and then the same again
    source = tmp_path / "clips" / "good.mp4"
    source.write_bytes(source.read_bytes() + b"\0")  # a source clip changed
    assert remade()
    shard = sorted((balanced_run / "03-subset").glob("*.parquet"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert remade()  # the run's final shards changed


def test_an_export_stopped_half_way_is_finished_by_the_same_command(balanced_run, tmp_path,
                                                                    monkeypatch):
    """Ctrl-C during a first export's media copy: the folder already holds files, and the
    same command again must finish it, not call it a folder of the user's."""
    import avcurate.hub.export as export

    out, place, calls = tmp_path / "export", export.place_media, []

    def stopped_on_the_second_copy(source, target, how):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return place(source, target, how)

    monkeypatch.setattr(export, "place_media", stopped_on_the_second_copy)
    with pytest.raises(KeyboardInterrupt):
        export_run(balanced_run, out, copy_media="copy")
    assert (out / "videos").is_dir()
    monkeypatch.setattr(export, "place_media", place)
    again = export_run(balanced_run, out, copy_media="copy")  # no --overwrite needed
    assert again.media_copied == len(list((out / "videos").iterdir())) - 1  # one was there
    owned = json.loads((out / ".avcurate-export.json").read_text())["files"]
    assert owned == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                           if p.is_file() and not p.name.startswith(".avcurate"))
    assert _load(out)["train"].num_rows == again.configs["default"]["train"]


def test_card_has_no_local_paths_or_endpoints(tmp_path, media):
    """No endpoint and no local path in the card; a decontamination benchmark's paths, held
    in one NAME=ANNOTATIONS:MEDIA_ROOT text, went into it whole."""
    rows = [row(f"r{i}", "speech") for i in range(6)]
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/test.jsonl").write_text(json.dumps(
        {"id": "b1", "video": "b1.mp4", "question": "Which planet is largest?"}) + "\n")
    benchmark = f"mine@jsonl={tmp_path / 'bench/test.jsonl'}:{tmp_path / 'bench'}"
    with openai_server() as server:
        stages = [StageSpec("decontaminate", {"benchmarks": [benchmark],
                                              "match_frames": False}),
                  StageSpec("classify", {"model": "qwen", "base_url": server.url + "/v1"})]
        Runner(scored_recipe(tmp_path, rows, stages), tmp_path / "run", show_progress=False).run()
        url = server.url
    export_run(tmp_path / "run", tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    assert url not in card and "127.0.0.1" not in card and str(tmp_path) not in card
    assert "qwen" in card  # model names stay
    assert "Media files are not included" in card
    assert 'benchmarks = ["mine@jsonl=test.jsonl:bench"]' in card  # the filters' table
    assert '"mine@jsonl=bench/test.jsonl:bench",' in card  # the recipe: relative to the run's
    # what decontamination compared and caught; the picture signal was switched off
    assert "| mine | 1 | off | 0 of 6 | 0 | off | 0 |" in card


def test_export_refuses_a_run_whose_last_stage_stopped(tmp_path):
    """classify stopped by its server (it does not serve the model): the rows before it are
    not the run's final rows, so export says which stage is unfinished, in one line, and
    writes nothing."""
    from avcurate.pipeline.runner import RunError

    rows = [row(f"r{i}", "speech") for i in range(6)]
    with openai_server(models={"served"}) as server:
        stages = [StageSpec("dedup"), StageSpec("classify", {
            "model": "not-served", "base_url": server.url + "/v1"})]
        with pytest.raises(RunError, match="02-classify stopped"):
            Runner(scored_recipe(tmp_path, rows, stages), tmp_path / "run",
                   show_progress=False).run()
    done = subprocess.run(avcurate_cmd("export", str(tmp_path / "run"), "--out",
                                       str(tmp_path / "export")), capture_output=True, text=True)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "stage 02-classify is not finished" in line and "--from 02-classify" in line
    assert not (tmp_path / "export").exists()


def test_clips_named_at_the_file_name_limit_are_copied_under_shorter_names(tmp_path, media):
    """Names of 250 bytes fit the filesystem; their copies' names (a prefix added, and a
    temporary name's 5 bytes more) must too, cut without splitting a character."""
    (tmp_path / "clips").mkdir()
    names = ["x" * 246 + ".mp4", "é" * 123 + ".mp4"]  # 250 bytes each
    for name, clip in zip(names, ("good", "good2"), strict=True):
        (tmp_path / "clips" / name).write_bytes(media[clip].read_bytes())
    rows = [row(f"a{i:02d}", "speech", vd=0.9, ad=0.9, video=f"clips/{names[i % 2]}")
            for i in range(10)]
    Runner(scored_recipe(tmp_path, rows, [StageSpec("threshold")]), tmp_path / "run",
           show_progress=False).run()
    out = tmp_path / "export"
    done = subprocess.run(avcurate_cmd("export", str(tmp_path / "run"), "--out", str(out),
                                       "--copy-media", "--val-fraction", "0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    copies = sorted((out / "videos").iterdir())
    assert len(copies) == 2 and all(len(p.name.encode()) <= 240 for p in copies)
    assert all(p.suffix == ".mp4" for p in copies)
    table = pq.read_table(sorted((out / "data").glob("train-*.parquet"))[0])
    for path, name in zip(table.column("video").to_pylist(), names * 5, strict=True):
        assert (out / "data" / path).read_bytes() == (tmp_path / "clips" / name).read_bytes()


def test_media_paths_are_made_relative_like_os_path_relpath(tmp_path, monkeypatch):
    """The export makes media paths relative per distinct folder, with pyarrow compute
    (a relpath call per row took 12 of a 1M-row export's 14 s): every kind of path must
    come out as `os.path.relpath` gives it, nulls and empty strings as they were."""
    import pyarrow as pa

    from avcurate.hub.export import relative_paths

    monkeypatch.chdir(tmp_path)
    start = tmp_path / "export" / "data" / "audio_visual"
    paths = [str(tmp_path / "clips/a.mp4"), str(tmp_path / "clips/b c.mp4"), None, "",
             str(tmp_path / "export/videos/ä é.mp4"), str(start / "here.mp4"),
             "rel/x.mp4", "bare.wav", "/top.mp4", str(tmp_path / "clips/../other/./y.mp4"),
             str(tmp_path / "clips/a.mp4"), str(tmp_path / "clips//z.mp4")]
    got = relative_paths(pa.array(paths, pa.string()), start).to_pylist()
    want = [p if not p else os.path.relpath(p, start) for p in paths]
    assert got == want
    assert got[0] == "../../../clips/a.mp4" and got[5] == "here.mp4"


@pytest.mark.parametrize("typed", [False, True])
def test_push_counts_the_media_paths_that_leave_the_export(balanced_run, tmp_path, typed):
    """push refuses an export whose media paths point outside it. The check resolves each
    distinct folder once (per row, 1M rows took 35 s); it must count what resolving every
    row's path counts, for plain and typed media columns, copied or not."""
    import pyarrow as pa

    from avcurate.hub.push import media_outside

    def per_row(folder: Path) -> int:
        count = 0
        for path in folder.glob("data/**/*.parquet"):
            for v in pq.read_table(path, columns=["video", "audio"]).to_pylist():
                for p in v.values():
                    p = p.get("path") if isinstance(p, dict) else p
                    count += bool(p) and not (path.parent / p).resolve().is_relative_to(
                        folder.resolve())
        return count

    plain = tmp_path / "plain"
    export_run(balanced_run, plain, media_features=typed)
    outside = per_row(plain)
    assert outside >= 80 and media_outside(plain) == outside
    copied = tmp_path / "copied"
    export_run(balanced_run, copied, copy_media="copy", media_features=typed)
    assert media_outside(copied) == per_row(copied) == 0
    data = copied / "data/train-00000-of-00001.parquet"  # one row sent out, one emptied
    table = pq.read_table(data)
    video = table.column("video").to_pylist()
    away = "../../plain/data/x.mp4"
    video[0] = {"bytes": None, "path": away} if typed else away
    video[1] = {"bytes": None, "path": ""} if typed else ""
    table = table.set_column(table.schema.get_field_index("video"), "video",
                             pa.array(video, table.schema.field("video").type))
    pq.write_table(table, data)
    assert media_outside(copied) == per_row(copied) == 1


def test_rows_spilled_in_many_buckets_come_out_in_id_order_in_equal_shards(tmp_path,
                                                                           monkeypatch):
    """An export sorts rows by id through buckets spilled to disk, as it does for a run of
    millions. With buckets of a few rows, every config comes out as with one bucket: the
    same rows in id order, the same validation ids. A shard count that does not divide the
    rows evenly gives fewer shards, never an empty one (which `datasets` cannot read)."""
    import random

    import pyarrow as pa

    import avcurate.hub.splits as splits
    from avcurate.core.store import RunStore

    rng = random.Random(7)
    names = [f"r{i:03d}" for i in range(160)]
    rng.shuffle(names)  # the run's shards are not in id order
    rows = [row(n, rng.choice("AB"), vd=0.9, ad=rng.choice([0.2, 0.9]),
                question="q " + "x" * rng.randrange(400)) for n in names]
    recipe = scored_recipe(tmp_path, rows, [StageSpec("threshold"), StageSpec("subset")],
                           shard_size=16)
    Runner(recipe, tmp_path / "run", show_progress=False).run()
    whole = export_run(tmp_path / "run", tmp_path / "whole", val_fraction=0.1)
    train, nbytes = whole.configs["default"]["train"], whole.infos[0]["splits"][0]["num_bytes"]
    # the first shard count whose equal shards leave the last one without rows, as before
    count = next(n for n in range(2, train) if -(-train // -(-train // n)) < n)
    monkeypatch.setattr(splits, "SPILL_BYTES", 3000)
    out = tmp_path / "spilled"
    result = export_run(tmp_path / "run", out, val_fraction=0.1, max_shard_bytes=nbytes // count + 1)
    assert result.configs == whole.configs and not (out / ".avcurate-staging").exists()

    per = -(-train // count)
    shards = sorted((out / "data").glob("train-*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == \
        [per] * (len(shards) - 1) + [train - per * (len(shards) - 1)]
    assert len(shards) < count and all(f"-of-{len(shards):05d}" in p.name for p in shards)
    for folder in ("data", "data/audio_visual"):
        for split in ("train", "validation"):
            got = pa.concat_tables(pq.read_table(p) for p in
                                   sorted((out / folder).glob(f"{split}-*.parquet")))
            [one] = (tmp_path / "whole" / folder).glob(f"{split}-*.parquet")
            assert got.equals(pq.read_table(one)), (folder, split)
            ids = got.column("id").to_pylist()
            assert ids == sorted(ids) and len(ids) > 0
    final = RunStore(tmp_path / "run").shards(tmp_path / "run" / "02-subset")
    kept = pa.concat_tables(pq.read_table(f) for f in final)
    assert sorted(kept.column("id").to_pylist()) == sorted(
        r["id"] for split in _load(out).values() for r in split)
