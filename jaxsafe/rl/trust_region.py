"""Trust-region policy-update core for TRPO and CPO: pure, jittable functions, no rollout code.

The pieces, in the order an update uses them:

1. :func:`flatten` -- a parameter pytree as one flat vector (``jax.flatten_util.ravel_pytree``).
2. :func:`fisher_vector_product` / :func:`make_fisher_vector_product` -- ``(H + damping I) v`` where ``H`` is the
   Hessian of the mean KL between the old (fixed) and the new policy at the old parameters, i.e. the Fisher
   information, by forward-over-reverse differentiation (``jvp`` of ``grad``); never materialises ``H``.
3. :func:`conjugate_gradient` -- ``H^-1 g`` with a fixed iteration count (``lax.fori_loop``).
4. :func:`natural_gradient_step` (TRPO) or :func:`cpo_step` (CPO) -- the step of the local quadratic problem;
   :func:`multi_constraint_cpo_step` for ``K`` cost constraints (exact, by active-set enumeration of the dual;
   equal to :func:`cpo_step` when ``K = 1``, which the tests check).
5. :func:`backtracking_line_search` -- shrink the step until the true KL, surrogate and cost checks pass.

CPO (Achiam et al. 2017, sec. 6.1 and appendix 10.2) solves, with ``g`` the reward-surrogate gradient (ascent),
``b`` the cost-surrogate gradient, ``c = J_C(pi_old) - cost_limit`` (positive = the constraint is violated now) and
``delta = max_kl``::

    max_x  g^T x   s.t.   0.5 x^T H x <= delta,   b^T x + c <= 0.

With ``q = g^T H^-1 g``, ``r = g^T H^-1 b``, ``s = b^T H^-1 b``, ``A = q - r^2 / s``, ``B = 2 delta - c^2 / s``:

=====  ==========================================  ===============================================================
case   condition                                   step
=====  ==========================================  ===============================================================
0      ``c > 0`` and ``B < 0``: no point of the     recovery, purely decreasing cost:
       trust region satisfies the constraint        ``-sqrt(2 delta / s) H^-1 b``
1      ``c >= 0`` and ``B >= 0``: violated now,     dual solution ``(H^-1 g - nu H^-1 b) / lambda``
       but the trust region reaches feasibility
2      ``c < 0`` and ``B >= 0``: the constraint     dual solution; ``nu > 0`` when the cost constraint is active
       plane cuts the trust region                  at the optimum, ``nu = 0`` when the plain trust-region step is
                                                    already feasible
3      ``c < 0`` and ``B < 0``: the whole trust     trust-region (TRPO) step ``sqrt(2 delta / q) H^-1 g``
       region is feasible
4      ``b ~ 0`` and ``c < 0``: no cost gradient    trust-region (TRPO) step
5      (``natural_gradient_step`` only)             TRPO step, no cost constraint
=====  ==========================================  ===============================================================

(the same numbering as OmniSafe's CPO). The dual of the QP is maximised over ``lambda > 0`` with the optimal
``nu = max(0, (r + lambda c) / s)`` substituted; on the part of the axis where ``nu > 0`` it is
``f_a(lambda) = -(A / lambda + B lambda) / 2 + r c / s``, elsewhere
``f_b(lambda) = -(q / lambda + 2 delta lambda) / 2``.
Each piece's unconstrained maximiser (``sqrt(A / B)``, ``sqrt(q / (2 delta))``) is projected onto its part of the
axis and the better one wins. (Derived here from the Lagrangian; note the sign of ``r``: with ``g`` the *ascent*
direction, ``nu = (lambda c + r) / s``. Implementations that feed the gradient of the loss instead write
``lambda c - r``.) Every case is computed and one is selected with ``jnp.where``, so the function is jittable and
vmappable; the tests check each case against an independent QP solver.
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any

__all__ = [
    "CASE_INFEASIBLE_RECOVERY",
    "CASE_INFEASIBLE_RECOVERABLE",
    "CASE_FEASIBLE_INTERSECTING",
    "CASE_FEASIBLE_TRUST_REGION",
    "CASE_NO_COST_GRADIENT",
    "CASE_UNCONSTRAINED",
    "TrustRegionStep",
    "LineSearchResult",
    "flatten",
    "fisher_vector_product",
    "make_fisher_vector_product",
    "conjugate_gradient",
    "natural_gradient_step_from_solve",
    "natural_gradient_step",
    "cpo_step_from_solves",
    "cpo_step",
    "multi_constraint_cpo_step_from_solves",
    "multi_constraint_cpo_step",
    "backtracking_line_search",
]

CASE_INFEASIBLE_RECOVERY = 0
CASE_INFEASIBLE_RECOVERABLE = 1
CASE_FEASIBLE_INTERSECTING = 2
CASE_FEASIBLE_TRUST_REGION = 3
CASE_NO_COST_GRADIENT = 4
CASE_UNCONSTRAINED = 5

_EPS = 1e-8


class TrustRegionStep(NamedTuple):
    """The solution of the local trust-region problem.

    Attributes:
      step: ``(P,)`` flat parameter step ``x``.
      case: int32 case code (module docstring table).
      lagrange_multiplier: ``lambda`` of the trust-region constraint (0 for the recovery step).
      cost_multiplier: ``nu`` of the cost constraint (> 0 iff it is active at the optimum).
      predicted_improvement: ``g^T x``, the linearised surrogate gain.
      predicted_cost_change: ``b^T x`` (0 for TRPO).
      predicted_kl: ``0.5 x^T H x`` computed from the solves (``delta`` when the trust region is active).
    """

    step: jax.Array
    case: jax.Array
    lagrange_multiplier: jax.Array
    cost_multiplier: jax.Array
    predicted_improvement: jax.Array
    predicted_cost_change: jax.Array
    predicted_kl: jax.Array


class LineSearchResult(NamedTuple):
    """Outcome of :func:`backtracking_line_search`.

    Attributes:
      params: accepted parameters (the old ones when nothing was accepted).
      step_fraction: the accepted fraction of the full step (0 when rejected).
      accepted: bool.
      num_backtracks: int32 number of shrinkings before acceptance (``max_backtracks`` when rejected).
      surrogate, kl, cost: the checked quantities at the returned params (``cost`` is 0 without ``cost_fn``).
    """

    params: PyTree
    step_fraction: jax.Array
    accepted: jax.Array
    num_backtracks: jax.Array
    surrogate: jax.Array
    kl: jax.Array
    cost: jax.Array


def flatten(params: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """``(flat (P,), unflatten)``: one vector for the whole parameter pytree, and its inverse."""
    return ravel_pytree(params)


def fisher_vector_product(kl_fn: Callable[[PyTree], jax.Array], params: PyTree, vector: PyTree, damping=0.0):
    """``(Hessian of kl_fn at params) @ vector + damping * vector``, as a pytree like ``params``.

    ``kl_fn(params) -> ()`` is the mean KL divergence from the *old* policy (its outputs held constant, e.g. with
    ``jax.lax.stop_gradient`` or precomputed) to the policy at ``params``. At the old parameters its Hessian is the
    Fisher information matrix. Computed as the ``jvp`` of ``grad`` (forward-over-reverse): one extra pass, no
    matrix.
    """
    _, hessian_vector = jax.jvp(jax.grad(kl_fn), (params,), (vector,))
    return jax.tree.map(lambda hv, v: hv + damping * v, hessian_vector, vector)


def make_fisher_vector_product(
    kl_fn: Callable[[PyTree], jax.Array], params: PyTree, damping=0.0
) -> Callable[[jax.Array], jax.Array]:
    """Flat ``v (P,) -> (H + damping I) v (P,)`` at ``params``, for :func:`conjugate_gradient`.

    Linearises ``grad(kl_fn)`` once (``jax.linearize``), so each CG iteration costs one linear pass.
    """
    flat_params, unflatten = ravel_pytree(params)
    _, hessian_vector_linear = jax.linearize(jax.grad(lambda flat: kl_fn(unflatten(flat))), flat_params)

    def fvp(vector: jax.Array) -> jax.Array:
        return hessian_vector_linear(vector) + damping * vector

    return fvp


def conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array],
    rhs: jax.Array,
    num_iterations: int = 10,
    residual_tol: float = 1e-10,
) -> jax.Array:
    """Approximately solve ``M x = rhs`` for symmetric positive-definite ``M`` given by ``matvec``: ``x (P,)``.

    Runs exactly ``num_iterations`` (static) iterations of ``lax.fori_loop``; once the squared residual drops below
    ``residual_tol`` the iterate is frozen (so no division by a vanishing ``p^T M p``). Starts from ``x = 0``, so
    after ``P`` iterations the solution is exact in exact arithmetic.
    """
    if rhs.ndim != 1:
        raise ValueError(f"conjugate_gradient: rhs must be a flat vector (P,), got shape {rhs.shape}")
    if not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
    rhs = jnp.asarray(rhs)

    def body(_, carry):
        x, residual, direction, residual_sq = carry
        active = residual_sq > residual_tol
        m_direction = matvec(direction)
        curvature = jnp.vdot(direction, m_direction)
        alpha = jnp.where(active, residual_sq / jnp.where(active, curvature, 1.0), 0.0)
        x = x + alpha * direction
        residual = residual - alpha * m_direction
        new_residual_sq = jnp.vdot(residual, residual)
        beta = jnp.where(active, new_residual_sq / jnp.where(active, residual_sq, 1.0), 0.0)
        direction = jnp.where(active, residual + beta * direction, direction)
        return x, residual, direction, jnp.where(active, new_residual_sq, residual_sq)

    init = (jnp.zeros_like(rhs), rhs, rhs, jnp.vdot(rhs, rhs))
    return jax.lax.fori_loop(0, num_iterations, body, init)[0]


def _check_flat(name, vector):
    if jnp.ndim(vector) != 1:
        raise ValueError(f"{name} must be a flat vector (P,), got shape {jnp.shape(vector)}")


def _check_max_kl(max_kl):
    if not isinstance(max_kl, jax.core.Tracer):
        value = float(max_kl)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"max_kl must be a finite number > 0, got {max_kl!r}")


def natural_gradient_step_from_solve(reward_grad: jax.Array, hinv_reward_grad: jax.Array, max_kl) -> TrustRegionStep:
    """TRPO's step ``sqrt(2 max_kl / (g^T H^-1 g)) H^-1 g`` from a solve ``H^-1 g`` (both ``(P,)``).

    This is the maximiser of ``g^T x`` on the trust region ``0.5 x^T H x <= max_kl``; a zero gradient gives a zero
    step.
    """
    _check_flat("reward_grad", reward_grad)
    _check_max_kl(max_kl)
    q = jnp.vdot(reward_grad, hinv_reward_grad)
    lagrange_multiplier = jnp.sqrt(jnp.maximum(q, 0.0) / (2.0 * max_kl))
    step = hinv_reward_grad / jnp.maximum(lagrange_multiplier, _EPS)
    return TrustRegionStep(
        step=step,
        case=jnp.asarray(CASE_UNCONSTRAINED, jnp.int32),
        lagrange_multiplier=lagrange_multiplier,
        cost_multiplier=jnp.zeros_like(q),
        predicted_improvement=jnp.vdot(reward_grad, step),
        predicted_cost_change=jnp.zeros_like(q),
        predicted_kl=0.5 * q / jnp.maximum(lagrange_multiplier, _EPS) ** 2,
    )


def natural_gradient_step(
    reward_grad: jax.Array,
    fvp: Callable[[jax.Array], jax.Array],
    max_kl,
    cg_iterations: int = 10,
    cg_residual_tol: float = 1e-10,
) -> TrustRegionStep:
    """TRPO: solve ``H x = g`` by CG with ``fvp`` and scale to the trust region (see ``..._from_solve``)."""
    hinv_reward_grad = conjugate_gradient(fvp, reward_grad, cg_iterations, cg_residual_tol)
    return natural_gradient_step_from_solve(reward_grad, hinv_reward_grad, max_kl)


def _project(value, low, high):
    return jnp.minimum(jnp.maximum(value, low), high)


def cpo_step_from_solves(
    reward_grad: jax.Array,
    cost_grad: jax.Array,
    constraint_value,
    hinv_reward_grad: jax.Array,
    hinv_cost_grad: jax.Array,
    max_kl,
    cost_grad_tol: float = 1e-8,
) -> TrustRegionStep:
    """CPO's step from the two solves ``H^-1 g`` and ``H^-1 b``; all vectors ``(P,)``, ``constraint_value`` scalar.

    Args:
      reward_grad: ``g``, gradient of the reward surrogate (to be increased).
      cost_grad: ``b``, gradient of the cost surrogate.
      constraint_value: ``c = J_C(pi_old) - cost_limit``; positive when the constraint is violated now.
      hinv_reward_grad, hinv_cost_grad: ``H^-1 g``, ``H^-1 b``.
      max_kl: ``delta``, the trust-region radius in KL (nats).
      cost_grad_tol: ``b^T b`` below this counts as no cost gradient (case 4 when feasible).

    Returns:
      :class:`TrustRegionStep` (module docstring for the cases).
    """
    for name, vector in (("reward_grad", reward_grad), ("cost_grad", cost_grad)):
        _check_flat(name, vector)
    if reward_grad.shape != cost_grad.shape:
        raise ValueError(f"reward_grad {reward_grad.shape} and cost_grad {cost_grad.shape} must have the same shape")
    if jnp.ndim(constraint_value) != 0:
        raise ValueError(f"constraint_value must be a scalar, got shape {jnp.shape(constraint_value)}")
    _check_max_kl(max_kl)
    g, b = reward_grad, cost_grad
    c = jnp.asarray(constraint_value, g.dtype)
    delta = jnp.asarray(max_kl, g.dtype)
    q = jnp.maximum(jnp.vdot(g, hinv_reward_grad), 0.0)
    r = jnp.vdot(g, hinv_cost_grad)
    s = jnp.maximum(jnp.vdot(b, hinv_cost_grad), _EPS)
    a_term = jnp.maximum(q - r**2 / s, 0.0)  # A >= 0 by Cauchy-Schwarz
    b_term = 2.0 * delta - c**2 / s  # B

    no_cost_grad = jnp.vdot(b, b) <= cost_grad_tol
    feasible = c < 0
    case = jnp.where(
        jnp.logical_and(no_cost_grad, feasible),
        CASE_NO_COST_GRADIENT,
        jnp.where(
            feasible,
            jnp.where(b_term < 0, CASE_FEASIBLE_TRUST_REGION, CASE_FEASIBLE_INTERSECTING),
            jnp.where(b_term < 0, CASE_INFEASIBLE_RECOVERY, CASE_INFEASIBLE_RECOVERABLE),
        ),
    ).astype(jnp.int32)

    # --- Dual of the two-constraint problem (cases 1 and 2). ---
    # nu*(lambda) = max(0, (r + lambda c) / s): the cost constraint is active where lambda c > -r.
    c_safe = jnp.where(c == 0, 1.0, c)
    threshold = -r / c_safe  # the lambda at which nu switches on or off (c != 0)
    inf = jnp.asarray(jnp.inf, g.dtype)
    # Interval [low, high] of lambda > 0 where nu > 0 (piece "a") and where nu = 0 (piece "b"); empty -> low > high.
    a_low = jnp.where(c > 0, jnp.maximum(threshold, 0.0), 0.0)
    a_high = jnp.where(c > 0, inf, jnp.where(c < 0, threshold, jnp.where(r > 0, inf, -inf)))
    b_low = jnp.where(c < 0, jnp.maximum(threshold, 0.0), 0.0)
    b_high = jnp.where(c < 0, inf, jnp.where(c > 0, threshold, jnp.where(r <= 0, inf, -inf)))
    a_nonempty = a_high > jnp.maximum(a_low, 0.0)
    b_nonempty = b_high > jnp.maximum(b_low, 0.0)
    lambda_a = jnp.maximum(_project(jnp.sqrt(a_term / jnp.maximum(b_term, _EPS)), a_low, a_high), _EPS)
    lambda_b = jnp.maximum(_project(jnp.sqrt(q / (2.0 * delta)), b_low, b_high), _EPS)
    dual_a = -0.5 * (a_term / lambda_a + b_term * lambda_a) + r * c / s
    dual_b = -0.5 * (q / lambda_b + 2.0 * delta * lambda_b)
    dual_a = jnp.where(a_nonempty, dual_a, -inf)
    dual_b = jnp.where(b_nonempty, dual_b, -inf)
    lambda_dual = jnp.where(dual_a >= dual_b, lambda_a, lambda_b)
    nu_dual = jnp.maximum(r + lambda_dual * c, 0.0) / s
    dual_step = (hinv_reward_grad - nu_dual * hinv_cost_grad) / lambda_dual

    # --- Trust-region step (cases 3, 4) and recovery step (case 0). ---
    lambda_trpo = jnp.sqrt(q / (2.0 * delta))
    trpo_step = hinv_reward_grad / jnp.maximum(lambda_trpo, _EPS)
    recovery_step = -jnp.sqrt(2.0 * delta / s) * hinv_cost_grad

    use_dual = jnp.logical_or(case == CASE_INFEASIBLE_RECOVERABLE, case == CASE_FEASIBLE_INTERSECTING)
    use_trpo = jnp.logical_or(case == CASE_FEASIBLE_TRUST_REGION, case == CASE_NO_COST_GRADIENT)
    step = jnp.where(use_dual, dual_step, jnp.where(use_trpo, trpo_step, recovery_step))
    lagrange_multiplier = jnp.where(use_dual, lambda_dual, jnp.where(use_trpo, lambda_trpo, 0.0))
    cost_multiplier = jnp.where(use_dual, nu_dual, 0.0)
    # 0.5 x^T H x without another matvec: x is a combination of H^-1 g and H^-1 b.
    weight_g = jnp.where(use_dual, 1.0 / lambda_dual, jnp.where(use_trpo, 1.0 / jnp.maximum(lambda_trpo, _EPS), 0.0))
    weight_b = jnp.where(use_dual, -nu_dual / lambda_dual, jnp.where(use_trpo, 0.0, -jnp.sqrt(2.0 * delta / s)))
    predicted_kl = 0.5 * (weight_g**2 * q + 2 * weight_g * weight_b * r + weight_b**2 * s)
    return TrustRegionStep(
        step=step,
        case=case,
        lagrange_multiplier=lagrange_multiplier,
        cost_multiplier=cost_multiplier,
        predicted_improvement=jnp.vdot(g, step),
        predicted_cost_change=jnp.vdot(b, step),
        predicted_kl=predicted_kl,
    )


def cpo_step(
    reward_grad: jax.Array,
    cost_grad: jax.Array,
    constraint_value,
    fvp: Callable[[jax.Array], jax.Array],
    max_kl,
    cg_iterations: int = 10,
    cg_residual_tol: float = 1e-10,
    cost_grad_tol: float = 1e-8,
) -> TrustRegionStep:
    """CPO: two CG solves with ``fvp`` (``H^-1 g``, ``H^-1 b``), then :func:`cpo_step_from_solves`."""
    hinv_reward_grad = conjugate_gradient(fvp, reward_grad, cg_iterations, cg_residual_tol)
    hinv_cost_grad = conjugate_gradient(fvp, cost_grad, cg_iterations, cg_residual_tol)
    return cpo_step_from_solves(
        reward_grad, cost_grad, constraint_value, hinv_reward_grad, hinv_cost_grad, max_kl, cost_grad_tol
    )


def multi_constraint_cpo_step_from_solves(
    reward_grad: jax.Array,
    cost_grads: jax.Array,
    constraint_values: jax.Array,
    hinv_reward_grad: jax.Array,
    hinv_cost_grads: jax.Array,
    max_kl,
    feasibility_tol: float = 1e-6,
) -> TrustRegionStep:
    """CPO with ``K`` cost constraints: the exact step of ``max g.x`` s.t. ``0.5 x.Hx <= delta`` and
    ``c_j + b_j.x <= 0`` (``j < K``), from the solves.

    Args:
      reward_grad: ``g (P,)``; cost_grads: ``B (K, P)``; constraint_values: ``c (K,)`` (positive = violated now);
      hinv_reward_grad: ``H^-1 g (P,)``; hinv_cost_grads: ``H^-1 b_j`` stacked ``(K, P)``; max_kl: ``delta``.

    The dual ``D(lambda, nu) = (q - 2 r.nu + nu.S nu) / (2 lambda) + lambda delta - nu.c`` (``q = g.H^-1 g``,
    ``r = B H^-1 g``, ``S = B H^-1 B^T``) is minimised over ``lambda > 0, nu >= 0`` by trying every active set
    ``A`` (``2^K`` faces, so meant for a handful of costs): on it ``lambda = sqrt((q - r_A.S_A^-1 r_A) / (2 delta
    - c_A.S_A^-1 c_A))``, ``nu_A = S_A^-1 (r_A + lambda c_A)``; a face is valid where both are defined and
    ``nu_A >= 0``, and the valid face with the smallest dual value is the optimum (``D`` is convex). The step is
    ``(H^-1 g - nu.H^-1 B) / lambda``. If it violates a linearised constraint, no point of the trust region
    satisfies them all and the step is the recovery step ``-sqrt(2 delta / (b.H^-1 b)) H^-1 b`` along ``b``, the
    sum of the gradients of the violated costs (with ``K = 1``: CPO's recovery step).

    Returns:
      :class:`TrustRegionStep` with ``cost_multiplier`` and ``predicted_cost_change`` of shape ``(K,)``; ``case``:
      0 recovery, 1 a cost constraint active while some ``c_j >= 0``, 2 active with every ``c_j < 0``, 3 no cost
      constraint active (the trust-region step).
    """
    _check_flat("reward_grad", reward_grad)
    _check_max_kl(max_kl)
    g, big_b = jnp.asarray(reward_grad), jnp.asarray(cost_grads)
    if big_b.ndim != 2 or big_b.shape[1] != g.shape[0] or jnp.shape(hinv_cost_grads) != big_b.shape:
        raise ValueError(f"cost_grads and hinv_cost_grads must be (K, P) with P = {g.shape[0]}, got "
                         f"{jnp.shape(cost_grads)} and {jnp.shape(hinv_cost_grads)}")
    n_costs = big_b.shape[0]
    c = jnp.asarray(constraint_values, g.dtype).reshape(n_costs)
    delta = jnp.asarray(max_kl, g.dtype)
    q = jnp.maximum(jnp.vdot(g, hinv_reward_grad), 0.0)
    r = big_b @ hinv_reward_grad
    s = 0.5 * (big_b @ hinv_cost_grads.T + hinv_cost_grads @ big_b.T) + _EPS * jnp.eye(n_costs)
    faces = jnp.asarray(list(itertools.product([False, True], repeat=n_costs)), bool)  # [2^K, K]

    def face(active):
        both = active[:, None] & active[None, :]
        s_a = jnp.where(both, s, jnp.eye(n_costs))
        r_a, c_a = jnp.where(active, r, 0.0), jnp.where(active, c, 0.0)
        s_inv_r, s_inv_c = jnp.linalg.solve(s_a, r_a), jnp.linalg.solve(s_a, c_a)
        a_term = q - r_a @ s_inv_r
        b_term = 2.0 * delta - c_a @ s_inv_c
        lam = jnp.sqrt(jnp.maximum(a_term, _EPS) / jnp.maximum(b_term, _EPS))
        nu = jnp.where(active, s_inv_r + lam * s_inv_c, 0.0)
        valid = (b_term > 0) & (a_term >= -1e-9) & jnp.all(nu >= -1e-9)
        nu = jnp.maximum(nu, 0.0)
        dual = (q - 2.0 * r @ nu + nu @ s @ nu) / (2.0 * lam) + lam * delta - nu @ c
        return jnp.where(valid, dual, jnp.inf), lam, nu

    duals, lams, nus = jax.vmap(face)(faces)
    best = jnp.argmin(duals)
    lam, nu = jnp.maximum(lams[best], _EPS), nus[best]
    dual_step = (hinv_reward_grad - nu @ hinv_cost_grads) / lam
    violation = c + big_b @ dual_step
    scale = 1.0 + jnp.abs(c)
    feasible = jnp.isfinite(duals[best]) & jnp.all(violation <= feasibility_tol * scale)
    violated = (c > 0) | (violation > feasibility_tol * scale)
    b_sum = (violated.astype(g.dtype)[:, None] * big_b).sum(0)
    hinv_b_sum = (violated.astype(g.dtype)[:, None] * hinv_cost_grads).sum(0)
    recovery = -jnp.sqrt(2.0 * delta / jnp.maximum(jnp.vdot(b_sum, hinv_b_sum), _EPS)) * hinv_b_sum
    step = jnp.where(feasible, dual_step, recovery)
    active_case = jnp.where(jnp.any(c >= 0), CASE_INFEASIBLE_RECOVERABLE, CASE_FEASIBLE_INTERSECTING)
    case = jnp.where(feasible, jnp.where(jnp.any(nu > 0), active_case, CASE_FEASIBLE_TRUST_REGION),
                     CASE_INFEASIBLE_RECOVERY)
    dual_kl = 0.5 * (q - 2.0 * r @ nu + nu @ s @ nu) / lam**2
    return TrustRegionStep(
        step=step,
        case=case.astype(jnp.int32),
        lagrange_multiplier=jnp.where(feasible, lam, 0.0),
        cost_multiplier=jnp.where(feasible, nu, 0.0),
        predicted_improvement=jnp.vdot(g, step),
        predicted_cost_change=big_b @ step,
        predicted_kl=jnp.where(feasible, dual_kl, delta),
    )


def multi_constraint_cpo_step(
    reward_grad: jax.Array,
    cost_grads: jax.Array,
    constraint_values: jax.Array,
    fvp: Callable[[jax.Array], jax.Array],
    max_kl,
    cg_iterations: int = 10,
    cg_residual_tol: float = 1e-10,
) -> TrustRegionStep:
    """CPO with ``K`` costs: ``1 + K`` CG solves with ``fvp``, then :func:`multi_constraint_cpo_step_from_solves`."""
    solve = lambda v: conjugate_gradient(fvp, v, cg_iterations, cg_residual_tol)  # noqa: E731
    return multi_constraint_cpo_step_from_solves(reward_grad, cost_grads, constraint_values, solve(reward_grad),
                                                 jax.vmap(solve)(jnp.asarray(cost_grads)), max_kl)


def backtracking_line_search(
    params: PyTree,
    full_step: PyTree,
    surrogate_fn: Callable[[PyTree], jax.Array],
    kl_fn: Callable[[PyTree], jax.Array],
    max_kl,
    cost_fn: Callable[[PyTree], jax.Array] | None = None,
    max_cost_increase=None,
    require_improvement=True,
    backtrack_ratio=0.8,
    max_backtracks: int = 15,
) -> LineSearchResult:
    """Try ``params + ratio^k * full_step`` for ``k = 0, 1, ...`` and accept the first candidate that passes.

    A candidate passes when the surrogate, KL and cost are finite, ``kl_fn(candidate) <= max_kl``, (if
    ``require_improvement``) ``surrogate_fn(candidate) >= surrogate_fn(params)``, and (if ``cost_fn`` is given)
    ``cost_fn(candidate) - cost_fn(params) <= max_cost_increase``. For CPO pass
    ``max_cost_increase = max(-c, 0)`` and ``require_improvement = case >= 2`` (a recovery step need not improve the
    reward), as OmniSafe does; for TRPO leave ``cost_fn`` out.

    ``params`` and ``full_step`` are pytrees of the same structure (e.g. ``unflatten(step.step)``). Runs in a
    ``lax.while_loop`` that stops at the first acceptance; jittable and vmappable (``max_kl``, ``backtrack_ratio``,
    ``require_improvement`` and ``max_cost_increase`` may be traced, e.g. swept hyperparameters; concrete values are
    validated here, traced ones by the caller's hparams validation). ``max_backtracks`` is static. Returns a
    :class:`LineSearchResult`; on rejection the old params.
    """
    if isinstance(max_backtracks, bool) or not isinstance(max_backtracks, numbers.Integral) or max_backtracks < 1:
        raise ValueError(f"max_backtracks must be a positive int, got {max_backtracks!r}")
    max_backtracks = int(max_backtracks)
    if not isinstance(backtrack_ratio, jax.core.Tracer) and not 0.0 < float(backtrack_ratio) < 1.0:
        raise ValueError(f"backtrack_ratio must be in (0, 1), got {backtrack_ratio!r}")
    if (cost_fn is None) != (max_cost_increase is None):
        raise ValueError("cost_fn and max_cost_increase must be given together")
    _check_max_kl(max_kl)
    surrogate_before = surrogate_fn(params)
    cost_before = cost_fn(params) if cost_fn is not None else jnp.zeros(())

    def candidate(fraction):
        return jax.tree.map(lambda p, s: p + fraction * s, params, full_step)

    def evaluate(fraction):
        new_params = candidate(fraction)
        surrogate = surrogate_fn(new_params)
        kl = kl_fn(new_params)
        cost = cost_fn(new_params) if cost_fn is not None else jnp.zeros(())
        passes = jnp.isfinite(surrogate) & jnp.isfinite(kl) & jnp.isfinite(cost) & (kl <= max_kl)
        passes &= jnp.logical_or(jnp.logical_not(require_improvement), surrogate >= surrogate_before)
        if cost_fn is not None:
            passes &= cost - cost_before <= max_cost_increase
        return passes, surrogate, kl, cost

    def cond(carry):
        k, accepted = carry[0], carry[1]
        return jnp.logical_and(k < max_backtracks, jnp.logical_not(accepted))

    def body(carry):
        k = carry[0]
        fraction = jnp.asarray(backtrack_ratio, jnp.float32) ** k.astype(jnp.float32)
        passes, surrogate, kl, cost = evaluate(fraction)
        return (jnp.where(passes, k, k + 1), passes, fraction, surrogate, kl, cost)

    zero = jnp.zeros((), jnp.float32)
    init = (jnp.zeros((), jnp.int32), jnp.zeros((), bool), zero, zero, zero, zero)
    num_backtracks, accepted, fraction, surrogate, kl, cost = jax.lax.while_loop(cond, body, init)
    fraction = jnp.where(accepted, fraction, 0.0)
    new_params = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), candidate(fraction), params)
    return LineSearchResult(
        params=new_params,
        step_fraction=fraction,
        accepted=accepted,
        num_backtracks=num_backtracks,
        surrogate=jnp.where(accepted, surrogate, surrogate_before),
        kl=jnp.where(accepted, kl, 0.0),
        cost=jnp.where(accepted, cost, cost_before),
    )
