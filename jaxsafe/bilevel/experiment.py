"""Bi-level experiments as library functions: run estimators over vmapped seeds and write a run directory.

    summary = compare_estimators("four_rooms", ["bchg", "hpgd_sarsa", "naive"], "runs/four_rooms", seeds=10,
                                 iterations=500, samples=100)

The ``jaxsafe bilevel`` command and ``benchmarks/bilevel.py`` call these; the generic runner
(``jaxsafe train bchg --problem four_rooms``) runs one estimator with checkpoints through the registry
instead.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxsafe import sweep
from jaxsafe.bilevel import problems as problems_lib
from jaxsafe.bilevel.train import ESTIMATORS, BilevelConfig, BilevelHParams, make_train
from jaxsafe.logging import RunDir, summarize
from jaxsafe.plotting import plot_mean_band
from jaxsafe.validation import is_int, require

__all__ = ["run_estimator", "final_value", "compare_estimators"]


def run_estimator(problem, config: BilevelConfig, seeds: int, hparams: BilevelHParams | None = None,
                  seed_offset: int = 0) -> dict[str, np.ndarray]:
    """Run ``config`` on ``problem`` for ``seeds`` seeds (``PRNGKey(seed_offset + i)``), vmapped in one
    program (:func:`jaxsafe.sweep.run_grid`).

    ``hparams`` default to ``config.default_hparams(problem)`` and are validated. Returns every metric as a
    ``[seeds, num_iterations]`` numpy array.
    """
    require(is_int(seeds), "seeds", "an integer >= 1", seeds)
    hparams = (config.default_hparams(problem) if hparams is None else hparams).validate()
    grid = sweep.make_grid(hparams, seeds=seeds, base_seed=seed_offset)
    result = sweep.run_grid(make_train(config, problem), grid)
    return {name: np.asarray(value) for name, value in result.metrics.items()}


def final_value(curves: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per-seed mean of the last ``fraction`` of a ``[seeds, iterations]`` curve (a rolling-mean end
    point)."""
    tail = max(1, int(round(curves.shape[1] * fraction)))
    return curves[:, -tail:].mean(axis=1)


def compare_estimators(problem_name: str, estimators: str | Sequence[str], out_dir, seeds: int = 10,
                       iterations: int = 500, samples: int = 100, leader_lr: float | None = None,
                       verbose: bool = True, **config_overrides) -> dict:
    """Run each estimator on a named problem over ``seeds`` seeds and write a new run directory.

    ``out_dir`` gets ``config.json``, ``metrics.jsonl`` (one row per estimator, seed and leader iteration:
    ``run`` (the estimator), ``seed``, ``iteration``, ``steps`` (samples so far), ``leader_value`` and the
    other metrics), ``summary.json`` (per estimator: mean/std/min/max over seeds of the final leader value,
    the mean of the last 10% of iterations, and the seconds it took) and ``curves.png`` (mean +- std over
    seeds).

    Args:
      problem_name: one of ``bilevel.problems.PROBLEMS``.
      estimators: ``BilevelConfig.estimator`` values that apply to the problem's kind.
      out_dir: a new run directory (must not exist, or be empty).
      seeds, iterations, samples: seeds, leader iterations and the sample budget per iteration.
      leader_lr: overrides the problem's leader step size.
      config_overrides: further :class:`BilevelConfig` fields.

    Returns:
      The summary written to ``summary.json``.

    Raises:
      ValueError: unknown problem or estimator, an estimator that does not apply to the problem, or an
        out-of-range setting (checked before anything runs or is written).
      jaxsafe.logging.RunDirExists: ``out_dir`` already holds something (left untouched).
    """
    estimators = [estimators] if isinstance(estimators, str) else list(estimators)
    problem = problems_lib.make_problem(problem_name)
    for estimator in estimators:
        if estimator not in ESTIMATORS[problem.kind]:
            raise ValueError(f"estimator {estimator!r} does not apply to {problem_name} ({problem.kind}); "
                             f"choose from {ESTIMATORS[problem.kind]}")
    require(is_int(seeds), "seeds", "an integer >= 1", seeds)
    configs = {e: BilevelConfig(estimator=e, num_iterations=iterations, num_samples=samples,
                                **config_overrides) for e in estimators}
    hparams = configs[estimators[0]].default_hparams(problem)
    if leader_lr is not None:
        hparams = hparams.replace(leader_lr=jnp.float32(leader_lr))
    hparams.validate()
    run_dir = RunDir(out_dir)
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
        run_dir.append_metrics(
            {"run": estimator, "seed": seed, "iteration": iteration, "steps": (iteration + 1) * samples,
             **{name: values[seed, iteration] for name, values in metrics.items()}}
            for seed in range(seeds) for iteration in range(iterations))
        curves[estimator] = metrics["leader_value"]
        summary[estimator] = {"final_leader_value": summarize(final_value(metrics["leader_value"])),
                              "seconds": elapsed}
        if "optimality_gap" in metrics:
            summary[estimator]["final_optimality_gap"] = summarize(final_value(metrics["optimality_gap"]))
        if verbose:
            final = summary[estimator]["final_leader_value"]
            print(f"[{run_index + 1}/{len(estimators)}] {estimator}: final leader value {final['mean']:.4f} "
                  f"+- {final['std']:.4f} ({elapsed:.1f}s)")
    run_dir.write_summary(summary)
    plot_mean_band(curves, run_dir.figure_path, xlabel="leader iteration", ylabel="leader value",
                   title=f"{problem_name}, N={samples}")
    return summary
