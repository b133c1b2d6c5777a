"""Ray settings that could never run: one line before the run folder is made. In a module
of their own, without test_ray's in-process Ray, which `--address auto` would find."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import pytest
import tomli_w
from conftest import avcurate_cmd
from test_filters import row, scored_recipe

from avcurate.pipeline.recipe import StageSpec

pytest.importorskip("ray")


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
    forever: one line now, before the run folder is made. An --address without --executor ray would
    have run locally, unasked."""
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
    if args[0] == "--address":
        tries.append((args, f"--address {args[1]} needs --executor ray"))
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
