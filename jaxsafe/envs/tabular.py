"""Finite MDPs as arrays, and the exact constrained solver used as ground truth in tests and benchmarks.

A :class:`TabularMDP` is the whole model of a small environment (the gridworlds export one). The occupancy-measure
linear program of a constrained MDP (Altman, 1999) gives the exact optimal constrained policy, which is stochastic
in at most ``n_costs`` states; learners are tested against it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TabularMDP(NamedTuple):
    """A finite (constrained) MDP.

    Attributes:
      transitions: ``[S, A, S]`` probabilities ``P(s' | s, a)``; rows of terminal states are all zero.
      reward: ``[S, A]`` expected reward of taking ``a`` in ``s``.
      cost: ``[S, A, n_costs]`` expected non-negative cost of taking ``a`` in ``s``.
      initial: ``[S]`` initial-state distribution.
      terminal: ``[S]`` bool, absorbing states where the episode ends (no further reward or cost).
    """

    transitions: np.ndarray
    reward: np.ndarray
    cost: np.ndarray
    initial: np.ndarray
    terminal: np.ndarray

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[1]


class CMDPSolution(NamedTuple):
    """Exact solution of a constrained MDP.

    Attributes:
      policy: ``[S, A]`` optimal (possibly stochastic) policy; uniform in states with zero occupancy.
      occupancy: ``[S, A]`` discounted state-action occupancy ``sum_t gamma^t P(s_t = s, a_t = a)``.
      value: expected discounted return of ``policy``.
      cost_value: ``[n_costs]`` expected discounted cost returns of ``policy``.
    """

    policy: np.ndarray
    occupancy: np.ndarray
    value: float
    cost_value: np.ndarray


def solve_constrained_mdp(
    mdp: TabularMDP, gamma: float, cost_limit: float | np.ndarray | None
) -> CMDPSolution:
    """Solve ``max_pi E[sum_t gamma^t r]`` s.t. ``E[sum_t gamma^t c_i] <= limit_i`` exactly (occupancy LP, HiGHS).

    With ``gamma = 1`` the episodic (undiscounted) problem is solved; every policy must then reach a terminal
    state with probability one for the LP to be bounded, which holds for the gridworlds' layouts.

    Args:
      mdp: the model.
      gamma: discount in ``(0, 1]``.
      cost_limit: ``None`` (unconstrained), a float (every cost), or an ``[n_costs]`` array.

    Raises:
      ValueError: if the constraint cannot be met by any policy (names the minimum achievable cost).
    """
    from scipy.optimize import linprog

    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    num_states, num_actions = mdp.reward.shape
    n_costs = mdp.cost.shape[-1]
    live = ~np.asarray(mdp.terminal, bool)
    # Flow conservation: sum_a d(s,a) - gamma * sum_{s',a'} P(s|s',a') d(s',a') = mu0(s) for every live state.
    flow = np.zeros((num_states, num_states * num_actions))
    for s in range(num_states):
        flow[s, s * num_actions : (s + 1) * num_actions] = 1.0
    inflow = mdp.transitions.reshape(num_states * num_actions, num_states).T  # [S', S*A]
    flow = flow - gamma * inflow
    a_eq, b_eq = flow[live], np.asarray(mdp.initial, float)[live]
    # Terminal states take no actions.
    dead_cols = np.repeat(~live, num_actions)
    bounds = [(0.0, 0.0) if dead else (0.0, None) for dead in dead_cols]
    a_ub = b_ub = None
    if cost_limit is not None:
        limits = np.broadcast_to(np.asarray(cost_limit, float), (n_costs,))
        a_ub = mdp.cost.reshape(num_states * num_actions, n_costs).T
        b_ub = limits
    result = linprog(-mdp.reward.reshape(-1), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds,
                     method="highs")
    if result.status == 2:
        minimum = solve_min_cost(mdp, gamma)
        raise ValueError(f"cost_limit={cost_limit} is infeasible: the smallest achievable cost return is {minimum}")
    if result.status != 0:
        raise RuntimeError(f"constrained MDP LP failed: {result.message}")
    occupancy = result.x.reshape(num_states, num_actions)
    totals = occupancy.sum(axis=1, keepdims=True)
    policy = np.where(totals > 1e-12, occupancy / np.maximum(totals, 1e-300), 1.0 / num_actions)
    value = float((occupancy * mdp.reward).sum())
    cost_value = np.einsum("sa,sak->k", occupancy, mdp.cost)
    return CMDPSolution(policy=policy, occupancy=occupancy, value=value, cost_value=cost_value)


def solve_min_cost(mdp: TabularMDP, gamma: float) -> np.ndarray:
    """The smallest achievable discounted cost return of each cost, by the same LP with ``-cost`` as reward."""
    out = []
    for i in range(mdp.cost.shape[-1]):
        flipped = mdp._replace(reward=-mdp.cost[..., i])
        out.append(-solve_constrained_mdp(flipped, gamma, None).value)
    return np.asarray(out)


def evaluate_policy(mdp: TabularMDP, policy: np.ndarray, gamma: float) -> tuple[float, np.ndarray]:
    """Exact ``(return, cost_returns[n_costs])`` of a stochastic ``policy [S, A]`` by solving the linear system."""
    num_states = mdp.num_states
    live = ~np.asarray(mdp.terminal, bool)
    p_pi = np.einsum("sa,sat->st", policy, mdp.transitions) * live[:, None]
    occupancy_states = np.linalg.solve(np.eye(num_states) - gamma * p_pi.T, np.asarray(mdp.initial, float))
    occupancy = occupancy_states[:, None] * policy * live[:, None]
    return float((occupancy * mdp.reward).sum()), np.einsum("sa,sak->k", occupancy, mdp.cost)
