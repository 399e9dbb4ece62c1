"""Policy-gradient losses shared by every on-policy learner: PPO, CPO/TRPO-Lagrangian, Safe-RLHF, GRPO.

All functions work on arrays of any shape (elementwise, then a mean over the valid entries), so they serve a
``[batch]`` of environment steps and a ``[sequences, tokens]`` batch of LLM tokens alike. ``mask`` selects the
entries that count (``None``: all of them).

* :func:`standardise` / :func:`centre`: advantage normalisation (one epsilon for everyone, :data:`STD_EPS`).
* :func:`mix_advantages`: the Lagrangian advantage ``(A_r - sum_i m_i A_c,i) / (1 + sum_i m_i)`` (OmniSafe's
  normalisation), for one cost or a trailing axis of ``n_costs``.
* :func:`clipped_surrogate`: PPO's clipped objective as a loss, with the clip fraction and the ``k3`` KL estimate.
* :func:`value_loss`: ``0.5 (v - target)^2``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["STD_EPS", "masked_mean", "standardise", "centre", "mix_advantages", "SurrogateLoss",
           "clipped_surrogate", "value_loss", "approx_kl"]

#: Added to the standard deviation when standardising advantages (PPO, CPO, Safe-RLHF, GRPO).
STD_EPS = 1e-8


def masked_mean(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of ``x`` over the entries where ``mask`` is true (all entries when ``mask`` is None); 0 if none."""
    if mask is None:
        return jnp.mean(x)
    mask = jnp.broadcast_to(mask, x.shape)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def standardise(x: jax.Array, mask: jax.Array | None = None, eps: float = STD_EPS) -> jax.Array:
    """``(x - mean) / (std + eps)`` over the valid entries."""
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean((x - mean) ** 2, mask))
    return (x - mean) / (std + eps)


def centre(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``x - mean`` over the valid entries (cost advantages are centred, not scaled, as OmniSafe does)."""
    return x - masked_mean(x, mask)


def mix_advantages(reward_advantage: jax.Array, cost_advantage: jax.Array, multiplier: jax.Array) -> jax.Array:
    """The Lagrangian advantage ``(A_r - sum_i m_i A_c,i) / (1 + sum_i m_i)``.

    Args:
      reward_advantage: ``[...]``.
      cost_advantage: ``[...]`` with a scalar ``multiplier``, or ``[..., n_costs]`` with ``multiplier [n_costs]``.
      multiplier: ``>= 0`` penalty weight(s).
    """
    multiplier = jnp.asarray(multiplier)
    if multiplier.ndim == 0:
        return (reward_advantage - multiplier * cost_advantage) / (1.0 + multiplier)
    if cost_advantage.shape[-1:] != multiplier.shape:
        raise ValueError(f"cost_advantage must end in the cost axis {multiplier.shape}, got {cost_advantage.shape}")
    penalty = jnp.sum(cost_advantage * multiplier, axis=-1)
    return (reward_advantage - penalty) / (1.0 + jnp.sum(multiplier))


class SurrogateLoss(NamedTuple):
    loss: jax.Array  # scalar: minus the clipped surrogate, averaged over valid entries
    ratio: jax.Array  # the probability ratios, the shape of the inputs
    clip_fraction: jax.Array  # share of valid entries whose ratio left [1 - eps, 1 + eps]
    approx_kl: jax.Array  # k3 estimate of KL(old || new): mean of (r - 1) - log r


def approx_kl(log_ratio: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Schulman's ``k3`` estimator ``E[(r - 1) - log r]`` of ``KL(old || new)`` from ``log r = log pi - log pi_old``."""
    return masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)


def clipped_surrogate(log_prob: jax.Array, old_log_prob: jax.Array, advantage: jax.Array, clip_eps,
                      mask: jax.Array | None = None, clip_eps_high=None) -> SurrogateLoss:
    """PPO's clipped surrogate as a loss: ``-mean(min(r A, clip(r, 1 - eps, 1 + eps_high) A))``.

    ``clip_eps_high`` (DAPO's asymmetric clip) defaults to ``clip_eps``. Masked entries are excluded from every
    mean and their ratio is taken at log-ratio 0, so padding cannot produce inf.
    """
    clip_eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = log_prob - old_log_prob
    if mask is not None:
        log_ratio = jnp.where(mask, log_ratio, 0.0)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
    objective = jnp.minimum(ratio * advantage, clipped * advantage)
    outside = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_eps_high)
    return SurrogateLoss(-masked_mean(objective, mask), ratio, masked_mean(outside.astype(jnp.float32), mask),
                         approx_kl(log_ratio, mask))


def value_loss(prediction: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``mean(0.5 (prediction - target)^2)`` over the valid entries."""
    return masked_mean(0.5 * (prediction - target) ** 2, mask)
