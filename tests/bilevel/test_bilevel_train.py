"""The leader loop: validation, vmap lanes, learning on tiny problems, and the CLI run directory."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.bilevel import problems
from jaxsafe.bilevel.train import BilevelConfig, BilevelHParams, make_train


@pytest.mark.parametrize("field, value", [
    ("estimator", "magic"), ("num_iterations", 0), ("num_samples", 1), ("follower_iterations", -1),
    ("critic", "mc"), ("follower_model", "psychic"), ("num_iterations", 2.5), ("follower_carry", "yes"),
])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BilevelConfig(**{field: value})


def test_estimator_must_fit_the_problem(reward_mdp, random_game):
    with pytest.raises(ValueError, match="estimator"):
        make_train(BilevelConfig(estimator="hpgd_mc"), random_game)
    with pytest.raises(ValueError, match="estimator"):
        make_train(BilevelConfig(estimator="bchg_no_guidance"), reward_mdp)
    with pytest.raises(ValueError, match="follower_model"):
        make_train(BilevelConfig(follower_model="estimated"), reward_mdp)


def _stack(hparams: BilevelHParams, **columns) -> BilevelHParams:
    size = len(next(iter(columns.values())))
    full = {k: jnp.broadcast_to(v, (size,)) for k, v in hparams._asdict().items()}
    full.update({k: jnp.asarray(v, jnp.float32) for k, v in columns.items()})
    return BilevelHParams(**full)


@pytest.fixture(scope="module")
def mdp_train(reward_mdp):
    config = BilevelConfig(estimator="bchg", num_iterations=60, num_samples=64)
    return config, jax.jit(make_train(config, reward_mdp)), jax.jit(jax.vmap(make_train(config, reward_mdp)))


def test_vmapped_lane_equals_single_run(mdp_train, reward_mdp):
    config, single, batched = mdp_train
    hparams = config.default_hparams(reward_mdp)
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    grid = _stack(hparams, leader_lr=[0.05, 0.2, 0.1], follower_temperature=[0.5, 0.3, 0.5])
    result = batched(keys, grid)
    lane = jax.tree.map(lambda v: v[1], grid)
    alone = single(keys[1], lane)
    np.testing.assert_allclose(result.params[1], alone.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.metrics["leader_value"][1], alone.metrics["leader_value"], rtol=1e-5,
                               atol=1e-6)
    assert result.metrics["leader_value"].shape == (3, config.num_iterations)


@pytest.mark.parametrize("estimator", ["bchg", "oracle"])
def test_leader_improves_on_random_mdp(estimator, reward_mdp):
    config = BilevelConfig(estimator=estimator, num_iterations=150, num_samples=128)
    hparams = config.default_hparams(reward_mdp)._replace(leader_lr=jnp.float32(0.1))
    result = jax.jit(make_train(config, reward_mdp))(jax.random.PRNGKey(0), hparams)
    values = np.asarray(result.metrics["leader_value"])
    assert values[-10:].mean() > values[0] + 0.1, values[[0, -1]]


def test_bchg_beats_no_guidance_on_discrete_toy():
    game = problems.discrete_toy(1.0)
    gaps = {}
    for estimator in ("bchg", "bchg_no_guidance"):
        config = BilevelConfig(estimator=estimator, num_iterations=150, num_samples=300)
        result = jax.jit(make_train(config, game))(jax.random.PRNGKey(0), config.default_hparams(game))
        gaps[estimator] = float(result.metrics["optimality_gap"][-1])
    assert gaps["bchg"] < 0.2 and gaps["bchg_no_guidance"] > 0.8, gaps


def test_partly_converged_follower_runs(reward_mdp):
    config = BilevelConfig(estimator="bchg", num_iterations=5, num_samples=32, follower_iterations=3,
                           follower_carry=False)
    result = make_train(config, reward_mdp)(jax.random.PRNGKey(0), config.default_hparams(reward_mdp))
    assert np.all(np.isfinite(result.metrics["leader_value"]))


def test_cli_writes_run_directory(tmp_path):
    import argparse

    from jaxsafe.bilevel import cli

    parser = argparse.ArgumentParser()
    cli.add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bilevel", "--problem", "discrete_toy_r1", "--estimator", "bchg", "bchg_no_guidance",
                              "--seeds", "2", "--iters", "5", "--samples", "50", "--out", str(tmp_path / "run")])
    args.func(args)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["problem"] == "discrete_toy_r1"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5 and {"run", "seed", "iteration", "leader_value"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"bchg", "bchg_no_guidance"} and "mean" in summary["bchg"]["final_leader_value"]
    assert (run / "curves.png").stat().st_size > 1000
