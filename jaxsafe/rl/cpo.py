"""CPO and TRPO-Lagrangian as one pure, vmappable learner (the same contract as :mod:`jaxsafe.rl.ppo`).

Usage::

    config  = CPOConfig(num_envs=16, num_steps=128, total_steps=200_000, method="cpo")   # or "trpo_lag"
    hparams = config.default_hparams().replace(cost_limit=10.0)
    train   = make_train(config, envs.make("SafeGridWorld"))    # or make_train(config, env, env_params)
    result  = jax.jit(train)(key, hparams)                      # TrainResult(params, metrics)
    grid    = sweep.run_grid(train, sweep.make_grid(hparams, seeds=4, cost_limit=[5.0, 10.0]))

One update (OmniSafe's order):

1. Collect ``num_steps`` steps from ``num_envs`` auto-resetting environments and compute reward and cost GAE with
   the rollout shared with PPO (:func:`jaxsafe.rl.ppo.make_collect_rollout`,
   :func:`~jaxsafe.rl.ppo.compute_advantages`). Reward advantages are standardised, cost advantages centred (as PPO
   does), with the shared :mod:`jaxsafe.losses`.
2. Policy step on the flattened actor parameters, with ``H`` the Fisher matrix of the mean KL from the rollout
   policy (damped by ``damping``) and ``g`` the gradient of the reward surrogate ``mean(ratio * A_r)``:

   * ``method="cpo"``: ``b`` is the gradient of the cost surrogate ``mean(ratio * A_c)`` and the constraint value
     is ``c = (J_c - cost_limit) / L``, with ``J_c`` the measured mean episode cost of the episodes the rollout
     finished and ``L`` their mean length (the surrogate's change estimates the change of the *per-step* cost, so
     the episode-cost excess is divided by the episode length, as Safety Starter Agents' CPO does; OmniSafe's CPO
     uses the unscaled excess). With ``margin_lr > 0`` the limit is tightened by Safety Starter Agents' learned
     margin ``m <- max(0, m + margin_lr (J_c - cost_limit))`` (episode-cost units, updated before the step, so
     ``c = (J_c - cost_limit + m) / L``): an integral term that keeps pushing while the linearised model
     underestimates how much the cost rises after a step. ``margin_lr = 0`` (the default) is plain CPO. The step is
     :func:`jaxsafe.rl.trust_region.cpo_step`, then a backtracking line search that requires the KL within
     ``target_kl``, the cost surrogate not to rise by more than ``max(-c, 0)``, and (cases 2-4) the reward
     surrogate not to fall.
   * ``method="trpo_lag"``: the multiplier handler of :mod:`jaxsafe.constraints` (``multiplier``:
     ``lagrangian`` or ``pid``) is updated from ``J_c`` first; the advantage is ``(A_r - m A_c) / (1 + m)`` as in
     PPO-Lag, and the step is TRPO's natural-gradient step plus the KL / improvement line search.

3. Reward and cost critics: ``critic_epochs`` epochs of ``critic_minibatches`` Adam regression steps on the GAE
   returns.

Before any episode has finished ``J_c`` is unknown; the constraint is then treated as exactly active (``c = 0``,
the multiplier is left unchanged).

Several costs (``n_costs > 1``): TRPO-Lagrangian keeps one multiplier per cost, exactly as PPO-Lagrangian does
(``cost_limit`` of shape ``(n_costs,)``, per-cost GAE and critic outputs, ``[n_costs]`` metrics; see
:mod:`jaxsafe.rl.ppo`). CPO's step solves a problem with one cost constraint, so ``method="cpo"`` on such an
environment is refused with a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxsafe import constraints, losses
from jaxsafe.envs.core import SafeEnv
from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.rl import trust_region
from jaxsafe.rl.ppo import (ActorCriticParams, PPOHParams, RolloutBudget, centre_cost_advantages, check_cost_limit,
                            check_networks, check_rollout_budget, compute_advantages, cost_shape, cost_totals,
                            cost_value_loss, env_problem, make_act, make_on_policy, mean_step_cost, with_cost_shape)
from jaxsafe.validation import is_int, non_negative, open_unit_interval, positive, require

__all__ = ["METHODS", "CPOConfig", "CPOHParams", "CPOState", "make_train_parts", "make_train", "make_act"]

METHODS = ("cpo", "trpo_lag")
TRPO_MULTIPLIERS = ("lagrangian", "lagrangian_adam", "pid")


@dataclasses.dataclass(frozen=True)
class CPOConfig(Config, RolloutBudget):
    """Static configuration (hashable; validated on construction).

    Attributes:
      num_envs, num_steps, total_steps: as in :class:`jaxsafe.rl.ppo.PPOConfig`.
      hidden, activation: actor and critic MLPs.
      method: ``cpo`` or ``trpo_lag``.
      multiplier: the TRPO-Lagrangian multiplier updater, ``lagrangian``, ``lagrangian_adam`` or ``pid`` (ignored by
        CPO).
      cg_iters: conjugate-gradient iterations per solve.
      line_search_steps: maximum number of backtracking steps.
      critic_epochs, critic_minibatches: Adam regression passes / minibatches per pass for both critics;
        ``critic_minibatches`` must divide ``num_envs * num_steps``.
      fisher_fraction_denominator: the Fisher-vector products use every ``k``-th sample of the batch (1 = all).
      policy: the actor family, ``gaussian`` or ``flipping`` (as in :class:`jaxsafe.rl.ppo.PPOConfig`). The
        flipping actor's ``kl_divergence`` is the joint (component, action) KL, an upper bound on the mixture KL,
        so its trust region is conservative and its Fisher matrix is the joint model's.
    """

    num_envs: int = 16
    num_steps: int = 128
    total_steps: int = 500_000
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    method: str = "cpo"
    multiplier: str = "lagrangian"
    cg_iters: int = 15
    line_search_steps: int = 15
    critic_epochs: int = 10
    critic_minibatches: int = 4
    fisher_fraction_denominator: int = 1
    policy: str = "gaussian"

    def __post_init__(self):
        for field in ("cg_iters", "line_search_steps", "critic_epochs"):
            require(is_int(getattr(self, field)), f"CPOConfig.{field}", "a positive integer", getattr(self, field))
        check_rollout_budget(self, "CPOConfig", "critic_minibatches")
        check_networks(self, "CPOConfig")
        require(self.method in METHODS, "CPOConfig.method", f"one of {list(METHODS)}", self.method)
        require(self.multiplier in TRPO_MULTIPLIERS, "CPOConfig.multiplier", f"one of {list(TRPO_MULTIPLIERS)}",
                self.multiplier)
        require(is_int(self.fisher_fraction_denominator) and self.fisher_fraction_denominator <= self.batch_size,
                "CPOConfig.fisher_fraction_denominator",
                f"an integer in [1, the batch num_envs * num_steps = {self.batch_size}]",
                self.fisher_fraction_denominator)

    def default_hparams(self, n_costs: int = 1) -> "CPOHParams":
        """The defaults as float32 arrays; ``n_costs > 1`` gives one ``cost_limit`` per cost (each the default)."""
        return with_cost_shape(CPOHParams().as_arrays(), n_costs)


#: The fields CPO shares with PPO use PPO's rules (one definition of "a discount is in [0, 1]").
_SHARED_FIELDS = ("gamma", "gae_lambda", "cost_gamma", "cost_gae_lambda", "cost_limit", "multiplier_lr",
                  "initial_multiplier", "pid_kp", "pid_ki", "pid_kd")


@struct.dataclass
class CPOHParams(HParams):
    """Traceable, vmappable hyperparameters (each a scalar, or a ``[G]`` array for a grid).

    Defaults follow OmniSafe's CPO / TRPOLag configs (``target_kl`` 0.01, damping 0.1, critic lr 1e-3, line-search
    decay 0.8, Lagrangian multiplier lr 0.035). ``cost_limit`` is in episode-cost units. ``line_search_decay`` is
    traced (it may be swept). The ``multiplier_*``/``pid_*`` fields are read only by ``trpo_lag``, ``margin_lr``
    only by ``cpo`` (Safety Starter Agents' ``learn_margin`` uses 0.05; the default 0 is plain CPO).
    """

    rules = {
        "target_kl": positive("trust-region radius in nats"),
        "critic_learning_rate": positive(),
        "damping": non_negative(),
        "line_search_decay": open_unit_interval(),
        "margin_lr": non_negative("0 = no learned margin"),
        **{field: PPOHParams.rules[field] for field in _SHARED_FIELDS},
    }

    target_kl: Any = 0.01
    gamma: Any = 0.99
    gae_lambda: Any = 0.95
    cost_gamma: Any = 0.99
    cost_gae_lambda: Any = 0.95
    cost_limit: Any = 25.0
    critic_learning_rate: Any = 1e-3
    damping: Any = 0.1
    line_search_decay: Any = 0.8
    margin_lr: Any = 0.0
    multiplier_lr: Any = 0.035
    initial_multiplier: Any = 0.0
    pid_kp: Any = 0.1
    pid_ki: Any = 0.003
    pid_kd: Any = 0.001


class CPOState(NamedTuple):
    """Everything the learner carries between updates (a pytree; checkpointed by the runner)."""

    params: ActorCriticParams
    critic_opt_state: Any
    constraint: constraints.MultiplierState
    env_state: Any
    obs: Any
    key: jax.Array
    update_step: jax.Array


def make_train_parts(config: CPOConfig, env: SafeEnv | tuple, env_params: Any = None) -> TrainParts:
    """The learner as ``init(key, hparams) -> state`` and ``update(state, hparams) -> (state, metrics)``; ``env``
    may be the ``(env, env_params)`` pair ``envs.make`` returns."""
    env, env_params = env_problem(env, env_params)
    n_costs = env.n_costs
    if config.method == "cpo" and n_costs != 1:
        raise ValueError(f"CPOConfig.method='cpo' handles one cost (its trust-region step has one cost constraint), "
                         f"but {env.name} has {n_costs} costs; use method='trpo_lag' (one multiplier per cost)")
    setup = make_on_policy(config, env, env_params)
    actor, critic, cost_critic, collect = setup.actor, setup.critic, setup.cost_critic, setup.collect
    # CPO's constraint state is its learned margin (starts at 0); TRPO-Lagrangian's is its multiplier.
    handler = constraints.learned_margin() if config.method == "cpo" else constraints.make_handler(config.multiplier)
    critic_optimizer = optax.scale_by_adam()
    minibatch_size = config.batch_size // config.critic_minibatches
    is_cpo = config.method == "cpo"

    def init(key, hparams):
        check_cost_limit(hparams, env)
        params, env_state, obs, key = setup.init(key)
        return CPOState(params, critic_optimizer.init((params.critic, params.cost_critic)),
                        handler.init(hparams, cost_shape(n_costs)), env_state, obs, key, jnp.zeros((), jnp.int32))

    def critic_loss(critic_params, batch):
        obs, value_target, cost_target = batch
        value_params, cost_params = critic_params
        value_loss = losses.value_loss(critic.apply(value_params, obs), value_target)
        cost_loss = cost_value_loss(cost_critic.apply(cost_params, obs), cost_target, n_costs)
        return value_loss + cost_loss, (value_loss, cost_loss)

    def update(state: CPOState, hparams: CPOHParams):
        check_cost_limit(hparams, env)
        rollout = collect(state.params, state.env_state, state.obs, state.key)
        traj, stats, key = rollout.traj, rollout.stats, rollout.key
        episode_cost = stats.episode_cost
        measured_cost = constraints.measured_or_limit(episode_cost, hparams.cost_limit)
        advantages, value_targets, cost_advantages, cost_targets = compute_advantages(traj, hparams)
        advantages = losses.standardise(advantages)
        cost_advantages = centre_cost_advantages(cost_advantages, n_costs)

        # CPO: the learned margin, projected ascent on the excess with margin_lr; TRPO-Lag: the multiplier.
        constraint_state = handler.update(state.constraint, measured_cost, hparams.cost_limit, hparams)
        if is_cpo:
            margin = constraint_state.multiplier
            multiplier = jnp.zeros((), jnp.float32)
        else:
            multiplier = constraint_state.multiplier
            advantages = losses.mix_advantages(advantages, cost_advantages, multiplier)

        flat = jax.tree.map(
            lambda x: x.reshape((config.batch_size,) + x.shape[2:]),
            (traj.obs, traj.action, traj.log_prob, advantages, cost_advantages, value_targets, cost_targets),
        )
        obs, action, old_log_prob, advantage, cost_advantage, value_target, cost_target = flat

        # --- Policy: trust-region step on the flattened actor parameters. ---
        old_actor = state.params.actor
        flat_actor, unflatten = trust_region.flatten(old_actor)
        old_dist = actor.apply(jax.lax.stop_gradient(old_actor), obs)
        fisher_obs = obs[:: config.fisher_fraction_denominator]
        fisher_old_dist = actor.apply(jax.lax.stop_gradient(old_actor), fisher_obs)

        def surrogate(flat_params, adv):
            ratio = jnp.exp(actor.apply(unflatten(flat_params), obs).log_prob(action) - old_log_prob)
            return (ratio * adv).mean()

        def mean_kl(flat_params):
            return old_dist.kl_divergence(actor.apply(unflatten(flat_params), obs)).mean()

        def fisher_kl(flat_params):
            return fisher_old_dist.kl_divergence(actor.apply(unflatten(flat_params), fisher_obs)).mean()

        reward_surrogate = lambda p: surrogate(p, advantage)  # noqa: E731
        cost_surrogate = lambda p: surrogate(p, cost_advantage)  # noqa: E731
        reward_grad = jax.grad(reward_surrogate)(flat_actor)
        fvp = trust_region.make_fisher_vector_product(fisher_kl, flat_actor, hparams.damping)
        if is_cpo:
            episode_length = jnp.where(jnp.isnan(stats.episode_length), 1.0, jnp.maximum(stats.episode_length, 1.0))
            constraint_value = (measured_cost - hparams.cost_limit + margin) / episode_length
            cost_grad = jax.grad(cost_surrogate)(flat_actor)
            step = trust_region.cpo_step(reward_grad, cost_grad, constraint_value, fvp, hparams.target_kl,
                                         config.cg_iters)
            cost_fn, max_cost_increase = cost_surrogate, jnp.maximum(-constraint_value, 0.0)
            require_improvement = step.case >= trust_region.CASE_FEASIBLE_INTERSECTING
        else:
            constraint_value = (measured_cost - hparams.cost_limit)
            step = trust_region.natural_gradient_step(reward_grad, fvp, hparams.target_kl, config.cg_iters)
            cost_fn, max_cost_increase, require_improvement = None, None, True
        safe_step = jnp.where(jnp.all(jnp.isfinite(step.step)), step.step, 0.0)
        search = trust_region.backtracking_line_search(
            flat_actor, safe_step, reward_surrogate, mean_kl, hparams.target_kl, cost_fn, max_cost_increase,
            require_improvement, backtrack_ratio=hparams.line_search_decay, max_backtracks=config.line_search_steps,
        )
        new_flat_actor, step_fraction, accepted = search.params, search.step_fraction, search.accepted
        num_backtracks, kl = search.num_backtracks, search.kl
        new_actor = unflatten(new_flat_actor)

        # --- Critics: Adam regression on the GAE returns. ---
        def minibatch_step(carry, batch):
            critic_params, opt_state = carry
            grads, losses = jax.grad(critic_loss, has_aux=True)(critic_params, batch)
            updates, opt_state = critic_optimizer.update(grads, opt_state, critic_params)
            updates = jax.tree.map(lambda u: -hparams.critic_learning_rate * u, updates)
            return (optax.apply_updates(critic_params, updates), opt_state), losses

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, config.batch_size)
            batches = jax.tree.map(
                lambda x: x[order].reshape((config.critic_minibatches, minibatch_size) + x.shape[1:]),
                (obs, value_target, cost_target),
            )
            return jax.lax.scan(minibatch_step, carry, batches)

        key, epoch_key = jax.random.split(key)
        critic_params = (state.params.critic, state.params.cost_critic)
        (critic_params, critic_opt_state), (value_loss, cost_loss) = jax.lax.scan(
            epoch, (critic_params, state.critic_opt_state), jax.random.split(epoch_key, config.critic_epochs)
        )
        params = ActorCriticParams(new_actor, *critic_params)
        new_state = CPOState(params, critic_opt_state, constraint_state, rollout.env_state, rollout.obs, key,
                             state.update_step + 1)
        value_loss, cost_loss = value_loss.mean(), cost_loss.mean()
        entropy = old_dist.entropy().mean()
        metrics = dict(
            env_steps=new_state.update_step * config.batch_size,
            episode_return=stats.episode_return,
            episode_cost=episode_cost,
            episode_length=stats.episode_length,
            episodes_finished=stats.episodes_finished,
            multiplier=multiplier,
            margin=constraint_state.multiplier if is_cpo else jnp.zeros_like(multiplier),
            constraint_value=constraint_value,
            case=step.case,
            cost_multiplier=step.cost_multiplier,
            step_fraction=step_fraction,
            accepted=accepted,
            num_backtracks=num_backtracks,
            approx_kl=kl,
            value_loss=value_loss,
            cost_value_loss=cost_loss,
            entropy=entropy,
            step_cost=mean_step_cost(traj.cost, n_costs),
            nonfinite=~(jnp.isfinite(value_loss) & jnp.isfinite(cost_loss)
                        & jnp.all(jnp.isfinite(new_flat_actor))),
            **cost_totals(episode_cost, n_costs),
        )
        return new_state, metrics

    return TrainParts(init, update, config.num_updates, config.batch_size)


#: ``make_train(config, env, env_params=None) -> train(key, hparams) -> TrainResult(params, metrics)``.
make_train = make_train_from_parts(make_train_parts)


#: ``act(params, obs, key, deterministic) -> action``; CPO's actor and params layout are PPO's.
make_act = make_act
