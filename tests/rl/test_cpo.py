"""CPO and TRPO-Lagrangian learners: jit/vmap equivalence, constraint satisfaction, validation, the runner.

The learning test uses ``SafeGridWorld`` (the ``routes`` layout: a 3-hazard shortcut, a 1-hazard route and a safe
detour), not ``SafePointGoal1``: on a 2-core CPU PointGoal needs ~1e6 environment steps per seed before PPO's
cost separates from a constrained learner's, far beyond a CI test's budget. The gridworld's unconstrained optimum
costs 3 per episode, so with a limit of 1 the constrained and unconstrained learners are cleanly separated within
~20k steps. The single-update maths (every CPO case against a QP solver) is pinned in ``test_trust_region.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import envs, runner, sweep
from jaxsafe.algorithms import get_algorithm
from jaxsafe.rl import cpo, ppo

COST_LIMIT = 1.0
CPO_CONFIG = cpo.CPOConfig(num_envs=16, num_steps=32, total_steps=16 * 32 * 40, hidden=(32,), method="cpo",
                           critic_epochs=4, critic_minibatches=2, cg_iters=10, line_search_steps=10)
PPO_CONFIG = ppo.PPOConfig(num_envs=16, num_steps=32, total_steps=16 * 32 * 40, multiplier="lagrangian",
                           hidden=(32,), num_minibatches=2)
PPO_HPARAMS = PPO_CONFIG.default_hparams().replace(learning_rate=jnp.float32(1e-3), entropy_coef=jnp.float32(0.02),
                                                   cost_limit=jnp.float32(COST_LIMIT))


@pytest.fixture(scope="module")
def gridworld():
    return envs.make("SafeGridWorld")


@pytest.fixture(scope="module")
def cpo_run(gridworld):
    """CPO over 2 seeds at cost limit 1, as one vmapped program."""
    env, params = gridworld
    grid = sweep.make_grid(CPO_CONFIG.default_hparams(), seeds=2, cost_limit=[COST_LIMIT])
    train = cpo.make_train(CPO_CONFIG, env, params)
    return grid, sweep.run_grid(train, grid), train


@pytest.fixture(scope="module")
def ppo_run(gridworld):
    """PPO (multiplier_lr 0: exactly unconstrained) and PPO-Lagrangian, 2 seeds each, one vmapped program."""
    env, params = gridworld
    grid = sweep.make_grid(PPO_HPARAMS, seeds=2, multiplier_lr=[0.0, 0.05])
    return grid, sweep.run_grid(ppo.make_train(PPO_CONFIG, env, params), grid)


def _tail_mean(series):
    n = series.shape[-1]
    return np.nanmean(np.asarray(series)[..., int(0.75 * n):], axis=-1)


def test_vmapped_lane_equals_single_run(gridworld):
    """A lane of ``jit(vmap(train))`` is the single run, over a few updates.

    Over the learning test's 40 updates the lanes drift apart at the 1e-3 level: vmapped and unbatched XLA
    reductions round differently, and a line-search acceptance (``surrogate >= surrogate_before``) or CPO case that
    sits on a boundary amplifies that. So the equality is checked where it is a statement about the program.
    """
    env, params = gridworld
    config = cpo.CPOConfig(**{**CPO_CONFIG.__dict__, "total_steps": 16 * 32 * 4})
    grid = sweep.make_grid(config.default_hparams(), seeds=2, cost_limit=[0.5, COST_LIMIT])
    train = cpo.make_train(config, env, params)
    result = sweep.run_grid(train, grid)
    lane = 3
    alone = jax.jit(train)(grid.keys[lane], sweep.lane(grid.hparams, lane))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 sweep.lane(result.params, lane), alone.params)
    for name in ("episode_cost", "episode_return", "case", "step_fraction", "constraint_value"):
        np.testing.assert_allclose(result.metrics[name][lane], alone.metrics[name], rtol=1e-5, atol=1e-6)


def test_constrained_learners_meet_limit_where_ppo_does_not(cpo_run, ppo_run):
    grid, result, _ = cpo_run
    cpo_cost = _tail_mean(result.metrics["episode_cost"])
    cpo_return = _tail_mean(result.metrics["episode_return"])
    ppo_grid, ppo_result = ppo_run
    ppo_cost = _tail_mean(ppo_result.metrics["episode_cost"])
    for lane, point in enumerate(ppo_grid.points):
        if point["multiplier_lr"] == 0.0:
            assert ppo_cost[lane] > 2.0 * COST_LIMIT, (point, ppo_cost[lane])  # unconstrained: the shortcut
        else:
            assert ppo_cost[lane] <= COST_LIMIT + 0.25, (point, ppo_cost[lane])
    assert np.all(cpo_cost <= COST_LIMIT + 0.25), cpo_cost
    assert np.all(cpo_return > 0.2), cpo_return  # and it does reach the goal (the safe detour returns 0.4)
    # every CPO update took a step of the trust-region problem and kept the KL inside the trust region
    kl = np.asarray(result.metrics["approx_kl"])
    assert np.all(kl <= float(CPO_CONFIG.default_hparams().target_kl) + 1e-6)
    assert np.mean(np.asarray(result.metrics["accepted"])) > 0.9


def test_cpo_case_is_the_one_the_constraint_dictates(gridworld):
    """With a limit no policy can reach (1000) every step is feasible and, with a cost gradient of the size the
    gridworld gives (``c^2 / s > 2 delta``), the trust-region step (case 3); before any episode has finished the
    constraint is treated as active, ``c = 0``, which is case 1. With limit 0 the constraint is never satisfied
    (``c >= 0``): only the recovery (0) and recoverable (1) cases can occur, and ``c = 0`` is case 1."""
    env, params = gridworld
    config = cpo.CPOConfig(num_envs=8, num_steps=32, total_steps=8 * 32 * 8, hidden=(16,), critic_minibatches=2,
                           critic_epochs=1, cg_iters=10, line_search_steps=10, method="cpo")
    grid = sweep.make_grid(config.default_hparams(), seeds=2, cost_limit=[0.0, 1000.0])
    metrics = sweep.run_grid(cpo.make_train(config, env, params), grid).metrics
    case, c = np.asarray(metrics["case"]), np.asarray(metrics["constraint_value"])
    nu = np.asarray(metrics["cost_multiplier"])
    unreachable = np.array([p["cost_limit"] == 1000.0 for p in grid.points])
    finished = np.isfinite(np.asarray(metrics["episode_cost"]))
    assert np.all(c[unreachable][finished[unreachable]] < 0)
    np.testing.assert_array_equal(case[unreachable], np.where(c[unreachable] == 0, 1, 3))
    assert np.all(c[~unreachable] >= 0)
    assert set(np.unique(case[~unreachable])) == {0, 1}, case  # both occur on these seeds
    np.testing.assert_array_equal(case[~unreachable][c[~unreachable] == 0], 1)
    np.testing.assert_array_equal(nu[(case == 0) | (case == 3)], 0.0)  # no cost multiplier outside the dual cases


def test_trpo_lagrangian_continuous_actions_multiplier_falls_below_the_limit():
    """TRPO-Lagrangian on a Box action space: natural-gradient steps, and a multiplier that must fall while the
    measured cost is below the limit (projected ascent, exactly), down to 0."""
    env, params = envs.make("SafePendulum", max_steps_in_episode=16)  # one finished episode per env per update
    config = cpo.CPOConfig(num_envs=4, num_steps=16, total_steps=4 * 16 * 4, hidden=(8,), critic_minibatches=2,
                           critic_epochs=1, cg_iters=3, line_search_steps=3, method="trpo_lag")
    limit, lr, initial = 20.0, 0.01, 0.5
    hparams = config.default_hparams().replace(cost_limit=jnp.float32(limit), multiplier_lr=jnp.float32(lr),
                                               initial_multiplier=jnp.float32(initial))
    result = jax.jit(cpo.make_train(config, env, params))(jax.random.PRNGKey(0), hparams)
    cost, multiplier = np.asarray(result.metrics["episode_cost"]), np.asarray(result.metrics["multiplier"])
    assert np.all(cost < limit), cost  # at most 16 costly steps in a 16-step episode
    expected = np.maximum(initial + lr * np.cumsum(cost - limit), 0.0)  # no clipping is hit before it reaches 0
    np.testing.assert_allclose(multiplier, expected, rtol=1e-5, atol=1e-6)
    assert multiplier[0] < initial and multiplier[-1] == 0.0
    assert not np.any(result.metrics["nonfinite"]) and np.all(np.asarray(result.metrics["cost_multiplier"]) == 0)
    act = cpo.make_act(config, env, params)  # CPO's act is PPO's (clipping tested in test_ppo.py)
    obs, key = jnp.zeros(3), jax.random.PRNGKey(1)
    np.testing.assert_array_equal(act(result.params, obs, key), ppo.make_act(config, env, params)(result.params, obs,
                                                                                                    key))


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_envs=0), "num_envs"),
    (dict(method="ppo"), "method"),
    (dict(multiplier="fixed"), "multiplier"),
    (dict(cg_iters=0), "cg_iters"),
    (dict(line_search_steps=0), "line_search_steps"),
    (dict(num_envs=4, num_steps=10, critic_minibatches=3), "critic_minibatches"),
    (dict(total_steps=10), "total_steps"),
    (dict(activation="sigmoid"), "activation"),
])
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        cpo.CPOConfig(**kwargs)


@pytest.mark.parametrize("field,value", [("target_kl", 0.0), ("cost_limit", -1.0), ("gamma", 1.5),
                                         ("critic_learning_rate", -1e-3), ("damping", -0.1),
                                         ("line_search_decay", 1.0), ("multiplier_lr", float("nan")),
                                         ("margin_lr", -0.05)])
def test_bad_hparams_name_field(field, value):
    with pytest.raises(ValueError, match=f"CPOHParams.{field}"):
        cpo.CPOConfig().default_hparams().replace(**{field: value}).validate()


def test_registered_and_runner_end_to_end(tmp_path):
    assert get_algorithm("cpo").make_config().method == "cpo"
    assert get_algorithm("trpo_lag").make_config().method == "trpo_lag"
    with pytest.raises(ValueError, match="target_kl"):
        runner.make_spec("cpo", "SafeGridWorld", overrides={"target_kl": "-1"})
    tiny = dict(num_envs=4, num_steps=16, total_steps=4 * 16 * 4, critic_minibatches=2, critic_epochs=1,
                cg_iters=3, line_search_steps=3, hidden="8", target_kl="0.02")
    spec = runner.make_spec("cpo", "SafeGridWorld", seeds=2, grid={"cost_limit": [1.0]}, overrides=tiny,
                            env_overrides={"max_steps": 20}, num_chunks=2)
    assert spec.config["method"] == "cpo" and spec.hparams["target_kl"] == pytest.approx(0.02)
    result = runner.run_training(spec, tmp_path / "run", progress=False, plot=False)
    rows = result.run_dir.read_metrics()
    assert len(rows) == 2 * 2 and rows[-1]["env_steps"] == 4 * 64
    assert result.summary["complete"]


def test_two_costs_trpo_lagrangian_has_a_multiplier_per_cost_and_cpo_refuses(two_cost_gridworld):
    env, params = two_cost_gridworld
    with pytest.raises(ValueError, match="method='cpo' handles one cost.*2 costs.*trpo_lag"):
        cpo.make_train_parts(CPO_CONFIG, env, params)
    config = cpo.CPOConfig(num_envs=8, num_steps=32, total_steps=8 * 32 * 3, hidden=(8,), critic_minibatches=2,
                           critic_epochs=1, cg_iters=3, line_search_steps=3, method="trpo_lag")
    limits = np.array([0.5, 25.0], np.float32)
    hparams = config.default_hparams(2).replace(cost_limit=jnp.asarray(limits), multiplier_lr=jnp.float32(0.2),
                                                initial_multiplier=jnp.float32(0.1))
    result = jax.jit(cpo.make_train(config, env, params))(jax.random.PRNGKey(0), hparams)
    cost, multiplier = np.asarray(result.metrics["episode_cost"]), np.asarray(result.metrics["multiplier"])
    assert cost.shape == multiplier.shape == result.metrics["constraint_value"].shape == (3, 2)
    expected = np.full(2, 0.1)
    for k in range(3):
        measured = np.where(np.isnan(cost[k]), limits, cost[k])
        expected = np.maximum(expected + 0.2 * (measured - limits), 0.0)
        np.testing.assert_allclose(multiplier[k], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.metrics["episode_cost_total"], cost.sum(-1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"CPOHParams.cost_limit must have shape \(2,\)"):
        jax.eval_shape(cpo.make_train(config, env, params), jax.random.PRNGKey(0), config.default_hparams())
