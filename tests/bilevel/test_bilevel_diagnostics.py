"""Hypergradient-quality diagnostics: the summary statistics by hand, and the exact-ingredient estimators
unbiased on a tiny MDP (so a wrong swap of an ingredient cannot pass)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.bilevel import bchg, diagnostics, exact

TEMPERATURE, FOLLOWER_GAMMA, LEADER_GAMMA = 0.5, 0.8, 0.8


def test_summarize_estimates_by_hand():
    estimates = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, -1.0]])
    s = diagnostics.summarize_estimates(estimates, jnp.array([1.0, 0.0]), max_norm=1.0)
    assert s["cosine"] == pytest.approx(0.5)
    assert s["cosine_of_mean"] == pytest.approx(1.0)
    assert s["relative_bias"] == pytest.approx(0.25)
    # deviations from the mean [0.75, 0]: 0.0625 + 1.5625 + 1.5625 + 1.5625 over m - 1 = 3
    assert s["relative_variance"] == pytest.approx(4.75 / 3)
    assert s["clipped_ascent"] == pytest.approx(0.5)  # clipped to [1,0],[0,1],[1,0],[0,-1]
    assert s["median_norm_ratio"] == pytest.approx(1.0)
    assert s["oracle_clipped_ascent"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def quality(reward_mdp):
    x = jnp.asarray(reward_mdp.initial_params)
    return diagnostics.gradient_quality(reward_mdp, x, jax.random.PRNGKey(0), 400, 48, TEMPERATURE,
                                        FOLLOWER_GAMMA, LEADER_GAMMA, 0.5, warm_batches=2, critic_epochs=2,
                                        batches_per_call=48)


def test_exact_ingredients_match_the_oracle(reward_mdp):
    x = jnp.asarray(reward_mdp.initial_params)
    ing = diagnostics.exact_ingredients(reward_mdp, x, TEMPERATURE, FOLLOWER_GAMMA, LEADER_GAMMA)
    _, oracle = exact.mdp_exact_hypergradient(reward_mdp, x, TEMPERATURE, FOLLOWER_GAMMA, LEADER_GAMMA)
    np.testing.assert_allclose(ing.oracle, oracle, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(ing.policy * ing.leader_advantage, axis=1), 0.0, atol=1e-5)
    # the exact-ingredient BC-HG in expectation over (s, a) ~ d_pi is the oracle (covariance identity)
    np.testing.assert_allclose(ing.grad_v, jnp.einsum("sa,sad->sd", ing.policy, ing.grad_q), atol=1e-6)


def test_exact_ingredient_estimators_are_nearly_unbiased(quality):
    for variant in ("exact_all", "exact_critic"):
        for est in diagnostics.ESTIMATORS:
            q = quality[variant][est]
            assert q["cosine_of_mean"] > 0.97, (variant, est, q)
            assert q["relative_bias"] < 0.2, (variant, est, q)
    # swapping in the batch's own d_x Q_F adds variance, it does not remove it
    assert quality["exact_critic"]["bchg"]["relative_variance"] > quality["exact_all"]["bchg"]["relative_variance"]
    for variant in diagnostics.VARIANTS:
        for est in diagnostics.ESTIMATORS:
            assert np.isfinite(quality[variant][est]["cosine"]), (variant, est)
    assert quality["info"]["partial_follower_q_error"] >= 0.0


def test_sarsa_averaged_is_a_running_mean_then_a_constant_step():
    # three terminal visits of one pair with rewards 3, 0, 0: steps 1, 1/2, 1/3 (all above lr 0.1) -> the mean
    n = 3
    batch = bchg.TabularBatch(state=jnp.zeros(n, jnp.int32), action=jnp.zeros(n, jnp.int32),
                              next_state=jnp.ones(n, jnp.int32), next_action=jnp.zeros(n, jnp.int32),
                              episode_time=jnp.zeros(n, jnp.int32), terminal=jnp.ones(n, bool),
                              done=jnp.ones(n, bool))
    rewards = jnp.array([3.0, 0.0, 0.0])
    zeros = jnp.zeros((2, 2))
    q, counts = bchg.sarsa_averaged(jax.random.PRNGKey(0), zeros, zeros, batch, rewards, 0.9, 0.1)
    assert float(q[0, 0]) == pytest.approx(1.0)
    np.testing.assert_allclose(counts, [[3.0, 0.0], [0.0, 0.0]])
    # the plain constant-step SARSA from zero keeps only part of the first target (the bias it removes)
    plain = bchg.sarsa(jax.random.PRNGKey(0), zeros, batch._replace(state=batch.state[:1], action=batch.action[:1],
                       next_state=batch.next_state[:1], next_action=batch.next_action[:1],
                       episode_time=batch.episode_time[:1], terminal=batch.terminal[:1], done=batch.done[:1]),
                       rewards[:1], 0.9, 0.5)
    assert float(plain[0, 0]) == pytest.approx(1.5)
    # once 1/n < lr the constant step takes over: a 4th visit (reward 1) with lr 0.5 moves halfway
    q2, _ = bchg.sarsa_averaged(jax.random.PRNGKey(0), q, counts, batch._replace(
        state=batch.state[:1], action=batch.action[:1], next_state=batch.next_state[:1],
        next_action=batch.next_action[:1], episode_time=batch.episode_time[:1], terminal=batch.terminal[:1],
        done=batch.done[:1]), jnp.array([2.0]), 0.9, 0.5)
    assert float(q2[0, 0]) == pytest.approx(1.5)
