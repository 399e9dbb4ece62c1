"""The leader loop in the learner contract: ``make_train_parts(config, problem) -> TrainParts``, and
``make_train(config, problem) -> train(key, hparams) -> TrainResult`` (:mod:`jaxsafe.learner`).

Each leader iteration (bchg.md 1.4):

1. the follower best-responds to ``x`` (exactly by Newton/soft policy iteration, warm-started from the previous
   iterate, or partly: ``follower_iterations`` soft Q-iteration backups, carried or reset);
2. ``num_samples`` transitions are rolled out with the follower's policy (the leader sees only these);
3. the leader critic is updated (tabular SARSA, carried; or exact for diagnostics; LSTD-Q for LQ problems);
4. the chosen estimator gives a hypergradient; it is clipped to ``max_grad_norm`` and ``x <- x + lr g``.

One leader iteration is one ``update`` of :class:`~jaxsafe.learner.TrainParts` (``steps_per_update`` is the
sample budget ``num_samples``), so ``train`` is pure, jittable and ``vmap``-able over keys and hparams, and
the chunked runner checkpoints and resumes it bit-identically. Iteration ``i`` draws its randomness from
``jax.random.split(key, num_iterations)[i]`` (the stream of the original one-scan loop, so stored benchmark
results reproduce). Metrics have a leading leader-iteration axis and are exact where the model allows:
``leader_value`` is the exact leader return of the follower's *actual* policy at the start of each iteration;
``nonfinite`` flags an iteration whose leader parameters, follower Q or leader value are NaN/inf.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxsafe.bilevel import baselines, bchg, exact, followers
from jaxsafe.bilevel.followers import GameValueParams, MDPValueParams
from jaxsafe.exact import tabular
from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.validation import is_int, positive, require

Array = jax.Array

ESTIMATORS: dict[str, tuple[str, ...]] = {
    "mdp": ("bchg", "hpgd_mc", "hpgd_sarsa", "naive", "oracle"),
    "game": ("bchg", "bchg_no_guidance", "oracle"),
    "lq": ("bchg", "naive", "oracle"),
}
ALL_ESTIMATORS = tuple(sorted({e for names in ESTIMATORS.values() for e in names}))


#: A discount: ``[0, 1)`` (the leader and follower objectives are infinite-horizon discounted returns).
DISCOUNT = (lambda v: (v >= 0) & (v < 1), "in [0, 1)")


@struct.dataclass
class BilevelHParams(HParams):
    """Vmappable leader-loop hyperparameters (jnp scalars, or ``[G]`` arrays for a grid).

    Attributes:
      leader_lr: step size of ``x <- x + lr g`` (> 0).
      follower_temperature: ``lambda`` (``beta`` in games) of the follower's entropy regularisation (> 0).
      follower_gamma, leader_gamma: discounts in ``[0, 1)``.
      critic_lr: SARSA step size of the tabular leader critic, in ``(0, 1]``.
      max_grad_norm: the hypergradient is clipped to this global norm before the step (> 0).
    """

    leader_lr: float = 0.1
    follower_temperature: float = 0.1
    follower_gamma: float = 0.9
    leader_gamma: float = 0.9
    critic_lr: float = 0.5
    max_grad_norm: float = 1.0

    rules = {
        "leader_lr": positive(),
        "follower_temperature": positive(),
        "follower_gamma": DISCOUNT,
        "leader_gamma": DISCOUNT,
        "critic_lr": (lambda v: (v > 0) & (v <= 1), "in (0, 1]"),
        "max_grad_norm": positive(),
    }


@dataclasses.dataclass(frozen=True)
class BilevelConfig(Config):
    """Static settings of the leader loop (hashable; they fix shapes and loop counts).

    Attributes:
      estimator: one of ``ALL_ESTIMATORS`` (which ones a problem accepts: ``ESTIMATORS[problem.kind]``).
      num_iterations: leader iterations (>= 1).
      num_samples: sample budget ``N`` per leader iteration (transitions; >= 2).
      max_episode_steps: rollout time limit; ``0`` takes the problem's.
      follower_iterations: ``0`` solves the follower exactly; ``k > 0`` runs ``k`` soft Q-iteration backups.
      follower_carry: partly converged follower keeps its Q-table between leader steps (else reset to zeros).
      critic: ``"sarsa"`` (tabular, carried), ``"sarsa_averaged"`` (the same with the step ``max(critic_lr, 1/n)``,
        :func:`bchg.sarsa_averaged`; configurable MDPs only) or ``"exact"`` (policy evaluation in the model;
        diagnostics only).
      follower_model: games only: ``"oracle"`` (white box) or ``"estimated"`` (fitted to observed actions).
      track_oracle: also log the cosine between the estimate and the exact hypergradient (costs one exact
        hypergradient per iteration).
      newton_max_iterations: cap of the exact follower solver.
    """

    estimator: str = "bchg"
    num_iterations: int = 200
    num_samples: int = 100
    max_episode_steps: int = 0
    follower_iterations: int = 0
    follower_carry: bool = True
    critic: str = "sarsa"
    follower_model: str = "oracle"
    track_oracle: bool = False
    newton_max_iterations: int = 100

    def __post_init__(self):
        require(self.estimator in ALL_ESTIMATORS, "BilevelConfig.estimator", f"one of {ALL_ESTIMATORS}",
                self.estimator)
        for name, low in (("num_iterations", 1), ("num_samples", 2), ("max_episode_steps", 0),
                          ("follower_iterations", 0), ("newton_max_iterations", 1)):
            value = getattr(self, name)
            require(is_int(value, low), f"BilevelConfig.{name}", f"an integer >= {low}", value)
        require(self.critic in ("sarsa", "sarsa_averaged", "exact"), "BilevelConfig.critic",
                "'sarsa', 'sarsa_averaged' or 'exact'", self.critic)
        require(self.follower_model in ("oracle", "estimated"), "BilevelConfig.follower_model",
                "'oracle' or 'estimated'", self.follower_model)
        for name in ("follower_carry", "track_oracle"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"BilevelConfig.{name}", "a bool", value)

    def default_hparams(self, problem=None) -> BilevelHParams:
        """Defaults as float32 arrays; with a ``problem``, its paper temperature, discounts and leader
        learning rate."""
        defaults = BilevelHParams()
        if problem is not None:
            defaults = defaults.replace(
                leader_lr=getattr(problem, "default_leader_lr", defaults.leader_lr),
                follower_temperature=getattr(problem, "default_temperature", defaults.follower_temperature),
                follower_gamma=getattr(problem, "default_follower_gamma", defaults.follower_gamma),
                leader_gamma=getattr(problem, "default_leader_gamma", defaults.leader_gamma))
        return defaults.as_arrays()


class LeaderState(NamedTuple):
    """Carried through the leader loop (arrays only, so the runner can checkpoint it).

    Attributes:
      params: ``[d]`` leader parameters ``x``.
      follower_q: the follower's Q-table (``[S, A]``, ``[S, A_L, A_F]``; a 0-d placeholder for LQ problems).
      leader_q: the leader's critic table (``[S, A]`` or ``[S, A_L * A_F]``; 0-d for LQ problems).
      leader_visits: the critic's visit counts ``[S, A]`` (0-d where unused).
      base_key: the run's raw ``PRNGKey``; iteration ``i`` uses
        ``jax.random.split(base_key, num_iterations)[i]``.
      iteration: int32 leader iterations done.
    """

    params: Array
    follower_q: Array
    leader_q: Array
    leader_visits: Array
    base_key: Array
    iteration: Array


def visited_advantages(leader_q: Array, visits: Array, policy: Array) -> tuple[Array, Array]:
    """Leader ``(A_L [S, A], V_L [S])`` from a tabular critic, trusting only pairs the critic has seen.

    A SARSA table holds its initial value at pairs never visited; with a near-greedy follower these are the rare
    actions that carry the covariance term, and ``A_L = Q_init - V_L`` there would be pure bias (scaled by
    ``1/lambda``). So ``V_L(s)`` is the policy-weighted mean over visited actions and unvisited pairs get
    ``A_L = 0`` (no information, no contribution).
    """
    seen = visits > 0
    weights = jnp.where(seen, policy, 0.0)
    value = jnp.sum(weights * leader_q, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1e-30)
    return jnp.where(seen, leader_q - value[:, None], 0.0), value


def clip_by_norm(gradient: Array, max_norm: Array) -> tuple[Array, Array]:
    """Scale ``gradient`` to at most ``max_norm``; returns ``(clipped, norm)``. NaNs are zeroed (and logged)."""
    finite = jnp.all(jnp.isfinite(gradient))
    gradient = jnp.where(finite, gradient, 0.0)
    norm = jnp.linalg.norm(gradient)
    return gradient * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12)), jnp.where(finite, norm, jnp.nan)


def _cosine(a: Array, b: Array) -> Array:
    return a @ b / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-12)


def make_train_parts(config: BilevelConfig, problem) -> TrainParts:
    """The leader loop as :class:`~jaxsafe.learner.TrainParts` for ``problem`` (a ``ConfigurableMDP``,
    ``MarkovGame`` or ``LQProblem``): ``update`` is one leader iteration, ``num_updates = num_iterations`` and
    ``steps_per_update = num_samples``.

    Raises:
      ValueError: if the estimator does not apply to the problem's kind (naming both), or the follower model /
        critic / follower-iteration options do not apply. Raised here, before anything is compiled.
    """
    kind = getattr(problem, "kind", None)
    if kind not in ESTIMATORS:
        raise ValueError(f"problem must be a ConfigurableMDP, MarkovGame or LQProblem, "
                         f"got {type(problem).__name__}")
    name = getattr(problem, "name", kind)
    if config.estimator not in ESTIMATORS[kind]:
        raise ValueError(f"estimator {config.estimator!r} does not apply to problem {name!r} "
                         f"(a {kind!r} problem); choose one of {ESTIMATORS[kind]}")
    if config.follower_model == "estimated" and kind != "game":
        raise ValueError("follower_model='estimated' applies to Markov games only")
    if config.critic == "sarsa_averaged" and kind != "mdp":
        raise ValueError("critic='sarsa_averaged' applies to configurable MDPs only")
    if kind == "lq" and config.follower_iterations:
        raise ValueError("follower_iterations must be 0 for LQ problems (the follower is closed-form)")
    builders = {"mdp": _mdp_iteration, "game": _game_iteration, "lq": _lq_iteration}
    iteration, init_leader = builders[kind](config, problem)

    def init(key: Array, hparams: BilevelHParams) -> LeaderState:
        del hparams  # the initial leader state depends only on the problem (and carries the key)
        return init_leader(key)

    def update(state: LeaderState, hparams: BilevelHParams) -> tuple[LeaderState, dict]:
        key = jax.random.split(state.base_key, config.num_iterations)[state.iteration]
        new_state, metrics = iteration(state, key, hparams)
        finite = (jnp.all(jnp.isfinite(new_state.params)) & jnp.all(jnp.isfinite(new_state.follower_q))
                  & jnp.isfinite(metrics["leader_value"]))
        metrics = dict(metrics, nonfinite=~finite)
        return new_state._replace(iteration=state.iteration + 1), metrics

    return TrainParts(init=init, update=update, num_updates=config.num_iterations,
                      steps_per_update=config.num_samples)


make_train = make_train_from_parts(make_train_parts)


def _episode_limit(config, problem) -> int:
    return config.max_episode_steps or problem.max_episode_steps


def _finish(state: LeaderState, gradient: Array, hparams: BilevelHParams, metrics: dict,
            oracle: Array | None) -> tuple[LeaderState, dict]:
    clipped, norm = clip_by_norm(gradient, hparams.max_grad_norm)
    metrics = dict(metrics, hypergradient_norm=norm)
    if oracle is not None:
        metrics["oracle_cosine"] = _cosine(gradient, oracle)
        metrics["oracle_norm"] = jnp.linalg.norm(oracle)
    return state._replace(params=state.params + hparams.leader_lr * clipped), metrics


# ---------------------------------------------------------------------------------------------------------------
# Configurable MDPs
# ---------------------------------------------------------------------------------------------------------------


def _mdp_iteration(config: BilevelConfig, problem):
    num_states, num_actions = problem.num_states, problem.num_actions
    live = jnp.asarray(problem.live)
    initial = jnp.asarray(problem.initial)
    limit = _episode_limit(config, problem)
    estimator = config.estimator

    def init_state(key):
        # the leader critic starts at zero (bchg.md's random-normal start only adds early noise)
        zeros = jnp.zeros((num_states, num_actions), jnp.float32)
        return LeaderState(jnp.asarray(problem.initial_params, jnp.float32), zeros, zeros, zeros, key,
                           jnp.zeros((), jnp.int32))

    def iteration(state: LeaderState, key, hparams: BilevelHParams):
        rollout_key, critic_key = jax.random.split(key)
        x = state.params
        temperature = hparams.follower_temperature
        transitions = problem.transition_fn(x)
        follower_reward = problem.follower_reward(x)
        value_params = MDPValueParams(temperature, live)
        if config.follower_iterations == 0:
            follower_q, info = followers.newton_soft_bellman(
                follower_reward, transitions, hparams.follower_gamma, followers.mdp_soft_value, value_params,
                state.follower_q, config.newton_max_iterations)
            solver_metrics = {"follower_solver_iterations": info.iterations, "follower_residual": info.residual}
        else:
            follower_q = followers.partly_converged_follower(
                follower_reward, transitions, hparams.follower_gamma, followers.mdp_soft_value, value_params,
                state.follower_q, config.follower_iterations, config.follower_carry)
            solver_metrics = {}
        policy = tabular.soft_policy(follower_q, temperature)
        leader_rewards_table = problem.leader_reward_fn(x)
        leader_values_exact = tabular.policy_evaluation(policy, leader_rewards_table, transitions,
                                                      hparams.leader_gamma)
        metrics = {"leader_value": initial @ leader_values_exact, **solver_metrics}

        needs_oracle = estimator == "oracle" or config.track_oracle
        oracle = (baselines.oracle_gradient(problem, x, temperature, hparams.follower_gamma,
                                            hparams.leader_gamma, follower_q) if needs_oracle else None)
        if estimator == "oracle":
            new_state, metrics = _finish(state._replace(follower_q=follower_q), oracle, hparams, metrics, oracle)
            return new_state, metrics

        batch = bchg.sample_batch(rollout_key, policy, transitions, initial, live, config.num_samples, limit)
        rewards = leader_rewards_table[batch.state, batch.action]
        visits = state.leader_visits.at[batch.state, batch.action].add(1.0)
        if config.critic == "exact":
            leader_q = tabular.action_values(leader_values_exact, leader_rewards_table, transitions,
                                           hparams.leader_gamma)
            leader_advantage = leader_q - jnp.sum(policy * leader_q, axis=-1, keepdims=True)
            leader_v = jnp.sum(policy * leader_q, axis=-1)
        elif config.critic == "sarsa_averaged":
            leader_q, visits = bchg.sarsa_averaged(critic_key, state.leader_q, state.leader_visits, batch, rewards,
                                                   hparams.leader_gamma, hparams.critic_lr)
            leader_advantage, leader_v = visited_advantages(leader_q, visits, policy)
        else:
            leader_q = bchg.sarsa(critic_key, state.leader_q, batch, rewards, hparams.leader_gamma,
                                  hparams.critic_lr)
            leader_advantage, leader_v = visited_advantages(leader_q, visits, policy)
        follower_value = followers.mdp_soft_value(follower_q, value_params)

        if estimator == "hpgd_mc":
            mc_returns, next_returns = baselines.monte_carlo_leader_returns(batch, rewards, hparams.leader_gamma)
            leader_next = next_returns
        else:
            leader_next = leader_v[batch.next_state]
        terms = bchg.mdp_gradient_terms(problem, x, batch, follower_value, leader_next, hparams.follower_gamma,
                                        hparams.leader_gamma, with_follower_gradient=estimator != "naive")
        if estimator == "bchg":
            gradient = bchg.bchg_mdp_gradient(terms, leader_advantage[batch.state, batch.action], temperature)
        elif estimator == "hpgd_sarsa":
            gradient = baselines.hpgd_gradient(terms, leader_q[batch.state, batch.action], temperature)
        elif estimator == "hpgd_mc":
            gradient = baselines.hpgd_gradient(terms, mc_returns, temperature)
        else:
            gradient = baselines.naive_gradient(terms)
        metrics["episodes"] = bchg.num_episodes(batch)
        new_state = state._replace(follower_q=follower_q, leader_q=leader_q, leader_visits=visits)
        return _finish(new_state, gradient, hparams, metrics, oracle)

    return iteration, init_state


# ---------------------------------------------------------------------------------------------------------------
# Markov games
# ---------------------------------------------------------------------------------------------------------------


def _game_iteration(config: BilevelConfig, problem):
    num_states = problem.num_states
    num_leader, num_follower = problem.num_leader_actions, problem.num_follower_actions
    live = jnp.asarray(problem.live)
    initial = jnp.asarray(problem.initial)
    follower_reward = jnp.asarray(problem.follower_reward)
    leader_reward = jnp.asarray(problem.leader_reward)
    game_transitions = jnp.asarray(problem.transitions)
    flat_transitions = game_transitions.reshape(num_states, num_leader * num_follower, num_states)
    limit = _episode_limit(config, problem)
    estimator = config.estimator

    def init_state(key):
        return LeaderState(jnp.asarray(problem.initial_params, jnp.float32),
                           jnp.zeros((num_states, num_leader, num_follower), jnp.float32),
                           jnp.zeros((num_states, num_leader * num_follower), jnp.float32),
                           jnp.zeros((), jnp.float32), key, jnp.zeros((), jnp.int32))

    def iteration(state: LeaderState, key, hparams: BilevelHParams):
        rollout_key, critic_key = jax.random.split(key)
        x = state.params
        temperature = hparams.follower_temperature
        leader_policy = problem.leader_policy_fn(x)
        value_params = GameValueParams(temperature, live, leader_policy)
        if config.follower_iterations == 0:
            follower_q, info = followers.newton_soft_bellman(
                follower_reward, game_transitions, hparams.follower_gamma, followers.game_soft_value,
                value_params, state.follower_q, config.newton_max_iterations)
            solver_metrics = {"follower_solver_iterations": info.iterations}
        else:
            follower_q = followers.partly_converged_follower(
                follower_reward, game_transitions, hparams.follower_gamma, followers.game_soft_value,
                value_params, state.follower_q, config.follower_iterations, config.follower_carry)
            solver_metrics = {}
        follower_policy = tabular.soft_policy(follower_q, temperature)
        joint = exact.game_joint_policy(leader_policy, follower_policy)
        leader_values_exact = tabular.policy_evaluation(joint, leader_reward, game_transitions, hparams.leader_gamma)
        metrics = {"leader_value": initial @ leader_values_exact, **solver_metrics}
        if problem.key_state >= 0:
            metrics["optimality_gap"] = 1.0 - leader_policy[problem.key_state, problem.optimal_leader_action]

        needs_oracle = estimator == "oracle" or config.track_oracle
        oracle = (baselines.oracle_gradient(problem, x, temperature, hparams.follower_gamma,
                                            hparams.leader_gamma, follower_q) if needs_oracle else None)
        if estimator == "oracle":
            return _finish(state._replace(follower_q=follower_q), oracle, hparams, metrics, oracle)

        flat_joint = joint.reshape(num_states, num_leader * num_follower)
        batch = bchg.sample_batch(rollout_key, flat_joint, flat_transitions, initial, live, config.num_samples,
                                  limit)
        rewards = leader_reward.reshape(num_states, -1)[batch.state, batch.action]
        if config.critic == "exact":
            leader_q = tabular.action_values(leader_values_exact, leader_reward, game_transitions,
                                           hparams.leader_gamma).reshape(num_states, -1)
        else:
            leader_q = bchg.sarsa(critic_key, state.leader_q, batch, rewards, hparams.leader_gamma,
                                  hparams.critic_lr)
        if config.follower_model == "oracle":
            model = bchg.FollowerModel(follower_policy, followers.game_follower_value(follower_q, temperature))
        else:
            model = bchg.estimate_follower_model(batch, follower_reward, temperature, hparams.follower_gamma)
        gradient, parts = bchg.bchg_game_gradient(
            problem, x, batch, model, leader_q.reshape(num_states, num_leader, num_follower), temperature,
            hparams.follower_gamma, hparams.leader_gamma, guidance=estimator == "bchg")
        metrics["guidance_norm"] = jnp.linalg.norm(parts["guidance"])
        new_state = state._replace(follower_q=follower_q, leader_q=leader_q)
        return _finish(new_state, gradient, hparams, metrics, oracle)

    return iteration, init_state


# ---------------------------------------------------------------------------------------------------------------
# Linear-quadratic problems
# ---------------------------------------------------------------------------------------------------------------


def _lq_iteration(config: BilevelConfig, problem):
    if config.critic == "exact":
        raise ValueError("critic='exact' is not available for LQ problems (the critic is fitted by LSTD-Q)")
    horizon = _episode_limit(config, problem)
    if config.num_samples < horizon:
        raise ValueError(f"num_samples must be >= the episode length {horizon} for LQ problems, "
                         f"got {config.num_samples}")
    num_episodes = config.num_samples // horizon
    estimator = config.estimator

    def init_state(key):
        empty = jnp.zeros((), jnp.float32)
        return LeaderState(jnp.asarray(problem.initial_params, jnp.float32), empty, empty, empty, key,
                           jnp.zeros((), jnp.int32))

    def iteration(state: LeaderState, key, hparams: BilevelHParams):
        x = state.params
        value, oracle = exact.lq_exact_hypergradient(problem, x, hparams.follower_temperature,
                                                     hparams.follower_gamma, hparams.leader_gamma)
        metrics = {"leader_value": value}
        if estimator == "oracle":
            return _finish(state, oracle, hparams, metrics, oracle)
        system = problem.system(x)
        follower = followers.maxent_lqr(system.dynamics, system.control, system.follower_state_cost,
                                        system.follower_action_cost, system.noise_cov, hparams.follower_gamma,
                                        hparams.follower_temperature, problem.riccati_iterations)
        batch = bchg.sample_lq_batch(key, system, follower.gain, follower.policy_cov, num_episodes, horizon)
        rewards = -(jnp.einsum("eti,ij,etj->et", batch.state, system.leader_state_cost, batch.state)
                    + jnp.einsum("eti,ij,etj->et", batch.action, system.leader_action_cost, batch.action)
                    + system.leader_constant_cost)
        critic = bchg.fit_quadratic_critic(batch, rewards, hparams.leader_gamma)
        gradient, _ = bchg.bchg_lq_gradient(problem, x, batch, follower, critic, hparams.follower_temperature,
                                            hparams.follower_gamma, hparams.leader_gamma,
                                            guidance=estimator == "bchg")
        return _finish(state, gradient, hparams, metrics, oracle if config.track_oracle else None)

    return iteration, init_state
