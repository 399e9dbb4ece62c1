"""``jaxsafe offline mtro RUN_DIR --selector derd_barp``: MTRO's target-return selectors on a trained MGDT.

RUN_DIR is a Multi-Game Decision Transformer run (``jaxsafe train mgdt --problem SUITE:DIR``, on data written by
:func:`jaxsafe.offline.multigame.collect_suite`). Every lane of its newest checkpoint is played on every game under
each ``--selector`` (repeat the flag, or ``all``); the results go to a new run directory: ``results.json``, a
``results.md`` table (IQM of the normalised score with its 95% stratified bootstrap interval, per-game scores) and
``iqm.png`` (IQM with intervals per selector).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["add_arguments", "handle"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``jaxsafe offline mtro``."""
    from jaxsafe.offline.mtro import SELECTORS

    parser.add_argument("run_dir", metavar="RUN_DIR", help="an MGDT run directory (jaxsafe train mgdt)")
    parser.add_argument("--selector", action="append", default=None,
                        help=f"a target-return selector, one of {', '.join(SELECTORS)} or 'all' (repeatable; "
                             f"default all)")
    parser.add_argument("--episodes", type=int, default=16, help="evaluation episodes per game, selector and lane")
    parser.add_argument("--max-steps", type=int, default=None, help="episode cap (default: each game's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results directory (default runs/<time>-offline-mtro)")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=handle, parser=parser)
    return parser


def _selectors(values) -> list[str]:
    from jaxsafe.offline.mtro import SELECTORS

    names = []
    for value in values or ["all"]:
        for name in value.split(","):
            if name == "all":
                names += [n for n in SELECTORS if n not in names]
            elif name not in SELECTORS:
                raise ValueError(f"--selector: one of {', '.join(SELECTORS)} or 'all', got {name!r}")
            elif name not in names:
                names.append(name)
    return names


def handle(namespace: argparse.Namespace) -> int:
    from jaxsafe.logging import RunDir, check_new_run_dir
    from jaxsafe.offline import multigame, mtro
    from jaxsafe.runner import restore_run

    selectors = _selectors(namespace.selector)
    if namespace.episodes < 1:
        raise ValueError(f"--episodes: an integer >= 1, got {namespace.episodes}")
    out_dir = Path(namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-offline-mtro")
    check_new_run_dir(out_dir)
    spec, (algo, data, config, grid, parts), step, state = restore_run(namespace.run_dir)
    if spec.algorithm != "mgdt":
        raise ValueError(f"RUN_DIR: {namespace.run_dir} holds a {spec.algorithm} run; MTRO needs an mgdt run")
    suite, directory = str(spec.problem).split(":")[:2]
    _, cards = multigame.load_suite(suite, directory, list(data.games))
    say = (lambda message: None) if namespace.quiet else (lambda message: print(message, flush=True))
    result = mtro.evaluate_selectors(data, cards, config, state.params, selectors, namespace.episodes,
                                     namespace.max_steps, namespace.seed, say)
    result.update(run_dir=str(namespace.run_dir), checkpoint_step=int(step), suite=suite)
    run = RunDir(out_dir)
    (run.path / "results.json").write_text(json.dumps(result, indent=2))
    header = "| selector | IQM | 95% CI | " + " | ".join(result["games"]) + " |"
    lines = [f"# MTRO selectors on {namespace.run_dir} (checkpoint {int(step)}, {result['lanes']} lanes)", "",
             header, "|---|---|---|" + "---|" * len(result["games"])]
    for name in selectors:
        s = result["summary"][name]
        lines.append(f"| {name} | {s['iqm']:.3f} | [{s['iqm_low']:.3f}, {s['iqm_high']:.3f}] | "
                     + " | ".join(f"{s['per_game'][g]:.3f}" for g in result["games"]) + " |")
    (run.path / "results.md").write_text("\n".join(lines) + "\n")
    figure = mtro.plot_summary(run.path / "iqm.png", {suite: result}, "IQM of normalised score")
    if not namespace.quiet:
        print("\n".join(lines))
        print(f"results: {run.path / 'results.json'}\nfigure: {figure}")
    return 0
