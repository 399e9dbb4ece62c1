"""OGSRL's out-of-distribution guardian and its 1-nearest-neighbour dynamics model (pure JAX, blocked over queries).

Both work on ``x = (s, a)`` min-max normalised to ``[-1, 1]`` per column with the *training* split's statistics
(:class:`Normaliser`), as the paper's code does.

* Gaussian KDE guardian (paper G.3): ``f(x) = (1/N) sum_i exp(-|x - x_i|^2 / (2 sigma^2)) / (sigma sqrt(2 pi))``
  with bandwidth ``sigma = 0.535`` (the paper's one-dimensional normaliser, whatever the dimension: only the
  threshold's quantile matters), threshold = the ``percentile``-th percentile (5) of the training points' own
  densities, and ``g(x) = 1[f(x) < f_thr]``. Computed in log space (``logsumexp``) so far-away queries do not
  underflow, in blocks of queries (``lax.map``), so 10^5 x 10^4 pairs never materialise at once.
* k-NN score guardian (the paper's alternative): the distance from ``x`` to its ``k``-th nearest training point;
  ``g(x) = 1[score > the (100 - percentile)-th percentile of the training points' scores]`` (a training point's
  own distance 0 is excluded when scoring the training set).
* :class:`NearestNeighbourModel`: the paper's 1-NN successor lookup -- the next state, reward, costs and terminal
  flags of the dataset transition nearest to ``(s, a)``.

Bad input raises ``ValueError`` naming the field: ``bandwidth <= 0``, ``percentile`` outside ``(0, 100)``,
``k < 1``, mismatched state/action dimensions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

__all__ = ["Normaliser", "fit_normaliser", "Guardian", "fit_guardian", "guardian_scores", "guardian_flags",
           "kde_log_density", "knn_distance", "NearestNeighbourModel", "fit_nearest_neighbour", "nearest_index",
           "pairwise_sq_dist", "GUARDIAN_KINDS", "DEFAULT_BANDWIDTH", "DEFAULT_PERCENTILE"]

GUARDIAN_KINDS = ("kde", "knn")
DEFAULT_BANDWIDTH = 0.535
DEFAULT_PERCENTILE = 5.0


class Normaliser(NamedTuple):
    """Per-column min-max map to ``[-1, 1]``: ``2 (x - low) / (high - low) - 1`` (constant columns map to 0)."""

    low: jax.Array
    high: jax.Array

    def __call__(self, x):
        span = jnp.where(self.high > self.low, self.high - self.low, 1.0)
        return jnp.where(self.high > self.low, 2.0 * (x - self.low) / span - 1.0, 0.0)

    def inverse(self, z):
        return self.low + (z + 1.0) * 0.5 * (self.high - self.low)


def fit_normaliser(x) -> Normaliser:
    """The min-max :class:`Normaliser` of the rows of ``x [N, D]``."""
    x = jnp.asarray(x, jnp.float32)
    return Normaliser(x.min(0), x.max(0))


def pairwise_sq_dist(queries: jax.Array, points: jax.Array) -> jax.Array:
    """``[Q, N]`` squared Euclidean distances (the ``|q|^2 + |p|^2 - 2 q.p`` form, clamped at 0)."""
    sq = (queries**2).sum(-1)[:, None] + (points**2).sum(-1)[None, :] - 2.0 * queries @ points.T
    return jnp.maximum(sq, 0.0)


def _blocked(fn, queries: jax.Array, block: int) -> jax.Array:
    """``fn(queries)`` computed ``block`` rows at a time (``lax.map``), for any number of rows."""
    n = queries.shape[0]
    if n <= block:
        return fn(queries)
    pad = (-n) % block
    padded = jnp.concatenate([queries, jnp.repeat(queries[-1:], pad, axis=0)]) if pad else queries
    out = jax.lax.map(fn, padded.reshape((-1, block) + queries.shape[1:]))
    return out.reshape((-1,) + out.shape[2:])[:n]


def kde_log_density(queries: jax.Array, points: jax.Array, bandwidth, block: int = 1024) -> jax.Array:
    """``[Q]`` log of the Gaussian KDE ``(1/N) sum_i exp(-|q - x_i|^2 / (2 sigma^2)) / (sigma sqrt(2 pi))``."""
    points = jnp.asarray(points, jnp.float32)
    log_norm = jnp.log(points.shape[0]) + jnp.log(bandwidth) + 0.5 * math.log(2.0 * math.pi)

    def one_block(q):
        return logsumexp(-pairwise_sq_dist(q, points) / (2.0 * bandwidth**2), axis=1) - log_norm

    return _blocked(one_block, jnp.asarray(queries, jnp.float32), block)


def knn_distance(queries: jax.Array, points: jax.Array, k: int, exclude_self: bool = False,
                 block: int = 1024) -> jax.Array:
    """``[Q]`` distance from each query to its ``k``-th nearest point (``exclude_self``: skip the nearest one, for
    queries that are the points themselves)."""
    points = jnp.asarray(points, jnp.float32)
    rank = k + int(exclude_self)

    def one_block(q):
        neg_sq, _ = jax.lax.top_k(-pairwise_sq_dist(q, points), rank)
        return jnp.sqrt(-neg_sq[:, rank - 1])

    return _blocked(one_block, jnp.asarray(queries, jnp.float32), block)


class Guardian(NamedTuple):
    """A fitted OOD guardian (a pytree; ``kind`` and ``k`` are static Python values)."""

    normaliser: Normaliser
    points: jax.Array  # [N, D] normalised training (s, a)
    bandwidth: jax.Array
    threshold: jax.Array  # KDE: log-density threshold; k-NN: distance threshold
    kind: str = "kde"
    k: int = 5


def _check_guardian_args(bandwidth, percentile, kind, k):
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"guardian bandwidth must be > 0 (the paper uses {DEFAULT_BANDWIDTH}), got {bandwidth!r}")
    if not (np.isfinite(percentile) and 0.0 < percentile < 100.0):
        raise ValueError(f"guardian percentile must be in (0, 100) (the share of training points left outside; the "
                         f"paper uses {DEFAULT_PERCENTILE}), got {percentile!r}")
    if kind not in GUARDIAN_KINDS:
        raise ValueError(f"guardian kind must be one of {list(GUARDIAN_KINDS)}, got {kind!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"guardian k (k-NN score) must be an integer >= 1, got {k!r}")


def _pairs(states, actions) -> jax.Array:
    states, actions = jnp.asarray(states, jnp.float32), jnp.asarray(actions, jnp.float32)
    if states.ndim != 2 or actions.ndim != 2 or states.shape[0] != actions.shape[0]:
        raise ValueError(f"states [N, state_dim] and actions [N, action_dim] must have the same N, got "
                         f"{tuple(states.shape)} and {tuple(actions.shape)}")
    return jnp.concatenate([states, actions], axis=1)


def fit_guardian(states, actions, bandwidth: float = DEFAULT_BANDWIDTH, percentile: float = DEFAULT_PERCENTILE,
                 kind: str = "kde", k: int = 5, normaliser: Normaliser | None = None) -> Guardian:
    """Fit the guardian on training pairs ``states [N, ds]``, ``actions [N, da]`` (see the module docstring).

    ``normaliser`` defaults to the min-max of these pairs. The threshold leaves ``percentile`` % of the training
    points flagged (up to ties).
    """
    _check_guardian_args(float(bandwidth), float(percentile), kind, k)
    pairs = _pairs(states, actions)
    normaliser = fit_normaliser(pairs) if normaliser is None else normaliser
    points = normaliser(pairs)
    bandwidth = jnp.float32(bandwidth)
    if kind == "kde":
        scores = kde_log_density(points, points, bandwidth)
        threshold = jnp.percentile(scores, percentile)
    else:
        scores = knn_distance(points, points, k, exclude_self=True)
        threshold = jnp.percentile(scores, 100.0 - percentile)
    return Guardian(normaliser, points, bandwidth, threshold, kind, int(k))


def guardian_scores(guardian: Guardian, states, actions) -> jax.Array:
    """``[Q]`` KDE log-densities (kind ``kde``) or k-th-NN distances (kind ``knn``) of raw pairs."""
    queries = guardian.normaliser(jnp.concatenate([jnp.asarray(states, jnp.float32),
                                                   jnp.asarray(actions, jnp.float32)], axis=-1))
    if guardian.kind == "kde":
        return kde_log_density(queries, guardian.points, guardian.bandwidth)
    return knn_distance(queries, guardian.points, guardian.k)


def guardian_flags(guardian: Guardian, states, actions) -> jax.Array:
    """``[Q]`` bool, ``g(s, a) = 1``: the pair is out of distribution."""
    scores = guardian_scores(guardian, states, actions)
    return scores < guardian.threshold if guardian.kind == "kde" else scores > guardian.threshold


class NearestNeighbourModel(NamedTuple):
    """The 1-NN dynamics model: dataset transitions keyed by their normalised ``(s, a)``."""

    normaliser: Normaliser
    keys: jax.Array  # [N, ds + da]
    next_states: jax.Array  # [N, ds] raw
    rewards: jax.Array  # [N]
    costs: jax.Array  # [N, K]
    terminals: jax.Array  # [N] bool
    died: jax.Array  # [N] bool (a terminal step that is a death)


def fit_nearest_neighbour(states, actions, next_states, rewards, costs, terminals, died,
                          normaliser: Normaliser) -> NearestNeighbourModel:
    """A :class:`NearestNeighbourModel` over the given transitions with a given normaliser (the guardian's)."""
    pairs = _pairs(states, actions)
    return NearestNeighbourModel(normaliser, normaliser(pairs), jnp.asarray(next_states, jnp.float32),
                                 jnp.asarray(rewards, jnp.float32), jnp.asarray(costs, jnp.float32),
                                 jnp.asarray(terminals, bool), jnp.asarray(died, bool))


def nearest_index(model: NearestNeighbourModel, states, actions, block: int = 1024) -> jax.Array:
    """``[Q]`` int index of the transition whose normalised ``(s, a)`` is nearest each query pair."""
    queries = model.normaliser(jnp.concatenate([jnp.asarray(states, jnp.float32),
                                                jnp.asarray(actions, jnp.float32)], axis=-1))
    return _blocked(lambda q: jnp.argmin(pairwise_sq_dist(q, model.keys), axis=1), queries, block)
