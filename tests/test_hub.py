"""A Hub-native export: fresh loads after re-exports with the default cache, the card built
with huggingface_hub (features, license, sample, load snippets, recipe), typed media
columns, and pushes with a saved token, to a branch, as a pull request, resumed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import avcurate_cmd
from hub_server import HubServer
from test_filters import row, scored_recipe

from avcurate.hub.export import export_run
from avcurate.hub.licenses import LicenseError, check_license
from avcurate.hub.options import ExportError
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.runner import Runner

datasets = pytest.importorskip("datasets")
SECRET = "hf_SECRET_token_0123456789"

LOAD = """
import json, sys, datasets
out = {}
for config in sys.argv[2:]:
    ds = datasets.load_dataset(sys.argv[1], config)
    out[config] = {split: [len(d), sorted(d["id"])[0], round(sum(d["composite_score"]), 6)]
                   for split, d in ds.items()}
print(json.dumps(out))
"""


def _load_fresh(folder: Path, hf_home: Path, *configs: str) -> dict:
    """load_dataset in a new process with the default cache under one shared HF_HOME."""
    env = os.environ | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
                        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_DATASETS_CACHE", None)
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), *configs],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _other_run(tmp_path: Path, n: int, comp: float) -> Path:
    rows = ([row(f"x{i:02d}", "speech", vd=0.9, ad=0.9, comp=comp, video="clips/good.mp4")
             for i in range(n)]
            + [row(f"y{i:02d}", "music", vd=0.2, comp=comp, video="clips/good2.mp4")
               for i in range(n)])
    stages = [StageSpec("threshold"), StageSpec("subset")]
    folder = tmp_path / f"other-{n}-{comp}"
    folder.mkdir()
    (folder / "clips").mkdir()
    for clip in (tmp_path / "clips").iterdir():
        (folder / "clips" / clip.name).write_bytes(clip.read_bytes())
    Runner(scored_recipe(folder, rows, stages), folder / "run", show_progress=False).run()
    return folder / "run"


def test_reexports_load_fresh_with_the_default_cache(balanced_run, tmp_path):
    out, hf_home = tmp_path / "export", tmp_path / "hf-home"
    configs = ("default", "audio_visual")
    export_run(balanced_run, out, val_fraction=0.1, split_by="id")
    first = _load_fresh(out, hf_home, *configs)
    assert first["default"]["train"][0] == 72 and first["audio_visual"]["train"][0] == 54
    other = _other_run(tmp_path, 20, 0.8)
    export_run(other, out, val_fraction=0.1, split_by="id")  # the same folder, the same HF_HOME
    second = _load_fresh(out, hf_home, *configs)
    assert {c: {s: v[0] for s, v in d.items()} for c, d in second.items()} == {
        "default": {"train": 36, "validation": 4}, "audio_visual": {"train": 18, "validation": 2}}
    assert second["default"]["train"][1].startswith("jsonl:scored/x")
    # same rows and ids, only a score changed: still the current export
    same_ids = _other_run(tmp_path, 20, 0.9)
    export_run(same_ids, out, val_fraction=0.1, split_by="id")
    third = _load_fresh(out, hf_home, *configs)
    assert third["default"]["train"][:2] == second["default"]["train"][:2]
    assert third["default"]["train"][2] == pytest.approx(36 * 0.9)
    export_run(balanced_run, out, val_fraction=0.1, split_by="id")  # back to the first: its rows again
    assert _load_fresh(out, hf_home, *configs) == first


def test_card_is_a_valid_dataset_card_with_features_and_body(balanced_run, tmp_path):
    from huggingface_hub import DatasetCard

    out = tmp_path / "export"
    result = export_run(balanced_run, out, license="CC-BY-4.0", pretty_name="Speech and music",
                        language="en,zh", repo_id="me/av-data", copy_media="copy",
                        split_by="id")
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["pretty_name"] == "Speech and music"
    assert data["language"] == ["en", "zh"] and data["size_categories"] == ["n<1K"]
    assert "video-text-to-text" in data["task_categories"] and "audio-visual" in data["tags"]
    assert [c["config_name"] for c in data["configs"]] == ["default", "audio_visual"]
    assert all(result.fingerprint in c["description"] for c in data["configs"])
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    features = {f["name"]: f for f in infos["default"]["features"]}
    assert features["options"] == {"name": "options", "list": "string"}
    assert features["composite_score"]["dtype"] == "float64"
    assert features["question"]["dtype"] == "string" and features["video"]["dtype"] == "string"
    assert {s["name"]: s["num_examples"] for s in infos["audio_visual"]["splits"]} == {
        "train": 57, "validation": 3}
    # what datasets reads from the card agrees with the data files
    info = datasets.load_dataset_builder(str(out), "audio_visual",
                                         cache_dir=str(tmp_path / "c")).info
    assert info.splits["train"].num_examples == 57
    assert pq.read_schema(out / "data/train-00000-of-00001.parquet").names == list(features)
    text = card.text
    assert "load_dataset('me/av-data', 'audio_visual')" in text
    assert "load_dataset('me/av-data', 'default')" in text
    sample = json.loads(text.split("## A sample record")[1].split("```json")[1].split("```")[0])
    first = pq.read_table(out / "data/train-00000-of-00001.parquet").slice(0, 1).to_pylist()[0]
    assert sample == first
    for part in ("Stage funnel", "| 01-threshold |", "Filters and their settings",
                 "min_count = 5", "Categories before and after", "Score summary", "## Columns",
                 "../videos/", "are included under `videos/`"):
        assert part in text, part
    recipe = tomllib.loads(text.split("```toml")[1].split("```")[0])
    assert [s["name"] for s in recipe["stages"]] == ["threshold", "balance", "subset"]
    assert recipe["sources"][0]["annotations"] == "scored.jsonl"  # relative to the run's parent
    assert str(tmp_path) not in (out / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    ({"license": "cc-by-99"}, "not a Hub license id"),
    ({"license": "0BSD"}, "0BSD is a valid SPDX id the Hub does not list"),
    ({"license": "other"}, "needs --license-name"),
    ({"license": "other", "license_name": "My Terms", "license_link": "https://x"},
     "lower-case slug"),
    ({"license": "other", "license_name": "terms", "license_link": "ftp.example"},
     "must be a URL"),
    ({"license": "mit", "license_name": "x"}, "go with --license other only"),
    ({"language": "english!"}, "not a language code"),
    ({"val_fraction": 1.0}, "--val-fraction"),
    ({"colour": "red"}, "unknown export option"),
    ({"repo_id": "av-data"}, "must be ORG/NAME"),
    ({"repo_id": "me/av data"}, "not a Hub repo id"),
    ({"repo_id": "me/av..data"}, "not a Hub repo id"),
])
def test_bad_export_options_stop_before_writing(balanced_run, tmp_path, args, message):
    out = tmp_path / "export"
    with pytest.raises((ExportError, LicenseError), match=message):
        export_run(balanced_run, out, **args)
    assert not out.exists()


def _export_recipe(tmp_path: Path, export: str, media: dict | None = None) -> Path:
    """validate over one row (of a real clip, with `media`) then the [export] table given."""
    ann = tmp_path / "a.jsonl"
    ann.write_text(json.dumps(row("r1", video=str(media["good"]) if media else "r1.mp4")) + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""
[[sources]]
name = "jsonl"
annotations = "{ann}"
media_root = "{media["root"] if media else tmp_path}"

[[stages]]
name = "validate"

[export]
{export}
""")
    return recipe


def test_a_bad_export_table_stops_the_run_before_any_row(tmp_path):
    recipe = _export_recipe(tmp_path, f'out = "{tmp_path / "e"}"\nlicense = "cc-by-99"')
    done = subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run")),
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "[export]: --license 'cc-by-99' is not a Hub license id" in done.stderr
    assert not (tmp_path / "run").exists()


def test_an_export_folder_that_cannot_take_the_export_stops_the_run_before_any_row(tmp_path,
                                                                                    media):
    """Found before the first stage (and by --dry-run), not after the last one."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    for out, why in ((mine, "is not empty (notes.txt) and is not an avcurate export"),
                     (tmp_path, "would hold the run folder itself"),
                     (tmp_path / "run" / "export",
                      f"is inside the run folder {(tmp_path / 'run').resolve()}")):
        recipe = _export_recipe(tmp_path, f'out = "{out}"', media)
        for dry in ([], ["--dry-run"]):
            done = subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run"),
                                               *dry), capture_output=True, text=True)
            assert done.returncode == 2 and done.stderr.count("\n") == 1
            assert f"error: [export] out {out.resolve()} {why}" in done.stderr
            assert not (tmp_path / "run").exists()
    assert (mine / "notes.txt").read_text() == "the user's"
    (mine / "notes.txt").unlink()
    plan = subprocess.run(avcurate_cmd("run", str(recipe := _export_recipe(
        tmp_path, f'out = "{mine}"', media)), "--out", str(tmp_path / "run"), "--dry-run"),
        capture_output=True, text=True)
    assert plan.returncode == 0 and f"After the last stage: export to {mine}" in plan.stdout
    done = subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run")),
                          capture_output=True, text=True)
    assert done.returncode == 0 and (mine / "README.md").is_file(), done.stderr
    # one row: 5% of it makes no validation split, and the run's export says so
    assert "note: no validation split" in done.stdout


def test_license_other_with_name_and_link(balanced_run, tmp_path):
    from huggingface_hub import DatasetCard

    lic = check_license("other", "llava-video-terms", "https://example.org/terms")
    assert lic.card_fields() == {"license": "other", "license_name": "llava-video-terms",
                                 "license_link": "https://example.org/terms"}
    export_run(balanced_run, tmp_path / "e", license="other", license_name="llava-video-terms",
               license_link="https://example.org/terms")
    data = DatasetCard.load(tmp_path / "e/README.md").data
    assert (data.license, data.license_name, data.license_link) == (
        "other", "llava-video-terms", "https://example.org/terms")


def test_cli_license_error_is_one_line(balanced_run, tmp_path):
    done = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out",
                                       str(tmp_path / "e"), "--license", "cc-by-99"),
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "not a Hub license id" in done.stderr and not (tmp_path / "e").exists()


def test_media_features_are_typed_and_resolve_from_the_data_file(balanced_run, tmp_path, media):
    out = tmp_path / "export"
    done = subprocess.run(avcurate_cmd("export", str(balanced_run), "--out", str(out),
                                       "--copy-media", "--media-features"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if importlib.util.find_spec("torchcodec") is None:
        assert "decoding them needs torchcodec" in done.stdout
    for config, folder in (("default", out / "data"), ("audio_visual", out / "data/audio_visual")):
        ds = datasets.load_dataset(str(out), config, cache_dir=str(tmp_path / "c"))["train"]
        assert isinstance(ds.features["video"], datasets.Video)
        raw = ds.cast_column("video", datasets.Video(decode=False))[0]["video"]
        assert raw["bytes"] is None and raw["path"].startswith("../")
        target = (folder / raw["path"]).resolve()
        assert target.parent == (out / "videos").resolve()
        assert target.read_bytes() in (media["good"].read_bytes(), media["good2"].read_bytes())
    card = (out / "README.md").read_text()
    assert "dtype: video" in card and "typed `datasets.Video()`" in card


def test_trainer_reads_export_media_from_the_data_files_folder(balanced_run, tmp_path):
    from avcurate.trainer.data import load_rows

    for typed in (False, True):
        out = tmp_path / f"export-{typed}"
        export_run(balanced_run, out, copy_media="copy", media_features=typed,
                   split_by="id")
        rows = load_rows(out)
        assert all(Path(r["video"]).is_file() and Path(r["video"]).parent == out / "videos"
                   for r in rows)
        subset = load_rows(out / "data/audio_visual")  # a config's folder: its train split
        val = {r["id"] for r in load_rows(out / "data/audio_visual", "validation")}
        assert len(subset) == 57 and len(val) == 3 and not val & {r["id"] for r in subset}
        assert all(Path(r["video"]).parent == out / "videos" for r in subset)


def _rows_the_old_way(file: Path) -> list[dict]:
    """trainer.data.load_rows before rows stayed in Arrow: a dict per row, a resolve per
    relative media path (typed media gave their path)."""
    rows = pq.read_table(file).to_pylist()
    for r in rows:
        for col in ("video", "audio"):
            value = r.get(col)
            value = value.get("path") if isinstance(value, dict) else value
            if value and not Path(value).is_absolute():
                value = str((file.parent / value).resolve())
            if col in r:
                r[col] = value
    return rows


def test_training_rows_stay_in_arrow_and_match_a_dict_per_row(tmp_path):
    """Training keeps a split's rows in Arrow and makes a dict when a step draws one; media
    paths are made absolute once per folder (a resolve per row took 24 s of start-up at
    532k rows). Every row must equal what the dict-per-row way gave, for every kind of
    path: relative through a symlinked folder, with `..`, bare, absolute, empty, null,
    typed; and a folder of files that disagree on a column's type is one line."""
    import pyarrow as pa

    from avcurate.trainer.data import load_rows

    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    data = tmp_path / "set" / "data"
    data.mkdir(parents=True)
    videos = ["../../linked/a.mp4", "../../real/sub/../b c.mp4", "bare.mp4", "/abs/x.mp4",
              "", None, "../../real/a.mp4", "./dot/é.mp4"]
    n = len(videos)
    plain = {"id": [f"r{i}" for i in range(n)], "question": ["q"] * n,
             "options": [["x", "y"]] * n, "answer": ["A"] * n, "video": videos,
             "audio": [None, "../a.wav", *[None] * (n - 2)]}
    pq.write_table(pa.table(plain), data / "train-00000-of-00002.parquet")
    media = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    typed = plain | {"id": [f"t{i}" for i in range(n)],
                     "video": pa.array([None if v is None else {"bytes": None, "path": v}
                                        for v in videos], media)}
    pq.write_table(pa.table(typed), data / "train-00001-of-00002.parquet",
                   row_group_size=3)  # a row group boundary inside the file
    want = [r for f in sorted(data.glob("train-*")) for r in _rows_the_old_way(f)]
    rows = load_rows(tmp_path / "set")
    assert list(rows) == want and len(rows) == 2 * n
    assert [rows[i] for i in range(len(rows))] == want
    assert rows[-1] == want[-1] and rows[3:6] == want[3:6]
    with pytest.raises(IndexError):
        rows[len(rows)]
    assert rows[0]["video"] == str(tmp_path / "real" / "a.mp4")  # its folder resolved
    assert rows[3]["video"] == "/abs/x.mp4" and rows[4]["video"] == "" and rows[5]["video"] is None
    pq.write_table(pa.table(plain | {"answer": [1] * n}),
                   data / "train-00002-of-00003.parquet")
    with pytest.raises(ValueError, match="its files disagree on their columns' types"):
        load_rows(tmp_path / "set")


def _push(run: Path, out: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(avcurate_cmd("export", str(run), "--out", str(out), "--copy-media",
                                       "--push", *args),
                          capture_output=True, text=True, env=env, timeout=180)


def test_push_with_a_saved_token_to_a_branch_and_as_a_pull_request(balanced_run, tmp_path):
    out = tmp_path / "export"
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    (hf_home / "token").write_text(SECRET)  # where `hf auth login` saves it
    with HubServer() as hub:
        env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"} | {
            "HF_HOME": str(hf_home), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        first = _push(balanced_run, out, env, "--repo-id", "me/av")
        assert first.returncode == 0, first.stderr
        local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                 if p.is_file() and not p.name.startswith(".avcurate")}
        assert hub.files == local
        assert all(auth == f"Bearer {SECRET}" for _, _, auth in hub.log)
        branch = _push(balanced_run, out, env, "--repo-id", "me/av", "--revision", "dev")
        assert branch.returncode == 0, branch.stderr
        assert f"{hub.url}/datasets/me/av/tree/dev" in branch.stdout.replace("\n", "")
        pr = _push(balanced_run, out, env, "--repo-id", "me/av", "--create-pr")
        assert pr.returncode == 0, pr.stderr
        both = _push(balanced_run, out, env, "--repo-id", "me/av", "--create-pr", "--revision", "dev")
    # unchanged files are not sent again: the branch and the PR got no file commits
    assert [rev for rev, paths in hub.commits if paths] == ["main"]
    assert "dev" in hub.refs and hub.refs["dev"] == hub.files
    assert both.returncode == 2 and "drop --revision" in both.stderr
    for done in (first, branch, pr, both):
        assert SECRET not in done.stdout + done.stderr


def test_a_malformed_repo_id_stops_the_push_before_the_export_is_written(balanced_run,
                                                                         tmp_path):
    """Once the export was written and then huggingface_hub's validation error printed as
    a traceback; now one line, before any file."""
    out = tmp_path / "export"
    env = os.environ | {"HF_TOKEN": SECRET, "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = _push(balanced_run, out, env, "--repo-id", "me/av data")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "not a Hub repo id" in done.stderr
    assert not out.exists()


def test_an_interrupted_push_resumes_with_what_is_missing(balanced_run, tmp_path, monkeypatch):
    from avcurate.hub import push as push_mod

    out = tmp_path / "export"
    export_run(balanced_run, out, copy_media="copy", max_shard_bytes=3000)
    monkeypatch.setattr(push_mod, "LARGE_FILES", 3)  # this export counts as large
    with HubServer() as hub:
        monkeypatch.setenv("HF_TOKEN", SECRET)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        import huggingface_hub.constants as hc

        monkeypatch.setattr(hc, "ENDPOINT", hub.url)
        first = push_mod.push(out, "me/big")
        everything = dict(hub.files)
        shards = sorted(p for p in everything if p.startswith("data/train-"))
        assert len(shards) > 3 and first.files == len(everything)
        for lost in shards[1:]:  # as if the push had died after its first commits
            del hub.files[lost]
        hub.commits.clear()
        again = push_mod.push(out, "me/big")
    assert again.large == (importlib.util.find_spec("hf_xet") is not None)
    assert hub.files == everything
    assert sorted(p for _, paths in hub.commits for p in paths) == shards[1:]
