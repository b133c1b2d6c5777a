"""Clips that were never unpacked.

Datasets on the Hub often ship their clips as archives beside the annotations
(LLaVA-Video-178K: `0_30_s_academic_v0_1_videos_1.tar.gz` in each bucket's folder, the
annotations naming the unpacked paths). Downloaded as they are, every clip is missing, and
validate's stop said only to check the media root, whose path was right.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2", ".zip",
                    ".7z", ".rar")
LOOKED_AT = 2000  # entries per folder at most: a folder of a million clips is not listed
FOLDERS = 20  # folders looked in at most


def archives_in(folders: Iterable[Path]) -> list[Path]:
    """Archives in each folder and in the folders right under it, sorted."""
    found: set[Path] = set()
    for root in islice(dict.fromkeys(folders), FOLDERS):
        for folder in [root] + [p for p in _listed(root) if p.is_dir()]:
            found.update(p for p in _listed(folder)
                         if p.name.lower().endswith(ARCHIVE_SUFFIXES) and p.is_file())
    return sorted(found)


PARENTS = 1000  # distinct folders of missing files walked up at most


def nearest_folders(paths: Iterable[str]) -> list[Path]:
    """The nearest existing folder above the missing files (the media root, or the part of
    the clips' folders that exists), each once. Each distinct folder is walked up once, and
    at most `PARENTS` of them: a million missing clips in a few folders cost a few stats."""
    out: dict[Path, None] = {}
    for parent in islice(sorted({os.path.dirname(p) for p in paths}), PARENTS):
        folder = Path(parent)
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        out[folder] = None
        if len(out) >= FOLDERS:
            break
    return list(out)


def unpack_hint(found: list[Path]) -> str:
    """What to do about `found` archives ("" for none)."""
    if not found:
        return ""
    names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more"
                                                   if len(found) > 3 else "")
    return (f"the media root holds archives ({names}): unpack them where they are (tar -xf "
            "FILE -C FOLDER, unzip FILE -d FOLDER)")


def _listed(folder: Path) -> list[Path]:
    try:
        return list(islice(folder.iterdir(), LOOKED_AT))
    except OSError:
        return []
