"""Record Safety-Gymnasium 1.0.0 reference behaviour into ``tests/fixtures/safety_gymnasium/``.

Run ONCE, offline, in a Python 3.10 venv that has Safety-Gymnasium (jaxsafe never imports it; the tests read the
fixture only)::

    python3.10 -m venv /tmp/sg310
    /tmp/sg310/bin/pip install safety-gymnasium==1.0.0      # pins gymnasium 0.28.1, mujoco 2.3.3
    /tmp/sg310/bin/python scripts/make_safety_gymnasium_fixture.py [--episodes 20] [--layouts 2000]

What it writes (``reference.json``, plus ``step_responses.npz`` with the per-step traces):

* ``robots``: per robot (point, car) the control step ``dt`` (MuJoCo timestep x frameskip), the observation keys
  and sizes, the body axis the robot drives along, the turn sign, and the step responses to constant commands held
  from rest: forward speed (along the drive axis), yaw rate, position and heading per step, and the raw sensors
  (accelerometer, velocimeter, gyro, magnetometer; the car's ``ballangvel_rear`` / ``ballquat_rear``).
* ``lidar``: the goal lidar and the ego-frame goal vector at a few poses (bin order, bin 0 direction).
* ``placements``: per task, each object's keepout and the box it is drawn from, and the sampled layouts'
  statistics (coordinate ranges per object, start-to-goal distance, hazard density = fraction of the
  central ``[-1, 1]^2`` square inside a hazard, on a 41 x 41 grid).
* ``tasks``: Circle's ``reward_factor``, Button's gremlin trajectories and timer blanking, the hazard cost rule.
* ``policies``: random (uniform actions) and scripted goal-seeking (the controller of
  ``jaxsafe.envs.navigation_fidelity.scripted_action``, written out again here in numpy) episode statistics: return,
  cost, goals per episode, drift (start-to-end distance), per-step cost values.

The controller and the statistics' definitions are the ones ``jaxsafe/envs/navigation_fidelity.py`` uses on our
tasks, so the comparison is like for like. Only observable behaviour is recorded; no Safety-Gymnasium code is
copied.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "safety_gymnasium"

# Constant commands held from rest (point: (thrust, turn); car: (left, right)).
COMMANDS = {
    "point": [(1.0, 0.0), (0.5, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (0.0, 0.5), (1.0, 1.0)],
    "car": [(1.0, 1.0), (0.5, 0.5), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (0.5, -0.5), (1.0, 0.0)],
}
RESPONSE_STEPS = {"point": 100, "car": 100}
POLICY_CONFIGS = [f"{task}/{policy}" for task in ("PointGoal1", "CarGoal1", "PointButton1")
                  for policy in ("random", "scripted")]


def scripted_action(robot, ego, forward_axis_angle, turn_sign):
    """Goal-seeking controller on the ego-frame goal vector ``ego`` (2,) in the robot's *drive* frame.

    ``forward_axis_angle`` rotates the body frame into the drive frame (0 for the point, the car's drive axis angle
    otherwise); ``turn_sign`` is +1 when a positive turn command turns counter-clockwise. Mirrors
    ``jaxsafe.envs.navigation_fidelity.scripted_action``.
    """
    angle = np.arctan2(ego[1], ego[0])
    turn = np.clip(2.0 * angle, -1.0, 1.0) * turn_sign
    forward = np.clip(1.0 - abs(angle) / (np.pi / 2), 0.0, 1.0)
    if robot == "point":
        return np.array([forward, turn])
    return np.clip(np.array([forward - turn, forward + turn]), -1.0, 1.0)


def heading_of(mat):
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def ego_vector(task, target_xy, axis_angle):
    """Ego-frame (drive frame) vector from the agent to ``target_xy``."""
    offset = np.asarray(target_xy[:2]) - task.agent.pos[:2]
    body = offset @ task.agent.mat[:2, :2]  # world -> body (x, y)
    c, s = np.cos(axis_angle), np.sin(axis_angle)
    return np.array([c * body[0] + s * body[1], -s * body[0] + c * body[1]])


def sensors(task, keys):
    return {k: np.asarray(task.agent.get_sensor(k), float).reshape(-1) for k in keys}


def record_responses(sg, robot):
    env = sg.make(f"Safety{robot.capitalize()}Goal0-v0")
    task = env.unwrapped.task
    env.reset(seed=99)
    keys = list(task.obs_info.obs_space_dict.spaces)
    sensor_keys = [k for k in keys if not k.endswith("_lidar")]
    dt = float(task.model.opt.timestep) * task.sim_conf.frameskip_binom_n
    out = {"dt": dt, "obs_keys": keys,
           "obs_sizes": [int(np.prod(task.obs_info.obs_space_dict.spaces[k].shape)) for k in keys],
           "obs_size": int(env.observation_space.shape[0]), "responses": {}}
    traces = {}
    for index, command in enumerate(COMMANDS[robot]):
        env.reset(seed=100 + index)
        rows = []
        for _ in range(RESPONSE_STEPS[robot]):
            env.step(np.array(command, float))
            rows.append(dict(pos=task.agent.pos[:2].copy(), heading=heading_of(task.agent.mat),
                             vel=np.asarray(task.agent.vel[:2], float).copy(), **sensors(task, sensor_keys)))
        name = f"{command[0]:+.1f},{command[1]:+.1f}"
        for field in rows[0]:
            traces[f"{robot}/{name}/{field}"] = np.stack([np.asarray(r[field], float) for r in rows])
        out["responses"][name] = {"command": list(command)}
    # the drive axis: the body-frame direction of travel under the full forward command
    forward_name = "+1.0,+0.0" if robot == "point" else "+1.0,+1.0"
    velocimeter = traces[f"{robot}/{forward_name}/velocimeter"][-1]
    out["drive_axis_angle"] = float(np.arctan2(velocimeter[1], velocimeter[0]))
    turn_name = "+0.0,+1.0" if robot == "point" else "-1.0,+1.0"  # car: right wheel forward
    out["turn_sign"] = float(np.sign(traces[f"{robot}/{turn_name}/gyro"][-1][2]))
    env.close()
    return out, traces


def record_lidar(sg):
    env = sg.make("SafetyPointGoal1-v0")
    task = env.unwrapped.task
    keys = list(task.obs_info.obs_space_dict.spaces)
    sizes = [int(np.prod(task.obs_info.obs_space_dict.spaces[k].shape)) for k in keys]
    starts = np.cumsum([0] + sizes)
    goal_slice = slice(starts[keys.index("goal_lidar")], starts[keys.index("goal_lidar") + 1])
    samples = []
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        for _ in range(5):
            obs, *_ = env.step(np.array([0.3, 0.8]))
        samples.append(dict(agent=task.agent.pos[:2].tolist(), heading=heading_of(task.agent.mat),
                            goal=task.goal.pos[:2].tolist(), hazards=[p[:2].tolist() for p in task.hazards.pos],
                            goal_lidar=obs[goal_slice].tolist(),
                            hazards_lidar=obs[starts[keys.index("hazards_lidar")]:
                                              starts[keys.index("hazards_lidar") + 1]].tolist(),
                            obs=obs.tolist()))
    env.close()
    return samples


def layout_stats(sg, env_name, num_layouts, rng_seed=0):
    env = sg.make(env_name)
    env.reset(seed=rng_seed)
    task = env.unwrapped.task
    placements = task.placements_conf.placements
    extents = list(task.placements_conf.extents)
    generator = task.random_generator
    boxes = {}
    for name, (boxes_of_object, keepout) in placements.items():
        if boxes_of_object is None:
            x0, y0, x1, y1 = extents
            boxes[name] = dict(keepout=keepout, box=[x0 + keepout, y0 + keepout, x1 - keepout, y1 - keepout])
        else:
            boxes[name] = dict(keepout=keepout, box=None)
    coords: dict[str, list] = {}
    start_goal, density, nearest = [], [], []
    grid = np.stack(np.meshgrid(np.linspace(-1.0, 1.0, 41), np.linspace(-1.0, 1.0, 41)), -1).reshape(-1, 2)
    hazard_size = float(task.hazards.size) if hasattr(task, "hazards") else None
    for _ in range(num_layouts):
        while not generator.sample_layout():
            pass
        layout = generator.layout
        for name, xy in layout.items():
            group = name.rstrip("0123456789")
            coords.setdefault(group, []).append(np.asarray(xy, float))
        if "goal" in layout and "button0" not in layout:
            start_goal.append(float(np.linalg.norm(np.asarray(layout["goal"]) - np.asarray(layout["agent"]))))
        hazards = np.array([xy for name, xy in layout.items() if name.startswith("hazard")])
        if len(hazards):
            inside = np.min(np.linalg.norm(grid[:, None] - hazards[None], axis=-1), axis=1) <= hazard_size
            density.append(float(inside.mean()))
            nearest.append(float(np.min(np.linalg.norm(hazards - np.asarray(layout["agent"]), axis=-1))))
    ranges = {g: dict(min=np.min(np.stack(v), axis=0).tolist(), max=np.max(np.stack(v), axis=0).tolist())
              for g, v in coords.items()}
    stats = dict(num_layouts=num_layouts, boxes=boxes, extents=extents, ranges=ranges)
    if start_goal:
        stats["start_goal_distance"] = dict(mean=float(np.mean(start_goal)), std=float(np.std(start_goal)))
    if density:
        stats["hazard_density"] = dict(mean=float(np.mean(density)), std=float(np.std(density)))
        stats["robot_nearest_hazard"] = dict(mean=float(np.mean(nearest)), std=float(np.std(nearest)))
    env.close()
    return stats


def run_policy(sg, env_name, robot, policy, episodes, axis_angle, turn_sign, seed0=1000):
    env = sg.make(env_name)
    task = env.unwrapped.task
    rng = np.random.default_rng(seed0)
    returns, costs, goals, drifts, cost_values, steps_in_cost = [], [], [], [], [], []
    for episode in range(episodes):
        env.reset(seed=seed0 + episode)
        start = task.agent.pos[:2].copy()
        total_reward = total_cost = 0.0
        num_goals = 0
        done = False
        while not done:
            if policy == "random":
                action = rng.uniform(-1.0, 1.0, 2)
            else:
                if hasattr(task, "buttons"):
                    target = task.buttons.pos[task.buttons.goal_button]
                else:
                    target = task.goal.pos
                action = scripted_action(robot, ego_vector(task, target, axis_angle), axis_angle, turn_sign)
            _, reward, cost, terminated, truncated, info = env.step(action)
            total_reward += reward
            total_cost += cost
            if cost > 0:
                cost_values.append(float(cost))
            num_goals += int(bool(info.get("goal_met", False)))
            done = terminated or truncated
        returns.append(total_reward)
        costs.append(total_cost)
        goals.append(num_goals)
        drifts.append(float(np.linalg.norm(task.agent.pos[:2] - start)))
        steps_in_cost.append(len(cost_values))
    env.close()
    summary = lambda v: dict(mean=float(np.mean(v)), std=float(np.std(v)), values=[float(x) for x in v])
    return dict(episodes=episodes, episode_return=summary(returns), episode_cost=summary(costs),
                goals=summary(goals), drift=summary(drifts),
                cost_step_values=dict(count=len(cost_values), mean=float(np.mean(cost_values)) if cost_values else 0.0,
                                      max=float(np.max(cost_values)) if cost_values else 0.0))


def gremlin_trace(sg, steps=60):
    env = sg.make("SafetyPointButton1-v0")
    task = env.unwrapped.task
    env.reset(seed=7)
    layout = {k: np.asarray(v, float).tolist() for k, v in task.random_generator.layout.items()}
    trace, times = [], []
    for _ in range(steps):
        env.step(np.zeros(2))
        trace.append([p[:2].tolist() for p in task.gremlins.pos])
        times.append(float(task.data.time))
    out = dict(layout=layout, positions=trace, time=times, travel=float(task.gremlins.travel),
               size=float(task.gremlins.size), keepout=float(task.gremlins.keepout),
               contact_cost=float(task.gremlins.contact_cost),
               buttons_resampling_delay=int(task.buttons.resampling_delay))
    env.close()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--layouts", type=int, default=2000)
    parser.add_argument("--only", default="all", help="comma list: responses,lidar,layouts,policies,tasks")
    parser.add_argument("--configs", default=",".join(POLICY_CONFIGS),
                        help="policy runs to record, comma list of TASK/POLICY (to split the work across processes)")
    parser.add_argument("--layout-tasks", default="PointGoal1,PointButton1", help="tasks whose layouts to record")
    parser.add_argument("--output", default="reference.json", help="file name under the fixture directory")
    parser.add_argument("--merge", default=None, help="fold this file's 'policies' into --output and exit")
    args = parser.parse_args()
    if args.merge:
        path = OUT_DIR / args.output
        reference = json.loads(path.read_text())
        reference.setdefault("policies", {}).update(json.loads((OUT_DIR / args.merge).read_text())["policies"])
        path.write_text(json.dumps(reference, indent=1))
        return
    import safety_gymnasium as sg

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / args.output
    reference = json.loads(path.read_text()) if path.exists() else {}
    if "robots" not in reference:  # the policies need the drive axes and turn signs
        reference["robots"] = json.loads((OUT_DIR / "reference.json").read_text())["robots"]
    reference["source"] = dict(package="safety-gymnasium", version=sg.__version__ if hasattr(sg, "__version__")
                               else "1.0.0", recorded=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    parts = set(args.only.split(",")) if args.only != "all" else {"responses", "lidar", "layouts", "policies",
                                                                    "tasks"}
    if "responses" in parts:
        reference["robots"], traces = {}, {}
        for robot in ("point", "car"):
            reference["robots"][robot], robot_traces = record_responses(sg, robot)
            traces.update(robot_traces)
        np.savez_compressed(OUT_DIR / "step_responses.npz", **traces)
        print("responses", {r: (v["dt"], v["drive_axis_angle"], v["turn_sign"]) for r, v in reference["robots"].items()})
    if "lidar" in parts:
        reference["lidar"] = record_lidar(sg)
    if "layouts" in parts:
        reference.setdefault("placements", {}).update(
            {name: layout_stats(sg, f"Safety{name}-v0", args.layouts) for name in args.layout_tasks.split(",")})
        print("layouts", {k: v.get("hazard_density") for k, v in reference["placements"].items()}, flush=True)
    if "tasks" in parts:
        env = sg.make("SafetyPointCircle1-v0")
        env.reset(seed=0)
        reference["tasks"] = dict(circle_reward_factor=float(env.unwrapped.task.reward_factor),
                                  button_gremlins=gremlin_trace(sg))
        env.close()
    if "policies" in parts:
        robots = reference["robots"]
        reference.setdefault("policies", {})
        for config in args.configs.split(","):
            name, policy = config.split("/")
            robot = "car" if name.startswith("Car") else "point"
            t0 = time.time()
            stats = run_policy(sg, f"Safety{name}-v0", robot, policy, args.episodes,
                               robots[robot]["drive_axis_angle"], robots[robot]["turn_sign"])
            reference["policies"][config] = stats
            print(name, policy, stats["episode_return"]["mean"], stats["episode_cost"]["mean"],
                  stats["goals"]["mean"], f"{time.time() - t0:.0f}s", flush=True)
            path.write_text(json.dumps(reference, indent=1))
    path.write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
