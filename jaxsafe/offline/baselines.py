"""Behaviour-cloning baselines of DSRL/OSRL on the learner contract: BC-All and BC-Safe.

Both regress the dataset's actions from its observations with a deterministic MLP actor (mean-squared error, as
OSRL's BC). BC-All trains on every step; BC-Safe only on the steps of episodes whose cost return (summed over cost
signals) is within ``cost_limit``. The filter is a per-step sampling weight computed inside ``update`` from the
traced ``cost_limit``, so one compiled grid sweeps cost limits::

    config = BCConfig(safe_only=True)
    parts = make_train_parts(config, dataset)       # TrainParts; the dataset is a TrajectoryDataset
    result = train_from_parts(parts)(key, config.default_hparams())
    policy = make_policy(config, dataset, result.params, action_low, action_high)   # a jaxsafe.policy.Policy

Metrics per update: ``loss`` (the batch MSE), ``batch_max_episode_cost`` (the largest episode cost among the
sampled steps: at most ``cost_limit`` for BC-Safe), ``grad_norm`` and ``nonfinite``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.offline.dataset import TrajectoryDataset
from jaxsafe.offline.training import ADAM, clipped_adamw_step, episode_table, sample_steps, tree_all_finite
from jaxsafe.policy import Policy, stateless
from jaxsafe.rl.networks import MLP
from jaxsafe.validation import is_int, non_negative, positive, require

__all__ = ["BCHParams", "BCConfig", "BCState", "BCActor", "make_train_parts", "make_train", "make_policy"]


@struct.dataclass
class BCHParams(HParams):
    """Traced: ``learning_rate`` (> 0), ``weight_decay`` (>= 0), ``cost_limit`` (>= 0, BC-Safe's episode filter)."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    cost_limit: float = 20.0

    rules = {"learning_rate": positive(), "weight_decay": non_negative(), "cost_limit": non_negative()}


@dataclasses.dataclass(frozen=True)
class BCConfig(Config):
    """Static: ``safe_only`` (BC-Safe), MLP ``hidden`` widths (OSRL: 256, 256), ``batch_size`` (OSRL: 512),
    ``num_updates`` gradient steps, ``max_grad_norm`` (``None``: no clipping)."""

    safe_only: bool = False
    hidden: tuple = (256, 256)
    batch_size: int = 512
    num_updates: int = 10_000
    max_grad_norm: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))
        require(all(is_int(w) for w in self.hidden) and self.hidden, "BCConfig.hidden",
                "a non-empty tuple of positive integers", self.hidden)
        require(is_int(self.batch_size), "BCConfig.batch_size", "an integer >= 1", self.batch_size)
        require(is_int(self.num_updates), "BCConfig.num_updates", "an integer >= 1", self.num_updates)
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "BCConfig.max_grad_norm", "None or > 0",
                self.max_grad_norm)

    def default_hparams(self) -> BCHParams:
        return BCHParams().as_arrays()


class BCActor(nn.Module):
    """``[..., obs_dim] -> [..., action_dim]`` (ReLU MLP, linear output)."""

    action_dim: int
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, obs):
        return nn.Dense(self.action_dim)(MLP(self.hidden, "relu")(obs))


class BCState(NamedTuple):
    params: dict
    adam_state: tuple
    key: jax.Array


def _flat(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(x.shape[0], -1)


def make_train_parts(config: BCConfig, dataset: TrajectoryDataset) -> TrainParts:
    """BC-All (``config.safe_only=False``) or BC-Safe on ``dataset``; one gradient step per update."""
    observations = jnp.asarray(_flat(dataset.observations))
    actions = jnp.asarray(_flat(dataset.actions))
    step_episode_cost = jnp.asarray(episode_table(dataset).costs)[jnp.asarray(dataset.episode_ids)]
    valid = jnp.asarray(dataset.mask, jnp.float32)
    actor = BCActor(actions.shape[1], config.hidden)

    def init(key, hparams):
        del hparams
        init_key, key = jax.random.split(key)
        params = actor.init(init_key, observations[:1])
        return BCState(params, ADAM.init(params), key)

    def update(state, hparams):
        key, batch_key = jax.random.split(state.key)
        weights = valid * (step_episode_cost <= hparams.cost_limit) if config.safe_only else valid
        index = sample_steps(batch_key, weights, config.batch_size)

        def loss_fn(params):
            return jnp.mean(jnp.sum((actor.apply(params, observations[index]) - actions[index]) ** 2, -1))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        params, adam_state, grad_norm = clipped_adamw_step(grads, state.adam_state, state.params,
                                                           hparams.learning_rate, hparams.weight_decay,
                                                           config.max_grad_norm)
        metrics = {"loss": loss, "batch_max_episode_cost": step_episode_cost[index].max(), "grad_norm": grad_norm,
                   "nonfinite": ~(jnp.isfinite(loss) & tree_all_finite(params))}
        return BCState(params, adam_state, key), metrics

    return TrainParts(init, update, config.num_updates, steps_per_update=config.batch_size)


make_train = make_train_from_parts(make_train_parts)


def make_policy(config: BCConfig, dataset: TrajectoryDataset, params, action_low, action_high) -> Policy:
    """The trained actor as a :class:`~jaxsafe.policy.Policy`: its action clamped to ``[action_low, action_high]``
    and reshaped to the dataset's action shape."""
    action_shape = np.shape(dataset.actions)[1:]
    actor = BCActor(int(np.prod(action_shape, dtype=int)), config.hidden)

    def act(obs, key):
        del key
        action = actor.apply(params, jnp.reshape(obs, (-1,)).astype(jnp.float32)).reshape(action_shape)
        return jnp.clip(action, action_low, action_high)

    return stateless(act)
