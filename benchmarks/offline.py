"""Offline safe RL benchmark: BC-All, BC-Safe, BCQ-Lag and CDT on datasets collected from our own tasks.

For each task a behaviour ladder (PPO-Lagrangian and CPO at several cost limits, each played clean and noisy:
``jaxsafe.offline.collect.collect_ladder``) gives the dataset, saved with its card and DSRL's dataset figure. Every
learner trains over seeds as one vmapped program (``jit(vmap(train))``), at thresholds 20 and 40 scaled to the
episode length used (``threshold * max_steps / horizon`` where the budget shortens episodes). The thresholds are
BC-Safe's and BCQ-Lag's ``cost_limit``. CDT trains once per task and is evaluated with the conventional fixed
targets: the dataset's best return among episodes within the threshold, and the threshold as the cost. The scores
are DSRL's normalised reward and cost (mean +- std over seeds, each seed from 20 vmapped evaluation episodes).

Budgets (``--budget``):

* ``quick``: one task, tiny sizes (a smoke run);
* ``laptop`` (default): 200-step episodes, a small PPO-Lagrangian/CPO ladder (500k env steps per rung), a 2-layer
  32-d CDT and [64, 64] baselines with 2,000 gradient steps: what a shared, loaded 2-core CPU finishes in under an
  hour per task. The rungs need those 500k steps: at 50k the point robot's policies had learnt safety only in their
  action noise (the thrust saturates at ``|a| > 0.05``, so a Gaussian policy's mean action drives at top speed):
  on SafePointRun every clean rung cost 164 and every safe episode was a noisy one, and no learner that clones or
  conditions on the data could be safe with its mean action;
* ``full``: the issue's sizes: each task's own horizon, OSRL's full-size CDT (3 layers, 8 heads, 128-d, batch 2048,
  1e5 steps) and OSRL's [256, 256] baselines with batch 512 and 1e5 steps (a GPU budget).

Usage::

    nice -n 19 python benchmarks/offline.py --tasks SafePointCircle,SafePointRun   # laptop budget
    python benchmarks/offline.py --budget full                                     # the issue's full budget
    python benchmarks/offline.py --budget quick                                    # smoke run

Writes ``benchmarks/results/offline.json``, ``.md`` and ``.png`` (normalised reward against normalised cost per task)
and one dataset figure per task (``offline_<task>_data.png``); ``--out`` changes the stem. Resumable: each finished
task is kept in ``<stem>_cells/<task>.json`` with its budget and skipped by a rerun with the same budget (``--fresh``
recomputes); the tables gather every stored cell of the budget, so tasks may run in separate processes. The
datasets (``data.npz`` + card) and the trained parameters of every learner are cached in
``runs/offline_bench/<budget>/<task>/``, where ``benchmarks/pls.py`` reads the CDT, BC-Safe and BCQ-Lag of this
benchmark. Training throughput is recorded per sweep (compilation excluded) but the tables do not report it as a
speed: the runs share a loaded machine; ``--throughput`` measures it alone (quiet machine only).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import checkpoint, envs
from jaxsafe.algorithms import get_algorithm
from jaxsafe.learner import train_from_parts
from jaxsafe.offline.collect import collect_ladder, load_card, plot_dataset, save_card
from jaxsafe.offline.dataset import episode_returns, load_npz, save_npz
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.offline.evaluation import make_policy
from jaxsafe.offline.metrics import reward_range, score
from jaxsafe.sweep import make_grid

RESULTS = Path(__file__).parent / "results"
CACHE = Path("runs/offline_bench")
TASKS = ("SafePointCircle", "SafePointRun", "SafeCarGoal1", "SafeHopperVelocity")
ALGORITHMS = ("bc_all", "bc_safe", "bcq_lag", "cdt")
#: Evaluation rows: every learner with its mean action, and the CDT also sampling its Gaussian head.
ROWS = ALGORITHMS + ("cdt_sampled",)
NOMINAL_THRESHOLDS = (20.0, 40.0)

_OSRL_BASELINE = dict(hidden=(256, 256), batch_size=512)
BUDGETS = {
    "full": dict(episodes=50, max_steps=None, algorithms=["ppo_lag", "cpo"], cost_limits=[0, 10, 25, 50, 100],
                 ppo=dict(total_steps=1_000_000, num_envs=16, num_steps=250), updates=100_000,
                 configs={"bc_all": _OSRL_BASELINE, "bc_safe": _OSRL_BASELINE, "bcq_lag": _OSRL_BASELINE,
                          "cdt": dict(context_len=10, d_model=128, n_layers=3, n_heads=8, batch_size=2048,
                                      warmup_steps=500)}),
    "laptop": dict(episodes=20, max_steps=200, algorithms=["ppo_lag", "cpo"], cost_limits=[0, 25, 100],
                   ppo=dict(total_steps=500_000, num_envs=16, num_steps=200, hidden=(64, 64)), updates=2_000,
                   configs={"bc_all": dict(hidden=(64, 64), batch_size=128),
                            "bc_safe": dict(hidden=(64, 64), batch_size=128),
                            "bcq_lag": dict(hidden=(64, 64), batch_size=128, num_samples=5),
                            "cdt": dict(context_len=10, d_model=32, n_layers=2, n_heads=2, batch_size=64,
                                        warmup_steps=50)}),
    "quick": dict(episodes=8, max_steps=100, algorithms=["ppo_lag"], cost_limits=[0, 25, 100],
                  ppo=dict(total_steps=8_000, num_envs=8, num_steps=100, hidden=(32, 32)), updates=300,
                  configs={"bc_all": dict(hidden=(64, 64), batch_size=128), "bc_safe": dict(hidden=(64, 64),
                           batch_size=128), "bcq_lag": dict(hidden=(64, 64), batch_size=128, num_samples=5),
                           "cdt": dict(context_len=10, d_model=32, n_layers=1, n_heads=2, batch_size=64,
                                       warmup_steps=20)}),
}


def make_budget(name: str, ppo_steps=None, max_steps=None, updates=None) -> dict:
    """The named budget with the command-line overrides applied (a JSON-able dict)."""
    if name not in BUDGETS:
        raise ValueError(f"budget: one of {sorted(BUDGETS)}, got {name!r}")
    budget = json.loads(json.dumps(BUDGETS[name]))
    if ppo_steps is not None:
        budget["ppo"]["total_steps"] = int(ppo_steps)
    if max_steps is not None:
        budget["max_steps"] = int(max_steps)
    if updates is not None:
        budget["updates"] = int(updates)
    return budget


def cache_dir(budget_name: str, task: str, cache: Path | None = None) -> Path:
    return (cache or CACHE) / budget_name / task


def episode_length(task: str, budget: dict) -> tuple[int, int]:
    """``(max_steps, horizon)``: the budget's episode length (at most the task's horizon) and the horizon."""
    _, env_params = envs.make(task)
    horizon = int(getattr(env_params, "max_steps", 1000))
    return min(budget["max_steps"] or horizon, horizon), horizon


def thresholds(task: str, budget: dict) -> list[tuple[float, float]]:
    """``[(nominal, threshold)]``: 20 and 40 scaled to the episode length used."""
    max_steps, horizon = episode_length(task, budget)
    return [(nominal, nominal * max_steps / horizon) for nominal in NOMINAL_THRESHOLDS]


def _stamp(budget: dict, seeds=None) -> dict:
    return json.loads(json.dumps(dict(budget=budget) if seeds is None else dict(budget=budget, seeds=seeds)))


def task_data(task: str, budget_name: str, budget: dict, key, figure: Path | None = None, cache: Path | None = None):
    """The task's dataset and card: collected once (``data.npz`` + card in the cache), then loaded. Returns
    ``(dataset, card, max_steps, horizon, collect_seconds)``; ``figure`` draws DSRL's dataset figure."""
    max_steps, horizon = episode_length(task, budget)
    directory = cache_dir(budget_name, task, cache)
    path = directory / "data.npz"
    stamp_file = directory / "data_budget.json"
    data_stamp = _stamp({k: budget[k] for k in ("episodes", "max_steps", "algorithms", "cost_limits", "ppo")})
    if path.is_file() and json.loads(stamp_file.read_text()) == data_stamp:
        dataset, card, seconds = load_npz(path), load_card(path), None
    else:
        if path.is_file():
            raise FileExistsError(f"{path} was collected with another budget; remove {directory} or use --cache")
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        dataset, card = collect_ladder(task, key, budget["episodes"], budget["cost_limits"],
                                       algorithms=budget["algorithms"], train_overrides=budget["ppo"],
                                       max_steps=max_steps, progress=True)
        seconds = time.perf_counter() - start
        save_npz(dataset, path)
        save_card(card, path)
        stamp_file.write_text(json.dumps(data_stamp))
    if figure is not None:
        figure.unlink(missing_ok=True)
        plot_dataset(figure, dataset, card, thresholds=[t for _, t in thresholds(task, budget)])
    return dataset, card, max_steps, horizon, seconds


def learner_fields(name: str, budget: dict, max_steps: int) -> dict:
    fields = dict(budget["configs"][name], num_updates=budget["updates"])
    if name == "cdt":
        fields.update(max_episode_len=max_steps, context_len=min(fields["context_len"], max_steps))
    if name == "bcq_lag":
        fields.update(episode_len=max_steps)
    return fields


def trained(name: str, task: str, dataset, budget_name: str, budget: dict, seeds: int, max_steps: int,
            threshold: float | None = None, cache: Path | None = None):
    """``(config, grid, params, grad_steps_per_second)`` of ``name`` over ``seeds`` seeds (one vmapped sweep), the
    params cached with :mod:`jaxsafe.checkpoint` under the task's cache (``<name>`` or ``<name>_b<threshold>``; the
    speed is ``None`` when the params come from the cache)."""
    algo = get_algorithm(name)
    config = algo.make_config(**learner_fields(name, budget, max_steps))
    fields = {} if threshold is None else {"cost_limit": float(threshold)}
    hparams = algo.hparams_for(config, dataset).replace(**fields).as_arrays().validate()
    grid = make_grid(hparams, seeds=seeds)
    tag = name if threshold is None else f"{name}_b{threshold:g}"
    directory = (cache_dir(budget_name, task, cache) / "models" / f"{tag}_s{seeds}").absolute()
    stamp = _stamp(learner_fields(name, budget, max_steps), seeds)
    train = train_from_parts(algo.make_train_parts(config, dataset))
    if (directory / "budget.json").is_file():
        if json.loads((directory / "budget.json").read_text()) != stamp:
            raise FileExistsError(f"{directory} holds another budget's {name}; remove it or use --cache")
        template = jax.eval_shape(jax.vmap(lambda k, h: train(k, h).params), grid.keys, grid.hparams)
        template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
        _, params = checkpoint.restore(directory / "params", template)
        return config, grid, params, None
    compiled = jax.jit(jax.vmap(train)).lower(grid.keys, grid.hparams).compile()
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(grid.keys, grid.hparams))
    speed = config.num_updates * grid.size / (time.perf_counter() - start)
    checkpoint.save(directory / "params", config.num_updates, result.params)
    (directory / "budget.json").write_text(json.dumps(stamp))
    return config, grid, result.params, speed


def evaluate_lanes(name, config, dataset, params, grid, env, env_params, target_return, threshold, episodes,
                   max_steps, r_min, r_max, seed=100, deterministic=True):
    """DSRL's score (:func:`jaxsafe.offline.metrics.score`) of every lane of a sweep: ``episodes`` evaluation
    episodes per lane (key ``seed + lane``), all lanes in one compiled, vmapped rollout (``deterministic=False``:
    the CDT samples its Gaussian head)."""

    def play(lane_params, lane_hparams, key):
        policy, play_env = make_policy(name, config, dataset, lane_params, lane_hparams, env, env_params,
                                       target_return, threshold, deterministic)
        rollouts = rollout_episodes(play_env, env_params, policy, key, episodes, max_steps)
        return rollouts.returns, rollouts.costs

    keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(grid.size)])
    returns, costs = jax.jit(jax.vmap(play))(params, grid.hparams, keys)
    return [score(np.asarray(r), np.asarray(c), r_min, r_max, threshold) for r, c in zip(returns, costs)]


def conventional_target(dataset, threshold: float) -> float:
    """The CDT's fixed target return: the best dataset return among episodes with cost ``<= threshold``."""
    returns, costs = episode_returns(dataset)
    costs = costs.sum(-1)
    safe = costs <= threshold
    return float(returns[safe].max()) if safe.any() else float(returns.min())


def run_task(task, budget_name, budget, seeds, key, figure=None, cache=None):
    env, env_params = envs.make(task)
    dataset, card, max_steps, horizon, collect_seconds = task_data(task, budget_name, budget, key, figure, cache)
    r_min, r_max = reward_range(dataset)
    rows = []
    for nominal, threshold in thresholds(task, budget):
        target_return = conventional_target(dataset, threshold)
        for row_name in ROWS:
            name = "cdt" if row_name == "cdt_sampled" else row_name
            config, grid, params, speed = trained(name, task, dataset, budget_name, budget, seeds, max_steps,
                                                  None if name in ("bc_all", "cdt") else threshold, cache)
            scores = evaluate_lanes(name, config, dataset, params, grid, env, env_params, target_return, threshold,
                                    20, max_steps, r_min, r_max, deterministic=row_name != "cdt_sampled")
            reward = np.array([s.reward for s in scores])
            cost = np.array([s.cost for s in scores])
            rows.append(dict(task=task, threshold=threshold, nominal_threshold=nominal, algorithm=row_name,
                             reward_mean=float(reward.mean()), reward_std=float(reward.std()),
                             cost_mean=float(cost.mean()), cost_std=float(cost.std()),
                             safe=bool(cost.mean() <= 1.0), seeds_safe=int((cost <= 1.0).sum()),
                             grad_steps_per_second_under_load=speed,
                             target_return=target_return if name == "cdt" else None))
            print(f"{task:<18} b={threshold:<6.1f} {row_name:<11} reward {reward.mean():.3f}±{reward.std():.3f} "
                  f"cost {cost.mean():.3f}±{cost.std():.3f} {'safe' if cost.mean() <= 1 else 'UNSAFE'}", flush=True)
    returns, costs = episode_returns(dataset)
    costs = costs.sum(-1)
    info = dict(task=task, horizon=horizon, max_steps=max_steps, episodes=card["num_episodes"],
                steps=card["num_steps"], return_range=card["return_range"], cost_range=card["cost_range"],
                behaviours=len(card["behaviours"]), collect_seconds_under_load=collect_seconds,
                safe_episodes={f"{nominal:g}": int((costs <= t).sum()) for nominal, t in thresholds(task, budget)},
                frontier_spread=_spread(returns, costs))
    return rows, info


def _spread(returns, costs) -> dict:
    """How the episodes cover the plane: the return range among the cheapest and the costliest thirds."""
    order = np.argsort(costs)
    third = max(1, len(order) // 3)
    return dict(cheap_return_mean=float(returns[order[:third]].mean()),
                costly_return_mean=float(returns[order[-third:]].mean()),
                cost_quartiles=[float(q) for q in np.quantile(costs, [0.25, 0.5, 0.75])])


def plot_scores(path: Path, rows) -> None:
    """One panel per task: each (algorithm, threshold) at its normalised cost and reward, with the safe line."""
    from jaxsafe.plotting import _pyplot

    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4), squeeze=False)
    markers = dict(zip(ROWS, "os^Dv"))
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r["task"] == task):
            colour = "C0" if r["nominal_threshold"] == 20.0 else "C1"
            ax.errorbar(r["cost_mean"], r["reward_mean"], xerr=r["cost_std"], yerr=r["reward_std"],
                        marker=markers[r["algorithm"]], color=colour, ls="", ms=6, capsize=2,
                        label=f"{r['algorithm']} (b={r['nominal_threshold']:g})")
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_title(task)
        ax.set_xlabel("normalised cost (safe <= 1)")
        ax.set_ylabel("normalised reward")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget_note(budget_name: str, budget: dict, seeds: int, infos) -> str:
    cdt = budget["configs"]["cdt"]
    done = [d["task"] for d in infos]
    return (f"budget `{budget_name}`: {len(done)} of the {len(TASKS)} tasks finished ({', '.join(done) or 'none'}); "
            f"{seeds} seeds; behaviour ladder {'+'.join(budget['algorithms'])} at cost limits {budget['cost_limits']} "
            f"(clean and noisy), {budget['ppo']['total_steps']} env steps each, {budget['episodes']} episodes per "
            f"behaviour policy, episodes of {budget['max_steps'] or 'the horizon'} steps; every offline learner "
            f"{budget['updates']} gradient steps; CDT {cdt['n_layers']} layer(s) x {cdt['d_model']}-d, {cdt['n_heads']} "
            f"heads, context {cdt['context_len']}, batch {cdt['batch_size']}; baselines "
            f"{budget['configs']['bc_safe']['hidden']} batch {budget['configs']['bc_safe']['batch_size']}. The full "
            "budget (`--budget full`: horizons, OSRL's sizes, 1e5 steps) was not run.")


def write(out: Path, rows, infos, args, budget):
    meta = dict(budget_name=args.budget, budget=budget, seeds=args.seeds, argv=args.argv,
                platform=platform.platform(), backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()], budget_reached=budget_note(args.budget, budget, args.seeds,
                                                                                     infos),
                note="grad_steps_per_second_under_load was measured on a shared, loaded 2-core machine: not a speed "
                     "claim; the throughput comparison with OSRL's PyTorch CDT is to be run on a quiet machine")
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, datasets=infos, rows=rows), indent=1))
    lines = ["# Offline safe RL benchmark", "", f"Generated by `benchmarks/offline.py {' '.join(args.argv)}`"
             f" ({meta['backend']}, {args.seeds} seeds). DSRL's normalised reward and cost, mean ± std over seeds "
             "(20 evaluation episodes each); safe = mean normalised cost ≤ 1; `seeds safe` counts the seeds whose "
             "own mean is ≤ 1. CDT uses the conventional targets (best safe return in the dataset, cost = "
             "threshold). Thresholds 20 and 40 are scaled to the episode length (`b = nominal × max_steps / "
             "horizon`).", "", f"**Budget reached:** {meta['budget_reached']}", "",
             "Training throughput is not reported here: these runs shared a loaded 2-core machine (the JSON keeps "
             "the loaded figures). The quiet-machine comparison with OSRL's PyTorch CDT is `docs/offline.md`'s "
             "throughput command.", "",
             "| task | b (nominal) | algorithm | norm. reward | norm. cost | safe | seeds safe |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['threshold']:g} ({r['nominal_threshold']:g}) | {r['algorithm']} | "
                     f"{r['reward_mean']:.3f} ± {r['reward_std']:.3f} | {r['cost_mean']:.3f} ± {r['cost_std']:.3f} | "
                     f"{'yes' if r['safe'] else '**no**'} | {r.get('seeds_safe', '-')}/{args.seeds} |")
    lines += ["", "CDT's conventional target return per threshold: " + "; ".join(
        f"{r['task']} b={r['threshold']:g}: R={r['target_return']:.1f}" for r in rows if r["algorithm"] == "cdt"), "",
        "`cdt_sampled` is the same CDT sampling its Gaussian head instead of playing its mean (the `cdt` row, "
        "OSRL's evaluation rule).", "",
        "| dataset | behaviours | episodes | steps | max_steps (horizon) | return range | cost range | "
        "safe episodes (b20 / b40) | figure |", "|---|---|---|---|---|---|---|---|---|"]
    for d in infos:
        safe = d.get("safe_episodes", {})
        lines.append(f"| {d['task']} | {d.get('behaviours', '-')} | {d['episodes']} | {d['steps']} | {d['max_steps']} "
                     f"({d['horizon']}) | {d['return_range'][0]:.1f} .. {d['return_range'][1]:.1f} | "
                     f"{d['cost_range'][0]:.1f} .. {d['cost_range'][1]:.1f} | {safe.get('20', '-')} / "
                     f"{safe.get('40', '-')} | `{out.name}_{d['task']}_data.png` |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if rows:
        plot_scores(out.with_suffix(".png"), rows)


def throughput(args, budget) -> None:
    """Gradient steps per second of each learner alone (one vmapped sweep over seeds, compilation excluded) on a
    synthetic dataset of the first task's shapes: run on a quiet machine."""
    from jaxsafe.offline.dataset import collect_dataset
    from jaxsafe.policy import stateless

    task = (args.tasks or TASKS[0]).split(",")[0]
    env, env_params = envs.make(task)
    max_steps, _ = episode_length(task, budget)
    space = env.action_space(env_params)
    policy = stateless(lambda obs, key: jax.random.uniform(key, space.shape, minval=space.low, maxval=space.high))
    dataset = collect_dataset(env, env_params, policy, jax.random.PRNGKey(0), 20, max_steps)
    for name in args.learners:
        algo = get_algorithm(name)
        config = algo.make_config(**learner_fields(name, budget, max_steps))
        hparams = algo.hparams_for(config, dataset).as_arrays().validate()
        grid = make_grid(hparams, seeds=args.seeds)
        compiled = jax.jit(jax.vmap(train_from_parts(algo.make_train_parts(config, dataset)))).lower(
            grid.keys, grid.hparams).compile()
        start = time.perf_counter()
        jax.block_until_ready(compiled(grid.keys, grid.hparams))
        elapsed = time.perf_counter() - start
        print(json.dumps(dict(task=task, algorithm=name, backend=jax.default_backend(), seeds=grid.size,
                              updates=config.num_updates, seconds=elapsed,
                              grad_steps_per_second=config.num_updates * grid.size / elapsed,
                              config=learner_fields(name, budget, max_steps))), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="laptop", choices=sorted(BUDGETS))
    parser.add_argument("--quick", action="store_true", help="same as --budget quick")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: the four; quick: one)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ppo-steps", type=int, default=None, help="behaviour PPO/CPO env steps per cost limit")
    parser.add_argument("--max-steps", type=int, default=None, help="episode length of the dataset and evaluation")
    parser.add_argument("--updates", type=int, default=None, help="gradient steps of every offline learner")
    parser.add_argument("--out", default=str(RESULTS / "offline"))
    parser.add_argument("--cache", default=None, help=f"dataset/model cache (default {CACHE})")
    parser.add_argument("--fresh", action="store_true", help="recompute tasks that have a stored cell")
    parser.add_argument("--throughput", action="store_true",
                        help="only time each learner's training alone (quiet machine only) and print JSON lines")
    parser.add_argument("--learners", default=",".join(ALGORITHMS),
                        help=f"comma-separated learners --throughput times (default: {','.join(ALGORITHMS)})")
    args = parser.parse_args(argv)
    args.learners = args.learners.split(",")
    unknown = sorted(set(args.learners) - set(ALGORITHMS))
    if unknown:
        parser.error(f"--learners: each one of {', '.join(ALGORITHMS)}, got {', '.join(unknown)}")
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.quick:
        args.budget = "quick"
    budget = make_budget(args.budget, args.ppo_steps, args.max_steps, args.updates)
    if args.throughput:
        return throughput(args, budget)
    cache = Path(args.cache) if args.cache else None
    tasks = args.tasks.split(",") if args.tasks else (["SafePointCircle"] if args.budget == "quick" else list(TASKS))
    out = Path(args.out)
    cells = out.parent / f"{out.name}_cells"
    cells.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(budget, args.seeds)

    def stored(task):
        cell = cells / f"{task}.json"
        data = json.loads(cell.read_text()) if cell.is_file() else None
        return data if data is not None and data["stamp"] == stamp else None

    for i, task in enumerate(tasks):
        if stored(task) is not None and not args.fresh:
            print(f"{task}: stored result ({cells / (task + '.json')})", flush=True)
        else:
            key = jax.random.PRNGKey(TASKS.index(task) if task in TASKS else 100 + i)
            task_rows, info = run_task(task, args.budget, budget, args.seeds, key,
                                       figure=out.parent / f"{out.name}_{task}_data.png", cache=cache)
            (cells / f"{task}.json").write_text(json.dumps(dict(stamp=stamp, rows=task_rows, info=info), indent=1))
        # the tables gather every task stored with this budget (other processes may have added some)
        done = [s for s in (stored(t) for t in TASKS + tuple(t for t in tasks if t not in TASKS)) if s is not None]
        write(out, [r for s in done for r in s["rows"]], [s["info"] for s in done], args, budget)
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
