"""Chunked runs: checkpoints, bit-identical resume, NaN handling, run directories, the CLI end to end."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxsafe import checkpoint, cli, runner
from jaxsafe.logging import RunDir

TINY = dict(num_envs=4, num_steps=16, total_steps=4 * 16 * 6, num_minibatches=2, hidden="8")


def tiny_spec(**kwargs):
    defaults = dict(seeds=2, grid={"cost_limit": [1.0, 5.0]}, overrides=TINY, env_overrides={"max_steps": 20},
                    num_chunks=3)
    defaults.update(kwargs)
    return runner.make_spec("ppo_lag", "SafeGridWorld", **defaults)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    return runner.run_training(tiny_spec(), out, progress=False)


def test_run_directory_contents(full_run):
    run_dir = full_run.run_dir
    config = json.loads(run_dir.config_path.read_text())
    assert config["algorithm"] == "ppo_lag" and config["grid"] == {"cost_limit": [1.0, 5.0]}
    rows = run_dir.read_metrics()
    assert len(rows) == 3 * 4  # 3 chunks x 4 lanes
    for key in ("run", "seed", "cost_limit", "env_steps", "episode_return", "episode_cost", "multiplier"):
        assert key in rows[0], key
    assert rows[-1]["env_steps"] == 6 * 64
    summary = run_dir.read_summary()
    assert summary["complete"] and len(summary["points"]) == 2
    assert summary["points"][0]["seeds"] == [0, 1]
    assert run_dir.figure_path.stat().st_size > 1000
    assert checkpoint.latest_step(run_dir.checkpoint_dir) == 3


def test_resume_is_bit_identical(full_run, tmp_path):
    out = tmp_path / "killed"
    runner.run_training(tiny_spec(), out, progress=False, stop_after_chunks=1)  # "killed" after one chunk
    assert checkpoint.latest_step(RunDir(out, must_exist=True).checkpoint_dir) == 1
    resumed = runner.resume_training(out, progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.state, full_run.state)
    assert RunDir(out, must_exist=True).read_metrics() == full_run.run_dir.read_metrics()


def test_chunked_run_equals_one_program(full_run):
    """The runner's chunks compose to the pure train function of the same grid.

    Equal up to float rounding only: XLA may fuse a scan of 2 updates differently from one of 6. Resuming is
    bit-identical because it replays the same compiled chunks (test above)."""
    built = runner._build(tiny_spec())
    from jaxsafe import sweep
    from jaxsafe.rl import ppo

    result = sweep.run_grid(ppo.make_train(built.config, built.problem), built.grid)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), result.params,
                 full_run.state.params)


def test_new_run_refuses_existing_directory(full_run):
    before = full_run.run_dir.metrics_path.read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        runner.run_training(tiny_spec(), full_run.run_dir.path, progress=False)
    assert full_run.run_dir.metrics_path.read_text() == before


def test_resume_missing_or_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runner.resume_training(tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        runner.resume_training(tmp_path / "empty", progress=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        runner.resume_training(corrupt, progress=False)
    no_ckpt = tmp_path / "no_ckpt"  # killed before its first checkpoint: resuming starts it from the beginning
    # (the spec of `full_run`, so its chunk program is already in the compilation cache: no extra compile)
    RunDir(no_ckpt).write_config(tiny_spec().to_json())
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        result = runner.resume_training(no_ckpt, progress=False)
    assert result.summary["complete"] and checkpoint.latest_step(result.run_dir.checkpoint_dir) == 3
    assert len(result.run_dir.read_metrics()) == 3 * 4  # every chunk ran, from the first


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    # A learning rate of 1e30 overflows the parameters on the first update. The grid and seeds of `tiny_spec`
    # (the learning rate is a traced hparam): the same compiled chunk as the other runs, found in the cache.
    spec = tiny_spec(overrides={**TINY, "learning_rate": "1e30"})
    with pytest.raises(runner.TrainingDiverged, match="non-finite loss at update"):
        runner.run_training(spec, tmp_path / "nan", progress=False)
    assert checkpoint.latest_step(RunDir(tmp_path / "nan", must_exist=True).checkpoint_dir) is None  # nothing bad was saved


@pytest.mark.parametrize("overrides,message", [
    ({"learning_rate": "-1"}, "PPOHParams.learning_rate must be > 0"),
    ({"cost_limit": "-3"}, "PPOHParams.cost_limit must be >= 0"),
    ({"num_minibatches": "5"}, "num_minibatches must be a divisor"),
    ({"warp_speed": "9"}, "unknown field 'warp_speed'"),
])
def test_bad_spec_before_compilation(overrides, message):
    with pytest.raises(ValueError, match=message):
        runner.make_spec("ppo_lag", "SafeCartPole", overrides=overrides)


def test_bad_names_list_valid_ones():
    with pytest.raises(ValueError, match="ppo_lag"):
        runner.make_spec("ppo_lagrange", "SafeCartPole")
    with pytest.raises(ValueError, match="SafeCartPole"):
        runner.make_spec("ppo", "CartPole")
    with pytest.raises(ValueError, match="unknown hparams field"):
        runner.make_spec("ppo", "SafeCartPole", grid={"cost_limt": [1.0]})


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["sweep", "ppo_lag", "--env", "SafeGridWorld", "--env-set", "max_steps=20", "--grid", "cost_limit=1,5",
            "--seeds", "2", "--steps", str(6 * 64), "--chunks", "3", "--out", str(out), "--quiet"]
    for key, value in TINY.items():
        if key != "total_steps":
            argv += ["--set", f"{key}={value}"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "cost_limit=1" in printed and "run directory" in printed
    assert cli.main(["eval", str(out), "--episodes", "4", "--max-steps", "30"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all("episode_cost" in r for r in rows)
    # mixing the sweep's policies by the flipping LP, played in both flip modes
    assert cli.main(["flip", str(out), "--budget", "2,10", "--episodes", "8", "--max-steps", "30"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    policies = [r for r in rows if r["kind"] == "policy"]
    mixtures = [r for r in rows if r["kind"] == "mixture"]
    assert len(policies) == 4 and len(mixtures) == 4 and {r["mode"] for r in mixtures} == {"episode", "step"}
    for r in mixtures:
        assert 0.0 <= r["weight_low"] <= 1.0
        if r["feasible"] and r["best_deterministic_lane"] >= 0:
            assert r["lp_return"] >= r["best_deterministic_return"] - 1e-9
    assert cli.main(["list"]) == 0
    assert "SafeGridWorld" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["train", "ppo", "--env", "Nope"], "unknown environment"),
    (["train", "dqn", "--env", "SafeCartPole"], "unknown algorithm"),
    (["train", "ppo", "--env", "SafeCartPole", "--set", "lr"], "field=value"),
    (["sweep", "ppo", "--env", "SafeCartPole", "--grid", "cost_limit=a,b"], "comma-separated"),
])
def test_cli_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_resume_missing_dir_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--resume", "--out", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "jaxsafe.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "sweep" in proc.stdout


def test_two_cost_environment_through_the_runner(tmp_path):
    spec = runner.make_spec("ppo_lag", "SafeGridWorld", seeds=2, overrides={**TINY, "cost_limit": "0,3"},
                            env_overrides={"layout": "two_costs", "max_steps": 20}, num_chunks=2)
    assert spec.hparams["cost_limit"] == [0.0, 3.0]
    result = runner.run_training(spec, tmp_path / "two", progress=False)
    row = result.rows[-1]
    assert len(row["episode_cost"]) == 2 and len(row["multiplier"]) == 2
    point = result.summary["points"][0]
    assert np.shape(point["episode_cost"]["mean"]) == (2,)
    assert result.run_dir.figure_path.stat().st_size > 1000
    with pytest.raises(ValueError, match="cost_limit must have shape"):
        runner.run_training(runner.make_spec("ppo_lag", "SafeGridWorld", overrides={**TINY, "cost_limit": "2"},
                                             env_overrides={"layout": "two_costs"}), tmp_path / "scalar",
                            progress=False)
