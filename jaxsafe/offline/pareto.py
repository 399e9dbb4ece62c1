"""The reward-cost Pareto frontier of a dataset's episodes and OSRL's frontier return augmentation for the CDT.

A dataset's episodes are points ``(cost return C, return R)``. :func:`pareto_front` finds the non-dominated ones
(no other episode has ``C' <= C`` and ``R' >= R`` with one strict), :func:`fit_frontier` fits a polynomial
``R = f(C)`` of degree ``deg`` through them (OSRL's ``np.polyfit``), held flat beyond the front's cost range,
and :func:`augment_targets` implements the
CDT's data augmentation (Liu et al. 2023, §4.3; OSRL ``augmentation`` and ``get_nearest_point``):

1. ``num = int(fraction * episodes)`` target costs on an even grid over the dataset's cost range, each with a
   target return drawn uniformly in ``[f(C) + min_above, max_return]`` (above the frontier: returns the data
   does not reach at that cost);
2. each target is associated with the nearest episode (Euclidean in the raw ``(C, R)`` plane) among those with
   cost ``<= C``; when several targets pick the same episode, the extra ones are redistributed over the episodes
   with cost ``<=`` that episode's and return ``>= its return - max_decrease``, drawn with probability
   ``1 / (distance + beta)``;
3. the associated episode is relabelled: its returns-to-go and costs-to-go are shifted so that they start at the
   target. The CDT then learns that asking for more than the frontier offers means acting like the best episode
   that stays within the cost, which is what makes high targets safe at deployment.

The augmented set is drawn once per dataset with a NumPy generator (``seed``), as OSRL draws it once per run.
OSRL's per-task frontier degree is 4 (CarCircle), 3 (AntRun), 2 (AntCircle) and 1 (Drone, Velocity); with fewer
frontier points than ``deg + 1`` the degree is lowered to ``points - 1``.

One departure from OSRL: OSRL evaluates its polynomial over the whole cost range of the dataset, which is right
when the front spans it, as on DSRL's dense datasets. Where the front ends well before the costliest episode (on
our laptop SafePointRun ladder it ends at cost 48 of 141: nothing costlier returns more), the polynomial
extrapolates (there to a return of -3000) and the augmentation would draw targets far below what the data reaches.
:class:`Frontier` holds the fit at its value at the front's ends instead, which is what the front means: beyond
its costliest point no episode does better.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxsafe.validation import is_int, require

__all__ = ["pareto_front", "Frontier", "fit_frontier", "Augmentation", "augment_targets"]


def pareto_front(costs, returns) -> np.ndarray:
    """Indices of the non-dominated episodes (minimise cost, maximise return), sorted by cost. Exact duplicates
    of a frontier point are all kept."""
    costs, returns = np.asarray(costs, np.float64), np.asarray(returns, np.float64)
    require(costs.shape == returns.shape and costs.ndim == 1, "costs/returns", "two [E] arrays of one shape",
            (costs.shape, returns.shape))
    order = np.lexsort((-returns, costs))  # by cost, then the best return first
    front, best = [], -np.inf
    for index in order:
        if returns[index] > best or (front and returns[index] == returns[front[-1]]
                                     and costs[index] == costs[front[-1]]):
            front.append(index)
            best = max(best, returns[index])
    return np.asarray(front, np.int64)


class Frontier(NamedTuple):
    """The fitted frontier ``R = f(C)``: the polynomial ``poly`` on the front's cost range
    ``[cost_low, cost_high]``, held at its end values outside it. Call it on costs; ``order`` is the degree."""

    poly: np.poly1d
    cost_low: float
    cost_high: float

    def __call__(self, costs):
        return self.poly(np.clip(np.asarray(costs, np.float64), self.cost_low, self.cost_high))

    @property
    def order(self) -> int:
        return self.poly.order


def fit_frontier(costs, returns, degree: int) -> Frontier:
    """The polynomial ``R = f(C)`` of degree ``min(degree, distinct frontier costs - 1)`` fitted by least squares
    through the Pareto-front episodes, held flat outside the front's cost range (:class:`Frontier`)."""
    require(is_int(degree, 0), "degree", "an integer >= 0", degree)
    costs, returns = np.asarray(costs, np.float64), np.asarray(returns, np.float64)
    front = pareto_front(costs, returns)
    degree = min(degree, len(np.unique(costs[front])) - 1)
    return Frontier(np.poly1d(np.polyfit(costs[front], returns[front], deg=degree)), float(costs[front].min()),
                    float(costs[front].max()))


class Augmentation(NamedTuple):
    """Relabelled copies of episodes: ``source [A]`` (episode index), ``return_shift [A]`` and ``cost_shift [A]``
    (added to that episode's returns- and costs-to-go), the targets ``target_return/target_cost [A]`` they start
    at, and the fitted ``frontier``."""

    source: np.ndarray
    return_shift: np.ndarray
    cost_shift: np.ndarray
    target_return: np.ndarray
    target_cost: np.ndarray
    frontier: Frontier


def augment_targets(costs, returns, fraction: float, *, degree: int = 4, min_above: float = 1.0,
                    max_return: float | None = None, max_decrease: float | None = None, beta: float = 1.0,
                    seed: int = 0) -> Augmentation:
    """OSRL's Pareto-frontier augmentation of episodes with cost returns ``costs [E]`` and returns ``returns [E]``
    (see the module docstring). ``max_return`` defaults to the dataset's best return and ``max_decrease`` to a
    quarter of its return range (OSRL sets both by hand per task). ``fraction`` 0 gives an empty augmentation."""
    costs, returns = np.asarray(costs, np.float64), np.asarray(returns, np.float64)
    require(0.0 <= fraction <= 10.0, "augment_fraction", "in [0, 10]", fraction)
    require(beta > 0, "augment_beta", "> 0", beta)
    require(min_above >= 0, "augment_min_above", ">= 0", min_above)
    frontier = fit_frontier(costs, returns, degree)
    count = int(fraction * costs.shape[0])
    if count == 0:
        empty = np.zeros(0)
        return Augmentation(np.zeros(0, np.int64), empty, empty, empty, empty, frontier)
    rng = np.random.default_rng(seed)
    max_return = float(returns.max()) if max_return is None else float(max_return)
    max_decrease = 0.25 * float(np.ptp(returns)) if max_decrease is None else float(max_decrease)
    require(max_decrease >= 0, "augment_max_decrease", ">= 0", max_decrease)
    target_cost = np.linspace(costs.min(), costs.max(), count)
    low = frontier(target_cost) + min_above
    target_return = rng.uniform(low, np.maximum(max_return, low))
    points = np.stack([costs, returns], axis=1)
    nearest = np.empty(count, np.int64)
    for i in range(count):
        allowed = np.flatnonzero(costs <= target_cost[i])
        distance = np.hypot(*(points[allowed] - (target_cost[i], target_return[i])).T)
        nearest[i] = allowed[np.argmin(distance)]
    source = np.empty(count, np.int64)
    for index in np.unique(nearest):
        slots = np.flatnonzero(nearest == index)
        source[slots[0]] = index
        if slots.size > 1:  # spread the repeats over nearby episodes that are no costlier and not much worse
            allowed = np.flatnonzero((costs <= costs[index]) & (returns >= returns[index] - max_decrease))
            weights = 1.0 / (np.hypot(*(points[allowed] - points[index]).T) + beta)
            source[slots[1:]] = allowed[rng.choice(allowed.size, slots.size - 1, p=weights / weights.sum())]
    return Augmentation(source, target_return - returns[source], target_cost - costs[source], target_return,
                        target_cost, frontier)
