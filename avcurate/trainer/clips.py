"""A training row's frames and audio, decoded in a worker process under a time limit.

Some real files make decord spin forever in native code with the GIL held
(dmlc/decord#373, #375), and a damaged file can crash FFmpeg. Curation's stages decode in
the run's decode workers, where such a file costs its row (`media_timeout`,
`media_crash`); training decoded in the rank's own process, where the same file hung the
run past any Ctrl-C, or killed it. The trainer now reads clips through the same kind of
worker (`WorkerPool`, one per rank), and a lost clip skips its row like a missing one.

Frames are scaled down in the worker with FFmpeg's area filter on uint8 frames: torch's
interpolate, used before, made float copies of the whole clip (~900 MB for 8 4K frames,
in every rank's worker at once) and took 3-5x as long.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from avcurate.media.errors import Lost, MediaError


def read_clip(job: tuple[str | None, str | None, int, float, int]) -> tuple[Any, ...]:
    """(frames [n, H, W, 3] | None, their frame rate | None, audio | None) of one clip:
    `job` is (video or None, audio file or None, frames, seconds, max pixels), the frames
    spread over the first `seconds` like the audio and scaled down here (a tenth of the
    bytes to send back for 720p). A file that cannot be read gives ("error", kind,
    message): the exception itself would not survive the trip (its pickle drops `kind`)."""
    from avcurate.media import audio, frames

    video, sound, n, seconds, max_pixels = job
    try:
        pixels, times = frames(video, n, within=seconds) if video is not None else (None, None)
        clip = audio(sound, seconds) if sound is not None else None
    except MediaError as exc:
        return ("error", exc.kind, str(exc))
    if pixels is None:
        return (None, None, clip)
    return (fit_pixels(pixels, max_pixels), frame_rate(times), clip)


EVAL_CLIP_BYTES = 3 << 29  # 1.5 GiB: the default 256 rows at the default --frames, --max-pixels
FAILS_KEPT = 2  # evaluations a clip fails in before it is left out of the rest


class ClipReader:
    """Reads clips in a decode worker of its own, each within `timeout` seconds; with `timeout`
    None, in this process (a policy built outside training: tests, benchmarks).

    Inside `keeping()` (evaluation) what is read is kept, up to `keep_bytes`, and served
    from memory after: every evaluation answers the same validation rows, and each of the
    rewards' variants (no audio, no video) asked for the same clip again, so a 720p row cost
    ~0.25 s of decoding per evaluation (256 rows: a minute, with the GPU idle). The frames
    and the audio are kept apart, so a variant takes its medium from the full clip's read. A
    failed read is kept for the rest of its evaluation and tried once more in the next one;
    only a clip that fails twice is left out for good. A clip that hangs the decoder costs
    two `--media-timeout`s in all, not one per evaluation, and one that failed for a passing
    reason (a read that timed out on a slow network mount) comes back instead of leaving its
    row out of every evaluation after. The first reads are kept, none evicted (the rows come
    in the same order each time, and a least-recently-used cache smaller than them would
    keep none of the ones asked for next). What does not fit is held until the evaluation
    ends, for the variants. Training's reads are held for their step only (`holding()`): a
    training row comes round once an epoch, and its variants read it twice more.
    """

    def __init__(self, timeout: float | None, keep_bytes: int = EVAL_CLIP_BYTES) -> None:
        self.timeout = timeout
        self._pool = None  # started on first use: a reference policy never reads a clip
        self.keep_bytes, self.kept_bytes, self.decoded = keep_bytes, 0, 0
        self._kept: dict[tuple, Any] = {}  # across evaluations, within keep_bytes
        self._held: dict[tuple, Any] = {}  # until the scope ends
        self._failed: dict[tuple, tuple[MediaError, int, int]] = {}  # error, scope, times
        self._mode: str | None = None  # "keep" (evaluation), "hold" (a training step)
        self._round = 0  # scopes entered: a failure is tried again in a later one

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        """Evaluation: reads kept for the evaluations after (up to `keep_bytes`, the rest
        held until this one ends), and failed reads kept too."""
        with self._scope("keep"):
            yield

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """A training step: reads held until it ends, so the rewards' variants of its rows
        (no audio, no video) take their medium from the row's read."""
        with self._scope("hold"):
            yield

    @contextlib.contextmanager
    def _scope(self, mode: str) -> Iterator[None]:
        outer, self._mode, self._round = self._mode, mode, self._round + 1
        try:
            yield
        finally:
            self._mode = outer
            if outer is None:
                self._held.clear()

    def __call__(self, video: str | None, sound: str | None, n: int, seconds: float,
                 max_pixels: int) -> tuple[Any, Any, Any]:
        if self._mode is None:
            return self._read(video, sound, n, seconds, max_pixels)
        v, a = (_stamped(path) for path in (video, sound))  # a file changed is read again
        job = ("job", v, a, n, seconds, max_pixels)
        failed = self._failed.get(job)
        if failed is not None and (failed[1] == self._round or failed[2] >= FAILS_KEPT):
            raise MediaError(failed[0].kind, str(failed[0]))  # a new one: no traceback piling up
        see = ("video", v, n, seconds, max_pixels) if video is not None else None
        hear = ("audio", a, seconds) if sound is not None else None
        seen, heard = see is None or self._has(see), hear is None or self._has(hear)
        pixels = fps = clip = None
        if not (seen and heard):  # read only what is not kept
            try:
                pixels, fps, clip = self._read(None if seen else video,
                                               None if heard else sound, n, seconds, max_pixels)
            except MediaError as exc:
                if self._mode == "keep":
                    self._failed[job] = (exc, self._round, 1 + (failed[2] if failed else 0))
                raise
            self._failed.pop(job, None)
            if not seen:
                self._keep(see, (pixels, fps), getattr(pixels, "nbytes", 0))
            if not heard:
                self._keep(hear, clip, getattr(clip, "nbytes", 0))
        if see is not None and seen:
            pixels, fps = self._get(see)
        if hear is not None and heard:
            clip = self._get(hear)
        return pixels, fps, clip

    def _has(self, key: tuple) -> bool:
        return key in self._kept or key in self._held

    def _get(self, key: tuple) -> Any:
        return self._kept[key] if key in self._kept else self._held[key]

    def _keep(self, key: tuple, value: Any, size: int) -> None:
        if self._mode == "keep" and self.kept_bytes + size <= self.keep_bytes:
            self._kept[key] = value
            self.kept_bytes += size
        else:
            self._held[key] = value

    def _read(self, video: str | None, sound: str | None, n: int, seconds: float,
              max_pixels: int) -> tuple[Any, Any, Any]:
        job = (video, sound, n, seconds, max_pixels)
        self.decoded += 1
        out = read_clip(job) if self.timeout is None else self._worker().map(read_clip, [job])[0]
        if isinstance(out, Lost):
            raise MediaError(out.kind, f"{video or sound}: {out.detail}")
        if isinstance(out[0], str):  # ("error", kind, message)
            raise MediaError(out[1], out[2])
        return out

    def _worker(self):
        if self._pool is None:
            from avcurate.stages.context import WorkerPool

            self._pool = WorkerPool(1, self.timeout)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def clip_scope(policy: Any, mode: str) -> contextlib.AbstractContextManager:
    """The policy's clip reader keeping (`mode` "keep": evaluation) or holding ("hold": a
    training step) what it reads; a text policy reads none."""
    clips = getattr(policy, "clips", None)
    if clips is None:
        return contextlib.nullcontext()
    return clips.keeping() if mode == "keep" else clips.holding()


def _stamped(path: str | None) -> tuple | None:
    """`path` with its size and modification time (None for them when the file is gone):
    the key of what was read from it."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_size, st.st_mtime_ns)


def frame_rate(times) -> float:
    """Frames per second of evenly spaced frames, from their timestamps (the processor turns
    it into seconds per temporal patch; 2 fps, its default, for a single frame)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 2.0
    return float((len(times) - 1) / (times[-1] - times[0]))


def fit_pixels(video, max_pixels: int):
    """Frames [n, H, W, 3] scaled down (aspect kept, sides multiples of 28, the vision
    encoder's merged patch) so each has at most `max_pixels` pixels: 8 frames of 720p would
    otherwise cost thousands of prompt tokens."""
    from avcurate.core.images import fit_size, resize

    n, h, w, _ = video.shape
    return resize(video, *fit_size(w, h, max_pixels, step=28))
