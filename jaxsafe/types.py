"""Pytrees shared across jaxsafe: what environments emit, what learners collect and return.

All of them are ``NamedTuple``s, so they are pytrees that ``jit``, ``vmap`` and ``lax.scan`` carry without
registration, and their fields are positional-stable for checkpointing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

PyTree = Any
Array = jax.Array


class TimeStep(NamedTuple):
    """One environment emission.

    Shapes are for a single (unbatched) environment; a vectorised environment adds a leading axis to every leaf.

    Attributes:
      obs: observation, any pytree of arrays (usually ``(obs_dim,)`` float32).
      reward: scalar float32 reward for the transition that produced ``obs``.
      cost: ``(n_costs,)`` float32, non-negative per-step costs; an episode's cost return is their sum.
      terminated: scalar bool, the episode reached a natural terminal state (no bootstrapping).
      truncated: scalar bool, the episode was cut by a time limit (bootstrap from ``info["final_obs"]``
        when an auto-reset wrapper replaced ``obs`` with a reset observation).
      info: dict of arrays; the same keys and shapes on ``reset`` and ``step``.
    """

    obs: PyTree
    reward: Array
    cost: Array
    terminated: Array
    truncated: Array
    info: dict


class Transition(NamedTuple):
    """One step of on-policy experience, as collected by a rollout (leading axes ``[T, num_envs]``).

    ``next_value`` and ``next_cost_value`` are the critics at the true successor observation (the pre-reset
    ``final_obs`` on an episode end), so time-limit truncation bootstraps correctly.
    """

    obs: PyTree
    action: Array
    log_prob: Array
    value: Array
    cost_value: Array
    reward: Array
    cost: Array
    terminated: Array
    truncated: Array
    next_value: Array
    next_cost_value: Array


class TrainResult(NamedTuple):
    """What every ``train(key, hparams)`` returns.

    Attributes:
      params: final learner parameters (a pytree; under ``vmap`` every leaf gets the grid axis).
      metrics: dict of arrays with a leading update axis ``[num_updates, ...]``.
    """

    params: PyTree
    metrics: dict
