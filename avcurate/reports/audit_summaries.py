"""The audits a run holds (`RUN/audits/*/summary.json`, written last by each audit), for
`avcurate stats` and for audits that build on earlier ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AUDITS = "audits"
AGREEMENT = ("agree", "human")


def audits(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every complete audit's summary (with its `folder`), oldest first."""
    found = []
    for summary in (Path(run_dir) / AUDITS).glob("*/summary.json"):
        try:
            found.append(json.loads(summary.read_text()) | {"folder": summary.parent.name})
        except (OSError, ValueError):
            continue  # a summary being replaced right now: skip it
    return sorted(found, key=lambda s: (s.get("created_at", ""), s["folder"]))


def latest(run_dir: Path | str, kinds: tuple[str, ...] = AGREEMENT) -> dict[str, Any] | None:
    """The newest complete audit of these kinds, or None."""
    found = [a for a in audits(run_dir) if a.get("kind") in kinds]
    return found[-1] if found else None
