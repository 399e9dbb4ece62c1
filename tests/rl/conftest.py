"""Fixtures shared by the RL learner tests."""

import jax.numpy as jnp
import pytest

from jaxsafe import envs
from jaxsafe.envs.core import Wrapper


class ScaledSecondCost(Wrapper):
    """An environment's (single) cost as two signals, ``(c, c / 2)``: a learner must measure and constrain each on
    its own (``n_costs = 2``)."""

    def __init__(self, env):
        super().__init__(env)
        self.n_costs = 2

    def _two(self, timestep):
        return timestep._replace(cost=jnp.concatenate([timestep.cost, 0.5 * timestep.cost]))

    def reset(self, key, params):
        state, timestep = self.env.reset(key, params)
        return state, self._two(timestep)

    def step(self, key, state, action, params):
        state, timestep = self.env.step(key, state, action, params)
        return state, self._two(timestep)


@pytest.fixture(scope="module")
def two_cost_gridworld():
    """``SafeGridWorld`` with costs ``(hazard cost, hazard cost / 2)``."""
    env, params = envs.make("SafeGridWorld")
    return ScaledSecondCost(env), params
