"""The decontaminate stage: reject rows whose video or question is in a benchmark.

Benchmarks are read with the same catalogs as sources (`NAME[@FORMAT]=ANNOTATIONS[:MEDIA]`,
FORMAT defaulting to NAME: `video-mme=/data/videomme/test.parquet:/data/videomme`), so
every format avcurate ingests can be a benchmark. Three signals, each switchable:
(a) the same source id, (b) the same picture (frame dHashes, see `fingerprints`), (c) the
same or an overlapping question. Frame hashes of benchmark and row videos are cached in
the run's `fingerprints` cache, so a re-run or a second stage hashes nothing twice.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from avcurate.catalogs import (
    CATALOGS,
    Reject,
    annotation_files,
    check_files,
    check_source,
    read_source,
)
from avcurate.core.options import absolute_path, option
from avcurate.core.store import EMBEDDED_MEDIA
from avcurate.core.urls import shown_url, url_refusal
from avcurate.decontam.fingerprints import normalise_question, source_id, video_hashes
from avcurate.decontam.index import BenchmarkIndex, Item, Match
from avcurate.media.archives import archives_in, nearest_folders
from avcurate.media.errors import Lost, MediaError
from avcurate.stages.base import BaseStage, ShardResult, StageError
from avcurate.stages.context import StageContext


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    format: str
    annotations: str
    media_root: str

    @classmethod
    def parse(cls, text: str) -> BenchmarkSpec:
        name, eq, rest = text.partition("=")
        if not eq or not name.strip() or not rest.strip():
            raise StageError(f"stage 'decontaminate': --benchmark takes "
                             f"NAME[@FORMAT]=ANNOTATIONS[:MEDIA_ROOT], not {text!r}")
        name, _, fmt = name.strip().partition("@")
        annotations, _, media = rest.partition(":")
        for what, value in (("annotations", rest.strip()), ("media root", media.strip())):
            if why := url_refusal(f"benchmark {name!r}: {what}", value):  # "https" was taken
                raise StageError(f"stage 'decontaminate': {why}")  # for a file name
        return cls(name, fmt or name, annotations.strip(), media.strip())


def _resolve_benchmark(text: str, base: Path) -> str:
    """NAME[@FORMAT]=ANNOTATIONS[:MEDIA_ROOT] with both paths absolute against `base`; a
    malformed one is returned as written, for the stage to refuse with its own message."""
    head, eq, rest = text.partition("=")
    annotations, _, media = (part.strip() for part in rest.partition(":"))
    if not eq or not annotations or shown_url(rest.strip()) or shown_url(media):
        return text  # a URL too: the stage says so
    return f"{head}={absolute_path(annotations, base)}" + (
        f":{absolute_path(media, base)}" if media else "")


def _hash(task: tuple[str, int]) -> list[int] | None:
    """Frame hashes of one video, None when it cannot be read (a process-pool task)."""
    path, frames = task
    try:
        return video_hashes(path, frames)
    except (MediaError, OSError, RuntimeError, ValueError):
        return None


def hash_videos(ctx: StageContext, paths: list[str], frames: int) -> dict[str, list[int] | None]:
    """Frame hashes of each distinct path, from the run's cache or computed in parallel."""
    keys = {}
    for p in set(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        keys[p] = f"{p}|{st.st_size}|{st.st_mtime_ns}|{frames}"
    cache = ctx.cache("fingerprints")
    known = cache.get_many(list(keys.values()))
    todo = [p for p, k in keys.items() if k not in known]
    computed = dict(zip(todo, ctx.map(_hash, [(p, frames) for p in todo]), strict=True))
    cache.put_many({keys[p]: h for p, h in computed.items() if not isinstance(h, Lost)})
    computed = {p: None if isinstance(h, Lost) else h for p, h in computed.items()}
    return {p: known.get(keys[p], computed.get(p)) for p in keys}


@dataclass
class Decontaminate(BaseStage):
    """Reject rows that share a video (by id or picture) or a question with a benchmark."""

    name = "decontaminate"
    version = "1"
    requires = ("id", "video", "question")
    adds = {}
    global_decision = False  # prepare indexes the benchmarks, not the run's rows

    benchmarks: list[str] = option(default_factory=list, flag="--benchmark", help=(
        "NAME[@FORMAT]=ANNOTATIONS[:MEDIA_ROOT], repeatable; FORMAT is a source catalog "
        "(daily-omni, avqa, worldsense, video-mme, jsonl, parquet, ...), default NAME; "
        "ANNOTATIONS may be a quoted glob ('mvbench/json/*.json'); MEDIA_ROOT defaults to "
        "each file's folder."))
    benchmark_columns: dict[str, dict[str, str]] = option(default_factory=dict, cli=False, help=(
        "Column mappings of jsonl/parquet benchmarks, by NAME (as a source's `columns`)."))
    match_ids: bool = option(True, help="Signal (a): the same source id (YouTube id or file "
                                        "stem, normalised).")
    match_frames: bool = option(True, help="Signal (b): the same picture (frame dHashes).")
    match_questions: bool = option(True, help="Signal (c): the same or an overlapping question.")
    frames: int = option(8, min=2, max=64, help="Evenly spaced frames hashed per video.")
    max_distance: int = option(6, min=0, max=32, help="Frames match within this many "
                                                      "differing bits (of 64).")
    min_frame_share: float = option(0.6, gt=0, max=1, help="Share of frames that must match.")
    ngram: int = option(6, min=2, max=20, help="Word n-grams compared between questions.")
    min_overlap: float = option(0.6, gt=0, max=1, help="Share of the shorter question's "
                                                       "n-grams found in one benchmark question.")

    _specs: list[BenchmarkSpec] = field(default_factory=list, init=False, repr=False,
                                        compare=False)
    _index: BenchmarkIndex | None = field(default=None, init=False, repr=False, compare=False)
    _summary: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.benchmarks:
            raise StageError("stage 'decontaminate': give at least one --benchmark "
                             "NAME[@FORMAT]=ANNOTATIONS[:MEDIA_ROOT]")
        if not (self.match_ids or self.match_frames or self.match_questions):
            raise StageError("stage 'decontaminate': every signal is switched off")
        self._specs = [BenchmarkSpec.parse(b) for b in self.benchmarks]
        for spec in self._specs:
            if spec.format not in CATALOGS:
                raise StageError(f"stage 'decontaminate': benchmark {spec.name!r} has no format; "
                                 f"write NAME@FORMAT with one of {', '.join(CATALOGS)}")
            try:
                check_source(spec.format, self._source_options(spec))
            except ValueError as exc:
                raise StageError(f"stage 'decontaminate': {exc}") from None

    @classmethod
    def resolve_paths(cls, options: dict[str, Any], base: Path) -> dict[str, Any]:
        """A recipe's benchmark files are relative to the recipe too."""
        options = super().resolve_paths(options, base)
        if isinstance(marks := options.get("benchmarks"), list):
            options["benchmarks"] = [_resolve_benchmark(b, base) if isinstance(b, str) else b
                                     for b in marks]
        return options

    def _source_options(self, spec: BenchmarkSpec) -> dict[str, Any]:
        columns = self.benchmark_columns.get(spec.name)
        # a benchmark's answers play no part here: read as text, a CSV of option
        # positions needs no `answers` to be compared
        text = {"answers": "text"} if "answers" in CATALOGS[spec.format].options else {}
        return ({"columns": columns} if columns else {}) | text

    def check(self) -> None:
        """The benchmark files are there and readable, before the run folder is touched (a
        `--redo` with a mistyped path must not remove the stage it would redo)."""
        for spec in self._specs:
            try:
                files = annotation_files(spec.annotations)
                for path in files:
                    where = f"{path}: " if len(files) > 1 else ""
                    try:
                        check_files(path, spec.media_root, spec.format,
                                    self._source_options(spec), need_answers=False)
                        self._check_readable(spec, path)
                    except ValueError as exc:
                        raise ValueError(f"{where}{exc}") from None
            except (ValueError, OSError) as exc:
                raise StageError(f"stage 'decontaminate': benchmark {spec.name!r}: {exc}"
                                 ) from None

    def _check_readable(self, spec: BenchmarkSpec, path: str, most: int = 100) -> None:
        """Raise ValueError when none of a benchmark file's first `most` records can be
        read: the file is in another format than the one named (or, for jsonl, parquet or
        csv, its columns are not mapped), and would match nothing. Clips held in the file
        are written out to a temporary folder here, as the run folder is not touched yet."""
        with tempfile.TemporaryDirectory(prefix="avcurate-check-") as clips:
            unread = []
            for record in itertools.islice(self._records(spec, path, clips), most):
                if not isinstance(record, Reject):
                    return
                unread.append(record)
        if unread:
            raise ValueError(f"none of its first {len(unread):,} records could be read as "
                             f"{spec.format} (the first: {unread[0].detail}); check its format "
                             "(NAME@FORMAT=ANNOTATIONS) and, for jsonl, parquet or csv, its "
                             "columns")

    def _records(self, spec: BenchmarkSpec, path: str, clips: str) -> Iterator[dict | Reject]:
        """One benchmark file's rows and rejects; answers may be withheld (a test split's):
        a record is compared by its clip and question. The media root defaults to the
        file's folder."""
        return read_source(spec.format, path, spec.media_root or str(Path(path).parent),
                           clips, need_answers=False, **self._source_options(spec))

    # -- the index, built once per run (prepare) ---------------------------------------------
    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        self._index = self.build_index(ctx)

    def build_index(self, ctx: StageContext) -> BenchmarkIndex:
        self.check()  # again where the index is built: a worker on another node, say
        index = BenchmarkIndex(ngram=self.ngram)
        for spec in self._specs:
            rows, unread = self._read(spec, ctx)
            hashes = hash_videos(ctx, [r["video"] for r in rows if r.get("video")], self.frames) \
                if self.match_frames else {}
            for r in rows:
                index.add(Item(spec.name, r["id"], source_id(r.get("video")),
                               tuple(hashes.get(r.get("video")) or ()),
                               normalise_question(r.get("question"))))
            videos = {r["video"] for r in rows if r.get("video")}
            self._summary[spec.name] = {
                "items": len(rows), "videos": len(videos),
                "videos_hashed": sum(1 for v in videos if hashes.get(v))} | _unread(unread) \
                | (_unhashed(sorted(videos), hashes) if self.match_frames else {})
        return index

    def _read(self, spec: BenchmarkSpec, ctx: StageContext) -> tuple[list[dict], list[Reject]]:
        """A benchmark's rows and the records its catalog could not read."""
        try:
            # a benchmark holding its clips (a Hub dataset's Video column) has them written
            # out with the run's own (`catalogs/embedded.py`)
            clips = str(ctx.run_dir / EMBEDDED_MEDIA)
            read = [r for path in annotation_files(spec.annotations)
                    for r in self._records(spec, path, clips)]
        except (ValueError, OSError) as exc:
            raise StageError(f"stage 'decontaminate': benchmark {spec.name!r}: {exc}") from None
        return ([r for r in read if not isinstance(r, Reject)],
                [r for r in read if isinstance(r, Reject)])

    # -- rows ---------------------------------------------------------------------------------
    def match(self, row: dict[str, Any], hashes: list[int] | None) -> Match | None:
        index = self._index
        assert index is not None
        found = None
        if self.match_ids:
            found = index.match_id(source_id(row.get("video")))
        if found is None and self.match_frames and hashes:
            found = index.match_frames(hashes, self.max_distance, self.min_frame_share)
        if found is None and self.match_questions:
            found = index.match_question(normalise_question(row.get("question")),
                                         self.min_overlap)
        return found

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        if self._index is None:  # a worker that did not run prepare
            self._index = self.build_index(ctx)
        rows = table.select(["video", "question"]).to_pylist()
        hashes = hash_videos(ctx, [r["video"] for r in rows if r["video"]], self.frames) \
            if self.match_frames else {}
        reasons, details = [], []
        for r in rows:
            m = self.match(r, hashes.get(r["video"]))
            reasons.append(f"contaminated:{m.item.benchmark}" if m else None)
            details.append(f"{m.item.id} ({m.signal}: {m.detail})" if m else None)
        return ShardResult.split(table, self.name, reasons, details)

    def summary(self) -> dict:
        return {"benchmarks": self._summary}


def _unhashed(videos: list[str], hashes: dict[str, list[int] | None]) -> dict[str, Any]:
    """A benchmark's videos the picture signal could not use, for the manifest: those not
    there (clips never downloaded or still in their archives: the archives found near them
    are named) and those that could not be decoded (`reports.benchmark_hints` warns)."""
    missing = [v for v in videos if v not in hashes]
    unreadable = [v for v in videos if v in hashes and not hashes[v]]
    if not missing and not unreadable:
        return {}
    return {"videos_missing": len(missing), "videos_unreadable": len(unreadable),
            "video_unhashed_first": (missing or unreadable)[0],
            "archives": [str(p) for p in archives_in(nearest_folders(missing))][:10]}


def _unread(rejects: list[Reject]) -> dict[str, Any]:
    """A benchmark's records left out of the index, for the manifest: counts by reason and
    the first one's detail (`reports.benchmark_hints` warns of them). Records its
    authors excluded (MUSIC-AVQA's deleted questions) are not counted."""
    unread = [r for r in rejects if r.reason != "excluded_by_source"]
    if not unread:
        return {}
    return {"unread": dict(Counter(r.reason for r in unread)), "unread_first": unread[0].detail}
