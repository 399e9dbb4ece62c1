"""Conservative Q-learning (CQL, Kumar et al. 2020) for continuous actions, DDPG-style, and OGSRL's guarded GCQL.

OGSRL's baselines (Yan, Shen et al. 2025, Table 1) are a DDPG-style CQL and GCQL, "CQL whose bootstrap target
``Q(s', a')`` is replaced by a large negative constant when ``(s', a')`` lies outside the guardian". Here:

* a deterministic actor ``pi(s) = tanh(MLP(s))`` trained to maximise ``Q_1(s, pi(s))`` (DDPG);
* twin critics with Polyak target copies (of critics and actor), trained on
  ``(Q_i(s, a) - y)^2 + cql_alpha * penalty_i`` with ``y = reward_scale r + gamma (1 - terminal) min_i
  Q'_i(s', pi'(s'))``;
* the CQL(H) penalty :func:`cql_penalty`: ``log integral exp Q(s, a) da - Q(s, a_data)``, the integral estimated by
  importance sampling from ``num_samples`` uniform actions on ``[-1, 1]^A`` and ``num_samples`` actions
  ``pi(s) + policy_noise * eps`` (each weighted by its own proposal density, as CQL's implementation does);
* GCQL (``config.guarded``): with an OOD test ``ood_fn(next_obs, next_action) -> bool`` (OGSRL's KDE guardian),
  flagged bootstrap values become ``ood_target`` (:func:`td_target`). Plain CQL ignores ``ood_fn``.

The problem is a :class:`~jaxsafe.offline.dataset.TrajectoryDataset` (actions in ``[-1, 1]``), or a
:class:`GuardedDataset` that adds ``ood_fn`` (GCQL needs one)::

    config = CQLConfig(guarded=True)
    parts = make_train_parts(config, GuardedDataset(dataset, ood_fn))
    result = train_from_parts(parts)(key, config.default_hparams())
    action = make_act(config, dataset)(result.params, obs, key, True)

Metrics per update: ``critic_loss``, ``td_loss``, ``cql_penalty``, ``q_data`` (mean ``Q_1`` on the batch, in
scaled reward units), ``actor_loss``, ``ood_target_share`` (share of bootstrap targets replaced) and ``nonfinite``.
Truncated steps (time-outs) bootstrap; only ``terminals`` stop it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import logsumexp

from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.offline.dataset import TrajectoryDataset
from jaxsafe.offline.training import ADAM, clipped_adamw_step, tree_all_finite
from jaxsafe.rl.networks import MLP
from jaxsafe.validation import is_int, non_negative, positive, require

__all__ = ["CQLHParams", "CQLConfig", "CQLState", "GuardedDataset", "cql_penalty", "td_target", "make_train_parts",
           "make_train", "make_act"]


@struct.dataclass
class CQLHParams(HParams):
    """Traced: learning rates, ``cql_alpha`` (penalty weight, >= 0; 0 is DDPG with twin critics), ``gamma``,
    ``tau`` (Polyak rate), ``policy_noise`` (sd of the policy proposal), ``reward_scale`` (rewards are multiplied
    by it before learning) and ``ood_target`` (GCQL's bootstrap value of a flagged pair, in scaled units)."""

    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    cql_alpha: float = 1.0
    gamma: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    reward_scale: float = 0.1
    ood_target: float = -20.0

    rules = {"actor_learning_rate": positive(), "critic_learning_rate": positive(), "cql_alpha": non_negative(),
             "gamma": (lambda v: 0 <= v < 1, "in [0, 1)"), "tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
             "policy_noise": positive(), "reward_scale": positive()}


@dataclasses.dataclass(frozen=True)
class CQLConfig(Config):
    """Static: MLP ``hidden`` widths, ``batch_size``, ``num_updates``, ``num_samples`` (actions per proposal in
    the penalty), ``guarded`` (GCQL), ``max_grad_norm``."""

    hidden: tuple = (64, 64)
    batch_size: int = 256
    num_updates: int = 3000
    num_samples: int = 10
    guarded: bool = False
    max_grad_norm: float | None = 10.0

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))
        require(bool(self.hidden) and all(is_int(w) for w in self.hidden), "CQLConfig.hidden",
                "a non-empty tuple of positive integers", self.hidden)
        require(is_int(self.batch_size), "CQLConfig.batch_size", "an integer >= 1", self.batch_size)
        require(is_int(self.num_updates), "CQLConfig.num_updates", "an integer >= 1", self.num_updates)
        require(is_int(self.num_samples), "CQLConfig.num_samples", "an integer >= 1", self.num_samples)
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "CQLConfig.max_grad_norm", "None or > 0",
                self.max_grad_norm)

    def default_hparams(self) -> CQLHParams:
        return CQLHParams().as_arrays()


class GuardedDataset(NamedTuple):
    """An offline dataset and the OOD test GCQL uses: ``ood_fn(obs [B, ds], action [B, da]) -> [B] bool`` (on the
    dataset's own observation scale)."""

    dataset: TrajectoryDataset
    ood_fn: Callable[[jax.Array, jax.Array], jax.Array]


class _Actor(nn.Module):
    action_dim: int
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, obs):
        return jnp.tanh(nn.Dense(self.action_dim)(MLP(self.hidden, "relu")(obs)))


class _TwinCritic(nn.Module):
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, obs, action):  # -> [..., 2]
        x = jnp.concatenate([obs, action], -1)
        return jnp.stack([nn.Dense(1)(MLP(self.hidden, "relu")(x))[..., 0] for _ in range(2)], -1)


class CQLParams(NamedTuple):
    actor: Any
    critic: Any


class CQLState(NamedTuple):
    params: CQLParams
    target: CQLParams
    actor_opt: Any
    critic_opt: Any
    key: jax.Array


def cql_penalty(sampled_q, log_proposal, data_q) -> jax.Array:
    """CQL(H)'s penalty, averaged over the batch: ``log((1/M) sum_m exp(Q(s, a_m)) / p(a_m)) - Q(s, a_data)``.

    Args:
      sampled_q: ``[B, M]`` values of ``M`` sampled actions per state; log_proposal: ``[B, M]`` log-densities of
        the proposals they came from; data_q: ``[B]`` values of the dataset's actions.

    With a discrete action set enumerated once (``M = |A|``, ``p = 1 / |A|``) this is ``logsumexp_a Q(s, a) -
    Q(s, a_data)`` exactly.
    """
    num = sampled_q.shape[-1]
    return jnp.mean(logsumexp(sampled_q - log_proposal, axis=-1) - math.log(num) - data_q)


def td_target(scaled_reward, terminal, next_q, flagged, gamma, ood_target) -> jax.Array:
    """``[B]`` bootstrap targets ``r + gamma (1 - terminal) v'`` with ``v' = ood_target`` where ``flagged`` (GCQL)
    and ``next_q`` elsewhere."""
    next_value = jnp.where(flagged, ood_target, next_q)
    return scaled_reward + gamma * (1.0 - terminal.astype(jnp.float32)) * next_value


def _unpack(problem):
    if isinstance(problem, GuardedDataset):
        return problem.dataset, problem.ood_fn
    if isinstance(problem, TrajectoryDataset):
        return problem, None
    raise ValueError(f"CQL: the problem must be a TrajectoryDataset or a GuardedDataset, got {type(problem).__name__}")


def _flat(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(x.shape[0], -1)


def make_train_parts(config: CQLConfig, problem) -> TrainParts:
    """CQL (``guarded=False``) or GCQL on a dataset (see the module docstring); one critic and one actor step per
    update.

    Raises:
      ValueError: GCQL without an ``ood_fn`` (pass a :class:`GuardedDataset`), or actions outside ``[-1, 1]``.
    """
    dataset, ood_fn = _unpack(problem)
    if config.guarded and ood_fn is None:
        raise ValueError("CQLConfig.guarded=True (GCQL) needs an OOD test: pass GuardedDataset(dataset, ood_fn)")
    observations = jnp.asarray(_flat(dataset.observations))
    next_observations = jnp.asarray(_flat(dataset.next_observations))
    actions = jnp.asarray(_flat(dataset.actions))
    if float(jnp.abs(actions).max()) > 1.0 + 1e-6:
        raise ValueError(f"CQL: dataset actions must lie in [-1, 1] (the actor is tanh-squashed), max |a| = "
                         f"{float(jnp.abs(actions).max()):.3g}; rescale them first")
    rewards = jnp.asarray(dataset.rewards, jnp.float32)
    terminals = jnp.asarray(dataset.terminals, bool)
    valid = np.flatnonzero(np.asarray(dataset.mask, bool)).astype(np.int32)
    valid = jnp.asarray(valid)
    action_dim = actions.shape[1]
    actor, critic = _Actor(action_dim, config.hidden), _TwinCritic(config.hidden)
    samples = config.num_samples
    log_uniform = -action_dim * math.log(2.0)

    def init(key, hparams):
        del hparams
        k_actor, k_critic, key = jax.random.split(key, 3)
        params = CQLParams(actor.init(k_actor, observations[:1]), critic.init(k_critic, observations[:1],
                                                                                actions[:1]))
        return CQLState(params, params, ADAM.init(params.actor), ADAM.init(params.critic), key)

    def update(state, hparams):
        key, k_batch, k_uniform, k_noise = jax.random.split(state.key, 4)
        index = valid[jax.random.randint(k_batch, (config.batch_size,), 0, valid.shape[0])]
        obs, action, next_obs = observations[index], actions[index], next_observations[index]
        reward, terminal = rewards[index] * hparams.reward_scale, terminals[index]

        next_action = actor.apply(state.target.actor, next_obs)
        next_q = critic.apply(state.target.critic, next_obs, next_action).min(-1)
        flagged = (ood_fn(next_obs, next_action) & ~terminal) if config.guarded else jnp.zeros_like(terminal)
        target = jax.lax.stop_gradient(td_target(reward, terminal, next_q, flagged, hparams.gamma,
                                                 hparams.ood_target))

        policy_action = actor.apply(state.params.actor, obs)
        uniform = jax.random.uniform(k_uniform, (config.batch_size, samples, action_dim), minval=-1.0, maxval=1.0)
        noise = jax.random.normal(k_noise, (config.batch_size, samples, action_dim))
        noisy = jax.lax.stop_gradient(policy_action)[:, None, :] + hparams.policy_noise * noise
        log_gauss = (-0.5 * noise**2 - jnp.log(hparams.policy_noise) - 0.5 * math.log(2 * math.pi)).sum(-1)
        proposals = jnp.concatenate([uniform, noisy], 1)  # [B, 2M, A]
        log_proposal = jnp.concatenate([jnp.full((config.batch_size, samples), log_uniform), log_gauss], 1)
        tiled_obs = jnp.broadcast_to(obs[:, None, :], proposals.shape[:2] + obs.shape[1:])

        def critic_loss(critic_params):
            q = critic.apply(critic_params, obs, action)  # [B, 2]
            sampled = critic.apply(critic_params, tiled_obs, proposals)  # [B, 2M, 2]
            td = jnp.mean(((q - target[:, None]) ** 2).sum(-1))
            penalty = sum(cql_penalty(sampled[..., i], log_proposal, q[:, i]) for i in range(2))
            return td + hparams.cql_alpha * penalty, (td, penalty, q[:, 0].mean())

        (loss, (td, penalty, q_data)), grads = jax.value_and_grad(critic_loss, has_aux=True)(state.params.critic)
        critic_params, critic_opt, _ = clipped_adamw_step(grads, state.critic_opt, state.params.critic,
                                                          hparams.critic_learning_rate, 0.0, config.max_grad_norm)

        def actor_loss(actor_params):
            return -critic.apply(critic_params, obs, actor.apply(actor_params, obs))[:, 0].mean()

        a_loss, a_grads = jax.value_and_grad(actor_loss)(state.params.actor)
        actor_params, actor_opt, _ = clipped_adamw_step(a_grads, state.actor_opt, state.params.actor,
                                                        hparams.actor_learning_rate, 0.0, config.max_grad_norm)
        params = CQLParams(actor_params, critic_params)
        target_params = jax.tree.map(lambda t, p: (1.0 - hparams.tau) * t + hparams.tau * p, state.target, params)
        metrics = {"critic_loss": loss, "td_loss": td, "cql_penalty": penalty, "q_data": q_data,
                   "actor_loss": a_loss, "ood_target_share": flagged.astype(jnp.float32).mean(),
                   "nonfinite": ~(jnp.isfinite(loss) & jnp.isfinite(a_loss) & tree_all_finite(params))}
        return CQLState(params, target_params, actor_opt, critic_opt, key), metrics

    return TrainParts(init, update, config.num_updates, steps_per_update=config.batch_size)


make_train = make_train_from_parts(make_train_parts)


def make_act(config: CQLConfig, problem) -> Callable:
    """``act(params, obs, key, deterministic) -> action`` of the trained actor (deterministic either way)."""
    dataset, _ = _unpack(problem)
    actor = _Actor(int(np.prod(np.shape(dataset.actions)[1:], dtype=int)), config.hidden)

    def act(params, obs, key, deterministic=True):
        del key, deterministic
        return actor.apply(params.actor, jnp.asarray(obs, jnp.float32))

    return act
