"""Offline datasets from our own tasks: a ladder of behaviour policies that spans a reward-cost frontier.

DSRL's datasets spread episodes from safe-and-poor to unsafe-and-good. Here the behaviour policies are constrained
learners of the registry (``ppo_lag``, ``cpo``, ...) trained at several cost limits in **one vmapped sweep per
algorithm** (:func:`jaxsafe.sweep.run_grid`), each then played twice: with its mean action ("clean") and sampling
its Gaussian ("noisy"). :func:`collect_ladder` returns the concatenated :class:`TrajectoryDataset` and its card,
a small JSON-able dict::

    {"task", "max_steps", "behaviours": [{"algorithm", "cost_limit", "seed", "noisy", "episodes"}, ...],
     "episode_behaviour": [index into behaviours, one per episode], "num_episodes", "num_steps",
     "return_range": [min, max], "cost_range": [min, max], "seed", "train_overrides", "format_version"}

:func:`save_card` writes it beside the ``.npz`` (same name, ``.json``), never overwriting.

Note: the navigation tasks' dynamics will change (issue 23); datasets collected on them before then are to be
regenerated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from jaxsafe import envs
from jaxsafe.evaluate import rollout_trajectories
from jaxsafe.learner import train_from_parts
from jaxsafe.offline.dataset import (FORMAT_VERSION, TrajectoryDataset, concatenate, episode_returns,
                                     trajectories_to_dataset)
from jaxsafe.policy import from_act
from jaxsafe.sweep import lane, make_grid, run_grid
from jaxsafe.validation import is_int, require

__all__ = ["LADDER_ALGORITHMS", "train_ladder", "collect_ladder", "save_card", "load_card", "card_path",
           "plot_dataset", "behaviour_label"]

#: The registry algorithms a ladder may use (constrained environment learners with a ``cost_limit``).
LADDER_ALGORITHMS = ("ppo_lag", "ppo_pid", "cpo", "trpo_lag")


def train_ladder(task: str, cost_limits: Sequence[float], algorithm: str = "ppo_lag", seed: int = 0,
                 train_overrides: dict | None = None):
    """Train ``algorithm`` on ``task`` at every cost limit in one vmapped sweep.

    Returns ``(act, params_per_limit)``: the algorithm's ``act(params, obs, key, deterministic)`` and one parameter
    pytree per cost limit (in order).
    """
    from jaxsafe.algorithms import get_algorithm

    require(algorithm in LADDER_ALGORITHMS, "algorithm", f"one of {LADDER_ALGORITHMS}", algorithm)
    require(len(cost_limits) > 0 and all(float(c) >= 0 for c in cost_limits), "cost_limits",
            "a non-empty list of numbers >= 0", cost_limits)
    algo = get_algorithm(algorithm)
    problem = envs.make(task)
    config = algo.make_config(**(train_overrides or {}))
    train = train_from_parts(algo.make_train_parts(config, problem))
    grid = make_grid(algo.hparams_for(config, problem), seeds=[seed], cost_limit=[float(c) for c in cost_limits])
    result = run_grid(train, grid)
    return algo.make_act(config, problem), [lane(result.params, i) for i in range(grid.size)]


def collect_ladder(task: str, key, episodes_per_policy: int, cost_limits: Sequence[float],
                   algorithms: Sequence[str] = ("ppo_lag",), noise: Sequence[bool] = (False, True),
                   train_overrides: dict | None = None, max_steps: int | None = None, seed: int = 0,
                   progress: bool = False) -> tuple[TrajectoryDataset, dict]:
    """A dataset on ``task`` from the behaviour ladder ``algorithms x cost_limits x noise`` and its card.

    ``max_steps`` defaults to the task's horizon (``env_params.max_steps``). Each behaviour policy plays
    ``episodes_per_policy`` episodes (one vmapped rollout each).
    """
    require(is_int(episodes_per_policy), "episodes", "an integer >= 1", episodes_per_policy)
    env, env_params = envs.make(task)
    if max_steps is None:
        max_steps = int(getattr(env_params, "max_steps", 1000))
    require(is_int(max_steps), "max_steps", "an integer >= 1", max_steps)
    behaviours, parts, episode_behaviour = [], [], []
    plan = []
    for algorithm in algorithms:
        act, params_per_limit = train_ladder(task, cost_limits, algorithm, seed, train_overrides)
        # one compiled rollout per (algorithm, noise): the behaviour's parameters are an argument, not a constant
        play = {noisy: jax.jit(lambda params, k, noisy=noisy: rollout_trajectories(
            env, env_params, from_act(act, params, deterministic=not noisy), k, episodes_per_policy, max_steps))
            for noisy in noise}
        for cost_limit, params in zip(cost_limits, params_per_limit):
            for noisy in noise:
                plan.append((dict(algorithm=algorithm, cost_limit=float(cost_limit), seed=seed, noisy=bool(noisy),
                                  episodes=episodes_per_policy), play[noisy], params))
    iterator = plan
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(plan, desc=f"collect {task}", unit="policy")
    for index, (behaviour, play, params) in enumerate(iterator):
        key, collect_key = jax.random.split(key)
        parts.append(trajectories_to_dataset(play(params, collect_key), f"collect_ladder({task})"))
        behaviours.append(behaviour)
        episode_behaviour += [index] * parts[-1].num_episodes
    dataset = concatenate(parts)
    returns, costs = episode_returns(dataset)
    costs = costs.sum(-1)
    card = dict(task=task, max_steps=max_steps, behaviours=behaviours, episode_behaviour=episode_behaviour,
                num_episodes=dataset.num_episodes, num_steps=dataset.num_steps,
                return_range=[float(returns.min()), float(returns.max())],
                cost_range=[float(costs.min()), float(costs.max())], seed=seed,
                train_overrides=json.loads(json.dumps(train_overrides or {})), format_version=FORMAT_VERSION)
    return dataset, card


def behaviour_label(behaviour: dict) -> str:
    """A short legend label for a card's behaviour entry, e.g. ``ppo_lag d=25 noisy``."""
    return (f"{behaviour['algorithm']} d={behaviour['cost_limit']:g}" + (" noisy" if behaviour.get("noisy") else ""))


def plot_dataset(path: str | os.PathLike, dataset: TrajectoryDataset, card: dict | None = None,
                 thresholds: Sequence[float] = (), frontier_degree: int | None = 4) -> Path:
    """DSRL's dataset figure: each episode's return against its cost return, one colour per behaviour policy
    (from the card's ``episode_behaviour``; one colour without a card), the fitted reward-cost Pareto frontier
    (:func:`jaxsafe.offline.pareto.fit_frontier`, degree ``frontier_degree``; None: no line) and dotted lines at
    the cost ``thresholds``."""
    from jaxsafe.offline.pareto import fit_frontier
    from jaxsafe.plotting import plot_plane

    returns, costs = episode_returns(dataset)
    costs = costs.sum(-1)
    groups = {}
    if card is not None and "episode_behaviour" in card:
        which = np.asarray(card["episode_behaviour"])
        for index, behaviour in enumerate(card["behaviours"]):
            groups[behaviour_label(behaviour)] = (returns[which == index], costs[which == index])
    else:
        groups["episodes"] = (returns, costs)
    front, label = None, ""
    if frontier_degree is not None:
        grid = np.linspace(costs.min(), costs.max(), 100)
        frontier = fit_frontier(costs, returns, frontier_degree)
        front, label = (grid, frontier(grid)), f"Pareto frontier (degree {frontier.order} fit)"
    task = (card or {}).get("task", "dataset")
    return plot_plane(path, front, groups, list(thresholds) or None, title=f"{task}: {len(returns)} episodes",
                      xlabel="episode cost return", ylabel="episode return",
                      front_label=label, marker_size=3,
                      legend_loc="best", threshold_label="cost threshold {threshold:g}")


def card_path(dataset_path: str | os.PathLike) -> Path:
    """Where a dataset's card lives: the dataset file's name with ``.json``."""
    return Path(dataset_path).with_suffix(".json")


def save_card(card: dict, dataset_path: str | os.PathLike) -> Path:
    """Write ``card`` beside ``dataset_path``; refuses an existing file (``FileExistsError``)."""
    path = card_path(dataset_path)
    with open(path, "x") as handle:
        json.dump(card, handle, indent=1, default=lambda v: np.asarray(v).tolist())
    return path


def load_card(dataset_path: str | os.PathLike) -> dict:
    with open(card_path(dataset_path)) as handle:
        return json.load(handle)
