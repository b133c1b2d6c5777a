"""threshold / balance / subset / dedup on pre-scored rows (columns built directly)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import COLUMNS, imported_modules, read_stage, rows_by_id, run

from avcurate.filters.balance import plan_caps
from avcurate.filters.rules import RuleError, parse_rule
from avcurate.pipeline.recipe import Recipe, SourceSpec, StageSpec
from avcurate.pipeline.runner import RunError

SCORES = {"category": "string", "video_dependency": "double", "audio_dependency": "double",
          "question_logic": "double", "answer_accuracy": "double", "composite_score": "double"}


def row(i, category="A", vd=0.5, ad=0.5, ql=1.0, aa=1.0, comp=0.8, **kw):
    return {"id": i, "video": f"{i}.mp4", "question": f"q {i}", "options": ["x", "y"],
            "answer": "A", "category": category, "video_dependency": vd, "audio_dependency": ad,
            "question_logic": ql, "answer_accuracy": aa, "composite_score": comp} | kw


def scored_recipe(tmp: Path, rows: list[dict], stages: list[StageSpec], shard_size=4,
                  types: dict[str, str] = SCORES) -> Recipe:
    ann = tmp / "scored.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = SourceSpec("jsonl", str(ann), str(tmp), {"columns": COLUMNS, "extra_columns": types})
    return Recipe([source], stages, shard_size=shard_size, workers=1)


def outcome(tmp: Path, rows, stages, prefix="01", types: dict[str, str] = SCORES):
    run(scored_recipe(tmp, rows, stages, types=types), tmp / "run")
    kept, rej = read_stage(tmp / "run", prefix)
    manifest = json.loads((tmp / "run/manifest.json").read_text())
    for s in manifest["stages"]:
        assert s["rows_in"] == s["kept"] + s["rejected"]
    return ({r.split("/", 1)[1] for r in kept.column("id").to_pylist()},
            {r["id"].split("/", 1)[1]: r["reject_reason"] for r in rej.to_pylist()},
            manifest)


# -- threshold ----------------------------------------------------------------------


def test_threshold_defaults_and_first_failed_rule(tmp_path):
    comp_07 = math.nextafter(0.7, 0.0)  # a weighted sum that lands one ulp under 0.7
    rows = [row("ok"), row("edge", ql=0.8, comp=0.7), row("edge_float", ql=8 / 10, comp=comp_07),
            row("acc", aa=0.9, ql=0.1), row("logic", ql=0.79), row("comp", comp=0.69),
            row("null", comp=None)]
    kept, rejected, _ = outcome(tmp_path, rows, [StageSpec("threshold")])
    assert kept == {"ok", "edge", "edge_float"}
    assert rejected == {"acc": "failed(answer_accuracy == 1)", "logic": "failed(question_logic >= 0.8)",
                        "comp": "failed(composite_score >= 0.7)", "null": "failed(composite_score >= 0.7)"}


def test_a_rule_failed_for_want_of_a_value_says_so(tmp_path):
    """A row rejected because the rule's column is null (an open-ended question the probe
    never measured) has a detail saying the value is missing; a row that was measured and
    failed has none, and the reason is the rule either way."""
    rows = [row("measured", ql=0.5), row("unmeasured", ql=None), row("ok")]
    run(scored_recipe(tmp_path, rows, [StageSpec("threshold")]), tmp_path / "run")
    _, rej = read_stage(tmp_path / "run", "01")
    got = {r["id"].split("/", 1)[1]: (r["reject_reason"], r["reject_detail"])
           for r in rej.to_pylist()}
    assert got == {"measured": ("failed(question_logic >= 0.8)", ""),
                   "unmeasured": ("failed(question_logic >= 0.8)",
                                  "question_logic is null: the row has no value to compare")}


def test_threshold_custom_rules(tmp_path):
    rows = [row("a", vd=0.9), row("b", vd=0.2)]
    kept, rejected, _ = outcome(tmp_path, rows, [StageSpec("threshold", {
        "rules": ["video_dependency > 0.5 and audio_dependency >= 0.5"]})])
    assert kept == {"a"} and rejected == {"b": "failed(video_dependency > 0.5)"}


def test_rule_language_is_safe_and_clear(tmp_path):
    assert [str(c) for c in parse_rule("a >= 0.8 AND b == 1")] == ["a >= 0.8", "b == 1"]
    for bad in ["__import__('os') == 1", "a >= b", "a => 1", "a >= 1 or b < 2", ""]:
        with pytest.raises(RuleError):
            parse_rule(bad)
    recipe = scored_recipe(tmp_path, [row("a")], [StageSpec("threshold", {"rules": ["nope >= 1"]})])
    with pytest.raises(RunError, match="nope"):
        run(recipe, tmp_path / "run")


def test_a_stage_that_keeps_no_row_is_a_warning_with_what_its_rows_held(tmp_path):
    """`composite_score >= 7` (a 0-10 habit) against scores that run 0 to 1: the stage is
    done, and the summary says so with the range and the way back."""
    import subprocess

    from conftest import avcurate_cmd

    rows = [row(str(i), comp=c) for i, c in enumerate([0.5, 0.65, 0.9, 0.75])]
    run(scored_recipe(tmp_path, rows, []), tmp_path / "run")

    def threshold(rule, *extra):
        done = subprocess.run(avcurate_cmd("threshold", str(tmp_path / "run"), "--rule", rule,
                                           "-q", *extra), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())

    said = threshold("composite_score >= 7")
    assert "warning: 01-threshold kept none of its 4 rows (4 failed(composite_score >= 7)); " \
           "composite_score ran from 0.5 to 0.9." in said
    assert f"avcurate reset {tmp_path / 'run'} --from 01-threshold" in said
    redone = threshold("composite_score >= 0.7", "--redo")
    assert "warning" not in redone
    # what a redo changes is said: options not given are the command's defaults, not the run's
    assert "--redo runs 01-threshold again; with other settings than 01-threshold was done " \
           "with: threshold.rules: ['composite_score >= 7'] -> ['composite_score >= 0.7']" \
           in redone
    assert "with other settings" not in threshold("composite_score >= 0.7", "--redo")


# -- balance ------------------------------------------------------------------------


def test_plan_caps():
    counts = {"A": 20, "B": 6, "C": 2}
    assert plan_caps(counts, min_count=1, max_ratio=2, cascade=False, max_per_category=0) == \
        {"A": 12, "B": 6, "C": 2}
    assert plan_caps(counts, min_count=1, max_ratio=2, cascade=True, max_per_category=0) == \
        {"A": 8, "B": 4, "C": 2}
    assert plan_caps(counts, min_count=3, max_ratio=2, cascade=False, max_per_category=5) == \
        {"A": 5, "B": 5, "C": 0}


def test_balance_ties_broken_by_id(tmp_path):
    a = [row("a1", comp=0.9), row("a2", comp=0.9)] + [row(f"a{i}", comp=0.8) for i in range(3, 8)]
    b = [row(f"b{i}", "B") for i in range(3)]
    kept, rejected, manifest = outcome(tmp_path, a + b, [StageSpec("balance", {
        "min_count": 2, "max_ratio": 2})])
    assert kept == {"a1", "a2", "a3", "a4", "a5", "a6", "b0", "b1", "b2"}
    assert rejected == {"a7": "over_cap"}
    stage = manifest["stages"][1]
    assert stage["categories_before"] == {"A": 7, "B": 3}
    assert stage["categories_after"] == {"A": 6, "B": 3}


def test_balance_both_dependency_rows_first_even_beyond_the_cap(tmp_path):
    both = [row(f"v{i}", vd=1.0, ad=1.0, comp=0.5 + i / 100) for i in range(8)]  # v7 best
    others = [row("hi1", comp=1.0), row("hi2", comp=1.0)]
    b = [row(f"b{i}", "B") for i in range(3)]
    kept, rejected, _ = outcome(tmp_path, both + others + b, [StageSpec("balance", {
        "min_count": 2, "max_ratio": 2})])
    assert kept - {"b0", "b1", "b2"} == {"v2", "v3", "v4", "v5", "v6", "v7"}
    assert rejected == {"v0": "over_cap", "v1": "over_cap", "hi1": "over_cap", "hi2": "over_cap"}


def test_balance_can_order_by_the_measured_dependency(tmp_path):
    """With dependency = measured, the probe's min(video, audio) dependency ranks a capped
    category (the judge's 10/10 rows no longer go first); unmeasured rows use the judge's."""
    types = SCORES | {"measured_video_dependency": "double", "measured_audio_dependency": "double"}
    judged = [row(f"j{i}", vd=1.0, ad=1.0, comp=0.9, measured_video_dependency=0.0,
                  measured_audio_dependency=0.0) for i in range(3)]
    measured = [row(f"m{i}", comp=0.1, measured_video_dependency=0.5 + i / 10,
                    measured_audio_dependency=0.6) for i in range(3)]  # min: 0.5, 0.6, 0.6
    unmeasured = [row("u", vd=0.55, ad=0.9, comp=0.1)]  # falls back to min(0.55, 0.9)
    b = [row(f"b{i}", "B") for i in range(2)]
    spec = {"min_count": 2, "max_ratio": 2}
    (tmp_path / "m").mkdir()
    (tmp_path / "j").mkdir()
    kept, rejected, _ = outcome(tmp_path / "m", judged + measured + unmeasured + b,
                                [StageSpec("balance", spec | {"dependency": "measured"})],
                                types=types)
    assert kept - {"b0", "b1"} == {"m1", "m2", "u", "m0"}
    kept, _, _ = outcome(tmp_path / "j", judged + measured + unmeasured + b,
                         [StageSpec("balance", spec)], types=types)
    assert kept - {"b0", "b1"} == {"j0", "j1", "j2", "m0"}


def test_balance_single_category_is_not_capped(tmp_path):
    rows = [row(f"a{i:02d}") for i in range(12)]
    kept, rejected, _ = outcome(tmp_path, rows, [StageSpec("balance")])
    assert len(kept) == 12 and not rejected


def test_balance_all_categories_under_minimum(tmp_path):
    rows = [row(f"a{i}") for i in range(9)] + [row(f"b{i}", "B") for i in range(3)]
    kept, rejected, _ = outcome(tmp_path, rows, [StageSpec("balance")])  # min_count 10
    assert not kept and set(rejected.values()) == {"long_tail"} and len(rejected) == 12


def test_balance_second_largest_after_pruning(tmp_path):
    # B (2 rows) is pruned, so C (3 rows) is the second largest the cap is measured against
    rows = ([row(f"a{i:02d}", comp=i / 100) for i in range(20)] + [row(f"b{i}", "B") for i in range(2)]
            + [row(f"c{i}", "C") for i in range(3)] + [row(f"d{i}", "D") for i in range(1)])
    kept, rejected, _ = outcome(tmp_path, rows, [StageSpec("balance", {"min_count": 3})])
    assert {k for k in kept if k.startswith("a")} == {f"a{i:02d}" for i in range(11, 20)}  # 3 x 3
    assert rejected["b0"] == rejected["d0"] == "long_tail"
    assert sum(v == "over_cap" for v in rejected.values()) == 11
    # if every other category is pruned, the largest is left alone
    rows = [row(f"a{i:02d}") for i in range(20)] + [row(f"b{i}", "B") for i in range(2)]
    kept, _, _ = outcome(tmp_path / "x", rows, [StageSpec("balance", {"min_count": 3})]) \
        if (tmp_path / "x").mkdir() is None else None
    assert len(kept) == 20


def test_balance_cascade_and_max_per_category(tmp_path):
    rows = ([row(f"a{i:02d}") for i in range(20)] + [row(f"b{i}", "B") for i in range(6)]
            + [row(f"c{i}", "C") for i in range(2)])
    kept, _, _ = outcome(tmp_path, rows, [StageSpec("balance", {"min_count": 1, "max_ratio": 2,
                                                                 "cascade": True})])
    counts = {c: sum(k.startswith(c) for k in kept) for c in "abc"}
    assert counts == {"a": 8, "b": 4, "c": 2}
    (tmp_path / "m").mkdir()
    kept, _, _ = outcome(tmp_path / "m", rows, [StageSpec("balance", {"min_count": 1,
                                                                      "max_per_category": 3})])
    assert {c: sum(k.startswith(c) for k in kept) for c in "abc"} == {"a": 3, "b": 3, "c": 2}


def test_balance_null_category_is_rejected(tmp_path):
    rows = [row(f"a{i}") for i in range(3)] + [row("n", category=None)]
    _, rejected, _ = outcome(tmp_path, rows, [StageSpec("balance", {"min_count": 1})])
    assert rejected == {"n": "no_category"}


# -- subset -------------------------------------------------------------------------


def test_subset_marks_and_writes_without_rejecting(tmp_path):
    rows = [row("both", vd=0.7, ad=0.7), row("video_only", vd=0.9, ad=0.2), row("none", vd=0, ad=0)]
    kept, rejected, manifest = outcome(tmp_path, rows, [StageSpec("subset")])
    assert kept == {"both", "video_only", "none"} and not rejected
    table = read_stage(tmp_path / "run", "01")[0]
    assert rows_by_id(table)["jsonl:scored/both"]["subset_audio_visual"] is True
    assert rows_by_id(table)["jsonl:scored/video_only"]["subset_audio_visual"] is False
    sub = manifest["stages"][1]["subsets"]["audio_visual"]
    assert sub["rows"] == 1 and sub["dir"] == "01-subset/subset-audio_visual"
    import pyarrow.parquet as pq
    files = sorted((tmp_path / "run" / sub["dir"]).glob("part-*.parquet"))
    assert [r for f in files for r in pq.read_table(f).column("id").to_pylist()] == ["jsonl:scored/both"]


# -- dedup --------------------------------------------------------------------------


def test_dedup_keeps_the_best_of_each_group(tmp_path):
    rows = [row(i, video="same.mp4", **kw) for i, kw in [
        ("a", {"comp": 0.7, "question": "What is  playing?"}),
        ("b", {"comp": 0.9, "question": "what is playing"}),        # same after normalising: keeps b
        ("c", {"comp": 0.95, "question": "What is playing?", "options": ["x", "z"]}),  # other options
        ("e", {"comp": 0.5, "question": "Who sings?"}), ("f", {"comp": 0.5, "question": "who sings ?"}),
    ]] + [row("d", comp=0.99, question="What is playing?", video="other.mp4")]  # other media
    kept, rejected, _ = outcome(tmp_path, rows, [StageSpec("dedup")])
    assert kept == {"b", "c", "d", "e"}
    assert rejected == {"a": "duplicate_of:jsonl:scored/b", "f": "duplicate_of:jsonl:scored/e"}


def test_dedup_without_scores_keeps_smallest_id(tmp_path):
    ann = tmp_path / "plain.jsonl"
    recs = [{"id": i, "video": "v.mp4", "question": "Same?", "options": ["p", "q"], "answer": "A"}
            for i in ("z", "m", "b")]
    ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
    recipe = Recipe([SourceSpec("jsonl", str(ann), str(tmp_path), {"columns": COLUMNS})],
                    [StageSpec("dedup")], shard_size=2, workers=1)
    run(recipe, tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.column("id").to_pylist() == ["jsonl:plain/b"]
    assert set(rej.column("reject_reason").to_pylist()) == {"duplicate_of:jsonl:plain/b"}


def test_full_funnel_threshold_balance_subset(tmp_path):
    rows = ([row(f"a{i:02d}", comp=0.7 + i / 100, vd=0.8, ad=0.8) for i in range(25)]
            + [row(f"b{i}", "B") for i in range(5)] + [row("bad", aa=0.0)])
    stages = [StageSpec("threshold"), StageSpec("balance", {"min_count": 2}), StageSpec("subset")]
    run(scored_recipe(tmp_path, rows, stages), tmp_path / "run")
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    counts = [(s["dir"], s["rows_in"], s["kept"], s["rejected"]) for s in manifest["stages"]]
    assert counts == [("00-ingest", 31, 31, 0), ("01-threshold", 31, 30, 1),
                      ("02-balance", 30, 20, 10), ("03-subset", 20, 20, 0)]
    assert manifest["stages"][3]["subsets"]["audio_visual"]["rows"] == 15


def test_reject_reasons_group_payloads_and_match_sql(tmp_path):
    """Reasons are counted per kind (the part before a colon), most frequent first, ties by
    name, over files of which some are empty; DuckDB's GROUP BY over the same files is the
    oracle."""
    import duckdb
    import pyarrow as pa

    from avcurate.core.counts import reject_reasons
    from avcurate.core.store import write_parquet_atomic

    shards = [["duplicate_of:a", "duplicate_of:b", "long_tail", None],
              [], ["duplicate_of:c:d", "", "long_tail", "over_cap", "over_cap"],
              [f"duplicate_of:r{i}" for i in range(300)] + ["long_tail"]]  # many payloads
    paths = []
    for i, reasons in enumerate(shards):
        paths.append(tmp_path / f"part-{i:05d}.parquet")
        write_parquet_atomic(pa.table({"id": [str(k) for k in range(len(reasons))],
                                       "reject_reason": pa.array(reasons, pa.string())}),
                             paths[-1])
    got = reject_reasons(paths)
    assert got == {"duplicate_of": 303, "long_tail": 3, "over_cap": 2, "": 1, "None": 1}
    assert list(got) == ["duplicate_of", "long_tail", "over_cap", "", "None"]
    sql = duckdb.sql("SELECT split_part(reject_reason, ':', 1), count(*) FROM read_parquet($f) "
                     "GROUP BY 1", params={"f": [str(p) for p in paths]}).fetchall()
    assert got == {str(k): n for k, n in sql}
    assert reject_reasons([]) == {}


def test_the_filter_stages_never_import_pandas(tmp_path):
    """pyarrow imports pandas (~0.3 s) at its first conversion of a Python or NumPy value;
    threshold, balance and subset build their few values from buffers instead
    (core/arrow_values), so a funnel over an ingested run never pays it."""
    import dataclasses
    import subprocess
    import sys

    rows = [row(f"r{i}", category="AB"[i % 2] if i < 12 else "C", ql=0.5 if i % 5 == 0 else 1,
                vd=(i % 3) / 2) for i in range(14)]
    funnel = [StageSpec("threshold"), StageSpec("balance", {"min_count": 3, "max_ratio": 1}),
              StageSpec("subset")]
    recipe = scored_recipe(tmp_path, rows, funnel)
    run(dataclasses.replace(recipe, stages=[]), tmp_path / "run")  # ingest, in this process
    import tomli_w

    (tmp_path / "funnel.toml").write_text(tomli_w.dumps(recipe.to_dict()))
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "avcurate", "run",
                           str(tmp_path / "funnel.toml"), "--out", str(tmp_path / "run"), "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = imported_modules(done.stderr)
    assert "avcurate.filters.balance" in imported  # the import list is read right
    assert "pandas" not in imported
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert [(s["name"], s["rejected"] > 0) for s in manifest["stages"]] == [
        ("ingest", False), ("threshold", True), ("balance", True), ("subset", False)]
