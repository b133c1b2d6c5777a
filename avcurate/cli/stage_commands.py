"""One command per stage (or group of stages), generated from the stages' own declarations.

`avcurate balance RUN --max-ratio 3` is the balance stage run on its own: its options,
defaults, ranges and help come from `Balance`'s fields, the same ones a recipe's
`[[stages]]` table is checked against.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from avcurate.cli.common import (
    Force,
    Quiet,
    Yes,
    app,
    as_commands,
    check_specs,
    fail,
    guard,
    out,
    run_more,
)
from avcurate.cli.generate import CliOption, collect, options_for, with_signature
from avcurate.core.options import OptionError, declared
from avcurate.core.store import RunStore
from avcurate.pipeline.recipe import Recipe, RecipeError, SourceSpec, StageSpec, local_paths
from avcurate.pipeline.registry import COMMAND_STAGES, stage_class
from avcurate.pipeline.runner import Runner
from avcurate.reports.tables import category_table

MODEL_FIELDS = ("backend", "model", "base_url", "concurrency", "rpm", "prompt", "thinking")


def _param(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


COMMON = [
    _param("redo", Annotated[bool, typer.Option(
        "--redo", help="Run the stage again even if the run already did it (removes it and the "
                       "stages after it first, asking when there are later ones; cached model "
                       "answers are reused). Options not given take this command's defaults, "
                       "not the run's; the settings that change are named first.")], False),
    _param("append", Annotated[bool, typer.Option(
        "--append", help="Add the stage after the run's last stage even though the run did it "
                         "earlier (a second threshold after the teachers); the same command "
                         "again then finds it done.")], False),
    _param("yes", Yes, False),
    _param("force", Force, False),
    _param("quiet", Quiet, False),
]
DRY_RUN = _param("dry_run", Annotated[bool, typer.Option(
    "--dry-run", help="Print the number of calls, an input token estimate and an example "
                      "request; call nothing.")], False)
WORKERS = _param("workers", Annotated[int | None, typer.Option(
    help="Processes for decoding media, and for building the rows of a large JSON "
         "annotation file when a run starts. With 1, media is read in this process, "
         "where a stuck decoder cannot be stopped (\\[run] media_timeout needs 2 or more).")], None)
INGEST = [
    _param("source", Annotated[str | None, typer.Option(
        "--source", help="Start a run: annotation format (see `sources`).")]),
    _param("annotations", Annotated[Path | None, typer.Option(
        help="With --source: the annotation file.")]),
    _param("media_root", Annotated[Path | None, typer.Option(help="With --source: the media "
                                                                  "root.")]),
    _param("out_dir", Annotated[Path | None, typer.Option(
        "--out", "-o", help="With --source: the run folder to create.")]),
    _param("column", Annotated[list[str] | None, typer.Option(
        help="With jsonl/parquet: SAMPLE_COLUMN=FILE_COLUMN, repeatable.")]),
]


@dataclass
class StageCommand:
    """A command that runs `stages` (in order) on a run, with options generated from them."""

    name: str
    stages: list[str]
    doc: str
    prefixes: list[str] | None = None
    extra: list[inspect.Parameter] = field(default_factory=list)
    model: bool = False          # a model stage: --dry-run, usage line
    ingest: bool = False         # may start the run itself (--source ...)
    after: Callable[[Path], None] | None = None
    # given --limit: run the stages on a sample as an audit (RUN/audits/), not on the run
    audit: Callable[[Path, list[StageSpec], dict[str, Any]], None] | None = None

    def register(self) -> None:
        classes = [stage_class(s) for s in self.stages]
        options = options_for(classes, prefixes=self.prefixes,
                              prefixed=MODEL_FIELDS if self.prefixes else ())
        run_dir = inspect.Parameter(
            "run_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None if self.ingest else inspect.Parameter.empty,
            annotation=Annotated[Path | None if self.ingest else Path, typer.Argument(
                metavar="RUN_DIR",
                help="A run folder (made by `avcurate run` or `ingest`)"
                     + (", or none with --source ... to start one." if self.ingest else "."))])
        params = [run_dir, *[o.parameter() for o in options], *self.extra,
                  *(INGEST if self.ingest else []), *([DRY_RUN] if self.model else []), *COMMON]

        def command(**values: Any) -> None:
            self.run(options, values)

        app.command(name=self.name)(with_signature(command, params, self.doc))

    def run(self, options: list[CliOption], values: dict[str, Any]) -> None:
        try:
            given = collect(options, values, len(self.stages))
        except OptionError as exc:
            fail(str(exc))
        self._check_pairs(given, values)
        specs = [StageSpec(s, opts) for s, opts in zip(self.stages, given, strict=True)]
        check_specs(specs)  # every value is checked before any row is touched
        run_dir = values["run_dir"]
        if self.ingest and values.get("source") is not None:
            run_dir = _ingest_first(run_dir, values)
        if run_dir is None:
            fail("give a RUN_DIR, or --source/--annotations/--media-root/--out to start one")
        if values.get("dry_run"):
            from avcurate.pipeline.dry_run import dry_run

            out.print(guard(as_commands, dry_run, run_dir, specs[0]), highlight=False,
                      soft_wrap=True)
            return
        if self.audit is not None and values.get("limit") is not None:
            self.audit(run_dir, specs, values)
            return
        if not run_more(run_dir, specs, values["force"], values["quiet"], values.get("workers"),
                        values["redo"], values["yes"], values["append"]):
            return
        if self.model:
            _print_usage(run_dir, len(specs))
        if self.after is not None:
            self.after(run_dir)

    def _check_pairs(self, given: list[dict[str, Any]], values: dict[str, Any]) -> None:
        """Options that only mean something with another one, named by the flags typed: a
        prefixed model stage without its model, an audit's --seed or --name without --limit
        (which would run the whole stage instead of a sample), --append with --redo or --limit."""
        prefixes = self.prefixes or [""] * len(self.stages)
        for prefix, opts, stage in zip(prefixes, given, self.stages, strict=True):
            if prefix and "model" in {f.name for f in declared(stage_class(stage))} \
                    and not opts.get("model"):
                fail(f"--{prefix}-model is required (the model of stage {stage!r})")
        if self.audit is not None and values.get("limit") is None and (
                values.get("seed") is not None or values.get("audit_name")):
            fail("--seed and --name go with --limit (they seed and name a sampled audit; "
                 "without --limit the stage runs on every row)")
        if values["append"] and (values["redo"] or values.get("limit") is not None):
            fail("--append adds the stage after the run's last one; it does not go with "
                 + ("--redo (which redoes a done stage where it is)" if values["redo"]
                    else "--limit (an audit of a sample, outside the run's stages)"))


def _ingest_first(run_dir: Path | None, values: dict[str, Any]) -> Path:
    """`score --source ... --out RUN`: ingest + validate into a new run, then go on."""
    from avcurate.cli.run_commands import parse_columns

    if run_dir is not None:
        fail("give either RUN_DIR or --source/--annotations/--media-root/--out, not both")
    missing = [k for k in ("annotations", "media_root", "out_dir") if not values.get(k)]
    if missing:
        flags = {"annotations": "--annotations", "media_root": "--media-root", "out_dir": "--out"}
        fail(f"--source needs {', '.join(flags[m] for m in missing)}")
    columns = {"columns": parse_columns(values["column"])} if values.get("column") else {}
    try:  # as a recipe's source: a file:// URL is its path, another URL is refused
        paths = local_paths(values["source"], {k: str(values[k])
                                               for k in ("annotations", "media_root")})
    except RecipeError as exc:
        fail(str(exc))
    src = SourceSpec(values["source"], str(Path(paths["annotations"]).resolve()),
                     str(Path(paths["media_root"]).resolve()), columns)
    guard(Runner(Recipe([src], [StageSpec("validate")]), values["out_dir"],
                 force=values["force"], show_progress=not values["quiet"]).run)
    return values["out_dir"]


def _print_usage(run_dir: Path, n_stages: int) -> None:
    for entry in RunStore(run_dir).load_manifest()["stages"][-n_stages:]:
        usage = entry.get("usage")
        if usage is None:
            continue
        out.print(f"{entry['name']}: {usage.get('calls', 0)} calls, {usage.get('cached', 0)} "
                  f"cached, {usage.get('retries', 0)} retries, {usage.get('prompt_tokens', 0):,} "
                  f"prompt + {usage.get('completion_tokens', 0):,} completion tokens"
                  + (f"; {usage['cut']:,} invalid answer(s) stopped at max_tokens"
                     if usage.get("cut") else "")
                  + (f"; {usage['short_n']:,} call(s) got fewer answers than the n asked for "
                     "(the server ignores or refuses n) and asked again for the rest, one call "
                     "at a time: --no-multi-sample (multi_sample = false) sends them side by side"
                     if usage.get("short_n") else ""))


AUDIT = [
    _param("limit", Annotated[int | None, typer.Option(
        help="Probe only a stratified sample of this many rows (by category and score "
             "bucket), as an audit: the figures go to RUN/audits/probe-NAME/ and the run's "
             "kept rows do not change. For a look before paying for every row.")]),
    _param("seed", Annotated[int | None, typer.Option(
        help="With --limit: seed of the sample (default 0).")]),
    _param("audit_name", Annotated[str, typer.Option(
        "--name", help="With --limit: the audit's name (default: the model name).")], ""),
]


def _probe_audit(run_dir: Path, specs: list[StageSpec], values: dict[str, Any]) -> None:
    """`probe --limit N`: the probe on a sample, into RUN/audits/probe-NAME/."""
    from avcurate.audits.probe import run_probe_audit
    from avcurate.cli.common import require_run
    from avcurate.pipeline.registry import create
    from avcurate.reports.tables import probe_table

    seed = values["seed"] if values["seed"] is not None else 0
    if values["limit"] < 1:
        fail(f"--limit must be at least 1, not {values['limit']}")
    if seed < 0:
        fail(f"--seed must be at least 0, not {seed}")
    require_run(run_dir)
    stage = guard(create, "probe", specs[0].options)
    summary = guard(run_probe_audit, run_dir, stage, limit=values["limit"], seed=seed,
                    name=values["audit_name"], redo=values["redo"],
                    show_progress=not values["quiet"])
    sample = summary["sample"]
    out.print(f"probe audit of {sample['rows']} sampled rows (of {sample['population']} "
              f"multiple-choice rows in {summary['stage']}); the run is unchanged", markup=False)
    if summary["probe"].get("rows"):
        out.print(probe_table(summary["probe"]))
    if summary["unanswered"]:
        out.print("not answered: " + ", ".join(f"{n} row(s) ({r})" for r, n in
                                               summary["unanswered"].items()), markup=False)
    usage = summary["usage"]
    out.print(f"{usage.get('calls', 0)} calls, {usage.get('cached', 0)} cached; written to "
              f"{Path(run_dir) / 'audits' / summary['folder']}", markup=False)


def _balance_table(run_dir: Path) -> None:
    entry = RunStore(run_dir).load_manifest()["stages"][-1]
    out.print(category_table(entry["categories_before"], entry["categories_after"]))


def _trace_report(run_dir: Path) -> None:
    from avcurate.reports.traces import format_report, trace_report

    if (report := trace_report(run_dir)) is not None:
        out.print(format_report(report))


COMMANDS = [
    StageCommand("validate", ["validate"], "Structural checks: missing/corrupt/truncated media, "
                 "no or silent audio, bad annotations.", extra=[WORKERS]),
    StageCommand("score", ["score"], "Score samples on 4 dimensions with a multimodal judge "
                 "(OmniVideo-R1 used Gemini-2.5-Pro).\n\nEither score an existing RUN_DIR, or "
                 "give --source/--annotations/--media-root/--out to ingest + validate + score in "
                 "one go.", model=True, ingest=True),
    StageCommand("classify", ["classify"], "Sort questions into the taxonomy with a text LLM "
                 "(OmniVideo-R1 used Qwen3-32B).", model=True),
    StageCommand("probe", ["probe"], "Measure modality dependency and difficulty: a model "
                 "(typically the policy to train) answers each multiple-choice question n "
                 "times with frames+audio, frames only, audio only and text only.\n\nAdds "
                 "probe_acc_{av,v,a,t}, pass_rate, measured_video_dependency, "
                 "measured_audio_dependency and blind_answerable, for threshold rules such as "
                 "'pass_rate > 0' 'pass_rate < 1' 'blind_answerable <= 0.25'.\n\nWith --limit N "
                 "it probes a stratified sample only, as an audit that leaves the run as it "
                 "is.", model=True, extra=AUDIT, audit=_probe_audit),
    StageCommand("teach", list(COMMAND_STAGES["teach"]),
                 "AVRT's single-modality teachers: a vision model on frames, an audio model on "
                 "the clip, then keep the rows they got right.\n\nAVRT used Kimi-VL-Thinking "
                 "(vision) and Audio Flamingo 3 think (audio), e.g. each served by `vllm serve` "
                 "and reached with --*-backend openai --*-base-url http://HOST:PORT/v1.",
                 prefixes=["visual", "audio", ""], model=True),
    StageCommand("merge-traces", list(COMMAND_STAGES["merge-traces"]),
                 "Merge the teachers' reasoning into <think>…</think><answer>X</answer> traces "
                 "(AVRT used Qwen2.5-14B-Instruct), check every trace, and print the trace "
                 "report.", model=True,
                 after=_trace_report),
    StageCommand("threshold", ["threshold"], "Keep rows passing every rule; rejects name the "
                 "first rule a row failed."),
    StageCommand("balance", ["balance"], "Prune long-tail categories and cap the largest; prints "
                 "the category table before/after.", after=_balance_table),
    StageCommand("subset", ["subset"], "Mark a named subset (default: the audio-visual one) "
                 "without rejecting anything."),
    StageCommand("dedup", ["dedup"], "Reject exact duplicates (same media, normalised question "
                 "and options)."),
    StageCommand("decontaminate", ["decontaminate"], "Reject rows whose video (same source id, "
                 "or the same picture by frame hashes) or question (same, or overlapping "
                 "n-grams) is in a benchmark; each signal can be switched off."),
]


def register_all() -> None:
    for command in COMMANDS:
        command.register()

