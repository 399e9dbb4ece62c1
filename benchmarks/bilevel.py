"""Bi-level RL benchmark: BC-HG against HPGD, the naive gradient and the exact-gradient oracle.

    python benchmarks/bilevel.py            # the paper's settings (bchg.md 1.4): 10 seeds, N in {100, 200, 400,
                                            # 1000}, 10,000 FourRooms leader iterations, lr 0.1, SARSA step 0.5,
                                            # clipping at 1.0, lambda 0.003; resumable per cell
    python benchmarks/bilevel.py --quick    # reduced budget: 5 seeds, N in {100, 1000}, 300 leader iterations,
                                            # lr 1.0; shorter runs for the other tasks
    python benchmarks/bilevel.py --gradient-quality   # the hypergradient-quality study (gradient_quality_main)

Sections (every estimator of a cell runs in one process, its seeds vmapped in one compiled program):

1. FourRooms (bchg.md 1.4): final exact leader value of BC-HG, HPGD (MC, SARSA), naive and the oracle at each
   sample budget N; plus BC-HG with the exact leader critic (isolates the estimator from the SARSA critic).
2. DiscreteToy R1/R2 (Markov game): policy optimality gap of BC-HG with and without the guidance term
   (white-box and estimated follower models), and the oracle.
3. Warehouse design (one transition parameter per cell): BC-HG, HPGD-SARSA, naive, oracle; plus BC-HG with the
   exact leader critic and BC-HG and naive at 10x the samples (where BC-HG's gap to naive comes from).
4. BuildingThermal (continuous, transition design): BC-HG, naive, oracle.

**Resuming.** Every cell (section, estimator, N) is written to ``<out>/<stem>_cells.json`` as soon as it
finishes, and a running cell checkpoints its vmapped leader state and metrics every ``--chunk`` leader
iterations under ``--checkpoints`` (default ``benchmarks/results/bilevel_checkpoints/<mode>``, committed with the
results so that a fresh clone resumes a cell that a session left unfinished; a cell's checkpoint is deleted when
the cell finishes, so at most the running cell's is kept). Rerunning the same command
skips finished cells and continues a started one from its checkpoint, bit-identically (iteration ``i`` always
draws ``split(key, num_iterations)[i]``). The tables ``<stem>.{json,md}`` and the figures are regenerated from
the finished cells after every cell, so a partial run leaves a partial table (missing cells are "-").

"Final" is the mean over the last 10% of leader iterations of the exact leader value (the 100-iteration rolling
mean of bchg.md, scaled to our run lengths). The stem is ``bilevel`` for the full run and ``bilevel_quick`` for
``--quick``; the gradient-quality study writes ``bilevel_gradient.{json,md,png}``.
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
from jaxsafe.bilevel.experiment import final_value  # noqa: E402
from jaxsafe.bilevel.train import BilevelConfig, make_train_parts  # noqa: E402
from jaxsafe.logging import to_jsonable  # noqa: E402
from jaxsafe.plotting import plot_mean_band  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KEPT_METRICS = ("leader_value", "optimality_gap", "hypergradient_norm", "oracle_cosine", "nonfinite",
                "follower_residual")
CURVE_POINTS = 200  # stored curve resolution per seed (block means)

SETTINGS = {
    # bchg.md 1.4: FourRooms lambda 0.003, incentive cost 5, 10 seeds, N in {100, 200, 400, 1000}, 10,000 outer
    # iterations, SGD with clipping at 1.0; lr 0.1 and SARSA step 0.5 (the notes' reference point of the grids
    # lr {0.5, 0.1, 0.05, 0.01} and alpha {0.1, ..., 1.0}; we ran no grid search). DiscreteToy: 250 epochs of
    # 3 episodes x 150 steps. BuildingThermal: 2,000 outer iterations, 10,000 samples per update.
    "full": dict(mode="full", seeds=10, budgets=[100, 200, 400, 1000], iterations=10000, four_rooms_lr=0.1,
                 critic_lr=0.5, max_grad_norm=1.0, warehouse_iterations=1000, warehouse_samples=400,
                 toy_iterations=250, toy_samples=450, thermal_iterations=2000, thermal_samples=10000),
    "quick": dict(mode="quick", seeds=5, budgets=[100, 1000], iterations=300, four_rooms_lr=1.0, critic_lr=0.5,
                  max_grad_norm=1.0, warehouse_iterations=150, warehouse_samples=400, toy_iterations=150,
                  toy_samples=300, thermal_iterations=100, thermal_samples=500),
}
FOUR_ROOMS_ESTIMATORS = (("oracle", {}), ("bchg", {}), ("hpgd_sarsa", {}), ("bchg_exact_critic", {"critic": "exact"}),
                         ("naive", {}), ("hpgd_mc", {}))
TOY_VARIANTS = (("bchg", {"estimator": "bchg"}),
                ("bchg_estimated_follower", {"estimator": "bchg", "follower_model": "estimated"}),
                ("no_guidance", {"estimator": "bchg_no_guidance"}),
                ("oracle", {"estimator": "oracle"}))


# ---------------------------------------------------------------------------------------------------------------
# Resumable cells
# ---------------------------------------------------------------------------------------------------------------


class CellStore:
    """Finished cells in one JSON file (rewritten atomically per cell) and per-cell chunk checkpoints."""

    def __init__(self, path: Path, checkpoints: Path, chunk: int):
        self.path, self.checkpoints, self.chunk = path, checkpoints, chunk
        self.cells = json.loads(path.read_text()) if path.exists() else {}

    def save(self, name: str, cell: dict) -> None:
        self.cells[name] = to_jsonable(cell)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cells, indent=1))
        os.replace(tmp, self.path)

    def run(self, name: str, problem, config: BilevelConfig, seeds: int, hparams) -> dict:
        """The cell's per-seed metrics ``[seeds, iterations]``, from its checkpoint onwards."""
        parts = make_train_parts(config, problem)
        keys = jnp.stack([jax.random.PRNGKey(i) for i in range(seeds)])
        hparams = hparams.validate()
        ckpt = self.checkpoints / (name.replace("/", "__") + ".npz")
        state = jax.vmap(parts.init, in_axes=(0, None))(keys, hparams)
        leaves, treedef = jax.tree.flatten(state)
        metrics: dict[str, list] = {}
        done = 0
        if ckpt.exists():
            saved = np.load(ckpt)
            leaves = [jnp.asarray(saved[f"state_{i}"]) for i in range(len(leaves))]
            state = jax.tree.unflatten(treedef, leaves)
            done = int(saved["done"])
            metrics = {k[len("metric_"):]: [saved[k]] for k in saved.files if k.startswith("metric_")}
            print(f"  {name}: resuming at iteration {done}", flush=True)
        total = config.num_iterations
        chunk = min(self.chunk, total)

        def scan(state, length):
            return jax.lax.scan(lambda s, _: parts.update(s, hparams), state, None, length=length)

        programs = {}
        while done < total:
            length = min(chunk, total - done)
            if length not in programs:
                programs[length] = jax.jit(jax.vmap(lambda s, n=length: scan(s, n)))
            state, new = programs[length](state)
            for k, v in new.items():
                if k in KEPT_METRICS:
                    metrics.setdefault(k, []).append(np.asarray(v))
            done += length
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            arrays = {f"state_{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
            arrays.update({f"metric_{k}": np.concatenate(v, axis=1) for k, v in metrics.items()})
            metrics = {k: [arrays[f"metric_{k}"]] for k in metrics}
            tmp = ckpt.with_name(ckpt.stem + ".tmp.npz")
            np.savez_compressed(tmp, done=done, **arrays)
            os.replace(tmp, ckpt)
        return {k: np.concatenate(v, axis=1) for k, v in metrics.items()}

    def finished(self, name: str) -> None:
        """Drop a finished cell's checkpoint (its metrics are in the cells file now)."""
        (self.checkpoints / (name.replace("/", "__") + ".npz")).unlink(missing_ok=True)

    def cell(self, name: str, problem, seeds: int, hparams, metric: str = "leader_value", **config) -> dict:
        if name in self.cells:
            return self.cells[name]
        start = time.perf_counter()
        metrics = self.run(name, problem, BilevelConfig(**config), seeds, hparams)
        seconds = time.perf_counter() - start
        cell = {"config": config, "seconds": seconds, metric: _entry(metrics[metric]),
                "curves": {k: _downsample(metrics[k]) for k in ("leader_value", "optimality_gap")
                           if k in metrics},
                "nonfinite_iterations": int(np.sum(metrics["nonfinite"]))}
        if metric != "leader_value":
            cell["leader_value"] = _entry(metrics["leader_value"])
        if "follower_residual" in metrics:
            cell["max_follower_residual"] = float(np.nanmax(metrics["follower_residual"]))
        if "oracle_cosine" in metrics:
            cell["mean_oracle_cosine"] = float(np.nanmean(metrics["oracle_cosine"]))
        cell["median_hypergradient_norm"] = float(np.nanmedian(metrics["hypergradient_norm"]))
        e = cell[metric]
        print(f"  {name} {metric}: {e['mean']:.4f} +- {e['stderr']:.4f} ({seconds:.0f}s)", flush=True)
        self.save(name, cell)
        self.finished(name)
        return self.cells[name]


def _entry(curves: np.ndarray) -> dict:
    finals = final_value(np.asarray(curves, float))
    return {"mean": float(finals.mean()), "std": float(finals.std()),
            "stderr": float(finals.std(ddof=1) / np.sqrt(len(finals))) if len(finals) > 1 else 0.0,
            "per_seed": finals.tolist()}


def _downsample(curves: np.ndarray) -> dict:
    curves = np.asarray(curves, float)
    block = max(1, curves.shape[1] // CURVE_POINTS)
    usable = curves.shape[1] // block * block
    means = curves[:, :usable].reshape(curves.shape[0], -1, block).mean(axis=2)
    return {"block": block, "values": means.tolist()}


def _curves(cell: dict, metric: str = "leader_value"):
    stored = cell["curves"][metric]
    return np.asarray(stored["values"]), stored["block"]


def plot_cells(cells: dict, names: dict, path, title: str, metric: str = "leader_value") -> None:
    curves, block = {}, 1
    for label, name in names.items():
        if name in cells:
            curves[label], block = _curves(cells[name], metric)
    if curves:
        length = min(v.shape[1] for v in curves.values())
        plot_mean_band({k: v[:, :length] for k, v in curves.items()}, path, xlabel="leader iteration",
                       ylabel=metric.replace("_", " "), title=title,
                       steps=(np.arange(length) + 0.5) * block)


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------


def _hparams(problem, settings, **overrides):
    return BilevelConfig().default_hparams(problem).replace(
        critic_lr=jnp.float32(settings["critic_lr"]), max_grad_norm=jnp.float32(settings["max_grad_norm"]),
        **{k: jnp.float32(v) for k, v in overrides.items()})


def four_rooms_section(store: CellStore, settings: dict, budgets_order) -> None:
    problem = problems.four_rooms()
    hparams = _hparams(problem, settings, leader_lr=settings["four_rooms_lr"])
    iters, seeds = settings["iterations"], settings["seeds"]
    print(f"FourRooms: {seeds} seeds, {iters} iterations, lr {settings['four_rooms_lr']}", flush=True)
    store.cell("four_rooms/oracle", problem, seeds, hparams, estimator="oracle", num_iterations=iters,
               num_samples=2)
    for n in budgets_order:
        for label, extra in FOUR_ROOMS_ESTIMATORS[1:]:
            estimator = "bchg" if label == "bchg_exact_critic" else label
            store.cell(f"four_rooms/{label}/N{n}", problem, seeds, hparams, estimator=estimator,
                       num_iterations=iters, num_samples=n, **extra)


def discrete_toy_section(store: CellStore, settings: dict) -> None:
    seeds, iters, n = settings["seeds"], settings["toy_iterations"], settings["toy_samples"]
    for payoff in (1.0, 2.0):
        game = problems.discrete_toy(payoff)
        print(f"DiscreteToy R{payoff:g}: {seeds} seeds, {iters} iterations, N={n}", flush=True)
        for label, config in TOY_VARIANTS:
            store.cell(f"discrete_toy/R{payoff:g}/{label}", game, seeds, _hparams(game, settings),
                       metric="optimality_gap", num_iterations=iters, num_samples=n, **config)


def warehouse_section(store: CellStore, settings: dict) -> None:
    problem = problems.warehouse()
    seeds, iters, n = settings["seeds"], settings["warehouse_iterations"], settings["warehouse_samples"]
    print(f"Warehouse: d={problem.num_params}, {seeds} seeds, {iters} iterations, N={n}", flush=True)
    for estimator in ("oracle", "bchg", "hpgd_sarsa", "naive"):
        store.cell(f"warehouse/{estimator}", problem, seeds, _hparams(problem, settings), estimator=estimator,
                   num_iterations=iters, num_samples=n)
    # where BC-HG's gap to the naive gradient comes from: the SARSA leader critic (exact critic at the same N) or
    # the sampling variance of the transition-score and covariance terms (10x the samples, both estimators)
    store.cell("warehouse/bchg_exact_critic", problem, seeds, _hparams(problem, settings), estimator="bchg",
               num_iterations=iters, num_samples=n, critic="exact", track_oracle=True)
    for estimator in ("bchg", "naive"):
        store.cell(f"warehouse/{estimator}/N{10 * n}", problem, seeds, _hparams(problem, settings),
                   estimator=estimator, num_iterations=iters, num_samples=10 * n, track_oracle=True)


def thermal_section(store: CellStore, settings: dict) -> None:
    problem = problems.building_thermal()
    seeds, iters, n = settings["seeds"], settings["thermal_iterations"], settings["thermal_samples"]
    print(f"BuildingThermal: {seeds} seeds, {iters} iterations, N={n}", flush=True)
    for estimator in ("oracle", "bchg", "naive"):
        store.cell(f"building_thermal/{estimator}", problem, seeds, _hparams(problem, settings),
                   estimator=estimator, num_iterations=iters, num_samples=n, track_oracle=estimator == "bchg")


def _cosine_text(name: str, cell: dict) -> str:
    """The run's mean cosine to the exact hypergradient, for estimators (the oracle's own is 1 until its gradient
    vanishes at convergence, where the clamped cosine reads 0)."""
    if name == "oracle" or "mean_oracle_cosine" not in cell:
        return ""
    return f" (mean cosine to oracle {cell['mean_oracle_cosine']:.2f})"


def _fmt(cells: dict, name: str, metric: str = "leader_value", digits: int = 3) -> str:
    if name not in cells:
        return "-"
    e = cells[name][metric]
    return f"{e['mean']:.{digits}f} +- {e['stderr']:.{digits}f}"


def markdown(cells: dict, settings: dict, seconds: float) -> str:
    s = settings
    lines = ["# Bi-level RL benchmark (BC-HG)", "",
             f"Mode: **{s['mode']}**; {s['seeds']} seeds (vmapped); final = mean of the exact leader value over the "
             "last 10% of leader iterations; mean +- standard error over seeds (ddof 1). Generated by "
             f"`benchmarks/bilevel.py{' --quick' if s['mode'] == 'quick' else ''}`; a cell shown as - has not "
             "finished (the run resumes per cell).", "",
             f"## FourRooms (leader value, {s['iterations']} leader iterations, lr {s['four_rooms_lr']}, SARSA step "
             f"{s['critic_lr']}, clip {s['max_grad_norm']})", ""]
    budgets = s["budgets"]
    lines.append("| estimator | " + " | ".join(f"N={n}" for n in budgets) + " |")
    lines.append("|---|" + "---|" * len(budgets))
    lines.append("| oracle | " + " | ".join(_fmt(cells, "four_rooms/oracle") for _ in budgets) + " |")
    for label, _ in FOUR_ROOMS_ESTIMATORS[1:]:
        lines.append(f"| {label} | " + " | ".join(_fmt(cells, f"four_rooms/{label}/N{n}") for n in budgets) + " |")
    lines += ["", "## DiscreteToy (policy optimality gap, lower is better; leader value)", "",
              f"{s['toy_iterations']} leader iterations, N={s['toy_samples']}.", "",
              "| variant | R1 gap | R1 value | R2 gap | R2 value |", "|---|---|---|---|---|"]
    for label, _ in sorted(TOY_VARIANTS, key=lambda v: v[0] != "oracle"):
        row = [label]
        for r in ("R1", "R2"):
            name = f"discrete_toy/{r}/{label}"
            row += [_fmt(cells, name, "optimality_gap"), _fmt(cells, name, "leader_value", 2)]
        lines.append("| " + " | ".join(row) + " |")
    wh = cells.get("warehouse/oracle")
    initial = f"; initial {np.asarray(_curves(wh)[0])[:, 0].mean():.3f} (first block mean)" if wh else ""
    lines += ["", f"## Warehouse design (leader value{initial})", "",
              f"{s['warehouse_iterations']} leader iterations, N={s['warehouse_samples']}.", "",
              "| estimator | final leader value |", "|---|---|"]
    n10 = 10 * s["warehouse_samples"]
    for name in ("oracle", "bchg", "hpgd_sarsa", "naive", "bchg_exact_critic", f"bchg/N{n10}", f"naive/N{n10}"):
        cell = cells.get(f"warehouse/{name}", {})
        extra = _cosine_text(name, cell)
        lines.append(f"| {name.replace(f'/N{n10}', f' (N={n10})')} | {_fmt(cells, f'warehouse/{name}')}{extra} |")
    lines += ["", "## BuildingThermal (continuous; leader value)", "",
              f"{s['thermal_iterations']} leader iterations, N={s['thermal_samples']}.", "",
              "| estimator | final leader value |", "|---|---|"]
    for name in ("oracle", "bchg", "naive"):
        cell = cells.get(f"building_thermal/{name}", {})
        extra = _cosine_text(name, cell)
        lines.append(f"| {name} | {_fmt(cells, f'building_thermal/{name}')}{extra} |")
    done = sum(cell.get("seconds", 0.0) for cell in cells.values())
    lines += ["", f"Cells finished: {len(cells)}; their compute {done:.0f}s (this invocation {seconds:.0f}s) on "
              f"{jax.devices()[0]}, a shared 2-core CPU under load (not a speed measurement)."]
    return "\n".join(lines) + "\n"


def write_tables(store: CellStore, settings: dict, out: Path, stem: str, seconds: float) -> None:
    cells = store.cells
    (out / f"{stem}.json").write_text(json.dumps(to_jsonable(
        {"settings": settings, "device": str(jax.devices()[0]),
         "cells": {k: {f: v for f, v in c.items() if f != "curves"} for k, c in cells.items()}}), indent=2))
    (out / f"{stem}.md").write_text(markdown(cells, settings, seconds))
    for n in settings["budgets"]:
        names = {"oracle": "four_rooms/oracle", **{label: f"four_rooms/{label}/N{n}"
                                                   for label, _ in FOUR_ROOMS_ESTIMATORS[1:]}}
        if any(name in cells for name in list(names.values())[1:]):
            plot_cells(cells, names, out / f"{stem}_four_rooms_N{n}.png", f"FourRooms, N={n}")
    for r in ("R1", "R2"):
        plot_cells(cells, {label: f"discrete_toy/{r}/{label}" for label, _ in TOY_VARIANTS},
                   out / f"{stem}_discrete_toy_{r.lower()}.png", f"DiscreteToy {r}", metric="optimality_gap")
    plot_cells(cells, {e: f"warehouse/{e}" for e in ("oracle", "bchg", "hpgd_sarsa", "naive")},
               out / f"{stem}_warehouse.png", "Warehouse design")
    plot_cells(cells, {e: f"building_thermal/{e}" for e in ("oracle", "bchg", "naive")},
               out / f"{stem}_building_thermal.png", "BuildingThermal")


GRADIENT_BUDGETS = (100, 300, 1000)
GRADIENT_POINTS = {"x0": 0, "x50": 50, "x300": 300}  # leader iterations of the oracle (lr 1.0) from the initial incentives
VARIANT_TEXT = {
    "exact_all": "exact d_x Q_F and exact leader critic (sampling of (s, a) only)",
    "exact_critic": "d_x Q_F from the batch, exact leader critic",
    "sarsa_cold": "SARSA critic from zero on this batch",
    "sarsa_warm": "SARSA critic carried over 10 earlier batches, then this batch (the runs' estimator)",
    "sarsa_warm_k": "as sarsa_warm with 3 SARSA passes per batch (more critic steps)",
    "sarsa_split": "critic from the 10 earlier batches only (this batch not seen by the critic)",
    "sarsa_averaged": "as sarsa_warm with the step max(0.5, 1/n) (bchg.sarsa_averaged)",
    "follower_k": "as sarsa_warm, follower after 5 soft-Q backups from the previous iterate's optimum",
}


def _gradient_points(problem, hparams) -> dict:
    from jaxsafe.bilevel.train import make_train  # noqa: PLC0415

    points = {}
    for label, iterations in GRADIENT_POINTS.items():
        if iterations == 0:
            x = jnp.asarray(problem.initial_params, jnp.float32)
            points[label] = (x, x)
            continue
        xs = [jax.jit(make_train(BilevelConfig(estimator="oracle", num_iterations=n, num_samples=2), problem))(
            jax.random.PRNGKey(0), hparams).params for n in (iterations - 1, iterations)]
        points[label] = (xs[1], xs[0])
    return points


def gradient_markdown(cells: dict, batches: int) -> str:
    from jaxsafe.bilevel import diagnostics  # noqa: PLC0415

    lines = ["# Hypergradient quality on FourRooms (BC-HG vs HPGD)", "",
             f"Generated by `benchmarks/bilevel.py --gradient-quality`: {batches} independent batches of N follower "
             "transitions at a fixed leader parameter, lambda 0.003, gammas 0.99, SARSA step 0.5, clip 1.0. "
             "`x0`: the initial (zero) incentive weights; `x50` / `x300`: after 50 / 300 oracle leader steps at lr 1.0 (x300 is close to the oracle's stationary point). "
             "Per cell: mean cosine to the exact hypergradient +- standard error over batches; "
             "`var` = E|g - E g|^2 / |g*|^2; `ascent` = E[g* . clip(g)] / |g*| (first-order gain of the clipped "
             "step; the oracle's own is min(|g*|, 1)). See jaxsafe/bilevel/diagnostics.py.", "",
             "Variants:", ""]
    lines += [f"- `{v}`: {VARIANT_TEXT[v]}" for v in diagnostics.VARIANTS]
    for point in GRADIENT_POINTS:
        done = [n for n in GRADIENT_BUDGETS if f"{point}/N{n}" in cells]
        if not done:
            continue
        info = cells[f"{point}/N{done[0]}"]["info"]
        lines += ["", f"## {point} (|g*| = {info['oracle_norm']:.3f}; oracle ascent "
                  f"{min(info['oracle_norm'], 1.0):.3f})", "",
                  "| variant | estimator | " + " | ".join(f"N={n} cosine | var | ascent" for n in done) + " |",
                  "|---|---|" + "---|---|---|" * len(done)]
        for variant in [v for v in diagnostics.VARIANTS if all(v in cells[f"{point}/N{n}"] for n in done)]:
            for est in diagnostics.ESTIMATORS:
                row = [variant, est]
                for n in done:
                    q = cells[f"{point}/N{n}"][variant][est]
                    row += [f"{q['cosine']:.3f} +- {q['cosine_stderr']:.3f}", f"{q['relative_variance']:.2g}",
                            f"{q['clipped_ascent']:.3f} +- {q['clipped_ascent_stderr']:.3f}"]
                lines.append("| " + " | ".join(row) + " |")
        kl = [cells[f"{point}/N{n}"]["info"]["partial_follower_max_kl"] for n in done]
        lines += ["", f"Partly converged follower: max over states of KL(pi* || pi_5) = {max(kl):.2g}."]
    return "\n".join(lines) + "\n"


def plot_gradient_quality(cells: dict, path: Path) -> None:
    """Top row: cosine to the exact hypergradient; bottom row: the clipped step's first-order ascent relative to
    the oracle's (``ascent / min(|g*|, 1)``), against N, per point; BC-HG solid, HPGD dotted."""
    from jaxsafe.bilevel import diagnostics  # noqa: PLC0415
    from jaxsafe.plotting import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    points = [p for p in GRADIENT_POINTS if any(f"{p}/N{n}" in cells for n in GRADIENT_BUDGETS)]
    fig, axes = plt.subplots(2, len(points), figsize=(4.6 * len(points), 7), sharey="row", squeeze=False)
    for col, point in enumerate(points):
        done = [n for n in GRADIENT_BUDGETS if f"{point}/N{n}" in cells]
        for i, variant in enumerate(diagnostics.VARIANTS):
            if not all(variant in cells[f"{point}/N{n}"] for n in done):
                continue
            for est, style in (("bchg", "-"), ("hpgd", ":")):
                q = [cells[f"{point}/N{n}"][variant][est] for n in done]
                oracle = [cells[f"{point}/N{n}"][variant][est]["oracle_clipped_ascent"] for n in done]
                label = f"{est} {variant}" if col == 0 else None
                axes[0, col].errorbar(done, [c["cosine"] for c in q], yerr=[c["cosine_stderr"] for c in q],
                                      linestyle=style, color=f"C{i}", marker="o", markersize=3, label=label)
                axes[1, col].errorbar(done, [c["clipped_ascent"] / o for c, o in zip(q, oracle)],
                                      yerr=[c["clipped_ascent_stderr"] / o for c, o in zip(q, oracle)],
                                      linestyle=style, color=f"C{i}", marker="o", markersize=3)
        axes[0, col].set_title(f"FourRooms, {point}")
        for row in range(2):
            axes[row, col].set_xscale("log")
            axes[row, col].grid(alpha=0.3)
        axes[1, col].set_xlabel("N (transitions per leader step)")
    axes[0, 0].set_ylabel("cosine to exact hypergradient")
    axes[1, 0].set_ylabel("clipped-step ascent / oracle's")
    fig.legend(fontsize=6, ncol=4, loc="lower center")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gradient_quality_main(args) -> None:
    """The hypergradient-quality study (``--gradient-quality``), resumable per (point, N) cell."""
    from jaxsafe.bilevel import diagnostics  # noqa: PLC0415

    problem = problems.four_rooms()
    settings = SETTINGS["full"]
    hparams = _hparams(problem, settings, leader_lr=1.0)
    store_path = args.out / "bilevel_gradient.json"
    cells = json.loads(store_path.read_text()).get("cells", {}) if store_path.exists() else {}
    points = _gradient_points(problem, hparams)
    for n in GRADIENT_BUDGETS:
        for label, (x, x_prev) in points.items():
            name = f"{label}/N{n}"
            if name in cells:
                continue
            start = time.perf_counter()
            cell = diagnostics.gradient_quality(
                problem, x, jax.random.PRNGKey(n), n, args.batches, hparams.follower_temperature,
                hparams.follower_gamma, hparams.leader_gamma, hparams.critic_lr, x_prev=x_prev,
                max_norm=float(hparams.max_grad_norm), batches_per_call=min(args.batches, 50))
            cell["seconds"] = time.perf_counter() - start
            cells[name] = cell
            print(f"  {name}: bchg sarsa_warm cosine {cell['sarsa_warm']['bchg']['cosine']:.3f}, hpgd "
                  f"{cell['sarsa_warm']['hpgd']['cosine']:.3f}, bchg exact_all {cell['exact_all']['bchg']['cosine']:.3f}"
                  f" ({cell['seconds']:.0f}s)", flush=True)
            store_path.write_text(json.dumps(to_jsonable({"batches": args.batches, "cells": cells}), indent=1))
            (args.out / "bilevel_gradient.md").write_text(gradient_markdown(cells, args.batches))
            plot_gradient_quality(cells, args.out / "bilevel_gradient.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced budget (see the module docstring)")
    parser.add_argument("--gradient-quality", action="store_true",
                        help="run the hypergradient-quality study instead (gradient_quality_main)")
    parser.add_argument("--sections", nargs="+", default=["four_rooms", "discrete_toy", "warehouse",
                                                           "building_thermal"],
                        choices=["four_rooms", "discrete_toy", "warehouse", "building_thermal"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory (default benchmarks/results)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="chunk checkpoints (default benchmarks/results/bilevel_checkpoints/<mode>)")
    parser.add_argument("--batches", type=int, default=100, help="independent batches per gradient-quality cell")
    parser.add_argument("--chunk", type=int, default=500, help="leader iterations per checkpointed chunk")
    args = parser.parse_args(argv)
    if args.gradient_quality:
        return gradient_quality_main(args)
    settings = SETTINGS["quick" if args.quick else "full"]
    stem = "bilevel_quick" if args.quick else "bilevel"
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoints = args.checkpoints or RESULTS / "bilevel_checkpoints" / settings["mode"]
    store = CellStore(args.out / f"{stem}_cells.json", checkpoints, args.chunk)
    start = time.perf_counter()
    # N=100 (the budget the issue is about) and the largest budget first, then the middle ones
    budgets = sorted(settings["budgets"], key=lambda n: (n != min(settings["budgets"]),
                                                          n != max(settings["budgets"]), n))
    sections = {"four_rooms": lambda: four_rooms_section(store, settings, budgets),
                "discrete_toy": lambda: discrete_toy_section(store, settings),
                "warehouse": lambda: warehouse_section(store, settings),
                "building_thermal": lambda: thermal_section(store, settings)}
    original_save = store.save

    def save_and_write(name, cell):
        original_save(name, cell)
        write_tables(store, settings, args.out, stem, time.perf_counter() - start)

    store.save = save_and_write
    for name in args.sections:
        sections[name]()
    write_tables(store, settings, args.out, stem, time.perf_counter() - start)
    print(markdown(store.cells, settings, time.perf_counter() - start))


if __name__ == "__main__":
    main()
