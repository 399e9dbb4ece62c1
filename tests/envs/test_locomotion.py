"""Tests of the brax adapter and the velocity-constrained locomotion tasks (jaxsafe/envs/locomotion.py).

Compiling a brax physics step takes tens of seconds on CPU, so:

* the adapter's semantics (termination from ``done``, truncation at ``max_steps``, no brax auto-reset, episode
  statistics, signed vs planar velocity costs, bad input) are tested on a tiny physics-free brax ``Env``;
* one real task (HalfCheetah) is compiled once, with the params as an argument so that the threshold and the episode
  length can change without recompiling, and checked against velocities recomputed from the physics state;
* the other five real tasks are rolled out for a few steps in tests marked ``slow``.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from brax.envs.base import Env as BraxEnv
from brax.envs.base import State as BraxEnvState

from jaxsafe.envs import locomotion as loco
from jaxsafe.envs import registry
from jaxsafe.envs.core import EpisodeStats, wrap_for_training

loco.register_locomotion()
loco.register_locomotion()  # idempotent

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _fast_compile(fn, *example_args):
    return jax.jit(fn).lower(*example_args).compile(compiler_options=_FAST_COMPILE)


# ----------------------------------------------------------------------------------------------------------------
# A physics-free brax environment for the adapter
# ----------------------------------------------------------------------------------------------------------------


class ToyBrax(BraxEnv):
    """A planar point whose velocity is ``2 * action`` m/s; ``done`` when it leaves ``|x| <= 1`` (unhealthy)."""

    dt = 0.1

    def reset(self, rng):
        position = jnp.array([0.0, 1.0]) * jax.random.uniform(rng, (2,), minval=-0.1, maxval=0.1)  # x starts at 0
        zero = jnp.zeros(())
        return BraxEnvState(
            pipeline_state=position, obs=position, reward=zero, done=zero,
            metrics={"x_velocity": zero, "y_velocity": zero},
        )

    def step(self, state, action):
        position = state.pipeline_state + 2.0 * action * self.dt
        velocity = (position - state.pipeline_state) / self.dt
        done = (jnp.abs(position[0]) > 1.0).astype(jnp.float32)
        return state.replace(
            pipeline_state=position, obs=position, reward=velocity[0], done=done,
            metrics={"x_velocity": velocity[0], "y_velocity": velocity[1]},
        )

    @property
    def observation_size(self):
        return 2

    @property
    def action_size(self):
        return 2

    @property
    def backend(self):
        return "toy"


def _toy_env(robot="halfcheetah", threshold=1.0):
    return loco.BraxSafeEnv(
        ToyBrax(),
        loco._velocity_cost_fn(robot),
        loco._velocity_info_fn(robot),
        name=f"Toy[{robot}]",
        default_params=loco.VelocityParams(velocity_threshold=threshold, max_steps=8),
        validate_params=loco._validate_velocity_params("Toy"),
    )


def _toy_rollout(env, actions, params, key=jax.random.key(0)):
    """Raw adapter (no wrappers): states and timesteps over ``actions`` (T, 2)."""

    def run(key, actions, params):
        state, _ = env.reset(key, params)

        def body(state, action):
            next_state, timestep = env.step(key, state, action, params)
            return next_state, (next_state, timestep)

        return jax.lax.scan(body, state, actions)[1]

    return jax.jit(run)(key, actions, params)


def test_adapter_signed_x_velocity_cost():
    env = _toy_env("halfcheetah", threshold=1.0)
    # x-velocities 2 * a: 1.6 (cost), -1.6 (no cost: backwards), 0.4 with a large y-velocity (no cost: only x
    # counts), 1.1 (cost)
    actions = jnp.array([[0.8, 0.9], [-0.8, 0.0], [0.2, 0.9], [0.55, 0.0]])
    _, timestep = _toy_rollout(env, actions, env.default_params)
    np.testing.assert_allclose(timestep.info["velocity"], [1.6, -1.6, 0.4, 1.1], atol=1e-5)
    np.testing.assert_array_equal(timestep.cost[:, 0], [1.0, 0.0, 0.0, 1.0])
    assert set(timestep.info) == {"velocity", "x_velocity"}


def test_adapter_planar_speed_cost():
    env = _toy_env("ant", threshold=1.0)
    actions = jnp.array([[0.3, 0.4], [-0.4, -0.3], [0.1, -0.2], [0.0, 0.0]])  # speeds 1.0, 1.0, 0.447, 0
    params = env.default_params.replace(velocity_threshold=0.99)
    _, timestep = _toy_rollout(env, actions, params)
    np.testing.assert_allclose(timestep.info["velocity"], [1.0, 1.0, np.hypot(0.2, 0.4), 0.0], atol=1e-5)
    np.testing.assert_array_equal(timestep.cost[:, 0], [1.0, 1.0, 0.0, 0.0])
    assert set(timestep.info) == {"velocity", "x_velocity", "y_velocity"}


def test_adapter_terminates_on_done_and_truncates_at_max_steps_without_resetting():
    env = _toy_env()
    params = env.default_params.replace(max_steps=5)
    # 0.19 m per step: |x| passes 1 on the 6th step, after the time limit (5): step 5 is truncated, step 6
    # terminated (and never both, even past the limit)
    states, timestep = _toy_rollout(env, jnp.tile(jnp.array([0.95, 0.0]), (8, 1)), params)
    np.testing.assert_array_equal(timestep.truncated, [False] * 4 + [True] + [False] * 3)
    np.testing.assert_array_equal(timestep.terminated, [False] * 5 + [True] * 3)
    assert not np.any(timestep.terminated & timestep.truncated)
    np.testing.assert_array_equal(states.time, np.arange(1, 9))
    # the adapter never resets by itself (that is AutoReset's job): x keeps growing past the end
    assert np.all(np.diff(np.asarray(states.brax_state.pipeline_state[:, 0])) > 0)
    params = env.default_params.replace(max_steps=100)
    _, timestep = _toy_rollout(env, jnp.tile(jnp.array([0.95, 0.0]), (8, 1)), params)
    assert np.flatnonzero(timestep.terminated)[0] == 5 and not timestep.truncated.any()


def test_adapter_episode_stats_through_the_training_wrappers():
    env = _toy_env(threshold=0.5)
    num_envs, num_steps = 3, 40
    venv = wrap_for_training(env, num_envs)
    params = env.default_params.replace(max_steps=7)

    def run(key):
        state, _ = venv.reset(key, params)

        def body(state, key):
            action = jax.random.uniform(key, (num_envs, 2), minval=-1.0, maxval=1.0) + jnp.array([0.7, 0.0])
            state, timestep = venv.step(key, state, action, params)
            return state, timestep

        return jax.lax.scan(body, state, jax.random.split(key, num_steps))[1]

    timestep = jax.device_get(jax.jit(run)(jax.random.key(0)))
    done = timestep.terminated | timestep.truncated
    assert timestep.terminated.any() and timestep.truncated.any()
    assert 0 < timestep.cost.sum() < timestep.cost.size
    for env_index in range(num_envs):
        start = 0
        for t in np.flatnonzero(done[:, env_index]):
            assert timestep.info["episode_length"][t, env_index] == t + 1 - start <= 7
            np.testing.assert_allclose(
                timestep.info["episode_return"][t, env_index], timestep.reward[start : t + 1, env_index].sum(),
                rtol=1e-5, atol=1e-5,
            )
            np.testing.assert_allclose(
                timestep.info["episode_cost"][t, env_index], timestep.cost[start : t + 1, env_index].sum(axis=0)
            )
            start = t + 1


@pytest.mark.parametrize("threshold", [-1.0, 0.0, float("nan"), float("inf")])
def test_out_of_range_threshold_raises(threshold):
    env = _toy_env()
    with pytest.raises(ValueError, match="velocity_threshold"):
        env.reset(jax.random.key(0), env.default_params.replace(velocity_threshold=threshold))


def test_bad_max_steps_raises():
    env = _toy_env()
    with pytest.raises(ValueError, match="max_steps"):
        env.reset(jax.random.key(0), env.default_params.replace(max_steps=0))


@pytest.mark.parametrize(
    "action, match", [(jnp.zeros(3), r"shape \(2,\)"), (jnp.zeros((2, 2)), r"shape \(2,\)"), (jnp.zeros(2, int), "float")]
)
def test_bad_action_raises(action, match):
    env = _toy_env()
    state, _ = env.reset(jax.random.key(0), env.default_params)
    with pytest.raises(ValueError, match=match):
        env.step(jax.random.key(0), state, action, env.default_params)


# ----------------------------------------------------------------------------------------------------------------
# Construction, registry, backends (no physics compiled)
# ----------------------------------------------------------------------------------------------------------------

SAFETY_GYMNASIUM_THRESHOLDS = {
    "SafeHalfCheetahVelocity": 3.2096,
    "SafeHopperVelocity": 0.7402,
    "SafeWalker2dVelocity": 2.3415,
    "SafeAntVelocity": 2.6222,
    "SafeHumanoidVelocity": 1.4149,
    "SafeSwimmerVelocity": 0.2282,
}


@pytest.mark.parametrize("name", list(SAFETY_GYMNASIUM_THRESHOLDS))
def test_registered_tasks_build_with_safety_gymnasium_thresholds(name):
    env, params = registry.make(name)
    assert env.name == name and env.backend == loco.DEFAULT_BACKEND
    assert params.velocity_threshold == SAFETY_GYMNASIUM_THRESHOLDS[name] and params.max_steps == 1000
    assert env.observation_space(params).shape == (env.observation_size,) and env.observation_size > 0
    assert env.action_space(params).shape == (env.brax_env.action_size,)
    _, params = registry.make(name, velocity_threshold=1.5, max_steps=50)
    assert params.velocity_threshold == 1.5 and params.max_steps == 50


def test_unknown_robot_or_backend_raises():
    with pytest.raises(ValueError, match="robot must be one of"):
        loco.velocity_env("cheetah")
    with pytest.raises(ValueError, match="backend must be one of"):
        registry.make("SafeHalfCheetahVelocity", backend="warp")
    with pytest.raises(ValueError, match="supports backend"):
        loco.velocity_env("swimmer", backend="positional")
    with pytest.raises(ValueError, match="unknown environment"):
        registry.make("SafeCheetahVelocity")


def test_missing_mjx_package_names_it(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "mujoco.mjx":
            raise ImportError("No module named 'mujoco.mjx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(loco.importlib, "import_module", fake_import)
    with pytest.raises(ImportError, match="pip install mujoco-mjx"):
        loco.velocity_env("halfcheetah", backend="mjx")


# ----------------------------------------------------------------------------------------------------------------
# Real brax physics
# ----------------------------------------------------------------------------------------------------------------

NUM_ENVS = 4
NUM_STEPS = 12
_CACHE: dict = {}


def _compiled_rollout(name, backend=loco.DEFAULT_BACKEND):
    """One compiled rollout per (task, backend): ``run(key, params) -> (initial state, before, after, timesteps)``
    through ``EpisodeStats(AutoReset(.))`` vmapped; params are an argument, so they never trigger a recompile."""
    if (name, backend) in _CACHE:
        return _CACHE[name, backend]
    env, params = registry.make(name, backend=backend)
    venv = wrap_for_training(env, NUM_ENVS)
    action_dim = env.action_space(params).shape[0]

    def run(key, params):
        key_reset, key_steps = jax.random.split(key)
        state, reset_timestep = venv.reset(key_reset, params)

        def body(state, key):
            action = jax.random.uniform(key, (NUM_ENVS, action_dim), minval=-1.0, maxval=1.0)
            next_state, timestep = venv.step(key, state, action, params)
            return next_state, (state, next_state, timestep)

        _, (before, after, timesteps) = jax.lax.scan(body, state, jax.random.split(key_steps, NUM_STEPS))
        return state, reset_timestep, before, after, timesteps

    compiled = _fast_compile(run, jax.random.key(0), params)
    _CACHE[name, backend] = (env, params, compiled)
    return _CACHE[name, backend]


def _torso_x(brax_states):
    return np.asarray(brax_states.pipeline_state.x.pos[..., 0, 0])


def _check_real_rollout(name, threshold):
    env, params, run = _compiled_rollout(name)
    params = params.replace(velocity_threshold=threshold, max_steps=5)
    state0, reset_timestep, before, after, timestep = jax.device_get(run(jax.random.key(0), params))
    obs_size = env.observation_size
    assert timestep.obs.shape == (NUM_STEPS, NUM_ENVS, obs_size) and timestep.obs.dtype == np.float32
    assert np.all(np.isfinite(timestep.obs)) and np.all(np.isfinite(timestep.reward))
    assert set(reset_timestep.info) == set(timestep.info)
    done = timestep.terminated | timestep.truncated
    live = ~done
    # velocity recomputed from the physics state: position change of the torso over dt (1-D bodies)
    robot = loco.LOCOMOTION_TASKS[name]
    if robot in ("halfcheetah", "hopper", "walker2d"):
        x_before = _torso_x(before.env_state.brax_state)
        x_after = _torso_x(after.env_state.brax_state)
        velocity = (x_after - x_before) / env.dt
        np.testing.assert_allclose(timestep.info["velocity"][live], velocity[live], rtol=1e-4, atol=1e-4)
    else:
        velocity = timestep.info["velocity"]
        if robot in ("ant", "humanoid"):
            np.testing.assert_allclose(
                velocity, np.hypot(timestep.info["x_velocity"], timestep.info["y_velocity"]), rtol=1e-6
            )
    np.testing.assert_array_equal(timestep.cost[..., 0][live], (velocity[live] > threshold).astype(np.float32))
    # episodes end by the time limit (5) or by brax's healthy check; stats are the sums over the episode
    for env_index in range(NUM_ENVS):
        start = 0
        for t in np.flatnonzero(done[:, env_index]):
            assert timestep.info["episode_length"][t, env_index] == t + 1 - start <= 5
            np.testing.assert_allclose(
                timestep.info["episode_return"][t, env_index], timestep.reward[start : t + 1, env_index].sum(),
                rtol=1e-4, atol=1e-4,
            )
            np.testing.assert_allclose(
                timestep.info["episode_cost"][t, env_index], timestep.cost[start : t + 1, env_index].sum(axis=0)
            )
            start = t + 1
    # layouts (initial states) differ across the reset keys
    q0 = np.asarray(state0.env_state.brax_state.pipeline_state.q)
    assert len(np.unique(q0.round(6), axis=0)) == NUM_ENVS
    return env, params, run, timestep


def test_halfcheetah_rollout_cost_velocity_and_stats():
    # A threshold that a random policy crosses both ways, so the cost check can fail; the real 3.2096 is rarely hit.
    env, params, run, timestep = _check_real_rollout("SafeHalfCheetahVelocity", threshold=0.3)
    live = ~(timestep.terminated | timestep.truncated)
    velocity = timestep.info["velocity"][live]
    cost = timestep.cost[..., 0][live]
    assert cost.sum() > 0 and (cost == 0).any()
    assert np.any((velocity < -0.3) & (cost == 0)), "signed: fast backwards running must be free"
    # determinism for a fixed key, differences across keys
    again = jax.device_get(run(jax.random.key(0), params))
    np.testing.assert_array_equal(again[-1].obs, timestep.obs)
    other = jax.device_get(run(jax.random.key(1), params))
    assert not np.array_equal(other[-1].obs, timestep.obs)


# One compiled rollout per velocity code path (1-D torso: Hopper; planar: Ant; Swimmer; HalfCheetah below);
# Walker2d (1-D, as Hopper) and Humanoid (planar, as Ant; its compile alone took 80 s) are traced, not compiled.
@pytest.mark.slow
@pytest.mark.parametrize("name, threshold", [("SafeHopperVelocity", 0.1), ("SafeAntVelocity", 0.3),
                                             ("SafeSwimmerVelocity", 0.01)])
def test_other_tasks_rollout(name, threshold):
    _check_real_rollout(name, threshold)


@pytest.mark.parametrize("name", ["SafeWalker2dVelocity", "SafeHumanoidVelocity"])
def test_traced_rollout_shapes(name):
    env, params = registry.make(name)
    venv = wrap_for_training(env, NUM_ENVS)
    action_dim = env.action_space(params).shape[0]

    def run(key):
        state, _ = venv.reset(key, params)
        return venv.step(key, state, jnp.zeros((NUM_ENVS, action_dim)), params)[1]

    timestep = jax.eval_shape(run, jax.random.key(0))
    assert timestep.obs.shape == (NUM_ENVS, env.observation_size) and timestep.obs.dtype == jnp.float32
    assert timestep.cost.shape == (NUM_ENVS, 1) and timestep.info["velocity"].shape == (NUM_ENVS,)
