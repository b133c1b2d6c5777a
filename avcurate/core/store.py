"""The run folder: manifest, per-stage shard folders, atomic writes.

    RUN_DIR/
      manifest.json            recipe, versions, per-stage fingerprint, counts, timings
      00-ingest/part-00000.parquet
      00-ingest/rejects/part-00000.parquet
      01-validate/...
      cache/                   probe and model-response caches (SQLite)

A shard counts as finished once its kept file exists. The rejects file is
written first, so a kill between the two writes only means that shard is
recomputed (and its rejects file overwritten, never appended to).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from avcurate.core.arrow_values import empty

MANIFEST = "manifest.json"
FINGERPRINT = ".fingerprint"  # in every stage folder: the settings that wrote its shards
EMBEDDED_MEDIA = "media"  # the files ingest wrote out of annotations that held them
_STAGE_DIR = re.compile(r"([0-9]+)-.")  # `NN-name`: two digits or more (stage 100 on)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at `path` whole or not at all: written to a temporary file in
    the same folder, synced, then renamed over `path`; removed if the writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # not tempfile.mkstemp: it creates files readable by their owner only, and every
    # shard, manifest and export file would be 0600 on a filesystem a team shares; this
    # is its exclusive create with the usual mode, which the umask narrows
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        # written through the descriptor just opened: no second open, no lookup by path
        with naming(path), os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError raised inside names `path` when it names no file: a write's error (a
    full disk) names none, nor does pyarrow's, and the one line a command prints for it
    should say where."""
    try:
        yield
    except OSError as exc:
        if not exc.filename:
            exc.filename = str(path)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` so that readers never see half a file."""
    with _atomic_file(path) as f:
        f.write(data)


def copy_file_atomic(source: Path, target: Path) -> None:
    """A copy of `source` at `target` whole or not at all, with its modification time
    (`shutil.copy2` writes in place: a full disk or a kill left half a clip under its name).
    The temporary file has a fixed name, `copying(target)`, so that the copy after a killed
    one replaces it and the folder's owner can tell it apart from a user's file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = copying(target)
    with naming(target):
        try:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            shutil.copystat(source, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


NAME_BYTES = 240  # a file name's room (255 bytes on common filesystems) less `copying`'s 5


def copy_name(prefix: str, name: str) -> str:
    """`PREFIX-NAME` for a copy of the file `name`, its stem cut (suffix kept) so that the
    copy and its temporary file fit a file name's 255 bytes: a clip named at the limit,
    which its own folder holds, made the copy fail. `prefix` alone keeps names apart."""
    full = f"{prefix}-{name}"
    if len(full.encode()) <= NAME_BYTES:
        return full
    suffix = Path(name).suffix if len(Path(name).suffix) <= 16 else ""
    room = NAME_BYTES - len(f"{prefix}-{suffix}".encode())
    stem = name[:len(name) - len(suffix)].encode()[:room].decode("utf-8", "ignore")
    return f"{prefix}-{stem}{suffix}"


def copying(target: Path) -> Path:
    """Where a copy to `target` is written before it is renamed into place."""
    return target.with_name(f".{target.name}.tmp")


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """`table` at `path` whole or not at all (see `_atomic_file`)."""
    with _atomic_file(path) as f:
        if table.num_rows:
            _write(table, f)
        else:
            # an empty table's bytes are made once per schema, as most shards of most
            # stages reject nothing
            f.write(_empty_parquet(table.schema.serialize().to_pybytes()))


def _write(table: pa.Table, sink: Any) -> None:
    # Run-internal shards, written once and read by the next stage: LZ4, whose encoding
    # and decoding cost about half of zstd's. Over threshold + balance + subset of 1M
    # scored rows the run took ~0.25 s less (of ~2 s); the price is disk, files ~1.5x
    # zstd's size on text-like columns. Exports, which are kept and uploaded, write
    # their own zstd files. No dictionary pages or column statistics either: they cost
    # ~45% of a stage's write time for no gain here (each shard is one row group read
    # whole).
    pq.write_table(table, sink, compression="lz4", use_dictionary=False,
                   write_statistics=False)


@functools.lru_cache(maxsize=64)
def _empty_parquet(schema: bytes) -> bytes:
    """A Parquet file of no rows of `schema` (keyed by its serialised form, metadata
    included, which `pa.Schema.__eq__` ignores)."""
    sink = pa.BufferOutputStream()
    _write(empty(pa.ipc.read_schema(pa.py_buffer(schema))), sink)
    return sink.getvalue().to_pybytes()


def use_jemalloc() -> None:
    """Arrow buffers from jemalloc, unless the user chose a pool (ARROW_DEFAULT_MEMORY_POOL).

    pyarrow's wheels default to mimalloc, whose fresh memory the kernel hands out as
    transparent huge pages zeroed on first touch: over threshold + balance + subset of 1M
    rows that zeroing was ~28% of the CPU time, and the run took 1.97 s (median of 5)
    against 1.66 s with jemalloc, peak RSS ~650 MiB against ~400 MiB. Called by the
    command line for its own process (and the benchmarks that replay its work), not on
    import: a program that imports avcurate keeps its own choice.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and \
            "jemalloc" in pa.supported_memory_backends():
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (media can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file's table. Read through `ParquetFile`, not `pq.read_table`, whose
    first call imports `pyarrow.dataset` (~0.2 s in every process) for what a single file
    does not need (file discovery, partition columns from `key=value` folder names)."""
    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


def by_number(paths: Iterable[Path]) -> list[Path]:
    """Shard files in the order of their numbers. `part-{i:05d}` grows a sixth digit at
    shard 100,000 (25.6M rows at the default 256 a shard), and by name `part-100000` sorts
    before `part-10001`: each stage, whose output shard i comes from its i-th input,
    would then reorder the rows of the one before. Equal-width names sort by name."""
    return sorted(paths, key=lambda p: (len(p.name), p.name))


def damaged_parquet(root: Path) -> list[Path]:
    """The Parquet files under `root` whose footer cannot be read. avcurate writes every
    file whole, so these were cut or changed outside it; looked for only after a read
    failed (one open per file)."""
    bad = []
    for path in sorted(root.rglob("*.parquet")):
        try:
            pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError):
            bad.append(path)
    return bad


def parquet_rows(paths: list[Path]) -> int:
    """Row count from Parquet footers, without reading data."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


class ManifestError(ValueError):
    """A manifest.json that cannot be read. avcurate writes it whole (atomically), so it
    was changed outside avcurate: one line for the user, never a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; it was changed outside avcurate (avcurate writes it "
                         "whole): restore it, or start a new run folder")


class RunStore:
    """Paths and manifest I/O for one run folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def not_a_run(self) -> str:
        """What every command says of a folder that is not a run: the runs inside it when
        there are some (the demo's --out holds its run in run/), else how to make one."""
        inside = sorted(str(m.parent) for m in self.root.glob(f"*/{MANIFEST}"))
        hint = (f"the run(s) inside it: {', '.join(inside[:3])}" if inside else
                "make one with `avcurate ingest` or `avcurate run`")
        return f"{self.root} is not an avcurate run (no {MANIFEST}); {hint}"

    def load_manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise FileNotFoundError(self.not_a_run())
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{self.manifest_path} is not valid JSON ({exc})") from None
        stages = manifest.get("stages") if isinstance(manifest, dict) else None
        if not isinstance(stages, list) or not all(
                isinstance(e, dict) and {"name", "dir"} <= e.keys() for e in stages):
            raise ManifestError(f"{self.manifest_path} is not an avcurate manifest (an object "
                                "whose 'stages' list names each stage and its folder)")
        return manifest

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        data = json.dumps(manifest, indent=2, sort_keys=False, default=str).encode()
        atomic_write_bytes(self.manifest_path, data)

    def stage_dir(self, index: int, name: str) -> Path:
        return self.root / f"{index:02d}-{name}"

    @staticmethod
    def stage_number(folder: Path | str) -> int | None:
        """The index a stage folder's name starts with (`03-balance` → 3, `104-subset` →
        104), or None for a name that is not `NN-name`. Read from the whole number, not
        the first two characters: `{index:02d}` grows a third digit at stage 100."""
        found = _STAGE_DIR.match(Path(folder).name)
        return int(found.group(1)) if found else None

    @staticmethod
    def shard_path(stage_dir: Path, i: int) -> Path:
        return stage_dir / f"part-{i:05d}.parquet"

    @staticmethod
    def reject_path(stage_dir: Path, i: int) -> Path:
        return stage_dir / "rejects" / f"part-{i:05d}.parquet"

    @staticmethod
    def shards(stage_dir: Path) -> list[Path]:
        """A stage's kept shards in the order of their numbers (`by_number`)."""
        return by_number(stage_dir.glob("part-*.parquet"))

    @staticmethod
    def rejects(stage_dir: Path) -> list[Path]:
        return by_number((stage_dir / "rejects").glob("part-*.parquet"))

    def stage_dirs(self, start: int = 0) -> list[Path]:
        """The run's stage folders from stage `start` on: `NN-name` folders avcurate made,
        which hold its `FINGERPRINT` mark or are recorded in the manifest (runs older than
        the mark). A folder of the user's that happens to be named like one is never
        listed, so `reset`, `--redo` and `--force` never remove it."""
        recorded = ({e.get("dir") for e in self.load_manifest().get("stages", [])}
                    if self.exists() else set())
        found = [(n, p) for p in (self.root.iterdir() if self.root.is_dir() else ())
                 if (n := self.stage_number(p)) is not None and n >= start and p.is_dir()
                 and ((p / FINGERPRINT).is_file() or p.name in recorded)]
        return [p for _, p in sorted(found)]  # by number: "100-x" after "99-y"

    def unfinished_dirs(self) -> list[Path]:
        """The stage folders the manifest does not record, which is every stage that was
        stopped or killed (a stage is recorded once it is done): `status` shows them as
        incomplete, and `export` refuses a run that has one."""
        recorded = {e.get("dir") for e in self.load_manifest().get("stages", [])}
        return [p for p in self.stage_dirs() if p.name not in recorded]
