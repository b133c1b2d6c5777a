"""`avcurate balance/threshold/subset/dedup/stats/query` on a real run, via the CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess

import pyarrow.parquet as pq
import pytest
from conftest import avcurate_cmd
from test_filters import row, scored_recipe

from avcurate.pipeline.runner import Runner
from avcurate.reports.query import connect


def sh(*args, check=True):
    return subprocess.run(avcurate_cmd(*args), capture_output=True, text=True, check=check)


@pytest.fixture
def scored_run(tmp_path):
    rows = ([row(f"a{i:02d}", "speech", comp=0.7 + i / 100, vd=0.8, ad=0.9) for i in range(25)]
            + [row(f"b{i:02d}", "music", comp=0.75, vd=0.2, ad=0.9) for i in range(5)]
            + [row(f"c{i}", "counting") for i in range(2)]
            + [row("bad", "speech", aa=0.0), row("dup", "music", comp=0.1, question="q b00",
                                                 video="b00.mp4")])
    Runner(scored_recipe(tmp_path, rows, []), tmp_path / "run", show_progress=False).run()
    return tmp_path / "run"


def test_tool_commands_build_the_funnel(scored_run):
    sh("dedup", str(scored_run), "-q")
    sh("threshold", str(scored_run), "-q")
    result = sh("balance", str(scored_run), "--max-ratio", "2", "--min-count", "3", "-q")
    table = re.sub(r"[│┃]", "|", result.stdout)
    assert re.search(r"\|\s*speech\s*\|\s*25\s*\|\s*10\s*\|", table)
    assert re.search(r"\|\s*counting\s*\|\s*2\s*\|\s*0\s*\|", table)
    sh("subset", str(scored_run), "-q")
    manifest = json.loads((scored_run / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["ingest", "dedup", "threshold", "balance",
                                                      "subset"]
    assert [s["kept"] for s in manifest["stages"]] == [34, 33, 32, 15, 15]
    assert manifest["stages"][4]["subsets"]["audio_visual"]["rows"] == 10

    stats = json.loads(sh("stats", str(scored_run), "--json").stdout)
    assert stats["categories"]["before"] == {"speech": 25, "music": 5, "counting": 2}
    assert stats["categories"]["after"] == {"speech": 10, "music": 5, "counting": 0}
    comp = stats["scores"]["composite_score"]
    assert comp["count"] == 15 and comp["quantiles"]["p100"] == pytest.approx(0.94)
    assert sum(comp["histogram"]) == 15
    assert stats["sources"]["jsonl"] == {"kept": 15, "rejected_dedup": 1, "rejected_threshold": 1,
                                         "rejected_balance": 17, "input": 34}
    text = sh("stats", str(scored_run), "--html", str(scored_run / "report.html")).stdout
    assert "Score distributions" in text and "Per source" in text
    html = (scored_run / "report.html").read_text()
    assert html.count("<svg") >= 3 and "speech" in html and "<script" not in html
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


def test_query_views_and_export(scored_run):
    sh("threshold", str(scored_run), "-q")
    sh("subset", str(scored_run), "-q")
    con = connect(scored_run)
    assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 32
    assert con.execute("SELECT count(*) FROM threshold").fetchone()[0] == 32
    assert con.execute("SELECT count(*) FROM ingest").fetchone()[0] == 34
    assert con.execute("SELECT id, reject_reason FROM rejects ORDER BY id").fetchall() == [
        ("jsonl:scored/bad", "failed(answer_accuracy == 1)"),
        ("jsonl:scored/dup", "failed(composite_score >= 0.7)")]
    assert con.execute("SELECT count(*) FROM subset_audio_visual").fetchone()[0] == 25
    printed = sh("query", str(scored_run),
                 "SELECT category, count(*) AS n FROM samples GROUP BY 1 ORDER BY n DESC").stdout
    assert re.search(r"speech\s*[│|]\s*25", printed)
    out = scored_run / "speech.parquet"
    sh("query", str(scored_run), "SELECT id FROM samples WHERE category = 'speech'", "--out",
       str(out))
    assert pq.read_table(out).num_rows == 25
    sh("query", str(scored_run), "SELECT id FROM rejects ORDER BY id", "--out",
       str(scored_run / "r.csv"))
    assert (scored_run / "r.csv").read_text().splitlines() == ["id", "jsonl:scored/bad", "jsonl:scored/dup"]
    bad = sh("query", str(scored_run), "SELECT nope FROM samples", check=False)
    assert bad.returncode == 2 and "views:" in bad.stderr and "samples" in bad.stderr
    piped = sh("query", str(scored_run), "SELECT id, options FROM rejects ORDER BY id", "--out",
               "-")  # every row as CSV on stdout, for a pipe; the count on stderr
    assert list(csv.reader(piped.stdout.splitlines())) == [
        ["id", "options"], ["jsonl:scored/bad", "[x, y]"], ["jsonl:scored/dup", "[x, y]"]]
    assert "2 rows written to stdout" in piped.stderr and not (scored_run / "-").exists()
    # a folder that does not exist yet is made, for CSV as for Parquet (CSV once failed
    # with DuckDB's error naming its temporary file)
    for name in ("one.csv", "one.parquet"):
        target = scored_run.parent / "results" / "new" / name
        done = sh("query", str(scored_run), "SELECT 1 AS x", "--out", str(target))
        assert done.stdout.strip() == f"1 row written to {target}" and target.is_file()


def test_a_query_result_that_fills_the_disk_is_one_line_and_leaves_nothing(scored_run,
                                                                          small_disk):
    """CSV once printed DuckDB's JSON error blob naming its temporary file."""
    for name in ("big.csv", "big.parquet"):
        target = small_disk.path / name
        done = sh("query", str(scored_run), "SELECT range AS n, 'row ' || range AS s "
                  "FROM range(200000)", "--out", str(target), check=False)
        assert done.returncode == 2 and done.stderr.strip() == (
            f"error: cannot write {target}: No space left on device"), done.stderr
        assert list(small_disk.path.iterdir()) == []


def test_values_and_paths_with_brackets_print_as_they_are(scored_run, tmp_path):
    """Rich reads "[...]" as markup: a question tagged "[music]", a column named "[q]" or a
    run folder named "runs[v2]" printed with those parts missing."""
    printed = sh("query", str(scored_run), "SELECT '[music] or [b]speech[/b]?' AS \"[q]\"")
    assert "[music] or [b]speech[/b]?" in printed.stdout and "[q]" in printed.stdout
    linked = tmp_path / "runs[bold]"
    linked.symlink_to(scored_run)
    status = sh("status", str(linked)).stdout
    assert f"Run{linked}" in "".join(status.split())  # the title wraps at the table's width
    html = tmp_path / "out[v2].html"
    assert f"HTML report written to {html}" in sh("stats", str(linked), "--html",
                                                  str(html)).stdout


def test_query_shows_wide_rows_as_records(scored_run):
    """`SELECT *` has more columns than an 80-character terminal holds: each row is shown
    a column per line, every name and value readable, instead of a grid of empty cells."""
    wide = subprocess.run(avcurate_cmd("query", str(scored_run), "SELECT * FROM samples ORDER "
                                       "BY id", "--limit", "2"), capture_output=True,
                          text=True, check=True, env=os.environ | {"COLUMNS": "80"}).stdout
    names = pq.read_schema(next((scored_run / "00-ingest").glob("part-*.parquet"))).names
    lines = [[cell.strip() for cell in line.split("│")[1:-1]] for line in wide.splitlines()
             if line.startswith("│")]
    assert len(names) > 12 and ["row 1", ""] in lines and ["row 2", ""] in lines
    assert ["id", "jsonl:scored/a00"] in lines and ["category", "speech"] in lines
    assert ["composite_score", "0.7"] in lines
    assert {line[0] for line in lines} >= set(names)
    assert max(map(len, wide.splitlines())) <= 80


def test_query_is_read_only_and_scoped_to_the_run(scored_run, tmp_path):
    ok = sh("query", str(scored_run), "SELECT count(*) AS n FROM samples; -- how many")
    assert ok.returncode == 0 and "Traceback" not in ok.stderr
    for sql, message in [
        ("SELECT * FROM read_csv('/etc/passwd')", "only the run's own files"),
        ("SELECT * FROM glob('/root/*')", "only the run's own files"),
        (f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", "not COPY"),
        (f"ATTACH '{tmp_path}/x.db'", "not ATTACH"),
        ("SELECT 1; SELECT 2", "exactly one SELECT"),
        ("INSTALL httpfs", "not"),
    ]:
        bad = sh("query", str(scored_run), sql, check=False)
        assert bad.returncode == 2, sql
        assert message in bad.stderr and "Traceback" not in bad.stderr, (sql, bad.stderr)
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()


def test_a_query_with_a_misspelt_name_says_the_name_duckdb_suggests(scored_run):
    """Only DuckDB's first line was shown, which dropped its suggestion: a misspelt column
    said 'not found' without naming the column meant."""
    for sql, hint in [("SELECT reject_reasons FROM rejects",
                       'Candidate bindings: "reject_reason"'),
                      ("SELECT * FROM sample", 'Did you mean "samples"?')]:
        bad = sh("query", str(scored_run), sql, check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        [line] = bad.stderr.strip().splitlines()
        assert hint in line and "(views: " in line, line
    # a view the run does not have: DuckDB's guess among its own tables is no help
    [line] = sh("query", str(scored_run), "SELECT * FROM validate",
                check=False).stderr.strip().splitlines()
    assert "does not exist!" in line and "Did you mean" not in line and "(views: " in line


def test_output_files_are_checked_first_and_never_replace_a_users_file(scored_run, tmp_path):
    """`stats --html`, `query --out` and `spotcheck --out` naming a folder, a path under a
    file, or a file avcurate did not write stop with one line, exit 2, before any work and
    with the file as it was; missing folders on the way are made; avcurate's own page is
    replaced; a query's file is replaced only with --overwrite."""
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    folder = tmp_path / "reports"
    folder.mkdir()
    query = ("query", str(scored_run), "SELECT id FROM samples")
    for args, message in [
        (("stats", str(scored_run), "--html", str(folder)), "is a folder; name a file"),
        (("stats", str(scored_run), "--html", str(mine / "r.html")), "is a file, not a folder"),
        (("stats", str(scored_run), "--html", str(mine)), "not written by avcurate stats"),
        (("spotcheck", str(scored_run), "--out", str(mine)), "not written by avcurate spotcheck"),
        ((*query, "--out", str(folder)), "is a folder; name a file"),
        ((*query, "--out", str(mine)), "exists; choose another --out, or pass --overwrite"),
        ((*query, "--out", str(tmp_path / "q.txt")), "must end in .csv or .parquet"),
    ]:
        done = sh(*args, check=False)
        assert done.returncode == 2, args
        [line] = done.stderr.strip().splitlines()
        assert message in line, (args, line)
    assert mine.read_text() == "my notes" and not list(folder.iterdir())

    page = tmp_path / "new" / "deeper" / "report.html"  # folders on the way are made
    sh("stats", str(scored_run), "--html", str(page))
    assert 'content="avcurate stats"' in page.read_text()
    sh("stats", str(scored_run), "--html", str(page))  # its own page: replaced

    out = tmp_path / "ids.csv"
    sh(*query, "--out", str(out))
    assert sh(*query, "--out", str(out), check=False).returncode == 2
    sh(*query, "--out", str(out), "--overwrite")
    assert len(out.read_text().splitlines()) == 35  # header + 34 ingested rows
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_long_label_is_cut_before_it_is_escaped():
    """Cut after escaping, "R&B ..." could end in half an entity ("&am") on the chart."""
    from xml.etree import ElementTree

    from avcurate.reports.html import bars

    label = "x" * 29 + "R&B and soul"
    svg = bars("Categories", {"before": {label: 3}})
    texts = [t.text for t in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}text")]
    assert label[:31] + "…" in texts  # its first 31 characters, "&" whole, and an ellipsis
    titles = [t.text for t in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}title")]
    assert f"{label}: 3" in titles  # whole in the bar's tooltip
    short = bars("Categories", {"before": {"x" * 32: 1}})
    assert "x" * 32 + "<" in short  # a label that fits is not cut


def test_query_right_aligns_numbers_and_left_aligns_text(scored_run):
    """Counts line up by their last digit, as in every other table avcurate prints; text
    stays left-aligned, and a column mixing numbers with text is text."""
    text = sh("query", str(scored_run), "SELECT category, count(*) AS n, "
              "CASE WHEN count(*) > 3 THEN 'many' ELSE '2' END AS k FROM samples "
              "GROUP BY 1 ORDER BY 2 DESC").stdout
    rows = {cells[0].strip(): cells for line in text.splitlines() if line.startswith("│")
            for cells in [line.split("│")[1:-1]]}
    assert rows["speech"][1].endswith("26 ") and rows["counting"][1].endswith(" 2 ")
    assert rows["speech"][0].startswith(" speech ")
    assert rows["counting"][2].startswith(" 2 ")  # k is text: '2' beside 'many'


def test_stats_per_source_names_each_stage_in_run_order(scored_run):
    """The per-source columns are input, kept, then each stage's rejects in the order the
    stages ran, every stage's name whole in a 100-column terminal (they were cut to
    'rejected_b…' and sorted by name)."""
    sh("dedup", str(scored_run), "-q")
    sh("threshold", str(scored_run), "-q")
    sh("balance", str(scored_run), "--max-ratio", "2", "--min-count", "3", "-q")
    stats = json.loads(sh("stats", str(scored_run), "--json").stdout)
    assert list(stats["sources"]["jsonl"]) == ["input", "kept", "rejected_dedup",
                                               "rejected_threshold", "rejected_balance"]
    text = subprocess.run(avcurate_cmd("stats", str(scored_run)), capture_output=True,
                          text=True, check=True, env=os.environ | {"COLUMNS": "100"}).stdout
    table = text[text.index("Per source"):].splitlines()
    header = [" ".join(cells) for cells in zip(*(
        [c.strip() for c in line.split("┃")[1:-1]] for line in table[2:4]), strict=True)]
    assert header == [" source", " input", " kept", "rejected dedup", "rejected threshold",
                      "rejected balance"]
    html = (sh("stats", str(scored_run), "--html", str(scored_run / "r.html")) and
            (scored_run / "r.html").read_text())
    assert html.index("rejected<br>dedup") < html.index("rejected<br>threshold") < html.index(
        "rejected<br>balance")


@pytest.mark.parametrize("dry", [False, True])
def test_a_stage_command_before_its_inputs_names_the_command_to_run_first(scored_run, dry):
    """`merge-traces` on a run without teacher columns: one line naming `avcurate teach RUN`
    (the command, not recipe stages to add), for the dry run as for the run, which used to
    end in a KeyError traceback; nothing is added to the run."""
    before = (scored_run / "manifest.json").read_text()
    result = sh("merge-traces", str(scored_run), "--model", "m", "--base-url",
                "http://127.0.0.1:9/v1", *(["--dry-run"] if dry else []), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: stage 'merge' needs column(s) visual_description")
    assert line.endswith(f"run `avcurate teach {scored_run}` first")
    assert (scored_run / "manifest.json").read_text() == before
