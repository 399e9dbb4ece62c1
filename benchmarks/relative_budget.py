"""The relative-budget protocol: GRPO from one base policy at xi = H / E[T] in {0.25, ..., 10}.

For each task (first_guess: T geometric, E[T] = 4; chain_arithmetic: T a sum of two geometric waits, E[T] = 5)
the base policy is SFT'd once, ``E[T]`` is estimated from capped base-policy rollouts (pooled over the prompt set,
:func:`jaxsafe.llm.budget.estimate_xi`), and for each xi in the grid the global budget is
``H = ceil(xi * E[T])`` (:func:`~jaxsafe.llm.budget.choose_budget`). GRPO (group 8, 8 prompts per iteration,
dapo loss, group scaling) then runs from the same base policy for every seed as one vmapped program, with both
reward forms (binary, solve-early). Per cell: the improvement of pass@1 within H per iteration and per generated
token, the fraction of zero-variance groups, and the tracked ``E[T]`` / xi under the current policy every
``--track-every`` iterations (the online tracker; the Gamma case study predicts linear growth of xi).

    python benchmarks/relative_budget.py --quick          # a smoke run (2 xi values, 1 seed, 6 iterations)
    python benchmarks/relative_budget.py                  # the protocol (8 xi x 2 tasks x 2 rewards x 3 seeds)
    python benchmarks/relative_budget.py --iterations 48  # longer runs: relative_budget_it48_s3.{json,md,png}

Cells are saved as they finish under ``benchmarks/results/relative_budget_cells/`` and skipped on a rerun
(resumable; run it with nohup in the background). Writes ``benchmarks/results/relative_budget.{json,md}`` and
``relative_budget.png`` (improvement against xi, regimes shaded) and ``relative_budget_xi.png`` (tracked xi over
iterations against its linear fit). Throughput (tokens and updates per second) and the TRL comparison are in
``benchmarks/grpo_trl.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxsafe import plotting
from jaxsafe.llm import budget, grpo
from jaxsafe.llm import grpo_experiment as experiment

RESULTS = Path(__file__).parent / "results"
XI_GRID = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TASKS = ("first_guess", "chain_arithmetic")
REWARDS = ("binary", "solve_early")
FULL = dict(xi=XI_GRID, seeds=3, iterations=12, track_every=6, rollouts=8, base_rollouts=16)
QUICK = dict(xi=(1.0, 3.0), seeds=1, iterations=6, track_every=3, rollouts=4, base_rollouts=8)
RUN_ORDER = (1.5, 0.5, 5.0, 1.0, 2.0, 0.25, 3.0, 10.0)
#: Regimes for the shading (deficient / balanced / ample) and the paper's efficient band.
DEFICIENT, AMPLE, BAND = 1.0, 3.0, (1.5, 2.0)


def base_mean_first_success(task: str, problem, rollouts: int) -> dict:
    estimate = experiment.estimate_base_xi(problem, 1, jax.random.PRNGKey(100), rollouts=rollouts, pooled=True)
    per_prompt = experiment.estimate_base_xi(problem, 1, jax.random.PRNGKey(100), rollouts=rollouts)
    exact = [budget.exact_mean_first_success(p) for p in experiment.exact_step_probs(task, problem.prompt_tokens)]
    return {"mean_first_success": float(estimate.mean_first_success[0]), "estimator": estimate.method[0],
            "censored_fraction": float(estimate.censored_fraction[0]),
            "per_prompt_median": float(np.median(per_prompt.mean_first_success)),
            "exact_by_construction": float(np.mean(exact))}


def run_cell(task: str, reward: str, xi: float, horizon: int, settings: dict, sft_steps: int) -> dict:
    problem = experiment.make_problem(task, sft_steps=sft_steps, reward=reward)
    config = grpo.GRPOConfig(group_size=8, prompts_per_batch=8, max_new_tokens=horizon,
                             num_iterations=settings["iterations"])
    hparams = config.default_hparams()
    tracker_lanes = [budget.OnlineXiTracker(horizon, settings["track_every"]) for _ in range(settings["seeds"])]

    def on_chunk(iteration, params, metrics):
        experiment.track_lanes(tracker_lanes, problem, params, iteration, jax.random.PRNGKey(7),
                               rollouts=settings["rollouts"])

    start = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(0), settings["seeds"])
    _, metrics = experiment.run_lanes(config, problem, hparams, keys, track_every=settings["track_every"],
                                      on_chunk=on_chunk)
    passes = np.asarray(metrics["pass_at_1"])
    span = max(1, passes.shape[1] // 4)
    first, last = passes[:, :span].mean(1), passes[:, -span:].mean(1)  # per seed
    tokens = np.asarray(metrics["tokens_generated"]).sum(1)  # per seed, whole run
    gap = passes.shape[1] - span
    mu = np.asarray([t.mean_first_success for t in tracker_lanes])  # [seeds, checkpoints]
    return {"task": task, "reward": reward, "xi_target": xi, "max_new_tokens": horizon,
            "pass_at_1_first": first.tolist(), "pass_at_1_last": last.tolist(),
            "improvement_per_iteration": ((last - first) / gap).tolist(),
            "improvement_per_token": ((last - first) / tokens).tolist(),
            "mean_first_success_reduction_per_iteration": ((mu[:, 0] - mu[:, -1]) / mu[:, 0] /
                                                          max(tracker_lanes[0].iterations[-1], 1)).tolist(),
            "zero_variance_fraction": float(np.asarray(metrics["zero_variance_fraction"]).mean()),
            "tokens_per_iteration": float(np.asarray(metrics["tokens_generated"]).mean()),
            "pass_at_1_curve": passes.mean(0).tolist(),
            "track_iterations": tracker_lanes[0].iterations, "tracked_xi": [t.xi for t in tracker_lanes],
            "tracked_mean_first_success": mu.tolist(), "linear_fit": [t.linear_fit() for t in tracker_lanes],
            "seconds": time.perf_counter() - start}


def _mean(values) -> float:
    return float(np.mean(values))


def aggregate(cells: list[dict], base: dict, settings: dict, budget_note: str) -> dict:
    table = []
    for cell in cells:
        table.append({k: cell[k] for k in ("task", "reward", "xi_target", "max_new_tokens", "zero_variance_fraction",
                                           "tokens_per_iteration")}
                     | {"xi0": cell["max_new_tokens"] / base[cell["task"]]["mean_first_success"],
                        "improvement_per_iteration": _mean(cell["improvement_per_iteration"]),
                        "improvement_per_token": _mean(cell["improvement_per_token"]),
                        "mu_reduction_per_iteration": _mean(cell["mean_first_success_reduction_per_iteration"]),
                        "pass_first": _mean(cell["pass_at_1_first"]), "pass_last": _mean(cell["pass_at_1_last"]),
                        "xi_slope": _mean([f["slope"] for f in cell["linear_fit"] if f["slope"] is not None] or [0]),
                        "xi_r2": _mean([f["r2"] for f in cell["linear_fit"] if f["r2"] is not None] or [0])})
    peaks = {}
    for task in TASKS:
        for reward in REWARDS:
            rows = [r for r in table if r["task"] == task and r["reward"] == reward]
            if not rows:
                continue
            peaks[f"{task}/{reward}"] = {
                metric: rows[int(np.argmax([r[metric] for r in rows]))]["xi0"]
                for metric in ("improvement_per_iteration", "improvement_per_token", "mu_reduction_per_iteration")}
    return {"settings": settings, "budget": budget_note, "base": base, "table": table, "peaks": peaks}


def write_markdown(summary: dict, path: Path) -> None:
    lines = ["# Relative budget: GRPO efficiency against xi = H / E[T]", "",
             f"Budget reached: {summary['budget']}.", "",
             "Base policies (E[T] pooled over the prompt set from capped rollouts; 'exact' is the SFT traces' "
             "law):", ""]
    for task, b in summary["base"].items():
        lines.append(f"- {task}: E[T] = {b['mean_first_success']:.2f} ({b['estimator']}, censored "
                     f"{b['censored_fraction']:.3f}); exact by construction {b['exact_by_construction']:.2f}")
    lines += ["", "| task | reward | xi target | H | xi0 | pass@1 first -> last | dJ / iteration | dJ / 1k tokens | "
              "E[T] reduction / iteration | zero-var groups | xi slope (r2) |", "|" + "---|" * 11]
    for r in summary["table"]:
        lines.append(f"| {r['task']} | {r['reward']} | {r['xi_target']:g} | {r['max_new_tokens']} | {r['xi0']:.2f} | "
                     f"{r['pass_first']:.3f} -> {r['pass_last']:.3f} | {r['improvement_per_iteration']:.4f} | "
                     f"{1000 * r['improvement_per_token']:.4f} | {r['mu_reduction_per_iteration']:.4f} | "
                     f"{r['zero_variance_fraction']:.2f} | {r['xi_slope']:.3f} ({r['xi_r2']:.2f}) |")
    lines += ["", "Where the peak lies (xi0 of the best cell per metric):", ""]
    for key, peak in summary["peaks"].items():
        lines.append(f"- {key}: " + ", ".join(f"{m} at xi = {v:.2f}" + (" (in [1.5, 2])" if 1.5 <= v <= 2 else "")
                                             for m, v in peak.items()))
    lines += ["", "Throughput (tokens / updates per second) and TRL's GRPOTrainer side by side (one-batch loss terms, "
              "learning curves): `benchmarks/grpo_trl.py`, results in `grpo_trl.md`; its speed part needs a quiet "
              "machine.", ""]
    path.write_text("\n".join(lines))


def plot(summary: dict, cells: list[dict], out: Path, name: str = "relative_budget") -> None:
    plt = plotting._pyplot()
    metrics = (("improvement_per_iteration", "d pass@1 within H / iteration"),
               ("improvement_per_token", "d pass@1 within H / generated token"),
               ("mu_reduction_per_iteration", "relative E[T] reduction / iteration"))
    fig, axes = plt.subplots(len(TASKS), len(metrics), figsize=(13, 7), squeeze=False)
    for row, task in enumerate(TASKS):
        for col, (metric, label) in enumerate(metrics):
            ax = axes[row, col]
            ax.axvspan(1e-2, DEFICIENT, color="tab:red", alpha=0.08, label="deficient")
            ax.axvspan(DEFICIENT, AMPLE, color="tab:green", alpha=0.08, label="balanced")
            ax.axvspan(AMPLE, 1e3, color="tab:blue", alpha=0.08, label="ample")
            ax.axvspan(*BAND, color="tab:green", alpha=0.15)
            for reward in REWARDS:
                rows = sorted((r for r in summary["table"] if r["task"] == task and r["reward"] == reward),
                              key=lambda r: r["xi0"])
                if rows:
                    ax.plot([r["xi0"] for r in rows], [r[metric] for r in rows], "o-", label=reward)
            ax.set_xscale("log")
            ax.set_xlim(0.15, 15)
            ax.set_xlabel("xi0 = H / E[T] (base policy)")
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(task, fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(10, 4), squeeze=False)
    for col, task in enumerate(TASKS):
        ax = axes[0, col]
        for cell in cells:
            if cell["task"] != task or cell["reward"] != "binary" or cell["xi_target"] not in (1.0, 1.5, 3.0):
                continue
            x = np.asarray(cell["track_iterations"], float)
            y = np.asarray(cell["tracked_xi"]).mean(0)
            line, = ax.plot(x, y, "o", label=f"xi0 target {cell['xi_target']:g} (tracked)")
            if len(x) >= 2:
                slope, intercept = np.polyfit(x, y, 1)
                ax.plot(x, slope * x + intercept, "--", color=line.get_color(), label=f"linear fit ({slope:.3f}/it)")
        ax.set_xlabel("GRPO iteration")
        ax.set_ylabel("xi = H / E[T] under the current policy")
        ax.set_title(f"{task}: online xi tracker (binary reward)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{name}_xi.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    settings.update({k: v for k, v in dict(iterations=args.iterations, seeds=args.seeds).items() if v is not None})
    settings["sft_steps"] = args.sft_steps
    out = Path(args.out)
    name = "relative_budget_quick" if args.quick else "relative_budget"
    if not args.quick and (settings["iterations"], settings["seeds"]) != (FULL["iterations"], FULL["seeds"]):
        name += f"_it{settings['iterations']}_s{settings['seeds']}"  # a longer protocol: its own results files
    cell_dir = out / f"{name}_cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    base, cells = {}, []
    total = len(settings["xi"]) * len(TASKS) * len(REWARDS)
    for task in TASKS:
        problem = experiment.make_problem(task, sft_steps=args.sft_steps)
        base[task] = base_mean_first_success(task, problem, settings["base_rollouts"])
        print(f"{task}: base E[T] = {base[task]['mean_first_success']:.2f} ({base[task]['estimator']})", flush=True)
    # cells in an order that covers the xi range early (a partial run still shows the shape)
    order = sorted(settings["xi"], key=lambda x: RUN_ORDER.index(x) if x in RUN_ORDER else len(RUN_ORDER))
    for reward in REWARDS:  # the whole xi grid with the binary reward first
        for xi, task in [(xi, task) for xi in order for task in TASKS]:
            horizon = min(budget.choose_budget([base[task]["mean_first_success"]], xi), experiment.TRACE_LENGTH)
            path = cell_dir / f"{task}_{reward}_xi{xi:g}_it{settings['iterations']}_s{settings['seeds']}.json"
            if path.exists():
                cells.append(json.loads(path.read_text()))
                continue
            cell = run_cell(task, reward, xi, horizon, settings, args.sft_steps)
            path.write_text(json.dumps(cell))
            cells.append(cell)
            print(f"{task} {reward} xi={xi:g} H={horizon}: pass@1 {np.mean(cell['pass_at_1_first']):.3f} -> "
                  f"{np.mean(cell['pass_at_1_last']):.3f} ({cell['seconds']:.0f} s)", flush=True)
            note = (f"{len(cells)} of {total} cells (partial: the run was still going); {settings['seeds']} seeds x "
                    f"{settings['iterations']} iterations x 64 rollouts per cell, SFT {args.sft_steps} steps")
            summary = aggregate(cells, base, settings, note)
            (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
            write_markdown(summary, out / f"{name}.md")
            plot(summary, cells, cell_dir if args.quick else out, name)
    note = (f"{len(cells)} of {total} cells (complete); {settings['seeds']} seeds x {settings['iterations']} "
            f"iterations x 64 rollouts per cell, SFT {args.sft_steps} steps")
    summary = aggregate(cells, base, settings, note)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / f"{name}.md")
    if not args.quick:
        plot(summary, cells, out, name)
    else:
        plot(summary, cells, cell_dir, name)
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
