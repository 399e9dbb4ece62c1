"""DSRL's evaluation metrics: normalised reward, normalised cost and "safe" (Liu et al. 2023, ``dsrl/infos.py``).

* normalised reward ``(R - R_min) / (R_max - R_min)``, with ``R_min`` / ``R_max`` the dataset's smallest and largest
  episode returns (:func:`reward_range`; DSRL ships per-task constants, which a caller may pass instead);
* normalised cost ``(G + eps) / (threshold + eps)`` with ``eps = 1`` only when ``threshold == 0`` (else ``0``), i.e.
  ``G / threshold`` for a positive threshold;
* "safe" when the normalised cost is ``<= 1``.

All functions are pure ``jnp`` maps (jit/vmap-able); :func:`score` reduces vmapped evaluation episodes to the
numbers a results table reports.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxsafe.offline.dataset import TrajectoryDataset, episode_returns

__all__ = ["reward_range", "normalised_reward", "normalised_cost", "is_safe", "Score", "score"]


def reward_range(dataset: TrajectoryDataset) -> tuple[float, float]:
    """The smallest and largest episode return of ``dataset`` (``R_min``, ``R_max``)."""
    returns, _ = episode_returns(dataset)
    return float(np.min(returns)), float(np.max(returns))


def normalised_reward(episode_return, reward_min, reward_max):
    """``(R - R_min) / (R_max - R_min)`` elementwise (``R_max > R_min``; a degenerate range divides by 1)."""
    span = jnp.asarray(reward_max, jnp.float32) - jnp.asarray(reward_min, jnp.float32)
    span = jnp.where(span > 0, span, 1.0)
    return (jnp.asarray(episode_return, jnp.float32) - reward_min) / span


def normalised_cost(episode_cost, threshold):
    """DSRL's ``(G + eps) / (threshold + eps)`` with ``eps = 1`` only when ``threshold == 0`` (``threshold >= 0``)."""
    threshold = jnp.asarray(threshold, jnp.float32)
    eps = jnp.where(threshold == 0, 1.0, 0.0)
    return (jnp.asarray(episode_cost, jnp.float32) + eps) / (threshold + eps)


def is_safe(normalised_episode_cost):
    """DSRL's "safe": normalised cost ``<= 1``."""
    return jnp.asarray(normalised_episode_cost) <= 1.0


class Score(NamedTuple):
    """Mean normalised reward and cost over episodes, their standard deviations, and whether the mean is safe."""

    reward: float
    reward_std: float
    cost: float
    cost_std: float
    safe: bool


def score(episode_returns_, episode_costs, reward_min: float, reward_max: float, threshold: float) -> Score:
    """DSRL's score of evaluation episodes (``[N]`` returns and summed costs, e.g. from ``rollout_episodes``).

    "safe" applies to the mean normalised cost, as DSRL and OSRL report it.
    """
    reward = np.asarray(normalised_reward(episode_returns_, reward_min, reward_max))
    cost = np.asarray(normalised_cost(episode_costs, threshold))
    return Score(float(reward.mean()), float(reward.std()), float(cost.mean()), float(cost.std()),
                 bool(is_safe(cost.mean())))
