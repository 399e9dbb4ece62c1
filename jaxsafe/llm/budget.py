"""The relative budget xi = H / E[T]: verifiable rewards, its estimator, a budget chooser, a tracker, an exact layer.

``T`` is the number of tokens until the first correct solution under a policy (the base policy for xi_0), ``H``
the token budget. Following the relative-budget theory (Wachi et al. 2026, ``papers/relative_budget.md``):

* **Rewards** (:class:`VerifiableReward`): ``binary`` ``R = 1{T <= H}`` or ``solve_early`` ``R = (H - T + 1) / H``
  for ``T <= H`` else 0 (the paper's ``H - T + 1`` divided by ``H`` so both forms lie in [0, 1]; group-normalised
  advantages do not change).
* **Estimator** (:func:`estimate_xi`): per prompt, ``m`` rollouts with a long cap ``C >> H`` give first-success
  positions, censored at ``C``; ``E[T]`` is the sample mean when censoring is negligible, otherwise the mean
  ``K / p`` of a **censored Gamma(K, p) maximum-likelihood fit** (:func:`censored_gamma_mle`, scipy's gamma
  distribution and optimiser); it also reports ``q(H) = P(T <= H)`` and the empirical anti-concentration
  ``c(eps) = P[R >= E R + sigma_R sqrt(eps)]``.
* **Budget chooser / data filter** (:func:`choose_budget`, :func:`in_band`): ``H = ceil(xi * E[T])`` per prompt
  or globally, or keep the prompts whose xi lies in a band at fixed ``H``.
* **Online tracker** (:class:`OnlineXiTracker`): re-estimates ``E[T]`` under the current policy every k
  iterations; :meth:`~OnlineXiTracker.linear_fit` tests the linear growth of xi over iterations.
* **Exact tabular layer**: a policy described by its per-sub-step success probabilities ``p_j`` (e.g. a tabular
  softmax over guesses, :func:`tabular_step_probs`) has ``T = sum_j Geometric(p_j)``; :func:`first_success_pmf`,
  :func:`exact_reward_moments` (J, E R, Var R), :func:`exact_mean_first_success` (absorbing-chain solve) and
  :func:`exact_anti_concentration` compute everything in closed form, to validate the estimators.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

REWARD_FORMS = ("binary", "solve_early")

__all__ = ["REWARD_FORMS", "VerifiableReward", "reward_from_first_success", "censored_gamma_mle",
           "estimate_mean_first_success", "XiEstimate", "estimate_xi", "sample_first_success", "choose_budget",
           "in_band", "OnlineXiTracker", "first_success_pmf", "exact_mean_first_success", "exact_reward_moments",
           "exact_anti_concentration", "tabular_step_probs"]


# ----------------------------------------------------------------------------- verifiable rewards


def _check_form(form: str) -> None:
    if form not in REWARD_FORMS:
        raise ValueError(f"reward form must be one of {REWARD_FORMS}, got {form!r}")


def reward_from_first_success(positions, solved, horizon: int, form: str) -> jax.Array:
    """Scalar rewards [B] in [0, 1] from first-success positions ``T [B]`` (1-based) under budget ``horizon``."""
    _check_form(form)
    if form == "binary":
        return solved.astype(jnp.float32)
    return jnp.where(solved, (horizon - positions + 1) / horizon, 0.0).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class VerifiableReward:
    """A reward function on the GRPO contract, built from a task's verifier (hashable: a jit static argument).

    ``first_success(task, prompt_tokens [B, P], responses [B, H], response_mask [B, H]) -> (T [B], solved [B])``
    is the task module's verifier (a module-level function). Calling the object gives ``rewards [B, 1]`` in
    :attr:`reward_range` = [0, 1]; :meth:`success` gives ``T <= H`` per response (pass@1 within H).
    """

    task: Any
    first_success: Callable
    form: str = "binary"

    def __post_init__(self):
        _check_form(self.form)

    reward_range = (0.0, 1.0)

    def __call__(self, prompt_tokens, responses, response_mask):
        positions, solved = self.first_success(self.task, prompt_tokens, responses, response_mask)
        return reward_from_first_success(positions, solved, responses.shape[1], self.form)[:, None]

    def positions(self, prompt_tokens, responses, response_mask):
        """The task's verifier bound to its task: ``(T [B], solved [B])``."""
        return self.first_success(self.task, prompt_tokens, responses, response_mask)

    def success(self, prompt_tokens, responses, response_mask):
        return self.positions(prompt_tokens, responses, response_mask)[1]


# ----------------------------------------------------------------------------- the estimator


def censored_gamma_mle(times, censored, cap: float | None = None) -> tuple[float, float]:
    """Maximum-likelihood ``(shape K, rate p)`` of a Gamma fitted to right-censored first-success times.

    times [n]: observed positions (ignored where ``censored``); censored [n] bool: the rollout reached the cap
    without success, contributing ``log P(T > cap)``. ``cap`` defaults to ``max(times)`` of censored entries.
    Optimises the log-likelihood (``scipy.stats.gamma.logpdf`` / ``logsf``) over ``(log K, log mean)`` with
    ``scipy.optimize.minimize`` (L-BFGS-B, from the method-of-moments start); the fitted mean is ``K / p``. Without
    censoring the fitted mean equals the sample mean (the Gamma MLE's stationarity in the scale).
    """
    from scipy import optimize, stats

    times = np.asarray(times, np.float64)
    censored = np.asarray(censored, bool)
    observed = times[~censored]
    if observed.size == 0:
        raise ValueError("censored_gamma_mle: every rollout is censored (no success at the cap), so E[T] cannot be "
                         "estimated; sample with a larger cap")
    cap = float(np.max(times[censored])) if cap is None and censored.any() else cap
    n_censored = int(censored.sum())
    mean0 = observed.mean()
    var0 = observed.var() if observed.size > 1 else mean0 ** 2
    shape0 = float(np.clip(mean0 ** 2 / max(var0, 1e-8), 0.05, 1e3))

    def negative_log_likelihood(theta):
        shape, mean = np.exp(theta)
        scale = mean / shape
        value = -np.sum(stats.gamma.logpdf(observed, shape, scale=scale))
        if n_censored:
            value -= n_censored * stats.gamma.logsf(cap, shape, scale=scale)
        return value if np.isfinite(value) else 1e300

    start = np.log([shape0, mean0])
    result = optimize.minimize(negative_log_likelihood, start, method="L-BFGS-B",
                               options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
    result = optimize.minimize(negative_log_likelihood, result.x, method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000})
    shape, mean = np.exp(result.x)
    return float(shape), float(shape / mean)


def estimate_mean_first_success(times, censored, cap: int, censoring_tolerance: float = 0.01) -> dict:
    """``E[T]`` from one prompt's (or a pooled set of) rollouts: ``{"mean", "method", "censored_fraction",
    "shape", "rate"}``.

    The sample mean (censored rollouts counted at the cap, a lower bound) when at most ``censoring_tolerance`` of
    the rollouts are censored, else the censored Gamma MLE's ``K / p``.
    """
    times = np.asarray(times, np.float64)
    censored = np.asarray(censored, bool)
    fraction = float(censored.mean())
    if fraction >= 1.0:
        raise ValueError(f"no rollout succeeded within the cap {cap}: E[T] (and so xi) cannot be estimated; rerun "
                         f"with a larger cap (e.g. cap={4 * cap})")
    if fraction <= censoring_tolerance:
        return {"mean": float(np.where(censored, cap, times).mean()), "method": "sample_mean",
                "censored_fraction": fraction, "shape": None, "rate": None}
    shape, rate = censored_gamma_mle(times, censored, cap)
    return {"mean": shape / rate, "method": "censored_gamma_mle", "censored_fraction": fraction,
            "shape": shape, "rate": rate}


class XiEstimate(NamedTuple):
    """Per group (prompt, or one pooled group): mean_first_success [N], xi [N] = H / E[T], success_within_budget
    [N] = q(H), anti_concentration [N] = c(eps) of the chosen reward form, method [N] (str), censored_fraction
    [N]; horizon H, cap and epsilon."""

    mean_first_success: np.ndarray
    xi: np.ndarray
    success_within_budget: np.ndarray
    anti_concentration: np.ndarray
    method: list
    censored_fraction: np.ndarray
    horizon: int
    cap: int
    epsilon: float


def _empirical_anti_concentration(rewards: np.ndarray, epsilon: float) -> float:
    mean, std = rewards.mean(), rewards.std()
    return float(np.mean(rewards >= mean + std * np.sqrt(epsilon)))


def estimate_xi(times, censored, cap: int, horizon: int, *, form: str = "binary", epsilon: float = 1.0,
                pooled: bool = False, censoring_tolerance: float = 0.01) -> XiEstimate:
    """The relative budget ``xi = H / E[T]`` per prompt (or pooled over prompts) from capped rollouts.

    times [N, m]: first-success positions of ``m`` rollouts of each of ``N`` prompts (any value where censored);
    censored [N, m] bool: no success within ``cap``. ``horizon`` (H) must be ``<= cap``. ``q(H)`` is the fraction
    of rollouts with ``T <= H``; ``c(eps)`` is computed on the rewards of ``form`` at budget H.
    Raises ``ValueError`` when H or the cap are not positive, or when a prompt has no success at the cap (xi cannot
    be estimated there; the message names the prompts and suggests a larger cap).
    """
    times = np.asarray(times)
    censored = np.asarray(censored, bool)
    if times.ndim != 2 or censored.shape != times.shape:
        raise ValueError(f"times and censored must both be [N, m], got {times.shape} and {censored.shape}")
    if not (isinstance(horizon, (int, np.integer)) and horizon >= 1):
        raise ValueError(f"horizon (the budget H) must be an integer >= 1, got {horizon!r}")
    if not (isinstance(cap, (int, np.integer)) and cap >= horizon):
        raise ValueError(f"cap must be an integer >= horizon={horizon}, got {cap!r}")
    _check_form(form)
    if pooled:
        times, censored = times.reshape(1, -1), censored.reshape(1, -1)
    unsolved = np.flatnonzero(censored.all(axis=1))
    if unsolved.size:
        shown = ", ".join(map(str, unsolved[:10])) + (" ..." if unsolved.size > 10 else "")
        raise ValueError(f"{unsolved.size} of {len(times)} prompt(s) ({shown}) have no success in {times.shape[1]} "
                         f"rollouts at cap {cap}: xi cannot be estimated there; rerun with a larger cap (e.g. "
                         f"cap={4 * cap}) or more rollouts, or drop those prompts")
    estimates = [estimate_mean_first_success(t, c, cap, censoring_tolerance) for t, c in zip(times, censored)]
    mean = np.asarray([e["mean"] for e in estimates])
    within = (~censored) & (times <= horizon)
    positions = np.where(within, times, horizon + 1)
    rewards = np.asarray(reward_from_first_success(jnp.asarray(positions), jnp.asarray(within), horizon, form))
    return XiEstimate(mean_first_success=mean, xi=horizon / mean, success_within_budget=within.mean(axis=1),
                      anti_concentration=np.asarray([_empirical_anti_concentration(r, epsilon) for r in rewards]),
                      method=[e["method"] for e in estimates],
                      censored_fraction=np.asarray([e["censored_fraction"] for e in estimates]),
                      horizon=int(horizon), cap=int(cap), epsilon=float(epsilon))


def sample_first_success(graphdef, params, prompt_tokens, first_success_fn: Callable, key: jax.Array, *,
                         rollouts: int, cap: int, vocab_mask=None, temperature=1.0, pad_token: int = 0):
    """``(times [N, m], censored [N, m])`` numpy arrays from ``m = rollouts`` sampled responses of ``cap`` tokens
    per prompt (``first_success_fn(prompts, responses, mask) -> (T, solved)``, e.g. a task's verifier bound to
    its task). Sampling uses GRPO's sampler (:func:`jaxsafe.llm.grpo.sample_group`)."""
    if not (isinstance(rollouts, int) and rollouts >= 1):
        raise ValueError(f"rollouts must be an integer >= 1, got {rollouts!r}")
    if not (isinstance(cap, int) and cap >= 1):
        raise ValueError(f"cap must be an integer >= 1, got {cap!r}")
    prompts = jnp.repeat(jnp.asarray(prompt_tokens), rollouts, axis=0)
    times, solved = _sample_first_success_jit(graphdef, first_success_fn, cap, pad_token, params, prompts, key,
                                              vocab_mask, jnp.asarray(temperature, jnp.float32))
    n = prompt_tokens.shape[0]
    return np.asarray(times).reshape(n, rollouts), ~np.asarray(solved).reshape(n, rollouts)


@jax.jit(static_argnums=(0, 1, 2, 3))
def _sample_first_success_jit(graphdef, first_success_fn, cap, pad_token, params, prompts, key, vocab_mask,
                              temperature):
    from jaxsafe.llm import grpo

    out = grpo.sample_group(graphdef, params, prompts, key, cap, vocab_mask, temperature, pad_token=pad_token)
    return first_success_fn(prompts, out.response_tokens, out.response_mask[:, prompts.shape[1]:])


# ----------------------------------------------------------------------------- budget chooser, filter, tracker


def choose_budget(mean_first_success, xi_target: float, per_prompt: bool = False):
    """The budget ``H = ceil(xi_target * E[T])`` (at least 1): an int array per prompt, or one int for the whole
    set from the median ``E[T]`` (robust to a few hard prompts)."""
    if not (np.isfinite(xi_target) and xi_target > 0):
        raise ValueError(f"xi_target must be a finite number > 0, got {xi_target!r}")
    mean = np.asarray(mean_first_success, np.float64)
    if mean.size == 0 or not np.all(np.isfinite(mean) & (mean > 0)):
        raise ValueError("mean_first_success must be a non-empty array of finite values > 0")
    if per_prompt:
        return np.maximum(np.ceil(xi_target * mean - 1e-9), 1).astype(int)
    return int(max(np.ceil(xi_target * np.median(mean) - 1e-9), 1))


def in_band(xi, band: tuple[float, float] = (1.5, 2.0)) -> np.ndarray:
    """Boolean mask of the prompts whose ``xi`` lies in the closed ``band`` (the data filter at fixed H)."""
    low, high = band
    if not (0 < low <= high < np.inf):
        raise ValueError(f"band must be (low, high) with 0 < low <= high < inf, got {band!r}")
    xi = np.asarray(xi, np.float64)
    return (xi >= low) & (xi <= high)


@dataclasses.dataclass
class OnlineXiTracker:
    """Re-estimates ``E[T]`` under the current policy every ``every`` iterations at budget ``horizon``.

    ``due(i)`` says whether iteration ``i`` is a tracking point (0, every, 2 every, ...); ``record(i, estimate)``
    stores an :class:`XiEstimate` (its pooled or mean xi); :meth:`linear_fit` fits ``xi_i = xi_0 + slope * i``
    (least squares) and reports ``r2``.
    """

    horizon: int
    every: int
    iterations: list = dataclasses.field(default_factory=list)
    xi: list = dataclasses.field(default_factory=list)
    mean_first_success: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"OnlineXiTracker.every must be an integer >= 1, got {self.every!r}")

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def record(self, iteration: int, estimate: XiEstimate) -> None:
        mean = float(np.mean(estimate.mean_first_success))
        self.iterations.append(int(iteration))
        self.mean_first_success.append(mean)
        self.xi.append(self.horizon / mean)

    def linear_fit(self) -> dict:
        x, y = np.asarray(self.iterations, float), np.asarray(self.xi, float)
        if len(x) < 2:
            return {"slope": None, "intercept": None, "r2": None}
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        total = np.sum((y - y.mean()) ** 2)
        return {"slope": float(slope), "intercept": float(intercept),
                "r2": float(1 - np.sum(residual ** 2) / total) if total > 0 else 1.0}


# ----------------------------------------------------------------------------- exact tabular layer


def tabular_step_probs(logits, targets) -> jax.Array:
    """Per-sub-step success probabilities ``p_j`` [K] of a tabular softmax policy: ``logits [K, M]`` (one
    softmax over M guesses per sub-step) and the correct guess ``targets [K]``."""
    return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), jnp.asarray(targets)[:, None], axis=1)[:, 0]


def first_success_pmf(step_probs, horizon: int) -> jax.Array:
    """``P(T = t)`` for ``t = 1 .. horizon`` [horizon] when sub-step j succeeds with probability ``p_j`` per token
    (``T = sum_j Geometric(p_j)``): forward recursion over the progress distribution (differentiable)."""
    step_probs = jnp.asarray(step_probs, jnp.float32)
    steps = step_probs.shape[0]

    def token(progress, _):
        advance = progress[:-1] * step_probs
        done_now = advance[-1]
        stay = progress[:-1] * (1 - step_probs)
        new = jnp.concatenate([stay, jnp.zeros(1)]) + jnp.concatenate([jnp.zeros(1), advance])
        return new.at[-1].set(0.0), done_now

    initial = jnp.zeros(steps + 1).at[0].set(1.0)
    _, pmf = jax.lax.scan(token, initial, None, length=horizon)
    return pmf


def exact_mean_first_success(step_probs) -> float:
    """``E[T]`` by solving the absorbing chain's ``(I - Q) t = 1`` (transient states = sub-steps); equals the
    closed form ``sum_j 1 / p_j``."""
    p = np.asarray(step_probs, np.float64)
    k = p.size
    transient = np.diag(1 - p) + np.diag(p[:-1], 1)
    return float(np.linalg.solve(np.eye(k) - transient, np.ones(k))[0])


def _reward_values(horizon: int, form: str) -> jax.Array:
    t = jnp.arange(1, horizon + 1)
    return reward_from_first_success(t, jnp.ones(horizon, bool), horizon, form)


def exact_reward_moments(step_probs, horizon: int, form: str = "binary") -> dict:
    """Closed-form ``{"J": P(T <= H), "mean_reward": E R, "reward_variance": Var R}`` at budget ``H``."""
    pmf = first_success_pmf(step_probs, horizon)
    values = _reward_values(horizon, form)
    mean = jnp.sum(pmf * values)
    return {"J": jnp.sum(pmf), "mean_reward": mean, "reward_variance": jnp.sum(pmf * values ** 2) - mean ** 2}


def exact_anti_concentration(step_probs, horizon: int, form: str = "binary", epsilon: float = 1.0) -> float:
    """``c(eps) = P[R >= E R + sigma_R sqrt(eps)]`` exactly (R = 0 when ``T > H``)."""
    pmf = np.asarray(first_success_pmf(step_probs, horizon), np.float64)
    values = np.asarray(_reward_values(horizon, form), np.float64)
    support = np.concatenate([values, [0.0]])
    probs = np.concatenate([pmf, [max(1 - pmf.sum(), 0.0)]])
    mean = np.sum(probs * support)
    std = np.sqrt(max(np.sum(probs * support ** 2) - mean ** 2, 0.0))
    return float(np.sum(probs[support >= mean + std * np.sqrt(epsilon) - 1e-12]))
