"""Each reward on crafted completions: good, malformed, edge cases."""

from __future__ import annotations

import pytest
from loopback import openai_server

from avcurate.media import probe
from avcurate.media.cut import cut
from avcurate.media.synth import write_clip
from avcurate.trainer.rewards import RewardSettings, build, combine, get, rollouts_needed

ROW = {"question": "Which?", "options": ["red", "blue"], "answer": "B", "duration_s": 10.0}


def r(name, *completions, row=ROW):
    return get(name)(list(completions), [row] * len(completions))


def test_format():
    assert r("format", "<think>hm</think><answer>B</answer>", " <think>a\nb</think>\n<answer>B</answer> ",
             "<think>hm</think><answer>B</answer> extra", "<answer>B</answer>",
             "<think></think><answer>B</answer>", "<think>a<think>b</think><answer>B</answer>",
             "<think>a</think><answer>B</answer><answer>C</answer>") == [1, 1, 0, 0, 0, 0, 0]


def test_tcta_format():
    good = ("<time>0.5-2</time><caption>a red square</caption><time>3-4.5</time><caption>a tone"
            "</caption><thinking>so</thinking><answer>B</answer>")
    assert r("tcta_format", good,
             good.replace("3-4.5", "4.5-3"),            # S >= E
             good.replace("3-4.5", "3-12"),             # outside the 10 s clip
             good.replace("<caption>a tone</caption>", ""),  # counts differ
             good.replace("<thinking>so</thinking>", ""),     # no thinking block
             "<thinking>so</thinking><answer>B</answer>",     # no pair at all
             good + " trailing") == [1, 0, 0, 0, 0, 0, 0]


def test_accuracy():
    assert r("accuracy", "<think>x</think><answer>B</answer>", "<answer>(B)</answer>",
             "<answer>B. blue</answer>", "<answer>A</answer>", "B", "<answer>blue</answer>",
             "<answer>purple</answer>") == [1, 1, 1, 0, 0, 1, 0]  # an option's own text names it


def test_keyframe_rewards():
    spread = "<time>0-1</time><time>3-4</time><time>6-7</time><time>9-10</time>"
    clustered = "<time>0-1</time><time>0.2-1.1</time><time>0.4-1.2</time><time>9-10</time>"
    div = r("keyframe_diversity", spread, clustered, "no keyframes")
    assert div[0] == 1.0 and div[1] == pytest.approx((-0.2 * 2 + 1.0 * 2) / 4) and div[2] == 0
    row = dict(ROW, k0=4)
    assert r("keyframe_count", spread, "<time>0-1</time><time>3-4</time>",
             "<time>0-1</time>" * 9, row=row) == [1.0, 0.5, 0.0]


def test_box_iou_uses_the_best_matching():
    row = dict(ROW, gt_boxes=[[0, 0, 10, 10], [20, 20, 30, 30]])
    swapped = "<box>20,20,30,30</box><box>0,0,10,10</box>"  # right boxes, other order
    half = "<box>0,0,10,5</box>"
    extra = swapped + "<box>50,50,60,60</box>"
    assert r("box_iou", swapped, half, extra, "none", row=row) == pytest.approx(
        [1.0, 0.5 / 2, 2 / 3, 0.0])


def test_modality_attention():
    def row(video_only, audio_only):
        return dict(ROW, video_only_completion=f"<answer>{video_only}</answer>",
                    audio_only_completion=f"<answer>{audio_only}</answer>")

    comps = ["<answer>B</answer>", "<answer>A</answer>", "<answer>A</answer>"]
    rows = [row("A", "A"), row("B", "A"), row("A", "A")]
    fn = get("modality_attention")
    assert fn(comps, rows) == [0.3, 0.0, 0.3]  # all three wrong still pays, as published
    strict = get("modality_attention", RewardSettings(attention_lambda=0.5, attention_strict=True))
    assert strict(comps, rows) == [0.5, 0.0, 0.0]
    assert fn(comps, rows) == [0.3, 0.0, 0.3]  # settings live on each object, not in a global
    with pytest.raises(ValueError, match="modality-removed"):
        fn(comps[:1], [ROW])


def test_rewards_declare_their_extra_rollouts():
    assert rollouts_needed(build(["format", "accuracy"])) == ()
    assert rollouts_needed(build(["format", "modality_attention", "accuracy"])) == (
        "video_only", "audio_only")
    with pytest.raises(ValueError, match="did you mean 'modality_attention'"):
        build(["modality_atention"])


def test_combine_weights_and_errors():
    total, parts = combine(["format", "accuracy"], [0.5, 2.0],
                           ["<think>x</think><answer>B</answer>"], [ROW])
    assert total == [2.5] and parts == {"format": [1.0], "accuracy": [1.0]}
    with pytest.raises(ValueError, match="unknown reward"):
        combine(["fromat"], None, ["x"], [ROW])


@pytest.mark.parametrize("fps", [10, 25, 60])
def test_cut_segments_keep_their_time_at_any_frame_rate(tmp_path, fps):
    """The spans play at their own speed, in sync with their sound: every decoded frame was
    written one per 1/25 s, so a 60 fps span played 2.4x slower than its audio. Each frame
    of the cut shows what the source showed at that moment."""
    import av
    import numpy as np

    clip = write_clip(tmp_path / "c.mp4", seconds=6, fps=fps, color="red", freq=440)
    out = cut(clip, [(4, 5), (0.5, 2)], tmp_path / "cut.mp4")
    info = probe(out)
    assert info.duration_s == pytest.approx(2.5, abs=0.1) and info.has_audio
    with av.open(str(out)) as c:
        video, sound = c.streams.video[0], c.streams.audio[0]
        assert float(video.duration * video.time_base) == pytest.approx(2.5, abs=0.1)
        assert float(sound.duration * sound.time_base) == pytest.approx(2.5, abs=0.1)
        shown = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(clip)) as c:
        source = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    for joined in (0.3, 1.2, 1.7, 2.3):  # 0.5-2 s of the source, then 4-5 s
        at = 0.5 + joined if joined < 1.5 else 4 + joined - 1.5
        here = max((f for f in shown if f[0] <= joined + 1e-6), key=lambda f: f[0])[1]
        there = max((f for f in source if f[0] <= at + 1e-6), key=lambda f: f[0])[1]
        later = max((f for f in source if f[0] <= at + 0.4), key=lambda f: f[0])[1]
        assert np.abs(here.astype(int) - there).mean() < 3
        assert np.abs(here.astype(int) - later).mean() > 3 * np.abs(here.astype(int) - there).mean()


def test_a_span_far_into_a_long_clip_is_sought_and_overlaps_are_shown_once(tmp_path):
    """A span 25 s into a clip with keyframes 10 s apart is cut from a seek, not from
    decoding everything before it, and shows the source's frames of that moment; spans
    that overlap make one stretch of the joined clip (it was 4 s for (1, 3) and (2, 4))."""
    import av
    import numpy as np

    clip = write_clip(tmp_path / "long.mp4", seconds=30, size=(96, 64), gop=250)
    out = cut(clip, [(25.0, 26.0)], tmp_path / "far.mp4")
    with av.open(str(out)) as c:
        shown = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(clip)) as c:
        source = {round(f.time, 2): f.to_ndarray(format="rgb24") for f in c.decode(video=0)}
    assert len(shown) == 25
    for t, picture in shown:
        assert np.abs(picture.astype(int) - source[round(25.0 + t, 2)]).mean() < 3
    assert probe(cut(clip, [(1, 3), (2, 4)], tmp_path / "overlap.mp4")).duration_s == \
        pytest.approx(3.0, abs=0.1)


def test_query_intent_and_soft_accuracy_with_a_judge(tmp_path, monkeypatch):
    """The judge scores each span and the joined spans; the cuts live only while the batch
    is judged (they stayed in a shared /tmp folder for good, and a video replaced at the
    same path was judged from its old cuts)."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    clip = write_clip(tmp_path / "red.mp4", seconds=6, color="red", freq=440)
    row = dict(ROW, video=str(clip), duration_s=6.0)
    right = ("<time>0-1</time><caption>a red square moves</caption><time>2-3</time>"
             "<caption>the red square again</caption><thinking>t</thinking><answer>B</answer>")
    wrong = right.replace("red", "blue")
    with openai_server() as server:
        settings = RewardSettings(judge_backend="openai", judge_model="judge",
                                  judge_base_url=server.url + "/v1")
        qi = get("query_intent", settings)([right, wrong, "<answer>B</answer>"], [row] * 3)
        soft = get("soft_accuracy", settings)(["<answer>B</answer>", "<answer>A</answer>"],
                                              [row] * 2)
        videos = [p for req in server.requests for p in req["messages"][0]["content"]
                  if p["type"] == "video_url"]
        assert list(scratch.iterdir()) == []  # the batch's cuts are gone once judged
        write_clip(clip, seconds=6, color="blue", freq=440)  # another video, same path
        again = get("query_intent", settings)([right, wrong], [row] * 2)
    # 2 pairs: consistency 1.0 (red clip, red captions) / 0.0; completeness = 2 s / 2 s = 1.0
    assert qi == pytest.approx([1.0, 0.5, 0.0], abs=0.05)
    assert len(videos) == 6  # two spans + one joined clip per completion with pairs
    assert soft == [1.0, 0.0]
    assert again == pytest.approx([0.5, 1.0], abs=0.05)  # judged from the blue clip
