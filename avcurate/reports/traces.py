"""The trace report: is the merged data healthy enough to train on?

Format compliance, think length in tokens (mean ± std), the distribution of
answer letters (a letter above 40% means the set teaches a position bias),
how often both teachers were right, and how often the merger needed a retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avcurate.core.store import RunStore
from avcurate.core.traces import parse_trace
from avcurate.reports.query import connect

LETTER_BIAS = 0.40


def trace_report(run_dir: Path | str) -> dict[str, Any] | None:
    store = RunStore(run_dir)
    stages = store.load_manifest()["stages"]
    merge = next((s for s in reversed(stages) if s["name"] == "merge"), None)
    if merge is None or merge.get("status") != "done":
        return None
    con = connect(run_dir)
    traces = con.execute(
        f'SELECT trace, trace_answer, trace_tokens, merge_attempts FROM "{_view(stages, merge)}"'
    ).fetchall()
    rows_in = merge["rows_in"]
    ok = sum(parse_trace(t or "").ok for t, *_ in traces)
    tokens = [n for _, _, n, _ in traces if n is not None]
    mean = sum(tokens) / len(tokens) if tokens else 0.0
    std = (sum((n - mean) ** 2 for n in tokens) / len(tokens)) ** 0.5 if tokens else 0.0
    letters: dict[str, int] = {}
    for _, letter, _, _ in traces:
        letters[letter] = letters.get(letter, 0) + 1
    share = {k: v / len(traces) for k, v in sorted(letters.items())} if traces else {}
    teacher = next((s for s in stages if s["name"] == "teacher_filter"), None)
    retried = sum(1 for *_, a in traces if (a or 0) > 1)
    return {
        "rows_in": rows_in, "traces": len(traces),
        "format_compliance": ok / len(traces) if traces else 0.0,
        "merged_share": len(traces) / rows_in if rows_in else 0.0,
        "think_tokens_mean": mean, "think_tokens_std": std,
        "answer_letters": share,
        "letter_bias": [k for k, v in share.items() if v > LETTER_BIAS],
        "both_teachers_correct": (teacher["kept"] / teacher["rows_in"]
                                  if teacher and teacher.get("rows_in") else None),
        "merge_retry_rate": retried / len(traces) if traces else 0.0,
        "rejects_by_reason": merge.get("rejects_by_reason", {}),
    }


def _view(stages: list[dict], entry: dict) -> str:
    earlier = [s["name"] for s in stages[: entry["index"]]]
    return entry["name"] if entry["name"] not in earlier else f"{entry['name']}_{entry['index']}"


def format_report(r: dict[str, Any]) -> str:
    letters = ", ".join(f"{k} {v:.0%}" for k, v in r["answer_letters"].items()) or "-"
    both = "-" if r["both_teachers_correct"] is None else f"{r['both_teachers_correct']:.1%}"
    lines = [
        "[bold]Trace report[/]",
        f"  traces: {r['traces']:,} of {r['rows_in']:,} rows ({r['merged_share']:.1%}); "
        f"format compliance {r['format_compliance']:.1%}",
        f"  think length: {r['think_tokens_mean']:.1f} ± {r['think_tokens_std']:.1f} tokens",
        f"  answer letters: {letters}",
        f"  both teachers correct: {both}; merge retry rate: {r['merge_retry_rate']:.1%}",
    ]
    if r["letter_bias"]:
        lines.append(f"  [yellow]warning[/]: letter(s) {', '.join(r['letter_bias'])} above "
                     f"{LETTER_BIAS:.0%} of answers: the set teaches a position bias")
    if r["rejects_by_reason"]:
        lines.append("  rejected: " + ", ".join(f"{k} {v}" for k, v in r["rejects_by_reason"].items()))
    return "\n".join(lines)
