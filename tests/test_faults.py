"""Faults a long run must survive: damaged checkpoints, torn metrics lines, a full disk, NaNs at a chosen update,
grids larger than memory. Uses the constrained-bandit example learner, whose programs compile in a second."""

import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import checkpoint, cli, runner, sweep
from jaxsafe.algorithms import Algorithm, register_algorithm
from jaxsafe.examples import constrained_bandit as cb
from jaxsafe.learner import TrainParts, train_from_parts
from jaxsafe.logging import RunDir

cb.register()


def spec(**kwargs):
    return runner.make_spec("bandit_lag", "three_arms", **{**dict(seeds=2, num_chunks=5,
                                                                  overrides={"num_updates": 50}), **kwargs})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return runner.run_training(spec(), tmp_path_factory.mktemp("ref") / "run", progress=False)


def damage(run_dir, step):
    for path in (run_dir / "checkpoints" / str(step)).rglob("d/*"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def test_damaged_newest_checkpoint_falls_back_and_resumes_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    runner.run_training(spec(), out, progress=False, stop_after_chunks=3)
    damage(out, 3)
    with pytest.warns(checkpoint.CheckpointWarning, match="checkpoint 3 .* is damaged.*restored the older checkpoint 2"):
        resumed = runner.resume_training(out, progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.state, reference.state)
    assert RunDir(out, must_exist=True).read_metrics() == reference.run_dir.read_metrics()
    assert (out / "checkpoints" / "damaged-3").is_dir()  # set aside, not deleted


def test_damaged_checkpoint_gives_one_clean_error(tmp_path):
    out = tmp_path / "run"
    runner.run_training(spec(num_chunks=1), out, progress=False)
    damage(out, 1)  # the only checkpoint: nothing to fall back to
    script = ("import sys; from jaxsafe import cli; from jaxsafe.examples import constrained_bandit as cb; "
              f"cb.register(); sys.exit(cli.main(['train', '--resume', '--out', {str(out)!r}]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert "checkpoint 1" in proc.stderr and "damaged" in proc.stderr
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr


def test_torn_metrics_line_is_recovered_on_resume(reference, tmp_path):
    out = tmp_path / "run"
    runner.run_training(spec(), out, progress=False, stop_after_chunks=2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"run": 0, "chunk": 2, "epi')  # killed in the middle of an append
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = runner.resume_training(out, progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.state, reference.state)
    assert RunDir(out, must_exist=True).read_metrics() == reference.run_dir.read_metrics()
    (out / "metrics.jsonl").write_text('{"run": 0}\nnot json\n{"run": 1}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2"):
        RunDir(out, must_exist=True).read_metrics()


@pytest.mark.parametrize("text", ["[]", "null", '{"algorithm": 3}', '"x"', "\udcff"])
def test_corrupt_config_is_a_clean_error(tmp_path, text, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(text, errors="surrogateescape")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--resume", "--out", str(out)])
    assert exit_info.value.code == 2 and "config.json" in capsys.readouterr().err


def test_full_disk_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from jaxsafe import checkpoint, runner
        from jaxsafe.examples import constrained_bandit as cb
        cb.register()
        spec = runner.make_spec("bandit_lag", "three_arms", seeds=2, num_chunks=5, overrides={{"num_updates": 50}})
        runner.run_training(spec, {str(out)!r}, progress=False, stop_after_chunks=1)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill when a write passes the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        try:
            runner.resume_training({str(out)!r}, progress=False)
        except (checkpoint.CheckpointError, runner.RunWriteError) as err:
            print("STOPPED:", err)
            sys.exit(0)
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "STOPPED: could not write" in proc.stdout and "kept" in proc.stdout, proc.stdout
    assert checkpoint.latest_step(out / "checkpoints") == 1
    resumed = runner.resume_training(out, progress=False)  # the disk has room again
    assert resumed.summary["complete"]


class CountedState(NamedTuple):
    params: jax.Array
    inner: cb.BanditState
    count: jax.Array


def poisoned_parts(config, problem, update_index=23, lane_cost_limit=0.5):
    """The bandit learner with a NaN reported at one update, in the lane whose cost_limit is ``lane_cost_limit``."""
    base = cb.make_train_parts(config, problem)

    def init(key, hparams):
        inner = base.init(key, hparams)
        return CountedState(inner.params, inner, jnp.zeros((), jnp.int32))

    def update(state, hparams):
        inner, metrics = base.update(state.inner, hparams)
        poison = (state.count == update_index) & (hparams.cost_limit == lane_cost_limit)
        return CountedState(inner.params, inner, state.count + 1), dict(metrics, nonfinite=metrics["nonfinite"] | poison)

    return TrainParts(init, update, base.num_updates, 1)


def test_nan_at_a_chosen_update_names_update_and_lane(tmp_path):
    register_algorithm(cb.ALGORITHM._replace(name="bandit_nan", make_train_parts=poisoned_parts))
    nan_spec = runner.make_spec("bandit_nan", "three_arms", seeds=1, grid={"cost_limit": [0.2, 0.5]}, num_chunks=5,
                                overrides={"num_updates": 50})
    with pytest.raises(runner.TrainingDiverged, match=r"update 23 \(chunk 2\) of grid lane 1 .*'cost_limit': 0.5"):
        runner.run_training(nan_spec, tmp_path / "nan", progress=False)
    assert checkpoint.latest_step(tmp_path / "nan" / "checkpoints") == 2  # chunks 0 and 1 were good


def test_max_lanes_batches_equal_one_program():
    config = cb.BanditConfig(num_updates=30)
    train = train_from_parts(cb.make_train_parts(config, cb.make_bandit("three_arms")))
    grid = sweep.make_grid(config.default_hparams(), seeds=2, cost_limit=[0.1, 0.3, 0.5, 0.7])
    whole = sweep.run_grid(train, grid)
    batched = sweep.run_grid(train, grid, max_lanes=3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7), whole, batched)
    assert sweep.lanes_that_fit(train, grid) >= 1 and sweep.lane_memory_bytes(train, grid) > 0
    with pytest.raises(ValueError, match="max_lanes must be a positive integer"):
        sweep.run_grid(train, grid, max_lanes=0)
