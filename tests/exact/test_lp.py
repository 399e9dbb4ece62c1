"""The HiGHS LP wrapper: optima and duals of tiny LPs solved by hand, and named failures."""

import numpy as np
import pytest

from jaxsafe.exact.lp import LP_METHODS, LPError, solve_lp


@pytest.mark.parametrize("method", LP_METHODS)
def test_maximisation_optimum_and_duals(method):
    # max 3x + 2y  s.t.  x + y <= 4,  x + 3y <= 7,  x <= 3,  x, y >= 0.
    # Vertex (3, 1): value 11; the binding rows are x + y <= 4 and x <= 3 (the second is slack), so the
    # duals solve l1 + l3 = 3, l1 = 2  ->  (2, 0, 1).
    a_ub = [[1, 1], [1, 3], [1, 0]]
    b_ub = [4, 7, 3]
    sol = solve_lp([3, 2], a_ub, b_ub, maximize=True, method=method)
    np.testing.assert_allclose(sol.x, [3, 1], atol=1e-9)
    assert sol.value == pytest.approx(11.0)
    assert sol.status == 0
    np.testing.assert_allclose(sol.ineq_duals, [2, 0, 1], atol=1e-9)
    assert sol.eq_duals.shape == (0,)
    # Strong duality with x >= 0, and the duals are the sensitivity of the value to b_ub.
    assert sol.ineq_duals @ np.asarray(b_ub) == pytest.approx(sol.value)
    bumped = solve_lp([3, 2], a_ub, [4.1, 7, 3], maximize=True, method=method)
    assert bumped.value - sol.value == pytest.approx(0.1 * sol.ineq_duals[0])


def test_minimisation_duals_are_non_positive_and_equalities_signed():
    # min x + 2y  s.t.  x + y == 2 (dual mu),  x <= 1.5 (dual l),  x, y >= 0.
    # Optimum x = 1.5, y = 0.5: value 2.5; d value / d b_eq = 2 (more mass goes to y), d value / d b_ub = -1.
    sol = solve_lp([1, 2], A_ub=[[1, 0]], b_ub=[1.5], A_eq=[[1, 1]], b_eq=[2])
    np.testing.assert_allclose(sol.x, [1.5, 0.5], atol=1e-9)
    assert sol.value == pytest.approx(2.5)
    np.testing.assert_allclose(sol.eq_duals, [2.0], atol=1e-9)
    np.testing.assert_allclose(sol.ineq_duals, [-1.0], atol=1e-9)
    assert sol.ineq_duals @ [1.5] + sol.eq_duals @ [2] == pytest.approx(sol.value)
    # The same problem maximised: value and duals flip to the maximisation's own sense.
    up = solve_lp([1, 2], A_ub=[[1, 0]], b_ub=[1.5], A_eq=[[1, 1]], b_eq=[2], maximize=True)
    np.testing.assert_allclose(up.x, [0, 2], atol=1e-9)
    assert up.value == pytest.approx(4.0)
    np.testing.assert_allclose(up.eq_duals, [2.0], atol=1e-9)
    np.testing.assert_allclose(up.ineq_duals, [0.0], atol=1e-9)


def test_per_variable_bounds_and_single_row():
    # min -x - y with x in [0, 1], y in [-1, 0.5] and one row x + y <= 1.2 given as a vector.
    sol = solve_lp([-1, -1], A_ub=[1, 1], b_ub=1.2, bounds=[(0, 1), (-1, 0.5)])
    assert sol.value == pytest.approx(-1.2)
    assert sol.ineq_duals == pytest.approx([-1.0])


@pytest.mark.parametrize("kwargs, reason, status", [
    (dict(c=[1.0], A_ub=[[1.0]], b_ub=[-1.0]), "is infeasible", 2),
    (dict(c=[1.0], maximize=True), "is unbounded", 3),
])
def test_failures_name_the_problem_and_the_reason(kwargs, reason, status):
    with pytest.raises(LPError, match=f"the toy LP {reason}") as caught:
        solve_lp(**kwargs, name="toy LP")
    assert caught.value.status == status and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("kwargs, field", [
    (dict(c=np.zeros((2, 2))), "c must be a non-empty vector"),
    (dict(c=[1, 2], A_ub=[[1, 2, 3]], b_ub=[1]), r"A_ub must be a \[num_constraints, 2\]"),
    (dict(c=[1, 2], A_ub=[[1, 2]], b_ub=[1, 2]), r"b_ub must have shape \(1,\)"),
    (dict(c=[1, 2], A_eq=[[1, 2]]), "A_eq and b_eq must be given together"),
    (dict(c=[1, 2], A_eq=[[1, np.nan]], b_eq=[1]), "A_eq must be finite"),
    (dict(c=[1, 2], bounds=[(0, 1)]), "bounds must be one"),
    (dict(c=[1, 2], bounds=[(0, 1), (2, 1)]), r"bounds\[1\] must have low <= high"),
    (dict(c=[1, 2], method="simplex"), "method must be one of"),
])
def test_malformed_input_names_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        solve_lp(**kwargs)
