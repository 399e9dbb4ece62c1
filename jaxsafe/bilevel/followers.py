"""Follower solvers: entropy-regularised (soft) best responses of tabular MDPs, Markov games and LQ systems.

A follower with temperature ``lambda`` maximises ``E[sum_t gamma^t (r(s_t, a_t) + lambda H(pi(.|s_t)))]``. Its
optimum is the Boltzmann policy of the soft Q-function (bchg.md 1.2)::

    Q(s, a) = r(s, a) + gamma sum_s' P(s' | s, a) V(s')
    V(s)    = lambda log sum_a exp(Q(s, a) / lambda)          (0 in terminal states)
    pi(a|s) = exp((Q(s, a) - V(s)) / lambda)

Every solver here is written for a *generic* soft value: a Q-table ``[S, *action_shape]``, transitions
``[S, *action_shape, S]`` and a ``value_fn(q, value_params) -> [S]`` that is convex and monotone in ``q`` and
depends on ``q[s]`` only through state ``s``. The MDP follower uses :func:`mdp_soft_value`; the Markov-game follower
(which sees the leader's action and averages over the leader's stochastic policy) uses :func:`game_soft_value`.

Three solvers:

* :func:`soft_q_iteration`: ``num_iterations`` Bellman backups (a contraction with modulus ``gamma``; the
  tabular MDP's state-value form is :func:`jaxsafe.exact.tabular.soft_value_iteration`). Cheap per step, slow
  for ``gamma -> 1``; used for partly converged followers and as the brute-force reference in tests.
* :func:`newton_soft_bellman`: Newton's method on ``T(Q) - Q = 0``. Its linearisation at ``Q_k`` is exactly soft
  policy evaluation of ``softmax(Q_k / lambda)``, so it is soft policy iteration: globally and monotonically
  convergent and quadratic near the fixed point (a few steps on FourRooms even for ``gamma = 0.99``).
  Each step solves an ``S x S`` system only (see :func:`_structured_solve`).
* :func:`maxent_lqr`: the maximum-entropy linear-quadratic regulator by the discounted Riccati recursion, with the
  closed form of the entropy/noise constant and the Gaussian policy.

All functions are unbatched and shape-checked; ``vmap`` them to batch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from jaxsafe.exact.tabular import action_values, policy_evaluation, soft_state_values

Array = jax.Array
ValueFn = Callable[[Array, Any], Array]


# ---------------------------------------------------------------------------------------------------------------
# Soft values
# ---------------------------------------------------------------------------------------------------------------


class MDPValueParams(NamedTuple):
    """Parameters of the MDP follower's soft value: ``temperature`` scalar, ``live`` ``[S]`` (0 in terminals)."""

    temperature: Array
    live: Array


class GameValueParams(NamedTuple):
    """Parameters of the Markov-game follower's soft value.

    Attributes:
      temperature: scalar follower temperature ``beta``.
      live: ``[S]`` 1 for non-terminal states.
      leader_policy: ``[S, A_L]`` the leader's stochastic policy ``pi_x(a_L | s)``.
    """

    temperature: Array
    live: Array
    leader_policy: Array


def mdp_soft_value(q: Array, params: MDPValueParams) -> Array:
    """``V(s) = live(s) * lambda * logsumexp(Q(s, .) / lambda)``; ``q [S, A] -> [S]`` (stable for tiny lambda)."""
    return soft_state_values(q, params.temperature, params.live)


def game_soft_value(q: Array, params: GameValueParams) -> Array:
    """Follower value of a Markov game: ``V_F(s) = sum_aL pi_x(aL|s) W_F(s, aL)``; ``q [S, A_L, A_F] -> [S]``.

    ``W_F(s, aL) = beta logsumexp(Q_F(s, aL, .) / beta)`` is the follower's soft value after seeing ``aL``.
    """
    assert q.ndim == 3 and params.leader_policy.shape == q.shape[:2], (q.shape, params.leader_policy.shape)
    per_leader_action = game_follower_value(q, params.temperature)
    return params.live * jnp.sum(params.leader_policy * per_leader_action, axis=-1)


def game_follower_value(q: Array, temperature: Array) -> Array:
    """``W_F(s, aL) = beta logsumexp_aF(Q_F(s, aL, aF) / beta)``; ``[S, A_L, A_F] -> [S, A_L]``."""
    return temperature * logsumexp(q / temperature, axis=-1)


def soft_bellman_backup(q: Array, reward: Array, transitions: Array, gamma: Array, value_fn: ValueFn,
                        value_params: Any) -> Array:
    """One backup ``T(Q) = r + gamma P V(Q)``; ``q, reward [S, *A]``, ``transitions [S, *A, S]``."""
    assert q.shape == reward.shape and transitions.shape == q.shape + (q.shape[0],), (q.shape, transitions.shape)
    value = value_fn(q, value_params)
    return reward + gamma * jnp.tensordot(transitions, value, axes=1)


# ---------------------------------------------------------------------------------------------------------------
# Iterative solvers (fixed number of backups)
# ---------------------------------------------------------------------------------------------------------------


def soft_q_iteration(reward: Array, transitions: Array, gamma: Array, value_fn: ValueFn, value_params: Any,
                     num_iterations: int, q_init: Array | None = None) -> Array:
    """``num_iterations`` soft Bellman backups on Q from ``q_init`` (zeros by default).

    Args:
      reward: ``[S, *A]`` follower reward.
      transitions: ``[S, *A, S]``.
      gamma: scalar follower discount.
      value_fn, value_params: the soft value (``mdp_soft_value`` or ``game_soft_value`` and their params).
      num_iterations: static number of backups (the "partly converged follower" knob).
      q_init: ``[S, *A]`` warm start (a carried follower).

    Returns:
      ``[S, *A]`` Q after the backups; the error to the fixed point shrinks as ``gamma^num_iterations``.
    """
    q = jnp.zeros_like(reward) if q_init is None else q_init

    def backup(_, q):
        return soft_bellman_backup(q, reward, transitions, gamma, value_fn, value_params)

    return jax.lax.fori_loop(0, num_iterations, backup, q)


# ---------------------------------------------------------------------------------------------------------------
# Newton / soft policy iteration
# ---------------------------------------------------------------------------------------------------------------


def value_weights(q: Array, value_fn: ValueFn, value_params: Any) -> Array:
    """``dV(s)/dQ(s, a)`` as a ``[S, *A]`` array (the joint policy the value averages over, times ``live``).

    Because ``V(s)`` depends on ``Q[s]`` only, the Jacobian is block diagonal and the gradient of ``sum_s V(s)``
    is exactly its diagonal blocks.
    """
    return jax.grad(lambda q: jnp.sum(value_fn(q, value_params)))(q)


def _structured_solve(weights: Array, transitions: Array, gamma: Array, rhs_q: Array) -> Array:
    """Solve ``(I - gamma P W) dq = rhs_q`` for a Q-shaped ``dq`` through an ``S x S`` system.

    ``P W`` maps a Q-table to ``P @ (sum_a W(s', a) q(s', a))``; by the push-through identity
    ``(I - gamma P W)^-1 = I + gamma P (I - gamma W P)^-1 W`` and ``W P`` is the state chain ``[S, S]`` of the
    policy ``W``. This is the linear system of implicit differentiation and of each Newton step: the solve is
    the policy evaluation of ``W`` with ``rhs_q`` as reward, and ``dq`` its action values.
    """
    state_values = policy_evaluation(weights, rhs_q, transitions, gamma)  # (I - gamma W P)^-1 W rhs_q, [S]
    return action_values(state_values, rhs_q, transitions, gamma)


class NewtonInfo(NamedTuple):
    """Diagnostics of :func:`newton_soft_bellman`: iterations used and final Bellman residual (max-abs)."""

    iterations: Array
    residual: Array


def newton_soft_bellman(reward: Array, transitions: Array, gamma: Array, value_fn: ValueFn, value_params: Any,
                        q_init: Array | None = None, max_iterations: int = 100,
                        tolerance: float | None = None) -> tuple[Array, NewtonInfo]:
    """Soft-optimal Q by Newton's method (= soft policy iteration) on ``T(Q) = Q``.

    ``Q_{k+1} = Q_k + (I - gamma P W_k)^-1 (T(Q_k) - Q_k)`` with ``W_k = dV/dQ`` at ``Q_k``. Stops when the Bellman
    residual ``max |T(Q) - Q|`` is below ``tolerance`` (default: 1e3 machine epsilons times ``1 + max|Q|``, which
    float32 reaches) or after ``max_iterations``.

    Args:
      reward: ``[S, *A]``; transitions: ``[S, *A, S]``; gamma scalar; value_fn/value_params: the soft value.
      q_init: ``[S, *A]`` warm start (the previous leader iterate's Q makes this 1-3 steps).

    Returns:
      ``(q [S, *A], NewtonInfo)``. Not differentiable itself; see ``jaxsafe.bilevel.exact.soft_optimal_q``.
    """
    q0 = jnp.zeros_like(reward) if q_init is None else q_init
    assert q0.shape == reward.shape and transitions.shape == reward.shape + (reward.shape[0],)
    eps = jnp.finfo(reward.dtype).eps
    scale_tolerance = tolerance is None

    def residual_of(q):
        target = soft_bellman_backup(q, reward, transitions, gamma, value_fn, value_params)
        return target, target - q

    def cond(carry):
        q, residual, iteration = carry
        tol = 1e3 * eps * (1.0 + jnp.max(jnp.abs(q))) if scale_tolerance else tolerance
        return jnp.logical_and(jnp.max(jnp.abs(residual)) > tol, iteration < max_iterations)

    def body(carry):
        q, residual, iteration = carry
        weights = value_weights(q, value_fn, value_params)
        q_new = q + _structured_solve(weights, transitions, gamma, residual)
        _, residual_new = residual_of(q_new)
        return q_new, residual_new, iteration + 1

    _, residual0 = residual_of(q0)
    q, residual, iterations = jax.lax.while_loop(cond, body, (q0, residual0, jnp.zeros((), jnp.int32)))
    return q, NewtonInfo(iterations, jnp.max(jnp.abs(residual)))


# ---------------------------------------------------------------------------------------------------------------
# Maximum-entropy LQR
# ---------------------------------------------------------------------------------------------------------------


class MaxEntLQR(NamedTuple):
    """Soft-optimal follower of a discounted linear-quadratic problem.

    Dynamics ``z' = A z + B a + w`` with ``w ~ N(0, noise_cov)``, reward ``-(z' Q z + a' R a)``, temperature
    ``beta``. The soft value is ``V(z) = -z' P z - value_offset`` and the policy is Gaussian,
    ``a ~ N(-gain z, policy_cov)``.

    Attributes:
      value_matrix: ``P [n, n]``, the discounted Riccati solution (the entropy does not change it).
      gain: ``[m, n]``, ``gamma H^-1 B' P A`` with ``H = R + gamma B' P B``.
      policy_cov: ``[m, m]``, ``(beta / 2) H^-1``.
      value_offset: scalar, ``(gamma tr(P noise_cov) - (beta/2)(m log(pi beta) - log det H)) / (1 - gamma)``.
      action_hessian: ``H [m, m]``: ``Q(z, a) = Q(z, a*) - (a - a*)' H (a - a*)``.
    """

    value_matrix: Array
    gain: Array
    policy_cov: Array
    value_offset: Array
    action_hessian: Array


def riccati_step(value_matrix: Array, dynamics: Array, control: Array, state_cost: Array, action_cost: Array,
                 gamma: Array) -> Array:
    """One discounted Riccati backup ``P <- Q + g A'PA - g^2 A'PB (R + g B'PB)^-1 B'PA``."""
    hessian = action_cost + gamma * control.T @ value_matrix @ control
    cross = gamma * control.T @ value_matrix @ dynamics  # [m, n]
    new = state_cost + gamma * dynamics.T @ value_matrix @ dynamics - cross.T @ jnp.linalg.solve(hessian, cross)
    return 0.5 * (new + new.T)  # keep it exactly symmetric against round-off


def maxent_lqr(dynamics: Array, control: Array, state_cost: Array, action_cost: Array, noise_cov: Array,
               gamma: Array, temperature: Array, num_iterations: int = 500) -> MaxEntLQR:
    """Maximum-entropy LQR by ``num_iterations`` Riccati backups from ``P = Q`` (differentiable by unrolling).

    Derivation (bchg.md 1.4, checked in tests against ``scipy.linalg.solve_discrete_are`` and quadrature): with
    ``V(z) = -z'Pz - c``, ``Q(z, a) = -z'Qz - a'Ra - g E[(Az+Ba+w)'P(Az+Ba+w)] - g c`` is a concave quadratic in
    ``a`` with Hessian ``-2H``; ``V = beta log int exp(Q/beta) da`` adds ``(beta/2) log det(pi beta H^-1)`` to the
    maximum, so ``P`` solves the ordinary discounted Riccati equation and only the offset ``c`` sees ``beta``.

    Args:
      dynamics: ``A [n, n]``; control: ``B [n, m]``; state_cost: ``Q [n, n]`` (PSD); action_cost: ``R [m, m]`` (PD);
      noise_cov: ``[n, n]``; gamma, temperature: scalars; num_iterations: static (the Riccati map contracts like
      ``gamma * rho(A - B K)^2`` per step).
    """
    n, m = control.shape
    assert dynamics.shape == (n, n) and state_cost.shape == (n, n) and action_cost.shape == (m, m)
    assert noise_cov.shape == (n, n)

    def step(_, value_matrix):
        return riccati_step(value_matrix, dynamics, control, state_cost, action_cost, gamma)

    value_matrix = jax.lax.fori_loop(0, num_iterations, step, state_cost)
    hessian = action_cost + gamma * control.T @ value_matrix @ control
    gain = gamma * jnp.linalg.solve(hessian, control.T @ value_matrix @ dynamics)
    policy_cov = 0.5 * temperature * jnp.linalg.inv(hessian)
    _, logdet = jnp.linalg.slogdet(hessian)
    entropy_term = 0.5 * temperature * (m * jnp.log(jnp.pi * temperature) - logdet)
    value_offset = (gamma * jnp.trace(value_matrix @ noise_cov) - entropy_term) / (1.0 - gamma)
    return MaxEntLQR(value_matrix, gain, policy_cov, value_offset, hessian)


# ---------------------------------------------------------------------------------------------------------------
# The follower used by the leader loop
# ---------------------------------------------------------------------------------------------------------------


def partly_converged_follower(reward: Array, transitions: Array, gamma: Array, value_fn: ValueFn, value_params: Any,
                              q_carried: Array, num_iterations: int, carry: bool) -> Array:
    """A follower that runs only ``num_iterations`` soft Q-iteration backups per leader step.

    ``carry=True`` continues from last leader step's Q-table (a learner that keeps its memory), ``carry=False``
    starts from zeros each time (a learner that is re-initialised). ``num_iterations=0`` is not allowed here; the
    converged follower is ``newton_soft_bellman`` / ``exact.soft_optimal_q``.
    """
    assert num_iterations > 0
    start = q_carried if carry else jnp.zeros_like(q_carried)
    return soft_q_iteration(reward, transitions, gamma, value_fn, value_params, num_iterations, start)
