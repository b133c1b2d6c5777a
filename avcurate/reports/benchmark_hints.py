"""Warnings after a command when decontamination compared against less of a benchmark
than was given: records its catalog could not read, and videos the picture signal could not
hash (never downloaded, still in their archives, or undecodable). Either way the stage
finishes, and rows sharing what was left out go through unflagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avcurate.core.store import RunStore
from avcurate.media.archives import unpack_hint

UNHASHED_SHARE = 0.1  # of a benchmark's videos, not hashed, that earns a warning


def benchmark_warnings(store: RunStore) -> list[str]:
    """One warning per shortfall of each benchmark of each decontaminate stage."""
    out = []
    for entry in store.load_manifest().get("stages", []):
        for name, bench in (entry.get("benchmarks") or {}).items():
            out += [w for w in (_unread(entry["dir"], name, bench),
                                _unhashed(entry["dir"], name, bench)) if w]
    return out


def _unread(stage: str, name: str, bench: dict[str, Any]) -> str | None:
    """Records its catalog could not read (no question, a path outside the media root):
    not in the index, so rows sharing their clip or question are not caught."""
    if not (unread := bench.get("unread")):
        return None
    n = sum(unread.values())
    reasons = ", ".join(f"{c:,} {r}" for r, c in unread.items())
    return (f"{stage}: {n:,} of benchmark {name!r}'s {n + bench['items']:,} records could "
            f"not be read ({reasons}; the first: {bench.get('unread_first')}), so rows "
            "sharing their clip or question are not caught")


def _unhashed(stage: str, name: str, bench: dict[str, Any]) -> str | None:
    """A tenth or more of its videos not hashed: copies of them under other names (a
    re-encode, a crop) are not caught by the picture signal."""
    videos = bench.get("videos", 0)
    missing, unreadable = bench.get("videos_missing", 0), bench.get("videos_unreadable", 0)
    if not videos or (missing + unreadable) < UNHASHED_SHARE * videos:
        return None
    parts = [f"{missing:,} missing"] * bool(missing) + \
        [f"{unreadable:,} unreadable"] * bool(unreadable)
    hint = unpack_hint([Path(p) for p in bench.get("archives") or []])
    return (f"{stage}: {missing + unreadable:,} of benchmark {name!r}'s {videos:,} videos "
            f"could not be hashed ({', '.join(parts)}; the first: "
            f"{bench.get('video_unhashed_first')}), so re-encoded or renamed copies of them "
            "are not caught by their picture" + (f"; {hint}, then redo the stage (--redo)"
                                                   if hint else ""))
