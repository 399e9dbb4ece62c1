"""``jaxsafe offline ogsrl``: OGSRL on SepsisSim (model-based learners scored in the model and the true simulator)
or the exact ICU-Sepsis track, into a run directory with figures.

    jaxsafe offline ogsrl --task sepsis-sim --seeds 40 42 --patients 600 --updates 150 --out runs/ogsrl
    jaxsafe offline ogsrl --task icu-sepsis --episodes 20000 --min-count 5 --out runs/ogsrl-icu

The run directory gets ``config.json``, ``summary.json`` (every metric), ``metrics.jsonl`` (one row per update,
seed and method: model return, the three costs), ``curves_<return|cost>.png`` (learning curves of reward, each cost and the OOD rate) and
``embedding.png`` (a PCA embedding of the states visited in SepsisSim by clinicians, GMB-CPO and MB-CPO).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxsafe import plotting
from jaxsafe.logging import Progress, RunDir, check_new_run_dir, to_jsonable
from jaxsafe.offline import guardian as guard
from jaxsafe.offline import ogsrl

TASKS = ("sepsis-sim", "icu-sepsis")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``jaxsafe offline ogsrl`` and set ``func=handle``."""
    parser.add_argument("--task", default="sepsis-sim", choices=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="data/split/training seeds (paper: "
                        f"{' '.join(map(str, ogsrl.PAPER_SEEDS))})")
    parser.add_argument("--methods", nargs="+", default=list(ogsrl.METHODS), choices=ogsrl.METHODS)
    parser.add_argument("--patients", type=int, default=600, help="sepsis-sim: clinicians' episodes per seed")
    parser.add_argument("--updates", type=int, default=150, help="sepsis-sim: policy updates (paper: 20000)")
    parser.add_argument("--cost-limits", type=float, nargs="+", default=[1.0, 1.0],
                        help="sepsis-sim: per-episode limits of the physiological costs [SpO2, urine]")
    parser.add_argument("--ood-limit", type=float, default=0.5, help="sepsis-sim: GMB-CPO's OOD steps per episode")
    parser.add_argument("--dynamics", default="knn", choices=ogsrl.DYNAMICS,
                        help="sepsis-sim: the model the model-based learners train in (1-NN as the paper, or a "
                        "probabilistic ensemble)")
    parser.add_argument("--guardian", default="kde", choices=guard.GUARDIAN_KINDS)
    parser.add_argument("--bandwidth", type=float, default=guard.DEFAULT_BANDWIDTH, help="KDE bandwidth (> 0)")
    parser.add_argument("--percentile", type=float, default=guard.DEFAULT_PERCENTILE,
                        help="share of training pairs left outside, in (0, 100)")
    parser.add_argument("--eval-episodes", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=20_000, help="icu-sepsis: clinicians' episodes")
    parser.add_argument("--min-count", type=int, default=5, help="icu-sepsis: pairs seen fewer times are OOD")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-offline-ogsrl)")
    parser.set_defaults(func=handle, parser=parser)
    return parser


def _check(namespace) -> None:
    guard._check_guardian_args(namespace.bandwidth, namespace.percentile, namespace.guardian, 5)
    ogsrl.check_cost_limits(ogsrl.MethodSettings(cost_limits=tuple(namespace.cost_limits),
                                                 ood_limit=namespace.ood_limit))
    for flag in ("patients", "updates", "eval_episodes", "episodes", "min_count"):
        if getattr(namespace, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be an integer >= 1, got {getattr(namespace, flag)}")


def run_icu(namespace, run_dir: RunDir) -> dict:
    result = ogsrl.icu_sepsis_track(seed=namespace.seeds[0], num_episodes=namespace.episodes,
                                    min_count=namespace.min_count)
    plt = plotting._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["clinicians", "unguarded", "guarded", "oracle"]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [result[n]["model_value"] for n in names], 0.4, label="model value")
    ax.bar(x + 0.2, [result[n]["true_value"] for n in names], 0.4, label="true value")
    ax.set_xticks(x, names)
    ax.set_ylabel("discounted survival reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir.path / "values.png", dpi=120)
    plt.close(fig)
    return result


def run_sepsis(namespace, run_dir: RunDir) -> dict:
    settings = ogsrl.MethodSettings(updates=namespace.updates, cost_limits=tuple(namespace.cost_limits),
                                    ood_limit=namespace.ood_limit, dynamics=namespace.dynamics)
    progress = Progress(len(namespace.seeds), "ogsrl", unit="seeds")
    summary, curves, first = {}, {}, None
    for done, seed in enumerate(namespace.seeds, 1):
        out = ogsrl.run_sepsis_seed(seed, namespace.patients, settings, tuple(namespace.methods),
                                    namespace.eval_episodes, namespace.guardian, namespace.bandwidth,
                                    namespace.percentile)
        first = first or out
        summary[str(seed)] = {"soc": out["soc"], "methods": out["methods"]}
        rows = []
        for method, method_curves in out["curves"].items():
            curves.setdefault(method, []).append(method_curves)
            if "episode_cost" not in method_curves:
                continue
            for update, (ret, cost) in enumerate(zip(method_curves["episode_return"], method_curves["episode_cost"])):
                rows.append({"seed": seed, "method": method, "update": update, "episode_return": ret,
                             **{f"cost_{name}": c for name, c in zip(ogsrl.COST_NAMES, np.atleast_1d(cost))}})
        run_dir.append_metrics(to_jsonable(rows))
        progress.update(done)
    progress.close()
    for index, name in enumerate(("return",) + ogsrl.COST_NAMES):
        bands = {}
        for method, per_seed in curves.items():
            if "episode_cost" not in per_seed[0]:
                continue
            values = [np.asarray(c["episode_return"]) if index == 0 else np.asarray(c["episode_cost"])[:, index - 1]
                      for c in per_seed]
            bands[method] = np.stack(values)
        if bands:
            plotting.plot_mean_band(bands, run_dir.path / f"curves_{name}.png", "update", f"model episode {name}",
                                    f"OGSRL on sepsis-sim: {name}")
    visited = {k: v for k, v in first["visited"].items() if k in ("clinicians", "gmb_cpo", "mb_cpo")}
    ogsrl.plot_embedding(run_dir.path / "embedding.png", visited, first["normaliser"],
                         f"visited SepsisSim states (seed {namespace.seeds[0]}, PCA)")
    return summary


def handle(namespace: argparse.Namespace) -> int:
    """Run ``jaxsafe offline ogsrl`` from parsed flags (``ValueError`` on bad input, before any work)."""
    _check(namespace)
    if namespace.task == "icu-sepsis":
        ogsrl.load_icu_sepsis()  # the optional extra, checked before the run directory is made
    out = namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-offline-ogsrl"
    check_new_run_dir(out)
    run_dir = RunDir(out)
    config = {k: v for k, v in vars(namespace).items() if k not in ("func", "parser")}
    run_dir.write_config(to_jsonable(config))
    summary = run_icu(namespace, run_dir) if namespace.task == "icu-sepsis" else run_sepsis(namespace, run_dir)
    run_dir.write_summary(to_jsonable(summary))
    print(f"run directory: {out}")
    return 0
