"""``jaxsafe bilevel``: compare hypergradient estimators on one problem over vmapped seeds (a run directory).

    jaxsafe bilevel --problem four_rooms --estimator bchg hpgd_sarsa naive --seeds 10 --iters 500 \
        --samples 100 --out runs/four_rooms

Writes ``config.json``, ``metrics.jsonl`` (one row per estimator, seed and leader iteration: ``run``,
``seed``, ``iteration``, ``steps``, ``leader_value`` and the other metrics), ``summary.json``
(mean/std/min/max of the final leader value, averaged over the last 10% of iterations, per estimator) and
``curves.png``. ``--out`` must be a new (or empty) directory. The work is
:func:`jaxsafe.bilevel.experiment.compare_estimators`; one estimator with checkpoints and resume is
``jaxsafe train bchg --problem four_rooms``.
"""

from __future__ import annotations

import argparse

from jaxsafe.bilevel import problems as problems_lib
from jaxsafe.bilevel.train import ALL_ESTIMATORS


def _handle(args: argparse.Namespace) -> None:
    from jaxsafe.bilevel.experiment import compare_estimators

    compare_estimators(args.problem, args.estimator, args.out, seeds=args.seeds, iterations=args.iters,
                       samples=args.samples, leader_lr=args.leader_lr)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register the ``bilevel`` subcommand on an ``argparse`` subparsers object (``args.func(args)`` runs
    it)."""
    parser = subparsers.add_parser("bilevel", help="bi-level RL: compare BC-HG and baseline estimators",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="four_rooms", choices=sorted(problems_lib.PROBLEMS))
    parser.add_argument("--estimator", nargs="+", default=["bchg"], choices=ALL_ESTIMATORS)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=500, help="leader iterations")
    parser.add_argument("--samples", type=int, default=100, help="sample budget N per leader iteration")
    parser.add_argument("--leader-lr", type=float, default=None,
                        help="override the problem's leader step size")
    parser.add_argument("--out", required=True, help="a new run directory")
    parser.set_defaults(func=_handle)
    return parser
