"""SepsisSim: determinism per key, cost semantics, terminal events, registry and the clinicians' habits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import envs
from jaxsafe.envs import sepsis
from jaxsafe.evaluate import rollout_trajectories
from jaxsafe.policy import stateless


@pytest.fixture(scope="module")
def episodes():
    env = sepsis.SepsisSim()
    params = env.default_params
    policy = stateless(lambda obs, key: sepsis.clinician_action(obs, key))
    run = jax.jit(lambda key: rollout_trajectories(env, params, policy, key, 64, 20))
    return run, jax.tree.map(np.asarray, run(jax.random.PRNGKey(0))), params


def test_same_key_same_patients_other_key_other_patients(episodes):
    run, first, _ = episodes
    again = jax.tree.map(np.asarray, run(jax.random.PRNGKey(0)))
    other = jax.tree.map(np.asarray, run(jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(first.observations, again.observations)
    np.testing.assert_array_equal(first.rewards, again.rewards)
    assert not np.allclose(first.observations[:, 0], other.observations[:, 0])
    # Heterogeneous patients: the static covariates differ between episodes and stay fixed within one.
    ages = first.observations[:, :, sepsis.OBS_NAMES.index("age")]
    assert np.ptp(ages[:, 0]) > 0.2 and np.allclose(ages, ages[:, :1])


def test_costs_are_the_two_thresholds_of_the_new_observation(episodes):
    _, steps, _ = episodes
    v = sepsis.vitals(steps.next_observations)
    valid = steps.valid
    np.testing.assert_array_equal(steps.costs[..., 0][valid], (np.asarray(v["spo2"]) < 92.0)[valid])
    np.testing.assert_array_equal(steps.costs[..., 1][valid], (np.asarray(v["urine_output"]) < 0.5)[valid])
    assert steps.costs.min() >= 0 and steps.costs[..., 1][valid].sum() > 0


def test_death_discharge_and_the_20_step_limit(episodes):
    _, steps, params = episodes
    valid = steps.valid
    died = steps.terminated & (steps.rewards == -params.death_penalty)
    discharged = steps.terminated & ~died
    assert died.any() and discharged.any()
    assert np.all(steps.rewards[valid & ~died] <= 0) and np.all(steps.rewards[valid & ~died] > -25)
    lengths = valid.sum(1)
    assert lengths.max() == 20
    np.testing.assert_array_equal((steps.truncated & valid).any(1), (lengths == 20) & ~(steps.terminated & valid).any(1))


def test_registry_and_param_errors():
    env, params = envs.make("SepsisSim", death_penalty=50.0)
    assert env.n_costs == 2 and params.death_penalty == 50.0
    with pytest.raises(ValueError, match="death_penalty"):
        envs.make("SepsisSim", death_penalty=-1.0)


def test_clinicians_give_more_fluid_when_pressure_is_low():
    key = jax.random.PRNGKey(0)
    low = np.array([55, 110, 96, 0.3, 0.4, 0.8, 0.1, 60, 80], np.float32) / sepsis.OBS_SCALE
    high = np.array([80, 90, 96, 1.2, 0.2, 0.3, 0.1, 60, 80], np.float32) / sepsis.OBS_SCALE
    fluid_low, vaso_low = sepsis.doses(sepsis.clinician_action(jnp.asarray(low), key, noise=0.0))
    fluid_high, vaso_high = sepsis.doses(sepsis.clinician_action(jnp.asarray(high), key, noise=0.0))
    assert float(fluid_low) == pytest.approx(1.5) and float(fluid_high) == pytest.approx(0.25)
    assert float(vaso_low) == 0.0 == float(vaso_high)  # vasopressors only after 3 L of fluid
    late = low.copy()
    late[sepsis.OBS_NAMES.index("fluid_balance")] = 0.4  # 4 L in
    assert float(sepsis.doses(sepsis.clinician_action(jnp.asarray(late), key, noise=0.0))[1]) == pytest.approx(0.25)


def test_observed_reward_and_costs_match_the_step(episodes):
    _, steps, params = episodes
    valid = steps.valid
    died = steps.terminated & (steps.rewards == -params.death_penalty)
    reward, cost = sepsis.observed_reward_and_costs(jnp.asarray(steps.next_observations), jnp.asarray(died),
                                                    params.death_penalty)
    np.testing.assert_allclose(np.asarray(reward)[valid], steps.rewards[valid], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(cost)[valid], steps.costs[valid])
