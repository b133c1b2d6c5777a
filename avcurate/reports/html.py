"""A self-contained HTML report: tables plus bar charts as inline SVG.

The charts are a few rectangles each, so they are drawn as SVG by hand rather
than pulling in a plotting library (and its fonts and backends) as a
dependency; inline SVG needs no image files and no network to view.
"""

from __future__ import annotations

from html import escape
from typing import Any

from avcurate.core.outputs import generator_tag
from avcurate.curation.probe import CONDITION_NAMES
from avcurate.reports.decontam import decontam_rows
from avcurate.reports.tables import not_probed, numbers_only, unlettered_line

GENERATOR = "avcurate stats"  # names the command in the page, so it may replace it
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2")


def bars(title: str, series: dict[str, dict[str, float]], width: int = 720) -> str:
    """Horizontal grouped bars: one group per label, one bar per series."""
    labels = list(dict.fromkeys(k for s in series.values() for k in s))
    if not labels:
        return ""
    peak = max((v for s in series.values() for v in s.values()), default=1) or 1
    row_h, bar_h, left = 8 + 14 * len(series), 12, 220
    height = 40 + row_h * len(labels) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{escape(title)}</text>']
    for i, name in enumerate(series):
        parts.append(f'<rect x="{left + 130 * i}" y="26" width="10" height="10" '
                     f'fill="{PALETTE[i % 5]}"/><text x="{left + 14 + 130 * i}" y="35" '
                     f'font-size="11">{escape(name)}</text>')
    for r, label in enumerate(labels):
        y = 44 + r * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 11}" font-size="11" text-anchor="end">'
                     f'{escape(_short(str(label)))}</text>')
        for i, (_, values) in enumerate(series.items()):
            v = values.get(label, 0)
            w = (width - left - 70) * v / peak
            yy = y + i * (bar_h + 2)
            parts.append(f'<rect x="{left}" y="{yy}" width="{w:.1f}" height="{bar_h}" '
                         f'fill="{PALETTE[i % 5]}"><title>{escape(str(label))}: {v:g}</title></rect>'
                         f'<text x="{left + w + 4:.1f}" y="{yy + 10}" font-size="10">{v:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(label: str, most: int = 32) -> str:
    """A bar's label as it fits left of the bars, cut with an ellipsis (the bar's tooltip
    has it whole)."""
    return label if len(label) <= most else label[:most - 1] + "…"


def scatter(title: str, points: list[tuple[float, float]], xlabel: str, ylabel: str,
            size: int = 320) -> str:
    """A scatter plot of points in [0, 1] x [0, 1] (a little jitter-free SVG), as wide as
    its title needs (~7.5 px a character of 12 px bold text; its plot stays `size` wide)."""
    pad = 40
    span = size - 2 * pad
    width = max(size, round(7.5 * len(title)) + 8)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size + 20}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="0" y="14" font-weight="bold" font-size="12">{escape(title)}</text>',
             f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" '
             'stroke="#999"/>',
             f'<text x="{size / 2}" y="{size - 4}" font-size="11" text-anchor="middle">'
             f'{escape(xlabel)}</text>',
             f'<text x="12" y="{size / 2}" font-size="11" text-anchor="middle" '
             f'transform="rotate(-90 12 {size / 2})">{escape(ylabel)}</text>']
    tick = 'font-size="10" fill="#666"'  # the scale's ends: both axes run from 0 to 1
    parts += [f'<text x="{pad + span * v}" y="{pad + span + 12}" {tick} '
              f'text-anchor="middle">{v}</text>' for v in (0, 1)]
    parts += [f'<text x="{pad - 4}" y="{pad + span * (1 - v) + 4}" {tick} '
              f'text-anchor="end">{v}</text>' for v in (0, 1)]
    for x, y in points:
        cx, cy = pad + span * float(x), pad + span * (1 - float(y))
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{PALETTE[0]}" '
                     f'fill-opacity="0.5"><title>{x:g}, {y:g}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _probe(probe: dict[str, Any]) -> list[str]:
    acc = probe.get("accuracy", {})
    rows = [["all", probe["rows"], *(acc.get(c) for c in CONDITION_NAMES)]]
    rows += [[cat, r["rows"], *(r[c] for c in CONDITION_NAMES)]
             for cat, r in probe.get("by_category", {}).items()]
    blind = probe.get("blind_answerable_share", {})
    audit = f" (a sample: audit {escape(probe['audit'])})" if probe.get("audit") else ""
    out = [f"<h2>Probe: measured difficulty and modality dependency{audit}</h2>",
           f"<p>{probe['rows']:,} multiple-choice questions asked"
           f"{escape(not_probed(probe))}.</p>",
           _table(["category", "rows", *CONDITION_NAMES.values()], rows),
           bars("Rows per pass rate (accuracy with frames+audio)",
                {"rows": probe.get("pass_rate_histogram", {})}),
           f"<p>Answerable without any media (above chance): {_fmt(blind.get('above_chance'))}; "
           f"by more than 0.25: {_fmt(blind.get('above_0.25'))}.</p>"]
    if (line := unlettered_line(probe)) is not None:
        out.append(f"<p>{escape(line[0].upper() + line[1:])}.</p>")
    for modality, agree in probe.get("judge_vs_measured", {}).items():
        rho = agree["spearman"]
        out.append(scatter(f"{modality} dependency: Spearman rho = "
                           f"{'n/a' if rho is None else f'{rho:.2f}'} (n = {agree['n']})",
                           agree["points"], "judge's score", "measured"))
    return out


def _audit(audit: dict[str, Any]) -> list[str]:
    """The latest audit (`avcurate agree`): per comparison, the figures per dimension and
    the keep/reject decision's confusion counts."""
    sample = audit.get("sample", {})
    out = [f"<h2>Judge agreement (audit {escape(audit.get('folder', ''))})</h2>",
           f"<p>{sample.get('rows')} rows of {sample.get('population')} scored; decision by "
           f"{escape(' and '.join(audit.get('rules', [])))}.</p>"]
    for comp in audit.get("comparisons", []):
        d, c = comp["decision"], comp["decision"]["confusion"]
        rows = [[dim, f["n"], f["kappa"], f["spearman"], f["mad"]]
                for dim, f in comp["dimensions"].items()]
        rows.append(["keep/reject", d["n"], d["kappa"], None, None])
        out += [f"<h3>{escape(comp['a'])} vs {escape(comp['b'])}</h3>",
                _table(["dimension", "n", "kappa (quadratic)", "Spearman rho",
                        "mean |diff| (0-10)"], rows),
                _table(["", f"{comp['b']} keeps", f"{comp['b']} rejects"],
                       [[f"{comp['a']} keeps", c["both_keep"], c["only_first_keeps"]],
                        [f"{comp['a']} rejects", c["only_second_keeps"], c["both_reject"]]])]
    return out


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Numbers right-aligned under a right-aligned header (digits line up), text (stages,
    reasons, model names) left-aligned, as a reader scans each."""
    numeric = [numbers_only(row[k] for row in rows) for k in range(len(headers))]
    cls = [' class="num"' if n else "" for n in numeric]
    head = "".join(f"<th{c}>{'<br>'.join(map(escape, h.split(chr(10))))}</th>"
                   for h, c in zip(headers, cls, strict=True))  # a "\n" in a header: its break
    body = "".join("<tr>" + "".join(f"<td{c}>{escape(_fmt(v))}</td>"
                                    for v, c in zip(row, cls, strict=True)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    """Counts with thousands separators, as the terminal tables print them."""
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def render(stats: dict[str, Any]) -> str:
    stages = stats["stages"]
    sections = [f"<h1>avcurate run report</h1><p><code>{escape(stats['run'])}</code></p>"]
    if stats.get("notice"):
        sections.append(f'<p class="notice"><strong>Demo model.</strong> '
                        f'{escape(stats["notice"])}</p>')
    if stats.get("models"):
        sections += ["<h2>Models</h2>", _table(["stage", "backend", "model"],
                                               [list(m.values()) for m in stats["models"]])]
    sections += [
                "<h2>Stage funnel</h2>",
                bars("Rows kept and rejected per stage",
                     {"kept": {s["stage"]: s["kept"] for s in stages},
                      "rejected": {s["stage"]: s["rejected"] for s in stages}}),
                _table(["stage", "status", "in", "kept", "rejected", "seconds"],
                       [[s["stage"], s["status"], s["rows_in"], s["kept"], s["rejected"],
                         s["seconds"]] for s in stages]),
                "<h2>Rejected rows by reason</h2>",
                _table(["stage", "reason", "rows"], [[s["stage"], r, n] for s in stages
                                                     for r, n in s["rejects_by_reason"].items()])]
    if stats["categories"]:
        sections += ["<h2>Categories</h2>", bars("Rows per category", stats["categories"])]
    if stats["scores"]:
        sections.append("<h2>Scores</h2>")
        for col, s in stats["scores"].items():
            hist = {f"{b / 10:.1f}-{(b + 1) / 10:.1f}": n for b, n in enumerate(s["histogram"])}
            sections.append(bars(f"{col} (n={s['count']}, mean={s['mean'] or 0:.3f})",
                                 {col: hist}))
        sections.append(_table(["score", *next(iter(stats["scores"].values()))["quantiles"]],
                               [[c, *s["quantiles"].values()] for c, s in stats["scores"].items()]))
    if stats.get("probe", {}).get("rows"):
        sections += _probe(stats["probe"])
    if stats.get("decontamination"):
        sections += ["<h2>Decontamination</h2>",
                     "<p>Rows caught by each benchmark, and by which signal first.</p>",
                     _table(*decontam_rows(stats["decontamination"]))]
    if stats.get("audit"):
        sections += _audit(stats["audit"])
    if stats["sources"]:
        keys = list(dict.fromkeys(k for v in stats["sources"].values() for k in v))
        heads = [k.replace("rejected_", "rejected\n") for k in keys]  # narrow enough to fit
        sections += ["<h2>Sources</h2>", _table(["source", *heads], [
            [src, *(v.get(k, 0) for k in keys)] for src, v in stats["sources"].items()])]
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left;white-space:nowrap}.num{text-align:right}"
             "th{background:#f3f3f3}svg{display:block;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'>{generator_tag(GENERATOR)}"
            f"<title>avcurate report</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
