"""Exact leader objectives and hypergradients (the oracle every estimator is tested against).

The follower's soft-optimal Q is the fixed point ``Q = T(Q; theta)`` of the soft Bellman operator, where ``theta``
collects everything the leader's parameters ``x`` can move: the follower reward, the transitions, and (in a Markov
game) the leader's own policy that the follower averages over. :func:`soft_optimal_q` solves it by Newton's method
and differentiates it by the implicit function theorem,

    dQ = (I - dT/dQ)^-1 (dT/dtheta) dtheta,      dT/dQ = gamma P W,   W = dV/dQ (the follower's policy),

solving one ``S x S`` linear system instead of unrolling the solver (the ``custom_jvp`` below; reverse mode is its
transpose, so ``jax.grad`` and ``jax.jacfwd`` both work). The leader's objective is then an exact policy evaluation
(another linear solve, :func:`jaxsafe.exact.tabular.policy_evaluation`), and ``jax.grad`` of it is the exact
hypergradient.

For linear-quadratic problems the follower is the closed-form maximum-entropy LQR and the leader value is a
discounted Lyapunov equation (:func:`lq_leader_objective`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxsafe.bilevel import followers
from jaxsafe.bilevel.followers import GameValueParams, MDPValueParams
from jaxsafe.exact.tabular import policy_evaluation, soft_policy

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Implicitly differentiated soft-optimal Q
# ---------------------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 6))
def soft_optimal_q(value_fn, reward: Array, transitions: Array, gamma: Array, value_params: Any, q_init: Array,
                   max_iterations: int = 100) -> Array:
    """Soft-optimal follower Q ``[S, *A]``, differentiable in ``reward``, ``transitions``, ``gamma``, ``value_params``.

    Args:
      value_fn: the soft value (``followers.mdp_soft_value`` or ``followers.game_soft_value``); static.
      reward: ``[S, *A]``; transitions: ``[S, *A, S]``; gamma: scalar follower discount.
      value_params: pytree for ``value_fn`` (temperature, live mask, leader policy).
      q_init: ``[S, *A]`` warm start for the Newton solver; the result does not depend on it (zero derivative).
      max_iterations: static Newton iteration cap.
    """
    q, _ = followers.newton_soft_bellman(reward, transitions, gamma, value_fn, value_params, q_init, max_iterations)
    return q


@soft_optimal_q.defjvp
def _soft_optimal_q_jvp(value_fn, max_iterations, primals, tangents):
    reward, transitions, gamma, value_params, q_init = primals
    d_reward, d_transitions, d_gamma, d_value_params, _ = tangents
    q = soft_optimal_q(value_fn, reward, transitions, gamma, value_params, q_init, max_iterations)

    # dT/dtheta at the fixed point, with Q held fixed.
    def backup(reward, transitions, gamma, value_params):
        return followers.soft_bellman_backup(q, reward, transitions, gamma, value_fn, value_params)

    _, d_backup = jax.jvp(backup, (reward, transitions, gamma, value_params),
                          (d_reward, d_transitions, d_gamma, d_value_params))
    weights = followers.value_weights(q, value_fn, value_params)
    d_q = followers._structured_solve(weights, transitions, gamma, d_backup)
    return q, d_q


# ---------------------------------------------------------------------------------------------------------------
# Configurable MDPs
# ---------------------------------------------------------------------------------------------------------------


def mdp_follower_q(problem, params: Array, temperature: Array, follower_gamma: Array, q_init: Array | None = None,
                   max_iterations: int = 100) -> Array:
    """Soft-optimal follower Q ``[S, A]`` of ``problem`` (a ``ConfigurableMDP``) at leader parameters ``params``."""
    reward = problem.follower_reward(params)
    transitions = problem.transition_fn(params)
    q_init = jnp.zeros_like(reward) if q_init is None else jax.lax.stop_gradient(q_init)
    value_params = MDPValueParams(jnp.asarray(temperature, reward.dtype), jnp.asarray(problem.live, reward.dtype))
    return soft_optimal_q(followers.mdp_soft_value, reward, transitions, jnp.asarray(follower_gamma, reward.dtype),
                          value_params, q_init, max_iterations)


def mdp_leader_value(problem, params: Array, policy: Array, leader_gamma: Array) -> Array:
    """Exact leader objective ``J = mu0' V_L`` of a given follower ``policy [S, A]`` at ``params`` (scalar)."""
    values = policy_evaluation(policy, problem.leader_reward_fn(params), problem.transition_fn(params), leader_gamma)
    return jnp.asarray(problem.initial, values.dtype) @ values


def mdp_leader_objective(problem, params: Array, temperature: Array, follower_gamma: Array, leader_gamma: Array,
                         q_init: Array | None = None, max_iterations: int = 100) -> Array:
    """``J(x)``: the leader's exact discounted return under the follower's soft-optimal response (scalar)."""
    q = mdp_follower_q(problem, params, temperature, follower_gamma, q_init, max_iterations)
    return mdp_leader_value(problem, params, soft_policy(q, temperature), leader_gamma)


def mdp_exact_hypergradient(problem, params: Array, temperature: Array, follower_gamma: Array,
                            leader_gamma: Array, q_init: Array | None = None,
                            max_iterations: int = 100) -> tuple[Array, Array]:
    """``(J(x), dJ/dx [d])`` by implicit differentiation (exact up to the Newton tolerance)."""
    return jax.value_and_grad(mdp_leader_objective, argnums=1)(
        problem, params, temperature, follower_gamma, leader_gamma, q_init, max_iterations)


# ---------------------------------------------------------------------------------------------------------------
# Markov games
# ---------------------------------------------------------------------------------------------------------------


def game_follower_q(game, leader_policy: Array, temperature: Array, follower_gamma: Array,
                    q_init: Array | None = None, max_iterations: int = 100) -> Array:
    """Follower soft Q ``[S, A_L, A_F]`` against a leader policy ``[S, A_L]`` (differentiable in the policy)."""
    reward = jnp.asarray(game.follower_reward, leader_policy.dtype)
    transitions = jnp.asarray(game.transitions, leader_policy.dtype)
    q_init = jnp.zeros_like(reward) if q_init is None else jax.lax.stop_gradient(q_init)
    value_params = GameValueParams(jnp.asarray(temperature, reward.dtype), jnp.asarray(game.live, reward.dtype),
                                   leader_policy)
    return soft_optimal_q(followers.game_soft_value, reward, transitions, jnp.asarray(follower_gamma, reward.dtype),
                          value_params, q_init, max_iterations)


def game_joint_policy(leader_policy: Array, follower_policy: Array) -> Array:
    """``pi(aL, aF | s) = pi_x(aL|s) pi_F(aF|s, aL)``; ``[S, A_L], [S, A_L, A_F] -> [S, A_L, A_F]``."""
    return leader_policy[..., None] * follower_policy


def game_leader_value(game, leader_policy: Array, follower_policy: Array, leader_gamma: Array) -> Array:
    """Exact leader objective of a joint behaviour (scalar)."""
    joint = game_joint_policy(leader_policy, follower_policy)
    reward = jnp.asarray(game.leader_reward, joint.dtype)
    values = policy_evaluation(joint, reward, jnp.asarray(game.transitions, joint.dtype), leader_gamma)
    return jnp.asarray(game.initial, values.dtype) @ values


def game_leader_objective(game, params: Array, temperature: Array, follower_gamma: Array, leader_gamma: Array,
                          q_init: Array | None = None, max_iterations: int = 100) -> Array:
    """``J(x)`` of a Markov game: leader plays ``game.leader_policy_fn(x)``, the follower soft-best-responds."""
    leader_policy = game.leader_policy_fn(params)
    q = game_follower_q(game, leader_policy, temperature, follower_gamma, q_init, max_iterations)
    return game_leader_value(game, leader_policy, soft_policy(q, temperature), leader_gamma)


def game_exact_hypergradient(game, params: Array, temperature: Array, follower_gamma: Array, leader_gamma: Array,
                             q_init: Array | None = None, max_iterations: int = 100) -> tuple[Array, Array]:
    """``(J(x), dJ/dx)`` of a Markov game by implicit differentiation."""
    return jax.value_and_grad(game_leader_objective, argnums=1)(
        game, params, temperature, follower_gamma, leader_gamma, q_init, max_iterations)


# ---------------------------------------------------------------------------------------------------------------
# Linear-quadratic problems
# ---------------------------------------------------------------------------------------------------------------


def discounted_lyapunov(closed_loop: Array, cost: Array, gamma: Array, num_iterations: int = 500) -> Array:
    """``M = cost + gamma A' M A`` by fixed-point iteration (``closed_loop = A``); returns ``M [n, n]``."""

    def step(_, m):
        return cost + gamma * closed_loop.T @ m @ closed_loop

    return jax.lax.fori_loop(0, num_iterations, step, cost)


def lq_leader_objective(problem, params: Array, temperature: Array, follower_gamma: Array,
                        leader_gamma: Array) -> Array:
    """Exact leader return of a linear-quadratic bilevel problem (``problems.LQProblem``), closed form.

    The follower best-responds with maximum-entropy LQR to the system ``problem.system(params)``; the leader's
    reward is the quadratic ``-(z' Q_L z + a' R_L a)`` in the (augmented) state and the follower action. With the
    Gaussian closed loop ``z' = (A - B K) z + B eps + w`` the leader value is ``-(z0' M z0 + c)`` where ``M`` solves
    the discounted Lyapunov equation and ``c = (gamma tr(M Sigma) + tr(R_L Sigma_a) + constant) / (1 - gamma)``.
    """
    system = problem.system(params)
    follower = followers.maxent_lqr(system.dynamics, system.control, system.follower_state_cost,
                                    system.follower_action_cost, system.noise_cov, follower_gamma, temperature,
                                    problem.riccati_iterations)
    closed_loop = system.dynamics - system.control @ follower.gain
    state_cost = (system.leader_state_cost + follower.gain.T @ system.leader_action_cost @ follower.gain)
    value_matrix = discounted_lyapunov(closed_loop, state_cost, leader_gamma, problem.riccati_iterations)
    step_noise = system.noise_cov + system.control @ follower.policy_cov @ system.control.T
    offset = (leader_gamma * jnp.trace(value_matrix @ step_noise)
              + jnp.trace(system.leader_action_cost @ follower.policy_cov)
              + system.leader_constant_cost) / (1.0 - leader_gamma)
    z0 = system.initial_state
    return -(z0 @ value_matrix @ z0 + offset)


def lq_exact_hypergradient(problem, params: Array, temperature: Array, follower_gamma: Array,
                           leader_gamma: Array) -> tuple[Array, Array]:
    """``(J(x), dJ/dx)`` of a linear-quadratic bilevel problem (autodiff through the closed form)."""
    return jax.value_and_grad(lq_leader_objective, argnums=1)(problem, params, temperature, follower_gamma,
                                                             leader_gamma)
