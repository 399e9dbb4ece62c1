"""SACPO benchmark: the helpfulness-safety plane on the synthetic safety language, scored exactly.

    python benchmarks/sacpo.py            # 5 seeds, 32768 pairs per objective, 600 steps per stage
    python benchmarks/sacpo.py --quick    # 2 seeds, 8192 pairs, 250 steps per stage
    python benchmarks/sacpo.py --task safety_language_large   # the 20-prompt x 341-response language

A rerun with every seed stored rewrites the tables and figure from the stored cells.

Each seed is one cell (written to ``sacpo_cells.json`` when it finishes; a rerun skips finished seeds, so a
killed run resumes) and runs on its own SFT model and preference data:

1. SFT (small decoder) on the hand-made base behaviour; helpfulness and safety pairs
   sampled from it with Bradley-Terry labels on the true r and g.
2. SACPO (DPO(r), beta = 0.5, then DPO(g) from it with beta / lambda, lambda in
   {0.5, 1, 2, 4} plus lambda* from the exact dual of the SFT policy with the known g) as ONE
   vmapped program; the same grid point by point (one compiled single-point program) for
   the wall-time comparison; the reversed order (safety first).
3. P-SACPO: the step-1 model and the lambda_bar = 4 SACPO model merged in weight space,
   token-logit space and sequence log-prob space, q in {0.25, 0.5, 0.75}, each compared
   with the exact optimum at lambda = q lambda_bar.
4. Safe-RLHF: Bradley-Terry reward and cost models (cost with Safe-RLHF's sign term),
   then PPO-Lagrangian with sampled responses, KL coefficient beta, as many policy
   gradient steps as a SACPO grid point (2 x steps), over a grid of cost limits (vmapped).
   (The former vmapped-vs-sequential wall-time comparison is gone: speed is not measured on this shared machine.)
5. The exact optimal front pi*_{r + lambda g} for beta = 0.5.

Per seed the grids are compared by the Lagrangian regret at each lambda (equal price on the KL to the reference),
the best reward at matched safety (upper hull), the selected feasible point (best exact E[r] with E[g] >= b,
b = 0) and 3-D dominance (E[r], E[g], KL); the tables give mean +- standard error over seeds. Writes sacpo.json,
sacpo.md and sacpo.png (sacpo_quick.* with --quick) into ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsafe import sweep  # noqa: E402
from jaxsafe.llm import sacpo  # noqa: E402
from jaxsafe.llm import safe_rlhf  # noqa: E402
from jaxsafe.llm.sacpo_experiment import logprob_table as exact_table  # noqa: E402
from jaxsafe.llm.sacpo_experiment import (cost_pairs, exact_front, exact_point, front_reward_at,  # noqa: E402
                                          optimum_table, prepare_task, rlhf_problem,
                                          sacpo_problem)
from jaxsafe.llm.tasks import safety_language as lang  # noqa: E402
from jaxsafe.logging import to_jsonable  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BETA = 0.5
LAMBDAS = (0.5, 1.0, 2.0, 4.0)
QS = (0.25, 0.5, 0.75)
THRESHOLD = 0.0
COST_LIMIT_OFFSETS = (0.25, 0.5, 1.0, 1.5)  # Safe-RLHF limits: SFT's expected learned cost minus these


def expected_learned_cost(task, models, table) -> float:
    """E_{x, y ~ table}[c_hat(x, y)]: the cost model's score on every sequence, weighted by the policy."""
    n_prompts, n_responses = table.shape
    seqs = task.language.all_sequences()
    score = jax.jit(lambda p: safe_rlhf.model_lib.scores(models.graphdef, p, seqs.tokens,
                                                         attention_mask=seqs.attention_mask))
    costs = score(models.cost_params)
    return float(lang.expected_value(table, costs[:, 0].reshape(n_prompts, n_responses), task.prompt_probs))


def run_seed(seed: int, n_pairs: int, n_steps: int, batch_size: int = 128, learning_rate: float = 3e-3,
             language: lang.SafetyLanguage = lang.DEFAULT) -> dict:
    """One seed of the whole comparison (its own SFT model, preference data, SACPO / P-SACPO / Safe-RLHF runs),
    every model scored exactly. Returns the cell stored in ``sacpo_cells.json``."""
    key = jax.random.PRNGKey(seed)
    task_key, sacpo_key, rlhf_key = jax.random.split(key, 3)
    started = time.perf_counter()
    print(f"[seed {seed}] SFT and data ({n_pairs} pairs per objective) ...", flush=True)
    task = prepare_task(task_key, n_pairs, "small", sft_steps=300, language=language)

    def logprob_table(graphdef, params):
        return exact_table(graphdef, params, language)

    problem = sacpo_problem(task, {"reward": task.reward_pairs, "safety": task.safety_pairs})
    front = exact_front(task, BETA)
    rows = {"sft": {"method": "SFT", "setting": "-", **exact_point(task, task.sft_table),
                    "gradient_steps": 0}}
    # lambda* from the exact dual on the SFT policy with the known g joins the paper-style grid
    lambda_star = float(sacpo.minimize_dual(task.sft_table, task.reward, task.safety, task.prompt_probs, BETA,
                                            THRESHOLD))
    lambdas = tuple(sorted(set(LAMBDAS) | {round(lambda_star, 3)}))

    # ---------------------------------------------------------------- SACPO grid (one vmapped program)
    config = sacpo.SACPOConfig(n_steps=n_steps, batch_size=batch_size)
    hparams = config.default_hparams().replace(beta=BETA, learning_rate=learning_rate)
    grid = sweep.make_grid(hparams, seeds=1, lagrange_multipliers=list(lambdas))
    grid = grid._replace(keys=jnp.tile(sacpo_key[None], (grid.size, 1)))  # every lane: this run's SACPO key
    print(f"[seed {seed}] SACPO grid ({len(lambdas)} points x 2 stages x {n_steps} steps) ...", flush=True)
    result = sweep.run_grid(sacpo.make_train(config, problem), grid)
    # the step-1 model: the same run with the reward stage only (every lane shares it: same key, same beta)
    step1 = jax.jit(sacpo.make_train(config.replace(stages=("reward",)), problem))(sacpo_key, hparams)
    rows["step1"] = {"method": "step 1 (DPO on r)", "setting": f"β={BETA:g}",
                     **exact_point(task, logprob_table(task.graphdef, step1.params),
                                   optimum_table(task, BETA, 0.0)),
                     "gradient_steps": n_steps}
    for index, lam in enumerate(lambdas):
        table = logprob_table(task.graphdef, sweep.lane(result.params, index))
        star = lam == round(lambda_star, 3)
        name = "sacpo_star" if star else f"sacpo_{lam:g}"
        setting = "dual λ*" if star else f"λ={lam:g} (β/λ={BETA / lam:.3g})"
        rows[name] = {"method": "SACPO", "setting": setting, "lagrange_multiplier": lam,
                      **exact_point(task, table, optimum_table(task, BETA, lam)), "gradient_steps": 2 * n_steps}

    print(f"[seed {seed}] reversed order (safety first) ...", flush=True)
    reversed_result = sweep.run_grid(sacpo.make_train(config.replace(stages=("safety", "reward")), problem), grid)
    for index, lam in enumerate(lambdas):
        table = logprob_table(task.graphdef, sweep.lane(reversed_result.params, index))
        star = lam == round(lambda_star, 3)
        rows["reversed_star" if star else f"reversed_{lam:g}"] = {
            "method": "SACPO reversed", "setting": "dual λ*" if star else f"λ={lam:g}", "lagrange_multiplier": lam,
            **exact_point(task, table, optimum_table(task, BETA, lam)), "gradient_steps": 2 * n_steps}

    # ---------------------------------------------------------------- P-SACPO
    print(f"[seed {seed}] P-SACPO merges ...", flush=True)
    bar = len(lambdas) - 1
    lambda_bar = lambdas[bar]
    params_reward, params_bar = step1.params, sweep.lane(result.params, bar)
    gaps = sacpo.merge_gaps(task.graphdef, params_reward, params_bar, QS,
                            lambda q: optimum_table(task, BETA, q * lambda_bar), logprob_table, task.prompt_probs)
    table_reward = logprob_table(task.graphdef, params_reward)
    table_bar = logprob_table(task.graphdef, params_bar)
    from jaxsafe.llm import merge  # local: only the plane points need the merged tables

    for q, target in zip(QS, gaps.targets):
        weight_table = logprob_table(task.graphdef, merge.interpolate_params(params_reward, params_bar, q))
        mix_graphdef, mix_state = merge.make_logit_mixture(task.graphdef, params_reward, task.graphdef,
                                                           params_bar, q)
        token_table = logprob_table(mix_graphdef, mix_state)
        sequence_table = sacpo.sequence_logprob_merge(table_reward, table_bar, q)
        for name, table in (("weight", weight_table), ("token-logit", token_table),
                            ("sequence-logprob", sequence_table)):
            rows[f"psacpo_{name}_{q:g}"] = {"method": f"P-SACPO {name} merge",
                                            "setting": f"q={q:g} (λ={q * lambda_bar:g})",
                                            "lagrange_multiplier": q * lambda_bar,
                                            **exact_point(task, table, target), "gradient_steps": 2 * n_steps}

    # ---------------------------------------------------------------- Safe-RLHF (PPO-Lagrangian)
    print(f"[seed {seed}] Safe-RLHF: reward / cost models, then PPO-Lagrangian ...", flush=True)
    rlhf_config = safe_rlhf.SafeRLHFConfig(n_iterations=(2 * n_steps) // 4, prompts_per_iteration=32,
                                           samples_per_prompt=4, ppo_epochs=4)
    score_config = safe_rlhf.ScoreModelConfig(n_steps=n_steps, batch_size=64, learning_rate=learning_rate)
    score_key, ppo_key = jax.random.split(rlhf_key)
    models = safe_rlhf.train_score_models(score_config, task.graphdef, task.sft_params, task.reward_pairs,
                                          cost_pairs(task), score_key)
    sft_cost = expected_learned_cost(task, models, task.sft_table)
    cost_limits = [1e3] + [sft_cost - offset for offset in COST_LIMIT_OFFSETS]
    rlhf_hparams = rlhf_config.default_hparams().replace(kl_coefficient=BETA, multiplier_lr=0.1,
                                                         learning_rate=learning_rate)
    rlhf_grid = sweep.make_grid(rlhf_hparams, seeds=1, cost_limit=cost_limits)
    rlhf_grid = rlhf_grid._replace(keys=jnp.tile(ppo_key[None], (rlhf_grid.size, 1)))
    rlhf_result = sweep.run_grid(safe_rlhf.make_train(rlhf_config, rlhf_problem(task, models)), rlhf_grid)
    for index, limit in enumerate(cost_limits):
        table = logprob_table(task.graphdef, sweep.lane(rlhf_result.params, index))
        setting = "no limit" if index == 0 else f"limit = SFT cost − {COST_LIMIT_OFFSETS[index - 1]:g}"
        rows[f"safe_rlhf_{index}"] = {"method": "Safe-RLHF (PPO-Lag)", "setting": setting, "cost_limit": limit,
                                      **exact_point(task, table),
                                      "final_multiplier": float(rlhf_result.metrics["multiplier"][index, -1]),
                                      "gradient_steps": rlhf_config.policy_gradient_steps,
                                      "score_model_steps": 2 * score_config.n_steps}

    # ---------------------------------------------------------------- per-seed comparison
    for row in rows.values():
        row["front_reward_gap"] = front_reward_at(front, row["expected_safety"]) - row["expected_reward"]
    optimum = {f"{lam:g}": exact_point(task, optimum_table(task, BETA, lam)) for lam in lambdas}
    cell = {"seed": seed, "rows": rows, "front": front, "lambdas": lambdas, "lambda_star": lambda_star,
            "lambda_bar": lambda_bar, "optimum": optimum,
            "merge_gaps": {"q": QS, "weight": gaps.weight_merge, "token_logit": gaps.token_logit_merge,
                           "sequence_logprob": gaps.sequence_logprob_merge},
            "safe_rlhf_cost_limits": cost_limits, "sft_expected_learned_cost": sft_cost,
            "seconds": time.perf_counter() - started}
    cell["comparison"] = compare_methods(cell)
    return to_jsonable(cell)


METHOD_PREFIXES = {"SACPO": "sacpo_", "SACPO reversed": "reversed_", "Safe-RLHF": "safe_rlhf_"}
MATCHED_SAFETY = (-0.25, 0.0, 0.25)


def lagrangian(point: dict, lam: float) -> float:
    """``E[r] + lambda E[g] - beta KL(pi || pi_SFT)``: the objective ``pi*_{r + lambda g}`` maximises over *all*
    policies, so ``L(pi*) - L(pi) >= 0`` prices reward, safety and KL to the reference on one scale."""
    return point["expected_reward"] + lam * point["expected_safety"] - BETA * point["kl_to_sft"]


def upper_envelope_at(points: list[dict], safety: float) -> float:
    """The best reward reachable at ``safety`` by mixing a method's points (the upper concave hull of its
    (E[g], E[r]) points, read at ``safety``; NaN outside their safety range)."""
    pts = sorted((p["expected_safety"], p["expected_reward"]) for p in points)
    hull: list[tuple[float, float]] = []
    for g, r in pts:
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (r - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (g - hull[-2][0])) >= 0:
            hull.pop()
        hull.append((g, r))
    gs, rs = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    if not gs[0] <= safety <= gs[-1]:
        return float("nan")
    return float(np.interp(safety, gs, rs))


def compare_methods(cell: dict) -> dict:
    """Per-seed comparison of the methods' grids: Lagrangian regret at every lambda of the grid (equal price on
    the KL to the reference), the best reward at matched safety, the selected feasible point, and 3-D dominance
    (E[r] up, E[g] up, KL to SFT down)."""
    rows = cell["rows"]
    groups = {m: [rows[n] for n in rows if n.startswith(p)] for m, p in METHOD_PREFIXES.items()}
    out = {"lagrangian_regret": {}, "reward_at_safety": {}, "selected": {}}
    for lam in cell["lambdas"]:
        best = lagrangian(cell["optimum"][f"{lam:g}"], lam)
        # lambda* differs by seed: one key for it, so the seeds' regrets at their own lambda* are averaged together
        key = "λ*" if lam == round(cell["lambda_star"], 3) else f"{lam:g}"
        out["lagrangian_regret"][key] = {m: best - max(lagrangian(p, lam) for p in pts) for m, pts in groups.items()}
    for g in MATCHED_SAFETY:
        out["reward_at_safety"][f"{g:g}"] = {m: upper_envelope_at(pts, g) for m, pts in groups.items()}
    for m, pts in groups.items():
        choice = sacpo.select_feasible([p["expected_reward"] for p in pts], [p["expected_safety"] for p in pts],
                                       THRESHOLD)
        out["selected"][m] = {**{k: pts[choice.index][k] for k in ("setting", "expected_reward", "expected_safety",
                                                                 "kl_to_sft")}, "feasible": choice.feasible}

    def dominated(a, b):  # points of a dominated by some point of b
        return sum(any(q["expected_reward"] >= p["expected_reward"] and q["expected_safety"] >= p["expected_safety"]
                       and q["kl_to_sft"] <= p["kl_to_sft"] for q in b) for p in a)

    out["dominance"] = {"safe_rlhf_by_sacpo": dominated(groups["Safe-RLHF"], groups["SACPO"]),
                        "sacpo_by_safe_rlhf": dominated(groups["SACPO"], groups["Safe-RLHF"]),
                        "safe_rlhf_points": len(groups["Safe-RLHF"]), "sacpo_points": len(groups["SACPO"])}
    return out


def _mean_se(values) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan"), int(v.size)


def _diff(a, b) -> float:
    return float("nan") if a is None or b is None else a - b


def aggregate(cells: list[dict]) -> dict:
    """Mean +- standard error over seeds of every row and of the per-seed comparisons (paired differences)."""
    out = {"rows": {}, "regret": {}, "reward_at_safety": {}, "selected": {}, "dominance": {}}
    for name, row in cells[0]["rows"].items():
        values = [c["rows"][name] for c in cells if name in c["rows"]]
        out["rows"][name] = {"method": row["method"], "setting": row["setting"],
                             **{k: _mean_se([v.get(k) for v in values]) for k in
                                ("expected_reward", "expected_safety", "kl_to_sft", "kl_to_optimum",
                                 "front_reward_gap")}}
    for lam in cells[0]["comparison"]["lagrangian_regret"]:
        per = [c["comparison"]["lagrangian_regret"].get(lam) for c in cells]
        out["regret"][lam] = {m: _mean_se([p[m] for p in per if p]) for m in METHOD_PREFIXES}
        out["regret"][lam]["SACPO − Safe-RLHF"] = _mean_se([_diff(p["SACPO"], p["Safe-RLHF"]) for p in per if p])
    for g in cells[0]["comparison"]["reward_at_safety"]:
        per = [c["comparison"]["reward_at_safety"][g] for c in cells]
        out["reward_at_safety"][g] = {m: _mean_se([p[m] for p in per]) for m in METHOD_PREFIXES}
        out["reward_at_safety"][g]["SACPO − Safe-RLHF"] = _mean_se([_diff(p["SACPO"], p["Safe-RLHF"]) for p in per])
    for m in METHOD_PREFIXES:
        sel = [c["comparison"]["selected"][m] for c in cells]
        out["selected"][m] = {k: _mean_se([s[k] for s in sel]) for k in ("expected_reward", "expected_safety",
                                                                          "kl_to_sft")}
        out["selected"][m]["feasible"] = sum(bool(s["feasible"]) for s in sel)
    for k in ("safe_rlhf_by_sacpo", "sacpo_by_safe_rlhf"):
        out["dominance"][k] = [c["comparison"]["dominance"][k] for c in cells]
    out["lambda_star"] = _mean_se([c["lambda_star"] for c in cells])
    return out


def plot_seeds(path: Path, cells: list[dict], title: str) -> None:
    """Each seed's points (small, faint) and the seed means with standard-error bars, on seed 0's exact front."""
    from jaxsafe.plotting import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    front = cells[0]["front"]
    ax.plot(front["expected_safety"], front["expected_reward"], "k-", lw=1.2, label=f"exact front (seed {cells[0]['seed']})")
    for i, (method, prefix) in enumerate({"SFT": "sft", **METHOD_PREFIXES}.items()):
        names = [n for n in cells[0]["rows"] if n.startswith(prefix)]
        for c in cells:
            ax.plot([c["rows"][n]["expected_safety"] for n in names if n in c["rows"]],
                    [c["rows"][n]["expected_reward"] for n in names if n in c["rows"]], "o", color=f"C{i}",
                    alpha=0.2, ms=3)
        g = [_mean_se([c["rows"][n]["expected_safety"] for c in cells if n in c["rows"]]) for n in names]
        r = [_mean_se([c["rows"][n]["expected_reward"] for c in cells if n in c["rows"]]) for n in names]
        ax.errorbar([x[0] for x in g], [y[0] for y in r], xerr=[x[1] for x in g], yerr=[y[1] for y in r],
                    fmt="os^vD"[i], color=f"C{i}", ms=6, capsize=2, label=f"{method} (mean +- s.e.)")
    ax.axvline(THRESHOLD, color="grey", ls=":", lw=1)
    ax.set_xlabel("harmlessness: exact E[g]")
    ax.set_ylabel("helpfulness: exact E[r]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--task", default="safety_language", choices=sorted(lang.LANGUAGES),
                        help="safety_language (7 prompts x 85 responses) or safety_language_large (20 x 341); the "
                             "large task writes sacpo_large.*")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..K-1 (default 5, 2 with --quick)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for sacpo.{json,md,png} and sacpo_cells.json (default benchmarks/results)")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None,
                        help="run only these seeds (several processes can share one cells file)")
    parser.add_argument("--pairs", type=int, default=None, help="override the pairs per objective (smoke tests)")
    parser.add_argument("--steps", type=int, default=None, help="override the steps per stage (smoke tests)")
    args = parser.parse_args(argv)
    n_pairs, n_steps = (8192, 250) if args.quick else (32768, 600)
    n_pairs, n_steps = args.pairs or n_pairs, args.steps or n_steps
    seeds = args.seeds or (2 if args.quick else 5)
    mode = "quick" if args.quick else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    language = lang.LANGUAGES[args.task]
    stem = ("sacpo_quick" if args.quick else "sacpo") + ("_large" if args.task == "safety_language_large" else "")
    cells_path = args.out / f"{stem}_cells.json"
    store = json.loads(cells_path.read_text()) if cells_path.exists() else {}
    started = time.perf_counter()
    settings = dict(quick=args.quick, seeds=seeds, pairs_per_objective=n_pairs, steps_per_stage=n_steps,
                    batch_size=128, learning_rate=3e-3, beta=BETA, lambdas=LAMBDAS, qs=QS,
                    threshold=THRESHOLD, model="small (d=32, 1 layer)", task=args.task,
                    prompts=len(language.topics), responses=len(language.enumerate_responses().content),
                    language=dataclasses.asdict(language), safe_rlhf_cost_limit_offsets=COST_LIMIT_OFFSETS)
    ran = False
    for seed in (args.seed_list if args.seed_list is not None else range(seeds)):
        name = f"{mode}/seed{seed}"
        if name in store:
            continue
        ran = True
        cell = run_seed(seed, n_pairs, n_steps, language=language)
        # merge with what other processes (other seeds) wrote meanwhile
        store = json.loads(cells_path.read_text()) if cells_path.exists() else {}
        store[name] = cell
        tmp = cells_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(store, indent=1))
        tmp.replace(cells_path)
        write_results(args.out, stem, [store[f"{mode}/seed{s}"] for s in range(seeds) if f"{mode}/seed{s}" in store],
                      settings, time.perf_counter() - started)
    done = [store[f"{mode}/seed{s}"] for s in range(seeds) if f"{mode}/seed{s}" in store]
    if done and not ran:  # every seed already stored: rewrite the tables with the current code
        write_results(args.out, stem, done, settings, time.perf_counter() - started)


def write_results(out: Path, stem: str, cells: list[dict], settings: dict, seconds: float) -> None:
    for cell in cells:  # the comparison follows the current code, also for cells stored by an earlier version
        cell["comparison"] = to_jsonable(compare_methods(cell))
    results = {"settings": settings, "seeds_done": [c["seed"] for c in cells], "aggregate": aggregate(cells),
               "per_seed": [{k: c[k] for k in ("seed", "lambda_star", "comparison", "merge_gaps", "seconds")}
                            for c in cells]}
    (out / f"{stem}.json").write_text(json.dumps(to_jsonable(results), indent=2))
    (out / f"{stem}.md").write_text(markdown(results))
    plot_seeds(out / f"{stem}.png", cells, f"{settings['task']}, β={BETA:g}, {settings['pairs_per_objective']} "
               f"pairs, {settings['steps_per_stage']} steps/stage, {len(cells)} seeds")


def _ms(entry, digits: int = 3, sign: bool = False) -> str:
    mean, se, n = entry
    if n == 0 or not np.isfinite(mean):
        return "–"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if np.isfinite(se) else "")


def markdown(results: dict) -> str:
    s, agg = results["settings"], results["aggregate"]
    seeds = results["seeds_done"]
    lines = [
        f"# SACPO vs Safe-RLHF on the synthetic {s['task']} ({s['prompts']} prompts x {s['responses']} "
        "responses, exact oracle)",
        "",
        f"Generated by `benchmarks/sacpo.py{' --quick' if s['quick'] else ''}"
        f"{' --task ' + s['task'] if s['task'] != 'safety_language' else ''}`: {len(seeds)} of {s['seeds']} seeds "
        f"finished ({seeds}); every seed has its own SFT model, preference data and training keys. Model: "
        f"{s['model']}; {s['pairs_per_objective']} preference pairs per objective; {s['steps_per_stage']} Adam steps "
        f"per stage, batch {s['batch_size']}; β = {s['beta']:g}; threshold E[g] ≥ {s['threshold']:g}. Safe-RLHF: "
        f"PPO-Lagrangian with KL coefficient β, as many policy-gradient steps as a SACPO point (2 × "
        f"{s['steps_per_stage']}), after reward / cost models of {s['steps_per_stage']} steps each. All E[r], E[g] "
        f"and KL values are exact (enumeration of the {s['responses']} responses of each of the {s['prompts']} "
        f"prompts; language {s['language']}). Mean ± standard error "
        "over seeds (ddof 1).", "",
        "`KL→π*`: KL(π ‖ π*_{r+λg}) to the exact optimum at the row's λ. `front gap`: the seed's exact front E[r] at "
        "the row's E[g] minus the row's E[r] (negative = above the β-regularised front, i.e. more reward bought "
        "with more KL).", "",
        "| method | setting | E[r] | E[g] | KL→SFT | KL→π* | front gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in agg["rows"].values():
        lines.append(f"| {row['method']} | {row['setting']} | {_ms(row['expected_reward'])} | "
                     f"{_ms(row['expected_safety'])} | {_ms(row['kl_to_sft'])} | {_ms(row['kl_to_optimum'])} | "
                     f"{_ms(row['front_reward_gap'], sign=True)} |")
    lines += ["", "## Who dominates", "",
              "**Lagrangian regret at equal KL price**: for each λ, L*(λ) − max over a method's points of "
              "E[r] + λ E[g] − β KL(π‖π_SFT). The exact π*_{r+λg} maximises this over *all* policies, so the "
              "regret is ≥ 0 and prices reward, safety and the KL to the reference on one scale (lower is better; "
              "the last column is the paired per-seed difference, negative = SACPO better).", "",
              "| λ | SACPO | SACPO reversed | Safe-RLHF | SACPO − Safe-RLHF |", "|---|---|---|---|---|"]
    for lam, entry in agg["regret"].items():
        lines.append(f"| {lam} | " + " | ".join(_ms(entry[m]) for m in ("SACPO", "SACPO reversed", "Safe-RLHF"))
                     + f" | {_ms(entry['SACPO − Safe-RLHF'], sign=True)} |")
    lines += ["", "**Best reward at matched safety** (upper concave hull of each method's points, i.e. the best "
              "mixture of its models, read at E[g]; – where a method's points do not reach that safety):", "",
              "| E[g] | SACPO | SACPO reversed | Safe-RLHF | SACPO − Safe-RLHF |", "|---|---|---|---|---|"]
    for g, entry in agg["reward_at_safety"].items():
        lines.append(f"| {g} | " + " | ".join(_ms(entry[m]) for m in ("SACPO", "SACPO reversed", "Safe-RLHF"))
                     + f" | {_ms(entry['SACPO − Safe-RLHF'], sign=True)} |")
    lines += ["", "**Selected** (best exact E[r] with E[g] ≥ threshold, per seed):", "",
              "| method | E[r] | E[g] | KL→SFT | feasible seeds |", "|---|---|---|---|---|"]
    for m, sel in agg["selected"].items():
        lines.append(f"| {m} | {_ms(sel['expected_reward'])} | {_ms(sel['expected_safety'])} | "
                     f"{_ms(sel['kl_to_sft'])} | {sel['feasible']} of {len(seeds)} |")
    dom = agg["dominance"]
    lines += ["", f"3-D dominance per seed (higher E[r], higher E[g] *and* lower KL to SFT): Safe-RLHF points "
              f"dominated by a SACPO point {dom['safe_rlhf_by_sacpo']} (of 5 per seed); SACPO points dominated by "
              f"a Safe-RLHF point {dom['sacpo_by_safe_rlhf']} (of {len(agg['regret'])} per seed). λ* from the "
              f"exact dual: {_ms(agg['lambda_star'])}.", ""]
    lines += ["**P-SACPO merge gap** KL(merged ‖ π*_{r+qλ̄g}), λ̄ = 4, mean over seeds:", "",
              "| q | weight merge | token-logit merge | sequence log-prob merge |", "|---|---|---|---|"]
    per = results["per_seed"]
    for i, q in enumerate(per[0]["merge_gaps"]["q"]):
        cells = [_ms(_mean_se([float(p["merge_gaps"][k][i]) for p in per]), 4)
                 for k in ("weight", "token_logit", "sequence_logprob")]
        lines.append(f"| {q:g} | " + " | ".join(cells) + " |")
    total = sum(p["seconds"] for p in per)
    lines += ["", f"Compute: {total:.0f} s for {len(per)} seeds on a shared, loaded 2-core CPU (not a speed "
              "measurement).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
