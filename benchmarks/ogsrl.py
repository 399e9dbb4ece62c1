"""OGSRL benchmark: the paper's Table 1 columns on SepsisSim next to the true-simulator numbers, and the exact
ICU-Sepsis table (guarded vs unguarded vs clinicians).

SepsisSim, per seed of the paper's five (40, 42, 44, 54, 64): clinicians' data of ``--patients`` patients
(the seed draws the data and the 60/20/20 split), the KDE guardian and 1-NN models, then GMB-CPO, MB-CPO,
GMB-TRPO and BC; each scored by MCR, AIR, ME, ACP and the unsafe-state changes against standard of care in the
eval model (as the paper) and in SepsisSim itself (true mortality, cost rates, OOD share of visited pairs).
ICU-Sepsis (needs the optional ``icu-sepsis`` package; skipped with a note without it): the count model of
clinicians' data, the guarded and unguarded constrained problems solved exactly, each policy scored in the model
and in the true MDP.

Usage::

    python benchmarks/ogsrl.py --quick      # 2 seeds, 200 patients, 20 updates: a smoke run
    python benchmarks/ogsrl.py              # 5 seeds, 600 patients, 150 updates (the committed results)
    python benchmarks/ogsrl.py --updates 2000 --patients 3000   # closer to the paper's budget

Resumable: each finished seed is kept in ``benchmarks/results/ogsrl_cells/seed_<s>.json`` with its budget and is
skipped by a rerun with the same budget (``--fresh`` recomputes). Writes ``ogsrl.json``, ``ogsrl.md``,
``ogsrl_curves.png`` (reward, costs and OOD rate over updates) and ``ogsrl_embedding.png``. Speed is not measured
(a shared machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxsafe import plotting
from jaxsafe.offline import ogsrl

RESULTS = Path(__file__).parent / "results"
FULL = dict(seeds=list(ogsrl.PAPER_SEEDS), patients=600, updates=150, eval_episodes=500, icu_episodes=20_000)
QUICK = dict(seeds=[40, 42], patients=200, updates=20, eval_episodes=100, icu_episodes=2_000)
LABELS = {"gmb_cpo": "GMB-CPO", "mb_cpo": "MB-CPO", "gmb_trpo": "GMB-TRPO", "bc": "BC", "soc": "SoC"}


def _cell(seed: int, budget: dict, cells: Path, fresh: bool) -> dict:
    path = cells / f"seed_{seed}.json"
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text())
        if saved["budget"] == budget:
            print(f"seed {seed}: kept from {path}")
            return saved
    start = time.time()
    settings = ogsrl.MethodSettings(updates=budget["updates"])
    out = ogsrl.run_sepsis_seed(seed, budget["patients"], settings, eval_episodes=budget["eval_episodes"])
    saved = {"budget": budget, "seed": seed, "soc": out["soc"], "methods": out["methods"], "curves": out["curves"],
             "visited": {k: np.asarray(v)[:2000].tolist() for k, v in out["visited"].items()},
             "normaliser": [np.asarray(out["normaliser"].low).tolist(), np.asarray(out["normaliser"].high).tolist()],
             "seconds": time.time() - start}
    cells.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved))
    print(f"seed {seed}: {saved['seconds']:.0f} s")
    return saved


def _mean_std(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def sepsis_table(cells: list[dict]) -> tuple[dict, str]:
    rows, summary = [], {}
    header = ("| method | MCR ↑ | AIR ↑ | ME (model) ↓ | ACP fluid L | ACP vaso | SpO2 unsafe Δ% (model) | urine unsafe "
              "Δ% (model) | OOD (model) | **true mortality** | true SpO2 Δ% | true urine Δ% | true OOD | true return |")
    rows.append(header)
    rows.append("|" + "---|" * (header.count("|") - 1))
    for method in ogsrl.METHODS + ("soc",):
        if method == "soc":
            blocks = [{"model": c["soc"]["model"], "true": c["soc"]["true"]} for c in cells]
            mcr = air = None
        else:
            blocks = [c["methods"][method] for c in cells]
            mcr = [b["mcr"] for b in blocks]
            air = [b["air"] for b in blocks]

        def col(side, name):
            return [b[side].get(name, 0.0) for b in blocks]

        summary[method] = {"mcr": mcr, "air": air, **{f"{side}_{name}": col(side, name) for side in ("model", "true")
                           for name in ("mortality", "acp_fluid_l", "acp_vaso", "unsafe_spo2_change_pct",
                                        "unsafe_urine_change_pct", "ood_rate", "unsafe_spo2_rate",
                                        "unsafe_urine_rate", "return")}}
        dash = "–"
        rows.append("| " + " | ".join([
            LABELS[method], dash if mcr is None else _mean_std(mcr), dash if air is None else _mean_std(air),
            _mean_std(col("model", "mortality")), _mean_std(col("model", "acp_fluid_l")),
            _mean_std(col("model", "acp_vaso")),
            dash if method == "soc" else f"{np.mean(col('model', 'unsafe_spo2_change_pct')):+.0f}",
            dash if method == "soc" else f"{np.mean(col('model', 'unsafe_urine_change_pct')):+.0f}",
            _mean_std(col("model", "ood_rate")), f"**{_mean_std(col('true', 'mortality'))}**",
            dash if method == "soc" else f"{np.mean(col('true', 'unsafe_spo2_change_pct')):+.0f}",
            dash if method == "soc" else f"{np.mean(col('true', 'unsafe_urine_change_pct')):+.0f}",
            _mean_std(col("true", "ood_rate")), f"{np.mean(col('true', 'return')):.1f}"]) + " |")
    return summary, "\n".join(rows)


def icu_table(result: dict) -> str:
    rows = ["| policy | model value | true value | true survival | OOD mass (true occupancy on flagged pairs) | "
            "true cost values [high vaso, high SOFA] |", "|---|---|---|---|---|---|"]
    for name in ("clinicians", "unguarded", "guarded", "oracle"):
        r = result[name]
        rows.append(f"| {name} | {r['model_value']:.4f} | {r['true_value']:.4f} | {r['survival']:.4f} | "
                    f"{r['ood_mass']:.3f} | {[round(v, 3) for v in r['cost_values_true']]} |")
    return "\n".join(rows)


def figures(cells: list[dict], stem: Path) -> list[str]:
    paths = []
    plt = plotting._pyplot()
    methods = [m for m in ("gmb_cpo", "mb_cpo", "gmb_trpo") if m in cells[0]["curves"]]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("episode_return", None, "model episode return"), ("episode_cost", 0, "SpO2 < 92 steps / episode"),
              ("episode_cost", 1, "urine < 0.5 steps / episode"), ("episode_cost", 2, "OOD steps / episode")]
    for ax, (metric, index, title) in zip(axes, panels):
        for method in methods:
            values = np.asarray([c["curves"][method][metric] for c in cells], float)
            values = values if index is None else values[..., index]
            mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
            x = np.arange(mean.shape[0])
            ax.plot(x, mean, label=LABELS[method])
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = stem.with_name(stem.name + "_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(str(path))
    first = cells[0]
    normaliser = ogsrl.guard.Normaliser(np.asarray(first["normaliser"][0], np.float32),
                                        np.asarray(first["normaliser"][1], np.float32))
    visited = {LABELS.get(k, k): np.asarray(v, np.float32) for k, v in first["visited"].items()
               if k in ("clinicians", "gmb_cpo", "mb_cpo")}
    path = stem.with_name(stem.name + "_embedding.png")
    ogsrl.plot_embedding(path, visited, normaliser, f"states visited in SepsisSim (seed {first['seed']}, PCA)")
    paths.append(str(path))
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run budgets")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--patients", type=int, default=None)
    parser.add_argument("--updates", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="recompute finished seeds")
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/results/ogsrl[_quick])")
    args = parser.parse_args(argv)
    budget = dict(QUICK if args.quick else FULL)
    for field in ("seeds", "patients", "updates"):
        if getattr(args, field) is not None:
            budget[field] = getattr(args, field)
    stem = Path(args.out) if args.out else RESULTS / ("ogsrl_quick" if args.quick else "ogsrl")
    cells_dir = stem.with_name(stem.name + "_cells")
    cell_budget = {k: budget[k] for k in ("patients", "updates", "eval_episodes")}
    cells = [_cell(seed, cell_budget, cells_dir, args.fresh) for seed in budget["seeds"]]
    summary, table = sepsis_table(cells)
    try:
        icu = ogsrl.icu_sepsis_track(seed=42, num_episodes=budget["icu_episodes"])
        icu_md = icu_table(icu)
    except ValueError as err:
        icu, icu_md = {"skipped": str(err)}, f"Skipped: {err}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = figures(cells, stem)
    result = {"budget": budget, "sepsis_sim": summary, "icu_sepsis": icu, "figures": paths}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = [f"# OGSRL benchmark{' (quick)' if args.quick else ''}", "",
          f"Budget reached: seeds {budget['seeds']}, {budget['patients']} patients per seed (60/20/20 split), "
          f"{budget['updates']} policy updates of 32 model episodes each (paper: 20,000), "
          f"{budget['eval_episodes']} evaluation episodes per policy; ICU-Sepsis with {budget['icu_episodes']} "
          f"clinician episodes. Mean ± std over seeds. Regenerate: `python benchmarks/ogsrl.py`.", "",
          "## SepsisSim: the paper's Table 1 columns (model) next to the true simulator", "",
          "ME = mortality of 20-step rollouts in the eval 1-NN model from test initial states; Δ% = change of the "
          "unsafe-step rate against standard of care (SoC's model-side numbers are its test-split data, as the "
          "paper); true columns run each policy in SepsisSim itself. OOD = share of visited (s, a) the KDE "
          "guardian flags.", "", table, "", "## ICU-Sepsis: exact guarded vs unguarded constrained LP", "",
          "Synthetic costs: high vasopressor dose (bin >= 3 of 5) and a state with SOFA >= 10, both limited to the "
          "clinicians' model values; guarded adds zero occupancy on pairs seen < 5 times (in states with a "
          "well-supported action). Values are discounted (gamma 0.99) survival rewards; survival is undiscounted.",
          "", icu_md, ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
