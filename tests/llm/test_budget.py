"""The relative-budget layer: the censored Gamma MLE, the xi estimator, the budget chooser, the exact tabular layer
and the two verifiable tasks' verifiers (no language model here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxsafe.llm import budget
from jaxsafe.llm.tasks import chain_arithmetic as chain
from jaxsafe.llm.tasks import first_guess as fg


# ----------------------------------------------------------------------------- censored Gamma MLE


def test_censored_gamma_mle_recovers_known_parameters():
    rng = np.random.default_rng(0)
    shape, rate, cap = 3.0, 0.5, 8.0  # mean 6, about 24% censored at 8
    times = stats.gamma.rvs(shape, scale=1 / rate, size=6000, random_state=rng)
    censored = times > cap
    assert 0.15 < censored.mean() < 0.35
    fitted_shape, fitted_rate = budget.censored_gamma_mle(np.minimum(times, cap), censored, cap)
    assert fitted_shape == pytest.approx(shape, rel=0.08)
    assert fitted_rate == pytest.approx(rate, rel=0.08)
    # the naive mean of the capped times is badly biased; the MLE's K / p is not
    assert np.minimum(times, cap).mean() < 0.92 * shape / rate
    assert fitted_shape / fitted_rate == pytest.approx(shape / rate, rel=0.06)


def test_censored_gamma_mle_without_censoring_is_the_sample_mean():
    rng = np.random.default_rng(1)
    times = stats.gamma.rvs(2.0, scale=3.0, size=500, random_state=rng)
    shape, rate = budget.censored_gamma_mle(times, np.zeros(times.shape, bool))
    assert shape / rate == pytest.approx(times.mean(), rel=1e-5)
    # and it is scipy's own (uncensored, loc 0) maximum-likelihood fit
    scipy_shape, _, scipy_scale = stats.gamma.fit(times, floc=0)
    assert shape == pytest.approx(scipy_shape, rel=1e-3)


def test_estimator_switches_to_the_mle_under_censoring():
    rng = np.random.default_rng(2)
    times = rng.geometric(0.1, size=(1, 4000))  # E[T] = 10
    cap = 12
    censored = times > cap
    estimate = budget.estimate_xi(np.minimum(times, cap), censored, cap, horizon=5)
    assert estimate.method == ["censored_gamma_mle"]
    # a continuous Gamma fitted to a discrete geometric law, 28% censored: within 12% of E[T] = 10
    assert estimate.mean_first_success[0] == pytest.approx(10.0, rel=0.12)
    assert estimate.xi[0] == pytest.approx(5 / estimate.mean_first_success[0])
    assert np.minimum(times, cap).mean() < 0.75 * 10  # what the plain mean of capped times would say
    assert estimate.success_within_budget[0] == pytest.approx(1 - 0.9 ** 5, abs=0.03)
    plain = budget.estimate_xi(times, np.zeros_like(censored), int(times.max()), horizon=5)
    assert plain.method == ["sample_mean"] and plain.mean_first_success[0] == pytest.approx(times.mean())


def test_xi_estimator_errors():
    times = np.array([[3, 5], [9, 9]])
    censored = np.array([[False, False], [True, True]])
    with pytest.raises(ValueError, match=r"1 of 2 prompt\(s\) \(1\) have no success .* cap 9.*larger cap"):
        budget.estimate_xi(times, censored, 9, 4)
    with pytest.raises(ValueError, match="horizon .* >= 1"):
        budget.estimate_xi(times, np.zeros_like(censored), 9, 0)
    with pytest.raises(ValueError, match="cap must be an integer >= horizon"):
        budget.estimate_xi(times, np.zeros_like(censored), 3, 4)
    with pytest.raises(ValueError, match="reward form"):
        budget.estimate_xi(times, np.zeros_like(censored), 9, 4, form="dense")
    # pooled over prompts, the unsolved prompt no longer blocks the estimate
    assert budget.estimate_xi(times, censored, 9, 4, pooled=True).xi.shape == (1,)


# ----------------------------------------------------------------------------- exact tabular layer


@pytest.mark.parametrize("step_probs", [[0.25], [1 / 3, 1 / 3], [0.5, 0.2, 0.1]])
def test_tabular_xi_equals_the_closed_form(step_probs):
    mean = budget.exact_mean_first_success(step_probs)
    assert mean == pytest.approx(sum(1 / p for p in step_probs), rel=1e-10)
    horizon = 7
    assert horizon / mean == pytest.approx(horizon / sum(1 / p for p in step_probs), rel=1e-10)
    # the pmf's mean over a long horizon reproduces E[T]
    pmf = np.asarray(budget.first_success_pmf(step_probs, 600), np.float64)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.sum(np.arange(1, 601) * pmf) == pytest.approx(mean, rel=1e-4)


def test_exact_moments_against_closed_forms_and_monte_carlo():
    p, horizon = 0.25, 4
    binary = budget.exact_reward_moments([p], horizon, "binary")
    q = 1 - (1 - p) ** horizon
    assert float(binary["J"]) == pytest.approx(q, rel=1e-6)
    assert float(binary["reward_variance"]) == pytest.approx(q * (1 - q), rel=1e-5)
    early = budget.exact_reward_moments([p], horizon, "solve_early")
    t = np.arange(1, horizon + 1)
    pmf = p * (1 - p) ** (t - 1)
    values = (horizon - t + 1) / horizon
    assert float(early["mean_reward"]) == pytest.approx(np.sum(pmf * values), rel=1e-6)
    assert float(early["reward_variance"]) == pytest.approx(np.sum(pmf * values ** 2) - np.sum(pmf * values) ** 2,
                                                            rel=1e-5)
    # anti-concentration: exact vs the estimator on simulated geometric first-success times
    rng = np.random.default_rng(3)
    times = rng.geometric(p, size=(1, 20000))
    estimate = budget.estimate_xi(times, np.zeros(times.shape, bool), int(times.max()), horizon,
                                  form="solve_early", epsilon=0.5)
    exact = budget.exact_anti_concentration([p], horizon, "solve_early", 0.5)
    assert estimate.anti_concentration[0] == pytest.approx(exact, abs=0.015)
    assert estimate.xi[0] == pytest.approx(horizon * p, rel=0.03)


def test_tabular_softmax_policy():
    logits = jnp.log(jnp.array([[0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]))
    probs = budget.tabular_step_probs(logits, jnp.array([0, 2]))
    np.testing.assert_allclose(probs, [0.25, 0.8], rtol=1e-6)
    # J is differentiable in the logits: raising the correct logit raises J
    grad = jax.grad(lambda l: budget.exact_reward_moments(budget.tabular_step_probs(l, jnp.array([0, 2])), 5)["J"])(
        logits)
    assert grad[0, 0] > 0 and grad[1, 2] > 0 and grad[0, 1] < 0


def test_budget_chooser_and_filter():
    assert budget.choose_budget([4.0, 6.0, 100.0], 1.5) == 9
    np.testing.assert_array_equal(budget.choose_budget([4.0, 6.0], 1.5, per_prompt=True), [6, 9])
    assert budget.choose_budget([4.0], 0.1) == 1
    np.testing.assert_array_equal(budget.in_band([1.0, 1.5, 1.8, 2.0, 2.5]), [False, True, True, True, False])
    with pytest.raises(ValueError, match="xi_target"):
        budget.choose_budget([4.0], 0.0)
    with pytest.raises(ValueError, match="band"):
        budget.in_band([1.0], (2.0, 1.0))
    tracker = budget.OnlineXiTracker(horizon=8, every=5)
    assert tracker.due(0) and tracker.due(10) and not tracker.due(3)
    for i, mean in zip([0, 5, 10], [8.0, 4.0, 8 / 3]):
        tracker.record(i, budget.XiEstimate(np.array([mean]), None, None, None, [], None, 8, 64, 1.0))
    fit = tracker.linear_fit()
    assert fit["slope"] == pytest.approx(0.2) and fit["r2"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- task verifiers


def test_first_guess_verifier_and_traces():
    task = fg.FirstGuessTask(modulus=10, success_probs=(0.5, 0.25))
    prompts = fg.all_prompts(task)
    assert prompts.shape == (20, 4)
    answer = fg.answers(task, prompts[:2])  # (0 + 0), (0 + 1)
    d = fg.DIGIT_OFFSET
    responses = jnp.array([[d + 3, d + 0, d + 0], [d + 2, d + 3, d + 4]])
    positions, solved = fg.first_success_positions(task, prompts[:2], responses, jnp.ones((2, 3), bool))
    np.testing.assert_array_equal(answer, [d, d + 1])
    np.testing.assert_array_equal(positions, [2, 4])
    np.testing.assert_array_equal(solved, [True, False])
    corpus = fg.base_traces(task, jax.random.PRNGKey(0), jnp.tile(prompts, (20, 1)), 32)
    hits = corpus.tokens[:, 6:] == fg.answers(task, corpus.tokens)[:, None]
    level = fg.levels(corpus.tokens)
    assert float(hits[level == 0].mean()) == pytest.approx(0.5, abs=0.02)
    assert float(hits[level == 1].mean()) == pytest.approx(0.25, abs=0.02)


def test_chain_verifier_counts_retries():
    task = chain.ChainTask(modulus=7, steps=2)
    d = chain.DIGIT_OFFSET
    prompt = jnp.array([[chain.BOS, d + 3, chain.PLUS, d + 2, chain.PLUS, d + 4, chain.EQUALS, d + 5, d + 2,
                         chain.EQUALS]])
    np.testing.assert_array_equal(chain.partial_results(task, prompt), [[d + 5, d + 2]])
    # s2 before s1 does not count; s1 at 3, then a miss, then s2 at 5
    responses = jnp.array([[d + 2, d + 0, d + 5, d + 1, d + 2, d + 5]])
    positions, solved = chain.first_success_positions(task, prompt, responses, jnp.ones((1, 6), bool))
    assert int(positions[0]) == 5 and bool(solved[0])
    masked = chain.first_success_positions(task, prompt, responses, jnp.arange(6)[None] < 4)
    assert int(masked[0][0]) == 7 and not bool(masked[1][0])
    np.testing.assert_allclose(chain.step_success_probabilities(task, prompt), [[1 / 3, 1 / 3]], rtol=1e-6)
    # T of the base traces has the negative-binomial mean sum_j 1 / p_j = 6
    prompts = chain.all_prompts(task)
    corpus = chain.base_traces(task, jax.random.PRNGKey(1), jnp.tile(prompts, (2, 1)), 48)
    length = task.prompt_length
    positions, solved = chain.first_success_positions(task, corpus.tokens[:, :length], corpus.tokens[:, length:],
                                                      jnp.ones((corpus.tokens.shape[0], 48), bool))
    assert float(solved.mean()) > 0.999
    assert float(positions.mean()) == pytest.approx(6.0, rel=0.07)


def test_verifiable_reward_forms():
    task = fg.FirstGuessTask(modulus=10, success_probs=(0.5,))
    prompts = fg.all_prompts(task)[:2]
    d = fg.DIGIT_OFFSET
    responses = jnp.array([[d + 3, d + 0, d + 0, d + 0], [d + 2, d + 3, d + 4, d + 5]])
    mask = jnp.ones((2, 4), bool)
    binary = budget.VerifiableReward(task, fg.first_success_positions, "binary")
    early = budget.VerifiableReward(task, fg.first_success_positions, "solve_early")
    np.testing.assert_allclose(binary(prompts, responses, mask), [[1.0], [0.0]])
    np.testing.assert_allclose(early(prompts, responses, mask), [[3 / 4], [0.0]])  # (H - T + 1) / H, T = 2
    assert hash(binary) == hash(budget.VerifiableReward(task, fg.first_success_positions, "binary"))
    with pytest.raises(ValueError, match="reward form"):
        budget.VerifiableReward(task, fg.first_success_positions, "dense")
