"""`avcurate spotcheck`: one self-contained HTML page where a person checks a sample.

Each sampled row shows its clip in a `<video>` element, the question, the options and
the answer key, and every judge's scores with their rationales; the person enters
their own 0-10 scores and keep/reject, and the page saves them as CSV or JSON (a
download made by the page itself: no server). What is typed is kept in the browser's
local storage, so closing the tab loses nothing. `avcurate agree RUN --human FILE`
reads the saved file.

The page is rendered here (escaped by Python, testable without a browser); its small
script only reads the inputs back and writes the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from avcurate.core.answers import letter_index
from avcurate.core.outputs import (
    check_output,
    check_owned_folder,
    generator_tag,
    write_output,
)
from avcurate.core.store import RunStore, copy_file_atomic, copy_name, copying
from avcurate.curation.score import DIMENSIONS

from .agree import first_judge, second_judges
from .labels import FIELDS
from .sample import AuditError, score_entry, scored_rows, stratified

GENERATOR = "avcurate spotcheck"
MEDIA_MARKER = ".avcurate-spotcheck.json"  # in PAGE_media/: the clip copies the page owns
LABELS = {"video_dependency": "video dependency", "audio_dependency": "audio dependency",
          "question_logic": "question logic", "answer_accuracy": "answer accuracy"}


@dataclass
class Sheet:
    path: Path
    rows: int
    media_copied: int


def _rationales(text: str | None) -> dict[str, str]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _judges(store: RunStore, entry: dict[str, Any], sample: pa.Table) -> list[dict[str, Any]]:
    """Every judge's scores and rationales for the sampled ids: the run's score stage,
    then each second judge of an `agree` audit (rows it scored)."""
    first = {r["id"]: r for r in sample.to_pylist()}
    return [{"label": first_judge(entry), "rows": first, "prefix": ""},
            *({"label": label, "rows": rows, "prefix": "second_"}
              for label, rows in second_judges(store))]


def _judge_table(row_id: str, judges: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(j['label'])}</th>" for j in judges)
    body = []
    for d in DIMENSIONS:
        cells = []
        for j in judges:
            r, p = j["rows"].get(row_id), j["prefix"]
            if r is None or r.get(p + d) is None:
                cells.append("<td>-</td>")
                continue
            why = _rationales(r.get(p + "score_rationale")).get(d, "")
            cells.append(f'<td><b>{round(r[p + d] * 10)}</b> <span class="why">'
                         f"{escape(str(why))}</span></td>")
        body.append(f"<tr><th>{LABELS[d]}</th>{''.join(cells)}</tr>")
    comp = "".join("<td>-</td>" if (r := j["rows"].get(row_id)) is None
                   or r.get(j["prefix"] + "composite_score") is None
                   else f"<td>{r[j['prefix'] + 'composite_score'] * 10:.1f}</td>" for j in judges)
    body.append(f"<tr><th>composite</th>{comp}</tr>")
    return (f'<table class="judges"><thead><tr><th>judge (0-10)</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _inputs(k: int) -> str:
    scores = "".join(
        f'<label>{LABELS[d]} <input type="number" name="{d}" min="0" max="10" step="1" '
        f'inputmode="numeric"></label>' for d in DIMENSIONS)
    decision = "".join(f'<label><input type="radio" name="decision-{k}" value="{v}"> {v}</label>'
                       for v in ("keep", "reject"))
    return (f'<fieldset class="mine"><legend>Your labels</legend><div class="scores">{scores}'
            f'</div><div class="decision">{decision}</div><label class="note">note '
            f'<input type="text" name="note"></label></fieldset>')


def _plan_copies(rows: list[dict[str, Any]]) -> dict[Path, str]:
    """Each distinct clip file the rows name (video, then audio) -> the name of its copy
    beside the page, in order of first appearance."""
    copies: dict[Path, str] = {}
    for row in rows:
        for path in (row.get("video"), row.get("audio")):
            if path and (source := Path(path).resolve()).is_file() and source not in copies:
                copies[source] = copy_name(f"{len(copies):04d}", source.name)
    return copies


def _copy_media(copies: dict[Path, str], media_dir: Path) -> None:
    """Copy each clip, unless the earlier page's copy of that name has its size and mtime."""
    for source, name in copies.items():
        target = media_dir / name
        was, now = (target.stat() if target.exists() else None), source.stat()
        if was is None or (was.st_size, was.st_mtime_ns) != (now.st_size, now.st_mtime_ns):
            copy_file_atomic(source, target)  # with its mtime: the next page compares it


def _media_src(path: str | None, out: Path, media_dir: Path | None,
               copies: dict[Path, str]) -> str:
    """The src for a clip: its copy beside the page (--copy-media) or a relative path to
    the original."""
    if not path:
        return ""
    source = Path(path).resolve()
    if media_dir is not None and source in copies:
        return quote(f"{media_dir.name}/{copies[source]}")
    return quote(os.path.relpath(source, out.parent.resolve()))


def _claim_media(media_dir: Path) -> set[str]:
    """The clip copies an earlier page put in `media_dir` (its marker lists them). The
    folder is the page's: anything else in it stops the command (a user's folder of the
    same name is never mixed with copies, nor emptied)."""
    marker = media_dir / MEDIA_MARKER
    owned = set(json.loads(marker.read_text())["files"]) if marker.is_file() else set()
    names = owned | {copying(Path(n)).name for n in owned} | {MEDIA_MARKER}  # + killed copies
    check_owned_folder(media_dir, "--copy-media", ours=names.__contains__,
                       what="the clip copies of an earlier spot-check page",
                       hint="move those files, or name another --out page")
    return owned


def _own_media(media_dir: Path, files: set[str]) -> None:
    write_output(media_dir / MEDIA_MARKER, json.dumps({"files": sorted(files)}).encode())


def _section(k: int, row: dict[str, Any], judges: list[dict[str, Any]], video: str,
             audio: str) -> str:
    options = "".join(f"<li>{escape(str(o))}</li>" for o in row.get("options") or [])
    answer = row.get("answer") or ""
    index = letter_index(answer, len(row.get("options") or []))
    shown = f"{answer}. {row['options'][index]}" if index is not None else answer
    sound = f'<audio controls preload="none" src="{audio}"></audio>' if audio else ""
    return (f'<section class="sample" data-id="{escape(row["id"])}">'
            f'<h2>{k + 1}. <code>{escape(row["id"])}</code> '
            f'<span class="cat">{escape(str(row.get("category") or ""))}</span></h2>'
            f'<div class="media"><video controls preload="metadata" src="{video}"></video>{sound}'
            f'</div><div class="text"><p class="question">{escape(row.get("question") or "")}</p>'
            f'<ol type="A">{options}</ol><p class="answer">Answer key: <b>'
            f'{escape(str(shown))}</b></p></div>'
            f"{_judge_table(row['id'], judges)}{_inputs(k)}</section>")


def build_sheet(run_dir: Path | str, out: Path, *, sample: int | None, seed: int,
                copy_media: bool) -> Sheet:
    """Write the spot-check page for a stratified sample of the scored rows."""
    check_output(out, "--out", generator=GENERATOR)
    store = RunStore(run_dir)
    entry = score_entry(store.load_manifest())
    rated = scored_rows(store, entry)
    if rated.num_rows == 0:
        raise AuditError(f"{entry['dir']} kept no rows; there is nothing to check")
    rows = stratified(rated, sample, seed)
    judges = _judges(store, entry, rows)
    media_dir = out.parent / f"{out.stem}_media" if copy_media else None
    listed = rows.to_pylist()
    owned: set[str] = set()
    copies: dict[Path, str] = {}
    if media_dir is not None:
        owned = _claim_media(media_dir)
        copies = _plan_copies(listed)
        media_dir.mkdir(parents=True, exist_ok=True)
        # recorded before any copy lands: a killed run's copies stay the page's
        _own_media(media_dir, owned | set(copies.values()))
        _copy_media(copies, media_dir)
    sections = [_section(k, row, judges, _media_src(row.get("video"), out, media_dir, copies),
                         _media_src(row.get("audio"), out, media_dir, copies))
                for k, row in enumerate(listed)]
    page = PAGE.format(
        generator=generator_tag(GENERATOR), run=escape(str(run_dir)), n=rows.num_rows,
        population=rated.num_rows, key=escape(f"{Path(run_dir).resolve()}:{seed}:{rows.num_rows}"),
        stem=escape(out.stem), sections="".join(sections), style=STYLE,
        fields=escape(json.dumps(list(FIELDS))), script=SCRIPT)
    write_output(out, page.encode("utf-8"))
    if media_dir is not None:  # the earlier page's clips this one does not show
        for name in owned - set(copies.values()):
            (media_dir / name).unlink(missing_ok=True)
            copying(media_dir / name).unlink(missing_ok=True)
        _own_media(media_dir, set(copies.values()))
    return Sheet(out, rows.num_rows, len(copies))


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;color:#222}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.5em 0}
.sample{border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}
.sample.done{border-color:#54a24b;background:#f6fbf5}
.media video{max-width:480px;max-height:320px;display:block}
.cat{font-size:.8em;color:#666;font-weight:normal}
.unplayable{color:#b35900;font-size:.9em;max-width:480px}
table.judges{border-collapse:collapse;margin:.5em 0}
table.judges td,table.judges th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
.why{color:#555;font-size:.85em}
fieldset.mine{border:1px solid #4c78a8}
.scores label{margin-right:1em}.scores input{width:3.5em}
input:invalid{outline:2px solid #e45756}
.note input{width:60%}
#status{color:#e45756}
"""

SCRIPT = r"""
const FIELDS = JSON.parse(document.body.dataset.fields);
const KEY = "avcurate-spotcheck:" + document.body.dataset.key;
const sections = [...document.querySelectorAll("section.sample")];

function labelOf(s) {
  const row = {id: s.dataset.id};
  for (const input of s.querySelectorAll("input[type=number], input[name=note]"))
    row[input.name] = input.value.trim();
  const picked = s.querySelector("input[type=radio]:checked");
  row.decision = picked ? picked.value : "";
  return row;
}
function labelled(row) { return FIELDS.slice(1).some(f => f !== "note" && row[f]); }
function labels() { return sections.map(labelOf); }

function refresh() {
  const rows = labels();
  sections.forEach((s, i) => s.classList.toggle("done", labelled(rows[i])));
  document.getElementById("progress").textContent =
    rows.filter(labelled).length + " of " + rows.length + " labelled";
  localStorage.setItem(KEY, JSON.stringify(rows));
}
function restore() {
  let saved = [];
  try { saved = JSON.parse(localStorage.getItem(KEY) || "[]"); } catch (e) { saved = []; }
  const byId = Object.fromEntries(saved.map(r => [r.id, r]));
  for (const s of sections) {
    const row = byId[s.dataset.id];
    if (!row) continue;
    for (const input of s.querySelectorAll("input[type=number], input[name=note]"))
      input.value = row[input.name] || "";
    for (const radio of s.querySelectorAll("input[type=radio]"))
      radio.checked = radio.value === row.decision;
  }
}
function csvCell(v) {
  v = String(v ?? "");
  return /[",\n\r]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
}
function toCSV(rows) {
  return [FIELDS.join(","), ...rows.map(r => FIELDS.map(f => csvCell(r[f])).join(","))].join("\n") + "\n";
}
function save(kind) {
  const bad = document.querySelectorAll("input:invalid");
  const status = document.getElementById("status");
  if (bad.length) {
    status.textContent = bad.length + " score(s) are not integers from 0 to 10; fix them first.";
    bad[0].focus();
    return;
  }
  status.textContent = "";
  const rows = labels().filter(labelled);
  const text = kind === "csv" ? toCSV(rows) : JSON.stringify({labels: rows}, null, 1);
  const blob = new Blob([text], {type: kind === "csv" ? "text/csv" : "application/json"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = document.body.dataset.stem + "-labels." + kind;
  document.body.appendChild(a);
  a.click();
  a.remove();
}
// A clip the browser cannot play (an .avi container: an error; MPEG-4 Part 2 or HEVC
// video: no error, but no picture either) said so beside its player, with a link to open
// it elsewhere; not a blank player the person may take for a clip with nothing to see.
function unplayable(el) {
  if (el.nextElementSibling && el.nextElementSibling.classList.contains("unplayable")) return;
  const note = document.createElement("p");
  note.className = "unplayable";
  const name = decodeURIComponent(el.getAttribute("src").split("/").pop());
  note.textContent = "This browser cannot play " + name +
    " (its container or video codec); open it in a media player: ";
  const link = document.createElement("a");
  link.href = el.src;
  link.textContent = name;
  note.append(link);
  el.after(note);
}
function noPicture(el) { return el.tagName === "VIDEO" && el.readyState >= 1 && !el.videoWidth; }
for (const el of document.querySelectorAll(".media video[src], .media audio[src]")) {
  if (!el.getAttribute("src")) continue;
  el.addEventListener("error", () => unplayable(el));
  el.addEventListener("loadedmetadata", () => { if (noPicture(el)) unplayable(el); });
  if (el.error || noPicture(el)) unplayable(el);  // known before this script ran
}
restore();
refresh();
document.addEventListener("input", refresh);
document.addEventListener("change", refresh);
document.getElementById("save-csv").addEventListener("click", () => save("csv"));
document.getElementById("save-json").addEventListener("click", () => save("json"));
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8">{generator}
<title>avcurate spot-check: {run}</title><style>{style}</style></head>
<body data-key="{key}" data-stem="{stem}" data-fields="{fields}">
<header><h1>Spot-check of <code>{run}</code></h1>
<p>{n} rows sampled (stratified by category and score bucket) of {population} the judge
scored. Watch each clip, enter your own scores (0-10, the judge's scale; leave a score
empty to skip it) and keep or reject, then save. <code>avcurate agree RUN --human
FILE</code> compares your labels with the judges.</p>
<button id="save-csv">Save labels (CSV)</button> <button id="save-json">Save labels
(JSON)</button> <span id="progress"></span> <span id="status"></span></header>
<main>{sections}</main>
<script>{script}</script>
</body></html>
"""
