"""What decontamination found, per benchmark: how much of the benchmark was compared
(records read, videos hashed) and how many rows it caught, by which signal. These are
the figures a paper's contamination statement gives, and were only in the manifest and
the rejects' `reject_detail` text."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.table import Table
from rich.text import Text

from avcurate.core.store import RunStore

SWITCHES = {"id": "match_ids", "frames": "match_frames", "question": "match_questions"}
SIGNALS = tuple(SWITCHES)
# a reject's detail names the benchmark item, then the signal: "ITEM (frames: 7/8 ...)"
SIGNAL_RE = r"\((?P<signal>" + "|".join(SIGNALS) + r"): "
PREFIX = "contaminated:"


def decontam_report(store: RunStore) -> list[dict[str, Any]]:
    """One entry per benchmark of each done decontaminate stage, in the run's order."""
    out = []
    for entry in store.load_manifest().get("stages", []):
        if not entry.get("benchmarks") or entry.get("status", "done") != "done":
            continue
        caught = _caught(store, entry["dir"])
        options = entry.get("options") or {}
        on = {s: options.get(switch, True) for s, switch in SWITCHES.items()}
        for name, bench in entry["benchmarks"].items():
            signals = caught.get(name, {})
            out.append({
                "stage": entry["dir"], "benchmark": name, "records": bench.get("items", 0),
                "unread": sum((bench.get("unread") or {}).values()),
                "videos": bench.get("videos", 0),
                "videos_hashed": bench.get("videos_hashed", 0) if on["frames"] else None,
                "rows_in": entry.get("rows_in"), "caught": sum(signals.values()),
                **{f"by_{s}": signals.get(s, 0) if on[s] else None for s in SIGNALS}})
    return out


def _caught(store: RunStore, stage_dir: str) -> dict[str, dict[str, int]]:
    """Rows the stage rejected, by benchmark and signal (read from its reject shards)."""
    files = store.rejects(store.root / stage_dir)
    if not files:
        return {}
    table = pq.ParquetDataset(files).read(columns=["reject_reason", "reject_detail"])
    reason = table.column("reject_reason")
    signal = pc.struct_field(pc.extract_regex(
        pc.fill_null(table.column("reject_detail"), ""), SIGNAL_RE), "signal")
    grouped = pa.table({"reason": reason, "signal": signal}).filter(
        pc.starts_with(reason, PREFIX)).group_by(["reason", "signal"]).aggregate(
        [([], "count_all")])
    out: dict[str, dict[str, int]] = {}
    for row in grouped.to_pylist():
        name = row["reason"].removeprefix(PREFIX)
        out.setdefault(name, {})[row["signal"] or "other"] = row["count_all"]
    return out


HEADERS = ("stage", "benchmark", "records", "videos\nhashed", "rows\ncaught", "by id",
           "by\npicture", "by\nquestion")


def decontam_rows(report: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The report as a table's headers and rows (the terminal's and the HTML report's):
    records read (and those not), videos hashed of those named, rows caught of the stage's
    input; a signal switched off is "off". The stage is a column only when the run
    decontaminated more than once."""
    rows = [[r["stage"], r["benchmark"],
             f"{r['records']:,}" + (f" ({r['unread']:,} unread)" if r["unread"] else ""),
             "off" if r["videos_hashed"] is None else f"{r['videos_hashed']:,} of {r['videos']:,}",
             f"{r['caught']:,} of {r['rows_in']:,}" if r["rows_in"] else f"{r['caught']:,}",
             *(_off(r[f"by_{s}"]) for s in SIGNALS)] for r in report]
    if len({r["stage"] for r in report}) > 1:
        return list(HEADERS), rows
    return list(HEADERS[1:]), [row[1:] for row in rows]


def _off(count: int | None) -> int | str:
    return "off" if count is None else count


def decontam_table(report: list[dict[str, Any]]) -> Table:
    table = Table(title="Decontamination: rows caught by each benchmark, and by which signal "
                        "first", title_justify="left")
    headers, rows = decontam_rows(report)
    for head in headers:
        table.add_column(head, justify="left" if head in ("stage", "benchmark") else "right")
    for row in rows:
        table.add_row(*(Text(v) if isinstance(v, str) else f"{v:,}" for v in row))
    return table
