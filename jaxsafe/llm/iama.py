"""IAMA: inference-aware meta-alignment, i.e. training a base policy for the inference-time methods it will be used with.

Notes: ``shared/papers/iama.md``. Criteria ``i = 1..m`` each have a reward ``r_i`` and an inference-time
transform ``T_i`` applied to the base policy ``pi`` (best-of-N, soft best-of-N, or none); the per-criterion value is
``R_i[pi] = E_{y ~ T_i[pi]} r_i(y)`` and the meta-objective ``R[pi] = g(R_1, ..., R_m) - beta KL(pi || pi_ref)``
with an aggregator ``g`` (weighted sum, min, smooth-min). ``R`` is not linear in ``pi``, so plain reward
maximisation does not optimise it; its functional derivative does, and it is a drop-in reward for GRPO.

Four layers, all pure functions (unbatched maths with shape checks; ``vmap`` batches them):

* **Transforms and values** on a finite set of responses with weights (probabilities, or ``1/M`` for the empirical
  law of ``M`` samples): :func:`bon_value`, :func:`bon_distribution` (uniform tie-breaking), :func:`tilted_value`,
  :func:`tilted_distribution`; Monte Carlo from reward draws: :func:`bon_value_mc`, :func:`tilted_value_mc`, and the
  inference-time selections :func:`select_best_of_n`, :func:`select_soft_best_of_n`.
* **Functional derivatives** ``dR/dpi (y)``, defined up to an additive constant: :func:`bon_derivative`
  (``-int_{r(y)}^{r_max} N C(s)^{N-1} ds`` with ``C`` the CDF of the weighted rewards, one value per distinct reward
  level), :func:`tilted_derivative` (``e^{r/tau} / Z (r - R)``), and through the chain rule
  :func:`objective_derivative` with ``dg/dR_i`` from :func:`aggregate_gradient`. :func:`make_reward_transform` is the
  GRPO ``reward_transform``: ``[num_prompts, G, K] -> [num_prompts, G]``, jitted, vmapped over prompts.
* **The exact tabular layer** (one prompt, a finite response set of size ``K``; vmap over prompts):
  :func:`tabular_objective`, :func:`proximal_step` (the exact mirror-descent step), :func:`proximal_iterate`,
  :func:`standard_optimum` (what plain-reward alignment converges to), :func:`solve_lbfgs` (an independent optimiser:
  softmax logits and scipy's L-BFGS in float64), :func:`relative_smoothness` and :func:`theorem_5_2_bound`.
* **Proposition 3.1**: :func:`proposition_3_1_problem` (``Y = [0, 1]`` on a grid, ``r_1 = 1 - y^2``,
  ``r_2 = 1 - (1 - y)^2``) and :func:`proposition_3_1_bins` (the closed-form optimum
  ``alpha y^{alpha-1} (1-y)^{alpha-1} / (y^alpha + (1-y)^alpha)^2``, ``alpha = 1/(N-1)``, integrated over each bin).

An :class:`Objective` (static, hashable) names the transforms, the aggregator and its weights::

    objective = Objective.parse(["bon:4", "bon:4"], aggregate="sum", weights=(0.5, 0.5))
    transform = make_reward_transform(objective)          # GRPO's reward_transform
    shaped = transform(rewards)                            # rewards [num_prompts, G, 2] -> [num_prompts, G]

Soft best-of-N here is the exponential tilting ``T[pi] ∝ pi e^{r / tau}`` (the limit of soft BoN sampling with
many candidates, and the transform whose derivative the paper gives); :func:`select_soft_best_of_n` is the finite-N
sampling version used at inference.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.validation import is_int, require

__all__ = [
    "TRANSFORMS", "AGGREGATORS", "Transform", "Objective", "bon_value", "bon_derivative", "bon_distribution",
    "tilted_value", "tilted_derivative", "tilted_distribution", "bon_value_mc", "tilted_value_mc",
    "select_best_of_n", "select_soft_best_of_n", "transform_value", "transform_derivative", "aggregate_value",
    "aggregate_gradient", "criterion_values", "objective_value", "plain_reward", "objective_derivative", "make_reward_transform", "kl_divergence",
    "tabular_objective", "tabular_derivative", "proximal_step", "proximal_iterate", "standard_optimum",
    "solve_lbfgs", "relative_smoothness", "theorem_5_2_bound", "proposition_3_1_problem",
    "proposition_3_1_density", "proposition_3_1_bins",
]

#: Inference-time transforms: best-of-N (``bon:N``), soft best-of-N / tilting (``soft:TAU``), none (``plain``).
TRANSFORMS = ("bon", "soft", "plain")
#: Aggregators g of the per-criterion values.
AGGREGATORS = ("sum", "min", "smooth_min")


# ----------------------------------------------------------------------------- static description


@dataclasses.dataclass(frozen=True)
class Transform:
    """One criterion's inference-time transform (static, hashable).

    kind: ``"bon"`` (best-of-``n``), ``"soft"`` (tilting with temperature ``tau``) or ``"plain"`` (none).
    n: the number of candidates of best-of-N, an integer >= 1 (``bon:1`` is the plain policy).
    tau: the tilting temperature, > 0 (reward units).
    """

    kind: str
    n: int = 1
    tau: float = 1.0

    def __post_init__(self):
        require(self.kind in TRANSFORMS, "transform", f"one of {TRANSFORMS} (bon:N, soft:TAU, plain)", self.kind)
        require(is_int(self.n, 1), "transform N (bon:N)", "an integer >= 1", self.n)
        require(isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0,
                "transform tau (soft:TAU)", "a finite number > 0", self.tau)

    @classmethod
    def parse(cls, text: str) -> "Transform":
        """``"bon:4"``, ``"soft:0.1"`` or ``"plain"`` (ValueError naming what is allowed otherwise)."""
        if isinstance(text, Transform):
            return text
        name, _, argument = str(text).strip().partition(":")
        require(name in TRANSFORMS, "transform", "bon:N, soft:TAU or plain", text)
        if name == "plain":
            require(argument == "", "transform", "plain without an argument", text)
            return cls("plain")
        require(argument != "", "transform", f"{name}:{'N' if name == 'bon' else 'TAU'} with a value", text)
        if name == "bon":
            try:
                n = int(argument)
            except ValueError:
                raise ValueError(f"transform N (bon:N) must be an integer >= 1, got {argument!r}") from None
            return cls("bon", n=n)
        try:
            tau = float(argument)
        except ValueError:
            raise ValueError(f"transform tau (soft:TAU) must be a finite number > 0, got {argument!r}") from None
        return cls("soft", tau=tau)

    @property
    def label(self) -> str:
        return {"bon": f"bon:{self.n}", "soft": f"soft:{self.tau:g}", "plain": "plain"}[self.kind]


@dataclasses.dataclass(frozen=True)
class Objective:
    """The meta-objective ``g(R_1, ..., R_m)`` (static, hashable; the KL term lives with the trainer).

    transforms: one :class:`Transform` per criterion (``m >= 1``).
    aggregate: ``"sum"`` (``sum_i w_i R_i``), ``"min"`` (``min_i R_i``) or ``"smooth_min"``
      (``-(1/temperature) log sum_i w_i exp(-temperature R_i)``).
    weights: ``w [m]``, non-negative and summing to one (sum and smooth-min); None means uniform. ``min`` ignores
      them (given weights must still be valid).
    temperature: smooth-min's ``gamma`` > 0 (1 / reward units).
    """

    transforms: tuple[Transform, ...]
    aggregate: str = "sum"
    weights: tuple[float, ...] | None = None
    temperature: float = 1.0

    def __post_init__(self):
        transforms = tuple(Transform.parse(t) for t in self.transforms)
        object.__setattr__(self, "transforms", transforms)
        require(len(transforms) >= 1, "transforms", "one or more transforms (one per criterion)", transforms)
        require(self.aggregate in AGGREGATORS, "aggregate", f"one of {AGGREGATORS}", self.aggregate)
        weights = self.weights
        if weights is None:
            weights = (1.0 / len(transforms),) * len(transforms)
        weights = tuple(float(w) for w in weights)
        require(len(weights) == len(transforms), "weights", f"{len(transforms)} numbers (one per criterion)",
                list(weights))
        require(all(math.isfinite(w) and w >= 0 for w in weights), "weights", "finite numbers >= 0",
                list(weights))
        require(abs(sum(weights) - 1.0) <= 1e-6, "weights", "numbers that sum to one", list(weights))
        object.__setattr__(self, "weights", weights)
        require(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0, "temperature (smooth-min gamma)", "a finite number > 0", self.temperature)

    @classmethod
    def parse(cls, transforms: Sequence[str] | str, aggregate: str = "sum", weights=None,
              temperature: float = 1.0) -> "Objective":
        """From transform strings (``["bon:4", "soft:0.1"]``, or one string for every criterion when
        ``weights`` gives their number)."""
        if isinstance(transforms, (str, Transform)):
            count = 1 if weights is None else len(weights)
            transforms = [transforms] * count
        return cls(tuple(transforms), aggregate, None if weights is None else tuple(weights), temperature)

    @property
    def num_criteria(self) -> int:
        return len(self.transforms)

    @property
    def label(self) -> str:
        parts = ",".join(t.label for t in self.transforms)
        extra = "" if self.aggregate != "smooth_min" else f"(γ={self.temperature:g})"
        return f"{self.aggregate}{extra}[{parts}]"


# ----------------------------------------------------------------------------- transforms on a finite set


def _weights(rewards: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.full(rewards.shape, 1.0 / rewards.shape[0], rewards.dtype)
    weights = jnp.asarray(weights, rewards.dtype)
    if weights.shape != rewards.shape:
        raise ValueError(f"weights: shape {weights.shape} must match rewards {rewards.shape}")
    return weights


def _sorted_cdf(rewards, weights):
    """``(order, sorted rewards [M], gaps [M-1], F [M])`` with ``F_k`` the weight of the k+1 smallest rewards."""
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 1:
        raise ValueError(f"rewards: must be one reward per response [M], got shape {rewards.shape}")
    weights = _weights(rewards, weights)
    order = jnp.argsort(rewards)
    sorted_rewards = rewards[order]
    return order, sorted_rewards, jnp.diff(sorted_rewards), jnp.cumsum(weights[order])


def bon_value(rewards: jax.Array, n, weights: jax.Array | None = None) -> jax.Array:
    """Best-of-``n`` value ``E[max of n iid draws of r]`` of the law with ``weights [M]`` on ``rewards [M]``.

    ``= r_max - int C(s)^n ds = r_(M) - sum_k (r_(k+1) - r_(k)) F_k^n`` over the sorted rewards, which needs no tie
    rule (the gaps between tied rewards are zero). ``weights`` default to ``1/M`` (the empirical law of ``M``
    samples); exact probabilities on a finite response set give the exact value. Scalar.
    """
    _, sorted_rewards, gaps, cdf = _sorted_cdf(rewards, weights)
    return sorted_rewards[-1] - jnp.sum(gaps * cdf[:-1] ** n)


def bon_derivative(rewards: jax.Array, n, weights: jax.Array | None = None) -> jax.Array:
    """Functional derivative of the best-of-``n`` value at the law ``weights [M]`` on ``rewards [M]``: ``[M]``.

    ``dR/dpi (y) = -int_{r(y)}^{r_max} n C(s)^{n-1} ds`` (Prop. 4.2), with ``C`` the step CDF of the weighted rewards:
    for the sample at sorted position ``j``, ``-sum_{k >= j} (r_(k+1) - r_(k)) n F_k^{n-1}``. It is zero at the largest
    reward (the additive constant), and tied rewards get one value (their level's): the gaps inside a tie are zero, and
    the tie's last position carries ``F`` = the weight of every reward <= the level. It is the gradient of
    :func:`bon_value` with respect to ``weights``; ``n = 1`` gives ``r - r_max``.
    """
    order, _, gaps, cdf = _sorted_cdf(rewards, weights)
    terms = gaps * n * cdf[:-1] ** (n - 1)
    tail = jnp.cumsum(terms[::-1])[::-1]
    sorted_derivative = -jnp.concatenate([tail, jnp.zeros((1,), tail.dtype)])
    return jnp.zeros_like(sorted_derivative).at[order].set(sorted_derivative)


def bon_distribution(probs: jax.Array, rewards: jax.Array, n) -> jax.Array:
    """The best-of-``n`` law on a finite response set ``[K]``: draw ``n`` responses from ``probs [K]``, keep one with
    the largest reward, ties broken uniformly at random among the drawn responses of the top level.

    ``q(y) = p(y) / P(level) * (C(r_y)^n - C(r_y-)^n)`` with ``C`` the CDF of ``r`` under ``p`` (within a level, mass
    stays proportional to ``p``). ``sum q = 1`` and ``q @ rewards = bon_value(rewards, n, probs)``.
    """
    probs, rewards = jnp.asarray(probs), jnp.asarray(rewards)
    if probs.shape != rewards.shape or probs.ndim != 1:
        raise ValueError(f"probs/rewards: must both be [K], got {probs.shape} and {rewards.shape}")
    at_or_below = jnp.sum(jnp.where(rewards[None, :] <= rewards[:, None], probs[None, :], 0.0), axis=1)
    below = jnp.sum(jnp.where(rewards[None, :] < rewards[:, None], probs[None, :], 0.0), axis=1)
    level = at_or_below - below
    safe_level = jnp.where(level > 0, level, 1.0)
    return jnp.where(level > 0, probs / safe_level * (at_or_below ** n - below ** n), 0.0)


def _tilt_weights(rewards, tau, weights):
    """``e^{r/tau} / Z`` [M] with ``Z = sum_j w_j e^{r_j/tau}``, computed with the largest reward shifted out."""
    rewards = jnp.asarray(rewards)
    weights = _weights(rewards, weights)
    scaled = (rewards - jnp.max(rewards)) / tau
    return jnp.exp(scaled) / jnp.sum(weights * jnp.exp(scaled))


def tilted_value(rewards: jax.Array, tau, weights: jax.Array | None = None) -> jax.Array:
    """Soft best-of-N (tilting) value ``E_p[r e^{r/tau}] / E_p[e^{r/tau}]`` of the law ``weights [M]`` on
    ``rewards [M]``. Scalar."""
    weights = _weights(jnp.asarray(rewards), weights)
    return jnp.sum(weights * _tilt_weights(rewards, tau, weights) * rewards)


def tilted_derivative(rewards: jax.Array, tau, weights: jax.Array | None = None) -> jax.Array:
    """Functional derivative of the tilting value (Prop. 4.3): ``e^{r(y)/tau} / Z * (r(y) - R)`` ``[M]``, with ``Z`` and
    ``R`` those of the law ``weights`` (default: the empirical law of the ``M`` samples)."""
    rewards = jnp.asarray(rewards)
    weights = _weights(rewards, weights)
    tilt = _tilt_weights(rewards, tau, weights)
    return tilt * (rewards - jnp.sum(weights * tilt * rewards))


def tilted_distribution(probs: jax.Array, rewards: jax.Array, tau) -> jax.Array:
    """The tilted law ``p e^{r/tau} / Z`` on a finite response set ``[K]`` (zero where ``p`` is)."""
    probs = jnp.asarray(probs)
    return jnp.where(probs > 0, probs * _tilt_weights(rewards, tau, probs), 0.0)


def bon_value_mc(reward_draws: jax.Array) -> jax.Array:
    """Monte Carlo best-of-N value from ``reward_draws [S, N]`` (S independent groups of N candidates): the mean of
    the group maxima. Standard error: ``std(max) / sqrt(S)``."""
    reward_draws = jnp.asarray(reward_draws)
    if reward_draws.ndim != 2:
        raise ValueError(f"reward_draws: must be [S, N] groups of candidates, got shape {reward_draws.shape}")
    return jnp.mean(jnp.max(reward_draws, axis=1))


def tilted_value_mc(reward_draws: jax.Array, tau) -> jax.Array:
    """Monte Carlo tilting value from ``reward_draws [S]`` of the base policy (self-normalised importance weights
    ``e^{r/tau}``; consistent as S grows)."""
    return tilted_value(jnp.ravel(jnp.asarray(reward_draws)), tau)


def select_best_of_n(candidate_rewards: jax.Array) -> jax.Array:
    """Best-of-N at inference: the index ``[...]`` of a largest reward in ``candidate_rewards [..., N]`` (the first
    one on a tie; draws are exchangeable, so this is uniform tie-breaking in law)."""
    return jnp.argmax(candidate_rewards, axis=-1)


def select_soft_best_of_n(key: jax.Array, candidate_rewards: jax.Array, tau) -> jax.Array:
    """Soft best-of-N at inference: an index ``[...]`` drawn with probabilities ``softmax(r / tau)`` over the last
    axis of ``candidate_rewards [..., N]`` (its law tends to the tilting of :func:`tilted_distribution` as N grows)."""
    return jax.random.categorical(key, jnp.asarray(candidate_rewards) / tau, axis=-1)


def transform_value(transform: Transform, rewards: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """``E_{T[p]} r`` of one transform for the law ``weights [M]`` on ``rewards [M]`` (scalar)."""
    if transform.kind == "bon":
        return bon_value(rewards, transform.n, weights)
    if transform.kind == "soft":
        return tilted_value(rewards, transform.tau, weights)
    rewards = jnp.asarray(rewards)
    return jnp.sum(_weights(rewards, weights) * rewards)


def transform_derivative(transform: Transform, rewards: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """The functional derivative ``[M]`` of :func:`transform_value` (``plain``: the reward itself)."""
    if transform.kind == "bon":
        return bon_derivative(rewards, transform.n, weights)
    if transform.kind == "soft":
        return tilted_derivative(rewards, transform.tau, weights)
    return jnp.asarray(rewards)


# ----------------------------------------------------------------------------- aggregators and the chain rule


def aggregate_value(objective: Objective, values: jax.Array) -> jax.Array:
    """``g(R_1, ..., R_m)`` for per-criterion values ``values [m]`` (scalar)."""
    values = jnp.asarray(values)
    weights = jnp.asarray(objective.weights, values.dtype)
    if objective.aggregate == "sum":
        return weights @ values
    if objective.aggregate == "min":
        return jnp.min(values)
    gamma = objective.temperature
    return -jax.nn.logsumexp(-gamma * values, b=weights) / gamma


def aggregate_gradient(objective: Objective, values: jax.Array) -> jax.Array:
    """``dg/dR_i`` ``[m]`` at ``values [m]``: the weights (sum), the indicator of the smallest value shared equally
    among ties (min, a supergradient), ``softmax(-gamma R + log w)`` (smooth-min)."""
    values = jnp.asarray(values)
    weights = jnp.asarray(objective.weights, values.dtype)
    if objective.aggregate == "sum":
        return weights
    if objective.aggregate == "min":
        smallest = (values == jnp.min(values)).astype(values.dtype)
        return smallest / jnp.sum(smallest)
    return jax.nn.softmax(-objective.temperature * values + jnp.log(weights))


def _criteria(objective: Objective, rewards: jax.Array) -> jax.Array:
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 2 or rewards.shape[1] != objective.num_criteria:
        raise ValueError(f"rewards: must be [M, {objective.num_criteria}] (one column per criterion of "
                         f"{objective.label}), got shape {rewards.shape}")
    return rewards


def criterion_values(objective: Objective, rewards: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """``R_i`` ``[m]``: each criterion's transformed value for the law ``weights [M]`` on ``rewards [M, m]``."""
    rewards = _criteria(objective, rewards)
    return jnp.stack([transform_value(t, rewards[:, i], weights) for i, t in enumerate(objective.transforms)])


def objective_value(objective: Objective, rewards: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """``g(R_1, ..., R_m)`` for the law ``weights [M]`` on ``rewards [M, m]`` (scalar)."""
    return aggregate_value(objective, criterion_values(objective, rewards, weights))


def objective_derivative(objective: Objective, rewards: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """``dg/dpi (y) = sum_i dg/dR_i * dR_i/dpi (y)`` ``[M]`` at the law ``weights [M]`` on ``rewards [M, m]``.

    With the default weights (``1/M``), this is Algorithm 1's non-linear reward of the ``M`` responses sampled for one
    prompt: every derivative and ``dg/dR_i`` are evaluated at their empirical law.
    """
    rewards = _criteria(objective, rewards)
    derivatives = jnp.stack([transform_derivative(t, rewards[:, i], weights)
                             for i, t in enumerate(objective.transforms)], axis=1)
    return derivatives @ aggregate_gradient(objective, criterion_values(objective, rewards, weights))


def make_reward_transform(objective: Objective) -> Callable[[jax.Array], jax.Array]:
    """GRPO's ``reward_transform``: ``rewards [num_prompts, G, K] -> [num_prompts, G]``, the non-linear reward of
    each response from its group of ``G >= 2`` (:func:`objective_derivative`), jitted and vmapped over prompts.

    The shape is checked when it is first traced (ValueError naming G or K); ``K`` must equal the objective's
    number of criteria.
    """
    batched = jax.vmap(partial(objective_derivative, objective))

    @jax.jit
    def reward_transform(rewards):
        if rewards.ndim != 3:
            raise ValueError(f"rewards: must be [num_prompts, G, K], got shape {rewards.shape}")
        if rewards.shape[1] < 2:
            raise ValueError(f"group size G (M responses per prompt) must be >= 2, got {rewards.shape[1]}")
        if rewards.shape[2] != objective.num_criteria:
            raise ValueError(f"rewards: K = {rewards.shape[2]} criteria, but {objective.label} has "
                             f"{objective.num_criteria}")
        return batched(rewards.astype(jnp.float32))

    return reward_transform


# ----------------------------------------------------------------------------- the exact tabular layer


def kl_divergence(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """``KL(p || q)`` of two log-probability vectors ``[K]`` (terms with ``p = 0`` count zero)."""
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0))


def tabular_objective(objective: Objective, log_probs: jax.Array, rewards: jax.Array, log_reference: jax.Array,
                      beta) -> jax.Array:
    """The exact IAMA objective ``g(R_1[pi], ..., R_m[pi]) - beta KL(pi || pi_ref)`` on a finite response set.

    log_probs, log_reference: ``[K]`` log-probabilities of the policy and the reference. rewards: ``[K, m]``.
    """
    return (objective_value(objective, rewards, jnp.exp(log_probs))
            - beta * kl_divergence(log_probs, log_reference))


def tabular_derivative(objective: Objective, log_probs: jax.Array, rewards: jax.Array) -> jax.Array:
    """The exact functional derivative ``[K]`` of ``g(R[pi])`` at ``pi = exp(log_probs)`` on rewards ``[K, m]``."""
    return objective_derivative(objective, rewards, jnp.exp(log_probs))


def proximal_step(log_probs: jax.Array, derivative: jax.Array, log_reference: jax.Array, beta, eta) -> jax.Array:
    """The exact mirror-descent (proximal) step of GRPO's surrogate on a finite response set:

    ``pi_{t+1} = argmax_pi <r~, pi> - beta KL(pi || pi_ref) - (1/eta) KL(pi || pi_t)
    ∝ exp((r~ + beta log pi_ref + log pi_t / eta) / (beta + 1/eta))`` (log-probabilities ``[K]`` in and out).
    """
    inverse_eta = 1.0 / eta
    return jax.nn.log_softmax((derivative + beta * log_reference + inverse_eta * log_probs) / (beta + inverse_eta))


def plain_reward(objective: Objective, rewards: jax.Array) -> jax.Array:
    """The reward standard alignment uses ``[K]``: the weighted mean ``sum_i w_i r_i`` (uniform weights for min)."""
    rewards = _criteria(objective, rewards)
    weights = (jnp.asarray(objective.weights, rewards.dtype) if objective.aggregate != "min"
               else jnp.full((objective.num_criteria,), 1.0 / objective.num_criteria, rewards.dtype))
    return rewards @ weights


@partial(jax.jit, static_argnames=("objective", "num_steps", "plain"))
def proximal_iterate(objective: Objective, log_probs: jax.Array, rewards: jax.Array, log_reference: jax.Array,
                     beta, eta, num_steps: int, plain: bool = False):
    """``num_steps`` exact proximal steps from ``log_probs [K]``; ``(final log-probs [K], objective [num_steps + 1])``.

    Each step uses the exact derivative at the current policy (``plain=True``: the plain reward
    :func:`plain_reward` instead, i.e. standard alignment). The trace is the IAMA objective
    (:func:`tabular_objective`) before the first and after every step.
    """
    fixed_reward = plain_reward(objective, rewards)

    def step(current, _):
        derivative = fixed_reward if plain else tabular_derivative(objective, current, rewards)
        following = proximal_step(current, derivative, log_reference, beta, eta)
        return following, tabular_objective(objective, following, rewards, log_reference, beta)

    final, trace = jax.lax.scan(step, log_probs, None, length=num_steps)
    start = tabular_objective(objective, log_probs, rewards, log_reference, beta)
    return final, jnp.concatenate([start[None], trace])


def standard_optimum(objective: Objective, rewards: jax.Array, log_reference: jax.Array, beta) -> jax.Array:
    """What plain-reward alignment converges to: ``log pi ∝ log pi_ref + r_plain / beta`` ``[K]`` (beta > 0)."""
    return jax.nn.log_softmax(log_reference + plain_reward(objective, rewards) / beta)


def solve_lbfgs(objective: Objective, rewards, log_reference, beta, initial_logits=None, tolerance: float = 0.0,
                max_iterations: int = 20000) -> np.ndarray:
    """An independent optimiser of :func:`tabular_objective`: softmax logits, scipy's L-BFGS-B, gradients by JAX in
    float64, run until no relative decrease is left at float64 resolution (``tolerance = 0``: scipy's ``ftol`` and
    ``gtol``). Returns the optimum's log-probabilities ``[K]`` (float64 numpy)."""
    from scipy.optimize import minimize

    rewards64 = np.asarray(rewards, np.float64)
    log_reference64 = np.asarray(log_reference, np.float64)
    start = (np.zeros(rewards64.shape[0]) if initial_logits is None else np.asarray(initial_logits, np.float64))
    with jax.enable_x64(True):
        rewards_j, reference_j = jnp.asarray(rewards64), jnp.asarray(log_reference64)

        @jax.jit
        def loss_and_grad(logits):
            return jax.value_and_grad(lambda z: -tabular_objective(
                objective, jax.nn.log_softmax(z), rewards_j, reference_j, beta))(logits)

        def fun(logits):
            value, grad = loss_and_grad(jnp.asarray(logits))
            return float(value), np.asarray(grad, np.float64)

        result = minimize(fun, start, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iterations, "maxfun": 4 * max_iterations, "ftol": tolerance,
                                   "gtol": tolerance, "maxcor": 30})
        return np.asarray(jax.nn.log_softmax(jnp.asarray(result.x)), np.float64)


def relative_smoothness(objective: Objective, rewards) -> float:
    """An upper bound on ``L``, the smoothness of ``g(R[pi])`` relative to KL (Assumption 5.1), for the weighted sum
    of best-of-N (and plain) criteria: ``sum_i w_i N_i (N_i - 1) span(r_i) / 4``.

    From ``R_i[pi] = r_max - int C^N``: the Bregman gap of ``-R_i`` is at most ``N (N-1)/2 span(r_i) sup|C' - C|^2``,
    and ``sup|C' - C| <= TV <= sqrt(KL / 2)`` (Pinsker). ValueError for other aggregators or transforms (tilting is not
    concave, so Theorem 5.2 does not apply).
    """
    require(objective.aggregate == "sum", "aggregate", "'sum' for the Theorem 5.2 constant", objective.aggregate)
    rewards = np.asarray(rewards, np.float64)
    total = 0.0
    for i, (transform, weight) in enumerate(zip(objective.transforms, objective.weights)):
        require(transform.kind in ("bon", "plain"), "transform", "bon:N or plain for the Theorem 5.2 constant",
                transform.label)
        n = transform.n if transform.kind == "bon" else 1
        total += weight * n * (n - 1) * float(np.ptp(rewards[:, i])) / 4.0
    return total


def theorem_5_2_bound(beta: float, smoothness: float, initial_kl: float, steps) -> np.ndarray:
    """Theorem 5.2's bound on ``L[pi_T] - L[pi*]`` after ``T`` exact proximal steps with ``eta = 1 / L``:
    ``beta KL(pi* || pi_0) / (((L + beta) / L)^T - 1)`` (``steps`` an array of T >= 1)."""
    steps = np.asarray(steps, np.float64)
    return beta * initial_kl / np.expm1(steps * np.log1p(beta / smoothness))


# ----------------------------------------------------------------------------- Proposition 3.1


def proposition_3_1_problem(num_bins: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """``(y [K] bin midpoints of [0, 1], rewards [K, 2])`` with ``r_1 = 1 - y^2`` and ``r_2 = 1 - (1 - y)^2``."""
    require(is_int(num_bins, 2), "num_bins", "an integer >= 2", num_bins)
    y = (np.arange(num_bins) + 0.5) / num_bins
    return y, np.stack([1.0 - y ** 2, 1.0 - (1.0 - y) ** 2], axis=1)


def _alpha(n: int) -> float:
    require(is_int(n, 2), "N", "an integer >= 2 (Proposition 3.1 needs best-of-N with N >= 2)", n)
    return 1.0 / (n - 1)


def proposition_3_1_density(y, n: int) -> np.ndarray:
    """The IAMA optimum's density ``alpha y^{alpha-1} (1-y)^{alpha-1} / (y^alpha + (1-y)^alpha)^2`` on ``(0, 1)``,
    ``alpha = 1 / (N - 1)`` (uniform at N = 2)."""
    alpha, y = _alpha(n), np.asarray(y, np.float64)
    return alpha * y ** (alpha - 1) * (1 - y) ** (alpha - 1) / (y ** alpha + (1 - y) ** alpha) ** 2


def proposition_3_1_bins(num_bins: int, n: int) -> np.ndarray:
    """The closed-form optimum's probability of each of ``num_bins`` equal bins of [0, 1] ``[K]``, from its CDF
    ``y^alpha / (y^alpha + (1 - y)^alpha)``."""
    alpha = _alpha(n)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    cdf = edges ** alpha / (edges ** alpha + (1 - edges) ** alpha)
    return np.diff(cdf)
