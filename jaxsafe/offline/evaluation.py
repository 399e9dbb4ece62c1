"""Evaluation of trained offline learners with DSRL's metrics: the policy of each learner, and whole run directories.

* :func:`make_policy`: the :class:`~jaxsafe.policy.Policy` of a trained ``bc_all`` / ``bc_safe`` / ``bcq_lag`` /
  ``cdt`` (the CDT conditioned on ``(target_return, target_cost)``) and the environment to play it on (the CDT
  reads its realised reward and cost through :class:`~jaxsafe.offline.feedback.RewardCostFeedback`).
* :func:`evaluate_policy`: vmapped episodes scored by :func:`jaxsafe.offline.metrics.score`.
* :func:`evaluate_run`: every lane of a run directory written by ``jaxsafe train ALGO --problem DATA.npz`` on the
  task named in the dataset's card.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxsafe import envs
from jaxsafe.evaluate import rollout_episodes
from jaxsafe.offline import baselines, bcq_lag, cdt, metrics
from jaxsafe.offline.collect import load_card
from jaxsafe.offline.feedback import RewardCostFeedback
from jaxsafe.sweep import lane

__all__ = ["make_policy", "evaluate_policy", "evaluate_run"]


def make_policy(algorithm: str, config, dataset, params, hparams, env, env_params, target_return=None,
                target_cost=None, deterministic: bool = True):
    """``(policy, env)``: the trained learner's policy and the environment wrapper it plays on.

    ``deterministic=False`` samples the CDT's Gaussian head instead of playing its mean (OSRL's evaluation); the
    baselines are deterministic actors and refuse it."""
    space = env.action_space(env_params)
    if algorithm == "cdt":
        if target_return is None or target_cost is None:
            raise ValueError("cdt needs --target-return and --target-cost (the CDT is conditioned on them)")
        return (cdt.make_policy(config, dataset, params, hparams, target_return, target_cost, space.low, space.high,
                                deterministic), RewardCostFeedback(env))
    if not deterministic:
        raise ValueError(f"deterministic: {algorithm} is a deterministic actor; only cdt samples its actions")
    if algorithm in ("bc_all", "bc_safe"):
        return baselines.make_policy(config, dataset, params, space.low, space.high), env
    if algorithm == "bcq_lag":
        return bcq_lag.make_policy(config, dataset, params, hparams), env
    raise ValueError(f"algorithm: one of bc_all, bc_safe, bcq_lag, cdt, got {algorithm!r}")


def evaluate_policy(policy, env, env_params, key, episodes: int, max_steps: int, reward_min: float,
                    reward_max: float, threshold: float) -> dict:
    """DSRL's score of ``episodes`` vmapped episodes (``reward``, ``reward_std``, ``cost``, ``cost_std``: normalised;
    ``safe``) plus the raw means ``episode_return`` and ``episode_cost``."""
    rollouts = jax.jit(lambda k: rollout_episodes(env, env_params, policy, k, episodes, max_steps))(key)
    returns, costs = np.asarray(rollouts.returns), np.asarray(rollouts.costs)
    score = metrics.score(returns, costs, reward_min, reward_max, threshold)
    return {**score._asdict(), "episode_return": float(returns.mean()), "episode_cost": float(costs.mean())}


def _better(row: dict, best: dict | None) -> bool:
    """OSRL's checkpoint rule: the lower normalised cost wins, ties go to the higher normalised reward."""
    return best is None or row["cost"] < best["cost"] or (row["cost"] == best["cost"] and row["reward"] > best["reward"])


def evaluate_run(out_dir, target_return=None, target_cost=None, episodes: int = 20, threshold=None,
                 task: str | None = None, seed: int = 0, checkpoint="latest",
                 deterministic: bool = True) -> list[dict]:
    """One result row per lane of the run in ``out_dir``.

    ``task`` defaults to the dataset card's; ``threshold`` to ``target_cost`` (CDT) or the lane's ``cost_limit``.
    ``checkpoint``: ``"latest"`` (the newest usable one), a chunk number, or ``"best"``: every checkpoint the run
    kept is evaluated and each lane reports its best by OSRL's rule (lowest normalised cost, ties by reward;
    train with ``keep_checkpoints=0`` to keep every chunk's). ``deterministic=False``: the CDT samples its
    Gaussian head (see :func:`make_policy`). Selecting by online rollouts is what OSRL reports;
    it uses the environment, so it is not purely offline. Each row has ``checkpoint_step`` and, for ``"best"``,
    ``checkpoints_compared``.

    Raises:
      ValueError: a negative target, a missing card and no ``task``, an algorithm that is not offline, or an
        unknown ``checkpoint``.
    """
    from jaxsafe import checkpoint as checkpoints
    from jaxsafe.runner import checkpoint_steps, restore_run

    if not (checkpoint in ("latest", "best") or (isinstance(checkpoint, int) and not isinstance(checkpoint, bool))):
        raise ValueError(f"checkpoint: 'latest', 'best' or a chunk number, got {checkpoint!r}")
    steps = checkpoint_steps(out_dir)
    if isinstance(checkpoint, int) and checkpoint not in steps:
        raise ValueError(f"checkpoint: {out_dir} holds chunks {steps}, not {checkpoint}")
    restored = restore_run(out_dir, checkpoint if isinstance(checkpoint, int) else None)
    spec, (algo, dataset, config, grid, parts), step, state = restored
    if task is None:
        card_file = Path(spec.problem).with_suffix(".json")
        if not card_file.is_file():
            raise ValueError(f"task: the dataset {spec.problem} has no card ({card_file}); pass --task")
        card = load_card(spec.problem)
        task, max_steps = card["task"], int(card["max_steps"])
    else:
        max_steps = None
    env, env_params = envs.make(task)
    if max_steps is None:
        max_steps = int(getattr(env_params, "max_steps", 1000))
    reward_min, reward_max = metrics.reward_range(dataset)

    def lane_rows(lane_state, at_step):
        rows = []
        for index, point in enumerate(grid.points):
            hparams = lane(grid.hparams, index)
            policy, play_env = make_policy(spec.algorithm, config, dataset, lane(lane_state.params, index), hparams,
                                           env, env_params, target_return, target_cost, deterministic)
            limit = threshold if threshold is not None else (
                target_cost if spec.algorithm == "cdt" else float(getattr(hparams, "cost_limit")))
            row = evaluate_policy(policy, play_env, env_params, jax.random.PRNGKey(seed), episodes, max_steps,
                                  reward_min, reward_max, float(limit))
            rows.append({**point, "threshold": float(limit), "checkpoint_step": int(at_step), **row})
        return rows

    if checkpoint != "best":
        return lane_rows(state, step)
    from jaxsafe.logging import RunDir

    run_checkpoints = RunDir(out_dir, must_exist=True).checkpoint_dir
    best = [None] * grid.size
    for candidate in steps:
        candidate_state = state if candidate == step else checkpoints.restore(run_checkpoints, state, candidate)[1]
        for index, row in enumerate(lane_rows(candidate_state, candidate)):
            if _better(row, best[index]):
                best[index] = row
    return [{**row, "checkpoints_compared": len(steps)} for row in best]
