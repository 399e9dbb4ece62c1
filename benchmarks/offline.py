"""Offline safe RL benchmark: BC-All, BC-Safe, BCQ-Lag and CDT on datasets collected from our own tasks.

For each task a behaviour ladder (PPO-Lagrangian at several cost limits, played clean and noisy:
``jaxsafe.offline.collect.collect_ladder``) gives the dataset. Every learner trains over seeds as one vmapped
program (``jit(vmap(train))``), at thresholds 20 and 40 scaled to the episode length used
(``threshold * max_steps / horizon`` where the benchmark shortens episodes). The thresholds are BC-Safe's and
BCQ-Lag's ``cost_limit``. CDT trains once per task and is evaluated with the conventional fixed targets: the
dataset's best return among episodes within the threshold, and the threshold as the cost. The scores are DSRL's
normalised reward and cost (mean +- std over seeds, each seed from 20 vmapped evaluation episodes). Training
throughput is gradient steps per second of the whole vmapped sweep, with compilation excluded.

Usage::

    python benchmarks/offline.py --quick                 # one task, tiny budgets (a smoke run on a 2-core CPU)
    python benchmarks/offline.py                         # the four tasks of issue 14, CPU preset sizes

Writes ``benchmarks/results/offline.json``, ``.md`` and ``.png`` (normalised reward against normalised cost per
task), and one dataset figure per task (``offline_<task>_data.png``); ``--out`` changes the stem. The run is
resumable: each finished task is kept in ``<stem>_cells/<task>.json`` with its budget and skipped by a rerun
with the same budget (``--fresh`` recomputes). The navigation tasks' dynamics will change (issue 23); results
on them are to be regenerated then. Not measured yet: the side-by-side PyTorch (OSRL) CDT throughput.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxsafe import envs
from jaxsafe.algorithms import get_algorithm
from jaxsafe.learner import train_from_parts
from jaxsafe.offline.collect import collect_ladder, plot_dataset
from jaxsafe.offline.dataset import episode_returns
from jaxsafe.offline.evaluation import evaluate_policy, make_policy
from jaxsafe.offline.metrics import reward_range
from jaxsafe.sweep import lane, make_grid

RESULTS = Path(__file__).parent / "results"
TASKS = ("SafePointCircle", "SafePointRun", "SafeCarGoal1", "SafeHopperVelocity")
ALGORITHMS = ("bc_all", "bc_safe", "bcq_lag", "cdt")

FULL = dict(episodes=50, max_steps=None, ppo=dict(total_steps=200_000, num_envs=16, num_steps=250),
            cost_limits=[0, 10, 25, 50, 100], updates=5_000,
            configs={"bc_all": dict(hidden=(256, 256), batch_size=512), "bc_safe": dict(hidden=(256, 256),
                     batch_size=512), "bcq_lag": dict(hidden=(256, 256), batch_size=512),
                     "cdt": dict(context_len=10, d_model=64, n_layers=2, n_heads=4, batch_size=256,
                                 warmup_steps=100)})
QUICK = dict(episodes=8, max_steps=100, ppo=dict(total_steps=8_000, num_envs=8, num_steps=100, hidden=(32, 32)),
             cost_limits=[0, 25, 100], updates=300,
             configs={"bc_all": dict(hidden=(64, 64), batch_size=128), "bc_safe": dict(hidden=(64, 64),
                      batch_size=128), "bcq_lag": dict(hidden=(64, 64), batch_size=128, num_samples=5),
                      "cdt": dict(context_len=10, d_model=32, n_layers=1, n_heads=2, batch_size=64,
                                  warmup_steps=20)})


def train_sweep(name, dataset, config_fields, seeds, hparams_fields):
    """``(config, grid, params, steps_per_second)`` of one vmapped sweep over seeds."""
    algo = get_algorithm(name)
    config = algo.make_config(**config_fields)
    hparams = algo.hparams_for(config, dataset).replace(**hparams_fields).as_arrays().validate()
    train = train_from_parts(algo.make_train_parts(config, dataset))
    grid = make_grid(hparams, seeds=seeds)
    compiled = jax.jit(jax.vmap(train)).lower(grid.keys, grid.hparams).compile()
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(grid.keys, grid.hparams))
    elapsed = time.perf_counter() - start
    return config, grid, result.params, config.num_updates * grid.size / elapsed


def run_task(task, budget, seeds, key, figure=None):
    env, env_params = envs.make(task)
    horizon = int(getattr(env_params, "max_steps", 1000))
    max_steps = budget["max_steps"] or horizon
    max_steps = min(max_steps, horizon)
    start = time.perf_counter()
    dataset, card = collect_ladder(task, key, budget["episodes"], budget["cost_limits"],
                                   train_overrides=budget["ppo"], max_steps=max_steps)
    collect_seconds = time.perf_counter() - start
    if figure is not None:
        horizon_scale = max_steps / horizon
        plot_dataset(figure, dataset, card, thresholds=(20 * horizon_scale, 40 * horizon_scale))
    returns, costs = episode_returns(dataset)
    costs = costs.sum(-1)
    r_min, r_max = reward_range(dataset)
    rows = []
    cdt_trained = None
    for nominal in (20.0, 40.0):
        threshold = nominal * max_steps / horizon
        safe = costs <= threshold
        target_return = float(returns[safe].max()) if safe.any() else float(returns.min())
        for name in ALGORITHMS:
            fields = dict(budget["configs"][name], num_updates=budget["updates"])
            if name == "cdt":
                fields.update(max_episode_len=max_steps, context_len=min(fields["context_len"], max_steps))
            if name == "bcq_lag":
                fields.update(episode_len=max_steps)
            hparams_fields = {} if name in ("bc_all", "cdt") else {"cost_limit": threshold}
            if name == "cdt" and cdt_trained is not None:
                config, grid, params, speed = cdt_trained
            else:
                config, grid, params, speed = train_sweep(name, dataset, fields, seeds, hparams_fields)
                if name == "cdt":
                    cdt_trained = (config, grid, params, speed)
            scores = []
            for i in range(grid.size):
                policy, play_env = make_policy(name, config, dataset, lane(params, i), lane(grid.hparams, i), env,
                                               env_params, target_return, threshold)
                scores.append(evaluate_policy(policy, play_env, env_params, jax.random.PRNGKey(100 + i), 20,
                                              max_steps, r_min, r_max, threshold))
            reward = np.array([s["reward"] for s in scores])
            cost = np.array([s["cost"] for s in scores])
            rows.append(dict(task=task, threshold=threshold, nominal_threshold=nominal, algorithm=name,
                             reward_mean=float(reward.mean()), reward_std=float(reward.std()),
                             cost_mean=float(cost.mean()), cost_std=float(cost.std()),
                             safe=bool(cost.mean() <= 1.0), grad_steps_per_second=float(speed),
                             target_return=target_return if name == "cdt" else None))
            print(f"{task:<18} b={threshold:<6.1f} {name:<8} reward {reward.mean():.3f}±{reward.std():.3f} "
                  f"cost {cost.mean():.3f}±{cost.std():.3f} {'safe' if cost.mean() <= 1 else 'UNSAFE'} "
                  f"({speed:.0f} grad steps/s)", flush=True)
    info = dict(task=task, horizon=horizon, max_steps=max_steps, episodes=card["num_episodes"],
                steps=card["num_steps"], return_range=card["return_range"], cost_range=card["cost_range"],
                collect_seconds=collect_seconds)
    return rows, info


def plot_scores(path: Path, rows) -> None:
    """One panel per task: each (algorithm, threshold) at its normalised cost and reward, with the safe line."""
    from jaxsafe.plotting import _pyplot

    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4), squeeze=False)
    markers = dict(zip(ALGORITHMS, "os^D"))
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r["task"] == task):
            colour = "C0" if r["nominal_threshold"] == 20.0 else "C1"
            ax.errorbar(r["cost_mean"], r["reward_mean"], xerr=r["cost_std"], yerr=r["reward_std"],
                        marker=markers[r["algorithm"]], color=colour, ls="", ms=6, capsize=2,
                        label=f"{r['algorithm']} (b={r['nominal_threshold']:g})")
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_title(task)
        ax.set_xlabel("normalised cost (safe <= 1)")
        ax.set_ylabel("normalised reward")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, rows, infos, args):
    meta = dict(quick=args.quick, seeds=args.seeds, ppo_steps=args.ppo_steps, max_steps=args.max_steps,
                updates=args.updates, platform=platform.platform(), backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()], note="navigation-task results are to be regenerated "
                "after issue 23 changes their dynamics; no PyTorch (OSRL) CDT was run side by side")
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, datasets=infos, rows=rows), indent=1))
    lines = ["# Offline safe RL benchmark", "", f"Generated by `benchmarks/offline.py {' '.join(args.argv)}`"
             f" ({meta['backend']}, {args.seeds} seeds). DSRL's normalised reward and cost, mean ± std over seeds; "
             "safe = normalised cost ≤ 1. CDT uses the conventional targets (best safe return in the dataset, "
             "cost = threshold).", "",
             "**Navigation tasks will change (issue 23): these results are to be regenerated then.** "
             "The side-by-side PyTorch CDT throughput has not been measured yet.", "",
             "| task | threshold | algorithm | norm. reward | norm. cost | safe | grad steps/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['threshold']:g} | {r['algorithm']} | {r['reward_mean']:.3f} ± "
                     f"{r['reward_std']:.3f} | {r['cost_mean']:.3f} ± {r['cost_std']:.3f} | "
                     f"{'yes' if r['safe'] else '**no**'} | {r['grad_steps_per_second']:.0f} |")
    lines += ["", "| dataset | episodes | steps | max_steps (horizon) | return range | cost range |",
              "|---|---|---|---|---|---|"]
    for d in infos:
        lines.append(f"| {d['task']} | {d['episodes']} | {d['steps']} | {d['max_steps']} ({d['horizon']}) | "
                     f"{d['return_range'][0]:.1f} .. {d['return_range'][1]:.1f} | {d['cost_range'][0]:.1f} .. "
                     f"{d['cost_range'][1]:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot_scores(out.with_suffix(".png"), rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one task, tiny budgets")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: the four, or one if --quick)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ppo-steps", type=int, default=None, help="behaviour PPO env steps per cost limit")
    parser.add_argument("--max-steps", type=int, default=None, help="episode length of the dataset and evaluation")
    parser.add_argument("--updates", type=int, default=None, help="gradient steps of every offline learner")
    parser.add_argument("--out", default=str(RESULTS / "offline"))
    parser.add_argument("--fresh", action="store_true", help="recompute tasks that have a stored cell")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    budget = dict(QUICK if args.quick else FULL)
    if args.ppo_steps is not None:
        budget["ppo"] = dict(budget["ppo"], total_steps=args.ppo_steps)
    if args.max_steps is not None:
        budget["max_steps"] = args.max_steps
    if args.updates is not None:
        budget["updates"] = args.updates
    tasks = args.tasks.split(",") if args.tasks else (["SafePointCircle"] if args.quick else list(TASKS))
    out = Path(args.out)
    cells = out.parent / f"{out.name}_cells"
    cells.mkdir(parents=True, exist_ok=True)
    stamp = json.loads(json.dumps(dict(budget=budget, seeds=args.seeds)))
    rows, infos = [], []
    for i, task in enumerate(tasks):
        cell = cells / f"{task}.json"
        stored = json.loads(cell.read_text()) if cell.exists() and not args.fresh else None
        if stored is not None and stored["stamp"] == stamp:
            print(f"{task}: stored result ({cell})", flush=True)
            task_rows, info = stored["rows"], stored["info"]
        else:
            task_rows, info = run_task(task, budget, args.seeds, jax.random.PRNGKey(i),
                                       figure=out.parent / f"{out.name}_{task}_data.png")
            cell.write_text(json.dumps(dict(stamp=stamp, rows=task_rows, info=info), indent=1))
        rows += task_rows
        infos.append(info)
        write(out, rows, infos, args)
    print(f"wrote {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
