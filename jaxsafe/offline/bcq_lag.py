"""BCQ-Lagrangian (OSRL's BCQ-L): batch-constrained Q-learning with a cost critic and a PID-Lagrangian multiplier.

Networks (ReLU MLPs of ``hidden`` widths; actions live in ``[-max_action, max_action]^A``):

* a conditional VAE of the behaviour actions, ``encoder(s, a) -> (mu, log_std)`` of a latent of ``2 A`` dims and
  ``decoder(s, z) -> max_action tanh(.)``; loss: reconstruction MSE + ``0.5`` KL;
* a perturbation actor ``xi(s, a) = phi max_action tanh(.)``; the policy plays ``clip(a + xi(s, a))`` for ``a``
  decoded from the VAE (the batch constraint);
* twin reward critics ``Q_r`` and twin cost critics ``Q_c`` with Polyak-averaged targets (``tau``).

Critic targets draw ``num_samples`` VAE actions at ``s'``, perturb them with the target actor and take the
action of largest soft-clipped reward value ``lambda min(Q1, Q2) + (1 - lambda) max(Q1, Q2)``; the cost target at
that action is the pessimistic ``lambda max + (1 - lambda) min`` of the target cost critics. Episodes bootstrap
through time-outs and stop at terminals. The actor maximises ``Q_r1 - multiplier Q_c1`` at its perturbed VAE actions;
the multiplier is the shared PID handler (:func:`jaxsafe.constraints.pid_lagrangian`; OSRL's ``K_P, K_I, K_D = 0.1,
0.003, 0.001``) driven by the batch-mean cost estimate ``Q_c1(s, pi(s))`` against the per-step threshold
``cost_limit (1 - gamma^H) / ((1 - gamma) H)`` (OSRL's conversion of an episode cost limit with ``H =
episode_len``).

Metrics per update: ``critic_loss``, ``cost_critic_loss``, ``vae_loss``, ``actor_loss``, ``cost_estimate``,
``cost_threshold``, ``multiplier``, ``nonfinite``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxsafe import constraints
from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.offline.dataset import TrajectoryDataset
from jaxsafe.offline.training import ADAM, clipped_adamw_step, sample_steps, tree_all_finite
from jaxsafe.policy import Policy
from jaxsafe.rl.networks import MLP
from jaxsafe.validation import in_range, is_int, non_negative, open_unit_interval, positive, require, unit_interval

__all__ = ["BCQLagHParams", "BCQLagConfig", "BCQLagState", "cost_threshold", "make_train_parts", "make_train",
           "make_policy"]


@struct.dataclass
class BCQLagHParams(HParams):
    """Traced hyperparameters (OSRL's BCQ-L defaults).

    actor_lr, critic_lr, vae_lr: Adam rates; gamma: discount in (0, 1); tau: Polyak rate of the targets;
    phi: the perturbation's size relative to ``max_action``; lambda_clip: weight of the min in the soft-clipped
    double Q; cost_limit: the episode cost limit; pid_kp/pid_ki/pid_kd, initial_multiplier: the PID handler's.
    """

    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    vae_lr: float = 1e-3
    gamma: float = 0.99
    tau: float = 0.005
    phi: float = 0.05
    lambda_clip: float = 0.75
    cost_limit: float = 20.0
    pid_kp: float = 0.1
    pid_ki: float = 0.003
    pid_kd: float = 0.001
    initial_multiplier: float = 0.0

    rules = {"actor_lr": positive(), "critic_lr": positive(), "vae_lr": positive(), "gamma": open_unit_interval(),
             "tau": unit_interval(), "phi": in_range(0.0, 1.0), "lambda_clip": unit_interval(),
             "cost_limit": non_negative(), "pid_kp": non_negative(), "pid_ki": non_negative(),
             "pid_kd": non_negative(), "initial_multiplier": non_negative()}


@dataclasses.dataclass(frozen=True)
class BCQLagConfig(Config):
    """Static: MLP ``hidden`` widths (OSRL: 256, 256), ``batch_size`` (512), ``num_updates``, ``num_samples`` VAE
    actions per state for targets and acting (10), ``max_action`` (the action box's bound), ``episode_len`` H for
    the cost threshold."""

    hidden: tuple = (256, 256)
    batch_size: int = 512
    num_updates: int = 100_000
    num_samples: int = 10
    max_action: float = 1.0
    episode_len: int = 300

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))
        require(all(is_int(w) for w in self.hidden) and self.hidden, "BCQLagConfig.hidden",
                "a non-empty tuple of positive integers", self.hidden)
        for name in ("batch_size", "num_updates", "num_samples", "episode_len"):
            require(is_int(getattr(self, name)), f"BCQLagConfig.{name}", "an integer >= 1", getattr(self, name))
        require(isinstance(self.max_action, (int, float)) and self.max_action > 0, "BCQLagConfig.max_action",
                "a float > 0", self.max_action)

    def default_hparams(self) -> BCQLagHParams:
        return BCQLagHParams().as_arrays()


def cost_threshold(cost_limit, gamma, episode_len: int):
    """OSRL's per-step Q_c threshold of an episode cost limit: ``limit (1 - gamma^H) / ((1 - gamma) H)``."""
    return cost_limit * (1.0 - gamma ** episode_len) / ((1.0 - gamma) * episode_len)


class _Head(nn.Module):
    hidden: Sequence[int]
    outputs: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.outputs)(MLP(self.hidden, "relu")(x))


class _VAE(nn.Module):
    hidden: Sequence[int]
    action_dim: int
    max_action: float

    def setup(self):
        self.encoder = _Head(self.hidden, 4 * self.action_dim)
        self.decoder = _Head(self.hidden, self.action_dim)

    def decode(self, obs, latent):
        return self.max_action * jnp.tanh(self.decoder(jnp.concatenate([obs, latent], -1)))

    def __call__(self, obs, action, key):
        mu, log_std = jnp.split(self.encoder(jnp.concatenate([obs, action], -1)), 2, -1)
        log_std = jnp.clip(log_std, -4.0, 15.0)
        latent = mu + jnp.exp(log_std) * jax.random.normal(key, mu.shape)
        return self.decode(obs, latent), mu, log_std


class _Twin(nn.Module):
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        return jnp.concatenate([_Head(self.hidden, 1)(x), _Head(self.hidden, 1)(x)], -1)  # [..., 2]


class _Nets(NamedTuple):
    vae: _VAE
    actor: _Head
    critic: _Twin


class BCQLagState(NamedTuple):
    params: dict  # {"vae", "actor", "critic", "cost_critic"}
    target: dict  # {"actor", "critic", "cost_critic"}
    adam_state: dict
    constraint: constraints.MultiplierState
    key: jax.Array


def _nets(config: BCQLagConfig, action_dim: int) -> _Nets:
    return _Nets(_VAE(config.hidden, action_dim, config.max_action), _Head(config.hidden, action_dim),
                 _Twin(config.hidden))


def _sample_vae_actions(nets, vae_params, obs, key, config):
    """``[..., action_dim]`` VAE actions with the latent drawn from ``N(0, 1)`` clipped to ``[-0.5, 0.5]``."""
    latent_dim = 2 * nets.actor.outputs
    latent = jnp.clip(jax.random.normal(key, obs.shape[:-1] + (latent_dim,)), -0.5, 0.5)
    return nets.vae.apply(vae_params, obs, latent, method=_VAE.decode)


def _perturb(nets, actor_params, obs, action, phi, config):
    xi = phi * config.max_action * jnp.tanh(nets.actor.apply(actor_params, jnp.concatenate([obs, action], -1)))
    return jnp.clip(action + xi, -config.max_action, config.max_action)


def _flat(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(x.shape[0], -1)


def make_train_parts(config: BCQLagConfig, dataset: TrajectoryDataset) -> TrainParts:
    """BCQ-Lagrangian on ``dataset`` (cost: summed over cost signals); one step of every network per update."""
    observations = jnp.asarray(_flat(dataset.observations))
    next_observations = jnp.asarray(_flat(dataset.next_observations))
    actions = jnp.clip(jnp.asarray(_flat(dataset.actions)), -config.max_action, config.max_action)
    rewards = jnp.asarray(dataset.rewards, jnp.float32)
    costs = jnp.asarray(dataset.costs.sum(-1), jnp.float32)
    not_terminal = 1.0 - jnp.asarray(dataset.terminals, jnp.float32)
    weights = jnp.asarray(dataset.mask, jnp.float32)
    action_dim = actions.shape[1]
    nets = _nets(config, action_dim)
    handler = constraints.pid_lagrangian()
    samples = config.num_samples

    def init(key, hparams):
        keys = jax.random.split(key, 5)
        obs, act = observations[:1], actions[:1]
        params = {"vae": nets.vae.init(keys[0], obs, act, keys[0]),
                  "actor": nets.actor.init(keys[1], jnp.concatenate([obs, act], -1)),
                  "critic": nets.critic.init(keys[2], obs, act), "cost_critic": nets.critic.init(keys[3], obs, act)}
        target = {name: params[name] for name in ("actor", "critic", "cost_critic")}
        return BCQLagState(params, target, {name: ADAM.init(p) for name, p in params.items()},
                           handler.init(hparams), keys[4])

    def update(state, hparams):
        key, batch_key, vae_key, next_key, actor_key = jax.random.split(state.key, 5)
        index = sample_steps(batch_key, weights, config.batch_size)
        obs, act, next_obs = observations[index], actions[index], next_observations[index]
        params, adam = dict(state.params), dict(state.adam_state)

        def vae_loss_fn(vae_params):
            recon, mu, log_std = nets.vae.apply(vae_params, obs, act, vae_key)
            kl = -0.5 * jnp.sum(1 + 2 * log_std - mu ** 2 - jnp.exp(2 * log_std), -1)
            return jnp.mean(jnp.sum((recon - act) ** 2, -1)) + 0.5 * jnp.mean(kl)

        vae_loss, grads = jax.value_and_grad(vae_loss_fn)(params["vae"])
        params["vae"], adam["vae"], _ = clipped_adamw_step(grads, adam["vae"], params["vae"], hparams.vae_lr)

        # targets at s': num_samples perturbed VAE actions, the one of largest soft-clipped reward value
        next_rep = jnp.repeat(next_obs[:, None], samples, axis=1)  # [B, N, obs]
        next_act = _perturb(nets, state.target["actor"], next_rep,
                            _sample_vae_actions(nets, params["vae"], next_rep, next_key, config), hparams.phi,
                            config)
        q_next = nets.critic.apply(state.target["critic"], next_rep, next_act)  # [B, N, 2]
        qc_next = nets.critic.apply(state.target["cost_critic"], next_rep, next_act)
        lam = hparams.lambda_clip
        q_soft = lam * q_next.min(-1) + (1 - lam) * q_next.max(-1)  # [B, N]
        best = jnp.argmax(q_soft, axis=1)
        qc_soft = lam * qc_next.max(-1) + (1 - lam) * qc_next.min(-1)
        pick = lambda v: jnp.take_along_axis(v, best[:, None], 1)[:, 0]  # noqa: E731
        discount = hparams.gamma * not_terminal[index]
        reward_target = jax.lax.stop_gradient(rewards[index] + discount * pick(q_soft))
        cost_target = jax.lax.stop_gradient(costs[index] + discount * pick(qc_soft))

        def critic_loss_fn(critic_params, target):
            q = nets.critic.apply(critic_params, obs, act)
            return jnp.mean(jnp.sum((q - target[:, None]) ** 2, -1))

        critic_loss, grads = jax.value_and_grad(critic_loss_fn)(params["critic"], reward_target)
        params["critic"], adam["critic"], _ = clipped_adamw_step(grads, adam["critic"], params["critic"],
                                                                 hparams.critic_lr)
        cost_loss, grads = jax.value_and_grad(critic_loss_fn)(params["cost_critic"], cost_target)
        params["cost_critic"], adam["cost_critic"], _ = clipped_adamw_step(
            grads, adam["cost_critic"], params["cost_critic"], hparams.critic_lr)

        multiplier = state.constraint.multiplier
        vae_actions = jax.lax.stop_gradient(_sample_vae_actions(nets, params["vae"], obs, actor_key, config))

        def actor_loss_fn(actor_params):
            policy_act = _perturb(nets, actor_params, obs, vae_actions, hparams.phi, config)
            q = nets.critic.apply(params["critic"], obs, policy_act)[..., 0]
            qc = nets.critic.apply(params["cost_critic"], obs, policy_act)[..., 0]
            return jnp.mean(-q + multiplier * qc), jnp.mean(qc)

        (actor_loss, cost_estimate), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(params["actor"])
        params["actor"], adam["actor"], _ = clipped_adamw_step(grads, adam["actor"], params["actor"],
                                                               hparams.actor_lr)
        threshold = cost_threshold(hparams.cost_limit, hparams.gamma, config.episode_len)
        constraint = handler.update(state.constraint, jax.lax.stop_gradient(cost_estimate), threshold, hparams)
        target = {name: jax.tree.map(lambda t, p: (1 - hparams.tau) * t + hparams.tau * p, state.target[name],
                                     params[name]) for name in state.target}
        losses = jnp.stack([vae_loss, critic_loss, cost_loss, actor_loss])
        metrics = {"critic_loss": critic_loss, "cost_critic_loss": cost_loss, "vae_loss": vae_loss,
                   "actor_loss": actor_loss, "cost_estimate": cost_estimate, "cost_threshold": threshold,
                   "multiplier": constraint.multiplier,
                   "nonfinite": ~(jnp.all(jnp.isfinite(losses)) & tree_all_finite(params))}
        return BCQLagState(params, target, adam, constraint, key), metrics

    return TrainParts(init, update, config.num_updates, steps_per_update=config.batch_size)


make_train = make_train_from_parts(make_train_parts)


def make_policy(config: BCQLagConfig, dataset: TrajectoryDataset, params, hparams: BCQLagHParams) -> Policy:
    """The trained policy: ``num_samples`` perturbed VAE actions (``hparams.phi``), the one of largest ``Q_r1``."""
    action_shape = np.shape(dataset.actions)[1:]
    nets = _nets(config, int(np.prod(action_shape, dtype=int)))

    def init(key):
        del key
        return jnp.zeros((0,), jnp.float32)

    def step(state, obs, key):
        obs = jnp.repeat(jnp.reshape(obs, (1, -1)).astype(jnp.float32), config.num_samples, axis=0)
        candidates = _perturb(nets, params["actor"], obs, _sample_vae_actions(nets, params["vae"], obs, key, config),
                              hparams.phi, config)
        q = nets.critic.apply(params["critic"], obs, candidates)[..., 0]
        return state, candidates[jnp.argmax(q)].reshape(action_shape)

    return Policy(init, step)
