"""CQL / GCQL: the CQL(H) penalty by hand on a discrete case, the guarded bootstrap target, and a learning test
on a bandit where the data's actions are a narrow band: CQL stays near the data, the unpenalised lane (alpha 0)
extrapolates to the box edge."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.learner import train_from_parts
from jaxsafe.offline import cql
from jaxsafe.offline.dataset import from_transitions


def test_cql_penalty_on_an_enumerated_discrete_action_set_is_logsumexp_minus_data_value():
    q = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]])
    uniform = jnp.full((2, 3), -math.log(3.0))  # each of the 3 actions once, proposal 1/3
    data = jnp.asarray([1.0, -1.0])  # the dataset took action 0 in state 0, action 2 in state 1
    by_hand = (math.log(math.e + math.e**2 + math.e**3) - 1.0 + math.log(2.0 + math.exp(-1.0)) + 1.0) / 2
    assert float(cql.cql_penalty(q, uniform, data)) == pytest.approx(by_hand, rel=1e-6)
    # Importance weights: two samples of one action, proposals 1/2 and 1/4, estimate log(e^Q (2 + 4) / 2).
    weighted = cql.cql_penalty(jnp.asarray([[0.5, 0.5]]), jnp.log(jnp.asarray([[0.5, 0.25]])), jnp.asarray([0.0]))
    assert float(weighted) == pytest.approx(0.5 + math.log(3.0), rel=1e-6)


def test_guarded_target_replaces_flagged_bootstrap_values():
    got = cql.td_target(jnp.asarray([1.0, 1.0, 1.0, 1.0]), jnp.asarray([False, False, True, True]),
                        jnp.asarray([2.0, 2.0, 2.0, 2.0]), jnp.asarray([False, True, False, True]), 0.5, -10.0)
    np.testing.assert_allclose(np.asarray(got), [1.0 + 0.5 * 2.0, 1.0 - 5.0, 1.0, 1.0])


def _band_bandit(n=1024, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
    a = np.clip(0.5 * s + 0.1 * rng.normal(size=(n, 1)), -1, 1).astype(np.float32)
    reward = a[:, 0].astype(np.float32)  # higher is better everywhere: only conservatism keeps the policy in the band
    done = np.ones(n, bool)
    return from_transitions(s, s, a, reward, np.zeros(n, np.float32), done, np.zeros(n, bool))


@pytest.fixture(scope="module")
def band_lanes():
    data = _band_bandit()
    config = cql.CQLConfig(hidden=(32, 32), batch_size=128, num_updates=800, num_samples=8)
    base = config.default_hparams().replace(reward_scale=jnp.float32(1.0), actor_learning_rate=jnp.float32(1e-3),
                                            critic_learning_rate=jnp.float32(1e-3))
    hparams = jax.tree.map(lambda x: jnp.stack([x, x]), base).replace(cql_alpha=jnp.asarray([1.0, 0.0]))
    train = jax.jit(jax.vmap(train_from_parts(cql.make_train_parts(config, data))))
    result = train(jnp.stack([jax.random.PRNGKey(0)] * 2), hparams)
    act = cql.make_act(config, data)
    grid = jnp.linspace(-0.9, 0.9, 19)[:, None]
    actions = [np.asarray(act(jax.tree.map(lambda p: p[i], result.params), grid, None))[:, 0] for i in range(2)]
    return np.asarray(grid[:, 0]), actions, result.metrics


def test_cql_stays_in_the_data_band_where_the_unpenalised_critic_extrapolates(band_lanes):
    states, (conservative, unpenalised), metrics = band_lanes
    gap_cql = np.abs(conservative - 0.5 * states).mean()
    gap_plain = np.abs(unpenalised - 0.5 * states).mean()
    assert gap_cql < 0.2, gap_cql  # the data: 0.5 s +- 0.1
    assert gap_plain > 0.3 and gap_plain > 2 * gap_cql, (gap_plain, gap_cql)
    assert not np.asarray(metrics["nonfinite"]).any()
    assert float(np.asarray(metrics["cql_penalty"])[0, -50:].mean()) < float(np.asarray(metrics["cql_penalty"])[1, -50:].mean())


def test_gcql_needs_an_ood_test_and_counts_replaced_targets():
    data = _band_bandit(64)
    data = data._replace(terminals=np.arange(64) % 2 == 0, timeouts=np.zeros(64, bool))
    config = cql.CQLConfig(hidden=(8,), batch_size=64, num_updates=2, guarded=True)
    with pytest.raises(ValueError, match="GCQL.*GuardedDataset"):
        cql.make_train_parts(config, data)
    parts = cql.make_train_parts(config, cql.GuardedDataset(data, lambda o, a: jnp.ones(o.shape[0], bool)))
    metrics = jax.jit(train_from_parts(parts))(jax.random.PRNGKey(0), config.default_hparams()).metrics
    share = np.asarray(metrics["ood_target_share"])
    assert np.all((share > 0.2) & (share < 0.8))  # every non-terminal target of the batch (about half)
    with pytest.raises(ValueError, match="CQLConfig.num_samples must be an integer >= 1"):
        cql.CQLConfig(num_samples=0)
