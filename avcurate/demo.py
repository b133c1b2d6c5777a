"""A small synthetic dataset with real media, in the LLaVA-Video, Video-Vista and AVQA formats.

Every clip shows a colored square moving across the frame while a tone plays,
so each question has a checkable answer from the picture (the color) or the
sound (the pitch). A few samples are broken on purpose, one of each kind the
validate stage must catch, so the demo shows the whole reject funnel.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from avcurate.core.answers import letter, lettered
from avcurate.media import synth
from avcurate.pipeline.registry import available

PITCHES = {"low": 220.0, "medium": 440.0, "high": 880.0}
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
N_LLAVA, N_AVQA = 24, 16

RECIPE = """\
# The demo recipe: two annotation formats -> ingest -> validate.
[run]
shard_size = 8
workers = 2

[[sources]]
name = "llava-video"
annotations = "annotations/llava_video.json"
media_root = "media/llava"

[[sources]]
name = "video-vista"
annotations = "annotations/video_vista.json"
media_root = "media/llava"

[[sources]]
name = "avqa"
annotations = "annotations/avqa.json"
media_root = "media/avqa"

[[stages]]
name = "validate"
silence_db = -60
min_duration_s = 1.0
"""


def _mc(rng: random.Random, correct: str, pool: list[str], k: int = 4) -> tuple[list[str], int]:
    options = [correct] + rng.sample([p for p in pool if p != correct], k - 1)
    rng.shuffle(options)
    return options, options.index(correct)


def _clip(path: Path, i: int, color: str, pitch: str, *, broken: str | None) -> None:
    kw = {"seconds": 3.0, "color": color, "freq": PITCHES[pitch]}
    if broken == "missing":
        return
    if broken == "silent":
        kw["amp"] = 0.0
    if broken == "no_audio":
        kw["audio"] = False
    synth.write_clip(path, **kw)
    if broken == "truncated":
        synth.truncate(path, 0.4)


def _llava(root: Path, rng: random.Random) -> list[dict]:
    broken = {3: "silent", 9: "silent", 15: "no_audio", 20: "truncated", 22: "missing"}
    records = []
    for i in range(N_LLAVA):
        color, pitch = COLORS[i % len(COLORS)], list(PITCHES)[i % 3]
        name = f"clip_{i:02d}.mp4"
        _clip(root / "media/llava" / name, i, color, pitch, broken=broken.get(i))
        options, k = _mc(rng, color, COLORS)
        human = ("<video>\nWhat color is the square that moves while the tone plays?\n"
                 + lettered(options)
                 + "\nAnswer with the option's letter from the given choices directly.")
        convs = [{"from": "human", "value": human}, {"from": "gpt", "value": f"{letter(k)}."}]
        if i % 4 == 0:  # multi-turn: a second, open-ended question about the sound
            convs += [{"from": "human", "value": "Is the tone low, medium or high in pitch?"},
                      {"from": "gpt", "value": f"The tone is {pitch} in pitch."}]
        records.append({"id": f"demo_{i:02d}", "video": name, "conversations": convs,
                        "data_source": "avcurate-demo"})
    # Malformed on purpose: each is caught at ingest or by validate, with its own reason.
    records[5]["conversations"][1]["value"] = "E."            # answer_not_in_options
    records[7]["conversations"][0]["value"] = "<video>\n  "     # empty_question
    records.append({"id": "demo_01", "video": "clip_01.mp4",    # a true duplicate (dedup)
                    "conversations": records[1]["conversations"]})
    records.append({"id": "demo_bad_conv", "video": "clip_02.mp4",  # malformed_annotation
                    "conversations": [{"from": "human", "value": "question with no answer"}]})
    records.append({"id": "demo_escape", "video": "../../../etc/passwd",  # unsafe_path
                    "conversations": records[2]["conversations"]})
    records.append("this record is not an object")               # malformed_annotation
    return records


def _av_options(rng: random.Random, color: str, pitch: str) -> tuple[list[str], int]:
    """Options pairing a square colour with a tone: only the right pair matches both senses."""
    colors = [color] + rng.sample([c for c in COLORS if c != color], 2)
    pitches = [pitch] + [p for p in PITCHES if p != pitch]
    options = [f"a {c} square with a {p}-pitched tone" for c, p in zip(colors, pitches, strict=True)]
    order = list(range(3))
    rng.shuffle(order)
    return [options[i] for i in order], order.index(0)


def _avqa(root: Path, rng: random.Random) -> list[dict]:
    broken = {4: "silent", 11: "corrupt"}
    records = []
    for i in range(N_AVQA):
        color, pitch = COLORS[(i + 2) % len(COLORS)], list(PITCHES)[(i + 1) % 3]
        name = f"avqa_{i:02d}"
        path = root / "media/avqa" / f"{name}.mp4"
        if broken.get(i) == "corrupt":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.randrange(256)
                                                                  for _ in range(4000)))
        else:
            _clip(path, i, color, pitch, broken=broken.get(i))
        options, k = _av_options(rng, color, pitch)
        records.append({"id": 1000 + i, "video_name": name,
                        "question_text": "Which square moves across the frame, and what sound "
                                         "plays with it?",
                        "multi_choice": options, "answer": k,
                        "question_relation": "Both", "question_type": "Which"})
    records[6]["answer"] = 7                                      # answer_not_in_options
    records[8]["multi_choice"] = records[8]["multi_choice"][:1]   # too_few_options
    records[8]["answer"] = 0
    del records[13]["question_text"]                              # malformed_annotation
    records.append(records[1] | {"question_text": "Which square moves?"})  # duplicate_id
    return records


def _video_vista(rng: random.Random) -> list[dict]:
    """A few Video-Vista records over the LLaVA clips (same media, another format)."""
    records = []
    for i in (1, 2, 4, 6, 8, 10):
        pitch = list(PITCHES)[i % 3]
        options, k = _mc(rng, pitch, list(PITCHES), k=3)
        human = ("<video>\nIs the tone that plays low, medium or high in pitch?\n"
                 + lettered(options))
        records.append({"id": f"vista_{i:02d}", "video": f"clip_{i:02d}.mp4",
                        "Type": "Audio Attribute", "conversations": [
                            {"from": "human", "value": human},
                            {"from": "gpt", "value": letter(k)}]})
    return records


def make_demo(out_dir: Path | str, seed: int = 0) -> Path:
    """Write media, annotations and `demo.toml` under `out_dir`; return the recipe path."""
    root = Path(out_dir)
    rng = random.Random(seed)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "llava_video.json").write_text(json.dumps(_llava(root, rng), indent=1))
    (ann / "avqa.json").write_text(json.dumps(_avqa(root, rng), indent=1))
    (ann / "video_vista.json").write_text(json.dumps(_video_vista(rng), indent=1))
    recipe = root / "demo.toml"
    recipe.write_text(RECIPE)
    return recipe


def next_steps(out_dir: Path, run_dir: Path) -> str:
    lines = [
        "",
        f"[bold]What happened[/]: {out_dir}/annotations holds annotation files in the "
        f"LLaVA-Video, Video-Vista and AVQA formats over {N_LLAVA + N_AVQA - 1} real mp4 clips; "
        "a few are broken on purpose (silent, no audio, truncated, corrupt, missing, "
        "malformed annotations). Every annotation ended up kept or rejected with a reason.",
        "",
        "[bold]Next[/]:",
        f"  avcurate status {run_dir}          # counts and reject reasons again",
        f"  avcurate run {out_dir}/demo.toml --out {run_dir}   # re-run: everything is resumed",
    ]
    if "score" in available():
        lines += [
            "  # scoring needs a model backend, e.g. a local OpenAI-compatible server:",
            "  #   vllm serve Qwen/Qwen2.5-Omni-7B --port 8000",
            f"  avcurate score {run_dir} --backend openai --model Qwen/Qwen2.5-Omni-7B "
            "--base-url http://localhost:8000/v1",
            "  # or Gemini, with GEMINI_API_KEY set:",
            f"  avcurate score {run_dir} --backend gemini --model gemini-2.5-pro",
            "  # whole pipelines (curation, traces, export): recipes/omnivideo_r1.toml, "
            "recipes/avrt.toml (see the README)",
        ]
    else:
        lines += [
            "  Scoring needs a model backend (an OpenAI-compatible server such as "
            "`vllm serve …`, or Gemini with GEMINI_API_KEY); the model stages are not part "
            "of this version yet.",
        ]
    return "\n".join(lines)
