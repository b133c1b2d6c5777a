"""probe / frames / audio on real files made with PyAV and soundfile."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import pcm_peak_freq

from avcurate.media import MediaError, audio, frame_indices, frames, probe
from avcurate.media.cut import cut
from avcurate.media.synth import COLORS, write_clip, write_wav


def test_probe_good_clip(media):
    info = probe(media["good"])
    assert info.has_video and info.has_audio
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    assert info.fps == pytest.approx(25.0)
    assert info.frame_count == 100
    assert (info.width, info.height) == (320, 240)
    assert -16 < info.audio_rms_db < -10  # a 0.3-amplitude sine is about -13.5 dBFS
    assert not info.truncated


def test_probe_without_audio_and_silent(media):
    assert probe(media["noaudio"]).has_audio is False
    assert probe(media["noaudio"]).audio_rms_db is None
    assert probe(media["silent"]).audio_rms_db <= -100
    assert -75 < probe(media["quiet"]).audio_rms_db < -60


def test_probe_truncated(media):
    info = probe(media["truncated"])
    assert info.truncated
    assert info.declared_duration_s == pytest.approx(6.0, abs=0.1)
    assert info.decodable_s < 4.0


def test_probe_errors_are_clear(media, tmp_path):
    with pytest.raises(MediaError) as missing:
        probe(tmp_path / "nope.mp4")
    assert missing.value.kind == "missing_media" and "no such file" in str(missing.value)
    with pytest.raises(MediaError) as corrupt:
        probe(media["corrupt"])
    assert corrupt.value.kind == "unreadable_media" and "corrupt.mp4" in str(corrupt.value)


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3"])
def test_probe_audio_files(media, kind):
    info = probe(media[kind])
    assert info.has_audio and not info.has_video
    assert info.duration_s == pytest.approx(3.0, abs=0.1)


def test_frame_indices_are_evenly_spaced():
    assert frame_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert frame_indices(3, 8).max() == 2
    with pytest.raises(ValueError):
        frame_indices(0, 8)


@pytest.mark.parametrize("total, fps", [(100, 25.0), (3, 30.0), (751, 29.97), (48, 24.0)])
def test_frames_picked_by_time_at_a_constant_rate_are_the_evenly_spaced_ones(total, fps):
    from avcurate.media.decode import timed_indices

    starts = np.arange(total) / fps
    spans = np.stack([starts, starts + 1 / fps], axis=1)
    for n in (1, 4, 8, 32):
        assert timed_indices(spans, n).tolist() == frame_indices(total, n).tolist()
    with pytest.raises(ValueError):
        timed_indices(np.zeros((0, 2)), 8)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_shape_timestamps_and_content(media, backend):
    x, times = frames(media["good"], 8, backend=backend)
    assert x.shape == (8, 240, 320, 3) and x.dtype == np.uint8
    assert np.allclose(np.diff(times), 0.5, atol=0.05)  # 4 s / 8 frames
    assert times[0] == pytest.approx(0.24, abs=0.05)
    # the square is red: some pixels are close to the synth color
    red = np.array(COLORS["red"])
    assert (np.abs(x[0].astype(int) - red).sum(axis=-1) < 60).sum() > 500


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_within_a_window(media, backend):
    """`within`: evenly spaced over the first seconds only (the window the audio covers);
    a window longer than the clip is the whole clip."""
    _, times = frames(media["good"], 4, backend=backend, within=2.0)  # a 4 s clip
    assert times.max() < 2.0 and np.allclose(np.diff(times), 0.5, atol=0.05)
    _, whole = frames(media["good"], 4, backend=backend)
    _, longer = frames(media["good"], 4, backend=backend, within=60.0)
    assert whole.max() > 3.0 and np.allclose(whole, longer)


def test_frame_backends_agree(media):
    a, ta = frames(media["good2"], 8, backend="decord")
    b, tb = frames(media["good2"], 8, backend="pyav")
    assert np.allclose(ta, tb, atol=1e-3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


def _encode(path, vcodec: str, acodec: str, seconds: int = 3, fps: int = 10) -> None:
    """A small clip in another codec and container (a ramp of grey frames, a stereo tone)."""
    import av

    with av.open(str(path), "w") as c:
        v = c.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream(acodec, rate=48000, layout="stereo")
        for i in range(seconds * fps):
            img = np.full((64, 64, 3), i * 8 % 256, np.uint8)
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
        for start in range(0, seconds * 48000, 960):
            x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(start, start + 960) / 48000))
            frame = av.AudioFrame.from_ndarray(np.stack([x, x]).astype(np.float32),
                                               format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            c.mux(a.encode(frame))
        c.mux(a.encode())


@pytest.mark.parametrize(("name", "vcodec", "acodec"), [
    ("av1.mp4", "libsvtav1", "aac"), ("vp9.webm", "libvpx-vp9", "libopus"),
    ("h264.mkv", "libx264", "aac")])
def test_frames_and_audio_of_av1_webm_and_matroska(tmp_path, name, vcodec, acodec):
    """decord cannot read AV1 (YouTube's usual codec) at all, so a file validate had kept
    was rejected at every model stage; PyAV took Matroska/WebM's missing stream duration
    for an error. Both backends now give the same frames at the same times, and the
    stereo track comes out at the level of its channels."""
    path = tmp_path / name
    _encode(path, vcodec, acodec)
    x, times = frames(path, 8)
    y, times_pyav = frames(path, 8, backend="pyav")
    assert x.shape == y.shape == (8, 64, 64, 3)
    assert np.allclose(times, frame_indices(30, 8) / 10, atol=1e-3)
    assert np.allclose(times, times_pyav, atol=1e-3) and np.abs(x.astype(int) - y).mean() < 2
    assert np.allclose(x[:, 32, 32, 0], (times * 10).round() * 8, atol=6)  # the right frames
    pcm = audio(path, seconds=2.0)
    assert pcm.shape == (32000,) and 0.27 < np.abs(pcm[8000:]).max() < 0.33
    assert -14.5 < probe(path).audio_rms_db < -12.5


def test_a_stereo_track_is_as_loud_as_the_same_sound_in_mono_or_a_wav(tmp_path):
    """FFmpeg's float downmix adds stereo channels at 0.707 each: a video's stereo track
    reached the models 3 dB louder than the same sound in a wav (a loud one clipped in the
    wav they are sent), and validate measured it 3 dB louder than a mono track."""
    stereo = write_clip(tmp_path / "stereo.mp4", seconds=2, size=(64, 48), channels=2)
    mono = write_clip(tmp_path / "mono.mp4", seconds=2, size=(64, 48))
    wav = write_wav(tmp_path / "tone.wav", audio(mono, seconds=None))
    levels = [probe(p).audio_rms_db for p in (stereo, mono, wav)]
    assert max(levels) - min(levels) < 0.3, levels
    rms = [np.sqrt(np.mean(audio(p, seconds=1.5, offset=0.2) ** 2)) for p in (stereo, wav)]
    assert rms[0] == pytest.approx(rms[1], rel=0.03) and rms[1] == pytest.approx(0.3 / 2 ** .5,
                                                                                  rel=0.05)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_phone_videos_rotation_is_applied_by_both_backends(tmp_path, degrees):
    """A portrait phone video is stored landscape with a display rotation: decord turns
    its frames, PyAV (now the reader of AV1, and of the spans a reward cuts) gave them
    sideways, and the probe gave the stored size."""
    import av

    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 32, "yuv420p"
        v.set_display_rotation(degrees)
        img = np.zeros((32, 64, 3), np.uint8)
        img[:8, :16] = 255  # a white block in the stored frame's top-left corner
        for _ in range(10):
            c.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(v.encode())
    shown = np.rot90(img, degrees // 90)
    info = probe(path)  # validate's width and height columns: the size shown, not stored
    assert (info.height, info.width) == shown.shape[:2]
    for backend in ("decord", "pyav"):
        x, _ = frames(path, 2, backend=backend)
        assert x.shape[1:] == shown.shape, backend
        assert np.abs(x[0].astype(int) - shown).mean() < 8, backend
    [piece] = frames(cut(path, [(0.0, 0.5)], tmp_path / "cut.mp4"), 1)[0]  # a reward's span
    assert piece.shape == shown.shape and np.abs(piece.astype(int) - shown).mean() < 8


def test_frames_of_a_variable_frame_rate_video_are_evenly_spaced_in_time(tmp_path):
    """A phone or a screen recorder writes frames as fast as the picture changes: here 5 s
    at 30 fps, then 10 s at 2 fps. decord's frames were picked by position, so 7 of 8 came
    from the first 5 s of the 15; they are now picked by time, as PyAV's are."""
    from fractions import Fraction

    import av

    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        for t in [i / 30 for i in range(150)] + [5 + i / 2 for i in range(20)]:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), int(t * 16), np.uint8),
                                               format="rgb24")  # its grey level: its second
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            c.mux(v.encode(frame))
        c.mux(v.encode())
    for backend in ("decord", "pyav"):
        x, times = frames(path, 8, backend=backend)
        assert (times < 5).sum() == 3 and times[-1] > 12, (backend, times)
        assert np.all(np.diff(times) > 1), (backend, times)
        shown = x[:, 0, 0, 0] / 16  # each frame is the one of its time
        assert np.abs(shown - times).max() < 0.5, (backend, shown, times)


def test_frames_far_apart_in_a_long_clip_with_long_keyframe_gaps(tmp_path):
    """PyAV seeks to each wanted frame that lies far ahead (it read the whole video before):
    with keyframes 10 s apart it still lands on the frames decord picks by index."""
    clip = write_clip(tmp_path / "long.mp4", seconds=30, size=(96, 64), gop=250)
    for within in (None, 7.0):
        a, ta = frames(clip, 8, backend="decord", within=within)
        b, tb = frames(clip, 8, backend="pyav", within=within)
        assert np.allclose(ta, tb, atol=1e-3) and np.abs(a.astype(int) - b).mean() < 1


@pytest.mark.parametrize(("name", "codec", "rate"), [("clicks.m4a", "aac", 16000),
                                                     ("clicks.webm", "libopus", 48000)])
def test_audio_from_an_offset_is_sought_and_lands_on_the_same_sample(tmp_path, name, codec,
                                                                    rate):
    """An offset was reached by decoding from the start (0.9 s for 15 minutes in, per clip
    and per span a reward cuts); now a seek, a pre-roll, and the samples from the offset:
    clicks at known times land where a decode from the start puts them (within 2 ms)."""
    import av

    from avcurate.media.synth import encode_pcm

    clicks = (2.0, 10.0, 15.0)
    pcm = np.zeros(20 * rate, np.float32)
    for t in clicks:
        pcm[int(t * rate):int(t * rate) + rate // 1000] = 0.8
    with av.open(str(tmp_path / name), "w") as c:
        encode_pcm(c, c.add_stream(codec, rate=rate, layout="mono"), pcm, rate, chunk=960)
    whole = audio(tmp_path / name, seconds=None)
    for t in clicks:
        near = whole[int((t - 0.5) * 16000):int((t + 0.5) * 16000)]
        assert np.argmax(np.abs(near)) / 16000 + t - 0.5 == pytest.approx(t, abs=0.002)
        clip = audio(tmp_path / name, seconds=0.2, offset=t - 0.1)
        assert clip.shape == (3200,)
        assert (t - 0.1) + np.argmax(np.abs(clip)) / 16000 == pytest.approx(t, abs=0.002)
    rest = audio(tmp_path / name, seconds=None, offset=12.0)
    assert rest.size == pytest.approx(8 * 16000, abs=1600)


def test_frames_errors(media, tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        frames(tmp_path / "x.mp4")
    with pytest.raises(MediaError):
        frames(media["corrupt"])
    with pytest.raises(ValueError, match="unknown frame backend"):
        frames(media["good"], backend="opencv")


def test_a_damaged_file_read_by_decord_prints_no_ffmpeg_line(media, tmp_path, capfd):
    """decord's bundled FFmpeg printed its own lines for a damaged file ("partial file",
    "moov atom not found") through the progress bars, beside the row's reject; they are
    silenced as PyAV's are."""
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(media["good"].read_bytes()[:3000])
    with pytest.raises(MediaError):
        frames(truncated, 4, backend="decord")
    err = capfd.readouterr().err  # FFmpeg's lines start "[mov,mp4,... @ 0x55b2...]"
    assert re.search(r"\[[^\]]+ @ 0x[0-9a-f]+\]", err) is None, err


def test_ffmpeg_log_lines_never_enter_python(media, tmp_path):
    """A test run hung for 10 minutes in `avcodec_free_context`: PyAV's Python log callback
    takes the GIL for every FFmpeg ERROR line, whatever the level set, so a decoder thread
    logging one while the main thread freed the codec (holding the GIL, waiting for that
    thread) never returned. FFmpeg's logs are now dropped in C. What shows it: a decode
    error no longer carries the log line PyAV's callback captured ("last error log")."""
    from avcurate.core.pyav import pyav

    data = bytearray(media["good"].read_bytes())
    for i in range(2000, len(data), 97):  # damaged packets: h264 logs an error on each
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data)
    with pytest.raises(MediaError) as raised:
        frames(damaged, 8, backend="pyav")
    assert "cannot decode frames" in str(raised.value)
    assert "last error log" not in str(raised.value)
    assert pyav().logging.get_level() is None


def test_audio_from_video_is_mono_16k_and_right_pitch(media):
    pcm = audio(media["good2"], seconds=2.0)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert len(pcm) == 32000
    assert pcm_peak_freq(pcm, 16000) == pytest.approx(880, abs=5)


def test_audio_clip_is_capped_and_offset(media):
    assert len(audio(media["good"], seconds=10.0)) == pytest.approx(4 * 16000, abs=1100)
    assert len(audio(media["good"], seconds=1.0, offset=1.0)) == 16000


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3"])
def test_audio_files_resampled(media, kind):
    pcm = audio(media[kind], seconds=2.0, sr=16000)
    assert len(pcm) == pytest.approx(32000, abs=1200)
    assert pcm_peak_freq(pcm, 16000) == pytest.approx(300, abs=5)


def test_audio_errors(media):
    with pytest.raises(MediaError) as exc:
        audio(media["noaudio"])
    assert exc.value.kind == "no_audio_stream"
    with pytest.raises(MediaError) as exc:
        audio(media["corrupt"])
    assert exc.value.kind == "unreadable_media"


@pytest.mark.parametrize(("size", "budget"), [((1280, 720), 200_704), ((2560, 1440), 2_073_600)])
def test_frames_scaled_to_a_pixel_budget_keep_their_picture(tmp_path, size, budget):
    """Training's clip frames (sides multiples of 28 within the policy's budget) and a model
    stage's (even sides within --max-pixels) are the decoded pictures made smaller, with the
    aspect kept: alike cell by cell, on uint8 frames throughout."""
    from avcurate.core.images import shrink
    from avcurate.trainer.clips import read_clip

    clip = write_clip(tmp_path / "c.mp4", seconds=2, fps=4, size=size, color="blue")
    full, _ = frames(clip, 8)
    trained, _, _ = read_clip((str(clip), None, 8, 2.0, budget))
    sent = shrink(full, budget)
    assert trained.dtype == sent.dtype == np.uint8
    (h, w), (sh, sw) = trained.shape[1:3], sent.shape[1:3]
    assert h % 28 == w % 28 == 0 and h * w <= budget and abs(w / h - size[0] / size[1]) < 0.1
    assert sh % 2 == sw % 2 == 0 and 0.98 * budget < sh * sw <= budget
    assert abs(sw / sh - size[0] / size[1]) < 0.01

    def cells(x: np.ndarray) -> np.ndarray:  # mean colour per cell of a 7 x 7 grid
        n, hh, ww, _ = x.shape
        x = x[:, : hh // 7 * 7, : ww // 7 * 7].astype(float)
        return x.reshape(n, 7, hh // 7, 7, ww // 7, 3).mean(axis=(2, 4))

    for small in (trained, sent):
        assert np.abs(cells(small) - cells(full)).mean() < 3
