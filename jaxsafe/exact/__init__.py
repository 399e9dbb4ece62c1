"""Exact solvers, the ground truth learners are tested against.

* :mod:`jaxsafe.exact.lp`: the one HiGHS LP wrapper (:func:`solve_lp`, with signed duals).
* :mod:`jaxsafe.exact.tabular`: finite MDPs in JAX (:class:`TabularMDP`, exact policy evaluation, soft value
  iteration, occupancy measures) and the constrained occupancy LP (:func:`solve_constrained_mdp`).
"""

from jaxsafe.exact import lp, tabular
from jaxsafe.exact.lp import LP_METHODS, LPError, LPSolution, solve_lp
from jaxsafe.exact.tabular import (
    CMDPSolution,
    PolicyValues,
    TabularMDP,
    evaluate_policy,
    policy_evaluation,
    solve_constrained_mdp,
    solve_min_cost,
)

__all__ = ["lp", "tabular", "LP_METHODS", "LPError", "LPSolution", "solve_lp", "CMDPSolution", "PolicyValues",
           "TabularMDP", "evaluate_policy", "policy_evaluation", "solve_constrained_mdp", "solve_min_cost"]
