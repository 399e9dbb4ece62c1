"""Policy evaluation: independent episodes of any policy on any :class:`~jaxsafe.envs.core.SafeEnv`, vmapped.

One rollout primitive shared by ``jaxsafe eval`` (:func:`jaxsafe.runner.evaluate_run`), the flipping-policy mixtures
(:mod:`jaxsafe.rl.flipping`) and the benchmarks. Episodes do not auto-reset: each of the ``N`` lanes plays one
episode of at most ``K`` steps and masks the steps after it ends.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["EpisodeRollouts", "rollout_episodes"]


class EpisodeRollouts(NamedTuple):
    """``N`` episodes of at most ``K`` steps: ``returns``/``costs`` ``[N]``, ``unsafe``/``valid`` ``[N, K]``,
    ``lengths`` ``[N]`` and ``finished`` ``[N]`` (the episode terminated or was truncated within ``K`` steps)."""

    returns: jax.Array
    costs: jax.Array
    unsafe: jax.Array
    valid: jax.Array
    lengths: jax.Array
    finished: jax.Array


def rollout_episodes(env, env_params, act, key, num_episodes: int, num_steps: int) -> EpisodeRollouts:
    """Run ``num_episodes`` independent episodes of at most ``num_steps`` steps (vmapped; jit the caller).

    ``act(obs, step_key, episode_key) -> action``; the ``episode_key`` is the same at every step of an episode
    (what :func:`jaxsafe.rl.flipping.mixture_policy` uses for once-per-episode flipping). Steps after an episode
    terminates or is truncated are masked (``valid``). A step is unsafe when its summed cost is positive, or, when
    the environment reports it (:class:`jaxsafe.rl.flipping.ChanceConstraintCost`), from ``info["unsafe"]``.
    """

    def one(key):
        reset_key, episode_key, key = jax.random.split(key, 3)
        state, timestep = env.reset(reset_key, env_params)

        def step(carry, step_key):
            state, obs, alive = carry
            act_key, env_key = jax.random.split(step_key)
            action = act(obs, act_key, episode_key)
            state, ts = env.step(env_key, state, action, env_params)
            unsafe = ts.info["unsafe"] if "unsafe" in ts.info else (ts.cost.sum(-1) > 0).astype(jnp.float32)
            live = alive > 0  # where, not a product: a finished episode's later steps may be non-finite
            out = (jnp.where(live, ts.reward, 0.0), jnp.where(live, ts.cost.sum(-1), 0.0),
                   jnp.where(live, unsafe, 0.0), alive)
            alive = alive * (1.0 - jnp.logical_or(ts.terminated, ts.truncated).astype(jnp.float32))
            return (state, ts.obs, alive), out

        (_, _, alive), (reward, cost, unsafe, valid) = jax.lax.scan(
            step, (state, timestep.obs, jnp.ones((), jnp.float32)), jax.random.split(key, num_steps))
        return EpisodeRollouts(reward.sum(), cost.sum(), unsafe, valid, valid.sum(), alive == 0)

    return jax.vmap(one)(jax.random.split(key, num_episodes))
