"""PLS (Wachi et al. 2025): a safe GP search over the targets ``z = (R, G)`` of a frozen return-conditioned policy.

Phase 2 of PLS deploys the offline CDT (:mod:`jaxsafe.offline.cdt`) and optimises only its conditioning targets. Two
independent GPs with RBF kernels (built with **tinygp**) model, over a discretised target set ``Z`` ``[|Z|, 2]``:

* the normalised reward ``(R_hat - R_min) / (R_max - R_min)`` of a query's episodes (mean over episodes), and
* the normalised cost ``G_hat / b`` (so the constraint is ``<= 1``).

At iteration ``N`` (1-based) with ``alpha_N = beta_scale * sqrt(2 log(|Z| N^2 pi^2 / (6 Delta)))`` (Srinivas et al.):

* the monotone cost interval ``Lambda_N = Lambda_{N-1} ∩ [mu_g ± alpha_N sigma_g]`` (posterior after ``N - 1``
  observations), ``u_N = max Lambda_N`` never increases, ``l_N = min Lambda_N`` never decreases;
  ``Lambda_0 = [0, 1]`` on the seed set ``Z_0`` and ``[0, inf)`` elsewhere (costs are non-negative);
* the safe set ``Y_N`` by one of two rules (``PLSConfig.safe_set``):
  ``"pessimistic"`` (default, the practical reading for L = 0): ``Y_N = Y_{N-1} ∪ {z : u_N(z) <= 1}``;
  ``"literal"``: the paper's ``Y_N = ∪_{z ∈ Y_{N-1}} {z' : u_N(z) + L d(z, z') <= 1}``, which for ``L = 0`` is all of
  ``Z`` as soon as one point of ``Y_{N-1}`` is certified (kept to pin that difference in a test);
* the expanders ``E_N ⊆ Y_N`` (``PLSConfig.expander``): ``"optimistic"``: ``e_N(z) = |{z' ∉ Y_N : l_N(z) + L d(z,
  z') <= 1}| > 0`` (for ``L = 0``: every safe point while unsafe points remain); ``"fake_observation"``
  (Berkenkamp et al. 2016): the cost GP is conditioned on one more observation ``l_N(z)`` at ``z`` and ``z`` expands
  when some ``z' ∉ Y_N`` then has ``mu' + alpha_N sigma' <= 1`` (tested on the ``expander_candidates`` most
  uncertain safe points);
* phase A evaluates the most uncertain expander ``argmax_{E_N} width`` (width: the larger of the cost interval's
  ``u - l`` and the reward GP's ``2 alpha sigma_r``; ``PLSConfig.width="cost"`` uses the cost interval only) until
  ``max_{E_N} width <= zeta`` (or no expander is left); phase B then evaluates ``argmax_{Y_N} mu_r + alpha_N
  sigma_r`` (optimistic reward, pessimistic safety) for the remaining iterations.

Each query is one call of ``problem.evaluate(key, target) -> (episode_returns [n], episode_costs [n])``: for the
CDT, one vmapped rollout of ``n`` episodes with traced targets (:func:`cdt_problem`, one compilation for every
target). Every evaluated episode whose cost exceeds ``b`` is a **lifetime violation**. A seed point whose measured
mean cost exceeds ``b`` stops the run (``stopped``; :func:`run` raises :class:`UnsafeSeedSet`) instead of expanding
from it.

The search follows the learner contract: :func:`make_train_parts` gives ``TrainParts(init, update, iterations,
episodes_per_query)``, so ``train_from_parts(parts)(key, hparams)`` is the whole search as one scanned program
(vmap it over seeds), and :func:`run` drives the same ``update`` from Python with a progress callback. The state's
``params`` are the GP data (:class:`GPData`).

Baselines with the same online episode budget: :func:`fixed_target` (the CDT at one target), :func:`naive_search`
(random or grid targets without the safety rule) and :func:`finetune_cdt` (CDT training continued on the grown
dataset of collected online episodes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tinygp
from flax import struct

from jaxsafe.learner import Config, HParams, TrainParts
from jaxsafe.offline.training import episode_table
from jaxsafe.validation import is_int, non_negative, open_unit_interval, positive, require

__all__ = ["GP_PRESETS", "SAFE_SET_RULES", "EXPANDER_RULES", "WIDTH_RULES", "PLSHParams", "PLSConfig", "PLSProblem",
           "GPData", "PLSState", "UnsafeSeedSet", "srinivas_alpha", "gp_posterior", "target_grid", "seed_set_box",
           "seed_set_from_dataset", "safe_fractions", "reliable_safe_return", "PLSSearch", "make_train_parts", "make_search", "recommend", "run", "cdt_problem",
           "fixed_target",
           "naive_search", "finetune_cdt"]

#: Appendix K's GP hyperparameters (lengthscales in target units, variances in GP units).
GP_PRESETS = {
    "bullet": dict(reward_lengthscale=50.0, reward_variance=1.0, cost_lengthscale=5.0, cost_variance=1.0),
    "velocity": dict(reward_lengthscale=100.0, reward_variance=100.0, cost_lengthscale=5.0, cost_variance=1.0),
}
SAFE_SET_RULES = ("pessimistic", "literal")
EXPANDER_RULES = ("optimistic", "fake_observation")
WIDTH_RULES = ("max", "cost")


@struct.dataclass
class PLSHParams(HParams):
    """Traced settings (vmap-able).

    threshold: the cost threshold ``b`` (episode-cost units, > 0); delta: the failure probability ``Delta`` in (0, 1);
    beta_scale: factor on the Srinivas ``alpha_N`` (> 0); zeta: phase A's width tolerance (GP units, >= 0);
    lipschitz: ``L`` (normalised cost per target unit, >= 0; the paper uses 0); reward_/cost_lengthscale: RBF
    lengthscale in target units, a scalar or ``[2]`` for ``(R, G)`` (> 0); reward_/cost_variance: RBF variance (> 0);
    reward_/cost_noise: observation noise std of a query's mean normalised reward / cost (> 0);
    reward_/cost_prior_mean: the GPs' constant prior means (GP units).
    """

    threshold: float = 20.0
    delta: float = 0.05
    beta_scale: float = 1.0
    zeta: float = 0.1
    lipschitz: float = 0.0
    reward_lengthscale: float = 50.0
    reward_variance: float = 1.0
    cost_lengthscale: float = 5.0
    cost_variance: float = 1.0
    reward_noise: float = 0.05
    cost_noise: float = 0.05
    reward_prior_mean: float = 0.0
    cost_prior_mean: float = 0.0

    rules = {"threshold": positive("episode-cost units"), "delta": open_unit_interval(), "beta_scale": positive(),
             "zeta": non_negative(), "lipschitz": non_negative(), "reward_lengthscale": positive("target units"),
             "reward_variance": positive(), "cost_lengthscale": positive("target units"),
             "cost_variance": positive(), "reward_noise": positive(), "cost_noise": positive()}

    @classmethod
    def preset(cls, name: str, **overrides) -> "PLSHParams":
        """Appendix K's GP values (``"bullet"`` or ``"velocity"``) with ``overrides``."""
        require(name in GP_PRESETS, "preset", f"one of {sorted(GP_PRESETS)}", name)
        return cls(**{**GP_PRESETS[name], **overrides})


@dataclasses.dataclass(frozen=True)
class PLSConfig(Config):
    """Static settings: ``iterations`` (GP queries), ``episodes_per_query`` (the paper's 20), ``safe_set``
    (:data:`SAFE_SET_RULES`), ``expander`` (:data:`EXPANDER_RULES`), ``width`` (:data:`WIDTH_RULES`),
    ``expander_candidates`` (fake-observation mode: how many of the most uncertain safe points are tested),
    ``stop_on_unsafe_seed`` (stop when a seed point measures unsafe)."""

    iterations: int = 20
    episodes_per_query: int = 20
    safe_set: str = "pessimistic"
    expander: str = "optimistic"
    width: str = "max"
    expander_candidates: int = 64
    stop_on_unsafe_seed: bool = True

    def __post_init__(self):
        for name in ("iterations", "episodes_per_query", "expander_candidates"):
            require(is_int(getattr(self, name)), f"PLSConfig.{name}", "an integer >= 1", getattr(self, name))
        require(self.safe_set in SAFE_SET_RULES, "PLSConfig.safe_set", f"one of {SAFE_SET_RULES}", self.safe_set)
        require(self.expander in EXPANDER_RULES, "PLSConfig.expander", f"one of {EXPANDER_RULES}", self.expander)
        require(self.width in WIDTH_RULES, "PLSConfig.width", f"one of {WIDTH_RULES}", self.width)

    def default_hparams(self) -> PLSHParams:
        return PLSHParams().as_arrays()


class PLSProblem(NamedTuple):
    """What PLS searches: ``targets [|Z|, 2]`` (R, G), ``seed_mask [|Z|]`` bool (``Z_0``), ``evaluate(key, target
    [2]) -> (episode_returns [n], episode_costs [n])`` (jit/vmap-able) and the reward normalisation range."""

    targets: np.ndarray
    seed_mask: np.ndarray
    evaluate: Callable
    reward_min: float
    reward_max: float


class GPData(NamedTuple):
    """The observation buffer of both GPs (``[M]``, ``M = iterations``): grid index, mean normalised reward and cost
    of the query, and whether the slot holds an observation."""

    target_index: jax.Array
    reward: jax.Array
    cost: jax.Array
    observed: jax.Array


class PLSState(NamedTuple):
    """``params`` (:class:`GPData`), the cost interval ``cost_lower``/``cost_upper`` ``[|Z|]`` (normalised), the safe
    set ``safe [|Z|]``, ``phase`` (0: A, 1: B), ``iteration`` (queries made), ``stopped`` (a seed measured unsafe),
    ``violations`` (episodes over ``b`` so far) and the key."""

    params: GPData
    cost_lower: jax.Array
    cost_upper: jax.Array
    safe: jax.Array
    phase: jax.Array
    iteration: jax.Array
    stopped: jax.Array
    violations: jax.Array
    key: jax.Array


class UnsafeSeedSet(ValueError):
    """A target of the seed set ``Z_0`` measured a mean cost above the threshold; PLS stopped instead of expanding."""


# ---------------------------------------------------------------------------------------------------- the GPs


class _Masked(tinygp.kernels.Kernel):
    """``k((x, m), (x', m')) = m m' k(x, x')``: slots with ``m = 0`` are independent dummies (with unit noise and
    a zero residual they leave the posterior exactly as if absent), so a fixed-size buffer grows inside jit."""

    kernel: tinygp.kernels.Kernel

    def evaluate(self, X1, X2):
        (x1, m1), (x2, m2) = X1, X2
        return m1 * m2 * self.kernel.evaluate(x1, x2)


def _rbf(lengthscale, variance):
    return _Masked(variance * tinygp.transforms.Linear(1.0 / jnp.asarray(lengthscale),
                                                       tinygp.kernels.ExpSquared()))


def gp_posterior(test_points, points, values, observed, lengthscale, variance, noise, prior_mean=0.0,
                 full_covariance: bool = False):
    """The tinygp posterior of an RBF GP at ``test_points [T, 2]`` given ``values [M]`` at ``points [M, 2]`` where
    ``observed [M]`` (other slots are ignored).

    Returns ``(mean [T], variance [T])``, or ``(mean, covariance [T, T])`` with ``full_covariance``. The prior is
    ``N(prior_mean, variance * exp(-|x - x'|^2 / (2 lengthscale^2)))`` and the observation noise std ``noise``.
    """
    observed = jnp.asarray(observed)
    mask = observed.astype(jnp.float32)
    gp = tinygp.GaussianProcess(_rbf(lengthscale, variance), (jnp.asarray(points, jnp.float32), mask),
                                diag=jnp.where(observed, jnp.square(noise), 1.0), mean=prior_mean)
    y = jnp.where(observed, values, prior_mean)
    test = (jnp.asarray(test_points, jnp.float32), jnp.ones(test_points.shape[0], jnp.float32))
    posterior = gp.condition(y, test, diag=0.0).gp
    if full_covariance:
        return posterior.loc, posterior.covariance
    return posterior.loc, posterior.variance


def srinivas_alpha(num_targets: int, iteration, delta, scale=1.0):
    """``scale * sqrt(2 log(|Z| N^2 pi^2 / (6 Delta)))`` at iteration ``N >= 1``."""
    iteration = jnp.asarray(iteration, jnp.float32)
    return scale * jnp.sqrt(2.0 * jnp.log(num_targets * iteration ** 2 * math.pi ** 2 / (6.0 * delta)))


# ---------------------------------------------------------------------------------------------------- target sets


def _check_range(name: str, given, low: float, high: float):
    if given is None:
        return float(low), float(high)
    require(len(given) == 2 and float(given[0]) <= float(given[1]), name, "a pair (low, high) with low <= high",
            given)
    require(low - 1e-6 <= float(given[0]) and float(given[1]) <= high + 1e-6, name,
            f"inside the dataset's episode range [{low:g}, {high:g}]", tuple(given))
    return float(given[0]), float(given[1])


def target_grid(dataset, num_returns: int = 30, num_costs: int = 30, return_range=None, cost_range=None):
    """The discretised target set ``Z`` ``[num_returns * num_costs, 2]`` of ``(R, G)`` (R-major), spanning the
    dataset's episode return and cost ranges (or the given sub-ranges); an axis whose range is one value has one
    grid value.

    Raises:
      ValueError: a range outside the dataset's episode range, or fewer than 1 grid value per axis.
    """
    require(is_int(num_returns), "num_returns", "an integer >= 1", num_returns)
    require(is_int(num_costs), "num_costs", "an integer >= 1", num_costs)
    table = episode_table(dataset)
    r_low, r_high = _check_range("return_range", return_range, table.returns.min(), table.returns.max())
    c_low, c_high = _check_range("cost_range", cost_range, table.costs.min(), table.costs.max())
    # a degenerate range (every episode with the same cost, say) is one value on that axis, not repeats of it
    returns = np.linspace(r_low, r_high, num_returns if r_high > r_low else 1)
    costs = np.linspace(c_low, c_high, num_costs if c_high > c_low else 1)
    grid = np.stack(np.meshgrid(returns, costs, indexing="ij"), -1).reshape(-1, 2)
    return grid.astype(np.float32)


def _nonempty(mask: np.ndarray, how: str) -> np.ndarray:
    if not mask.any():
        raise ValueError(f"seed_set: empty ({how}); PLS needs at least one known-safe target to start from")
    return mask


def seed_set_box(targets, return_range, cost_range) -> np.ndarray:
    """``Z_0`` as in the paper: the targets inside ``return_range x cost_range`` (``[|Z|]`` bool).

    Raises: ValueError (``seed_set``) when no target of the grid lies in the box."""
    targets = np.asarray(targets)
    inside = ((targets[:, 0] >= return_range[0]) & (targets[:, 0] <= return_range[1]) &
              (targets[:, 1] >= cost_range[0]) & (targets[:, 1] <= cost_range[1]))
    return _nonempty(inside, f"no grid target in {tuple(return_range)} x {tuple(cost_range)}")


def safe_fractions(returns, costs, threshold: float, tolerance: float, at=None) -> tuple[np.ndarray, np.ndarray]:
    """Per query return ``at[i]`` (default: every episode's return): how many dataset episodes have a return within
    ``tolerance`` of it, and the fraction of those with cost ``<= threshold`` (``([Q] int, [Q] float)``; 0 where
    none is near).

    In a stochastic task one episode's cost is partly luck: a behaviour that is unsafe on average still has safe
    episodes, often at its highest returns. A CDT asked for return ``R`` plays what the data did near ``R``, so the
    safe fraction of the episodes near ``R`` estimates how often that target is safe; one safe episode does not.
    """
    returns, costs = np.asarray(returns, np.float64), np.asarray(costs, np.float64)
    at = returns if at is None else np.asarray(at, np.float64)
    near = np.abs(at[:, None] - returns[None, :]) <= tolerance  # [Q, E]
    count = near.sum(1)
    return count, (near & (costs[None, :] <= threshold)).sum(1) / np.maximum(count, 1)


def reliable_safe_return(returns, costs, threshold: float, safe_fraction: float = 0.8, tolerance: float | None = None,
                         min_episodes: int = 5) -> float:
    """The highest return of a safe dataset episode (cost ``<= threshold``) whose neighbourhood (episodes with a
    return within ``tolerance``, default 5% of the return span) holds at least ``min_episodes`` episodes of which
    at least ``safe_fraction`` are safe (:func:`safe_fractions`). ``safe_fraction=0, min_episodes=1`` is the best
    safe dataset return.

    Raises: ValueError (``seed_set``) when no episode qualifies; the fields out of range."""
    require(float(threshold) > 0, "threshold", "> 0 (episode-cost units)", threshold)
    require(0 <= float(safe_fraction) <= 1, "seed_safe_fraction", "in [0, 1]", safe_fraction)
    require(is_int(min_episodes), "seed_min_episodes", "an integer >= 1", min_episodes)
    returns, costs = np.asarray(returns, np.float64), np.asarray(costs, np.float64)
    if tolerance is None:
        tolerance = 0.05 * float(returns.max() - returns.min())
    count, fraction = safe_fractions(returns, costs, threshold, tolerance)
    ok = (costs <= threshold) & (count >= min_episodes) & (fraction >= safe_fraction)
    if not ok.any():
        raise ValueError(f"seed_set: empty (no dataset return of cost <= {threshold:g} has {min_episodes} or more "
                         f"episodes within {tolerance:.3g} of it, {safe_fraction:g} of them safe); lower "
                         "seed_safe_fraction or give a seed box")
    return float(returns[ok].max())


def seed_set_from_dataset(dataset, targets, threshold: float, margin: float = 0.5,
                          return_tolerance: float | None = None, min_episodes: int = 1,
                          safe_fraction: float = 0.8) -> np.ndarray:
    """``Z_0`` from the data: ``z = (R, G)`` is a seed when ``G <= margin * b``, at least ``min_episodes`` dataset
    episodes have a return within ``return_tolerance`` of ``R`` (default: one grid step of R) and a cost ``<= G``
    (the data show that the return is reached at a cost safely below the threshold), and at least ``safe_fraction``
    of all the episodes within ``return_tolerance`` of ``R`` have cost ``<= b`` (reaching ``R`` is safe as a rule,
    not by luck; ``safe_fraction=0`` drops this test).

    Raises: ValueError (``seed_set``) when no target qualifies; ``threshold``/``margin``/``safe_fraction`` out of
    range."""
    require(float(threshold) > 0, "threshold", "> 0 (episode-cost units)", threshold)
    require(0 < float(margin) <= 1, "seed_margin", "in (0, 1]", margin)
    require(0 <= float(safe_fraction) <= 1, "seed_safe_fraction", "in [0, 1]", safe_fraction)
    targets = np.asarray(targets)
    table = episode_table(dataset)
    if return_tolerance is None:
        steps = np.diff(np.unique(targets[:, 0]))
        return_tolerance = float(steps.min()) if steps.size else 1.0
    near = np.abs(table.returns[None, :] - targets[:, :1]) <= return_tolerance  # [|Z|, E]
    cheap = table.costs[None, :] <= targets[:, 1:2]
    supported = (near & cheap).sum(1) >= min_episodes
    _, fraction = safe_fractions(table.returns, table.costs, threshold, return_tolerance, at=targets[:, 0])
    reliable = fraction >= safe_fraction
    mask = supported & reliable & (targets[:, 1] <= margin * threshold)
    return _nonempty(mask, f"no grid target with G <= {margin:g} * {threshold:g} is reached by a dataset episode at "
                           f"that cost where {safe_fraction:g} of the episodes near its return are safe")


# ---------------------------------------------------------------------------------------------------- the search


def _check_problem(config: PLSConfig, problem: PLSProblem) -> None:
    targets, seeds = np.asarray(problem.targets), np.asarray(problem.seed_mask)
    require(targets.ndim == 2 and targets.shape[1] == 2 and targets.shape[0] >= 1, "targets", "[|Z|, 2] (R, G)",
            targets.shape)
    require(seeds.shape == (targets.shape[0],) and seeds.dtype == np.bool_, "seed_mask", f"[{targets.shape[0]}] bool",
            seeds.shape)
    _nonempty(seeds, "seed_mask has no true entry")
    require(float(problem.reward_max) > float(problem.reward_min), "reward_max",
            f"> reward_min = {problem.reward_min}", problem.reward_max)
    shapes = jax.eval_shape(problem.evaluate, jax.random.PRNGKey(0), jnp.zeros((2,), jnp.float32))
    expected = (config.episodes_per_query,)
    require(all(s.shape == expected for s in shapes), "evaluate", f"to return two arrays of shape {expected} "
            f"(PLSConfig.episodes_per_query)", [s.shape for s in shapes])


class PLSSearch(NamedTuple):
    """The pieces of one query: ``update = acquire`` (GP posteriors, bounds, safe set, expanders, the next target)
    ``+ problem.evaluate + observe`` (the observation into the GP data), kept apart so that each can be timed."""

    init: Callable
    update: Callable
    acquire: Callable
    observe: Callable
    num_updates: int
    steps_per_update: int

    def train_parts(self) -> TrainParts:
        return TrainParts(self.init, self.update, self.num_updates, self.steps_per_update)


def make_train_parts(config: PLSConfig, problem: PLSProblem) -> TrainParts:
    """PLS as ``TrainParts(init, update, iterations, episodes_per_query)`` (see :func:`make_search`)."""
    return make_search(config, problem).train_parts()


def make_search(config: PLSConfig, problem: PLSProblem) -> PLSSearch:
    """PLS on ``problem``: ``init(key, hparams)``, ``update(state, hparams) -> (state, metrics)`` makes one query,
    ``acquire(state, hparams) -> (index, state, info)`` and ``observe(state, hparams, index, returns, costs) ->
    (state, metrics)`` are its two halves around ``problem.evaluate``.

    Metrics per query: ``iteration``, ``phase``, ``target_index``, ``target_return``, ``target_cost``, ``reward``,
    ``cost`` (the query's mean normalised reward / cost), ``episode_return``, ``episode_cost`` (raw means),
    ``violations`` (this query's episodes over ``b``), ``evaluated`` (False once stopped), ``seed_unsafe``,
    ``safe_set_size``, ``expanders``, ``max_width``, ``alpha``, and per target ``safe``, ``cost_upper``,
    ``cost_lower``, ``reward_mean`` ``[|Z|]`` (before the query).

    Raises:
      ValueError: a malformed target grid, an empty seed set, or an ``evaluate`` whose output shape is not
        ``[episodes_per_query]`` (before anything compiles).
    """
    _check_problem(config, problem)
    targets = jnp.asarray(problem.targets, jnp.float32)
    seeds = jnp.asarray(problem.seed_mask)
    size = targets.shape[0]
    slots = config.iterations
    distance = jnp.sqrt(jnp.sum(jnp.square(targets[:, None] - targets[None]), -1))  # [|Z|, |Z|]
    candidates = min(config.expander_candidates, size)
    reward_span = float(problem.reward_max) - float(problem.reward_min)

    def init(key, hparams):
        del hparams
        data = GPData(jnp.zeros((slots,), jnp.int32), jnp.zeros((slots,)), jnp.zeros((slots,)),
                      jnp.zeros((slots,), bool))
        upper = jnp.where(seeds, 1.0, jnp.inf).astype(jnp.float32)  # not weak-typed: one compile of update
        return PLSState(data, jnp.zeros((size,)), upper, seeds, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                        jnp.zeros((), bool), jnp.zeros((), jnp.int32), key)

    def posteriors(data, hparams, full_cost_covariance=False):
        points = targets[data.target_index]
        reward = gp_posterior(targets, points, data.reward, data.observed, hparams.reward_lengthscale,
                              hparams.reward_variance, hparams.reward_noise, hparams.reward_prior_mean)
        cost = gp_posterior(targets, points, data.cost, data.observed, hparams.cost_lengthscale,
                            hparams.cost_variance, hparams.cost_noise, hparams.cost_prior_mean, full_cost_covariance)
        return reward, cost

    def fake_observation_expanders(data, hparams, safe, lower, width, alpha, slot):
        """Berkenkamp's test on the ``candidates`` most uncertain safe points: condition the cost GP on ``l(z)`` at
        ``z`` (in the next free slot) and check whether an unsafe point becomes certified."""
        _, order = jax.lax.top_k(jnp.where(safe, width, -jnp.inf), candidates)

        def expands(index):
            fake = GPData(data.target_index.at[slot].set(index), data.reward, data.cost.at[slot].set(lower[index]),
                          data.observed.at[slot].set(True))
            mean, variance = gp_posterior(targets, targets[fake.target_index], fake.cost, fake.observed,
                                          hparams.cost_lengthscale, hparams.cost_variance, hparams.cost_noise,
                                          hparams.cost_prior_mean)
            upper = mean + alpha * jnp.sqrt(jnp.maximum(variance, 0.0))
            return jnp.any(~safe & (upper <= 1.0))

        flags = jax.vmap(expands)(order) & safe[order]
        return jnp.zeros((size,), bool).at[order].set(flags)

    def acquire(state, hparams):
        """The query of iteration ``N = state.iteration + 1``: ``(index, state with Lambda_N and Y_N, info)``."""
        n = state.iteration + 1
        alpha = srinivas_alpha(size, n, hparams.delta, hparams.beta_scale)
        (reward_mean, reward_var), (cost_mean, cost_var) = posteriors(state.params, hparams)
        reward_sd, cost_sd = jnp.sqrt(jnp.maximum(reward_var, 0.0)), jnp.sqrt(jnp.maximum(cost_var, 0.0))
        lower = jnp.maximum(state.cost_lower, cost_mean - alpha * cost_sd)
        upper = jnp.minimum(state.cost_upper, cost_mean + alpha * cost_sd)
        if config.safe_set == "pessimistic":
            safe = state.safe | (upper <= 1.0)
        else:  # the literal union over Y_{N-1}
            reach = state.safe[:, None] & (upper[:, None] + hparams.lipschitz * distance <= 1.0)
            safe = jnp.any(reach, axis=0)
        cost_width = jnp.maximum(upper - lower, 0.0)
        cost_width = jnp.where(jnp.isfinite(cost_width), cost_width, jnp.finfo(jnp.float32).max)
        width = cost_width if config.width == "cost" else jnp.maximum(cost_width, 2.0 * alpha * reward_sd)
        unsafe_left = jnp.any(~safe)
        if config.expander == "optimistic":
            certifiable = (lower[:, None] + hparams.lipschitz * distance <= 1.0) & ~safe[None, :]
            expanders = safe & jnp.any(certifiable, axis=1)
        else:
            slot = jnp.minimum(state.iteration, slots - 1)
            expanders = fake_observation_expanders(state.params, hparams, safe, lower, width, alpha, slot)
        expanders = expanders & unsafe_left
        expander_width = jnp.where(expanders, width, -jnp.inf)
        max_width = jnp.max(expander_width)
        phase = jnp.where((state.phase == 0) & jnp.any(expanders) & (max_width > hparams.zeta), 0, 1)
        optimistic_reward = jnp.where(safe, reward_mean + alpha * reward_sd, -jnp.inf)
        index = jnp.where(phase == 0, jnp.argmax(expander_width), jnp.argmax(optimistic_reward)).astype(jnp.int32)
        state = state._replace(cost_lower=lower, cost_upper=upper, safe=safe, phase=phase.astype(jnp.int32))
        info = dict(alpha=alpha, max_width=jnp.where(jnp.any(expanders), max_width, 0.0),
                    expanders=expanders.sum(), expander_mask=expanders, width=width, safe_set_size=safe.sum(),
                    reward_mean=reward_mean,
                    cost_mean=cost_mean)
        return index, state, info

    def observe(state, hparams, index, episode_returns, episode_costs):
        """Add the query's observation (unless stopped); count its violations; stop on an unsafe seed."""
        reward = jnp.mean((episode_returns - problem.reward_min) / reward_span)
        cost = jnp.mean(episode_costs) / hparams.threshold
        violations = jnp.sum(episode_costs > hparams.threshold).astype(jnp.int32)
        live = ~state.stopped
        seed_unsafe = live & seeds[index] & (cost > 1.0)
        slot = jnp.minimum(state.iteration, slots - 1)
        data = state.params
        data = GPData(data.target_index.at[slot].set(jnp.where(live, index, data.target_index[slot])),
                      data.reward.at[slot].set(jnp.where(live, reward, data.reward[slot])),
                      data.cost.at[slot].set(jnp.where(live, cost, data.cost[slot])),
                      data.observed.at[slot].set(data.observed[slot] | live))
        stopped = state.stopped | (seed_unsafe if config.stop_on_unsafe_seed else False)
        new = state._replace(params=data, iteration=state.iteration + 1, stopped=stopped,
                             violations=state.violations + jnp.where(live, violations, 0))
        metrics = dict(target_index=index, target_return=targets[index, 0], target_cost=targets[index, 1],
                       reward=reward, cost=cost, episode_return=jnp.mean(episode_returns),
                       episode_cost=jnp.mean(episode_costs), violations=jnp.where(live, violations, 0),
                       evaluated=live, seed_unsafe=seed_unsafe)
        return new, metrics

    def update(state, hparams):
        key, eval_key = jax.random.split(state.key)
        before = state
        index, state, info = acquire(state, hparams)
        returns, costs = problem.evaluate(eval_key, targets[index])
        state, metrics = observe(state._replace(key=key), hparams, index, returns, costs)
        # once stopped, nothing changes any more (the bounds and the safe set included)
        state = jax.tree.map(lambda new, old: jnp.where(before.stopped, old, new), state,
                             before._replace(key=key, iteration=before.iteration + 1))
        metrics = dict(metrics, iteration=before.iteration + 1, phase=state.phase, safe_set_size=info["safe_set_size"],
                       expanders=info["expanders"], max_width=info["max_width"], alpha=info["alpha"],
                       safe=state.safe, cost_upper=state.cost_upper, cost_lower=state.cost_lower,
                       reward_mean=info["reward_mean"])
        return state, metrics

    return PLSSearch(init, update, acquire, observe, config.iterations, config.episodes_per_query)


def recommend(problem: PLSProblem, hparams: PLSHParams, data: GPData, safe) -> jax.Array:
    """The deployed target's index: among evaluated targets in the safe set ``safe [|Z|]``, the one with the highest
    reward posterior mean given ``data`` (if none is both, the highest mean in the safe set)."""
    targets = jnp.asarray(problem.targets, jnp.float32)
    mean, _ = gp_posterior(targets, targets[data.target_index], data.reward, data.observed,
                           hparams.reward_lengthscale, hparams.reward_variance, hparams.reward_noise,
                           hparams.reward_prior_mean)
    evaluated = jnp.zeros(targets.shape[0], bool).at[data.target_index].max(data.observed)
    pool = jnp.where(jnp.any(evaluated & safe), evaluated & safe, safe)
    return jnp.argmax(jnp.where(pool, mean, -jnp.inf))


def run(config: PLSConfig, problem: PLSProblem, hparams: PLSHParams, key, callback=None):
    """The search driven from Python: ``update`` jitted once, one call per query, ``callback(state, metrics)`` after
    each (metrics as host numpy values). Returns ``(state, metrics stacked to [iterations, ...], recommended
    index)``: the numbers of ``train_from_parts(make_train_parts(config, problem))(key, hparams)``.

    Raises:
      ValueError: bad hparams (naming the field), as :func:`make_train_parts`.
      UnsafeSeedSet: a seed target measured a mean cost above the threshold (the run stops there).
    """
    hparams = hparams.validate()
    search = make_search(config, problem)
    update = jax.jit(search.update)
    state = search.init(key, hparams)
    rows = []
    for _ in range(search.num_updates):
        state, metrics = update(state, hparams)
        metrics = jax.tree.map(np.asarray, metrics)
        rows.append(metrics)
        if callback is not None:
            callback(state, metrics)
        if bool(metrics["seed_unsafe"]) and config.stop_on_unsafe_seed:
            target = np.asarray(problem.targets)[int(metrics["target_index"])]
            raise UnsafeSeedSet(
                f"seed_set: the seed target (R={target[0]:g}, G={target[1]:g}) measured a mean cost "
                f"{float(metrics['episode_cost']):.3g} > threshold {float(hparams.threshold):g} over "
                f"{config.episodes_per_query} episodes; PLS stops rather than expand from an unsafe seed set "
                f"(give a safer one, e.g. a smaller seed margin or a seed box)")
    stacked = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    chosen = jax.jit(lambda data, safe: recommend(problem, hparams, data, safe))(state.params, state.safe)
    return state, stacked, int(chosen)


# ---------------------------------------------------------------------------------------------------- the CDT


def cdt_problem(cdt_config, dataset, params, cdt_hparams, env, env_params, targets, seed_mask, episodes: int,
                max_steps: int, reward_range=None, deterministic: bool = True) -> PLSProblem:
    """The frozen CDT as a :class:`PLSProblem`: ``evaluate(key, target)`` plays ``episodes`` vmapped episodes of
    at most ``max_steps`` steps with the traced target (one compiled rollout for every target). ``reward_range``
    defaults to the dataset's episode return range (DSRL's normalisation); ``deterministic=False`` deploys the
    CDT sampling its Gaussian head (:func:`jaxsafe.offline.cdt.make_policy`)."""
    from jaxsafe.evaluate import rollout_episodes
    from jaxsafe.offline import cdt
    from jaxsafe.offline.feedback import RewardCostFeedback
    from jaxsafe.offline.metrics import reward_range as dataset_reward_range

    space = env.action_space(env_params)
    play_env = RewardCostFeedback(env)
    reward_min, reward_max = reward_range or dataset_reward_range(dataset)

    def evaluate(key, target):
        policy = cdt.make_policy(cdt_config, dataset, params, cdt_hparams, target[0], target[1], space.low,
                                 space.high, deterministic)
        rollouts = rollout_episodes(play_env, env_params, policy, key, episodes, max_steps)
        return rollouts.returns, rollouts.costs

    return PLSProblem(np.asarray(targets, np.float32), np.asarray(seed_mask, bool), evaluate, float(reward_min),
                      float(reward_max))


# ---------------------------------------------------------------------------------------------------- baselines


def _query_summary(problem: PLSProblem, threshold, returns, costs) -> dict:
    """Per query ``[Q]``: mean normalised reward and cost, violations; ``returns``/``costs`` are ``[Q, n]``."""
    span = float(problem.reward_max) - float(problem.reward_min)
    return dict(reward=jnp.mean((returns - problem.reward_min) / span, -1), cost=jnp.mean(costs, -1) / threshold,
                violations=jnp.sum(costs > threshold, -1).astype(jnp.int32))


def fixed_target(problem: PLSProblem, key, target, threshold, num_queries: int) -> dict:
    """The CDT at one fixed ``target [2]`` for ``num_queries`` queries (the same online budget as PLS): per query
    ``reward``, ``cost`` (normalised means) and ``violations`` ``[num_queries]`` (jit/vmap-able)."""
    keys = jax.random.split(key, num_queries)
    target = jnp.asarray(target, jnp.float32)
    returns, costs = jax.vmap(lambda k: problem.evaluate(k, target))(keys)
    return _query_summary(problem, threshold, returns, costs)


def naive_search(problem: PLSProblem, key, threshold, num_queries: int, mode: str = "random") -> dict:
    """Target search without the safety rule: ``num_queries`` targets drawn uniformly from ``Z`` without
    replacement (``"random"``) or evenly spaced through ``Z`` (``"grid"``), each evaluated once; ``best`` is the
    index of the one with the highest measured reward among those measured safe (mean cost ``<= b``; ``-1`` if
    none). Returns per query ``target_index``, ``reward``, ``cost``, ``violations`` and ``best`` (jit/vmap-able)."""
    require(mode in ("random", "grid"), "mode", "'random' or 'grid'", mode)
    size = np.asarray(problem.targets).shape[0]
    require(is_int(num_queries) and num_queries <= size, "num_queries", f"an integer in [1, {size}]", num_queries)
    targets = jnp.asarray(problem.targets, jnp.float32)
    choice_key, eval_key = jax.random.split(key)
    if mode == "random":
        index = jax.random.choice(choice_key, size, (num_queries,), replace=False)
    else:
        index = jnp.asarray(np.round(np.linspace(0, size - 1, num_queries)).astype(np.int32))
    returns, costs = jax.vmap(problem.evaluate)(jax.random.split(eval_key, num_queries), targets[index])
    summary = _query_summary(problem, threshold, returns, costs)
    measured_safe = summary["cost"] <= 1.0
    best = jnp.where(jnp.any(measured_safe), index[jnp.argmax(jnp.where(measured_safe, summary["reward"],
                                                                        -jnp.inf))], -1)
    return dict(summary, target_index=index, best=best)


class _FlatFeedback:
    """Adapts :class:`~jaxsafe.offline.feedback.RewardCostFeedback` to a flat observation ``[obs..., reward, cost]``
    so :func:`~jaxsafe.offline.dataset.collect_dataset` can record a CDT's episodes; the policy side is
    :func:`_split_feedback`."""

    def __init__(self, env):
        from jaxsafe.offline.feedback import RewardCostFeedback

        self.env = RewardCostFeedback(env)
        self.n_costs = env.n_costs
        self.name = getattr(env, "name", "env")

    @staticmethod
    def _flat(ts):
        obs = ts.obs
        flat = jnp.concatenate([jnp.reshape(obs["obs"], (-1,)).astype(jnp.float32), obs["reward"][None],
                                obs["cost"][None]])
        return ts._replace(obs=flat)

    def reset(self, key, params):
        state, ts = self.env.reset(key, params)
        return state, self._flat(ts)

    def step(self, key, state, action, params):
        state, ts = self.env.step(key, state, action, params)
        return state, self._flat(ts)


def _split_feedback(policy):
    from jaxsafe.policy import Policy

    def step(state, obs, key):
        return policy.step(state, {"obs": obs[:-2], "reward": obs[-2], "cost": obs[-1]}, key)

    return Policy(policy.init, step)


def finetune_cdt(cdt_config, dataset, params, cdt_hparams, env, env_params, key, target, threshold: float,
                 episodes: int, episodes_per_round: int, updates_per_round: int, max_steps: int,
                 progress: Callable | None = None, deterministic: bool = True) -> dict:
    """CDT-FT: deploy the CDT at ``target`` online, collect ``episodes`` episodes in rounds of
    ``episodes_per_round``, and after each round continue CDT training (:func:`jaxsafe.offline.cdt.make_train_parts`,
    ``updates_per_round`` gradient steps, the optimiser state carried over) on the dataset grown by every episode
    collected so far. Violations are counted on every collected episode.

    Returns ``dict(params, episode_returns [episodes], episode_costs [episodes], violations, rounds)``.
    ``progress(round, collected, violations)`` is called after each round.
    """
    from jaxsafe.evaluate import rollout_trajectories
    from jaxsafe.offline import cdt
    from jaxsafe.offline.dataset import concatenate, from_transitions, trajectories_to_dataset

    require(is_int(episodes), "episodes", "an integer >= 1", episodes)
    require(is_int(episodes_per_round), "episodes_per_round", "an integer >= 1", episodes_per_round)
    require(is_int(updates_per_round, 0), "updates_per_round", "an integer >= 0", updates_per_round)
    space = env.action_space(env_params)
    flat_env = _FlatFeedback(env)
    target = jnp.asarray(target, jnp.float32)
    grown, state = dataset, None
    all_returns, all_costs = [], []
    collected, round_index = 0, 0

    def play(round_params, play_key, count):
        # array targets, as PLS's traced ones (a task's returns may be negative); the parameters are an argument, so
        # every round of the same size reuses one compiled rollout
        policy = _split_feedback(cdt.make_policy(cdt_config, dataset, round_params, cdt_hparams, target[0],
                                                 target[1], space.low, space.high, deterministic))
        return rollout_trajectories(flat_env, env_params, policy, play_key, count, max_steps)

    play = jax.jit(play, static_argnums=2)
    while collected < episodes:
        count = min(episodes_per_round, episodes - collected)
        key, collect_key, init_key = jax.random.split(key, 3)
        steps = trajectories_to_dataset(play(params, collect_key, count), "cdt-ft")
        strip = lambda x: np.asarray(x)[:, :-2].reshape((-1,) + np.shape(dataset.observations)[1:])  # noqa: E731
        online = from_transitions(strip(steps.observations), strip(steps.next_observations), steps.actions,
                                  steps.rewards, steps.costs, steps.terminals, steps.timeouts, source="cdt-ft")
        table = episode_table(online)
        all_returns.append(table.returns)
        all_costs.append(table.costs)
        collected += count
        round_index += 1
        grown = concatenate([grown, online])
        if updates_per_round > 0:
            parts = cdt.make_train_parts(cdt_config.replace(num_updates=updates_per_round), grown)
            if state is None:
                state = parts.init(init_key, cdt_hparams)._replace(params=params)
            # state and hparams are arguments (closed over, XLA folds them as constants and compiles far longer)
            state, _ = jax.jit(lambda s, h: jax.lax.scan(lambda c, _: parts.update(c, h), s, None,
                                                         length=updates_per_round))(state, cdt_hparams)
            params = state.params
        if progress is not None:
            progress(round_index, collected, int(sum(int((c > threshold).sum()) for c in all_costs)))
    returns, costs = np.concatenate(all_returns), np.concatenate(all_costs)
    return dict(params=params, episode_returns=returns, episode_costs=costs,
                violations=int((costs > threshold).sum()), rounds=round_index)
