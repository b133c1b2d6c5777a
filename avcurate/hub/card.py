"""The dataset card (README.md) of an export.

The YAML header is built with `huggingface_hub`'s DatasetCardData, so the Hub, the
dataset viewer and `datasets` read exactly what they expect: configs, `dataset_info` with
every config's features and split sizes, pretty name, license, language, size, task
categories and tags. The body says what a reader needs to trust and use the data: how to
load each config, a sample record, the media, the stage funnel, the filters and models,
categories, the benchmarks it was decontaminated against, scores, columns, and the recipe
that produced it (as a TOML file, with paths made relative and endpoints removed).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.core.store import RunStore
from avcurate.hub.options import ExportOptions, ExportResult
from avcurate.hub.splits import no_validation_reason
from avcurate.models import demo_notice, models_used
from avcurate.reports.decontam import decontam_report, decontam_rows
from avcurate.reports.tables import is_number, numbers_only, stage_rows

COLUMN_DOCS = {
    "id": "stable sample id, `<source>:<id in the source annotations>`",
    "source": "the annotation catalog the row came from",
    "question": "the question text",
    "options": "option texts of a multiple-choice question (no letter prefix); null if open-ended",
    "answer": "the correct option letter (A, B, ...), or the answer text if open-ended",
    "video": "video file, relative to the data file's folder",
    "audio": "separate audio file, relative to the data file's folder (null: the video's own "
             "track)",
    "category": "question category from the taxonomy (classify stage)",
    "trace": "merged audio-visual reasoning `<think>…</think><answer>X</answer>` (merge stage)",
    "video_dependency": "judge score in [0, 1]: how much the answer needs the picture",
    "audio_dependency": "judge score in [0, 1]: how much the answer needs the sound",
    "question_logic": "judge score in [0, 1]: clarity and soundness of the question",
    "answer_accuracy": "judge score in [0, 1]: correctness of the answer key",
    "composite_score": "weighted sum of the four judge scores",
}
TASK_CATEGORIES = ["video-text-to-text", "visual-question-answering"]
TAGS = ["audio-visual", "video", "audio", "multiple-choice", "reinforcement-learning", "avcurate"]
SAMPLE_CHARS = 300  # long strings (traces, rationales) are cut in the sample record


@dataclass
class CardInputs:
    manifest: dict[str, Any]
    store: RunStore
    result: ExportResult
    opts: ExportOptions
    sample: dict[str, Any] | None


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?%?")


def _is_number(cell: Any) -> bool:
    """A number, or one written as text ("0.740", "1,204", "12%"), as the card's cells are."""
    return is_number(cell) or (isinstance(cell, str) and NUMBER.fullmatch(cell) is not None)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; a column of numbers only is right-aligned (`---:`), so counts line
    up on the Hub's page as in the terminal."""
    numeric = [numbers_only((r[i] for r in rows), _is_number) for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |",
           "|" + "".join("---:|" if n else "---|" for n in numeric)]
    out += ["| " + " | ".join("-" if c is None else str(c).replace("|", "\\|") for c in row)
            + " |" for row in rows]
    return "\n".join(out)


def public_recipe(recipe: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """The recipe as a card may show it: paths relative, no endpoints, no None values.

    Model names stay (they say what made the data). Base URLs and anything with a scheme
    say where someone's machines are and go; an absolute path becomes relative to `base`
    (the folder that holds the run) when it lies inside it, else its file name.
    """
    def path(value: str) -> str:
        if base is not None and Path(value).is_relative_to(base):
            return Path(os.path.relpath(value, base)).as_posix()
        return Path(value).name

    def named_paths(value: str) -> str:
        """NAME=PATH[:PATH] (a decontamination benchmark: `video-mme=/data/t.parquet:/data`)
        with its paths made public; any other text as it is."""
        head, eq, rest = value.partition("=")
        parts = rest.split(":")
        if not eq or not any(parts) or not all(os.path.isabs(p) for p in parts if p):
            return value
        return f"{head}=" + ":".join(path(p) if p else p for p in parts)

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if k != "base_url" and v is not None and not (isinstance(v, str)
                                                                  and "://" in v)}
        if isinstance(value, list):
            return [clean(v) for v in value if v is not None]
        if isinstance(value, str) and os.path.isabs(value):
            return path(value)
        return named_paths(value) if isinstance(value, str) else value

    return clean(recipe)


def recipe_toml(manifest: dict[str, Any], store: RunStore) -> str:
    import tomli_w

    return tomli_w.dumps(public_recipe(manifest["recipe"], store.root.resolve().parent))


def card_data(inp: CardInputs) -> Any:
    """The YAML header as DatasetCardData (validated by the caller through DatasetCard)."""
    from huggingface_hub import DatasetCardData

    res, opts = inp.result, inp.opts
    total = sum(res.configs.get("default", {}).values())
    configs = []
    for name, splits in res.configs.items():
        prefix = "data" if name == "default" else f"data/{name}"
        # `description` is a BuilderConfig field: `datasets` hashes it into the cache key,
        # so naming the content fingerprint here makes a re-export load fresh rows
        configs.append({"config_name": name, **({"default": True} if name == "default" else {}),
                        "description": f"avcurate export {res.fingerprint}",
                        "data_files": [{"split": s, "path": f"{prefix}/{s}-*"} for s in splits]})
    return DatasetCardData(
        pretty_name=_name(inp), language=list(opts.language),
        size_categories=[size_category(total)], task_categories=TASK_CATEGORIES, tags=TAGS,
        configs=configs, dataset_info=res.infos, **opts.license.card_fields())


def _name(inp: CardInputs) -> str:
    """--pretty-name, else the run folder's name."""
    return inp.opts.pretty_name or \
        f"{inp.store.root.resolve().name.replace('_', ' ').replace('-', ' ')} (avcurate)"


def write_card(out: Path, inp: CardInputs) -> Path:
    """Write README.md: the header rendered by DatasetCardData and parsed back by
    DatasetCard, as the Hub and `datasets` will parse it."""
    from huggingface_hub import DatasetCard

    body = "\n".join(_body(inp))
    card = DatasetCard(f"---\n{card_data(inp).to_yaml()}\n---\n\n{body}")
    path = out / "README.md"
    card.save(path)
    return path


def _body(inp: CardInputs) -> list[str]:
    res, opts = inp.result, inp.opts
    total = sum(res.configs.get("default", {}).values())
    parts = [f"# {_name(inp)}", "",
             f"Audio-visual question answering data curated with avcurate "
             f"{inp.manifest.get('avcurate_version', '')}: {total:,} rows in the default "
             f"config. Export `{res.fingerprint}` (a hash of the data files).", ""]
    if notice := demo_notice(inp.manifest):
        parts += [f"> **Demo data.** {notice}", ""]
    parts += ["## Configs and splits", "",
              _table(["config", "train", "validation"],
                     [[c, s.get("train", 0), s.get("validation", 0)]
                      for c, s in res.configs.items()]), "", _split_line(opts, res), "",
              "## Load it", "", "```python", "from datasets import load_dataset", ""]
    where = opts.repo_id or "path/to/this/folder"
    for config in res.configs:
        parts.append(f"{config} = load_dataset({where!r}, {config!r})")
    parts += ["```", ""]
    parts += _sample_section(inp.sample) + _media_section(res, opts)
    parts += _made_section(inp)
    parts += ["## Columns", "",
              _table(["column", "meaning"], [[c, COLUMN_DOCS.get(c, "stage-added column")]
                                             for c in res.columns]), "",
              "## Recipe", "",
              "The pipeline that produced these rows, as a recipe for `avcurate run "
              "recipe.toml --out RUN` (paths relative to the folder that held the run, "
              "endpoints and keys removed):", "",
              "```toml", recipe_toml(inp.manifest, inp.store).rstrip(), "```", ""]
    return parts


def _split_line(opts: ExportOptions, res: ExportResult) -> str:
    """How validation rows were chosen, so a reader knows whether a clip can be in both.

    Said from what was written: with `--val-fraction 0`, or categories too small for a
    share of their clips, there is no validation split and the line must not promise one."""
    if not res.configs.get("default", {}).get("validation"):
        why = no_validation_reason(opts.val_fraction, opts.split_by)
        return f"There is no validation split ({why}): every row is in train."
    if opts.split_by == "video":
        return (f"Validation holds about {opts.val_fraction:.0%} of each category, chosen by a "
                "hash of the clip: every question about a clip is in the same split.")
    return (f"Validation holds {opts.val_fraction:.0%} of each category, chosen by a hash of "
            "each row's id: questions about one clip may be in both splits.")


def _sample_section(sample: dict[str, Any] | None) -> list[str]:
    if sample is None:
        return []

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > SAMPLE_CHARS:
            return value[:SAMPLE_CHARS] + "…"
        if isinstance(value, dict):  # a typed media column: {bytes, path}
            return {k: cut(v) for k, v in value.items()}
        return value

    record = {k: cut(v) for k, v in sample.items()}
    return ["## A sample record", "", "The first training row of the default config:", "",
            "```json", json.dumps(record, indent=2, ensure_ascii=False, default=str), "```", ""]


def _media_section(res: ExportResult, opts: ExportOptions) -> list[str]:
    typed = ("`video` and `audio` are typed `datasets.Video()` / `datasets.Audio()` "
             "columns (decoding them needs torchcodec: `pip install 'datasets[video,audio]'`)."
             if opts.media_features else
             "`video` and `audio` hold file paths (strings).")
    if opts.copy_media:
        where = ("Videos and audio files are included under `videos/` and `audios/`. Each "
                 "path is relative to the folder of the data file that holds it: "
                 "`../videos/…` in `data/`, `../../videos/…` in `data/<config>/`.")
    else:
        where = ("Media files are not included. Each path is relative to the folder of the "
                 "data file that holds it and points to where the source clips were on the "
                 "machine that made the export; get the clips from the source datasets (or "
                 "export with --copy-media).")
    snippet = ["```python", "from pathlib import Path", "",
               "folder = Path('path/to/this/folder') / 'data'  # data/<config> for a subset",
               "video_file = (folder / row['video']).resolve()", "```"]
    return ["## Media", "", where, typed, "", *snippet, ""]


def _made_section(inp: CardInputs) -> list[str]:
    funnel = stage_rows(inp.store)
    parts = ["## How it was made", "",
             "Stage funnel (every input row is kept or rejected with a reason):", "",
             _table(["stage", "in", "kept", "rejected", "top reject reasons"],
                    [[r["stage"], r["rows_in"], r["kept"], r["rejected"],
                      ", ".join(f"{k} {v}" for k, v in list(r["rejects_by_reason"].items())[:3])]
                     for r in funnel]), ""]
    filters = [[e["dir"], _settings(e.get("spec", {}))]
               for e in inp.manifest["stages"]
               if not e.get("model") and e.get("dir") and e.get("name") != "ingest"]
    if filters:
        parts += ["Filters and their settings (defaults not shown):", "",
                  _table(["stage", "settings"], filters), ""]
    models = [list(m.values()) for m in models_used(inp.manifest)]
    if models:
        parts += ["Models used:", "", _table(["stage", "backend", "model"], models), ""]
    for e in inp.manifest["stages"]:
        if "categories_before" in e:
            parts += ["Categories before and after balancing:", "",
                      _table(["category", "before", "after"],
                             [[c, n, e["categories_after"].get(c, 0)]
                              for c, n in e["categories_before"].items()]), ""]
    if report := decontam_report(inp.store):
        headers, rows = decontam_rows(report)
        parts += ["Decontamination: training rows sharing a video (by source id or picture) or a "
                  "question with these benchmarks were removed (each counted under the first "
                  "signal that caught it):", "",
                  _table([h.replace("\n", " ") for h in headers], rows), ""]
    if scores := _score_summary(inp.store):
        parts += ["Score summary (final rows):", "", _table(
            ["score", "mean", "p10", "p50", "p90"],
            [[k, f"{v['mean']:.3f}", *(f"{v['quantiles'][q]:.2f}" for q in ("p10", "p50", "p90"))]
             for k, v in scores.items()]), ""]
    return parts


def _settings(spec: dict[str, Any]) -> str:
    clean = public_recipe({k: v for k, v in spec.items() if k != "name"})
    return "; ".join(f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in clean.items()) \
        or "(defaults)"


def _score_summary(store: RunStore) -> dict[str, Any]:
    from avcurate.reports.query import connect
    from avcurate.reports.stats import score_summary

    con = connect(store.root)
    cols = {r[0] for r in con.execute("DESCRIBE samples").fetchall()}
    return {k: v for k, v in score_summary(con, cols).items() if v["count"]}
