"""The demo tour: make the demo data, run every stage on it against a model, then write
the stats report, a Hub-layout export and (optionally) a few trainer steps.

With no model given, the model is the built-in demo model (`avcurate.demo.model`)
served on a free port of 127.0.0.1 for the length of the tour; the recipe reads the
endpoint from AVCURATE_DEMO_* variables, so the same recipe runs against a real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape  # paths shown as written, "[" included

from avcurate.core.outputs import write_output
from avcurate.demo.data import make_demo
from avcurate.demo.model import MODEL_NAME
from avcurate.demo.server import demo_server

ENV = ("AVCURATE_DEMO_BACKEND", "AVCURATE_DEMO_MODEL", "AVCURATE_DEMO_BASE_URL")


@dataclass
class Endpoint:
    """The model the tour's stages talk to."""

    backend: str = "openai"
    model: str = ""
    base_url: str = ""

    @property
    def builtin(self) -> bool:
        return not self.model and not self.base_url and self.backend == "openai"

    def check(self) -> None:
        """A user's mistake stops the demo before anything runs."""
        if self.backend not in ("openai", "gemini"):
            raise ValueError(f"--backend must be openai or gemini, not {self.backend!r}")
        if self.base_url and not self.model:
            raise ValueError("--base-url needs --model: the name the server serves")
        if self.backend == "gemini" and not self.model:
            raise ValueError("--backend gemini needs --model, e.g. gemini-2.5-pro")
        if self.backend == "gemini" and not (os.environ.get("GEMINI_API_KEY")
                                             or os.environ.get("GOOGLE_API_KEY")):
            raise ValueError("--backend gemini needs GEMINI_API_KEY in the environment")
        if not self.builtin:  # the checks every model stage makes, before any clip is made
            from avcurate.models import (
                BackendUnavailable,
                ModelSpec,
                check_backend,
                check_reachable,
            )

            try:
                check_backend(ModelSpec(self.backend, self.model, self.base_url or None))
                check_reachable(self.backend, self.base_url or None)
            except BackendUnavailable as exc:
                raise ValueError(str(exc)) from None


@contextlib.contextmanager
def serving(endpoint: Endpoint) -> Iterator[Endpoint]:
    """The endpoint to use, with the demo model server running behind it when it is built-in;
    the server stops when the block ends, also on Ctrl-C."""
    if not endpoint.builtin:
        yield endpoint
        return
    with demo_server() as server:
        yield Endpoint("openai", MODEL_NAME, server.url + "/v1")


@contextlib.contextmanager
def environment(endpoint: Endpoint) -> Iterator[None]:
    """AVCURATE_DEMO_* set for the recipe, restored afterwards."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(dict(zip(ENV, (endpoint.backend, endpoint.model, endpoint.base_url),
                               strict=True)))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class TourResult:
    run_dir: Path
    report: Path
    export: Path
    configs: dict[str, dict[str, int]] = field(default_factory=dict)
    train_dir: Path | None = None
    history: list[dict] = field(default_factory=list)


def run_tour(out_dir: Path, endpoint: Endpoint, *, show_progress: bool = True,
             train: bool = False, force: bool = False,
             confirm_removal: Callable[[str, list[str]], None] | None = None) -> TourResult:
    """Every stage, the report and the export; re-running resumes (nothing recomputed).
    `force`: a run made with other settings (another model) or moved from another folder is
    recomputed from its first stage that differs, as `avcurate run --force` does."""
    from avcurate.hub.export import export_run
    from avcurate.pipeline.recipe import Recipe
    from avcurate.pipeline.runner import Runner
    from avcurate.reports import html
    from avcurate.reports.stats import collect

    endpoint.check()
    recipe_path = make_demo(out_dir, builtin=endpoint.builtin)
    run_dir = out_dir / "run"
    with serving(endpoint) as live, environment(live):
        recipe = Recipe.load(recipe_path)
        Runner(recipe, run_dir, force=force, show_progress=show_progress,
               confirm_removal=confirm_removal).run()
    report = out_dir / "report.html"  # the demo's own folder (make_demo claimed it)
    write_output(report, html.render(collect(run_dir)).encode("utf-8"))
    # the demo's clips are synthetic (made by make_demo): the card may name a real license
    exported = export_run(run_dir, out_dir / "export", val_fraction=0.1, copy_media="copy",
                          license="cc0-1.0", pretty_name="avcurate demo (synthetic clips)")
    result = TourResult(run_dir, report, exported.out, exported.configs)
    if train:
        result.train_dir, result.history = train_tiny(out_dir, exported.out)
    return result


def train_tiny(out_dir: Path, export: Path) -> tuple[Path, list[dict]]:
    """A few GSPO steps on the export with a tiny policy built from a config (no download)."""
    from avcurate.demo.tiny_policy import make_tiny_policy
    from avcurate.trainer.config import TrainConfig
    from avcurate.trainer.loop import train

    policy = out_dir / "tiny-policy"
    if not (policy / "config.json").exists():
        make_tiny_policy(policy, chars=list("ABCD .<>/answer"))
    cfg = TrainConfig(data=str(export), model=str(policy), out=str(out_dir / "train"),
                      algo="gspo", steps=6, num_generations=8, prompts_per_step=4,
                      max_new_tokens=16, max_prompt_tokens=2048, lr=1e-3, seed=0,
                      rewards=["accuracy", "avcurate.demo.tiny_policy:first_letter"])
    train(cfg)  # resumes from its checkpoint when the demo is re-run
    metrics = Path(cfg.out) / "metrics.jsonl"
    return Path(cfg.out), [json.loads(line) for line in metrics.read_text().splitlines() if line]


def next_steps(out_dir: Path, result: TourResult, endpoint: Endpoint) -> list[str]:
    """What happened, where it is, and the same tour with a real model: lines of rich
    markup. Indented lines are commands (with their comments) for the user to copy: their
    paths shell-quoted, and printed unwrapped, so a narrow terminal never splits one."""
    out, export = escape(str(out_dir)), escape(str(result.export))
    out_arg, run_arg = (escape(shlex.quote(str(p))) for p in (out_dir, result.run_dir))
    who = (f"the built-in demo model ({MODEL_NAME}: it looks at colours and listens to "
           "pitch, and is not a real judge)" if endpoint.builtin
           else escape(f"{endpoint.backend}:{endpoint.model}"))
    lines = [
        "",
        f"[bold]What happened[/]: {out}/annotations holds LLaVA-Video, Video-Vista and AVQA "
        "annotations over ~40 real mp4 clips, some broken on purpose. Every row went through "
        f"validate, score, classify, threshold, probe, balance, subset, both teachers and the "
        f"merger, answered by {who}; each one is kept or rejected with a reason.",
        f"[bold]Report[/]:  {escape(str(result.report))}",
        f"[bold]Export[/]:  {export}  ("
        + "; ".join(f"{c}: " + ", ".join(f"{k} {v}" for k, v in s.items())
                    for c, s in result.configs.items()) + ")",
        f"  python -c \"import datasets; print(datasets.load_dataset('{export}'))\"",
    ]
    if result.history:
        rewards = " ".join(f"{m['reward_mean']:.2f}" for m in result.history)
        lines.append(f"[bold]Trainer[/]: {len(result.history)} GSPO steps of a tiny policy "
                     f"built from a config; reward mean per step: {rewards}; metrics in "
                     f"{escape(str(result.train_dir))}/metrics.jsonl")
    lines += [
        "",
        "[bold]Next[/]:",
        f"  avcurate status {run_arg}             # the funnel again",
        f"  avcurate stats {run_arg} --html r.html  # scores, categories, probe",
        f"  avcurate demo --out {out_arg}                # re-run: everything is resumed",
        "  # the same tour with a real omni model (`vllm serve Qwen/Qwen2.5-Omni-7B --port 8000`):",
        "  avcurate demo --out demo_real --base-url http://localhost:8000/v1 "
        "--model Qwen/Qwen2.5-Omni-7B",
        "  # or Gemini, with GEMINI_API_KEY set:",
        "  avcurate demo --out demo_gemini --backend gemini --model gemini-2.5-pro",
        "  # whole pipelines on real data: recipes/omnivideo_r1.toml, recipes/avrt.toml "
        "(see the README)",
    ]
    return lines
