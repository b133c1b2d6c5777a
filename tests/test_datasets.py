"""Every dataset the README names, read as its authors ship it.

Each README `[[sources]]` entry is run as written (ingest + validate) over records shaped
like the published files (field names, nesting, value styles) and PyAV-made clips at the
release's real relative paths: every question must come through with its media found.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avcurate.media import synth
from avcurate.pipeline.recipe import Recipe, RecipeError, StageSpec
from tests.helpers import read_stage, run

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| ([^|]+?) \| `(\{.*\})` \|$")
LETTERS_HINT = "Answer with the option's letter from the given choices directly."


def readme_sources() -> dict[str, dict]:
    rows = {}
    for line in README.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = tomllib.loads(f"s = {m.group(2)}")["s"]
    return rows


def clip(path: Path, color: str = "red", freq: float = 440.0, audio: bool = True) -> None:
    synth.write_clip(path, seconds=1.5, size=(64, 48), color=color, freq=freq, audio=audio)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def mc(question: str, options: list[str]) -> str:
    return "<image>\n" + question + "\n" + "\n".join(
        f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)) + "\n" + LETTERS_HINT


def llava(bucket: Path, kind: str) -> int:
    """One bucket of LLaVA-Video-178K: the clip id names the clip, several records per clip,
    and the mc and oe files share clips and ids."""
    vid = "academic_source/activitynet/v_JDg6Nt0xBfw.mp4"
    if not (bucket / vid).exists():
        clip(bucket / vid)
    if kind == "mc":
        records = [
            {"id": "v_JDg6Nt0xBfw", "data_source": "0_30_s_academic_v0_1", "video": vid,
             "conversations": [{"from": "human", "value": mc("What color is the square?",
                                                              ["blue", "red", "green", "white"])},
                               {"from": "gpt", "value": "B."}]},
            {"id": "v_JDg6Nt0xBfw", "data_source": "0_30_s_academic_v0_1", "video": vid,
             "conversations": [{"from": "human", "value": mc("What does the tone sound like?",
                                                              ["a beep", "speech", "a dog"])},
                               {"from": "gpt", "value": "A"}]},
        ]
    else:
        records = [{"id": "v_JDg6Nt0xBfw", "data_source": "0_30_s_academic_v0_1", "video": vid,
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat is shown in the video?"},
                        {"from": "gpt", "value": "A red square on a plain background."},
                        {"from": "human", "value": "What can be heard?"},
                        {"from": "gpt", "value": "A steady tone."}]}]
    prefix = bucket.name.removesuffix("_v0_1")  # each bucket's files are named for it
    write_json(bucket / f"{prefix}_{kind}_v0_1_qa_processed.json", records)
    return 2 if kind == "mc" else 2


def llava_all(root: Path) -> int:
    """Two buckets of LLaVA-Video-178K, each with its mc and oe files, its clips beside them
    (under the same relative path), and a caption file the glob leaves out."""
    count = 0
    for bucket in ("0_30_s_academic_v0_1", "30_60_s_youtube_v0_1"):
        folder = root / "LLaVA-Video-178K" / bucket
        count += llava(folder, "mc") + llava(folder, "oe")
        write_json(folder / f"{bucket.removesuffix('_v0_1')}_cap_processed.json", [{}])
    return count


def video_vista_bench(root: Path) -> int:
    """VideoVista.json: integer answers, videos under merged/<category>/<group>/."""
    clip(root / "VideoVista/merged/Howto/2/aJ3kT9qWxYz.2.mp4")
    clip(root / "VideoVista/merged/Film/0/bB8nQ2rLmPo.0.mp4", color="blue")
    write_json(root / "VideoVista/VideoVista.json", [
        {"question_id": 0, "Type": "Objects Count", "time": 95, "category": "Howto",
         "Question": "How many squares appear in the video?", "Answer_Choices": ["1", "2", "3", "4"],
         "Answer": 0, "video_name": "aJ3kT9qWxYz.2.mp4"},
        {"question_id": 1, "Type": "Event Description", "time": 95, "category": "Howto",
         "Question": "What happens in the video?", "Answer_Choices": [
             "A square moves while a tone plays", "Nothing moves", "A dog barks", "It rains"],
         "Answer": 0, "video_name": "aJ3kT9qWxYz.2.mp4"},
        {"question_id": 2, "Type": "Brief Description", "time": 12, "category": "Movie",
         "Question": "What color is the square?", "Answer_Choices": ["red", "blue"],
         "Answer": 1, "video_name": "bB8nQ2rLmPo.0.mp4"},  # filed under another category
    ])
    return 3


def video_vista_train(root: Path) -> int:
    clip(root / "VideoVista_Train/videos/clips/7.mp4")
    write_json(root / "VideoVista_Train/train.json", [
        {"id": 7, "video": "clips/7.mp4", "Type": "Event Location",
         "conversations": [{"from": "human", "value": "<video>\nWhere is the square?\nA. left\nB. "
                                                      "centre"},
                           {"from": "gpt", "value": "centre"}]}])
    return 1


AVQA_RECORDS = [
    {"id": 183, "video_name": "-HG3Omg_89c_000030", "video_id": 341,
     "question_text": "What is the main sound source of the video?",
     "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
     "answer": 0, "question_relation": "View", "question_type": "Come From"},
    {"id": 184, "video_name": "-HG3Omg_89c_000030", "video_id": 341,
     "question_text": "What happened in the video?",
     "multi_choice": ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"],
     "answer": 2, "question_relation": "Both", "question_type": "Happening"},
]


def avqa(root: Path) -> int:
    clip(root / "AVQA/videos/-HG3Omg_89c_000030.mp4")
    write_json(root / "AVQA/train_qa.json", AVQA_RECORDS)
    return 2


def avqa_r1(root: Path) -> int:
    """R1-AQA's one-object-per-line AVQA, whose audio_path names a separate wav."""
    clip(root / "AVQA/videos/-HG3Omg_89c_000030.mp4")
    wav = synth.write_wav(root / "AVQA/wav/-HG3Omg_89c_30.wav", synth.tone(1.5, 300.0))
    lines = [AVQA_RECORDS[0] | {"dataset_name": "AVQA", "audio_path": str(wav)},
             AVQA_RECORDS[1] | {"dataset_name": "AVQA", "audio_path": "-HG3Omg_89c_30.wav"}]
    path = root / "AVQA/r1-aqa/train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return 2


def daily_omni(root: Path) -> int:
    clip(root / "Daily-Omni/Videos/1pUaZRZkVT4/1pUaZRZkVT4_video.mp4")
    synth.write_wav(root / "Daily-Omni/Videos/1pUaZRZkVT4/1pUaZRZkVT4_audio.wav",
                    synth.tone(1.5, 440.0))
    write_json(root / "Daily-Omni/qa.json", [
        {"Question": "What plays while the square moves?", "Choice": [
            "A. A tone", "B. Speech", "C. Silence", "D. Drums"], "Answer": "A",
         "video_id": "1pUaZRZkVT4", "Type": "AV Event Alignment", "video_category": "Education",
         "video_duration": "30s"},
        {"Question": "What color is the square?", "Choice": [
            "A. Green", "B. Red", "C. Blue", "D. Black"], "Answer": "B",
         "video_id": "1pUaZRZkVT4", "Type": "Context understanding",
         "video_category": "Education", "video_duration": "30s"},
    ])
    return 2


def music_avqa(root: Path) -> int:
    data = root / "MUSIC-AVQA/data"
    clip(data / "MUSIC-AVQA-videos-Real/00000272.mp4")
    clip(data / "MUSIC-AVQA-videos-Synthetic/00006000.mp4", color="green")
    write_json(data / "json/avqa-train.json", [
        {"video_id": "00000272", "question_id": 17, "type": "[\"Audio\", \"Counting\"]",
         "question_content": "How many instruments are sounding in the video?",
         "templ_values": "[]", "question_deleted": 0, "anser": "one"},
        {"video_id": "00000272", "question_id": 18, "type": "[\"Audio-Visual\", \"Existential\"]",
         "question_content": "Is the <Object> in the video always playing?",
         "templ_values": "[\"cello\"]", "question_deleted": 0, "anser": "yes"},
        {"video_id": "00006000", "question_id": 19, "type": "[\"Visual\", \"Location\"]",
         "question_content": "Where is the <FL> sounding <Object>?",
         "templ_values": "['first', 'violin']", "question_deleted": 0, "anser": "left"},
    ])
    return 3


def video_mme(root: Path) -> int:
    clip(root / "Video-MME/data/fFjv93ACGo8.mp4")
    table = pa.table({
        "video_id": ["001", "001"], "duration": ["short", "short"],
        "domain": ["Knowledge", "Knowledge"], "sub_category": ["Humanity & History"] * 2,
        "url": ["https://www.youtube.com/watch?v=fFjv93ACGo8"] * 2,
        "videoID": ["fFjv93ACGo8"] * 2, "question_id": ["001-1", "001-2"],
        "task_type": ["Counting Problem", "Object Recognition"],
        "question": ["How many squares are shown?", "What moves across the frame?"],
        "options": [["A. One.", "B. Two.", "C. Three.", "D. Four."],
                    ["A. A ball.", "B. A square.", "C. A car.", "D. Nothing."]],
        "answer": ["A", "B"],
    })
    path = root / "Video-MME/videomme/test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return 2


WORLDSENSE = {
    "Zb3C8XrAR2o": {
        "duration": 30, "domain": "Tech & Science", "sub_category": "Science",
        "audio_class": ["Event"], "video_caption": "A square moves while a tone plays.",
        "task0": {"question": "What sound plays?", "candidates": [
            "A. A tone.", "B. A voice.", "C. Music.", "D. Nothing."], "answer": "A",
                  "task_domain": "Recognition", "task_type": "Audio Recognition"},
        "task1": {"question": "Which color is the square while the sound plays?", "candidates": [
            "A. Red.", "B. Blue.", "C. Green.", "D. Grey."], "answer": "A",
                  "task_domain": "Reasoning", "task_type": "Audio-Visual Alignment"},
    },
}


def worldsense(root: Path) -> int:
    clip(root / "WorldSense/videos/Zb3C8XrAR2o.mp4")
    synth.write_wav(root / "WorldSense/audios/Zb3C8XrAR2o.wav", synth.tone(1.5, 440.0))
    write_json(root / "WorldSense/worldsense_qa.json", WORLDSENSE)
    return 2


def own_jsonl(root: Path) -> int:
    clip(root / "mine/clips/c1.mp4")
    path = root / "mine/qa.jsonl"
    path.write_text(json.dumps({"clip": "c1", "q": "What color?", "choices": ["red", "blue"],
                                "label": 0}) + "\n")
    return 1


def own_csv(root: Path) -> int:
    """NExT-QA's columns: the video id (zeros kept), five options, the answer's position."""
    for video in ("0007", "4010069381"):
        clip(root / f"mine/videos/{video}.mp4")
    (root / "mine").mkdir(exist_ok=True)
    (root / "mine/train.csv").write_text(
        "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
        "0007,45,64,48,what is red,0,1,DO,the square,the sky,grass,water,sand\n"
        '4010069381,45,64,48,"what plays, at the start",3,2,TP,drum,piano,voice,tone,\n')
    return 2


def own_nested(root: Path) -> int:
    clip(root / "nested/videos/Zb3C8XrAR2o.mp4")
    write_json(root / "nested/videos.json", WORLDSENSE)
    return 2


BUILDERS: dict[str, Callable[[Path], int]] = {
    "LLaVA-Video-178K (mc)": lambda r: llava(r / "LLaVA-Video-178K/0_30_s_academic_v0_1", "mc"),
    "LLaVA-Video-178K (oe)": lambda r: llava(r / "LLaVA-Video-178K/0_30_s_academic_v0_1", "oe"),
    "LLaVA-Video-178K (every bucket)": llava_all,
    "Video-Vista (benchmark)": video_vista_bench,
    "Video-Vista (training)": video_vista_train,
    "AVQA": avqa,
    "AVQA, R1-AQA lines": avqa_r1,
    "Daily-Omni": daily_omni,
    "MUSIC-AVQA": music_avqa,
    "Video-MME": video_mme,
    "WorldSense": worldsense,
    "your JSON lines": own_jsonl,
    "your nested JSON": own_nested,
    "your CSV (NExT-QA's columns)": own_csv,
}


def test_readme_lists_every_catalog():
    from avcurate.catalogs import CATALOGS

    listed = readme_sources()
    assert set(listed) == set(BUILDERS)
    assert {s["name"] for s in listed.values()} == set(CATALOGS) - {"parquet"}


@pytest.mark.parametrize("dataset", list(BUILDERS))
def test_readme_source_reads_the_release(tmp_path, dataset):
    expected = BUILDERS[dataset](tmp_path)
    recipe = Recipe.from_dict({"run": {"shard_size": 8, "workers": 1},
                               "sources": [readme_sources()[dataset]],
                               "stages": [{"name": "validate"}]}, base=tmp_path)
    run(recipe, tmp_path / "run")
    ingested, ingest_rejects = read_stage(tmp_path / "run", "00")
    kept, rejected = read_stage(tmp_path / "run", "01")
    assert ingest_rejects.num_rows == 0, ingest_rejects.column("reject_detail").to_pylist()
    assert rejected.num_rows == 0, rejected.select(["id", "reject_detail"]).to_pylist()
    assert kept.num_rows == expected
    ids = kept.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    for row in kept.to_pylist():
        assert Path(row["video"]).is_file() and row["question"] and row["answer"]
        assert "<" not in row["question"]  # no <image>, <Object> placeholders left
        if row["options"]:
            assert row["answer"] in "ABCDEFGH"[:len(row["options"])]
            assert not re.match(r"^[A-D][.)] ", row["options"][0])  # letter prefix removed
    # reading again gives the same ids
    run(recipe, tmp_path / "again")
    assert read_stage(tmp_path / "again", "01")[0].column("id").to_pylist() == ids


def test_two_files_of_one_source_need_their_own_tag(tmp_path):
    a, b = tmp_path / "a/train.json", tmp_path / "b/train.json"
    for p in (a, b):
        write_json(p, [])
    spec = {"name": "avqa", "media_root": str(tmp_path)}
    with pytest.raises(RecipeError, match="set tag"):
        Recipe.from_dict({"sources": [spec | {"annotations": str(a)},
                                      spec | {"annotations": str(b)}]})
    Recipe.from_dict({"sources": [spec | {"annotations": str(a)},
                                  spec | {"annotations": str(b), "tag": "b-train"}]})


def test_a_glob_of_annotation_files_is_one_source_each_with_media_beside_each(tmp_path):
    """LLaVA-Video-178K ships ~40 annotation files, one folder per bucket with its clips:
    one [[sources]] table with a glob reads them all, each with its own folder as media
    root, in a fixed order."""
    llava_all(tmp_path)
    spec = readme_sources()["LLaVA-Video-178K (every bucket)"]
    recipe = Recipe.from_dict({"sources": [spec]}, base=tmp_path)
    root = tmp_path / "LLaVA-Video-178K"
    assert [(Path(s.annotations).relative_to(root).as_posix(), s.media_root)
            for s in recipe.sources] == [
        ("0_30_s_academic_v0_1/0_30_s_academic_mc_v0_1_qa_processed.json",
         str(root / "0_30_s_academic_v0_1")),
        ("0_30_s_academic_v0_1/0_30_s_academic_oe_v0_1_qa_processed.json",
         str(root / "0_30_s_academic_v0_1")),
        ("30_60_s_youtube_v0_1/30_60_s_youtube_mc_v0_1_qa_processed.json",
         str(root / "30_60_s_youtube_v0_1")),
        ("30_60_s_youtube_v0_1/30_60_s_youtube_oe_v0_1_qa_processed.json",
         str(root / "30_60_s_youtube_v0_1"))]
    recipe.stages = [StageSpec("validate")]
    run(recipe, tmp_path / "run")
    kept, rejected = read_stage(tmp_path / "run", "01")
    assert rejected.num_rows == 0 and kept.num_rows == 8
    for row in kept.to_pylist():  # each file's clip from its own bucket
        tag = row["id"].split(":", 1)[1].split("/")[0]
        bucket = re.sub(r"_(mc|oe)_v0_1_qa_processed$", "_v0_1", tag)
        assert row["video"].startswith(f"{root / bucket}/"), row


@pytest.mark.parametrize("spec, message", [
    ({"annotations": "LLaVA-Video-178K/*/*_qa.json"},
     r"no annotation file matches 'LLaVA-Video-178K/\*/\*_qa.json' \(looked for /"),
    ({"tag": "all"}, r"matches 4 files, which cannot share one tag"),
    ({"media_root": 3}, r"a \[\[sources\]\] table's name, annotations and media_root are text"),
])
def test_a_glob_that_cannot_be_read_is_refused_when_the_recipe_loads(tmp_path, spec, message):
    llava_all(tmp_path)
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({"sources": [readme_sources()["LLaVA-Video-178K (every bucket)"]
                                      | spec]}, base=tmp_path)


def test_a_file_read_twice_as_one_source_is_refused(tmp_path):
    """A glob matching a file another table names already ingested its rows twice, under
    the same ids."""
    write_json(tmp_path / "train.json", [])
    write_json(tmp_path / "val.json", [])
    spec = {"name": "avqa", "media_root": "."}
    with pytest.raises(RecipeError, match=r"train.json is read twice as source 'avqa'"):
        Recipe.from_dict({"sources": [spec | {"annotations": "train.json"},
                                      spec | {"annotations": "*.json"}]}, base=tmp_path)
    Recipe.from_dict({"sources": [spec | {"annotations": "train.json"},
                                  spec | {"annotations": "v*.json"}]}, base=tmp_path)


def test_a_glob_matching_two_files_of_one_name_is_refused(tmp_path):
    for folder in ("a", "b"):
        write_json(tmp_path / folder / "train.json", [])
    with pytest.raises(RecipeError, match=r"'\*/train.json' matches .*/a/train.json and "
                       r".*/b/train.json, whose sample ids would be the same"):
        Recipe.from_dict({"sources": [{"name": "avqa", "annotations": "*/train.json",
                                       "media_root": "{annotations_dir}"}]}, base=tmp_path)


def test_a_file_whose_name_looks_like_a_glob_is_that_file(tmp_path):
    """A name with brackets (or a run's stored recipe naming it) is not a pattern."""
    ann = tmp_path / "train[1].json"
    write_json(ann, [])
    write_json(tmp_path / "train1.json", [])
    recipe = Recipe.from_dict({"sources": [{"name": "avqa", "annotations": "train[1].json",
                                            "media_root": "."}]}, base=tmp_path)
    assert [s.annotations for s in recipe.sources] == [str(ann)]
    ann.unlink()  # a run's stored recipe names files already matched: never a pattern again
    stored = Recipe.from_dict(recipe.to_dict(), stored=True)
    assert [s.annotations for s in stored.sources] == [str(ann)]


def _read(name, ann, root, **kw):
    from avcurate.catalogs import Reject, read_source

    items = list(read_source(name, str(ann), str(root), **kw))
    return ([x for x in items if not isinstance(x, Reject)],
            {x.raw_id: x for x in items if isinstance(x, Reject)})


@pytest.mark.parametrize(("name", "records", "field"), [
    ("avqa", [AVQA_RECORDS[0] | {"answer": None}], "answer is missing (null)"),
    ("avqa", [{k: v for k, v in AVQA_RECORDS[0].items() if k != "question_text"}],
     "missing field(s) 'question_text'"),
    ("daily-omni", [{"Question": None, "Choice": ["A. x", "B. y"], "Answer": "A",
                     "video_id": "v"}], "Question is missing (null)"),
    ("daily-omni", [{"Question": "Q?", "Choice": ["A. x", "B. y"], "Answer": ["A", "B"],
                     "video_id": "v"}], "Answer is a list of 2 answers"),
    ("daily-omni", [{"Question": "Q?", "Choice": ["A. x", "B. y"], "Answer": {"A": 1},
                     "video_id": "v"}], "Answer must be text, not dict"),
    ("video-vista", [{"id": 1, "video": "a.mp4", "conversations": [
        {"from": "human", "value": "Q?"}, {"from": "gpt", "value": None}]}],
     "conversations[1].value is missing (null)"),
    ("video-vista", [{"question_id": 3, "Question": "Q?", "Answer_Choices": ["x", "y"],
                      "Answer": None, "video_name": "a.0.mp4"}], "Answer is missing (null)"),
    ("music-avqa", [{"video_id": "1", "question_id": 1, "question_content": "Q?",
                     "templ_values": "[]", "anser": None}], "anser is missing (null)"),
    ("music-avqa", [{"video_id": "1", "question_id": 1,
                     "question_content": "Is the <Object> left of the <Object>?",
                     "templ_values": "['cello']", "anser": "no"}],
     "2 placeholder(s) but templ_values gives 1"),
    ("jsonl", [{"video": "a.mp4", "question": "Q?"}], "no 'answer' field"),
    ("jsonl", [{"video": "a.mp4", "question": 7, "answer": "x"}], "question must be text"),
])
def test_a_missing_or_bad_question_or_answer_is_malformed(tmp_path, name, records, field):
    ann = tmp_path / "ann.json"
    write_json(ann, records)
    rows, rejects = _read(name, ann, tmp_path)
    assert not rows
    [reject] = rejects.values()
    assert reject.reason == "malformed_annotation"
    assert field in reject.detail


def test_worldsense_rejects_one_task_not_the_video(tmp_path):
    data = json.loads(json.dumps(WORLDSENSE))
    data["Zb3C8XrAR2o"]["task1"]["answer"] = None
    data["empty"] = {"duration": 3, "domain": "x"}
    write_json(tmp_path / "qa.json", data)
    rows, rejects = _read("worldsense", tmp_path / "qa.json", tmp_path)
    assert [r["id"] for r in rows] == ["worldsense:qa/Zb3C8XrAR2o/task0"]
    assert "task1: answer is missing (null)" in rejects["worldsense:qa/Zb3C8XrAR2o/task1"].detail
    assert "has no task0" in rejects["worldsense:qa/1"].detail


def test_music_avqa_deleted_questions_are_rejected_with_their_reason(tmp_path):
    write_json(tmp_path / "avqa-val.json", [
        {"video_id": "00000001", "question_id": 5, "question_content": "Q?",
         "templ_values": "[]", "question_deleted": 1, "anser": "yes"}])
    rows, rejects = _read("music-avqa", tmp_path / "avqa-val.json", tmp_path)
    assert not rows
    assert rejects["music-avqa:avqa-val/5"].reason == "excluded_by_source"


def test_explode_a_list_and_a_template_field_the_record_lacks(tmp_path):
    write_json(tmp_path / "n.json", [
        {"vid": "a", "questions": [{"q": "Q1?", "answer": "x"}, {"q": "Q2?", "answer": "y"}]},
        {"questions": [{"q": "Q3?", "answer": "z"}]},
    ])
    rows, rejects = _read("jsonl", tmp_path / "n.json", tmp_path, explode="questions",
                          columns={"video": "clips/{vid}.mp4", "question": "q"})
    assert [(r["id"], r["question"], r["video"]) for r in rows] == [
        ("jsonl:n/0/0", "Q1?", str(tmp_path / "clips/a.mp4")),
        ("jsonl:n/0/1", "Q2?", str(tmp_path / "clips/a.mp4"))]
    [bad] = rejects.values()
    assert "video path 'clips/{vid}.mp4' needs the field 'vid'" in bad.detail


@pytest.mark.parametrize(("options", "message"), [
    ({"colums": {}}, "has no option 'colums'; did you mean 'columns'?"),
    ({"columns": {"video": "{a.__class__}.mp4"}}, "plain names only"),
    ({"columns": {"questoin": "q"}}, "cannot map questoin"),
    ({"tag": "a/b"}, "tag must be a short name"),
])
def test_source_options_are_checked_before_any_record(tmp_path, options, message):
    spec = {"name": "jsonl", "annotations": "x.jsonl", "media_root": "."}
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict({"sources": [spec | options]}, base=tmp_path)
    assert message in str(info.value)
    with pytest.raises(RecipeError, match="no option 'explode'"):
        Recipe.from_dict({"sources": [spec | {"name": "avqa", "explode": "x"}]}, base=tmp_path)


def test_mc_and_oe_files_of_a_bucket_keep_every_question_and_dedup_finds_true_duplicates(
        tmp_path):
    bucket = tmp_path / "LLaVA-Video-178K/0_30_s_academic_v0_1"
    llava(bucket, "mc")
    llava(bucket, "oe")
    mc_file = bucket / "0_30_s_academic_mc_v0_1_qa_processed.json"
    records = json.loads(mc_file.read_text())
    write_json(mc_file, records + [records[0]])  # the same question again: a true duplicate
    sources = [readme_sources()[f"LLaVA-Video-178K ({k})"] for k in ("mc", "oe")]
    recipe = Recipe.from_dict({"run": {"shard_size": 4, "workers": 1}, "sources": sources,
                               "stages": [{"name": "validate"}, {"name": "dedup"}]},
                              base=tmp_path)
    run(recipe, tmp_path / "run")
    validated, rejected = read_stage(tmp_path / "run", "01")
    assert rejected.num_rows == 0 and validated.num_rows == 5  # 3 mc + 2 oe turns
    kept, dup = read_stage(tmp_path / "run", "02")
    assert kept.num_rows == 4
    assert dup.column("reject_reason").to_pylist() == [
        "duplicate_of:llava-video:0_30_s_academic_mc_v0_1_qa_processed/0-v_JDg6Nt0xBfw"]
