"""`avcurate agree`: how far would another judge (or a person) agree with the run's scores?

A second judge re-scores a stratified sample of the rows the score stage rated, with the
same rubric and scale (the first judge's prompt, media and weights unless overridden).
The figures compare the two per dimension and for the keep/reject decision that the
run's threshold rules make from each judge's scores. `--human labels.csv` compares a
person's labels (from `avcurate spotcheck`) with every judge the run has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from avcurate.core.lock import run_lock
from avcurate.core.options import OptionError, absent_options, check_fields, identity, option
from avcurate.core.store import RunStore
from avcurate.curation.score import Score
from avcurate.filters.rules import Comparison, RuleError, parse_rules
from avcurate.filters.threshold import DEFAULT_RULES
from avcurate.pipeline.runner import now
from avcurate.reports.audit_summaries import AUDITS, audits

from . import folder
from .agreement import SCORED, compare
from .labels import person_scores, read_labels
from .sample import AuditError, parse_sample, score_entry, scored_rows, strata, stratified

# the first judge's settings a second judge shares unless told otherwise: same rubric,
# same view of the media, same scale. Where and which model it is are never inherited.
SHARED = ("prompt", "media", "frames", "max_pixels", "audio_seconds", "weights", "temperature",
          "max_tokens")


@dataclass
class AgreeOptions:
    """The audit's own options (the second judge's are the score stage's)."""

    sample: str = option("200", help="Rows to re-score: a number (stratified by category and "
                                     "composite-score bucket) or 'all'.")
    seed: int = option(0, min=0, help="Seed of the sample (the same seed draws the same rows).")
    name: str = option("", help="Audit name: results go to RUN/audits/agree-NAME/ (default: "
                                "the second judge's model name; with --human the labels "
                                "file's name).")
    rules: list[str] = option(default_factory=list, flag="--rule",
                              help="Decision rule 'column op number', repeatable, applied to "
                                   "each judge's scores. Default: the run's threshold rules "
                                   "on score columns, else OmniVideo-R1's.")

    # derived from the options above when checked
    size: int | None = field(default=None, init=False, repr=False, compare=False)
    parsed: list[Comparison] | None = field(default=None, init=False, repr=False,
                                            compare=False)

    def __post_init__(self) -> None:
        check_fields(self, "agree")
        self.size = parse_sample(self.sample)
        try:
            self.parsed = parse_rules(self.rules) if self.rules else None
        except RuleError as exc:
            raise OptionError(f"agree: {exc}") from None
        for rule in self.parsed or []:  # checked now: after the calls, it was a traceback
            if rule.column not in SCORED:
                raise OptionError(f"agree: --rule reads {rule.column!r}, but a judge's decision "
                                  f"is made from its scores: {', '.join(SCORED)}")


def decision_rules(manifest: dict[str, Any], given: list[Comparison] | None
                   ) -> list[Comparison]:
    """The rules that turn one judge's scores into keep/reject: the given ones, else the
    run's threshold rules that read only score columns, else the recipe default."""
    if given:
        return given
    found = [r for e in manifest["stages"] if e["name"] == "threshold"
             for r in parse_rules(e.get("options", {}).get("rules", []))
             if r.column in SCORED]
    return found or parse_rules(DEFAULT_RULES)


def second_judge(entry: dict[str, Any], given: dict[str, Any]) -> Score:
    """The second judge: the first judge's rubric settings plus what the user gave."""
    recorded = entry.get("options", {})
    first = absent_options(Score, recorded) | recorded  # as it ran before an option existed
    fields = {f.name for f in dataclasses.fields(Score) if f.init}
    shared = {k: first[k] for k in SHARED if k in first and k in fields}
    return Score(**(shared | given))


def first_judge(entry: dict[str, Any]) -> str:
    """'backend:model' of the run's score stage (from its summary, else its options)."""
    model = entry.get("model") or entry.get("options", {})
    return f"{model.get('backend')}:{model.get('model')}"


def second_judges(store: RunStore) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """Each `agree` audit's second judge: its label and its pairs rows by id (scores and
    rationales under `second_`)."""
    out = []
    for audit in audits(store.root):
        if audit.get("kind") == "agree":
            pairs = pq.read_table(store.root / AUDITS / audit["folder"] / "pairs.parquet")
            out.append((audit["second"], {r["id"]: r for r in pairs.to_pylist()}))
    return out


def _columns(table: pa.Table, prefix: str = "") -> dict[str, list]:
    return {c: table.column(prefix + c).to_pylist() for c in SCORED
            if prefix + c in table.column_names}


def run_agree(run_dir: Path | str, judge: Score, opts: AgreeOptions, *, redo: bool = False,
              console: Console | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Re-score a sample with `judge` into RUN/audits/agree-NAME/ and return the summary."""
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    entry = score_entry(manifest)
    rules = decision_rules(manifest, opts.parsed)
    name = opts.name or judge.model
    path = folder.audit_dir(store.root, "agree", name)
    fp = folder.settings_hash({"judge": identity(judge), "sample": opts.size, "seed": opts.seed,
                               "first": entry["fingerprint"]}, judge)
    with run_lock(store.root):
        rated = scored_rows(store, entry)
        if rated.num_rows == 0:
            raise AuditError(f"{entry['dir']} kept no rows; there is nothing to audit")
        sample = stratified(rated, opts.size, opts.seed)
        answered, unanswered, usage = folder.audit_stage(
            store, path, fp, judge, sample, redo=redo, console=console,
            show_progress=show_progress)
        pairs = _pairs(sample, answered)
        first = _columns(pairs, "first_")
        second = _columns(pairs, "second_")
        summary = {
            "kind": "agree", "name": name, "created_at": now(),
            "first": first_judge(entry),
            "second": f"{judge.backend}:{judge.model}",
            "sample": {"asked": opts.sample, "seed": opts.seed, "rows": sample.num_rows,
                       "population": rated.num_rows, "strata": strata(sample)},
            "unanswered": unanswered,
            "rules": [str(r) for r in rules],
            "comparisons": [{"a": "first judge", "b": "second judge",
                             **compare(first, second, rules)}],
            "usage": usage,
        }
        folder.write_result(path, pairs, summary)
    return summary | {"folder": path.name}


def _pairs(sample: pa.Table, answered: pa.Table) -> pa.Table:
    """One row per sampled row: id, category, bucket, first_<score>, second_<score> (null
    where the second judge gave no valid answer) and both rationales."""
    got = {r["id"]: r for r in answered.select(["id", *SCORED, "score_rationale"]).to_pylist()}
    cols: dict[str, list] = {c: sample.column(c).to_pylist() for c in ("id", "category",
                                                                         "bucket")}
    for c in (*SCORED, "score_rationale"):
        cols[f"first_{c}"] = sample.column(c).to_pylist()
        cols[f"second_{c}"] = [got.get(i, {}).get(c) for i in cols["id"]]
    return pa.table(cols)


def run_human(run_dir: Path | str, labels_path: Path, opts: AgreeOptions) -> dict[str, Any]:
    """Compare a person's labels with the run's first judge and every second judge."""
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    entry = score_entry(manifest)
    rules = decision_rules(manifest, opts.parsed)
    weights = entry.get("options", {}).get("weights") or [0.25] * 4
    rated = scored_rows(store, entry)
    labels = read_labels(labels_path, set(rated.column("id").to_pylist()))
    ids = labels["id"]
    person = person_scores(labels, weights)
    judges = {first_judge(entry): _by_id({r["id"]: r for r in rated.to_pylist()}, ids, "")}
    judges |= {label: _by_id(rows, ids, "second_") for label, rows in second_judges(store)}
    name = opts.name or labels_path.stem
    path = folder.audit_dir(store.root, "human", name)
    summary = {
        "kind": "human", "name": name, "created_at": now(), "labels": labels_path.name,
        "sample": {"rows": len(ids), "population": rated.num_rows},
        "rules": [str(r) for r in rules],
        "comparisons": [{"a": "person", "b": label,
                         **compare(person, scores, rules, first_keeps=labels["keep"])}
                        for label, scores in judges.items()],
    }
    with run_lock(store.root):
        folder.open_folder(path, folder.settings_hash({"labels": name}), redo=True)
        folder.write_result(path, pa.table({"id": ids, "keep": labels["keep"],
                                            **{f"person_{c}": v for c, v in person.items()}}),
                            summary)
    return summary | {"folder": path.name}


def _by_id(rows: dict[str, dict[str, Any]], ids: list[str], prefix: str) -> dict[str, list]:
    """A rater's scores for `ids`, per score column (None where it has no score)."""
    return {c: [rows.get(i, {}).get(prefix + c) for i in ids] for c in SCORED}
