"""Tables that summarise a run (end of `avcurate run`, and `avcurate status`)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.table import Table
from rich.text import Text  # data and paths shown as they are: never read as markup

from avcurate.core.counts import reject_reasons
from avcurate.core.store import RunStore, parquet_rows
from avcurate.curation.probe import CONDITION_NAMES

RECORDED = ("kept", "rejected", "shards", "rejects_by_reason")
RULE_COLUMN = re.compile(r"^failed\((\w+) ")  # threshold's reason: failed(column op value)


def stage_rows(store: RunStore, *, recorded: bool = False) -> list[dict[str, Any]]:
    """Per-stage counts, read from the shards on disk; a stage folder the manifest does not
    record (a stage that was stopped or killed) shows as `incomplete`.

    With `recorded`, a completed stage's counts are the manifest's, which the runner
    counted from the same shards when the stage completed: the summary at the end of a
    run does not read every shard's footer again (thousands of files in a large run).
    `avcurate status` always reads the shards."""
    manifest = store.load_manifest()
    entries = list(manifest.get("stages", []))
    entries += [{"dir": p.name, "status": "incomplete"} for p in store.unfinished_dirs()]
    out = []
    for entry in entries:
        done = entry.get("status", "done") == "done"
        if recorded and done and all(k in entry for k in RECORDED):
            out.append(_row(entry, entry["rows_in"], entry["kept"], entry["rejected"],
                            entry["shards"], entry["rejects_by_reason"]))
            continue
        stage_dir = store.root / entry["dir"]
        kept_files, reject_files = store.shards(stage_dir), store.rejects(stage_dir)
        rejected = parquet_rows(reject_files)
        out.append(_row(entry, entry.get("rows_in") if done else None,
                        parquet_rows(kept_files), rejected, len(kept_files),
                        reject_reasons(reject_files) if rejected else {}))
    return out


def _row(entry: dict[str, Any], rows_in: int | None, kept: int, rejected: int, shards: int,
         reasons: dict[str, int]) -> dict[str, Any]:
    return {"stage": entry["dir"], "status": entry.get("status", "done"), "rows_in": rows_in,
            "kept": kept, "rejected": rejected, "shards": shards,
            "seconds": entry.get("seconds"),
            "balanced": None if rows_in is None else rows_in == kept + rejected,
            "rejects_by_reason": reasons}


def summary_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The funnel. A stage's folder name is what `reset --from` takes, so it is never cut
    short to fit a narrow terminal; the other columns wrap instead."""
    table = Table(title=Text(title), title_justify="left")
    stage = {"no_wrap": True, "min_width": max((len(r["stage"]) for r in rows), default=5)}
    for col, kw in [("stage", stage), ("status", {}), ("in", {"justify": "right"}),
                    ("kept", {"justify": "right"}), ("rejected", {"justify": "right"}),
                    ("in = kept + rejected", {"justify": "center"}),
                    ("time", {"justify": "right"})]:
        table.add_column(col, **kw)
    for r in rows:
        check = {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[r["balanced"]]
        table.add_row(r["stage"], r["status"], _n(r["rows_in"]), _n(r["kept"]),
                      _n(r["rejected"]), check,
                      f"{r['seconds']:.1f}s" if r["seconds"] is not None else "-")
    return table


def reasons_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Rejected rows by reason", title_justify="left")
    table.add_column("stage")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for r in rows:
        for reason, n in r["rejects_by_reason"].items():
            table.add_row(r["stage"], Text(reason), _n(n))
    return table


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def category_table(before: dict[str, int], after: dict[str, int] | None) -> Table:
    table = Table(title="Categories", title_justify="left")
    table.add_column("category")
    table.add_column("before" if after is not None else "rows", justify="right")
    if after is not None:
        table.add_column("after", justify="right")
    for cat, n in before.items():
        cells = [Text(str(cat)), f"{n:,}"] + ([f"{after.get(cat, 0):,}"] if after is not None else [])
        table.add_row(*cells)
    total = [f"{sum(before.values()):,}"] + (
        [f"{sum(after.values()):,}"] if after is not None else [])
    table.add_row("[bold]total[/]", *total)
    return table


def scores_table(scores: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Score distributions (samples)", title_justify="left")
    table.add_column("score")
    table.add_column("n", justify="right")
    table.add_column("mean", justify="right")
    names = list(next(iter(scores.values()))["quantiles"])
    for q in names:
        table.add_column(q, justify="right")
    for col, s in scores.items():
        qs = [f"{v:.2f}" if v is not None else "-" for v in s["quantiles"].values()]
        table.add_row(col, _n(s["count"]), f"{s['mean']:.3f}" if s["mean"] is not None else "-",
                      *qs)
    return table


def sources_table(sources: dict[str, dict[str, int]]) -> Table:
    """Rows per source: input, kept, and rejected by each stage in the run's order, the stage
    under "rejected" in its header so that eight columns fit a terminal unshortened."""
    table = Table(title="Per source", title_justify="left")
    keys = list(dict.fromkeys(k for v in sources.values() for k in v))
    table.add_column("source")
    for key in keys:
        table.add_column(key.replace("rejected_", "rejected\n"), justify="right")
    for src, v in sources.items():
        table.add_row(Text(src), *(f"{v.get(k, 0):,}" for k in keys))
    return table


def _cell(value: Any) -> Text:
    """A query's value as it is: "[music]" in a question once printed as nothing (markup)."""
    return Text(("NULL" if value is None else str(value))[:80])


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def numbers_only(values: Iterable[Any], number: Callable[[Any], bool] = is_number) -> bool:
    """A column of numbers only, nulls aside (and not only nulls): right-aligned, so counts
    line up, in the terminal's tables, the HTML report's and the card's."""
    present = [v for v in values if v is not None]
    return bool(present) and all(map(number, present))


def result_table(columns: list[str], rows: list[tuple], width: int = 80) -> Table:
    """A query's rows as a table when its columns fit in `width` (a few characters each at
    least), else one record per row, a column per line: `SELECT * FROM samples` has some
    forty columns, which squeezed into a terminal became a grid of empty cells."""
    if sum(min(len(c), 10) + 3 for c in columns) + 1 <= width:
        table = Table()
        for i, c in enumerate(columns):
            table.add_column(Text(c), justify="right" if numbers_only(row[i] for row in rows)
                             else "left")
        for row in rows:
            table.add_row(*map(_cell, row))
        return table
    table = Table("column", "value")
    for i, row in enumerate(rows, start=1):
        table.add_row(f"[bold]row {i}[/]", "")
        for n, (c, v) in enumerate(zip(columns, row, strict=True), start=1):
            table.add_row(Text(c), _cell(v), end_section=n == len(columns))
    return table


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def not_probed(probe: dict[str, Any]) -> str:
    """'; N open-ended rows not asked' when the probe's stage kept rows it did not probe."""
    n = probe.get("not_probed") or 0
    return f"; {n:,} open-ended row{'' if n == 1 else 's'} not asked" if n else ""


def probe_table(probe: dict[str, Any]) -> Table:
    """Accuracy per media condition (overall and per category), what `avcurate probe` measured."""
    audit = f", a sample: audit {probe['audit']}" if probe.get("audit") else ""
    table = Table(title=f"Probe: accuracy per condition ({probe['rows']:,} questions"
                        f"{not_probed(probe)}{audit})")
    for name in ("category", "rows", *CONDITION_NAMES.values()):
        table.add_column(name, justify="left" if name == "category" else "right")
    acc = probe.get("accuracy", {})
    table.add_row("all", f"{probe['rows']:,}", *(_pct(acc.get(c)) for c in CONDITION_NAMES))
    for cat, row in probe.get("by_category", {}).items():
        table.add_row(Text(cat), f"{row['rows']:,}", *(_pct(row[c]) for c in CONDITION_NAMES))
    hist = probe.get("pass_rate_histogram", {})
    blind = probe.get("blind_answerable_share", {})
    caption = ["questions per pass rate with frames+audio: "
               f"{', '.join(f'{n:,} at {p}' for p, n in hist.items())}",
               f"answerable blind (above chance): {_pct(blind.get('above_chance'))}, "
               f"by more than 0.25: {_pct(blind.get('above_0.25'))}"]
    for modality, agree in probe.get("judge_vs_measured", {}).items():
        rho = agree["spearman"]
        caption.append(f"judge vs measured {modality} dependency: Spearman rho = "
                       f"{'n/a' if rho is None else f'{rho:.2f}'} (n = {agree['n']})")
    if (line := unlettered_line(probe)) is not None:
        caption.append(line)
    table.caption = "\n".join(caption)
    return table


def unlettered_line(probe: dict[str, Any]) -> str | None:
    """How many of the probe's answers named no single option letter (counted wrong)."""
    none, answers = probe.get("unparsed") or 0, probe.get("answers") or 0
    if not none or not answers:
        return None
    return (f"answers with no single option letter (counted wrong): {none:,} of {answers:,} "
            f"({none / answers:.0%})")


AUDIT_COLUMNS = ("dimension", "n", "kappa (quadratic)", "Spearman rho", "mean |diff| (0-10)")


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def agreement_tables(audit: dict[str, Any]) -> list[Table]:
    """One table per comparison of an audit (`avcurate agree`, `agree --human`): the score
    dimensions, then the keep/reject decision with its confusion counts."""
    tables = []
    for comp in audit.get("comparisons", []):
        who = (f": {audit['first']} vs {audit['second']}" if audit.get("kind") == "agree"
               else "")
        table = Table(title=Text(f"Agreement of {comp['a']} and {comp['b']}{who} "
                                 f"(audit {audit.get('folder', audit.get('name'))})"),
                      title_justify="left")
        for col in AUDIT_COLUMNS:
            table.add_column(col, justify="left" if col == "dimension" else "right")
        for dim, f in comp["dimensions"].items():
            table.add_row(dim, _n(f["n"]), _f(f["kappa"]), _f(f["spearman"]), _f(f["mad"]))
        d = comp["decision"]
        c = d["confusion"]
        table.add_row("keep/reject", _n(d["n"]), _f(d["kappa"]), "-", "-")
        table.caption = (f"decision by {' and '.join(audit.get('rules', []))}: agree on "
                         f"{_pct(d['agreement'])}; both keep {c['both_keep']}, both reject "
                         f"{c['both_reject']}, only {comp['a']} keeps {c['only_first_keeps']}, "
                         f"only {comp['b']} keeps {c['only_second_keeps']}")
        tables.append(table)
    return tables


UNLETTERED_SHARE = 0.1  # of a stage's answers with no option letter: worth a warning


def unlettered_answers(store: RunStore) -> str | None:
    """A warning when a done stage (the probe) recorded that a tenth or more of its
    answers named no single option letter (none, or a hedge). Each counts as wrong, so the
    accuracies, pass rates and dependencies it measured are the setup's as much as the
    questions': most often a model that reasons before it answers, cut at max_tokens, or
    one answering in a form avcurate does not read."""
    for entry in store.load_manifest().get("stages", []):
        usage = entry.get("usage") or {}
        answers, none = usage.get("answers", 0), usage.get("unlettered", 0)
        if entry.get("status", "done") == "done" and answers and \
                none / answers >= UNLETTERED_SHARE:
            limit = (entry.get("options") or {}).get("max_tokens")
            return (f"{entry['dir']}: {none:,} of {answers:,} answers ({none / answers:.0%}) "
                    "named no single option letter and count as wrong, which lowers every "
                    "figure it measured. A model that reasons before it answers may be cut at "
                    f"max_tokens ({limit}: raise --max-tokens), or it answers in a form "
                    "avcurate does not read (the probe_unparsed column counts them per row)")
    return None


def emptied_stage(store: RunStore, rows: list[dict[str, Any]]) -> str | None:
    """A warning when a done stage kept none of the rows it was given: almost always a
    setting on the wrong scale (`composite_score >= 7` where scores run 0 to 1), which the
    run otherwise records as a finished stage. Names the reason most rows got and, for a
    threshold rule, the range its column held, and how to redo the stage."""
    emptied = next((r for r in rows if r["status"] == "done" and r["rows_in"]
                    and not r["kept"]), None)
    if emptied is None or not emptied["rejects_by_reason"]:
        return None
    reason, count = max(emptied["rejects_by_reason"].items(), key=lambda kv: kv[1])
    line = (f"{emptied['stage']} kept none of its {emptied['rows_in']:,} rows "
            f"({count:,} {reason})")
    if (m := RULE_COLUMN.match(reason)) is not None:
        files = store.rejects(store.root / emptied["stage"])
        values = pc.min_max(pq.ParquetDataset(files).read(columns=[m[1]]).column(0))
        if values["min"].is_valid:
            line += f"; {m[1]} ran from {values['min'].as_py():g} to {values['max'].as_py():g}"
    return (line + ". If that is not what you meant: avcurate reset "
            f"{shlex.quote(str(store.root))} --from {emptied['stage']}, then run it with other "
            "settings")
