"""A `--model` given as a Hub id (`org/name`) on a machine without network, such as a
cluster's compute node.

transformers asks the Hub about each file first, and huggingface_hub retries a failed
connection five times with back-off before it falls back to its cache or gives up:
about 50 s, with a retry line each time, before the one line that says what was wrong.
One connection attempt tells first (`connect_error`). When the Hub cannot be reached, a
model already in the local cache is loaded from its snapshot folder with no network call,
and one that is not there stops the command with one line, before anything is loaded.
Where a proxy is set the attempt cannot judge the route, and the library's own way is
kept, as it is with `HF_HUB_OFFLINE` set.
"""

from __future__ import annotations

import os
from pathlib import Path

from avcurate.core.options import OptionError
from avcurate.models.reachable import url_connect_error


def loadable(model: str) -> str:
    """What to load for `--model`: the id itself, or the cached snapshot folder when the Hub
    cannot be reached. Raise OptionError when it can be neither downloaded nor found."""
    if Path(model).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE"):
        return model  # a local folder (check_paths checked it), or the library's own rule
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    why = url_connect_error(constants.ENDPOINT)  # None behind a proxy: the library decides
    if why is None:
        return model
    try:
        return snapshot_download(model, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):  # not cached; not a repo id
        raise OptionError(f"--model {model}: the Hugging Face Hub ({constants.ENDPOINT}) "
                          f"cannot be reached ({why}) and the model is not in the local cache "
                          f"({constants.HF_HUB_CACHE}); download it where there is network "
                          f"(`hf download {model}`), or give a local model folder") from None
