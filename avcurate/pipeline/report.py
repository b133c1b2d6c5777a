"""Tables that summarise a run (end of `avcurate run`, and `avcurate status`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from avcurate.pipeline.stats import reject_reasons
from avcurate.pipeline.store import RunStore, parquet_rows


def stage_rows(store: RunStore) -> list[dict[str, Any]]:
    """Per-stage counts, read from the shards on disk (so partial stages show too)."""
    manifest = store.load_manifest()
    out = []
    for entry in manifest.get("stages", []):
        stage_dir = store.root / entry["dir"]
        kept_files, reject_files = store.shards(stage_dir), store.rejects(stage_dir)
        kept, rejected = parquet_rows(kept_files), parquet_rows(reject_files)
        rows_in = entry.get("rows_in") if entry.get("status") == "done" else None
        out.append({
            "stage": entry["dir"], "status": entry.get("status", "?"), "rows_in": rows_in,
            "kept": kept, "rejected": rejected, "shards": len(kept_files),
            "seconds": entry.get("seconds"),
            "balanced": None if rows_in is None else rows_in == kept + rejected,
            "rejects_by_reason": reject_reasons(reject_files),
        })
    return out


def summary_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col, kw in [("stage", {}), ("status", {}), ("in", {"justify": "right"}),
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
            table.add_row(r["stage"], reason, str(n))
    return table


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"
