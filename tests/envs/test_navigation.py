"""Tests of the pure-JAX navigation suite (jaxsafe/envs/navigation.py).

One jitted, vmapped rollout per task (through ``wrap_for_training``: vmap + EpisodeStats + AutoReset) is compiled
once and shared by the tests of that task; the rest are eager unit tests of the physics, the lidar and the layout
sampler. Cost semantics are recomputed from the environment *state* (positions), not from ``info``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.envs import navigation as nav
from jaxsafe.envs import registry
from jaxsafe.envs.core import wrap_for_training

nav.register_navigation()
nav.register_navigation()  # idempotent

TASK_NAMES = list(nav.NAVIGATION_TASKS)
NUM_ENVS = 16
NUM_STEPS = 200
MAX_STEPS = 100  # short episodes so every env finishes two within the rollout


def _policy(key, num_envs):
    """Mostly forward with random turning, so robots travel into hazards, walls and over the speed limit."""
    k1, k2 = jax.random.split(key)
    forward = jax.random.uniform(k1, (num_envs, 1), minval=0.5, maxval=1.0)
    turn = jax.random.uniform(k2, (num_envs, 1), minval=-0.7, maxval=0.7)
    return jnp.concatenate([forward, turn], axis=1)


def _car_policy(key, num_envs):
    action = _policy(key, num_envs)
    forward, turn = action[:, :1], action[:, 1:]
    return jnp.clip(jnp.concatenate([forward - turn, forward + turn], axis=1), -1.0, 1.0)


_CACHE: dict = {}
# Compile time dominates these tests; XLA's cheaper CPU pipeline halves it and the rollouts are tiny anyway.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _fast_compile(fn, *example_args):
    return jax.jit(fn).lower(*example_args).compile(compiler_options=_FAST_COMPILE)


def _rollout(name):
    """(env, params, initial TimeStep/state, per-step states before and after, TimeSteps), cached per task."""
    if name in _CACHE:
        return _CACHE[name]
    env, params = registry.make(name, max_steps=MAX_STEPS)
    venv = wrap_for_training(env, NUM_ENVS)
    policy = _car_policy if env.robot == "car" else _policy

    def run(key):
        key_reset, key_steps = jax.random.split(key)
        state, timestep = venv.reset(key_reset, params)

        def body(state, key):
            key_action, key_step = jax.random.split(key)
            action = policy(key_action, NUM_ENVS)
            next_state, next_timestep = venv.step(key_step, state, action, params)
            return next_state, (state, next_state, next_timestep)

        _, (before, after, timesteps) = jax.lax.scan(body, state, jax.random.split(key_steps, NUM_STEPS))
        return state, timestep, before, after, timesteps

    run = _fast_compile(run, jax.random.key(0))
    out = (env, params, run, jax.device_get(run(jax.random.key(0))))
    _CACHE[name] = out
    return out


# ----------------------------------------------------------------------------------------------------------------
# Per-task rollout tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shapes_dtypes_and_info_keys(name):
    env, params, _, (state0, reset_ts, _, _, ts) = _rollout(name)
    assert env.name == name
    obs_size = env.observation_size
    assert reset_ts.obs.shape == (NUM_ENVS, obs_size) and ts.obs.shape == (NUM_STEPS, NUM_ENVS, obs_size)
    assert reset_ts.obs.dtype == np.float32 and ts.reward.dtype == np.float32
    assert ts.cost.shape == (NUM_STEPS, NUM_ENVS, 1) and ts.cost.dtype == np.float32
    assert np.all(np.isfinite(ts.obs)) and np.all(np.isfinite(ts.reward))
    assert set(reset_ts.info) == set(ts.info)
    for key in reset_ts.info:
        assert reset_ts.info[key].shape == ts.info[key].shape[1:], key
        assert reset_ts.info[key].dtype == ts.info[key].dtype, key
    layout = env.observation_layout()
    assert max(s.stop for s in layout.values()) == obs_size
    # lidars are in [0, 1], the magnetometer is a unit vector
    for block, where in layout.items():
        if block.endswith("_lidar"):
            assert np.all((ts.obs[..., where] >= 0) & (ts.obs[..., where] <= 1)), block
    # Safety-Gymnasium's conventions: the magnetometer reads MuJoCo's 0.5 field in the plane, the accelerometer
    # carries gravity in z, the velocimeter's z and the gyro's x, y are 0
    magnetometer = ts.obs[..., layout["magnetometer"]]
    np.testing.assert_allclose(np.linalg.norm(magnetometer[..., :2], axis=-1), 0.5, atol=1e-5)
    np.testing.assert_array_equal(magnetometer[..., 2], 0.0)
    np.testing.assert_allclose(ts.obs[..., layout["accelerometer"]][..., 2], nav.GRAVITY, rtol=1e-6)
    np.testing.assert_array_equal(ts.obs[..., layout["velocimeter"]][..., 2], 0.0)
    np.testing.assert_array_equal(ts.obs[..., layout["gyro"]][..., :2], 0.0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_deterministic_for_a_key_and_different_across_keys(name):
    _, _, run, first = _rollout(name)
    again = jax.device_get(run(jax.random.key(0)))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    other = jax.device_get(run(jax.random.key(1)))
    assert not np.array_equal(first[4].obs, other[4].obs)


def _positions_after(after):
    return after.env_state.body.position  # (T, N, 2) true post-step position on non-done steps


@pytest.mark.parametrize("name", TASK_NAMES)
def test_cost_recomputed_from_positions(name):
    env, params, _, (_, _, before, after, ts) = _rollout(name)
    done = ts.terminated | ts.truncated  # on done steps the state is already the next episode's
    live = ~done
    inner_before, inner_after = before.env_state, after.env_state
    position = _positions_after(after)
    if env.task in ("goal", "button"):
        distances = np.linalg.norm(position[:, :, None, :] - inner_after.hazards, axis=-1)
        hazard_distance = np.min(distances, axis=-1)
        expected = hazard_distance <= params.hazard_size
        if env.task == "button":
            buttons = inner_before.buttons
            distance = np.linalg.norm(position[:, :, None, :] - buttons, axis=-1)  # (T, N, B)
            is_goal = np.arange(buttons.shape[-2]) == inner_before.goal_button[..., None]
            wrong = np.min(np.where(is_goal, np.inf, distance), axis=-1)
            active = inner_before.button_timer == 0
            touch = params.robot_radius + params.button_size + nav._CONTACT_SLACK
            expected = expected | (active & (wrong <= touch))
            gremlins = np.asarray(nav.gremlin_positions(inner_after.gremlin_bases, inner_after.time,
                                                        params))
            gremlin_distance = np.min(np.linalg.norm(position[:, :, None, :] - gremlins, axis=-1), axis=-1)
            # Safety-Gymnasium's constrain_indicator: 1 when any cost source is active
            expected = expected | (gremlin_distance <= params.gremlin_size + params.robot_radius)
            np.testing.assert_allclose(ts.info["gremlin_distance"][live], gremlin_distance[live], rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(ts.info["wrong_button_distance"][live], wrong[live], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ts.info["hazard_distance"][live], hazard_distance[live], rtol=1e-5, atol=1e-6)
    elif env.task == "circle":
        wall = np.abs(position[..., 0])
        if env.layout["walls_on_y"]:
            wall = np.maximum(wall, np.abs(position[..., 1]))
        expected = wall > params.wall_limit
        np.testing.assert_allclose(ts.info["wall_distance"][live], wall[live], rtol=1e-6)
    else:  # run
        speed = np.linalg.norm(inner_after.body.velocity, axis=-1)
        expected = (np.abs(position[..., 1]) > params.corridor_half_width) | (speed > params.speed_limit)
    np.testing.assert_allclose(ts.cost[..., 0][live], expected[live].astype(np.float32), rtol=1e-5, atol=1e-6)
    # the rollout must exercise both values, or this test could not fail
    assert 0 < ts.cost[..., 0][live].sum() < live.sum(), "rollout produced no (or only) cost"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_reward_recomputed_from_positions(name):
    env, params, _, (_, _, before, after, ts) = _rollout(name)
    live = ~(ts.terminated | ts.truncated)
    inner_before, inner_after = before.env_state, after.env_state
    position = _positions_after(after)
    if env.task == "goal":
        goal_distance = np.linalg.norm(inner_before.goal - position, axis=-1)
        reached = goal_distance <= params.goal_size
        expected = inner_before.last_goal_distance - goal_distance + reached * params.reward_goal
    elif env.task == "button":
        goal = np.take_along_axis(inner_before.buttons, inner_before.goal_button[..., None, None], axis=-2)[..., 0, :]
        goal_distance = np.linalg.norm(goal - position, axis=-1)
        reached = goal_distance <= params.robot_radius + params.button_size + nav._CONTACT_SLACK  # no timer gate
        expected = inner_before.last_goal_distance - goal_distance + reached * params.reward_goal
    elif env.task == "circle":
        x, y = position[..., 0], position[..., 1]
        u, v = inner_after.body.velocity[..., 0], inner_after.body.velocity[..., 1]
        radius = np.hypot(x, y)
        expected = params.reward_factor * (-u * y + v * x) / radius / (1 + np.abs(radius - params.circle_radius))
    else:
        expected = (position[..., 0] - inner_before.body.position[..., 0]) / params.dt
    np.testing.assert_allclose(ts.reward[live], expected[live], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_episode_stats_match_per_step_sums_and_truncation(name):
    _, _, _, (_, _, _, _, ts) = _rollout(name)
    done = ts.terminated | ts.truncated
    assert not ts.terminated.any()  # navigation episodes only end by the time limit
    num_done = 0
    for env_index in range(NUM_ENVS):
        start = 0
        for t in np.flatnonzero(done[:, env_index]):
            info = {k: v[t, env_index] for k, v in ts.info.items()}
            assert info["episode_done"] and info["episode_valid"]
            assert info["episode_length"] == t + 1 - start == MAX_STEPS
            np.testing.assert_allclose(info["episode_return"], ts.reward[start : t + 1, env_index].sum(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(info["episode_cost"], ts.cost[start : t + 1, env_index].sum(axis=0), atol=1e-5)
            start, num_done = t + 1, num_done + 1
    assert num_done == NUM_ENVS * (NUM_STEPS // MAX_STEPS)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_layouts_differ_across_reset_keys(name):
    env, params, _, (state0, _, _, _, _) = _rollout(name)
    inner = state0.env_state
    positions = inner.body.position
    assert len(np.unique(np.round(positions, 4), axis=0)) == NUM_ENVS
    if env.task in ("goal", "button"):
        hazards = inner.hazards.reshape(NUM_ENVS, -1)
        assert len(np.unique(np.round(hazards, 4), axis=0)) == NUM_ENVS


# ----------------------------------------------------------------------------------------------------------------
# Layout sampler, physics, lidar (eager, small)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SafePointGoal1", "SafePointGoal2", "SafePointButton1"])
def test_robot_and_goal_start_outside_hazards_and_keepouts_hold(name):
    env, params = registry.make(name)
    keys = jax.random.split(jax.random.key(3), 512)
    reset = _fast_compile(jax.vmap(lambda key: env.reset(key, params)), keys)
    state, timestep = reset(keys)
    robot = np.asarray(state.body.position)
    hazards = np.asarray(state.hazards)
    robot_to_hazard = np.linalg.norm(robot[:, None] - hazards, axis=-1)
    assert robot_to_hazard.min() > params.hazard_size
    assert not np.asarray(timestep.info["in_hazard"]).any()
    # keepouts between the robot and the hazards hold in (almost) every layout
    assert np.mean(robot_to_hazard.min(axis=1) >= params.robot_keepout + params.hazard_keepout) > 0.99
    extent = env.layout["extent"]
    assert np.all(np.abs(hazards) <= extent) and np.all(np.abs(robot) <= extent)
    if env.task == "goal":
        goal_to_hazard = np.linalg.norm(np.asarray(state.goal)[:, None] - hazards, axis=-1)
        assert goal_to_hazard.min() > params.hazard_size


def test_resampled_goal_avoids_hazards():
    env, params = registry.make("SafePointGoal1", goal_size=10.0)  # every step reaches the goal -> resample
    reset = _fast_compile(lambda key: env.reset(key, params), jax.random.key(0))
    state, _ = reset(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 256)
    step = _fast_compile(jax.vmap(lambda key, state: env.step(key, state, jnp.zeros(2), params), (0, None)), keys, state)
    next_state, timestep = step(keys, state)
    assert np.asarray(timestep.info["goal_reached"]).all()
    goals = np.asarray(next_state.goal)
    assert len(np.unique(goals.round(4), axis=0)) == 256
    distance = np.linalg.norm(goals[:, None] - np.asarray(state.hazards), axis=-1)
    assert distance.min() >= params.goal_keepout + params.hazard_keepout - 1e-4


def test_sample_placements_respects_keepouts():
    keepouts = jnp.array([0.4, 0.3, 0.2, 0.2, 0.2])
    positions = np.asarray(nav.sample_placements(jax.random.key(0), keepouts, 2.0, 64))
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    needed = np.asarray(keepouts)[:, None] + np.asarray(keepouts)[None]
    off_diagonal = ~np.eye(5, dtype=bool)
    assert np.all(distance[off_diagonal] >= needed[off_diagonal])
    # with impossible keepouts it still returns points inside the box (the largest-clearance fallback)
    crowded = np.asarray(nav.sample_placements(jax.random.key(0), jnp.full((6,), 5.0), 1.0))
    assert crowded.shape == (6, 2) and np.all(np.abs(crowded) <= 1.0)


def test_point_reaches_top_speed_and_turns():
    params = nav.GoalParams()
    body = nav.initial_body(jnp.zeros(2), 0.0)
    for _ in range(200):
        body = nav.robot_step("point", body, jnp.array([1.0, 0.0]), params)
    # 200 steps = 4 s = 7.7 time constants: at top speed, exactly along the heading
    np.testing.assert_allclose(body.velocity, [params.top_speed, 0.0], rtol=1e-3, atol=1e-6)
    assert float(body.position[0]) > 4.0 and abs(float(body.position[1])) < 1e-6
    # exact first-order integration: after one step v = top (1 - exp(-dt / tau)) (thrust 0.5 saturates too)
    one = nav.robot_step("point", nav.initial_body(jnp.zeros(2), 0.0), jnp.array([0.5, 0.0]), params)
    np.testing.assert_allclose(one.velocity[0], params.top_speed * -np.expm1(-params.dt / params.speed_time_constant),
                               rtol=1e-5)
    body = nav.initial_body(jnp.zeros(2), 0.0)
    for _ in range(10):
        body = nav.robot_step("point", body, jnp.array([0.0, 1.0]), params)
    np.testing.assert_allclose(body.angular_velocity, params.top_turn_rate, rtol=1e-4)  # positive turn: CCW
    np.testing.assert_allclose(body.position, 0.0, atol=1e-7)  # turning in place does not move the point


def test_car_drives_straight_turns_on_wheel_difference_and_does_not_slide():
    _, params = registry.make("SafeCarGoal1")
    body = nav.initial_body(jnp.zeros(2), 0.0)
    for _ in range(100):
        body = nav.robot_step("car", body, jnp.array([1.0, 1.0]), params)
    assert float(body.position[0]) > 2.0 and abs(float(body.position[1])) < 1e-6
    np.testing.assert_allclose(body.velocity[0], params.top_speed, rtol=1e-4)
    assert abs(float(body.angular_velocity)) < 1e-7
    for _ in range(100):
        body = nav.robot_step("car", body, jnp.array([0.0, 1.0]), params)
    # Safety-Gymnasium's car turns clockwise when its right wheel leads, at half the top turn rate on one wheel
    np.testing.assert_allclose(body.angular_velocity, -0.5 * params.top_turn_rate, rtol=1e-4)
    sideways = float((nav._rotation(body.heading).T @ body.velocity)[1])
    forward = float((nav._rotation(body.heading).T @ body.velocity)[0])
    assert abs(sideways) < 0.2 * abs(forward)  # the wheels grip
    # its body x points 90 degrees left of its travel: the velocimeter reads (sideways, -forward)
    env, _ = registry.make("SafeCarGoal1")
    velocimeter = np.asarray(nav.proprioception("car", body))[env.observation_layout()["velocimeter"]]
    np.testing.assert_allclose(velocimeter[:2], [sideways, -forward], atol=1e-5)


def test_pseudo_lidar_bins_alias_and_rotate_with_heading():
    body = nav.initial_body(jnp.zeros(2), 0.0)
    bin_size = 2 * np.pi / 16
    angle = 0.5 * bin_size  # centre of bin 0
    obj = jnp.array([[np.cos(angle), np.sin(angle)]])  # 1 m away
    reading = np.asarray(nav.pseudo_lidar(body, obj, 16, 3.0))
    expected = np.zeros(16)
    expected[0], expected[1], expected[15] = 2 / 3, 1 / 3, 1 / 3
    np.testing.assert_allclose(reading, expected, atol=1e-6)
    # the same object seen from a robot turned by +90 degrees lies at -90 + 11.25 degrees: bin 12
    turned = nav.initial_body(jnp.zeros(2), np.pi / 2)
    reading = np.asarray(nav.pseudo_lidar(turned, obj, 16, 3.0))
    assert reading.argmax() == 12 and np.isclose(reading.max(), 2 / 3, atol=1e-6)
    # out of range reads 0; the nearer of two objects in a bin wins
    far = jnp.array([[5.0, 0.1]])
    assert np.asarray(nav.pseudo_lidar(body, far, 16, 3.0)).max() == 0.0
    two = jnp.array([[2.0, 0.2], [1.0, 0.1]])
    np.testing.assert_allclose(np.asarray(nav.pseudo_lidar(body, two, 16, 3.0))[0], (3 - np.hypot(1.0, 0.1)) / 3, atol=1e-6)


def test_vases_block_the_robot():
    env, params = registry.make("SafePointGoal2")
    state, _ = _fast_compile(lambda key: env.reset(key, params), jax.random.key(0))(jax.random.key(0))
    vase = state.vases[0]
    body = nav.initial_body(vase - jnp.array([0.5, 0.0]), 0.0)
    state = state._replace(body=body)

    def drive(state):  # full thrust straight at the vase for 100 steps
        def body(state, key):
            state, _ = env.step(key, state, jnp.array([1.0, 0.0]), params)
            return state, state.body.position
        return jax.lax.scan(body, state, jax.random.split(jax.random.key(1), 100))[1]

    positions = np.asarray(_fast_compile(drive, state)(state))
    distance = np.min(np.linalg.norm(positions[:, None] - np.asarray(state.vases)[None], axis=-1), axis=1)
    assert distance.min() >= params.vase_size + params.robot_radius - 1e-4
    assert np.linalg.norm(positions[-1] - np.asarray(vase)) < 0.3  # it did get there (pressed against the vase)


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


def test_registry_names_and_overrides():
    for name in TASK_NAMES:
        assert name in registry.list_envs()
    env, params = registry.make("SafePointGoal1", hazard_size=0.25, max_steps=77)
    assert params.hazard_size == 0.25 and params.max_steps == 77 and env.layout["num_hazards"] == 8
    env2, _ = registry.make("SafePointGoal2")
    assert env2.layout["num_hazards"] == 10 and env2.layout["num_vases"] == 10
    with pytest.raises(ValueError, match="unknown environment"):
        registry.make("SafePointGoal7")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task="push"), "task must be one of"),
        (dict(robot="doggo"), "robot must be one of"),
        (dict(level=3), "level must be one of"),
        (dict(task="run", level=2), "level must be one of"),
        (dict(num_lidar_bins=0), "num_lidar_bins"),
    ],
)
def test_unknown_task_robot_or_level_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nav.navigation_env(**kwargs)


@pytest.mark.parametrize(
    "name, override, field",
    [
        ("SafePointGoal1", dict(hazard_size=-0.1), "hazard_size"),
        ("SafePointGoal1", dict(max_steps=0), "max_steps"),
        ("SafePointCircle", dict(wall_limit=float("nan")), "wall_limit"),
        ("SafePointRun", dict(speed_limit=0.0), "speed_limit"),
        ("SafePointRun", dict(dt=1.0), "dt"),
    ],
)
def test_out_of_range_params_raise_naming_the_field(name, override, field):
    with pytest.raises(ValueError, match=field):  # at make, before anything compiles
        registry.make(name, **override)
    env, params = registry.make(name)
    with pytest.raises(ValueError, match=field):  # and at reset, for params built by hand
        env.reset(jax.random.key(0), params.replace(**override))


@pytest.mark.parametrize(
    "action, match",
    [
        (jnp.zeros(3), r"shape \(2,\)"),
        (jnp.zeros((1, 2)), r"shape \(2,\)"),
        (jnp.zeros(2, jnp.int32), "float"),
    ],
)
def test_bad_action_raises(action, match):
    env, params = registry.make("SafePointGoal1")
    state, _ = env.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match=match):
        env.step(jax.random.key(0), state, action, params)
    with pytest.raises(ValueError, match=match):  # also at trace time under jit
        jax.jit(env.step, static_argnums=())(jax.random.key(0), state, action, params)


# ----------------------------------------------------------------------------------------------------------------
# Batch-level auto-reset (jaxsafe/envs/core.py)
# ----------------------------------------------------------------------------------------------------------------


_RESET_CACHE: dict = {}


def _two_rollouts(name, num_envs, num_steps, **overrides):
    """Cached :func:`_rollouts_both_ways`."""
    key = (name, num_envs, num_steps, tuple(sorted(overrides.items())))
    if key not in _RESET_CACHE:
        _RESET_CACHE[key] = _rollouts_both_ways(name, num_envs, num_steps, **overrides)
    return _RESET_CACHE[key]


def _rollouts_both_ways(name, num_envs, num_steps, **overrides):
    """The same rollout through ``wrap_for_training`` (batch-level reset behind a cond) and through a plain vmap of
    ``EpisodeStats(AutoReset(env))`` (no VecEnv axis: the reset computed on every step), with the same keys."""
    from jaxsafe.envs.core import AutoReset, EpisodeStats

    env, params = registry.make(name, **overrides)
    batched = wrap_for_training(env, num_envs)
    per_env = EpisodeStats(AutoReset(env))
    space = env.action_space(params)

    def run(key, use_vec_env):
        key_reset, key_steps = jax.random.split(key)
        if use_vec_env:
            reset, step = batched.reset, batched.step
        else:
            reset = lambda k, p: jax.vmap(per_env.reset, in_axes=(0, None))(jax.random.split(k, num_envs), p)
            step = lambda k, s, a, p: jax.vmap(per_env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k, num_envs), s, a, p)
        state, _ = reset(key_reset, params)

        def body(state, key):
            key_action, key_step = jax.random.split(key)
            if hasattr(space, "n"):
                action = jax.random.randint(key_action, (num_envs,), 0, space.n)
            else:
                action = jax.random.uniform(key_action, (num_envs, 2), minval=-1.0, maxval=1.0)
            state, ts = step(key_step, state, action, params)
            return state, (state, ts)

        return jax.lax.scan(body, state, jax.random.split(key_steps, num_steps))[1]

    key = jax.random.key(5)
    fast = _fast_compile(lambda k: run(k, True), key)(key)
    slow = _fast_compile(lambda k: run(k, False), key)(key)
    jaxpr = str(jax.make_jaxpr(lambda k: run(k, True))(key))
    return env, params, jax.device_get(fast), jax.device_get(slow), jaxpr


RESET_ROLLOUTS = {"SafePointGoal1": (32, 60, dict(max_steps=20)), "SafeCartPole": (8, 120, {})}


@pytest.mark.parametrize("name", list(RESET_ROLLOUTS))
def test_batch_level_reset_gives_the_per_step_reset_results(name):
    """Bit-identical trajectories (same keys, same selection), episodes still reset, and the reset sits behind a
    cond; CartPole's episodes end at different steps, the navigation ones all at once."""
    num_envs, num_steps, overrides = RESET_ROLLOUTS[name]
    env, params, fast, slow, jaxpr = _two_rollouts(name, num_envs, num_steps, **overrides)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(slow)):
        np.testing.assert_array_equal(a, b)
    _, ts = fast
    done = ts.terminated | ts.truncated
    assert done.sum() >= num_envs and ts.info["episode_done"].sum() == done.sum()
    if name == "SafePointGoal1":
        assert done.sum(axis=1).tolist().count(num_envs) == 3  # all envs finish at steps 20, 40, 60
    else:
        assert len(set(np.flatnonzero(done.any(axis=1)))) > 3  # staggered episode ends
    assert " cond[" in jaxpr or "cond " in jaxpr


def test_batch_level_reset_keeps_the_reset_layout_distribution():
    """The layouts the rollout resets into have the distribution of fresh resets (two-sample KS per coordinate)."""
    from scipy import stats

    num_envs, num_steps, overrides = RESET_ROLLOUTS["SafePointGoal1"]
    env, params, fast, _, _ = _two_rollouts("SafePointGoal1", num_envs, num_steps, **overrides)
    state, ts = fast
    done = ts.terminated | ts.truncated  # (T, N): the state on these steps is a fresh episode's
    inner = state.env_state
    reset_hazards = inner.hazards[done].reshape(-1, 2)
    reset_robot = inner.body.position[done]
    fresh, _ = _fast_compile(jax.vmap(lambda k: env.reset(k, params)), jax.random.split(jax.random.key(9), 256))(
        jax.random.split(jax.random.key(9), 256))
    for ours, theirs in [(reset_hazards, np.asarray(fresh.hazards).reshape(-1, 2)),
                         (reset_robot, np.asarray(fresh.body.position))]:
        for axis in (0, 1):
            assert stats.ks_2samp(ours[:, axis], theirs[:, axis]).pvalue > 0.001
    assert len(reset_robot) == num_envs * 3 and len(np.unique(reset_robot.round(5), axis=0)) == num_envs * 3
