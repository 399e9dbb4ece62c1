"""Property tests (hypothesis) of the contracts every method relies on.

Profiles: ``ci`` (the default under ``make test``: few examples, so the suite stays within its time budget) and
``dev`` (``HYPOTHESIS_PROFILE=dev``: many more). Each property compiles its function once and hypothesis varies the
data, so examples cost microseconds to milliseconds. The brax locomotion tasks are left to
``tests/envs/test_locomotion.py`` (each compiles for ~25 s on CPU).
"""

import dataclasses
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxsafe import envs
from jaxsafe.envs.core import AutoReset
from jaxsafe.exact.lp import solve_lp
from jaxsafe.llm.losses import dpo_loss
from jaxsafe.logging import RunDir
from jaxsafe.rl.gae import gae, returns_to_go
from jaxsafe.runner import RunSpec

settings.register_profile("ci", max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SEEDS = st.integers(0, 2**31 - 1)
TASKS = [name for name in envs.list_envs() if "Velocity" not in name]
TIME_LIMIT = 12
STEPS = 40


def _short_episodes(name):
    env, params = envs.make(name)
    fields = [f.name for f in dataclasses.fields(params)] if dataclasses.is_dataclass(params) else []
    limit_field = next((f for f in ("max_steps", "max_steps_in_episode") if f in fields), None)
    if limit_field is not None:
        env, params = envs.make(name, **{limit_field: TIME_LIMIT})
    return env, params, limit_field is not None


_ROLLOUTS = {}


def rollout_fn(name):
    """Jitted ``key -> (reset timestep, per-step timesteps, running episode lengths)`` under random actions."""
    if name not in _ROLLOUTS:
        env, params, limited = _short_episodes(name)
        wrapped = AutoReset(env)
        space = env.action_space(params)

        def rollout(key):
            reset_key, key = jax.random.split(key)
            state, first = wrapped.reset(reset_key, params)

            def step(carry, step_key):
                state, length = carry
                action_key, env_key = jax.random.split(step_key)
                state, ts = wrapped.step(env_key, state, space.sample(action_key), params)
                length = length + 1
                done = jnp.logical_or(ts.terminated, ts.truncated)
                return (state, jnp.where(done, 0, length)), (ts, length)

            _, (steps, lengths) = jax.lax.scan(step, (state, jnp.zeros((), jnp.int32)), jax.random.split(key, STEPS))
            return first, steps, lengths

        _ROLLOUTS[name] = (jax.jit(rollout), env, params, limited)
    return _ROLLOUTS[name]


@pytest.mark.parametrize("name", TASKS)
@settings(max_examples=3)
@given(seed=SEEDS)
def test_environment_contract(name, seed):
    rollout, env, params, limited = rollout_fn(name)
    key = jax.random.PRNGKey(seed)
    first, steps, lengths = jax.tree.map(np.asarray, rollout(key))
    obs_shape = env.observation_space(params).shape
    assert first.obs.shape == obs_shape and np.all(np.isfinite(first.obs))
    assert steps.obs.shape == (STEPS, *obs_shape) and np.all(np.isfinite(steps.obs))
    assert steps.reward.shape == (STEPS,) and np.all(np.isfinite(steps.reward))
    assert steps.cost.shape == (STEPS, env.n_costs) and np.all(steps.cost >= 0) and np.all(np.isfinite(steps.cost))
    assert steps.terminated.dtype == bool and steps.truncated.dtype == bool
    done = steps.terminated | steps.truncated
    # auto-reset keeps the true last observation: final_obs is the observation wherever nothing ended
    np.testing.assert_array_equal(steps.info["final_obs"][~done], steps.obs[~done])
    if limited:  # truncation happens exactly at the time limit, never later
        assert np.all(lengths <= TIME_LIMIT)
        assert np.all(lengths[steps.truncated & ~steps.terminated] == TIME_LIMIT)
    again = jax.tree.map(np.asarray, rollout(key))  # determinism per key
    jax.tree.map(np.testing.assert_array_equal, again, (first, steps, lengths))


T = 16
FLOATS = st.floats(-10, 10, allow_nan=False, width=32)
VECTORS = st.lists(FLOATS, min_size=T, max_size=T).map(lambda v: np.asarray(v, np.float32))
DONES = st.lists(st.booleans(), min_size=T, max_size=T).map(np.asarray)
_returns = jax.jit(returns_to_go)
_gae = jax.jit(gae)


@given(r1=VECTORS, r2=VECTORS, done=DONES, a=FLOATS, gamma=st.floats(0, 1))
def test_returns_to_go_is_linear_in_rewards(r1, r2, done, a, gamma):
    combined = _returns(a * r1 + r2, done, gamma)
    np.testing.assert_allclose(combined, a * _returns(r1, done, gamma) + _returns(r2, done, gamma),
                               rtol=1e-4, atol=1e-3)


@given(rewards=VECTORS, values=VECTORS, done=DONES, gamma=st.floats(0, 1))
def test_gae_at_lambda_one_is_monte_carlo(rewards, values, done, gamma):
    # Episodes that end inside the batch terminate; the batch end is cut (no bootstrap) in both.
    done = done.copy()
    done[-1] = True
    next_values = np.roll(values, -1)  # V(s_t+1); unused where an episode terminates
    advantages, targets = _gae(rewards, values, next_values, done, done, gamma, 1.0)
    np.testing.assert_allclose(targets, _returns(rewards, done, gamma), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(advantages, targets - values, rtol=1e-4, atol=1e-3)


LOGPS = st.lists(st.floats(-20, 0, width=32), min_size=4, max_size=4).map(lambda v: jnp.asarray(v, jnp.float32))


@given(pc=LOGPS, pr=LOGPS, rc=LOGPS, rr=LOGPS, beta=st.floats(0.01, 5), smoothing=st.floats(0, 0.49))
def test_dpo_is_symmetric_under_swapping_with_flipped_labels(pc, pr, rc, rr, beta, smoothing):
    forward = dpo_loss(pc, pr, rc, rr, beta, smoothing).loss
    swapped = dpo_loss(pr, pc, rr, rc, beta, 1.0 - smoothing).loss
    np.testing.assert_allclose(forward, swapped, rtol=1e-5, atol=1e-5)


@given(seed=SEEDS, n=st.integers(2, 8), m=st.integers(1, 4))
def test_lp_optimum_is_feasible_and_no_worse_than_a_feasible_point(seed, n, m):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 1, n)  # a known feasible point in the box [0, 1]^n
    a_eq = rng.normal(size=(m, n))
    c = rng.normal(size=n)
    solution = solve_lp(c, A_eq=a_eq, b_eq=a_eq @ x0, bounds=(0, 1))
    x = np.asarray(solution.x)
    assert np.all(x >= -1e-9) and np.all(x <= 1 + 1e-9)
    np.testing.assert_allclose(a_eq @ x, a_eq @ x0, atol=1e-7)
    assert solution.value <= c @ x0 + 1e-8


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
                    max_leaves=20)
SPEC_FIELDS = ["algorithm", "problem", "problem_overrides", "config", "hparams", "grid", "seeds", "num_chunks"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(JSON, st.fixed_dictionaries({k: JSON for k in SPEC_FIELDS})))
def test_config_reader_never_crashes(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("config")
    (out / "config.json").write_text(json.dumps(data))
    try:
        RunSpec.from_json(RunDir(out, must_exist=True).read_config())
    except ValueError:
        pass  # a clean, named error is the contract; any other exception fails the test


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_metrics_reader_never_crashes(tmp_path_factory, text):
    out = tmp_path_factory.mktemp("metrics")
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last line is dropped with a warning: that is allowed
            rows = RunDir(out, must_exist=True).read_metrics()
    except ValueError:
        return
    assert all(isinstance(row, dict) for row in rows)
