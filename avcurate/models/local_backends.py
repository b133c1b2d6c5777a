"""In-process backends: transformers (small local judges) and vLLM (batch inference).

Both are optional at run time: transformers loads a local model directory
(no hub download), vLLM is imported only when asked for and says clearly when
it is not installed. For vLLM on another machine, prefer `vllm serve` and the
openai backend.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avcurate.models.errors import VLLM_HINT, BackendUnavailable, ModelError, answer_within
from avcurate.models.request import ModelRequest, ModelResponse, TextPart, with_json


def _chat(request: ModelRequest) -> list[dict[str, str]]:
    messages = []
    for m in request.messages:
        if any(not isinstance(p, TextPart) for p in m.parts):
            raise ModelError("this backend takes text only; use --media none or a multimodal "
                             "backend (openai/gemini)", retryable=False, kind="unsupported_media")
        messages.append({"role": m.role, "content": "\n".join(p.text for p in m.parts)})
    return messages


def local_model_problem(model: str) -> str | None:
    """Why `model` is not a local transformers model folder, or None: checked when the
    run is planned, so a typo in the path stops the command before any stage starts."""
    if not Path(model).is_dir():
        return (f"transformers backend: {model} is not a local model folder (weights are "
                "never downloaded)")
    if not (Path(model) / "config.json").is_file():
        return (f"transformers backend: {model} has no config.json, so it is not a model "
                "folder (one saved with save_pretrained, or a Hub snapshot)")
    return None


def _loaded(model: str, load: Any) -> Any:
    """`load(model)`, any failure said on one line in the library's own words (a tokenizer
    it cannot build, an architecture it does not know, a corrupt weights file)."""
    try:
        return load(model)
    except Exception as exc:  # noqa: BLE001 (any failure here is the folder's: transformers
        # raises OSError, ValueError, KeyError..., safetensors its own SafetensorError)
        why = " ".join(str(exc).split())[:300]
        raise BackendUnavailable(f"transformers backend: cannot load {model} "
                                 f"({type(exc).__name__}: {why})") from None


@dataclass
class _Job:
    """One call's request, and the futures its worker settles on the caller's loop."""

    request: ModelRequest
    loop: asyncio.AbstractEventLoop
    started: asyncio.Future  # the model took it: the timeout runs from here
    done: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)


class _InProcess:
    """One generation at a time (the model is not re-entrant), in one daemon worker thread
    per backend, each bounded by the backend's timeout as an HTTP answer is.

    Why not `asyncio.to_thread`: its pool's threads are joined when the event loop closes
    and when the interpreter exits, so one generation stuck in native code (seen once in
    CI: a tiny Llama's prefill spinning in torch's CPU thread pool) held its stage, its
    run and the process's exit forever, with no message. Now the call fails with a
    timeout, and a generation that does not stop when told marks the backend stuck: every
    call waiting or to come fails at once, the stage stops with one line, and the daemon
    thread does not hold the exit. One long-lived worker, not a thread per call, so
    torch's CPU thread pool is made once, as before.
    """

    timeout: float
    in_process = True  # the executor's hints name the local model, not a server
    stop_grace: float = 30.0  # seconds a timed-out generation has to stop before "stuck"
    _stuck: str | None = None
    _jobs: queue.SimpleQueue | None = None
    _idle: threading.Event  # set while the worker waits for a job
    _current: _Job | None = None
    _exiting = False

    def _generate(self, request: ModelRequest, cancelled: threading.Event) -> ModelResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    async def call(self, request: ModelRequest) -> ModelResponse:
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, loop.create_future(), loop.create_future())
        self._submit(job)
        try:
            await job.started  # queued behind the generation in progress: not timed
            return await answer_within(self.timeout, asyncio.shield(job.done))
        except ModelError as exc:
            if exc.kind == "timeout":  # stop the generation at its next token
                job.cancelled.set()
                await self._stopped(job.done)
            raise
        except BaseException:  # the stage stopped (cancelled): free the model for the rest
            job.cancelled.set()
            raise

    def _submit(self, job: _Job) -> None:
        with _SUBMIT:  # not between another call's stuck check and its drain
            if self._stuck:
                raise self._stuck_error()
            if self._jobs is None:
                self._jobs, self._idle = queue.SimpleQueue(), threading.Event()
                self._idle.set()
                _WORKING.add(self)
                threading.Thread(target=_serve, args=(weakref.ref(self), self._jobs),
                                 daemon=True, name=f"avcurate-{self.name}").start()
                weakref.finalize(self, self._jobs.put, None)  # the worker ends with it
            self._jobs.put(job)

    def _run(self, job: _Job) -> None:
        """One job in the worker, unless its caller gave up while it waited or the process
        is exiting."""
        self._current = job
        self._idle.clear()
        try:
            _settle(job.loop, job.started)
            if job.cancelled.is_set() or self._exiting:
                return
            try:
                response = self._generate(job.request, job.cancelled)
            except BaseException as exc:  # noqa: BLE001 (handed to the caller, raised there)
                _settle(job.loop, job.done, exc=exc)
            else:
                _settle(job.loop, job.done, response)
        finally:
            self._current = None
            self._idle.set()

    def _finish_for_exit(self) -> None:
        """Stop the generation in progress and wait (up to `stop_grace`) until it has: a
        daemon thread still in torch's native code when the interpreter finalises aborts
        the process ("terminate called without an active exception"), so Ctrl-C during a
        generation ended with exit status 134 instead of the run's own."""
        self._exiting = True
        if self._stuck:  # it will not stop
            return
        if (job := self._current) is not None:
            job.cancelled.set()
        self._idle.wait(self.stop_grace)

    async def _stopped(self, done: asyncio.Future) -> None:
        """Wait for a timed-out generation to stop; one that does not within `stop_grace`
        marks the backend stuck and fails the calls waiting for it, and its own call fails
        with that systemic error."""
        try:
            async with asyncio.timeout(self.stop_grace):
                await asyncio.wait([done])
        except TimeoutError:
            with _SUBMIT:
                self._stuck = (f"a generation did not stop {self.stop_grace:g} s after its "
                               f"{self.timeout:g} s timeout and still holds the model (a hang "
                               "in its native code, or an answer far slower than --timeout); "
                               "restart the run, with a larger --timeout if answers are that "
                               "slow")
                while self._jobs is not None and not self._jobs.empty():
                    waiting = self._jobs.get_nowait()
                    _settle(waiting.loop, waiting.started, exc=self._stuck_error())
            raise self._stuck_error() from None

    def _stuck_error(self) -> ModelError:
        return ModelError(f"the local model is stuck: {self._stuck}", retryable=False,
                          kind="local_model_stuck")


def _serve(backend: weakref.ref[_InProcess], jobs: queue.SimpleQueue) -> None:
    """A backend's worker thread. It holds its backend only while it runs a job, so a
    backend nobody uses any more is freed with its model (a recipe's second local judge
    does not sit beside the first), and its finaliser's None ends the thread."""
    while (job := jobs.get()) is not None:
        if (held := backend()) is None:
            return
        held._run(job)
        del held


_SUBMIT = threading.Lock()  # jobs are queued, and a stuck backend's queue drained, under it
_WORKING: weakref.WeakSet[_InProcess] = weakref.WeakSet()  # backends with a worker thread


@atexit.register
def _finish_workers() -> None:
    for backend in list(_WORKING):
        backend._finish_for_exit()


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any = None,
            exc: BaseException | None = None) -> None:
    """Set `future` from a worker thread, unless its caller gave up on it (or its loop is
    gone: a stage stopped and closed it)."""
    def settle() -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    with contextlib.suppress(RuntimeError):  # the loop is closed
        loop.call_soon_threadsafe(settle)


def default_device() -> str:
    """The first GPU when there is one (a judge left on the CPU of a GPU machine runs tens
    of times slower, unsaid), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend(_InProcess):
    """A local causal LM directory: chat template + generate, one request at a time."""

    name = "transformers"

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 600.0,
                 device: str | None = None) -> None:
        if why := local_model_problem(model):
            raise BackendUnavailable(why)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model, self.timeout = model, timeout
        self.tokenizer = _loaded(model, AutoTokenizer.from_pretrained)
        if not self.tokenizer.chat_template:  # before the weights: every prompt is a chat turn
            raise BackendUnavailable(f"transformers backend: {model} has no chat template (a "
                                     "base model?); the stages' prompts are chat turns: use "
                                     "an instruct model")
        self.lm = _loaded(model, AutoModelForCausalLM.from_pretrained).to(
            device or default_device()).eval()

    def _generate(self, request: ModelRequest, cancelled: threading.Event) -> ModelResponse:
        import torch

        ids = self.tokenizer.apply_chat_template(_chat(request), add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
        prompt = int(ids["input_ids"].shape[1])
        context = getattr(self.lm.config, "max_position_embeddings", None)
        if isinstance(context, int) and prompt + request.max_tokens > context:
            # the row's fault, as a server's 400 for it is: past its positions a model
            # with learned ones raises an IndexError, and one with RoPE reads garbage
            raise ModelError(f"the prompt has {prompt} tokens, and with max_tokens "
                             f"{request.max_tokens} it exceeds the model's context of "
                             f"{context}", retryable=False, kind="context_length")
        kw: dict[str, Any] = {"max_new_tokens": request.max_tokens,
                              "pad_token_id": self.tokenizer.pad_token_id
                              or self.tokenizer.eos_token_id}
        if request.temperature > 0:
            kw |= {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
        else:
            kw |= {"do_sample": False}
        with torch.no_grad():
            out = self.lm.generate(**ids.to(self.lm.device), **kw,
                                   stopping_criteria=[_stop_when(cancelled)])
        new = out[0, ids["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        usage = {"prompt_tokens": prompt, "completion_tokens": int(len(new))}
        finish = "length" if len(new) >= request.max_tokens else "stop"
        return with_json(ModelResponse(text=text, usage=usage, finish=finish), request)


def _stop_when(cancelled: threading.Event) -> Any:
    """A stopping criterion that ends the generation at its next token once its call timed
    out or was abandoned, so the model is free for the next one."""
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return Cancelled()


class VLLMBackend(_InProcess):
    """In-process `vllm.LLM` (text prompts through its chat API)."""

    name = "vllm"

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 600.0) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise BackendUnavailable(f"the vllm backend needs vLLM: {VLLM_HINT}") from exc
        self.model, self.timeout = model, timeout
        self.llm = vllm.LLM(model=model)
        self._vllm = vllm

    def _generate(self, request: ModelRequest, cancelled: threading.Event) -> ModelResponse:
        """Not stopped by `cancelled`: `LLM.chat` takes no stopping hook, so a timed-out
        generation runs to its end (within `stop_grace`, or the backend is stuck)."""
        params = self._vllm.SamplingParams(temperature=request.temperature, top_p=request.top_p,
                                           max_tokens=request.max_tokens, n=request.n)
        [out] = self.llm.chat(_chat(request), params, use_tqdm=False)
        texts = [o.text for o in out.outputs]
        usage = {"prompt_tokens": len(out.prompt_token_ids or []),
                 "completion_tokens": sum(len(o.token_ids) for o in out.outputs)}
        return with_json(ModelResponse(text=texts[0], texts=texts, usage=usage,
                                       finish=out.outputs[0].finish_reason or ""), request)
