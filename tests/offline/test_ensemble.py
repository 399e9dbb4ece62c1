"""The probabilistic ensemble dynamics model: the NLL by hand, a vmapped member equals a single fit, a known
linear-Gaussian system is recovered (mean and noise variance), sampling and disagreement, bad configuration."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxsafe.offline import ensemble


def test_gaussian_nll_is_the_mean_negative_log_density():
    mean = np.asarray([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], np.float32)
    log_var = np.asarray([[0.0, np.log(4.0)], [np.log(0.25), 0.0], [1.0, -1.0]], np.float32)
    target = np.asarray([[1.0, 0.0], [2.5, -3.0], [0.0, 1.5]], np.float32)
    expected = -norm.logpdf(target, mean, np.exp(0.5 * log_var)).sum(1).mean()
    # First row by hand: 0.5 * (1 + 0 + log 2 pi) + 0.5 * (1/4 + log 4 + log 2 pi).
    first = 0.5 * (1.0 + np.log(2 * np.pi)) + 0.5 * (0.25 + np.log(4.0) + np.log(2 * np.pi))
    assert -norm.logpdf(target[0], mean[0], np.exp(0.5 * log_var[0])).sum() == pytest.approx(first)
    got = float(ensemble.gaussian_nll(jnp.asarray(mean), jnp.asarray(log_var), jnp.asarray(target)))
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def linear_data():
    rng = np.random.default_rng(0)
    a = np.asarray([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], np.float32)  # y = A x + b + 0.1 eps
    b = np.asarray([0.2, -0.1, 0.4], np.float32)
    x = rng.uniform(-1, 1, size=(1024, 2)).astype(np.float32)
    y = x @ a.T + b + 0.1 * rng.normal(size=(1024, 3)).astype(np.float32)
    labels = (x[:, 0] > 0.3).astype(np.int32) + (x[:, 0] > 0.7).astype(np.int32)  # 3 classes from x_0
    return a, b, x, y, labels


CONFIG = ensemble.EnsembleConfig(num_members=3, hidden=(32, 32), num_updates=1500, batch_size=128,
                                 learning_rate=3e-3)


@pytest.fixture(scope="module")
def fitted(linear_data):
    _, _, x, y, labels = linear_data
    return ensemble.fit_ensemble(jax.random.PRNGKey(0), CONFIG, x, y, labels, num_classes=3)


def test_vmapped_member_equals_a_single_fit(linear_data, fitted):
    _, _, x, y, labels = linear_data
    config = dataclasses.replace(CONFIG, num_updates=50)
    model, history = ensemble.fit_ensemble(jax.random.PRNGKey(1), config, x, y, labels, num_classes=3)
    key = jax.random.split(jax.random.PRNGKey(1), config.num_members)[2]
    params, single = jax.jit(lambda k: ensemble.fit_member(k, config, x, y, labels, 3))(key)
    member = jax.tree.map(lambda p: p[2], model.params)
    for got, want in zip(jax.tree.leaves(member), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(history["nll"][2]), np.asarray(single["nll"]), rtol=1e-5, atol=1e-6)
    first = jax.tree.leaves(jax.tree.map(lambda p: p[0], model.params))[0]
    assert not np.allclose(np.asarray(first), np.asarray(jax.tree.leaves(member)[0]))  # members differ


def test_fits_a_known_linear_gaussian_system(linear_data, fitted):
    a, b, _, _, _ = linear_data
    model, history = fitted
    queries = np.random.default_rng(5).uniform(-0.9, 0.9, size=(200, 2)).astype(np.float32)
    mean, log_var, logits = ensemble.predict(model, queries)
    truth = queries @ a.T + b
    error = np.asarray(mean).mean(0) - truth
    assert np.sqrt((error**2).mean()) < 0.03, np.sqrt((error**2).mean())  # noise sd 0.1; 1024 points
    assert np.abs(error).max() < 0.08
    variance = np.exp(np.asarray(log_var)).mean()
    assert 0.5 * 0.01 < variance < 1.6 * 0.01, variance  # the true noise variance 0.01
    accuracy = (np.asarray(logits).mean(0).argmax(-1) == (queries[:, 0] > 0.3) + (queries[:, 0] > 0.7)).mean()
    assert accuracy > 0.85, accuracy  # the class boundaries (x_0 = 0.3, 0.7) are sharp; a smooth head blurs them
    assert float(history["nll"][:, -100:].mean()) < float(history["nll"][:, :100].mean())


def test_sample_and_disagreement(linear_data, fitted):
    model, _ = fitted
    y, label, member = jax.jit(lambda k: ensemble.sample(model, k, jnp.asarray([0.1, -0.2])))(jax.random.PRNGKey(3))
    assert y.shape == (3,) and 0 <= int(label) < 3 and 0 <= int(member) < CONFIG.num_members
    draws = jax.vmap(lambda k: ensemble.sample(model, k, jnp.asarray([0.1, -0.2]))[2])(
        jax.random.split(jax.random.PRNGKey(4), 300))
    assert set(np.asarray(draws).tolist()) == set(range(CONFIG.num_members))
    near, far = ensemble.disagreement(model, jnp.asarray([[0.0, 0.0], [8.0, -8.0]]))
    assert float(far) > 5 * float(near)  # members agree on the data, not far from it


def test_bad_configuration_is_named(linear_data):
    with pytest.raises(ValueError, match="EnsembleConfig.num_members must be an integer >= 1"):
        ensemble.EnsembleConfig(num_members=0)
    with pytest.raises(ValueError, match="EnsembleConfig.min_log_var"):
        ensemble.EnsembleConfig(min_log_var=1.0, max_log_var=0.0)
    _, _, x, y, labels = linear_data
    with pytest.raises(ValueError, match="same N"):
        ensemble.fit_ensemble(jax.random.PRNGKey(0), CONFIG, x[:10], y)
    with pytest.raises(ValueError, match="labels must be given exactly when num_classes > 0"):
        ensemble.fit_ensemble(jax.random.PRNGKey(0), CONFIG, x, y, labels)
