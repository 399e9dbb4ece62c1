"""MTRO's target-return selectors, DERD's histograms, IQM with stratified bootstrap, and the miniature suite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.offline import mgdt, mtro
from jaxsafe.offline import multigame as mg

import _mgdt_tiny as tiny

CONFIG = mgdt.MGDTConfig()


def _stats(**changes):
    bins = CONFIG.num_return_bins
    flat = jnp.full((bins,), 1.0 / bins)
    stats = mtro.GameStats(flat, flat, jnp.float32(6.0), jnp.float32(10.0), jnp.float32(8.0), jnp.float32(1.0))
    return stats._replace(**changes)


def test_default_selector_sample_max_matches_the_closed_form():
    # max of n iid draws from p: P(max <= k) = F(k)^n
    logits = jnp.array([0.3, 1.2, -0.4, 0.9, 0.0, -1.0])
    selector = mtro.mgdt_default(0, kappa=0.5, num_samples=4, temperature=0.75)
    keys = jax.random.split(jax.random.PRNGKey(0), 40_000)
    draws = jax.jit(jax.vmap(lambda k: selector.select(k, mtro.ReturnPrediction(logits), None, None)))(keys)
    empirical = np.bincount(np.asarray(draws), minlength=6) / keys.shape[0]
    p = np.asarray(jax.nn.softmax(0.75 * logits + 0.5 * jnp.linspace(0, 1, 6)), np.float64)
    cdf = np.cumsum(p) ** 4
    exact = np.diff(np.concatenate([[0.0], cdf]))
    np.testing.assert_allclose(empirical, exact, atol=0.01)


def test_derd_histograms_against_numpy():
    bins = np.array([3, 4, 4, 0, 1, 5, 5, 2])
    episode_ids = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    episode_return = np.array([7.0, 1.0, 9.0, 2.0])
    expert_hist, data_hist, expert = mtro.return_histograms(bins, episode_ids, episode_return, 6, 0.5,
                                                            pseudo_count=0.5)
    np.testing.assert_array_equal(expert, [True, False, True, False])  # ceil(0.5 * 4) = 2 best episodes
    expert_steps = bins[np.isin(episode_ids, [0, 2])]
    want_expert = np.histogram(expert_steps, bins=np.arange(7))[0] + 0.5
    want_data = np.histogram(bins, bins=np.arange(7))[0] + 0.5
    np.testing.assert_allclose(expert_hist, want_expert / want_expert.sum())
    np.testing.assert_allclose(data_hist, want_data / want_data.sum())


def test_fixed_and_derd_targets_are_lowered_by_the_realised_return():
    prediction = mtro.ReturnPrediction(jnp.zeros(CONFIG.num_return_bins))
    context = mtro.SelectorContext(jnp.float32(3.0), jnp.int32(5))
    stats = _stats()
    low = CONFIG.return_low
    assert int(mtro.fixed(low, "max").select(None, prediction, context, stats)) == 10 - 3 + 20
    assert int(mtro.fixed(low, "percentile").select(None, prediction, context, stats)) == 8 - 3 + 20
    assert int(mtro.derd(low).select(None, prediction, context, stats)) == 6 - 3 + 20
    late = mtro.SelectorContext(jnp.float32(200.0), jnp.int32(5))
    assert int(mtro.derd(low).select(None, prediction, late, stats)) == 0  # clipped to the lowest bin


def test_barp_without_model_accuracy_is_the_expert_likelihood_ratio():
    bins = CONFIG.num_return_bins
    expert = np.full(bins, 1e-3)
    expert[40:43] = [0.2, 0.5, 0.3]
    expert /= expert.sum()
    data = np.full(bins, 1.0 / bins)
    stats = _stats(expert_hist=jnp.asarray(expert, jnp.float32), data_hist=jnp.asarray(data, jnp.float32),
                   accuracy=jnp.float32(0.0))
    logits = jax.random.normal(jax.random.PRNGKey(0), (bins,)) * 5
    q = np.exp(np.asarray(mtro.barp_distribution(logits, stats)))
    np.testing.assert_allclose(q, expert, rtol=1e-4)
    target = mtro.derd_barp(CONFIG.return_low).select(None, mtro.ReturnPrediction(logits), None, stats)
    assert int(target) == int(np.round((expert * np.arange(bins)).sum()))
    # a fully accurate model multiplies the prior by its own prediction
    sharp = jnp.full((bins,), -30.0).at[42].set(0.0)
    assert int(mtro.derd_barp(CONFIG.return_low).select(None, mtro.ReturnPrediction(sharp), None,
                                                        stats._replace(accuracy=jnp.float32(1.0)))) == 42


def test_iqm_and_bootstrap_against_hand_values():
    assert mtro.iqm(np.arange(1.0, 9.0).reshape(2, 4)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    scores = np.array([[0.2, 0.9, 0.4]])
    low, high = mtro.stratified_bootstrap_ci(scores, reps=50)
    assert low == high == pytest.approx(mtro.iqm(scores))  # one run per game: every resample is the data
    # one game, runs {0, 1}: resampled means are 0, 1/2, 1 with probability 1/4, 1/2, 1/4
    low, high = mtro.stratified_bootstrap_ci(np.array([[0.0], [1.0]]), statistic=np.mean, reps=4000)
    assert (low, high) == (0.0, 1.0)
    low, high = mtro.stratified_bootstrap_ci(np.array([[0.0], [1.0]]), statistic=np.mean, reps=4000,
                                             confidence=0.4)
    assert (low, high) == (0.5, 0.5)


# Reference values from rliable 1.2.0 (pip-installed in a separate venv, /tmp/rliable-venv, with pandas<3 for its
# arch dependency; rliable is not a jaxsafe dependency), computed with
#   from rliable import library as rly, metrics
#   scores = np.random.default_rng(7).uniform(0, 2, size=(5, 4)) ** 2
#   metrics.aggregate_iqm(scores)                                                           -> RLIABLE_IQM
#   rly.get_interval_estimates({"x": scores}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=20000)  -> CI
# (rliable's random stream differs from ours, so the intervals agree to bootstrap noise only).
RLIABLE_IQM = 1.4851940690470355
RLIABLE_CI = (0.75919906, 2.26395834)


def test_iqm_and_bootstrap_agree_with_rliable():
    scores = np.random.default_rng(7).uniform(0, 2, size=(5, 4)) ** 2
    assert mtro.iqm(scores) == pytest.approx(RLIABLE_IQM, rel=1e-9)
    low, high = mtro.stratified_bootstrap_ci(scores, reps=20000)
    assert low == pytest.approx(RLIABLE_CI[0], abs=0.03)
    assert high == pytest.approx(RLIABLE_CI[1], abs=0.03)


# ------------------------------------------------------------------ the miniature suite end to end


@pytest.fixture(scope="module")
def mini_run():
    # the data and the two trained lanes are test_mgdt.py's (tests/offline/_mgdt_tiny.py; trained once per process)
    cards = {g: {"random_return": float(mg.random_returns("mini", g, jax.random.PRNGKey(3), 16,
                                                          max_steps=tiny.MAX_STEPS).mean())} for g in tiny.GAMES}
    return mtro.evaluate_selectors(tiny.data(), cards, tiny.CONFIG, tiny.lanes().params, mtro.SELECTORS,
                                   episodes=8, max_steps=tiny.MAX_STEPS)


def test_mini_suite_end_to_end(mini_run):
    assert mini_run["lanes"] == tiny.LANES and mini_run["games"] == list(tiny.GAMES)
    assert all(0 <= a <= 1 for a in mini_run["accuracy"].values())
    iqms = {name: mini_run["summary"][name]["iqm"] for name in mtro.SELECTORS}
    print(iqms, {name: mini_run["summary"][name]["per_game"] for name in mtro.SELECTORS})
    for name in mtro.SELECTORS:
        s = mini_run["summary"][name]
        assert s["iqm_low"] <= s["iqm"] <= s["iqm_high"]
    # The claim (DERD+BARP >= the MGDT default) does NOT hold at this size: on 24 random-ish episodes capped at 40
    # steps the tiny model (d_model 16, 1 layer, 150 updates) plays CartPole worse than a random policy under every
    # selector (normalised scores -5 to -6.4), and DERD+BARP's target sits lower than the default's sampled
    # maximum. The test pins what is measured (fixed seeds; CPU).
    assert iqms["mgdt_default"] == pytest.approx(-2.4747, abs=1e-3)
    assert iqms["derd_barp"] == pytest.approx(-2.6359, abs=1e-3)
    assert iqms["derd_barp"] < iqms["mgdt_default"]


def test_cli_selector_flags():
    from jaxsafe.offline.mtro_experiment import _selectors

    assert _selectors(None) == list(mtro.SELECTORS)
    assert _selectors(["derd_barp", "mgdt_default,derd_barp"]) == ["derd_barp", "mgdt_default"]
    with pytest.raises(ValueError, match="--selector: one of mgdt_default"):
        _selectors(["best"])
    with pytest.raises(ValueError, match="selector"):
        mtro.make_selector("best", CONFIG)
