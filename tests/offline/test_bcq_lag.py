"""BCQ-Lagrangian: the PID multiplier rises exactly while the cost estimate exceeds the threshold; lanes; policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.learner import train_from_parts
from jaxsafe.offline import bcq_lag
from jaxsafe.offline.dataset import from_transitions
from jaxsafe.sweep import lane, make_grid, run_grid

CONFIG = bcq_lag.BCQLagConfig(hidden=(16,), batch_size=32, num_updates=150, num_samples=4, episode_len=10)


@pytest.fixture(scope="module")
def costly_data():
    """Every step costs 1 (episode cost 10): the cost estimate grows towards 1 / (1 - gamma) truncated."""
    rng = np.random.default_rng(0)
    n = 80
    obs = rng.normal(size=(n + 1, 2)).astype(np.float32)
    return from_transitions(obs[:-1], obs[1:], rng.uniform(-1, 1, (n, 1)).astype(np.float32),
                            np.ones(n, np.float32), np.ones(n, np.float32), np.zeros(n, bool), np.arange(n) % 10 == 9)


@pytest.fixture(scope="module")
def train(costly_data):
    return train_from_parts(bcq_lag.make_train_parts(CONFIG, costly_data))


@pytest.fixture(scope="module")
def runs(train):
    """Two vmapped lanes (cost limits 0 and 1000, pure-integral PID) and lane 0 again as a single run."""
    base = CONFIG.default_hparams().replace(pid_kp=jnp.float32(0.0), pid_kd=jnp.float32(0.0),
                                            pid_ki=jnp.float32(0.01))
    grid = make_grid(base, seeds=1, cost_limit=[0.0, 1000.0])
    return grid, run_grid(train, grid), jax.jit(train)(grid.keys[0], lane(grid.hparams, 0))


def test_pid_multiplier_rises_while_the_cost_estimate_exceeds_the_threshold(runs):
    grid, results, single = runs
    tight = lane(results, 0).metrics
    assert not bool(tight["nonfinite"].any())
    excess = np.asarray(tight["cost_estimate"] - tight["cost_threshold"])
    multiplier = np.asarray(tight["multiplier"])
    assert (excess[-50:] > 0).all() and float(multiplier[-1]) > float(multiplier[-50]) > 0.0
    # the PID integral with K_P = K_D = 0: m_t = max(0, m_{t-1} + K_I (estimate_t - threshold))
    expected = np.maximum(np.concatenate([[0.0], multiplier[:-1]]) + 0.01 * excess, 0.0)
    np.testing.assert_allclose(multiplier, expected, rtol=1e-5, atol=1e-7)
    # a threshold above every estimate keeps the multiplier at 0
    loose = lane(results, 1).metrics
    assert float(loose["multiplier"].max()) == 0.0 and float(loose["cost_threshold"][0]) > 50.0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), lane(results, 0), single)


def test_cost_threshold_and_policy(costly_data, runs):
    np.testing.assert_allclose(bcq_lag.cost_threshold(20.0, 0.99, 300), 20.0 * (1 - 0.99 ** 300) / (0.01 * 300))
    grid, _, single = runs  # the trained single run's policy
    policy = bcq_lag.make_policy(CONFIG, costly_data, single.params, lane(grid.hparams, 0))
    _, action = jax.jit(policy.step)(policy.init(jax.random.PRNGKey(0)), jnp.zeros(2), jax.random.PRNGKey(0))
    assert action.shape == (1,) and float(jnp.abs(action).max()) <= 1.0
    with pytest.raises(ValueError, match="BCQLagConfig.num_samples"):
        bcq_lag.BCQLagConfig(num_samples=0)
    with pytest.raises(ValueError, match="BCQLagHParams.gamma"):
        bcq_lag.BCQLagHParams(gamma=1.0).validate()
