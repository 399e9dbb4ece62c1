"""Safety suite: PPO, PPO-Lagrangian and CPO on every navigation task and on brax velocity locomotion.

Each (task, algorithm) pair is one vmapped sweep over seeds (``jaxsafe.sweep.make_grid``, compiled as
``jit(vmap(train))`` like ``run_grid``: one program for all seeds), at an episode-cost limit of 25 (OmniSafe's /
Safety-Gymnasium's benchmark limit). The table reports, per algorithm and task, the final episode return and cost
(mean over the last quarter of updates of the training rollouts, then mean +- std over seeds, as OmniSafe's
benchmark tables do) and the training throughput (environment steps per second of the whole sweep, compile time
excluded and reported separately).

Usage::

    python benchmarks/safety_suite.py              # full: 7 navigation tasks + HalfCheetah, Hopper; 3 seeds
    python benchmarks/safety_suite.py --quick      # every task at a reduced budget (~30 min on 2 CPU cores)
    python benchmarks/safety_suite.py --quick --tasks SafePointGoal1 --algos ppo,cpo
    python benchmarks/safety_suite.py --quick --algos cpo --cpo-margin-lr 1.0   # CPO with a learned margin

Budgets (environment steps per seed; ``--total-steps``, ``--num-envs``, ``--num-steps`` override them for every
task):

=====================  ==========================  ===========================
mode                   navigation (7 tasks)        brax velocity (2 tasks)
=====================  ==========================  ===========================
full                   1,000,000 (32 envs x 500)   1,000,000 (32 envs x 500)
``--quick``            64,000 (16 envs x 250)      24,000 (16 envs x 125)
=====================  ==========================  ===========================

The quick budgets are a smoke benchmark that fits a 2-core CPU in about half an hour (the brax tasks compile for
1-3 minutes per algorithm and step at 1-5k steps/s there): enough to see the learners diverge on Circle and Run,
not to converge (OmniSafe's tables use 1e7 steps). Results are written after every (task, algorithm) pair, so an
interrupted run keeps what finished. Writes ``benchmarks/results/safety_suite.json`` and ``.md``.
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
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jaxsafe  # noqa: E402,F401  (first: sets the XLA CPU flag jaxsafe needs before JAX creates its backend)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxsafe import envs, sweep  # noqa: E402
from jaxsafe.algorithms import get_algorithm  # noqa: E402
from jaxsafe.learner import train_from_parts  # noqa: E402

NAVIGATION = ["SafePointGoal1", "SafePointGoal2", "SafeCarGoal1", "SafeCarGoal2", "SafePointButton1",
              "SafePointCircle", "SafePointRun"]
LOCOMOTION = ["SafeHalfCheetahVelocity", "SafeHopperVelocity"]
#: (total_steps per seed, num_envs, num_steps per rollout) by mode and task family.
BUDGETS = {
    "full": {"navigation": (1_000_000, 32, 500), "locomotion": (1_000_000, 32, 500)},
    "quick": {"navigation": (64_000, 16, 250), "locomotion": (24_000, 16, 125)},
}
ALGORITHMS = ["ppo", "ppo_lag", "cpo"]
COST_LIMIT = 25.0
RESULTS = Path(__file__).resolve().parent / "results"


def tail_mean(series: np.ndarray) -> np.ndarray:
    """Mean over the last quarter of updates (NaN-aware), one value per lane."""
    n = series.shape[-1]
    tail = series[..., int(0.75 * n):]
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in tail])


def task_budget(task: str, mode: str, args) -> tuple[int, int, int]:
    """``(total_steps, num_envs, num_steps)`` for ``task`` in ``mode`` ("full"/"quick"), CLI overrides applied."""
    total_steps, num_envs, num_steps = BUDGETS[mode]["locomotion" if task in LOCOMOTION else "navigation"]
    return (args.total_steps or total_steps, args.num_envs or num_envs, args.num_steps or num_steps)


def run_pair(task: str, algorithm: str, seeds: int, total_steps: int, num_envs: int, num_steps: int,
             lanes: str = "vmap", cpo_margin_lr: float = 0.0) -> dict:
    problem = envs.make(task)  # the (env, env_params) pair every registered RL learner takes
    algo = get_algorithm(algorithm)
    config = algo.make_config(num_envs=num_envs, num_steps=num_steps, total_steps=total_steps)
    hparams = algo.hparams_for(config, problem)  # one cost_limit per cost of the task
    hparams = hparams.replace(cost_limit=np.full(np.shape(hparams.cost_limit), COST_LIMIT, np.float32))
    if algorithm == "cpo":  # Safety Starter Agents' learned margin; 0 = plain CPO (OmniSafe's)
        hparams = hparams.replace(margin_lr=np.float32(cpo_margin_lr))
    hparams = hparams.as_arrays().validate()
    grid = sweep.make_grid(hparams, seeds=seeds)
    parts = algo.make_train_parts(config, problem)
    train = train_from_parts(parts)
    if lanes == "vmap":  # the sweep as jaxsafe.sweep.run_grid compiles it
        program = jax.jit(jax.vmap(train))
    else:  # the same lanes one after another inside one program (fallback, see run_pair_isolated)
        program = jax.jit(lambda keys, hparams: jax.lax.map(lambda lane: train(*lane), (keys, hparams)))
    start = time.perf_counter()
    compiled = program.lower(grid.keys, grid.hparams).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(grid.keys, grid.hparams))
    run_s = time.perf_counter() - start
    metrics = {k: np.asarray(v, np.float64) for k, v in result.metrics.items()}
    steps = grid.size * parts.num_updates * parts.steps_per_update
    with warnings.catch_warnings():  # all-NaN slices (no episode finished yet) give NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        final_return = tail_mean(metrics["episode_return"])
        final_cost = tail_mean(metrics["episode_cost"])
        return dict(
            task=task, algorithm=algorithm, seeds=seeds, cost_limit=COST_LIMIT, lanes=lanes,
            cpo_margin_lr=cpo_margin_lr if algorithm == "cpo" else None,
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


ALGORITHM_NAMES = {"ppo": "PPO", "ppo_lag": "PPO-Lag", "cpo": "CPO"}


def _mean_std(mean, std, digits: int) -> str:
    if mean is None or not np.isfinite(mean):  # None: NaN written as null in the JSON
        return "no episode finished"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _budget(row: dict) -> str:
    return f"{row['env_steps_per_seed']:,} ({row['num_envs']} x {row['num_steps']})"


def markdown(report: dict) -> str:
    """OmniSafe-style table (a row per task, return and cost per algorithm, mean ± std over seeds) + throughput."""
    rows = report["results"]
    algos = [a for a in ALGORITHMS if any(r["algorithm"] == a for r in rows)]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lanes = ", ".join(sorted({r.get("lanes", "vmap") for r in rows})) or "-"
    names = [ALGORITHM_NAMES.get(a, a) for a in algos]
    lines = [
        "# Safety suite: PPO, PPO-Lagrangian, CPO",
        "",
        f"Mode: {report['mode']}. Cost limit {COST_LIMIT:g} (episode cost). {report['seeds']} seeds per cell, each "
        f"(task, algorithm) one compiled program over the seeds (lanes: {lanes}). Final = mean over the last quarter "
        "of updates of the training rollouts' finished episodes; mean ± std over seeds. Budget = environment steps "
        f"per seed (environments x rollout steps per update). Machine: {report['machine']}.",
        "",
        "| task | budget | " + " | ".join(f"{n} return | {n} cost" for n in names) + " |",
        "|---|---:|" + "---:|---:|" * len(algos),
    ]
    for task in tasks:
        cells, budget = [], ""
        for algo in algos:
            match = [r for r in rows if r["task"] == task and r["algorithm"] == algo]
            if not match:
                cells += ["not run", "not run"]
                continue
            r = match[0]
            budget = _budget(r)
            flag = " *" if algo != "ppo" and r["cost_mean"] is not None and r["cost_mean"] > COST_LIMIT else ""
            cells += [_mean_std(r["return_mean"], r["return_std"], 2), _mean_std(r["cost_mean"], r["cost_std"], 1) + flag]
        lines.append(f"| {task} | {budget} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: a constrained learner above the limit at the end of this (short) budget.", "",
              "## Training throughput (environment steps per second of the whole sweep of all seeds, compile "
              "excluded)", "",
              "| task | " + " | ".join(f"{n} steps/s" for n in names) + " | compile s (" + " / ".join(names) + ") |",
              "|---|" + "---:|" * len(algos) + "---:|"]
    for task in tasks:
        match = {r["algorithm"]: r for r in rows if r["task"] == task}
        speeds = [f"{match[a]['steps_per_second']:,.0f}" if a in match else "-" for a in algos]
        compiles = [f"{match[a]['compile_seconds']:.0f}" if a in match else "-" for a in algos]
        lines.append(f"| {task} | " + " | ".join(speeds) + " | " + " / ".join(compiles) + " |")
    if report.get("wall_seconds") is not None:
        lines += ["", f"Wall time of the whole invocation: {report['wall_seconds'] / 60:.1f} min "
                  "(compiles, child-process start-up and runs)."]
    if report.get("not_run"):
        lines += ["", "Not run in this invocation: " + ", ".join(report["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def run_pair_isolated(task, algorithm, args, total_steps, num_envs, num_steps):
    """``run_pair`` in a child process with a wall-clock limit, retried on a timeout.

    A stalled pair is killed and rerun, the retries with the lanes run by ``lax.map`` instead of ``vmap`` (same
    program per lane, same seeds). This is a fallback: XLA's CPU runtime used to deadlock on vmapped sweeps with
    nested loops on few cores (all threads idle), which the flag ``import jaxsafe`` sets (the concurrency-optimised
    thunk scheduler off) fixes; the table records which lanes each pair used.
    """
    if args.pair_timeout <= 0:
        return run_pair(task, algorithm, args.seeds, total_steps, num_envs, num_steps, args.lanes, args.cpo_margin_lr)
    for attempt in range(args.retries + 1):
        lanes = args.lanes if attempt == 0 else "map"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "row.json"
            command = [sys.executable, __file__, "--_one", task, algorithm, str(path), "--seeds", str(args.seeds),
                       "--total-steps", str(total_steps), "--num-envs", str(num_envs), "--num-steps", str(num_steps), "--lanes", lanes,
                       "--cpo-margin-lr", repr(args.cpo_margin_lr)]
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
    parser.add_argument("--quick", action="store_true",
                        help="every task at a reduced budget (navigation 64k, brax 24k steps per seed)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all 9)")
    parser.add_argument("--algos", default=",".join(ALGORITHMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--total-steps", type=int, default=None, help="env steps per seed (every task)")
    parser.add_argument("--num-envs", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "safety_suite"))
    parser.add_argument("--pair-timeout", type=float, default=1200.0,
                        help="seconds per (task, algorithm) child process before a retry (0: run in-process)")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--lanes", choices=("vmap", "map"), default="vmap",
                        help="seeds as one vmapped program (default) or lax.map inside one program")
    parser.add_argument("--cpo-margin-lr", type=float, default=0.0,
                        help="CPO's learned-margin rate (CPOHParams.margin_lr; default 0: plain CPO, as OmniSafe)")
    parser.add_argument("--_one", nargs=3, metavar=("TASK", "ALGO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (np.isfinite(args.cpo_margin_lr) and args.cpo_margin_lr >= 0):
        parser.error(f"--cpo-margin-lr must be a finite number >= 0, got {args.cpo_margin_lr}")
    if args._one:
        task, algorithm, path = args._one
        row = run_pair(task, algorithm, args.seeds, args.total_steps, args.num_envs, args.num_steps, args.lanes,
                       args.cpo_margin_lr)
        Path(path).write_text(json.dumps(row))
        return

    tasks = args.tasks.split(",") if args.tasks else NAVIGATION + LOCOMOTION
    algos = args.algos.split(",")
    for algorithm in algos:
        get_algorithm(algorithm)
    mode = "quick" if args.quick else "full"
    report = dict(
        mode=mode + (f", tasks={','.join(tasks)}" if args.tasks else "")
        + (f", CPO learned margin lr {args.cpo_margin_lr:g}" if args.cpo_margin_lr > 0 else ""),
        seeds=args.seeds, cost_limit=COST_LIMIT,
        budgets={task: dict(zip(("total_steps", "num_envs", "num_steps"), task_budget(task, mode, args)))
                 for task in tasks},
        machine=f"{os.cpu_count()} CPU cores, jax {jax.__version__}, {jax.devices()[0].platform}, "
                f"{platform.platform()}",
        results=[], not_run=[f"{t}/{a}" for t in tasks for a in algos], wall_seconds=None,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for task in tasks:
        total_steps, num_envs, num_steps = task_budget(task, mode, args)
        for algorithm in algos:
            print(f"{task} {algorithm} ({total_steps:,} steps/seed, {num_envs} x {num_steps}) ...", flush=True)
            row = run_pair_isolated(task, algorithm, args, total_steps, num_envs, num_steps)
            if row is None:
                print(f"  {task} {algorithm}: no result after {args.retries + 1} attempts; skipped", flush=True)
                continue
            print(f"  return {row['return_mean']:.2f} +- {row['return_std']:.2f}  cost {row['cost_mean']:.1f} +- "
                  f"{row['cost_std']:.1f}  {row['steps_per_second']:,.0f} steps/s  compile {row['compile_seconds']:.0f}s "
                  f"run {row['run_seconds']:.0f}s", flush=True)
            report["results"].append(row)
            report["not_run"].remove(f"{task}/{algorithm}")
            report["wall_seconds"] = time.perf_counter() - start
            out.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
            out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
