"""The one learner contract end to end, on the worked example of docs/adding_a_method.md.

A learner written as config / hparams with rules / make_train_parts and registered once gets the generic runner
(grids, checkpoints, bit-identical resume, metrics, summary, figure) and the CLI for free.
"""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxsafe import cli, runner, sweep
from jaxsafe.algorithms import get_algorithm, list_algorithms
from jaxsafe.examples import constrained_bandit as cb
from jaxsafe.learner import train_from_parts
from jaxsafe.logging import RunDir

cb.register()

#: The LP optimum of three_arms at cost limit 0.5: mix arm 0 (r 1, c 1) and arm 1 (r 0.6, c 0.3) with weight 2/7.
OPTIMUM_RETURN = 0.6 + 0.4 * 2.0 / 7.0


@pytest.fixture(scope="module")
def train():
    config = cb.BanditConfig()
    return config, jax.jit(train_from_parts(cb.make_train_parts(config, cb.make_bandit("three_arms"))))


def test_example_reaches_the_lp_optimum(train):
    config, train_fn = train
    metrics = train_fn(jax.random.PRNGKey(0), config.default_hparams()).metrics
    tail = config.num_updates // 2
    assert abs(float(metrics["episode_return"][tail:].mean()) - OPTIMUM_RETURN) < 0.02
    assert abs(float(metrics["episode_cost"][tail:].mean()) - 0.5) < 0.02
    assert float(metrics["multiplier"][tail:].mean()) > 0.2  # the constraint is active


def test_hparams_rules_name_the_field():
    with pytest.raises(ValueError, match=r"BanditHParams.learning_rate must be > 0, got -1.0"):
        cb.BanditHParams(learning_rate=-1.0).validate()
    with pytest.raises(ValueError, match="multiplier must be one of"):
        cb.BanditConfig(multiplier="adam")


def test_vmapped_lane_equals_single_run(train):
    config, train_fn = train
    grid = sweep.make_grid(config.default_hparams(), seeds=2, cost_limit=[0.2, 0.5])
    batched = sweep.run_grid(train_fn, grid)
    single = train_fn(grid.keys[3], sweep.lane(grid.hparams, 3))
    jax.tree.map(np.testing.assert_array_equal, sweep.lane(batched.metrics, 3), single.metrics)


def spec(**kwargs):
    return runner.make_spec("bandit_lag", "three_arms", **{**dict(seeds=2, grid={"cost_limit": [0.2, 0.5]},
                                                                  num_chunks=4), **kwargs})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return runner.run_training(spec(), tmp_path_factory.mktemp("bandit") / "full", progress=False)


def test_runner_serves_a_registered_learner(full_run, train):
    assert "bandit_lag" in list_algorithms()
    rows = full_run.run_dir.read_metrics()
    assert len(rows) == 4 * 4 and rows[-1]["update"] == 500 and rows[-1]["steps"] == 500
    assert {"episode_return", "episode_cost", "multiplier", "cost_limit", "seed"} <= set(rows[0])
    summary = full_run.run_dir.read_summary()
    assert summary["complete"] and summary["step_unit"] == "updates" and len(summary["points"]) == 2
    assert full_run.run_dir.figure_path.stat().st_size > 1000
    # The chunked run composes to the one-program train of the same grid.
    config, train_fn = train
    one_program = sweep.run_grid(train_fn, full_run.grid)
    np.testing.assert_allclose(one_program.params, full_run.state.params, rtol=1e-5, atol=1e-6)


def test_resume_is_bit_identical(full_run, tmp_path):
    out = tmp_path / "killed"
    runner.run_training(spec(), out, progress=False, stop_after_chunks=2)
    resumed = runner.resume_training(out, progress=False)
    jax.tree.map(np.testing.assert_array_equal, resumed.state, full_run.state)
    assert RunDir(out, must_exist=True).read_metrics() == full_run.run_dir.read_metrics()


def test_cli_trains_it_and_refuses_to_reuse_the_directory(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "bandit_lag", "--problem", "three_arms", "--seeds", "2", "--set", "num_updates=40",
            "--set", "cost_limit=0.3", "--chunks", "2", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    assert "episode_return" in capsys.readouterr().out
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(SystemExit):
        cli.main(["eval", str(out)])  # not an environment policy: a clear error, exit 2
    assert "environment policy" in capsys.readouterr().err


def test_docs_page_shows_the_tested_example():
    page = (Path(__file__).parents[1] / "docs" / "adding_a_method.md").read_text()
    source = Path(cb.__file__).read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert any(block.strip() and block.strip() in source for block in blocks)
    body = source[source.index("class Bandit(NamedTuple)"):]
    assert body.strip() in page, "docs/adding_a_method.md must show the example's code exactly as tested"
    assert get_algorithm("bandit_lag").problems.names() == ["three_arms"]
