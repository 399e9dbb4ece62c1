"""Side-by-side measurements of our navigation tasks against the Safety-Gymnasium 1.0.0 fixture.

The fixture (``tests/fixtures/safety_gymnasium/``, recorded by ``scripts/make_safety_gymnasium_fixture.py`` in a
separate Python 3.10 venv; Safety-Gymnasium is never imported here) holds step responses, layout statistics and
random/scripted policy statistics. This module measures the same quantities on our tasks, with the same
definitions, for ``tests/envs/test_navigation_fidelity.py`` and ``benchmarks/navigation_fidelity.py``:

* :func:`step_response`: forward speed (along the drive axis) and yaw rate per step under a constant command, from
  rest;
* :func:`layout_statistics`: start-to-goal distance, hazard density (fraction of the central ``[-1, 1]^2``
  square within ``hazard_size`` of a hazard, on a 41 x 41 grid, where the robots start and the goals lie), per-object coordinate ranges over many reset layouts;
* :func:`policy_statistics`: episode return, cost, goals reached and drift (start-to-end distance) of the random
  policy (uniform actions) and of :func:`scripted_action`, the goal-seeking controller the fixture script runs on
  Safety-Gymnasium.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.envs import navigation as nav
from jaxsafe.envs import registry

__all__ = ["FIXTURE_DIR", "load_reference", "step_response", "scripted_action", "layout_statistics",
           "policy_statistics", "reference_step_response"]

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "safety_gymnasium"


def load_reference(directory: Path | str = FIXTURE_DIR) -> tuple[dict, dict]:
    """``(reference.json as a dict, step_responses.npz as a dict of arrays)``."""
    directory = Path(directory)
    with np.load(directory / "step_responses.npz", allow_pickle=False) as traces:
        arrays = {key: traces[key] for key in traces.files}
    return json.loads((directory / "reference.json").read_text()), arrays


def reference_step_response(reference: dict, traces: dict, robot: str, command) -> dict[str, np.ndarray]:
    """The fixture's forward speed (along the recorded drive axis) and yaw rate under ``command``."""
    name = f"{command[0]:+.1f},{command[1]:+.1f}"
    axis = reference["robots"][robot]["drive_axis_angle"]
    velocimeter = traces[f"{robot}/{name}/velocimeter"]
    forward = velocimeter[:, 0] * np.cos(axis) + velocimeter[:, 1] * np.sin(axis)
    return {"forward_speed": forward, "yaw_rate": traces[f"{robot}/{name}/gyro"][:, 2]}


def step_response(robot: str, command, steps: int, params: nav.NavigationParams | None = None) -> dict:
    """Our forward speed and yaw rate per step (``(steps,)`` each) under a constant ``command`` held from rest."""
    if params is None:
        params = nav.GoalParams(**nav._ROBOT_DEFAULTS[robot])
    action = jnp.asarray(command, jnp.float32)

    def body(state, _):
        state = nav.robot_step(robot, state, action, params)
        forward = jnp.dot(nav._rotation(state.heading)[:, 0], state.velocity)
        return state, (forward, state.angular_velocity)

    _, (forward, yaw) = jax.lax.scan(body, nav.initial_body(jnp.zeros(2), 0.0), None, length=steps)
    return {"forward_speed": np.asarray(forward), "yaw_rate": np.asarray(yaw)}


def scripted_action(robot: str, ego: jax.Array) -> jax.Array:
    """Goal-seeking controller on the goal's vector ``ego`` (2,) in the robot's drive frame (x = travel direction).

    Turn towards the goal (``clip(2 angle)``, signed so that a positive angle turns counter-clockwise), drive
    forward in proportion to how well the goal is ahead. The car's wheels get ``forward -/+ turn``. The same
    controller, in numpy, runs on Safety-Gymnasium in ``scripts/make_safety_gymnasium_fixture.py``.
    """
    angle = jnp.arctan2(ego[1], ego[0])
    turn = jnp.clip(2.0 * angle, -1.0, 1.0) * nav.ROBOT_CONVENTIONS[robot]["turn_sign"]
    forward = jnp.clip(1.0 - jnp.abs(angle) / (jnp.pi / 2), 0.0, 1.0)
    if robot == "point":
        return jnp.stack([forward, turn])
    return jnp.clip(jnp.stack([forward - turn, forward + turn]), -1.0, 1.0)


def _target(env, state):
    if env.task == "button":
        return state.buttons[state.goal_button]
    return state.goal


def policy_statistics(name: str, policy: str, episodes: int, seed: int = 0, **overrides) -> dict:
    """Per-episode ``episode_return``, ``episode_cost``, ``goals``, ``drift`` (m) of ``policy`` (``"random"`` or
    ``"scripted"``) on task ``name`` over full episodes (``max_steps``), vmapped over ``episodes`` reset keys."""
    if policy not in ("random", "scripted"):
        raise ValueError(f"policy must be 'random' or 'scripted', got {policy!r}")
    env, params = registry.make(name, **overrides)

    def episode(key):
        key_reset, key_steps = jax.random.split(key)
        state, _ = env.reset(key_reset, params)
        start = state.body.position

        def body(carry, key):
            state, totals = carry
            key_action, key_step = jax.random.split(key)
            if policy == "random":
                action = jax.random.uniform(key_action, (2,), jnp.float32, -1.0, 1.0)
            else:
                ego = (_target(env, state) - state.body.position) @ nav._rotation(state.body.heading)
                action = scripted_action(env.robot, ego)
            state, ts = env.step(key_step, state, action, params)
            goal = ts.info.get("goal_reached", jnp.zeros((), bool)).astype(jnp.float32)
            return (state, totals + jnp.stack([ts.reward, ts.cost[0], goal])), None

        keys = jax.random.split(key_steps, int(params.max_steps))
        (state, totals), _ = jax.lax.scan(body, (state, jnp.zeros(3)), keys)
        return totals, jnp.linalg.norm(state.body.position - start)

    totals, drift = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(seed), episodes))
    totals, drift = np.asarray(totals), np.asarray(drift)
    return {"episode_return": totals[:, 0], "episode_cost": totals[:, 1], "goals": totals[:, 2], "drift": drift}


def layout_statistics(name: str, num_layouts: int, seed: int = 0) -> dict:
    """Reset-layout statistics of task ``name``: per-object coordinate ranges, start-to-goal distance (Goal tasks),
    hazard density and the robot's distance to its nearest hazard, over ``num_layouts`` reset keys."""
    env, params = registry.make(name)
    states, _ = jax.jit(jax.vmap(lambda key: env.reset(key, params)))(jax.random.split(jax.random.key(seed),
                                                                                       num_layouts))
    robot = np.asarray(states.body.position)
    hazards = np.asarray(states.hazards)
    grid = np.stack(np.meshgrid(np.linspace(-1.0, 1.0, 41), np.linspace(-1.0, 1.0, 41)), -1).reshape(-1, 2)
    inside = np.min(np.linalg.norm(grid[None, :, None] - hazards[:, None], axis=-1), axis=-1) <= params.hazard_size
    out = {
        "hazard_density": inside.mean(axis=1),
        "robot_nearest_hazard": np.min(np.linalg.norm(hazards - robot[:, None], axis=-1), axis=-1),
        "ranges": {"agent": (robot.min(axis=0), robot.max(axis=0)),
                   "hazard": (hazards.reshape(-1, 2).min(axis=0), hazards.reshape(-1, 2).max(axis=0))},
    }
    if env.task == "goal":
        goal = np.asarray(states.goal)
        out["start_goal_distance"] = np.linalg.norm(goal - robot, axis=-1)
        out["ranges"]["goal"] = (goal.min(axis=0), goal.max(axis=0))
        vases = np.asarray(states.vases).reshape(-1, 2)
        out["ranges"]["vase"] = (vases.min(axis=0), vases.max(axis=0))
    if env.task == "button":
        buttons = np.asarray(states.buttons).reshape(-1, 2)
        gremlins = np.asarray(states.gremlin_bases).reshape(-1, 2)
        out["ranges"]["button"] = (buttons.min(axis=0), buttons.max(axis=0))
        out["ranges"]["gremlin"] = (gremlins.min(axis=0), gremlins.max(axis=0))
    return out
