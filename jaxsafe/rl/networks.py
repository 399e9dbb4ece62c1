"""Actor and critic factories (Flax linen; pure ``init``/``apply``).

The actor maps an observation to a distrax distribution: ``Categorical`` for discrete actions, a diagonal Gaussian
with a state-independent learned log standard deviation for continuous ones. Critics map an observation to a scalar.
Actor, reward critic and cost critic are separate networks (no shared torso), the usual choice for PPO-Lagrangian.
"""

from __future__ import annotations

from typing import Sequence

import distrax
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


def _dense(features: int, scale: float) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale), bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    hidden: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = ACTIVATIONS[self.activation](_dense(width, np.sqrt(2.0))(x))
        return x


class Critic(nn.Module):
    hidden: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs):
        return _dense(1, 1.0)(MLP(self.hidden, self.activation)(obs))[..., 0]


class DiscreteActor(nn.Module):
    num_actions: int
    hidden: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, obs):
        logits = _dense(self.num_actions, 0.01)(MLP(self.hidden, self.activation)(obs))
        return distrax.Categorical(logits=logits)


class GaussianActor(nn.Module):
    action_dim: int
    hidden: Sequence[int]
    activation: str = "tanh"
    initial_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs):
        mean = _dense(self.action_dim, 0.01)(MLP(self.hidden, self.activation)(obs))
        log_std = self.param("log_std", nn.initializers.constant(self.initial_log_std), (self.action_dim,))
        return distrax.MultivariateNormalDiag(mean, jnp.exp(log_std) * jnp.ones_like(mean))


def make_actor(action_space, hidden: Sequence[int], activation: str = "tanh") -> nn.Module:
    """The actor for a gymnax ``Discrete`` or ``Box`` action space."""
    from gymnax.environments import spaces

    if isinstance(action_space, spaces.Discrete):
        return DiscreteActor(int(action_space.n), tuple(hidden), activation)
    if isinstance(action_space, spaces.Box):
        return GaussianActor(int(np.prod(action_space.shape)), tuple(hidden), activation)
    raise ValueError(f"unsupported action space {action_space!r}; expected Discrete or Box")
