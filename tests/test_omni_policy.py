"""The omni policy path: a tiny Qwen2.5-Omni thinker sees frames and hears audio while training."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from omni_stub import make_tiny_thinker  # noqa: E402

from avcurate.trainer.config import TrainConfig  # noqa: E402
from avcurate.trainer.loop import train  # noqa: E402
from avcurate.trainer.policy import OmniPolicy, question_text  # noqa: E402


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    return make_tiny_thinker(tmp_path_factory.mktemp("thinker"))


def _row(media):
    return {"question": "What color?", "options": ["red", "blue"], "answer": "A",
            "video": str(media["good"])}


def test_omni_inputs_and_modality_removed_variants(thinker, media):
    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=2.0)
    ids, av = policy.inputs(_row(media), "av", 4096)
    # one video of 4 frames: 2 temporal patches; 320x240 fits the default pixel budget
    assert av["video_grid_thw"].tolist() == [[2, 16, 22]]
    assert av["input_features"].shape[:2] == (1, 128)
    video_tokens = int((ids == processor.tokenizer.convert_tokens_to_ids("<|VIDEO|>")).sum())
    assert video_tokens == int(av["video_grid_thw"].prod()) // 4
    _, video_only = policy.inputs(_row(media), "video_only", 4096)
    _, audio_only = policy.inputs(_row(media), "audio_only", 4096)
    assert "input_features" not in video_only and "pixel_values_videos" in video_only
    assert "pixel_values_videos" not in audio_only and "input_features" in audio_only
    # the frames reach the model: different frames, different logits
    logits = policy.model(input_ids=ids[None], **av).logits
    av2 = dict(av, pixel_values_videos=av["pixel_values_videos"].flip(0))
    assert not torch.allclose(logits, policy.model(input_ids=ids[None], **av2).logits)


def test_omni_frames_are_a_video_whose_time_positions_follow_real_time(thinker, media):
    """4 frames over the first 2 s: 0.5 s apart, so each temporal patch (2 frames) spans 1 s;
    that spacing reaches the model's time positions (other spacing, other logits)."""
    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=2.0)
    ids, av = policy.inputs(_row(media), "av", 4096)
    assert av["video_second_per_grid"].tolist() == pytest.approx([1.0], abs=0.05)
    mask = torch.ones_like(ids[None])  # time positions are computed with the mask, as in training
    logits = policy.model(input_ids=ids[None], attention_mask=mask, **av).logits
    slower = dict(av, video_second_per_grid=av["video_second_per_grid"] * 4)
    assert not torch.allclose(logits, policy.model(input_ids=ids[None], attention_mask=mask,
                                                   **slower).logits)


def test_omni_prompt_goes_through_the_processor_chat_template(thinker, media, monkeypatch):
    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=2, audio_seconds=2.0,
                        system_prompt="Think.")
    ids, _ = policy.inputs(_row(media), "av", 4096)
    text = processor.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nThink.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_bos|><|VIDEO|>")
    assert "<|vision_eos|><|audio_bos|><|AUDIO|>" in text
    assert text.endswith(question_text(_row(media)) + "<|im_end|>\n<|im_start|>assistant\n")
    video_only = processor.tokenizer.decode(policy.inputs(_row(media), "video_only", 4096)[0])
    assert "<|AUDIO|>" not in video_only and "<|VIDEO|>" in video_only
    monkeypatch.setattr(processor, "chat_template", None)  # a processor without a template
    plain = processor.tokenizer.decode(policy.inputs(_row(media), "av", 4096)[0])
    assert plain.startswith("Think.\n<|vision_bos|><|VIDEO|>") and "<|im_start|>" not in plain


def test_omni_rollouts_batch_prompts_and_encode_media_once(thinker, media):
    """Two prompts x G copies in one generate call (left-padded: their audio lengths
    differ): the vision tower runs once for both videos, the audio tower encodes each
    clip once, and the completions are those of each prompt sampled alone with every
    copy carrying its own media."""
    import inspect

    from avcurate.trainer.rollout import row_seed, sample_batch

    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=3.5)
    model, tok = policy.model, policy.tokenizer
    rows = [_row(media), _row(media) | {"video": str(media["good2"])}]
    inputs = [policy.inputs(row, "av", 4096) for row in rows]
    assert len(inputs[0][0]) != len(inputs[1][0])  # 3.5 s against 3 s of audio
    G, vision, chunks = 3, [], []  # patch rows per vision call; audio chunks per audio call
    visual, audio = (model.get_submodule(_named(model, n)) for n in ("visual", "audio_tower"))
    visual.register_forward_hook(lambda _, args, kwargs, out: vision.append(
        (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
    audio.conv1.register_forward_hook(
        lambda _, args, out: chunks.append(args[0].shape[0]))
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=6, suppress_tokens=policy.suppress_tokens)
    seeds = [[row_seed(11 + k, j) for j in range(G)] for k in range(len(rows))]
    alone = [c.tolist() for (ids, av), s in zip(inputs, seeds, strict=True)
             for c in sample_batch(model, tok, [ids] * G, s, **kw,
                                   extras={k: torch.cat([v] * G) for k, v in av.items()})]
    repeated_vision, repeated_audio = sum(vision), sum(chunks)
    vision.clear()
    chunks.clear()
    with policy.rollout_media(model, [av for _, av in inputs], G) as extras:
        batched = sample_batch(model, tok, [ids for ids, _ in inputs for _ in range(G)],
                               [s for group in seeds for s in group], extras=extras, **kw)
    # transformers before `mm_encoder_outputs` (5.17) gets the video repeated, as documented
    cached = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
    assert len(vision) == 1 and vision[0] * (G if cached else 1) == repeated_vision
    assert len(chunks) == 1 and chunks[0] * G == repeated_audio
    assert [c.tolist() for c in batched] == alone
    assert ("pixel_values_videos" in extras) != cached
    assert extras["video_grid_thw"].shape[0] == 2 * G
    assert extras["input_features"].shape[0] == 2 * G  # repeated; the hooks encode once
    chunks.clear()  # outside the context the tower is unhooked again: copies cost copies
    ids, av = inputs[0]
    for n in (1, 2):
        model(input_ids=ids[None].repeat(n, 1), **{k: torch.cat([v] * n) for k, v in av.items()})
    assert chunks[1] == 2 * chunks[0]


def test_omni_frames_fit_the_pixel_budget(thinker, media):
    folder, processor = thinker
    small = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=2.0,
                       max_pixels=28 * 28 * 4)
    ids, av = small.inputs(_row(media), "av", 4096)
    assert av["video_grid_thw"].tolist() == [[2, 2, 4]]  # 320x240 -> 56x28: 4x2 patches
    full, _ = OmniPolicy(str(folder), processor=processor, frames=4,
                         audio_seconds=2.0).inputs(_row(media), "av", 4096)
    assert len(full) - len(ids) == 2 * (16 * 22 - 2 * 4) // 4


def test_omni_frames_and_audio_cover_one_window_and_a_long_prompt_names_its_row(
        thinker, media, monkeypatch):
    import avcurate.media as avmedia

    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=2.0)
    seen = {}
    real_frames, real_audio = avmedia.frames, avmedia.audio
    monkeypatch.setattr(avmedia, "frames", lambda *a, **kw: seen.setdefault(
        "times", real_frames(*a, **kw)[1]) is not None and real_frames(*a, **kw))
    monkeypatch.setattr(avmedia, "audio", lambda *a, **kw: seen.setdefault(
        "pcm", real_audio(*a, **kw)))
    row = _row(media) | {"id": "q7"}
    ids, _ = policy.inputs(row, "av", 4096)
    assert seen["times"].max() < 2.0  # the 4 s clip: frames from the audio's 2 s only
    assert len(seen["pcm"]) == 32000
    with pytest.raises(ValueError, match=r"row q7 \(.*good.mp4\): the prompt has \d+ tokens"):
        policy.inputs(row, "av", len(ids) - 1)


def test_omni_training_steps(thinker, media, tmp_path, monkeypatch):
    folder, processor = thinker
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({k: [v, v] for k, v in _row(media).items()}), data)
    from safetensors.torch import load_file

    before = load_file(str(folder / "model.safetensors"))
    cfg = TrainConfig(data=str(data), model=str(folder), out=str(tmp_path / "out"),
                      policy="omni", frames=2, audio_seconds=2.0, num_generations=4,
                      prompts_per_step=2, steps=3, lr=1e-2, max_new_tokens=3,
                      max_prompt_tokens=4096, system_prompt="", beta=0.03,
                      rewards=["accuracy", "modality_attention", "toy_rewards:first_char_code"])
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    history = train(cfg, policy_kwargs={"processor": processor}, progress=False)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert "reward/modality_attention_mean" in history[0]
    assert min(h["zero_std_groups"] for h in history) < 1
    after = load_file(str(tmp_path / "out/final/model.safetensors"))
    assert set(after) == set(before)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any(k.startswith("model.") for k in changed)             # the language model learned
    assert any(k.startswith("visual.") for k in changed)            # gradients reach the vision
    assert any(k.startswith("audio_tower.") for k in changed)       # and the audio encoders


def _named(model: torch.nn.Module, name: str) -> str:
    """A tower's path in the thinker: transformers has moved them (model.visual in 5.24,
    visual at the top in 5.17), and the code under test names none of them."""
    [path] = [n for n, _ in model.named_modules() if n == name or n.endswith(f".{name}")]
    return path


def test_fsdp_units_are_found_by_shape_in_the_omni_thinker(thinker):
    """One unit per block of every stack (language, vision, audio) and one per tower, found
    without naming any of them; the tied-embedding rule keeps a shared weight in one unit."""
    from avcurate.trainer.loop import fsdp_units

    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, dtype=torch.float32,
                        device=torch.device("cpu"), system_prompt="", frames=2, audio_seconds=2.0)
    units = fsdp_units(policy.model)
    visual, audio = _named(policy.model, "visual"), _named(policy.model, "audio_tower")
    [language] = {n.rsplit(".layers.", 1)[0] for n, _ in policy.model.named_modules()
                  if n.endswith(".layers.0") and not n.startswith((visual, audio))}
    assert {f"{language}.layers.0", f"{visual}.blocks.0", f"{audio}.layers.0"} <= set(units)
    assert {visual, audio} <= set(units)
    assert units.index(f"{visual}.blocks.0") < units.index(visual)  # inner first
    # the language model embeds the tokens outside its own forward: not a unit of its own
    assert language not in units
    policy.model.lm_head.weight = policy.model.get_submodule(visual).merger.mlp[0].weight
    assert visual not in fsdp_units(policy.model)  # a weight shared with the root's unit


def test_omni_trains_on_two_ranks_like_one(thinker, media, tmp_path):
    """torchrun, 2 ranks, gloo: generation computes image and audio features outside the
    root's forward, which needs the towers as their own FSDP units; losses and weights
    equal one process's. Only rank 0 reads the weights (policy and reference model): rank 1
    builds both on the meta device and receives its shards."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder, _ = thinker
    data = tmp_path / "export"  # an export's layout: a validation split to evaluate on
    (data / "data").mkdir(parents=True)
    for split, n in (("train", 2), ("validation", 3)):
        pq.write_table(pa.table({k: [v] * n for k, v in _row(media).items()}),
                       data / f"data/{split}-00000-of-00001.parquet")
    tests = Path(__file__).parent
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH",
                                                                                  "")]),
                        "OMP_NUM_THREADS": "1"}
    script = str(tests / "omni_train.py")
    for out, launcher in (("one", [sys.executable]),
                          ("two", [sys.executable, "-m", "torch.distributed.run",
                                   "--nproc-per-node", "2", "--standalone"])):
        result = subprocess.run([*launcher, script, str(folder), str(data), str(tmp_path / out),
                                 "eval_every=2", "eval_rows=3"],
                                capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    metrics = {out: [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text()
                     .splitlines()] for out in ("one", "two")}
    # evaluation too: rank 1 answers one row and repeats it to keep in step with rank 0's two
    evals = {out: [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                   for x in (tmp_path / out / "eval.jsonl").read_text().splitlines()]
             for out in ("one", "two")}
    assert [e["step"] for e in evals["one"]] == [0, 2] and evals["one"][0]["eval_rows"] == 3
    assert "eval/modality_attention_mean" in evals["one"][0]
    for a, b in zip(evals["one"], evals["two"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    reads = {f.name: int(f.read_text()) for f in tmp_path.glob("two.reads-*")}
    assert reads == {"two.reads-0": 2, "two.reads-1": 0}  # the policy and the reference model
    for a, b in zip(metrics["one"], metrics["two"], strict=True):
        assert a["reward_mean"] == b["reward_mean"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    from safetensors.torch import load_file

    w1 = load_file(str(tmp_path / "one/final/model.safetensors"))
    w2 = load_file(str(tmp_path / "two/final/model.safetensors"))
    assert set(w1) == set(w2) and all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_a_clip_gone_or_damaged_since_the_export_is_skipped_not_fatal(thinker, media, tmp_path,
                                                                      capfd):
    """A missing clip stopped training with a MediaError traceback at the first step that
    drew its row, losing the steps since the last checkpoint. Such rows are replaced, each
    printed and listed once with its reason, and training finishes."""
    import json

    folder, processor = thinker
    videos = [media["good"], tmp_path / "deleted.mp4", media["good2"], media["corrupt"]]
    rows = [_row(media) | {"id": f"q{i}", "video": str(v)} for i, v in enumerate(videos)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    cfg = TrainConfig(data=str(tmp_path / "rows.parquet"), model=str(folder),
                      out=str(tmp_path / "out"), policy="omni", frames=2, audio_seconds=2.0,
                      num_generations=2, prompts_per_step=2, steps=5, lr=1e-2,
                      max_new_tokens=3, max_prompt_tokens=4096, system_prompt="")
    history = train(cfg, policy_kwargs={"processor": processor}, progress=False)
    assert len(history) == 5 and (tmp_path / "out/final/model.safetensors").is_file()
    listed = [json.loads(x) for x in (tmp_path / "out/skipped_rows.jsonl").read_text()
              .splitlines()]
    assert sorted((x["id"], x["reason"]) for x in listed) == [("q1", "missing_media"),
                                                              ("q3", "unreadable_media")]
    # 10 draws over 4 rows: the bad rows came up more than once, each printed once
    assert sum(h["skipped_rows"] for h in history) > 2
    err = capfd.readouterr().err
    assert err.count("skipped row q1 ") == 1 and err.count("skipped row q3 ") == 1
    assert "deleted.mp4: no such file" in err


def test_a_clip_that_hangs_or_crashes_the_decoder_skips_its_row(thinker, media, tmp_path):
    """Training decoded clips in the rank's own process: a file that makes decord spin in
    native code hung the run past Ctrl-C, one that crashes FFmpeg killed it. Clips are now
    read in a decode worker under --media-timeout; such a row is skipped like a missing
    clip (media_timeout, media_crash), and training finishes. The decoders here hang and
    crash on files named stuck* and crash* (`faulty_decoder_env`)."""
    import json
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    from faulty_jobs import faulty_decoder_env

    folder, _ = thinker
    for name in ("stuck.mp4", "crash.mp4"):
        shutil.copy(media["good2"], tmp_path / name)
    videos = [media["good"], tmp_path / "stuck.mp4", media["good2"], tmp_path / "crash.mp4"]
    rows = [_row(media) | {"id": f"q{i}", "video": str(v)} for i, v in enumerate(videos)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    out = tmp_path / "out"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "omni_train.py"), str(folder),
         str(tmp_path / "rows.parquet"), str(out), "steps=4", "beta=0", "num_generations=2",
         'rewards=["accuracy"]', "media_timeout=3"],
        capture_output=True, text=True, timeout=300,
        env=faulty_decoder_env(tmp_path) | {"OMP_NUM_THREADS": "1"})
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (out / "final/model.safetensors").is_file()
    listed = {x["id"]: x for x in map(json.loads, (out / "skipped_rows.jsonl").read_text()
                                      .splitlines())}
    assert {k: v["reason"] for k, v in listed.items()} == {"q1": "media_timeout",
                                                           "q3": "media_crash"}
    assert "stuck.mp4: no result within 3 s" in listed["q1"]["detail"]
    assert took < 150  # one time limit for the stuck clip, not a hang


def test_omni_trains_on_a_hub_dataset_that_holds_its_clips(thinker, media, tmp_path):
    """`train --data` on a Hub dataset whose Parquet holds its clips (a `datasets` Video()
    column, embedded by push_to_hub) read each clip's path, a bare file name, and skipped
    every row as missing media. The clips are written out under OUT/media and trained on;
    the text policy, which reads no media, never reads their bytes."""
    import shutil

    import datasets
    from datasets.table import embed_table_storage

    from avcurate.trainer.data import load_rows

    clip = tmp_path / "clip.mp4"
    shutil.copy(media["good"], clip)
    rows = datasets.Dataset.from_list([_row(media) | {"video": str(clip), "id": f"r{i}"}
                                       for i in range(2)])
    table = embed_table_storage(rows.cast_column("video", datasets.Video(decode=False)).data.table)
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    pq.write_table(table, hub / "data/train-00000-of-00001.parquet")
    clip.unlink()  # only the Parquet file holds it now
    assert load_rows(hub)[0]["video"] == str((hub / "data/clip.mp4").resolve())  # a path only
    (tmp_path / "a_file").write_text("")  # a folder that cannot be made: one line, no traceback
    with pytest.raises(ValueError, match=r"^the clips held in --data cannot be written to "):
        load_rows(hub, media_dir=tmp_path / "a_file/media")
    folder, processor = thinker
    cfg = TrainConfig(data=str(hub), model=str(folder), out=str(tmp_path / "out"), policy="omni",
                      frames=2, audio_seconds=2.0, num_generations=2, prompts_per_step=2,
                      steps=2, lr=1e-2, max_new_tokens=3, max_prompt_tokens=4096,
                      system_prompt="", rewards=["accuracy"])
    history = train(cfg, policy_kwargs={"processor": processor}, progress=False)
    assert len(history) == 2 and sum(h["skipped_rows"] for h in history) == 0
    [written] = [p for p in (tmp_path / "out/media").rglob("*") if p.is_file()]
    assert written.read_bytes() == media["good"].read_bytes() and written.suffix == ".mp4"


def test_evaluation_clips_are_read_once_and_kept(thinker, media, tmp_path):
    """Every evaluation read its validation clips again, and each reward variant (no audio,
    no video) read the same clip once more. Inside `keeping()` the frames and the audio are
    kept apart, a variant takes its medium from the full read, a failed read is kept too,
    and what comes back is what a fresh read gives."""
    import shutil

    from avcurate.media.errors import MediaError

    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=2.0)
    row = _row(media)
    variants = ("av", "video_only", "audio_only")
    fresh = {v: policy.inputs(row, v, 4096) for v in variants}
    clips = policy.clips
    assert clips.decoded == 3
    for _ in range(2):  # two evaluations
        with clips.keeping():
            kept = {v: policy.inputs(row, v, 4096) for v in variants}
        for v in variants:
            assert torch.equal(kept[v][0], fresh[v][0]) and kept[v][1].keys() == fresh[v][1].keys()
            assert all(torch.equal(kept[v][1][k], fresh[v][1][k]) for k in fresh[v][1])
    assert clips.decoded == 4  # the full clip once; the variants and the second time from memory
    from avcurate.trainer.clips import read_clip

    frames, _, pcm = read_clip((row["video"], row["video"], 4, 2.0, policy.max_pixels))
    assert clips.kept_bytes == frames.nbytes + pcm.nbytes
    policy.inputs(row, "av", 4096)
    assert clips.decoded == 5  # training's reads are not kept nor served from memory
    gone = row | {"video": str(tmp_path / "deleted.mp4")}
    for decoded in (6, 7, 7):  # tried once more in the next evaluation, then left out
        with clips.keeping():
            for _ in range(2):
                with pytest.raises(MediaError, match="deleted.mp4"):
                    policy.inputs(gone, "av", 4096)
        assert clips.decoded == decoded
    changing = tmp_path / "changing.mp4"  # a clip replaced between evaluations
    shutil.copy(media["good"], changing)
    with clips.keeping():
        before = policy.inputs(row | {"video": str(changing)}, "av", 4096)
    shutil.copy(media["good2"], changing)
    with clips.keeping():
        after = policy.inputs(row | {"video": str(changing)}, "av", 4096)
    assert clips.decoded == 9
    assert not torch.equal(before[1]["input_features"], after[1]["input_features"])
    clips.keep_bytes = clips.kept_bytes  # full: another clip is held for its evaluation only
    other = _row(media) | {"video": str(media["good2"])}
    for decoded in (10, 11):
        with clips.keeping():
            policy.inputs(other, "av", 4096)
            policy.inputs(other, "video_only", 4096)
        assert clips.decoded == decoded and clips.kept_bytes == clips.keep_bytes


def test_an_evaluation_clip_that_failed_once_is_read_again(thinker, media, monkeypatch):
    """A kept failure lasted the whole training: a read that timed out once (a slow network
    mount) left its row out of every evaluation after. It is tried again in the next
    evaluation, and what it reads then is kept."""
    from avcurate.media.errors import MediaError
    from avcurate.trainer import clips as clip_module

    folder, processor = thinker
    policy = OmniPolicy(str(folder), processor=processor, frames=4, audio_seconds=2.0)
    row = _row(media)
    real, calls = clip_module.read_clip, []

    def slow_once(job):
        calls.append(job)
        if len(calls) == 1:
            return ("error", "media_timeout", f"{job[0]}: no result within 60 s")
        return real(job)

    monkeypatch.setattr(clip_module, "read_clip", slow_once)
    with policy.clips.keeping():  # the first evaluation: the row is left out, read once
        for _ in range(2):
            with pytest.raises(MediaError, match="no result within 60 s"):
                policy.inputs(row, "av", 4096)
    assert len(calls) == 1
    for _ in range(2):  # the next evaluations answer it, from one more read
        with policy.clips.keeping():
            ids, extra = policy.inputs(row, "av", 4096)
            policy.inputs(row, "audio_only", 4096)
        assert ids.numel() > 0 and "pixel_values_videos" in extra
    assert len(calls) == 2


def test_evaluations_during_training_read_each_clip_once(thinker, media, tmp_path,
                                                          monkeypatch):
    """Three evaluations with the no-audio and no-video variants of the modality reward:
    each validation clip is read once in all."""
    import shutil

    from avcurate.trainer import clips as clip_module

    folder, processor = thinker
    train_clip = tmp_path / "train.mp4"
    shutil.copy(media["good"], train_clip)
    data = tmp_path / "export"
    (data / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_row(media) | {"video": str(train_clip)}] * 2),
                   data / "data/train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([_row(media) | {"video": str(media[k])}
                                         for k in ("good", "good2")]),
                   data / "data/validation-00000-of-00001.parquet")
    reads = []
    real = clip_module.read_clip
    monkeypatch.setattr(clip_module, "read_clip", lambda job: reads.append(job) or real(job))
    cfg = TrainConfig(data=str(data), model=str(folder), out=str(tmp_path / "out"),
                      policy="omni", frames=2, audio_seconds=2.0, num_generations=2,
                      prompts_per_step=2, steps=2, lr=1e-2, max_new_tokens=3,
                      max_prompt_tokens=4096, system_prompt="", eval_every=1,
                      rewards=["accuracy", "modality_attention"])
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    train(cfg, policy_kwargs={"processor": processor, "media_timeout": None}, progress=False)
    evals = (tmp_path / "out/eval.jsonl").read_text().splitlines()
    assert len(evals) == 3  # before the first step, after each
    held_out = [job for job in reads if str(train_clip) not in job[:2]]
    # 3 evaluations x 2 rows x (the clip, no audio, no video) were 18 reads
    assert len(held_out) == 2 and {job[0] for job in held_out} == {str(media["good"]),
                                                                  str(media["good2"])}
    # 2 steps x 2 rows x (the clip, no audio, no video) were 12 reads of the one training clip
    assert len([job for job in reads if str(train_clip) in job[:2]]) == 2


def test_the_variants_of_a_training_row_take_its_read(thinker, media, tmp_path, monkeypatch):
    """The modality reward's no-audio and no-video rollouts read each training clip twice
    more, and a clip that failed on one of those reads (here a mount gone slow after the
    first read: every read after it times out) stopped training with a traceback, past
    the row-skipping that covers the prompt's read. The variants now take the clip the
    prompt read; the row is skipped when it is drawn again."""
    import json

    from avcurate.trainer import clips as clip_module

    folder, processor = thinker
    slow = tmp_path / "slow.mp4"
    slow.write_bytes(media["good"].read_bytes())
    rows = [_row(media) | {"id": "slow", "video": str(slow)},
            _row(media) | {"id": "good", "video": str(media["good2"])}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    reads = []
    real = clip_module.read_clip

    def slow_after_first(job):
        reads.append(job)
        if str(slow) in job[:2] and len([j for j in reads if str(slow) in j[:2]]) > 1:
            return ("error", "media_timeout", f"{slow}: no result within 60 s")
        return real(job)

    monkeypatch.setattr(clip_module, "read_clip", slow_after_first)
    cfg = TrainConfig(data=str(tmp_path / "rows.parquet"), model=str(folder),
                      out=str(tmp_path / "out"), policy="omni", frames=2, audio_seconds=2.0,
                      num_generations=2, prompts_per_step=2, steps=2, lr=1e-2,
                      max_new_tokens=3, max_prompt_tokens=4096, system_prompt="",
                      rewards=["accuracy", "modality_attention"])
    history = train(cfg, policy_kwargs={"processor": processor, "media_timeout": None},
                    progress=False)
    assert len(history) == 2
    [skipped] = map(json.loads, (tmp_path / "out/skipped_rows.jsonl").read_text().splitlines())
    assert (skipped["id"], skipped["reason"], skipped["step"]) == ("slow", "media_timeout", 2)
    assert all(job[0] and job[1] for job in reads)  # no variant read a clip again
