"""Minimum-cost label-flipping poisoning benchmark: how many flips post-processing saves, against n / d.

    python benchmarks/poisoning.py            # the issue's grid (see below)
    python benchmarks/poisoning.py --quick    # d in {4, 16}, n in {500, 2000}, tiny LM, n <= 10^4 timings

Everything goes through :mod:`jaxsafe.llm.poisoning_experiment` (``run_attack``), so each cell is what
``jaxsafe align poison`` computes:

1. Synthetic linear features (row 0 the response length), d in {4, 8, 16, 32, 64} x n in {500, 2000, 8000},
   with three attacks toward longer responses: RLHFPoison with the paper's largest-disparity selection,
   RLHFPoison as the released code selects (smallest disparities), and random flips of candidate pairs (as
   many as RLHFPoison flips, 5% of the pairs). For each: the attack's cost, the post-processed (LP) cost, its
   dual lower bound and the dual LP solved on its own, the fractional pairs, the rounded (duplication 5) and
   MILP costs, the distance between the attack's and the post-processed reward models, the direct "length
   weight only" target, and the reward models' preference for the longer response.
2. Language-model features (random-weight decoders: the tiny and llama-160m presets) on the synthetic safety
   language, the same three attacks, plus last-layer DPO (beta = 0.1) on the duplicated original, attacked and
   post-processed data, scored by the exact mean response length.
3. LP solve time against n at d = 64, n up to 10^5: column generation (the default for n >= max(5000, 50 d)) and the full
   LP (up to 3 x 10^4, and once at 10^5).

Writes benchmarks/results/poisoning.json, poisoning.md and poisoning.png (cost reduction against n / d, solve
time against n).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsafe.llm import poisoning  # noqa: E402
from jaxsafe.llm import poisoning_experiment as experiment  # noqa: E402
from jaxsafe.logging import to_jsonable  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ATTACKS = {  # label: PoisonSettings fields
    "RLHFPoison (largest disparity)": dict(attack="rlhfpoison", largest_disparity=True),
    "RLHFPoison (released: smallest)": dict(attack="rlhfpoison", largest_disparity=False),
    "random candidates": dict(attack="random"),
}
FULL = dict(dims=(4, 8, 16, 32, 64), pairs=(500, 2000, 8000), lm=(("tiny", 8000), ("llama-160m", 8000)),
            timing_pairs=(1000, 3000, 10000, 30000, 100000), full_lp_max=100000, milp_time_limit=30.0,
            dpo_steps=300)
QUICK = dict(dims=(4, 16), pairs=(500, 2000), lm=(("tiny", 1000),), timing_pairs=(1000, 10000),
             full_lp_max=10000, milp_time_limit=5.0, dpo_steps=100)
DUAL_LP_MAX_ENTRIES = 2_000_000  # the dual LP is solved on its own only up to d * n entries


def _cell(data, settings, key, setup=None, independent_dual=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", poisoning.RankDeficientWarning)  # recorded in the summary instead
        start = time.perf_counter()
        summary, _, _ = experiment.run_attack(data, settings, key, setup, independent_dual=independent_dual)
    summary["cell_seconds"] = time.perf_counter() - start
    return summary


def _row(summary, source, attack_label):
    lp, attack, rounded = summary["lp"], summary["attack"], summary["rounded"]
    rates = summary["longer_preferred_rate"]
    row = {"source": source, "attack": attack_label, "d": summary["dim"], "n": summary["pairs"],
           "rank": summary["feature_rank"], "n_over_d": summary["pairs"] / summary["dim"],
           "attack_flips": attack["flipped_pairs"], "lp_flips": lp["flipped_pairs"],
           "reduction": lp["cost_reduction_factor"], "dual_bound": lp["dual_bound"],
           "dual_lp": lp["dual_lp_value"], "fractional": lp["fractional_pairs"],
           "full_flips": lp["fully_flipped_pairs"], "rounded_flips": rounded["flipped_pairs"],
           "psi_gap_lp": lp["max_abs_psi_difference"], "psi_gap_rounded": rounded["relative_to_attack_shift"],
           "lp_seconds": lp["solve_seconds"], "cell_seconds": summary["cell_seconds"],
           "longer_original": rates["original"], "longer_attack": rates["attack"], "longer_lp": rates["lp"]}
    if "milp" in summary:
        milp = summary["milp"]
        row.update(milp_flips=milp["flipped_pairs"], milp_optimal=milp["optimal"],
                   milp_bound=milp["lower_bound"], milp_relaxation=milp["relaxation_cost"],
                   milp_fixed=milp["fixed_pairs"], milp_seconds=milp["solve_seconds"])
    if "length_target" in summary:
        row["length_target_flips"] = summary["length_target"]["flipped_pairs"]
    if "downstream" in summary:
        down = summary["downstream"]
        row.update(reference_length=down["reference_expected_length"],
                   **{f"dpo_length_{k}": v for k, v in down["last_layer_dpo_expected_length"].items()},
                   **{f"loglinear_length_{k}": v for k, v in down["loglinear_expected_length"].items()},
                   dpo_seconds=down["last_layer_dpo_seconds"])
    return row


def _cell_line(row):
    return (f"attack {row['attack_flips']:>6.1f}  LP {row['lp_flips']:>7.2f}  x{row['reduction']:>5.2f}  "
            f"frac {row['fractional']:>3}  ({row['cell_seconds']:.1f} s)")


def linear_grid(budget, seed):
    rows = []
    for dim in budget["dims"]:
        for n in budget["pairs"]:
            data = experiment.linear_preference_data(jax.random.PRNGKey(seed), n, dim)
            for label, fields in ATTACKS.items():
                settings = experiment.PoisonSettings(pairs=n, dim=dim, postprocess="milp", seed=seed,
                                                     milp_time_limit=budget["milp_time_limit"], **fields)
                summary = _cell(data, settings, jax.random.PRNGKey(seed + 1),
                                independent_dual=dim * n <= DUAL_LP_MAX_ENTRIES)
                rows.append(_row(summary, "linear", label))
                print(f"  d={dim:>3} n={n:>5} {label:<32} {_cell_line(rows[-1])}", flush=True)
    return rows


def lm_grid(budget, seed):
    rows = []
    for preset, n in budget["lm"]:
        start = time.perf_counter()
        data, setup = experiment.lm_preference_data(jax.random.PRNGKey(seed), n, preset, model_seed=seed,
                                                    batch_size=64)
        setup_seconds = time.perf_counter() - start
        rank = poisoning.feature_rank(data.features)
        print(f"  {preset}: features of {n} pairs, d = {data.dim}, rank {rank} ({setup_seconds:.1f} s)",
              flush=True)
        for label, fields in ATTACKS.items():
            settings = experiment.PoisonSettings(source="lm", model=preset, pairs=n, postprocess="lp",
                                                 seed=seed, dpo_steps=budget["dpo_steps"], **fields)
            summary = _cell(data, settings, jax.random.PRNGKey(seed + 1), setup,
                            independent_dual=data.dim * n <= DUAL_LP_MAX_ENTRIES)
            row = _row(summary, f"lm:{preset}", label)
            row["setup_seconds"] = setup_seconds
            rows.append(row)
            print(f"    {label:<32} {_cell_line(row)}  DPO length clean {row['dpo_length_original']:.3f} "
                  f"attack {row['dpo_length_attack']:.3f} post {row['dpo_length_rounded']:.3f}", flush=True)
    return rows


def timing(budget, seed):
    rows = []
    rng = np.random.default_rng(seed)
    dim = 64
    for n in budget["timing_pairs"]:
        features = rng.normal(size=(dim, n))
        theta = np.ones(n)
        attack = theta.copy()
        attack[rng.choice(n, n // 20, replace=False)] = 0.0
        for generate in (True, False):
            if not generate and n > budget["full_lp_max"]:
                continue
            start = time.perf_counter()
            solution = poisoning.postprocess_attack(features, theta, attack, column_generation=generate)
            seconds = time.perf_counter() - start
            rows.append({"d": dim, "n": n, "column_generation": generate, "seconds": seconds,
                         "attack_flips": float(n // 20), "lp_flips": solution.cost,
                         "dual_gap": solution.cost - solution.dual_bound})
            method = "column generation" if generate else "full LP"
            print(f"  n={n:>6} {method:<18} {seconds:7.2f} s  cost {solution.cost:.3f}", flush=True)
    return rows


def _fmt(value, spec=".2f"):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return format(value, spec)


INTRO = (
    "Costs are flipped pairs (`sum |theta - theta_original|`; divide by n for the fraction); every attack "
    "flips 5% of the pairs. `LP` is the post-processed cost (the same Bradley-Terry reward model), `×` the "
    "cost reduction factor attack / LP, `dual` the dual lower bound at the LP's multipliers (`dual LP`: the "
    "dual solved on its own, when d·n <= 2·10^6), `frac` the fractional pairs of the vertex (<= rank), "
    "`rounded` / `MILP` the duplication-granularity costs (5 copies per pair; the MILP keeps the rounded LP's"
    " moment error and starts from it; `*` = stopped at the time limit), `|Δψ|` the max-abs difference "
    "between the attack's and the LP's reward models, `len target` the cheapest data whose reward model has "
    "the attack's length weight and the clean weights elsewhere, `P(longer)` the reward models' mean "
    "probability that the longer response of a pair wins.")
LM_INTRO = (
    "Features: the final hidden state at the last token of prompt + response (rank in brackets: only 7 × 85 "
    "distinct sequences exist). Clean labels: Bradley-Terry on the true helpfulness minus 0.5 per content "
    "word. Mean length: the exact expected number of content words (0-3) of the policy, under last-layer DPO "
    "(frozen trunk, head trained on the duplicated data, β = 0.1, {steps} full-batch Adam steps) and under "
    "the log-linear DPO policy (π ∝ π_ref exp(ψ·φ/β), for which the LP is exact). `post` = the rounded LP "
    "data.")


def write_markdown(path, result):
    budget = result["budget"]
    lines = ["# Minimum-cost label-flipping poisoning (RLHF/DPO)", "",
             f"Generated by `benchmarks/poisoning.py{' --quick' if result['quick'] else ''}` in "
             f"{result['total_seconds'] / 60:.1f} min on {result['machine']}; MILP time limit "
             f"{budget['milp_time_limit']:g} s. " + INTRO, "",
             "## Synthetic linear features", "",
             "| d | n | n/d | attack | flips | LP | × | dual | dual LP | frac | rounded | MILP | |Δψ| "
             "| len target | P(longer) clean → attacked |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["linear"]:
        milp = _fmt(r.get("milp_flips"), ".1f") + ("" if r.get("milp_optimal", True) else "*")
        cells = [r["d"], r["n"], f"{r['n_over_d']:.0f}", r["attack"], f"{r['attack_flips']:.0f}",
                 f"{r['lp_flips']:.2f}", f"{r['reduction']:.2f}", f"{r['dual_bound']:.2f}",
                 _fmt(r["dual_lp"]), r["fractional"], f"{r['rounded_flips']:.1f}", milp,
                 f"{r['psi_gap_lp']:.1e}",
                 _fmt(r.get("length_target_flips")), f"{r['longer_original']:.3f} → {r['longer_attack']:.3f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Cost reduction factor (attack / LP), mean over the cells with the same n/d:", "",
              "| attack | " + " | ".join(f"n/d={v:g}" for v in result["ratios"]) + " |",
              "|---|" + "---|" * len(result["ratios"])]
    for label, values in result["reduction_by_ratio"].items():
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |")
    lines += ["", "## Language-model features (random-weight decoders, synthetic safety language)", "",
              LM_INTRO.format(steps=budget["dpo_steps"]), "",
              "| model | d (rank) | n | attack | flips | LP | × | dual | frac | |Δψ| "
              "| DPO length: clean / attack / post | log-linear: attack / LP |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["lm"]:
        cells = [r["source"][3:], f"{r['d']} ({r['rank']})", r["n"], r["attack"], f"{r['attack_flips']:.0f}",
                 f"{r['lp_flips']:.2f}", f"{r['reduction']:.2f}", f"{r['dual_bound']:.2f}", r["fractional"],
                 f"{r['psi_gap_lp']:.1e}",
                 " / ".join(f"{r[f'dpo_length_{k}']:.3f}" for k in ("original", "attack", "rounded")),
                 f"{r['loglinear_length_attack']:.4f} / {r['loglinear_length_lp']:.4f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## LP solve time at d = 64 (attack: 5% random flips)", "",
              "| n | method | seconds | LP flips | primal − dual |", "|---|---|---|---|---|"]
    for r in result["timing"]:
        method = "column generation" if r["column_generation"] else "full LP"
        lines.append(f"| {r['n']} | {method} | {r['seconds']:.2f} | {r['lp_flips']:.2f} | "
                     f"{r['dual_gap']:.1e} |")
    lines += ["", "## Measured", ""] + [f"- {line}" for line in result["findings"]] + [""]
    Path(path).write_text("\n".join(lines))


def findings(result):
    out = []
    ratios = result["ratios"]
    for label, values in result["reduction_by_ratio"].items():
        finite = [v for v in values if v is not None]
        out.append(f"{label}: cost reduction ×{min(finite):.2f} to ×{max(finite):.2f} over n/d = "
                   f"{min(ratios):g} … {max(ratios):g} (linear features).")
    linear = result["linear"]
    worst_gap = max(abs(r["lp_flips"] - r["dual_bound"]) for r in linear)
    within_rank = all(r["fractional"] <= r["rank"] for r in linear)
    out.append(f"LP reward model vs the attack's: max |Δψ| = {max(r['psi_gap_lp'] for r in linear):.1e}; "
               f"fractional pairs <= rank in every cell: {within_rank}; "
               f"max |LP − dual bound| = {worst_gap:.1e}.")
    for r in result["lm"]:
        out.append(f"{r['source'][3:]} (d={r['d']}, n={r['n']}), {r['attack']}: ×{r['reduction']:.2f}; "
                   f"last-layer DPO mean length clean {r['dpo_length_original']:.3f}, attack "
                   f"{r['dpo_length_attack']:.3f}, post-processed {r['dpo_length_rounded']:.3f}.")
    largest = max(result["timing"], key=lambda r: (r["n"], r["column_generation"]))
    out.append(f"LP at d=64, n={largest['n']}: {largest['seconds']:.1f} s with column generation.")
    return out


def write_figure(path, result) -> None:
    """Cost reduction against n / d (the mean over the cells with the same n / d for the linear features, each
    language-model cell as a point) and LP solve time against n."""
    series = {label: (result["ratios"], result["reduction_by_ratio"][label]) for label in ATTACKS}
    for r in result["lm"]:
        series[f"{r['source'][3:]}: {r['attack']}"] = ([r["n_over_d"]], [r["reduction"]])
    time_series = {name: ([r["n"] for r in result["timing"] if r["column_generation"] == flag],
                          [r["seconds"] for r in result["timing"] if r["column_generation"] == flag])
                   for name, flag in (("column generation", True), ("full LP", False))}
    experiment.plot_cost_scaling(path, [
        dict(series=series, xlabel="n / d (pairs per feature)",
             ylabel="cost reduction: attack flips / LP flips (mean over d)",
             title="post-processing savings (5% attacks)"),
        dict(series=time_series, xlabel="n (pairs), d = 64", ylabel="LP solve seconds", title="solve time")])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid (under two minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for poisoning.{json,md,png} (default benchmarks/results)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw poisoning.{md,png} from an existing poisoning.json without solving")
    args = parser.parse_args(argv)
    if args.replot:
        result = json.loads((args.out / "poisoning.json").read_text())
        write_markdown(args.out / "poisoning.md", result)
        write_figure(args.out / "poisoning.png", result)
        return
    budget = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print("linear features ...", flush=True)
    linear = linear_grid(budget, args.seed)
    print("language-model features ...", flush=True)
    lm = lm_grid(budget, args.seed)
    print("solve time ...", flush=True)
    timings = timing(budget, args.seed)

    ratios = sorted({r["n_over_d"] for r in linear})
    reduction_by_ratio = {label: [float(np.mean([r["reduction"] for r in linear
                                                 if r["attack"] == label and r["n_over_d"] == ratio]))
                                  for ratio in ratios] for label in ATTACKS}
    result = {"quick": args.quick, "budget": dict(budget), "seed": args.seed,
              "machine": f"{platform.machine()} CPU, jax {jax.__version__}, {jax.devices()[0].platform}",
              "linear": linear, "lm": lm, "timing": timings, "ratios": ratios,
              "reduction_by_ratio": reduction_by_ratio, "total_seconds": time.perf_counter() - started}
    result["findings"] = findings(result)
    (args.out / "poisoning.json").write_text(json.dumps(to_jsonable(result), indent=2))
    write_markdown(args.out / "poisoning.md", result)
    write_figure(args.out / "poisoning.png", result)
    print("\n".join(result["findings"]))
    print(f"wrote {args.out / 'poisoning.json'}, .md, .png in {result['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
