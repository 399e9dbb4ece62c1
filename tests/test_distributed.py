"""A sweep over two processes (JAX's multi-controller runtime on localhost, two host CPU devices each) equals the
single-process run of the same grid, lane by lane; each process writes its own lanes' rows, one the summary."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = ("import sys; from jaxsafe import cli; from jaxsafe.examples import constrained_bandit as cb; cb.register(); "
          "sys.exit(cli.main(sys.argv[1:]))")
SWEEP = ["sweep", "bandit_lag", "--problem", "three_arms", "--grid", "cost_limit=0.2,0.35,0.5", "--seeds", "2",
         "--set", "num_updates=60", "--chunks", "3", "--quiet"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(argv, devices: int, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def final_rows(out):
    rows = {}
    for path in sorted(out.glob("metrics*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows[(row["run"], row["chunk"])] = row
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    single = run(SWEEP + ["--out", str(root / "single")], devices=1)
    port = free_port()
    workers = [run(SWEEP + ["--out", str(root / "multi"), "--coordinator", f"127.0.0.1:{port}",
                            "--num-processes", "2", "--process-id", str(i)], devices=2) for i in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in [single, *workers]]
    for stdout, stderr, code in results:
        assert code == 0, stderr[-3000:]
    return root / "single", root / "multi"


def test_two_processes_equal_one(runs):
    single, multi = runs
    assert sorted(p.name for p in multi.glob("metrics*.jsonl")) == ["metrics.process-0.jsonl",
                                                                     "metrics.process-1.jsonl"]
    one, two = final_rows(single), final_rows(multi)
    assert one.keys() == two.keys() and len(one) == 6 * 3
    for key in one:
        for metric in ("episode_return", "episode_cost", "multiplier"):
            np.testing.assert_allclose(two[key][metric], one[key][metric], rtol=1e-6, atol=1e-7)
    lanes_per_process = [{json.loads(line)["run"] for line in (multi / f"metrics.process-{i}.jsonl").read_text()
                          .splitlines()} for i in range(2)]
    assert not lanes_per_process[0] & lanes_per_process[1] and len(lanes_per_process[0] | lanes_per_process[1]) == 6
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["complete"] and summary["processes"] == 2 and len(summary["points"]) == 3
    assert (multi / "curves.png").stat().st_size > 1000


def test_incomplete_flags_are_an_error():
    proc = run(["train", "bandit_lag", "--problem", "three_arms", "--coordinator", "127.0.0.1:1"], devices=1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--num-processes and --process-id go together" in stderr
