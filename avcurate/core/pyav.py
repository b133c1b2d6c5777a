"""PyAV, imported on first use.

Importing PyAV (and the FFmpeg libraries it loads) takes 0.04-0.1 s, which
every command paid at start-up while most of them (`status`, `balance`,
`export`, a resumed run) never open a media file. Modules that need it call
`pyav()` inside the function that does, and import `av` for annotations only
under `TYPE_CHECKING`.
"""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def pyav() -> ModuleType:
    """The `av` module, with FFmpeg's own log output silenced (it would flood progress bars).

    Silenced in C (`set_level(None)`, PyAV's no-op callback), not filtered in Python: at
    any level PyAV's Python callback takes every ERROR line, and takes the GIL for it. A
    decoder thread that logs one while the main thread frees the codec, holding the GIL
    and waiting for that thread, never returns: a test run hung so for 10 minutes in
    `avcodec_free_context` after a frame-threaded decode stopped early (PyAV issues 751,
    909). Exceptions then carry FFmpeg's error code and text, without its last log line."""
    import av

    av.logging.set_level(None)
    return av
