"""OGSRL benchmark: the paper's Table 1 columns on SepsisSim next to the true-simulator numbers, and the exact
ICU-Sepsis table (guarded vs unguarded vs clinicians).

SepsisSim, per seed of the paper's five (40, 42, 44, 54, 64): clinicians' data of ``--patients`` patients
(the seed draws the data and the 60/20/20 split), the KDE guardian and 1-NN models, then GMB-CPO, MB-CPO,
GMB-TRPO, BC, CQL, GCQL and the ensemble-model variants; each scored by MCR, AIR, ME, ACP and the unsafe-state changes against standard of care in the
eval model (as the paper) and in SepsisSim itself (true mortality, cost rates, OOD share of visited pairs).
ICU-Sepsis (needs the optional ``icu-sepsis`` package; skipped with a note without it): the count model of
clinicians' data, the guarded and unguarded constrained problems solved exactly, each policy scored in the model
and in the true MDP.

Usage::

    python benchmarks/ogsrl.py --quick      # 2 seeds, 200 patients, 20 updates: a smoke run
    python benchmarks/ogsrl.py              # 5 seeds, 600 patients, 150 updates (the committed results)
    python benchmarks/ogsrl.py --updates 2000 --patients 3000   # closer to the paper's budget

Cells: per seed, standard of care and each of ``CELLS`` (GMB-CPO, MB-CPO, GMB-TRPO, BC, CQL, GCQL, and GMB-CPO /
MB-CPO trained in the probabilistic ensemble model). Resumable: each finished cell is kept in
``benchmarks/results/ogsrl_cells/seed_<s>_<cell>.json`` with its budget (older runs' ``seed_<s>.json`` hold the
first four) and is skipped by a rerun with the same budget (``--fresh`` recomputes); ``--cells`` computes a subset,
``--no-report`` skips the tables. Writes ``ogsrl.json``, ``ogsrl.md``,
``ogsrl_curves.png`` (reward, costs and OOD rate over updates) and ``ogsrl_embedding.png``. Speed is not measured
(a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxsafe import plotting
from jaxsafe.offline import ogsrl

RESULTS = Path(__file__).parent / "results"
FULL = dict(seeds=list(ogsrl.PAPER_SEEDS), patients=600, updates=150, eval_episodes=500, icu_episodes=20_000)
QUICK = dict(seeds=[40, 42], patients=200, updates=20, eval_episodes=100, icu_episodes=2_000)
#: Benchmark cells: (name, method, dynamics). A cell's index fixes its keys (fold_in(PRNGKey(seed), 100 + i) to
#: train, 200 + i to evaluate): the first six are ogsrl.METHODS in order, as ogsrl.run_sepsis_seed uses them.
CELLS = (("gmb_cpo", "gmb_cpo", "knn"), ("mb_cpo", "mb_cpo", "knn"), ("gmb_trpo", "gmb_trpo", "knn"),
         ("bc", "bc", "knn"), ("cql", "cql", "knn"), ("gcql", "gcql", "knn"),
         ("gmb_cpo_ensemble", "gmb_cpo", "ensemble"), ("mb_cpo_ensemble", "mb_cpo", "ensemble"))
CELL_NAMES = tuple(c[0] for c in CELLS)
LABELS = {"gmb_cpo": "GMB-CPO", "mb_cpo": "MB-CPO", "gmb_trpo": "GMB-TRPO", "bc": "BC", "cql": "CQL",
          "gcql": "GCQL", "gmb_cpo_ensemble": "GMB-CPO (ensemble model)",
          "mb_cpo_ensemble": "MB-CPO (ensemble model)", "soc": "SoC"}


def _cell_budget(budget: dict, name: str) -> dict:
    """What a cell's result depends on (a saved cell is reused only with the same)."""
    out = {k: budget[k] for k in ("patients", "updates", "eval_episodes")}
    settings = ogsrl.MethodSettings()
    if name in ("cql", "gcql"):
        out.update(cql_updates=settings.cql_updates, cql_alpha=settings.cql_alpha,
                   gcql_ood_target=settings.gcql_ood_target)
    if name.endswith("_ensemble"):
        out["ensemble"] = dataclasses.asdict(ogsrl.ens.EnsembleConfig())
    return json.loads(json.dumps(out))  # as a saved cell reads back (tuples become lists)


class _Seed:
    """One seed's cells: ``seed_<s>_<name>.json`` (and ``seed_<s>_soc.json``), or the older one-file-per-seed
    ``seed_<s>.json`` for the cells it holds. The task (and its ensemble) is built only when a cell is computed."""

    def __init__(self, seed: int, budget: dict, cells: Path, fresh: bool):
        self.seed, self.budget, self.dir, self.fresh = seed, budget, cells, fresh
        legacy = cells / f"seed_{seed}.json"
        self.legacy = json.loads(legacy.read_text()) if legacy.is_file() and not fresh else None
        self._task = None

    def task(self, ensemble: bool = False):
        if self._task is None:
            self._task = ogsrl.build_task(self.seed, self.budget["patients"])
        if ensemble and self._task.ensemble is None:
            self._task = ogsrl.with_ensemble(self._task)
        return self._task

    def _load(self, name: str, budget: dict):
        path = self.dir / f"seed_{self.seed}_{name}.json"
        if path.is_file() and not self.fresh:
            saved = json.loads(path.read_text())
            if saved["budget"] == budget:
                return saved
        legacy = self.legacy
        if legacy is not None and legacy["budget"] == budget:
            if name == "soc":
                return {"budget": budget, "soc": legacy["soc"], "visited": legacy["visited"]["clinicians"],
                        "normaliser": legacy["normaliser"]}
            if name in legacy["methods"]:
                return {"budget": budget, "metrics": legacy["methods"][name], "curves": legacy["curves"][name],
                        "visited": legacy["visited"][name]}
        return None

    def _save(self, name: str, saved: dict) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"seed_{self.seed}_{name}.json").write_text(json.dumps(saved))
        return saved

    def soc(self) -> dict:
        budget = _cell_budget(self.budget, "soc")
        saved = self._load("soc", budget)
        if saved is not None:
            return saved
        start = time.time()
        task, key = self.task(), jax.random.PRNGKey(self.seed)
        soc = ogsrl.soc_metrics(task, jax.random.fold_in(key, 1), self.budget["eval_episodes"])
        sim = ogsrl.simulate(ogsrl.sepsis.SepsisSim(), task.env_params,
                             lambda o, k: ogsrl.sepsis.clinician_action(o, k), jax.random.fold_in(key, 3), 100,
                             int(task.env_params.max_steps), task)
        norm = task.state_normaliser
        saved = {"budget": budget, "soc": soc, "visited": np.asarray(sim.obs[sim.valid])[:2000].tolist(),
                 "normaliser": [np.asarray(norm.low).tolist(), np.asarray(norm.high).tolist()],
                 "seconds": time.time() - start}
        return self._save("soc", saved)

    def cell(self, name: str, soc: dict) -> dict:
        budget = _cell_budget(self.budget, name)
        saved = self._load(name, budget)
        if saved is not None:
            print(f"seed {self.seed} {name}: kept", flush=True)
            return saved
        start = time.time()
        index = CELL_NAMES.index(name)
        _, method, dynamics = CELLS[index]
        task = self.task(ensemble=dynamics == "ensemble")
        key = jax.random.PRNGKey(self.seed)
        settings = ogsrl.MethodSettings(updates=self.budget["updates"], dynamics=dynamics)
        out = ogsrl.run_method(task, method, settings, jax.random.fold_in(key, 100 + index),
                               jax.random.fold_in(key, 200 + index), soc, self.budget["eval_episodes"])
        saved = {"budget": budget, "metrics": out["metrics"], "curves": out["curves"],
                 "visited": np.asarray(out["visited"])[:2000].tolist(), "seconds": time.time() - start}
        print(f"seed {self.seed} {name}: {saved['seconds']:.0f} s", flush=True)
        return self._save(name, saved)


def _mean_std(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def sepsis_table(results: dict) -> tuple[dict, str]:
    """``results[seed] = {"soc": soc cell, name: method cell}`` -> (summary, markdown): mean ± std over the seeds
    that have the cell (``n``)."""
    rows, summary = [], {}
    header = ("| method | n seeds | MCR ↑ | AIR ↑ | ME (model) ↓ | ACP fluid L | ACP vaso | SpO2 unsafe Δ% (model) | "
              "urine unsafe Δ% (model) | OOD (model) | **true mortality** | true SpO2 Δ% | true urine Δ% | true OOD | "
              "true return |")
    rows.append(header)
    rows.append("|" + "---|" * (header.count("|") - 1))
    for name in CELL_NAMES + ("soc",):
        have = [seed for seed, r in results.items() if name in r]
        if not have:
            continue
        if name == "soc":
            blocks = [results[s]["soc"]["soc"] for s in have]
            mcr = air = None
        else:
            blocks = [results[s][name]["metrics"] for s in have]
            mcr = [b["mcr"] for b in blocks]
            air = [b["air"] for b in blocks]

        def col(side, metric):
            return [b[side].get(metric, 0.0) for b in blocks]

        summary[name] = {"seeds": have, "mcr": mcr, "air": air,
                         **{f"{side}_{m}": col(side, m) for side in ("model", "true")
                            for m in ("mortality", "acp_fluid_l", "acp_vaso", "unsafe_spo2_change_pct",
                                      "unsafe_urine_change_pct", "ood_rate", "unsafe_spo2_rate",
                                      "unsafe_urine_rate", "return")}}
        dash = "–"
        rows.append("| " + " | ".join([
            LABELS[name], str(len(have)), dash if mcr is None else _mean_std(mcr),
            dash if air is None else _mean_std(air),
            _mean_std(col("model", "mortality")), _mean_std(col("model", "acp_fluid_l")),
            _mean_std(col("model", "acp_vaso")),
            dash if name == "soc" else f"{np.mean(col('model', 'unsafe_spo2_change_pct')):+.0f}",
            dash if name == "soc" else f"{np.mean(col('model', 'unsafe_urine_change_pct')):+.0f}",
            _mean_std(col("model", "ood_rate")), f"**{_mean_std(col('true', 'mortality'))}**",
            dash if name == "soc" else f"{np.mean(col('true', 'unsafe_spo2_change_pct')):+.0f}",
            dash if name == "soc" else f"{np.mean(col('true', 'unsafe_urine_change_pct')):+.0f}",
            _mean_std(col("true", "ood_rate")), f"{np.mean(col('true', 'return')):.1f}"]) + " |")
    return summary, "\n".join(rows)


def per_seed_table(results: dict) -> str:
    rows = ["| seed | method | MCR | ME (model) | true mortality | OOD (model) | OOD (true) | true SpO2 Δ% | "
            "true urine Δ% |", "|---|---|---|---|---|---|---|---|---|"]
    for seed, r in results.items():
        for name in CELL_NAMES + ("soc",):
            if name not in r:
                continue
            if name == "soc":
                m, mcr, d1, d2 = r["soc"]["soc"], "–", "–", "–"
            else:
                m = r[name]["metrics"]
                mcr = f"{m['mcr']:.2f}"
                d1 = f"{m['true']['unsafe_spo2_change_pct']:+.0f}"
                d2 = f"{m['true']['unsafe_urine_change_pct']:+.0f}"
            rows.append(f"| {seed} | {LABELS[name]} | {mcr} | {m['model']['mortality']:.3f} | "
                        f"{m['true']['mortality']:.3f} | {m['model']['ood_rate']:.3f} | {m['true']['ood_rate']:.3f} | "
                        f"{d1} | {d2} |")
    return "\n".join(rows)


def icu_table(result: dict) -> str:
    rows = ["| policy | model value | true value | true survival | OOD mass (true occupancy on flagged pairs) | "
            "true cost values [high vaso, high SOFA] |", "|---|---|---|---|---|---|"]
    for name in ("clinicians", "unguarded", "guarded", "oracle"):
        r = result[name]
        rows.append(f"| {name} | {r['model_value']:.4f} | {r['true_value']:.4f} | {r['survival']:.4f} | "
                    f"{r['ood_mass']:.3f} | {[round(v, 3) for v in r['cost_values_true']]} |")
    return "\n".join(rows)


def figures(results: dict, stem: Path) -> list[str]:
    paths = []
    plt = plotting._pyplot()
    names = [n for n in CELL_NAMES if any(n in r and "episode_cost" in r[n]["curves"] for r in results.values())]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("episode_return", None, "model episode return"), ("episode_cost", 0, "SpO2 < 92 steps / episode"),
              ("episode_cost", 1, "urine < 0.5 steps / episode"), ("episode_cost", 2, "OOD steps / episode")]
    for ax, (metric, index, title) in zip(axes, panels):
        for name in names:
            values = np.asarray([r[name]["curves"][metric] for r in results.values() if name in r], float)
            values = values if index is None else values[..., index]
            mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
            x = np.arange(mean.shape[0])
            ax.plot(x, mean, label=LABELS[name])
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = stem.with_name(stem.name + "_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(str(path))
    seed, first = next(iter(results.items()))
    low, high = first["soc"]["normaliser"]
    normaliser = ogsrl.guard.Normaliser(np.asarray(low, np.float32), np.asarray(high, np.float32))
    visited = {"clinicians": np.asarray(first["soc"]["visited"], np.float32)}
    visited.update({LABELS[n]: np.asarray(first[n]["visited"], np.float32) for n in ("gmb_cpo", "mb_cpo")
                    if n in first})
    path = stem.with_name(stem.name + "_embedding.png")
    ogsrl.plot_embedding(path, visited, normaliser, f"states visited in SepsisSim (seed {seed}, PCA)")
    paths.append(str(path))
    return paths


def _icu(budget: dict, cells: Path, fresh: bool) -> dict:
    path = cells / "icu_sepsis.json"
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text())
        if saved.get("icu_episodes") == budget["icu_episodes"]:
            return saved["result"]
    result = ogsrl.icu_sepsis_track(seed=42, num_episodes=budget["icu_episodes"])
    cells.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"icu_episodes": budget["icu_episodes"], "result": result}))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run budgets")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--patients", type=int, default=None)
    parser.add_argument("--updates", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="recompute finished cells")
    parser.add_argument("--cells", nargs="+", choices=CELL_NAMES, default=None,
                        help="cells (methods) to compute per seed (default: all); others already saved are reported")
    parser.add_argument("--no-report", action="store_true", help="compute cells only, write no tables")
    parser.add_argument("--report-only", action="store_true",
                        help="compute nothing: tables from the cells already saved (seeds without SoC are left out)")
    parser.add_argument("--cells-dir", default=None, help="where the cells are (default: <out>_cells)")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/results/ogsrl[_quick])")
    args = parser.parse_args(argv)
    budget = dict(QUICK if args.quick else FULL)
    for field in ("seeds", "patients", "updates"):
        if getattr(args, field) is not None:
            budget[field] = getattr(args, field)
    stem = Path(args.out) if args.out else RESULTS / ("ogsrl_quick" if args.quick else "ogsrl")
    cells_dir = Path(args.cells_dir) if args.cells_dir else stem.with_name(stem.name + "_cells")
    wanted = tuple(args.cells) if args.cells else CELL_NAMES
    results = {}
    for seed in [] if args.report_only else budget["seeds"]:
        runner = _Seed(seed, budget, cells_dir, args.fresh)
        soc = runner.soc()
        results[seed] = {"soc": soc}
        for name in wanted:
            results[seed][name] = runner.cell(name, soc["soc"])
    # Cells computed by other invocations (other --cells) are reported too.
    for seed in budget["seeds"]:
        runner = _Seed(seed, budget, cells_dir, False)
        if seed not in results:
            soc = runner._load("soc", _cell_budget(budget, "soc"))
            if soc is None:
                continue
            results[seed] = {"soc": soc}
        for name in CELL_NAMES:
            if name not in results[seed]:
                saved = runner._load(name, _cell_budget(budget, name))
                if saved is not None:
                    results[seed][name] = saved
    if args.no_report:
        return 0
    summary, table = sepsis_table(results)
    try:
        icu = _icu(budget, cells_dir, args.fresh)
        icu_md = icu_table(icu)
    except ValueError as err:
        icu, icu_md = {"skipped": str(err)}, f"Skipped: {err}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = figures(results, stem)
    result = {"budget": budget, "sepsis_sim": summary, "icu_sepsis": icu, "figures": paths}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = [f"# OGSRL benchmark{' (quick)' if args.quick else ''}", "",
          f"Budget reached: seeds {sorted(results)} (per method: the `n seeds` column; cells still missing are "
          f"left out), {budget['patients']} patients per seed (60/20/20 split), "
          f"{budget['updates']} policy updates of 32 model episodes each (paper: 20,000), "
          f"{budget['eval_episodes']} evaluation episodes per policy; ICU-Sepsis with {budget['icu_episodes']} "
          f"clinician episodes. Mean ± std over seeds. Regenerate: `python benchmarks/ogsrl.py`.", "",
          "## SepsisSim: the paper's Table 1 columns (model) next to the true simulator", "",
          "ME = mortality of 20-step rollouts in the eval 1-NN model from test initial states; Δ% = change of the "
          "unsafe-step rate against standard of care (SoC's model-side numbers are its test-split data, as the "
          "paper); true columns run each policy in SepsisSim itself. OOD = share of visited (s, a) the KDE "
          "guardian flags. CQL / GCQL: DDPG-style conservative Q-learning on the training split (reward only, "
          f"{ogsrl.MethodSettings().cql_updates} gradient steps of 256); GCQL's bootstrap value at a guardian-flagged "
          "(s', pi(s')) is -200 (unscaled). *(ensemble model)*: the same learner trained in a 5-member "
          "probabilistic ensemble instead of the 1-NN model (scored, like every method, in the 1-NN eval model and "
          "in SepsisSim). n seeds: the seeds whose cell has finished.", "", table, "",
          "### Per seed", "", per_seed_table(results), "", "## ICU-Sepsis: exact guarded vs unguarded constrained LP", "",
          "Synthetic costs: high vasopressor dose (bin >= 3 of 5) and a state with SOFA >= 10, both limited to the "
          "clinicians' model values; guarded adds zero occupancy on pairs seen < 5 times (in states with a "
          "well-supported action). Values are discounted (gamma 0.99) survival rewards; survival is undiscounted.",
          "", icu_md, ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
