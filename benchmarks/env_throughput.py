"""Random-policy rollout throughput of every safety task, and of every brax backend on the velocity tasks.

Each measurement jits one ``lax.scan`` of ``--steps`` steps of ``wrap_for_training(env, num_envs)`` (vmap +
EpisodeStats + AutoReset, i.e. what a learner rolls out in) with uniform random actions in [-1, 1], runs it once to
compile, then times a second call. Reported: environment steps per second (num_envs * steps / wall time), the
compile time, and the mean per-step cost of the random policy. The scan consumes every observation (their sum is
returned), so XLA cannot drop sensors nothing reads: timing only the reward let it skip the lidar and looked
1.5-6.5x faster than what a learner gets.

Usage::

    python benchmarks/env_throughput.py                      # everything (brax compiles take minutes on CPU)
    python benchmarks/env_throughput.py --suite navigation
    python benchmarks/env_throughput.py --suite backends --backend-tasks SafeHalfCheetahVelocity

Writes ``benchmarks/results/env_throughput.json`` and ``.md`` (merging with earlier results of other suites).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxsafe.envs import locomotion, navigation, registry
from jaxsafe.envs.core import wrap_for_training

RESULTS = Path(__file__).parent / "results"


def measure(env, params, num_envs: int, num_steps: int, seed: int = 0) -> dict:
    """Compile and time a random rollout; returns steps/s, compile seconds and the mean cost."""
    venv = wrap_for_training(env, num_envs)
    action_dim = env.action_space(params).shape[0]

    def rollout(key):
        key_reset, key_steps = jax.random.split(key)
        state, _ = venv.reset(key_reset, params)

        def body(state, key):
            key_action, key_step = jax.random.split(key)
            action = jax.random.uniform(key_action, (num_envs, action_dim), minval=-1.0, maxval=1.0)
            state, timestep = venv.step(key_step, state, action, params)
            consumed = sum(jnp.sum(leaf) for leaf in jax.tree.leaves(timestep.obs))
            return state, (timestep.reward.mean(), timestep.cost.mean(), consumed)

        _, (reward, cost, consumed) = jax.lax.scan(body, state, jax.random.split(key_steps, num_steps))
        return reward.mean(), cost.mean(), consumed.sum()

    start = time.perf_counter()
    compiled = jax.jit(rollout).lower(jax.random.key(seed)).compile()
    jax.block_until_ready(compiled(jax.random.key(seed)))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    reward, cost, _ = jax.block_until_ready(compiled(jax.random.key(seed + 1)))
    run_s = time.perf_counter() - start
    return {
        "steps_per_s": num_envs * num_steps / run_s,
        "compile_s": compile_s,
        "run_s": run_s,
        "num_envs": num_envs,
        "num_steps": num_steps,
        "mean_reward": float(reward),
        "mean_cost": float(cost),
    }


def _load() -> dict:
    path = RESULTS / "env_throughput.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "env_throughput.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    lines = [
        "# Environment throughput (random policy, CPU)",
        "",
        f"Machine: {results.get('machine', {}).get('cpu_count', '?')} CPU cores visible "
        f"(shared with other jobs; load average at the start {results.get('machine', {}).get('load_average', '?')}), "
        f"jax {jax.__version__}, {results.get('machine', {}).get('platform', '')}.",
        "Each row: one jitted `lax.scan` of `wrap_for_training(env, num_envs)` (vmap + EpisodeStats + AutoReset) "
        "with uniform random actions, every observation consumed; steps/s = num_envs x steps / wall time of the second call.",
        "",
    ]
    for section, title in (("navigation", "Navigation (pure JAX)"), ("locomotion", "Velocity locomotion (brax)"),
                           ("backends", "brax backends")):
        rows = results.get(section, {})
        if not rows:
            continue
        lines += [f"## {title}", "", "| task | backend | envs | steps | steps/s | compile s | mean cost/step |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for key in sorted(rows):
            row = rows[key]
            lines.append(
                f"| {row['task']} | {row.get('backend', '-')} | {row['num_envs']} | {row['num_steps']} | "
                f"{row['steps_per_s']:,.0f} | {row['compile_s']:.1f} | {row['mean_cost']:.3f} |"
            )
        lines.append("")
    (RESULTS / "env_throughput.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["all", "navigation", "locomotion", "backends"], default="all")
    parser.add_argument("--nav-envs", type=int, default=1024)
    parser.add_argument("--brax-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backend-tasks", nargs="+", default=["SafeHalfCheetahVelocity"])
    parser.add_argument("--backends", nargs="+", default=list(locomotion.BACKENDS))
    parser.add_argument("--locomotion-backend", default=locomotion.DEFAULT_BACKEND)
    parser.add_argument("--locomotion-tasks", nargs="+", default=list(locomotion.LOCOMOTION_TASKS))
    args = parser.parse_args()

    navigation.register_navigation()
    locomotion.register_locomotion()
    results = _load()
    results["machine"] = {
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }

    def run(section, task, **ctor):
        env, params = registry.make(task, **ctor)
        row = {"task": task, **({"backend": ctor["backend"]} if "backend" in ctor else {})}
        row.update(measure(env, params, args.nav_envs if section == "navigation" else args.brax_envs, args.steps))
        key = task + (f"[{ctor['backend']}]" if "backend" in ctor else "")
        results.setdefault(section, {})[key] = row
        print(f"{section:10s} {key:40s} {row['steps_per_s']:>12,.0f} steps/s  compile {row['compile_s']:6.1f}s  "
              f"cost {row['mean_cost']:.3f}", flush=True)
        _write(results)

    if args.suite in ("all", "navigation"):
        for task in navigation.NAVIGATION_TASKS:
            run("navigation", task)
    if args.suite in ("all", "backends"):
        for task in args.backend_tasks:
            robot = locomotion.LOCOMOTION_TASKS[task]
            for backend in args.backends:
                if backend not in locomotion._SUPPORTED_BACKENDS.get(robot, locomotion.BACKENDS):
                    continue
                run("backends", task, backend=backend)
    if args.suite in ("all", "locomotion"):
        for task in args.locomotion_tasks:
            run("locomotion", task, backend=args.locomotion_backend)


if __name__ == "__main__":
    main()
