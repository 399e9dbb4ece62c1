"""Bi-level RL benchmark: BC-HG against HPGD, the naive gradient and the exact-gradient oracle.

    python benchmarks/bilevel.py            # full settings (10 seeds, N in {100, 200, 400, 1000}, 1000 iterations)
    python benchmarks/bilevel.py --quick    # reduced budget: 5 seeds, N in {100, 1000}, 300 leader iterations
                                            # on FourRooms, shorter runs for the other tasks

Sections (every estimator of a section runs in the same process, its seeds vmapped in one compiled program):

1. FourRooms (bchg.md 1.4): final exact leader value of BC-HG, HPGD (MC, SARSA), naive and the oracle at each
   sample budget N; plus BC-HG with the exact leader critic (isolates the estimator from the SARSA critic).
2. Warehouse design (one transition parameter per cell): BC-HG, HPGD-SARSA, naive, oracle.
3. DiscreteToy R1/R2 (Markov game): policy optimality gap of BC-HG with and without the guidance term
   (white-box and estimated follower models), and the oracle.
4. BuildingThermal (continuous, transition design): BC-HG, naive, oracle.

"Final" is the mean over the last 10% of leader iterations of the exact leader value (the 100-iteration rolling
mean of bchg.md, scaled to our run lengths). Writes benchmarks/results/bilevel.json, bilevel.md and
bilevel_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsafe.bilevel import problems  # noqa: E402
from jaxsafe.bilevel.experiment import final_value, run_estimator  # noqa: E402
from jaxsafe.bilevel.train import BilevelConfig  # noqa: E402
from jaxsafe.logging import to_jsonable  # noqa: E402
from jaxsafe.plotting import plot_mean_band  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def plot_curves(curves: dict, path, title: str, metric: str = "leader_value") -> None:
    """Mean +- std over seeds of ``curves[estimator] [seeds, iterations]`` against the leader iteration."""
    plot_mean_band(curves, path, xlabel="leader iteration", ylabel=metric.replace("_", " "), title=title)


def _entry(metrics: dict, seconds: float, metric: str = "leader_value") -> dict:
    finals = final_value(metrics[metric])
    return {"mean": float(finals.mean()), "std": float(finals.std()),
            "stderr": float(finals.std() / np.sqrt(len(finals))), "seconds": seconds,
            "per_seed": finals.tolist()}


def _run(problem, seeds, hparams=None, metric="leader_value", **config):
    start = time.perf_counter()
    metrics = run_estimator(problem, BilevelConfig(**config), seeds, hparams)
    seconds = time.perf_counter() - start
    entry = _entry(metrics, seconds, metric)
    if "optimality_gap" in metrics and metric != "optimality_gap":
        entry["optimality_gap"] = _entry(metrics, seconds, "optimality_gap")
    print(f"  {config.get('estimator')} N={config.get('num_samples')} {metric}: {entry['mean']:.4f} "
          f"+- {entry['stderr']:.4f} ({seconds:.0f}s)", flush=True)
    return entry, metrics


def four_rooms_section(settings) -> tuple[dict, dict]:
    problem = problems.four_rooms()
    hparams = BilevelConfig().default_hparams(problem).replace(leader_lr=jnp.float32(settings["four_rooms_lr"]))
    table, curves_by_n = {}, {}
    iters, seeds = settings["iterations"], settings["seeds"]
    print(f"FourRooms: {seeds} seeds, {iters} iterations, lr {settings['four_rooms_lr']}", flush=True)
    oracle, oracle_metrics = _run(problem, seeds, hparams, estimator="oracle", num_iterations=iters, num_samples=2)
    table["oracle"] = {str(n): oracle for n in settings["budgets"]}
    for n in settings["budgets"]:
        curves = {"oracle": oracle_metrics["leader_value"]}
        for estimator, extra in (("bchg", {}), ("hpgd_sarsa", {}), ("hpgd_mc", {}), ("naive", {}),
                                 ("bchg_exact_critic", {"critic": "exact"})):
            name = "bchg" if estimator == "bchg_exact_critic" else estimator
            entry, metrics = _run(problem, seeds, hparams, estimator=name, num_iterations=iters, num_samples=n,
                                  **extra)
            table.setdefault(estimator, {})[str(n)] = entry
            curves[estimator] = metrics["leader_value"]
        curves_by_n[n] = curves
        plot_curves(curves, RESULTS / f"bilevel_four_rooms_N{n}.png", f"FourRooms, N={n}")
    return table, curves_by_n


def warehouse_section(settings) -> dict:
    problem = problems.warehouse()
    seeds, iters, n = settings["seeds"], settings["warehouse_iterations"], settings["warehouse_samples"]
    print(f"Warehouse: d={problem.num_params}, {seeds} seeds, {iters} iterations, N={n}", flush=True)
    table, curves = {}, {}
    for estimator in ("oracle", "bchg", "hpgd_sarsa", "naive"):
        entry, metrics = _run(problem, seeds, estimator=estimator, num_iterations=iters, num_samples=n)
        table[estimator] = entry
        curves[estimator] = metrics["leader_value"]
    table["initial_leader_value"] = float(curves["oracle"][:, 0].mean())
    plot_curves(curves, RESULTS / "bilevel_warehouse.png", f"Warehouse design (d={problem.num_params}), N={n}")
    return table


def discrete_toy_section(settings) -> dict:
    seeds, iters, n = settings["seeds"], settings["toy_iterations"], settings["toy_samples"]
    out = {}
    for payoff in (1.0, 2.0):
        game = problems.discrete_toy(payoff)
        print(f"DiscreteToy R{payoff:g}: {seeds} seeds, {iters} iterations, N={n}", flush=True)
        table, curves = {}, {}
        for label, config in (("bchg", {"estimator": "bchg"}),
                              ("bchg_estimated_follower", {"estimator": "bchg", "follower_model": "estimated"}),
                              ("no_guidance", {"estimator": "bchg_no_guidance"}),
                              ("oracle", {"estimator": "oracle"})):
            entry, metrics = _run(game, seeds, metric="optimality_gap", num_iterations=iters, num_samples=n,
                                  **config)
            entry["leader_value"] = _entry(metrics, entry["seconds"], "leader_value")
            table[label] = entry
            curves[label] = metrics["optimality_gap"]
        plot_curves(curves, RESULTS / f"bilevel_discrete_toy_r{payoff:g}.png", f"DiscreteToy R{payoff:g}, N={n}",
                    metric="optimality_gap")
        out[f"R{payoff:g}"] = table
    return out


def thermal_section(settings) -> dict:
    problem = problems.building_thermal()
    seeds, iters, n = settings["seeds"], settings["thermal_iterations"], settings["thermal_samples"]
    print(f"BuildingThermal: {seeds} seeds, {iters} iterations, N={n}", flush=True)
    table, curves = {}, {}
    for estimator in ("oracle", "bchg", "naive"):
        entry, metrics = _run(problem, seeds, estimator=estimator, num_iterations=iters, num_samples=n,
                              track_oracle=estimator == "bchg")
        if "oracle_cosine" in metrics:
            entry["mean_oracle_cosine"] = float(np.nanmean(metrics["oracle_cosine"]))
        table[estimator] = entry
        curves[estimator] = metrics["leader_value"]
    table["initial_leader_value"] = float(curves["oracle"][:, 0].mean())
    plot_curves(curves, RESULTS / "bilevel_building_thermal.png", f"BuildingThermal, N={n}")
    return table


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = ["# Bi-level RL benchmark (BC-HG)", "",
             f"Mode: **{s['mode']}**; {s['seeds']} seeds (vmapped); final = mean of the exact leader value over the "
             "last 10% of leader iterations; mean +- standard error over seeds. Generated by "
             "`benchmarks/bilevel.py`.", "",
             f"## FourRooms (leader value, {s['iterations']} leader iterations, lr {s['four_rooms_lr']})", ""]
    fr = results["four_rooms"]
    budgets = [str(n) for n in s["budgets"]]
    lines.append("| estimator | " + " | ".join(f"N={n}" for n in budgets) + " |")
    lines.append("|---|" + "---|" * len(budgets))
    for name in ("oracle", "bchg", "bchg_exact_critic", "hpgd_sarsa", "hpgd_mc", "naive"):
        cells = [f"{fr[name][n]['mean']:.3f} +- {fr[name][n]['stderr']:.3f}" for n in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    wh = results["warehouse"]
    lines += ["", f"## Warehouse design (leader value; initial {wh['initial_leader_value']:.3f})", "",
              "| estimator | final leader value |", "|---|---|"]
    for name in ("oracle", "bchg", "hpgd_sarsa", "naive"):
        lines.append(f"| {name} | {wh[name]['mean']:.3f} +- {wh[name]['stderr']:.3f} |")
    lines += ["", "## DiscreteToy (policy optimality gap, lower is better; leader value)", "",
              "| variant | R1 gap | R1 value | R2 gap | R2 value |", "|---|---|---|---|---|"]
    for name in ("oracle", "bchg", "bchg_estimated_follower", "no_guidance"):
        row = [name]
        for r in ("R1", "R2"):
            e = results["discrete_toy"][r][name]
            row += [f"{e['mean']:.3f} +- {e['stderr']:.3f}", f"{e['leader_value']['mean']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    th = results["building_thermal"]
    lines += ["", f"## BuildingThermal (continuous; leader value, initial {th['initial_leader_value']:.3f})", "",
              "| estimator | final leader value |", "|---|---|"]
    for name in ("oracle", "bchg", "naive"):
        extra = f" (mean cosine to oracle {th[name]['mean_oracle_cosine']:.2f})" if "mean_oracle_cosine" in th[name] else ""
        lines.append(f"| {name} | {th[name]['mean']:.3f} +- {th[name]['stderr']:.3f}{extra} |")
    lines += ["", f"Total wall time: {results['seconds']:.0f}s on {results['device']}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced budget (see the module docstring)")
    args = parser.parse_args(argv)
    if args.quick:
        settings = dict(mode="quick", seeds=5, budgets=[100, 1000], iterations=300, four_rooms_lr=1.0,
                        warehouse_iterations=150, warehouse_samples=400, toy_iterations=150, toy_samples=300,
                        thermal_iterations=100, thermal_samples=500)
    else:
        settings = dict(mode="full", seeds=10, budgets=[100, 200, 400, 1000], iterations=1000, four_rooms_lr=1.0,
                        warehouse_iterations=300, warehouse_samples=400, toy_iterations=250, toy_samples=450,
                        thermal_iterations=200, thermal_samples=1000)
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {"settings": settings, "device": str(jax.devices()[0])}
    results["discrete_toy"] = discrete_toy_section(settings)
    results["warehouse"] = warehouse_section(settings)
    results["building_thermal"] = thermal_section(settings)
    results["four_rooms"], _ = four_rooms_section(settings)
    results["seconds"] = time.perf_counter() - start
    (RESULTS / "bilevel.json").write_text(json.dumps(to_jsonable(results), indent=2))
    (RESULTS / "bilevel.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
