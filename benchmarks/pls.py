"""PLS benchmark: a safe GP search over CDT targets against fixed-target CDT, BC-Safe, BCQ-Lag, a naive target
search and CDT fine-tuning, with the same online episode budget (Wachi et al. 2025, Tables 1, 7, 8).

PLS runs on the offline benchmark's models (``benchmarks/offline.py``, same ``--budget``): its behaviour-ladder
dataset, its CDT (one lane per seed) and its BC-Safe and BCQ-Lag at each threshold, read from (or, when missing,
trained into) ``runs/offline_bench/<budget>/<task>/``. Per threshold (20 and 40, scaled to the episode length as in
``benchmarks/offline.py``) and seed, :func:`jaxsafe.offline.pls_experiment.run_comparison` runs PLS (``iterations``
queries of 20 episodes on a ``grid`` of targets) and, with the same online budget, the CDT at the conventional fixed
target and a naive random target search; CDT fine-tuning (CDT-FT) runs once per online budget (small: 400 episodes;
large: the largest that fits the budget); BC-Safe and BCQ-Lag are deployed for PLS's number of episodes. Reported:
DSRL's normalised reward and cost of what each method finally deploys (a fresh 20-episode evaluation), its lifetime
violations (online episodes with cost above the threshold, counted the same way for every method) and the episodes
it used.

PLS's known-safe seed set ``Z_0`` (``--seed-box``): ``top`` (default) is the paper's kind of hand-set box (appendix
K, e.g. Ant-Run [700, 750] x [0, 5] at b = 20): the top tenth of the dataset's return span below the best reliably
safe dataset return (80% of the episodes near it within b), at target costs up to b/4
(:func:`jaxsafe.offline.pls_experiment.top_seed_box`). ``data`` takes every grid target that some dataset episode
reaches at a cost <= G <= b/2 where 80% of the episodes near its return are within b
(:func:`jaxsafe.offline.pls.seed_set_from_dataset`); on SafeCarGoal1 that admits low-return targets that only a
costly behaviour policy reached, where the CDT measured unsafe and PLS stopped.

Usage::

    nice -n 19 python benchmarks/pls.py --tasks SafePointCircle,SafePointRun     # laptop budget
    python benchmarks/pls.py --budget full                                       # the issue's budget (GPU)
    python benchmarks/pls.py --budget quick                                      # smoke run
    python benchmarks/pls.py --timing --tasks SafePointCircle                    # GP vs episodes (quiet machine)

Resumable: each (task, threshold, seed) cell and each CDT-FT run is saved to ``<stem>_cells/`` as it finishes and
skipped on rerun with the same budget. Writes ``benchmarks/results/pls.json``, ``.md`` and
``pls_<task>_b<threshold>.png`` (seed 0); ``--timing`` writes ``<stem>_timing.json``, which the tables include.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxsafe import envs, plotting
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.logging import to_jsonable
from jaxsafe.offline import pls
from jaxsafe.offline.evaluation import make_policy
from jaxsafe.offline.metrics import reward_range
from jaxsafe.offline.pls_experiment import (CDTSetup, PLSSettings, conventional_target, finetune_entry, make_hparams,
                                            make_problem, run_comparison, seed_box)
from jaxsafe.sweep import lane

RESULTS = Path(__file__).parent / "results"


def _offline_benchmark():
    """``benchmarks/offline.py`` as a module (its budgets, dataset and model cache)."""
    spec = importlib.util.spec_from_file_location("offline_benchmark", Path(__file__).with_name("offline.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OFFLINE = _offline_benchmark()
TASKS = OFFLINE.TASKS
#: PLS's own budget per offline budget: queries, target grid, CDT-FT budgets and rounds.
BUDGETS = {
    "full": dict(iterations=20, grid=(30, 30), finetune_episodes=[400, 40_000], finetune_round=100,
                 finetune_updates=200),
    "laptop": dict(iterations=20, grid=(30, 30), finetune_episodes=[400, 2_000], finetune_round=100,
                   finetune_updates=200),
    "quick": dict(iterations=4, grid=(8, 8), finetune_episodes=[80], finetune_round=40, finetune_updates=20),
}


def models_for(task, budget_name, offline_budget, seeds, key, cache=None):
    """The offline benchmark's dataset, CDT and per-threshold BC-Safe / BCQ-Lag of ``task`` (cached)."""
    dataset, _, max_steps, horizon, _ = OFFLINE.task_data(task, budget_name, offline_budget, key, cache=cache)
    models = {"cdt": OFFLINE.trained("cdt", task, dataset, budget_name, offline_budget, seeds, max_steps,
                                     cache=cache)[:3]}
    for nominal, threshold in OFFLINE.thresholds(task, offline_budget):
        for name in ("bc_safe", "bcq_lag"):
            models[(name, nominal)] = OFFLINE.trained(name, task, dataset, budget_name, offline_budget, seeds,
                                                      max_steps, threshold, cache)[:3]
    return dataset, max_steps, horizon, models


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


def _settings(budget, args, threshold, seed_index, baselines=("fixed", "naive")):
    return PLSSettings(threshold=float(threshold), iterations=budget["iterations"], grid=tuple(budget["grid"]),
                       seed_box="top" if args.seed_box == "top" else None,
                       cost_noise=args.cost_noise, reward_noise=args.reward_noise, zeta=args.zeta,
                       baselines=baselines, finetune_episodes=tuple(budget["finetune_episodes"]),
                       finetune_round_episodes=budget["finetune_round"],
                       finetune_updates=budget["finetune_updates"], seed=seed_index)


def _setup(task, dataset, max_steps, models, seed_index):
    env, env_params = envs.make(task)
    cdt_config, cdt_grid, cdt_params = models["cdt"]
    return CDTSetup(cdt_config, dataset, lane(cdt_params, seed_index), lane(cdt_grid.hparams, seed_index), env,
                    env_params, max_steps, task)


def _stored(path: Path, stamp):
    if not path.is_file():
        return None
    cell = json.loads(path.read_text())
    return cell if cell.get("stamp") == stamp else None


def run_cell(cells_dir, stamp, task, nominal, threshold, seed_index, budget, args, dataset, max_steps, models):
    """PLS, the fixed-target CDT, the naive search, BC-Safe and BCQ-Lag on one (task, threshold, seed)."""
    path = cells_dir / f"{task}_b{nominal:g}_s{seed_index}.json"
    stored = _stored(path, stamp)
    if stored is not None:
        return stored
    setup = _setup(task, dataset, max_steps, models, seed_index)
    settings = _settings(budget, args, threshold, seed_index)
    start = time.perf_counter()
    result = run_comparison(settings, setup, progress=True, record_unsafe_seed=True)
    methods = result["methods"]
    r_min, r_max = reward_range(dataset)
    budget_episodes = settings.iterations * settings.episodes_per_query  # the planned budget, even if PLS stopped
    for name in ("bc_safe", "bcq_lag"):
        config, grid, params = models[(name, nominal)]
        methods[name] = deploy_offline(name, config, dataset, lane(params, seed_index), lane(grid.hparams, seed_index),
                                       setup.env, setup.env_params, jax.random.PRNGKey(1000 + seed_index),
                                       budget_episodes, max_steps, threshold, r_min, r_max)
    cell = dict(stamp=stamp, task=task, nominal_threshold=nominal, threshold=threshold, seed=seed_index,
                max_steps=max_steps, seconds_under_load=time.perf_counter() - start, methods=methods,
                seed_box=seed_box(settings, dataset),
                fixed_target=result["fixed_target"], targets=result["targets"], seed_mask=result["seed_mask"],
                reward_mean=result["trace"]["reward_mean"][-1], safe=result["trace"]["safe"][-1],
                evaluated=result["targets"][result["trace"]["target_index"]])
    cells_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(cell)))
    return json.loads(path.read_text())


def run_finetune(cells_dir, stamp, task, nominal, threshold, seed_index, episodes, budget, args, dataset, max_steps,
                 models):
    """CDT-FT with an online budget of ``episodes`` episodes on one (task, threshold, seed), its own cell."""
    path = cells_dir / f"{task}_b{nominal:g}_s{seed_index}_ft{episodes}.json"
    stored = _stored(path, stamp)
    if stored is not None:
        return stored
    setup = _setup(task, dataset, max_steps, models, seed_index)
    settings = _settings(budget, args, threshold, seed_index, baselines=("finetune",))
    problem = make_problem(settings, setup)
    tune_key, final_key = jax.random.split(jax.random.PRNGKey(10_000 + seed_index))
    start = time.perf_counter()
    entry = finetune_entry(settings, setup, problem, tune_key, final_key,
                           conventional_target(dataset, float(threshold)), episodes, progress=True)
    entry = {k: v for k, v in entry.items() if k != "params"}
    cell = dict(stamp=stamp, task=task, nominal_threshold=nominal, threshold=threshold, seed=seed_index,
                episodes=episodes, seconds_under_load=time.perf_counter() - start, entry=entry)
    cells_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(cell)))
    return json.loads(path.read_text())


def timing(task, budget, args, dataset, max_steps, models, repeats=5):
    """Wall time of one PLS iteration split into the vmapped deployment episodes (``problem.evaluate``: 20 CDT
    episodes) and the GP update/acquisition (``search.acquire``: both posteriors over the grid, the bounds, the safe
    set, the expanders and the argmax), each compiled once and timed ``repeats`` times (medians)."""
    setup = _setup(task, dataset, max_steps, models, 0)
    nominal, threshold = OFFLINE.thresholds(task, OFFLINE.make_budget(args.budget, args.ppo_steps, args.max_steps,
                                                                      args.updates))[0]
    settings = _settings(budget, args, threshold, 0)
    problem = make_problem(settings, setup)
    hparams = make_hparams(settings, problem.targets)
    search = pls.make_search(settings.config(), problem)
    state = search.init(jax.random.PRNGKey(0), hparams)
    update = jax.jit(search.update)
    for _ in range(3):
        state, _ = update(state, hparams)
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
    return dict(task=task, grid=list(budget["grid"]), episodes=settings.episodes_per_query, max_steps=max_steps,
                backend=jax.default_backend(), gp_seconds=gp_s, episodes_seconds=ep_s,
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
        unsafe = _mean_std([m.get("unsafe_queries") for m in ms])
        stopped = sum(1 for m in ms if m.get("stopped"))
        out.append(dict(task=task, nominal_threshold=nominal, threshold=threshold, method=name, seeds=len(ms),
                        reward_mean=reward[0], reward_std=reward[1], cost_mean=cost[0], cost_std=cost[1],
                        safe=None if cost[0] is None else bool(cost[0] <= 1.0), violations_mean=violations[0],
                        violations_std=violations[1], unsafe_queries_mean=unsafe[0], unsafe_queries_std=unsafe[1],
                        episodes=int(np.mean([m["episodes"] for m in ms])),
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
             "the threshold, over the episodes listed, counted the same way for every method. The CDT, BC-Safe and "
             "BCQ-Lag are the offline benchmark's (`benchmarks/results/offline.md`, same budget).", "",
             f"**Budget reached:** {meta['budget_note']}", "",
             "A PLS run whose seed set measured unsafe stops there (the issue's rule); `stopped` counts those seeds "
             "and their final reward/cost is missing from the means. `cdt_ft_N` is CDT fine-tuning with N online "
             "episodes. `unsafe queries` counts the 20-episode evaluations (PLS queries, the fixed target's and the "
             "naive search's batches of 20) whose mean cost exceeds the threshold.", "",
             "| task | b | method | seeds | final reward | final cost | safe | violations | unsafe queries | episodes "
             "| stopped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['threshold']:g} | {r['method']} | {r['seeds']} | "
                     f"{_fmt(r['reward_mean'], r['reward_std'])} | {_fmt(r['cost_mean'], r['cost_std'])} | "
                     f"{'-' if r['safe'] is None else ('yes' if r['safe'] else '**no**')} | "
                     f"{_fmt(r['violations_mean'], r['violations_std'], 1)} | "
                     f"{_fmt(r.get('unsafe_queries_mean'), r.get('unsafe_queries_std'), 1)} | {r['episodes']} | "
                     f"{r['stopped']} |")
    lines += ["", "## Wall time of one GP iteration", ""]
    if timings:
        lines += ["| task | grid | backend | GP update + acquisition (s) | deployment episodes (s) | GP fraction |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {t['task']} | {t['grid'][0]}x{t['grid'][1]} | {t.get('backend', '-')} | {t['gp_seconds']:.4f} | "
                  f"{t['episodes_seconds']:.3f} | {100 * t['gp_fraction']:.1f}% |" for t in timings]
    else:
        lines.append("Not measured: the split is a speed ratio and the machine was shared with other runs; "
                     f"`python benchmarks/pls.py --budget {meta['budget_name']} --timing --tasks SafePointCircle` "
                     "measures it on a quiet machine (after the models exist) and the tables then include it.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def figures(out: Path, cells):
    for cell in cells:
        if cell["seed"] != 0:
            continue
        curves = {name: (m["curve_episodes"], m["curve_reward"], m["curve_cost"])
                  for name, m in cell["methods"].items() if "curve_episodes" in m}
        path = out.parent / f"{out.name}_{cell['task']}_b{cell['nominal_threshold']:g}.png"
        path.unlink(missing_ok=True)
        plotting.plot_target_search(path, np.asarray(cell["targets"]), np.asarray(cell["reward_mean"]),
                                    np.asarray(cell["safe"], bool), np.asarray(cell["seed_mask"], bool),
                                    np.asarray(cell["evaluated"]), curves,
                                    title=f"PLS on {cell['task']}, b = {cell['threshold']:g} (seed 0)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="laptop", choices=sorted(BUDGETS),
                        help="the offline benchmark's budget (its models) and PLS's own")
    parser.add_argument("--quick", action="store_true", help="same as --budget quick")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: the four, or one if quick)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--thresholds", default="20,40", help="nominal thresholds (scaled to the episode length)")
    parser.add_argument("--iterations", type=int, default=None, help="PLS queries (20 episodes each)")
    parser.add_argument("--ppo-steps", type=int, default=None, help="as benchmarks/offline.py (the same models)")
    parser.add_argument("--max-steps", type=int, default=None, help="as benchmarks/offline.py")
    parser.add_argument("--updates", type=int, default=None, help="as benchmarks/offline.py")
    parser.add_argument("--finetune-episodes", default=None,
                        help="CDT-FT budgets (laptop: 400,2000; full: 400,40000; quick: 80)")
    parser.add_argument("--reward-noise", type=float, default=0.05)
    parser.add_argument("--cost-noise", type=float, default=0.1)
    parser.add_argument("--zeta", type=float, default=0.2)
    parser.add_argument("--seed-box", default="top", choices=("top", "data"),
                        help="PLS's known-safe seed set: top (the paper's kind: the best safe dataset returns at "
                             "target costs <= b/4) or data (any target a dataset episode reaches at cost <= G <= b/2)")
    parser.add_argument("--timing", action="store_true",
                        help="only split one GP iteration's wall time (quiet machine only); needs the models")
    parser.add_argument("--out", default=str(RESULTS / "pls"))
    parser.add_argument("--cache", default=None, help="the offline benchmark's cache (default runs/offline_bench)")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget = "quick"
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    budget = json.loads(json.dumps(BUDGETS[args.budget]))
    if args.iterations is not None:
        budget["iterations"] = args.iterations
    if args.finetune_episodes is not None:
        budget["finetune_episodes"] = [int(v) for v in args.finetune_episodes.split(",") if v]
    offline_budget = OFFLINE.make_budget(args.budget, args.ppo_steps, args.max_steps, args.updates)
    cache = Path(args.cache) if args.cache else None
    out = Path(args.out)
    cells_dir = out.parent / f"{out.name}_cells"
    tasks = args.tasks.split(",") if args.tasks else (["SafePointCircle"] if args.budget == "quick" else list(TASKS))
    nominals = [float(t) for t in args.thresholds.split(",")]
    stamp = json.loads(json.dumps(dict(offline=offline_budget, pls={k: v for k, v in budget.items()
                                                                    if k != "finetune_episodes"},
                                       noise=[args.reward_noise, args.cost_noise], zeta=args.zeta)))
    # PLS cells also depend on the seed set; CDT-FT cells (the conventional target, no seed set) do not
    pls_stamp = dict(stamp, seed_box=args.seed_box)
    meta = dict(argv=argv_list, budget_name=args.budget, seeds=args.seeds, budget=budget,
                offline_budget=offline_budget, platform=platform.platform(), backend=jax.default_backend())
    timing_file = out.parent / f"{out.name}_timing.json"
    if args.timing:
        timings = []
        for task_index, task in enumerate(tasks):
            dataset, max_steps, _, models = models_for(task, args.budget, offline_budget, args.seeds,
                                                       jax.random.PRNGKey(TASKS.index(task)), cache)
            timings.append(timing(task, budget, args, dataset, max_steps, models))
            print(json.dumps(timings[-1]), flush=True)
        timing_file.write_text(json.dumps(timings, indent=1))
        return
    for task in tasks:
        dataset, max_steps, _, models = models_for(task, args.budget, offline_budget, args.seeds,
                                                   jax.random.PRNGKey(TASKS.index(task)), cache)
        for nominal, threshold in OFFLINE.thresholds(task, offline_budget):
            if nominal not in nominals:
                continue
            for seed_index in range(args.seeds):
                cell = run_cell(cells_dir, pls_stamp, task, nominal, threshold, seed_index, budget, args, dataset,
                                max_steps, models)
                figures(out, [cell])
                write_all(out, cells_dir, (stamp, pls_stamp), meta, budget, args, timing_file)
            for episodes in budget["finetune_episodes"]:  # small budgets first: each seed, then the next budget
                for seed_index in range(args.seeds):
                    run_finetune(cells_dir, stamp, task, nominal, threshold, seed_index, episodes, budget, args,
                                 dataset, max_steps, models)
                    write_all(out, cells_dir, (stamp, pls_stamp), meta, budget, args, timing_file)
    write_all(out, cells_dir, (stamp, pls_stamp), meta, budget, args, timing_file)
    print(f"wrote {out.with_suffix('.md')}")


def write_all(out, cells_dir, stamps, meta, budget, args, timing_file):
    """The tables from every stored cell of this budget (other processes may have added some); ``stamps`` is
    ``(CDT-FT stamp, PLS stamp)``."""
    cells, tunes = [], []
    for path in sorted(cells_dir.glob("*.json")) if cells_dir.is_dir() else []:
        tune = _stored(path, stamps[0])
        if tune is not None and "entry" in tune:
            tunes.append(tune)
        elif (cell := _stored(path, stamps[1])) is not None:
            cells.append(cell)
    for cell in cells:
        for tune in tunes:
            if (tune["task"], tune["nominal_threshold"], tune["seed"]) == (cell["task"], cell["nominal_threshold"],
                                                                           cell["seed"]):
                cell["methods"][f"cdt_ft_{tune['episodes']}"] = tune["entry"]
    reached = sorted({(c["task"], c["nominal_threshold"]) for c in cells})
    tuned = sorted({(t["task"], t["nominal_threshold"], t["episodes"]) for t in tunes})
    planned = len(TASKS) * 2 * args.seeds
    meta["budget_note"] = (
        f"budget `{args.budget}`: {len(cells)} PLS cells (task x threshold x seed) of {planned} for the four tasks; "
        f"reached: {', '.join(f'{t} b={b:g}' for t, b in reached) or 'none'}; CDT-FT runs: {len(tunes)} "
        f"({', '.join(f'{t} b={b:g} {n} episodes' for t, b, n in tuned) or 'none'}). PLS {budget['iterations']} "
        f"queries x 20 episodes on a {budget['grid'][0]}x{budget['grid'][1]} target grid; CDT-FT budgets "
        f"{budget['finetune_episodes']} episodes in rounds of {budget['finetune_round']} with "
        f"{budget['finetune_updates']} gradient steps each; PLS seed set `--seed-box {args.seed_box}`; models: "
        + OFFLINE.budget_note(args.budget, meta["offline_budget"], args.seeds, []).split("; ", 1)[1])
    timings = json.loads(timing_file.read_text()) if timing_file.is_file() else []
    write(out, cells, aggregate(cells), meta, timings)


if __name__ == "__main__":
    main()
