"""Exact solvers: the one HiGHS LP wrapper (:mod:`jaxsafe.exact.lp`)."""

from jaxsafe.exact.lp import LP_METHODS, LPError, LPSolution, solve_lp

__all__ = ["LP_METHODS", "LPError", "LPSolution", "solve_lp"]
