"""The transformers backend with a tiny Llama and a tokenizer built in the test (no downloads)."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import jsonl_recipe, read_stage, run
from test_cli import sh

from avcurate.models import BackendUnavailable, Message, ModelRequest, ModelSpec, TextPart, make_backend
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.runner import RunError

torch = pytest.importorskip("torch")

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["What color is the square? A. red B. blue", '{"category": "speech content"}',
              "Sort the following audio-visual question into exactly one category."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=3)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_backend_generates_with_usage(tiny_model):
    backend = make_backend(ModelSpec("transformers", str(tiny_model)))
    request = ModelRequest((Message("user", (TextPart("What color is the square?"),)),),
                           max_tokens=5, json_schema={"type": "object"})
    response = asyncio.run(backend.call(request))
    assert isinstance(response.text, str)
    assert response.usage["prompt_tokens"] > 5 and 1 <= response.usage["completion_tokens"] <= 5
    again = asyncio.run(backend.call(request))
    assert again.text == response.text  # greedy decoding at temperature 0 is deterministic


def test_classify_stage_through_a_local_model(tmp_path, media, tiny_model):
    """A random tiny model cannot answer in JSON: every row must end up rejected with a reason."""
    records = [{"id": f"r{i}", "video": str(media["good"]), "question": f"Question {i}?",
                "options": ["a", "b"], "answer": "A"} for i in range(3)]
    stage = StageSpec("classify", {"backend": "transformers", "model": str(tiny_model),
                                   "max_attempts": 1, "max_rounds": 1, "max_tokens": 6,
                                   "concurrency": 2})
    run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
    kept, rej = read_stage(tmp_path / "run", "01")
    assert kept.num_rows == 0 and set(rej.column("reject_reason").to_pylist()) == {"unclassifiable"}
    usage = json.loads((tmp_path / "run/manifest.json").read_text())["stages"][1]["usage"]
    assert usage["calls"] == 3 and usage["completion_tokens"] > 0


def test_a_prompt_past_the_models_context_rejects_its_row_alone(tmp_path, media, tiny_model):
    """Past its positions a model with learned ones raised an IndexError that ended the
    stage with a traceback; one with RoPE answered from garbage."""
    long = " ".join(["What color is the square?"] * 1000)  # over 4,096 tokens
    records = [{"id": f"r{i}", "video": str(media["good"]), "question": q, "options": ["a", "b"],
                "answer": "A"} for i, q in enumerate(["Short?", long, "Also short?"])]
    stage = StageSpec("classify", {"backend": "transformers", "model": str(tiny_model),
                                   "max_attempts": 1, "max_rounds": 1, "max_tokens": 6})
    run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
    _, rej = read_stage(tmp_path / "run", "01")
    reasons = {r["id"]: (r["reject_reason"], r["reject_detail"]) for r in rej.to_pylist()}
    reason, detail = reasons.pop("jsonl:ann/r1")
    assert reason == "model_error" and detail.startswith("context_length: the prompt has ")
    assert detail.endswith("and with max_tokens 6 it exceeds the model's context of 4096")
    assert {r for r, _ in reasons.values()} == {"unclassifiable"}  # the others were asked


def test_local_backend_refuses_media_and_missing_folders(tiny_model, tmp_path, media):
    with pytest.raises(BackendUnavailable, match="not a local model folder"):
        make_backend(ModelSpec("transformers", str(tmp_path / "nope")))
    records = [{"id": "r", "video": str(media["good"]), "question": "Q?", "options": ["a", "b"],
                "answer": "A"}]
    stage = StageSpec("score", {"backend": "transformers", "model": str(tiny_model),
                                "max_attempts": 1})
    # frames for a text-only model: the setup's fault, so the stage stops (it used to
    # reject every row), whatever --max-failure-rate says
    with pytest.raises(RunError, match=r"unsupported_media: this backend takes text only; "
                                       r"use --media none"):
        run(jsonl_recipe(tmp_path, records, media["root"], [stage]), tmp_path / "run")
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert [e["name"] for e in manifest["stages"]] == ["ingest"]


def test_a_folder_that_is_not_a_model_stops_before_the_stage_with_one_line(tiny_model, tmp_path,
                                                                          media):
    """A wrong --model path is the user's mistake: no stage folder, no traceback. A folder
    without config.json once reached transformers' tokenizer loader, whose error printed
    as a traceback; a corrupt weights file is one line naming the folder."""
    records = [{"id": "r", "video": str(media["good"]), "question": "Q?", "options": ["a", "b"],
                "answer": "A"}]
    ann = tmp_path / "a.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    sh("ingest", "--source", "jsonl", "--annotations", str(ann), "--media-root",
       str(media["root"]), "--out", str(tmp_path / "run"), "-q")
    no_config = tmp_path / "weights-only"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in tiny_model.iterdir():
        (corrupt / f.name).write_bytes(b"garbage" if f.suffix == ".safetensors" else
                                       f.read_bytes())
    base = tmp_path / "base"  # a base model: no chat template
    base.mkdir()
    for f in tiny_model.iterdir():
        text = f.read_bytes()
        if f.name == "tokenizer_config.json":
            config = json.loads(text)
            config.pop("chat_template", None)
            text = json.dumps(config).encode()
        if f.suffix != ".jinja":
            (base / f.name).write_bytes(text)
    for model, message in [(tmp_path / "nope", "is not a local model folder"),
                           (no_config, "has no config.json, so it is not a model folder"),
                           (corrupt, f"cannot load {corrupt} (SafetensorError: "),
                           (base, f"{base} has no chat template (a base model?)")]:
        done = sh("classify", str(tmp_path / "run"), "--backend", "transformers", "--model",
                  str(model), "-q", check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert message in line
        began = sorted(p.name for p in (tmp_path / "run").glob("0*"))[1:]
        assert began == (["01-classify"] if model in (corrupt, base) else [])  # in the stage
    assert not any((tmp_path / "run/01-classify").glob("*.parquet"))


@pytest.fixture
def slowed(tiny_model):
    """The tiny model's backend with each forward pass held by `hold(seconds)`, and never
    ending at its end-of-sequence token: a generation that runs as long as it is let."""
    import threading
    import time

    backend = make_backend(ModelSpec("transformers", str(tiny_model)))
    gate = threading.Event()  # set: every held forward pass goes on at once
    state = {"seconds": 0.0, "forwards": 0}

    def hold(module, args, output):
        state["forwards"] += 1
        if state["seconds"]:
            gate.wait(state["seconds"])
        output.logits[..., backend.tokenizer.eos_token_id] = float("-inf")
        return output

    handle = backend.lm.register_forward_hook(hold)
    yield backend, state, time.monotonic
    gate.set()
    handle.remove()


def _ask(max_tokens: int) -> ModelRequest:
    return ModelRequest((Message("user", (TextPart("What color is the square?"),)),),
                        max_tokens=max_tokens)


def test_a_generation_past_its_timeout_is_stopped_and_the_model_freed(slowed):
    """The backend took a timeout and never used it: a slow local model held its stage for
    as long as it generated. Now the call fails as a timed-out HTTP call does, and the
    generation stops at its next token, so the next call does not wait for it."""
    from avcurate.models import ModelError

    backend, state, now = slowed
    backend.timeout, state["seconds"] = 0.6, 0.2  # 40 tokens would take 8 s
    began = now()
    with pytest.raises(ModelError) as err:
        asyncio.run(backend.call(_ask(40)))
    assert err.value.kind == "timeout" and err.value.retryable
    assert now() - began < 2.5
    stopped_at = state["forwards"]
    assert 2 <= stopped_at < 10
    state["seconds"] = 0.0
    response = asyncio.run(backend.call(_ask(4)))
    assert response.usage["completion_tokens"] == 4
    assert state["forwards"] == stopped_at + 4  # the timed-out generation ran no further


def test_a_generation_that_cannot_stop_marks_the_model_stuck_and_stops_the_stage(slowed):
    """A generation stuck in native code (seen once in CI: a prefill spinning in torch's
    thread pool) hung the stage, and `asyncio.run`'s join of its thread hung the process.
    Now the stage stops with one line, and later calls fail at once."""
    from avcurate.models import EndpointError, ModelError
    from avcurate.models.executor import Executor

    backend, state, now = slowed
    backend.timeout, backend.stop_grace, state["seconds"] = 0.3, 0.3, 5.0
    executor = Executor(backend, concurrency=2, max_attempts=1)
    began = now()
    try:
        with pytest.raises(EndpointError, match="stuck") as err:
            executor.run([_ask(3)] * 3, lambda response: response.text)
    finally:
        executor.close()
    assert now() - began < 5
    assert "\n" not in str(err.value) and "restart the run" in str(err.value)
    began = now()
    with pytest.raises(ModelError) as again:
        asyncio.run(backend.call(_ask(3)))
    assert again.value.kind == "local_model_stuck" and not again.value.retryable
    assert now() - began < 0.5


EXIT_MID_GENERATION = """
import asyncio, sys, threading, time
import torch
from avcurate.models import Message, ModelRequest, ModelSpec, TextPart, make_backend
backend = make_backend(ModelSpec("transformers", sys.argv[1]))
forwards, big = [], torch.ones(1500, 1500)
def hold(module, args, output):  # most of each step in native code, as a real model's
    forwards.append(big @ big)
    output.logits[..., backend.tokenizer.eos_token_id] = float("-inf")
    return output
backend.lm.register_forward_hook(hold)
request = ModelRequest((Message("user", (TextPart("What color is the square?"),)),),
                       max_tokens=3000)
threading.Thread(target=asyncio.run, args=(backend.call(request),), daemon=True).start()
while len(forwards) < 3:
    time.sleep(0.01)
print("exiting", flush=True)
sys.exit(0)
"""


def test_the_process_exits_cleanly_in_the_middle_of_a_generation(tiny_model):
    """Ctrl-C during a local model's generation ended `avcurate` with exit status 134
    ("terminate called without an active exception"): the worker thread was still in
    torch's native code when the interpreter finalised. Before that, asyncio's executor
    thread held the exit until the whole generation ended. Now the generation is stopped
    at its next token and the process exits at once, with its own status."""
    import subprocess
    import sys
    import time

    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXIT_MID_GENERATION, str(tiny_model)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting" in done.stdout and "terminate called" not in done.stderr
    assert time.monotonic() - began < 60  # 3,000 steps take minutes


def test_a_backend_nobody_holds_is_freed_with_its_model(tiny_model):
    """The worker thread holds its backend only while it generates: a recipe's local judge
    must not stay in memory (on the GPU) for the rest of the run after its stage."""
    import gc
    import threading
    import time
    import weakref

    backend = make_backend(ModelSpec("transformers", str(tiny_model)))
    before = set(threading.enumerate())
    asyncio.run(backend.call(_ask(2)))
    [worker] = set(threading.enumerate()) - before
    model = weakref.ref(backend.lm)
    del backend
    gc.collect()
    assert model() is None
    time.sleep(0.2)
    assert not worker.is_alive()  # the worker thread ended with it
