"""Videos sent to Gemini through its Files API: one upload per file, shared, and deleted.

Every request showing a large video uploaded it again (each question about a clip, each
retry) and nothing was ever deleted, while a project holds at most 20 GB of files: a
`--media video` stage over a few hundred 100 MB clips filled it and then failed. Uploads
are now kept per file (path, size, modification time), shared by the requests that show
it, and deleted when the stage ends or, least recently used first, when the uploads kept
would pass `budget` bytes; one in use is never deleted. A file lasts 48 hours on the
server, so one older than a day is uploaded again.

All of it runs on the executor's event loop, one thread: no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google import genai
from google.genai import types

from avcurate.models.errors import ModelError

UPLOAD_BUDGET = 10 << 30  # bytes of uploads kept at once: half a project's 20 GB
REUSE_SECONDS = 24 * 3600  # the server keeps a file 48 h
POLL_SECONDS = 2.0  # between looks at a file the server is still processing


@dataclass
class _Upload:
    task: asyncio.Future[types.File]
    size: int
    made: float = field(default_factory=time.monotonic)
    users: int = 0


Key = tuple[str, int, int]


class Uploads:
    def __init__(self, client: Callable[[], genai.Client], budget: int = UPLOAD_BUDGET,
                 wait_limit: float = 300.0) -> None:
        self.client, self.budget = client, budget
        self.wait_limit = wait_limit  # seconds a file may stay PROCESSING (the backend's timeout)
        self.kept: OrderedDict[Key, _Upload] = OrderedDict()  # least recently used first

    async def part(self, path: Path, mime: str) -> tuple[Key, types.Part]:
        """The file as a part of a request, uploaded unless it already is; the caller gives
        the key back to `release` once its request is answered."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        entry = self.kept.get(key)
        if entry is not None and not entry.users and \
                time.monotonic() - entry.made > REUSE_SECONDS:
            await self._delete(key)
            entry = None
        if entry is None:  # kept before the first await: a second request shares it
            entry = self.kept[key] = _Upload(asyncio.ensure_future(self._upload(path, key, mime)),
                                             st.st_size)
        self.kept.move_to_end(key)
        entry.users += 1
        try:
            file = await asyncio.shield(entry.task)
        except BaseException:
            entry.users -= 1
            if entry.task.done() and not entry.task.cancelled() and entry.task.exception():
                self.kept.pop(key, None)  # a failed upload: the retry uploads again
            raise
        return key, types.Part.from_uri(file_uri=file.uri,
                                        mime_type=file.mime_type or mime)

    def release(self, key: Key) -> None:
        if (entry := self.kept.get(key)) is not None:
            entry.users -= 1

    async def close(self) -> None:
        """Delete every upload (the stage is over)."""
        for key in list(self.kept):
            await self._delete(key)

    async def _upload(self, path: Path, key: Key, mime: str) -> types.File:
        """Make room, upload, then wait until the server has processed the file."""
        await self._make_room(key)
        files = self.client().aio.files
        file = await files.upload(file=str(path), config=types.UploadFileConfig(mime_type=mime))
        deadline = time.monotonic() + self.wait_limit
        while _state(file) == "PROCESSING":
            if time.monotonic() > deadline:  # a file stuck there held its row, and the stage
                raise ModelError(f"the Gemini Files API was still processing {path.name} "
                                 f"after {self.wait_limit:g} s", retryable=False,
                                 kind="upload_timeout")
            await asyncio.sleep(POLL_SECONDS)
            file = await files.get(name=file.name)
        if _state(file) == "FAILED":  # a request naming it gets a 400 that names no cause
            why = file.error.message if file.error is not None and file.error.message else ""
            raise ModelError(f"the Gemini Files API could not process {path.name}"
                             + (f" ({why})" if why else ""), retryable=False,
                             kind="upload_failed")
        return file

    async def _make_room(self, new: Key) -> None:
        """Delete idle uploads, least recently used first, until the one for `new` fits."""
        for key in list(self.kept):
            if sum(e.size for e in self.kept.values()) <= self.budget:
                return
            entry = self.kept.get(key)
            if key != new and entry is not None and not entry.users and entry.task.done():
                await self._delete(key)

    async def _delete(self, key: Key) -> None:
        entry = self.kept.pop(key, None)
        if entry is None or not entry.task.done() or entry.task.cancelled() \
                or entry.task.exception() is not None:
            return
        with contextlib.suppress(Exception):  # gone already, or expired: nothing to free
            await self.client().aio.files.delete(name=entry.task.result().name)


def _state(file: types.File) -> str:
    """PROCESSING, ACTIVE or FAILED (the enum's name, whatever the SDK's version made of it)."""
    return str(getattr(file.state, "value", file.state) or "").rsplit(".", 1)[-1]
