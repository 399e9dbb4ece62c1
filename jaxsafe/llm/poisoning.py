"""Minimum-cost label-flipping poisoning of RLHF/DPO: the LP, its dual lower bound, the duplication MILP, the
baselines it post-processes, language-model features and last-layer DPO.

Notation (shapes in brackets). ``n`` preference pairs, ``d`` reward features. Pair ``i`` has a feature
difference ``Phi[:, i] = phi(x_i, chosen_i) - phi(x_i, rejected_i)`` (``Phi`` is ``[d, n]``) and a
**preference proportion** ``theta[i]`` in ``[0, 1]``: the fraction of its copies labelled "chosen beats
rejected" (``theta_original = 1`` for a clean data set; flipping a pair sets it to 0). Costs are in **pairs**:
``sum |theta - theta_original|`` (a pair duplicated ``m`` times counts one when all ``m`` copies flip); divide
by ``n`` for the fraction.

The reward head is linear, ``r(x, y) = psi . phi(x, y)``, fitted by Bradley-Terry with fractional labels::

    L(psi; theta) = sum_i [-theta_i log sigma(Phi_i . psi) - (1 - theta_i) log sigma(-Phi_i . psi)]
                    + l2/2 |psi|^2

Its stationarity condition is ``Phi theta = Phi sigma(Phi^T psi) + l2 psi``, so **every theta with the same
moment ``Phi theta`` gives the same reward model** (the loss is strictly convex for ``l2 > 0``, or for
full-rank non-separable data). The cheapest poisoning that reaches a target moment ``b`` is therefore the LP::

    minimise sum_i |theta_i - theta_original_i|   s.t.   Phi theta = b,   0 <= theta <= 1

with ``b = Phi theta_attack`` to post-process an existing attack (:func:`postprocess_attack`) or ``b =
target_moment(Phi, psi_target, l2)`` to aim at a reward model directly (:func:`target_reward_flips`). A vertex
of this LP has at most ``rank(Phi) <= d`` fractional pairs; all others are untouched or fully flipped.

**Dual lower bound.** With ``c = b - Phi theta_original`` and ``a = Phi^T lambda``, every ``lambda [d]``
gives::

    cost >= lambda . c - sum_i [(1 - theta_original_i) max(0, a_i - 1) + theta_original_i max(0, -a_i - 1)]
            - moment_tolerance * |lambda|_1

for every theta that reaches ``b`` (to ``moment_tolerance`` in each row), and the maximum over ``lambda`` is
the LP optimum (:func:`dual_lower_bound`, :func:`solve_dual_lp`). An unreachable ``b`` raises
:class:`InfeasibleTargetError` with a Farkas certificate ``lambda``: ``lambda . b > sum_i max(0, (Phi^T
lambda)_i) >= lambda . Phi theta`` for every theta in the box.

With pairs duplicated ``n_duplicates`` times, theta lives on the grid ``{0, 1/m, ..., 1}``;
:func:`minimum_cost_flips_milp` solves that version exactly (``scipy.optimize.milp``, HiGHS) and
:func:`round_to_duplicates` rounds an LP solution onto the grid.

DPO with a log-linear policy ``pi(y|x) ∝ pi_ref(y|x) exp(psi . phi(x, y) / beta)`` has exactly the
Bradley-Terry loss in ``psi`` (:func:`loglinear_policy_logprobs`), so the LP applies unchanged; with a
token-level softmax head (:func:`train_last_layer_dpo`) the equivalence is approximate.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsafe.exact.lp import LPError, solve_lp
from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib

__all__ = [
    "DEFAULT_L2", "FRACTIONAL_ATOL", "SEPARATION_MARGIN", "RankDeficientWarning", "InfeasibleTargetError",
    "BTFit", "FlipSolution", "MILPSolution", "PoisonAttack", "HeadTable", "DPOResult",
    "check_features", "check_proportions", "feature_rank", "fit_bradley_terry", "target_moment", "flip_cost",
    "count_fractional", "minimum_cost_flips", "postprocess_attack", "target_reward_flips", "dual_lower_bound",
    "solve_dual_lp", "round_to_duplicates", "minimum_cost_flips_milp", "flip_candidates", "rlhfpoison_flips",
    "random_flips", "longer_preferred_rate", "sequence_features", "preference_features",
    "loglinear_policy_logprobs", "trunk_outputs", "head_table", "head_sequence_logprobs",
    "reference_sequence_logprobs", "last_layer_dpo_loss", "train_last_layer_dpo",
]

#: Default ridge coefficient of the Bradley-Terry fit (absolute, on the summed loss). Any ``l2 >= 0`` keeps
#: the LP exact; ``l2 > 0`` makes the maximum-likelihood reward exist and be unique for separable or
#: rank-deficient features.
DEFAULT_L2 = 1e-3
#: With ``l2 = 0`` a fitted margin beyond this (a preference probability within ``e^-30`` of 0 or 1) is taken
#: as separation: the maximum-likelihood reward does not exist.
SEPARATION_MARGIN = 30.0
#: Column generation: a pair enters the working set when its reduced cost is below ``-tolerance``; at most
#: this many rounds before falling back to the full LP.
COLUMN_GENERATION_TOLERANCE = 1e-7  # HiGHS's dual feasibility tolerance
COLUMN_GENERATION_ROUNDS = 100
#: An entry of theta is fractional when it is further than this from both 0 and 1.
FRACTIONAL_ATOL = 1e-9


class RankDeficientWarning(UserWarning):
    """``Phi`` has rank below ``d``: the reward model is not identified along the missing directions."""


class InfeasibleTargetError(ValueError):
    """No theta in ``[0, 1]^n`` reaches the target moment. ``certificate`` is ``lambda [d]`` with
    ``gap = lambda . target - sum_i max(0, (Phi^T lambda)_i) > 0`` (a separating hyperplane), ``distance`` the
    smallest ``|Phi theta - target|_1`` over the box."""

    def __init__(self, message: str, certificate: np.ndarray, gap: float, distance: float):
        super().__init__(message)
        self.certificate = certificate
        self.gap = gap
        self.distance = distance


# ----------------------------------------------------------------------------- input checks


def check_features(features, name: str = "Phi", warn_rank_deficient: bool = True) -> np.ndarray:
    """``features`` as a float64 ``[d, n]`` array; ``ValueError`` naming ``name`` unless it is a finite 2-D
    array with ``d, n >= 1``. Warns :class:`RankDeficientWarning` when its rank is below ``d``."""
    try:
        array = np.asarray(features, np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric [d, n] array (features x pairs), got {err}") from None
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"{name} must be a [d, n] array (features x pairs) with d, n >= 1, got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite entries")
    if warn_rank_deficient:
        rank = feature_rank(array)
        if rank < array.shape[0]:
            warnings.warn(f"{name} has rank {rank} < d = {array.shape[0]}: the reward model is not "
                          f"identified along {array.shape[0] - rank} feature directions (the ridge l2 picks "
                          f"one solution; the LP is unaffected)", RankDeficientWarning, stacklevel=2)
    return array


def check_proportions(theta, num_pairs: int, name: str = "theta") -> np.ndarray:
    """``theta`` as a float64 ``[num_pairs]`` vector; ``ValueError`` naming ``name`` unless every entry is a
    finite number in ``[0, 1]``."""
    try:
        array = np.asarray(theta, np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric vector of preference proportions, got {err}") from None
    if array.shape != (num_pairs,):
        raise ValueError(f"{name} must have shape ({num_pairs},) (one proportion per pair, a column of Phi), "
                         f"got shape {array.shape}")
    bad = ~np.isfinite(array) | (array < 0) | (array > 1)
    if np.any(bad):
        index = int(np.argmax(bad))
        raise ValueError(f"{name} must be in [0, 1] (the fraction of a pair's copies labelled 'chosen beats "
                         f"rejected'), got {float(array[index])!r} at pair {index} ({int(bad.sum())} bad "
                         f"entries)")
    return array


def _proportion_vector(theta, name: str) -> np.ndarray:
    """:func:`check_proportions` for a vector of any length (it must be 1-D)."""
    shape = np.shape(theta)
    if len(shape) != 1:
        raise ValueError(f"{name} must be a vector [n] of preference proportions, got shape {shape}")
    return check_proportions(theta, shape[0], name)


def _check_moment(target, dim: int, name: str = "target_moment") -> np.ndarray:
    array = np.asarray(target, np.float64)
    if array.shape != (dim,):
        raise ValueError(f"{name} must have shape ({dim},) (one entry per row of Phi), got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def _check_non_negative(value, name: str) -> float:
    value = float(value)
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def feature_rank(features) -> int:
    """Numerical rank of ``features [d, n]``: singular values (from the eigenvalues of the ``[d, d]`` Gram
    matrix, which resolves them to about 1e-8 of the largest) above ``max(1e-7, 1e-10 max(d, n))`` times the
    largest."""
    array = np.asarray(features, np.float64)
    singular = np.sqrt(np.clip(np.linalg.eigvalsh(array @ array.T), 0.0, None))
    if singular.size == 0 or singular.max() == 0:
        return 0
    tolerance = singular.max() * max(1e-7, 1e-10 * max(array.shape))
    return int(np.sum(singular > tolerance))


# ----------------------------------------------------------------------------- the Bradley-Terry reward head


class BTFit(NamedTuple):
    """A converged Bradley-Terry fit: ``psi [d]`` (float64), ``gradient_norm`` (max-abs gradient at psi),
    ``iterations`` (Newton steps)."""

    psi: np.ndarray
    gradient_norm: float
    iterations: int


def _bt_loss(psi, features, theta, l2):
    margins = features.T @ psi
    nll = -theta * jax.nn.log_sigmoid(margins) - (1.0 - theta) * jax.nn.log_sigmoid(-margins)
    return jnp.sum(nll) + 0.5 * l2 * psi @ psi


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _bt_newton(features, theta, l2, gradient_tolerance, max_iterations: int):
    """Damped Newton (Armijo backtracking, pseudo-inverse step) from psi = 0; returns (psi, |grad|_inf,
    steps)."""
    dim = features.shape[0]
    eye = jnp.eye(dim, dtype=features.dtype)

    def gradient_and_step(psi):
        probs = jax.nn.sigmoid(features.T @ psi)
        gradient = features @ (probs - theta) + l2 * psi
        hessian = (features * (probs * (1.0 - probs))) @ features.T + l2 * eye
        eigenvalues, eigenvectors = jnp.linalg.eigh(hessian)
        keep = eigenvalues > jnp.max(eigenvalues) * dim * 1e-13
        inverse = jnp.where(keep, 1.0 / jnp.where(keep, eigenvalues, 1.0), 0.0)
        return gradient, eigenvectors @ (inverse * (eigenvectors.T @ gradient))

    def cond(state):
        _, gradient, _, iteration, stalled = state
        return (iteration < max_iterations) & (jnp.max(jnp.abs(gradient)) > gradient_tolerance) & ~stalled

    def body(state):
        psi, gradient, step, iteration, _ = state
        value = _bt_loss(psi, features, theta, l2)
        slope = gradient @ step

        # Armijo with a rounding allowance: near the optimum the decrease falls below float64 resolution of
        # the loss, and the full Newton step must still be taken.
        allowance = 8 * jnp.finfo(features.dtype).eps * (1.0 + jnp.abs(value))

        def insufficient(search):
            size, tries = search
            new_value = _bt_loss(psi - size * step, features, theta, l2)
            return (new_value > value - 1e-4 * size * slope + allowance) & (tries < 60)

        size, _ = jax.lax.while_loop(insufficient, lambda s: (0.5 * s[0], s[1] + 1), (1.0, 0))
        new_psi = psi - size * step
        new_gradient, new_step = gradient_and_step(new_psi)
        return new_psi, new_gradient, new_step, iteration + 1, jnp.all(new_psi == psi)

    psi0 = jnp.zeros(dim, features.dtype)
    gradient0, step0 = gradient_and_step(psi0)
    psi, gradient, _, iterations, _ = jax.lax.while_loop(
        cond, body, (psi0, gradient0, step0, jnp.int32(0), jnp.bool_(False)))
    return psi, jnp.max(jnp.abs(gradient)), iterations


def fit_bradley_terry(features, theta, l2: float = DEFAULT_L2, tolerance: float = 1e-12,
                      max_iterations: int = 100) -> BTFit:
    """The Bradley-Terry reward head with fractional labels, by damped Newton in float64 (JAX), to tolerance.

    Args:
      features: ``Phi [d, n]`` feature differences (chosen minus rejected).
      theta: ``[n]`` preference proportions in ``[0, 1]``.
      l2: ridge coefficient ``>= 0`` on the summed loss (see :data:`DEFAULT_L2`).
      tolerance: stop when ``max_j |grad_j| <= tolerance * max(1, max_j sum_i |Phi_ji|)`` (relative to the
        largest possible gradient entry).
      max_iterations: Newton steps allowed.

    Returns:
      :class:`BTFit`. Raises ``ValueError`` when Newton did not reach the tolerance (e.g. separable
      preferences with ``l2 = 0``, whose maximum-likelihood reward is at infinity).
    """
    features = check_features(features, "features")
    theta = check_proportions(theta, features.shape[1], "theta")
    l2 = _check_non_negative(l2, "l2")
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a finite number > 0, got {tolerance}")
    if not (isinstance(max_iterations, (int, np.integer)) and max_iterations >= 1):
        raise ValueError(f"max_iterations must be an integer >= 1, got {max_iterations!r}")
    gradient_tolerance = tolerance * max(1.0, float(np.abs(features).sum(axis=1).max()))
    with jax.enable_x64(True):
        psi, gradient_norm, iterations = _bt_newton(jnp.asarray(features), jnp.asarray(theta),
                                                    jnp.float64(l2), jnp.float64(gradient_tolerance),
                                                    int(max_iterations))
        psi, gradient_norm, iterations = np.asarray(psi), float(gradient_norm), int(iterations)
    if not (np.all(np.isfinite(psi)) and gradient_norm <= gradient_tolerance):
        raise ValueError(f"the Bradley-Terry fit did not converge in {iterations} Newton steps (max "
                         f"|gradient| {gradient_norm:.3g} > {gradient_tolerance:.3g}); the preferences may "
                         f"be separable: use l2 > 0 (got l2 = {l2})")
    largest_margin = float(np.abs(features.T @ psi).max())
    if l2 == 0 and largest_margin > SEPARATION_MARGIN:
        # Without a ridge, separable preferences send psi to infinity while the gradient still vanishes.
        raise ValueError(f"the Bradley-Terry maximum-likelihood reward is at infinity: a pair's margin "
                         f"reached {largest_margin:.3g} > {SEPARATION_MARGIN:g} (the preferences are "
                         f"separable): use l2 > 0 (got l2 = {l2})")
    return BTFit(psi, gradient_norm, iterations)


def target_moment(features, psi, l2: float = DEFAULT_L2) -> np.ndarray:
    """``b [d] = Phi sigma(Phi^T psi) + l2 psi``: every theta with ``Phi theta = b`` has ``psi`` as its
    Bradley-Terry fit (with the same ``l2``)."""
    features = check_features(features, "features", warn_rank_deficient=False)
    psi = _check_moment(psi, features.shape[0], "psi")
    l2 = _check_non_negative(l2, "l2")
    margins = features.T @ psi
    return features @ (0.5 * (1.0 + np.tanh(0.5 * margins))) + l2 * psi


# ----------------------------------------------------------------------------- the minimum-cost LP


def flip_cost(theta, theta_original) -> float:
    """``sum_i |theta_i - theta_original_i|``: flipped pairs (fully flipped pairs count one each)."""
    return float(np.sum(np.abs(np.asarray(theta, np.float64) - np.asarray(theta_original, np.float64))))


def count_fractional(theta, atol: float = FRACTIONAL_ATOL) -> int:
    """Number of entries of ``theta`` further than ``atol`` from both 0 and 1."""
    theta = np.asarray(theta, np.float64)
    return int(np.sum((theta > atol) & (theta < 1.0 - atol)))


class FlipSolution(NamedTuple):
    """The cheapest theta reaching a target moment.

    Attributes:
      theta: ``[n]`` the optimal preference proportions (a vertex of the LP, polished; see
        :func:`minimum_cost_flips`).
      cost: ``sum |theta - theta_original|`` in pairs (``cost / n`` is the fraction of pairs).
      fractional_pairs: entries strictly between 0 and 1 (at most ``rank(Phi)`` at a vertex).
      fully_flipped_pairs: entries moved by ``1 - FRACTIONAL_ATOL`` or more.
      multipliers: ``lambda [d]``, the LP's dual variables (``d cost / d target_moment``).
      dual_bound: :func:`dual_lower_bound` at ``multipliers``: a lower bound on the cost of ANY theta that
        reaches the target, equal to ``cost`` up to solver tolerance (strong duality).
      moment_residual: ``max_j |(Phi theta - target)_j|`` (in excess of ``moment_tolerance``, if any).
      target: ``[d]`` the target moment ``b``.
    """

    theta: np.ndarray
    cost: float
    fractional_pairs: int
    fully_flipped_pairs: int
    multipliers: np.ndarray
    dual_bound: float
    moment_residual: float
    target: np.ndarray


def dual_lower_bound(features, theta_original, target, multipliers, moment_tolerance: float = 0.0) -> float:
    """The LP dual function at ``multipliers`` (``lambda [d]``): a lower bound on ``sum |theta -
    theta_original|`` over every theta in ``[0, 1]^n`` with ``|Phi theta - target|_inf <= moment_tolerance``
    (weak duality; any lambda is dual feasible)::

        lambda . c - sum_i [(1 - theta_o,i) max(0, a_i - 1) + theta_o,i max(0, -a_i - 1)] - tol |lambda|_1

    with ``c = target - Phi theta_original`` and ``a = Phi^T lambda``. Its maximum over lambda is the LP
    optimum.
    """
    features = check_features(features, "features", warn_rank_deficient=False)
    theta_original = check_proportions(theta_original, features.shape[1], "theta_original")
    target = _check_moment(target, features.shape[0], "target")
    multipliers = _check_moment(multipliers, features.shape[0], "multipliers")
    moment_tolerance = _check_non_negative(moment_tolerance, "moment_tolerance")
    residual = target - features @ theta_original
    a = features.T @ multipliers
    penalty = (1.0 - theta_original) * np.maximum(0.0, a - 1.0) + theta_original * np.maximum(0.0, -a - 1.0)
    return float(multipliers @ residual - penalty.sum() - moment_tolerance * np.abs(multipliers).sum())


def _flip_columns(features, theta_original):
    """The split LP's variables: ``up`` (theta rises, pairs with theta_o < 1) then ``down`` (theta falls,
    pairs with theta_o > 0). Returns (up_index, down_index, columns [d, k], upper bounds [k])."""
    up = np.flatnonzero(theta_original < 1.0)
    down = np.flatnonzero(theta_original > 0.0)
    columns = np.concatenate([features[:, up], -features[:, down]], axis=1)
    upper = np.concatenate([1.0 - theta_original[up], theta_original[down]])
    return up, down, columns, upper


def _theta_from_split(theta_original, up, down, x):
    theta = theta_original.copy()
    theta[up] += x[:up.size]
    theta[down] -= x[up.size:]
    return np.clip(theta, 0.0, 1.0)


def _polish_vertex(features, target, theta):
    """Snap near-integral entries to {0, 1} and re-solve the fractional ones from ``Phi theta = target``
    (least squares on those columns: exact at a vertex, whose fractional columns are independent). Keeps the
    input when that does not lower the residual or leaves the box."""
    snapped = np.where(theta <= FRACTIONAL_ATOL, 0.0, np.where(theta >= 1.0 - FRACTIONAL_ATOL, 1.0, theta))
    fractional = np.flatnonzero((snapped > 0.0) & (snapped < 1.0))
    rest = snapped.copy()
    rest[fractional] = 0.0
    if fractional.size:
        solved, *_ = np.linalg.lstsq(features[:, fractional], target - features @ rest, rcond=None)
        if np.all(solved >= -1e-12) and np.all(solved <= 1.0 + 1e-12):
            rest[fractional] = np.clip(solved, 0.0, 1.0)
        else:
            rest[fractional] = snapped[fractional]
    before = np.abs(features @ theta - target).max()
    after = np.abs(features @ rest - target).max()
    return rest if after <= before else theta


def _infeasibility_certificate(features, target):
    """Phase-one LP ``min |s|_1`` s.t. ``Phi theta + s = target``, ``theta in [0, 1]^n``: its dual ``lambda``
    in ``[-1, 1]^d`` separates ``target`` from the reachable set. Returns (distance, lambda, gap)."""
    dim, num_pairs = features.shape
    eye = np.eye(dim)
    cost = np.concatenate([np.zeros(num_pairs), np.ones(2 * dim)])
    a_eq = np.concatenate([features, eye, -eye], axis=1)
    bounds = [(0.0, 1.0)] * num_pairs + [(0.0, None)] * (2 * dim)
    phase_one = solve_lp(cost, A_eq=a_eq, b_eq=target, bounds=bounds, name="phase-one (reachability) LP")
    multipliers = phase_one.eq_duals
    gap = float(multipliers @ target - np.maximum(0.0, features.T @ multipliers).sum())
    return phase_one.value, multipliers, gap


def _row_basis(features):
    """An orthonormal basis ``[d, r]`` of the column space of ``features [d, k]`` (rank as :func:`feature_rank`),
    and the largest singular value."""
    eigenvalues, eigenvectors = np.linalg.eigh(features @ features.T)
    singular = np.sqrt(np.clip(eigenvalues, 0.0, None))
    largest = float(singular.max()) if singular.size else 0.0
    keep = singular > largest * max(1e-7, 1e-10 * max(features.shape))
    return eigenvectors[:, keep], largest


def _solve_split_lp(features, theta_original, residual, moment_tolerance, method):
    """The split LP over the given pairs (``features [d, k]``, ``theta_original [k]``): returns their optimal
    theta and the multipliers ``lambda [d]`` (``d cost / d residual``). Raises :class:`LPError`.

    Two exact reductions keep HiGHS's problem small: identical pairs (same column, same theta_original) become
    one variable whose bound is their number (the solution fills them one after another, so at most one per group
    is fractional), and with an equality target a rank-deficient ``Phi`` is replaced by its ``rank`` independent
    row combinations (a residual outside its column space is unreachable: status 2)."""
    groups, first, inverse, counts = np.unique(np.concatenate([features, theta_original[None]]), axis=1,
                                               return_index=True, return_inverse=True, return_counts=True)
    del groups
    inverse = inverse.reshape(-1)
    unique_features, unique_theta = features[:, first], theta_original[first]
    up, down, columns, upper = _flip_columns(unique_features, unique_theta)
    upper = upper * np.concatenate([counts[up], counts[down]])
    cost = np.ones(columns.shape[1])
    bounds = list(zip(np.zeros_like(upper), upper))
    dim = features.shape[0]
    if moment_tolerance > 0:
        solution = solve_lp(cost, A_ub=np.concatenate([columns, -columns]),
                            b_ub=np.concatenate([residual + moment_tolerance, moment_tolerance - residual]),
                            bounds=bounds, method=method, name="minimum-cost flipping LP")
        multipliers = solution.ineq_duals[:dim] - solution.ineq_duals[dim:]
    else:
        basis, largest = _row_basis(columns)
        if basis.shape[1] < dim:
            outside = residual - basis @ (basis.T @ residual)
            if np.linalg.norm(outside) > 1e-8 * (np.linalg.norm(residual) + largest):
                raise LPError("the minimum-cost flipping LP is infeasible: the target lies outside the span of "
                              "Phi", 2)
            solution = solve_lp(cost, A_eq=basis.T @ columns, b_eq=basis.T @ residual, bounds=bounds,
                                method=method, name="minimum-cost flipping LP")
            multipliers = basis @ solution.eq_duals
        else:
            solution = solve_lp(cost, A_eq=columns, b_eq=residual, bounds=bounds, method=method,
                                name="minimum-cost flipping LP")
            multipliers = solution.eq_duals
    # Spread each group's total change over its pairs in index order: full moves first, then one remainder.
    change = np.zeros(first.size)
    change[up] += solution.x[:up.size]
    change[down] -= solution.x[up.size:]
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.searchsorted(sorted_groups, np.arange(first.size))
    rank_in_group = np.arange(order.size) - starts[sorted_groups]
    room = np.where(change[sorted_groups] >= 0, 1.0 - theta_original[order], theta_original[order])
    # every pair of a group has the same room (same theta_original), so the k-th one moves min(room, rest)
    moved = np.clip(np.abs(change[sorted_groups]) - rank_in_group * room, 0.0, room)
    theta = theta_original.copy()
    theta[order] += np.sign(change[sorted_groups]) * moved
    return np.clip(theta, 0.0, 1.0), multipliers


def _priced_out(features, theta_original, multipliers, working):
    """Pairs outside ``working`` whose reduced cost is negative (they would lower the cost if allowed to
    move), most negative first: moving theta up costs ``1 - a_i``, down ``1 + a_i``, with ``a = Phi^T
    lambda``."""
    a = features.T @ multipliers
    raise_cost = np.where(theta_original < 1.0, 1.0 - a, np.inf)
    lower_cost = np.where(theta_original > 0.0, 1.0 + a, np.inf)
    reduced = np.minimum(raise_cost, lower_cost)
    reduced[working] = np.inf
    violating = np.flatnonzero(reduced < -COLUMN_GENERATION_TOLERANCE)
    return violating[np.argsort(reduced[violating], kind="stable")]


def _column_generation(features, theta_original, residual, moment_tolerance, method, initial_pairs):
    """Solve the LP on a working set of pairs (the rest held at theta_original), add the pairs the multipliers
    price out, repeat until none does: then the working-set optimum is the full LP's (its reduced costs
    certify it). Returns (theta [n], lambda) or None when a working set is infeasible or the rounds run
    out."""
    dim, n = features.shape
    working = np.zeros(n, bool)
    working[np.asarray(initial_pairs, np.int64)] = True
    batch = max(500, 10 * dim)
    for _ in range(COLUMN_GENERATION_ROUNDS):
        pairs = np.flatnonzero(working)
        try:
            theta_pairs, multipliers = _solve_split_lp(features[:, pairs], theta_original[pairs], residual,
                                                       moment_tolerance, method)
        except LPError:
            return None
        entering = _priced_out(features, theta_original, multipliers, working)
        if entering.size == 0:
            theta = theta_original.copy()
            theta[pairs] = theta_pairs
            return theta, multipliers
        working[entering[:batch]] = True
    return None


def minimum_cost_flips(features, theta_original, target, moment_tolerance: float = 0.0,
                       method: str = "highs-ds", polish: bool = True, initial_pairs=None) -> FlipSolution:
    """The minimum-cost LP: the cheapest theta in ``[0, 1]^n`` with ``Phi theta = target``.

    Solved through :func:`jaxsafe.exact.lp.solve_lp` (HiGHS) on the split variables ``theta = theta_original +
    up - down`` (``0 <= up <= 1 - theta_original``, ``0 <= down <= theta_original``, cost ``sum(up + down)``).

    Args:
      features: ``Phi [d, n]``.
      theta_original: ``[n]`` the clean proportions (1 for a clean data set).
      target: ``b [d]`` the moment to reach (:func:`target_moment`, or ``Phi @ theta_attack``).
      moment_tolerance: ``>= 0``; when positive the equality becomes ``|Phi theta - b|_inf <=
      moment_tolerance``
        (the LP relaxation of :func:`minimum_cost_flips_milp`).
      method: a HiGHS method of :func:`~jaxsafe.exact.lp.solve_lp`; the default dual simplex returns a vertex.
      polish: re-solve the fractional entries of the vertex from the equality in float64 (tightens
        ``Phi theta = b`` from the solver's 1e-7 feasibility tolerance to rounding level); only with
        ``moment_tolerance == 0``.
      initial_pairs: optional pair indices from which a feasible theta can be built (e.g. the pairs an attack
        changed). Then the LP is solved by column generation: on a working set started from these pairs,
        adding every pair of negative reduced cost until there is none, which proves the working-set optimum
        optimal for all ``n`` pairs (the same optimum, much faster for large ``n``). Falls back to the full LP
        if a working set is infeasible.

    Returns:
      :class:`FlipSolution`. Raises :class:`InfeasibleTargetError` (a ``ValueError``) with a dual certificate
      when no theta in the box reaches the target.
    """
    features = check_features(features, "Phi")
    theta_original = check_proportions(theta_original, features.shape[1], "theta_original")
    target = _check_moment(target, features.shape[0], "target")
    moment_tolerance = _check_non_negative(moment_tolerance, "moment_tolerance")
    residual = target - features @ theta_original
    solved = None
    if initial_pairs is not None:
        initial_pairs = np.asarray(initial_pairs, np.int64)
        if initial_pairs.ndim != 1 or np.any((initial_pairs < 0) | (initial_pairs >= features.shape[1])):
            raise ValueError(f"initial_pairs must be a vector of pair indices in [0, {features.shape[1]}), "
                             f"got {initial_pairs!r:.200}")
        solved = _column_generation(features, theta_original, residual, moment_tolerance, method,
                                    initial_pairs)
    if solved is None:
        try:
            solved = _solve_split_lp(features, theta_original, residual, moment_tolerance, method)
        except LPError as err:
            if err.status != 2:
                raise ValueError(f"the minimum-cost flipping LP could not be solved: {err}") from None
            distance, certificate, gap = _infeasibility_certificate(features, target)
            if distance <= moment_tolerance:
                raise ValueError(f"the minimum-cost flipping LP could not be solved: {err}") from None
            raise InfeasibleTargetError(
                f"target is unreachable: no theta in [0, 1]^n has Phi theta = target (the closest reaches "
                f"|Phi theta - target|_1 = {distance:.6g}); dual certificate lambda (error.certificate) "
                f"gives lambda . target - sum_i max(0, (Phi^T lambda)_i) = {gap:.6g} > 0", certificate, gap,
                distance) from None
    theta, multipliers = solved
    if polish and moment_tolerance == 0:
        theta = _polish_vertex(features, target, theta)
    excess = np.maximum(np.abs(features @ theta - target) - moment_tolerance, 0.0)
    change = np.abs(theta - theta_original)
    return FlipSolution(
        theta=theta, cost=float(change.sum()), fractional_pairs=count_fractional(theta),
        fully_flipped_pairs=int(np.sum(change >= 1.0 - FRACTIONAL_ATOL)), multipliers=multipliers,
        dual_bound=dual_lower_bound(features, theta_original, target, multipliers, moment_tolerance),
        moment_residual=float(excess.max()), target=target)


def postprocess_attack(features, theta_original, theta_attack, column_generation: bool | None = None,
                       **kwargs) -> FlipSolution:
    """The cheapest theta with the same moment (hence the same Bradley-Terry reward model) as an existing
    attack ``theta_attack [n]``: :func:`minimum_cost_flips` with ``target = Phi theta_attack``. Its cost is at
    most ``flip_cost(theta_attack, theta_original)``. ``column_generation`` starts the column generation of
    :func:`minimum_cost_flips` from the pairs the attack changed (a feasible start); by default it is used when
    ``n >= max(5000, 50 d)`` (with fewer pairs per feature the working set grows over many rounds to most of the
    pairs, and the full LP is faster)."""
    features = check_features(features, "Phi")
    theta_original = check_proportions(theta_original, features.shape[1], "theta_original")
    theta_attack = check_proportions(theta_attack, features.shape[1], "theta_attack")
    if column_generation is None:
        column_generation = features.shape[1] >= max(5000, 50 * features.shape[0])
    if column_generation:
        kwargs["initial_pairs"] = np.flatnonzero(theta_attack != theta_original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)  # already warned above
        return minimum_cost_flips(features, theta_original, features @ theta_attack, **kwargs)


def target_reward_flips(features, theta_original, psi_target, l2: float = DEFAULT_L2,
                        **kwargs) -> FlipSolution:
    """The cheapest theta whose Bradley-Terry fit (ridge ``l2``) is ``psi_target [d]``:
    :func:`minimum_cost_flips` with ``target = target_moment(Phi, psi_target, l2)``."""
    features = check_features(features, "Phi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        return minimum_cost_flips(features, theta_original, target_moment(features, psi_target, l2), **kwargs)


def solve_dual_lp(features, theta_original, target, moment_tolerance: float = 0.0):
    """The LP dual solved on its own (a check of strong duality): maximise :func:`dual_lower_bound` over
    lambda, written as an LP in ``(lambda [d], p [k], q [d])`` with ``p >= columns^T lambda - 1``, ``p >= 0``
    and ``q >= |lambda|``. Returns ``(value, lambda)``."""
    features = check_features(features, "Phi", warn_rank_deficient=False)
    theta_original = check_proportions(theta_original, features.shape[1], "theta_original")
    target = _check_moment(target, features.shape[0], "target")
    moment_tolerance = _check_non_negative(moment_tolerance, "moment_tolerance")
    _, _, columns, upper = _flip_columns(features, theta_original)
    dim, width = columns.shape
    residual = target - features @ theta_original
    # Variables [lambda (free), p (>= 0), q (>= 0)]; maximise residual . lambda - upper . p - tol * sum(q).
    objective = np.concatenate([residual, -upper, -moment_tolerance * np.ones(dim)])
    eye = np.eye(dim)
    rows = [np.concatenate([columns.T, -np.eye(width), np.zeros((width, dim))], axis=1),   # a - p <= 1
            np.concatenate([eye, np.zeros((dim, width)), -eye], axis=1),                # lambda - q <= 0
            np.concatenate([-eye, np.zeros((dim, width)), -eye], axis=1)]               # -lambda - q <= 0
    b_ub = np.concatenate([np.ones(width), np.zeros(2 * dim)])
    bounds = [(None, None)] * dim + [(0.0, None)] * (width + dim)
    solution = solve_lp(objective, A_ub=np.concatenate(rows), b_ub=b_ub, bounds=bounds, maximize=True,
                        name="dual of the minimum-cost flipping LP")
    return solution.value, solution.x[:dim]


# ----------------------------------------------------------------------------- duplication granularity


def _check_duplicates(n_duplicates) -> int:
    if not (isinstance(n_duplicates, (int, np.integer)) and not isinstance(n_duplicates, bool)
            and n_duplicates >= 1):
        raise ValueError(f"n_duplicates must be an integer >= 1 (copies per pair), got {n_duplicates!r}")
    return int(n_duplicates)


def round_to_duplicates(theta, n_duplicates: int) -> np.ndarray:
    """``round(theta * m) / m``: the proportions a data set with ``m = n_duplicates`` copies per pair can hold
    (``round(theta * m)`` copies keep their orientation, the rest are flipped)."""
    m = _check_duplicates(n_duplicates)
    theta = _proportion_vector(theta, "theta")
    return np.round(theta * m) / m


class MILPSolution(NamedTuple):
    """The cheapest theta on the grid ``{0, 1/m, ..., 1}`` with ``|Phi theta - target|_inf <=
    moment_tolerance``.

    ``theta [n]``, ``cost`` (pairs), ``flipped_copies`` (``cost * m``, an integer), ``moment_residual``
    (``|Phi theta - target|_inf``), ``optimal`` (False when the time limit stopped HiGHS first),
    ``lower_bound`` (a certified lower bound on the optimum: HiGHS's dual bound, or the LP relaxation),
    ``relaxation_cost`` (the LP relaxation's optimum), ``fixed_pairs`` (pairs fixed by reduced costs before
    branching), ``message``."""

    theta: np.ndarray
    cost: float
    flipped_copies: int
    moment_residual: float
    optimal: bool
    lower_bound: float
    relaxation_cost: float
    fixed_pairs: int
    message: str


def minimum_cost_flips_milp(features, theta_original, target, n_duplicates: int, moment_tolerance: float,
                            time_limit: float = 60.0, incumbent=None) -> MILPSolution:
    """The duplication-granularity version of :func:`minimum_cost_flips`, an integer programme.

    Each pair has ``m = n_duplicates`` copies, so ``theta = theta_original + (up - down) / m`` with integer
    ``0 <= up <= m (1 - theta_original)`` and ``0 <= down <= m theta_original``; minimise ``sum(up + down) /
    m`` subject to ``|Phi theta - target|_inf <= moment_tolerance``. Generic real features reach a target
    exactly on the grid only at the attack itself, so a tolerance is needed; ``|Phi
    round_to_duplicates(lp.theta) - target|_inf`` makes the rounded LP solution feasible. Solved by
    ``scipy.optimize.milp`` (HiGHS branch and bound) after the LP relaxation; its cost is at least the
    relaxation's.

    ``incumbent`` (optional) is a known feasible grid theta, e.g. the rounded LP solution. With it, every
    variable whose LP reduced cost exceeds ``m * (incumbent cost - relaxation cost)`` is fixed at its
    relaxation bound before branching (no solution at least as cheap as the incumbent moves it: exact), and
    the incumbent is returned when HiGHS stops at the time limit with nothing cheaper.

    Raises ``ValueError`` naming ``moment_tolerance`` when no grid point is within the tolerance, naming
    ``theta_original`` unless it lies on the grid, and naming ``incumbent`` unless it is a feasible grid
    point.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    features = check_features(features, "Phi")
    theta_original = check_proportions(theta_original, features.shape[1], "theta_original")
    target = _check_moment(target, features.shape[0], "target")
    m = _check_duplicates(n_duplicates)
    moment_tolerance = _check_non_negative(moment_tolerance, "moment_tolerance")
    if not (np.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a finite number of seconds > 0, got {time_limit}")

    def on_grid(theta):
        return np.all(np.abs(theta * m - np.round(theta * m)) <= 1e-9)

    if not on_grid(theta_original):
        raise ValueError(f"theta_original must lie on the grid {{0, 1/{m}, ..., 1}} of n_duplicates = {m} "
                         f"copies")
    if incumbent is not None:
        incumbent = check_proportions(incumbent, features.shape[1], "incumbent")
        if not on_grid(incumbent) or np.abs(features @ incumbent - target).max() > moment_tolerance + 1e-9:
            raise ValueError(f"incumbent must be a grid point (multiples of 1/{m}) within moment_tolerance = "
                             f"{moment_tolerance:g} of the target")
    up, down, columns, upper = _flip_columns(features, theta_original)
    residual = target - features @ theta_original
    width = columns.shape[1]
    counts_upper = np.round(upper * m)
    lower_counts, upper_counts = np.zeros(width), counts_upper.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankDeficientWarning)
        try:
            relaxation = minimum_cost_flips(features, theta_original, target, moment_tolerance)
        except InfeasibleTargetError:
            relaxation = None
    if relaxation is None:
        raise ValueError(f"no theta in [0, 1]^n (so none on the grid of n_duplicates = {m}) is within "
                         f"moment_tolerance = {moment_tolerance:g} of the target: raise moment_tolerance")
    fixed = 0
    if incumbent is not None:
        slack = flip_cost(incumbent, theta_original) - relaxation.cost
        threshold = m * slack + 1e-7 * (1.0 + m * abs(slack))
        reduced = 1.0 - columns.T @ relaxation.multipliers
        at_zero, at_upper = reduced > threshold, reduced < -threshold
        upper_counts[at_zero] = 0.0
        lower_counts[at_upper] = counts_upper[at_upper]
        fixed = int(at_zero.sum() + at_upper.sum())
    constraint = LinearConstraint(columns / m, residual - moment_tolerance, residual + moment_tolerance)
    result = milp(np.full(width, 1.0 / m), integrality=np.ones(width),
                  bounds=Bounds(lower_counts, upper_counts), constraints=[constraint],
                  options={"time_limit": float(time_limit)})
    bound = getattr(result, "mip_dual_bound", None)
    lower_bound = max(relaxation.cost, float(bound) if bound is not None and np.isfinite(bound) else -np.inf)
    theta = None
    if result.x is not None:
        counts = np.round(result.x)
        theta = _theta_from_split(theta_original, up, down, counts / m)
    if incumbent is not None and (theta is None or flip_cost(theta, theta_original)
                                  > flip_cost(incumbent, theta_original) + 1e-12):
        theta = incumbent
    if theta is None:
        if result.status == 2:
            raise ValueError(f"no theta on the grid of n_duplicates = {m} copies per pair is within "
                             f"moment_tolerance = {moment_tolerance:g} of the target: raise moment_tolerance "
                             f"(e.g. to the residual of the rounded LP solution)")
        raise ValueError(f"the duplication MILP found no feasible point ({result.message}); raise time_limit "
                         f"(got {time_limit:g} s), moment_tolerance, or pass an incumbent")
    cost = flip_cost(theta, theta_original)
    return MILPSolution(theta=theta, cost=cost, flipped_copies=int(round(cost * m)),
                        moment_residual=float(np.abs(features @ theta - target).max()),
                        optimal=bool(result.status == 0), lower_bound=lower_bound,
                        relaxation_cost=relaxation.cost, fixed_pairs=fixed, message=str(result.message))


# ----------------------------------------------------------------------------- baseline attacks


class PoisonAttack(NamedTuple):
    """An attack's output: ``theta [n]`` (selected pairs flipped, ``1 - theta_original``), ``flipped [k]`` the
    indices flipped, ``cost`` (``flip_cost``, pairs)."""

    theta: np.ndarray
    flipped: np.ndarray
    cost: float


def flip_candidates(theta_original, length_difference) -> np.ndarray:
    """``[n]`` bool: pairs whose flip moves preference toward the LONGER response (the length attack's
    candidates): the preferred side (``theta_original > 1/2`` means chosen) is strictly shorter.
    ``length_difference [n] = len(rejected) - len(chosen)``."""
    theta_original = np.asarray(theta_original, np.float64)
    length_difference = np.asarray(length_difference, np.float64)
    if length_difference.shape != theta_original.shape:
        raise ValueError(f"length_difference must have shape {theta_original.shape} (one per pair), got "
                         f"{length_difference.shape}")
    if not np.all(np.isfinite(length_difference)):
        raise ValueError("length_difference must be finite")
    return (theta_original - 0.5) * length_difference > 0


def _flip(theta_original, flipped):
    theta = theta_original.copy()
    theta[flipped] = 1.0 - theta_original[flipped]
    return PoisonAttack(theta, np.asarray(flipped, np.int64), flip_cost(theta, theta_original))


def _check_ratio(value, name):
    value = float(value)
    if not (np.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1] (a fraction of the data set), got {value}")
    return value


def rlhfpoison_flips(theta_original, length_difference, reward_margin, quality_filter_ratio: float = 0.25,
                     disparity_ratio: float = 0.05, largest_disparity: bool = True) -> PoisonAttack:
    """RLHFPoison's selection (Wang et al.) for the length target, as flips.

    1. Candidates: :func:`flip_candidates` (the preferred response is the shorter one).
    2. Quality filter: keep the ``round(quality_filter_ratio * n)`` candidates (all, if fewer) whose original
       reward model is least sure, the smallest ``|reward_margin|`` (``reward_margin [n] = Phi^T
       psi_original``).
    3. Maximum-disparity selection: of those, flip the ``round(disparity_ratio * n)`` with the LARGEST
       ``|length_difference|``, as the RLHFPoison paper says. ``largest_disparity=False`` keeps the smallest
       instead, as the released PoisoningCostMinimization code does (it sorts ascending).

    Ties keep index order (stable sorts). Returns :class:`PoisonAttack`.
    """
    theta_original = _proportion_vector(theta_original, "theta_original")
    n = theta_original.shape[0]
    quality_filter_ratio = _check_ratio(quality_filter_ratio, "quality_filter_ratio")
    disparity_ratio = _check_ratio(disparity_ratio, "disparity_ratio")
    candidates = np.flatnonzero(flip_candidates(theta_original, length_difference))
    reward_margin = np.asarray(reward_margin, np.float64)
    if reward_margin.shape != (n,) or not np.all(np.isfinite(reward_margin)):
        raise ValueError(f"reward_margin must be a finite vector of shape ({n},), got shape "
                         f"{reward_margin.shape}")
    n_quality = min(candidates.size, int(round(quality_filter_ratio * n)))
    kept = candidates[np.argsort(np.abs(reward_margin[candidates]), kind="stable")[:n_quality]]
    disparity = np.abs(np.asarray(length_difference, np.float64)[kept])
    order = np.argsort(-disparity if largest_disparity else disparity, kind="stable")
    n_selected = min(kept.size, int(round(disparity_ratio * n)))
    return _flip(theta_original, np.sort(kept[order[:n_selected]]))


def random_flips(key: jax.Array, theta_original, candidate_mask, n_flips: int) -> PoisonAttack:
    """Flip ``n_flips`` pairs drawn uniformly without replacement from ``candidate_mask [n]`` (bool; the
    target pairs, e.g. :func:`flip_candidates`). ``key`` is a raw ``jax.random.PRNGKey``."""
    theta_original = _proportion_vector(theta_original, "theta_original")
    candidate_mask = np.asarray(candidate_mask, bool)
    if candidate_mask.shape != theta_original.shape:
        raise ValueError(f"candidate_mask must have shape {theta_original.shape}, got {candidate_mask.shape}")
    candidates = np.flatnonzero(candidate_mask)
    if not (isinstance(n_flips, (int, np.integer)) and 0 <= n_flips <= candidates.size):
        raise ValueError(f"n_flips must be an integer in [0, {candidates.size}] (the number of candidate "
                         f"pairs), got {n_flips!r}")
    chosen = np.asarray(jax.random.permutation(key, candidates.size))[:n_flips]
    return _flip(theta_original, np.sort(candidates[chosen]))


def longer_preferred_rate(features, psi, length_difference) -> float:
    """Mean over pairs of unequal length of ``P_psi(longer response beats shorter)`` under the Bradley-Terry
    model ``psi [d]``: the downstream length preference a reward model (or a log-linear DPO policy) learnt."""
    features = np.asarray(features, np.float64)
    length_difference = np.asarray(length_difference, np.float64)
    margins = features.T @ np.asarray(psi, np.float64)
    chosen_wins = 0.5 * (1.0 + np.tanh(0.5 * margins))
    longer_wins = np.where(length_difference < 0, chosen_wins, 1.0 - chosen_wins)
    unequal = length_difference != 0
    return float(longer_wins[unequal].mean()) if np.any(unequal) else float("nan")


# ----------------------------------------------------------------------------- language-model features


@functools.partial(jax.jit, static_argnums=0)
def _last_token_features(graphdef, params, tokens, attention_mask):
    hidden = model_lib.hidden_states(graphdef, params, tokens, attention_mask=attention_mask)
    return model_lib.last_token_hidden(hidden, attention_mask)


@functools.partial(jax.jit, static_argnums=0)
def _trunk_outputs(graphdef, params, tokens, attention_mask, head_tokens):
    hidden = model_lib.hidden_states(graphdef, params, tokens, attention_mask=attention_mask)
    logits = model_lib.logits(graphdef, params, tokens, attention_mask=attention_mask)
    return hidden, logits[..., head_tokens]


def _batched(fn, arrays, batch_size: int):
    """Apply ``fn(*batch)`` over row batches of ``arrays`` (the last batch padded with row 0, then cut)."""
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rows = arrays[0].shape[0]
    outputs = []
    for start in range(0, rows, batch_size):
        chunk = [np.asarray(a[start:start + batch_size]) for a in arrays]
        short = batch_size - chunk[0].shape[0]
        if short:
            chunk = [np.concatenate([c, np.repeat(c[:1], short, axis=0)]) for c in chunk]
        out = fn(*[jnp.asarray(c) for c in chunk])
        outputs.append(jax.tree.map(lambda x: np.asarray(x)[:batch_size - short], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def sequence_features(graphdef, params, tokens, attention_mask, batch_size: int = 64) -> np.ndarray:
    """``phi [N, D]`` (float32): the final (normed) hidden state at the last real token of each sequence
    ``tokens [N, T]`` (prompt + response) of a decoder ``(graphdef, params)`` from :mod:`jaxsafe.llm.model`,
    the input of a score head. Jitted, in batches of ``batch_size`` rows."""
    tokens, attention_mask = np.asarray(tokens), np.asarray(attention_mask, bool)
    if tokens.ndim != 2 or attention_mask.shape != tokens.shape:
        raise ValueError(f"tokens and attention_mask must both be [N, T], got {tokens.shape} and "
                         f"{attention_mask.shape}")
    if not np.all(attention_mask.any(axis=1)):
        raise ValueError("attention_mask must mark at least one real token in every row")
    return _batched(lambda t, m: _last_token_features(graphdef, params, t, m), (tokens, attention_mask),
                    batch_size)


def preference_features(graphdef, params, batch: losses.PreferenceBatch, batch_size: int = 64) -> np.ndarray:
    """``Phi [D, n]``: :func:`sequence_features` of the chosen minus those of the rejected sequences."""
    chosen = sequence_features(graphdef, params, batch.chosen_tokens, batch.chosen_attention_mask, batch_size)
    rejected = sequence_features(graphdef, params, batch.rejected_tokens, batch.rejected_attention_mask,
                                 batch_size)
    return (chosen - rejected).T


def loglinear_policy_logprobs(reference_logprobs, features, psi, beta: float) -> jax.Array:
    """``log pi [P, R]`` of the log-linear policy ``pi(y|x) ∝ pi_ref(y|x) exp(psi . phi(x, y) / beta)`` over
    an enumerated response space: ``reference_logprobs [P, R]``, ``features [P, R, D]``, ``psi [D]``. DPO on
    this policy class IS Bradley-Terry in ``psi`` (the implicit reward difference is ``psi . Phi_i``), so it
    is the exact downstream policy of a data set whose Bradley-Terry fit is ``psi``."""
    scores = jnp.asarray(reference_logprobs) + jnp.asarray(features) @ jnp.asarray(psi) / beta
    return jax.nn.log_softmax(scores, axis=-1)


# ----------------------------------------------------------------------------- last-layer DPO


class HeadTable(NamedTuple):
    """Frozen-trunk outputs for ``S`` sequences, shifted so position ``t`` predicts token ``t + 1``.

    hidden ``[S, T-1, D]`` (final-normed hidden states), reference_logits ``[S, T-1, K]`` (the model's logits
    of the ``K`` head tokens), target ``[S, T-1]`` (index into the head tokens of the next token; 0 where
    unscored), scored ``[S, T-1]`` (bool: the next token is a response token).
    """

    hidden: jax.Array
    reference_logits: jax.Array
    target: jax.Array
    scored: jax.Array


def trunk_outputs(graphdef, params, tokens, attention_mask, head_tokens, batch_size: int = 64):
    """One pass of a decoder over ``tokens [S, T]``: ``(hidden [S, T, D], head_logits [S, T, K])``, the
    final-normed hidden states and the logits of the ``head_tokens [K]`` (float32 numpy, in batches)."""
    tokens, attention_mask = np.asarray(tokens), np.asarray(attention_mask, bool)
    if tokens.ndim != 2 or attention_mask.shape != tokens.shape:
        raise ValueError(f"tokens and attention_mask must both be [S, T], got {tokens.shape} and "
                         f"{attention_mask.shape}")
    head_tokens = jnp.asarray(np.asarray(head_tokens, np.int32))
    return _batched(lambda t, m: _trunk_outputs(graphdef, params, t, m, head_tokens),
                    (tokens, attention_mask), batch_size)


def head_table(tokens, response_mask, head_tokens, hidden, head_logits) -> HeadTable:
    """The :class:`HeadTable` of sequences ``tokens [S, T]`` from their :func:`trunk_outputs` ``hidden [S, T,
    D]`` and ``head_logits [S, T, K]``, for a policy restricted to ``head_tokens [K]`` (every token marked by
    ``response_mask [S, T]`` must be one of them)."""
    tokens, response_mask = np.asarray(tokens), np.asarray(response_mask, bool)
    head_tokens = np.asarray(head_tokens, np.int32)
    if response_mask.shape != tokens.shape or np.shape(hidden)[:2] != tokens.shape \
            or np.shape(head_logits) != tokens.shape + (head_tokens.size,):
        raise ValueError(f"response_mask [S, T], hidden [S, T, D] and head_logits [S, T, K] must match "
                         f"tokens {tokens.shape} and head_tokens ({head_tokens.size},), got "
                         f"{response_mask.shape}, {np.shape(hidden)} and {np.shape(head_logits)}")
    lookup = np.full(int(max(tokens.max(), head_tokens.max())) + 1, -1, np.int32)
    lookup[head_tokens] = np.arange(head_tokens.size)
    target = lookup[tokens[:, 1:]]
    scored = response_mask[:, 1:]
    if np.any(scored & (target < 0)):
        raise ValueError("response_mask marks tokens outside head_tokens; the head policy cannot score them")
    return HeadTable(jnp.asarray(hidden[:, :-1]), jnp.asarray(head_logits[:, :-1]),
                     jnp.asarray(np.maximum(target, 0)), jnp.asarray(scored))


def _response_logprobs(logits, table: HeadTable) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    per_token = jnp.take_along_axis(log_probs, table.target[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(table.scored, per_token, 0.0), axis=-1)


def head_sequence_logprobs(delta_head, table: HeadTable) -> jax.Array:
    """``log pi(response | prompt) [S]`` with the trained head: logits ``reference_logits + hidden @ delta_head``
    (``delta_head [D, K]``; zero is the reference model). Training ``delta_head`` is training the lm_head columns
    of the head tokens from their initial values (logits are linear in the head), the trunk frozen."""
    return _response_logprobs(table.reference_logits + table.hidden @ delta_head, table)


def reference_sequence_logprobs(table: HeadTable) -> jax.Array:
    """``log pi_ref(response | prompt) [S]``: :func:`head_sequence_logprobs` at ``delta_head = 0``, computed from
    the reference logits alone. (Under ``jit`` on CPU, jaxlib 0.10.2, ``hidden @ zeros`` with a constant zero
    head of width 768 came out wrong, NaN included; this path has no such product.)"""
    return _response_logprobs(table.reference_logits, table)


def last_layer_dpo_loss(delta_head, table: HeadTable, chosen_index, rejected_index, theta, beta) -> jax.Array:
    """Mean DPO loss over pairs ``(chosen_index [n], rejected_index [n])`` into the table with fractional
    labels ``theta [n]``: ``theta_i * DPO(chosen, rejected) + (1 - theta_i) * DPO(rejected, chosen)``, i.e.
    the full-batch loss of the data set duplicated ``m`` times when ``theta`` is on the ``1/m`` grid (TRL's
    DPO with per-pair label smoothing ``1 - theta``)."""
    policy = head_sequence_logprobs(delta_head, table)
    reference = jax.lax.stop_gradient(reference_sequence_logprobs(table))
    out = losses.dpo_loss(policy[chosen_index], policy[rejected_index], reference[chosen_index],
                          reference[rejected_index], beta, label_smoothing=1.0 - theta)
    return out.loss


class DPOResult(NamedTuple):
    """``delta_heads [V, D, K]`` (one trained head per data set), ``losses [V, steps]`` (the loss before each
    step) and ``sequence_logprobs [V, R, S]`` (the policy at ``R`` recorded steps, the last being the end)."""

    delta_heads: jax.Array
    losses: jax.Array
    sequence_logprobs: jax.Array


@functools.partial(jax.jit, static_argnames=("steps", "record_every"))
def _train_heads(table, chosen_index, rejected_index, thetas, beta, learning_rate, steps: int,
                 record_every: int):
    optimizer = optax.adam(learning_rate)
    shape = (table.hidden.shape[-1], table.reference_logits.shape[-1])

    def train_one(theta):
        loss_and_grad = jax.value_and_grad(last_layer_dpo_loss)

        def step(carry, _):
            head, opt_state = carry
            loss, grad = loss_and_grad(head, table, chosen_index, rejected_index, theta, beta)
            updates, opt_state = optimizer.update(grad, opt_state, head)
            return (optax.apply_updates(head, updates), opt_state), (loss, head)

        head0 = jnp.zeros(shape, table.hidden.dtype)
        carry = (head0, optimizer.init(head0))
        (head, _), (loss_curve, heads) = jax.lax.scan(step, carry, None, length=steps)
        recorded = jnp.concatenate([heads[::record_every], head[None]], axis=0)
        logprobs = jax.vmap(head_sequence_logprobs, in_axes=(0, None))(recorded, table)
        return head, loss_curve, logprobs

    return jax.vmap(train_one)(thetas)


def train_last_layer_dpo(table: HeadTable, chosen_index, rejected_index, thetas, beta: float = 0.1,
                         learning_rate: float = 1e-2, steps: int = 300, record_every: int = 25) -> DPOResult:
    """Last-layer DPO (frozen trunk, trained head) on several labelings at once (vmapped).

    Full-batch Adam on :func:`last_layer_dpo_loss` for each row of ``thetas [V, n]`` (e.g. the original,
    attacked and post-processed labels), from the reference head. Records the policy every ``record_every``
    steps.
    """
    thetas = np.atleast_2d(np.asarray(thetas, np.float64))
    chosen_index, rejected_index = np.asarray(chosen_index), np.asarray(rejected_index)
    for row, theta in enumerate(thetas):
        check_proportions(theta, chosen_index.shape[0], f"thetas[{row}]")
    if rejected_index.shape != chosen_index.shape:
        raise ValueError(f"rejected_index must have shape {chosen_index.shape}, got {rejected_index.shape}")
    for name, value in (("beta", beta), ("learning_rate", learning_rate)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    for name, value in (("steps", steps), ("record_every", record_every)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    heads, loss_curves, logprobs = _train_heads(table, jnp.asarray(chosen_index), jnp.asarray(rejected_index),
                                                jnp.asarray(thetas, jnp.float32), jnp.float32(beta),
                                                jnp.float32(learning_rate), int(steps), int(record_every))
    return DPOResult(heads, loss_curves, logprobs)
