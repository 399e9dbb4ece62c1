"""``jaxsafe bilevel``: run leader loops over seeds (vmapped) and write a run directory.

    jaxsafe bilevel --problem four_rooms --estimator bchg hpgd_sarsa naive --seeds 10 --iters 500 --samples 100 \
        --out runs/four_rooms

Writes ``config.json``, ``metrics.jsonl`` (one row per estimator, seed and leader iteration: ``run``, ``seed``,
``iteration``, ``leader_value`` and the other metrics), ``summary.json`` (mean/std/min/max of the final leader
value, averaged over the last 10% of iterations, per estimator) and ``curves.png``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.bilevel import problems as problems_lib
from jaxsafe.bilevel.train import ALL_ESTIMATORS, ESTIMATORS, BilevelConfig, BilevelHParams, make_train
from jaxsafe.logging import RunDir, summarize


def run_estimator(problem, config: BilevelConfig, seeds: int, hparams: BilevelHParams | None = None,
                  seed_offset: int = 0) -> dict[str, np.ndarray]:
    """Run ``config`` on ``problem`` for ``seeds`` vmapped seeds; returns metrics as ``[seeds, iterations]``."""
    hparams = config.default_hparams(problem) if hparams is None else hparams
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(seed_offset, seed_offset + seeds))
    train = jax.jit(jax.vmap(make_train(config, problem), in_axes=(0, None)))
    result = train(keys, hparams)
    return {name: np.asarray(value) for name, value in result.metrics.items()}


def final_value(curves: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per-seed mean of the last ``fraction`` of a ``[seeds, iterations]`` curve (a rolling-mean end point)."""
    tail = max(1, int(round(curves.shape[1] * fraction)))
    return curves[:, -tail:].mean(axis=1)


def plot_curves(curves: dict[str, np.ndarray], path, title: str, metric: str = "leader_value") -> None:
    """Mean +- std over seeds of ``curves[estimator] [seeds, iterations]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        mean, std = values.mean(0), values.std(0)
        steps = np.arange(values.shape[1])
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("leader iteration")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(problem_name: str, estimators, out_dir, seeds: int = 10, iterations: int = 500, samples: int = 100,
        leader_lr: float | None = None, **config_overrides) -> dict:
    """Run each estimator on a named problem over ``seeds`` seeds and write a run directory; returns the summary.

    Raises:
      ValueError: unknown problem/estimator, or an estimator that does not apply to the problem.
    """
    estimators = [estimators] if isinstance(estimators, str) else list(estimators)
    problem = problems_lib.make_problem(problem_name)
    for estimator in estimators:
        if estimator not in ESTIMATORS[problem.kind]:
            raise ValueError(f"estimator {estimator!r} does not apply to {problem_name} ({problem.kind}); "
                             f"choose from {ESTIMATORS[problem.kind]}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    run_dir = RunDir(out_dir)
    configs = {e: BilevelConfig(estimator=e, num_iterations=iterations, num_samples=samples, **config_overrides)
               for e in estimators}
    hparams = configs[estimators[0]].default_hparams(problem)
    if leader_lr is not None:
        hparams = hparams.replace(leader_lr=jnp.float32(leader_lr))
    run_dir.write_config({
        "algorithm": "bilevel", "problem": problem_name, "description": problem.description,
        "estimators": estimators, "seeds": list(range(seeds)),
        "config": {e: vars(c) for e, c in configs.items()}, "hparams": vars(hparams),
    })
    summary, curves = {}, {}
    for run_index, estimator in enumerate(estimators):
        start = time.perf_counter()
        metrics = run_estimator(problem, configs[estimator], seeds, hparams)
        elapsed = time.perf_counter() - start
        rows = []
        for seed in range(seeds):
            for iteration in range(iterations):
                row = {"run": estimator, "seed": seed, "iteration": iteration}
                row.update({name: values[seed, iteration] for name, values in metrics.items()})
                rows.append(row)
        run_dir.append_metrics(rows)
        curves[estimator] = metrics["leader_value"]
        summary[estimator] = {"final_leader_value": summarize(final_value(metrics["leader_value"])),
                              "seconds": elapsed}
        if "optimality_gap" in metrics:
            summary[estimator]["final_optimality_gap"] = summarize(final_value(metrics["optimality_gap"]))
        print(f"[{run_index + 1}/{len(estimators)}] {estimator}: final leader value "
              f"{summary[estimator]['final_leader_value']['mean']:.4f} "
              f"+- {summary[estimator]['final_leader_value']['std']:.4f} ({elapsed:.1f}s)")
    run_dir.write_summary(summary)
    plot_curves(curves, run_dir.figure_path, f"{problem_name}, N={samples}")
    return summary


def _handle(args: argparse.Namespace) -> None:
    run(args.problem, args.estimator, args.out, seeds=args.seeds, iterations=args.iters, samples=args.samples,
        leader_lr=args.leader_lr)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register the ``bilevel`` subcommand on an ``argparse`` subparsers object (``args.func(args)`` runs it)."""
    parser = subparsers.add_parser("bilevel", help="bi-level RL: leader loops with BC-HG and baselines",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="four_rooms", choices=sorted(problems_lib.PROBLEMS))
    parser.add_argument("--estimator", nargs="+", default=["bchg"], choices=ALL_ESTIMATORS)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=500, help="leader iterations")
    parser.add_argument("--samples", type=int, default=100, help="sample budget N per leader iteration")
    parser.add_argument("--leader-lr", type=float, default=None, help="override the problem's leader step size")
    parser.add_argument("--out", required=True, help="run directory")
    parser.set_defaults(func=_handle)
    return parser


def main(argv=None) -> None:
    """Stand-alone entry point: ``python -m jaxsafe.bilevel.cli bilevel ...``."""
    parser = argparse.ArgumentParser(prog="jaxsafe")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subparser(subparsers)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
