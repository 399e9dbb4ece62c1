"""The ``jaxsafe`` command.

::

    jaxsafe list
    jaxsafe train ALGO --problem NAME [--seeds N] [--steps N] [--set field=value ...] [--out DIR] [--resume]
    jaxsafe sweep ALGO --problem NAME --grid field=v1,v2 [--grid ...] [--seeds N] [--steps N] [--out DIR]
    jaxsafe eval RUN_DIR [--episodes N] [--deterministic]
    jaxsafe flip RUN_DIR --budget B1,B2
    jaxsafe demo [--out DIR] [--quick]
    jaxsafe bilevel ...          (bi-level RL / BC-HG; see `jaxsafe bilevel --help`)
    jaxsafe align ...            (constrained alignment; see `jaxsafe align --help`)

``train`` and ``sweep`` serve every registered algorithm (``jaxsafe list``): the RL learners on environments
(``--env`` is a synonym of ``--problem``), the bi-level estimators on bi-level problems, the alignment methods on
alignment tasks. A new run never writes into an existing directory; ``--resume --out DIR`` continues one.
Every bad input is reported before anything compiles, as one line ``jaxsafe: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{flag} expects field=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _grid(items: list[str]) -> dict[str, list[float]]:
    grid = {}
    for key, values in _key_values(items, "--grid").items():
        try:
            grid[key] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--grid {key}={values}: expected comma-separated numbers") from None
        if not grid[key]:
            raise ValueError(f"--grid {key}= has no values")
    return grid


def _default_out(command: str, algorithm: str, problem: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{command}-{algorithm}-{problem}"


def _format(value) -> str:
    if isinstance(value, dict):
        return f"{value['mean']:.3g} ± {value['std']:.2g}" if np.ndim(value["mean"]) == 0 else \
            "[" + ", ".join(f"{m:.3g}" for m in np.ravel(value["mean"])) + "]"
    return str(value)


def _print_summary(summary: dict, metrics: tuple[str, ...]) -> None:
    metrics = [m for m in metrics if any(m in p for p in summary["points"])]
    print("\n" + f"{'setting':<28}" + "".join(f" {m + ' (mean ± std)':>28}" for m in metrics))
    for point in summary["points"]:
        setting = ", ".join(f"{k}={v:g}" for k, v in point["setting"].items()) or "-"
        print(f"{setting:<28}" + "".join(f" {_format(point[m]):>28}" for m in metrics))


def _train(args, grid: dict) -> int:
    from jaxsafe import distributed, runner
    from jaxsafe.algorithms import get_algorithm

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)

    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out RUN_DIR (the run to continue)")
        result = runner.resume_training(args.out, progress=not args.quiet)
    else:
        overrides = _key_values(args.set, "--set")
        if args.steps is not None:
            import dataclasses

            fields = [f.name for f in dataclasses.fields(get_algorithm(args.algorithm).config_cls)]
            if "total_steps" not in fields:
                raise ValueError(f"--steps sets total_steps, which {args.algorithm} does not have; set its loop "
                                 f"counts with --set (config fields: {', '.join(fields)})")
            overrides["total_steps"] = str(args.steps)
        problem_overrides = {k: _maybe_number(v) for k, v in _key_values(args.problem_set, "--problem-set").items()}
        spec = runner.make_spec(args.algorithm, args.problem, seeds=args.seeds, grid=grid, overrides=overrides,
                                problem_overrides=problem_overrides, num_chunks=args.chunks,
                                keep_checkpoints=args.keep_checkpoints, preset=not args.no_preset)
        preset_name = get_algorithm(args.algorithm).preset(args.problem)[0] if not args.no_preset else None
        if preset_name and not args.quiet:
            print(f"{args.problem}: the {preset_name!r} preset of {args.algorithm} (docs/safety_suite.md; "
                  f"--set overrides a field, --no-preset ignores it)")
        out = Path(args.out) if args.out else _default_out(args.command, args.algorithm, args.problem)
        result = runner.run_training(spec, out, progress=not args.quiet)
    algo = get_algorithm(result.summary["algorithm"])
    _print_summary(result.summary, tuple(dict.fromkeys((*algo.curve_metrics, "multiplier"))))
    print(f"\nrun directory: {result.run_dir.path}")
    return 0


def _maybe_number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def cmd_list(args) -> int:
    from jaxsafe.algorithms import get_algorithm, list_algorithms

    spaces = {}
    for name in list_algorithms():
        algo = get_algorithm(name)
        spaces.setdefault(algo.problems.kind, (algo.problems, []))[1].append(algo)
    for kind, (space, algos) in spaces.items():
        print(f"algorithms on a {kind}:")
        for algo in algos:
            print(f"  {algo.name:<28} {algo.description}")
        print(f"{kind}s (--problem):")
        for name, text in space.describe().items():
            print(f"  {name:<28} {text}")
    return 0


def cmd_train(args) -> int:
    return _train(args, {})


def cmd_sweep(args) -> int:
    grid = _grid(args.grid)
    if not grid:
        raise ValueError("sweep needs at least one --grid field=v1,v2")
    return _train(args, grid)


def cmd_eval(args) -> int:
    from jaxsafe import runner

    rows = runner.evaluate_run(args.run_dir, episodes=args.episodes, max_steps=args.max_steps,
                               deterministic=args.deterministic)
    for row in rows:
        print(json.dumps(row))
    return 0


def cmd_flip(args) -> int:
    from jaxsafe import runner
    from jaxsafe.rl import flipping

    budgets = [float(b) for b in args.budget.split(",")]
    rows = flipping.mix_run(runner.load_run(args.run_dir), budgets, episodes=args.episodes,
                            max_steps=args.max_steps, modes=args.mode.split(","), window=args.window, seed=args.seed)
    for row in rows:
        print(json.dumps(row))
    return 0


def cmd_demo(args) -> int:
    from jaxsafe import demo

    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-demo"
    demo.main(out_dir=out, quick=args.quick, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsafe", description="Safe RL and safety alignment in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list environments and algorithms").set_defaults(func=cmd_list)

    for name, func, helptext in (("train", cmd_train, "train one configuration over seeds"),
                                 ("sweep", cmd_sweep, "train a grid of hparams x seeds as one program")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("algorithm", nargs="?", default=None, help="see `jaxsafe list`")
        p.add_argument("--problem", "--env", dest="problem",
                       help="what to train on: an environment, bi-level problem or alignment task (`jaxsafe list`)")
        p.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
        p.add_argument("--steps", type=int, default=None, help="total env steps per run")
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="config or hparams field, e.g. --set cost_limit=10 --set num_envs=32")
        p.add_argument("--problem-set", "--env-set", dest="problem_set", action="append", default=[],
                       metavar="FIELD=VALUE", help="problem (environment) override, e.g. --env-set cost_x_limit=0.5")
        p.add_argument("--out", default=None, help="a new run directory (default runs/<time>-<command>-<algo>-<problem>)")
        p.add_argument("--chunks", type=int, default=20, help="checkpoints/log rows per run (default 20)")
        p.add_argument("--keep-checkpoints", type=int, default=2, metavar="N",
                       help="chunk checkpoints kept on disk, the newest (default 2; 0 keeps every chunk's)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        p.add_argument("--no-preset", action="store_true",
                       help="start from the learner's own defaults, not the task's preset (jaxsafe.rl.presets)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        multi = p.add_argument_group("several processes or hosts (jax.distributed; see docs/distributed.md)")
        multi.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
        multi.add_argument("--num-processes", type=int, default=None, help="processes in the run")
        multi.add_argument("--process-id", type=int, default=None, help="this process, 0..num-processes-1")
        multi.add_argument("--distributed", action="store_true",
                           help="read the processes from the cluster's environment (SLURM, Cloud TPU)")
        if name == "sweep":
            p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                           help="swept hparams field and its values")
        p.set_defaults(func=func)

    p = sub.add_parser("eval", help="evaluate the newest checkpoint of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--deterministic", action="store_true", help="take the policy's mode instead of sampling")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("flip", help="mix the policies of a cost-limit sweep by the flipping LP and measure them")
    p.add_argument("run_dir", help="a `jaxsafe sweep` (or train) run directory with two or more lanes")
    p.add_argument("--budget", required=True, help="episode-cost budget(s), comma-separated")
    p.add_argument("--episodes", type=int, default=64, help="evaluation episodes per policy and per mixture")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--mode", default="episode,step", help="flip once per 'episode', every 'step', or both")
    p.add_argument("--window", type=int, default=10, help="T of the reported violation probability")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_flip)

    p = sub.add_parser("demo", help="PPO-Lagrangian vs PPO on SafeCartPole: a table and a figure")
    p.add_argument("--out", default=None, help="a new directory (default runs/<time>-demo)")
    p.add_argument("--quick", action="store_true", help="a smaller budget (for tests)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    # Method families add their own subcommands (`jaxsafe bilevel ...`, `jaxsafe align ...`).
    import importlib

    for module_name in ("jaxsafe.bilevel.cli", "jaxsafe.llm.cli", "jaxsafe.offline.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.add_subparser(sub)
    return parser


def _join_processes(argv: list[str] | None) -> None:
    """Join a multi-process run before anything touches a JAX device (building the parser imports the method
    families, some of which create arrays), from the distributed flags of ``train`` / ``sweep``."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("command", nargs="?")
    for flag, kind in (("--coordinator", str), ("--num-processes", int), ("--process-id", int)):
        early.add_argument(flag, type=kind, default=None)
    early.add_argument("--distributed", action="store_true")
    known, _ = early.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.command in ("train", "sweep"):
        from jaxsafe import distributed

        distributed.initialize(known.coordinator, known.num_processes, known.process_id, auto=known.distributed)


def main(argv: list[str] | None = None) -> int:
    try:
        _join_processes(argv)
    except ValueError as err:
        print(f"jaxsafe: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "sweep") and not args.resume:
        if args.algorithm is None or args.problem is None:
            parser.error(f"{args.command} needs ALGO and --problem NAME (see `jaxsafe list`)")
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        parser.exit(2, f"jaxsafe: error: {err}\n")
    except Exception as err:
        from jaxsafe.checkpoint import CheckpointError
        from jaxsafe.runner import RunWriteError, TrainingDiverged

        if isinstance(err, (CheckpointError, TrainingDiverged, RunWriteError)):
            parser.exit(3, f"jaxsafe: error: {err}\n")
        raise


if __name__ == "__main__":
    sys.exit(main())
