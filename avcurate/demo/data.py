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
from avcurate.core.outputs import check_output_folder, check_owned_folder
from avcurate.core.store import atomic_write_bytes
from avcurate.media import synth

PITCHES = {"low": 220.0, "medium": 440.0, "high": 880.0}
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
N_LLAVA, N_AVQA = 24, 16
ANNOTATIONS = ("llava_video.json", "avqa.json", "video_vista.json")

MODEL = """backend = "${AVCURATE_DEMO_BACKEND:-openai}"
model = "${AVCURATE_DEMO_MODEL:-avcurate-demo-model}"
base_url = "${AVCURATE_DEMO_BASE_URL:-}"
concurrency = 8"""

RECIPE = f"""\
# The demo recipe: three annotation formats through every curation stage.
# `avcurate demo` sets AVCURATE_DEMO_* to its built-in demo model server (or to the
# --backend/--model/--base-url you give it); the stages below are those of
# recipes/omnivideo_r1.toml (curation) and recipes/avrt.toml (traces), with the
# measured probe in between, sized for a 40-clip demo.
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

[[stages]]
name = "dedup"

[[stages]]
name = "score"
{MODEL}
frames = 4
audio_seconds = 3.0

[[stages]]
name = "classify"
{MODEL}

[[stages]]
name = "threshold"
rules = ["answer_accuracy == 1", "question_logic >= 0.8", "composite_score >= 0.7"]

[[stages]]
name = "probe"
{MODEL}
n = 8
frames = 4
audio_seconds = 3.0

[[stages]]
name = "threshold"
rules = ["blind_answerable <= 0.25"]

[[stages]]
name = "balance"
max_ratio = 1.2   # small, so the demo shows the cap (the papers use 3)
min_count = 2

[[stages]]
name = "subset"
subset = "audio_visual"
rules = ["video_dependency >= 0.7 and audio_dependency >= 0.7"]

[[stages]]
name = "visual_teacher"
{MODEL}
frames = 4

[[stages]]
name = "audio_teacher"
{MODEL}
audio_seconds = 3.0

[[stages]]
name = "teacher_filter"
require = "either"

[[stages]]
name = "merge"
{MODEL}
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
    records += _judged(rng)
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


def _record(rid: str, clip: int, question: str, options: list[str], k: int) -> dict:
    human = f"<video>\n{question}\n{lettered(options)}"
    return {"id": rid, "video": f"clip_{clip:02d}.mp4", "data_source": "avcurate-demo",
            "conversations": [{"from": "human", "value": human},
                              {"from": "gpt", "value": f"{letter(k)}."}]}


def _judged(rng: random.Random) -> list[dict]:
    """Well-formed records that the later stages reject: a wrong answer key and a question
    that needs no media (both for the judge and its threshold), and questions that name
    their own answer, which the judge misses but the probe measures (blind_answerable)."""
    records = []
    for clip in (0, 6):  # clip 0 and 6 are red: the key says otherwise
        options, _ = _mc(rng, "red", COLORS)
        wrong = next(i for i, o in enumerate(options) if o != "red")
        records.append(_record(f"demo_wrong_key_{clip}", clip, "What color is the square "
                               "that moves while the tone plays?", options, wrong))
    options, k = _mc(rng, "four", ["three", "four", "five", "six"])
    records.append(_record("demo_no_media", 1, "How many sides does the moving square have?",
                           options, k))
    for clip in (2, 8, 14):  # blue clips
        options, k = _mc(rng, "blue", COLORS)
        records.append(_record(f"demo_gives_away_{clip}", clip, "The blue square slides "
                               "across while a tone plays. Which color is the square?",
                               options, k))
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


# With a real model every model stage gets room to think: a thinking model (Gemini 2.5,
# Qwen3) spends max_tokens on its thinking first, and classify's 64 tokens are gone before
# the answer. The built-in model's recipe stays as it was, so its demo folders resume.
THINKING_ROOM = "max_tokens = 8192   # room for a thinking model to think before it answers"


def recipe_text(builtin: bool = True) -> str:
    """The demo recipe for the built-in demo model, or for a real one."""
    return RECIPE if builtin else RECIPE.replace(MODEL, f"{MODEL}\n{THINKING_ROOM}")


def make_demo(out_dir: Path | str, seed: int = 0, *, builtin: bool = True) -> Path:
    """Write media, annotations and `demo.toml` under `out_dir`; return the recipe path."""
    root = Path(out_dir)
    recipe = root / "demo.toml"
    claim(root)
    if _made(root):  # already there (a re-run resumes): rewriting the media would redo it all
        if recipe.read_text() != recipe_text(builtin):
            atomic_write_bytes(recipe, recipe_text(builtin).encode())
        return recipe
    rng = random.Random(seed)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "llava_video.json").write_text(json.dumps(_llava(root, rng), indent=1))
    (ann / "avqa.json").write_text(json.dumps(_avqa(root, rng), indent=1))
    (ann / "video_vista.json").write_text(json.dumps(_video_vista(rng), indent=1))
    recipe.write_text(recipe_text(builtin))  # last: its presence says the data is complete
    return recipe


MARKER = ".avcurate-demo"


def claim(root: Path) -> None:
    """Make `root` the demo's folder, or raise ValueError: the demo writes annotations/,
    media/, run/, export/, demo.toml and report.html, so it takes only a new or empty
    folder, or one it made before (marked by `MARKER`, written before anything else, so a
    demo killed half-way is still recognised); never a folder of the user's."""
    if (root / MARKER).is_file():
        return
    check_output_folder(root, "--out")
    if not _made(root):
        check_owned_folder(root, "--out", ours=lambda name: False,
                           what="a folder made by avcurate demo",
                           hint="choose a new or empty --out (the demo writes annotations/, "
                                "media/, run/, export/, demo.toml and report.html into it)")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / MARKER, b"made by avcurate demo, which may replace anything "
                                      b"in this folder\n")


def _made(root: Path) -> bool:
    recipe = root / "demo.toml"
    return recipe.is_file() and recipe.read_text() in (RECIPE, recipe_text(False)) and all(
        (root / "annotations" / f).is_file() for f in ANNOTATIONS)
