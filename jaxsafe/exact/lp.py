"""The one linear-programming wrapper: HiGHS via ``scipy.optimize.linprog``, with duals and named failures.

Every exact LP in jaxsafe (the constrained-MDP occupancy LP, the flipping mixtures, the chance-bandit
enumeration, dual lower bounds) goes through :func:`solve_lp`. The problem is::

    optimise  c @ x    s.t.  A_ub @ x <= b_ub,   A_eq @ x == b_eq,   bounds[i][0] <= x[i] <= bounds[i][1]

minimised by default, maximised with ``maximize=True``.

**Dual sign convention.** ``ineq_duals`` and ``eq_duals`` are the sensitivities of the returned ``value`` (in
the problem's own sense: the maximum when ``maximize=True``, the minimum otherwise) to the right-hand sides,
``ineq_duals[i] = d value / d b_ub[i]`` and ``eq_duals[j] = d value / d b_eq[j]`` (HiGHS marginals, negated
for a maximisation). So for a maximisation every ``ineq_duals[i] >= 0`` (loosening a constraint cannot lower
the maximum), for a minimisation every ``ineq_duals[i] <= 0``, and a slack constraint has dual 0. With the
default bounds ``x >= 0`` strong duality reads ``value == ineq_duals @ b_ub + eq_duals @ b_eq``, and any
dual-feasible ``(lambda >= 0, mu)`` with ``A_ub' lambda + A_eq' mu >= c`` bounds a maximum from above by
``lambda @ b_ub + mu @ b_eq`` (the certificate a lower/upper bound argument needs).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["LPError", "LPSolution", "solve_lp", "LP_METHODS"]

#: HiGHS solvers accepted by :func:`solve_lp`: ``"highs"`` lets HiGHS choose, ``"highs-ds"`` is the dual
#: simplex (returns a basic solution, a vertex: at most ``m`` variables off their bounds for ``m``
#: constraints), and ``"highs-ipm"`` the interior-point method (HiGHS runs crossover, so also a vertex).
LP_METHODS = ("highs", "highs-ds", "highs-ipm")

_STATUS_TEXT = {
    1: "hit the iteration limit",
    2: "is infeasible",
    3: "is unbounded",
    4: "ran into numerical difficulties",
}


class LPError(ValueError):
    """An LP that has no optimum (or that HiGHS could not solve); ``status`` is the HiGHS code (2 infeasible,
    3 unbounded, 1 iteration limit, 4 numerical difficulties)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class LPSolution(NamedTuple):
    """The optimum of a linear program.

    Attributes:
      x: ``[n]`` an optimal point (float64).
      value: the optimal objective ``c @ x`` (the maximum when ``maximize=True``).
      status: the HiGHS status code (0: optimal; anything else raises, so always 0 here).
      message: the solver's message.
      ineq_duals: ``[m_ub]`` ``d value / d b_ub`` (>= 0 for a maximisation, <= 0 for a minimisation); empty
        when there are no inequality constraints.
      eq_duals: ``[m_eq]`` ``d value / d b_eq`` (any sign); empty when there are no equality constraints.
    """

    x: np.ndarray
    value: float
    status: int
    message: str
    ineq_duals: np.ndarray
    eq_duals: np.ndarray


def _matrix(name: str, array: Any, num_vars: int) -> np.ndarray:
    out = np.asarray(array, np.float64)
    if out.ndim == 1 and out.size == num_vars:  # one constraint given as a row
        out = out[None]
    if out.ndim != 2 or out.shape[1] != num_vars:
        raise ValueError(f"{name} must be a [num_constraints, {num_vars}] matrix (one column per entry of "
                         f"c), got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite, got non-finite entries")
    return out


def _rhs(name: str, array: Any, num_rows: int, matrix_name: str) -> np.ndarray:
    out = np.atleast_1d(np.asarray(array, np.float64))
    if out.shape != (num_rows,):
        raise ValueError(f"{name} must have shape ({num_rows},) (one entry per row of {matrix_name}), "
                         f"got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite, got {out.tolist()}")
    return out


def _pair(name: str, pair: Any) -> tuple[float | None, float | None]:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ValueError(f"{name} must be a (low, high) pair (None for unbounded), got {pair!r}")
    low, high = (None if v is None else float(v) for v in pair)
    if low is not None and high is not None and low > high:
        raise ValueError(f"{name} must have low <= high, got {pair!r}")
    return low, high


def _bounds(bounds: Any, num_vars: int) -> list[tuple[float | None, float | None]]:
    if isinstance(bounds, tuple) and len(bounds) == 2 and not isinstance(bounds[0], (tuple, list)):
        return [_pair("bounds", bounds)] * num_vars
    if not isinstance(bounds, Sequence) or len(bounds) != num_vars:
        raise ValueError(f"bounds must be one (low, high) pair or a sequence of {num_vars} pairs (one per "
                         f"entry of c), got {bounds!r:.200}")
    return [_pair(f"bounds[{i}]", pair) for i, pair in enumerate(bounds)]


def solve_lp(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=(0, None), maximize: bool = False,
             method: str = "highs", name: str = "linear program") -> LPSolution:
    """Solve ``min`` (or ``max``) ``c @ x`` s.t. ``A_ub x <= b_ub``, ``A_eq x == b_eq`` and ``bounds``.

    Args:
      c: ``[n]`` objective coefficients.
      A_ub, b_ub: ``[m_ub, n]`` and ``[m_ub]`` inequality constraints (both or neither; a 1-D ``A_ub`` of
        length ``n`` is one row).
      A_eq, b_eq: ``[m_eq, n]`` and ``[m_eq]`` equality constraints (both or neither).
      bounds: one ``(low, high)`` pair for every variable, or ``n`` pairs; ``None`` means unbounded. Default
        ``x >= 0``.
      maximize: maximise instead of minimise (``value`` and the duals are then those of the maximisation).
      method: one of :data:`LP_METHODS`.
      name: what the LP is, used in error messages (e.g. ``"constrained-MDP occupancy LP"``).

    Returns:
      :class:`LPSolution` (duals as documented in the module docstring).

    Raises:
      ValueError: on malformed input (naming the argument and the expected shape).
      LPError: (a ``ValueError``) when the LP is infeasible, unbounded or the solver fails, naming ``name``
        and the reason; its ``status`` is the HiGHS code.
    """
    from scipy.optimize import linprog

    c = np.asarray(c, np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"c must be a non-empty vector [n], got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"c must be finite, got {c.tolist()}")
    if method not in LP_METHODS:
        raise ValueError(f"method must be one of {LP_METHODS}, got {method!r}")
    num_vars = c.size
    if (A_ub is None) != (b_ub is None):
        raise ValueError("A_ub and b_ub must be given together (or both None)")
    if (A_eq is None) != (b_eq is None):
        raise ValueError("A_eq and b_eq must be given together (or both None)")
    if A_ub is not None:
        A_ub = _matrix("A_ub", A_ub, num_vars)
        b_ub = _rhs("b_ub", b_ub, A_ub.shape[0], "A_ub")
    if A_eq is not None:
        A_eq = _matrix("A_eq", A_eq, num_vars)
        b_eq = _rhs("b_eq", b_eq, A_eq.shape[0], "A_eq")
    pairs = _bounds(bounds, num_vars)

    sign = -1.0 if maximize else 1.0
    result = linprog(sign * c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=pairs, method=method)
    if result.status != 0:
        reason = _STATUS_TEXT.get(result.status, f"failed (status {result.status})")
        raise LPError(f"the {name} {reason}: {result.message}", int(result.status))

    def duals(block, rows):
        if rows == 0 or block is None:
            return np.zeros(0)
        return sign * np.asarray(block.marginals, np.float64)

    return LPSolution(
        x=np.asarray(result.x, np.float64),
        value=float(sign * result.fun),
        status=int(result.status),
        message=str(result.message),
        ineq_duals=duals(getattr(result, "ineqlin", None), 0 if A_ub is None else A_ub.shape[0]),
        eq_duals=duals(getattr(result, "eqlin", None), 0 if A_eq is None else A_eq.shape[0]),
    )
