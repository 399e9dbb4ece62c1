"""Shared pieces of the offline learners: the clipped AdamW step with traced rates, episode tables, step sampling.

* :func:`clipped_adamw_step`: global-norm clipping then AdamW (the arithmetic of ``optax.chain(clip_by_global_norm,
  adamw)``) with a traced learning rate and weight decay, so grids can sweep both.
* :class:`EpisodeTable` / :func:`episode_table`: per-episode start index, length, return and summed cost of a
  :class:`~jaxsafe.offline.dataset.TrajectoryDataset` (host arrays, computed once).
* :func:`sample_steps`: batch indices drawn with per-step weights (BC-Safe's safe-episode filter is a weight).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsafe.offline.dataset import TrajectoryDataset, episode_returns

__all__ = ["ADAM", "clipped_adamw_step", "EpisodeTable", "episode_table", "sample_steps", "tree_all_finite"]

#: The Adam direction every offline learner uses (``ADAM.init(params)`` is the optimiser state).
ADAM = optax.scale_by_adam()


def clipped_adamw_step(grads, adam_state, params, learning_rate, weight_decay=0.0, max_grad_norm=None):
    """One AdamW step after clipping ``grads`` to global norm ``max_grad_norm`` (``None``: no clipping).

    Returns ``(params, adam_state, grad_norm)`` (the norm before clipping).
    """
    grad_norm = optax.tree.norm(grads)
    if max_grad_norm is not None:
        scale = jnp.minimum(1.0, max_grad_norm / jnp.maximum(grad_norm, 1e-12))
        grads = jax.tree.map(lambda g: g * scale, grads)
    direction, adam_state = ADAM.update(grads, adam_state, params)
    params = jax.tree.map(lambda p, d: p - learning_rate * (d + weight_decay * p), params, direction)
    return params, adam_state, grad_norm


class EpisodeTable(NamedTuple):
    """Per episode ``[E]``: first step index, length, return and cost return (summed over cost signals)."""

    starts: np.ndarray
    lengths: np.ndarray
    returns: np.ndarray
    costs: np.ndarray


def episode_table(dataset: TrajectoryDataset) -> EpisodeTable:
    ids = np.asarray(dataset.episode_ids)
    first = np.concatenate([[True], ids[1:] != ids[:-1]])
    starts = np.flatnonzero(first).astype(np.int32)
    lengths = np.diff(np.concatenate([starts, [ids.shape[0]]])).astype(np.int32)
    returns, costs = episode_returns(dataset)
    return EpisodeTable(starts, lengths, returns.astype(np.float32), costs.sum(-1).astype(np.float32))


def sample_steps(key, weights, batch_size: int):
    """``[batch_size]`` step indices drawn with probability proportional to ``weights [N]`` (all-zero: uniform)."""
    total = weights.sum()
    probs = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 1.0 / weights.shape[0])
    return jax.random.choice(key, weights.shape[0], (batch_size,), p=probs)


def tree_all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
