"""PLS benchmark: a safe GP search over CDT targets against fixed-target CDT, BC-Safe, BCQ-Lag, a naive target
search and CDT fine-tuning, with the same online episode budget (Wachi et al. 2025, Tables 1, 7, 8).

Per task: a behaviour-ladder dataset (:func:`jaxsafe.offline.collect.collect_ladder`), then per seed a CDT, BC-Safe
and BCQ-Lag (vmapped over seeds). Per threshold (20 and 40, scaled to the episode length as in
``benchmarks/offline.py``) and seed, :func:`jaxsafe.offline.pls_experiment.run_comparison` runs PLS (``iterations``
queries of 20 episodes) and its baselines; BC-Safe and BCQ-Lag are deployed for the same number of online
episodes. Reported: DSRL's normalised reward and cost of what each method finally deploys (a fresh 20-episode
evaluation), its lifetime violations (online episodes with cost above the threshold) and the episodes it used.

Usage::

    python benchmarks/pls.py --quick                               # one task, tiny budgets (smoke run)
    python benchmarks/pls.py --tasks SafePointCircle               # laptop budget, one task
    python benchmarks/pls.py                                       # the four tasks of the offline issue
    python benchmarks/pls.py --finetune-episodes 400,40000         # CDT-FT (S) and (L)
    python benchmarks/pls.py --timing                              # split one GP iteration (quiet machine only)

Resumable: datasets and trained models are cached under ``runs/pls_bench/`` and each (task, threshold, seed) cell is
saved to ``benchmarks/results/pls_cells/`` as it finishes and skipped on rerun. Writes ``benchmarks/results/pls.json``,
``.md`` and ``pls_<task>_b<threshold>.png``. Navigation-task results predate issue 23's dynamics change.
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

from jaxsafe import checkpoint, envs, plotting
from jaxsafe.algorithms import get_algorithm
from jaxsafe.learner import train_from_parts
from jaxsafe.logging import to_jsonable
from jaxsafe.offline import pls
from jaxsafe.offline.collect import collect_ladder
from jaxsafe.offline.dataset import load_npz, save_npz
from jaxsafe.offline.evaluation import make_policy
from jaxsafe.offline.metrics import reward_range
from jaxsafe.offline.pls_experiment import CDTSetup, PLSSettings, make_hparams, make_problem, run_comparison
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.sweep import lane, make_grid

RESULTS = Path(__file__).parent / "results"
CELLS = RESULTS / "pls_cells"  # per --out stem: <out>_cells
CACHE = Path("runs/pls_bench")  # per --out stem: runs/<stem>_bench
TASKS = ("SafePointCircle", "SafePointRun", "SafeCarGoal1", "SafeHopperVelocity")
NAVIGATION = ("SafePoint", "SafeCar")

FULL = dict(episodes=50, max_steps=200, ppo=dict(total_steps=48_000, num_envs=16, num_steps=200),
            cost_limits=[0, 10, 25, 50, 100], updates=2_000, iterations=20, grid=(30, 30),
            finetune_round=100, finetune_updates=200,
            configs={"cdt": dict(context_len=10, d_model=32, n_layers=1, n_heads=2, batch_size=64,
                                 warmup_steps=20),
                     "bc_safe": dict(hidden=(64, 64), batch_size=128),
                     "bcq_lag": dict(hidden=(64, 64), batch_size=128, num_samples=5)})
QUICK = dict(FULL, episodes=8, max_steps=60, ppo=dict(total_steps=4_000, num_envs=8, num_steps=60, hidden=(32, 32)),
             cost_limits=[0, 25, 100], updates=100, iterations=4, grid=(8, 8), finetune_round=40,
             finetune_updates=20)


def _train(name, dataset, fields, seeds, hparams_fields):
    algo = get_algorithm(name)
    config = algo.make_config(**fields)
    hparams = algo.hparams_for(config, dataset).replace(**hparams_fields).as_arrays().validate()
    grid = make_grid(hparams, seeds=seeds)
    result = jax.jit(jax.vmap(train_from_parts(algo.make_train_parts(config, dataset))))(grid.keys, grid.hparams)
    return config, grid, jax.block_until_ready(result.params)


def task_data(task, budget, key):
    """The task's dataset (cached) and its episode length."""
    env, env_params = envs.make(task)
    horizon = int(getattr(env_params, "max_steps", 1000))
    max_steps = min(budget["max_steps"] or horizon, horizon)
    path = CACHE / task / "data.npz"
    if path.is_file():
        return load_npz(path), max_steps, horizon
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset, _ = collect_ladder(task, key, budget["episodes"], budget["cost_limits"], train_overrides=budget["ppo"],
                                max_steps=max_steps, progress=True)
    save_npz(dataset, path)
    return dataset, max_steps, horizon


def trained(name, task, dataset, budget, seeds, max_steps, hparams_fields, tag=""):
    """``(config, grid, params)`` of ``name`` over ``seeds`` (params cached with jaxsafe.checkpoint)."""
    fields = dict(budget["configs"][name], num_updates=budget["updates"])
    if name == "cdt":
        fields.update(max_episode_len=max_steps, context_len=min(fields["context_len"], max_steps))
    if name == "bcq_lag":
        fields.update(episode_len=max_steps)
    # the cache names the budget when it is not the default one (a cache never serves another budget)
    budget_tag = "" if (budget["updates"], seeds) == (FULL["updates"], 3) else f"_u{budget['updates']}_s{seeds}"
    directory = (CACHE / task / f"{name}{tag}{budget_tag}").absolute()
    algo = get_algorithm(name)
    config = algo.make_config(**fields)
    hparams = algo.hparams_for(config, dataset).replace(**hparams_fields).as_arrays().validate()
    grid = make_grid(hparams, seeds=seeds)
    if directory.is_dir():
        template = jax.eval_shape(jax.vmap(lambda k, h: train_from_parts(algo.make_train_parts(config, dataset))(k, h)
                                           .params), grid.keys, grid.hparams)
        template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
        _, params = checkpoint.restore(directory, template)
        return config, grid, params
    config, grid, params = _train(name, dataset, fields, seeds, hparams_fields)
    checkpoint.save(directory, budget["updates"], params)
    return config, grid, params


def deploy_offline(name, config, dataset, params, hparams, env, env_params, key, episodes, max_steps, threshold,
                   r_min, r_max, final_episodes=20):
    """An offline baseline deployed for ``episodes`` online episodes (violations) plus a fresh final evaluation."""
    policy, play_env = make_policy(name, config, dataset, params, hparams, env, env_params)
    play = jax.jit(lambda k, n: rollout_episodes(play_env, env_params, policy, k, n, max_steps), static_argnums=1)
    online_key, final_key = jax.random.split(key)
    online = play(online_key, episodes)
    final = play(final_key, final_episodes)
    costs = np.asarray(online.costs)
    span = r_max - r_min
    return dict(episodes=int(episodes), violations=int((costs > threshold).sum()),
                final_reward=float(((np.asarray(final.returns) - r_min) / span).mean()),
                final_cost=float(np.asarray(final.costs).mean() / threshold),
                final_safe=bool(np.asarray(final.costs).mean() <= threshold))


def run_cell(task, nominal, seed_index, budget, args, dataset, max_steps, horizon, models):
    path = CELLS / f"{task}_b{nominal:g}_s{seed_index}.json"
    if path.is_file():
        return json.loads(path.read_text())
    env, env_params = envs.make(task)
    threshold = nominal * max_steps / horizon
    cdt_config, cdt_grid, cdt_params = models["cdt"]
    setup = CDTSetup(cdt_config, dataset, lane(cdt_params, seed_index), lane(cdt_grid.hparams, seed_index), env,
                     env_params, max_steps, task)
    settings = PLSSettings(threshold=float(threshold), iterations=budget["iterations"], grid=budget["grid"],
                           cost_noise=args.cost_noise, reward_noise=args.reward_noise, zeta=args.zeta,
                           finetune_episodes=tuple(args.finetune_episodes),
                           finetune_round_episodes=budget["finetune_round"],
                           finetune_updates=budget["finetune_updates"], seed=seed_index)
    start = time.perf_counter()
    result = run_comparison(settings, setup, progress=True, record_unsafe_seed=True)
    methods = result["methods"]
    r_min, r_max = reward_range(dataset)
    budget_episodes = settings.iterations * settings.episodes_per_query  # the planned budget, even if PLS stopped
    for name in ("bc_safe", "bcq_lag"):
        config, grid, params = models[(name, nominal)]
        methods[name] = deploy_offline(name, config, dataset, lane(params, seed_index), lane(grid.hparams, seed_index),
                                       env, env_params, jax.random.PRNGKey(1000 + seed_index), budget_episodes,
                                       max_steps, threshold, r_min, r_max)
    cell = dict(task=task, nominal_threshold=nominal, threshold=threshold, seed=seed_index, max_steps=max_steps,
                seconds=time.perf_counter() - start, methods=methods, fixed_target=result["fixed_target"],
                targets=result["targets"], seed_mask=result["seed_mask"],
                reward_mean=result["trace"]["reward_mean"][-1], safe=result["trace"]["safe"][-1],
                evaluated=result["targets"][result["trace"]["target_index"]])
    CELLS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(cell)))
    return json.loads(path.read_text())


def timing(task, budget, dataset, max_steps, models, repeats=5):
    """Wall time of one PLS iteration split into the vmapped deployment episodes and the GP update/acquisition."""
    env, env_params = envs.make(task)
    cdt_config, cdt_grid, cdt_params = models["cdt"]
    setup = CDTSetup(cdt_config, dataset, lane(cdt_params, 0), lane(cdt_grid.hparams, 0), env, env_params, max_steps,
                     task)
    settings = PLSSettings(threshold=20.0 * max_steps / 1000, iterations=budget["iterations"], grid=budget["grid"])
    problem = make_problem(settings, setup)
    hparams = make_hparams(settings, problem.targets)
    search = pls.make_search(settings.config(), problem)
    state = search.init(jax.random.PRNGKey(0), hparams)
    for _ in range(3):
        state, _ = jax.jit(search.update)(state, hparams)
    acquire = jax.jit(lambda s: search.acquire(s, hparams)[0])
    evaluate = jax.jit(problem.evaluate)
    jax.block_until_ready(acquire(state)), jax.block_until_ready(evaluate(jax.random.PRNGKey(0), problem.targets[0]))
    gp, episodes = [], []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(acquire(state))
        gp.append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(evaluate(jax.random.PRNGKey(i), problem.targets[i]))
        episodes.append(time.perf_counter() - start)
    gp_s, ep_s = float(np.median(gp)), float(np.median(episodes))
    return dict(task=task, grid=list(budget["grid"]), gp_seconds=gp_s, episodes_seconds=ep_s,
                gp_fraction=gp_s / (gp_s + ep_s))


def _mean_std(values):
    values = np.asarray([v for v in values if v is not None], float)
    return (float(values.mean()), float(values.std())) if values.size else (None, None)


def aggregate(cells):
    """Per (task, threshold, method): mean ± std over seeds of final reward / cost, violations and episodes."""
    rows = {}
    for cell in cells:
        for name, m in cell["methods"].items():
            rows.setdefault((cell["task"], cell["nominal_threshold"], cell["threshold"], name), []).append(m)
    out = []
    for (task, nominal, threshold, name), ms in sorted(rows.items(), key=lambda kv: kv[0][:2]):
        reward, cost = _mean_std([m["final_reward"] for m in ms]), _mean_std([m["final_cost"] for m in ms])
        violations = _mean_std([m["violations"] for m in ms])
        stopped = sum(1 for m in ms if m.get("stopped"))
        out.append(dict(task=task, nominal_threshold=nominal, threshold=threshold, method=name, seeds=len(ms),
                        reward_mean=reward[0], reward_std=reward[1], cost_mean=cost[0], cost_std=cost[1],
                        safe=None if cost[0] is None else bool(cost[0] <= 1.0), violations_mean=violations[0],
                        violations_std=violations[1], episodes=int(np.mean([m["episodes"] for m in ms])),
                        stopped=stopped))
    return out


def _fmt(mean, std, digits=3):
    return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write(out: Path, cells, rows, meta, timings):
    out.with_suffix(".json").write_text(json.dumps(to_jsonable(dict(meta=meta, rows=rows, timing=timings,
                                                                    cells=cells)), indent=1))
    lines = ["# PLS benchmark", "", f"Generated by `benchmarks/pls.py {' '.join(meta['argv'])}` ({meta['backend']}). "
             "Final = a fresh 20-episode evaluation of what each method deploys (DSRL's normalised reward and cost, "
             "mean ± std over seeds; safe = normalised cost ≤ 1). Violations = online episodes with cost above "
             "the threshold, over the episodes listed.", "",
             f"**Budget reached:** {meta['budget_note']}", "",
             "**Navigation-task results (SafePoint*, SafeCar*) predate issue 23's dynamics change and are to be "
             "regenerated after it.**", "",
             "A PLS run whose seed set measured unsafe stops there (the issue's rule); `stopped` counts those seeds "
             "and their final reward/cost is missing from the means.", "",
             "| task | b | method | seeds | final reward | final cost | safe | violations | episodes | stopped |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['threshold']:g} | {r['method']} | {r['seeds']} | "
                     f"{_fmt(r['reward_mean'], r['reward_std'])} | {_fmt(r['cost_mean'], r['cost_std'])} | "
                     f"{'-' if r['safe'] is None else ('yes' if r['safe'] else '**no**')} | "
                     f"{_fmt(r['violations_mean'], r['violations_std'], 1)} | {r['episodes']} | {r['stopped']} |")
    lines += ["", "## Wall time of one GP iteration", ""]
    if timings:
        lines += ["| task | grid | GP update + acquisition (s) | deployment episodes (s) | GP fraction |",
                  "|---|---|---|---|---|"]
        lines += [f"| {t['task']} | {t['grid'][0]}x{t['grid'][1]} | {t['gp_seconds']:.4f} | "
                  f"{t['episodes_seconds']:.3f} | {100 * t['gp_fraction']:.1f}% |" for t in timings]
    else:
        lines.append("Not measured: the split is a speed ratio and the machine was shared with other runs; run "
                     "`python benchmarks/pls.py --timing` on a quiet machine.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def figures(cells):
    for cell in cells:
        if cell["seed"] != 0:
            continue
        curves = {name: (m["curve_episodes"], m["curve_reward"], m["curve_cost"])
                  for name, m in cell["methods"].items() if "curve_episodes" in m}
        stem = CELLS.name[:-len("_cells")]
        plotting.plot_target_search(CELLS.parent / f"{stem}_{cell['task']}_b{cell['nominal_threshold']:g}.png",
                                    np.asarray(cell["targets"]), np.asarray(cell["reward_mean"]),
                                    np.asarray(cell["safe"], bool), np.asarray(cell["seed_mask"], bool),
                                    np.asarray(cell["evaluated"]), curves,
                                    title=f"PLS on {cell['task']}, b = {cell['threshold']:g} (seed 0)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one task, tiny budgets")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: the four, or one if --quick)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--thresholds", default="20,40", help="nominal thresholds (scaled to the episode length)")
    parser.add_argument("--iterations", type=int, default=None, help="PLS queries (20 episodes each)")
    parser.add_argument("--updates", type=int, default=None, help="gradient steps of the offline learners")
    parser.add_argument("--finetune-episodes", default=None, help="CDT-FT budgets, e.g. 400,40000 (quick: 80)")
    parser.add_argument("--reward-noise", type=float, default=0.05)
    parser.add_argument("--cost-noise", type=float, default=0.1)
    parser.add_argument("--zeta", type=float, default=0.2)
    parser.add_argument("--timing", action="store_true", help="also split one GP iteration's wall time")
    parser.add_argument("--out", default=str(RESULTS / "pls"))
    args = parser.parse_args(argv)
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    args.finetune_episodes = [int(v) for v in (args.finetune_episodes or ("80" if args.quick else "400")).split(",")
                              if v]
    global CELLS, CACHE
    CELLS = Path(args.out).parent / f"{Path(args.out).name}_cells"
    CACHE = Path("runs") / f"{Path(args.out).name}{'_quick' if args.quick else ''}_bench"
    budget = dict(QUICK if args.quick else FULL)
    if args.iterations is not None:
        budget["iterations"] = args.iterations
    if args.updates is not None:
        budget["updates"] = args.updates
    tasks = args.tasks.split(",") if args.tasks else (["SafePointCircle"] if args.quick else list(TASKS))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    cells, timings, reached = [], [], []
    meta = dict(argv=argv_list, quick=args.quick, seeds=args.seeds, budget={k: v for k, v in budget.items()},
                finetune_episodes=args.finetune_episodes, platform=platform.platform(),
                backend=jax.default_backend())
    for task_index, task in enumerate(tasks):
        dataset, max_steps, horizon = task_data(task, budget, jax.random.PRNGKey(task_index))
        models = {"cdt": trained("cdt", task, dataset, budget, args.seeds, max_steps, {})}
        for nominal in thresholds:
            threshold = nominal * max_steps / horizon
            for name in ("bc_safe", "bcq_lag"):
                models[(name, nominal)] = trained(name, task, dataset, budget, args.seeds, max_steps,
                                                  {"cost_limit": threshold}, tag=f"_b{nominal:g}")
            for seed_index in range(args.seeds):
                cells.append(run_cell(task, nominal, seed_index, budget, args, dataset, max_steps, horizon, models))
                reached = sorted({(c["task"], c["nominal_threshold"]) for c in cells})
                meta["budget_note"] = (
                    f"{len(cells)} cells (task x threshold x seed) of {len(tasks) * len(thresholds) * args.seeds} "
                    f"planned; tasks/thresholds reached: {', '.join(f'{t} b={b:g}' for t, b in reached)}. Dataset "
                    f"{budget['episodes']} episodes per behaviour policy, {max_steps}-step episodes, "
                    f"{budget['updates']} gradient steps per offline learner, PLS {budget['iterations']} queries x "
                    f"20 episodes on a {budget['grid'][0]}x{budget['grid'][1]} grid, CDT-FT budgets "
                    f"{args.finetune_episodes} episodes.")
                write(Path(args.out), cells, aggregate(cells), meta, timings)
                figures(cells[-1:])
        if args.timing:
            timings.append(timing(task, budget, dataset, max_steps, models))
            write(Path(args.out), cells, aggregate(cells), meta, timings)
    print(f"wrote {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
