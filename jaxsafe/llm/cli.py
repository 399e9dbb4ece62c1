"""``jaxsafe align sacpo|tsdi|poison``: argparse wiring of the alignment experiments (library functions).

``sacpo`` runs :func:`jaxsafe.llm.sacpo_experiment.run_sacpo`; ``tsdi`` the biased-safety experiment
(:func:`jaxsafe.llm.tsdi_experiment.run_tsdi`) or, given a SACPO run directory, TSDI on its lanes
(:func:`~jaxsafe.llm.tsdi_experiment.debias_run`); ``poison`` the minimum-cost label-flipping attack
(:mod:`jaxsafe.llm.poisoning_experiment`).

    jaxsafe align sacpo --beta 0.5 --lambdas 0.5 1 2 4 --pairs 16384 --steps 400 --seeds 2 --out runs/sacpo
    jaxsafe align sacpo --quick --out runs/sacpo-quick          # small model, fewer pairs and steps

Pipeline (see :mod:`jaxsafe.llm.sacpo_experiment`): SFT a small decoder on the hand-made base behaviour,
sample helpfulness and safety preference pairs from it (Bradley-Terry labels on the true r and g), then run
the stepwise pipeline for every (lambda, seed) as one vmapped program: DPO (or KTO) on helpfulness with
``beta``, then on safety from that model with ``beta / lambda`` (``--order safety-first`` reverses it). Every
output is scored exactly by enumeration. Writes ``config.json``, ``metrics.jsonl``, ``summary.json`` and
``plane.png`` into a new run directory (a non-empty ``--out`` is refused).
"""

from __future__ import annotations

import argparse
import time

from jaxsafe.llm import tsdi_experiment
from jaxsafe.llm.sacpo_experiment import (DEFAULTS, LOSSES, MODEL_SIZES, ORDERS, PROBLEMS, QUICK, AlignArgs,
                                          run_sacpo)


def _print_summary(summary: dict) -> None:
    print(f"\n{'lambda':>8} {'seed':>5} {'E[r]':>8} {'E[g]':>8} {'KL(pi||pi*)':>12} {'KL(pi||sft)':>12}")
    for p in summary["points"]:
        print(f"{p['lagrange_multiplier']:>8g} {p['seed']:>5d} {p['expected_reward']:>8.3f} "
              f"{p['expected_safety']:>8.3f} "
              f"{p['kl_to_optimum']:>12.4f} {p['kl_to_sft']:>12.4f}")
    selected = summary["selected"]
    print(f"\nlambda* (exact dual) = {summary['lambda_star_exact_dual']:.3f}; selected lambda = "
          f"{selected['lagrange_multiplier']:g} (feasible: {selected['feasible']}), "
          f"E[r] = {selected['expected_reward']:.3f}, E[g] = {selected['expected_safety']:.3f}")


def args_from_namespace(namespace: argparse.Namespace) -> AlignArgs:
    """Apply ``--quick`` defaults and validate."""
    values = dict(beta=namespace.beta, lambdas=tuple(namespace.lambdas), pairs=namespace.pairs,
                  steps=namespace.steps, seeds=namespace.seeds, threshold=namespace.threshold,
                  order=namespace.order, loss=namespace.loss, batch_size=namespace.batch_size,
                  learning_rate=namespace.lr, model=namespace.model, sft_steps=namespace.sft_steps,
                  task=namespace.task)
    budget = QUICK if namespace.quick else DEFAULTS
    values.update({k: v for k, v in budget.items() if values[k] is None})
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
    return 0


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``align`` (with the ``sacpo`` method) on an argparse subparsers object; ``args.func(args)``
    runs it."""
    align = subparsers.add_parser("align",
                                  help="safety alignment of language models (exact synthetic oracle)")
    methods = align.add_subparsers(dest="method", required=True)
    parser = methods.add_parser("sacpo",
                                help="stepwise alignment: reward first, then safety with beta/lambda",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="safety_language", choices=sorted(PROBLEMS),
                        help="the synthetic language: 7 prompts x 85 responses, or the larger 20 x 341")
    parser.add_argument("--beta", type=float, default=0.5, help="KL coefficient of the reward stage")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                        help="Lagrange multipliers; the safety stage uses beta / lambda")
    parser.add_argument("--pairs", type=int, default=None,
                        help="preference pairs per objective (16384; quick 4096)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per stage (400; quick 150)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per lambda (vmapped)")
    parser.add_argument("--threshold", type=float, default=0.0, help="safety threshold b in E[g] >= b")
    parser.add_argument("--order", default="reward-first", choices=sorted(ORDERS))
    parser.add_argument("--loss", default="dpo", choices=LOSSES,
                        help="DPO on pairs or KTO on unpaired labels")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of both stages")
    parser.add_argument("--model", default=None, choices=sorted(MODEL_SIZES), help="decoder size (small)")
    parser.add_argument("--sft-steps", type=int, default=None, help="SFT steps (300; quick 150)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of data and training")
    parser.add_argument("--quick", action="store_true", help="small budget for a smoke run (about a minute)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-align-sacpo)")
    parser.set_defaults(func=_handle, parser=parser)
    _add_tsdi(methods)
    for command, module_name, help_text in EXPERIMENTS:
        add_experiment(methods, command, module_name, help_text)
    return align


def _handle_tsdi(namespace: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if namespace.run_dir is not None:
        out = namespace.out or f"{namespace.run_dir.rstrip('/')}-tsdi-{stamp}"
        summary = tsdi_experiment.debias_run(namespace.run_dir, out, positions=(namespace.positions or [1])[0],
                                             prompts=namespace.prompts or 1024,
                                             strengths=namespace.strength or (0.0, 1.0),
                                             pool=(namespace.pool or ["neutral"])[0], seed=namespace.seed)
        for p in summary["points"]:
            print(f"lane {p['lane']} alpha {p['strength']:g}: E[r] {p['expected_reward']:.3f} E[g] "
                  f"{p['expected_safety']:.3f} benign refusal {p['benign_refusal']:.3f}")
    else:
        # --quick's budget, then every flag given (the others keep TSDIArgs' defaults).
        values = dict(tsdi_experiment.QUICK) if namespace.quick else {}
        flags = dict(beta="beta", lambdas="lambdas", seeds="seeds", prompts="prompts", pairs="pairs", steps="steps",
                     sft_steps="sft_steps", strengths="strength", positions="positions", references="reference",
                     pools="pool", refusal_bonus="refusal_bonus")
        for field, flag in flags.items():
            if getattr(namespace, flag) is not None:
                value = getattr(namespace, flag)
                values[field] = tuple(value) if isinstance(value, list) else value
        args = tsdi_experiment.TSDIArgs(**values)
        out = namespace.out or f"runs/{stamp}-align-tsdi"
        summary = tsdi_experiment.run_tsdi(args, out, seed=namespace.seed)
        print(tsdi_experiment.table(summary))
    print(f"\nrun directory: {out}")
    return 0


def _add_tsdi(methods) -> None:
    parser = methods.add_parser("tsdi", help="token-level safety-debiased inference (learning-free)",
                                description=tsdi_experiment.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default=None,
                        help="a SACPO run directory (jaxsafe train|sweep sacpo --problem safety_language); "
                             "without it, the biased-safety experiment runs")
    parser.add_argument("--positions", type=int, nargs="+", default=None,
                        help="L: debiased positions (1 2 3; one value with RUN_DIR)")
    parser.add_argument("--prompts", type=int, default=None, help="N random prompts for the bias (1024)")
    parser.add_argument("--strength", type=float, nargs="+", default=None,
                        help="alpha (0 0.5 1 1.5): 0 is the plain model, 1 the paper's method")
    parser.add_argument("--pool", nargs="+", default=None, choices=sorted(tsdi_experiment.POOLS),
                        help="token pools of the random prompts (neutral topics all)")
    parser.add_argument("--reference", nargs="+", default=None, choices=tsdi_experiment.REFERENCES,
                        help="reference model(s) of the bias (step1 sft)")
    parser.add_argument("--beta", type=float, default=None)
    parser.add_argument("--lambdas", type=float, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sft-steps", type=int, default=None)
    parser.add_argument("--refusal-bonus", type=float, default=None, help="strength of the data's refusal shortcut")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small budget (about a minute)")
    parser.add_argument("--out", default=None, help="a new directory for the results")
    parser.set_defaults(func=_handle_tsdi, parser=parser)


#: ``jaxsafe align COMMAND``: (command, module, help). Each module defines ``add_arguments(parser)`` and
#: ``handle(namespace) -> int`` (exit status); its docstring is the command's description.
EXPERIMENTS: tuple[tuple[str, str, str], ...] = (
    ("poison", "jaxsafe.llm.poisoning_experiment", "minimum-cost label-flipping poisoning of RLHF/DPO (LP)"),
    ("grpo", "jaxsafe.llm.grpo_experiment", "GRPO on verifiable tasks at a token budget H; relative budget xi"),
    ("iama", "jaxsafe.llm.iama_experiment", "inference-aware meta-alignment: train for best-of-N at inference"),
)


def add_experiment(methods, command: str, module_name: str, help_text: str) -> argparse.ArgumentParser:
    """Add one experiment module as a subcommand: its ``add_arguments`` fills the parser, its ``handle`` runs
    it (the parser is passed along as ``namespace.parser`` for ``parser.error``)."""
    import importlib

    module = importlib.import_module(module_name)
    parser = methods.add_parser(command, help=help_text, description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(func=module.handle, parser=parser)
    return parser
