"""The safety suite at OmniSafe's budget: PPO, PPO-Lagrangian, PPO-PID and CPO on the faithful navigation tasks.

Every (task, algorithm) cell is one ``jaxsafe train`` run over 3 seeds (one compiled program; each task's preset,
:mod:`jaxsafe.rl.presets`), cost limit 25, 10^7 environment steps per seed, as a chunked run directory under
``--run-root`` (default ``runs/safety_suite_full``). The script advances the cells round-robin, one chunk
(250,000 steps per seed) at a time, always the cell with the fewest steps first, so that a session that stops
early leaves every cell at a similar budget (``--schedule round-robin``), or, by default (``--schedule finish``),
finishes the cells one at a time in the order of ``--tasks`` and ``--algos``; rerunning the same command resumes
every cell from its last checkpoint (bit-identical, as ``jaxsafe train --resume``). ``--hours`` bounds one call.

Run directories under ``runs/`` do not outlive a checkout, so after every chunk the cell is mirrored into the
committed store ``benchmarks/results/safety_suite_full_cells/<task>__<algo>/`` (``--store``): its
``config.json`` and ``metrics.jsonl``, and, while the cell is unfinished, its newest checkpoint (about 1 MB; with
the default schedule at most one cell is unfinished). A run root that lacks a cell, or holds fewer of its steps,
is filled from the store before any work, so a fresh clone resumes where the last commit stopped.

The report reads whatever the run directories hold:

- ``benchmarks/results/safety_suite_full.{json,md}``: per task and algorithm the final episode return and cost
  (mean over the chunks in the last 10% of the steps reached, then mean ± std over seeds), the steps reached and
  the wall time, in OmniSafe's table format with OmniSafe's published numbers (Table 2 of
  ``benchmarks/on-policy/README.md``, 10^7 steps, cost limit 25) beside them;
- ``benchmarks/results/safety_suite_full_<task>.png``: return and cost against steps (mean and min-max band over
  seeds; the limit dashed).

The brax velocity tasks (``--velocity``) run at 10^6 steps per seed: brax steps at 1-5k steps/s on 2 CPU cores.

Usage::

    python benchmarks/safety_suite_full.py --hours 1       # advance the cells for an hour, then report
    python benchmarks/safety_suite_full.py --report-only   # rewrite the report from the run directories
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks import chunked  # noqa: E402
from jaxsafe import runner  # noqa: E402
from jaxsafe.logging import RunDir  # noqa: E402
from jaxsafe.plotting import plot_curves  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "safety_suite_full_cells"
TASKS = ["SafePointGoal1", "SafeCarGoal1", "SafePointButton1", "SafePointCircle", "SafePointRun"]
VELOCITY = ["SafeHopperVelocity"]
ALGORITHMS = {"ppo": "PPO", "ppo_lag": "PPO-Lag", "ppo_pid": "PPO-PID", "cpo": "CPO"}
COST_LIMIT, SEEDS, STEPS, VELOCITY_STEPS, CHUNKS = 25.0, 3, 10_000_000, 1_000_000, 40
#: OmniSafe's published final (reward, cost) mean ± std, Table 2 of benchmarks/on-policy/README.md (1e7 steps,
#: cost_limit 25; Safety-Gymnasium's -v0 navigation tasks). OmniSafe has no Circle/Run rows in that table.
OMNISAFE = {
    "SafePointGoal1": {"ppo": ((25.44, 5.43), (55.72, 35.55)), "ppo_lag": ((12.96, 6.95), (25.80, 34.99)),
                       "ppo_pid": ((8.43, 3.43), (25.74, 7.83)), "cpo": ((20.46, 1.38), (28.84, 7.76))},
    "SafeCarGoal1": {"ppo": ((33.41, 2.89), (58.06, 42.06)), "ppo_lag": ((13.27, 9.26), (21.72, 32.06)),
                     "ppo_pid": ((10.60, 2.51), (30.66, 7.53)), "cpo": ((25.52, 2.65), (43.32, 14.35))},
    "SafePointButton1": {"ppo": ((27.03, 6.14), (152.48, 80.39)), "ppo_lag": ((4.60, 4.73), (20.8, 35.78)),
                         "ppo_pid": ((1.18, 1.02), (29.42, 12.10)), "cpo": ((4.04, 4.54), (40.00, 4.52))},
}


def cell_name(task: str, algorithm: str) -> str:
    return f"{task}__{algorithm}"


def cell_steps(task: str) -> int:
    return VELOCITY_STEPS if task in VELOCITY else STEPS


def cells_for(pairs: list[tuple[str, str]]) -> list[chunked.Cell]:
    """The suite's (task, algorithm) pairs as chunked cells: 3 seeds, the task's preset, cost limit 25."""

    def make(task, algorithm):
        return lambda: runner.make_spec(algorithm, task, seeds=SEEDS, num_chunks=CHUNKS,
                                        overrides={"total_steps": cell_steps(task),
                                                   **({} if algorithm == "ppo" else {"cost_limit": COST_LIMIT})})

    return [chunked.Cell(cell_name(t, a), cell_steps(t), make(t, a)) for t, a in pairs]


def report(cells: list[tuple[str, str]], root: Path, out: Path, store_root: Path | None = STORE) -> dict:
    """Write the table and curves from every cell the run root or the store holds (the one with more steps)."""
    wall = chunked.wall_seconds(root, store_root)
    results: dict = {"settings": {"cost_limit": COST_LIMIT, "seeds": SEEDS, "target_steps": STEPS,
                                  "velocity_target_steps": VELOCITY_STEPS, "chunks": CHUNKS},
                     "machine": {"platform": platform.platform()}, "cells": {}, "omnisafe": OMNISAFE}
    previous_path = out / "safety_suite_full.json"
    previous = json.loads(previous_path.read_text()).get("cells", {}) if previous_path.exists() else {}
    by_task: dict[str, dict] = {}
    for (task, algorithm), cell_spec in zip(cells, cells_for(cells)):
        run_dir = chunked.newest(cell_spec, root, store_root)
        if chunked.steps_done(run_dir) == 0:
            continue
        rows = RunDir(run_dir, must_exist=True).read_metrics()
        ret, cost = chunked.final_values(rows, "episode_return"), chunked.final_values(rows, "episode_cost")
        cell = {"steps": chunked.steps_done(run_dir), "target_steps": cell_steps(task),
                "return": [float(ret.mean()), float(ret.std())], "cost": [float(cost.mean()), float(cost.std())],
                "wall_seconds": wall.get(cell_name(task, algorithm))}
        results["cells"][cell_name(task, algorithm)] = cell
        by_task.setdefault(task, {})[algorithm] = (cell, rows)
    for task, algorithm in cells:  # an earlier run's numbers stay in the table until this cell is rerun
        name = cell_name(task, algorithm)
        if name not in results["cells"] and name in previous:
            results["cells"][name] = {**previous[name], "earlier": True}
            by_task.setdefault(task, {})[algorithm] = (results["cells"][name], None)
    by_task = {t: dict(sorted(by_task[t].items(), key=lambda kv: list(ALGORITHMS).index(kv[0])))
               for t in sorted(by_task, key=lambda t: (TASKS + VELOCITY).index(t))}
    lines = ["# Safety suite at OmniSafe's budget (faithful navigation tasks)", "",
             f"Cost limit {COST_LIMIT:g}, {SEEDS} seeds per cell (one compiled program), each task's preset "
             "(`jaxsafe.rl.presets`). Final = mean over the chunks in the last 10% of the steps reached of the "
             "training rollouts' finished episodes, then mean ± std over seeds. Target budget 10^7 steps per "
             "seed (velocity 10^6); **the column `steps` says what each cell reached** (resumable: rerun "
             "`python benchmarks/safety_suite_full.py`). OmniSafe: Table 2 of its on-policy benchmark README "
             "(Safety-Gymnasium MuJoCo, 10^7 steps, cost limit 25). Generated by "
             "`benchmarks/safety_suite_full.py`.", "",
             "| task | algorithm | steps | return | cost | OmniSafe return | OmniSafe cost | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for task, algos in by_task.items():
        for algorithm, (cell, _) in algos.items():
            omni = OMNISAFE.get(task, {}).get(algorithm)
            omni_text = (f"{omni[0][0]:.2f} ± {omni[0][1]:.2f} | {omni[1][0]:.2f} ± {omni[1][1]:.2f}" if omni
                         else "- | -")
            flag = " *" if algorithm != "ppo" and cell["cost"][0] > COST_LIMIT else ""
            wall_text = f"{cell['wall_seconds']:.0f}" if cell["wall_seconds"] else "-"
            mark = " †" if cell.get("earlier") else ""
            lines.append(f"| {task} | {ALGORITHMS[algorithm]} | {cell['steps']:,}{mark} | {cell['return'][0]:.2f} ± "
                         f"{cell['return'][1]:.2f} | {cell['cost'][0]:.2f} ± {cell['cost'][1]:.2f}{flag} | "
                         f"{omni_text} | {wall_text} |")
        curves = {ALGORITHMS[a]: rows for a, (_, rows) in algos.items() if rows is not None}
        if curves:  # a task with only earlier cells keeps its earlier figure
            plot_curves([], (), out / f"safety_suite_full_{task}.png", cost_limits={"cost_limit": [COST_LIMIT]},
                        title=task, extra_runs=curves)
    lines += ["", "`*`: a constrained learner above the limit at the steps reached. Curves: "
              "`safety_suite_full_<task>.png`."]
    if any(c.get("earlier") for c in results["cells"].values()):
        lines += ["", "`†`: an earlier run whose run directory was not kept (before the committed store "
                  "`safety_suite_full_cells/`); its row stays until the cell is rerun, and its curve is the task's "
                  "earlier figure where no rerun cell of that task exists yet."]
    (out / "safety_suite_full.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "safety_suite_full.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="wall-clock bound of this call")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--algos", default=",".join(ALGORITHMS))
    parser.add_argument("--velocity", action="store_true", help="add the brax velocity tasks (10^6 steps)")
    parser.add_argument("--run-root", default="runs/safety_suite_full")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--store", default=str(STORE),
                        help="committed mirror of the run directories (resume across checkouts); 'none' disables")
    parser.add_argument("--schedule", default="finish", choices=chunked.SCHEDULES,
                        help="finish the cells one at a time (default) or advance the least advanced one")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",") + (VELOCITY if args.velocity else [])
    unknown = [a for a in args.algos.split(",") if a not in ALGORITHMS]
    if unknown:
        raise SystemExit(f"--algos: unknown {unknown}; allowed: {list(ALGORITHMS)}")
    unknown = [t for t in tasks if t not in TASKS + VELOCITY]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; allowed: {TASKS + VELOCITY}")
    cells = [(t, a) for t in tasks for a in args.algos.split(",")]
    root = Path(args.run_root)
    store_root = None if args.store == "none" else Path(args.store)
    if not args.report_only:
        chunked.run_cells(cells_for(cells), root, args.hours, store_root, args.schedule)
    # the report covers every cell of the suite, not only those this call advanced
    report([(t, a) for t in TASKS + VELOCITY for a in ALGORITHMS], root, Path(args.out), store_root)


if __name__ == "__main__":
    main()
