"""Source catalogs: annotation formats normalised into the sample table.

Every catalog reads one annotation file as its authors ship it and yields rows or
`Reject`s (see `base.SourceFile` for the id scheme). The same catalogs read the
benchmarks that decontamination compares against.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.catalogs.avqa import read_avqa, read_daily_omni
from avcurate.catalogs.base import ANNOTATION_SUFFIXES, MediaRoot, Reject, SourceFile, file_tag
from avcurate.catalogs.conversations import read_llava_video
from avcurate.catalogs.embedded import EmbeddedMedia
from avcurate.catalogs.music_avqa import read_music_avqa
from avcurate.catalogs.tabular import (
    check_answers,
    check_columns,
    check_csv,
    read_csv,
    read_tabular,
)
from avcurate.catalogs.video_mme import read_video_mme
from avcurate.catalogs.video_vista import read_video_vista
from avcurate.catalogs.worldsense import read_worldsense
from avcurate.core.options import did_you_mean


@dataclass(frozen=True)
class Catalog:
    name: str
    description: str
    reader: Callable[..., Iterator[dict | Reject]]
    options: tuple[str, ...] = ()     # options of a [[sources]] table besides COMMON_OPTIONS
    check_file: Callable[..., None] | None = None  # (path, **options): ValueError if unusable


TABULAR_OPTIONS = ("columns", "extra_columns", "explode", "answers")
COMMON_OPTIONS = ("tag", "strip_prefix", "follow_links")  # of every source, handled here

CATALOGS: dict[str, Catalog] = {
    c.name: c
    for c in [
        Catalog("llava-video", "LLaVA-Video-178K *_qa_processed.json: video + human/gpt "
                "conversations (mc and oe files; one row per question turn)", read_llava_video),
        Catalog("video-vista", "Video-Vista: training conversations, or the benchmark "
                "VideoVista.json (videos under merged/<category>/<group>/)", read_video_vista),
        Catalog("avqa", "AVQA train_qa.json/val_qa.json (also R1-AQA's JSON-lines variant, "
                "whose audio_path becomes the audio track, under audio_root)", read_avqa, ("audio_root",)),
        Catalog("daily-omni", "Daily-Omni qa.json; videos at ROOT/<id>/<id>_video.mp4 "
                "(+ <id>_audio.wav)", read_daily_omni),
        Catalog("music-avqa", "MUSIC-AVQA avqa-{train,val,test}.json: placeholders filled "
                "from templ_values, open-ended answers; videos ROOT/<video_id>.mp4",
                read_music_avqa),
        Catalog("video-mme", "Video-MME videomme/test-*.parquet (or JSON); videos "
                "ROOT[/data]/<videoID>.mp4", read_video_mme),
        Catalog("worldsense", "WorldSense worldsense_qa.json: one row per nested taskN; "
                "videos ROOT/videos/<id>.mp4 (+ audios/<id>.wav)", read_worldsense),
        Catalog("jsonl", "any JSON-lines (or JSON) file plus a column mapping "
                "(columns = {question = \"q\", video = \"{vid}.mp4\"}, explode = \"tasks\")",
                read_tabular, TABULAR_OPTIONS),
        Catalog("parquet", "any Parquet file plus a column mapping (as for jsonl); a Hub "
                "dataset's Video()/Audio() columns too, clips held in the file written out "
                "to RUN/media",
                read_tabular, TABULAR_OPTIONS),
        Catalog("csv", "any CSV file (TSV: .tsv) with a header line, plus a column mapping "
                "(as for jsonl; options = \"a0,a1,a2\" for one option per column)",
                read_csv, TABULAR_OPTIONS, check_csv),
    ]
}


def check_source(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown catalog, an unknown option or a bad mapping before any record
    is read (a typo such as `colums` is never silently ignored)."""
    if name not in CATALOGS:
        raise ValueError(f"unknown source {name!r}{did_you_mean(name, list(CATALOGS))}; "
                         f"available: {', '.join(CATALOGS)}")
    known = (*COMMON_OPTIONS, *CATALOGS[name].options)
    for key in options:
        if key not in known:
            raise ValueError(f"source {name!r} has no option {key!r}"
                             f"{did_you_mean(key, known)} (options: {', '.join(known)})")
    tag = options.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag.strip() or "/" in tag):
        raise ValueError(f"source {name!r}: tag must be a short name without '/', not {tag!r}")
    prefix = options.get("strip_prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix.strip("/\\ ")):
        raise ValueError(f"source {name!r}: strip_prefix must be the folder written before "
                         f"each media path (such as '/mnt/data/videos'), not {prefix!r}")
    if not isinstance(options.get("follow_links", False), bool):
        raise ValueError(f"source {name!r}: follow_links must be true or false, not "
                         f"{options['follow_links']!r}")
    if "columns" in options:
        check_columns(options["columns"])
    check_answers(options.get("answers"))
    explode = options.get("explode")
    if explode is not None and (not isinstance(explode, str) or not explode.strip()):
        raise ValueError(f"source {name!r}: explode must be a field name or a key pattern")


def check_files(annotations: str, media_root: str | None, name: str | None = None,
                options: dict[str, Any] | None = None, need_answers: bool = True) -> None:
    """Raise ValueError when an annotation file is not there (or is a folder) or a media
    root, when given, is not a folder, or the file cannot be read as the catalog `name`
    with `options` (a CSV's header): for ingest's sources and decontaminate's benchmarks
    (`need_answers` False: see `SourceFile`) alike, before anything is written."""
    if Path(annotations).is_dir():
        raise ValueError(f"annotations {annotations} is a folder; name the annotation file in "
                         f"it{_glob_hint(Path(annotations))}")
    if not Path(annotations).is_file():
        raise ValueError(f"annotations file {annotations} does not exist")
    if media_root and not Path(media_root).is_dir():
        raise ValueError(f"media root {media_root} is not a folder")
    if name in CATALOGS and (check := CATALOGS[name].check_file) is not None:
        check(annotations, **(options or {}), need_answers=need_answers)


def _glob_hint(folder: Path, limit: int = 10_000) -> str:
    """For a folder given as the annotations: the glob of the most common kind of
    annotation file in it (a Hub dataset's `data/train-*.parquet` beside its
    `dataset_info.json`), with their count; nothing when no kind is the most common."""
    found: dict[str, int] = {}
    for k, path in enumerate(folder.rglob("*")):
        if k >= limit:  # a media folder given by mistake: not worth walking whole
            break
        if path.suffix.lower() in ANNOTATION_SUFFIXES and not path.name.startswith("."):
            found[path.suffix.lower()] = found.get(path.suffix.lower(), 0) + 1
    counts = sorted(found.values(), reverse=True)
    if not counts or counts[1:2] == counts[:1]:
        return ""
    suffix, n = max(found.items(), key=lambda kv: kv[1])
    return f", or a glob of them: '{folder / '**' / ('*' + suffix)}' ({n} file{'s' * (n > 1)})"


GLOB_RE = re.compile(r"[*?\[]")


def annotation_files(path: str) -> list[str]:
    """The files `path` names: itself when it is a file or has no glob characters (a
    missing file is named when the files are checked), else every file it matches, sorted
    (a Hub dataset's `data/test-*.parquet`, MVBench's `json/*.json`); ValueError when none
    does: a pattern matching nothing would read nothing."""
    if not GLOB_RE.search(path) or os.path.isfile(path):
        return [path]
    files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    if not files:
        raise ValueError(f"no annotation file matches {path!r}")
    return files


def source_tag(annotations: str, options: dict[str, Any]) -> str:
    """The id tag of a source: its `tag` option, else the annotation file's name."""
    return options.get("tag") or file_tag(annotations)


def read_source(name: str, annotations: str, media_root: str, embedded: str | None = None,
                need_answers: bool = True, **options: Any) -> Iterator[dict | Reject]:
    """Rows and rejects of one annotation file in the format `name`; media held in the
    file (`catalogs/embedded.py`) are written under `embedded` (ingest: RUN/media). A
    benchmark is read with `need_answers` False: its answers may be withheld."""
    check_source(name, options)
    media = MediaRoot(media_root, options.get("strip_prefix"), options.get("follow_links", False))
    src = SourceFile(name, annotations, media, source_tag(annotations, options),
                     EmbeddedMedia(Path(embedded)) if embedded else None, need_answers)
    catalog = CATALOGS[name]
    return catalog.reader(src, **{k: v for k, v in options.items() if k not in COMMON_OPTIONS})


__all__ = ["CATALOGS", "GLOB_RE", "Catalog", "MediaRoot", "Reject", "SourceFile",
           "annotation_files", "check_files", "check_source", "read_source", "source_tag"]
