"""Audits of the judge's labels: `agree` (a second judge, or a person's labels) and
`spotcheck` (the page a person labels a sample on). They write under RUN/audits/ only."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from avcurate.audits.agree import AgreeOptions, run_agree, run_human, second_judge
from avcurate.audits.sample import parse_sample, score_entry
from avcurate.audits.spotcheck import build_sheet
from avcurate.cli.common import Quiet, app, fail, guard, out, require_run
from avcurate.cli.generate import collect, options_for, with_signature
from avcurate.core.options import OptionError
from avcurate.core.store import RunStore
from avcurate.curation.score import Score
from avcurate.reports.tables import agreement_tables


def _param(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


AGREE_DOC = "\n\n".join([
    'Re-score a sample with a second judge and measure how far the two agree.',
    "The sample (stratified by category and by the first judge's composite-score bucket) is "
    "scored with the first judge's rubric, media and weights unless you override them; the "
    'results go to RUN/audits/agree-NAME/ and the run itself is unchanged. Prints per '
    'dimension the quadratic-weighted kappa, Spearman rho and mean absolute difference on the'
    " 0-10 scale, and for the keep/reject decision (the run's threshold rules applied to each"
    " judge's scores) Cohen's kappa and the confusion counts.",
    "With --human FILE (saved by `avcurate spotcheck`'s page) it compares a person's labels "
    "with the run's judge and every second judge instead, calling no model.",
])


def register_agree() -> None:
    options = options_for([Score, AgreeOptions])
    params = [
        inspect.Parameter("run_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
            Path, typer.Argument(metavar="RUN_DIR", help="A run with a finished score stage.")]),
        *[o.parameter() for o in options],
        _param("human", Annotated[Path | None, typer.Option(
            help="A person's labels (CSV or JSON from the spot-check page): compare them with "
                 "the judges instead of calling a second judge.")]),
        _param("redo", Annotated[bool, typer.Option(
            "--redo", help="Replace an audit of the same name made with other settings "
                           "(cached answers are reused).")], False),
        _param("quiet", Quiet, False),
    ]

    def command(**values: Any) -> None:
        try:
            judge_given, agree_given = collect(options, values, 2)
            opts = guard(AgreeOptions, **agree_given)
        except OptionError as exc:
            fail(str(exc))
        run_dir: Path = values["run_dir"]
        require_run(run_dir)
        entry = guard(score_entry, RunStore(run_dir).load_manifest())
        if values["human"] is not None:
            if judge_given:
                fail("--human compares a person's labels with the judges the run already has; "
                     "it takes no judge options (" + ", ".join(sorted(judge_given)) + ")")
            summary = guard(run_human, run_dir, values["human"], opts)
        else:
            if not judge_given.get("model"):
                fail("name the second judge: --backend B --model M [--base-url URL] (or "
                     "--human FILE for a person's labels)")
            judge = guard(second_judge, entry, judge_given)
            summary = guard(run_agree, run_dir, judge, opts, redo=values["redo"],
                            show_progress=not values["quiet"])
        for table in agreement_tables(summary):
            out.print(table)
        unanswered = summary.get("unanswered") or {}
        if unanswered:
            out.print("second judge gave no valid answer for: " + ", ".join(
                f"{n} row(s) ({reason})" for reason, n in unanswered.items()), markup=False)
        out.print(f"written to {Path(run_dir) / 'audits' / summary['folder']}", markup=False)

    app.command(name="agree")(with_signature(command, params, AGREE_DOC))


@app.command()
def spotcheck(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run with a finished score stage.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The HTML page to write.")],
    sample: Annotated[str, typer.Option(help="Rows on the page: a number (stratified by "
                                             "category and score bucket) or 'all'.")] = "50",
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 0,
    copy_media: Annotated[bool, typer.Option(
        help="Copy the clips into OUT_media/ beside the page, so the page and its clips can "
             "be moved or shared together; otherwise the page points at the originals.")]
    = False,
) -> None:
    """Write a self-contained HTML page to check a sample of the judge's labels by hand.

    Each row shows its clip, question, options, answer key and every judge's scores and
    rationale; you enter your own scores and keep/reject and save them (CSV or JSON) from
    the page. Then `avcurate agree RUN --human FILE` gives the agreement figures.
    """
    require_run(run_dir)
    size = guard(parse_sample, sample)
    if seed < 0:
        fail(f"--seed must be at least 0, not {seed}")
    sheet = guard(build_sheet, run_dir, out_file, sample=size, seed=seed, copy_media=copy_media)
    copied = f", {sheet.media_copied} clips copied beside it" if copy_media else ""
    rows = f"{sheet.rows} row{'s' * (sheet.rows != 1)}"
    out.print(f"spot-check page with {rows} written to {sheet.path}{copied}; open it "
              "in a browser, label, save, then `avcurate agree "
              f"{run_dir} --human FILE`", markup=False)
