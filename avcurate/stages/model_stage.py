"""The template every model-driven stage fits: score, classify, both teachers, the merger.

A subclass fills in hooks and never overrides `process`:

- `media_needs()`: what to decode per row (frames, seconds of audio), through the run's
  decode-once cache; `media_path(row)`: which file (the audio teacher prefers `audio`);
  `decode(rows, ctx)` when frames and sound come from different files (the probe);
- `build(row, media, history)`: the request for one row (`history`: earlier replies of
  this row with the feedback they got, for stages that ask again with feedback);
  `build_all(row, media, history)`: several requests per row (the probe asks once per
  media condition), joined by `combine(row, values)` into the row's columns;
- `validate(response, row)`: column values for a good answer, a `Decline` for a valid
  answer that rejects the row (e.g. "no fitting category"), or raise `InvalidAnswer`;
- `feedback(error)`: the follow-up message for an invalid answer (None: ask again as is).

Two separate budgets: `max_attempts` transport tries per request (429, 5xx, timeouts),
and `max_rounds` answers per row (an invalid answer is asked again, with feedback where
the stage gives it). A row costs at most max_rounds x max_attempts calls.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from avcurate.core.answers import letterable
from avcurate.core.options import declared, option
from avcurate.core.schema import with_columns
from avcurate.media.cache import DecodedMedia, MediaNeeds, decode_rows
from avcurate.models import (
    BACKENDS,
    BackendUnavailable,
    Executor,
    ModelResponse,
    ModelSpec,
    check_backend,
    check_reachable,
    check_thinking,
    make_backend,
)
from avcurate.models.errors import InvalidAnswer
from avcurate.models.executor import CallStats
from avcurate.models.request import ModelRequest
from avcurate.stages.base import BaseStage, Resources, ShardResult, StageError, text_hash
from avcurate.stages.context import StageContext

History = list[tuple[str, str]]  # (the model's reply, the feedback it was given)


def too_many_options(row: dict[str, Any]) -> str | None:
    """Why a row's options cannot be lettered (more than A-Z name), else None: such a row
    is rejected before any call, where building its prompt raised an IndexError that ended
    the stage (validate rejects it first in a run that has it)."""
    options = row.get("options")
    if letterable(options):
        return None
    return f"{len(options)} options, more than the letters A-Z name (run validate first)"


# Gemini 3 and later: Google's guidance is to keep their default temperature, 1.0
GEMINI_3 = re.compile(r"gemini-([3-9]|\d{2,})")


@dataclass(frozen=True)
class Decline:
    """A valid answer that rejects its row (cached like any valid answer)."""

    reason: str
    detail: str = ""


@dataclass
class ModelStage(BaseStage):
    """Base of the model stages: model options, decoding, rounds, the executor, usage."""

    resources = Resources.MODEL
    parallel_shards = 3  # one shard decoding, one in full flight, one finishing its last wave
    rounds_column: ClassVar[str | None] = None  # a column that records answers used per row

    backend: str = option("openai", choices=BACKENDS, help="openai (any OpenAI-compatible "
                          "server, e.g. `vllm serve`), gemini, transformers (local folder), vllm.")
    model: str = option("", help="Model name (or local folder for transformers).")
    # operational: where a model is served does not change what it answers (the backend
    # and model name do, and they key the response cache), so a new port resumes the run
    base_url: str = option("", operational=True,
                           help="Server URL, e.g. http://localhost:8000/v1.")
    concurrency: int = option(16, min=1, operational=True, help="Requests in flight at once.")
    rpm: float = option(0.0, min=0, operational=True,
                        help="At most this many requests per minute, Ray actors together "
                        "(0 = no limit).")
    timeout: float = option(120.0, gt=0, operational=True,
                            help="Seconds to wait for an answer (opening the "
                            "connection gets at most 5 of them).")
    max_attempts: int = option(4, min=1, help="Transport tries per request (429, 5xx, "
                               "timeouts, connection errors), with backoff.")
    max_rounds: int = option(3, min=1, help="Answers per row: an invalid answer (not JSON, out "
                             "of range, no letter) is asked again, up to this many times.")
    max_failure_rate: float = option(0.5, gt=0, max=1, operational=True, help="Stop the stage "
                                     "(rejecting nothing) when more than this share of calls "
                                     "fail after their retries (checked after 20 calls, and "
                                     "when all of fewer fail); with 1, refused calls reject "
                                     "their rows.")
    cache: bool = option(True, operational=True, help="Use and fill the run's response cache.")
    temperature: float = option(0.0, min=0, max=2, help="Sampling temperature.")
    max_tokens: int = option(1024, min=1, help="Longest answer, tokens.")
    # absent="": runs made before the option existed keep their fingerprints
    thinking: str = option("", absent="", help="Gemini's thinking: a token budget (2.5 "
                           "models: 0 turns it off where the model allows, -1 lets it "
                           "choose) or a level (3 models: minimal, low, medium, high); "
                           "empty: the model's default. Gemini counts its thinking in the "
                           "answer's token limit.")

    _executor: Executor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.spec()  # an unknown backend or a missing model fails when the recipe is planned
            check_thinking(self.backend, self.thinking)  # a request setting, not the spec's
        except ValueError as exc:
            raise StageError(f"stage {self.name!r}: {exc}") from None

    def content(self) -> dict[str, str]:
        """The text of a prompt file given in place of the packaged one (every model stage
        has `prompt` and the `_template` it read)."""
        if getattr(self, "prompt", ""):
            return {"prompt": text_hash(self._template)}  # type: ignore[attr-defined]
        return {}

    def check(self) -> None:
        try:
            check_backend(self.spec())
        except BackendUnavailable as exc:
            raise StageError(f"stage {self.name!r}: {exc}") from None

    def advice(self) -> list[str]:
        """Settings that run but work against the model: said before the stage runs."""
        if self.backend == "gemini" and GEMINI_3.search(self.model) and self.temperature < 1:
            return [f"stage {self.name!r}: Google recommends temperature 1.0 for Gemini 3 "
                    f"models ({self.model}); lower may loop or degrade their reasoning. It is "
                    f"sent {self.temperature:g}: --temperature 1 (temperature = 1.0 in a "
                    "recipe) follows the advice"]
        return []

    def reach(self) -> None:
        """Before the stage runs next: its server answers and takes the key (see
        `models/reachable.py`); the runner asks only the stage it is about to start."""
        try:
            check_reachable(self.backend, self.base_url or None)
        except BackendUnavailable as exc:
            raise StageError(f"stage {self.name!r}: model {self.model!r}: {exc}") from None

    def spec(self) -> ModelSpec:
        return ModelSpec(self.backend, self.model, self.base_url or None, self.concurrency,
                         self.rpm, self.timeout, self.max_attempts)

    def sampling(self) -> dict[str, Any]:
        """The settings every request of the stage is sent with (and cached under)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens,
                "thinking": self.thinking}

    # -- hooks ---------------------------------------------------------------------------
    def media_needs(self) -> MediaNeeds:
        return MediaNeeds()

    def media_path(self, row: dict[str, Any]) -> str | None:
        return row["video"]

    def decode(self, rows: list[dict[str, Any]], ctx: StageContext) -> list[Any]:
        """Each row's decoded media (or an error dict), through the run's media cache."""
        return decode_rows(rows, self.media_path, self.media_needs(), ctx)

    def build(self, row: dict[str, Any], media: DecodedMedia | None, history: History
              ) -> ModelRequest:
        raise NotImplementedError

    def validate(self, response: ModelResponse, row: dict[str, Any]) -> dict[str, Any] | Decline:
        raise NotImplementedError

    def feedback(self, error: InvalidAnswer) -> str | None:
        return None

    # -- protocol ------------------------------------------------------------------------
    def setup(self, ctx: StageContext) -> None:
        if self._executor is None:
            self._executor = Executor(
                make_backend(self.spec(), share=ctx.share), concurrency=self.concurrency,
                rpm=self.rpm * ctx.share or None,
                max_attempts=self.max_attempts, max_failure_rate=self.max_failure_rate,
                cache=ctx.cache("responses") if self.cache else None,
                limit_name=self._limit_name())

    def _limit_name(self) -> str:
        """How this stage's max_tokens is set: its recipe key and its flag (the merger's is
        --max-answer-tokens, its --max-tokens being the trace's length)."""
        flag = next(f.metadata["flag"] for f in declared(self) if f.name == "max_tokens")
        return f"max_tokens ({flag or '--max-tokens'})"

    def teardown(self) -> None:
        if self._executor is not None:
            self._executor.close()
        self._executor = None

    def stop(self, exc: BaseException) -> None:
        """A sibling shard failed for good: fail this stage's other calls at once."""
        if self._executor is not None:
            self._executor.stop(exc)

    def summary(self) -> dict[str, Any]:
        return {"model": {"backend": self.backend, "model": self.model,
                          "base_url": self.base_url or None}}

    def build_all(self, row: dict[str, Any], media: DecodedMedia | None, history: History
                  ) -> list[ModelRequest]:
        return [self.build(row, media, history)]

    def combine(self, row: dict[str, Any], values: list[Any]) -> dict[str, Any] | Decline:
        return values[0]

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        self.setup(ctx)
        assert self._executor is not None
        stats = CallStats()  # this shard's calls (other shards may be running in other threads)
        rows = table.to_pylist()
        media = self.decode(rows, ctx)
        n = len(rows)
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        used = [0] * n
        history: list[History] = [[] for _ in range(n)]
        answers: dict[tuple[int, int], Any] = {}   # (row, request) -> validated value
        pending: dict[int, list[int] | None] = {}  # row -> its requests still unanswered
        for i, m in enumerate(media):
            if isinstance(m, dict):
                reasons[i], details[i] = m["error"], m["detail"]
            elif (unlettered := too_many_options(rows[i])) is not None:
                reasons[i], details[i] = "too_many_options", unlettered
            else:
                pending[i] = None  # all of them
        for _ in range(self.max_rounds):
            if not pending:
                break
            pairs, requests, validators = [], [], []
            for i, todo in pending.items():
                built = self.build_all(rows[i], media[i], history[i])
                for j in range(len(built)) if todo is None else todo:
                    pairs.append((i, j))
                    requests.append(built[j])
                    validators.append(functools.partial(self.validate, row=rows[i]))
            results = self._executor.run(requests, validators, stats)
            retry: dict[int, list[int] | None] = {}
            failed: set[int] = set()  # rows with a call that failed for good: not asked again
            for i in pending:
                used[i] += 1
                reasons[i] = details[i] = None
            for (i, j), res in zip(pairs, results, strict=True):
                if i in failed:
                    continue
                if res.error is None and res.reason is None:
                    answers[(i, j)] = res.value
                    continue
                reasons[i], details[i] = res.reason, res.detail or None
                if res.error is None:
                    failed.add(i)
                    continue
                details[i] = f"after {used[i]} answer(s): {res.detail}"
                note = self.feedback(res.error)
                if note is not None:
                    history[i].append((res.response.text if res.response else "", note))
                retry.setdefault(i, []).append(j)  # type: ignore[union-attr]
            pending = {i: todo for i, todo in retry.items() if i not in failed}
        values = self._combine(rows, answers, reasons, details)
        return self._result(table, values, reasons, details, used, stats)

    def _combine(self, rows, answers, reasons, details) -> list[Any]:
        """Each answered row's columns; a `Decline` among its answers rejects the row."""
        values: list[Any] = [None] * len(rows)
        by_row: dict[int, list[Any]] = {}
        for (i, _), value in sorted(answers.items(), key=lambda kv: kv[0]):
            by_row.setdefault(i, []).append(value)
        for i, row in enumerate(rows):
            if reasons[i] is not None:
                continue
            got = by_row.get(i, [])
            declined = next((v for v in got if isinstance(v, Decline)), None)
            combined = declined or self.combine(row, got)
            if isinstance(combined, Decline):
                reasons[i], details[i] = combined.reason, combined.detail or None
            else:
                values[i] = combined
        return values

    def _result(self, table, values, reasons, details, used, stats: CallStats) -> ShardResult:
        cols = {name: pa.array([(v or {}).get(name) if reasons[i] is None else None
                                for i, v in enumerate(values)], typ)
                for name, typ in self.adds.items() if name != self.rounds_column}
        if self.rounds_column:
            cols[self.rounds_column] = pa.array(used, pa.int64())
        return ShardResult.split(with_columns(table, cols), self.name, reasons, details,
                                 stats.to_dict() | self.answer_counts(values))

    def answer_counts(self, values: list[Any]) -> dict[str, int]:
        """Counts of this shard's answers to record beside its calls' usage (summed over
        shards into the manifest); none by default."""
        return {}

    def first_requests(self, table: pa.Table, ctx: StageContext
                       ) -> tuple[list[list[ModelRequest]], int]:
        """The first-round requests of every row (none where media failed), for --dry-run."""
        rows = table.to_pylist()
        media = self.decode(rows, ctx)
        requests = [[] if isinstance(m, dict) or too_many_options(r) else
                    self.build_all(r, m, []) for r, m in zip(rows, media, strict=True)]
        return requests, sum(isinstance(m, dict) for m in media)
