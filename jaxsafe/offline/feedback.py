"""Reward and cost feedback for return-conditioned policies: an environment wrapper.

A :class:`~jaxsafe.policy.Policy` sees only observations, but a decision transformer at deployment must lower its
targets by the reward and cost each step realised. :class:`RewardCostFeedback` makes the observation the dict
``{"obs": obs, "reward": r, "cost": c}`` with ``r`` the reward and ``c`` the summed cost of the transition that
produced ``obs`` (both ``0`` at reset), so any rollout (:func:`jaxsafe.evaluate.rollout_episodes`) can play such a
policy unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsafe.envs.core import Wrapper

__all__ = ["RewardCostFeedback"]


class RewardCostFeedback(Wrapper):
    """``obs -> {"obs": obs, "reward": [] float32, "cost": [] float32}`` (the previous step's reward and summed
    cost; ``0`` on reset). ``observation_space`` stays the wrapped environment's (the ``"obs"`` entry's)."""

    def reset(self, key, params):
        state, timestep = self.env.reset(key, params)
        zero = jnp.zeros((), jnp.float32)
        return state, timestep._replace(obs={"obs": timestep.obs, "reward": zero, "cost": zero})

    def step(self, key, state, action, params):
        state, timestep = self.env.step(key, state, action, params)
        obs = {"obs": timestep.obs, "reward": jnp.asarray(timestep.reward, jnp.float32),
               "cost": jnp.sum(timestep.cost).astype(jnp.float32)}
        return state, timestep._replace(obs=obs)
