"""Policy evaluation: independent episodes of any :class:`~jaxsafe.policy.Policy` on any safe environment, vmapped.

One rollout primitive shared by ``jaxsafe eval`` (:func:`jaxsafe.runner.evaluate_run`), the flipping-policy mixtures
(:mod:`jaxsafe.rl.flipping`), offline datasets (:func:`jaxsafe.offline.collect_dataset`) and the benchmarks.
Episodes do not auto-reset: each of the ``N`` lanes plays one episode of at most ``K`` steps and masks the steps
after it ends. The policy's ``init`` is called once at the start of every episode and its state is carried through
the episode's steps, so per-episode randomness (a flipping coin) and history (a decision transformer's context)
live in the policy, not in the rollout.

* :func:`rollout_episodes`: per-episode return, cost and unsafe indicators (:class:`EpisodeRollouts`).
* :func:`rollout_trajectories`: every step (observations, actions, rewards, cost vectors, ends) as
  :class:`EpisodeTrajectories`, the raw material of a dataset.

Both play exactly the same episodes for the same key.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsafe.policy import Policy

__all__ = ["EpisodeRollouts", "EpisodeTrajectories", "rollout_episodes", "rollout_trajectories"]


class EpisodeRollouts(NamedTuple):
    """``N`` episodes of at most ``K`` steps: ``returns``/``costs`` ``[N]`` (costs summed over cost signals),
    ``unsafe``/``valid`` ``[N, K]``, ``lengths`` ``[N]`` and ``finished`` ``[N]`` (the episode terminated or was
    truncated within ``K`` steps)."""

    returns: jax.Array
    costs: jax.Array
    unsafe: jax.Array
    valid: jax.Array
    lengths: jax.Array
    finished: jax.Array


class EpisodeTrajectories(NamedTuple):
    """``N`` episodes of at most ``K`` steps, step by step (leading axes ``[N, K]``).

    Attributes:
      observations: ``[N, K, ...]`` the observation each step acted on.
      next_observations: ``[N, K, ...]`` the observation the step produced.
      actions: ``[N, K, ...]`` the actions the policy returned (what the environment received).
      rewards: ``[N, K]``.
      costs: ``[N, K, n_costs]``.
      terminated: ``[N, K]`` bool, the step reached a terminal state.
      truncated: ``[N, K]`` bool, the environment's time limit cut the episode at this step.
      unsafe: ``[N, K]`` float, the step's unsafe indicator (as in :class:`EpisodeRollouts`).
      valid: ``[N, K]`` bool, the step belongs to the episode (``False`` after it ended).
    """

    observations: Any
    next_observations: Any
    actions: Any
    rewards: jax.Array
    costs: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    unsafe: jax.Array
    valid: jax.Array


def _play_episode(env, env_params, policy: Policy, key, num_steps: int) -> tuple[EpisodeTrajectories, jax.Array]:
    """One episode of at most ``num_steps`` steps (unbatched): its ``[K]`` steps and whether it is still running."""
    reset_key, policy_key, key = jax.random.split(key, 3)
    state, timestep = env.reset(reset_key, env_params)
    policy_state = policy.init(policy_key)

    def step(carry, step_key):
        state, policy_state, obs, alive = carry
        act_key, env_key = jax.random.split(step_key)
        policy_state, action = policy.step(policy_state, obs, act_key)
        state, ts = env.step(env_key, state, action, env_params)
        unsafe = ts.info["unsafe"] if "unsafe" in ts.info else (ts.cost.sum(-1) > 0).astype(jnp.float32)
        record = EpisodeTrajectories(obs, ts.obs, action, ts.reward, ts.cost, ts.terminated, ts.truncated, unsafe,
                                     alive > 0)
        alive = alive * (1.0 - jnp.logical_or(ts.terminated, ts.truncated).astype(jnp.float32))
        return (state, policy_state, ts.obs, alive), record

    (_, _, _, alive), steps = jax.lax.scan(
        step, (state, policy_state, timestep.obs, jnp.ones((), jnp.float32)), jax.random.split(key, num_steps))
    return steps, alive


def rollout_trajectories(env, env_params, policy: Policy, key, num_episodes: int,
                         num_steps: int) -> EpisodeTrajectories:
    """Every step of ``num_episodes`` independent episodes of at most ``num_steps`` steps (vmapped; jit the
    caller). The same episodes as :func:`rollout_episodes` with the same key."""
    return jax.vmap(lambda k: _play_episode(env, env_params, policy, k, num_steps)[0])(
        jax.random.split(key, num_episodes))


def rollout_episodes(env, env_params, policy: Policy, key, num_episodes: int, num_steps: int) -> EpisodeRollouts:
    """Run ``num_episodes`` independent episodes of at most ``num_steps`` steps (vmapped; jit the caller).

    ``policy`` is a :class:`~jaxsafe.policy.Policy`: ``policy.init(key)`` once per episode, then
    ``policy.step(state, obs, key) -> (state, action)`` every step (a trained learner's ``act`` becomes one with
    :func:`jaxsafe.policy.from_act`). Steps after an episode terminates or is truncated are masked (``valid``) and
    contribute nothing. A step is unsafe when its summed cost is positive, or, when the environment reports it
    (:class:`jaxsafe.rl.flipping.ChanceConstraintCost`), from ``info["unsafe"]``.
    """

    def one(key):
        steps, alive = _play_episode(env, env_params, policy, key, num_steps)
        live = steps.valid  # where, not a product: a finished episode's later steps may be non-finite
        reward = jnp.where(live, steps.rewards, 0.0)
        cost = jnp.where(live, steps.costs.sum(-1), 0.0)
        valid = live.astype(jnp.float32)
        return EpisodeRollouts(reward.sum(), cost.sum(), jnp.where(live, steps.unsafe, 0.0), valid, valid.sum(),
                               alive == 0)

    return jax.vmap(one)(jax.random.split(key, num_episodes))
