"""PPO and PPO-Lagrangian as one pure, vmappable learner.

Usage (the shape every jaxsafe learner has)::

    config  = PPOConfig(num_envs=16, num_steps=128, total_steps=200_000, multiplier="lagrangian")
    hparams = config.default_hparams().replace(cost_limit=10.0)
    train   = make_train(config, envs.make("SafeCartPole"))     # or make_train(config, env, env_params)
    result  = jax.jit(train)(key, hparams)                      # TrainResult(params, metrics)
    grid    = sweep.run_grid(train, sweep.make_grid(hparams, seeds=4, cost_limit=[5.0, 10.0]))

``config`` fixes shapes and loop counts (static, hashable, validated on construction); ``hparams`` holds everything
a user sweeps and may be traced. ``multiplier`` selects the constraint handler: ``"none"`` is unconstrained PPO,
``"lagrangian"`` (PPO-Lag, plain projected ascent on the multiplier), ``"lagrangian_adam"`` (PPO-Lag with
OmniSafe's Adam step on the multiplier), ``"pid"`` (CPPO-PID) and ``"fixed"`` (constant penalty) come from
:mod:`jaxsafe.constraints`.

One update: collect ``num_steps`` steps from ``num_envs`` auto-resetting environments; update the Lagrange multiplier
from the mean cost of the episodes that finished (OmniSafe's order); compute reward and cost advantages with GAE
(bootstrapping truncated episodes from their final observation); standardise the reward advantages, centre the cost
advantages and mix them as ``(A_r - m A_c) / (1 + m)`` (:func:`jaxsafe.losses.mix_advantages`); run ``num_epochs``
epochs of clipped-surrogate updates over ``num_minibatches`` minibatches, training the reward and cost critics by
regression on their GAE returns. Unconstrained PPO (``"none"``) skips everything about costs except their
bookkeeping: no cost critic evaluation, no cost GAE, no cost value loss (``cost_value_loss`` is reported as 0).

**Several costs.** On an environment with ``n_costs > 1`` (``TimeStep.cost`` of shape ``(n_costs,)``) every cost is
constrained on its own: ``cost_limit`` must have shape ``(n_costs,)`` (a scalar is refused, naming the field, when
``init`` is traced: ``config.default_hparams(n_costs)`` has the right shape), the cost critic has one output per
cost, each cost gets its own GAE and its own multiplier, and the advantage is
``(A_r - sum_i m_i A_c,i) / (1 + sum_i m_i)``. The metrics ``episode_cost``, ``multiplier`` and ``step_cost`` are then
``[n_costs]`` vectors and ``episode_cost_total`` is their sum; with one cost every metric stays a scalar.

``make_train_parts`` exposes the same learner as ``init(key, hparams) -> state`` and
``update(state, hparams) -> (state, metrics)``, which the chunked runner (checkpoints, progress, resume) uses; the
scan of ``update`` over ``num_updates`` steps is exactly ``train``.

The rollout and the advantage computation are shared with the trust-region learners (:mod:`jaxsafe.rl.cpo`):
``make_collect_rollout(...)`` returns ``collect(params, env_state, obs, key) -> Rollout(traj, stats, ...)`` (the
``[T, E]`` transitions and the finished episodes' mean return, cost and length), and ``compute_advantages(traj,
hparams)`` the raw reward and cost GAE with their critic targets; ``check_cost_limit``, ``make_cost_critic`` and
``centre_cost_advantages`` carry the per-cost conventions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxsafe import constraints, losses
from jaxsafe.envs.core import SafeEnv, spaces, wrap_for_training
from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.rl.gae import batched_gae
from jaxsafe.rl.networks import ACTIVATIONS, POLICIES, TORSOS, Critic, make_actor
from jaxsafe.types import Transition
from jaxsafe.validation import is_int, non_negative, positive, require, unit_interval

__all__ = ["MULTIPLIERS", "PPOConfig", "PPOHParams", "PPOState", "ActorCriticParams", "RolloutBudget",
           "RolloutStats", "Rollout", "OnPolicySetup", "env_problem", "rollout_episode_stats", "make_collect_rollout",
           "make_on_policy", "compute_advantages", "make_train_parts", "make_train", "make_act"]

MULTIPLIERS = ("none", "lagrangian", "lagrangian_adam", "pid", "fixed")


def env_problem(env: Any, env_params: Any = None) -> tuple[SafeEnv, Any]:
    """``(env, env_params)`` from either form a learner accepts: the pair ``envs.make`` returns, or the two apart
    (``env_params=None``: the environment's defaults)."""
    if isinstance(env, tuple):
        if env_params is not None or len(env) != 2:
            raise TypeError("pass either the (env, env_params) pair envs.make returns, or env and env_params apart")
        env, env_params = env
    return env, (env.default_params if env_params is None else env_params)


class RolloutBudget:
    """Loop counts shared by every on-policy config with ``num_envs``, ``num_steps`` and ``total_steps`` fields."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_steps // self.batch_size

    @property
    def steps_per_update(self) -> int:
        return self.batch_size


def check_rollout_budget(config, name: str, minibatch_field: str) -> None:
    """The checks every :class:`RolloutBudget` config shares (``name`` prefixes the field in the message)."""
    for field in ("num_envs", "num_steps"):
        require(is_int(getattr(config, field)), f"{name}.{field}", "a positive integer", getattr(config, field))
    require(is_int(config.total_steps) and config.total_steps >= config.batch_size, f"{name}.total_steps",
            f"an integer >= one batch (num_envs * num_steps = {config.batch_size})", config.total_steps)
    minibatches = getattr(config, minibatch_field)
    require(is_int(minibatches) and config.batch_size % minibatches == 0, f"{name}.{minibatch_field}",
            f"a divisor of the batch num_envs * num_steps = {config.batch_size} (a positive integer)", minibatches)


def check_networks(config, name: str) -> None:
    """``hidden``, ``activation`` and ``policy``, shared by the PPO and CPO configs (normalises ``hidden``)."""
    object.__setattr__(config, "hidden", tuple(int(h) for h in config.hidden))
    require(all(h >= 1 for h in config.hidden), f"{name}.hidden", "a tuple of positive widths", config.hidden)
    require(config.activation in ACTIVATIONS, f"{name}.activation", f"one of {sorted(ACTIVATIONS)}",
            config.activation)
    require(config.policy in POLICIES, f"{name}.policy", f"one of {list(POLICIES)}", config.policy)
    require(torso_of(config) in TORSOS, f"{name}.torso", f"one of {list(TORSOS)}", torso_of(config))


def torso_of(config) -> str:
    """The observation torso of a config (``"mlp"`` for configs without a ``torso`` field)."""
    return getattr(config, "torso", "mlp")


@dataclasses.dataclass(frozen=True)
class PPOConfig(Config, RolloutBudget):
    """Static configuration: shapes and loop counts (hashable; validated on construction).

    Attributes:
      num_envs: parallel environments per learner.
      num_steps: steps per environment per update (rollout length).
      total_steps: environment steps in the whole run; ``num_updates = total_steps // (num_envs * num_steps)``.
      num_epochs: passes over each rollout.
      num_minibatches: minibatches per epoch; must divide ``num_envs * num_steps``.
      hidden: hidden layer widths of actor and critics.
      activation: one of ``tanh``, ``relu``, ``gelu``, ``silu``.
      multiplier: ``none`` (PPO), ``lagrangian``, ``pid`` or ``fixed``.
      max_grad_norm: global gradient-norm clip.
      anneal_lr: linearly decay the learning rate to zero over the run.
      policy: the actor family, ``gaussian`` (the standard actor) or ``flipping`` (two candidate actions and a
        state-dependent coin, :class:`jaxsafe.rl.networks.FlippingActor`; Box action spaces only).
      torso: the observation torso before the MLP (:data:`jaxsafe.rl.networks.TORSOS`): ``mlp`` (vector
        observations, the default), ``flatten`` or ``conv`` (image observations ``[H, W, C]``, e.g. MinAtar).
    """

    num_envs: int = 16
    num_steps: int = 128
    total_steps: int = 500_000
    num_epochs: int = 4
    num_minibatches: int = 4
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    multiplier: str = "lagrangian"
    max_grad_norm: float = 0.5
    anneal_lr: bool = False
    policy: str = "gaussian"
    torso: str = "mlp"

    def __post_init__(self):
        require(is_int(self.num_epochs), "PPOConfig.num_epochs", "a positive integer", self.num_epochs)
        check_rollout_budget(self, "PPOConfig", "num_minibatches")
        check_networks(self, "PPOConfig")
        require(self.multiplier in MULTIPLIERS, "PPOConfig.multiplier", f"one of {list(MULTIPLIERS)}",
                self.multiplier)
        require(self.max_grad_norm > 0, "PPOConfig.max_grad_norm", "> 0", self.max_grad_norm)

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def default_hparams(self, n_costs: int = 1) -> "PPOHParams":
        """The defaults as float32 arrays; ``n_costs > 1`` gives one ``cost_limit`` per cost (each the default)."""
        return with_cost_shape(PPOHParams().as_arrays(), n_costs)


@struct.dataclass
class PPOHParams(HParams):
    """Traceable, vmappable hyperparameters (each a scalar, or a ``[G]`` array for a grid).

    ``cost_limit`` is in episode-cost units (the expected sum of costs over an episode). PID gains default to
    OmniSafe's CPPOPID values.
    """

    rules = {
        "learning_rate": positive(),
        "clip_eps": positive(),
        "entropy_coef": non_negative(),
        "value_coef": non_negative(),
        "gamma": unit_interval(),
        "gae_lambda": unit_interval(),
        "cost_gamma": unit_interval(),
        "cost_gae_lambda": unit_interval(),
        "cost_limit": non_negative("episode-cost units"),
        "multiplier_lr": non_negative(),
        "initial_multiplier": non_negative(),
        "pid_kp": non_negative(),
        "pid_ki": non_negative(),
        "pid_kd": non_negative(),
    }

    learning_rate: Any = 3e-4
    clip_eps: Any = 0.2
    entropy_coef: Any = 0.01
    value_coef: Any = 0.5
    gamma: Any = 0.99
    gae_lambda: Any = 0.95
    cost_gamma: Any = 0.99
    cost_gae_lambda: Any = 0.95
    cost_limit: Any = 25.0
    multiplier_lr: Any = 0.035
    initial_multiplier: Any = 0.0
    pid_kp: Any = 0.1
    pid_ki: Any = 0.003
    pid_kd: Any = 0.001


class ActorCriticParams(NamedTuple):
    actor: Any
    critic: Any
    cost_critic: Any


class PPOState(NamedTuple):
    """Everything the learner carries between updates (a pytree; checkpointed by the runner)."""

    params: ActorCriticParams
    opt_state: Any
    constraint: constraints.MultiplierState
    env_state: Any
    obs: Any
    key: jax.Array
    update_step: jax.Array


def cost_shape(n_costs: int) -> tuple[int, ...]:
    """The shape of every per-cost quantity (cost limit, multiplier, episode cost): ``()`` for one cost (scalars,
    as single-cost learners always had), ``(n_costs,)`` for several."""
    return () if n_costs == 1 else (int(n_costs),)


def with_cost_shape(hparams: Any, n_costs: int) -> Any:
    """``hparams`` with ``cost_limit`` broadcast to :func:`cost_shape` of ``n_costs``."""
    return hparams.replace(cost_limit=jnp.broadcast_to(jnp.asarray(hparams.cost_limit), cost_shape(n_costs)))


def check_cost_limit(hparams: Any, env: SafeEnv) -> None:
    """Raise ``ValueError`` unless ``hparams.cost_limit`` has :func:`cost_shape` of ``env.n_costs`` (one limit per
    cost). Shapes are static, so this runs at trace time of ``init``/``update``, before anything compiles."""
    want, got = cost_shape(env.n_costs), tuple(jnp.shape(hparams.cost_limit))
    if got != want:
        costs = f"{env.n_costs} cost" + ("s" if env.n_costs > 1 else "")
        raise ValueError(f"{type(hparams).__name__}.cost_limit must have shape {want} (one limit per cost: "
                         f"{env.name} has {costs}), got shape {got}")


def make_cost_critic(config, n_costs: int) -> Critic:
    """The cost critic: one value per cost (a scalar head for one cost)."""
    return Critic(config.hidden, config.activation, None if n_costs == 1 else int(n_costs), torso=torso_of(config))


def _per_cost(fn, *arrays):
    """``fn`` applied to each cost of arrays with a trailing cost axis (vmapped over it)."""
    return jax.vmap(fn, in_axes=-1, out_axes=-1)(*arrays)


def centre_cost_advantages(cost_advantages: jax.Array, n_costs: int) -> jax.Array:
    """Cost advantages centred (not scaled, as OmniSafe does), each cost on its own: ``[...]`` or ``[..., K]``."""
    return losses.centre(cost_advantages) if n_costs == 1 else _per_cost(losses.centre, cost_advantages)


def cost_value_loss(prediction: jax.Array, target: jax.Array, n_costs: int) -> jax.Array:
    """The cost critic's regression loss, summed over costs (each cost's head gets a single-cost gradient)."""
    if n_costs == 1:
        return losses.value_loss(prediction, target)
    return _per_cost(losses.value_loss, prediction, target).sum()


def mean_step_cost(cost: jax.Array, n_costs: int) -> jax.Array:
    """Mean per-step cost of a ``[T, E]`` (``[T, E, K]``) rollout: a scalar, or one per cost."""
    return cost.mean() if n_costs == 1 else cost.mean(axis=tuple(range(cost.ndim - 1)))


def cost_totals(episode_cost: jax.Array, n_costs: int) -> dict:
    """``{"episode_cost_total": sum over costs}`` for several costs (nothing for one: ``episode_cost`` is it)."""
    return {} if n_costs == 1 else {"episode_cost_total": episode_cost.sum(-1)}


def _finished_mean(finished, count, valid, fallback_count, per_step, fallback):
    """Mean of ``per_step [T, E, ...]`` over finished episodes, else of ``fallback [E, ...]`` over valid ones."""
    trailing = (1,) * (per_step.ndim - finished.ndim)
    finished, valid = finished.reshape(finished.shape + trailing), valid.reshape(valid.shape + trailing)
    steps, envs = tuple(range(finished.ndim - len(trailing))), tuple(range(valid.ndim - len(trailing)))
    recent = jnp.where(count > 0, (per_step * finished).sum(steps) / jnp.maximum(count, 1.0), jnp.nan)
    older = jnp.where(fallback_count > 0, (fallback * valid).sum(envs) / jnp.maximum(fallback_count, 1.0), jnp.nan)
    return jnp.where(count > 0, recent, older)


def rollout_episode_stats(episode_done, episode_return, episode_cost, valid_return, valid_cost, valid):
    """Mean return and cost of the episodes that finished in a rollout.

    ``episode_done``, ``episode_return`` are ``[T, E]``, ``episode_cost`` ``[T, E]`` or ``[T, E, K]`` (one per
    cost); ``valid_*`` are the last-finished-episode values ``[E]`` (``[E, K]``) at the end of the rollout with
    their ``valid`` mask. If no episode finished in this rollout, the most recent finished episode of each
    environment is used; if none has finished yet, NaN.
    """
    finished = episode_done.astype(jnp.float32)
    count = finished.sum()
    fallback_count = valid.astype(jnp.float32).sum()

    def mean(per_step, fallback):
        return _finished_mean(finished, count, valid, fallback_count, per_step, fallback)

    return mean(episode_return, valid_return), mean(episode_cost, valid_cost), count


class RolloutStats(NamedTuple):
    """Means over the episodes that finished in one rollout (see :func:`rollout_episode_stats`); NaN if none yet."""

    episode_return: jax.Array
    episode_cost: jax.Array  # () for one cost, (n_costs,) for several
    episode_length: jax.Array  # steps
    episodes_finished: jax.Array  # how many episodes finished in this rollout


class Rollout(NamedTuple):
    """What :func:`make_collect_rollout`'s ``collect`` returns: the ``[T, E]`` trajectory and where to continue."""

    traj: Transition
    stats: RolloutStats
    env_state: Any
    obs: Any
    key: jax.Array


def make_collect_rollout(vec_env, env_params: Any, actor, critic, action_space, num_steps: int, cost_critic=None,
                         cost_values: bool = True):
    """``collect(params, env_state, obs, key) -> Rollout``: ``num_steps`` steps of the auto-resetting ``vec_env``.

    ``params`` is an :class:`ActorCriticParams` (``actor``, ``critic``, ``cost_critic``); ``cost_critic`` is the
    cost critic's module (default: ``critic``; :func:`make_cost_critic` for several costs). Continuous actions are
    sampled unclipped (their log-probability is of the sampled value) and clipped to the action box for the env.
    The trajectory's ``cost``, ``cost_value`` and ``next_cost_value`` are ``[T, E]`` for one cost and
    ``[T, E, n_costs]`` for several (``vec_env.n_costs``). Shared by every on-policy learner (PPO, CPO,
    TRPO-Lagrangian).

    Only the actor and the environment run inside the time scan: the critics are evaluated afterwards on the
    whole ``[T, E]`` batch of observations and pre-reset successor observations at once (one large matrix product
    instead of ``T`` small ones; the same values). ``cost_values=False`` skips the cost critic (the trajectory's
    cost values are zeros): unconstrained PPO, which never reads them, does not pay for them.
    """
    cost_critic = critic if cost_critic is None else cost_critic
    n_costs = vec_env.n_costs

    def per_cost(cost):  # [..., n_costs] -> [...] for one cost
        return cost[..., 0] if n_costs == 1 else cost

    continuous = isinstance(action_space, spaces.Box)
    if continuous:
        low, high = jnp.asarray(action_space.low), jnp.asarray(action_space.high)

    def env_step(carry, _):
        actor_params, env_state, obs, key = carry
        key, action_key, step_key = jax.random.split(key, 3)
        dist = actor.apply(actor_params, obs)
        action = dist.sample(seed=action_key)
        log_prob = dist.log_prob(action)
        env_action = jnp.clip(action, low, high) if continuous else action
        env_state, timestep = vec_env.step(step_key, env_state, env_action, env_params)
        info = timestep.info
        step = (obs, action, log_prob, timestep.reward, per_cost(timestep.cost), timestep.terminated,
                timestep.truncated, info["final_obs"])
        episode_info = (info["episode_done"], info["episode_return"], per_cost(info["episode_cost"]),
                        info["episode_length"])
        return (actor_params, env_state, timestep.obs, key), (step, episode_info)

    def collect(params, env_state, obs, key) -> Rollout:
        (_, env_state, obs, key), (steps, episode_info) = jax.lax.scan(
            env_step, (params.actor, env_state, obs, key), None, length=num_steps
        )
        step_obs, action, log_prob, reward, cost, terminated, truncated, final_obs = steps
        if cost_values:
            cost_value = cost_critic.apply(params.cost_critic, step_obs)
            next_cost_value = cost_critic.apply(params.cost_critic, final_obs)
        else:
            cost_value = next_cost_value = jnp.zeros_like(cost)
        traj = Transition(
            obs=step_obs, action=action, log_prob=log_prob,
            value=critic.apply(params.critic, step_obs), cost_value=cost_value,
            reward=reward, cost=cost, terminated=terminated, truncated=truncated,
            next_value=critic.apply(params.critic, final_obs), next_cost_value=next_cost_value,
        )
        episode_done, episode_return, episode_cost, episode_length = episode_info
        valid = env_state.has_finished
        mean_return, mean_cost, count = rollout_episode_stats(
            episode_done, episode_return, episode_cost, env_state.last_return, per_cost(env_state.last_cost), valid
        )
        mean_length = _finished_mean(
            episode_done.astype(jnp.float32), count, valid, valid.astype(jnp.float32).sum(),
            episode_length.astype(jnp.float32), env_state.last_length.astype(jnp.float32),
        )
        return Rollout(traj, RolloutStats(mean_return, mean_cost, mean_length, count), env_state, obs, key)

    return collect


class OnPolicySetup(NamedTuple):
    """The pieces every on-policy learner builds from its config and environment (:func:`make_on_policy`)."""

    env: SafeEnv
    env_params: Any
    vec_env: Any  # the auto-resetting, statistics-keeping, vectorised environment
    actor: Any
    critic: Any
    cost_critic: Any  # one output per cost (make_cost_critic)
    collect: Any  # make_collect_rollout's collect(params, env_state, obs, key) -> Rollout
    n_costs: int

    def init(self, key) -> tuple[ActorCriticParams, Any, Any, jax.Array]:
        """``(params, env_state, obs, key)``: fresh networks and environments from one key (the split every
        learner uses, so a given seed starts PPO, CPO and TRPO-Lag from the same networks)."""
        key, actor_key, critic_key, cost_key, env_key = jax.random.split(key, 5)
        dummy = jnp.zeros(self.env.observation_space(self.env_params).shape, jnp.float32)
        params = ActorCriticParams(
            actor=self.actor.init(actor_key, dummy),
            critic=self.critic.init(critic_key, dummy),
            cost_critic=self.cost_critic.init(cost_key, dummy),
        )
        env_state, timestep = self.vec_env.reset(env_key, self.env_params)
        return params, env_state, timestep.obs, key


def make_on_policy(config, env: SafeEnv, env_params: Any, cost_values: bool = True) -> OnPolicySetup:
    """Actor, critics and rollout for ``config`` (``num_envs``, ``num_steps``, ``hidden``, ``activation``,
    ``policy``) on ``env``; ``cost_values=False`` gives a rollout without cost-critic values
    (:func:`make_collect_rollout`)."""
    vec_env = wrap_for_training(env, config.num_envs)
    action_space = env.action_space(env_params)
    actor = make_actor(action_space, config.hidden, config.activation, config.policy, torso_of(config))
    critic = Critic(config.hidden, config.activation, torso=torso_of(config))
    cost_critic = make_cost_critic(config, env.n_costs)
    collect = make_collect_rollout(vec_env, env_params, actor, critic, action_space, config.num_steps, cost_critic,
                                   cost_values)
    return OnPolicySetup(env, env_params, vec_env, actor, critic, cost_critic, collect, env.n_costs)


def compute_advantages(traj: Transition, hparams: Any, costs: bool = True):
    """Reward and cost GAE of a ``[T, E]`` rollout: ``(advantages, value_targets, cost_advantages, cost_targets)``.

    Truncated episodes bootstrap from their final observation; reads ``gamma``, ``gae_lambda``, ``cost_gamma``,
    ``cost_gae_lambda`` from ``hparams``. Returned raw (learners normalise them): ``[T, E]`` each, the cost ones
    ``[T, E, n_costs]`` when the rollout has several costs (one GAE per cost). ``costs=False`` skips the cost GAE
    (the cost advantages and targets are zeros).
    """
    episode_end = jnp.logical_or(traj.terminated, traj.truncated)
    advantages, value_targets = batched_gae(
        traj.reward, traj.value, traj.next_value, traj.terminated, episode_end,
        hparams.gamma, hparams.gae_lambda,
    )
    if not costs:
        return advantages, value_targets, jnp.zeros_like(traj.cost), jnp.zeros_like(traj.cost)
    cost_gae = batched_gae
    if traj.cost.ndim == traj.reward.ndim + 1:  # one GAE per cost, over the trailing cost axis
        cost_gae = jax.vmap(batched_gae, in_axes=(-1, -1, -1, None, None, None, None), out_axes=-1)
    cost_advantages, cost_targets = cost_gae(
        traj.cost, traj.cost_value, traj.next_cost_value, traj.terminated, episode_end,
        hparams.cost_gamma, hparams.cost_gae_lambda,
    )
    return advantages, value_targets, cost_advantages, cost_targets


def make_train_parts(config: PPOConfig, env: SafeEnv | tuple, env_params: Any = None) -> TrainParts:
    """The learner as ``init`` and ``update`` (see the module docstring); ``env`` may be the ``(env, env_params)``
    pair ``envs.make`` returns."""
    env, env_params = env_problem(env, env_params)
    # Unconstrained PPO never reads the cost critic: it is neither evaluated nor trained (its parameters stay at
    # their initial values, so every PPO state has the same structure).
    constrained = config.multiplier != "none"
    setup = make_on_policy(config, env, env_params, cost_values=constrained)
    actor, critic, cost_critic, collect, n_costs = (setup.actor, setup.critic, setup.cost_critic, setup.collect,
                                                    setup.n_costs)
    handler = constraints.make_handler(config.multiplier)
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.scale_by_adam(eps=1e-5))

    def init(key, hparams):
        check_cost_limit(hparams, env)
        params, env_state, obs, key = setup.init(key)
        return PPOState(
            params=params,
            opt_state=optimizer.init(params),
            constraint=handler.init(hparams, cost_shape(n_costs)),
            env_state=env_state,
            obs=obs,
            key=key,
            update_step=jnp.zeros((), jnp.int32),
        )

    def loss_fn(params, batch, hparams):
        obs, action, old_log_prob, advantage, value_target, cost_target = batch
        dist = actor.apply(params.actor, obs)
        surrogate = losses.clipped_surrogate(dist.log_prob(action), old_log_prob, advantage, hparams.clip_eps)
        entropy = dist.entropy().mean()
        value_loss = losses.value_loss(critic.apply(params.critic, obs), value_target)
        if constrained:
            cost_loss = cost_value_loss(cost_critic.apply(params.cost_critic, obs), cost_target, n_costs)
        else:
            cost_loss = jnp.zeros(())
        total = surrogate.loss - hparams.entropy_coef * entropy + hparams.value_coef * (value_loss + cost_loss)
        return total, dict(actor_loss=surrogate.loss, value_loss=value_loss, cost_value_loss=cost_loss,
                           entropy=entropy, approx_kl=surrogate.approx_kl, total_loss=total)

    def update(state: PPOState, hparams: PPOHParams):
        check_cost_limit(hparams, env)
        rollout = collect(state.params, state.env_state, state.obs, state.key)
        traj, env_state, obs, key, params = rollout.traj, rollout.env_state, rollout.obs, rollout.key, state.params
        episode_return, episode_cost = rollout.stats.episode_return, rollout.stats.episode_cost
        episodes_finished = rollout.stats.episodes_finished
        # Multiplier(s) first, from the cost of the episodes this rollout finished (OmniSafe's order).
        measured_cost = constraints.measured_or_limit(episode_cost, hparams.cost_limit)
        constraint_state = handler.update(state.constraint, measured_cost, hparams.cost_limit, hparams)
        multiplier = constraint_state.multiplier

        advantages, value_targets, cost_advantages, cost_targets = compute_advantages(traj, hparams, constrained)
        # Reward advantages are standardised; cost advantages are only centred (as OmniSafe does), so that a
        # rollout with (almost) no cost does not blow critic noise up to unit scale.
        cost_advantages = centre_cost_advantages(cost_advantages, n_costs)
        mixed = losses.mix_advantages(losses.standardise(advantages), cost_advantages, multiplier)
        flat = jax.tree.map(
            lambda x: x.reshape((config.batch_size,) + x.shape[2:]),
            (traj.obs, traj.action, traj.log_prob, mixed, value_targets, cost_targets),
        )
        if config.anneal_lr:
            lr_scale = 1.0 - state.update_step.astype(jnp.float32) / config.num_updates
        else:
            lr_scale = 1.0

        def minibatch_step(carry, batch):
            params, opt_state = carry
            grads, loss_info = jax.grad(loss_fn, has_aux=True)(params, batch, hparams)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: -hparams.learning_rate * lr_scale * u, updates)
            return (optax.apply_updates(params, updates), opt_state), loss_info

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, config.batch_size)
            batches = jax.tree.map(
                lambda x: x[order].reshape((config.num_minibatches, config.minibatch_size) + x.shape[1:]), flat
            )
            return jax.lax.scan(minibatch_step, carry, batches)

        key, epoch_key = jax.random.split(key)
        (params, opt_state), loss_info = jax.lax.scan(
            epoch, (params, state.opt_state), jax.random.split(epoch_key, config.num_epochs)
        )
        loss_info = jax.tree.map(jnp.mean, loss_info)
        new_state = PPOState(params, opt_state, constraint_state, env_state, obs, key, state.update_step + 1)
        metrics = dict(
            env_steps=new_state.update_step * config.batch_size,
            episode_return=episode_return,
            episode_cost=episode_cost,
            episodes_finished=episodes_finished,
            multiplier=multiplier,
            step_cost=mean_step_cost(traj.cost, n_costs),
            nonfinite=~jnp.isfinite(loss_info["total_loss"]),
            **loss_info,
            **cost_totals(episode_cost, n_costs),
        )
        return new_state, metrics

    return TrainParts(init, update, config.num_updates, config.batch_size)


#: ``make_train(config, env, env_params=None) -> train(key, hparams) -> TrainResult(params, metrics)``.
make_train = make_train_from_parts(make_train_parts)


def make_act(config: PPOConfig, env: SafeEnv | tuple, env_params: Any = None):
    """``act(params, obs, key, deterministic) -> action`` for one observation (vmap for batches); ``env`` may be
    the ``(env, env_params)`` pair."""
    env, env_params = env_problem(env, env_params)
    action_space = env.action_space(env_params)
    actor = make_actor(action_space, config.hidden, config.activation, config.policy, torso_of(config))
    continuous = isinstance(action_space, spaces.Box)

    def act(params: ActorCriticParams, obs, key, deterministic: bool = False):
        dist = actor.apply(params.actor, obs)
        action = dist.mode() if deterministic else dist.sample(seed=key)
        if continuous:
            action = jnp.clip(action, action_space.low, action_space.high)
        return action

    return act
