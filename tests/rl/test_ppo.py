"""PPO and PPO-Lagrangian: learning thresholds with fixed seeds, the exact constrained optimum, vmapped lanes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import envs, sweep
from jaxsafe.envs.core import Wrapper
from jaxsafe.envs.gridworld import route_optimum
from jaxsafe.rl import ppo

GRID_CONFIG = ppo.PPOConfig(num_envs=16, num_steps=32, total_steps=80_000, multiplier="lagrangian", hidden=(32,),
                            num_minibatches=2)
GRID_HPARAMS = GRID_CONFIG.default_hparams().replace(learning_rate=jnp.float32(1e-3), entropy_coef=jnp.float32(0.02))
# lane order: seed-major; multiplier_lr = 0 with initial multiplier 0 is exactly unconstrained PPO
GRID_POINTS = dict(cost_limit=[0.0, 1.0], multiplier_lr=[0.0, 0.05])


@pytest.fixture(scope="module")
def gridworld():
    return envs.make("SafeGridWorld")


@pytest.fixture(scope="module")
def grid_run(gridworld):
    env, params = gridworld
    grid = sweep.make_grid(GRID_HPARAMS, seeds=2, **GRID_POINTS)
    train = ppo.make_train(GRID_CONFIG, env, params)
    return grid, sweep.run_grid(train, grid), train


def _tail_mean(series):
    n = series.shape[-1]
    return np.nanmean(np.asarray(series)[..., int(0.75 * n):], axis=-1)


def exact_policy_value(env, params, actor_params):
    """Exact (return, cost) of the learned stochastic policy, from the gridworld's tabular model."""
    from jaxsafe.rl.networks import make_actor

    actor = make_actor(env.action_space(params), GRID_CONFIG.hidden, GRID_CONFIG.activation)
    probs = np.asarray(actor.apply(actor_params, jnp.eye(env.num_cells)).probs, np.float64)
    return envs.evaluate_policy(env.to_tabular(params), probs, gamma=1.0)


def test_lagrangian_meets_limits_where_ppo_does_not(grid_run):
    grid, result, _ = grid_run
    cost = _tail_mean(result.metrics["episode_cost"])
    for lane, point in enumerate(grid.points):
        if point["multiplier_lr"] == 0.0:
            assert cost[lane] > 2.5, (point, cost[lane])  # unconstrained: the 3-hazard shortcut
        else:
            assert cost[lane] <= point["cost_limit"] + 0.15, (point, cost[lane])


def test_learned_constrained_policy_matches_closed_form(grid_run, gridworld):
    env, params = gridworld
    grid, result, _ = grid_run
    for lane, point in enumerate(grid.points):
        if point["multiplier_lr"] == 0.0 or point["cost_limit"] != 0.0:
            continue
        actor_params = sweep.lane(result.params.actor, lane)
        value, cost = exact_policy_value(env, params, actor_params)
        optimum, optimum_cost, _ = route_optimum(0.0, "routes")
        assert cost[0] <= 0.05, (point, cost)
        assert value >= optimum - 0.03, (point, value, optimum)
    # and the unconstrained learner finds the unconstrained optimum (the shortcut)
    lane = next(i for i, p in enumerate(grid.points) if p["multiplier_lr"] == 0.0)
    value, cost = exact_policy_value(env, params, sweep.lane(result.params.actor, lane))
    assert value >= route_optimum(10.0, "routes")[0] - 0.03 and cost[0] > 2.5


def test_multiplier_rises_while_violated(grid_run):
    grid, result, _ = grid_run
    for lane, point in enumerate(grid.points):
        if point["multiplier_lr"] == 0.0:
            np.testing.assert_array_equal(result.metrics["multiplier"][lane], 0.0)
            continue
        cost = np.asarray(result.metrics["episode_cost"][lane])
        multiplier = np.asarray(result.metrics["multiplier"][lane])
        violated = np.isfinite(cost[1:]) & (cost[1:] > point["cost_limit"])
        rises = np.diff(multiplier) > 0
        assert violated.any()
        # the multiplier is updated from the same episode cost that metrics report
        np.testing.assert_array_equal(rises[violated], True)


def test_vmapped_lane_equals_single_run(grid_run):
    grid, result, train = grid_run
    single = jax.jit(train)
    for lane in (1, len(grid.points) - 1):
        alone = single(grid.keys[lane], sweep.lane(grid.hparams, lane))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                     sweep.lane(result.params, lane), alone.params)
        np.testing.assert_allclose(result.metrics["episode_cost"][lane], alone.metrics["episode_cost"],
                                   rtol=1e-5, atol=1e-5)


def test_metrics_have_update_axis(grid_run):
    grid, result, _ = grid_run
    n = GRID_CONFIG.num_updates
    for name in ("env_steps", "episode_return", "episode_cost", "multiplier", "actor_loss", "value_loss",
                 "cost_value_loss", "entropy", "approx_kl"):
        assert result.metrics[name].shape == (grid.size, n), name
    np.testing.assert_array_equal(result.metrics["env_steps"][0], GRID_CONFIG.batch_size * np.arange(1, n + 1))


@pytest.mark.slow
def test_ppo_solves_cartpole():
    env, params = envs.make("SafeCartPole")
    config = ppo.PPOConfig(num_envs=16, num_steps=128, total_steps=120_000, multiplier="none")
    result = jax.jit(ppo.make_train(config, env, params))(jax.random.PRNGKey(0), config.default_hparams())
    assert _tail_mean(result.metrics["episode_return"]) > 150.0


class EchoAction(Wrapper):
    """Pays as reward the first action component the environment received (so a test can see the clipping)."""

    def reset(self, key, params):
        return self.env.reset(key, params)

    def step(self, key, state, action, params):
        state, timestep = self.env.step(key, state, action, params)
        return state, timestep._replace(reward=jnp.asarray(action, jnp.float32).reshape(-1)[0])


def widened(actor_params, mean: float, log_std: float):
    """A Gaussian actor's params with the mean head's bias set to ``mean`` and its log std to ``log_std``."""
    inner = dict(actor_params["params"])
    inner["Dense_0"] = dict(inner["Dense_0"], bias=jnp.full_like(inner["Dense_0"]["bias"], mean))
    inner["log_std"] = jnp.full_like(inner["log_std"], log_std)
    return {"params": inner}


def test_continuous_actions_sampled_raw_and_clipped_for_the_env():
    """On a Box space the rollout keeps the raw Gaussian sample (its log-prob is of that value) while the
    environment receives it clipped; ``make_act`` returns the clipped sample, or the clipped mean."""
    from jaxsafe.envs.core import wrap_for_training
    from jaxsafe.rl.networks import Critic, make_actor

    env, params = envs.make("SafePendulum")
    env = EchoAction(env)
    config = ppo.PPOConfig(num_envs=4, num_steps=16, total_steps=128, num_minibatches=2, hidden=(8,))
    result = jax.jit(ppo.make_train(config, env, params))(jax.random.PRNGKey(0), config.default_hparams())
    assert result.metrics["actor_loss"].shape == (2,) and np.all(np.isfinite(result.metrics["total_loss"]))
    space = env.action_space(params)
    actor, critic = make_actor(space, config.hidden, config.activation), Critic(config.hidden, config.activation)
    # a policy centred at 1.0 with std e^1.1 = 3: about half of its samples leave the box [-2, 2]
    wide = result.params._replace(actor=widened(result.params.actor, mean=1.0, log_std=1.1))
    vec_env = wrap_for_training(env, config.num_envs)
    collect = ppo.make_collect_rollout(vec_env, params, actor, critic, space, config.num_steps)
    env_state, timestep = vec_env.reset(jax.random.PRNGKey(1), params)
    traj = jax.jit(collect)(wide, env_state, timestep.obs, jax.random.PRNGKey(2)).traj
    raw = np.asarray(traj.action[..., 0])
    assert np.mean(np.abs(raw) > 2.0) > 0.25, raw  # raw samples lie outside the box ...
    np.testing.assert_array_equal(traj.reward, np.clip(raw, -2.0, 2.0))  # ... the environment got them clipped
    np.testing.assert_allclose(traj.log_prob, actor.apply(wide.actor, traj.obs).log_prob(traj.action), rtol=1e-5)

    act = ppo.make_act(config, env, params)
    obs, keys = jnp.array([1.0, 0.0, 0.0]), jax.random.split(jax.random.PRNGKey(3), 256)
    actions = jax.vmap(lambda k: act(wide, obs, k))(keys)
    samples = jax.vmap(lambda k: actor.apply(wide.actor, obs).sample(seed=k))(keys)
    assert np.mean(np.abs(np.asarray(samples)) > 2.0) > 0.25
    np.testing.assert_array_equal(actions, np.clip(samples, -2.0, 2.0))
    far = result.params._replace(actor=widened(result.params.actor, mean=5.0, log_std=0.0))
    np.testing.assert_allclose(act(far, obs, keys[0], True), [2.0])  # the mean 5 (about), clipped to the bound


@pytest.mark.parametrize("kwargs,field", [
    (dict(num_envs=0), "num_envs"),
    (dict(num_envs=4, num_steps=10, num_minibatches=3), "num_minibatches"),
    (dict(multiplier="adam"), "multiplier"),
    (dict(total_steps=10), "total_steps"),
    (dict(activation="sigmoid"), "activation"),
])
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ppo.PPOConfig(**kwargs)


@pytest.mark.parametrize("field,value", [("learning_rate", -1e-3), ("cost_limit", -1.0), ("gamma", 1.5),
                                         ("clip_eps", 0.0), ("multiplier_lr", float("nan"))])
def test_bad_hparams_name_field(field, value):
    with pytest.raises(ValueError, match=f"PPOHParams.{field}"):
        ppo.PPOConfig().default_hparams().replace(**{field: value}).validate()


# ------------------------------------------------------------------------------------------------- several costs


TWO_COST_CONFIG = ppo.PPOConfig(num_envs=8, num_steps=32, total_steps=8 * 32 * 10, hidden=(16,), num_minibatches=2)
TWO_COST_LIMITS = np.array([0.5, 25.0], np.float32)  # cost 0 is violated at first, cost 1 never (c / 2 <= 25)


@pytest.fixture(scope="module")
def two_cost_run(two_cost_gridworld):
    env, params = two_cost_gridworld
    hparams = TWO_COST_CONFIG.default_hparams(env.n_costs).replace(
        cost_limit=jnp.asarray(TWO_COST_LIMITS), multiplier_lr=jnp.float32(0.2), initial_multiplier=jnp.float32(0.1))
    grid = sweep.make_grid(hparams, seeds=2)
    return env, params, hparams, sweep.run_grid(ppo.make_train(TWO_COST_CONFIG, env, params), grid)


def test_two_costs_one_multiplier_per_cost(two_cost_run):
    env, params, hparams, result = two_cost_run
    metrics = result.metrics
    n = TWO_COST_CONFIG.num_updates
    assert metrics["episode_cost"].shape == (2, n, 2) and metrics["multiplier"].shape == (2, n, 2)
    assert metrics["step_cost"].shape == (2, n, 2) and metrics["episode_return"].shape == (2, n)
    cost = np.asarray(metrics["episode_cost"])
    finite = np.isfinite(cost[..., 0])
    assert finite.sum() > n  # episodes finished in most updates
    np.testing.assert_array_equal(cost[..., 1][finite], 0.5 * cost[..., 0][finite])  # each cost measured apart
    np.testing.assert_allclose(metrics["episode_cost_total"], cost.sum(-1), rtol=1e-6)
    # each multiplier follows its own projected-ascent rule, m_k <- max(0, m_k + lr (J_k - d_k))
    multiplier = np.asarray(metrics["multiplier"])
    expected = np.full((2, 2), float(hparams.initial_multiplier))
    for k in range(n):
        measured = np.where(np.isnan(cost[:, k]), TWO_COST_LIMITS, cost[:, k])
        expected = np.maximum(expected + float(hparams.multiplier_lr) * (measured - TWO_COST_LIMITS), 0.0)
        np.testing.assert_allclose(multiplier[:, k], expected, rtol=1e-5, atol=1e-6)
    assert np.all(cost[..., 1][finite] <= TWO_COST_LIMITS[1])
    np.testing.assert_array_equal(multiplier[:, 1:, 1], 0.0)  # the loose limit drove its multiplier to 0 ...
    assert np.all(multiplier[:, :, 0].max(-1) > float(hparams.initial_multiplier))  # ... the tight one up


def test_two_costs_need_one_limit_per_cost(gridworld, two_cost_gridworld):
    env, params = two_cost_gridworld
    train = ppo.make_train(TWO_COST_CONFIG, env, params)
    with pytest.raises(ValueError, match=r"PPOHParams.cost_limit must have shape \(2,\).*2 costs.*got shape \(\)"):
        jax.eval_shape(train, jax.random.PRNGKey(0), TWO_COST_CONFIG.default_hparams())
    with pytest.raises(ValueError, match=r"PPOHParams.cost_limit must have shape \(\).*1 cost\b"):
        jax.eval_shape(ppo.make_train(TWO_COST_CONFIG, gridworld), jax.random.PRNGKey(0),
                       TWO_COST_CONFIG.default_hparams(2))


# ------------------------------------------------------------------- two costs against the exact constrained optimum

#: One limit per cost on the ``two_costs`` gridworld (H hazards, then W hazards). (0, 1): the H detour and the
#: single-W middle row, both constraints binding; (0, 3): the H detour and the W shortcut, the W limit loose. The
#: W route differs only through W's own limit. (Limits that need the H middle row, such as (1, 1), are not used:
#: random exploration meets H hazards long before it reaches the goal, the H multiplier overshoots and the policy
#: settles on the H detour before the multiplier has come back down, a local optimum of PPO-Lagrangian.)
TWO_COST_CASES = ((0.0, 1.0), (0.0, 3.0))
TWO_COST_GRID_CONFIG = ppo.PPOConfig(num_envs=16, num_steps=32, total_steps=100_000, hidden=(32,), num_minibatches=2)


@pytest.fixture(scope="module")
def two_cost_learning():
    env, params = envs.make("SafeGridWorld", layout="two_costs")
    base = TWO_COST_GRID_CONFIG.default_hparams(env.n_costs).replace(
        learning_rate=jnp.float32(1e-3), entropy_coef=jnp.float32(0.02), multiplier_lr=jnp.float32(0.05))
    points = [dict(seed=seed, cost_limit=limits) for seed in (0, 1) for limits in TWO_COST_CASES]
    hparams = jax.tree.map(lambda *lanes: jnp.stack(lanes),
                           *[base.replace(cost_limit=jnp.asarray(p["cost_limit"], jnp.float32)) for p in points])
    grid = sweep.Grid(jnp.stack([jax.random.PRNGKey(p["seed"]) for p in points]), hparams, points, ("cost_limit",))
    return env, params, grid, sweep.run_grid(ppo.make_train(TWO_COST_GRID_CONFIG, env, params), grid)


@pytest.mark.slow
def test_two_cost_lagrangian_meets_each_limit_at_the_exact_optimum(two_cost_learning):
    from jaxsafe.exact.tabular import evaluate_policy, solve_constrained_mdp
    from jaxsafe.rl.networks import make_actor

    env, params, grid, result = two_cost_learning
    mdp = env.to_tabular(params)
    actor = make_actor(env.action_space(params), TWO_COST_GRID_CONFIG.hidden, TWO_COST_GRID_CONFIG.activation)
    for lane, point in enumerate(grid.points):
        limits = np.asarray(point["cost_limit"])
        optimum = solve_constrained_mdp(mdp, 1.0, limits)
        probs = np.asarray(actor.apply(sweep.lane(result.params.actor, lane), jnp.eye(env.num_cells)).probs)
        exact = evaluate_policy(mdp, probs, 1.0)
        np.testing.assert_allclose(np.asarray(exact.cost_values), limits, atol=0.1, err_msg=str(point))
        assert abs(float(exact.value) - optimum.value) <= 0.03, (point, float(exact.value), optimum.value)
        # the episodes the learner measured agree, cost by cost
        measured = np.nanmean(np.asarray(result.metrics["episode_cost"][lane])[-10:], axis=0)
        np.testing.assert_allclose(measured, limits, atol=0.25, err_msg=str(point))
        # the binding H limit (0) was enforced by its own multiplier
        assert float(np.asarray(result.metrics["multiplier"][lane])[-1, 0]) > 0.5, point


def test_omnisafe_adam_multiplier_meets_the_limit_and_follows_its_rule(gridworld):
    """``multiplier="lagrangian_adam"`` (OmniSafe's Adam step on the multiplier): the lanes meet the limit, and
    the logged multiplier is the handler replayed on the logged episode costs (the update's order and inputs)."""
    from jaxsafe import constraints

    env, params = gridworld
    config = ppo.PPOConfig(num_envs=16, num_steps=32, total_steps=80_000, multiplier="lagrangian_adam",
                           hidden=(32,), num_minibatches=2)
    grid = sweep.make_grid(GRID_HPARAMS, seeds=2, cost_limit=[1.0], multiplier_lr=[0.5])
    result = sweep.run_grid(ppo.make_train(config, env, params), grid)
    costs = np.asarray(result.metrics["episode_cost"])
    assert np.all(_tail_mean(costs) <= 1.15), _tail_mean(costs)
    handler, lane_hparams = constraints.lagrangian_adam(), sweep.lane(grid.hparams, 0)
    state, replayed = handler.init(lane_hparams), []
    for cost in costs[0]:
        measured = constraints.measured_or_limit(jnp.float32(cost), lane_hparams.cost_limit)
        state = handler.update(state, measured, lane_hparams.cost_limit, lane_hparams)
        replayed.append(float(state.multiplier))
    np.testing.assert_allclose(np.asarray(result.metrics["multiplier"])[0], replayed, rtol=1e-4, atol=1e-5)
    assert max(replayed) > 5.0  # it did have to rise, about multiplier_lr per update
