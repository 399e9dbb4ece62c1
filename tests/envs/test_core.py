"""The safe-environment contract: adapter, wrappers, registry, gridworld exact model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import envs
from jaxsafe.envs.core import AutoReset, EpisodeStats, check_action
from jaxsafe.envs.gridworld import GridWorld, route_optimum, two_costs_optimum
from jaxsafe.exact import tabular


@pytest.mark.parametrize("name", ["SafeCartPole", "SafePendulum", "SafeGridWorld"])
def test_reset_step_contract_jit_vmap_and_determinism(name):
    env, params = envs.make(name)
    vec = envs.wrap_for_training(env, 3)
    space = env.action_space(params)

    def rollout(key):
        reset_key, key = jax.random.split(key)
        state, ts = vec.reset(reset_key, params)

        def body(carry, k):
            state, _ = carry
            a_key, s_key = jax.random.split(k)
            action = jax.vmap(space.sample)(jax.random.split(a_key, 3))
            state, ts = vec.step(s_key, state, action, params)
            return (state, ts), ts

        _, traj = jax.lax.scan(body, (state, ts), jax.random.split(key, 40))
        return ts, traj

    ts0, traj = jax.jit(rollout)(jax.random.PRNGKey(0))
    _, traj_again = jax.jit(rollout)(jax.random.PRNGKey(0))
    assert traj.cost.shape == (40, 3, env.n_costs) and traj.reward.shape == (40, 3)
    assert set(ts0.info) == set(traj.info)  # same info keys on reset and step
    assert bool(jnp.all(traj.cost >= 0))
    jax.tree.map(np.testing.assert_array_equal, traj, traj_again)
    _, traj_other = jax.jit(rollout)(jax.random.PRNGKey(1))
    assert not np.array_equal(np.asarray(traj.obs), np.asarray(traj_other.obs))


def test_cartpole_cost_is_band_indicator():
    env, params = envs.make("SafeCartPole", cost_x_limit=0.05)
    vec = envs.wrap_for_training(env, 8)
    state, ts = vec.reset(jax.random.PRNGKey(0), params)
    always_right = jnp.ones((8,), jnp.int32)
    costs, positions = [], []
    step = jax.jit(vec.step)
    for i in range(30):
        state, ts = step(jax.random.PRNGKey(i), state, always_right, params)
        costs.append(ts.cost[:, 0])
        positions.append(ts.info["cart_position"])  # after auto-reset this is the reset state's x...
        # ...so recompute from the pre-reset observation, which is what the cost compared
        positions[-1] = ts.info["final_obs"][:, 0]
    costs, positions = np.asarray(costs), np.asarray(positions)
    np.testing.assert_array_equal(costs, (np.abs(positions) > 0.05).astype(np.float32))
    assert costs.sum() > 0 and (costs == 0).sum() > 0


def test_pendulum_cost_is_speed_indicator():
    env, params = envs.make("SafePendulum", cost_speed_limit=1.0)
    state, ts = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step)
    costs, speeds = [], []
    for i in range(60):
        state, ts = step(jax.random.PRNGKey(i), state, jnp.array([2.0]), params)
        costs.append(float(ts.cost[0]))
        speeds.append(float(ts.info["angular_speed"]))
        np.testing.assert_allclose(ts.obs[2], state.theta_dot)
    assert costs == [float(s > 1.0) for s in speeds]
    assert 0 < sum(costs) < 60


def test_auto_reset_keeps_final_obs_and_episode_stats():
    env, params = envs.make("SafeGridWorld", layout="corridor")
    wrapped = EpisodeStats(AutoReset(env))
    state, ts = wrapped.reset(jax.random.PRNGKey(0), params)
    # corridor: straight right reaches the goal in 4 steps through 3 hazards
    rewards, costs = [], []
    for i in range(4):
        state, ts = wrapped.step(jax.random.PRNGKey(i), state, jnp.int32(1), params)
        rewards.append(float(ts.reward))
        costs.append(float(ts.cost[0]))
    assert bool(ts.terminated) and bool(ts.info["episode_done"]) and bool(ts.info["episode_valid"])
    np.testing.assert_allclose(float(ts.info["episode_return"]), sum(rewards), rtol=1e-6)
    assert float(ts.info["episode_cost"][0]) == sum(costs) == 3.0
    assert int(ts.info["episode_length"]) == 4
    goal = env._is_goal
    assert goal[int(np.argmax(ts.info["final_obs"]))]  # pre-reset observation is the goal cell
    assert not goal[int(np.argmax(ts.obs))]  # returned observation is the fresh episode's start
    assert int(state.episode_length) == 0 and float(state.episode_return) == 0.0


def test_truncation_is_not_termination():
    env, params = envs.make("SafeGridWorld", max_steps=3)
    state, ts = env.reset(jax.random.PRNGKey(0), params)
    for i in range(3):
        state, ts = env.step(jax.random.PRNGKey(i), state, jnp.int32(3), params)  # walk into the wall
    assert bool(ts.truncated) and not bool(ts.terminated)


def test_registry_errors_list_valid_names():
    with pytest.raises(ValueError, match="SafeCartPole"):
        envs.make("SafeCartPol")
    with pytest.raises(ValueError, match="cost_x_limit"):
        envs.make("SafeCartPole", cost_limit=3)
    env, params = envs.make("SafeGridWorld", layout="four_rooms", slip_prob=0.1)
    assert env.layout_name == "four_rooms" and params.slip_prob == 0.1
    with pytest.raises(ValueError, match="unknown layout"):
        envs.make("SafeGridWorld", layout="nowhere")
    assert {"SafeCartPole", "SafePendulum", "SafeGridWorld"} <= set(envs.list_envs())


@pytest.mark.parametrize("name, override, message", [
    ("SafeCartPole", dict(cost_x_limit=-0.1), r"SafeCartPole: params.cost_x_limit must be a finite distance >= 0"),
    ("SafeCartPole", dict(max_steps_in_episode=0), r"params.max_steps_in_episode must be an integer >= 1"),
    ("SafePendulum", dict(cost_speed_limit=float("nan")), r"params.cost_speed_limit must be"),
    ("SafeGridWorld", dict(slip_prob=1.5), r"SafeGridWorld: params.slip_prob must be a probability in \[0, 1\]"),
    ("SafeGridWorld", dict(max_steps=0), r"params.max_steps must be an integer >= 1"),
    ("ChancePoint2D", dict(sigma=-1.0), r"ChancePoint2D: params.sigma must be >= 0, got -1.0"),
])
def test_registry_rejects_out_of_range_params_before_compiling(name, override, message):
    with pytest.raises(ValueError, match=message):
        envs.make(name, **override)
    env, params = envs.make(name)
    with pytest.raises(ValueError, match=message):  # the same check on params built by hand
        env.check_params(params.replace(**override))
    env.check_params(params)  # the defaults pass


def test_check_action():
    env, params = envs.make("SafePendulum")
    check_action(env, jnp.zeros((1,)), params)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        check_action(env, jnp.zeros((2,)), params)
    cart, cart_params = envs.make("SafeCartPole")
    with pytest.raises(ValueError, match="integer"):
        check_action(cart, jnp.zeros(()), cart_params)


@pytest.mark.parametrize("layout", ["corridor", "routes"])
@pytest.mark.parametrize("limit", [0.0, 0.5, 1.0, 1.5, 3.0, 5.0])
def test_closed_form_optimum_matches_exact_lp(layout, limit):
    env = GridWorld(layout)
    solution = tabular.solve_constrained_mdp(env.to_tabular(), gamma=1.0, cost_limits=limit)
    ret, cost, probs = route_optimum(limit, layout)
    np.testing.assert_allclose(solution.value, ret, atol=1e-7)
    np.testing.assert_allclose(solution.cost_values[0], cost, atol=1e-7)
    if layout == "corridor":
        start = int(np.argmax(env.to_tabular().initial))
        # the optimal policy mixes "right" (into the hazards) and a detour move at the start state only
        np.testing.assert_allclose(solution.policy[start, 1], probs[0], atol=1e-6)
    value, cost_value = tabular.evaluate_policy(env.to_tabular(), solution.policy, 1.0)
    np.testing.assert_allclose([value, cost_value[0]], [ret, cost], atol=1e-5)  # float32 linear solve


def test_infeasible_limit_says_minimum():
    env = GridWorld("hazard_room")
    with pytest.raises(ValueError, match="smallest achievable"):
        tabular.solve_constrained_mdp(env.to_tabular(envs.gridworld.GridParams(slip_prob=0.3)), 0.9, -1.0)


@pytest.fixture(scope="module")
def two_costs():
    env, params = envs.make("SafeGridWorld", layout="two_costs")
    return env, params, env.to_tabular(params)


def test_two_cost_gridworld_steps_pay_the_model_costs(two_costs):
    env, params, mdp = two_costs
    assert env.n_costs == 2 and mdp.costs.shape == (env.num_cells, 4, 2)
    _, first = env.reset(jax.random.PRNGKey(0), params)
    assert first.cost.shape == (2,)
    # Without slip every (cell, action) is deterministic: the step's reward and cost vector are the model's.
    cells, actions = np.meshgrid(np.arange(env.num_cells), np.arange(4), indexing="ij")
    states = envs.gridworld.GridState(jnp.asarray(cells.ravel(), jnp.int32), jnp.zeros(cells.size, jnp.int32))
    step = jax.vmap(lambda state, action: env.step(jax.random.PRNGKey(1), state, action, params)[1])
    timesteps = step(states, jnp.asarray(actions.ravel()))
    live = ~np.asarray(mdp.terminal)[cells.ravel()]
    np.testing.assert_array_equal(np.asarray(timesteps.cost)[live], mdp.costs.reshape(-1, 2)[live])
    np.testing.assert_allclose(np.asarray(timesteps.reward)[live], mdp.rewards.reshape(-1)[live], rtol=1e-6)
    assert np.all(mdp.costs.sum(axis=(0, 1)) > 0)  # both kinds of hazard are reachable


@pytest.mark.parametrize("limits", [(1.0, 1.0), (2.0, 0.5), (2.0, 2.0), (0.5, 3.0), (0.0, 0.0), (9.0, 9.0)])
def test_two_cost_gridworld_lp_matches_closed_form(two_costs, limits):
    _, _, mdp = two_costs
    solution = tabular.solve_constrained_mdp(mdp, gamma=1.0, cost_limits=limits)
    ret, costs = two_costs_optimum(limits)
    np.testing.assert_allclose(solution.value, ret, atol=1e-7)
    np.testing.assert_allclose(solution.cost_values, costs, atol=1e-7)
    evaluated = tabular.evaluate_policy(mdp, solution.policy, 1.0)
    np.testing.assert_allclose(evaluated.cost_values, costs, atol=1e-5)
    if limits == (2.0, 0.5):  # the docstring's stochastic case: unique multipliers (0.05, 0.2)
        np.testing.assert_allclose(solution.cost_multipliers, [0.05, 0.2], atol=1e-7)


def test_two_cost_gridworld_documented_limits_are_strictly_between(two_costs):
    _, _, mdp = two_costs
    unconstrained = tabular.solve_constrained_mdp(mdp, 1.0).cost_values
    minimum = tabular.solve_min_cost(mdp, 1.0)
    np.testing.assert_allclose([unconstrained, minimum], [[3.0, 3.0], [0.0, 0.0]], atol=1e-7)
    for limits in ((1.0, 1.0), (2.0, 0.5)):
        optimum = tabular.solve_constrained_mdp(mdp, 1.0, limits).cost_values
        assert np.all(minimum + 0.1 < optimum) and np.all(optimum < unconstrained - 0.1), (limits, optimum)


def test_layout_validation():
    with pytest.raises(ValueError, match="unknown characters"):
        GridWorld("#####\n#S?G#\n#####")
    with pytest.raises(ValueError, match="goal"):
        GridWorld("#####\n#S..#\n#####")
