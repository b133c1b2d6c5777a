"""What a frame stage sends for a 4K video, with and without the pixel cap.

A generated 4K clip (8 frames of textured noise, H.264 CRF 18: detail a JPEG must keep,
unlike the flat synthetic clips) goes through the media cache's decode job as a stage
runs it: decode 8 frames, scale them to `--max-pixels`, JPEG-encode them. Printed per
setting: the job's seconds, the frame size, the JPEG and base64 bytes of one request's
frames, and the image tokens a Qwen2.5-VL/Omni server makes of them (one per 28x28
pixels). No target: the figures show what the default cap (a 1080p frame) changes.

    python benchmarks/bench_frame_size.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from avcurate.core.images import FULL_HD_PIXELS
from avcurate.media.cache import DecodedMedia, decode_job

WIDTH, HEIGHT, FRAMES = 3840, 2160, 8


def make_clip(path: Path) -> None:
    """8 frames of 16x16-pixel noise blocks plus fine noise, at 4 fps."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "18"}
        for _ in range(FRAMES):
            blocks = rng.integers(0, 255, (HEIGHT // 16, WIDTH // 16, 3), np.uint8)
            img = np.repeat(np.repeat(blocks, 16, 0), 16, 1).astype(np.uint16)
            img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def measure(clip: Path, folder: Path, max_pixels: int) -> tuple[float, tuple[int, int], int]:
    """(seconds of the decode job, frame (width, height), JPEG bytes of the 8 frames)."""
    target = folder / f"frames-{max_pixels}-{time.perf_counter_ns()}.npz"
    start = time.perf_counter()
    if error := decode_job((str(clip), str(target), None, FRAMES, max_pixels, None, 0.0, 16000)):
        raise SystemExit(f"decode failed: {error}")
    seconds = time.perf_counter() - start
    media = DecodedMedia(str(target), None)
    with av.open(io.BytesIO(media.images[0][0])) as jpeg:
        frame = next(jpeg.decode(video=0))
    return seconds, (frame.width, frame.height), sum(len(j) for j, _ in media.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = folder / "uhd.mp4"
        make_clip(clip)
        print(f"a {WIDTH}x{HEIGHT} clip, {FRAMES} frames, {clip.stat().st_size / 1e6:.1f} MB")
        times: dict[int, list[float]] = {0: [], FULL_HD_PIXELS: []}
        shape: dict[int, tuple[tuple[int, int], int]] = {}
        for _ in range(args.rounds):
            for cap in times:
                seconds, size, jpeg_bytes = measure(clip, folder, cap)
                times[cap].append(seconds)
                shape[cap] = (size, jpeg_bytes)
        for cap, runs in times.items():
            (w, h), jpeg_bytes = shape[cap]
            tokens = FRAMES * -(-w // 28) * -(-h // 28)
            label = "0 (as decoded)" if cap == 0 else f"{cap:,} (default)"
            print(f"--max-pixels {label:<20} {w}x{h}  decode job {min(runs):.2f} s  "
                  f"JPEGs {jpeg_bytes / 1e6:.1f} MB (base64 {jpeg_bytes * 4 / 3 / 1e6:.1f} MB)  "
                  f"~{tokens:,} image tokens")


if __name__ == "__main__":
    main()
