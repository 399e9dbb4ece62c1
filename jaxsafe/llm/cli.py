"""``jaxsafe align sacpo``: SACPO on the synthetic safety language, exact evaluation, a run directory.

    jaxsafe align sacpo --beta 0.5 --lambdas 0.5 1 2 4 --pairs 16384 --steps 400 --seeds 2 --out runs/sacpo
    jaxsafe align sacpo --quick --out runs/sacpo-quick          # small model, fewer pairs and steps

Pipeline: SFT a small decoder on the hand-made base behaviour, sample helpfulness and
safety preference pairs from it (Bradley-Terry labels on the true r and g), then run the
stepwise pipeline for every (lambda, seed) as one vmapped program: DPO (or KTO) on
helpfulness with ``beta``, then on safety from that model with ``beta / lambda``
(``--order safety-first`` reverses it). Every output is scored exactly by enumeration.

Writes ``config.json``; ``metrics.jsonl`` (one row per grid point and logged step: ``run``,
``seed``, ``lagrange_multiplier``, ``step``, the stage losses); ``summary.json`` (per grid
point: exact E[r], E[g], KL to the exact optimum pi*_{r + lambda g} and to the SFT model;
the step-1 model; lambda* from the exact dual; the selected feasible point) and
``plane.png`` (helpfulness-safety plane with the exact optimal front).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.llm import model as model_lib
from jaxsafe.llm import sacpo
from jaxsafe.llm import train as train_lib
from jaxsafe.llm.tasks import safety_language as lang
from jaxsafe.logging import RunDir, summarize

MODEL_SIZES = {
    "small": dict(d_model=32, n_layers=1, d_ff=128),  # ~20k parameters
    "tiny": dict(d_model=64, n_layers=2, d_ff=256),  # the "tiny" preset
}
ORDERS = {"reward-first": ("reward", "safety"), "safety-first": ("safety", "reward")}
LOSSES = ("dpo", "kto")


# ----------------------------------------------------------------------------- the synthetic task


class SyntheticTask(NamedTuple):
    """An SFT policy on the safety language with its preference data and exact oracle.

    graphdef, sft_params: the SFT decoder. sft_table [7, 85]: its exact log-probs.
    reward_pairs / safety_pairs: PreferenceBatch [N] sampled from the SFT policy with BT labels.
    safety_ids: dict of prompt / chosen / rejected indices of the safety pairs.
    reward [7, 85], safety [7, 85]: true r and g. prompt_probs [7].
    """

    graphdef: object
    sft_params: object
    sft_table: jax.Array
    reward_pairs: object
    safety_pairs: object
    safety_ids: dict
    reward: jax.Array
    safety: jax.Array
    prompt_probs: jax.Array


logprob_table = jax.jit(lang.response_logprob_table, static_argnums=0)


def prepare_task(key: jax.Array, n_pairs: int, model_size: str = "small", sft_steps: int = 300,
                 sft_examples: int = 8192) -> SyntheticTask:
    """SFT a decoder of ``model_size`` on :func:`lang.sft_corpus`, then sample ``n_pairs`` pairs per objective."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size: must be one of {sorted(MODEL_SIZES)}, got {model_size!r}")
    if n_pairs < 2:
        raise ValueError(f"n_pairs: must be >= 2, got {n_pairs}")
    init_key, corpus_key, sft_key, reward_key, safety_key = jax.random.split(key, 5)
    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8, **MODEL_SIZES[model_size])
    graphdef, params = model_lib.init_params(config, init_key)
    corpus = lang.sft_corpus(corpus_key, sft_examples)
    sft_params, _ = train_lib.train_sft(graphdef, params, corpus, sft_key, n_steps=sft_steps, batch_size=128,
                                        learning_rate=3e-3, vocab_mask=lang.response_vocab_mask())
    table = logprob_table(graphdef, sft_params)
    prompt_probs = lang.prompt_distribution()
    reward_pairs, _ = lang.preference_pairs(reward_key, table, prompt_probs, n_pairs, "reward")
    safety_pairs, safety_ids = lang.preference_pairs(safety_key, table, prompt_probs, n_pairs, "safety")
    reward, safety = (jnp.asarray(t) for t in lang.reward_tables())
    return SyntheticTask(graphdef, sft_params, table, reward_pairs, safety_pairs, safety_ids, reward, safety,
                         prompt_probs)


def stage_datasets(task: SyntheticTask, loss: str, key: jax.Array) -> dict:
    """``{"reward": ..., "safety": ...}``: the pairs (DPO) or unpaired data (KTO, SACPO-repo labelling:
    helpfulness chosen/rejected -> desirable/undesirable; safety: each response by its own g >= 0)."""
    if loss == "dpo":
        return {"reward": task.reward_pairs, "safety": task.safety_pairs}
    if loss != "kto":
        raise ValueError(f"loss: must be one of {LOSSES}, got {loss!r}")
    reward_key, safety_key = jax.random.split(key)
    pairs, ids = task.safety_pairs, task.safety_ids
    tokens = jnp.concatenate([pairs.chosen_tokens, pairs.rejected_tokens])
    attention_mask = jnp.concatenate([pairs.chosen_attention_mask, pairs.rejected_attention_mask])
    response_mask = jnp.concatenate([pairs.chosen_response_mask, pairs.rejected_response_mask])
    prompts = jnp.concatenate([ids["prompt_ids"], ids["prompt_ids"]])
    responses = jnp.concatenate([ids["chosen_ids"], ids["rejected_ids"]])
    safe = task.safety[prompts, responses] >= 0
    return {"reward": sacpo.unpaired_from_pairs(task.reward_pairs, reward_key),
            "safety": sacpo.unpaired_batch(tokens, attention_mask, response_mask, safe, safety_key)}


def exact_point(task: SyntheticTask, table: jax.Array, target: jax.Array | None = None) -> dict:
    """Exact E[r], E[g], KL to the SFT policy and (if given) to ``target`` of a log-prob table [7, 85]."""
    point = {"expected_reward": float(lang.expected_value(table, task.reward, task.prompt_probs)),
             "expected_safety": float(lang.expected_value(table, task.safety, task.prompt_probs)),
             "kl_to_sft": float(lang.kl_divergence(table, task.sft_table, task.prompt_probs))}
    if target is not None:
        point["kl_to_optimum"] = float(lang.kl_divergence(table, target, task.prompt_probs))
    return point


def optimum_table(task: SyntheticTask, beta: float, lagrange_multiplier: float) -> jax.Array:
    """Exact ``log pi*_{r + lambda g}`` [7, 85] relative to the SFT policy."""
    return lang.optimal_policy_logprobs(task.sft_table, task.reward, task.safety, beta, lagrange_multiplier)


def exact_front(task: SyntheticTask, beta: float, multipliers=None) -> dict:
    """The exact optimal front: (E[r], E[g]) of pi*_{r + lambda g} over a lambda grid."""
    multipliers = np.concatenate([[0.0], np.geomspace(0.05, 50.0, 60)]) if multipliers is None else multipliers
    points = [exact_point(task, optimum_table(task, beta, float(m))) for m in multipliers]
    return {"lagrange_multiplier": list(map(float, multipliers)),
            "expected_reward": [p["expected_reward"] for p in points],
            "expected_safety": [p["expected_safety"] for p in points]}


def front_reward_at(front: dict, expected_safety: float) -> float:
    """The exact front's E[r] at a given E[g] (linear interpolation; NaN outside the front's range)."""
    safeties, rewards = np.asarray(front["expected_safety"]), np.asarray(front["expected_reward"])
    order = np.argsort(safeties)
    safeties, rewards = safeties[order], rewards[order]
    if not safeties[0] <= expected_safety <= safeties[-1]:
        return float("nan")
    return float(np.interp(expected_safety, safeties, rewards))


def plot_plane(path, front: dict, groups: dict, threshold: float | None = None, title: str = "") -> None:
    """Helpfulness-safety plane: the exact front as a line and ``groups[label] = (E[r] list, E[g] list)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(front["expected_safety"], front["expected_reward"], "k-", lw=1.5, label="exact optimum (β fixed)")
    markers = iter("os^vD<>pXh*P")
    for label, (rewards, safeties) in groups.items():
        ax.plot(safeties, rewards, next(markers, "o"), ls="", ms=7, alpha=0.85, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="grey", ls=":", lw=1, label=f"threshold E[g] = {threshold:g}")
    ax.set_xlabel("harmlessness: exact E[g]")
    ax.set_ylabel("helpfulness: exact E[r]")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------- the command


@dataclasses.dataclass(frozen=True)
class AlignArgs:
    """Validated command-line settings of ``jaxsafe align sacpo`` (ValueError names the flag)."""

    beta: float
    lambdas: tuple[float, ...]
    pairs: int
    steps: int
    seeds: int
    threshold: float
    order: str
    loss: str
    batch_size: int
    learning_rate: float
    model: str
    sft_steps: int

    def __post_init__(self):
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"--beta: must be a finite number > 0, got {self.beta}")
        if not self.lambdas or not all(np.isfinite(v) and v > 0 for v in self.lambdas):
            raise ValueError(f"--lambdas: need one or more finite numbers > 0, got {list(self.lambdas)}")
        for flag, value, low in (("--pairs", self.pairs, 2), ("--steps", self.steps, 1), ("--seeds", self.seeds, 1),
                                 ("--batch-size", self.batch_size, 1), ("--sft-steps", self.sft_steps, 1)):
            if value < low:
                raise ValueError(f"{flag}: must be an integer >= {low}, got {value}")
        if self.batch_size > self.pairs:
            raise ValueError(f"--batch-size: must be <= --pairs ({self.pairs}), got {self.batch_size}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"--threshold: must be finite, got {self.threshold}")
        if self.order not in ORDERS:
            raise ValueError(f"--order: must be one of {sorted(ORDERS)}, got {self.order!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss: must be one of {LOSSES}, got {self.loss!r}")
        if self.model not in MODEL_SIZES:
            raise ValueError(f"--model: must be one of {sorted(MODEL_SIZES)}, got {self.model!r}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--lr: must be a finite number > 0, got {self.learning_rate}")


QUICK = dict(pairs=4096, steps=150, sft_steps=150, model="small")


def run_sacpo(args: AlignArgs, out_dir, seed: int = 0, log_every: int = 10) -> dict:
    """Run the SACPO grid described by ``args`` and write a run directory; returns the summary."""
    run_dir = RunDir(out_dir)
    key = jax.random.key(seed)
    task_key, data_key, train_key = jax.random.split(key, 3)
    start = time.perf_counter()
    task = prepare_task(task_key, args.pairs, args.model, args.sft_steps)
    datasets = stage_datasets(task, args.loss, data_key)
    config = sacpo.SACPOConfig(stages=ORDERS[args.order], n_steps=args.steps, batch_size=args.batch_size,
                               learning_rate=args.learning_rate)
    grid = [(lam, s) for lam in args.lambdas for s in range(args.seeds)]
    hparams = sacpo.stack_hparams([args.beta] * len(grid), [lam for lam, _ in grid])
    keys = jax.random.split(train_key, len(grid))
    run_dir.write_config({"algorithm": "sacpo", "task": "safety_language", "args": dataclasses.asdict(args),
                          "config": dataclasses.asdict(config), "grid": [{"lagrange_multiplier": lam, "seed": s}
                                                                         for lam, s in grid],
                          "hparams": hparams._asdict(), "seed": seed})
    train_start = time.perf_counter()
    result = sacpo.run_grid(config, task.graphdef, task.sft_params, datasets, hparams, keys, lang.response_vocab_mask())
    jax.block_until_ready(result)
    train_seconds = time.perf_counter() - train_start

    rows = []
    for index, (lam, s) in enumerate(grid):
        for step in range(0, args.steps, log_every):
            row = {"run": f"lambda={lam:g}", "seed": s, "lagrange_multiplier": lam, "step": step}
            row.update({name: np.asarray(values[index, step]) for name, values in result.metrics.items()})
            rows.append(row)
    run_dir.append_metrics(rows)

    first_stage = config.stages[0]
    points, first = [], []
    for index, (lam, s) in enumerate(grid):
        target = optimum_table(task, args.beta, lam)
        final = logprob_table(task.graphdef, jax.tree.map(lambda x: x[index], result.stage_params[-1]))
        after_first = logprob_table(task.graphdef, jax.tree.map(lambda x: x[index], result.stage_params[0]))
        points.append({"lagrange_multiplier": lam, "seed": s, **exact_point(task, final, target)})
        first.append(exact_point(task, after_first))
    lambda_star = float(sacpo.minimize_dual(task.sft_table, task.reward, task.safety, task.prompt_probs, args.beta,
                                            args.threshold))
    selection = sacpo.select_feasible([p["expected_reward"] for p in points], [p["expected_safety"] for p in points],
                                      args.threshold)
    per_lambda = {}
    for lam in args.lambdas:
        chosen = [p for p in points if p["lagrange_multiplier"] == lam]
        per_lambda[f"{lam:g}"] = {name: summarize(np.array([p[name] for p in chosen]))
                                  for name in ("expected_reward", "expected_safety", "kl_to_optimum", "kl_to_sft")}
    summary = {
        "sft": exact_point(task, task.sft_table),
        f"after_{first_stage}_stage": {name: summarize(np.array([p[name] for p in first]))
                                       for name in ("expected_reward", "expected_safety", "kl_to_sft")},
        "points": points, "per_lambda": per_lambda,
        "lambda_star_exact_dual": lambda_star,
        "optimum_at_lambda_star": exact_point(task, optimum_table(task, args.beta, lambda_star)),
        "selected": {**points[selection.index], "feasible": selection.feasible},
        "threshold": args.threshold, "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    run_dir.write_summary(summary)
    front = exact_front(task, args.beta)
    plot_plane(run_dir.path / "plane.png", front, {
        "SFT": ([summary["sft"]["expected_reward"]], [summary["sft"]["expected_safety"]]),
        f"after {first_stage} stage": ([p["expected_reward"] for p in first], [p["expected_safety"] for p in first]),
        f"SACPO ({args.order}, {args.loss})": ([p["expected_reward"] for p in points],
                                               [p["expected_safety"] for p in points]),
    }, args.threshold, f"SACPO, β={args.beta:g}, λ ∈ {list(args.lambdas)}")
    return summary


def _print_summary(summary: dict) -> None:
    print(f"\n{'lambda':>8} {'seed':>5} {'E[r]':>8} {'E[g]':>8} {'KL(pi||pi*)':>12} {'KL(pi||sft)':>12}")
    for p in summary["points"]:
        print(f"{p['lagrange_multiplier']:>8g} {p['seed']:>5d} {p['expected_reward']:>8.3f} {p['expected_safety']:>8.3f} "
              f"{p['kl_to_optimum']:>12.4f} {p['kl_to_sft']:>12.4f}")
    selected = summary["selected"]
    print(f"\nlambda* (exact dual) = {summary['lambda_star_exact_dual']:.3f}; selected lambda = "
          f"{selected['lagrange_multiplier']:g} (feasible: {selected['feasible']}), "
          f"E[r] = {selected['expected_reward']:.3f}, E[g] = {selected['expected_safety']:.3f}")


def args_from_namespace(namespace: argparse.Namespace) -> AlignArgs:
    """Apply ``--quick`` defaults and validate."""
    values = dict(beta=namespace.beta, lambdas=tuple(namespace.lambdas), pairs=namespace.pairs, steps=namespace.steps,
                  seeds=namespace.seeds, threshold=namespace.threshold, order=namespace.order, loss=namespace.loss,
                  batch_size=namespace.batch_size, learning_rate=namespace.lr, model=namespace.model,
                  sft_steps=namespace.sft_steps)
    if namespace.quick:
        values.update({k: v for k, v in QUICK.items() if getattr(namespace, k.replace("-", "_"), None) is None})
    defaults = dict(pairs=16384, steps=400, sft_steps=300, model="small")
    values.update({k: v for k, v in defaults.items() if values[k] is None})
    return AlignArgs(**values)


def _handle(namespace: argparse.Namespace) -> None:
    try:
        args = args_from_namespace(namespace)
    except ValueError as err:
        namespace.parser.error(str(err))
    out = namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-align-sacpo"
    summary = run_sacpo(args, out, seed=namespace.seed)
    _print_summary(summary)
    print(f"\nrun directory: {out}")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``align`` (with the ``sacpo`` method) on an argparse subparsers object; ``args.func(args)`` runs it."""
    align = subparsers.add_parser("align", help="safety alignment of language models (exact synthetic oracle)")
    methods = align.add_subparsers(dest="method", required=True)
    parser = methods.add_parser("sacpo", help="stepwise alignment: reward first, then safety with beta/lambda",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beta", type=float, default=0.5, help="KL coefficient of the reward stage")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                        help="Lagrange multipliers; the safety stage uses beta / lambda")
    parser.add_argument("--pairs", type=int, default=None, help="preference pairs per objective (16384; quick 4096)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per stage (400; quick 150)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per lambda (vmapped)")
    parser.add_argument("--threshold", type=float, default=0.0, help="safety threshold b in E[g] >= b")
    parser.add_argument("--order", default="reward-first", choices=sorted(ORDERS))
    parser.add_argument("--loss", default="dpo", choices=LOSSES, help="DPO on pairs or KTO on unpaired labels")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of both stages")
    parser.add_argument("--model", default=None, choices=sorted(MODEL_SIZES), help="decoder size (small)")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT steps (300; quick 150)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of data and training")
    parser.add_argument("--quick", action="store_true", help="small budget for a smoke run (about a minute)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-align-sacpo)")
    parser.set_defaults(func=_handle, parser=parser)
    return align


def main(argv=None) -> None:
    """Stand-alone entry point: ``python -m jaxsafe.llm.cli align sacpo ...``."""
    parser = argparse.ArgumentParser(prog="jaxsafe")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subparser(subparsers)
    namespace = parser.parse_args(argv)
    namespace.func(namespace)


if __name__ == "__main__":
    main()
