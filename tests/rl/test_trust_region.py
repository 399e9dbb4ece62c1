"""Tests of the TRPO/CPO trust-region core (jaxsafe/rl/trust_region.py) against independent solutions.

The CPO QP ``max g^T x s.t. 0.5 x^T H x <= delta, b^T x + c <= 0`` is solved independently with scipy's SLSQP on
small explicit problems; the Fisher-vector product is compared with the explicit Hessian (and with the exact
Fisher matrix) of small distrax policies; CG with a direct solve; the line search with a hand enumeration.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from jaxsafe.rl import trust_region as tr

DELTA = 0.01


def _problem(seed, dim=4):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(dim, dim))
    hessian = m @ m.T + 0.5 * np.eye(dim)
    g = rng.normal(size=dim)
    b = rng.normal(size=dim)
    return hessian, g, b


def _solve_qp(g, b, c, hessian, delta):
    """max g^T x s.t. 0.5 x^T H x <= delta and b^T x + c <= 0, by SLSQP from several starts (None: infeasible)."""
    constraints = [
        {"type": "ineq", "fun": lambda x: delta - 0.5 * x @ hessian @ x, "jac": lambda x: -hessian @ x},
        {"type": "ineq", "fun": lambda x: -(b @ x + c), "jac": lambda x: -b},
    ]
    best = None
    rng = np.random.default_rng(0)
    for start in [np.zeros_like(g)] + [rng.normal(size=g.shape) * 0.05 for _ in range(4)]:
        result = minimize(
            lambda x: -g @ x, start, jac=lambda x: -g, constraints=constraints, method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        x = result.x
        feasible = 0.5 * x @ hessian @ x <= delta * (1 + 1e-6) and b @ x + c <= 1e-7
        if result.success and feasible and (best is None or g @ x > g @ best):
            best = x
    return best


def _recovery_qp(b, hessian, delta):
    """min b^T x s.t. 0.5 x^T H x <= delta (the steepest feasible cost decrease), by SLSQP."""
    constraints = [{"type": "ineq", "fun": lambda x: delta - 0.5 * x @ hessian @ x, "jac": lambda x: -hessian @ x}]
    return minimize(lambda x: b @ x, np.zeros_like(b), jac=lambda x: b, constraints=constraints, method="SLSQP",
                    options={"ftol": 1e-14, "maxiter": 500}).x


def _cpo(g, b, c, hessian, delta=DELTA):
    hinv_g = np.linalg.solve(hessian, g)
    hinv_b = np.linalg.solve(hessian, b)
    with jax.enable_x64(True):
        out = jax.jit(tr.cpo_step_from_solves)(
            jnp.asarray(g), jnp.asarray(b), jnp.asarray(c), jnp.asarray(hinv_g), jnp.asarray(hinv_b), delta
        )
        return jax.device_get(out)


def _constants(g, b, c, hessian, delta=DELTA):
    q = g @ np.linalg.solve(hessian, g)
    r = g @ np.linalg.solve(hessian, b)
    s = b @ np.linalg.solve(hessian, b)
    return q, r, s, 2 * delta - c**2 / s


# ----------------------------------------------------------------------------------------------------------------
# CPO step, case by case
# ----------------------------------------------------------------------------------------------------------------


def test_case_3_whole_trust_region_feasible_is_the_trpo_step():
    hessian, g, b = _problem(0)
    c = -10.0  # far inside the cost budget: c^2 / s > 2 delta
    *_, big_b = _constants(g, b, c, hessian)
    assert big_b < 0
    out = _cpo(g, b, c, hessian)
    assert out.case == tr.CASE_FEASIBLE_TRUST_REGION and out.cost_multiplier == 0
    expected = _solve_qp(g, b, c, hessian, DELTA)
    np.testing.assert_allclose(out.step, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(0.5 * out.step @ hessian @ out.step, DELTA, rtol=1e-6)
    np.testing.assert_allclose(out.predicted_kl, DELTA, rtol=1e-6)


def test_case_2_both_constraints_active():
    hessian, g, _ = _problem(1)
    b = g + 0.3 * _problem(2)[1]  # the reward direction also raises the cost: the constraint binds
    c = -0.02
    q, r, s, big_b = _constants(g, b, c, hessian)
    assert big_b >= 0 and r > 0
    out = _cpo(g, b, c, hessian)
    assert out.case == tr.CASE_FEASIBLE_INTERSECTING and out.cost_multiplier > 0
    expected = _solve_qp(g, b, c, hessian, DELTA)
    np.testing.assert_allclose(out.step, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b @ out.step + c, 0.0, atol=1e-9)  # cost constraint active
    np.testing.assert_allclose(0.5 * out.step @ hessian @ out.step, DELTA, rtol=1e-6)  # trust region active


def test_case_2_trust_region_step_already_feasible():
    hessian, g, _ = _problem(3)
    b = -g + 0.3 * _problem(4)[1]  # the reward direction lowers the cost: the cost constraint is slack
    c = -0.02
    q, r, s, big_b = _constants(g, b, c, hessian)
    assert big_b >= 0
    out = _cpo(g, b, c, hessian)
    assert out.case == tr.CASE_FEASIBLE_INTERSECTING and out.cost_multiplier == 0
    trpo = np.sqrt(2 * DELTA / q) * np.linalg.solve(hessian, g)
    np.testing.assert_allclose(out.step, trpo, rtol=1e-6)
    np.testing.assert_allclose(out.step, _solve_qp(g, b, c, hessian, DELTA), rtol=1e-4, atol=1e-6)
    assert b @ out.step + c < 0


def test_case_1_infeasible_but_recoverable():
    hessian, g, b = _problem(5)
    q, r, s, _ = _constants(g, b, 0.0, hessian)
    c = 0.5 * np.sqrt(2 * DELTA * s)  # violated now, but half the trust region's reach restores feasibility
    out = _cpo(g, b, c, hessian)
    assert out.case == tr.CASE_INFEASIBLE_RECOVERABLE and out.cost_multiplier > 0
    expected = _solve_qp(g, b, c, hessian, DELTA)
    np.testing.assert_allclose(out.step, expected, rtol=1e-4, atol=1e-6)
    assert b @ out.step + c <= 1e-9


def test_case_0_infeasible_takes_the_recovery_step():
    hessian, g, b = _problem(6)
    q, r, s, _ = _constants(g, b, 0.0, hessian)
    c = 2.0 * np.sqrt(2 * DELTA * s)  # no point of the trust region satisfies the constraint
    assert _solve_qp(g, b, c, hessian, DELTA) is None
    out = _cpo(g, b, c, hessian)
    assert out.case == tr.CASE_INFEASIBLE_RECOVERY
    closed_form = -np.sqrt(2 * DELTA / s) * np.linalg.solve(hessian, b)
    np.testing.assert_allclose(out.step, closed_form, rtol=1e-8)
    np.testing.assert_allclose(out.step, _recovery_qp(b, hessian, DELTA), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.predicted_cost_change, -np.sqrt(2 * DELTA * s), rtol=1e-8)


def test_case_4_no_cost_gradient_is_the_trpo_step():
    hessian, g, _ = _problem(7)
    out = _cpo(g, np.zeros_like(g), -0.1, hessian)
    assert out.case == tr.CASE_NO_COST_GRADIENT
    trpo = np.sqrt(2 * DELTA / (g @ np.linalg.solve(hessian, g))) * np.linalg.solve(hessian, g)
    np.testing.assert_allclose(out.step, trpo, rtol=1e-8)


@pytest.mark.parametrize("seed", range(40))
def test_cpo_step_matches_slsqp_on_random_problems(seed):
    rng = np.random.default_rng(100 + seed)
    hessian, g, b = _problem(100 + seed, dim=int(rng.integers(2, 6)))
    _, r, s, _ = _constants(g, b, 0.0, hessian)
    reach = np.sqrt(2 * DELTA * s)  # the largest cost decrease the trust region allows
    c = float(rng.choice([-3.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 0.9, 1.5]) * reach)
    out = _cpo(g, b, c, hessian)
    expected = _solve_qp(g, b, c, hessian, DELTA)
    if expected is None:
        assert out.case == tr.CASE_INFEASIBLE_RECOVERY
        np.testing.assert_allclose(out.step, _recovery_qp(b, hessian, DELTA), rtol=1e-4, atol=1e-6)
    else:
        assert out.case != tr.CASE_INFEASIBLE_RECOVERY
        np.testing.assert_allclose(g @ out.step, g @ expected, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(out.step, expected, rtol=1e-3, atol=1e-5)


def test_cpo_step_is_vmappable_over_constraint_values():
    hessian, g, b = _problem(8)
    _, _, s, _ = _constants(g, b, 0.0, hessian)
    reach = np.sqrt(2 * DELTA * s)
    cs = jnp.array([-10.0, -0.1 * reach, 0.5 * reach, 2.0 * reach], jnp.float32)
    hinv_g = jnp.asarray(np.linalg.solve(hessian, g), jnp.float32)
    hinv_b = jnp.asarray(np.linalg.solve(hessian, b), jnp.float32)
    batched = jax.jit(jax.vmap(tr.cpo_step_from_solves, in_axes=(None, None, 0, None, None, None)))
    out = batched(jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32), cs, hinv_g, hinv_b, DELTA)
    np.testing.assert_array_equal(
        out.case,
        [tr.CASE_FEASIBLE_TRUST_REGION, tr.CASE_FEASIBLE_INTERSECTING, tr.CASE_INFEASIBLE_RECOVERABLE,
         tr.CASE_INFEASIBLE_RECOVERY],
    )
    assert np.all(np.isfinite(out.step))


def test_cpo_step_with_cg_and_fvp_matches_exact_solves():
    hessian, g, b = _problem(9, dim=6)
    h = jnp.asarray(hessian, jnp.float32)
    kl_fn = lambda theta: 0.5 * theta @ h @ theta  # Hessian = H everywhere
    fvp = tr.make_fisher_vector_product(kl_fn, jnp.zeros(6, jnp.float32))
    c = -0.02
    out = jax.jit(lambda g, b: tr.cpo_step(g, b, c, fvp, DELTA, cg_iterations=12))(
        jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32)
    )
    exact = _cpo(g, b, c, hessian)
    assert out.case == exact.case
    np.testing.assert_allclose(out.step, exact.step, rtol=2e-3, atol=1e-5)


def test_bad_inputs_raise():
    g = jnp.ones(3)
    with pytest.raises(ValueError, match="max_kl"):
        tr.cpo_step_from_solves(g, g, 0.0, g, g, -0.1)
    with pytest.raises(ValueError, match="same shape"):
        tr.cpo_step_from_solves(g, jnp.ones(4), 0.0, g, g, 0.01)
    with pytest.raises(ValueError, match="flat vector"):
        tr.cpo_step_from_solves(jnp.ones((3, 1)), jnp.ones((3, 1)), 0.0, g, g, 0.01)
    with pytest.raises(ValueError, match="constraint_value"):
        tr.cpo_step_from_solves(g, g, jnp.ones(2), g, g, 0.01)
    with pytest.raises(ValueError, match="num_iterations"):
        tr.conjugate_gradient(lambda v: v, g, 0)


# ----------------------------------------------------------------------------------------------------------------
# TRPO step
# ----------------------------------------------------------------------------------------------------------------


def test_natural_gradient_step_is_the_trust_region_maximiser():
    hessian, g, _ = _problem(10)
    h = jnp.asarray(hessian, jnp.float32)
    out = tr.natural_gradient_step(jnp.asarray(g, jnp.float32), lambda v: h @ v, DELTA, cg_iterations=8)
    assert out.case == tr.CASE_UNCONSTRAINED
    expected = _solve_qp(g, np.zeros_like(g), -1.0, hessian, DELTA)  # a slack cost constraint: trust region only
    np.testing.assert_allclose(out.step, expected, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(0.5 * np.asarray(out.step) @ hessian @ np.asarray(out.step), DELTA, rtol=1e-4)
    np.testing.assert_allclose(out.predicted_kl, DELTA, rtol=1e-4)
    zero = tr.natural_gradient_step(jnp.zeros(4), lambda v: h @ v, DELTA)
    assert np.all(np.asarray(zero.step) == 0)


# ----------------------------------------------------------------------------------------------------------------
# Conjugate gradient
# ----------------------------------------------------------------------------------------------------------------


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(20, 20))
    matrix = m @ m.T / 20 + 0.5 * np.eye(20)
    rhs = rng.normal(size=20)
    a = jnp.asarray(matrix, jnp.float32)
    x = jax.jit(lambda r: tr.conjugate_gradient(lambda v: a @ v, r, num_iterations=40))(jnp.asarray(rhs, jnp.float32))
    np.testing.assert_allclose(x, np.linalg.solve(matrix, rhs), rtol=1e-3, atol=1e-4)
    assert np.linalg.norm(matrix @ np.asarray(x) - rhs) < 1e-3 * np.linalg.norm(rhs)
    # a few iterations already reduce the residual a lot; more never make it worse than the start
    x3 = tr.conjugate_gradient(lambda v: a @ v, jnp.asarray(rhs, jnp.float32), num_iterations=3)
    assert np.linalg.norm(matrix @ np.asarray(x3) - rhs) < np.linalg.norm(rhs)


def test_conjugate_gradient_freezes_after_convergence():
    rhs = jnp.array([1.0, -2.0, 3.0])
    x = tr.conjugate_gradient(lambda v: 2.0 * v, rhs, num_iterations=10)  # exact after one iteration
    np.testing.assert_allclose(x, rhs / 2.0, rtol=1e-6)
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(tr.conjugate_gradient(lambda v: v, jnp.zeros(3), 5), np.zeros(3))


# ----------------------------------------------------------------------------------------------------------------
# Fisher-vector product on small distrax policies
# ----------------------------------------------------------------------------------------------------------------


def _gaussian_policy(params, obs):
    mean = obs @ params["weight"] + params["bias"]
    return distrax.MultivariateNormalDiag(mean, jnp.exp(params["log_std"]) * jnp.ones_like(mean))


def _categorical_policy(params, obs):
    return distrax.Categorical(logits=obs @ params["weight"] + params["bias"])


def _policy_params(kind, key):
    k1, k2, k3 = jax.random.split(key, 3)
    num_out = 2 if kind == "gaussian" else 4
    params = {
        "weight": 0.5 * jax.random.normal(k1, (3, num_out)),
        "bias": 0.1 * jax.random.normal(k2, (num_out,)),
    }
    if kind == "gaussian":
        params["log_std"] = 0.2 * jax.random.normal(k3, (num_out,))
    return params


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_fisher_vector_product_equals_explicit_hessian_times_vector(kind):
    policy = _gaussian_policy if kind == "gaussian" else _categorical_policy
    obs = jax.random.normal(jax.random.key(0), (32, 3))
    old_params = _policy_params(kind, jax.random.key(1))
    flat_old, unflatten = tr.flatten(old_params)
    vector = jax.random.normal(jax.random.key(2), flat_old.shape)
    damping = 0.1

    @jax.jit
    def compute(old_params, vector):
        old_dist = policy(jax.lax.stop_gradient(old_params), obs)
        kl_fn = lambda params: jnp.mean(old_dist.kl_divergence(policy(params, obs)))
        flat_kl = lambda flat: kl_fn(unflatten(flat))
        flat_old = tr.flatten(old_params)[0]
        moved_flat = flat_old + 0.3 * vector
        return (
            jax.hessian(flat_kl)(flat_old),
            tr.make_fisher_vector_product(kl_fn, old_params, damping)(vector),
            tr.flatten(tr.fisher_vector_product(kl_fn, old_params, unflatten(vector), damping))[0],
            jax.hessian(flat_kl)(moved_flat),
            tr.make_fisher_vector_product(kl_fn, unflatten(moved_flat))(vector),
        )

    hessian, fvp_flat, fvp_tree, hessian_moved, fvp_moved = compute(old_params, vector)
    expected = hessian @ vector + damping * vector
    np.testing.assert_allclose(fvp_flat, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fvp_tree, expected, rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(hessian) > 0.1  # a non-trivial curvature, so the comparison means something
    # away from the old params the product is still the Hessian there (the function does not assume theta = old)
    np.testing.assert_allclose(fvp_moved, hessian_moved @ vector, rtol=1e-4, atol=1e-5)


def test_kl_hessian_at_old_params_is_the_fisher_information():
    obs = jax.random.normal(jax.random.key(0), (16, 3))
    old_params = _policy_params("categorical", jax.random.key(1))
    flat_old, unflatten = tr.flatten(old_params)
    old_dist = _categorical_policy(old_params, obs)
    kl_fn = lambda params: jnp.mean(old_dist.kl_divergence(_categorical_policy(params, obs)))

    def log_prob(flat, state, action):
        return _categorical_policy(unflatten(flat), obs[state][None]).log_prob(action[None])[0]

    # exact expectation over states and all 4 actions of the outer product of the score
    states, actions = np.meshgrid(np.arange(obs.shape[0]), np.arange(4), indexing="ij")
    scores = jax.jit(jax.vmap(jax.grad(log_prob), in_axes=(None, 0, 0)))(
        flat_old, jnp.asarray(states.ravel()), jnp.asarray(actions.ravel())
    )
    weights = np.asarray(old_dist.probs).ravel() / obs.shape[0]
    fisher = np.einsum("n,ni,nj->ij", weights, np.asarray(scores), np.asarray(scores))
    vector = jax.random.normal(jax.random.key(3), flat_old.shape)
    np.testing.assert_allclose(
        tr.make_fisher_vector_product(kl_fn, old_params)(vector), fisher @ np.asarray(vector), rtol=1e-4, atol=1e-5
    )


# ----------------------------------------------------------------------------------------------------------------
# Line search
# ----------------------------------------------------------------------------------------------------------------


def _expected_backtracks(accept, ratio=0.8, max_backtracks=15):
    for k in range(max_backtracks):
        if accept(ratio**k):
            return k
    return None


def _run_line_search(**kwargs):
    params = {"theta": jnp.zeros(())}
    step = {"theta": jnp.asarray(4.0)}
    surrogate = lambda p: -jnp.square(p["theta"] - 1.0)
    kl = lambda p: jnp.square(p["theta"])
    return jax.jit(lambda: tr.backtracking_line_search(params, step, surrogate, kl, **kwargs))()


def test_line_search_accepts_first_improving_step():
    result = _run_line_search(max_kl=100.0)
    k = _expected_backtracks(lambda f: -(4 * f - 1) ** 2 >= -1.0)
    assert k == 4 and bool(result.accepted) and int(result.num_backtracks) == k
    np.testing.assert_allclose(result.step_fraction, 0.8**k, rtol=1e-6)
    np.testing.assert_allclose(result.params["theta"], 4 * 0.8**k, rtol=1e-6)
    np.testing.assert_allclose(result.surrogate, -(4 * 0.8**k - 1) ** 2, rtol=1e-5)


def test_line_search_respects_kl():
    result = _run_line_search(max_kl=0.5)
    k = _expected_backtracks(lambda f: -(4 * f - 1) ** 2 >= -1.0 and (4 * f) ** 2 <= 0.5)
    assert int(result.num_backtracks) == k and float(result.kl) <= 0.5


def test_line_search_respects_cost_increase_and_skips_improvement_for_recovery():
    cost = lambda p: p["theta"]  # the step raises the cost by 4 * fraction
    result = _run_line_search(max_kl=100.0, cost_fn=cost, max_cost_increase=0.7)
    k = _expected_backtracks(lambda f: -(4 * f - 1) ** 2 >= -1.0 and 4 * f <= 0.7)
    assert int(result.num_backtracks) == k and float(result.cost) <= 0.7
    # without the improvement requirement (CPO recovery) only KL and cost matter
    result = _run_line_search(max_kl=100.0, cost_fn=cost, max_cost_increase=3.5, require_improvement=False)
    assert int(result.num_backtracks) == _expected_backtracks(lambda f: 4 * f <= 3.5) == 1


def test_line_search_rejects_everything_and_returns_old_params():
    result = _run_line_search(max_kl=1e-9)
    assert not bool(result.accepted) and int(result.num_backtracks) == 15
    assert float(result.params["theta"]) == 0.0 and float(result.step_fraction) == 0.0
    nan_surrogate = tr.backtracking_line_search(
        {"theta": jnp.zeros(())}, {"theta": jnp.ones(())}, lambda p: jnp.nan * p["theta"], lambda p: 0.0 * p["theta"],
        max_kl=1.0,
    )
    assert not bool(nan_surrogate.accepted)
    with pytest.raises(ValueError, match="together"):
        _run_line_search(max_kl=1.0, cost_fn=lambda p: p["theta"])


def test_line_search_takes_a_traced_backtrack_ratio():
    """The decay ratio may be a swept hyperparameter: vmapped ratios give each lane its own enumeration."""
    params, step = {"theta": jnp.zeros(())}, {"theta": jnp.asarray(4.0)}
    surrogate = lambda p: -jnp.square(p["theta"] - 1.0)
    kl = lambda p: jnp.square(p["theta"])
    cost = lambda p: p["theta"]
    ratios = jnp.array([0.5, 0.8, 0.9], jnp.float32)

    def search(ratio, max_cost_increase):
        return tr.backtracking_line_search(params, step, surrogate, kl, max_kl=100.0, cost_fn=cost,
                                           max_cost_increase=max_cost_increase, backtrack_ratio=ratio)

    result = jax.jit(jax.vmap(search, in_axes=(0, None)))(ratios, jnp.float32(0.7))
    for lane, ratio in enumerate([0.5, 0.8, 0.9]):
        k = _expected_backtracks(lambda f: -(4 * f - 1) ** 2 >= -1.0 and 4 * f <= 0.7, ratio=ratio)
        if k is None:  # 0.9: 15 backtracks do not bring the cost increase under 0.7
            assert not bool(result.accepted[lane]) and int(result.num_backtracks[lane]) == 15
            assert float(result.step_fraction[lane]) == 0.0
        else:
            assert bool(result.accepted[lane]) and int(result.num_backtracks[lane]) == k, (ratio, k)
            np.testing.assert_allclose(result.step_fraction[lane], ratio**k, rtol=1e-5)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        _run_line_search(max_kl=1.0, backtrack_ratio=1.0)
    with pytest.raises(ValueError, match="max_backtracks"):
        _run_line_search(max_kl=1.0, max_backtracks=0)


# --- CPO with several cost constraints (moved from OGSRL): K = 1 is CPO's step, K = 2 solves the QP ---


def _multi_problem(rng, n_params, n_costs):
    root = rng.normal(size=(n_params, n_params))
    hessian = root @ root.T + n_params * np.eye(n_params)
    g = rng.normal(size=n_params)
    big_b = rng.normal(size=(n_costs, n_params))
    c = rng.normal(size=n_costs) * 0.3
    return hessian, g, big_b, c


_MULTI_STEP = jax.jit(tr.multi_constraint_cpo_step_from_solves)  # one compilation per cost count, reused by every trial


def test_multi_constraint_step_with_one_cost_is_cpos_step():
    rng = np.random.default_rng(0)
    reference = jax.jit(tr.cpo_step_from_solves)
    cases = set()
    for trial in range(40):
        hessian, g, big_b, c = _multi_problem(rng, 6, 1)
        c = c * (1 + 4 * (trial % 3 == 0))
        h_inv = np.linalg.inv(hessian)
        args = [jnp.asarray(v, jnp.float32) for v in (g, big_b[0], c[0], h_inv @ g, h_inv @ big_b[0])]
        ours = _MULTI_STEP(args[0], args[1][None], args[2][None], args[3], args[4][None], 0.01)
        theirs = reference(*args, 0.01)
        cases.add(int(theirs.case))
        np.testing.assert_allclose(np.asarray(ours.step), np.asarray(theirs.step), rtol=2e-3, atol=1e-5)
    assert {0, 1, 2}.issubset(cases) or {0, 2, 3}.issubset(cases)


def test_multi_constraint_step_with_two_costs_solves_the_qp():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(30):
        hessian, g, big_b, c = _multi_problem(rng, 5, 2)
        delta = 0.05
        cons = [{"type": "ineq", "fun": lambda x: delta - 0.5 * x @ hessian @ x}]
        cons += [{"type": "ineq", "fun": (lambda x, j=j: -(c[j] + big_b[j] @ x))} for j in range(2)]
        ref = minimize(lambda x: -g @ x, np.zeros(5), constraints=cons, method="SLSQP", options={"ftol": 1e-12})
        h_inv = np.linalg.inv(hessian)
        step = _MULTI_STEP(*[jnp.asarray(v, jnp.float32) for v in
                                                 (g, big_b, c, h_inv @ g, big_b @ h_inv)], delta)
        feasible = ref.success and np.all(c + big_b @ ref.x <= 1e-6) and 0.5 * ref.x @ hessian @ ref.x <= delta + 1e-6
        if feasible:
            checked += 1
            assert int(step.case) != tr.CASE_INFEASIBLE_RECOVERY
            np.testing.assert_allclose(np.asarray(step.step), ref.x, rtol=1e-2, atol=2e-3)
        else:
            assert int(step.case) == tr.CASE_INFEASIBLE_RECOVERY
    assert checked >= 10


def test_multi_constraint_step_with_cg_equals_the_step_from_exact_solves():
    rng = np.random.default_rng(7)
    hessian, g, big_b, c = _multi_problem(rng, 5, 3)
    h_inv = np.linalg.inv(hessian)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    exact = tr.multi_constraint_cpo_step_from_solves(f32(g), f32(big_b), f32(c), f32(h_inv @ g), f32(big_b @ h_inv),
                                                     0.02)
    with_cg = tr.multi_constraint_cpo_step(f32(g), f32(big_b), f32(c), lambda v: f32(hessian) @ v, 0.02,
                                           cg_iterations=5)
    np.testing.assert_allclose(np.asarray(with_cg.step), np.asarray(exact.step), rtol=1e-3, atol=1e-5)
    assert int(with_cg.case) == int(exact.case)
    assert exact.cost_multiplier.shape == (3,) and exact.predicted_cost_change.shape == (3,)
    if int(exact.case) != tr.CASE_INFEASIBLE_RECOVERY:
        x = np.asarray(exact.step, np.float64)
        assert float(exact.predicted_kl) == pytest.approx(0.5 * x @ hessian @ x, rel=1e-3)
