"""DSRL metrics against hand values; BC-All / BC-Safe on the learner contract (safe filter, lanes, learning)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.learner import train_from_parts
from jaxsafe.offline import baselines, metrics
from jaxsafe.offline.dataset import from_transitions
from jaxsafe.sweep import lane, make_grid, run_grid


def two_behaviours(episodes_each=4, length=5):
    """Safe episodes (cost 0) play action +1; unsafe ones (cost 1 a step, 5 an episode) play -1. Obs are noise."""
    rng = np.random.default_rng(0)
    n_episodes = 2 * episodes_each
    n = n_episodes * length
    unsafe = np.repeat(np.arange(n_episodes) % 2 == 1, length)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    ends = np.tile(np.arange(length) == length - 1, n_episodes)
    return from_transitions(obs, obs, np.where(unsafe, -1.0, 1.0)[:, None].astype(np.float32),
                            np.where(unsafe, 2.0, 1.0).astype(np.float32), unsafe.astype(np.float32),
                            np.zeros(n, bool), ends)


def test_dsrl_metrics_hand_values():
    data = two_behaviours()
    assert metrics.reward_range(data) == (5.0, 10.0)
    np.testing.assert_allclose(metrics.normalised_reward(jnp.array([5.0, 7.5, 10.0]), 5.0, 10.0), [0, 0.5, 1])
    np.testing.assert_allclose(metrics.normalised_cost(jnp.array([0.0, 10.0, 30.0]), 20.0), [0, 0.5, 1.5])
    np.testing.assert_allclose(metrics.normalised_cost(jnp.array([0.0, 1.0]), 0.0), [1.0, 2.0])  # eps = 1 at 0
    np.testing.assert_array_equal(metrics.is_safe(jnp.array([0.5, 1.0, 1.01])), [True, True, False])
    got = metrics.score(np.array([5.0, 10.0]), np.array([10.0, 30.0]), 5.0, 10.0, 20.0)
    assert got == metrics.Score(0.5, 0.5, 1.0, 0.5, True)


CONFIG = baselines.BCConfig(hidden=(16,), batch_size=32, num_updates=150)


@pytest.fixture(scope="module")
def data():
    return two_behaviours()


@pytest.fixture(scope="module")
def bc_safe_train(data):
    return train_from_parts(baselines.make_train_parts(CONFIG.replace(safe_only=True), data))


def test_bc_safe_trains_only_on_safe_episodes_and_bc_all_on_all(data, bc_safe_train):
    hparams = CONFIG.default_hparams().replace(cost_limit=jnp.float32(2.0), learning_rate=jnp.float32(1e-2))
    result = jax.jit(bc_safe_train)(jax.random.PRNGKey(0), hparams)
    assert float(result.metrics["batch_max_episode_cost"].max()) == 0.0  # never an unsafe step in a batch
    assert not bool(result.metrics["nonfinite"].any())
    policy = baselines.make_policy(CONFIG, data, result.params, -1.0, 1.0)
    actions = jax.vmap(lambda o: policy.step(policy.init(jax.random.PRNGKey(0)), o, jax.random.PRNGKey(0))[1])(
        jnp.asarray(data.observations))
    assert actions.shape == (data.num_steps, 1)
    np.testing.assert_allclose(actions, 1.0, atol=0.1)  # clones the safe behaviour everywhere

    bc_all = train_from_parts(baselines.make_train_parts(CONFIG, data))
    result_all = jax.jit(bc_all)(jax.random.PRNGKey(0), hparams)
    assert float(result_all.metrics["batch_max_episode_cost"].max()) == 5.0  # unsafe steps are sampled
    np.testing.assert_array_less(result_all.metrics["loss"][-20:].mean(), 1.5)  # finite, averaging +1 and -1


def test_bc_vmapped_lane_equals_single_run(bc_safe_train):
    base = CONFIG.default_hparams()
    grid = make_grid(base, seeds=2, cost_limit=[2.0, 10.0])
    results = run_grid(bc_safe_train, grid)
    for index in (0, 3):
        single = jax.jit(bc_safe_train)(grid.keys[index], lane(grid.hparams, index))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), lane(results, index),
                     single)
    # the cost limit 10 admits unsafe episodes (cost 5): the lanes differ
    assert float(lane(results, 1).metrics["batch_max_episode_cost"].max()) == 5.0


def test_bc_config_and_hparams_refuse_bad_values():
    with pytest.raises(ValueError, match="BCConfig.batch_size"):
        baselines.BCConfig(batch_size=0)
    with pytest.raises(ValueError, match="BCHParams.cost_limit"):
        baselines.BCHParams(cost_limit=-1.0).validate()
