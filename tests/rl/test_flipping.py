"""Flipping-based policies: the chance-constraint helpers, hull/LP mixing, flip modes, the 2-D point example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import envs
from jaxsafe.envs.core import wrap_for_training
from jaxsafe.envs.point2d import ChancePoint2D, plan_inflated, tracking_policy
from jaxsafe.policy import stateless
from jaxsafe.rl import flipping

# ------------------------------------------------------------------------------------------------ surrogate, estimator


def test_discounted_unsafe_count_hand_values():
    unsafe = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])
    g = 0.9
    want = g**2 + g**3 + g**5
    np.testing.assert_allclose(flipping.discounted_unsafe_count(unsafe, g), want, rtol=1e-6)
    valid = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(flipping.discounted_unsafe_count(unsafe, g, valid), g**2 + g**3, rtol=1e-6)
    batched = jnp.stack([unsafe, 1 - unsafe], 1)  # [T, 2]
    np.testing.assert_allclose(flipping.discounted_unsafe_count(batched, 1.0), [3.0, 2.0])


def test_window_violation_hand_values():
    # one episode: s1..s6 unsafe pattern; windows of 2 starting at safe states s0, s1, s2, s4 (s3 unsafe) ... s4
    unsafe = jnp.array([[0, 0, 1, 0, 0, 0]], jnp.float32)
    # starts k = 0..4 (window (k, k+2] inside 6 steps); s_k safe for k = 0,1,2,4 (s_3 = unsafe[2] is unsafe)
    # violating windows: k=1 -> s2,s3 (s3 unsafe) yes; k=2 -> s3,s4 yes; k=0 -> s1,s2 no; k=4 -> s5,s6 no
    np.testing.assert_allclose(flipping.window_violation_probability(unsafe, 2), 2 / 4)
    np.testing.assert_allclose(flipping.window_violation_probability(unsafe, 3, start="initial"), 1.0)
    np.testing.assert_allclose(flipping.window_violation_probability(unsafe, 2, start="initial"), 0.0)
    # a step outside the episode neither violates nor counts
    valid = jnp.array([[1, 1, 1, 1, 0, 0]], jnp.float32)
    np.testing.assert_allclose(flipping.window_violation_probability(unsafe, 2, valid), 2 / 3)  # k = 0, 1, 2


def test_window_violation_matches_bernoulli_chain_closed_form():
    p, horizon, n, k = 0.04, 7, 4000, 40
    unsafe = jax.random.bernoulli(jax.random.PRNGKey(0), p, (n, k)).astype(jnp.float32)
    want = 1 - (1 - p) ** horizon  # independent steps: conditioning on a safe start changes nothing
    got = float(flipping.window_violation_probability(unsafe, horizon))
    windows = n * (k - horizon + 1)
    se = np.sqrt(want * (1 - want) / windows) * np.sqrt(horizon)  # windows overlap: inflate by sqrt(horizon)
    assert abs(got - want) < 4 * se, (got, want, se)
    got0 = float(flipping.window_violation_probability(unsafe, horizon, start="initial"))
    assert abs(got0 - want) < 4 * np.sqrt(want * (1 - want) / n)


def test_chance_constraint_cost_wrapper_emits_the_surrogate():
    base, params = envs.make("ChancePoint2D", max_steps=30)
    env = flipping.ChanceConstraintCost(base, gamma_unsafe=0.95)

    def run(key):
        state, ts = env.reset(key, params)

        def step(carry, k):
            state, = carry
            state, ts = env.step(k, state, jnp.array([3.0, 3.0]), params)
            return (state,), (ts.cost[0], ts.info["unsafe"])

        _, (cost, unsafe) = jax.lax.scan(step, (state,), jax.random.split(key, 30))
        return cost, unsafe

    cost, unsafe = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), 64))
    assert float(unsafe.sum()) > 0  # the straight line crosses the upper hazard
    np.testing.assert_allclose(cost.sum(1), jax.vmap(flipping.discounted_unsafe_count, (1, None))(unsafe.T, 0.95),
                               rtol=1e-5)
    # it composes with the training wrappers (auto-reset, episode statistics, vectorisation)
    vec = wrap_for_training(env, 4)
    state, ts = vec.reset(jax.random.PRNGKey(1), params)
    state, ts = vec.step(jax.random.PRNGKey(2), state, jnp.ones((4, 2)), params)
    assert ts.cost.shape == (4, 1)
    with pytest.raises(ValueError, match="gamma_unsafe"):
        flipping.ChanceConstraintCost(base, gamma_unsafe=1.5)


# --------------------------------------------------------------------------------------------------------- mixing


def _brute_force(costs, values, budget):
    best = -np.inf
    for i in range(len(costs)):
        for j in range(len(costs)):
            for w in np.linspace(0, 1, 2001):
                c = w * costs[i] + (1 - w) * costs[j]
                if c <= budget + 1e-12:
                    best = max(best, w * values[i] + (1 - w) * values[j])
    return best


@pytest.mark.parametrize("seed", range(12))
def test_mix_for_budget_matches_linprog(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 15))
    costs = rng.uniform(0, 10, n).round(rng.integers(0, 3))  # rounding makes ties
    values = rng.normal(size=n) + 0.3 * costs
    hull = flipping.upper_concave_hull(costs, values)
    assert np.all(np.diff(costs[hull]) > 0) and np.all(np.diff(values[hull]) > 0)
    slopes = np.diff(values[hull]) / np.diff(costs[hull])
    assert np.all(np.diff(slopes) < 1e-12)  # concave
    for budget in np.concatenate([rng.uniform(costs.min(), costs.max() + 1, 6), [costs.min(), costs.max()]]):
        mix = flipping.mix_for_budget(costs, values, budget)
        nu, value = flipping.solve_mixture_lp(values, costs[None], [budget])
        np.testing.assert_allclose(mix.value, value, rtol=1e-9, atol=1e-9)
        assert mix.weights.sum() == pytest.approx(1.0) and np.count_nonzero(mix.weights) <= 2
        assert mix.weights @ costs <= budget + 1e-9
        np.testing.assert_allclose(mix.weights @ values, mix.value, rtol=1e-12, atol=1e-12)
        assert mix.value >= flipping.best_deterministic(costs, values, budget)[1] - 1e-12


def test_mixture_small_cases_by_brute_force():
    costs, values = np.array([0.0, 1.0, 3.0, 4.0]), np.array([0.0, 0.2, 3.0, 3.1])  # convex then flat
    for budget in (0.5, 1.0, 2.0, 3.5, 9.0):
        assert flipping.mix_for_budget(costs, values, budget).value == pytest.approx(
            _brute_force(costs, values, budget), abs=2e-3)
    mix = flipping.mix_for_budget(costs, values, 1.5)
    assert (mix.low, mix.high) == (0, 2) and mix.weight_low == pytest.approx(0.5)  # the dent at cost 1 is skipped
    infeasible = flipping.mix_for_budget(costs + 1, values, 0.5)
    assert not infeasible.feasible and infeasible.low == 0
    assert flipping.best_deterministic(costs + 1, values, 0.5) == (-1, pytest.approx(float("nan"), nan_ok=True))


def test_mixing_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        flipping.mix_for_budget([0.0, 1.0], [1.0], 0.5)
    with pytest.raises(ValueError, match="finite"):
        flipping.upper_concave_hull([0.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="infeasible"):
        flipping.solve_mixture_lp([1.0, 2.0], [[1.0, 2.0]], [0.5])
    with pytest.raises(ValueError, match="mode"):
        flipping.mixture_policy(stateless(lambda o, k: o), stateless(lambda o, k: o), 0.5, mode="sometimes")
    with pytest.raises(TypeError, match="stateless"):
        flipping.mixture_policy(lambda o, k: o, stateless(lambda o, k: o), 0.5)
    with pytest.raises(ValueError, match="horizon"):
        flipping.window_violation_probability(jnp.zeros((2, 5)), 6)


# ------------------------------------------------------------------------------------------------ flip modes


@pytest.fixture(scope="module")
def point2d():
    env, params = envs.make("ChancePoint2D", max_steps=60)
    fast = stateless(lambda obs, key: jnp.array([3.0, 3.0]))  # straight through the upper hazard
    slow = stateless(lambda obs, key: jnp.array([0.5, 0.5]))  # stays well away from both hazards
    return env, params, fast, slow


def test_episode_mixture_reproduces_convex_combination(point2d):
    env, params, fast, slow = point2d
    n, w = 4000, 0.3

    @jax.jit
    def evaluate(key):
        out = []
        for policy in (fast, slow, flipping.mixture_policy(fast, slow, w, "episode"),
                       flipping.mixture_policy(fast, slow, w, "step")):
            r = flipping.rollout_episodes(env, params, policy, key, n, params.max_steps)
            out.append((r.returns, r.costs, r.unsafe.max(1)))
        return out

    (Ra, Ca, Va), (Rb, Cb, Vb), (Rm, Cm, Vm), (Rs, Cs, Vs) = evaluate(jax.random.PRNGKey(0))
    for a, b, m in ((Ra, Rb, Rm), (Ca, Cb, Cm), (Va, Vb, Vm)):
        a, b, m = (np.asarray(x, np.float64) for x in (a, b, m))
        want = w * a.mean() + (1 - w) * b.mean()
        se = np.sqrt((w * a.var() + (1 - w) * b.var() + w * (1 - w) * (a.mean() - b.mean()) ** 2) / n)
        assert abs(m.mean() - want) < 4 * se + 1e-9, (m.mean(), want, se)
    # the two base policies really differ, and per-step flipping is a different policy (not the convex combination)
    assert float(Ca.mean()) > 1.0 and float(Cb.mean()) < 0.05
    assert abs(float(Rs.mean()) - (w * float(Ra.mean()) + (1 - w) * float(Rb.mean()))) > 0.05


# ------------------------------------------------------------------------------------------------ 2-D point example


def test_point2d_cost_semantics_and_determinism(point2d):
    env, params, fast, _ = point2d
    noisy = stateless(lambda o, k: jnp.array([3.0, 3.0]) + jax.random.normal(k, (2,)))
    run = jax.jit(lambda key: flipping.rollout_episodes(env, params, noisy, key, 16, params.max_steps))
    a, b = run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a.returns, b.returns)

    def trace(key):
        state, ts = env.reset(key, params)

        def step(state, k):
            state, ts = env.step(k, state, jnp.array([3.0, 3.0]), params)
            return state, (ts.cost[0], ts.info["hazard_distance"], ts.reward, state.position, ts.truncated)

        return jax.lax.scan(step, state, jax.random.split(key, params.max_steps))[1]

    cost, distance, reward, position, truncated = jax.jit(trace)(jax.random.PRNGKey(4))
    np.testing.assert_array_equal(cost, (distance < 0).astype(np.float32))
    np.testing.assert_allclose(reward, 1 / (((position - 15.0) ** 2).sum(-1) + 0.1), rtol=1e-5)
    assert bool(truncated[-1]) and not bool(truncated[:-1].any())
    with pytest.raises(ValueError, match="dt"):
        env.reset(jax.random.PRNGKey(0), params.replace(dt=-1.0))


def test_inflated_plans_are_feasible_and_trade_reward_for_safety():
    params = ChancePoint2D().default_params
    plans = plan_inflated(params, [1.0, 2.6], steps=2500)
    assert np.all(np.asarray(plans.inflated_violation) <= 0.05)
    assert float(plans.nominal_return[0]) > float(plans.nominal_return[1])
    env = ChancePoint2D()

    def evaluate(plan, key):
        r = flipping.rollout_episodes(env, params, tracking_policy(plan, params), key, 500, 100)
        return r.returns.mean(), r.unsafe.max(1).mean()

    J, V = jax.jit(jax.vmap(evaluate, (0, None)))(plans, jax.random.PRNGKey(0))
    assert float(V[0]) > float(V[1]) and float(J[0]) > float(J[1])


# ------------------------------------------------------------------------------------------------ layering


def test_environments_import_no_learner():
    """The chance bandit (and every environment) builds on envs, policy and exact only, never on jaxsafe.rl."""
    import subprocess
    import sys

    code = ("import sys, jaxsafe.envs, jaxsafe.envs.chance_bandit, jaxsafe.envs.point2d; "
            "print(sorted(m for m in sys.modules if m.startswith(('jaxsafe.rl', 'jaxsafe.offline', 'jaxsafe.llm', "
            "'jaxsafe.bilevel'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_enumeration_lp_is_the_mixture_lp():
    """The bandit's enumeration and the mixing LP are the same problem through the one LP wrapper."""
    from jaxsafe.envs import chance_bandit

    solution = chance_bandit.solve_by_enumeration(0.25, grid=41)
    reward = chance_bandit.bandit_reward(solution.actions, chance_bandit.ChanceBanditParams(), xp=np)
    unsafe = chance_bandit.bandit_unsafe(solution.actions, xp=np)
    nu, value = flipping.solve_mixture_lp(reward, unsafe[None], [0.25])
    np.testing.assert_allclose(solution.value, value, rtol=1e-12)
    np.testing.assert_allclose(solution.probs, np.clip(nu, 0, None), atol=1e-12)
    assert np.count_nonzero(solution.probs > 1e-9) == 2  # a flip between two actions (Thm 2)
