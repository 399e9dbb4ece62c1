"""Finite MDPs as arrays: exact policy evaluation, soft value iteration, occupancy measures and the
constrained occupancy LP, the ground truth that learners are tested against.

A :class:`TabularMDP` is the whole model of a small environment (the gridworlds export one with
``GridWorld.to_tabular``). Everything except the LP solvers is a pure JAX function (jit-, vmap- and
grad-able); the array functions take a policy ``[S, *A]`` so that a Markov game's joint policy
``[S, A_L, A_F]`` is evaluated by the same code as an MDP's ``[S, A]``.

Conventions: terminal (absorbing) states have all-zero transition rows and zero reward and cost, so they get
value 0; ``gamma = 1`` is the episodic (undiscounted) case, well defined when every policy reaches a terminal
state with probability one.

The occupancy-measure linear program of a constrained MDP (Altman, 1999), solved by
:func:`solve_constrained_mdp` through the one LP wrapper :func:`jaxsafe.exact.lp.solve_lp`, gives the exact
optimal constrained policy (random in at most ``n_costs`` states) and the optimal Lagrange multiplier of each
cost constraint.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from jaxsafe.exact.lp import LPError, solve_lp

Array = jax.Array

__all__ = ["TabularMDP", "check_mdp", "policy_evaluation", "action_values", "soft_state_values",
           "soft_policy", "soft_value_iteration", "occupancy_measure", "PolicyValues", "evaluate_policy",
           "CMDPSolution",
           "solve_constrained_mdp", "solve_min_cost"]


class TabularMDP(NamedTuple):
    """A finite constrained MDP with ``S`` states, ``A`` actions and ``K >= 1`` costs (a pytree of arrays).

    Attributes:
      transitions: ``[S, A, S]`` probabilities ``P(s' | s, a)``; rows of terminal states are all zero.
      rewards: ``[S, A]`` expected reward of taking ``a`` in ``s`` (0 in terminal states).
      costs: ``[S, A, K]`` expected non-negative cost of taking ``a`` in ``s`` (0 in terminal states).
      initial: ``[S]`` initial-state distribution.
      terminal: ``[S]`` bool, absorbing states where the episode ends (no further reward or cost).
    """

    transitions: Array
    rewards: Array
    costs: Array
    initial: Array
    terminal: Array

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]

    @property
    def n_costs(self) -> int:
        return self.costs.shape[-1]

    @property
    def live(self) -> Array:
        """``[S]`` float, 1 in non-terminal states."""
        return 1.0 - jnp.asarray(self.terminal, jnp.float32)


def check_mdp(mdp: TabularMDP) -> TabularMDP:
    """Raise ``ValueError`` naming the field whose shape does not match ``transitions [S, A, S]``."""
    shape = np.shape(mdp.transitions)
    if len(shape) != 3 or shape[0] != shape[2]:
        raise ValueError(f"TabularMDP.transitions must be [S, A, S], got shape {shape}")
    num_states, num_actions = shape[:2]
    expected = {"rewards": (num_states, num_actions), "initial": (num_states,), "terminal": (num_states,)}
    for field, want in expected.items():
        if np.shape(getattr(mdp, field)) != want:
            got = np.shape(getattr(mdp, field))
            raise ValueError(f"TabularMDP.{field} must have shape {want}, got {got}")
    cost_shape = np.shape(mdp.costs)
    if len(cost_shape) != 3 or cost_shape[:2] != (num_states, num_actions) or cost_shape[2] < 1:
        raise ValueError(f"TabularMDP.costs must be [{num_states}, {num_actions}, K] with K >= 1, "
                         f"got shape {cost_shape}")
    return mdp


# ------------------------------------------------------------------------------------------------------------
# Policy evaluation
# ------------------------------------------------------------------------------------------------------------


def policy_evaluation(policy: Array, reward: Array, transitions: Array, gamma: Array) -> Array:
    """Exact discounted state values ``V [S]`` of a stochastic policy: one ``S x S`` linear solve.

    ``V = (I - gamma P_pi)^-1 r_pi`` with ``P_pi(s, s') = sum_a pi(a|s) P(s'|s, a)`` and
    ``r_pi(s) = sum_a pi(a|s) r(s, a)``. Also evaluates a cost: pass it as ``reward``.

    Args:
      policy: ``[S, *A]`` action probabilities (any action shape: ``[S, A]``, a game's ``[S, A_L, A_F]``).
      reward: ``[S, *A]`` expected per-step reward (or cost).
      transitions: ``[S, *A, S]``; terminal rows all zero, so terminal states (with zero reward) get value 0.
      gamma: scalar discount in ``[0, 1]`` (``1`` needs every policy to terminate).
    """
    num_states = reward.shape[0]
    assert policy.shape == reward.shape and transitions.shape == reward.shape + (num_states,), (
        policy.shape, reward.shape, transitions.shape)
    action_axes = tuple(range(1, reward.ndim))
    policy_reward = jnp.sum(policy * reward, axis=action_axes)
    state_chain = jnp.einsum("s...,s...t->st", policy, transitions)
    return jnp.linalg.solve(jnp.eye(num_states, dtype=state_chain.dtype) - gamma * state_chain, policy_reward)


def action_values(state_values: Array, reward: Array, transitions: Array, gamma: Array) -> Array:
    """``Q(s, a) = r(s, a) + gamma sum_s' P(s'|s, a) V(s')``; ``state_values [S]`` -> ``[S, *A]``."""
    return reward + gamma * jnp.tensordot(transitions, state_values, axes=1)


def occupancy_measure(policy: Array, transitions: Array, initial: Array, gamma: Array) -> Array:
    """Discounted state-action occupancy ``d(s, a) = sum_t gamma^t Pr(s_t = s, a_t = a)``, ``[S, *A]``.

    ``d_S = (I - gamma P_pi')^-1 mu_0`` and ``d(s, a) = d_S(s) pi(a|s)``; the expected discounted return of
    any reward is ``sum d * r`` (the LP of :func:`solve_constrained_mdp` optimises over these). Terminal
    states are reached but take no step, so their occupancy is ``d_S(s) pi(.|s)``: mask them when summing.
    """
    num_states = initial.shape[0]
    assert transitions.shape == policy.shape + (num_states,), (policy.shape, transitions.shape)
    state_chain = jnp.einsum("s...,s...t->st", policy, transitions)
    state_occupancy = jnp.linalg.solve(jnp.eye(num_states, dtype=state_chain.dtype) - gamma * state_chain.T,
                                       jnp.asarray(initial, state_chain.dtype))
    return state_occupancy.reshape((num_states,) + (1,) * (policy.ndim - 1)) * policy


class PolicyValues(NamedTuple):
    """Exact expected discounted returns of a policy from the initial distribution.

    Attributes:
      value: scalar reward return.
      cost_values: ``[K]`` cost returns.
    """

    value: Array
    cost_values: Array


def evaluate_policy(mdp: TabularMDP, policy: Array, gamma: Array) -> PolicyValues:
    """Exact ``(return, cost_returns [K])`` of a stochastic ``policy [S, A]`` by :func:`policy_evaluation`.

    Rewards, costs and transitions of terminal states are masked to zero first. Jittable (``gamma`` may be
    traced).
    """
    check_mdp(mdp)
    live = mdp.live
    policy = jnp.asarray(policy, jnp.float32)
    transitions = jnp.asarray(mdp.transitions, jnp.float32) * live[:, None, None]
    rewards = jnp.asarray(mdp.rewards, jnp.float32) * live[:, None]
    costs = jnp.asarray(mdp.costs, jnp.float32) * live[:, None, None]
    initial = jnp.asarray(mdp.initial, jnp.float32)
    evaluate = lambda table: initial @ policy_evaluation(policy, table, transitions, gamma)
    cost_values = jax.vmap(evaluate, in_axes=-1)(costs)
    return PolicyValues(evaluate(rewards), cost_values)


# ------------------------------------------------------------------------------------------------------------
# Entropy-regularised (soft) values
# ------------------------------------------------------------------------------------------------------------


def soft_state_values(q: Array, temperature: Array, live: Array | None = None) -> Array:
    """``V(s) = live(s) * lambda * logsumexp_a(Q(s, a) / lambda)``; ``q [S, A] -> [S]`` (stable for tiny
    lambda).

    The value of the entropy-regularised problem ``max E[sum_t gamma^t (r + lambda H(pi(.|s_t)))]`` given its
    soft Q-function; ``live`` (``[S]``, default all ones) zeroes terminal states.
    """
    assert q.ndim == 2, q.shape
    values = temperature * logsumexp(q / temperature, axis=-1)
    return values if live is None else live * values


def soft_policy(q: Array, temperature: Array) -> Array:
    """Boltzmann policy ``softmax(Q / lambda)`` over the last axis (any leading shape)."""
    return jax.nn.softmax(q / temperature, axis=-1)


def soft_value_iteration(reward: Array, transitions: Array, temperature: Array, gamma: Array,
                         num_iterations: int, live: Array | None = None,
                         v_init: Array | None = None) -> tuple[Array, Array]:
    """Soft (entropy-regularised) value iteration: ``V <- live * lambda logsumexp((r + gamma P V) / lambda)``.

    A contraction with modulus ``gamma``: after ``k`` backups the error to the soft-optimal values is at most
    ``gamma^k`` times the initial one. The soft-optimal policy is ``soft_policy(q, temperature)``.

    Args:
      reward: ``[S, A]``; transitions: ``[S, A, S]``; temperature ``lambda > 0`` and gamma: scalars.
      num_iterations: static number of backups.
      live: ``[S]`` 1 in non-terminal states (default all ones).
      v_init: ``[S]`` warm start (zeros by default).

    Returns:
      ``(v [S], q [S, A])`` with ``q = r + gamma P v`` the soft Q-function implied by the final values.
    """
    num_states, num_actions = reward.shape
    assert transitions.shape == (num_states, num_actions, num_states), transitions.shape
    assert live is None or live.shape == (num_states,), live.shape
    v = jnp.zeros(num_states, reward.dtype) if v_init is None else v_init

    def backup(_, v):
        return soft_state_values(action_values(v, reward, transitions, gamma), temperature, live)

    v = jax.lax.fori_loop(0, num_iterations, backup, v)
    return v, action_values(v, reward, transitions, gamma)


# ------------------------------------------------------------------------------------------------------------
# The constrained occupancy LP
# ------------------------------------------------------------------------------------------------------------


class CMDPSolution(NamedTuple):
    """Exact solution of a constrained MDP (numpy, float64).

    Attributes:
      policy: ``[S, A]`` optimal (possibly stochastic) policy; uniform in states with zero occupancy.
      occupancy: ``[S, A]`` discounted state-action occupancy ``sum_t gamma^t Pr(s_t = s, a_t = a)``.
      value: the optimal expected discounted return.
      cost_values: ``[K]`` expected discounted cost returns of ``policy``.
      cost_multipliers: ``[K]`` optimal Lagrange multipliers ``d value / d limit_k >= 0`` (0 for a slack or
        unconstrained cost): the multipliers a Lagrangian learner should converge to.
    """

    policy: np.ndarray
    occupancy: np.ndarray
    value: float
    cost_values: np.ndarray
    cost_multipliers: np.ndarray


def _flow_constraints(mdp: TabularMDP, gamma: float):
    """Bellman-flow equalities ``sum_a d(s,a) - gamma sum_{s',a'} P(s|s',a') d(s',a') = mu0(s)`` for live
    ``s``, and bounds that keep terminal states action-free: ``(A_eq, b_eq, bounds)`` over ``d`` flattened
    ``[S * A]``."""
    check_mdp(mdp)
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    transitions = np.asarray(mdp.transitions, np.float64)
    num_states, num_actions = transitions.shape[:2]
    live = ~np.asarray(mdp.terminal, bool)
    outflow = np.kron(np.eye(num_states), np.ones((1, num_actions)))  # [S, S*A]
    inflow = transitions.reshape(num_states * num_actions, num_states).T  # [S', S*A]
    flow = outflow - float(gamma) * inflow
    bounds = [(0.0, 0.0) if dead else (0.0, None) for dead in np.repeat(~live, num_actions)]
    return flow[live], np.asarray(mdp.initial, np.float64)[live], bounds


def _cost_limits(cost_limits, n_costs: int) -> np.ndarray:
    """``None`` -> all ``inf``; a scalar only when ``K = 1``; otherwise ``[K]`` (``inf``: unconstrained)."""
    if cost_limits is None:
        return np.full(n_costs, np.inf)
    limits = np.atleast_1d(np.asarray(cost_limits, np.float64))
    if limits.shape != (n_costs,):
        raise ValueError(f"cost_limits must have one entry per cost, shape ({n_costs},), "
                         f"got {limits.tolist()}")
    if np.any(np.isnan(limits)) or np.any(limits == -np.inf):
        raise ValueError(f"cost_limits must be finite (or +inf for an unconstrained cost), "
                         f"got {limits.tolist()}")
    return limits


def solve_constrained_mdp(mdp: TabularMDP, gamma: float, cost_limits=None) -> CMDPSolution:
    """Solve ``max_pi E[sum_t gamma^t r]`` s.t. ``E[sum_t gamma^t c_k] <= cost_limits[k]`` for each cost.

    The occupancy LP: maximise ``sum d * r`` over occupancies ``d >= 0`` that satisfy the Bellman flow, with
    one inequality ``sum d * c_k <= limit_k`` per cost, solved by HiGHS (:func:`jaxsafe.exact.lp.solve_lp`).
    The optimal policy is ``d(s, a) / sum_a d(s, a)``; the duals of the cost rows are the optimal multipliers.

    Args:
      mdp: the model (``K = mdp.n_costs`` costs).
      gamma: discount in ``(0, 1]`` (``1``: the episodic problem; every policy must terminate).
      cost_limits: ``None`` (unconstrained), a ``[K]`` array (``inf`` leaves that cost unconstrained), or a
        scalar when ``K = 1``.

    Raises:
      ValueError: naming ``cost_limits`` or ``gamma`` when malformed, or when no policy meets the limits (with
        the smallest achievable cost return of each cost).
    """
    a_eq, b_eq, bounds = _flow_constraints(mdp, gamma)
    num_states, num_actions, n_costs = np.shape(mdp.costs)
    limits = _cost_limits(cost_limits, n_costs)
    constrained = np.flatnonzero(np.isfinite(limits))
    cost_rows = np.asarray(mdp.costs, np.float64).reshape(num_states * num_actions, n_costs).T  # [K, S*A]
    a_ub = cost_rows[constrained] if constrained.size else None
    b_ub = limits[constrained] if constrained.size else None
    try:
        solution = solve_lp(np.asarray(mdp.rewards, np.float64).reshape(-1), a_ub, b_ub, a_eq, b_eq, bounds,
                            maximize=True, name="constrained-MDP occupancy LP")
    except LPError as err:
        if err.status != 2:
            raise
        minimum = solve_min_cost(mdp, gamma)
        raise ValueError(f"cost_limits={limits.tolist()} is infeasible: the smallest achievable cost returns "
                         f"are {minimum.tolist()} (each cost minimised on its own)") from None
    occupancy = np.clip(solution.x, 0.0, None).reshape(num_states, num_actions)
    totals = occupancy.sum(axis=1, keepdims=True)
    policy = np.where(totals > 1e-12, occupancy / np.maximum(totals, 1e-300), 1.0 / num_actions)
    multipliers = np.zeros(n_costs)
    multipliers[constrained] = solution.ineq_duals
    return CMDPSolution(policy=policy, occupancy=occupancy, value=solution.value,
                        cost_values=cost_rows @ occupancy.reshape(-1), cost_multipliers=multipliers)


def solve_min_cost(mdp: TabularMDP, gamma: float) -> np.ndarray:
    """The smallest achievable discounted return of each cost, ``[K]``, each minimised on its own (LP)."""
    a_eq, b_eq, bounds = _flow_constraints(mdp, gamma)
    costs = np.asarray(mdp.costs, np.float64)
    return np.asarray([solve_lp(costs[..., k].reshape(-1), A_eq=a_eq, b_eq=b_eq, bounds=bounds,
                                name=f"minimum-cost LP of cost {k}").value for k in range(costs.shape[-1])])
