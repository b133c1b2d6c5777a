"""The local runner: ingest the sources, then run each stage shard by shard.

Resume rule: a shard whose kept file exists is finished and never recomputed.
Stages are deterministic per shard, so a run killed at any point and started
again ends with exactly the rows an uninterrupted run produces.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import platform
import shlex
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from avcurate import __version__
from avcurate.catalogs import Reject, check_files, read_source
from avcurate.core.arrow_values import empty
from avcurate.core.counts import reject_reasons
from avcurate.core.kvcache import forced_journal
from avcurate.core.lock import HOLDER, LOCK, run_lock
from avcurate.core.options import absent_options, settings
from avcurate.core.outputs import OutputError, check_output_folder, check_owned_folder
from avcurate.core.schema import REJECT_FIELDS, SAMPLE_SCHEMA
from avcurate.core.store import (
    EMBEDDED_MEDIA,
    FINGERPRINT,
    MANIFEST,
    RunStore,
    parquet_rows,
    read_parquet,
    write_parquet_atomic,
)
from avcurate.models.errors import BackendUnavailable, EndpointError
from avcurate.pipeline.held import HeldShards
from avcurate.pipeline.ingest_pieces import Piece, shards
from avcurate.pipeline.progress import Progress
from avcurate.pipeline.recipe import Recipe, SourceSpec, StageSpec
from avcurate.pipeline.registry import BUILTINS, command_of, create, stage_class
from avcurate.stages.base import (
    Resources,
    Stage,
    StageError,
    fingerprint,
    output_schema,
    reject_schema,
    stage_content,
)
from avcurate.stages.context import StageContext, WorkerPool

VERSIONED = ("pyarrow", "duckdb", "av", "decord", "soundfile", "numpy", "openai", "google-genai",
             "transformers", "datasets", "torch")


class RunError(Exception):
    """The run cannot go on: a changed recipe, a broken invariant, a missing column."""


@dataclass
class StageReport:
    index: int
    name: str
    rows_in: int
    kept: int
    rejected: int
    seconds: float
    resumed_shards: int


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "avcurate": __version__}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def ingest_fingerprint(recipe: Recipe) -> str:
    """Identity of the ingest stage: sources, their files' size and mtime, and shard size."""
    import hashlib
    import json

    files = []
    for s in recipe.sources:
        p = Path(s.annotations)
        stat = p.stat() if p.exists() else None
        files.append([s.to_dict(), stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    payload = json.dumps({"sources": files, "shard_size": recipe.shard_size}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def makers(columns: list[str]) -> list[str]:
    """The built-in stages that add any of `columns`: what to run first is then named in a
    missing-column error, not left to the README."""
    return [name for name, cls in BUILTINS.items()
            if set(columns) & set(getattr(cls, "adds", {}))]


class MissingColumns(RunError):
    """A stage planned where no earlier stage adds the columns it reads; said for a recipe
    here, and by the stage commands as the commands to run first (`for_commands`)."""

    def __init__(self, stage: str, missing: list[str], have: Iterable[str] = ()) -> None:
        self.needs = f"stage {stage!r} needs column(s) {', '.join(missing)}"
        self.makers = makers(missing)
        if not self.makers:  # no stage adds them: a typo ("composite" in a rule), most often
            super().__init__(f"{self.needs}, which no stage adds{_closest(missing, have)}")
            return
        super().__init__(f"{self.needs}, which no earlier stage adds; add the stage that "
                         f"produces them before it ({', '.join(self.makers)})")

    def for_commands(self, run_dir: Path | str) -> str:
        """The same fault said to someone typing stage commands on `run_dir`."""
        if not self.makers:
            return str(self)
        run = shlex.quote(str(run_dir))
        commands = list(dict.fromkeys(f"`avcurate {command_of(m)} {run}`" for m in self.makers))
        return (f"{self.needs}, which no stage of {run_dir} has added yet; run "
                f"{' and '.join(commands)} first")


def _closest(missing: list[str], have: Iterable[str]) -> str:
    """The columns `missing` may have meant, or the ones there are (a plugin's columns are
    not in `makers`, and a typo's neighbour is the likeliest fix)."""
    have = sorted(set(have))
    close = [m for c in missing for m in difflib.get_close_matches(c, have, n=1, cutoff=0.6)]
    if close:
        return f"; did you mean {' or '.join(dict.fromkeys(close))}?"
    return f" (the columns there: {', '.join(have)})" if have else ""


def plan(recipe: Recipe, ingest: str | None = None) -> list[tuple[Stage, str]]:
    """Build every stage and check, before any work, that each one's inputs will exist;
    the fingerprints chain from `ingest` (default: the recipe's sources as they are now)."""
    stages: list[tuple[Stage, str]] = []
    parent = ingest or ingest_fingerprint(recipe)
    types = {f.name: f.type for f in SAMPLE_SCHEMA} | recipe.extra_columns()
    for spec in recipe.stages:
        try:
            stage = create(spec.name, spec.options)
        except StageError as exc:
            raise RunError(str(exc)) from exc
        missing = [c for c in stage.requires if c not in types]
        if missing:
            raise MissingColumns(spec.name, missing, types)
        for column in getattr(stage, "numeric", ()):  # not in v0.1's protocol
            if not _holds_numbers(types[column]):
                raise RunError(f"stage {spec.name!r}: rule column {column!r} holds "
                               f"{types[column]}, not numbers; rules compare number columns "
                               "(scores, duration_s)")
        types |= stage.adds
        parent = fingerprint(stage, parent)
        stages.append((stage, parent))
    return stages


def _holds_numbers(type_: pa.DataType) -> bool:
    """Whether a rule can compare the column with a number (booleans count as 0 and 1)."""
    return (pa.types.is_integer(type_) or pa.types.is_floating(type_)
            or pa.types.is_decimal(type_) or pa.types.is_boolean(type_)
            or pa.types.is_null(type_))


def done_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's completed stages (v0.1 manifests may also hold a "running" one)."""
    return [e for e in manifest.get("stages", []) if e.get("status", "done") == "done"]


def matching_prefix(done: list[dict[str, Any]], planned: list[dict[str, Any]]) -> int:
    """How many completed stages, from ingest on, were made with the planned settings."""
    k = 0
    while k < min(len(done), len(planned)) and done[k]["fingerprint"] == planned[k]["fingerprint"]:
        k += 1
    return k


def _write_shard(rejects: pa.Table, reject_path: Path, kept: pa.Table, kept_path: Path) -> None:
    write_parquet_atomic(rejects, reject_path)
    write_parquet_atomic(kept, kept_path)


@contextmanager
def quick_handoff(seconds: float = 1e-4) -> Iterator[None]:
    """The interpreter's thread switch interval shortened for the block (5 ms by default).

    Ingest's main thread runs Python without pause while the writer thread needs the GIL
    back a dozen times per shard (between the syscalls and Arrow calls that release it),
    each time waiting up to the whole interval: the writer fell seconds behind per 1M
    rows and the main thread waited for it. 0.1 ms measured: the writer keeps up."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, then one collection.

    Ingest parses whole annotation files (a million records are some ten million
    objects) and builds a dict per row; none of them form cycles, yet every full
    collection walks all of them again: 20-30% of ingest's time at 1M rows. Reference
    counting still frees everything as usual; only cycles wait for the end."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
            gc.collect()


def conform(table: pa.Table, schema: pa.Schema, stage: str) -> pa.Table:
    """Give `table` exactly `schema`: missing columns become nulls; extra columns are an error."""
    extra = set(table.column_names) - set(schema.names)
    if extra:
        raise StageError(f"stage {stage!r} returned undeclared column(s): {', '.join(sorted(extra))}")
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


class Runner:
    """Runs a recipe into a run folder, resuming whatever is already finished there."""

    def __init__(self, recipe: Recipe, run_dir: Path | str, *, force: bool = False,
                 console: Console | None = None, show_progress: bool = True,
                 confirm_removal: Callable[[str, list[str]], None] | None = None,
                 reach_all: bool = False, keep_ingest: bool = False) -> None:
        self.recipe = recipe
        self.store = RunStore(run_dir)
        self.force = force
        # with `force`: called with the first stage that differs and the done stages after
        # the recipe's last, which the run removes and does not make again (an ingest
        # --force takes every stage of the run); it raises to keep them
        self.confirm_removal = confirm_removal
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        # ask every stage with work left whether its server answers, not only the next one
        # (a stage command: the servers it names are meant to be up now)
        self.reach_all = reach_all
        # a stage command: the run's ingest stands whatever became of its annotation files,
        # unless `force` (which ingests them again)
        self.keep_ingest = keep_ingest
        self._pool: WorkerPool | None = None  # the run's decode workers, while it runs
        self._held: HeldShards | None = None  # kept shards for the next stage, while it runs
        self._advised: set[str] = set()  # notes of `advice` already printed

    # -- manifest -----------------------------------------------------------------
    # A stage is recorded in the manifest only once it is complete. A stage folder on disk
    # without a manifest entry is work in progress: its `.fingerprint` file says which
    # stage settings wrote its shards, so a resume with the same settings keeps them and
    # anything else starts that folder afresh (shards of two settings never mix).

    def _open_manifest(self, planned: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.store.exists():
            return {"format": 1, "created_at": now(), "stages": []}
        manifest = self.store.load_manifest()
        done = done_entries(manifest)
        manifest["stages"] = done  # v0.1 manifests may hold a "running" entry
        k = self.kept_prefix(manifest, planned)
        if k < min(len(done), len(planned)):
            dropped = [e["dir"] for e in done[max(k, len(planned)):]]
            if dropped and self.confirm_removal is not None:
                self.confirm_removal(done[k]["dir"], dropped)
            manifest["stages"] = remove_stages(self.store, done, k)
        return manifest

    def kept_prefix(self, manifest: dict[str, Any], planned: list[dict[str, Any]]) -> int:
        """How many of the run's done stages this recipe keeps; without `force`, a done stage
        made with other settings stops the run (RunError) instead of being recomputed."""
        done = done_entries(manifest)
        k = matching_prefix(done, planned)
        if k < min(len(done), len(planned)) and not self.force:
            raise RunError(
                f"{self.store.root} already holds a run whose stage {done[k]['dir']} "
                f"{self._difference(manifest, done[k], planned[k])}. Use --force to recompute from "
                f"that stage on (model answers cached in the run are reused), or choose another "
                f"--out."
            )
        return k

    def _difference(self, manifest: dict[str, Any], entry: dict[str, Any],
                    planned: dict[str, Any]) -> str:
        """Why a done stage no longer matches: for ingest with the same sources and shard
        size, the annotation files changed (their size or modification time, which is
        what ingest's fingerprint reads: a copy without `cp -p` changes it too); for a
        stage with the same options, a prompt or taxonomy file's text changed."""
        if entry.get("spec") == planned.get("spec") and (
                files := changed_content(entry, planned["content"])):
            return (f"read a file whose text changed since ({', '.join(files)} of "
                    f"{entry['name']})")
        if entry["name"] == "ingest" and "spec" in entry:
            if self._same_sources(manifest, entry):
                return ("ingested annotation files that changed since (their size or "
                        "modification time)")
            if (was := entry["spec"].get("sources", [])) != (now := self._source_specs()):
                return source_changes(was, now)
        if diffs := _option_changes(entry, planned):
            return f"was made with other options ({'; '.join(diffs)})"
        return "was made with a different recipe (sources, options or order)"

    def _save(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = now()
        self.store.save_manifest(manifest)

    # -- running --------------------------------------------------------------------

    def preflight(self, redo_from: int | None = None
                  ) -> tuple[list[tuple[Stage, str]], list[dict[str, Any]]]:
        """The recipe's stages and fingerprints, once every stage with work left (from
        stage `redo_from` on, when given) has passed its environment check."""
        ingest = self._ingest_fingerprint()
        stages = plan(self.recipe, ingest)
        planned = [{"name": "ingest", "fingerprint": ingest}]
        planned += [{"name": s.name, "fingerprint": fp, "spec": spec.options,
                     "content": stage_content(s)}
                    for (s, fp), spec in zip(stages, self.recipe.stages, strict=True)]
        done = self._check_environment(stages, planned, redo_from)
        to_run = [s for s, _ in stages[max(0, done - 1):]]  # done counts ingest
        for note in (n for stage in to_run for n in getattr(stage, "advice", lambda: [])()):
            if note not in self._advised:  # once, though a redo plans twice
                self._advised.add(note)
                self.console.print(f"note: {note}", markup=False, highlight=False,
                                   soft_wrap=True, style="yellow")
        if not self.reach_all:  # last: said only of a run that passed every check
            self._warn_unreachable([s for s, _ in stages[max(0, done):]])
        return stages, planned

    def _ingest_fingerprint(self) -> str:
        """The recipe's ingest identity (its sources and their files' size and time), or the
        run's own where the run's ingest stands: for a stage command (`keep_ingest`), and
        for a recipe whose annotation files are gone (the same sources, nothing to ingest
        again). Stages added to a run read the rows it holds, and its annotation files may
        since have been deleted, moved, copied without their times or edited: each of those
        stopped every command on the run. Files changed or gone are said in a note."""
        now = ingest_fingerprint(self.recipe)
        if not self.store.exists():
            return now
        manifest = self.store.load_manifest()
        done = done_entries(manifest)
        if not done or done[0]["name"] != "ingest" or done[0]["fingerprint"] == now:
            return now
        files = [s.annotations for s in self.recipe.sources]
        gone = [f for f in files if not Path(f).exists()]
        stands = self.keep_ingest or (gone and self._same_sources(manifest, done[0]))
        if self.force or not stands:
            return now
        note = (f"the annotation file(s) this run ingested {'are gone' if gone else 'changed since'}"
                f" ({', '.join(gone or files)}); its stages go on from the rows it holds"
                + ("" if gone else " (--force ingests the files again and makes every stage "
                                   "anew)"))
        if note not in self._advised:
            self._advised.add(note)
            self.console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True,
                               style="yellow")
        return done[0]["fingerprint"]

    def _same_sources(self, manifest: dict[str, Any], ingest: dict[str, Any]) -> bool:
        """Whether the run's ingest read the recipe's sources with its shard size (then only
        the files' size or time can tell them apart)."""
        return ingest.get("spec", {}).get("sources") == self._source_specs() and \
            manifest.get("recipe", {}).get("run", {}).get("shard_size") == self.recipe.shard_size

    def _source_specs(self) -> list[dict[str, Any]]:
        """The recipe's sources as ingest records them in its manifest entry."""
        return [s.to_dict() for s in self.recipe.sources]

    def run(self) -> list[StageReport]:
        stages, planned = self.preflight()
        with run_lock(self.store.root):
            manifest = self._open_manifest(planned)
            manifest |= {"avcurate_version": __version__, "recipe": self.recipe.to_dict(),
                         "versions": package_versions()}
            self._save(manifest)
            reports = []
            # decode workers for every stage
            self._pool = WorkerPool(self.recipe.workers, self.recipe.media_timeout)
            self._held = HeldShards()
            try:
                with Progress(self.console, enabled=self.show_progress) as progress:
                    try:
                        reports.append(self._ingest(manifest, planned[0]["fingerprint"],
                                                    progress))
                    except RunError:
                        self._drop_refused_ingest(manifest)
                        raise
                    reports += self._run_stages(manifest, stages, progress)
            finally:
                self._pool.close()
                self._pool = None
                self._held = None
        return reports

    def _drop_refused_ingest(self, manifest: dict[str, Any]) -> None:
        """An ingest refused before its first shard (a file not in the format named, a
        column mapping that names no field) leaves no run behind: its empty folder and a
        manifest that records nothing go, so the folder holds only its lock files, which
        the next `ingest`/`run` there accepts. Left, every command called it a run whose
        ingest was `incomplete`. Shards already written are kept (ingest resumes)."""
        if not manifest["stages"] and drop_if_unbegun(self.store.stage_dir(0, "ingest")):
            self.store.manifest_path.unlink(missing_ok=True)  # written by this run; no stage

    def _run_stages(self, manifest, stages: list[tuple[Stage, str]], progress: Progress
                    ) -> list[StageReport]:
        """Every stage after ingest, one after another (the Ray runner fuses chains)."""
        return [self._stage(manifest, k, stage, self.recipe.stages[k - 1], fp, progress)
                for k, (stage, fp) in enumerate(stages, start=1)]

    def _check_environment(self, stages: list[tuple[Stage, str]],
                           planned: list[dict[str, Any]], done: int | None = None) -> int:
        """Before anything is written: every stage with work left can run here (its model
        backend's library and key, its input files). Stages a previous run finished are
        not checked, so a finished run resumes without its model servers. Returns how
        many of `planned` (ingest first) are done and stay so."""
        forced_journal()  # a bad AVCURATE_SQLITE_JOURNAL stops the run before it starts
        try:
            check_output_folder(self.store.root, "--out")
        except OutputError as exc:
            raise RunError(str(exc)) from None
        self._check_not_foreign()
        if done is None:  # a run this recipe does not match stops here, before the checks
            # of stages it would not run and the warnings about their servers
            done = self.kept_prefix(self.store.load_manifest(), planned) \
                if self.store.exists() else 0
        if done == 0:  # ingest will run: its files are there
            for spec in self.recipe.sources:
                check_paths(spec)
        try:
            for stage, _ in stages[max(0, done - 1):]:
                if check := getattr(stage, "check", None):  # not in v0.1's protocol
                    check()
            # the stage that starts now, when it calls a server: reachable (before --redo or
            # --force removes anything). In a recipe, later ones only earn a warning (preflight):
            # their servers may still be loading while the stages before them run. A stage
            # command's stages (teach's two teachers) are all asked: it names servers that
            # are up.
            if 0 < done <= len(stages):
                for stage, _ in stages[done - 1:] if self.reach_all else [stages[done - 1]]:
                    if reach := getattr(stage, "reach", None):
                        reach()
        except StageError as exc:
            raise RunError(str(exc)) from None
        return done

    def _warn_unreachable(self, later: list[Stage]) -> None:
        """The servers of the model stages after the one starting now, asked once, all at
        once (a refused port answers at once, a silent host within the connect timeout):
        one that cannot be reached is a warning, not a stop, since a server may still be
        loading while the stages before its own run, and its stage stops the run if it
        still cannot be reached then. A wrong port or host is seen before hours of
        validate, not after them."""
        asked = [reach for stage in later if (reach := getattr(stage, "reach", None))]
        if not asked:
            return

        def problem(reach: Callable[[], None]) -> str | None:
            try:
                reach()
            except StageError as exc:
                return str(exc)
            return None

        with ThreadPoolExecutor(len(asked)) as pool:
            for said in filter(None, pool.map(problem, asked)):
                self.console.print(
                    f"warning: {self.recipe.explain(said)} The run starts anyway (a server may "
                    "still be loading) and stops at that stage if it is still unreachable then.",
                    markup=False, highlight=False, soft_wrap=True, style="yellow")

    def _check_not_foreign(self) -> None:
        """A new run goes into a new or empty folder: stage folders, a cache and a manifest
        among a user's own files would mix the two, as `export` and `train` refuse to. Only
        the lock files of a run stopped before its manifest was written may be there."""
        if self.store.exists():
            return
        try:
            check_owned_folder(self.store.root, "--out", ours=lambda name: name in (LOCK, HOLDER),
                               what=f"an avcurate run (no {MANIFEST})",
                               hint="choose a new or empty folder")
        except OutputError as exc:
            raise RunError(str(exc)) from None

    def _begin(self, out_dir: Path, fp: str) -> None:
        """Make `out_dir` hold only shards of this fingerprint; clear half-written files."""
        self._drop_unfinished_others(out_dir)
        marker = out_dir / FINGERPRINT
        if out_dir.is_dir() and not marker.is_file() and any(out_dir.iterdir()):
            raise RunError(f"{out_dir} is in the way: a folder avcurate did not make (no "
                           f"{FINGERPRINT} in it); move it out of the run folder")
        if out_dir.is_dir() and marker.is_file() and marker.read_text() != fp:
            shutil.rmtree(out_dir)  # made by avcurate (marked) for other settings
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(fp)
        _remove_stale_temp_files(out_dir)

    def _drop_unfinished_others(self, out_dir: Path) -> None:
        """Remove the unfinished folder of another stage at this stage's index (`score`
        killed, then `classify` asked for; a recipe whose unfinished stage was changed), as
        an unfinished folder of other settings is: the run no longer makes it there, its
        model answers stay in the cache. Left beside the new stage, it showed as a second
        stage of that number, and a reset of it by name removed the new stage too. Only
        the stage about to start has this index: done stages all come before it."""
        index = self.store.stage_number(out_dir)
        for other in self.store.stage_dirs(index):
            if self.store.stage_number(other) == index and other != out_dir:
                shutil.rmtree(other)  # made by avcurate (stage_dirs lists no other folder)
                self.console.print(f"removed {other.name}: an unfinished stage this run no "
                                   f"longer makes at {index:02d} (its model answers stay in "
                                   "the cache)", markup=False)

    def _finish(self, manifest, entry, out_dir: Path, rows_in: int, seconds: float,
                resumed: int, extra: dict[str, Any] | None = None) -> StageReport:
        shards, rejects = self.store.shards(out_dir), self.store.rejects(out_dir)
        kept, rejected = parquet_rows(shards), parquet_rows(rejects)
        if kept + rejected != rows_in:
            raise RunError(f"stage {entry['dir']}: {rows_in} rows in but {kept} kept + "
                           f"{rejected} rejected; a stage lost or invented rows")
        entry |= {"status": "done", "finished_at": now(), "rows_in": rows_in, "kept": kept,
                  "rejected": rejected, "shards": len(shards),
                  # no rejected row, no reasons: not a read of every (empty) reject file
                  "rejects_by_reason": reject_reasons(rejects) if rejected else {},
                  "seconds": round(seconds, 3), **(extra or {})}
        manifest["stages"].append(entry)
        self._save(manifest)
        return StageReport(entry["index"], entry["name"], rows_in, kept, rejected,
                           seconds, resumed)

    def _new_entry(self, index: int, name: str, fp: str, spec: dict[str, Any],
                   options: dict[str, Any], content: dict[str, str] | None = None
                   ) -> dict[str, Any]:
        entry = {"index": index, "name": name, "dir": self.store.stage_dir(index, name).name,
                 "fingerprint": fp, "spec": spec, "options": options, "started_at": now()}
        if content is not None:  # the hashes of its prompt or taxonomy file, if any
            entry["content"] = content
        return entry

    def _ingest(self, manifest, fp: str, progress: Progress) -> StageReport:
        out_dir = self.store.stage_dir(0, "ingest")
        if manifest["stages"]:
            entry = manifest["stages"][0]
            progress.skip("ingest", entry["kept"] + entry["rejected"])
            return StageReport(0, "ingest", entry["rows_in"], entry["kept"], entry["rejected"],
                               0.0, entry["shards"])
        sources = {"sources": self._source_specs()}
        entry = self._new_entry(0, "ingest", fp, sources, sources)
        self._begin(out_dir, fp)
        for tmp in (self.store.root / EMBEDDED_MEDIA).glob("*/.*.tmp"):  # a killed write
            tmp.unlink(missing_ok=True)
        start = time.perf_counter()
        schema = pa.schema(list(SAMPLE_SCHEMA) + [pa.field(n, t) for n, t in
                                                  self.recipe.extra_columns().items()])
        reject_schema_ = pa.schema(list(schema) + REJECT_FIELDS)
        resumed = rows = 0  # rows: every item read, rows and rejects (resumed shards too)
        task = progress.stage("ingest", total=None)
        # one writer thread compresses and syncs shard i while shard i+1 is built (Parquet
        # writes release the GIL); a shard's rejects land before its kept file, whose
        # presence marks the shard done
        with collector_paused(), quick_handoff(), ThreadPoolExecutor(1) as writer:
            pending: deque[Future] = deque()
            readers = ((f"source {s.name!r} ({s.annotations})",
                        _read(s, self.store.root / EMBEDDED_MEDIA))
                       for s in self.recipe.sources)
            for i, shard in enumerate(_checked(shards(readers, self.recipe.shard_size, schema,
                                                      reject_schema_, self.recipe.workers))):
                kept_path = self.store.shard_path(out_dir, i)
                if kept_path.exists():
                    resumed += 1
                else:
                    pending.append(writer.submit(
                        _write_shard, shard.rejects, self.store.reject_path(out_dir, i),
                        shard.rows, kept_path))
                    while len(pending) > 2:
                        pending.popleft().result()
                rows += len(shard)
                progress.advance(task, len(shard))
            for done in pending:
                done.result()
        progress.done(task)
        return self._finish(manifest, entry, out_dir, rows, time.perf_counter() - start, resumed)

    def _stage(self, manifest, index: int, stage: Stage, spec: StageSpec, fp: str,
               progress: Progress) -> StageReport:
        in_dir = self.store.root / manifest["stages"][index - 1]["dir"]
        out_dir = self.store.stage_dir(index, stage.name)
        inputs = self.store.shards(in_dir)
        if index < len(manifest["stages"]):  # done: the counts it recorded, no footer read
            entry = manifest["stages"][index]
            progress.skip(stage.name, entry["rows_in"])
            return StageReport(index, stage.name, entry["rows_in"], entry["kept"],
                               entry["rejected"], 0.0, len(inputs))
        rows_in = parquet_rows(inputs)
        entry = self._new_entry(index, stage.name, fp, spec.options, stage.options(),
                                stage_content(stage))
        in_schema = pq.read_schema(inputs[0])
        kept_schema = output_schema(stage, in_schema)
        rej_schema = reject_schema(kept_schema)
        ctx = StageContext(run_dir=self.store.root, stage_dir=out_dir,
                           workers=self.recipe.workers, pool=self._pool,
                           held_table=self._held.peek if self._held is not None else None)
        self._begin(out_dir, fp)
        start = time.perf_counter()
        resumed = 0
        task = progress.stage(stage.name, total=rows_in)
        try:
            prepare_or_drop(stage, ctx, inputs, [out_dir])
            pending = []
            for i, path in enumerate(inputs):
                if self.store.shard_path(out_dir, i).exists():
                    resumed += 1
                    progress.advance(task, pq.ParquetFile(path).metadata.num_rows)
                else:
                    pending.append(i)
            usage = self._run_shards(stage, ctx, inputs, pending, kept_schema, rej_schema,
                                     lambda rows: progress.advance(task, rows))
        except (EndpointError, BackendUnavailable) as exc:
            raise stopped(out_dir, exc) from None
        finally:
            ctx.close()
        progress.done(task)
        extra = stage.summary()
        if usage or stage.resources == Resources.MODEL:
            extra["usage"] = usage
        return self._finish(manifest, entry, out_dir, rows_in, time.perf_counter() - start,
                            resumed, extra)

    def _run_shards(self, stage: Stage, ctx: StageContext, inputs: list[Path], pending: list[int],
                    kept_schema: pa.Schema, rej_schema: pa.Schema, advance) -> dict[str, int]:
        """Process the unfinished shards in this process (the Ray runner distributes them);
        return the summed model-call usage."""
        usage: dict[str, int] = {}
        if not pending:
            return usage
        stage.setup(ctx)
        if self._held is not None:
            self._held.keep_only([inputs[i] for i in pending])
        jobs = [(process_shard, stage, ctx, inputs[i], i, kept_schema, rej_schema, self._held)
                for i in pending]
        try:
            for rows, used in in_threads(jobs, getattr(stage, "parallel_shards", 1),
                                         getattr(stage, "stop", None)):
                usage = add_usage(usage, used)
                advance(rows)
        finally:
            stage.teardown()
        return usage


def prepare_or_drop(stage: Stage, ctx: StageContext, inputs: list[Path],
                    out_dirs: list[Path]) -> None:
    """`stage.prepare`; when it refuses (a StageError: no media file exists, a benchmark
    that cannot be read), the folders `out_dirs` that hold no shard yet go too. They
    were made a moment before and hold only their marker; left, `status` showed a
    stage begun that never touched a row."""
    try:
        stage.prepare(ctx, inputs)
    except StageError:
        for out_dir in out_dirs:
            drop_if_unbegun(out_dir)
        raise


def drop_if_unbegun(out_dir: Path) -> bool:
    """Remove the stage folder `out_dir` when it holds nothing but the marker `_begin`
    wrote (a stage refused before its first shard); whether it did."""
    if not out_dir.is_dir() or any(p.name != FINGERPRINT for p in out_dir.iterdir()):
        return False
    shutil.rmtree(out_dir)  # made by avcurate (_begin), empty but its marker
    return True


def stopped(out_dir: Path, exc: Exception) -> RunError:
    """The one-line error for a stage whose model endpoint or backend gave out."""
    return RunError(f"{out_dir.name} stopped ({exc}). No row was rejected for it and the "
                    "stage is not done; fix the cause and run the same command again "
                    "(finished shards are kept).")


def in_threads(jobs: list[tuple], width: int, stop=None) -> Iterator[Any]:
    """Each job's result (`fn(*args)` for `(fn, *args)`), with up to `width` jobs at once in
    threads, in the order they finish; one after another when width is 1.

    The first job that fails ends it all: jobs not started are dropped, `stop(exc)` tells
    the running ones to end (they fail fast), and its error is raised after they have.
    """
    if width <= 1 or len(jobs) <= 1:
        for fn, *args in jobs:
            yield fn(*args)
        return
    with ThreadPoolExecutor(width, thread_name_prefix="shard") as pool:
        futures = [pool.submit(*job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException as exc:
            for future in futures:
                future.cancel()
            if stop is not None:
                stop(exc)
            raise


def add_usage(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def process_shard(stage: Stage, ctx: StageContext, path: Path, index: int,
                  kept_schema: pa.Schema, rej_schema: pa.Schema,
                  held: HeldShards | None = None) -> tuple[int, dict[str, int]]:
    """Run `stage` on one input shard and write its kept and rejected outputs.

    Returns the shard's input rows and model-call usage. Rejects are written first and
    the kept file last: the kept file's existence is what marks the shard finished, for
    the local runner and the Ray runner alike. With `held`, the input comes from memory
    when the stage before wrote it in this process, and the kept rows are held for the
    next stage.
    """
    table = held.read(path) if held is not None else read_parquet(path)
    kept, usage = process_table(stage, ctx, table, index, kept_schema, rej_schema)
    if held is not None:
        held.put(RunStore.shard_path(ctx.stage_dir, index), kept)
    return table.num_rows, usage


def process_table(stage: Stage, ctx: StageContext, table: pa.Table, index: int,
                  kept_schema: pa.Schema, rej_schema: pa.Schema
                  ) -> tuple[pa.Table, dict[str, int]]:
    """`process_shard` for a shard already in memory (a fused chain hands each stage the
    kept rows of the one before); returns the kept rows as written and the usage."""
    usage: dict[str, int] = {}
    if table.num_rows == 0:
        kept, rejected = empty(kept_schema), empty(rej_schema)
    else:
        result = stage.process(table, ctx, index)
        if result.kept.num_rows + result.rejected.num_rows != table.num_rows:
            raise RunError(
                f"stage {stage.name!r} returned {result.kept.num_rows} kept + "
                f"{result.rejected.num_rows} rejected rows for {table.num_rows} input rows"
            )
        kept = conform(result.kept, kept_schema, stage.name)
        rejected = conform(result.rejected, rej_schema, stage.name)
        usage = result.usage
    write_parquet_atomic(rejected, RunStore.reject_path(ctx.stage_dir, index))
    write_parquet_atomic(kept, RunStore.shard_path(ctx.stage_dir, index))
    return kept, usage


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Half-written shards of a killed run (never visible as part-*.parquet) are cleared."""
    for tmp in chain(out_dir.glob(".*.tmp"), out_dir.glob("rejects/.*.tmp")):
        tmp.unlink(missing_ok=True)


def check_paths(spec: SourceSpec) -> None:
    """A source's annotation file and media root exist (checked before the run folder is
    made, and again when the source is read)."""
    try:
        check_files(spec.annotations, spec.media_root, spec.name, spec.options)
    except ValueError as exc:
        raise RunError(f"source {spec.name!r}: {exc}") from None


def _read(spec: SourceSpec, embedded: Path) -> Iterator[dict | Reject]:
    """A source's rows and rejects (a catalog's `RecordRows`, which ingest may split);
    media held in its file are written under `embedded`."""
    check_paths(spec)
    try:
        return read_source(spec.name, spec.annotations, spec.media_root, str(embedded),
                           **spec.options)
    except (ValueError, TypeError) as exc:
        raise RunError(f"source {spec.name!r} ({spec.annotations}): {exc}") from exc


def _checked(pieces: Iterator[Piece]) -> Iterator[Piece]:
    """A catalog's error while records are read (here or in a worker), as the run's
    one-line error naming the source."""
    try:
        yield from pieces
    except (ValueError, TypeError) as exc:
        raise RunError(str(exc)) from exc


def remove_stages(store: RunStore, done: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Delete the folders of recorded stages k.. and of unrecorded stages after them
    (all made by avcurate: `NN-name` folders of this run); return the stages kept."""
    for path in store.stage_dirs(k):
        shutil.rmtree(path)
    return done[:k]


def done_specs(manifest: dict[str, Any]) -> list[StageSpec]:
    """The specs of the run's completed stages (after ingest), as the user gave them."""
    recipe_stages = manifest.get("recipe", {}).get("stages", [])
    out = []
    for k, entry in enumerate(manifest["stages"][1:]):
        if "spec" in entry:
            spec = StageSpec(entry["name"], dict(entry["spec"]))
        else:  # v0.1 manifests: the recipe's k-th stage is the one that completed
            raw = dict(recipe_stages[k])
            spec = StageSpec(raw.pop("name"), raw)
        out.append(_as_it_ran(spec, entry.get("options", {})))
    return out


def _as_it_ran(spec: StageSpec, recorded: dict[str, Any]) -> StageSpec:
    """`spec` with the `absent` value of each option added since the stage ran (not in its
    recorded options): compared with today's defaults, the change is named."""
    try:
        cls = stage_class(spec.name)
    except StageError:  # a plugin gone since: its stage is compared as recorded
        return spec
    if not dataclasses.is_dataclass(cls):
        return spec
    added = absent_options(cls, recorded)
    return StageSpec(spec.name, {**added, **spec.options}) if added else spec


class AlreadyDone(Exception):
    """The stages asked for are already done with the same settings: nothing to do."""


def _find(done: list[StageSpec], specs: list[StageSpec]) -> int | None:
    """Where the last block of done stages with the same names as `specs` starts."""
    names = [s.name for s in specs]
    for at in range(len(done) - len(specs), -1, -1):
        if [s.name for s in done[at:at + len(specs)]] == names:
            return at
    return None


def _differences(old: StageSpec, new: StageSpec) -> list[str]:
    a, b = settings(create(old.name, old.options)), settings(create(new.name, new.options))
    return [f"{old.name}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def _option_changes(entry: dict[str, Any], planned: dict[str, Any]) -> list[str]:
    """How a done stage's options differ from the planned one's, or [] when they cannot be
    compared (another stage there, a v0.1 entry, a stage that cannot be built now)."""
    if entry["name"] != planned["name"] or "spec" not in entry or "spec" not in planned:
        return []
    try:
        return _differences(
            _as_it_ran(StageSpec(entry["name"], entry["spec"]), entry.get("options", {})),
            StageSpec(planned["name"], planned["spec"]))
    except StageError:
        return []


def source_changes(was: list[dict[str, Any]], now: list[dict[str, Any]]) -> str:
    """Why a run's ingest does not match the recipe's sources, in words: another set of
    sources, the same ones moved to another folder (a project folder moved or copied:
    its rows still name the clips at the old place), or the settings that changed."""
    names = [s.get("name") for s in was], [s.get("name") for s in now]
    if names[0] != names[1]:
        return f"ingested other sources ({', '.join(map(str, names[0]))})"
    changes = [(f"{a['name']}.{k}", a.get(k), b.get(k)) for a, b in zip(was, now, strict=True)
               for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    moves = {_moved(old, new) for _, old, new in changes}
    if len(moves) == 1 and None not in moves:
        [(old, new)] = moves
        return (f"ingested its sources under {old}, and the recipe names the same files under "
                f"{new} (a moved or copied folder? the run's rows name the clips under {old})")
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes[:3])
    more = f"; and {len(changes) - 3} more" if len(changes) > 3 else ""
    return f"was made with other sources ({listed}{more})"


def _moved(old: Any, new: Any) -> tuple[str, str] | None:
    """(old folder, new folder) when two paths differ only in the folder their common end
    lies under (/a/x/ann.json and /b/ann.json: /a/x, /b); None for anything else."""
    if not (isinstance(old, str) and isinstance(new, str)):
        return None
    a, b = Path(old).parts, Path(new).parts
    k = 0
    while k < min(len(a), len(b)) - 1 and a[-1 - k] == b[-1 - k]:
        k += 1
    return (str(Path(*a[:len(a) - k])), str(Path(*b[:len(b) - k]))) if k else None


def _plans(recipe: Recipe, stages: list[StageSpec]) -> bool:
    """Whether `recipe` with `stages` instead of its own could run (see `plan`)."""
    try:
        plan(dataclasses.replace(recipe, stages=stages))
    except RunError:
        return False
    return True


def changed_content(entry: dict[str, Any], now: dict[str, str]) -> list[str]:
    """The files (prompt, taxonomy) whose text differs from what a done stage's entry
    recorded; an entry from before the record says nothing."""
    was = entry.get("content")
    if was is None:
        return []
    return sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))


def _changed_files(entries: list[dict[str, Any]], specs: list[StageSpec]) -> list[str]:
    """`changed_content` of each done stage against the command's, as differences."""
    return [f"{spec.name}.{k}: the file's text changed since the stage ran"
            for entry, spec in zip(entries, specs, strict=False)
            for k in changed_content(entry, stage_content(create(spec.name, spec.options)))]


def redo_plan(run_dir: Path | str, specs: list[StageSpec]) -> tuple[list[str], list[str]]:
    """The stage folders a `--redo` of `specs` removes: theirs, and those of the later
    stages, made from them; both empty when the run has not done `specs`."""
    store = RunStore(run_dir)
    at = _find(done_specs(store.load_manifest()), specs)
    if at is None:
        return [], []
    dirs = [p.name for p in store.stage_dirs(at + 1)]
    own = [d for d in dirs if store.stage_number(d) <= at + len(specs)]
    return own, [d for d in dirs if d not in own]


def extend_run(run_dir: Path | str, spec: StageSpec | list[StageSpec], *, redo: bool = False,
               append: bool = False, force: bool = False, workers: int | None = None,
               confirm_redo: Callable[[list[str]], None] | None = None,
               **runner_kw: Any) -> list[StageReport]:
    """Run stages on an existing run (what `avcurate validate RUN_DIR` etc. do).

    Stages the run already completed with the same result-changing options are not run
    again (AlreadyDone); with other options the command refuses and says what differs,
    unless `redo`, which removes those stages and the ones after them first, once the
    stages passed their checks and `confirm_redo` (which may ask the user) returned. Otherwise
    the stages are appended after the run's completed stages (resuming a killed one).
    With `append`, only done stages at the end of the run count as these: one done earlier
    (the run's first threshold) gets another after the last stage, and running the same
    command again finds that one done. The run's ingest stands as it is (a note says when
    its annotation files changed or are gone); `force` ingests them again. `workers` (the
    run's decode workers from here on) is recorded by the run, under its lock: written
    before it, a command refused for a run in progress overwrote that run's manifest.
    """
    specs = spec if isinstance(spec, list) else [spec]
    store = RunStore(run_dir)
    with run_lock(store.root):
        manifest = store.load_manifest()
        recipe = Recipe.from_dict(manifest["recipe"], stored=True)
        if workers is not None:
            recipe.workers = workers
        done = done_specs(manifest)
        at = _find(done, specs)
        last = at is not None and at + len(specs) == len(done)
        if append and not last:
            at = None  # done earlier in the run: these go after its last stage
        if at is not None:
            dirs = [e["dir"] for e in manifest["stages"][at + 1:at + 1 + len(specs)]]
            diffs = [d for old, new in zip(done[at:], specs, strict=False)
                     for d in _differences(old, new)]
            diffs = diffs or _changed_files(manifest["stages"][at + 1:], specs)
            if not redo and not diffs:
                raise AlreadyDone(f"{', '.join(dirs)} already done with these settings; nothing "
                                  "to do (--redo runs it again" + ("" if last else "; --append "
                                  "adds another after the run's last stage") + ")")
            recipe.stages = done[:at] + specs
            if not redo:
                again = "" if last else (
                    "; to add another after the run's last stage: the same command with "
                    "--append")
                try:
                    plan(recipe)  # settings that cannot run there are named first
                except RunError as exc:
                    if last or not _plans(recipe, done + specs):
                        raise
                    raise RunError(f"{exc} (in place of {dirs[0]}){again}") from None
                were, them = ("was", "it") if len(dirs) == 1 else ("were", "them")
                raise RunError(f"{', '.join(dirs)} {were} done with other settings ("
                               + "; ".join(diffs) + f"). To redo {them}: the same command with "
                               f"--redo, or `avcurate reset {run_dir} --from {dirs[0]}`"
                               + again)
            runner = Runner(recipe, run_dir, reach_all=True, force=force, keep_ingest=True,
                            **runner_kw)
            runner.preflight(redo_from=at + 1)  # a bad setting stops before anything is removed
            if confirm_redo is not None:
                confirm_redo(diffs)  # what changes, for the user to see before it is done
            reset_run(store.root, at + 1)
            return runner.run()
        recipe.stages = done + specs
        return Runner(recipe, run_dir, reach_all=True, force=force, keep_ingest=True,
                      **runner_kw).run()


def reset_run(run_dir: Path | str, index: int) -> list[str]:
    """Remove stage `index` and every stage after it (folders and manifest entries); the
    caches stay, so redoing a model stage re-sends nothing already answered. Returns the
    removed folders' names."""
    store = RunStore(run_dir)
    with run_lock(store.root):
        manifest = store.load_manifest()
        if index < 1:
            raise RunError("ingest cannot be reset; start a new run folder instead")
        removed = [p.name for p in store.stage_dirs(index)]
        manifest["stages"] = remove_stages(store, manifest["stages"], index)
        manifest["recipe"]["stages"] = [s.to_dict() for s in done_specs(manifest)]
        manifest["updated_at"] = now()
        store.save_manifest(manifest)
    return removed


def stage_index(run_dir: Path | str, name: str) -> int:
    """The index of a stage named by its folder (03-balance), number (3) or name (balance)."""
    store = RunStore(run_dir)
    entries = store.load_manifest()["stages"]
    dirs = [p.name for p in store.stage_dirs()]
    if name.isdigit():
        return int(name)
    if name in dirs:
        return store.stage_number(name)
    hits = [e["index"] for e in entries if e["name"] == name]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        named = [d for d in dirs if store.stage_number(d) in hits]
        raise RunError(f"{name!r} names several stages ({', '.join(named)}); give the folder")
    raise RunError(f"no stage {name!r} in {run_dir}; stages: {', '.join(dirs) or 'none'}")
