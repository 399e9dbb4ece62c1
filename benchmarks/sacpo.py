"""SACPO benchmark: the helpfulness-safety plane on the synthetic safety language, scored exactly.

    python benchmarks/sacpo.py            # 32768 pairs per objective, 600 steps per stage
    python benchmarks/sacpo.py --quick    # 8192 pairs, 250 steps per stage

Everything runs in one process on the same SFT model and the same preference data:

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
5. The exact optimal front pi*_{r + lambda g} for beta = 0.5.

Selection for both methods: the best exact E[r] among points with exact E[g] >= b (b = 0).
Writes sacpo.json, sacpo.md and sacpo.png into ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
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
from jaxsafe.llm.sacpo_experiment import (cost_pairs, exact_front, exact_point, front_reward_at,  # noqa: E402
                                          logprob_table, optimum_table, prepare_task, rlhf_problem,
                                          sacpo_problem)
from jaxsafe.llm.tasks import safety_language as lang  # noqa: E402
from jaxsafe.logging import to_jsonable  # noqa: E402
from jaxsafe.plotting import plot_plane  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BETA = 0.5
LAMBDAS = (0.5, 1.0, 2.0, 4.0)
QS = (0.25, 0.5, 0.75)
THRESHOLD = 0.0
COST_LIMIT_OFFSETS = (0.25, 0.5, 1.0, 1.5)  # Safe-RLHF limits: SFT's expected learned cost minus these


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def expected_learned_cost(task, models, table) -> float:
    """E_{x, y ~ table}[c_hat(x, y)]: the cost model's score on all 595 sequences, weighted by the policy."""
    n_prompts, n_responses = table.shape
    seqs = lang.sequences(jnp.repeat(jnp.arange(n_prompts), n_responses),
                          jnp.tile(jnp.arange(n_responses), n_prompts))
    score = jax.jit(lambda p: safe_rlhf.model_lib.scores(models.graphdef, p, seqs.tokens,
                                                         attention_mask=seqs.attention_mask))
    costs = score(models.cost_params)
    return float(lang.expected_value(table, costs[:, 0].reshape(n_prompts, n_responses), task.prompt_probs))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory for sacpo.{json,md,png} (default benchmarks/results, the stored "
                             "numbers)")
    args = parser.parse_args(argv)
    n_pairs, n_steps = (8192, 250) if args.quick else (32768, 600)
    batch_size, learning_rate = 128, 3e-3
    key = jax.random.PRNGKey(args.seed)
    task_key, sacpo_key, rlhf_key = jax.random.split(key, 3)
    started = time.perf_counter()

    print(f"SFT and data ({n_pairs} pairs per objective) ...", flush=True)
    task = prepare_task(task_key, n_pairs, "small", sft_steps=300)
    problem = sacpo_problem(task, {"reward": task.reward_pairs, "safety": task.safety_pairs})
    front = exact_front(task, BETA)
    rows = {"sft": {"method": "SFT", "setting": "-", **exact_point(task, task.sft_table),
                    "gradient_steps": 0}}
    # lambda* from the exact dual on the SFT policy with the known g joins the paper-style grid
    lambda_star = float(sacpo.minimize_dual(task.sft_table, task.reward, task.safety, task.prompt_probs, BETA,
                                            THRESHOLD))
    lambdas = tuple(sorted(set(LAMBDAS) | {round(lambda_star, 3)}))

    # ---------------------------------------------------------------- SACPO grid, vmapped vs one by one
    config = sacpo.SACPOConfig(n_steps=n_steps, batch_size=batch_size)
    hparams = config.default_hparams().replace(beta=BETA, learning_rate=learning_rate)
    grid = sweep.make_grid(hparams, seeds=1, lagrange_multipliers=list(lambdas))
    grid = grid._replace(keys=jnp.tile(sacpo_key[None], (grid.size, 1)))  # every lane: this run's SACPO key
    train = sacpo.make_train(config, problem)
    print(f"SACPO grid ({len(lambdas)} points x 2 stages x {n_steps} steps), vmapped ...", flush=True)
    result, vmapped_first = _timed(sweep.run_grid, train, grid)
    _, vmapped_steady = _timed(sweep.run_grid, train,
                               grid._replace(keys=jnp.tile(jax.random.PRNGKey(99)[None],
                                                                                   (grid.size, 1))))
    print("SACPO grid point by point ...", flush=True)
    single = jax.jit(train)
    _, sequential_first = _timed(single, sacpo_key, sweep.lane(grid.hparams, 0))
    sequential_steady = 0.0
    for index in range(len(lambdas)):
        _, seconds = _timed(single, sacpo_key, sweep.lane(grid.hparams, index))
        sequential_steady += seconds
    timing = {"grid_points": len(lambdas), "vmapped_first_call_s": vmapped_first,
              "vmapped_steady_s": vmapped_steady,
              "sequential_first_point_incl_compile_s": sequential_first,
              "sequential_steady_s": sequential_steady,
              "sequential_total_incl_compile_s": sequential_first + sequential_steady
              - sequential_steady / len(lambdas),
              "steady_speedup": sequential_steady / vmapped_steady}

    # the step-1 model: the same run with the reward stage only (every lane shares it: same key, same beta)
    step1 = jax.jit(sacpo.make_train(config.replace(stages=("reward",)), problem))(sacpo_key, hparams)
    rows["step1"] = {"method": "step 1 (DPO on r)", "setting": f"β={BETA:g}",
                     **exact_point(task, logprob_table(task.graphdef, step1.params),
                                   optimum_table(task, BETA, 0.0)),
                     "gradient_steps": n_steps}
    for index, lam in enumerate(lambdas):
        table = logprob_table(task.graphdef, sweep.lane(result.params, index))
        setting = f"λ={lam:g} (β/λ={BETA / lam:.3g})" + (", dual λ*" if lam == round(lambda_star, 3) else "")
        rows[f"sacpo_{lam:g}"] = {"method": "SACPO", "setting": setting, "lagrange_multiplier": lam,
                                  **exact_point(task, table, optimum_table(task, BETA, lam)),
                                  "gradient_steps": 2 * n_steps}

    print("reversed order (safety first) ...", flush=True)
    reversed_config = config.replace(stages=("safety", "reward"))
    reversed_result = sweep.run_grid(sacpo.make_train(reversed_config, problem), grid)
    for index, lam in enumerate(lambdas):
        table = logprob_table(task.graphdef, sweep.lane(reversed_result.params, index))
        rows[f"reversed_{lam:g}"] = {"method": "SACPO reversed", "setting": f"λ={lam:g}",
                                     "lagrange_multiplier": lam,
                                     **exact_point(task, table, optimum_table(task, BETA, lam)),
                                     "gradient_steps": 2 * n_steps}

    # ---------------------------------------------------------------- P-SACPO
    print("P-SACPO merges ...", flush=True)
    bar = len(lambdas) - 1
    lambda_bar = lambdas[bar]
    params_reward, params_bar = step1.params, sweep.lane(result.params, bar)
    gaps = sacpo.merge_gaps(task.graphdef, params_reward, params_bar, QS,
                            lambda q: optimum_table(task, BETA,
                                                    q * lambda_bar), logprob_table, task.prompt_probs)
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
                                            **exact_point(task, table, target),
                                            "gradient_steps": 2 * n_steps}

    # ---------------------------------------------------------------- Safe-RLHF (PPO-Lagrangian)
    print("Safe-RLHF: reward / cost models ...", flush=True)
    rlhf_config = safe_rlhf.SafeRLHFConfig(n_iterations=(2 * n_steps) // 4, prompts_per_iteration=32,
                                           samples_per_prompt=4, ppo_epochs=4)
    score_config = safe_rlhf.ScoreModelConfig(n_steps=n_steps, batch_size=64, learning_rate=learning_rate)
    score_key, ppo_key = jax.random.split(rlhf_key)
    models, score_seconds = _timed(safe_rlhf.train_score_models, score_config, task.graphdef, task.sft_params,
                                   task.reward_pairs, cost_pairs(task), score_key)
    sft_cost = expected_learned_cost(task, models, task.sft_table)
    cost_limits = [1e3] + [sft_cost - offset for offset in COST_LIMIT_OFFSETS]
    print(f"Safe-RLHF: PPO-Lagrangian over cost limits {np.round(cost_limits, 3).tolist()} ...", flush=True)
    rlhf_hparams = rlhf_config.default_hparams().replace(kl_coefficient=BETA, multiplier_lr=0.1,
                                                         learning_rate=learning_rate)
    rlhf_grid = sweep.make_grid(rlhf_hparams, seeds=1, cost_limit=cost_limits)
    rlhf_grid = rlhf_grid._replace(keys=jnp.tile(ppo_key[None], (rlhf_grid.size, 1)))
    rlhf_result, ppo_seconds = _timed(sweep.run_grid,
                                      safe_rlhf.make_train(rlhf_config, rlhf_problem(task, models)),
                                      rlhf_grid)
    rlhf_params, rlhf_metrics = rlhf_result.params, rlhf_result.metrics
    for index, limit in enumerate(cost_limits):
        table = logprob_table(task.graphdef, sweep.lane(rlhf_params, index))
        setting = "no limit" if index == 0 else f"limit = SFT cost − {COST_LIMIT_OFFSETS[index - 1]:g}"
        rows[f"safe_rlhf_{index}"] = {"method": "Safe-RLHF (PPO-Lag)", "setting": setting,
                                      "cost_limit": limit,
                                      **exact_point(task, table),
                                      "final_multiplier": float(rlhf_metrics["multiplier"][index, -1]),
                                      "gradient_steps": rlhf_config.policy_gradient_steps,
                                      "score_model_steps": 2 * score_config.n_steps}

    # ---------------------------------------------------------------- selection and comparison
    for row in rows.values():
        row["front_reward_gap"] = front_reward_at(front, row["expected_safety"]) - row["expected_reward"]

    def select(prefix):
        names = [n for n in rows if n.startswith(prefix)]
        choice = sacpo.select_feasible([rows[n]["expected_reward"] for n in names],
                                       [rows[n]["expected_safety"] for n in names], THRESHOLD)
        return names[choice.index], choice.feasible

    selected = {label: select(prefix) for label, prefix in
                (("SACPO", "sacpo_"), ("SACPO reversed", "reversed_"), ("Safe-RLHF", "safe_rlhf_"))}
    sacpo_names = [n for n in rows if n.startswith("sacpo_")]
    rlhf_names = [n for n in rows if n.startswith("safe_rlhf_")]
    dominated = {n: [s for s in sacpo_names if rows[s]["expected_reward"] > rows[n]["expected_reward"]
                     and rows[s]["expected_safety"] > rows[n]["expected_safety"]] for n in rlhf_names}
    results = {
        "settings": {"quick": args.quick, "pairs_per_objective": n_pairs, "steps_per_stage": n_steps,
                     "batch_size": batch_size, "learning_rate": learning_rate, "beta": BETA,
                     "lambdas": lambdas, "qs": QS, "lambda_bar": lambda_bar, "threshold": THRESHOLD,
                     "model": "small (d=32, 1 layer)",
                     "safe_rlhf": {"n_iterations": rlhf_config.n_iterations,
                                   "ppo_epochs": rlhf_config.ppo_epochs,
                                   "rollout_batch": rlhf_config.rollout_batch, "cost_limits": cost_limits,
                                   "sft_expected_learned_cost": sft_cost}},
        "rows": rows, "timing": timing,
        "safe_rlhf_seconds": {"score_models": score_seconds, "ppo_grid": ppo_seconds},
        "merge_gaps": {"q": QS, "weight": gaps.weight_merge, "token_logit": gaps.token_logit_merge,
                       "sequence_logprob": gaps.sequence_logprob_merge},
        "selected": {label: {"row": name, "feasible": feasible} for label,
                     (name, feasible) in selected.items()},
        "safe_rlhf_points_dominated_by_sacpo": dominated,
        "lambda_star_exact_dual": lambda_star,
        "optimum_at_lambda_star": exact_point(task, optimum_table(task, BETA, lambda_star)),
        "front": front, "total_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sacpo.json").write_text(json.dumps(to_jsonable(results), indent=2))
    (args.out / "sacpo.md").write_text(markdown(results))
    groups = {}
    for row in rows.values():
        rewards, safeties = groups.setdefault(row["method"], ([], []))
        rewards.append(row["expected_reward"])
        safeties.append(row["expected_safety"])
    plot_plane(args.out / "sacpo.png", front, groups, THRESHOLD,
               f"synthetic safety language, β={BETA:g}, {n_pairs} pairs, {n_steps} steps/stage")
    print(markdown(results))


def markdown(results: dict) -> str:
    s, t = results["settings"], results["timing"]
    lines = [
        "# SACPO on the synthetic safety language (exact oracle)", "",
        f"Generated by `benchmarks/sacpo.py{' --quick' if s['quick'] else ''}`. Model: {s['model']}; "
        f"{s['pairs_per_objective']} preference pairs per objective; {s['steps_per_stage']} Adam steps per "
        "stage, "
        f"batch {s['batch_size']}; β = {s['beta']:g}; threshold E[g] ≥ {s['threshold']:g}. "
        "All E[r], E[g] and KL values are exact (enumeration of the 85 responses of each of the 7 "
        "prompts).", "",
        "`KL→π*`: KL(π ‖ π*_{r+λg}) to the exact optimum at the row's λ. `front gap`: exact front's E[r] at "
        "the row's E[g] minus the row's E[r] (negative = above the β-regularised front, i.e. more reward "
        "bought with more KL). `steps`: policy gradient steps.", "",
        "| method | setting | E[r] | E[g] | KL→SFT | KL→π* | front gap | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"].values():
        kl_opt = f"{row['kl_to_optimum']:.3f}" if "kl_to_optimum" in row else "–"
        gap = row["front_reward_gap"]
        gap_text = "–" if gap is None or not np.isfinite(gap) else f"{gap:+.3f}"
        extra = f" (+{row['score_model_steps']} RM/CM)" if "score_model_steps" in row else ""
        lines.append(f"| {row['method']} | {row['setting']} | {row['expected_reward']:.3f} | "
                     f"{row['expected_safety']:.3f} "
                     f"| {row['kl_to_sft']:.3f} | {kl_opt} | {gap_text} | {row['gradient_steps']}{extra} |")
    lines += ["", "**Selected** (best exact E[r] with E[g] ≥ threshold):", ""]
    for label, choice in results["selected"].items():
        row = results["rows"][choice["row"]]
        lines.append(f"- {label}: {row['setting']} → E[r] = {row['expected_reward']:.3f}, E[g] = "
                     f"{row['expected_safety']:.3f} (feasible: {choice['feasible']})")
    opt = results["optimum_at_lambda_star"]
    lines.append(f"- exact optimum at λ* = {results['lambda_star_exact_dual']:.3f} (exact dual): "
                 f"E[r] = {opt['expected_reward']:.3f}, E[g] = {opt['expected_safety']:.3f}")
    dominated = results["safe_rlhf_points_dominated_by_sacpo"]
    n_dominated = sum(bool(v) for v in dominated.values())
    lines += ["",
              f"Safe-RLHF points dominated by some SACPO point (higher E[r] *and* E[g]): {n_dominated} of "
              f"{len(dominated)}.", ""]
    gaps = results["merge_gaps"]
    lines += ["**P-SACPO merge gap** KL(merged ‖ π*_{r+qλ̄g}), λ̄ = "
              f"{s['lambda_bar']:g}:", "",
              "| q | weight merge | token-logit merge | sequence log-prob merge |",
              "|---|---|---|---|"]
    for i, q in enumerate(gaps["q"]):
        lines.append(f"| {q:g} | {float(gaps['weight'][i]):.4f} | {float(gaps['token_logit'][i]):.4f} | "
                     f"{float(gaps['sequence_logprob'][i]):.4f} |")
    lines += ["",
              f"**Wall time** of the {t['grid_points']}-point SACPO grid (same process, same data): vmapped "
              f"{t['vmapped_steady_s']:.1f} s vs one by one {t['sequential_steady_s']:.1f} s after "
              f"compilation (speed-up ×{t['steady_speedup']:.2f}); including compilation "
              f"{t['vmapped_first_call_s']:.1f} s vs "
              f"{t['sequential_total_incl_compile_s']:.1f} s. Safe-RLHF: score models "
              f"{results['safe_rlhf_seconds']['score_models']:.1f} s, PPO grid of "
              f"{len(s['safe_rlhf']['cost_limits'])} cost limits "
              f"{results['safe_rlhf_seconds']['ppo_grid']:.1f} s "
              "(incl. compilation). Total "
              f"{results['total_seconds']:.0f} s on a shared 2-core CPU.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
