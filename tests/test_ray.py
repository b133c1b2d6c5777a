"""The Ray executor: same rows as the local runner, same resume rule, shared caches; and
Ray settings that could never run, refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomli_w
from conftest import avcurate_cmd
from helpers import read_stage, slow_recipe
from loopback import openai_server
from test_filters import row, scored_recipe

from avcurate.demo import make_demo
from avcurate.demo.server import demo_server
from avcurate.pipeline.recipe import Recipe, StageSpec
from avcurate.pipeline.runner import RunError, Runner
from avcurate.stages.base import StageError

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_env():
    """A local 2-CPU Ray whose files (sessions, sockets, no auth token) stay in a test folder."""
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": tmp}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield env
    ray.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(tmp, ignore_errors=True)


# -- settings that could never run ------------------------------------------------------
# First in this module, before any test starts `ray_env`: `--address auto` finds any Ray
# running on the machine (Ray's `find_gcs_addresses`), and this module runs on its own (the
# README's command; under pytest-xdist, loadfile keeps it whole on one worker), so no other
# Ray is up while these run.


@pytest.mark.parametrize("args, said", [
    (["--address", "127.0.0.1:{port}"], "--address 127.0.0.1:{port}: cannot connect "
                                        "(Connection refused)"),
    (["--address", "ray://127.0.0.1:{port}"], "--address ray://127.0.0.1:{port}: cannot connect"),
    (["--address", "head-node"], "--address head-node: expected HOST:PORT"),
    (["--address", "auto"], "--address auto: Could not find any running Ray instance"),
    (["--ray-cpus-per-task", "100000"], "--ray-cpus-per-task 100000: the local Ray has"),
    (["--ray-actors", "10000"], "the run needs 5000 CPUs of the local Ray at once"),
])
def test_ray_settings_that_could_never_run_are_one_line(tmp_path, args, said):
    """Ray retried a dead address for minutes with warnings, `auto` without a cluster was a
    traceback, and tasks or actors asking for more CPUs than the local Ray has waited
    forever: one line now, before the run folder is made. A Ray option without --executor ray
    would have run locally, unasked."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = tmp_path / "recipe.toml"
    model = StageSpec("classify", {"model": "m", "base_url": f"http://127.0.0.1:{port}/v1"})
    recipe.write_text(tomli_w.dumps(scored_recipe(tmp_path, [row("r1")], [model]).to_dict()))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: socket paths are limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
        "OPENAI_API_KEY": "k"}
    args = [a.format(port=port) for a in args]
    tries = [(["--executor", "ray", *args], said.format(port=port))]
    tries.append((args, f"{args[0]} {args[1]} needs --executor ray"))  # not run locally
    try:
        for given, wanted in tries:
            done = subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run"),
                                               *given),
                                  capture_output=True, text=True, env=env, timeout=120)
            lines = [x for x in done.stderr.strip().splitlines() if "local Ray instance" not in x]
            assert done.returncode == 2 and len(lines) == 1, done.stderr
            assert lines[0].startswith("error: " + wanted), lines[0]
            assert not (tmp_path / "run").exists()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_finished_run_resumed_on_ray_starts_no_ray(tmp_path):
    """Every stage done: `--executor ray` has nothing to run, and no Ray is started for it
    (a local Ray took ~6 s to start for a resume that takes 0.4 s without). Ray keeps its
    sessions under RAY_TMPDIR: none is made."""
    recipe = scored_recipe(tmp_path, [row(f"r{i}") for i in range(6)], [StageSpec("dedup")])
    path = tmp_path / "recipe.toml"
    path.write_text(tomli_w.dumps(recipe.to_dict()))
    run_dir = tmp_path / "run"
    Runner(recipe, run_dir, show_progress=False).run()
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        done = subprocess.run(avcurate_cmd("run", str(path), "--out", str(run_dir),
                                           "--executor", "ray"),
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Started a local Ray" not in done.stderr
        assert json.loads((run_dir / "manifest.json").read_text())["stages"] == stages
        assert not list(Path(ray_tmp).rglob("session_*")), list(Path(ray_tmp).rglob("*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _ray_runner(recipe, run_dir, **kw):
    from avcurate.pipeline.ray_runner import RayRunner

    return RayRunner(recipe, run_dir, show_progress=False, actors=2, **kw).run()


def _rows_of(run_dir: Path) -> dict[str, tuple[list, list]]:
    out = {}
    for stage in sorted(p.name for p in run_dir.iterdir() if p.name[:2].isdigit()):
        kept, rej = read_stage(run_dir, stage[:2])
        out[stage] = tuple(sorted(json.dumps(r, sort_keys=True, default=str)
                                  for r in t.to_pylist()) for t in (kept, rej))
    return out


def test_demo_data_same_as_local(ray_env, tmp_path, monkeypatch):
    """The demo recipe's row-local and model stages up to the first threshold, answered by
    the demo model server, give the same rows on Ray as locally."""
    with demo_server() as server:
        monkeypatch.setenv("AVCURATE_DEMO_BASE_URL", server.url + "/v1")
        recipe = Recipe.load(make_demo(tmp_path / "demo"))
        names = [s.name for s in recipe.stages]
        recipe.stages = recipe.stages[:names.index("threshold") + 1]
        assert {"score", "classify"} <= set(names[:len(recipe.stages)])
        Runner(recipe, tmp_path / "local", show_progress=False).run()
        _ray_runner(recipe, tmp_path / "ray")
    assert _rows_of(tmp_path / "local") == _rows_of(tmp_path / "ray")
    manifest = json.loads((tmp_path / "ray/manifest.json").read_text())
    assert all(s["rows_in"] == s["kept"] + s["rejected"] for s in manifest["stages"])


def test_larger_set_with_a_model_stage_and_global_stages(ray_env, tmp_path):
    cats = ["counting", "speech", "music"]
    rows = [row(f"r{i:03d}", cats[i % 3], comp=0.7 + (i % 7) / 30, vd=0.6 + (i % 5) / 10,
                question=f"How many drum hits {i % 40}? counting") for i in range(300)]
    with openai_server() as server:
        stages = [StageSpec("dedup"), StageSpec("classify", {
            "backend": "openai", "model": "q", "base_url": server.url + "/v1",
            "concurrency": 4}), StageSpec("threshold"), StageSpec("balance", {"min_count": 5}),
            StageSpec("subset")]
        recipe = scored_recipe(tmp_path, rows, stages, shard_size=16)
        Runner(recipe, tmp_path / "local", show_progress=False).run()
        local_calls = len(server.requests)
        _ray_runner(recipe, tmp_path / "ray")
        ray_calls = len(server.requests) - local_calls
    # 40 distinct prompts: the local runner asks each once, and so does Ray, whose two actors
    # meet the same prompt at the same moment (one leases it in the shared cache, the other
    # waits for its answer)
    assert local_calls == 40 and ray_calls == 40
    assert _rows_of(tmp_path / "local") == _rows_of(tmp_path / "ray")
    local = json.loads((tmp_path / "local/manifest.json").read_text())["stages"]
    remote = json.loads((tmp_path / "ray/manifest.json").read_text())["stages"]
    assert [s["kept"] for s in local] == [s["kept"] for s in remote]
    assert local[2]["usage"]["calls"] == local_calls and remote[2]["usage"]["calls"] == ray_calls
    assert remote[4]["categories_before"] == local[4]["categories_before"]
    assert remote[5]["subsets"] == local[5]["subsets"]
    # one pass per shard for dedup's decision + classify + threshold, and balance + subset
    assert [s.get("fused_with") for s in remote[1:]] == [
        ["classify", "threshold"], ["dedup", "threshold"], ["dedup", "classify"], ["subset"],
        ["balance"]]
    assert not any("fused_with" in s for s in local)


def test_the_actors_share_a_stages_rpm(ray_env, tmp_path):
    """`--rpm` is the endpoint's limit (a provider's quota), but each actor spaced its own
    calls by it, so two actors sent twice as many per minute. Each now keeps 1/actors of
    it: at 480 per minute, no two seconds of the run hold more than 16 calls (two more
    for the actors' first calls, which open a connection and so may land late)."""
    rows = [row(f"r{i:03d}", "counting", question=f"How many drum hits {i}? counting")
            for i in range(32)]
    with openai_server() as server:
        recipe = scored_recipe(tmp_path, rows, [StageSpec("classify", {
            "backend": "openai", "model": "q", "base_url": server.url + "/v1",
            "concurrency": 4, "rpm": 480})], shard_size=4)
        _ray_runner(recipe, tmp_path / "ray")
        arrivals = sorted(server.arrivals)
    assert len(arrivals) == 32
    in_two_seconds = [sum(t <= u < t + 2 for u in arrivals) for t in arrivals]
    assert max(in_two_seconds) <= 18, [round(u - arrivals[0], 3) for u in arrivals]


def test_killed_driver_resumes_without_loss_or_duplicates(ray_env, tmp_path, media,
                                                          plugin_path):
    recipe = slow_recipe(tmp_path, media, n=30, clips=["good", "good2", "silent"], seconds=0.5)
    env = os.environ | ray_env
    subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "ref"), "-q"),
                   check=True, capture_output=True, env=env)
    run_dir = tmp_path / "killed"
    cmd = avcurate_cmd("run", str(recipe), "--out", str(run_dir), "-q", "--executor", "ray")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((run_dir / "02-slow").glob("part-*.parquet"))) < 2:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    assert len(list((run_dir / "02-slow").glob("part-*.parquet"))) < 10
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows_of(run_dir) == _rows_of(tmp_path / "ref")


def test_sigterm_stops_a_ray_run_with_its_line_and_it_resumes(ray_env, tmp_path, media,
                                                              plugin_path):
    """Ray's own SIGTERM handler would exit at once; the run's takes it as a Ctrl-C."""
    recipe = slow_recipe(tmp_path, media, n=30, clips=["good", "good2", "silent"], seconds=0.5)
    run_dir = tmp_path / "run"
    cmd = avcurate_cmd("run", str(recipe), "--out", str(run_dir), "-q", "--executor", "ray")
    env = os.environ | ray_env
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not list((run_dir / "02-slow").glob("part-*.parquet")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the driver alone, as a scheduler's time limit does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kept, rejected = read_stage(run_dir, "02")
    assert kept.num_rows + rejected.num_rows == 20  # the 30 rows less validate's silent ones


def test_missing_ray_is_a_clear_message(monkeypatch):
    from avcurate.pipeline.ray_runner import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RunError, match=r"pip install 'avcurate\[ray\]'"):
        import_ray()


def _hammer(args):
    from avcurate.core.kvcache import KVCache

    path, worker = args
    cache = KVCache(Path(path))
    for i in range(200):
        cache.put(f"{worker}-{i}", {"worker": worker, "i": i})
    cache.close()
    return worker


def test_response_cache_is_safe_for_concurrent_writers(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    from avcurate.core.kvcache import KVCache

    path = tmp_path / "cache/responses.sqlite"
    with ProcessPoolExecutor(4) as pool:
        assert sorted(pool.map(_hammer, [(str(path), w) for w in range(4)])) == [0, 1, 2, 3]
    cache = KVCache(path)
    assert len(cache) == 800 and cache.get("3-199") == {"worker": 3, "i": 199}


def test_api_keys_reach_ray_workers_without_touching_disk(ray_env, tmp_path, monkeypatch):
    """The cluster started before the key was set (as a cluster started without it): its
    workers authenticate anyway, and the key is in no file Ray wrote."""
    key = "sk-ray-only-in-memory-0123"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    rows = [row(f"r{i}", "speech") for i in range(8)]
    with openai_server(api_key=key) as server:
        stages = [StageSpec("classify", {"model": "qwen", "base_url": server.url + "/v1"})]
        _ray_runner(scored_recipe(tmp_path, rows, stages, shard_size=2), tmp_path / "run")
        assert server.headers_seen and all(h.get("authorization") == f"Bearer {key}"
                                           for h in server.headers_seen)
    for path in [*Path(ray_env["RAY_TMPDIR"]).rglob("*"), *(tmp_path / "run").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert key.encode() not in path.read_bytes(), path


def test_a_stage_that_stops_on_ray_is_one_line_naming_it(ray_env, tmp_path):
    """A chain (dedup's decision, classify, threshold) whose model the server does not
    serve: the command's error names classify, not the chain's first stage, in one line,
    without the worker's traceback or Ray's "unhandled error" logs of the shards that
    failed alongside."""
    rows = [row(f"r{i:02d}", "speech", question=f"Question {i}?") for i in range(64)]
    with openai_server(models={"served"}) as server:
        stages = [StageSpec("dedup"), StageSpec("classify", {
            "model": "not-served", "base_url": server.url + "/v1", "concurrency": 4}),
            StageSpec("threshold")]
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(tomli_w.dumps(scored_recipe(tmp_path, rows, stages).to_dict()))
        done = subprocess.run(avcurate_cmd("run", str(recipe), "--out", str(tmp_path / "run"),
                                           "--executor", "ray", "-q"),
                              env=os.environ | ray_env | {"OPENAI_API_KEY": "k"},
                              capture_output=True, text=True, timeout=300)
        assert server.requests  # the stage started, and its calls failed
    assert done.returncode == 2 and done.stderr.splitlines() == [  # -q: no Ray start-up lines
        "error: 02-classify stopped (openai:not-served: http_404: Error code: 404 - The model "
        "`not-served` does not exist.; the server serves served: give one as --model). No row "
        "was rejected for it and the stage is not done; fix the cause and run the same command "
        "again (finished shards are kept)."]


def test_a_chain_refused_before_any_row_leaves_no_stage_folder(ray_env, tmp_path):
    """validate + dedup fused on Ray, every video missing (a wrong media root): the run
    stops before any row, and neither stage's folder stays to show as begun."""
    rows = [row(f"r{i}") for i in range(6)]
    recipe = scored_recipe(tmp_path, rows, [StageSpec("validate", {"require_audio": False}),
                                            StageSpec("dedup")])
    with pytest.raises(StageError, match="none of the 6 video file"):
        _ray_runner(recipe, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name[:2].isdigit()) == \
        ["00-ingest"]
