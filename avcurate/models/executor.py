"""Every model call goes through here: bounded concurrency, rate limit, retries, cache.

- Concurrency: an asyncio semaphore (`concurrency`, default 16).
- Rate limit: at most `rpm` request starts per minute (spaced evenly).
- Transport retries (tenacity): 429 / 5xx / timeouts / connection errors, exponential
  backoff with jitter, honouring the server's Retry-After; at most `max_attempts`
  tries per request.
- Answers: each request's validator checks the answer; an `InvalidAnswer` comes back
  as a `CallResult` with its reason (the stage decides whether to ask again: see
  `ModelStage`'s rounds), a failed call as `model_error`. Nothing raises per row.
- Circuit breaker: a systemic failure (no key, 401/403, 404 unknown model or route,
  media for a text-only local backend)
  stops everything at once with `EndpointError`, as do `start_failures` calls in a row
  that fail for the transport after their retries (an unreachable or wrong endpoint, or
  one that went down mid-stage: its failed rows would be rejected), a first wave of tries
  that all timed out before anything answered (a port that takes connections and never
  replies), calls that all failed
  with not one answered (a setup the server refuses) and, after `min_calls` finished calls,
  a share of failed calls above `max_failure_rate` (default 0.5; with 1, refused calls
  reject their rows), the first `start_failures` answers all empty (a model that ends its
  turn at once, a filter that blocks every prompt), and `start_failures` invalid answers
  in a row that all stopped at
  max_tokens (a limit too low for the model, typically a thinking model's: the rows would
  pass with a higher one). Rows are never rejected for those: the stage stops and can
  simply be rerun.
- Cache: valid answers are stored by the request's stable hash in the run folder
  (SQLite, safe for several processes), so a second run of the same stage makes zero
  calls. Invalid answers are never cached. Processes sharing the cache (Ray actors,
  nodes) ask for a key once: the first takes a lease on it, the others wait for its answer.
- One event loop per executor, in its own thread, for the executor's life: `run` may be
  called from several threads at once (the runner works on a few shards together so the
  next shard's decoding and a shard's last wave overlap with requests in flight); all of
  them share one semaphore, one rate limiter and one HTTP client, so `concurrency` is the
  stage's limit, not a per-call one. The same prompt asked by two shards is sent once.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from avcurate.core.kvcache import KVCache
from avcurate.models.errors import TRANSPORT_KINDS, EndpointError, InvalidAnswer, ModelError
from avcurate.models.request import ModelRequest, ModelResponse

Validator = Callable[[ModelResponse], Any]


@dataclass
class CallStats:
    calls: int = 0
    cached: int = 0
    retries: int = 0
    invalid_answers: int = 0
    cut: int = 0  # invalid answers that stopped at max_tokens
    short_n: int = 0  # calls that got fewer of their n answers (refilled by more calls)
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class CallResult:
    """One request's result: the validated value, or why there is none.

    `reason` is None for a valid answer, `model_error` for a call that failed after its
    transport retries, else the validator's reason for an invalid answer (then `error`
    holds the `InvalidAnswer` and `response` the answer it judged).
    """

    value: Any = None
    reason: str | None = None
    detail: str = ""
    response: ModelResponse | None = None
    error: InvalidAnswer | None = None

    @property
    def failed_call(self) -> bool:
        return self.reason == "model_error"


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (a minimal leaky bucket; the
    limit is a single number, which does not justify a dependency)."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = max(0.0, self._next - now)
            self._next = max(now, self._next) + self.interval
        if delay:
            await asyncio.sleep(delay)


def backoff(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (1-based): Retry-After when the server
    sent one, else exponential with full jitter."""
    if retry_after is not None:
        return min(cap, retry_after)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


LEASE_POLL_SECONDS = 0.1  # how often a process waiting on a peer's call looks for its answer


_OPEN: weakref.WeakSet[Executor] = weakref.WeakSet()  # executors with a live loop


def default_video_budget() -> int:
    """Bytes of whole video files an executor's prepared requests may hold: an eighth of
    the machine's memory, at least 1 GiB."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        memory = 8 << 30
    return max(1 << 30, memory // 8)


class ByteBudget:
    """Bytes held by requests prepared and not yet answered, across every thread using one
    executor. With `--media video` each prepared body holds its whole file in base64, and
    up to 2 x concurrency requests per shard, three shards at once, are prepared: 96
    bodies of 200 MB videos were ~25 GB. A request waits while others hold the budget;
    one alone always goes, however large."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._cond = threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        with self._cond:
            if self.held and self.held + n > self.limit and not self._cond.wait_for(
                    lambda: not self.held or self.held + n <= self.limit, timeout):
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()


@atexit.register
def _close_open() -> None:
    """Close the executors nobody closed (e.g. a trainer's judge) while their loop threads
    still run, so HTTP sessions end cleanly instead of warning at interpreter exit."""
    for executor in list(_OPEN):
        with contextlib.suppress(Exception):  # exiting anyway: a failed close must not mask it
            executor.close()


class _Prepared:
    """The requests one `run` call has prepared and not yet seen answered: each holds a
    place among 2 x concurrency (the encoded bodies one call keeps) and its video bytes in
    the executor's budget (shared by every call), and frees both once, when answered or
    when the call ends without starting it."""

    def __init__(self, budget: ByteBudget, places: int, stopped: Callable[[], bool]) -> None:
        self.budget, self.stopped = budget, stopped
        self.places = threading.BoundedSemaphore(places)
        self.sizes: dict[int, int] = {}
        self.lock = threading.Lock()

    def hold(self, i: int, size: int) -> bool:
        """Wait for a place and `size` bytes for request `i`; False once the call stopped."""
        while not self.places.acquire(timeout=0.05):
            if self.stopped():
                return False
        while not self.budget.take(size, timeout=0.05):
            if self.stopped():
                self.places.release()
                return False
        with self.lock:
            self.sizes[i] = size
        return True

    def free(self, i: int) -> None:
        with self.lock:
            size = self.sizes.pop(i, None)
        if size is not None:
            self.budget.give(size)
            self.places.release()

    def free_all(self) -> None:
        with self.lock:
            left = list(self.sizes)
        for i in left:
            self.free(i)


_CALL_STATS: contextvars.ContextVar[CallStats | None] = contextvars.ContextVar(
    "call_stats", default=None)  # the counts of one `run` call (its tasks inherit it)


class Executor:
    def __init__(self, backend, *, concurrency: int = 16, rpm: float | None = None,
                 max_attempts: int = 4, cache: KVCache | None = None,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 max_failure_rate: float = 0.5, start_failures: int = 5,
                 min_calls: int = 20, limit_name: str = "max_tokens",
                 video_budget: int | None = None) -> None:
        self.backend = backend
        self.videos = ByteBudget(video_budget or default_video_budget())
        self.concurrency = concurrency
        self.rpm = rpm
        self.max_attempts = max_attempts
        self.cache = cache
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.max_failure_rate, self.start_failures, self.min_calls = (
            max_failure_rate, start_failures, min_calls)
        self.limit_name = limit_name  # how the user sets max_tokens, for the halt's hint
        self.stats = CallStats()
        self._answered = self._failed = self._failed_in_a_row = self._cut_in_a_row = 0
        self._silent = 0  # tries that timed out before any call was answered
        self._spoke = self._empty = 0  # answers with text so far; empty ones
        self._sem = asyncio.Semaphore(concurrency)  # bound to the loop on first use
        self._limiter = RateLimiter(rpm)
        self._inflight: dict[str, asyncio.Event] = {}  # keys being asked by this executor
        self._stopped: BaseException | None = None
        self._tasks: set[asyncio.Future] = set()  # requests in flight, for `stop`
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, requests: list[ModelRequest], validate: Validator | list[Validator],
            stats: CallStats | None = None) -> list[CallResult]:
        """Answer every request once (in order); never raises for a bad answer or a failed call.

        `validate` is one validator for all requests or one per request (when the check
        depends on the row, e.g. its true answer). `stats`, when given, receives the counts
        of this call alone (`self.stats` sums every call, from every thread).
        """
        if not requests:
            return []
        validators = validate if isinstance(validate, list) else [validate] * len(requests)
        # Keys, cache look-ups and media encoding happen here, in the calling thread, up to
        # 2 x concurrency requests ahead of the loop: the loop thread only sends and waits,
        # so CPU work on the next requests (JPEG and wav encodes, base64, JSON) overlaps
        # with those in flight instead of delaying every answer the loop has to handle.
        keys = [r.key(self.backend.name, self.backend.model) for r in requests]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        loop = self._ensure_loop()
        queue: asyncio.Queue = asyncio.Queue()
        future = asyncio.run_coroutine_threadsafe(self._run_all(queue, len(requests), stats),
                                                  loop)
        prepare = getattr(self.backend, "prepare", None)
        held = _Prepared(self.videos, 2 * self.concurrency, future.done)
        try:
            for i, (request, key, check) in enumerate(zip(requests, keys, validators,
                                                          strict=True)):
                hit = cached.get(key)
                if not held.hold(i, request.video_bytes() if hit is None else 0):
                    break  # stopped (a systemic error): no point preparing the rest
                if hit is None and prepare is not None:
                    prepare(request)
                loop.call_soon_threadsafe(queue.put_nowait, (
                    (request, key, hit, check), functools.partial(held.free, i)))
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in the calling thread: stop this call's requests
            raise
        finally:  # requests never started (a stopped call) give their bytes back too
            held.free_all()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                name="avcurate-executor")
                self._thread.start()
                _OPEN.add(self)
            return self._loop

    def stop(self, exc: BaseException) -> None:
        """Fail every call of this executor at once, in flight or to come: a sibling shard
        hit a systemic error (or the user pressed Ctrl-C), so its peers must not go on
        calling, nor wait up to a timeout for answers nobody will use."""
        if isinstance(exc, Exception):  # not KeyboardInterrupt: the loop must not re-raise it
            self._stopped = self._stopped or exc
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_all)

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def close(self) -> None:
        """Close the HTTP client and end the loop thread (a later `run` starts a new one)."""
        with self._start_lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        _OPEN.discard(self)
        try:
            asyncio.run_coroutine_threadsafe(self.backend.aclose(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()

    def _count(self, **counts: int) -> None:
        self.stats.add(**counts)
        if (local := _CALL_STATS.get()) is not None:
            local.add(**counts)

    async def _run_all(self, queue: asyncio.Queue, count: int, stats) -> list[CallResult]:
        """Start each request as `run` hands it over; gather the results in order."""
        if self._stopped is not None:
            raise self._stopped
        _CALL_STATS.set(stats)  # this task's context, copied into the tasks below
        me = asyncio.current_task()
        self._tasks.add(me)  # so `stop` also ends a wait for requests still to come
        tasks: list[asyncio.Future] = []
        try:
            for _ in range(count):
                args, done = await queue.get()
                task = asyncio.ensure_future(self._one(*args))
                task.add_done_callback(lambda _, done=done: done())
                tasks.append(task)
                self._tasks.add(task)
            results = await asyncio.gather(*tasks)
        except BaseException as exc:
            for t in tasks:
                t.cancel()
            if isinstance(exc, asyncio.CancelledError) and self._stopped is not None:
                raise self._stopped from None  # cancelled by `stop`: say why
            raise
        finally:
            self._tasks.difference_update(tasks)
            self._tasks.discard(me)
        failed_here = [r.detail for r in results if r.reason == "model_error"]
        if not self._answered and failed_here:
            self._none_answered(failed_here[-1])
        return results

    def _none_answered(self, last: str) -> None:
        """A run's calls ended and not one was answered. Transport failures, fewer than
        start_failures: the endpoint is down or wrong. Refusals (a 400 for frames sent to a
        text-only model): the setup is wrong, which the failure rate only says after
        `min_calls`; a small stage used to reject every row for it. Only
        `--max-failure-rate 1` lets refused rows be rejected."""
        transport = self._failed_in_a_row == self._failed
        if not transport and self.max_failure_rate >= 1:
            return
        hint = self._server_question() if transport else (
            "does the server take what the stage sends (the model, --media)? "
            "--max-failure-rate 1 rejects the rows instead")
        self._halt(f"the first {self._failed} calls all failed ({last}); {hint}")

    async def _one(self, request, key, cached, validate) -> CallResult:
        if cached is not None and (hit := self._from_cache(cached, validate)) is not None:
            return hit
        if self.cache is not None and (hit := await self._asked_here(key, validate)):
            return hit
        leased = False
        done = asyncio.Event()
        self._inflight.setdefault(key, done)
        try:
            if self.cache is not None:  # a process sharing the cache may be asking already
                peer, leased = await self._lease_or_wait(key)
                if peer is not None and (hit := self._from_cache(peer, validate)) is not None:
                    return hit
            return await self._ask(request, key, validate)
        finally:
            if self._inflight.get(key) is done:
                del self._inflight[key]
            done.set()
            if leased:
                self.cache.release(key)

    async def _asked_here(self, key: str, validate) -> CallResult | None:
        """When another shard of this process is asking the same prompt, its cached answer
        (None when it got no valid one, or there was no such call)."""
        waiting = self._inflight.get(key)
        if waiting is None:
            return None
        await waiting.wait()
        found = self.cache.get(key)
        return self._from_cache(found, validate) if found is not None else None

    def _from_cache(self, cached: dict, validate) -> CallResult | None:
        response = ModelResponse(text=cached["text"], json=cached.get("json"),
                                 usage=cached.get("usage", {}), cached=True,
                                 texts=cached.get("texts", []))
        try:
            value = validate(response)
        except InvalidAnswer:
            return None  # the validation rules changed since it was cached: ask again
        self._count(cached=1)
        return CallResult(value=value, response=response)

    async def _lease_or_wait(self, key: str) -> tuple[dict | None, bool]:
        """Hold the key's lease, or wait for the process that holds it to cache its answer
        (taking over when it gives up, dies or overruns). Returns (an answer a peer cached,
        whether we hold the lease)."""
        while not self.cache.try_lease(key):
            await asyncio.sleep(LEASE_POLL_SECONDS)
            if (value := self.cache.get(key)) is not None:
                return value, False
        return self.cache.get(key), True  # a peer may have finished just before

    async def _ask(self, request, key, validate) -> CallResult:
        try:
            response = await self._all_answers(request, await self._call_with_retries(request))
        except ModelError as exc:
            self._count(failed=1)
            self._breaker(exc)
            return CallResult(reason="model_error", detail=f"{exc.kind}: {exc}")
        self._answered += 1
        self._failed_in_a_row = 0
        self._all_empty(response)
        try:
            value = validate(response)
        except InvalidAnswer as exc:
            self._count(invalid_answers=1)
            detail = str(exc)
            if response.cut:
                detail += f" (the answer stopped at max_tokens, {request.max_tokens} tokens)"
                self._count(cut=1)
                self._cut_short(request.max_tokens, exc)
            else:
                self._cut_in_a_row = 0
                if response.finish not in ("", "stop"):  # a safety filter, a blocked prompt
                    detail += f" (the model stopped: {response.finish})"
            return CallResult(reason=exc.reason, detail=detail, response=response, error=exc)
        self._cut_in_a_row = 0
        if self.cache is not None:
            self.cache.put(key, {"text": response.text, "json": response.json,
                                 "usage": response.usage} | (
                {"texts": response.texts} if len(response.texts) > 1 else {}))
        return CallResult(value=value, response=response)

    async def _all_answers(self, request: ModelRequest, response: ModelResponse
                           ) -> ModelResponse:
        """The `request.n` answers asked for. A server that ignores n (Ollama's OpenAI API,
        some proxies) sends one; the others are asked for by more calls, in turn, and the
        call is counted (`short_n`): the probe's figures were over one answer, unsaid."""
        if len(response.texts) >= request.n:
            return response
        self._count(short_n=1)
        texts, usage = list(response.texts), dict(response.usage)
        while len(texts) < request.n:
            more = await self._call_with_retries(replace(request, n=request.n - len(texts),
                                                         prepared={}))
            texts += more.texts[:request.n - len(texts)]
            usage = {k: usage.get(k, 0) + more.usage.get(k, 0) for k in usage.keys() | more.usage}
        return replace(response, texts=texts, usage=usage)

    def _breaker(self, exc: ModelError) -> None:
        """Stop the stage when failures add up to the endpoint's, not the rows' (a systemic
        failure already stopped it, in `_call_with_retries`)."""
        self._failed += 1
        if exc.kind in TRANSPORT_KINDS or exc.kind.startswith("http_5"):
            self._failed_in_a_row += 1
        if self._failed_in_a_row >= self.start_failures:  # before the first answer or after
            which = "last" if self._answered else "first"  # (a server that went down)
            self._halt(f"the {which} {self._failed_in_a_row} calls all failed ({exc.kind}: "
                       f"{_first_line(exc)}); {self._server_question()}")
        finished = self._answered + self._failed
        if finished >= self.min_calls and self._failed / finished > self.max_failure_rate:
            self._halt(f"{self._failed} of {finished} calls failed, above the "
                       f"--max-failure-rate {self.max_failure_rate:g} (last: {exc.kind}: "
                       f"{_first_line(exc)})")

    def _never_answered(self, exc: ModelError) -> None:
        """Stop the stage when its first tries all time out and nothing has answered yet:
        a port held by something that takes connections and never replies (or a server
        still loading) is not the rows' fault, and waiting out every try of every call
        (the breaker counts calls after their retries) took 8 minutes at the default
        --timeout 120 and --max-attempts 4 before the stage stopped. One wave of tries in
        flight is enough to judge (at least 2, at most `start_failures`); a stage that has
        had an answer counts timeouts as before."""
        if exc.kind != "timeout" or self._answered:
            return
        self._silent += 1
        if self._silent >= max(2, min(self.start_failures, self.concurrency)):
            timeout = getattr(self.backend, "timeout", None)
            within = f" within the --timeout of {timeout:g} s" if timeout else ""
            hint = ("raise --timeout if the model's answers take longer on this machine"
                    if getattr(self.backend, "in_process", False) else "is it the server's "
                    "port, and is the server done loading? Raise --timeout if its answers "
                    "take longer")
            self._halt(f"the first {self._silent} tries all got no answer{within}; {hint}")

    def _cut_short(self, max_tokens: int, exc: InvalidAnswer) -> None:
        """Stop the stage when `start_failures` invalid answers in a row all stopped at the
        token limit: the limit is the user's setting, not the rows' fault. A thinking model
        cut while it thinks gives an empty answer or only its thinking, and a whole stage of
        rows rejected as 'not JSON' or 'unclassifiable' said nothing about why."""
        self._cut_in_a_row += 1
        if self._cut_in_a_row < self.start_failures:
            return
        which = "last" if self._answered > self._cut_in_a_row else "first"
        self._halt(f"the {which} {self._cut_in_a_row} answers all stopped at max_tokens "
                   f"({max_tokens} tokens) before they held a valid answer (last: "
                   f"{_first_line(exc)}); raise {self.limit_name}. A "
                   "thinking model spends it on thinking first: Gemini 2.5 counts its "
                   "thinking in it (--thinking sets a budget), and vLLM serves Qwen3 without thinking with "
                   "--default-chat-template-kwargs '{\"enable_thinking\": false}'")

    def _all_empty(self, response: ModelResponse) -> None:
        """Stop the stage when its first `start_failures` answers were all empty, before any
        with text: a model that ends its turn at once (a base model under a chat template,
        a template the server does not apply) or a filter that blocks every prompt is the
        setup's fault. Every row was rejected for it after its rounds (the probe counted
        every answer wrong). A cut answer is `_cut_short`'s to judge."""
        if any(t.strip() for t in response.texts):
            self._spoke += 1
            return
        if response.cut:
            return
        self._empty += 1
        if not self._spoke and self._empty >= self.start_failures:
            why = f", the model stopped: {response.finish}" if response.finish not in (
                "", "stop") else ""
            self._halt(f"the first {self._empty} answers were all empty{why}; does the server "
                       "return the model's text? A base model, or a chat template that ends "
                       "the turn at once, answers nothing")

    def _server_question(self) -> str:
        """What to check when no call got through: the server, named by its URL (the
        transport's own error names only a host and port)."""
        if getattr(self.backend, "in_process", False):
            return ("the model runs in this process: is --timeout long enough for its "
                    "answers on this machine?")
        url = getattr(self.backend, "base_url", None)
        return f"is the server at {url} up and the URL right?" if url else \
            "is the server up and the URL right?"

    def _halt(self, why: str) -> None:
        """Raise the stage-stopping error, and make every other call of this executor (other
        shards, other threads) fail with it too. A call that answers before the others are
        cancelled may find a cause too (a sixth empty answer): it raises the first one, so
        the stage names the cause as it was first seen."""
        self.stop(EndpointError(f"{self.backend.name}:{self.backend.model}: {why}"))
        raise self._stopped

    async def _call_with_retries(self, request) -> ModelResponse:
        def wait(state) -> float:
            exc = state.outcome.exception()
            return backoff(state.attempt_number, getattr(exc, "retry_after", None),
                           self.backoff_base, self.backoff_cap)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts), wait=wait, reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable),
            before_sleep=lambda _: self._count(retries=1),
        )
        async for attempt in retrying:
            with attempt:
                await self._limiter.wait()
                async with self._sem:
                    if self._stopped is not None:
                        raise self._stopped
                    self._count(calls=1)
                    try:
                        response = await self.backend.call(request)
                    except ModelError as exc:
                        if exc.systemic:  # stop the others before this slot is freed
                            self._halt(f"{exc.kind}: {_first_line(exc)}")
                        self._never_answered(exc)
                        raise
                usage = response.usage
                self._count(prompt_tokens=usage.get("prompt_tokens", 0),
                               completion_tokens=usage.get("completion_tokens", 0))
                return response
        raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
