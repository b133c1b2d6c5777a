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
    """The `av` module, with FFmpeg's own log output silenced (it would flood progress bars)."""
    import av

    av.logging.set_level(av.logging.PANIC)
    return av
