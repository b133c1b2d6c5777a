"""Each source catalog on a fixture in its real annotation format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avcurate.catalogs import CATALOGS, Reject, read_source
from avcurate.catalogs.base import NOT_UTF8, MediaRoot, UnsafePathError, split_question_options
from avcurate.core.answers import normalise_answer


def _read(name, ann, root, **kw):
    items = list(read_source(name, str(ann), str(root), **kw))
    return [x for x in items if isinstance(x, dict)], [x for x in items if isinstance(x, Reject)]


LLAVA = [
    {  # multiple choice, with the <image> placeholder and the usual instruction line
        "id": "v_abc", "video": "academic/v_abc.mp4", "data_source": "0_30_s_academic_v0_1",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the man holding?\nA. A cup\nB. A guitar\n"
                                       "C. A phone\nD. A book\nAnswer with the option's letter "
                                       "from the given choices directly."},
            {"from": "gpt", "value": "B."},
        ],
    },
    {  # open-ended, multi-turn
        "id": "ytb_1", "video": "ytb/ytb_1.mp4", "data_source": "30_60_s_youtube_v0_1",
        "conversations": [
            {"from": "human", "value": "<video>\nWhat happens first?"},
            {"from": "gpt", "value": "A dog runs across the yard."},
            {"from": "human", "value": "Options:\n(A) loud\n(B) quiet\nHow loud is the music?"},
            {"from": "gpt", "value": "(A) loud"},
        ],
    },
    {"id": "bad", "video": "x.mp4", "conversations": [{"from": "human", "value": "Q?"}]},
    {"id": "escape", "video": "../outside.mp4",
     "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]},
]


def test_llava_video(tmp_path):
    ann = tmp_path / "llava.json"
    ann.write_text(json.dumps(LLAVA))
    rows, rejects = _read("llava-video", ann, tmp_path)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"llava-video:llava/0-v_abc", "llava-video:llava/1-ytb_1#0",
                          "llava-video:llava/1-ytb_1#1"}
    mc = by_id["llava-video:llava/0-v_abc"]
    assert mc["question"] == "What is the man holding?"
    assert mc["options"] == ["A cup", "A guitar", "A phone", "A book"]
    assert mc["answer"] == "B"
    assert mc["video"] == str(tmp_path / "academic/v_abc.mp4")
    meta = json.loads(mc["meta"])
    assert meta["data_source"] == "0_30_s_academic_v0_1" and meta["kind"] == "multiple_choice"
    assert "letter" in meta["instruction"]
    open_ended = by_id["llava-video:llava/1-ytb_1#0"]
    assert open_ended["question"] == "What happens first?" and "<video>" not in open_ended["question"]
    assert open_ended["options"] is None and open_ended["answer"] == "A dog runs across the yard."
    second = by_id["llava-video:llava/1-ytb_1#1"]
    assert second["options"] == ["loud", "quiet"] and second["answer"] == "A"
    assert {(r.raw_id, r.reason) for r in rejects} == {
        ("llava-video:llava/2-bad", "malformed_annotation"),
        ("llava-video:llava/3", "unsafe_path")}
    # ids are stable: reading again gives the same rows
    assert _read("llava-video", ann, tmp_path)[0] == rows


def test_video_vista(tmp_path):
    ann = tmp_path / "vista.json"
    ann.write_text(json.dumps([{
        "id": 7, "video": "clips/7.mp4", "Type": "Event Location",
        "conversations": [{"from": "human", "value": "<video>\nWhere?\nA. park\nB. beach"},
                          {"from": "gpt", "value": "beach"}]}]))
    rows, rejects = _read("video-vista", ann, tmp_path)
    assert not rejects
    assert rows[0]["id"] == "video-vista:vista/0-7" and rows[0]["answer"] == "B"  # answer given as text
    assert json.loads(rows[0]["meta"])["Type"] == "Event Location"


def test_avqa(tmp_path):
    ann = tmp_path / "avqa.json"
    ann.write_text(json.dumps([
        {"id": 183, "video_name": "-HG3Omg_89c_000030", "video_id": 341,
         "question_text": "What is the main sound source of the video?",
         "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
         "answer": 0, "question_relation": "View", "question_type": "Come From"},
        {"id": 184, "video_name": "clip.mp4", "question_text": "Q", "multi_choice": "oops",
         "answer": 0},
        {"id": 185, "video_name": "a", "question_text": "Q", "multi_choice": ["x", "y"], "answer": 5},
    ]))
    rows, rejects = _read("avqa", ann, tmp_path)
    assert rows[0]["video"] == str(tmp_path / "-HG3Omg_89c_000030.mp4")
    assert rows[0]["answer"] == "A" and rows[0]["options"][0] == "motorboat"
    assert json.loads(rows[0]["meta"])["question_type"] == "Come From"
    assert rows[1]["answer"] == "5"  # out of range: kept as is, validation rejects it
    assert [r.reason for r in rejects] == ["malformed_annotation"]


def test_daily_omni(tmp_path):
    (tmp_path / "vid1").mkdir()
    (tmp_path / "vid1" / "vid1_audio.wav").write_bytes(b"")
    ann = tmp_path / "qa.json"
    ann.write_text(json.dumps([
        {"Question": "What does the speaker say after the door closes?",
         "Choice": ["A. Hello", "B. Goodbye", "C. Thanks", "D. Nothing"], "Answer": "B",
         "video_id": "vid1", "Type": "AV Event Alignment", "video_category": "vlog",
         "video_duration": "30s"},
        {"Question": "Q", "Answer": "A", "video_id": "vid2"},
    ]))
    rows, rejects = _read("daily-omni", ann, tmp_path)
    assert rows[0]["video"] == str(tmp_path / "vid1/vid1_video.mp4")
    assert rows[0]["audio"] == str(tmp_path / "vid1/vid1_audio.wav")
    assert rows[0]["options"] == ["Hello", "Goodbye", "Thanks", "Nothing"]
    assert rows[0]["answer"] == "B"
    assert rows[0]["id"] == read_source("daily-omni", str(ann), str(tmp_path)).__next__()["id"]
    assert [r.reason for r in rejects] == ["malformed_annotation"]


def test_jsonl_with_mapping_and_bad_line(tmp_path):
    ann = tmp_path / "mine.jsonl"
    ann.write_text("\n".join([
        json.dumps({"uid": "a", "path": "a.mp4", "q": "Why?", "choices": ["x", "y", "z"],
                    "label": 2, "extra": 1}),
        "{not json",
        json.dumps({"uid": "b", "path": "b.mp4", "q": "How?", "choices": '["p", "q"]',
                    "label": "q"}),
    ]) + "\n")
    cols = {"id": "uid", "video": "path", "question": "q", "options": "choices", "answer": "label"}
    rows, rejects = _read("jsonl", ann, tmp_path, columns=cols)
    assert [(r["id"], r["answer"]) for r in rows] == [("jsonl:mine/a", "C"), ("jsonl:mine/b", "B")]
    assert json.loads(rows[0]["meta"])["extra"] == 1
    assert rejects[0].reason == "malformed_annotation" and "line 2" in rejects[0].detail


def test_parquet_with_mapping(tmp_path):
    ann = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"vid": ["a.mp4", "b.mp4"], "question": ["Q1", "Q2"],
                             "opts": [["x", "y"], ["u", "v"]], "gt": ["A", "v"]}), ann)
    rows, _ = _read("parquet", ann, tmp_path, columns={"video": "vid", "options": "opts",
                                                       "answer": "gt"})
    assert [r["answer"] for r in rows] == ["A", "B"]
    assert rows[0]["id"] != rows[1]["id"]


NEXTQA_CSV = (  # NExT-QA's layout: a video id, five option columns, the answer's position
    "video,frame_count,question,answer,qid,type,a0,a1,a2,a3,a4\n"
    "0007,100,what does the man do after he falls,2,1,TN,laughs,cries,stands up,runs,sits\n"
    '0008,90,"how many dogs, in total",1,2,CW,1,2,3,4,5\n'
    '1234,80,why is the boy happy,3,3,CW,toy,cake,"a ""big"" gift",sun,\n'
    "0008,90,one cell too many,1,4,CW,1,2,3,4,5,6\n"
    "0009,70,no answer here,,5,CW,x,y,z,,\n")


def test_a_csv_with_one_option_per_column(tmp_path):
    """A CSV of the NExT-QA kind: cells stay text (the id 0007 keeps its zeros in the path),
    quoted commas and quotes are read as written, options come from five columns with
    empty cells skipped, and a line with too many cells or an empty answer is one reject.
    Its whole-number answers are read as positions only when the source says so."""
    ann = tmp_path / "nextqa.csv"
    ann.write_bytes(b"\xef\xbb\xbf" + NEXTQA_CSV.encode())  # as a spreadsheet saves "CSV UTF-8"
    cols = {"id": "qid", "video": "{video}.mp4", "options": "a0,a1,a2,a3,a4"}
    with pytest.raises(ValueError, match="every answer .* is a whole number: say whether"):
        _read("csv", ann, tmp_path, columns=cols)
    rows, rejects = _read("csv", ann, tmp_path, columns=cols, answers="index")
    assert [r["video"].rsplit("/", 1)[1] for r in rows] == ["0007.mp4", "0008.mp4", "1234.mp4"]
    assert [r["answer"] for r in rows] == ["C", "B", "D"]
    assert [r["id"] for r in rows] == ["csv:nextqa/1", "csv:nextqa/2", "csv:nextqa/3"]
    assert rows[1]["question"] == "how many dogs, in total"
    assert rows[2]["options"] == ["toy", "cake", 'a "big" gift', "sun"]
    assert json.loads(rows[0]["meta"]) == {"source_id": "1", "video": "0007", "frame_count": "100",
                                           "type": "TN"}
    assert sorted(r.detail for r in rejects) == [
        "line 5 has 12 cells where the header names 11 columns",
        "record 4: answer is missing (null)"]
    rows, _ = _read("csv", ann, tmp_path, columns=cols, answers="index1")
    assert [r["answer"] for r in rows] == ["B", "A", "C"]
    rows, _ = _read("csv", ann, tmp_path, columns=cols, answers="text")
    assert [r["answer"] for r in rows] == ["2", "A", "3"]  # "1" is the first option's text


def test_answers_says_how_a_json_files_answers_name_their_option(tmp_path):
    """A JSON file of 1-based positions read with answers = "index1"; a record whose answer
    is not a position under it is rejected, naming it, not read as a letter."""
    ann = tmp_path / "mine.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in [
        {"video": "a.mp4", "question": "Q1?", "options": ["x", "y", "z"], "answer": 3},
        {"video": "a.mp4", "question": "Q2?", "options": ["x", "y", "z"], "answer": "1"},
        {"video": "a.mp4", "question": "Q3?", "options": ["x", "y", "z"], "answer": "B"}]))
    rows, rejects = _read("jsonl", ann, tmp_path, answers="index1")
    assert [r["answer"] for r in rows] == ["C", "A"]
    assert [r.detail for r in rejects] == [
        "record 2: answer 'B' is not an option's position (answers = 'index1')"]


@pytest.mark.parametrize("mapping, said", [
    ({"question": "q"}, "no column 'q' in the header"),
    ({"options": "a0,a1,b2"}, "no column 'b2' in the header"),
    ({"video": "clips/{vid}.mp4"}, "no column 'vid' in the header"),
])
def test_a_csv_mapping_naming_a_column_it_lacks_is_refused_before_any_row(tmp_path, mapping,
                                                                            said):
    ann = tmp_path / "nextqa.csv"
    ann.write_text(NEXTQA_CSV)
    with pytest.raises(ValueError, match=said + r" of .*\(it has video, frame_count, "):
        read_source("csv", str(ann), str(tmp_path), answers="index", **{
            "columns": {"video": "{video}.mp4"} | mapping})


def test_strip_prefix_drops_the_authors_folder_from_media_paths(tmp_path):
    """Files written on the authors' machine name their clips by absolute path (on Windows,
    with backslashes): each escaped the media root and was rejected. `strip_prefix` drops
    the folder; the reject without it names the option."""
    (tmp_path / "clips").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"x")
    ann = tmp_path / "qa.jsonl"
    ann.write_text("\n".join(json.dumps({"video": v, "question": "Q?", "answer": "yes"}) for v in (
        "/mnt/data/videos/a.mp4", "D:\\data\\videos\\b.mp4", "/elsewhere/a.mp4")) + "\n")
    clips = tmp_path / "clips"
    _, rejects = _read("jsonl", ann, clips)
    assert [r.detail for r in rejects] == [
        f"record {n}: '{v}' resolves outside the media root {clips}; set the source's "
        "strip_prefix (--strip-prefix) to the folder its authors wrote before each path"
        for n, v in ((0, "/mnt/data/videos/a.mp4"), (2, "/elsewhere/a.mp4"))]
    for prefix in ("/mnt/data/videos", "/mnt/data/videos/"):
        rows, rejects = _read("jsonl", ann, clips, strip_prefix=prefix)
        assert str(clips / "a.mp4") in [r["video"] for r in rows]
        assert [r.raw_id for r in rejects] == ["jsonl:qa/2"]  # not under the prefix
    rows, _ = _read("jsonl", ann, clips, strip_prefix="D:\\data\\videos")
    assert str(clips / "b.mp4") in [r["video"] for r in rows]


def test_a_csv_naming_a_mapped_column_twice_is_refused(tmp_path):
    """A record keeps one cell per column name: with two `question` columns one of them was
    silently dropped (the last was read). A repeated column nothing reads is no matter."""
    ann = tmp_path / "twice.csv"
    ann.write_text("video,question,answer,question,note,note\na.mp4,Q1?,yes,Q2?,x,y\n")
    with pytest.raises(ValueError, match=r"names 'question' more than once: rename one"):
        read_source("csv", str(ann), str(tmp_path))
    ann.write_text("video,question,answer,note,note\na.mp4,Q1?,yes,x,y\n")
    rows, rejects = _read("csv", ann, tmp_path)
    assert [r["question"] for r in rows] == ["Q1?"] and not rejects


def test_a_tsv_with_text_answers_needs_no_answers_setting(tmp_path):
    ann = tmp_path / "mine.tsv"
    ann.write_text("path\tquestion\toptions\tanswer\tsecs\n"
                   'a.mp4\tWhich, of these?\t["x", "y"]\ty\t12.5\n'
                   "b.mp4\tWhat?\t\tA dog barks.\tlong\n")
    rows, rejects = _read("csv", ann, tmp_path, columns={"video": "path", "duration_s": "secs"})
    assert [(r["answer"], r["options"], r["duration_s"]) for r in rows] == [
        ("B", ["x", "y"], 12.5), ("A dog barks.", None, None)] and not rejects


@pytest.mark.parametrize("layout", ["jsonl", "csv"])
def test_extra_columns_take_their_declared_types_and_a_wrong_value_rejects_its_row(
        tmp_path, layout):
    """Typed `extra_columns` from JSON values or CSV cells (all text). A value that is not of
    its type stopped the whole ingest when the shard was written ("Could not convert 'high'
    ... to double"); now it rejects its own record, naming the column."""
    from helpers import read_stage, run

    from avcurate.pipeline.recipe import Recipe, SourceSpec

    good = {"path": "a.mp4", "question": "Q?", "answer": "yes", "score": "0.5", "n": "3",
            "ok": "true", "tags": '["x", "y"]'}
    bad = dict(good, question="Q2?", score="high")
    if layout == "jsonl":
        good |= {"score": 0.5, "n": 3.0, "ok": True, "tags": ["x", "y"]}
        bad |= {"score": "high", "n": 3, "ok": True, "tags": ["x", "y"]}
        ann = tmp_path / "mine.jsonl"
        ann.write_text("".join(json.dumps(r) + "\n" for r in (good, bad)))
    else:
        import csv

        ann = tmp_path / "mine.csv"
        with ann.open("w", newline="") as f:
            csv.writer(f).writerows([list(good), list(good.values()), list(bad.values())])
    extras = {"score": "double", "n": "int", "ok": "bool", "tags": "list<string>"}
    source = SourceSpec(layout, str(ann), str(tmp_path), {
        "columns": {"video": "path"}, "extra_columns": extras})
    run(Recipe([source], []), tmp_path / "run")
    kept, rejected = read_stage(tmp_path / "run", "00")
    assert kept.select(list(extras)).to_pylist() == [
        {"score": 0.5, "n": 3, "ok": True, "tags": ["x", "y"]}]
    assert rejected.column("reject_detail").to_pylist() == [
        "record 1: score must be double, not str 'high'"]


def test_bad_mapping_is_a_clear_error(tmp_path):
    ann = tmp_path / "x.jsonl"
    ann.write_text("{}\n")
    with pytest.raises(ValueError, match="cannot map"):
        _read("jsonl", ann, tmp_path, columns={"questoin": "q"})


def test_media_root_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.mp4")
    os.symlink(root / "ok", root / "inner")
    media = MediaRoot(root)
    assert media.resolve("ok/a.mp4") == str(root.resolve() / "ok/a.mp4")
    assert media.resolve("inner/a.mp4") == str(root.resolve() / "ok/a.mp4")  # symlink inside: fine
    assert media.resolve(str(root / "ok/a.mp4")).startswith(str(root.resolve()))
    for bad in ["../secret.mp4", "ok/../../secret.mp4", str(outside), "link.mp4", ""]:
        with pytest.raises(UnsafePathError):
            media.resolve(bad)


def test_links_that_leave_the_root_are_read_when_they_are_the_users(tmp_path):
    """A link under the media root that leads out of it is refused (a dataset archive's link
    to ~/.ssh would be sent to a model), and its error says how to allow it; with
    follow_links (the user's links: a farm of links to shared storage) it is read, by the
    path as written. `..` and absolute paths elsewhere stay refused either way."""
    root, store = tmp_path / "root", tmp_path / "store"
    root.mkdir()
    store.mkdir()
    (store / "clip.mp4").write_bytes(b"x")
    os.symlink(store / "clip.mp4", root / "a.mp4")
    os.symlink(store, root / "shared")
    with pytest.raises(UnsafePathError, match=r"'a.mp4' is a link to .*store/clip.mp4, outside "
                                              r"the media root .*follow_links = true"):
        MediaRoot(root).resolve("a.mp4")
    media = MediaRoot(root, follow_links=True)
    assert media.resolve("a.mp4") == str(root.resolve() / "a.mp4")
    assert media.resolve("shared/clip.mp4") == str(root.resolve() / "shared/clip.mp4")
    for bad in ["../store/clip.mp4", str(store / "clip.mp4"), "shared/../../store/clip.mp4"]:
        with pytest.raises(UnsafePathError, match="resolves outside"):
            media.resolve(bad)


def test_a_file_uri_is_the_local_path_it_names(tmp_path):
    """Some exporters write local media as `file:///data/x.mp4`: that is a path, not a URL
    to download (it was refused as one); its escapes are decoded, and it must lie under
    the media root as any path must. A file URI naming another host stays refused."""
    (tmp_path / "a b.mp4").write_bytes(b"x")
    media = MediaRoot(tmp_path)
    assert media.resolve(f"file://{tmp_path}/a%20b.mp4") == str(tmp_path.resolve() / "a b.mp4")
    assert media.resolve(f"file://localhost{tmp_path}/a%20b.mp4").endswith("a b.mp4")
    with pytest.raises(UnsafePathError, match="resolves outside"):
        media.resolve("file:///etc/passwd")
    with pytest.raises(UnsafePathError, match="is a URL"):
        media.resolve("file://server/share/a.mp4")


def test_a_hugging_face_cache_snapshot_is_a_media_root(tmp_path):
    """`snapshot_download` gives a snapshot folder whose files link to the repo's `blobs/`
    beside it: every clip of such a root was unsafe_path. Those links are read (by the
    clip's own name, with its extension); a link elsewhere is still refused."""
    repo = tmp_path / "hub/datasets--org--clips"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs/3f2a9c").write_bytes(b"x")
    snap = repo / "snapshots/0123abcd/videos"
    snap.mkdir(parents=True)
    os.symlink("../../../blobs/3f2a9c", snap / "clip.mp4")  # as huggingface_hub links them
    (tmp_path / "elsewhere.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere.mp4", snap / "other.mp4")
    media = MediaRoot(repo / "snapshots/0123abcd")
    assert media.resolve("videos/clip.mp4") == str(snap.resolve() / "clip.mp4")
    assert Path(media.resolve("videos/clip.mp4")).read_bytes() == b"x"
    with pytest.raises(UnsafePathError, match="is a link to"):
        media.resolve("videos/other.mp4")


def test_media_root_resolves_as_path_resolve_does(tmp_path):
    """Folders are resolved once each, files by one lstat: the result must still be what
    Path.resolve gives (symlinked folders and files, relative links, `..`), and refused
    exactly when that leaves the root."""
    import random

    root, out = tmp_path / "root", tmp_path / "out"
    (root / "a/b").mkdir(parents=True)
    out.mkdir()
    (root / "a/b/x.mp4").write_bytes(b"1")
    (out / "y.mp4").write_bytes(b"1")
    for link, target in [("la", root / "a"), ("lout", out), ("lx.mp4", root / "a/b/x.mp4"),
                         ("a/ly.mp4", out / "y.mp4"), ("a/rel", "b")]:
        os.symlink(target, root / link)
    media, real = MediaRoot(root), root.resolve()
    parts = ["a", "b", "la", "lout", "..", ".", "rel", "x.mp4", "ly.mp4", "lx.mp4", "nope"]
    rng = random.Random(0)
    refused = 0
    for _ in range(3000):
        rel = "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
        want = (real / rel).resolve()
        if want.is_relative_to(real):
            assert media.resolve(rel) == str(want), rel
        else:
            refused += 1
            with pytest.raises(UnsafePathError):
                media.resolve(rel)
    assert 300 < refused < 2700  # both outcomes were exercised


@pytest.mark.parametrize(("answer", "expected"), [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("B. two", "B"), (1, "B"), ("two", "B"),
    ("Two.", "B"), ("E", "E"), ("A dog", "A dog"), (9, "9"),
    # an answer key written in lower case or brackets is that letter ...
    ("b", "B"), ("b.", "B"), ("(c)", "C"), ("[B]", "B"), ("option b", "B"), ("answer: c", "C"),
    # ... when it is one of the options; else it stays as written, for validate to reject
    ("e", "e"), ("x", "x"), ("a dog", "a dog"),
])
def test_normalise_answer(answer, expected):
    assert normalise_answer(answer, ["one", "two", "three"]) == expected


@pytest.mark.parametrize(("options", "expected"), [
    (["a) red", "b) blue", "c) green"], ["red", "blue", "green"]),  # lower case
    (["(a) red", "(b) blue"], ["red", "blue"]),
    (["A - red", "B - blue"], ["red", "blue"]),  # a dash
    (["A. red", "B: blue", "(C) green"], ["red", "blue", "green"]),
    (["A.B.C. News", "CNN", "BBC"], ["A.B.C. News", "CNN", "BBC"]),  # a name, not a letter
    (["I. Robot", "Alien"], ["I. Robot", "Alien"]),
    (["B. blue", "A. red"], ["B. blue", "A. red"]),  # letters out of order: kept as written
])
def test_option_letters_are_removed_only_when_every_option_has_its_own(tmp_path, options,
                                                                       expected):
    """A list whose options all start with their own letters in order is lettered, in any
    case or style; an option that merely begins like a letter among plain texts ('A.B.C.
    News') lost its 'A.' before."""
    ann = tmp_path / "qa.jsonl"
    ann.write_text(json.dumps({"id": 1, "video": "a.mp4", "question": "Q?", "options": options,
                               "answer": 0}) + "\n")
    rows, rejects = _read("jsonl", ann, tmp_path)
    assert not rejects and rows[0]["options"] == expected


def test_a_lower_case_letter_that_is_an_options_text_is_that_option():
    assert normalise_answer("b", ["c", "a", "b"]) == "C"  # the option whose text is "b"


def test_split_question_options_needs_consecutive_letters():
    q, opts, _ = split_question_options("Who?\nA. Lincoln was president\nC. no")
    assert opts == [] and q.startswith("Who?")
    q, opts, rest = split_question_options("Pick:\nA) red\nB) blue\nAnswer with a letter.")
    assert (q, opts, rest) == ("Pick:", ["red", "blue"], "Answer with a letter.")
    # 26 options, A to Z, then a line that looks like a 27th: it ends the options
    letters = [chr(ord("A") + k) for k in range(26)]
    q, opts, rest = split_question_options(
        "Which?\n" + "\n".join(f"{c}. item {c}" for c in letters) + "\nA. again")
    assert opts == [f"item {c}" for c in letters] and rest == "A. again"


def test_every_catalog_has_a_description():
    assert set(CATALOGS) >= {"llava-video", "video-vista", "avqa", "daily-omni", "jsonl", "parquet"}
    assert all(c.description for c in CATALOGS.values())


def test_one_bad_record_is_one_reject(tmp_path, media):
    """NUL bytes, bytes that are not UTF-8, wrong types: each rejects its own record only,
    naming the line or the field; nothing is coerced; NFC and NFD spellings are one id."""
    good = str(media["good"].relative_to(media["root"]))
    lines = [
        json.dumps({"id": "ok", "video": good, "question": "Q?", "options": ["a", "b"],
                    "answer": "A"}).encode(),
        json.dumps({"id": "nul", "video": good + "\u0000x", "question": "Q?",
                    "answer": "x"}).encode(),
        b'{"id": "latin1", "video": "' + good.encode() + b'", "question": "caf\xe9?"}',
        json.dumps({"id": "dict", "video": good, "question": {"text": "Q?"},
                    "answer": "x"}).encode(),
        json.dumps({"id": "nulls", "video": good, "question": "Q?", "options": [None, None],
                    "answer": "A"}).encode(),
        json.dumps({"id": "ans", "video": good, "question": "Q?", "answer": {"x": 1}}).encode(),
        json.dumps({"id": "caf\u00e9", "video": good, "question": "Q1?", "answer": "x"}).encode(),
        json.dumps({"id": "cafe\u0301", "video": good, "question": "Q2?", "answer": "y"}).encode(),
    ]
    ann = tmp_path / "ann.jsonl"
    ann.write_bytes(b"\n".join(lines) + b"\n")
    cols = {k: k for k in ("id", "video", "question", "options", "answer")}
    out = list(read_source("jsonl", str(ann), str(media["root"]), columns=cols))
    rows = [r for r in out if not isinstance(r, Reject)]
    rejects = {r.raw_id: r for r in out if isinstance(r, Reject)}
    assert len(out) == len(lines)  # every record accounted for
    assert [r["id"] for r in rows] == ["jsonl:ann/ok", "jsonl:ann/caf\u00e9", "jsonl:ann/caf\u00e9"]
    details = {k: r.detail for k, r in rejects.items()}
    assert all(r.reason == "malformed_annotation" for r in rejects.values())
    # each named by its own id, as a kept record is; a line that is not JSON, by its line
    assert "record 1: video contains a NUL byte" in details["jsonl:ann/nul"]
    assert details["jsonl:ann/line-3"] == f"line 3 {NOT_UTF8}" and "iconv" in NOT_UTF8
    assert "record 3: question must be text, not dict" in details["jsonl:ann/dict"]
    assert "record 4: options[0] is missing (null)" in details["jsonl:ann/nulls"]
    assert "record 5: answer must be text, not dict" in details["jsonl:ann/ans"]
    for r in rejects.values():  # rejects are storable rows too
        pa.Table.from_pylist([r.to_row()])


def test_media_named_in_nfd_on_disk_is_found_from_nfc_annotations(tmp_path, media):
    """Clips unpacked from an archive made on a Mac are named in NFD (an accent as its own
    code point; Hangul as jamo), and annotations written by Python in NFC: such rows were
    missing_media. Either spelling finds the file, and both give one path."""
    import shutil
    import unicodedata

    names = ["caf\u00e9.mp4", "\ud55c\uad6d\uc5b4.mp4"]  # cafe + accent; Korean
    for name in names:
        shutil.copy(media["good"], tmp_path / unicodedata.normalize("NFD", name))
    records = [{"id": f"{i}-{form}", "video": unicodedata.normalize(form, name),
                "question": "Q?", "options": ["a", "b"], "answer": "A"}
               for i, name in enumerate(names) for form in ("NFC", "NFD")]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    cols = {k: k for k in ("id", "video", "question", "options", "answer")}
    rows = list(read_source("jsonl", str(ann), str(tmp_path), columns=cols))
    assert not [r for r in rows if isinstance(r, Reject)]
    paths = [r["video"] for r in rows]
    assert all(os.path.isfile(p) for p in paths), paths
    assert paths[0] == paths[1] != paths[2] == paths[3]
    root = MediaRoot(tmp_path)  # a file on disk in NFC is still named in NFC
    shutil.copy(media["good"], tmp_path / "\u00e9t\u00e9.mp4")
    assert root.resolve("e\u0301te\u0301.mp4") == str(tmp_path.resolve() / "\u00e9t\u00e9.mp4")


def test_a_windows_path_in_the_annotations_finds_its_file(tmp_path, media):
    """`videos\\clip.mp4`, as annotations written on Windows say it, was a file name with
    a backslash here: missing_media. It now names videos/clip.mp4; the root still holds."""
    import shutil

    (tmp_path / "videos").mkdir()
    shutil.copy(media["good"], tmp_path / "videos/clip.mp4")
    root = MediaRoot(tmp_path)
    assert root.resolve("videos\\clip.mp4") == str(tmp_path.resolve() / "videos/clip.mp4")
    assert root.resolve("videos\\other.mp4").endswith("videos\\other.mp4")  # missing: as is
    (tmp_path / "up.mp4").write_bytes(b"x")
    inner = MediaRoot(tmp_path / "videos")
    with pytest.raises(UnsafePathError, match="outside the media root"):
        inner.resolve("..\\up.mp4")


def test_a_json_array_with_a_bad_byte_rejects_one_record(tmp_path, media):
    good = str(media["good"].relative_to(media["root"]))
    body = (b'[{"id": 1, "video_name": "' + good.encode() + b'", "question_text": "Q?", '
            b'"multi_choice": ["a", "b"], "answer": 0},\n'
            b' {"id": 2, "video_name": "' + good.encode() + b'", "question_text": "\xff?", '
            b'"multi_choice": ["a", "b"], "answer": 1}]')
    ann = tmp_path / "avqa.json"
    ann.write_bytes(body)
    out = list(read_source("avqa", str(ann), str(media["root"])))
    assert [r["id"] for r in out if not isinstance(r, Reject)] == ["avqa:avqa/1"]
    [bad] = [r for r in out if isinstance(r, Reject)]
    assert bad.detail == f"record 1: question_text {NOT_UTF8}"


@pytest.mark.parametrize("layout", ["array", "lines"])
def test_a_byte_order_mark_is_read_past(tmp_path, media, layout):
    """Windows tools start UTF-8 files with a BOM: every record still reads (it made the
    array fall back to JSON lines, and every line a malformed record)."""
    good = str(media["good"].relative_to(media["root"]))
    records = [{"id": i, "video_name": good, "question_text": f"Q{i}?",
                "multi_choice": ["a", "b"], "answer": i % 2} for i in range(3)]
    text = json.dumps(records, indent=1) if layout == "array" else "\n".join(map(json.dumps,
                                                                               records))
    ann = tmp_path / f"avqa.{'json' if layout == 'array' else 'jsonl'}"
    ann.write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = list(read_source("avqa", str(ann), str(media["root"])))
    assert [r["id"] for r in out] == ["avqa:avqa/0", "avqa:avqa/1", "avqa:avqa/2"]


def test_a_compressed_annotation_file_is_named_as_such(tmp_path, media):
    import gzip

    ann = tmp_path / "avqa.json.gz"
    ann.write_bytes(gzip.compress(b'[{"id": 1}]'))
    with pytest.raises(ValueError, match="is gzip-compressed; decompress it first"):
        list(read_source("avqa", str(ann), str(media["root"])))


@pytest.mark.parametrize("source", ["jsonl", "avqa"])
def test_a_csv_given_to_a_json_format_names_the_csv_source(tmp_path, source):
    """Every line of it was rejected as "not JSON"; the format to use is named instead."""
    ann = tmp_path / "mine.csv"
    ann.write_text(NEXTQA_CSV)
    with pytest.raises(ValueError, match="mine.csv is a CSV file, which this format does not "
                                         "read: use --source csv"):
        list(read_source(source, str(ann), str(tmp_path)))


@pytest.mark.parametrize("kind, said", [
    ("utf16", "is UTF-16 text; save it as UTF-8"),
    ("video", "is a binary file, not JSON, JSON lines, CSV or Parquet"),
    ("parquet", "is a Parquet file: this format is read from JSON"),
])
def test_an_annotation_file_that_is_not_utf8_text_is_named_for_what_it_is(tmp_path, media,
                                                                          kind, said):
    """Not every line rejected as malformed JSON, but one error saying what the file is."""
    records = [{"id": 1, "video_name": "good.mp4", "question_text": "Q?",
                "multi_choice": ["a", "b"], "answer": 0}]
    ann = tmp_path / "avqa.json"
    if kind == "utf16":
        ann.write_text(json.dumps(records), encoding="utf-16")
    elif kind == "video":
        ann.write_bytes(media["good"].read_bytes())
    else:
        pq.write_table(pa.Table.from_pylist(records), ann)
    with pytest.raises(ValueError, match=said):
        list(read_source("avqa", str(ann), str(media["root"])))


@pytest.mark.parametrize("cut", [-3, -25, "comma"])
def test_a_broken_json_file_says_where_and_whether_it_was_cut_short(tmp_path, media, cut):
    """A file cut off mid-record (an interrupted download of a large annotation file) is
    named as cut short, wherever it stops; a syntax error inside names its line and column."""
    records = [{"id": i, "video_name": "good.mp4", "question_text": f"Q{i}?",
                "multi_choice": ["a", "b"], "answer": 0} for i in range(4)]
    text = json.dumps(records, indent=1)
    ann = tmp_path / "avqa.json"
    if cut == "comma":
        text = text.replace('"Q2?",', '"Q2?",,')
        at = text.index(",,") + 1  # the second comma: 1-based, its line's
        line, column = text[:at].count("\n") + 1, at - text.rfind("\n", 0, at)
        said = f"{ann} is not valid JSON (line {line}, column {column}: Expecting property"
    else:
        text = text[:cut]
        said = f"{ann} is not valid JSON: it ends at line {text.count(chr(10)) + 1} before"
    ann.write_text(text)
    with pytest.raises(ValueError) as broken:
        list(read_source("avqa", str(ann), str(media["root"])))
    assert str(broken.value).startswith(said), str(broken.value)


def test_a_parquet_file_without_its_suffix_is_read_as_parquet(tmp_path, media):
    rows = [{"id": "a", "video": "good.mp4", "question": "Q?", "options": ["x", "y"],
             "answer": 1}]
    ann = tmp_path / "rows.data"
    pq.write_table(pa.Table.from_pylist(rows), ann)
    [row] = list(read_source("parquet", str(ann), str(media["root"])))
    assert row["question"] == "Q?" and row["answer"] == "B"


def test_nul_bytes_in_a_text_file_reject_their_line_only(tmp_path, media):
    """A JSON-lines file with a zero-filled stretch (as an unclean shutdown leaves) is text
    with a damaged line, not a binary file: that line is rejected, the others are read."""
    good = {"id": 1, "video_name": "good.mp4", "question_text": "Q?", "multi_choice": ["a", "b"],
            "answer": 0}
    ann = tmp_path / "avqa.jsonl"
    ann.write_bytes(json.dumps(good).encode() + b"\n" + b"\x00" * 64 + b"\n"
                    + json.dumps(good | {"id": 2}).encode() + b"\n")
    out = list(read_source("avqa", str(ann), str(media["root"])))
    assert [r["id"] for r in out if not isinstance(r, Reject)] == ["avqa:avqa/1", "avqa:avqa/2"]
    assert [r.reason for r in out if isinstance(r, Reject)] == ["malformed_annotation"]


# A record with its own id "2" (kept), then at position 2 a record whose id is "3" and whose
# options are broken: its reject must be named "3", not "2" (its position), which is the kept
# record's id. Each format's fields, with `options` the one that breaks.
OWN_ID_FORMATS = {
    "jsonl": ("p.jsonl", "id", lambda i, opts: {"id": i, "video": "v.mp4", "question": "Q?",
                                                "options": opts, "answer": "A"}),
    "avqa": ("train_qa.json", "id", lambda i, opts: {
        "id": int(i), "video_name": "v", "question_text": "Q?", "multi_choice": opts,
        "answer": 0}),
    "video-mme": ("test.json", "question_id", lambda i, opts: {
        "question_id": i, "videoID": "v", "question": "Q?", "options": opts, "answer": "A"}),
    "video-vista": ("VideoVista.json", "question_id", lambda i, opts: {
        "question_id": i, "video_name": "v.mp4", "Question": "Q?", "Answer_Choices": opts,
        "Answer": 0}),
}


@pytest.mark.parametrize("name", sorted(OWN_ID_FORMATS))
def test_a_rejected_record_is_named_by_its_own_id_not_its_position(tmp_path, name):
    """A reject's id is the one its record would have had (the file's own id), so no
    rejected record takes the id of a kept one and the id finds the record in the file."""
    file, _, record = OWN_ID_FORMATS[name]
    (tmp_path / "v.mp4").write_bytes(b"x")
    records = [record("7", ["a", "b"]), record("2", ["a", "b"]), record("3", 5),
               record("4", ["a", "b"])]
    text = "\n".join(map(json.dumps, records)) if file.endswith("jsonl") else json.dumps(records)
    (tmp_path / file).write_text(text)
    rows, rejects = _read(name, tmp_path / file, tmp_path)
    tag = file.split(".")[0]
    assert [r["id"] for r in rows] == [f"{name}:{tag}/{i}" for i in ("7", "2", "4")]
    assert [(r.raw_id, r.detail.split(":")[0]) for r in rejects] == [(f"{name}:{tag}/3",
                                                                      "record 2")]
    # an own id that cannot be read: named apart from every own id, as a bad line is
    records[2] = record("3", 5) | {OWN_ID_FORMATS[name][1]: {"not": "an id"}}
    (tmp_path / file).write_text(
        "\n".join(map(json.dumps, records)) if file.endswith("jsonl") else json.dumps(records))
    _, rejects = _read(name, tmp_path / file, tmp_path)
    assert [r.raw_id for r in rejects] == [f"{name}:{tag}/record-2"]


def test_options_in_one_cell_as_pandas_or_a_person_writes_them(tmp_path):
    """A CSV written by pandas' `to_csv` holds a list column as a Python list
    (`['red', "it's blue"]`); a hand-made one as lettered lines, plain lines or options
    between bars (`red | blue`, which was a reject). All are read as the options; anything
    else (code) is one reject naming the forms taken."""
    import csv

    ann = tmp_path / "mine.csv"
    with ann.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "path", "q", "choices", "label"])
        w.writerow(["1", "a.mp4", "Q1?", "['red', \"it's blue\"]", "B"])
        w.writerow(["2", "a.mp4", "Q2?", "A. red\nB. blue\nC. green", "C"])
        w.writerow(["3", "a.mp4", "Q3?", '["red", "blue"]', "A"])
        w.writerow(["4", "a.mp4", "Q4?", "red | blue|green ", "A"])
        w.writerow(["5", "a.mp4", "Q5?", "[__import__('os').getcwd()]", "A"])
        w.writerow(["6", "a.mp4", "Q6?", "red\nblue, or teal\n", "B"])
    cols = {"id": "uid", "video": "path", "question": "q", "options": "choices",
            "answer": "label"}
    rows, rejects = _read("csv", ann, tmp_path, columns=cols)
    assert [(r["options"], r["answer"]) for r in rows] == [
        (["red", "it's blue"], "B"), (["red", "blue", "green"], "C"), (["red", "blue"], "A"),
        (["red", "blue", "green"], "A"), (["red", "blue, or teal"], "B")]
    assert [(r.raw_id, r.detail) for r in rejects] == [
        ("csv:mine/5", "record 4: choices is not a list: a JSON list, a Python list "
                       "(['a', 'b']), one lettered line per option (A. a / B. b), one option "
                       "per line, or options between bars (a | b)")]


def test_a_csv_saved_with_semicolons_is_read_by_its_header(tmp_path):
    """A spreadsheet where the comma is the decimal mark saves "CSV" with `;` between
    cells; the header's separator is the file's (a cell may still hold a comma or `;`)."""
    import csv

    ann = tmp_path / "eu.csv"
    with ann.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f, delimiter=";", lineterminator="\r\n")
        w.writerow(["uid", "path", "q", "choices", "label", "length"])
        w.writerow(["1", "a.mp4", "Who sings; and when?", '["a, b", "c"]', "A", "3,5"])
        w.writerow(["2", "a.mp4", "Q2?", '["x", "y"]', "B", "12,0"])
    cols = {"id": "uid", "video": "path", "question": "q", "options": "choices",
            "answer": "label"}
    rows, rejects = _read("csv", ann, tmp_path, columns=cols)
    assert not rejects
    assert [(r["question"], r["options"], r["answer"]) for r in rows] == [
        ("Who sings; and when?", ["a, b", "c"], "A"), ("Q2?", ["x", "y"], "B")]
    assert json.loads(rows[0]["meta"])["length"] == "3,5"  # kept as the text it is


def test_options_keyed_by_their_letters_are_read_in_letter_order(tmp_path):
    """`{"A": "red", "B": "blue"}` (a JSON object, or a Parquet struct) is the options in
    letter order, whatever order the keys come in; other objects are one reject."""
    records = [{"id": 1, "video": "a.mp4", "question": "Q?", "options": {"B": "blue", "A": "red"},
                "answer": "B"},
               {"id": 2, "video": "a.mp4", "question": "Q?", "options": {"(a)": "x", "(b)": "y",
                                                                        "(c)": "z"},
                "answer": "C"},
               {"id": 3, "video": "a.mp4", "question": "Q?", "options": {"A": "x", "C": "z"},
                "answer": "A"},
               {"id": 4, "video": "a.mp4", "question": "Q?", "options": {"text": "x"},
                "answer": "A"}]
    ann = tmp_path / "qa.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    struct = [records[0], records[0] | {"id": 5, "options": {"A": "x", "B": "y", "C": "z"}}]
    pq.write_table(pa.Table.from_pylist(struct), tmp_path / "qa.parquet")  # C null in row 1
    rows, rejects = _read("jsonl", ann, tmp_path)
    assert [(r["options"], r["answer"]) for r in rows] == [(["red", "blue"], "B"),
                                                           (["x", "y", "z"], "C")]
    assert [(r.raw_id, "keys are not the letters" in r.detail) for r in rejects] == [
        ("jsonl:qa/3", True), ("jsonl:qa/4", True)]
    rows, _ = _read("parquet", tmp_path / "qa.parquet", tmp_path)
    assert [(r["options"], r["answer"]) for r in rows] == [(["red", "blue"], "B"),
                                                           (["x", "y", "z"], "B")]


def test_an_answer_in_a_list_of_one_is_that_answer(tmp_path):
    """Datasets that allow several reference answers store one as `["B"]`; a list of one is
    that answer, a list of several one reject (a question here has one answer)."""
    records = [{"id": 1, "video": "a.mp4", "question": "Q?", "options": ["x", "y"],
                "answer": ["B"]},
               {"id": 2, "video": "a.mp4", "question": "Q?", "answer": ["a red car"]},
               {"id": 3, "video": "a.mp4", "question": "Q?", "options": ["x", "y"],
                "answer": ["A", "B"]},
               {"id": 4, "video": "a.mp4", "question": "Q?", "options": ["x", "y"],
                "answer": []}]
    ann = tmp_path / "qa.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, rejects = _read("jsonl", ann, tmp_path)
    assert [r["answer"] for r in rows] == ["B", "a red car"]
    assert [(r.raw_id, r.detail) for r in rejects] == [
        ("jsonl:qa/3", "record 2: answer is a list of 2 answers; a question here has exactly one"),
        ("jsonl:qa/4", "record 3: answer is a list of 0 answers; a question here has exactly one")]


def test_nan_is_a_null_and_trailing_null_options_are_no_option(tmp_path):
    """`json.dumps` of rows from pandas writes NaN for an empty cell: it is a null, not the
    text "nan" (an option "nan" was kept, and a NaN duration stayed NaN). Nulls at the end
    of the options are the unused slots of a fixed number of options; one between options
    is a record error."""
    records = [{"id": 1, "video": "a.mp4", "question": "Q?", "options": ["x", "y", float("nan"),
                                                                          None],
                "answer": "B", "duration_s": float("nan")},
               {"id": 2, "video": "a.mp4", "question": float("nan"), "options": ["x", "y"],
                "answer": "A"},
               {"id": 3, "video": "a.mp4", "question": "Q?", "options": ["x", None, "z"],
                "answer": "A"},
               {"id": 4, "video": "a.mp4", "question": "Q?", "options": ["x", "y"],
                "answer": float("nan")}]
    ann = tmp_path / "qa.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))  # NaN, as json.dumps writes
    assert "NaN" in ann.read_text()
    rows, rejects = _read("jsonl", ann, tmp_path,
                          columns={"id": "id", "video": "video", "question": "question",
                                   "options": "options", "answer": "answer",
                                   "duration_s": "duration_s"})
    assert [(r["options"], r["answer"], r["duration_s"]) for r in rows] == [(["x", "y"], "B",
                                                                             None)]
    assert [(r.raw_id, r.detail) for r in rejects] == [
        ("jsonl:qa/2", "record 1: question is missing (NaN)"),
        ("jsonl:qa/3", "record 2: options[1] is missing (null)"),
        ("jsonl:qa/4", "record 3: answer is missing (NaN)")]


def test_records_wrapped_in_an_object_are_found(tmp_path):
    """Releases wrap their records: `{"version": ..., "annotations": [...]}`, COCO's
    `{"info": {...}, "questions": [...]}`. The one list of objects is the records."""
    recs = [{"id": i, "video": "a.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"}
            for i in range(3)]
    for wrapper in ({"version": "1.0", "annotations": recs},
                    {"info": {"year": 2024}, "license": [], "questions": recs},
                    {"data": recs}):
        (tmp_path / "qa.json").write_text(json.dumps(wrapper))
        rows, rejects = _read("jsonl", tmp_path / "qa.json", tmp_path)
        assert [r["id"] for r in rows] == ["jsonl:qa/0", "jsonl:qa/1", "jsonl:qa/2"], wrapper
        assert not rejects


def _hub_parquet(path: Path, rows: list[dict], embed: bool) -> Path:
    """A Parquet file as `datasets` writes a Video()/Audio() dataset: each media cell a
    struct of bytes and path, the bytes embedded as `push_to_hub` does by default."""
    import datasets
    from datasets.table import embed_table_storage

    ds = datasets.Dataset.from_list(rows)
    ds = ds.cast_column("video", datasets.Video(decode=False))
    if "audio" in ds.column_names:
        ds = ds.cast_column("audio", datasets.Audio(decode=False))
    table = embed_table_storage(ds.data.table) if embed else ds.data.table
    pq.write_table(table, path)
    return path


def test_media_embedded_in_a_hub_parquet_file_is_written_out_once_and_validated(tmp_path, media):
    """A Hub dataset with Video() or Audio() columns holds its clips in its Parquet files
    (`push_to_hub` embeds them): every row was rejected, "video must be text, not dict",
    and a row's unmapped bytes went into its meta as text. Ingest now writes each embedded
    file once into RUN/media, named by its content, and validate reads it like any clip."""
    import subprocess

    from helpers import read_stage

    from tests.conftest import avcurate_cmd

    rows = [{"id": f"q{i}", "video": str(media[clip]), "audio": str(media["wav"]),
             "question": f"Q{i}?", "options": ["a", "b"], "answer": "A", "raw": b"\x00\x01"}
            for i, clip in enumerate(["good", "good", "good2"])]
    ann = _hub_parquet(tmp_path / "train-00000-of-00001.parquet", rows, embed=True)
    elsewhere = tmp_path / "empty_root"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    done = subprocess.run(avcurate_cmd(
        "ingest", "--source", "parquet", "--annotations", str(ann), "--media-root",
        str(elsewhere), "--out", str(run_dir), "-q"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    checked = subprocess.run(avcurate_cmd("validate", str(run_dir), "-q"), capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stderr
    kept, rejected = read_stage(run_dir, "01")
    assert rejected.num_rows == 0 and kept.num_rows == 3
    assert all(kept.column("has_audio").to_pylist())
    videos, audios = kept.column("video").to_pylist(), kept.column("audio").to_pylist()
    assert videos[0] == videos[1] != videos[2]  # one file per distinct clip
    written = sorted(p for p in (run_dir / "media").rglob("*") if p.is_file())
    assert sorted(map(str, written)) == sorted({*videos, audios[0]})
    assert Path(videos[2]).read_bytes() == media["good2"].read_bytes()
    assert Path(videos[0]).suffix == ".mp4" and Path(audios[0]).suffix == ".wav"
    assert json.loads(kept.column("meta")[0].as_py())["raw"] == "<2 bytes>"
    # an ingest made again clears what a killed write left in RUN/media, and keeps the files
    stale = Path(videos[0]).parent / f".{Path(videos[0]).name}.0123456789abcdef.tmp"
    stale.write_bytes(b"half a clip")
    again = subprocess.run(avcurate_cmd(
        "ingest", "--source", "parquet", "--annotations", str(ann), "--media-root",
        str(elsewhere), "--out", str(run_dir), "--strip-prefix", "/elsewhere", "--force",
        "--yes", "-q"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert not stale.exists() and all(Path(v).is_file() for v in videos)


def test_a_hub_media_column_without_bytes_is_its_path(tmp_path, media):
    """A `datasets` media struct with no bytes (saved without embedding; avcurate's own
    export with --media-features) names its file: resolved under the media root."""
    rows = [{"id": "q0", "video": str(media["good"]), "question": "Q?", "options": ["a", "b"],
             "answer": "B"}]
    ann = _hub_parquet(tmp_path / "rows.parquet", rows, embed=False)
    [row] = list(read_source("parquet", str(ann), str(media["root"])))
    assert row["video"] == str(media["good"].resolve()) and row["answer"] == "B"
    outside = _hub_parquet(tmp_path / "embedded.parquet", rows, embed=True)
    [reject] = list(read_source("parquet", str(outside), str(media["root"])))
    assert isinstance(reject, Reject) and "written out only by ingest" in reject.detail
    raw = json.loads(json.loads(reject.to_row()["meta"])["raw"])  # the clip's size, not bytes
    assert raw["video"]["bytes"] == f"<{media['good'].stat().st_size:,} bytes>"
