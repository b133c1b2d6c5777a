"""The shapes the other parts build on: layers, the stage protocol, declared options,
one answer parser and one trace parser for every consumer."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from avcurate.catalogs.base import Reject  # noqa: F401  (catalogs import cleanly on their own)
from avcurate.core.answers import extract_letter, normalise_answer, parse_letter, tagged_letter
from avcurate.core.options import OptionError, check_keys
from avcurate.core.traces import parse_trace
from avcurate.merger.trace import TraceRules, check_trace
from avcurate.pipeline.registry import BUILTINS, create
from avcurate.stages import BaseStage, Resources, StageError
from avcurate.stages.model_stage import ModelStage
from avcurate.trainer.config import TrainConfig
from avcurate.trainer.rewards import get

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT)], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_layers_hold_and_an_upward_import_breaks_them(tmp_path):
    assert _lint(REPO).returncode == 0
    copy = tmp_path / "tree"
    copy.mkdir()
    shutil.copytree(REPO / "avcurate", copy / "avcurate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy)
    with (copy / "avcurate/core/schema.py").open("a") as f:
        f.write("\nimport avcurate.reports.tables  # an upward import\n")
    broken = _lint(copy)
    assert broken.returncode != 0
    assert "avcurate.core is not allowed to import avcurate.reports" in broken.stdout


REQUIRED = {"decontaminate": {"benchmarks": ["video-mme=test.parquet"]}}


def test_every_builtin_declares_what_the_runners_need():
    for name, cls in BUILTINS.items():
        stage = create(name, {"model": "m"} if issubclass(cls, ModelStage)
                       else REQUIRED.get(name, {}))
        assert stage.name == name and isinstance(stage.resources, Resources)
        assert stage.resources == (Resources.MODEL if issubclass(cls, ModelStage)
                                   else Resources.CPU)
        for f in dataclasses.fields(cls):
            if f.init:  # every option has help text and a declared default
                assert f.metadata.get("help"), f"{name}.{f.name} has no help"
            else:  # working state is typed and private
                assert f.name.startswith("_"), f"{name}.{f.name}"
        assert isinstance(stage.summary(), dict)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("balance", {"max_ratio": float("nan")}, "max_ratio = nan must be a finite number"),
    ("decontaminate", {"benchmarks": ["nope"]}, "NAME[@FORMAT]=ANNOTATIONS[:MEDIA_ROOT]"),
    ("decontaminate", {"benchmarks": ["x=a.json"]}, "benchmark 'x' has no format"),
    ("decontaminate", {"benchmarks": ["avqa=a.json"], "max_distance": 40}, "at most 32"),
    ("decontaminate", {}, "give at least one --benchmark"),
    ("decontaminate", {"benchmarks": ["m@jsonl=a.jsonl"], "benchmark_columns": {
        "m": {"bogus": "x"}}}, "cannot map bogus"),
    ("balance", {"max_ratio": float("inf")}, "must be a finite number"),
    ("balance", {"max_ratio": 1e308}, "must be at most"),
    ("balance", {"max_ratio": 0.5}, "must be at least 1"),
    ("balance", {"min_count": "ten"}, "must be an integer"),
    ("balance", {"cascade": "yes"}, "must be true or false"),
    ("validate", {"silence_db": "loud"}, "silence_db = 'loud' must be a number"),
    ("score", {"model": "m", "max_attempts": 0}, "max_attempts = 0 must be at least 1"),
    ("score", {"model": "m", "concurrency": 0}, "concurrency = 0 must be at least 1"),
    ("score", {"model": "m", "timeout": 0}, "timeout = 0.0 must be greater than 0"),
    ("score", {"model": "m", "timeout": -5}, "must be greater than 0"),
    ("score", {"model": "m", "media": "audio"}, "media = 'audio' must be one of"),
    ("score", {"model": "m", "weights": [1, "x", 0, 0]}, "weights[1] = 'x' must be a number"),
    ("score", {"model": ""}, "a model name is required"),
    ("threshold", {"rules": ["question >= 1 or"]}, "cannot parse rule"),
    ("validate", {"silence": -50}, "unknown option 'silence'; did you mean 'silence_db'"),
])
def test_bad_options_are_one_line_errors(name, options, message):
    with pytest.raises(StageError, match=message.replace("[", r"\[")) as info:
        create(name, options)
    assert "\n" not in str(info.value)


def test_options_are_checked_and_normalised_from_their_declarations():
    stage = create("balance", {"max_ratio": 2, "min_count": 3.0})
    assert stage.max_ratio == 2.0 and isinstance(stage.max_ratio, float)
    assert stage.min_count == 3 and isinstance(stage.min_count, int)
    with pytest.raises(OptionError, match="did you mean 'num_generations'"):
        check_keys(TrainConfig, ["num_generation"], "train config")
    with pytest.raises(OptionError, match="lr = -1.0 must be greater than 0"):
        TrainConfig(lr=-1)


def test_operational_options_are_not_part_of_a_stage_identity():
    from avcurate.stages.base import fingerprint

    base = create("score", {"model": "m"})
    assert fingerprint(create("score", {"model": "m", "timeout": 5, "concurrency": 2,
                                        "rpm": 60, "base_url": "http://h:1/v1"})
                       ) == fingerprint(base)
    assert fingerprint(create("score", {"model": "m", "frames": 4})) != fingerprint(base)


def test_v01_plugins_still_run_through_the_old_import_path():
    from avcurate.pipeline.stage import BaseStage as OldBase
    from avcurate.pipeline.stage import Outcome

    with pytest.warns(DeprecationWarning, match="v0.1 signature"):
        @dataclasses.dataclass
        class Old(OldBase):
            name = "old"

            def process(self, table, ctx):
                return Outcome.split(table, self.name, [None] * table.num_rows)

    import pyarrow as pa

    result = Old().process(pa.table({"id": ["a"]}), None, 0)
    assert result.kept.num_rows == 1 and issubclass(Old, BaseStage)


# -- one answer parser, one trace parser ------------------------------------------------------

OPTIONS = ["red", "blue", "green", "white"]
HEDGES = ["B or C", "B and C", "B, C", "B/C", "B C D", "(B) or (C)"]


@pytest.mark.parametrize("hedge", HEDGES)
def test_a_hedge_is_no_answer_for_every_consumer(hedge):
    assert parse_letter(hedge, OPTIONS).letter is None
    assert parse_letter(hedge, OPTIONS).how == "ambiguous"
    # the teacher's free-text reply
    assert extract_letter(f"Reasoning: it is blue or green.\nAnswer: {hedge}", OPTIONS).letter is None
    # the catalogs keep it as written, so validate rejects it (answer_not_in_options)
    assert normalise_answer(hedge, OPTIONS) == hedge
    # the trainer's accuracy and modality-attention rewards
    completion = f"<think>I see blue.</think><answer>{hedge}</answer>"
    row = {"options": OPTIONS, "answer": "B", "video_only_completion": "<answer>A</answer>",
           "audio_only_completion": "<answer>B</answer>"}
    assert get("accuracy")([completion], [row]) == [0.0]
    # read as B, the hedge would match the audio-only answer and earn the bonus
    assert get("modality_attention")([completion], [row]) == [0.0]
    # the merger keeps no hedged trace
    check, _ = check_trace(completion, "B", TraceRules(min_tokens=1))
    assert check == "answer_format"


def test_two_answer_blocks_are_no_answer():
    two = "<think>blue</think><answer>B</answer><answer>B</answer>"
    assert tagged_letter(two, OPTIONS) is None
    assert get("accuracy")([two], [{"options": OPTIONS, "answer": "B"}]) == [0.0]
    assert get("format")([two], [{}]) == [0.0]
    assert parse_trace(two).problem == "format"


@pytest.mark.parametrize(("text", "expected"), [
    ("B", "B"), ("(b)", "B"), ("B.", "B"), ("B) blue", "B"), ("B. blue", "B"), ("**B**", "B"),
    ("Answer: B", "B"), ("Option B", "B"), ("blue", "B"), ("E", None), ("I think it is B", None),
])
def test_accepted_spellings_agree_across_consumers(text, expected):
    assert parse_letter(text, OPTIONS).letter == expected
    assert extract_letter(text, OPTIONS).letter == expected  # teachers and the probe
    row = {"options": OPTIONS, "answer": "B"}
    assert get("accuracy")([f"<answer>{text}</answer>"], [row]) == [float(expected == "B")]


def test_the_format_reward_and_the_merger_read_traces_alike():
    good = "<think>I see a blue square and hear a low tone.</think><answer>B</answer>"
    rules = TraceRules(min_tokens=1)
    for text in [good, good + " extra", "<think></think><answer>B</answer>",
                 "<answer>B</answer>", "<think>a<think>b</think><answer>B</answer>"]:
        fmt = get("format")([text], [{}])[0]
        check, _ = check_trace(text, "B", rules)
        assert fmt == float(parse_trace(text).ok)
        assert (check is None) == (fmt == 1.0)


def test_model_stage_subclasses_fit_the_template_without_overriding_process():
    for cls in BUILTINS.values():
        if issubclass(cls, ModelStage):
            assert cls.process is ModelStage.process, cls.name
    assert issubclass(ModelStage, BaseStage)
