"""Push an export folder to the Hugging Face Hub.

The token is `HF_TOKEN` or whatever `huggingface_hub.get_token()` finds (the file `hf auth
login` saves); it is passed to the client and never written anywhere.

Large exports (more than LARGE_FILES files or LARGE_BYTES bytes) need an upload that
survives interruption. `huggingface_hub` 2 builds that into `upload_folder` (with hf_xet,
its default: streamed uploads committed in batches; re-running the same push skips what is
already on the Hub). Older versions have a separate `upload_large_folder`, used here for
large exports when it exists. Small exports go in one commit either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.hub.options import repo_id_problem
from avcurate.models.http_errors import TRANSPORT_ERRORS

LARGE_FILES = 1000
LARGE_BYTES = 5 * 1024**3
IGNORE = [".avcurate-*", ".avcurate-*/**", ".avcurate.lock*"]  # marker, staging, lock


class PushError(RuntimeError):
    """A push that could not happen; the message is one line, the local folder is untouched."""


@dataclass
class PushResult:
    repo_url: str
    commit_url: str | None
    pr_url: str | None
    large: bool  # uploaded the resumable way
    files: int
    bytes: int


def media_outside(folder: Path) -> int:
    """How many video/audio paths of the export's data files point outside it (each path
    is relative to its data file's folder; a typed column's path is in its struct).
    Resolved once per distinct folder a path names, with its rows counted by pyarrow: a
    resolve per row took 35 s for 1M rows. (A file that is itself a symlink out of the
    export counts as inside: the upload reads what it points to.)"""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from avcurate.core.media_paths import path_folders

    root = folder.resolve()
    count = 0
    for path in folder.glob("data/**/*.parquet"):
        names = [c for c in ("video", "audio") if c in pq.read_schema(path).names]
        for col in pq.read_table(path, columns=names).columns:
            if col.type.num_fields:  # typed media: {bytes, path}
                col = pc.struct_field(col, "path")
            col = col.filter(pc.not_equal(col, ""))  # nulls dropped too
            folders = pc.value_counts(path_folders(col))
            for sub, n in zip(folders.field("values").to_pylist(),
                              folders.field("counts").to_pylist(), strict=True):
                if not (path.parent / sub).resolve().is_relative_to(root):
                    count += n
    return count


def _files(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()
             and not any(part.startswith(".avcurate") for part in p.relative_to(folder).parts)]
    return len(files), sum(p.stat().st_size for p in files)


def token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` saved (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def check_push(revision: str | None, create_pr: bool) -> str:
    """The token to push with, once the target makes sense; PushError otherwise. The CLI
    calls it before exporting, `push` again for callers of the library."""
    if create_pr and revision:
        raise PushError("--create-pr opens a pull request against the default branch; "
                        "drop --revision, or push to the branch without --create-pr")
    secret = token()
    if not secret:
        raise PushError("no Hub token: set HF_TOKEN or run `hf auth login` (a write token "
                        "from your Hub settings)")
    return secret


def push(folder: Path | str, repo_id: str, *, private: bool = False,
         revision: str | None = None, create_pr: bool = False) -> PushResult:
    """Create the dataset repo (and branch) if needed and upload the folder."""
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if why := repo_id_problem(repo_id):
        raise PushError(why)
    if outside := media_outside(folder):
        raise PushError(f"{outside} media path(s) point outside {folder} (resolved from "
                        "their data file); export with --copy-media so the media travel with "
                        "the data")
    secret = check_push(revision, create_pr)
    n_files, n_bytes = _files(folder)
    large = n_files > LARGE_FILES or n_bytes > LARGE_BYTES
    try:
        return _upload(folder, repo_id, secret, private, revision, create_pr, large,
                       (n_files, n_bytes))
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = {401: " (the token was refused)", 403: " (the token cannot write there)",
                404: " (no such repo or branch)"}.get(status, "")
        raise PushError(f"the Hub refused the push of {repo_id} (HTTP {status}){hint}; "
                        f"nothing was pushed, and the export in {folder} is kept: the same "
                        "command pushes it once that is fixed") from None
    except (OSError, *TRANSPORT_ERRORS) as exc:  # refused, DNS, timeouts
        from huggingface_hub import constants

        why = " ".join(str(exc).split())[:200]  # the transport's own words: refused, DNS...
        raise PushError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}"
                        f"{': ' + why if why else ''}); the export in {folder} is kept, "
                        "and the same command pushes it once the Hub answers") from None


def _upload(folder: Path, repo_id: str, secret: str, private: bool, revision: str | None,
            create_pr: bool, large: bool, size: tuple[int, int]) -> PushResult:
    from huggingface_hub import HfApi

    api = HfApi(token=secret)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    common: dict[str, Any] = {"repo_id": repo_id, "repo_type": "dataset",
                              "folder_path": str(folder), "ignore_patterns": IGNORE}
    if large and not create_pr and hasattr(api, "upload_large_folder"):  # huggingface_hub < 2
        api.upload_large_folder(revision=revision, **common)
        return PushResult(str(url), None, None, True, *size)
    info = api.upload_folder(commit_message="Upload dataset exported by avcurate",
                             revision=revision, create_pr=create_pr, **common)
    resumable = large and _streams(api)
    return PushResult(str(url), getattr(info, "commit_url", None),
                      getattr(info, "pr_url", None), resumable, *size)


def _streams(api: Any) -> bool:
    """Whether upload_folder is the streamed, resumable one (huggingface_hub 2 with hf_xet)."""
    import importlib.util

    return not hasattr(api, "upload_large_folder") and importlib.util.find_spec("hf_xet") \
        is not None
