"""The trainer end to end: a tiny model learns, torchrun matches one process, resume is exact."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tiny_lm import make_tiny_lm, make_toy_data  # noqa: E402

from avcurate.core.lock import LOCK  # noqa: E402
from avcurate.trainer.config import TrainConfig  # noqa: E402
from avcurate.trainer.loop import train  # noqa: E402

TESTS = Path(__file__).parent
REWARD = "toy_rewards:starts_with_b"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return make_tiny_lm(root / "lm"), make_toy_data(root / "toy.parquet")


def _cfg(toy, out, **kw) -> TrainConfig:
    lm, data = toy
    base = dict(data=str(data), model=str(lm), out=str(out), rewards=[REWARD], num_generations=8,
                prompts_per_step=2, steps=30, lr=3e-3, max_new_tokens=3, system_prompt="",
                warmup_fraction=0.0)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize(("algo", "spg"), [("grpo", 1), ("gspo", 2)])
def test_tiny_model_learns_the_toy_task(toy, tmp_path, algo, spg, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    history = train(_cfg(toy, tmp_path / "out", algo=algo, steps_per_generation=spg),
                    progress=False)
    rewards = [h["reward_mean"] for h in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.3, rewards
    lines = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and {"reward_mean", "reward_std", "zero_std_groups", "clip_fraction",
                                 "kl", "tokens_per_s", "loss", "lr",
                                 f"reward/{REWARD}_mean"} <= set(lines[0])
    if algo == "gspo":  # the second minibatch of each generation is off-policy: clipping acts
        assert max(h["clip_fraction"] for h in history) > 0
    assert (tmp_path / "out/final/config.json").is_file()


def test_a_completion_depends_on_its_prompt_and_seed_not_on_its_batch(toy):
    """One generate call per step: prompts of different lengths are left-padded together,
    and each row samples from its own seed, so a prompt's completions are the same alone
    or in any batch (what keeps 2 ranks equal to 1), and seeds matter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from avcurate.trainer.rollout import sample_batch

    lm, _ = toy
    model = AutoModelForCausalLM.from_pretrained(lm).eval()
    tok = AutoTokenizer.from_pretrained(lm)
    short, long = (tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
                   for text in ("Pick B.", "Pick B. Pick B. Pick B."))
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.8)):
        kw = dict(temperature=temperature, top_p=top_p, max_new_tokens=6)
        alone = sample_batch(model, tok, [short] * 4, [1, 2, 3, 4], **kw)
        mixed = sample_batch(model, tok, [long, short, long, short, short, short],
                             [9, 1, 8, 2, 3, 4], **kw)
        assert [c.tolist() for c in alone] == [c.tolist() for c in mixed[1:2] + mixed[3:]]
        assert len({tuple(c.tolist()) for c in alone}) > 1  # different seeds, other samples


def test_one_update_per_generation_skips_the_old_logprob_pass(toy, tmp_path, monkeypatch):
    """steps_per_generation 1: the sampling policy is the one updated, so its log-probs are
    the update's own; no separate forward over the rollout (TRL does the same)."""
    import avcurate.trainer.loop as loop

    monkeypatch.syspath_prepend(str(TESTS))
    calls = []
    real = loop.token_logprobs
    monkeypatch.setattr(loop, "token_logprobs",
                        lambda model, ids, *a: calls.append(len(ids)) or real(model, ids, *a))
    history = train(_cfg(toy, tmp_path / "out", steps=2, grad_accum=2, beta=0.0),
                    progress=False)
    assert calls == [8, 8] * 2  # two micro-batches of 8 per step, nothing over all 16
    assert all(h["ratio_mean"] == pytest.approx(1.0) and h["clip_fraction"] == 0
               for h in history)


def test_bf16_mixed_precision_updates_weights_like_float32(toy, tmp_path, monkeypatch):
    """At lr 1e-6 an update is far below bfloat16's resolution: weights kept in bfloat16
    barely move, while bf16-mixed (float32 master weights and AdamW state, bfloat16
    compute) changes them as float32 does."""
    monkeypatch.syspath_prepend(str(TESTS))
    lm, _ = toy
    before = _weights(Path(lm))
    changed = {}
    for dtype in ("float32", "bf16-mixed", "bfloat16"):
        train(_cfg(toy, tmp_path / dtype, steps=2, lr=1e-6, dtype=dtype), progress=False)
        after = _weights(tmp_path / dtype / "final")
        moved = sum(int((after[k] != before[k].to(after[k].dtype)).sum()) for k in before)
        changed[dtype] = moved / sum(v.numel() for v in before.values())
    assert after["lm_head.weight"].dtype == torch.bfloat16  # the last run kept bfloat16
    assert changed["float32"] > 0.9, changed
    assert changed["bf16-mixed"] > 0.9 * changed["float32"], changed
    assert changed["bfloat16"] < 0.5 * changed["float32"], changed
    assert _weights(tmp_path / "bf16-mixed/final")["lm_head.weight"].dtype == torch.float32


def test_auto_precision_is_bf16_mixed_only_where_the_gpu_computes_in_bfloat16(monkeypatch):
    """A T4 or V100 emulates bfloat16 (torch says it is "supported" counting emulation),
    far slower than float32: `auto` takes float32 there. The GPU's abilities are faked
    (this machine has none); an explicit --dtype is taken as given."""
    from avcurate.trainer.loop import precision

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    for native, want in ((True, "bf16-mixed"), (False, "float32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=native:
                            native or including_emulation)
        assert precision("auto", gpu) == want
        assert precision("bf16-mixed", gpu) == "bf16-mixed"
    assert precision("auto", cpu) == "float32"


def test_gradient_checkpointing_trains_the_same(toy, tmp_path, monkeypatch):
    """Recomputing activations in backward changes memory, not the result."""
    import avcurate.trainer.loop as loop

    monkeypatch.syspath_prepend(str(TESTS))
    made = []
    real = loop.make_policy
    monkeypatch.setattr(loop, "make_policy", lambda *a, **kw: made.append(real(*a, **kw))
                        or made[-1])
    runs = {flag: train(_cfg(toy, tmp_path / str(flag), steps=2, gradient_checkpointing=flag),
                        progress=False) for flag in (False, True)}
    assert [any(getattr(m, "gradient_checkpointing", False) for m in p.model.modules())
            for p in made] == [False, True]
    for a, b in zip(runs[False], runs[True], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["reward_mean"] == b["reward_mean"]
    w1, w2 = _weights(tmp_path / "False/final"), _weights(tmp_path / "True/final")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def _final_rows(monkeypatch) -> list[list[str]]:
    """The row ids of each step's groups as they reach the update."""
    import avcurate.trainer.loop as loop

    steps = []
    real = loop.rollout_groups.to_rollout
    monkeypatch.setattr(loop.rollout_groups, "to_rollout", lambda groups, tok: steps.append(
        [g.row["id"] for g in groups]) or real(groups, tok))
    return steps


def test_dynamic_sampling_replaces_groups_without_signal(toy, tmp_path, monkeypatch):
    """DAPO dynamic sampling: odd rows' groups are all rewarded 0 (flat), even rows' vary.
    Off, flat groups reach the update; on, each is replaced by another prompt until none
    is left, and the replaced share is logged."""
    import avcurate.trainer.groups as groups

    monkeypatch.syspath_prepend(str(TESTS))
    sampled = []
    real = groups.sample_groups
    monkeypatch.setattr(groups, "sample_groups", lambda state, slots, *a, **kw: sampled.append(
        len(slots)) or real(state, slots, *a, **kw))
    kw = dict(rewards=["toy_rewards:flat_on_odd_rows"], steps=4, prompts_per_step=4)
    final = _final_rows(monkeypatch)
    plain = train(_cfg(toy, tmp_path / "plain", **kw), progress=False)
    assert any(int(i[1:]) % 2 for step in final for i in step)
    assert max(h["zero_std_groups"] for h in plain) > 0
    assert "dropped_groups" not in plain[0]
    assert sampled == [4] * 4  # one round per step

    final.clear()
    sampled.clear()
    dyn = train(_cfg(toy, tmp_path / "dyn", dynamic_sampling=True, max_resample_rounds=8, **kw),
                progress=False)
    assert all(int(i[1:]) % 2 == 0 for step in final for i in step), final
    assert all(h["zero_std_groups"] == 0 for h in dyn)
    # per step: the first round's 4 groups, then one group per flat one in later rounds
    per_step, k = [], 0
    for h in dyn:
        rounds = int(h["resample_rounds"])
        per_step.append(sampled[k:k + 1 + rounds])
        k += 1 + rounds
    assert k == len(sampled) and any(len(s) > 1 for s in per_step)
    for h, counts in zip(dyn, per_step, strict=True):
        assert h["dropped_groups"] == pytest.approx(sum(counts[1:]) / sum(counts))
    lines = [json.loads(x) for x in (tmp_path / "dyn/metrics.jsonl").read_text().splitlines()]
    assert {"dropped_groups", "resample_rounds"} <= set(lines[0])


def test_the_readme_7b_omni_config_is_a_valid_config(tmp_path):
    """The "7B omni on 8 GPUs" section's TOML loads and passes the option checks."""
    readme = (Path(__file__).parents[1] / "avcurate/trainer/README.md").read_text()
    block = readme.split("## 7B omni on 8 GPUs", 1)[1].split("```toml\n", 1)[1].split("```")[0]
    (tmp_path / "omni7b.toml").write_text(block)
    cfg = TrainConfig.load(tmp_path / "omni7b.toml")
    cfg.check()
    assert cfg.policy == "omni" and cfg.dtype == "bf16-mixed" and cfg.gradient_checkpointing
    assert cfg.prompts_per_step % 8 == 0  # whole prompt groups on each of 8 ranks


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _metrics(folder: Path) -> list[dict]:
    drop = {"seconds", "tokens_per_s"}
    return [{k: v for k, v in json.loads(x).items() if k not in drop}
            for x in (folder / "metrics.jsonl").read_text().splitlines()]


def _run(args: list[str], nproc: int, **env_vars: str) -> str:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH",
                                                                                  "")]),
                        "OMP_NUM_THREADS": "1"} | env_vars
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--standalone"] if nproc > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", "avcurate", "train", *args], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _args(toy, out: Path, **kw) -> list[str]:
    lm, data = toy
    opts = {"data": data, "model": lm, "out": out, "rewards": REWARD, "num-generations": 4,
            "prompts-per-step": 2, "steps": 3, "lr": 3e-3, "max-new-tokens": 3,
            "steps-per-generation": 2, "grad-accum": 2, "warmup-fraction": 0.0, "beta": 0.03,
            "system-prompt": ""} | kw
    return [x for k, v in opts.items() for x in ((f"--{k}",) if v is True else (f"--{k}", str(v)))]


def test_torchrun_two_processes_match_one(toy, tmp_path):
    _run(_args(toy, tmp_path / "one"), 1)
    _run(_args(toy, tmp_path / "two"), 2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["reward_mean"] for m in one] == [m["reward_mean"] for m in two]  # same rollouts
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        for key in ("kl", "clip_fraction", "ratio_mean"):  # global token-weighted means
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    w1, w2 = _weights(tmp_path / "one/final"), _weights(tmp_path / "two/final")
    assert set(w1) == set(w2)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


def test_more_processes_than_gpus_is_one_line_before_any_process_group(monkeypatch):
    """torchrun --nproc-per-node 2 on a one-GPU machine: CUDA's "invalid device ordinal"
    on rank 1 (a traceback, rank 0 waiting) becomes one line on every rank, naming the
    count and the fix, before NCCL is asked for anything. The GPU count is the one thing
    faked here (this machine has none); on a GPU machine the same check ran for real."""
    from avcurate.trainer import loop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda *a, **k: pytest.fail("a process group before the check"))
    for key, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError) as said:
        loop.setup_distributed()
    assert str(said.value) == (
        "torchrun started 2 processes on this node, which has 1 GPU visible: one process per "
        "GPU (--nproc-per-node 1), or CUDA_VISIBLE_DEVICES= to train on the CPU")
    loop.check_gpus(8, 8)  # one process per GPU: nothing to say


def test_a_finished_multi_rank_training_ends_without_the_interpreters_teardown(toy, tmp_path):
    """A rank that finished, saved and left the process group could still abort in the
    interpreter's teardown (Gloo's threads, pytorch#190489; once in CI), and torchrun then
    failed the training. Here a reward module's teardown aborts: the run must succeed on
    both ranks, and the exit handlers (a user's log flush) must still have run."""
    mark = tmp_path / "atexit"
    stdout = _run(_args(toy, tmp_path / "two", rewards="teardown_rewards:starts_with_b"), 2,
                  AVCURATE_TEST_EXIT_MARK=str(mark))
    assert "trained to step 3" in stdout
    assert (tmp_path / "two/final/config.json").is_file()
    assert sorted(p.name for p in tmp_path.glob("atexit.*")) == ["atexit.0", "atexit.1"]


def test_torchrun_dynamic_sampling_two_processes_match_one(toy, tmp_path):
    """Each slot resamples from its own seed, and a rank with fewer flat groups samples
    throwaway ones to keep FSDP's collectives in step: 2 ranks equal 1, and neither hangs."""
    kw = {"rewards": "toy_rewards:flat_on_odd_rows", "dynamic-sampling": True,
          "prompts-per-step": 4, "steps": 2}
    _run(_args(toy, tmp_path / "one", **kw), 1)
    _run(_args(toy, tmp_path / "two", **kw), 2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert any(m["dropped_groups"] > 0 for m in one)
    for a, b in zip(one, two, strict=True):
        assert a["reward_mean"] == b["reward_mean"]
        assert (a["dropped_groups"], a["resample_rounds"]) == (b["dropped_groups"],
                                                               b["resample_rounds"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    w1, w2 = _weights(tmp_path / "one/final"), _weights(tmp_path / "two/final")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_checkpoint_resume_is_exact(toy, tmp_path):
    _run(_args(toy, tmp_path / "straight", steps=4), 1)
    _run(_args(toy, tmp_path / "resumed", steps=4, **{"stop-after": 2}), 1)
    assert len(_metrics(tmp_path / "resumed")) == 2 and not (tmp_path / "resumed/final").exists()
    # as if the run had gone on, logged step 3 and been killed while swapping in a new
    # checkpoint: the old one moved aside, the new one half written
    out = tmp_path / "resumed"
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    (out / "checkpoint").rename(out / "checkpoint.old")
    (out / "checkpoint.tmp").mkdir()
    (out / "checkpoint.tmp/rng-0.pt").write_bytes(b"half")
    _run(_args(toy, tmp_path / "resumed", steps=4), 1)
    assert not (out / "checkpoint.old").exists() and not (out / "checkpoint.tmp").exists()
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    w1, w2 = _weights(tmp_path / "straight/final"), _weights(tmp_path / "resumed/final")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_one_rank_checkpoint_resumes_on_two_ranks(toy, tmp_path):
    out = tmp_path / "out"
    _run(_args(toy, out, steps=4, **{"stop-after": 2}), 1)
    said = _run(_args(toy, out, steps=4), 2)
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]  # no step logged twice
    assert said.count("trained to step 4") == 1  # one summary, not one per rank
    assert (out / "final/model.safetensors").exists()


def test_train_cli_and_modality_rollouts(toy, tmp_path):
    """The modality rollouts a reward asks for, in training and (greedy) in evaluation."""
    lm, data = toy
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    export = _export_layout(toy, tmp_path / "export")
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(export),
                             "--model", str(lm), "--out", str(tmp_path / "cli"),
                             "--rewards", f"format,accuracy,modality_attention,{REWARD}",
                             "--reward-weights", "1,1,1,1", "--num-generations", "4",
                             "--prompts-per-step", "2", "--steps", "2", "--max-new-tokens", "3",
                             "--eval-every", "2", "--eval-rows", "3"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained to step 2" in result.stdout
    metrics = _metrics(tmp_path / "cli")
    assert "reward/modality_attention_mean" in metrics[0]
    evals = _evals(tmp_path / "cli")
    assert [e["step"] for e in evals] == [0, 2]
    assert (f"; validation reward {evals[0]['eval_reward_mean']:.3f} at step 0 -> "
            f"{evals[1]['eval_reward_mean']:.3f} at step 2 ({tmp_path / 'cli/eval.jsonl'})"
            ) in " ".join(result.stdout.split())
    assert all(0 <= e["eval/modality_attention_mean"] <= 1.3 for e in evals)
    bad = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                          "--model", str(lm), "--rewards", "nope", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "unknown reward 'nope'" in bad.stderr


def _endless_training(toy, out: Path) -> tuple[list[str], dict[str, str]]:
    """The command line of a training that would run for hours (steps of ~0.05 s), and
    its environment (the test reward's module on the path)."""
    lm, data = toy
    return ([sys.executable, "-m", "avcurate", "train", "--data", str(data), "--model", str(lm),
             "--out", str(out), "--rewards", REWARD, "--num-generations", "2",
             "--prompts-per-step", "1", "--steps", "100000", "--max-new-tokens", "2"],
            os.environ | {"PYTHONPATH": str(TESTS)})


def test_a_second_training_into_the_same_folder_is_refused_while_the_first_runs(toy, tmp_path):
    """Two trainings into one --out would interleave their checkpoints and metrics: the
    second stops with one line naming the first, before it loads a model; a first killed
    with -9 leaves no lock behind, and the same command resumes."""
    out = tmp_path / "out"
    args, env = _endless_training(toy, out)
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "train.json").is_file():  # written once its model has loaded
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        [line] = second.stderr.strip().splitlines()
        assert f"training folder {out} is in use by PID {first.pid}" in line
        assert "Loading weights" not in second.stderr and first.poll() is None
    finally:
        first.kill()
        first.wait()
    resumed = subprocess.run([*args, "--stop-after", "1"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _metrics(out)[-1]["step"] >= 1


@pytest.mark.parametrize("sig, status, said", [(signal.SIGINT, 130, "Ctrl-C"),
                                               (signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_or_sigterm_stops_training_at_a_step_end_with_a_checkpoint(toy, tmp_path, sig,
                                                                           status, said):
    """With no --save-every (a checkpoint only at the end), Ctrl-C or a scheduler's SIGTERM
    lost every step since the start. Now the step under way ends, a checkpoint is saved
    at its end, the command stops as on any Ctrl-C or SIGTERM, and the same command goes
    on from that step: no step lost, none logged twice."""
    out = tmp_path / "out"
    args, env = _endless_training(toy, out)
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() or len(_metrics(out)) < 2:
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.05)
    first.send_signal(sig)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == status, stderr[-2000:]
    assert "stopping at the end of this step" in stderr and f"stopped by {said}" in stderr
    assert "Traceback" not in stderr
    step = torch.load(out / "checkpoint/trainer.pt", weights_only=False)["step"]
    assert f"checkpoint saved at step {step}" in stderr
    assert [m["step"] for m in _metrics(out)] == list(range(1, step + 1))
    resumed = subprocess.run([*args, "--stop-after", "1"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [m["step"] for m in _metrics(out)] == list(range(1, step + 2))


def test_the_stop_at_a_step_end_keeps_ignored_signals_and_a_second_one_stops_at_once():
    from avcurate.trainer.interrupts import StopAtStepEnd

    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under `nohup`: stays ignored
    try:
        with StopAtStepEnd(True) as stop:
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert stop.asked  # the first: noted, nothing raised
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with StopAtStepEnd(False) as off:  # several ranks: the default handlers stay
            assert not off.asked and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_finished_training_run_again_loads_and_writes_nothing(toy, tmp_path):
    """A re-queued job that finds its training finished used to load the policy, the
    reference and the optimizer's state, then write the checkpoint and the final model
    back unchanged, and print no summary. Now nothing loads (the policy's weights are gone
    here, and loading them would fail) and nothing is written, and the command says so."""
    import shutil

    lm, data = toy
    model = tmp_path / "lm"
    shutil.copytree(lm, model)
    out = tmp_path / "out"
    cfg = dict(model=str(model), steps=2, num_generations=4, beta=0.03)
    assert [h["step"] for h in train(_cfg(toy, out, **cfg), progress=False)] == [1, 2]
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    (model / "model.safetensors").unlink()
    assert train(_cfg(toy, out, **cfg), progress=False) == []
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    done = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                           "--model", str(model), "--out", str(out), "--rewards", REWARD,
                           "--num-generations", "4", "--prompts-per-step", "2", "--steps", "2",
                           "--lr", "3e-3", "--max-new-tokens", "3", "--system-prompt", "",
                           "--warmup-fraction", "0", "--beta", "0.03"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == (f"already trained to step 2, nothing left to do; model in "
                                   f"{out / 'final'}").split()
    # the lock file aside: opening it is filelock's (older versions truncate it, a new mtime)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.name != LOCK} == {p: t for p, t in written.items()
                                                    if p.name != LOCK}


def test_a_final_model_is_swapped_in_whole(toy, tmp_path):
    """The final model is written beside `final/` and swapped in, so a `final/` is whole
    (what lets a finished training be recognised without loading it). A kill in the
    middle of the swap (the model before moved aside, the new one half written) is put
    right by the same command: the whole model back, the halves gone."""
    out = tmp_path / "out"
    train(_cfg(toy, out, steps=2), progress=False)
    whole = _weights(out / "final")
    (out / "final").rename(out / "final.old")
    (out / "final.tmp").mkdir()
    (out / "final.tmp/model.safetensors").write_bytes(b"half")
    assert train(_cfg(toy, out, steps=2), progress=False) == []
    assert not (out / "final.old").exists() and not (out / "final.tmp").exists()
    again = _weights(out / "final")
    assert all(torch.equal(whole[k], again[k]) for k in whole)


@pytest.mark.parametrize("data, model, said", [
    ("{tmp}/nowhere", "{lm}", "--data {tmp}/nowhere: no such file or folder"),
    ("no-org/no-dataset", "{lm}", "no such file or folder (an avcurate export folder, or "
                                  "Parquet with question/options/answer); a dataset on the "
                                  "Hugging Face Hub is read from a local copy: `hf download "
                                  "no-org/no-dataset --repo-type dataset --local-dir DIR`"),
    ("{data}", "{tmp}/no-model", "--model {tmp}/no-model: no such folder"),
    ("hf://datasets/org/name", "{lm}", "--data hf://datasets/org/name is a URL; avcurate reads "
                                       "local files: download it (`hf download`"),
    ("{data}", "s3://bucket/model", "--model s3://bucket/model is a URL"),
    ("{data}", "{tmp}", "--model {tmp}: not a model folder (no config.json)"),
    ("{data}", "{lm}/config.json", "--model {lm}/config.json: no such folder"),
    ("{data}", "{tmp}/half", "--model {tmp}/half cannot be loaded: "),  # transformers says why
    ("{tmp}/run", "{lm}", "--data {tmp}/run is a run folder; train on its export "
                          "(`avcurate export {tmp}/run --out DIR`"),  # was: no split 'train'
    ("{tmp}/half", "{lm}", "--data {tmp}/half: no Parquet files for split 'train' (an "
                           "avcurate export holds data/train-*.parquet)"),
    ("{tmp}/half/config.json", "{lm}", "--data {tmp}/half/config.json: not a readable "
                                       "Parquet file (Parquet magic bytes not found"),
    # options stored as JSON text were lettered one character at a time, silently
    ("{tmp}/text_options.parquet", "{lm}", "--data {tmp}/text_options.parquet: options is "
                                           "string, not a list of strings"),
])
def test_train_names_a_wrong_data_or_model_path_in_one_line(toy, tmp_path, data, model, said):
    lm, data_path = toy
    values = {"tmp": tmp_path, "lm": lm, "data": data_path}
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_bytes((lm / "config.json").read_bytes())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"stages": []}')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["Q?"], "options": ['["a", "b"]'], "answer": ["A"]}),
                   tmp_path / "text_options.parquet")
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data",
                             data.format(**values), "--model", model.format(**values),
                             "--out", str(tmp_path / "out"), "--steps", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and said.format(**values) in line
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def _with_template(lm: Path, folder: Path, template: str | None) -> Path:
    """A copy of the tiny LM whose tokenizer has `template` as its chat template (None: no
    template, as a base model's)."""
    shutil.copytree(lm, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for jinja in folder.glob("*.jinja"):
        jinja.unlink()
    return folder


NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
             "supported') }}{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
             "{% endfor %}<assistant>")


def test_a_template_without_a_system_turn_gets_the_system_prompt_in_the_user_turn(toy, tmp_path):
    """Gemma's chat template, and some Mistral ones, raise "System role not supported":
    training ended at its first step with a jinja traceback."""
    from avcurate.trainer.policy import TextPolicy

    lm, data = toy
    model = _with_template(lm, tmp_path / "no_system", NO_SYSTEM)
    policy = TextPolicy(str(model), system_prompt="Think first.")
    assert policy.prompt({"question": "Which?", "options": ["x", "y"]}) == \
        "<user>Think first.\n\nWhich?\nA. x\nB. y<assistant>"
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                             "--model", str(model), "--out", str(tmp_path / "out"), "--steps",
                             "1", "--num-generations", "2", "--prompts-per-step", "1",
                             "--max-new-tokens", "4"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: the model's chat template takes no system turn (System role not supported); " \
           "the system prompt opens the user turn instead" in result.stderr
    assert (tmp_path / "out" / "final" / "config.json").is_file()


def test_a_model_without_a_chat_template_is_one_line_before_its_weights_load(toy, tmp_path):
    lm, data = toy
    model = _with_template(lm, tmp_path / "base", None)
    (model / "model.safetensors").write_bytes(b"not weights")  # never read: the line comes first
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                             "--model", str(model), "--out", str(tmp_path / "out"), "--steps",
                             "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: --model {model} cannot be loaded: its tokenizer has no chat template (a base "
        "model?); the text policy's prompts are chat turns: train an instruct model, or add a "
        "chat_template to its tokenizer_config.json"]


def test_an_omni_policy_on_a_text_model_is_one_line(toy, tmp_path):
    """`--policy omni` with a causal LM: transformers built a default-size (7B) Omni
    thinker around it, and the machine ran out of memory. Now one line before any model
    loads. (The address space is capped so that the old way fails fast here.)"""
    import resource

    lm, data = toy

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                             "--model", str(lm), "--policy", "omni", "--out",
                             str(tmp_path / "out"), "--steps", "1"],
                            capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: --policy omni takes a Qwen2.5-Omni model (qwen2_5_omni or "
        f"qwen2_5_omni_thinker); --model {lm} is a 'llama' model: give --policy text, or an "
        "Omni model"]
    assert not (tmp_path / "out").exists()


# one process saving and loading checkpoints: torch's notice that it assumes so is not shown
@pytest.mark.filterwarnings("error:torch.distributed is disabled:UserWarning")
def test_a_training_folder_resumes_only_the_same_training(toy, tmp_path):
    """`--out` with a checkpoint resumes only with the settings it was trained with (the
    changed ones are named, before any model loads); options that only say where or how
    often to write may change; a folder of the user's or a file is never written into."""
    from avcurate.core.options import OptionError

    out = tmp_path / "out"
    train(_cfg(toy, out, steps=3, stop_after=1), progress=False)
    recorded = json.loads((out / "train.json").read_text())
    assert recorded["lr"] == 3e-3 and recorded["steps"] == 3 and "out" not in recorded
    with pytest.raises(OptionError, match=r"other settings \(lr: 0.003 -> 0.001\)"):
        train(_cfg(toy, out, steps=3, lr=1e-3), progress=False)
    changed = r"\(algo: 'gspo' -> 'grpo'; steps: 3 -> 5\); give the same settings"
    with pytest.raises(OptionError, match=changed):
        train(_cfg(toy, out, steps=5, algo="grpo"), progress=False)
    assert [m["step"] for m in _metrics(out)] == [1]  # the refusals wrote nothing
    history = train(_cfg(toy, out, steps=3, log_every=2, save_every=1), progress=False)
    assert [h["step"] for h in history] == [2, 3] and (out / "final").is_dir()

    theirs = tmp_path / "mine"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep")
    theirs_too = r"is not empty \(notes.txt\) and is not an avcurate training folder"
    with pytest.raises(OptionError, match=theirs_too):
        train(_cfg(toy, theirs, steps=1), progress=False)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    with pytest.raises(OptionError, match="is a file"):
        train(_cfg(toy, theirs / "notes.txt", steps=1), progress=False)


@pytest.mark.filterwarnings("error:torch.distributed is disabled:UserWarning")
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_same_command_resumes(
        toy, tmp_path, monkeypatch):
    """Torch reports a checkpoint write that ran out of space as a RuntimeError about a zip
    position inside a BaseException; the command line must say the disk is full, keep the
    last whole checkpoint and resume from it."""
    import shutil

    import avcurate.trainer.loop as loop
    from avcurate.cli.common import machine_error

    out, save, saves = tmp_path / "out", loop.torch.save, []

    def full_at_the_second_checkpoint(obj, path, *a, **kw):
        if str(path).endswith("trainer.pt"):
            saves.append(path)
            if len(saves) == 2:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
        return save(obj, path, *a, **kw)

    monkeypatch.setattr(loop.torch, "save", full_at_the_second_checkpoint)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(OSError) as stopped:
        train(_cfg(toy, out, steps=4, save_every=1), progress=False)
    assert stopped.value.errno == errno.ENOSPC
    assert machine_error(stopped.value).startswith("No space left on device: ")
    assert not (out / "checkpoint.tmp").exists()
    assert loop.torch.load(out / "checkpoint" / "trainer.pt", weights_only=False)["step"] == 1
    monkeypatch.undo()  # space again: the same training goes on from step 1
    history = train(_cfg(toy, out, steps=4, save_every=1), progress=False)
    assert [h["step"] for h in history] == [2, 3, 4] and (out / "final").is_dir()
    # with room on the disk the same failure is not called a full disk
    saves.clear()
    monkeypatch.setattr(loop.torch, "save", full_at_the_second_checkpoint)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        train(_cfg(toy, tmp_path / "out2", steps=4, save_every=1), progress=False)


def test_a_setting_one_version_records_and_another_does_not_is_no_change(toy, tmp_path):
    """An upgrade that adds (or drops) a training option still resumes its checkpoint."""
    from avcurate.core.options import OptionError
    from avcurate.trainer.out_folder import RECORD, check_out, settings

    cfg = _cfg(toy, tmp_path / "out")
    (tmp_path / "out" / "checkpoint").mkdir(parents=True)
    older = {k: v for k, v in settings(cfg).items() if k != "dynamic_sampling"}
    (tmp_path / "out" / RECORD).write_text(json.dumps(older | {"retired_option": 1}))
    check_out(cfg)
    (tmp_path / "out" / RECORD).write_text(json.dumps(older | {"seed": 7}))
    with pytest.raises(OptionError, match=r"\(seed: 7 -> 0\)"):
        check_out(cfg)


def test_a_judge_reward_checks_its_judge_before_the_model_loads(toy, tmp_path):
    """soft_accuracy with no judge, an unknown backend or a dead server: one line, before
    the policy loads and before --out is made (they stopped the first step, the last one
    with a traceback)."""
    lm, data = toy
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # closed again below
    judged = f"{REWARD},soft_accuracy"
    cases = [([], "reward soft_accuracy needs a judge: set --judge-backend and --judge-model",
              judged),
             (["--judge-backend", "nope", "--judge-model", "j"], "unknown backend 'nope'", judged),
             (["--judge-backend", "openai", "--judge-model", "j", "--judge-base-url", dead],
              f"(openai:j): cannot reach {dead} (Connection refused)", judged),
             (["--judge-backend", "openai", "--judge-model", "j", "--judge-base-url",
               dead.replace("//", "//me:pw@")], "(openai:j): base_url holds credentials",
              judged),  # it would be echoed, and recorded in train.json
             (["--judge-model", "j"], "--judge-base-url go with a reward that asks a judge",
              REWARD)]  # a judge no reward asks was ignored, unsaid
    for i, (judge, message, rewards) in enumerate(cases):
        done = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                               "--model", str(lm), "--out", str(tmp_path / f"o{i}"),
                               "--rewards", rewards, *judge],
                              capture_output=True, text=True, timeout=300,
                              env=os.environ | {"PYTHONPATH": str(TESTS)})
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Loading weights" not in done.stderr
        assert not (tmp_path / f"o{i}").exists()


def test_a_judge_that_goes_away_mid_run_keeps_the_steps_done(toy, tmp_path, monkeypatch):
    """The judge's server fails every call from step 3 on (503s): training stops with one
    message instead of training on made-up zeros, steps 1-2 are checkpointed, and the same
    run resumes at step 3 once a judge answers again. Each training closes its judge's
    HTTP client when it ends, stopped or not (it was left to the interpreter's exit: a
    notebook training twice kept a loop thread and a connection pool per run)."""
    from loopback import openai_server

    from avcurate.models.errors import EndpointError
    from avcurate.trainer import loop

    def judges_open() -> int:
        return sum(t.name == "avcurate-executor" for t in threading.enumerate())

    before = judges_open()

    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    real_step = loop._generation_step

    def step(state, rows, ids, index):
        server.down = index >= 2  # the judge fails from step 3 on
        return real_step(state, rows, ids, index)

    monkeypatch.setattr(loop, "_generation_step", step)
    judged = dict(rewards=[REWARD, "soft_accuracy"], judge_backend="openai", judge_model="j",
                  steps=4, num_generations=2, prompts_per_step=1, max_new_tokens=2)
    with openai_server() as server, pytest.raises(
            EndpointError, match=r"^the judge stopped training at step 3 \(openai:j: http_503"
            r".*steps up to 2 are saved, and the same command resumes from there$"):
        train(_cfg(toy, tmp_path / "out", judge_base_url=server.url + "/v1", **judged),
              progress=False)
    monkeypatch.setattr(loop, "_generation_step", real_step)
    assert judges_open() == before
    assert torch.load(tmp_path / "out/checkpoint/trainer.pt")["step"] == 2
    with openai_server() as again:  # the judge's URL is operational: a new port is fine
        history = train(_cfg(toy, tmp_path / "out", judge_base_url=again.url + "/v1",
                             **judged), progress=False)
        asked = len(again.requests)
        train(_cfg(toy, tmp_path / "straight", judge_base_url=again.url + "/v1", **judged),
              progress=False)
    assert judges_open() == before
    assert [h["step"] for h in history] == [3, 4] and asked == 2 * 2
    straight, resumed = _metrics(tmp_path / "straight"), _metrics(tmp_path / "out")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]  # exactly as an unbroken run
    for a, b in zip(straight, resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    w1, w2 = _weights(tmp_path / "straight/final"), _weights(tmp_path / "out/final")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_hub_id_without_network_loads_from_the_cache_or_stops_in_one_line(toy, tmp_path):
    """A cluster's compute node: the Hub cannot be reached (here a closed port). A cached
    model trains with no retry of the Hub; one that is not cached is named in one line."""
    lm, data = toy
    home = tmp_path / "hf"
    snapshot = home / "hub/models--org--tiny/snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in lm.iterdir():  # the cache's layout, as a download on another machine left it
        (snapshot / f.name).write_bytes(f.read_bytes())
    (home / "hub/models--org--tiny/refs").mkdir()
    (home / "hub/models--org--tiny/refs/main").write_text("0" * 40)
    env = os.environ | {"HF_HOME": str(home), "HF_ENDPOINT": "http://127.0.0.1:1",
                        "PYTHONPATH": str(TESTS)}
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy"):
        env.pop(name, None)

    def train_cli(model: str, out: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                               "--model", model, "--out", str(tmp_path / out), "--steps", "1",
                               "--rewards", REWARD, "--num-generations", "2",
                               "--prompts-per-step", "1", "--max-new-tokens", "2"],
                              capture_output=True, text=True, env=env, timeout=300)

    cached = train_cli("org/tiny", "cached")
    assert cached.returncode == 0, cached.stderr[-2000:]
    assert "Retry" not in cached.stderr and "trained to step 1" in cached.stdout
    missing = train_cli("org/absent", "absent")
    assert missing.returncode == 2 and "Retry" not in missing.stderr
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith("error: --model org/absent: the Hugging Face Hub "
                           "(http://127.0.0.1:1) cannot be reached (Connection refused) and "
                           "the model is not in the local cache")
    assert not (tmp_path / "absent").exists()


def _with_long_questions(data: Path, out: Path) -> Path:
    """The toy rows and two rows whose question is far longer than the others."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(data).to_pylist()
    rows += [{"id": f"long{i}", "question": "Pick B. " + "Really? " * 200,
              "options": ["A", "B", "C", "D"], "answer": "B"} for i in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out


def test_a_prompt_over_the_limit_is_skipped_alike_on_one_rank_and_two(toy, tmp_path):
    """A text prompt over --max-prompt-tokens was cut from the left (losing the system
    prompt, against --help's word). It is now replaced by a row drawn from the slot's own
    seed, logged once, and counted in the metrics: 2 ranks still equal 1."""
    data = _with_long_questions(toy[1], tmp_path / "long.parquet")
    kw = {"data": data, "max-prompt-tokens": 64, "prompts-per-step": 4, "steps": 3,
          "system-prompt": "Answer with one letter."}
    _run(_args(toy, tmp_path / "one", **kw), 1)
    _run(_args(toy, tmp_path / "two", **kw), 2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert sum(m["skipped_rows"] for m in one) >= 2
    for a, b in zip(one, two, strict=True):
        assert (a["skipped_rows"], a["reward_mean"]) == (b["skipped_rows"], b["reward_mean"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    for folder in ("one", "two"):
        lines = [json.loads(x) for x in
                 (tmp_path / folder / "skipped_rows.jsonl").read_text().splitlines()]
        assert {x["id"] for x in lines} == {"long0", "long1"}, folder
        assert {x["reason"] for x in lines} == {"prompt_too_long"}
        if folder == "one":  # two ranks may each find the same row at once
            assert len(lines) == 2


def test_many_skipped_rows_print_ten_lines_and_log_every_row(toy, tmp_path, capfd):
    """A run missing a good part of its rows printed one line per row it skipped (thousands
    for a tenth of a large set's clips). Ten are printed, then one line says the rest go
    only to the log, which still lists every row once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lm, _ = toy
    rows = pq.read_table(make_toy_data(tmp_path / "toy.parquet", n=60)).to_pylist()
    rows += [{"id": f"long{i}", "question": "Pick B. " + "Really? " * 200,
              "options": ["A", "B", "C", "D"], "answer": "B"} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    history = train(_cfg((lm, tmp_path / "rows.parquet"), tmp_path / "out", steps=4,
                         num_generations=2, prompts_per_step=8, max_prompt_tokens=64),
                    progress=False)
    listed = [json.loads(x)["id"] for x in
              (tmp_path / "out/skipped_rows.jsonl").read_text().splitlines()]
    assert len(listed) == len(set(listed)) > 12 and all(x.startswith("long") for x in listed)
    assert sum(h["skipped_rows"] for h in history) >= len(listed)
    err = capfd.readouterr().err
    assert err.count("skipped row long") == 10
    assert err.count("more rows skipped; from here on they are listed only in") == 1


def test_the_skipped_rows_log_is_read_on_as_other_ranks_append(tmp_path):
    """Each process reads the log on from where it stopped: a row another rank logged
    meanwhile is not logged again, a half-written line waits, and a log cut on resume is
    read again from the start."""
    from avcurate.trainer.unusable import SkippedRows, UnusableRow

    log = tmp_path / "skipped_rows.jsonl"
    mine = SkippedRows(path=log)

    def skip(index: int) -> None:
        mine.add(index, {"id": f"r{index}"}, UnusableRow("prompt_too_long", "long"), 0)

    def logged() -> list[int]:
        return [json.loads(x)["index"] for x in log.read_text().splitlines() if x.strip()]

    skip(1)
    with log.open("a") as fh:  # another rank: one whole line, one still being written
        fh.write(json.dumps({"step": 1, "index": 5}) + "\n" + '{"step": 1, "ind')
    skip(5)
    with log.open("a") as fh:
        fh.write('ex": 7}\n')
    skip(7)
    assert logged() == [1, 5, 7]
    log.write_text(json.dumps({"step": 1, "index": 5}) + "\n")  # cut by a resume
    skip(1)
    skip(5)
    assert logged() == [5, 1]


def test_the_summary_counts_rows_two_ranks_both_listed_once(tmp_path):
    """Two ranks that find a row at the same moment both list it (the log is appended
    without a lock); `train`'s last line counted lines, so such a row counted twice."""
    from avcurate.cli.train_command import _skipped

    lines = [{"step": 1, "index": 4, "id": "a"}, {"step": 1, "index": 4, "id": "a"},
             {"step": 2, "index": 9, "id": "b"}]
    (tmp_path / "skipped_rows.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _skipped(tmp_path) == f"; 2 rows skipped ({tmp_path / 'skipped_rows.jsonl'})"
    assert _skipped(tmp_path / "none") == ""


def test_a_limit_no_row_fits_stops_training_in_one_line(toy, tmp_path):
    lm, data = toy
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                             "--model", str(lm), "--out", str(tmp_path / "out"),
                             "--max-prompt-tokens", "4", "--num-generations", "2",
                             "--prompts-per-step", "2", "--steps", "2"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    said = [x for x in result.stderr.replace("\r", "\n").splitlines()
            if x.strip() and not x.startswith(("train:", "Loading weights"))]  # the bars
    assert said == [said[0]] and said[0].startswith(
        "error: training stopped at step 1: 8 rows drawn one after another could not be "
        "used, the last for: row t"), said  # not one line per row skipped before it
    assert "over --max-prompt-tokens 4" in said[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out/final").exists()
    assert len((tmp_path / "out/skipped_rows.jsonl").read_text().splitlines()) >= 2


def test_open_ended_rows_under_the_accuracy_reward_are_named_before_training(toy, tmp_path,
                                                                            capfd):
    """Rows without options earn 0 from the letter-reading accuracy reward whatever the
    policy writes; training says how many there are, once, before its first step, and
    says nothing when the rewards do not read letters or every row has options."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lm, data = toy
    rows = pq.read_table(data).to_pylist()[:6]
    rows += [{"id": f"open{i}", "question": "What colour is the sky?", "options": None,
              "answer": "blue"} for i in range(3)]
    rows += [{"id": "empty", "question": "Name it.", "options": [], "answer": "a bell"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    mixed = (lm, tmp_path / "rows.parquet")
    train(_cfg(mixed, tmp_path / "acc", steps=1, num_generations=2,
               rewards=["format", "accuracy"]), progress=False)
    err = capfd.readouterr().err
    assert err.count("4 of 10 training rows are open-ended (no options)") == 1
    assert "soft_accuracy" in err
    train(_cfg(mixed, tmp_path / "own", steps=1, num_generations=2), progress=False)
    train(_cfg(toy, tmp_path / "mc", steps=1, num_generations=2, rewards=["accuracy"]),
          progress=False)
    assert "open-ended" not in capfd.readouterr().err


def test_a_reward_that_gives_none_stops_training_naming_it(toy, tmp_path):
    """A custom reward's None (or NaN) made every advantage of its group NaN, then the
    weights, with no word; it stops training with one line naming the reward, through the
    command line, and no traceback."""
    lm, data = toy
    result = subprocess.run(
        [sys.executable, "-m", "avcurate", "train", "--data", str(data), "--model", str(lm),
         "--out", str(tmp_path / "out"), "--rewards", "toy_rewards:none_for_long",
         "--steps", "2", "--num-generations", "2", "--max-new-tokens", "6"],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(TESTS)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "reward 'toy_rewards:none_for_long' gave None for completion" in result.stderr
    assert "a reward must be a finite number" in result.stderr


def test_a_row_with_more_options_than_letters_is_skipped(toy, tmp_path):
    """A Parquet of the user's own (never validated) may hold a question with 27 options:
    A-Z name 26, and making its prompt raised an IndexError that ended the run. It is
    skipped and logged as too_many_options, as any row no prompt can be made of."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lm, data = toy
    rows = pq.read_table(data).to_pylist()[:8]
    rows += [{"id": "wide", "question": "Pick B.", "options": [f"o{i}" for i in range(27)],
              "answer": "B"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    train(_cfg((lm, tmp_path / "rows.parquet"), tmp_path / "out", steps=3, num_generations=2,
               prompts_per_step=4), progress=False)
    [line] = [json.loads(x) for x in
              (tmp_path / "out/skipped_rows.jsonl").read_text().splitlines()]
    assert (line["id"], line["reason"]) == ("wide", "too_many_options")


def test_a_prompt_over_the_models_context_is_skipped_and_said_before_training(tmp_path):
    """--max-prompt-tokens and --max-new-tokens were never held against the model's
    positions: a prompt near the context was sampled past it (an IndexError with learned
    positions, positions never trained with RoPE). The command now says so before
    training, and such a row is skipped as context_length like a row over the limit."""
    from tiny_lm import CHARS

    from avcurate.demo.tiny_policy import make_tiny_policy

    lm = make_tiny_policy(tmp_path / "lm", chars=CHARS, max_positions=160)
    data = _with_long_questions(make_toy_data(tmp_path / "toy.parquet"), tmp_path / "long.parquet")
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    result = subprocess.run(
        [sys.executable, "-m", "avcurate", "train", *_args((lm, data), tmp_path / "out"),
         "--max-prompt-tokens", "4096", "--max-new-tokens", "8", "--steps", "3",
         "--prompts-per-step", "4"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (f"note: --model {lm} has a context of 160 positions, so with --max-new-tokens 8 a "
            "prompt over 152 tokens is skipped (context_length), below --max-prompt-tokens "
            "4,096") in result.stderr
    lines = [json.loads(x) for x in (tmp_path / "out/skipped_rows.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines} == {"long0", "long1"}
    assert {x["reason"] for x in lines} == {"context_length"}


def test_new_tokens_that_fill_the_context_stop_before_the_model_loads(toy, tmp_path):
    lm, data = toy
    env = os.environ | {"PYTHONPATH": str(TESTS)}
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                             "--model", str(lm), "--out", str(tmp_path / "out"),
                             "--max-new-tokens", "2048"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (f"error: --max-new-tokens 2048 leaves no room for a prompt: "
                                     f"--model {lm} has a context of 2,048 positions")
    assert not (tmp_path / "out").exists()


def _export_layout(toy, root: Path) -> Path:
    """The toy rows as an export: data/train-* and a validation split of 5 rows."""
    from tiny_lm import make_toy_data

    (root / "data").mkdir(parents=True)
    shutil.copy(toy[1], root / "data/train-00000-of-00001.parquet")
    make_toy_data(root / "data/validation-00000-of-00001.parquet", n=5)
    return root


def _evals(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (folder / "eval.jsonl").read_text().splitlines()]


def test_evaluation_on_the_validation_split_follows_learning_and_changes_nothing_else(
        toy, tmp_path, monkeypatch, capfd):
    """The export sets a validation split aside, and training never looked at it: the only
    figure was the reward of the rollouts it learnt from. `--eval-every` answers validation
    rows greedily before training, every N steps and after the last; the training itself
    (its rollouts, metrics and weights) is the same with or without it."""
    monkeypatch.syspath_prepend(str(TESTS))
    data = _export_layout(toy, tmp_path / "export")
    plain = train(_cfg(toy, tmp_path / "plain", data=str(data)), progress=False)
    evaluated = train(_cfg(toy, tmp_path / "eval", data=str(data), eval_every=10, eval_rows=4),
                      progress=False)
    assert [h["reward_mean"] for h in plain] == [h["reward_mean"] for h in evaluated]
    w1, w2 = _weights(tmp_path / "plain/final"), _weights(tmp_path / "eval/final")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    evals = _evals(tmp_path / "eval")
    assert [e["step"] for e in evals] == [0, 10, 20, 30]
    assert {e["eval_rows"] for e in evals} == {4} and {e["eval_left_out"] for e in evals} == {0}
    means = [e["eval_reward_mean"] for e in evals]
    assert means[-1] > means[0] and means[-1] == 1.0, means  # greedy: the mode is learnt
    assert means == [e[f"eval/{REWARD}_mean"] for e in evals]
    said = capfd.readouterr().err
    assert f"eval after step 30: reward 1.000 ({REWARD} 1.000) over 4 validation rows" in said
    assert not (tmp_path / "plain/eval.jsonl").exists()


def test_evaluation_on_two_ranks_matches_one(toy, tmp_path):
    """The rows are dealt to the ranks in turn (3 rows: two on rank 0, one on rank 1, which
    repeats its prompt to make the same generate calls): the same figures as one rank."""
    data = _export_layout(toy, tmp_path / "export")
    for n, name in ((1, "one"), (2, "two")):
        _run(_args(toy, tmp_path / name, data=data, steps=2, **{"eval-every": 1,
                                                                "eval-rows": 3}), n)
    one, two = _evals(tmp_path / "one"), _evals(tmp_path / "two")
    assert [e["step"] for e in one] == [0, 1, 2] and {e["eval_rows"] for e in one} == {3}
    for a, b in zip(one, two, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_evaluation_without_a_validation_split_is_one_line_before_the_model_loads(toy,
                                                                                  tmp_path):
    lm, data = toy
    result = subprocess.run([sys.executable, "-m", "avcurate", "train", "--data", str(data),
                             "--model", str(lm), "--out", str(tmp_path / "out"),
                             "--eval-every", "5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: --eval-every needs a validation split, and --data {data} has none (an "
        "avcurate export holds data/validation-*.parquet when made with --val-fraction above "
        "0)"]
    assert not (tmp_path / "out").exists()


def test_a_resumed_training_evaluates_each_step_once(toy, tmp_path):
    """An evaluation comes before its step's checkpoint: a run stopped after step 1 and
    resumed has each evaluation once, as a straight run does."""
    data = _export_layout(toy, tmp_path / "export")
    args = dict(data=data, steps=3, **{"eval-every": 1, "eval-rows": 2})
    _run(_args(toy, tmp_path / "straight", **args), 1)
    _run(_args(toy, tmp_path / "resumed", **args, **{"stop-after": 1}), 1)
    assert [e["step"] for e in _evals(tmp_path / "resumed")] == [0, 1]
    with (tmp_path / "resumed/eval.jsonl").open("a") as f:  # killed before checkpoint 2
        f.write(json.dumps({"step": 2, "eval_rows": 2, "eval_reward_mean": 9.0}) + "\n")
    _run(_args(toy, tmp_path / "resumed", **args), 1)
    resumed, straight = _evals(tmp_path / "resumed"), _evals(tmp_path / "straight")
    assert [e["step"] for e in resumed] == [0, 1, 2, 3]
    for a, b in zip(resumed, straight, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
