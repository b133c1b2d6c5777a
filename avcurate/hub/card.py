"""The dataset card (README.md) of an export: YAML header for the Hub, then what a reader
needs to trust the data: recipe, stage funnel, categories, scores, models, columns."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from avcurate.core.store import RunStore
from avcurate.models import demo_notice, models_used
from avcurate.reports.tables import stage_rows

COLUMN_DOCS = {
    "id": "stable sample id, `<source>:<id in the source annotations>`",
    "source": "the annotation catalog the row came from",
    "question": "the question text",
    "options": "option texts of a multiple-choice question (no letter prefix); null if open-ended",
    "answer": "the correct option letter (A, B, ...), or the answer text if open-ended",
    "video": "video file, relative to this folder",
    "audio": "separate audio file, relative to this folder (null: the video's own track)",
    "category": "question category from the taxonomy (classify stage)",
    "trace": "merged audio-visual reasoning `<think>…</think><answer>X</answer>` (merge stage)",
    "video_dependency": "judge score in [0, 1]: how much the answer needs the picture",
    "audio_dependency": "judge score in [0, 1]: how much the answer needs the sound",
    "question_logic": "judge score in [0, 1]: clarity and soundness of the question",
    "answer_accuracy": "judge score in [0, 1]: correctness of the answer key",
    "composite_score": "weighted sum of the four judge scores",
}


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


def _yaml_header(configs: dict[str, dict[str, int]], license: str, total: int) -> str:
    lines = ["---", f"license: {license}", "task_categories:", "- video-text-to-text",
             "- visual-question-answering", "size_categories:", f"- {size_category(total)}",
             "tags:", "- audio-visual", "- video", "- multiple-choice", "- reinforcement-learning",
             "- avcurate", "configs:"]
    for name, splits in configs.items():
        prefix = "data" if name == "default" else f"data/{name}"
        lines += [f"- config_name: {name}"] + (["  default: true"] if name == "default" else [])
        lines.append("  data_files:")
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {prefix}/{split}-*"]
    return "\n".join(lines + ["---", ""])


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join("-" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def public_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as a card may show it: file names instead of local paths, no endpoints.

    Model names stay (they say what made the data); base URLs, hostnames and absolute paths
    say where someone's machines are and go.
    """
    def clean(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(k, v) for k, v in value.items() if k != "base_url"}
        if isinstance(value, list):
            return [clean(key, v) for v in value]
        if isinstance(value, str) and "://" in value:
            return "(endpoint)"
        if isinstance(value, str) and os.path.isabs(value):
            return "(media root)" if key == "media_root" else Path(value).name
        return value

    return clean("", recipe)


MEDIA_NOTE = {
    True: "Videos and audio files are included under `videos/` and `audios/`; the `video` and "
          "`audio` columns hold paths relative to this folder.",
    False: "Media files are not included: the `video` and `audio` columns hold paths relative "
           "to this folder that point to where the source clips were on the machine that made "
           "the export. Get the clips from the source datasets (or export with --copy-media).",
}


def write_card(out: Path, manifest: dict[str, Any], store: RunStore,
               configs: dict[str, dict[str, int]], columns: list[str], *, license: str,
               media_included: bool = True) -> Path:
    total = sum(configs.get("default", {}).values())
    funnel = stage_rows(store)
    parts = [_yaml_header(configs, license, total), "# Audio-visual QA dataset (avcurate)", "",
             f"Curated with avcurate {manifest.get('avcurate_version', '')}: "
             f"{total:,} rows in the default config.", "", "## Configs and splits", "",
             _table(["config", *["train", "validation"]],
                    [[c, s.get("train", 0), s.get("validation", 0)] for c, s in configs.items()]),
             "", "## How it was made", "", "Stage funnel (every input row is kept or rejected "
             "with a reason):", "",
             _table(["stage", "in", "kept", "rejected", "top reject reasons"],
                    [[r["stage"], r["rows_in"], r["kept"], r["rejected"],
                      ", ".join(f"{k} {v}" for k, v in list(r["rejects_by_reason"].items())[:3])]
                     for r in funnel]), ""]
    models = [list(m.values()) for m in models_used(manifest)]
    if models:
        parts += ["Models used:", "", _table(["stage", "backend", "model"], models), ""]
    if demo_notice(manifest):
        at = parts.index("## How it was made")
        parts[at:at] = [f"> **Demo data.** {demo_notice(manifest)}", ""]
    for e in manifest["stages"]:
        if "categories_before" in e:
            parts += ["Categories before and after balancing:", "",
                      _table(["category", "before", "after"],
                             [[c, n, e["categories_after"].get(c, 0)]
                              for c, n in e["categories_before"].items()]), ""]
    scores = _score_summary(store, manifest)
    if scores:
        parts += ["Score summary (final rows):", "", _table(
            ["score", "mean", "p10", "p50", "p90"],
            [[k, f"{v['mean']:.3f}", *(f"{v['quantiles'][q]:.2f}" for q in ("p10", "p50", "p90"))]
             for k, v in scores.items()]), ""]
    parts += ["## Columns", "", _table(["column", "meaning"],
                                       [[c, COLUMN_DOCS.get(c, "stage-added column")]
                                        for c in columns]), "",
              "## Media", "", MEDIA_NOTE[media_included], "",
              "## Recipe", "", "```json", json.dumps(public_recipe(manifest["recipe"]), indent=2),
              "```", ""]
    path = out / "README.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _score_summary(store: RunStore, manifest: dict[str, Any]) -> dict[str, Any]:
    from avcurate.reports.query import connect
    from avcurate.reports.stats import score_summary

    con = connect(store.root)
    cols = {r[0] for r in con.execute("DESCRIBE samples").fetchall()}
    return {k: v for k, v in score_summary(con, cols).items() if v["count"]}
