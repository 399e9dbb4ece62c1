"""Our navigation tasks against the Safety-Gymnasium 1.0.0 fixture (``tests/fixtures/safety_gymnasium/``).

The fixture was recorded by ``scripts/make_safety_gymnasium_fixture.py`` from Safety-Gymnasium's MuJoCo tasks (in a
separate Python 3.10 venv; Safety-Gymnasium is never imported here). Each test states its tolerance; they are set
from the fit residuals measured when the constants were fitted (docs/safety_suite.md), so a change to the robots,
the placement rule, the sensors or the task rules that moves us away from Safety-Gymnasium fails here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.envs import navigation as nav
from jaxsafe.envs import navigation_fidelity as fidelity
from jaxsafe.envs import registry

REFERENCE, TRACES = fidelity.load_reference()
# XLA's cheaper CPU pipeline: these programs are small and run once
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ROBOTS = REFERENCE["robots"]


def _rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


# ----------------------------------------------------------------------------------------------------------------
# Robots: dt, axes, turn sign, step responses
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("robot", ["point", "car"])
def test_dt_drive_axis_and_turn_sign(robot):
    params = nav.GoalParams(**nav._ROBOT_DEFAULTS[robot])
    assert params.dt == pytest.approx(ROBOTS[robot]["dt"], abs=1e-9)  # point 0.02 s, car 0.04 s
    convention = nav.ROBOT_CONVENTIONS[robot]
    assert convention["drive_axis"] == pytest.approx(ROBOTS[robot]["drive_axis_angle"], abs=0.02)  # car: body -y
    assert convention["turn_sign"] == ROBOTS[robot]["turn_sign"]  # car: right wheel leading turns clockwise


# (robot, command, signal, RMSE tolerance over 100 steps from rest, relative tolerance on the last-50-step mean)
STEP_RESPONSES = [
    ("point", (1.0, 0.0), "forward_speed", 0.01, 0.01),
    ("point", (0.5, 0.0), "forward_speed", 0.01, 0.01),  # the thrust saturates: half a command is a full one
    ("point", (-1.0, 0.0), "forward_speed", 0.01, 0.01),
    ("point", (0.0, 1.0), "yaw_rate", 0.01, 0.01),
    ("point", (0.0, -1.0), "yaw_rate", 0.01, 0.01),
    ("point", (1.0, 1.0), "forward_speed", 0.05, 0.12),  # driving while turning: the velocity lags the heading
    ("car", (1.0, 1.0), "forward_speed", 0.06, 0.05),
    ("car", (0.5, 0.5), "forward_speed", 0.07, 0.05),
    # reverse: the from-rest response rises with 0.51 s (the caster flips); the model uses 0.13 s, fitted to the
    # random policy's drift instead (a first-order model would apply 0.51 s on every reversal and bias it forward)
    ("car", (-1.0, -1.0), "forward_speed", 0.13, 0.06),
    ("car", (1.0, 0.0), "forward_speed", 0.05, 0.05),
    ("car", (1.0, -1.0), "yaw_rate", 0.2, 0.05),
    ("car", (-1.0, 1.0), "yaw_rate", 0.2, 0.05),
    ("car", (1.0, 0.0), "yaw_rate", 0.2, 0.05),
]


@pytest.mark.parametrize("robot, command, signal, rmse_tol, final_tol", STEP_RESPONSES)
def test_step_responses_match(robot, command, signal, rmse_tol, final_tol):
    reference = fidelity.reference_step_response(REFERENCE, TRACES, robot, command)[signal]
    ours = fidelity.step_response(robot, command, len(reference))[signal]
    assert _rmse(ours, reference) <= rmse_tol, (ours[:10], reference[:10])
    np.testing.assert_allclose(ours[50:].mean(), reference[50:].mean(), rtol=final_tol)


# ----------------------------------------------------------------------------------------------------------------
# Observation layout and sensor conventions
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, robot, size", [("SafePointGoal1", "point", 60), ("SafeCarGoal1", "car", 72)])
def test_observation_keys_sizes_and_order(name, robot, size):
    env, _ = registry.make(name)
    layout = env.observation_layout()
    # the step responses were recorded on Goal0 (goal lidar only); Goal1 adds the hazards' and the vases' lidars
    recorded = [(k, n) for k, n in zip(ROBOTS[robot]["obs_keys"], ROBOTS[robot]["obs_sizes"])]
    ours = [(k, s.stop - s.start) for k, s in layout.items()]
    assert ours[: len(recorded)] == recorded
    assert [k for k, _ in ours[len(recorded):]] == ["hazards_lidar", "vases_lidar"]
    assert env.observation_size == ROBOTS[robot]["obs_size"] + 32 == size
    if robot == "point":
        assert size == len(REFERENCE["lidar"][0]["obs"])  # a recorded PointGoal1 observation


def test_button_observation_size_and_lidar_order():
    env, _ = registry.make("SafePointButton1")
    assert env.observation_size == 76
    assert [k for k in env.observation_layout() if k.endswith("_lidar")] == [
        "buttons_lidar", "goal_lidar", "hazards_lidar", "gremlins_lidar"]


@pytest.mark.parametrize("robot", ["point", "car"])
def test_magnetometer_accelerometer_velocimeter_conventions(robot):
    """Rebuild the sensors from the recorded pose and velocity of a straight drive; compare with MuJoCo's."""
    name = "+1.0,+0.0" if robot == "point" else "+1.0,+1.0"
    sensor_heading = TRACES[f"{robot}/{name}/heading"]  # the body +x axis angle
    velocity = TRACES[f"{robot}/{name}/vel"]
    drive_axis = nav.ROBOT_CONVENTIONS[robot]["drive_axis"]
    for t in (10, 50, 99):
        body = nav.initial_body(jnp.zeros(2), sensor_heading[t] + drive_axis)._replace(
            velocity=jnp.asarray(velocity[t], jnp.float32))
        ours = np.asarray(nav.proprioception(robot, body))
        np.testing.assert_allclose(ours[9:12], TRACES[f"{robot}/{name}/magnetometer"][t], atol=2e-3)
        np.testing.assert_allclose(ours[3:5], TRACES[f"{robot}/{name}/velocimeter"][t][:2], atol=2e-2)
        assert ours[5] == 0.0 and ours[6] == ours[7] == 0.0
        assert ours[2] == pytest.approx(9.81)
    # MuJoCo's accelerometer carries gravity in z (the car's bounces on its caster: noisy, 9.81 on average)
    assert TRACES[f"{robot}/{name}/accelerometer"][:, 2].mean() == pytest.approx(9.81, abs=1.0)


def test_lidar_bins_match_the_recorded_poses():
    """The recorded goal and hazard lidars, rebuilt from the recorded positions (point: bin 0 = body +x)."""
    lidar = jax.jit(lambda body, objects: nav.pseudo_lidar(body, objects, 16, 3.0, nav.sensor_heading("point", body)))
    for sample in REFERENCE["lidar"]:
        body = nav.initial_body(jnp.asarray(sample["agent"]), sample["heading"])
        np.testing.assert_allclose(lidar(body, jnp.asarray([sample["goal"]])), sample["goal_lidar"], atol=1e-5)
        # the hazards as one group of 8 (SG's pos may be a few um off the layout after mj_forward)
        np.testing.assert_allclose(lidar(body, jnp.asarray(sample["hazards"])), sample["hazards_lidar"], atol=1e-5)


def test_car_lidar_bin_zero_is_ninety_degrees_left_of_travel():
    env, params = registry.make("SafeCarGoal1")
    body = nav.initial_body(jnp.zeros(2), 0.0)  # travelling along +x, so body +x points along world +y
    ahead, left = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
    lidar = lambda obj: np.asarray(nav.pseudo_lidar(body, obj, 16, 3.0, nav.sensor_heading("car", body)))
    assert lidar(left).argmax() in (0, 15) and lidar(ahead).argmax() in (11, 12)  # ahead = body -y = 270 degrees


# ----------------------------------------------------------------------------------------------------------------
# Placement rule and layout statistics
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def goal_layouts():
    return fidelity.layout_statistics("SafePointGoal1", 2000, seed=0)


def _box(task, group):
    boxes = REFERENCE["placements"][task]["boxes"]
    return next(v["box"] for k, v in boxes.items() if k.rstrip("0123456789") == group)


def test_placement_boxes_shrink_by_each_keepout(goal_layouts):
    for group in ("agent", "goal", "hazard", "vase"):
        x0, y0, x1, y1 = _box("PointGoal1", group)  # the fixture's boxes: extents shrunk by the object's keepout
        low, high = goal_layouts["ranges"][group]
        assert np.all(low >= [x0 - 1e-4, y0 - 1e-4]) and np.all(high <= [x1 + 1e-4, y1 + 1e-4]), group
        assert np.all(low <= [x0 + 0.1, y0 + 0.1]) and np.all(high >= [x1 - 0.1, y1 - 0.1]), group  # and fill them
    assert _box("PointGoal1", "hazard")[2] == pytest.approx(1.32) and _box("PointGoal1", "agent")[2] == pytest.approx(1.1)


def test_layout_statistics_match(goal_layouts):
    reference = REFERENCE["placements"]["PointGoal1"]
    # 2000 layouts each side: the standard errors are ~0.5% of the means; tolerances 5% (distance), 6% (density)
    np.testing.assert_allclose(goal_layouts["start_goal_distance"].mean(), reference["start_goal_distance"]["mean"],
                               rtol=0.05)
    np.testing.assert_allclose(goal_layouts["hazard_density"].mean(), reference["hazard_density"]["mean"], rtol=0.06)


# ----------------------------------------------------------------------------------------------------------------
# Task rules: Circle's reward factor, Button's gremlins and timer
# ----------------------------------------------------------------------------------------------------------------


def test_circle_reward_factor():
    _, params = registry.make("SafePointCircle")
    assert params.reward_factor == REFERENCE["tasks"]["circle_reward_factor"] == pytest.approx(0.1)


def test_gremlins_follow_the_recorded_orbits():
    recorded = REFERENCE["tasks"]["button_gremlins"]
    _, params = registry.make("SafePointButton1")
    assert params.gremlin_travel == recorded["travel"] and params.gremlin_size == recorded["size"]
    assert params.gremlin_contact_cost == recorded["contact_cost"]
    assert params.button_resample_delay == recorded["buttons_resampling_delay"]
    bases = jnp.asarray([recorded["layout"][f"gremlin{i}"] for i in range(4)])
    positions = np.asarray(recorded["positions"])  # (T, 4, 2) after steps 1..T
    ours = np.stack([np.asarray(nav.gremlin_positions(bases, jnp.asarray(t + 1), params))
                     for t in range(len(positions))])
    # MuJoCo's weld pulls each gremlin onto its orbit within ~20 steps, then it trails by a few centimetres
    assert np.max(np.linalg.norm(ours[25:] - positions[25:], axis=-1)) < 0.06


def test_button_goal_drawn_from_all_four_and_lidar_blanked_during_the_timer():
    env, params = registry.make("SafePointButton1")

    def run(key):
        state, _ = env.reset(key, params)

        def body(state, key):
            # put the robot against the goal button (pushed out to the touching distance): every step presses it
            goal = state.buttons[state.goal_button]
            touching = goal + jnp.array([params.robot_radius + params.button_size - 0.01, 0.0])
            state = state._replace(body=state.body._replace(position=touching))
            next_state, ts = env.step(key, state, jnp.zeros(2), params)
            return next_state, (state.goal_button, next_state.goal_button, next_state.button_timer, ts)

        return jax.lax.scan(body, state, jax.random.split(key, 64))[1]

    compiled = jax.jit(run).lower(jax.random.key(1)).compile(compiler_options=_FAST_COMPILE)
    before, after, timer, ts = jax.device_get(compiled(jax.random.key(1)))
    layout = env.observation_layout()
    assert ts.info["goal_reached"].all() and np.all(timer == params.button_resample_delay)
    np.testing.assert_array_equal(ts.obs[:, layout["buttons_lidar"]], 0.0)  # blanked while the timer runs
    assert np.all(ts.obs[:, layout["goal_lidar"]].max(axis=1) > 0.0)  # the goal lidar is not
    same = np.mean(before == after)
    assert 0.1 < same < 0.45, same  # drawn from all four: the same button again about 1 in 4
    assert set(np.unique(after)) == {0, 1, 2, 3}


def test_step_cost_is_safety_gymnasiums_indicator_and_the_raw_depth_is_one_option_away():
    _, params = registry.make("SafePointGoal1")
    hazards = jnp.array([[0.0, 0.0], [0.25, 0.0], [2.0, 2.0]])
    position = jnp.array([0.15, 0.0])  # 0.15 m and 0.10 m from the first two centres
    depth = nav.hazard_depth(position, hazards, params)
    np.testing.assert_allclose(depth, 0.05 + 0.10, rtol=1e-5)
    assert params.constrain_indicator and float(nav.step_cost(depth, params)) == 1.0
    _, raw = registry.make("SafePointGoal1", constrain_indicator=False)
    np.testing.assert_allclose(nav.step_cost(depth, raw), 0.15, rtol=1e-5)
    assert float(nav.step_cost(nav.hazard_depth(jnp.array([1.0, 1.0]), hazards, params), params)) == 0.0
    with pytest.raises(ValueError, match="constrain_indicator"):
        registry.make("SafePointGoal1", constrain_indicator="yes")
    for config, stats in REFERENCE.get("policies", {}).items():  # Safety-Gymnasium's recorded step costs: all 1
        assert stats["cost_step_values"]["count"] == 0 or stats["cost_step_values"]["mean"] == 1.0, config


# ----------------------------------------------------------------------------------------------------------------
# Policy statistics: the scripted goal-seeking controller and the random policy
# ----------------------------------------------------------------------------------------------------------------

# (fixture config, our task, statistic): goals per episode and return of the scripted controller depend on the
# robots' speed and turn rate and on the placement boxes; the random policy's drift on the saturation and the time
# constants. Tolerance: 3 combined standard errors plus 10% of the reference.
POLICY_CHECKS = [
    ("PointGoal1/scripted", "SafePointGoal1", "goals"),
    ("PointGoal1/scripted", "SafePointGoal1", "episode_return"),
    ("PointGoal1/random", "SafePointGoal1", "drift"),
    ("CarGoal1/scripted", "SafeCarGoal1", "goals"),
    ("CarGoal1/scripted", "SafeCarGoal1", "episode_return"),
    ("CarGoal1/random", "SafeCarGoal1", "drift"),
]
_POLICY_CACHE: dict = {}


def _ours(task, policy):
    if (task, policy) not in _POLICY_CACHE:
        _POLICY_CACHE[task, policy] = fidelity.policy_statistics(task, policy, 24, seed=3)
    return _POLICY_CACHE[task, policy]


@pytest.mark.parametrize("config, task, statistic", POLICY_CHECKS)
def test_policy_statistics_match_safety_gymnasium(config, task, statistic):
    if config not in REFERENCE.get("policies", {}):
        pytest.skip(f"the fixture has no {config} run")
    reference = np.asarray(REFERENCE["policies"][config][statistic]["values"])
    ours = _ours(task, config.split("/")[1])[statistic]
    se = np.sqrt(reference.var(ddof=1) / len(reference) + ours.var(ddof=1) / len(ours))
    assert abs(ours.mean() - reference.mean()) <= 3 * se + 0.1 * abs(reference.mean()), (ours.mean(), reference.mean(), se)
