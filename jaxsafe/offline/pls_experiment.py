"""``jaxsafe offline pls RUN_DIR --threshold b``: PLS's safe target search on a trained CDT, with its baselines.

    jaxsafe offline train cdt --data data/circle.npz --set num_updates=5000 --out runs/cdt
    jaxsafe offline pls runs/cdt --threshold 20 --out runs/pls                  # 20 queries x 20 episodes
    jaxsafe offline pls runs/cdt --threshold 20 --iterations 30 --expander fake_observation --out runs/pls-fo
    jaxsafe offline pls runs/cdt --threshold 20 --baselines fixed,naive,finetune --finetune-episodes 400,40000

The CDT run directory (``jaxsafe offline train cdt``) gives the model, its dataset (whose card names the task) and
the target grid ``Z`` (the dataset's return x cost range, ``--grid NR,NC``). The seed set ``Z_0`` is the dataset's
safely reached targets (:func:`jaxsafe.offline.pls.seed_set_from_dataset`, ``--seed-margin``), a box
(``--seed-box R0,R1,G0,G1``) or ``--seed-box top``, the paper's kind of box at the best safe returns
(:func:`top_seed_box`). The GP lengthscales default to fractions of ``Z``'s span (``--preset scaled``) or
appendix K's values (``--preset bullet|velocity``).

:func:`run_comparison` (used by the command and by ``benchmarks/pls.py``) runs PLS and, with the same online episode
budget, the baselines: the CDT at the fixed conventional target (best safe dataset return, cost = ``b``), a naive
random search over ``Z`` without the safety rule, and CDT fine-tuning on the collected online episodes
(``--finetune-episodes``, one run per budget). Every method's lifetime violations are its online episodes with cost
above ``b``; its final reward and cost are a fresh evaluation of what it deploys.

The run directory (never overwritten) holds ``config.json``, ``metrics.jsonl`` (one row per PLS query),
``pls.npz`` (the target grid, the seed set and per query the safe set, cost bounds and reward mean),
``summary.json`` and ``pls.png`` (the GP reward mean and the safe set over ``Z`` with the evaluated targets, and
reward / cost against online episodes for every method).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.offline import pls
from jaxsafe.validation import is_int, require

__all__ = ["BASELINES", "PLSSettings", "top_seed_box", "seed_box", "CDTSetup", "load_cdt", "make_problem",
           "make_hparams", "run_comparison", "run_pls_experiment", "add_arguments", "handle"]

BASELINES = ("fixed", "naive", "finetune")
PRESETS = ("scaled", *sorted(pls.GP_PRESETS))
#: ``--preset scaled``: lengthscales as fractions of the target grid's span (R, G).
SCALED_LENGTHSCALE = {"reward": 0.25, "cost": 0.2}


@dataclasses.dataclass(frozen=True)
class PLSSettings:
    """Everything ``jaxsafe offline pls`` takes (see ``--help``); validated on construction."""

    threshold: float
    # the search's own defaults (PLSConfig, PLSHParams), not repeated here
    episodes_per_query: int = pls.PLSConfig.episodes_per_query
    iterations: int = pls.PLSConfig.iterations
    grid: tuple = (30, 30)
    return_range: tuple | None = None
    cost_range: tuple | None = None
    seed_box: tuple | str | None = None
    seed_margin: float = 0.5
    seed_safe_fraction: float = 0.8
    preset: str = "scaled"
    reward_lengthscale: tuple | None = None
    cost_lengthscale: tuple | None = None
    reward_variance: float | None = None
    cost_variance: float | None = None
    reward_noise: float = pls.PLSHParams.reward_noise
    cost_noise: float = pls.PLSHParams.cost_noise
    delta: float = pls.PLSHParams.delta
    beta_scale: float = pls.PLSHParams.beta_scale
    zeta: float = pls.PLSHParams.zeta
    lipschitz: float = pls.PLSHParams.lipschitz
    safe_set: str = pls.PLSConfig.safe_set
    expander: str = pls.PLSConfig.expander
    width: str = pls.PLSConfig.width
    expander_candidates: int = pls.PLSConfig.expander_candidates
    baselines: tuple = BASELINES
    finetune_episodes: tuple = (400,)
    finetune_round_episodes: int = 100
    finetune_updates: int = 200
    final_episodes: int = 20
    max_steps: int | None = None
    task: str | None = None
    lane: int = 0
    seed: int = 0
    sample_actions: bool = False

    def __post_init__(self):
        require(isinstance(self.threshold, (int, float)) and self.threshold > 0, "threshold",
                "a number > 0 (episode-cost units)", self.threshold)
        for name in ("episodes_per_query", "iterations", "final_episodes", "finetune_round_episodes",
                     "expander_candidates"):
            require(is_int(getattr(self, name)), name.replace("_", "-"), "an integer >= 1", getattr(self, name))
        require(is_int(self.finetune_updates, 0), "finetune-updates", "an integer >= 0", self.finetune_updates)
        require(is_int(self.lane, 0), "lane", "an integer >= 0", self.lane)
        require(len(self.grid) == 2 and all(is_int(g) for g in self.grid), "grid", "two integers NR,NC >= 1",
                self.grid)
        require(self.preset in PRESETS, "preset", f"one of {PRESETS}", self.preset)
        require(all(b in BASELINES for b in self.baselines), "baselines", f"a subset of {BASELINES}", self.baselines)
        require(all(is_int(e) for e in self.finetune_episodes), "finetune-episodes", "integers >= 1",
                self.finetune_episodes)
        require(isinstance(self.seed_safe_fraction, (int, float)) and 0 <= self.seed_safe_fraction <= 1,
                "seed-safe-fraction", "a number in [0, 1]", self.seed_safe_fraction)
        require(self.seed_box is None or self.seed_box == "top" or (not isinstance(self.seed_box, str)
                                                                    and len(self.seed_box) == 4),
                "seed-box", "four numbers R0,R1,G0,G1 or 'top'", self.seed_box)
        for name in ("reward_lengthscale", "cost_lengthscale"):
            value = getattr(self, name)
            require(value is None or (len(value) in (1, 2) and all(v > 0 for v in value)), name.replace("_", "-"),
                    "one or two numbers > 0 (target units)", value)
        self.config()  # the search's own checks

    def config(self) -> pls.PLSConfig:
        return pls.PLSConfig(iterations=self.iterations, episodes_per_query=self.episodes_per_query,
                             safe_set=self.safe_set, expander=self.expander, width=self.width,
                             expander_candidates=self.expander_candidates)


class CDTSetup(NamedTuple):
    """A trained CDT lane and where it plays: config, dataset, params, hparams, env, env_params, max_steps, task."""

    config: object
    dataset: object
    params: object
    hparams: object
    env: object
    env_params: object
    max_steps: int
    task: str


def load_cdt(run_dir, lane: int = 0, task: str | None = None, max_steps: int | None = None) -> CDTSetup:
    """The CDT of lane ``lane`` of a ``jaxsafe offline train cdt`` run directory (newest checkpoint), on the task of
    its dataset's card (or ``task``).

    Raises:
      ValueError: the run is not a CDT run, the lane does not exist, or no task is known.
    """
    from jaxsafe import envs
    from jaxsafe.offline.collect import card_path, load_card
    from jaxsafe.runner import restore_run
    from jaxsafe.sweep import lane as take_lane

    spec, (_, dataset, config, grid, _), _, state = restore_run(run_dir)
    require(spec.algorithm == "cdt", "RUN_DIR", "a CDT run directory (jaxsafe offline train cdt)",
            f"{run_dir} ({spec.algorithm})")
    require(lane < grid.size, "lane", f"an index below the run's {grid.size} lanes", lane)
    card_max_steps = None
    if task is None:
        if not card_path(spec.problem).is_file():
            raise ValueError(f"task: the dataset {spec.problem} has no card; pass --task")
        card = load_card(spec.problem)
        task, card_max_steps = card["task"], int(card["max_steps"])
    env, env_params = envs.make(task)
    horizon = int(getattr(env_params, "max_steps", 1000))
    max_steps = int(max_steps or card_max_steps or horizon)
    return CDTSetup(config, dataset, take_lane(state.params, lane), take_lane(grid.hparams, lane), env, env_params,
                    max_steps, task)


def make_hparams(settings: PLSSettings, targets: np.ndarray) -> pls.PLSHParams:
    """The PLS hparams of ``settings``: the preset's GP values (``scaled``: lengthscales as fractions of the span of
    ``targets``), then any explicit value; validated."""
    span = np.maximum(np.ptp(np.asarray(targets), axis=0), 1e-6)
    if settings.preset == "scaled":
        base = dict(reward_lengthscale=SCALED_LENGTHSCALE["reward"] * span,
                    cost_lengthscale=SCALED_LENGTHSCALE["cost"] * span, reward_variance=1.0, cost_variance=1.0)
    else:
        base = dict(pls.GP_PRESETS[settings.preset])
    explicit = dict(reward_lengthscale=settings.reward_lengthscale, cost_lengthscale=settings.cost_lengthscale,
                    reward_variance=settings.reward_variance, cost_variance=settings.cost_variance)
    base.update({k: (np.asarray(v, np.float32) if isinstance(v, tuple) else v) for k, v in explicit.items()
                 if v is not None})
    hparams = pls.PLSHParams(threshold=float(settings.threshold), delta=settings.delta,
                             beta_scale=settings.beta_scale, zeta=settings.zeta, lipschitz=settings.lipschitz,
                             reward_noise=settings.reward_noise, cost_noise=settings.cost_noise, **base)
    return hparams.as_arrays().validate()


def make_problem(settings: PLSSettings, setup: CDTSetup) -> pls.PLSProblem:
    """The target grid, the seed set and the CDT's vmapped evaluation (``episodes_per_query`` episodes)."""
    targets = pls.target_grid(setup.dataset, settings.grid[0], settings.grid[1], settings.return_range,
                              settings.cost_range)
    box = seed_box(settings, setup.dataset)
    if box is not None:
        r0, r1, g0, g1 = box
        seeds = pls.seed_set_box(targets, (r0, r1), (g0, g1))
    else:
        seeds = pls.seed_set_from_dataset(setup.dataset, targets, settings.threshold, settings.seed_margin,
                                          safe_fraction=settings.seed_safe_fraction)
    return pls.cdt_problem(setup.config, setup.dataset, setup.params, setup.hparams, setup.env, setup.env_params,
                           targets, seeds, settings.episodes_per_query, setup.max_steps,
                           deterministic=not settings.sample_actions)


def top_seed_box(dataset, threshold: float, return_fraction: float = 0.1, cost_fraction: float = 0.25,
                 safe_fraction: float = 0.8, min_episodes: int = 5) -> tuple[float, float, float, float]:
    """``(R0, R1, G0, G1)``: a seed box of the paper's kind (appendix K sets them by hand, e.g. Ant-Run
    [700, 750] x [0, 5] at b = 20): returns within ``return_fraction`` of the dataset's return span below the best
    reliably safe dataset return (:func:`jaxsafe.offline.pls.reliable_safe_return`: at least ``safe_fraction`` of
    the episodes near it, and at least ``min_episodes``, are safe), target costs in ``[0, cost_fraction * b]``.
    ``safe_fraction=0, min_episodes=1`` puts the box below the best safe dataset return (:func:`conventional_target`),
    which on a stochastic task can be one lucky episode of an unsafe behaviour.

    Unlike :func:`jaxsafe.offline.pls.seed_set_from_dataset`, it admits no low-return target that only a costly
    behaviour policy reached (there a CDT imitates that policy and can measure unsafe)."""
    from jaxsafe.offline.metrics import reward_range
    from jaxsafe.offline.training import episode_table

    require(0 < return_fraction <= 1, "return_fraction", "in (0, 1]", return_fraction)
    require(0 < cost_fraction <= 1, "cost_fraction", "in (0, 1]", cost_fraction)
    r_min, r_max = reward_range(dataset)
    table = episode_table(dataset)
    best = pls.reliable_safe_return(table.returns, table.costs, float(threshold), safe_fraction,
                                    min_episodes=min_episodes)
    return (best - return_fraction * (r_max - r_min), best, 0.0, cost_fraction * float(threshold))


def seed_box(settings: PLSSettings, dataset) -> tuple | None:
    """``settings.seed_box`` as numbers ``(R0, R1, G0, G1)`` (``"top"`` resolved by :func:`top_seed_box`), or None
    for the seed set from the data."""
    if settings.seed_box == "top":
        return top_seed_box(dataset, settings.threshold, safe_fraction=settings.seed_safe_fraction)
    return settings.seed_box


def conventional_target(dataset, threshold: float) -> tuple[float, float]:
    """The fixed CDT target of the offline benchmark: the best dataset return among episodes with cost ``<= b``
    (the smallest return if none), and target cost ``b``."""
    from jaxsafe.offline.training import episode_table

    table = episode_table(dataset)
    safe = table.costs <= threshold
    return (float(table.returns[safe].max()) if safe.any() else float(table.returns.min()), float(threshold))


def final_evaluator(problem, threshold: float, episodes: int):
    """``final(key, target) -> dict``: a fresh evaluation of ``problem``'s policy at ``target`` with ``episodes``
    episodes (whole queries), normalised reward / cost; compiled once per problem."""
    calls = -(-episodes // problem_episodes(problem))  # ceil: whole queries
    play = jax.jit(lambda k, z: jax.vmap(lambda kk: problem.evaluate(kk, z))(jax.random.split(k, calls)))
    span = problem.reward_max - problem.reward_min

    def final(key, target) -> dict:
        returns, costs = play(key, jnp.asarray(target, jnp.float32))
        returns, costs = np.asarray(returns).reshape(-1), np.asarray(costs).reshape(-1)
        reward = (returns - problem.reward_min) / span
        return dict(final_reward=float(reward.mean()), final_reward_std=float(reward.std()),
                    final_cost=float(costs.mean() / threshold), final_cost_std=float((costs / threshold).std()),
                    final_safe=bool(costs.mean() <= threshold), final_target=[float(t) for t in target])

    return final


def problem_episodes(problem) -> int:
    shapes = jax.eval_shape(problem.evaluate, jax.random.PRNGKey(0), jnp.zeros((2,), jnp.float32))
    return int(shapes[0].shape[0])


def _curve(rewards, costs, violations, episodes_per_point: int) -> dict:
    rewards, costs, violations = (np.asarray(x, float).reshape(-1) for x in (rewards, costs, violations))
    return dict(curve_episodes=(np.arange(1, rewards.size + 1) * episodes_per_point).tolist(),
                curve_reward=rewards.tolist(), curve_cost=costs.tolist(),
                curve_violations=np.cumsum(violations).astype(int).tolist())


def run_comparison(settings: PLSSettings, setup: CDTSetup, progress: bool = True, callback=None,
                   record_unsafe_seed: bool = False) -> dict:
    """PLS and the baselines of ``settings.baselines`` on one CDT; returns ``{"pls": {...}, "methods": {name:
    {...}}, "targets", "seed_mask", "trace"}``. Each method's entry has ``episodes`` (online episodes used),
    ``violations``, ``unsafe_queries``, the per-query curves and the fresh ``final_*`` evaluation;
    ``callback(iteration, metrics)`` after each PLS query (host values). An unsafe seed set raises
    :class:`~jaxsafe.offline.pls.UnsafeSeedSet`, or with ``record_unsafe_seed`` stops PLS (its entry's ``stopped``
    says why; no final target) and runs the baselines all the same."""
    from jaxsafe.logging import Progress

    config = settings.config()
    problem = make_problem(settings, setup)
    hparams = make_hparams(settings, problem.targets)
    threshold = float(settings.threshold)
    key = jax.random.PRNGKey(settings.seed)
    pls_key, fixed_key, naive_key, tune_key, final_key = jax.random.split(key, 5)
    bar = Progress(config.iterations * config.episodes_per_query, desc="pls", enabled=progress, unit="episodes")
    recommend = jax.jit(lambda data, safe: pls.recommend(problem, hparams, data, safe))
    stamps = [time.perf_counter()]

    def show(state, metrics):
        stamps.append(time.perf_counter())
        best = np.asarray(problem.targets)[int(recommend(state.params, state.safe))]
        done = int(state.iteration)
        bar.update(done * config.episodes_per_query, it=done, phase_b=int(metrics["phase"]),
                   safe=int(metrics["safe_set_size"]), best_R=float(best[0]), best_G=float(best[1]),
                   viol=int(state.violations))
        if callback is not None:
            callback(done, metrics)

    final = final_evaluator(problem, threshold, settings.final_episodes)
    rows = []
    try:
        state, trace, chosen = pls.run(config, problem, hparams, pls_key,
                                       lambda state, metrics: (rows.append(metrics), show(state, metrics)))
        stopped = None
    except pls.UnsafeSeedSet as err:
        if not record_unsafe_seed:
            raise
        trace, stopped = {name: np.stack([row[name] for row in rows]) for name in rows[0]}, str(err)
    finally:
        bar.close()
    timing = np.diff(stamps)
    entry = dict(episodes=len(rows) * config.episodes_per_query, violations=int(trace["violations"].sum()),
                 unsafe_queries=int((trace["cost"] > 1.0).sum()), stopped=stopped,
                 phase_a_queries=int((trace["phase"] == 0).sum()), final_safe_set_size=int(trace["safe"][-1].sum()),
                 seconds_per_query=float(np.median(timing[1:] if len(timing) > 1 else timing)),
                 **_curve(trace["reward"], trace["cost"], trace["violations"], config.episodes_per_query))
    if stopped is None:
        entry.update(recommended_index=chosen, **final(final_key, np.asarray(problem.targets)[chosen]))
    else:
        entry.update(recommended_index=None, final_reward=None, final_cost=None, final_safe=None, final_target=None)
    methods = {"pls": entry}
    budget = config.iterations
    fixed = conventional_target(setup.dataset, threshold)
    if "fixed" in settings.baselines:
        out = jax.tree.map(np.asarray, jax.jit(lambda k: pls.fixed_target(problem, k, fixed, threshold, budget))(
            fixed_key))
        methods["cdt_fixed"] = dict(episodes=budget * config.episodes_per_query, violations=int(out["violations"].sum()),
                                    unsafe_queries=int((out["cost"] > 1.0).sum()),
                                    **_curve(out["reward"], out["cost"], out["violations"], config.episodes_per_query),
                                    **final(final_key, fixed))
    if "naive" in settings.baselines:
        count = min(budget, len(problem.targets))
        out = jax.tree.map(np.asarray, jax.jit(lambda k: pls.naive_search(problem, k, threshold, count))(naive_key))
        best = int(out["best"])
        scores = (final(final_key, np.asarray(problem.targets)[best]) if best >= 0 else
                  dict(final_reward=None, final_cost=None, final_safe=None, final_target=None))
        methods["naive_search"] = dict(episodes=count * config.episodes_per_query,
                                       violations=int(out["violations"].sum()),
                                       unsafe_queries=int((out["cost"] > 1.0).sum()),
                                       **_curve(out["reward"], out["cost"], out["violations"],
                                                config.episodes_per_query), **scores)
    if "finetune" in settings.baselines:
        for episodes in settings.finetune_episodes:
            methods[f"cdt_ft_{episodes}"] = finetune_entry(settings, setup, problem, tune_key, final_key, fixed,
                                                           episodes, progress)
    return dict(methods=methods, targets=np.asarray(problem.targets), seed_mask=np.asarray(problem.seed_mask),
                trace=trace, hparams=hparams, fixed_target=list(fixed))


def finetune_entry(settings: PLSSettings, setup: CDTSetup, problem, key, final_key, target, episodes: int,
                   progress: bool) -> dict:
    """CDT-FT with an online budget of ``episodes`` episodes, and the fine-tuned CDT's fresh evaluation."""
    threshold = float(settings.threshold)
    bar = None
    if progress:
        from jaxsafe.logging import Progress

        bar = Progress(episodes, desc=f"cdt-ft {episodes}", unit="episodes")
    out = pls.finetune_cdt(setup.config, setup.dataset, setup.params, setup.hparams, setup.env, setup.env_params,
                           key, target, threshold, episodes, settings.finetune_round_episodes,
                           settings.finetune_updates, setup.max_steps,
                           progress=None if bar is None else lambda r, n, v: bar.update(n, round=r, viol=v),
                           deterministic=not settings.sample_actions)
    if bar is not None:
        bar.close()
    tuned = setup._replace(params=out["params"])
    tuned_problem = pls.cdt_problem(tuned.config, tuned.dataset, tuned.params, tuned.hparams, tuned.env,
                                    tuned.env_params, problem.targets, problem.seed_mask, settings.episodes_per_query,
                                    tuned.max_steps, (problem.reward_min, problem.reward_max),
                                    deterministic=not settings.sample_actions)
    per = settings.episodes_per_query
    count = (len(out["episode_costs"]) // per) * per
    span = problem.reward_max - problem.reward_min
    rewards = ((out["episode_returns"][:count] - problem.reward_min) / span).reshape(-1, per).mean(1)
    costs = (out["episode_costs"][:count] / threshold).reshape(-1, per).mean(1)
    violations = (out["episode_costs"][:count] > threshold).reshape(-1, per).sum(1)
    return dict(episodes=int(episodes), violations=int(out["violations"]), unsafe_queries=int((costs > 1).sum()),
                rounds=int(out["rounds"]), **_curve(rewards, costs, violations, per),
                **final_evaluator(tuned_problem, threshold, settings.final_episodes)(final_key, target))


def run_pls_experiment(settings: PLSSettings, cdt_run_dir, out, progress: bool = True) -> dict:
    """The whole command: load the CDT, :func:`run_comparison`, write the run directory ``out`` (refusing a
    non-empty one before any work) and its figure. Returns the summary."""
    from jaxsafe import plotting
    from jaxsafe.logging import RunDir, check_new_run_dir, to_jsonable

    check_new_run_dir(out)
    setup = load_cdt(cdt_run_dir, settings.lane, settings.task, settings.max_steps)
    run_dir = RunDir(out)
    run_dir.write_config(dict(command="offline pls", cdt_run_dir=str(cdt_run_dir), task=setup.task,
                              max_steps=setup.max_steps, settings=dataclasses.asdict(settings)))
    result = run_comparison(settings, setup, progress=progress)
    trace = result["trace"]
    scalar = [k for k, v in trace.items() if v.ndim == 1]
    run_dir.append_metrics([{k: trace[k][i] for k in scalar} for i in range(settings.iterations)])
    with open(run_dir.path / "pls.npz", "xb") as handle:
        np.savez(handle, targets=result["targets"], seed_mask=result["seed_mask"],
                 **{k: trace[k] for k in ("safe", "cost_upper", "cost_lower", "reward_mean", "target_index")})
    summary = dict(task=setup.task, threshold=settings.threshold, fixed_target=result["fixed_target"],
                   hparams={k: np.asarray(v).tolist() for k, v in dataclasses.asdict(result["hparams"]).items()},
                   methods=result["methods"])
    run_dir.write_summary(to_jsonable(summary))
    last = settings.iterations - 1
    plotting.plot_target_search(
        run_dir.path / "pls.png", result["targets"], trace["reward_mean"][last], trace["safe"][last],
        result["seed_mask"], result["targets"][trace["target_index"]],
        {name: (m["curve_episodes"], m["curve_reward"], m["curve_cost"]) for name, m in result["methods"].items()},
        title=f"PLS on {setup.task}, b = {settings.threshold:g}")
    return summary


# ---------------------------------------------------------------------------------------------------- the command


def _numbers(text: str | None, flag: str, count: tuple[int, ...] | None = None, kind=float):
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag}: comma-separated {'integers' if kind is int else 'numbers'}, got {text!r}") from None
    if count is not None and len(values) not in count:
        raise ValueError(f"{flag}: {' or '.join(map(str, count))} comma-separated values, got {text!r}")
    return values


def _default(name: str):
    """``PLSSettings``' default of ``name`` (the flags' defaults come from there, and through it from the search)."""
    return next(f.default for f in dataclasses.fields(PLSSettings) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``jaxsafe offline pls``."""
    d = _default
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a CDT run directory (jaxsafe offline train cdt)")
    parser.add_argument("--threshold", type=float, required=True, help="cost threshold b (episode-cost units, > 0)")
    parser.add_argument("--episodes-per-query", type=int, default=d("episodes_per_query"),
                        help="deployment episodes per GP query")
    parser.add_argument("--iterations", type=int, default=d("iterations"),
                        help="GP queries (the online budget / episodes)")
    parser.add_argument("--grid", default=",".join(map(str, d("grid"))),
                        help="target grid size NR,NC over the dataset's (R, G) range")
    parser.add_argument("--return-range", default=None, help="R0,R1: a sub-range of the dataset's returns")
    parser.add_argument("--cost-range", default=None, help="G0,G1: a sub-range of the dataset's costs")
    parser.add_argument("--seed-box", default=None,
                        help="R0,R1,G0,G1: the seed set Z_0 as a box of targets; top: the best reliably safe dataset "
                             "returns (a tenth of the return span) at target costs <= b/4, the paper's kind of box")
    parser.add_argument("--seed-margin", type=float, default=d("seed_margin"),
                        help="seed set from the data: targets with G <= margin * b reached by a dataset episode")
    parser.add_argument("--seed-safe-fraction", type=float, default=d("seed_safe_fraction"),
                        help="a seed's return must be safe (cost <= b) in at least this fraction of the dataset "
                             "episodes near it (0: one safe episode is enough)")
    parser.add_argument("--preset", default=d("preset"), choices=PRESETS,
                        help="GP values: lengthscales as fractions of the grid span, or appendix K's")
    parser.add_argument("--reward-lengthscale", default=None, help="L or LR,LG (target units)")
    parser.add_argument("--cost-lengthscale", default=None, help="L or LR,LG (target units)")
    parser.add_argument("--reward-variance", type=float, default=None)
    parser.add_argument("--cost-variance", type=float, default=None)
    parser.add_argument("--reward-noise", type=float, default=d("reward_noise"),
                        help="noise std of a query's normalised reward")
    parser.add_argument("--cost-noise", type=float, default=d("cost_noise"),
                        help="noise std of a query's normalised cost")
    parser.add_argument("--delta", type=float, default=d("delta"), help="failure probability Delta")
    parser.add_argument("--beta-scale", type=float, default=d("beta_scale"),
                        help="factor on the Srinivas confidence scale")
    parser.add_argument("--zeta", type=float, default=d("zeta"), help="phase A width tolerance")
    parser.add_argument("--lipschitz", type=float, default=d("lipschitz"), help="L (the paper: 0)")
    parser.add_argument("--safe-set", default=d("safe_set"), choices=pls.SAFE_SET_RULES)
    parser.add_argument("--expander", default=d("expander"), choices=pls.EXPANDER_RULES)
    parser.add_argument("--width", default=d("width"), choices=pls.WIDTH_RULES)
    parser.add_argument("--baselines", default=",".join(d("baselines")),
                        help=f"comma-separated subset of {','.join(BASELINES)} ('' for none)")
    parser.add_argument("--finetune-episodes", default=",".join(map(str, d("finetune_episodes"))),
                        help="CDT-FT online budgets, e.g. 400,40000")
    parser.add_argument("--finetune-round-episodes", type=int, default=d("finetune_round_episodes"),
                        help="episodes per fine-tuning round")
    parser.add_argument("--finetune-updates", type=int, default=d("finetune_updates"),
                        help="gradient steps per fine-tuning round")
    parser.add_argument("--final-episodes", type=int, default=d("final_episodes"),
                        help="episodes of each method's final evaluation")
    parser.add_argument("--max-steps", type=int, default=None, help="episode length (default: the dataset card's)")
    parser.add_argument("--task", default=None, help="environment (default: the dataset card's task)")
    parser.add_argument("--lane", type=int, default=d("lane"), help="which lane of the CDT run")
    parser.add_argument("--seed", type=int, default=d("seed"))
    parser.add_argument("--sample-actions", action="store_true",
                        help="deploy the CDT sampling its Gaussian head (default: its mean, as OSRL)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<time>-offline-pls)")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=handle, parser=parser)
    return parser


def settings_from_namespace(namespace: argparse.Namespace) -> PLSSettings:
    grid = _numbers(namespace.grid, "--grid", (2,), int)
    return PLSSettings(
        threshold=namespace.threshold, episodes_per_query=namespace.episodes_per_query,
        iterations=namespace.iterations, grid=grid,
        return_range=_numbers(namespace.return_range, "--return-range", (2,)),
        cost_range=_numbers(namespace.cost_range, "--cost-range", (2,)),
        seed_box=("top" if namespace.seed_box == "top" else _numbers(namespace.seed_box, "--seed-box", (4,))),
        seed_margin=namespace.seed_margin, seed_safe_fraction=namespace.seed_safe_fraction,
        preset=namespace.preset,
        reward_lengthscale=_numbers(namespace.reward_lengthscale, "--reward-lengthscale", (1, 2)),
        cost_lengthscale=_numbers(namespace.cost_lengthscale, "--cost-lengthscale", (1, 2)),
        reward_variance=namespace.reward_variance, cost_variance=namespace.cost_variance,
        reward_noise=namespace.reward_noise, cost_noise=namespace.cost_noise, delta=namespace.delta,
        beta_scale=namespace.beta_scale, zeta=namespace.zeta, lipschitz=namespace.lipschitz,
        safe_set=namespace.safe_set, expander=namespace.expander, width=namespace.width,
        baselines=tuple(b for b in namespace.baselines.split(",") if b),
        finetune_episodes=_numbers(namespace.finetune_episodes, "--finetune-episodes", None, int) or (),
        finetune_round_episodes=namespace.finetune_round_episodes, finetune_updates=namespace.finetune_updates,
        final_episodes=namespace.final_episodes, max_steps=namespace.max_steps, task=namespace.task,
        lane=namespace.lane, seed=namespace.seed, sample_actions=namespace.sample_actions)


def _print_summary(summary: dict) -> None:
    print(f"\n{'method':<16} {'episodes':>9} {'violations':>11} {'final reward':>13} {'final cost':>11} {'safe':>5}")
    for name, m in summary["methods"].items():
        reward = "-" if m["final_reward"] is None else f"{m['final_reward']:.3f}"
        cost = "-" if m["final_cost"] is None else f"{m['final_cost']:.3f}"
        print(f"{name:<16} {m['episodes']:>9d} {m['violations']:>11d} {reward:>13} {cost:>11} "
              f"{str(m['final_safe']):>5}")


def handle(namespace: argparse.Namespace) -> int:
    """Run ``jaxsafe offline pls`` from parsed flags (``ValueError`` / ``FileExistsError`` on bad input)."""
    settings = settings_from_namespace(namespace)
    out = namespace.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-offline-pls"
    summary = run_pls_experiment(settings, namespace.run_dir, out, progress=not namespace.quiet)
    _print_summary(summary)
    print(f"\nrun directory: {out}")
    return 0
