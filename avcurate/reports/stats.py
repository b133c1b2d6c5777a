"""Statistics of a run: funnel, reject reasons, categories, score distributions, sources,
what the probe measured, what decontamination caught, and the latest audit of the judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avcurate.core.store import RunStore
from avcurate.models import demo_notice, models_used
from avcurate.reports.audit_summaries import latest
from avcurate.reports.decontam import decontam_report
from avcurate.reports.probe import probe_summary
from avcurate.reports.query import connect, views
from avcurate.reports.tables import stage_rows
from avcurate.reports.traces import trace_report

SCORE_COLUMNS = ("video_dependency", "audio_dependency", "question_logic", "answer_accuracy",
                 "composite_score")
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _columns(con, view: str) -> set[str]:
    return {r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()}


def collect(run_dir: Path | str) -> dict[str, Any]:
    """Everything `avcurate stats` shows, as plain data (what `--json` prints)."""
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    con = connect(run_dir)
    cols = _columns(con, "samples")
    return {
        "run": str(run_dir),
        "stages": stage_rows(store),
        "categories": _categories(con, manifest, cols),
        "scores": score_summary(con, cols),
        "sources": _sources(con, manifest),
        "subsets": {k: v for e in manifest["stages"] for k, v in e.get("subsets", {}).items()},
        "traces": trace_report(run_dir),
        "probe": _probe(run_dir, con),
        "decontamination": decontam_report(store),
        "models": models_used(manifest),
        "notice": demo_notice(manifest),
        "audit": latest(run_dir),
    }


def _probe(run_dir: Path | str, con) -> dict[str, Any]:
    """What the run's probe stage measured; without one, the latest `probe --limit` audit
    (marked with its folder)."""
    found = probe_summary(con, views(con))
    if found.get("rows"):
        return found
    audit = latest(run_dir, ("probe",))
    if audit is None or not audit["probe"].get("rows"):
        return found
    return audit["probe"] | {"audit": audit["folder"]}


def _categories(con, manifest, cols) -> dict[str, dict[str, int]]:
    for entry in manifest["stages"]:
        if "categories_before" in entry:
            return {"before": entry["categories_before"], "after": entry["categories_after"]}
    if "category" not in cols:
        return {}
    rows = con.execute("SELECT coalesce(category, '(none)'), count(*) FROM samples "
                       "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    return {"samples": dict(rows)}


def score_summary(con, cols) -> dict[str, dict[str, Any]]:
    out = {}
    for col in SCORE_COLUMNS:
        if col not in cols:
            continue
        qs = ", ".join(f"quantile_cont({col}, {q})" for q in QUANTILES)
        row = con.execute(f"SELECT count({col}), avg({col}), {qs} FROM samples").fetchone()
        hist = con.execute(
            f"SELECT least(floor({col} * 10), 9)::INT AS b, count(*) FROM samples "
            f"WHERE {col} IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall()
        bins = [0] * 10
        for b, n in hist:
            bins[b] = n
        out[col] = {"count": row[0], "mean": row[1],
                    "quantiles": dict(zip([f"p{int(q * 100)}" for q in QUANTILES], row[2:],
                                          strict=True)),
                    "histogram": bins}
    return out


def _sources(con, manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per source: input, kept, then rows rejected by each stage in the run's order (a
    source's row is input = kept + every rejected_<stage>)."""
    kept = dict(con.execute("SELECT source, count(*) FROM samples GROUP BY 1").fetchall())
    rejected: dict[tuple[str, str], int] = {}
    if "rejects" in views(con):
        rejected = {(str(src), stage): n for src, stage, n in con.execute(
            "SELECT source, reject_stage, count(*) FROM rejects GROUP BY 1, 2").fetchall()}
    order = list(dict.fromkeys(e["name"] for e in manifest["stages"]))
    stages = sorted({stage for _, stage in rejected},
                    key=lambda s: (order.index(s) if s in order else len(order), s))
    out: dict[str, dict[str, int]] = {}
    for source in sorted({str(s) for s in kept} | {src for src, _ in rejected}):
        counts = {"kept": kept.get(source, 0)}
        counts |= {f"rejected_{s}": rejected[source, s] for s in stages
                   if (source, s) in rejected}
        out[source] = {"input": sum(counts.values())} | counts
    return out
