"""Reverse scans over trajectories: generalised advantage estimation and returns-to-go (one of each).

``gae`` is written for one unbatched trajectory (vmap over environments); ``returns_to_go`` works on a flat
batch of concatenated episodes (the bi-level samplers, offline datasets).

Episode boundaries inside a rollout are handled explicitly: ``next_values[t]`` is the critic at the true successor
of step ``t`` (for an episode that ended at ``t``, the pre-reset final observation), ``terminated[t]`` removes the
bootstrap (a natural end has value zero), and ``episode_end[t] = terminated[t] | truncated[t]`` stops the
lambda-trace from leaking into the next episode. A truncated step therefore still bootstraps from its final
observation, which is what time-limit truncation requires.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    episode_end: jax.Array,
    gamma: float | jax.Array,
    gae_lambda: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Advantages and value targets for one trajectory.

    Args:
      rewards: ``[T]`` rewards (or costs) ``r_t``.
      values: ``[T]`` ``V(s_t)``.
      next_values: ``[T]`` ``V(s_{t+1})`` at the true successor state.
      terminated: ``[T]`` bool, ``s_{t+1}`` is terminal (no bootstrap).
      episode_end: ``[T]`` bool, the episode ended at ``t`` (terminated or truncated).
      gamma: discount. gae_lambda: GAE lambda.

    Returns:
      ``(advantages [T], returns [T])`` with ``returns = advantages + values``.
    """
    chex.assert_rank([rewards, values, next_values, terminated, episode_end], 1)
    chex.assert_equal_shape([rewards, values, next_values, terminated, episode_end])
    not_terminal = 1.0 - terminated.astype(values.dtype)
    continues = 1.0 - episode_end.astype(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values

    def backward(carry, inputs):
        delta, cont = inputs
        advantage = delta + gamma * gae_lambda * cont * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros((), values.dtype), (deltas, continues), reverse=True)
    return advantages, advantages + values


#: ``gae`` over a ``[T, num_envs]`` rollout (time-major, as the learners collect it).
batched_gae = jax.vmap(gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)


def returns_to_go(step_values: jax.Array, done: jax.Array, discount: jax.Array) -> jax.Array:
    """Discounted sums within episodes, ``G_t = v_t + discount (1 - done_t) G_t+1``, by a reverse scan.

    Args:
      step_values: ``[N, ...]`` per-step quantities; done: ``[N]`` bool episode ends; discount: scalar.
    Returns:
      ``[N, ...]``. The last (unfinished) episode of a batch is cut at the batch end.
    """
    assert done.shape == step_values.shape[:1], (done.shape, step_values.shape)

    def step(next_return, inputs):
        value, episode_end = inputs
        current = value + discount * jnp.where(episode_end, 0.0, 1.0) * next_return
        return current, current

    _, returns = jax.lax.scan(step, jnp.zeros_like(step_values[0]), (step_values, done), reverse=True)
    return returns
