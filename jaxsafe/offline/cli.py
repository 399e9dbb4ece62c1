"""``jaxsafe offline collect|train|eval``: datasets from behaviour ladders, training through the generic runner,
evaluation with DSRL's metrics. Wired into ``jaxsafe`` by :func:`add_subparser`."""

from __future__ import annotations

from pathlib import Path

__all__ = ["add_subparser"]


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: a comma-separated list of numbers, got {text!r}") from None


def _checkpoint_choice(text: str) -> str:
    import argparse

    if text in ("latest", "best") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"'latest', 'best' or a chunk number, got {text!r}")


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag}: FIELD=VALUE, got {item!r}")
        field, value = item.split("=", 1)
        try:
            parsed = [int(v) for v in value.split(",")] if "," in value else int(value)
        except ValueError:
            try:
                parsed = float(value)
            except ValueError:
                parsed = value
        out[field] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def cmd_collect(args) -> int:
    import jax

    from jaxsafe.offline import collect
    from jaxsafe.offline.dataset import save_npz

    out = Path(args.out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    for path in (out, collect.card_path(out)):
        if path.exists():
            raise FileExistsError(f"--out: {path} exists (a dataset is never overwritten)")
    overrides = _key_values(args.train_set, "--train-set")
    dataset, card = collect.collect_ladder(
        args.task, jax.random.PRNGKey(args.seed), args.episodes, _floats(args.cost_limits, "--cost-limits"),
        algorithms=[a for a in args.algorithms.split(",") if a], train_overrides=overrides,
        max_steps=args.max_steps, seed=args.seed, progress=not args.quiet)
    save_npz(dataset, out)
    collect.save_card(card, out)
    figure = collect.plot_dataset(out.with_suffix(".png"), dataset, card, thresholds=_floats(args.thresholds,
                                                                                              "--thresholds"))
    print(f"{card['num_episodes']} episodes ({card['num_steps']} steps) of {len(card['behaviours'])} behaviour "
          f"policies on {args.task}; return range {card['return_range']}, cost range {card['cost_range']}")
    print(f"dataset: {out}\ncard: {collect.card_path(out)}\nfigure: {figure}")
    return 0


def cmd_plot(args) -> int:
    from jaxsafe.offline import collect
    from jaxsafe.offline.dataset import load_hdf5, load_npz

    source = Path(args.data)
    dataset = load_hdf5(source) if source.suffix in (".hdf5", ".h5") else load_npz(source)
    card = collect.load_card(source) if collect.card_path(source).exists() else None
    out = Path(args.out) if args.out else source.with_suffix(".png")
    if out.exists():
        raise FileExistsError(f"--out: {out} exists (choose another name)")
    degree = None if args.degree < 0 else args.degree
    collect.plot_dataset(out, dataset, card, thresholds=_floats(args.thresholds, "--thresholds"),
                         frontier_degree=degree)
    print(f"figure: {out}")
    return 0


def cmd_train(args) -> int:
    from jaxsafe.cli import main

    argv = ["train", args.algorithm, "--problem", args.data, "--seeds", str(args.seeds),
            "--chunks", str(args.chunks), "--keep-checkpoints", str(args.keep_checkpoints)]
    for item in args.set:
        argv += ["--set", item]
    if args.out:
        argv += ["--out", args.out]
    if args.quiet:
        argv.append("--quiet")
    return main(argv)


def cmd_eval(args) -> int:
    from jaxsafe.offline.evaluation import evaluate_run

    which = args.checkpoint if args.checkpoint in ("latest", "best") else int(args.checkpoint)
    rows = evaluate_run(args.run_dir, args.target_return, args.target_cost, args.episodes, args.threshold,
                        args.task, args.seed, checkpoint=which, deterministic=not args.sample)
    print(f"{'lane':<40} {'norm. reward':>14} {'norm. cost':>14} {'safe':>5} {'return':>9} {'cost':>8} {'chunk':>5}")
    for row in rows:
        label = ", ".join(f"{k}={v}" for k, v in row.items() if k not in (
            "reward", "reward_std", "cost", "cost_std", "safe", "episode_return", "episode_cost", "threshold",
            "checkpoint_step", "checkpoints_compared"))
        print(f"{label:<40} {row['reward']:>7.3f}±{row['reward_std']:<6.3f} {row['cost']:>7.3f}±"
              f"{row['cost_std']:<6.3f} {str(row['safe']):>5} {row['episode_return']:>9.2f} "
              f"{row['episode_cost']:>8.2f} {row['checkpoint_step']:>5}")
    if which == "best":
        print(f"(best of {rows[0]['checkpoints_compared']} checkpoints per lane: lowest cost, ties by reward)")
    return 0


#: ``jaxsafe offline COMMAND`` for the methods built on the offline learners: (command, module, help), each
#: module with ``add_arguments(parser)`` and ``handle(namespace) -> int`` (see
#: :func:`jaxsafe.llm.cli.add_experiment`).
EXPERIMENTS: tuple[tuple[str, str, str], ...] = (
    ("pls", "jaxsafe.offline.pls_experiment", "PLS: a safe GP search over a trained CDT's target returns"),
    ("mtro", "jaxsafe.offline.mtro_experiment", "MTRO: target-return selectors on a trained multi-game DT"),
    ("ogsrl", "jaxsafe.offline.ogsrl_experiment", "OGSRL: guarded model-based CPO on sepsis-sim / icu-sepsis"),
)


def add_subparser(subparsers) -> None:
    """Add ``offline collect|train|eval`` to the ``jaxsafe`` command's subparsers."""
    offline = subparsers.add_parser("offline", help="offline safe RL: datasets, CDT and baselines (DSRL metrics)")
    sub = offline.add_subparsers(dest="offline_command", required=True)

    p = sub.add_parser("collect", help="collect a dataset from a ladder of behaviour policies")
    p.add_argument("task", help="an environment (`jaxsafe list`)")
    p.add_argument("--episodes", type=int, required=True, help="episodes per behaviour policy")
    p.add_argument("--out", required=True, help="a new .npz file (its card is written beside it as .json)")
    p.add_argument("--cost-limits", default="0,10,25,50,100", help="the ladder's cost limits (comma-separated)")
    p.add_argument("--algorithms", default="ppo_lag", help="behaviour learners, e.g. ppo_lag,cpo")
    p.add_argument("--train-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="behaviour learner config field, e.g. --train-set total_steps=200000")
    p.add_argument("--max-steps", type=int, default=None, help="episode length (default: the task's horizon)")
    p.add_argument("--thresholds", default="20,40", help="cost thresholds drawn on the dataset figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("plot", help="the dataset figure: episode return against cost, by behaviour policy")
    p.add_argument("data", help="a dataset .npz (its card beside it colours by behaviour) or a DSRL .hdf5")
    p.add_argument("--thresholds", default="20,40", help="cost thresholds to draw (comma-separated; '' none)")
    p.add_argument("--degree", type=int, default=4, help="degree of the Pareto frontier fit (-1: no line)")
    p.add_argument("--out", default=None, help="the figure (default: the dataset's name with .png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("train", help="train an offline learner on a dataset file (the generic runner)")
    p.add_argument("algorithm", help="bc_all, bc_safe, bcq_lag or cdt")
    p.add_argument("--data", required=True, help="a dataset .npz file")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="N",
                   help="chunk checkpoints kept (0: all, for `offline eval --checkpoint best`)")
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained offline run with DSRL's normalised reward and cost")
    p.add_argument("run_dir")
    p.add_argument("--target-return", type=float, default=None, help="the CDT's target return")
    p.add_argument("--target-cost", type=float, default=None, help="the CDT's target cost")
    p.add_argument("--threshold", type=float, default=None,
                   help="cost threshold of the normalised cost (default: target cost, or the run's cost_limit)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--checkpoint", default="latest", type=_checkpoint_choice,
                   help="latest, best (OSRL's online selection over the kept checkpoints) or a chunk number")
    p.add_argument("--task", default=None, help="environment (default: the dataset card's task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", action="store_true",
                   help="cdt: sample the Gaussian action head (default: play its mean, OSRL's evaluation)")
    p.set_defaults(func=cmd_eval)

    from jaxsafe.llm.cli import add_experiment

    for command, module_name, help_text in EXPERIMENTS:
        add_experiment(sub, command, module_name, help_text)
