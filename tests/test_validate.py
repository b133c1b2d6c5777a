"""The validate stage: one real file per failure mode, each with its own reason."""

from __future__ import annotations

import json
import re

import pytest
from helpers import jsonl_recipe, read_stage, rows_by_id, run

from avcurate.filters import validate as validate_mod
from avcurate.pipeline.recipe import StageSpec

MC = {"options": ["red", "blue", "green"], "answer": "A"}


def _records(media):
    def rec(i, video, **kw):
        base = {"id": i, "video": str(video), "question": "What color is the square?", **MC}
        return base | kw

    return [
        rec("good", media["good"]),
        rec("good_again", media["good"], question="Which tone do you hear?"),
        rec("separate_audio", media["noaudio"], audio=str(media["wav"])),
        rec("empty_q", media["good"], question="   "),
        rec("one_option", media["good"], options=["red"], answer="A"),
        # letters name 26 options at most; a 27th crashed every prompt that letters them
        rec("many_options", media["good"], options=[f"shade {i}" for i in range(27)],
            answer="B"),
        rec("bad_answer", media["good"], answer="D"),
        # generated distractors repeat the answer now and then; a blank option is no choice
        rec("same_twice", media["good"], options=["red", "blue", "Red "], answer="A"),
        rec("blank_option", media["good"], options=["red", " ", "blue"], answer="A"),
        rec("open_no_answer", media["good"], options=None, answer=""),
        rec("good", media["good2"]),  # duplicate id: the first one is kept
        rec("missing", media["root"] / "nowhere.mp4"),
        rec("corrupt", media["corrupt"]),
        rec("truncated", media["truncated"]),
        rec("noaudio", media["noaudio"]),
        rec("silent", media["silent"]),
        rec("quiet", media["quiet"]),
        rec("short", media["short"]),
        rec("open", media["good2"], options=None, answer="It is blue."),
    ]


EXPECTED = {
    "empty_q": "empty_question", "one_option": "too_few_options",
    "many_options": "too_many_options",
    "bad_answer": "answer_not_in_options", "open_no_answer": "missing_answer",
    "same_twice": "duplicate_options", "blank_option": "empty_option",
    "good": "duplicate_id", "missing": "missing_media", "corrupt": "unreadable_media",
    "truncated": "truncated", "noaudio": "no_audio_stream", "silent": "silent_audio",
    "quiet": "silent_audio", "short": "duration_out_of_range",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_each_failure_has_its_reason(tmp_path, media, workers):
    recipe = jsonl_recipe(tmp_path, _records(media), media["root"], [StageSpec("validate")],
                          workers=workers)
    reports = run(recipe, tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert {r["id"] for r in kept.to_pylist()} == {"jsonl:ann/good", "jsonl:ann/good_again",
                                                   "jsonl:ann/separate_audio", "jsonl:ann/open"}
    got = {(r["id"].split("/", 1)[1], r["reject_reason"]) for r in rej.to_pylist()}
    assert got == set(EXPECTED.items())
    assert all(r["reject_stage"] == "validate" for r in rej.to_pylist())
    dup = [r for r in rej.to_pylist() if r["reject_reason"] == "duplicate_id"][0]
    assert dup["video"].endswith("good2.mp4")  # the later row is the one rejected
    assert reports[1].rows_in == reports[1].kept + reports[1].rejected == 19
    details = {r["id"].split("/", 1)[1]: r["reject_detail"] for r in rej.to_pylist()}
    assert details["same_twice"] == "options A and C are both 'Red'"
    assert details["blank_option"] == "option B is blank"


def test_a_media_reject_says_which_file_and_which_setting(tmp_path, media):
    """A row rejected for its audio or length named no file (no_audio_stream had no detail
    at all), so a user could not tell a file missing its track from a wrong setting."""
    records = [r for r in _records(media) if r["id"] in ("noaudio", "silent", "short")]
    run(jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")]),
        tmp_path / "run")
    detail = {r["id"].split("/", 1)[1]: r["reject_detail"]
              for r in read_stage(tmp_path / "run", "01")[1].to_pylist()}
    assert detail["noaudio"] == (f"{media['noaudio']} has no audio stream "
                                 "(--no-require-audio keeps such rows)")
    assert re.fullmatch(rf"{re.escape(str(media['silent']))}: -\d+\.\d dBFS, under "
                        r"--silence-db -60\.0", detail["silent"]), detail["silent"]
    assert detail["short"].endswith("not in [1.0, inf] (--min-duration, --max-duration)")


def test_probe_columns_are_added(tmp_path, media):
    recipe = jsonl_recipe(tmp_path, _records(media)[:3], media["root"], [StageSpec("validate")])
    run(recipe, tmp_path / "run")
    kept = rows_by_id(read_stage(tmp_path / "run", "01")[0])
    good = kept["jsonl:ann/good"]
    assert good["has_audio"] is True and good["fps"] == 25.0
    assert (good["width"], good["height"]) == (320, 240)
    assert good["duration_s"] == pytest.approx(4.0, abs=0.1)
    assert -16 < good["audio_rms_db"] < -10
    assert kept["jsonl:ann/separate_audio"]["has_audio"] is True  # from the wav, not the silent video


def test_thresholds_are_configurable(tmp_path, media):
    records = [r for r in _records(media)[:-1] if r["id"] in ("quiet", "short", "good")]
    records = list({r["id"]: r for r in reversed(records)}.values())  # first "good" only
    stage = StageSpec("validate", {"silence_db": -80.0, "min_duration_s": 0.5,
                                   "max_duration_s": 3.5})
    run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert {r["id"] for r in kept.to_pylist()} == {"jsonl:ann/quiet", "jsonl:ann/short"}
    assert rows_by_id(rej)["jsonl:ann/good"]["reject_reason"] == "duration_out_of_range"


def test_require_audio_off_keeps_videos_without_sound(tmp_path, media):
    records = [r for r in _records(media) if r["id"] in ("noaudio", "silent")]
    stage = StageSpec("validate", {"require_audio": False})
    run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
    kept, _ = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 2


def test_probes_are_cached_per_file(tmp_path, media, monkeypatch):
    calls = []
    real = validate_mod.probe
    monkeypatch.setattr(validate_mod, "probe", lambda p, **kw: calls.append(p) or real(p, **kw))
    records = _records(media)
    recipe = jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")])
    run(recipe, tmp_path / "run")
    distinct = {r["video"] for r in records if "nowhere" not in r["video"]} | {str(media["wav"])}
    assert sorted(calls) == sorted(distinct)  # once per file, though 'good.mp4' backs 6 rows
    calls.clear()
    recipe.stages = [StageSpec("validate", {"silence_db": -70.0})]
    run(recipe, tmp_path / "run", force=True)  # recomputed stage, same files: all from cache
    assert calls == []


def test_media_is_looked_up_once_per_process_with_a_bounded_memo(tmp_path, media, monkeypatch):
    """Shards share clips: each file is looked up (stat, probe cache) once per process, not
    once per shard; a full memo is dropped and the verdicts stay the same."""
    looked = []
    real = validate_mod.file_key
    monkeypatch.setattr(validate_mod, "file_key", lambda p: looked.append(p) or real(p))
    records = _records(media)
    run(jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")], shard_size=3),
        tmp_path / "run")  # 16 rows in 6 shards; good.mp4 backs rows of 3 of them
    assert len(looked) == len(set(looked)) == 10  # the distinct files
    kept, rejected = read_stage(tmp_path / "run", "01")

    looked.clear()
    monkeypatch.setattr(validate_mod, "PROBED_MAX", 2)
    run(jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")], shard_size=3),
        tmp_path / "small")
    assert len(looked) > len(set(looked))  # dropped and looked up again
    kept2, rejected2 = read_stage(tmp_path / "small", "01")
    assert kept2.equals(kept) and rejected2.equals(rejected)


def test_a_wrong_media_root_stops_validate_and_the_fixed_root_runs(tmp_path, media):
    """Not one video found is the user's mistake (a wrong media root), not every row's:
    validate stops with one line and rejects nothing; ingested again with the right root
    (--force), only the file that is really missing is rejected."""
    import subprocess

    from conftest import avcurate_cmd
    from helpers import COLUMNS

    records = [{"id": name, "video": media[name].relative_to(media["root"]).as_posix(),
                "question": "What color is the square?", **MC} for name in ("good", "good2")]
    records.append({"id": "gone", "video": "nowhere.mp4", "question": "Which tone?", **MC})
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "wrong").mkdir()
    columns = [f"--column={k}={v}" for k, v in COLUMNS.items()]

    def sh(*args):
        return subprocess.run(avcurate_cmd(*args), capture_output=True, text=True)

    def ingest(root, *extra):
        done = sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                  str(root), "--out", str(tmp_path / "run"), *columns, "-q", *extra)
        assert done.returncode == 0, done.stderr

    ingest(tmp_path / "wrong")
    stopped = sh("validate", str(tmp_path / "run"), "-q")
    assert stopped.returncode == 2
    [line] = stopped.stderr.strip().splitlines()
    assert "none of the 3 video file(s) the rows name exists" in line
    assert str(tmp_path / "wrong" / "good.mp4") in line and "--media-root" in line
    # no stage folder left behind: `status` does not show a validate begun
    assert not (tmp_path / "run" / "01-validate").exists()
    assert "validate" not in sh("status", str(tmp_path / "run")).stdout

    ingest(media["root"], "--force")
    assert sh("validate", str(tmp_path / "run"), "-q").returncode == 0
    kept, rejected = read_stage(tmp_path / "run", "01")
    assert sorted(r["id"].split("/")[-1] for r in kept.to_pylist()) == ["good", "good2"]
    assert rejected.column("reject_reason").to_pylist() == ["missing_media"]


def test_the_media_search_stops_at_the_first_file_found(tmp_path, media, monkeypatch):
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = []
    for k, names in enumerate([["gone1", None, "gone1"], [str(media["good"]), "gone2"],
                               ["gone2"]]):
        shards.append(tmp_path / f"part-{k}.parquet")
        pq.write_table(pa.table({"video": pa.array(names, pa.string()),
                                 "audio": pa.array([None] * len(names), pa.string())}), shards[-1])
    asked = []
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: asked.append(p) or real_exists(p))
    validate_mod.stop_if_all_missing(shards[:2], "video")  # a file is there: no error
    assert asked == ["gone1", str(media["good"])]  # each name once, none after the first found
    validate_mod.stop_if_all_missing(shards, "audio")  # names no file at all: nothing to say
    with pytest.raises(validate_mod.StageError, match="none of the 2 video file"):
        validate_mod.stop_if_all_missing([shards[0], shards[2]], "video")


def test_separate_audio_files_all_missing_stop_unless_audio_is_not_required(tmp_path, media):
    records = [{"id": f"r{i}", "video": str(media["good"]), "audio": f"sounds/r{i}.wav",
                "question": "Which tone?", **MC} for i in range(3)]
    recipe = jsonl_recipe(tmp_path, records, media["root"], [StageSpec("validate")])
    with pytest.raises(validate_mod.StageError, match="none of the 3 audio file"):
        run(recipe, tmp_path / "run")
    video_only = jsonl_recipe(tmp_path, records, media["root"],
                              [StageSpec("validate", {"require_audio": False})])
    run(video_only, tmp_path / "run2")
    assert read_stage(tmp_path / "run2", "01")[0].num_rows == 3


def test_clips_left_in_their_archives_are_named_with_the_way_to_unpack_them(tmp_path, media):
    """LLaVA-Video-178K ships each bucket's clips as .tar.gz parts beside its annotations,
    which name the unpacked paths. Downloaded as they are, every clip was missing and the
    stop said to check the media root; with some clips unpacked, the rest were rejected as
    missing_media without a word. Both now name the archives and how to unpack them."""
    import shutil
    import subprocess
    import tarfile

    from conftest import avcurate_cmd

    bucket = tmp_path / "0_30_s_academic_v0_1"
    bucket.mkdir()
    with tarfile.open(bucket / "0_30_s_academic_v0_1_videos_1.tar.gz", "w:gz") as tar:
        tar.add(media["good"], arcname="academic_source/good.mp4")
    ann = bucket / "qa.jsonl"
    ann.write_text("".join(json.dumps({"id": f"q{i}", "video": "academic_source/good.mp4",
                                       "question": f"Q{i}?", "options": ["a", "b"],
                                       "answer": "A"}) + "\n" for i in range(3)))
    run_dir = tmp_path / "run"

    def avcurate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(avcurate_cmd(*args), capture_output=True, text=True)

    made = avcurate("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                    str(bucket), "--out", str(run_dir), "-q")
    assert made.returncode == 0, made.stderr
    stopped = avcurate("validate", str(run_dir), "-q")
    assert stopped.returncode == 2 and (
        "so every row would be rejected as missing_media. The media root holds archives "
        "(0_30_s_academic_v0_1_videos_1.tar.gz): unpack them where they are (tar -xf FILE -C "
        "FOLDER, unzip FILE -d FOLDER), then run validate again. Nothing was rejected."
    ) in " ".join(stopped.stderr.split())
    # some clips unpacked (another part's, say), most still in their archive: a warning
    shutil.copy(media["good2"], bucket / "other.mp4")
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(lines + [lines[0].replace("academic_source/good.mp4", "other.mp4")
                                      .replace('"q0"', '"q3"')]) + "\n")
    made = avcurate("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
                    str(bucket), "--out", str(tmp_path / "run2"), "-q")
    checked = avcurate("validate", str(tmp_path / "run2"), "-q")
    assert checked.returncode == 0, checked.stderr
    assert (f"warning: 01-validate: 3 of 4 rows' clips are missing (missing_media), and the "
            "media root holds archives (0_30_s_academic_v0_1_videos_1.tar.gz): unpack them "
            "where they are (tar -xf FILE -C FOLDER, unzip FILE -d FOLDER), then: avcurate "
            f"validate {tmp_path / 'run2'} --redo") in " ".join(checked.stdout.split())
    with tarfile.open(bucket / "0_30_s_academic_v0_1_videos_1.tar.gz") as tar:
        tar.extractall(bucket, filter="data")
    redone = avcurate("validate", str(tmp_path / "run2"), "--redo", "-q")
    assert redone.returncode == 0 and "archives" not in redone.stdout, redone.stderr
    assert read_stage(tmp_path / "run2", "01")[0].num_rows == 4
