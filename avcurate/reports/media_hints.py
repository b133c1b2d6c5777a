"""A warning after a command when validate found most of a run's clips missing and its
media roots hold archives (`media/archives.py`); when none was there at all, validate
itself stops with the same hint."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from avcurate.core.store import RunStore
from avcurate.media.archives import archives_in, unpack_hint


def archived_media(store: RunStore, rows: list[dict[str, Any]]) -> str | None:
    """The warning, or None: validate done with at least half its rows missing_media, and
    archives in a source's media root or a folder right under it."""
    row = next((r for r in rows if r["stage"].endswith("-validate") and r["status"] == "done"
                and r["rows_in"]), None)
    missing = (row or {}).get("rejects_by_reason", {}).get("missing_media", 0)
    if row is None or missing * 2 < row["rows_in"]:
        return None
    hint = unpack_hint(archives_in(_media_roots(store)))
    if not hint:
        return None
    return (f"{row['stage']}: {missing:,} of {row['rows_in']:,} rows' clips are missing "
            f"(missing_media), and {hint}, then: avcurate validate "
            f"{shlex.quote(str(store.root))} --redo")


def _media_roots(store: RunStore) -> list[Path]:
    """The media roots the run's sources named (a `{annotations_dir}` template as each
    annotation file's folder)."""
    stages = store.load_manifest().get("stages") or [{}]
    return [Path((s.get("media_root") or "").replace(
        "{annotations_dir}", str(Path(s.get("annotations", "")).parent)))
        for s in stages[0].get("spec", {}).get("sources", [])]
