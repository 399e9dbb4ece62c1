"""Safety suite: PPO, PPO-Lagrangian and CPO on every navigation task and on brax velocity locomotion.

Each (task, algorithm) pair is one vmapped sweep over seeds (``jaxsafe.sweep.make_grid`` / ``run_grid``: one
compiled program), at an episode-cost limit of 25 (OmniSafe's / Safety-Gymnasium's benchmark limit). The table
reports, per algorithm and task, the final episode return and cost (mean over the last quarter of updates of the
training rollouts, then mean +- std over seeds, as OmniSafe's benchmark tables do) and the training throughput
(environment steps per second of the whole sweep, compile time excluded and reported separately).

Usage::

    python benchmarks/safety_suite.py              # full: 7 navigation + HalfCheetah, Hopper; 3 seeds; 1M steps
    python benchmarks/safety_suite.py --quick      # CI size: 3 navigation tasks, 3 seeds, 100k steps (~15 min)
    python benchmarks/safety_suite.py --quick --tasks SafePointGoal1 --algos ppo,cpo

``--quick`` restricts the tasks to ``SafePointGoal1``, ``SafePointCircle`` and ``SafePointRun`` (the cheapest to
compile and step on CPU; the brax tasks alone take 1-3 minutes each to compile per algorithm on 2 cores) and the
budget to 100k steps per seed: enough to see the learners separate on Circle and Run, not to converge (OmniSafe's
tables use 1e7 steps). Results are written after every (task, algorithm) pair, so an interrupted run keeps what
finished. Writes ``benchmarks/results/safety_suite.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsafe import envs, sweep  # noqa: E402
from jaxsafe.algorithms import get_algorithm  # noqa: E402
from jaxsafe.types import TrainResult  # noqa: E402

NAVIGATION = ["SafePointGoal1", "SafePointGoal2", "SafeCarGoal1", "SafeCarGoal2", "SafePointButton1",
              "SafePointCircle", "SafePointRun"]
LOCOMOTION = ["SafeHalfCheetahVelocity", "SafeHopperVelocity"]
QUICK_TASKS = ["SafePointGoal1", "SafePointCircle", "SafePointRun"]
ALGORITHMS = ["ppo", "ppo_lag", "cpo"]
COST_LIMIT = 25.0
RESULTS = Path(__file__).resolve().parent / "results"


def make_train_fn(parts):
    def train(key, hparams):
        state = parts.init(key, hparams)
        state, metrics = jax.lax.scan(lambda s, _: parts.update(s, hparams), state, None, length=parts.num_updates)
        return TrainResult(state.params, metrics)

    return train


def tail_mean(series: np.ndarray) -> np.ndarray:
    """Mean over the last quarter of updates (NaN-aware), one value per lane."""
    n = series.shape[-1]
    tail = series[..., int(0.75 * n):]
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in tail])


def run_pair(task: str, algorithm: str, seeds: int, total_steps: int, num_envs: int, num_steps: int,
             lanes: str = "vmap") -> dict:
    env, env_params = envs.make(task)
    algo = get_algorithm(algorithm)
    config = algo.make_config(num_envs=num_envs, num_steps=num_steps, total_steps=total_steps)
    hparams = config.default_hparams().replace(cost_limit=np.float32(COST_LIMIT)).as_arrays().validate()
    grid = sweep.make_grid(hparams, seeds=seeds)
    parts = algo.make_train_parts(config, env, env_params)
    train = make_train_fn(parts)
    if lanes == "vmap":  # the sweep as jaxsafe.sweep.run_grid compiles it
        program = jax.jit(jax.vmap(train))
    else:  # the same lanes one after another inside one program (fallback for the CPU deadlock, see below)
        program = jax.jit(lambda keys, hparams: jax.lax.map(lambda lane: train(*lane), (keys, hparams)))
    start = time.perf_counter()
    compiled = program.lower(grid.keys, grid.hparams).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(grid.keys, grid.hparams))
    run_s = time.perf_counter() - start
    metrics = {k: np.asarray(v, np.float64) for k, v in result.metrics.items()}
    final_return = tail_mean(metrics["episode_return"])
    final_cost = tail_mean(metrics["episode_cost"])
    steps = grid.size * parts.num_updates * parts.steps_per_update
    return dict(
        task=task, algorithm=algorithm, seeds=seeds, cost_limit=COST_LIMIT, lanes=lanes,
        env_steps_per_seed=parts.num_updates * parts.steps_per_update,
        num_envs=num_envs, num_steps=num_steps,
        final_return=final_return.tolist(), final_cost=final_cost.tolist(),
        return_mean=float(np.nanmean(final_return)), return_std=float(np.nanstd(final_return)),
        cost_mean=float(np.nanmean(final_cost)), cost_std=float(np.nanstd(final_cost)),
        steps_per_second=steps / run_s, run_seconds=run_s, compile_seconds=compile_s,
        return_curve=np.nanmean(metrics["episode_return"], axis=0).tolist(),
        cost_curve=np.nanmean(metrics["episode_cost"], axis=0).tolist(),
    )


def json_safe(value):
    """NaN/inf (e.g. curve points before any episode finished) as ``null``, so the file is strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def markdown(report: dict) -> str:
    rows = report["results"]
    algos = [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lanes = ", ".join(sorted({r.get("lanes", "vmap") for r in rows})) or "-"
    lines = [
        "# Safety suite: PPO, PPO-Lagrangian, CPO",
        "",
        f"Mode: {report['mode']}. Cost limit {COST_LIMIT:g} (episode cost). {report['seeds']} seeds per cell, each "
        f"(task, algorithm) one compiled program over the seeds (lanes: {lanes}). Final = mean over the last quarter of updates of the training "
        f"rollouts' finished episodes; mean +- std over seeds. Machine: {report['machine']}.",
        "",
        "| task | steps/seed | " + " | ".join(f"{a} return | {a} cost" for a in algos) + " |",
        "|---|---:|" + "---:|---:|" * len(algos),
    ]
    for task in tasks:
        cells = []
        steps = ""
        for algo in algos:
            match = [r for r in rows if r["task"] == task and r["algorithm"] == algo]
            if not match:
                cells += ["not run", "not run"]
                continue
            r = match[0]
            steps = f"{r['env_steps_per_seed']:,}"
            flag = " *" if r["cost_mean"] > COST_LIMIT and algo != "ppo" else ""
            cells += [f"{r['return_mean']:.2f} +- {r['return_std']:.2f}", f"{r['cost_mean']:.1f} +- {r['cost_std']:.1f}{flag}"]
        lines.append(f"| {task} | {steps} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: a constrained learner above the limit at the end of this (short) budget.", "",
              "## Throughput (training, whole sweep of all seeds, compile excluded)", "",
              "| task | algorithm | lanes | env steps/s | run s | compile s |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['algorithm']} | {r.get('lanes', 'vmap')} | {r['steps_per_second']:,.0f} | {r['run_seconds']:.1f} | "
                     f"{r['compile_seconds']:.1f} |")
    if report.get("not_run"):
        lines += ["", "Not run in this invocation: " + ", ".join(report["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def run_pair_isolated(task, algorithm, args, total_steps, num_envs, num_steps):
    """``run_pair`` in a child process with a wall-clock limit, retried on a timeout.

    The XLA CPU runtime on small shared machines occasionally deadlocks in a vmapped program (all threads idle);
    a stalled pair is killed and rerun, the retries with the lanes run by ``lax.map`` instead of ``vmap`` (same
    program per lane, same seeds; on this 2-core machine vmapped navigation sweeps hung every time we tried).
    """
    if args.pair_timeout <= 0:
        return run_pair(task, algorithm, args.seeds, total_steps, num_envs, num_steps, args.lanes)
    for attempt in range(args.retries + 1):
        lanes = args.lanes if attempt == 0 else "map"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "row.json"
            command = [sys.executable, __file__, "--_one", task, algorithm, str(path), "--seeds", str(args.seeds),
                       "--total-steps", str(total_steps), "--num-envs", str(num_envs), "--num-steps", str(num_steps), "--lanes", lanes]
            try:
                subprocess.run(command, timeout=args.pair_timeout, check=True)
                return json.loads(path.read_text())  # NaN round-trips through Python's json
            except subprocess.TimeoutExpired:
                print(f"  attempt {attempt + 1} ({lanes}) timed out after {args.pair_timeout}s; retrying with "
                      f"lax.map lanes", flush=True)
            except subprocess.CalledProcessError as err:
                raise RuntimeError(f"{task} {algorithm} failed (exit {err.returncode})") from None
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 3 navigation tasks, 100k steps per seed")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all, or the quick subset)")
    parser.add_argument("--algos", default=",".join(ALGORITHMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--total-steps", type=int, default=None, help="env steps per seed")
    parser.add_argument("--num-envs", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "safety_suite"))
    parser.add_argument("--pair-timeout", type=float, default=900.0,
                        help="seconds per (task, algorithm) child process before a retry (0: run in-process)")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--lanes", choices=("vmap", "map"), default="vmap",
                        help="seeds as one vmapped program (default) or lax.map inside one program")
    parser.add_argument("--_one", nargs=3, metavar=("TASK", "ALGO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        task, algorithm, path = args._one
        row = run_pair(task, algorithm, args.seeds, args.total_steps, args.num_envs, args.num_steps, args.lanes)
        Path(path).write_text(json.dumps(row))
        return

    tasks = args.tasks.split(",") if args.tasks else (QUICK_TASKS if args.quick else NAVIGATION + LOCOMOTION)
    algos = args.algos.split(",")
    for algorithm in algos:
        get_algorithm(algorithm)
    total_steps = args.total_steps or (100_000 if args.quick else 1_000_000)
    num_envs = args.num_envs or (16 if args.quick else 32)
    num_steps = args.num_steps or (250 if args.quick else 500)
    report = dict(
        mode=("quick" if args.quick else "full") + (f", tasks={','.join(tasks)}" if args.tasks else ""),
        seeds=args.seeds, cost_limit=COST_LIMIT,
        machine=f"{os.cpu_count()} CPU cores, jax {jax.__version__}, {jax.devices()[0].platform}, "
                f"{platform.platform()}",
        results=[], not_run=[f"{t}/{a}" for t in tasks for a in algos],
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        for algorithm in algos:
            print(f"{task} {algorithm} ...", flush=True)
            row = run_pair_isolated(task, algorithm, args, total_steps, num_envs, num_steps)
            if row is None:
                print(f"  {task} {algorithm}: no result after {args.retries + 1} attempts; skipped", flush=True)
                continue
            print(f"  return {row['return_mean']:.2f} +- {row['return_std']:.2f}  cost {row['cost_mean']:.1f} +- "
                  f"{row['cost_std']:.1f}  {row['steps_per_second']:,.0f} steps/s  compile {row['compile_seconds']:.0f}s "
                  f"run {row['run_seconds']:.0f}s", flush=True)
            report["results"].append(row)
            report["not_run"].remove(f"{task}/{algorithm}")
            out.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
            out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
