"""The validate stage: structural checks before any model sees a sample.

Annotation checks come first (cheap), then duplicate ids, then media checks.
Each failure has its own reason code so `avcurate status` can say how much
data was lost to what. Media probes are cached per file (path, size, mtime)
in the run folder, because real datasets ask many questions about one video.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avcurate.core.answers import letter, letter_index, letterable
from avcurate.core.options import option
from avcurate.core.schema import BASE_COLUMNS, with_columns
from avcurate.media.archives import archives_in, nearest_folders, unpack_hint
from avcurate.media.errors import Lost, MediaError
from avcurate.media.probe import PROBE_VERSION, probe
from avcurate.stages.base import BaseStage, ShardResult, StageError
from avcurate.stages.context import StageContext
from avcurate.stages.shards import ShardTable

REASONS = {
    "empty_question": "the question is empty",
    "too_few_options": "a multiple-choice question with fewer than two options",
    "too_many_options": "more options than the letters A-Z can name (26)",
    "empty_option": "an option is blank",
    "duplicate_options": "two options are the same text (either letter would be right)",
    "answer_not_in_options": "the answer is not one of the options",
    "missing_answer": "an open-ended question with no answer",
    "duplicate_id": "another row has the same id (the first one is kept)",
    "unsafe_path": "the media path escapes the media root",
    "missing_media": "the media file does not exist",
    "unreadable_media": "the media file is corrupt or not media",
    "media_timeout": "reading the file took longer than [run] media_timeout (a stuck decoder)",
    "media_crash": "the process reading the file died (a decoder crash, or out of memory)",
    "truncated": "the file ends far before its declared duration",
    "no_video_stream": "the video file has no video stream",
    "no_audio_stream": "there is no audio track",
    "silent_audio": "the audio track is silent",
    "duration_out_of_range": "the duration is outside the configured bounds",
}


PROBED_MAX = 100_000  # probe results kept per process (a few hundred bytes each)


@dataclass(frozen=True)
class MediaOutcome:
    """What validate decides from one (video, audio) pair: a reject reason or None, its
    detail, and the probe columns (with `duration_s`) its rows get."""

    reason: str | None
    detail: str | None
    values: dict[str, Any]


def probe_job(args: tuple[str, float, float]) -> dict[str, Any]:
    """Probe one file in a worker process; errors come back as data, not exceptions."""
    path, loudness_seconds, tolerance = args
    try:
        return probe(path, loudness_seconds=loudness_seconds,
                     truncation_tolerance=tolerance).to_dict()
    except MediaError as exc:
        return {"error": exc.kind, "detail": str(exc)}


def file_key(path: str) -> str | None:
    """Cache key of a file's current content: path, size and mtime (None if missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def stop_if_all_missing(inputs: list[Path], column: str) -> None:
    """Raise StageError when `column` names files and not one of them exists.

    That is a wrong media root (or an unmounted disk), the user's mistake rather than
    every row's: rejecting each row as missing_media would leave an empty run and the
    cause buried in the reject table. Some files missing is the rows' fault, and those
    rows are rejected as usual. The search stops at the first file found, so a run
    whose media is there pays one stat; shards are read one column at a time."""
    seen: set[str] = set()
    for shard in inputs:
        names = pq.ParquetFile(shard).read(columns=[column]).column(0)
        for name in pc.unique(names.combine_chunks()).drop_null().to_pylist():
            if name in seen:
                continue
            if os.path.exists(name):
                return
            seen.add(name)
    if seen:
        archived = unpack_hint(archives_in(nearest_folders(seen)))
        fix = (f"{archived[0].upper()}{archived[1:]}, then run validate again" if archived
               else "Check the source's media root (media_root, --media-root), then ingest "
               "again: re-run with --force, or into a new --out")
        raise StageError(
            f"stage 'validate': none of the {len(seen)} {column} file(s) the rows name exists "
            f"(e.g. {min(seen)}), so every row would be rejected as missing_media. {fix}. "
            "Nothing was rejected.")


@dataclass
class Validate(BaseStage):
    """Reject structurally unusable samples; add probe results as columns."""

    name = "validate"
    requires = BASE_COLUMNS
    adds = {
        "has_audio": pa.bool_(),
        "audio_rms_db": pa.float64(),
        "fps": pa.float64(),
        "width": pa.int32(),
        "height": pa.int32(),
    }
    version = "1"

    silence_db: float = option(-60.0, max=0, help="RMS level (dBFS) below which audio counts "
                               "as silent.")
    min_duration_s: float = option(1.0, min=0, flag="--min-duration",
                                   help="Shortest allowed clip, seconds.")
    max_duration_s: float = option(0.0, min=0, flag="--max-duration",
                                   help="Longest allowed clip, seconds (0 = no limit).")
    require_audio: bool = option(True, help="Reject samples without an audio track (an "
                                 "audio-visual dataset).")
    truncation_tolerance: float = option(0.1, min=0, max=1, help="Fraction of the declared "
                                         "duration that may be missing before a file is "
                                         "truncated.")
    loudness_seconds: float = option(60.0, gt=0, help="Seconds of audio decoded to measure "
                                     "loudness.")

    _dups: dict[int, list[str | None]] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)
    _probed: dict[str, dict] = field(default_factory=dict, init=False, repr=False,
                                     compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if 0 < self.max_duration_s < self.min_duration_s:  # every clip would be out of range
            raise StageError(f"stage 'validate': max_duration_s = {self.max_duration_s:g} "
                             f"(--max-duration) is less than min_duration_s = "
                             f"{self.min_duration_s:g}: no clip could pass (0 = no limit)")

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        """Stop if none of the media exists; find every row whose id already appeared
        earlier (by shard, then row order)."""
        for column in ("video", "audio") if self.require_audio else ("video",):
            stop_if_all_missing(inputs, column)
        prefix = str(ctx.run_dir) + os.sep  # details name the first row relative to the run
        with ShardTable(inputs, ctx.held_table) as rows:
            firsts = rows.per_shard(
                "CASE WHEN row_number() OVER w > 1 THEN first_value(_file || '#' || _row) OVER w "
                "END", window="w AS (PARTITION BY id ORDER BY _shard, _row)")
        self._dups = {i: [f.removeprefix(prefix) if f else None for f in a.to_pylist()]
                      for i, a in firsts.items()}

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        """Annotation checks per row; media checks and probe columns once per distinct
        (video, audio) pair of the shard, taken for its rows (datasets ask many
        questions about one clip)."""
        cols = table.select(["video", "audio", "question", "options", "answer"]).to_pydict()
        keys = list(zip(cols["video"], cols["audio"], strict=True))
        pairs = dict.fromkeys(keys)
        probes = self._probe_all({p for pair in pairs for p in pair if p}, ctx)
        outcomes = [self._media_outcome(video, audio, probes) for video, audio in pairs]
        slot = {pair: i for i, pair in enumerate(pairs)}
        index = [slot[k] for k in keys]
        reasons, details = [], []
        for question, options, answer, first, k in zip(
                cols["question"], cols["options"], cols["answer"], self._dups[shard], index,
                strict=True):
            reason, detail = self._annotation_check(question, options, answer)
            if reason is None and first is not None:
                reason, detail = "duplicate_id", f"same id as row {first}"
            if reason is None:
                reason, detail = outcomes[k].reason, outcomes[k].detail
            reasons.append(reason)
            details.append(detail)
        take = pa.array(index, pa.int32())
        per_pair = {name: pa.array([o.values[name] for o in outcomes], typ)
                    for name, typ in (self.adds | {"duration_s": pa.float64()}).items()}
        table = table.set_column(table.schema.get_field_index("duration_s"), "duration_s",
                                 per_pair.pop("duration_s").take(take))
        table = with_columns(table, {name: a.take(take) for name, a in per_pair.items()})
        return ShardResult.split(table, self.name, reasons, details)

    def _media_outcome(self, video_path: str | None, audio_path: str | None,
                       probes: dict[str, dict]) -> MediaOutcome:
        """The media verdict and probe columns of one (video, audio) pair."""
        video = probes.get(video_path) if video_path else None
        sound = probes.get(audio_path) if audio_path else video
        reason, detail = self._media_check(video_path, video, audio_path or video_path, sound)
        ok = video is not None and "error" not in video
        sound_ok = sound is not None and "error" not in sound
        return MediaOutcome(reason, detail, {
            "has_audio": bool(sound["has_audio"]) if sound_ok else None,
            "audio_rms_db": sound["audio_rms_db"] if sound_ok else None,
            "fps": video["fps"] if ok else None,
            "width": video["width"] if ok else None,
            "height": video["height"] if ok else None,
            "duration_s": video["duration_s"] if ok else None,
        })

    def _probe_all(self, paths: set[str], ctx: StageContext) -> dict[str, dict]:
        """Probe every media file not seen yet in this process, through the run's probe
        cache. A file is looked up (stat, cache) once per process, not once per shard:
        most shards ask about the clips of the shard before."""
        new = sorted(p for p in paths if p not in self._probed)
        if len(self._probed) + len(new) > PROBED_MAX:  # bounded: drop all, start again
            self._probed.clear()
            new = sorted(paths)
        keys = {p: file_key(p) for p in new}
        cache = ctx.cache("probe")
        settings = f"|{self.loudness_seconds}|{self.truncation_tolerance}|v{PROBE_VERSION}"
        present = {p: k + settings for p, k in keys.items() if k is not None}
        cached = cache.get_many(list(present.values()))
        out = {p: {"error": "missing_media", "detail": f"{p}: no such file"}
               for p, k in keys.items() if k is None}
        todo = []
        for p, k in present.items():
            if k in cached:
                out[p] = cached[k]
            else:
                todo.append(p)
        results = dict(zip(todo, ctx.map(probe_job, [
            (p, self.loudness_seconds, self.truncation_tolerance) for p in todo]), strict=True))
        cache.put_many({present[p]: r for p, r in results.items() if not isinstance(r, Lost)})
        out.update((p, r.as_error(p) if isinstance(r, Lost) else r) for p, r in results.items())
        self._probed.update(out)
        return self._probed

    @staticmethod
    def _annotation_check(question: str | None, options: list[str] | None, answer: str | None
                          ) -> tuple[str | None, str | None]:
        if not (question or "").strip():
            return "empty_question", None
        if options is not None and len(options) > 0:
            if len(options) < 2:
                return "too_few_options", f"{len(options)} option(s)"
            if not letterable(options):  # every prompt letters them: Z is the last
                return "too_many_options", f"{len(options)} options"
            if problem := _options_problem(options):
                return problem
            if letter_index(answer, len(options)) is None:
                return "answer_not_in_options", f"answer {answer!r} for {len(options)} options"
        elif not (answer or "").strip():
            return "missing_answer", None
        return None, None

    def _media_check(self, video_path: str | None, video: dict | None, sound_path: str | None,
                     sound: dict | None) -> tuple[str | None, str | None]:
        if video is None:
            return "missing_media", "no video path"
        if "error" in video:
            return video["error"], video["detail"]
        if not video["has_video"]:
            return "no_video_stream", video_path
        if video["truncated"]:
            return "truncated", (f"{video['decodable_s']:.2f}s readable of "
                                 f"{video['declared_duration_s']:.2f}s declared")
        if self.require_audio:
            if sound is not None and "error" in sound:
                return sound["error"], sound["detail"]
            if sound is None or not sound["has_audio"]:
                return "no_audio_stream", (f"{sound_path} has no audio stream "
                                           "(--no-require-audio keeps such rows)")
            if sound["audio_rms_db"] < self.silence_db:
                return "silent_audio", (f"{sound_path}: {sound['audio_rms_db']:.1f} dBFS, under "
                                        f"--silence-db {self.silence_db}")
        duration = video["duration_s"]
        upper = self.max_duration_s if self.max_duration_s > 0 else math.inf
        if not self.min_duration_s <= duration <= upper:
            return "duration_out_of_range", (f"{duration:.2f}s not in [{self.min_duration_s}, "
                                             f"{upper}] (--min-duration, --max-duration)")
        return None, None


def _options_problem(options: list[str]) -> tuple[str, str] | None:
    """A blank option, or two options that are one text (case aside): generated
    distractors repeat the answer now and then, and a model that picks the other copy of
    the right text is scored wrong, by the teachers and by the trainer's reward."""
    lowered = [str(text or "").lower() for text in options]  # ingest stripped each option
    if len(set(lowered)) == len(lowered) and all(lowered):  # the common case, at ~0.4 µs
        return None
    seen: dict[str, int] = {}
    for i, key in enumerate(lowered):
        if not key:
            return "empty_option", f"option {letter(i)} is blank"
        if (first := seen.setdefault(key, i)) != i:
            return "duplicate_options", (f"options {letter(first)} and {letter(i)} are both "
                                         f"{options[i]!r}")
    return None
