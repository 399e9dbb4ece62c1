"""``make demo``: PPO-Lagrangian on SafeCartPole as one vmapped sweep (4 seeds x 3 cost limits) next to PPO.

Prints a table of final episode return and cost per cost limit (mean ± std over seeds; "final" is the mean over the
last quarter of training, which averages out the multiplier's oscillation), says whether each constrained setting
met its limit, and writes ``demo.png`` (learning curves) into the output directory. The run directories of both
learners are kept under ``OUT/ppo_lag`` and ``OUT/ppo`` and can be resumed or evaluated with the CLI.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jaxsafe import runner
from jaxsafe.logging import check_new_run_dir
from jaxsafe.plotting import group_curves, plot_curves

COST_LIMITS = (10.0, 30.0, 60.0)
SEEDS = 4
#: PPO settings shared by both learners (full demo); ``--quick`` shrinks the budget for tests.
OVERRIDES = dict(num_envs=16, num_steps=128, total_steps=200_000, multiplier_lr=0.035)
QUICK_OVERRIDES = dict(num_envs=8, num_steps=32, total_steps=8 * 32 * 4, num_minibatches=2, hidden="16")


def final_stats(rows: list[dict], swept: tuple[str, ...], fraction: float = 0.25) -> dict:
    """``{setting: (return_mean, return_std, cost_mean, cost_std)}`` over seeds of the last ``fraction`` of chunks."""
    out = {}
    returns = group_curves(rows, swept, "episode_return")
    costs = group_curves(rows, swept, "episode_cost")
    for setting in returns:
        _, ret = returns[setting]
        _, cost = costs[setting]
        tail = max(1, int(round(ret.shape[1] * fraction)))
        with np.errstate(all="ignore"):
            ret_final = np.nanmean(ret[:, -tail:], axis=1)
            cost_final = np.nanmean(cost[:, -tail:], axis=1)
        out[setting] = (ret_final.mean(), ret_final.std(), cost_final.mean(), cost_final.std())
    return out


def main(out_dir: str | Path = "runs/demo", quick: bool = False, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    check_new_run_dir(out_dir)  # never into (or over) an existing directory: a second demo needs a new --out
    overrides = {**OVERRIDES, **(QUICK_OVERRIDES if quick else {})}
    chunks = 4 if quick else 20
    lag_spec = runner.make_spec("ppo_lag", "SafeCartPole", seeds=SEEDS, grid={"cost_limit": list(COST_LIMITS)},
                                overrides=overrides, num_chunks=chunks)
    ppo_spec = runner.make_spec("ppo", "SafeCartPole", seeds=SEEDS, overrides=overrides, num_chunks=chunks)
    start = time.perf_counter()
    lag = runner.run_training(lag_spec, out_dir / "ppo_lag", progress=progress)
    ppo = runner.run_training(ppo_spec, out_dir / "ppo", progress=progress)
    elapsed = time.perf_counter() - start

    lag_stats = final_stats(lag.rows, ("cost_limit",))
    ppo_stats = final_stats(ppo.rows, ())[()]
    lines = [
        f"PPO-Lagrangian vs PPO on SafeCartPole ({SEEDS} seeds, {lag_spec.config['total_steps']:,} env steps each, "
        f"{elapsed:.0f} s for both sweeps)",
        "",
        f"{'learner':<26} {'final return':>16} {'final cost':>16}  within limit",
    ]
    results = {}
    for setting, (ret, ret_std, cost, cost_std) in sorted(lag_stats.items()):
        limit = dict(setting)["cost_limit"]
        ok = cost <= limit
        results[limit] = dict(episode_return=ret, episode_cost=cost, within_limit=bool(ok))
        lines.append(f"{f'PPO-Lag, limit {limit:g}':<26} {ret:>9.1f} ± {ret_std:<5.1f} {cost:>9.1f} ± {cost_std:<5.1f}"
                     f"  {'yes' if ok else 'NO'}")
    ret, ret_std, cost, cost_std = ppo_stats
    results["ppo"] = dict(episode_return=ret, episode_cost=cost)
    over = [f"{limit:g}" for limit in COST_LIMITS if cost > limit]
    lines.append(f"{'PPO (unconstrained)':<26} {ret:>9.1f} ± {ret_std:<5.1f} {cost:>9.1f} ± {cost_std:<5.1f}"
                 f"  exceeds limits: {', '.join(over) or 'none'}")
    figure = plot_curves(lag.rows, ("cost_limit",), out_dir / "demo.png", title="SafeCartPole: PPO-Lagrangian vs PPO",
                         extra_runs={"PPO (unconstrained)": ppo.rows})
    lines += ["", f"figure: {figure}", f"runs: {lag.run_dir.path}, {ppo.run_dir.path}"]
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
