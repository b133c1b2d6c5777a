"""Shared fixtures: real media files made with PyAV, once per test session."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avcurate.media import synth

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """A folder of real clips, each broken (or not) in one specific way."""
    root = tmp_path_factory.mktemp("media")
    files = {
        "good": synth.write_clip(root / "good.mp4", seconds=4, color="red", freq=440),
        "good2": synth.write_clip(root / "sub/good2.mp4", seconds=3, color="blue", freq=880),
        "noaudio": synth.write_clip(root / "noaudio.mp4", seconds=3, audio=False),
        "silent": synth.write_clip(root / "silent.mp4", seconds=3, amp=0.0),
        "quiet": synth.write_clip(root / "quiet.mp4", seconds=3, amp=0.0005),  # about -69 dBFS
        "short": synth.write_clip(root / "short.mp4", seconds=0.6),
        "truncated": synth.truncate(synth.write_clip(root / "truncated.mp4", seconds=6), 0.4),
    }
    corrupt = root / "corrupt.mp4"
    # fixed bytes: fresh random ones were now and then read by FFmpeg as some stream (a
    # fresh-clone CI run once probed them as a file without audio)
    corrupt.write_bytes(random.Random(0).randbytes(4096))
    files["corrupt"] = corrupt
    tone = synth.tone(3.0, 300.0, sr=44100)
    files["wav"] = synth.write_wav(root / "tone.wav", tone, sr=44100)
    sf.write(root / "tone.flac", tone, 44100)
    files["flac"] = root / "tone.flac"
    sf.write(root / "tone.mp3", tone, 44100, format="MP3")
    files["mp3"] = root / "tone.mp3"
    files["root"] = root
    return files


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch) -> Path:
    """A third-party package registering stages through the `avcurate.stages` entry points.

    It is installed the way pip installs a plugin: a module plus a `*.dist-info`
    folder with `entry_points.txt`, on sys.path (and PYTHONPATH for subprocesses).
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "avc_test_plugin.py").write_text(textwrap.dedent('''
        """A plugin stage package, as a third party would write it."""
        import os
        import time
        from dataclasses import dataclass

        import pyarrow as pa
        import pyarrow.compute as pc

        from avcurate.pipeline.stage import BaseStage, Outcome


        @dataclass
        class ShoutStage(BaseStage):
            """Upper-case the question; reject questions longer than max_len."""
            name = "shout"
            requires = ("question",)
            adds = {"question_upper": pa.string()}
            max_len: int = 1000

            def process(self, table, ctx):
                upper = pc.utf8_upper(table.column("question"))
                table = table.append_column("question_upper", upper)
                reasons = [None if len(q) <= self.max_len else "too_long"
                           for q in table.column("question").to_pylist()]
                return Outcome.split(table, self.name, reasons)


        @dataclass
        class SlowStage(BaseStage):
            """Sleep per shard, so a test can kill the run in the middle of a stage."""
            name = "slow"
            requires = ("id",)
            adds = {"slow_mark": pa.int64()}
            seconds: float = 0.2

            def process(self, table, ctx):
                time.sleep(self.seconds)
                marks = [len(i) for i in table.column("id").to_pylist()]
                table = table.append_column("slow_mark", pa.array(marks, pa.int64()))
                reasons = [("odd_mark" if m % 2 else None) for m in marks]
                return Outcome.split(table, self.name, reasons)
    '''))
    dist = site / "avc_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: avc-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[avcurate.stages]\nshout = avc_test_plugin:ShoutStage\nslow = avc_test_plugin:SlowStage\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return site


def avcurate_cmd(*args: str) -> list[str]:
    """The CLI as a user runs it, in a subprocess with this interpreter."""
    return [sys.executable, "-m", "avcurate", *args]


def pcm_peak_freq(pcm: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm))
    return float(np.fft.rfftfreq(len(pcm), 1 / sr)[int(np.argmax(spectrum))])


@pytest.fixture
def balanced_run(tmp_path, media):
    """A finished run: 70 speech rows (both dependencies high) and 20 music rows, threshold,
    balance (min 5) and the audio_visual subset; media under tmp_path/clips."""
    from test_filters import row, scored_recipe

    from avcurate.pipeline.recipe import StageSpec
    from avcurate.pipeline.runner import Runner

    (tmp_path / "clips").mkdir()
    for name in ("good", "good2"):  # the media root of the run is tmp_path
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(media[name].read_bytes())
    rows = ([row(f"a{i:02d}", "speech", vd=0.9, ad=0.9, video="clips/good.mp4")
             for i in range(70)]
            + [row(f"b{i:02d}", "music", vd=0.2, video="clips/good2.mp4") for i in range(20)])
    stages = [StageSpec("threshold"), StageSpec("balance", {"min_count": 5}), StageSpec("subset")]
    Runner(scored_recipe(tmp_path, rows, stages), tmp_path / "run", show_progress=False).run()
    return tmp_path / "run"


class SmallDisk:
    """A real filesystem that fills up: a tmpfs of a few KiB mounted under a test's folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([*options, f"size={size}"]),
                               "tmpfs", str(self.path)], capture_output=True, text=True)

    def resize(self, size: str) -> None:
        assert self.mount(size, "remount").returncode == 0


@pytest.fixture
def small_disk(tmp_path) -> Iterator[SmallDisk]:
    """A full disk for real (ENOSPC from the kernel, not a patched call). Mounting needs
    root, which `.ci/run` has; elsewhere the test is skipped. 16 KiB to start with."""
    disk = SmallDisk(tmp_path / "small")
    disk.path.mkdir()
    done = disk.mount("16k")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk.path)], capture_output=True)
