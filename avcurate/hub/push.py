"""Push an export folder to the Hugging Face Hub (token from HF_TOKEN, never stored)."""

from __future__ import annotations

import os
from pathlib import Path

from avcurate.models.http_errors import TRANSPORT_ERRORS


class PushError(RuntimeError):
    """A push that could not happen; the message is one line, the local folder is untouched."""


def media_outside(folder: Path) -> int:
    """How many video/audio paths of the export's data files point outside it."""
    import pyarrow.parquet as pq

    count = 0
    for path in folder.glob("data/**/*.parquet"):
        names = [c for c in ("video", "audio") if c in pq.read_schema(path).names]
        for col in pq.read_table(path, columns=names).columns:
            count += sum(1 for v in col.to_pylist()
                         if v and (v.startswith("..") or os.path.isabs(v)))
    return count


def push(folder: Path | str, repo_id: str, *, private: bool = False) -> str:
    """Create the dataset repo if needed and upload the folder; return the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if outside := media_outside(Path(folder)):
        raise PushError(f"{outside} media path(s) point outside {folder} (e.g. "
                        "'../...'); export with --copy-media so the media travel with the data")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise PushError("set HF_TOKEN to push (a write token from your Hub settings); "
                        f"the export in {folder} is complete and unchanged")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                          commit_message="Upload dataset exported by avcurate",
                          ignore_patterns=[".avcurate-*", ".avcurate-*/**"])
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise PushError(f"the Hub refused the push of {repo_id} (HTTP {status}); "
                        f"the export in {folder} is unchanged") from None
    except (OSError, *TRANSPORT_ERRORS) as exc:  # refused, DNS, timeouts
        raise PushError(f"cannot reach the Hub ({type(exc).__name__}); "
                        f"the export in {folder} is unchanged") from None
    return str(url)
