"""`avcurate probe RUN --limit N`: probe a stratified sample before paying for every row.

The sample is drawn from the run's newest kept multiple-choice rows (stratified by category
and composite-score bucket where the run has them) and probed exactly as the stage would;
the figures `avcurate stats` shows for a probed run (accuracy per condition and category,
pass rates, blind share, judge vs measured dependency) are written to
RUN/audits/probe-NAME/summary.json. The run's stages and kept rows do not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from avcurate.core.lock import run_lock
from avcurate.core.options import identity
from avcurate.core.store import RunStore
from avcurate.curation.probe import Probe
from avcurate.pipeline.runner import now
from avcurate.reports.probe import probe_summary

from . import folder
from .sample import AuditError, strata, stratified, with_strata

KEEP = ("id", "category", "bucket", "question", "answer")


def run_probe_audit(run_dir: Path | str, stage: Probe, *, limit: int, seed: int = 0,
                    name: str = "", redo: bool = False, console: Console | None = None,
                    show_progress: bool = True) -> dict[str, Any]:
    """Probe `limit` sampled rows into RUN/audits/probe-NAME/; returns the summary."""
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    newest = manifest["stages"][-1]
    name = name or stage.model
    path = folder.audit_dir(store.root, "probe", name)
    fp = folder.settings_hash({"probe": identity(stage), "limit": limit, "seed": seed,
                               "rows": newest["fingerprint"]}, stage)
    with run_lock(store.root):
        table = pq.read_table(store.shards(store.root / newest["dir"]))
        table = table.filter(pc.fill_null(pc.greater(pc.list_value_length(
            table.column("options")), 0), False))
        if table.num_rows == 0:
            raise AuditError(f"{newest['dir']} has no multiple-choice rows to probe")
        sample = stratified(with_strata(table), limit, seed)
        answered, unanswered, usage = folder.audit_stage(
            store, path, fp, stage, sample, redo=redo, console=console,
            show_progress=show_progress)
        import duckdb

        con = duckdb.connect()
        con.register("probe", answered)
        figures = probe_summary(con, ["probe"])
        summary = {
            "kind": "probe", "name": name,
            "created_at": now(),
            "model": f"{stage.backend}:{stage.model}", "stage": newest["dir"],
            "sample": {"asked": limit, "seed": seed, "rows": sample.num_rows,
                       "population": table.num_rows, "strata": strata(sample)},
            "unanswered": unanswered,
            "probe": figures,
            "usage": usage,
        }
        columns = [c for c in (*KEEP, *Probe.adds) if c in answered.column_names]
        folder.write_result(path, answered.select(columns), summary)
    return summary | {"folder": path.name}
