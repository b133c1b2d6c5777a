"""A file that makes a decoder hang or crash costs its row, never the run.

Some real files make decord's `get_batch` loop forever in native code with the GIL held
(dmlc/decord#373, #375), and a decoder can segfault on a damaged file. No file here
does either on the decoders installed, so the jobs in `faulty_jobs` fail those two ways
(a C loop that holds the GIL, a SIGSEGV); in the command-line tests a `sitecustomize`
makes decord and PyAV do so for files named `stuck*` or `crash*`, in every process of
the command. Everything else is the product as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import avcurate_cmd
from faulty_jobs import faulty_decoder_env, job
from helpers import read_stage, rows_by_id
from loopback import openai_server

from avcurate.media.errors import Lost
from avcurate.stages.context import POOL_START, WorkerPool
from avcurate.stages.errors import StageError

TESTS = Path(__file__).parent


def test_a_stuck_or_crashing_job_is_lost_and_the_others_come_back():
    pool = WorkerPool(2, timeout=3.0)
    names = [f"clip{i}" for i in range(40)]
    names[7], names[23] = "stuck", "crash"
    try:
        start = time.monotonic()
        results = pool.map(job, names)
        took = time.monotonic() - start
        assert pool.map(job, ["after"]) == ["afterafter"]  # the pool started again
    finally:
        pool.close()
    assert [r for i, r in enumerate(results) if i not in (7, 23)] == \
        [n * 2 for i, n in enumerate(names) if i not in (7, 23)]
    assert results[7] == Lost("media_timeout", "no result within 3 s (media_timeout): the "
                                               "decoder may be stuck on this file")
    assert isinstance(results[23], Lost) and results[23].kind == "media_crash"
    # the stuck job costs one time limit: its chunk's mark names it, so it is not run again
    assert 3.0 <= took < 20


def test_threads_sharing_the_pool_lose_only_their_own_bad_job():
    """Model stages decode several shards at once through one pool. A crash takes down
    the jobs of every thread; a job tried again on its own gets a worker of its own, so
    the stuck one is still found stuck and the others still come back."""
    pool = WorkerPool(2, timeout=3.0)
    jobs = {"a": ["stuck", "g1"], "b": ["crash"], "c": ["g2", "g3", "g4"]}
    out: dict[str, list] = {}

    def go(name: str) -> None:
        out[name] = pool.map(job, jobs[name])

    threads = [threading.Thread(target=go, args=(name,)) for name in jobs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        pool.close()
    assert [getattr(r, "kind", r) for r in out["a"]] == ["media_timeout", "g1g1"]
    assert [getattr(r, "kind", r) for r in out["b"]] == ["media_crash"]
    assert out["c"] == ["g2g2", "g3g3", "g4g4"]


def test_workers_that_die_on_any_job_stop_the_stage_with_one_line():
    """Workers that die before any job (here: at start) are not any file's fault; without
    the check every row would be rejected as media_crash."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    class DyingPool(WorkerPool):
        def _executor(self) -> ProcessPoolExecutor:
            with self._lock:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(
                        self.workers, mp_context=multiprocessing.get_context(POOL_START),
                        initializer=os._exit, initargs=(1,))
                return self._pool

    pool = DyingPool(2, timeout=3.0)
    try:
        with pytest.raises(StageError, match="die before finishing any job"):
            pool.map(job, ["a", "b", "c"])
    finally:
        pool.close()


def _recipe(tmp_path: Path, media: dict, stage: str) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir()
    # three different clips: the media cache decodes files of the same content once
    for name, clip in (("good", "good"), ("stuck", "good2"), ("crash", "quiet")):
        shutil.copy(media[clip], clips / f"{name}.mp4")
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({
        "id": f"{name}{i}", "video": f"{name}.mp4", "question": f"What colour is shown? {i}",
        "options": ["red", "blue"], "answer": "A"}) + "\n"
        for name, i in [("good", 0), ("good", 1), ("stuck", 2), ("good", 3), ("crash", 4)]))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[run]\nshard_size = 2\nworkers = 2\nmedia_timeout = 3\n'
        f'[[sources]]\nname = "jsonl"\nannotations = "{ann}"\nmedia_root = "{clips}"\n'
        'columns = {id = "id", video = "video", question = "question", options = "options", '
        'answer = "answer"}\n' + stage)
    return recipe


@pytest.mark.parametrize("stage", ["validate", "score"])
def test_a_file_that_hangs_or_crashes_the_decoder_rejects_its_row(tmp_path, media, stage):
    """validate probes with PyAV, score decodes frames with decord and audio with PyAV:
    each rejects the stuck file's row as media_timeout after [run] media_timeout and the
    crashing file's row as media_crash, scores the rest, and finishes."""
    with openai_server() as server:
        spec = {"validate": '[[stages]]\nname = "validate"\n',
                "score": f'[[stages]]\nname = "score"\nbackend = "openai"\nmodel = "m"\n'
                         f'base_url = "{server.url}/v1"\naudio_seconds = 2.0\n'}[stage]
        run_dir = tmp_path / "run"
        start = time.monotonic()
        done = subprocess.run(avcurate_cmd("run", str(_recipe(tmp_path, media, spec)),
                                           "-o", str(run_dir), "-q"),
                              capture_output=True, text=True, env=faulty_decoder_env(tmp_path),
                              timeout=240)
        took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    kept, rejected = read_stage(run_dir, "01")
    assert sorted(kept.column("id").to_pylist()) == [f"jsonl:ann/good{i}" for i in (0, 1, 3)]
    reasons = {k.rsplit("/", 1)[1]: (r["reject_reason"], r["reject_detail"])
               for k, r in rows_by_id(rejected).items()}
    assert reasons["stuck2"][0] == "media_timeout" and "stuck.mp4: no result within 3 s" \
        in reasons["stuck2"][1]
    assert reasons["crash4"][0] == "media_crash" and "crash.mp4" in reasons["crash4"][1]
    assert took < 120  # one time limit for the stuck file, not a hang
    if stage == "score":  # no request for a row whose media never came
        assert len(server.requests) == 3
        assert None not in kept.column("composite_score").to_pylist()
    else:  # the verdicts that came are cached; the lost ones are not, to be tried next run
        with sqlite3.connect(run_dir / "cache" / "probe.sqlite") as db:
            keys = [k for (k,) in db.execute("SELECT k FROM kv")]
        assert any("good.mp4" in k for k in keys)
        assert not any("stuck.mp4" in k or "crash.mp4" in k for k in keys)


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("-5", "-5"), ('"60"', "'60'"),
                                              ("true", "True"), ("1e9", "1000000000.0")])
def test_a_bad_media_timeout_stops_the_command_before_any_row(tmp_path, media, value, shown):
    recipe = _recipe(tmp_path, media, "").read_text().replace("media_timeout = 3",
                                                               f"media_timeout = {value}")
    (tmp_path / "bad.toml").write_text(recipe)
    done = subprocess.run(avcurate_cmd("run", str(tmp_path / "bad.toml"), "-o",
                                       str(tmp_path / "run"), "-q"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("[run] media_timeout must be a number of seconds above "
                                        f"0 and at most 86400, not {shown}")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
