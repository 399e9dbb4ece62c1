import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.rl.gae import batched_gae, gae


def reference_gae(rewards, values, next_values, terminated, episode_end, gamma, lam):
    """A plain Python loop, written independently of the scan."""
    advantages = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1 - terminated[t]) * next_values[t] - values[t]
        running = delta + gamma * lam * (1 - episode_end[t]) * running
        advantages[t] = running
    return advantages


def test_gae_hand_values():
    # Three steps, no episode end: deltas are 1 + 0.5*1 - 1 = 0.5, 0.5, and 1 + 0.5*2 - 1 = 1.0 at the last step.
    rewards = jnp.array([1.0, 1.0, 1.0])
    values = jnp.array([1.0, 1.0, 1.0])
    next_values = jnp.array([1.0, 1.0, 2.0])
    no = jnp.zeros(3, bool)
    advantages, returns = gae(rewards, values, next_values, no, no, 0.5, 0.5)
    # A2 = 1.0; A1 = 0.5 + 0.25 * 1.0 = 0.75; A0 = 0.5 + 0.25 * 0.75 = 0.6875
    np.testing.assert_allclose(advantages, [0.6875, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(returns, [1.6875, 1.75, 2.0], rtol=1e-6)


def test_gae_termination_and_truncation():
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0])
    values = jnp.array([0.5, 0.5, 0.5, 0.5])
    next_values = jnp.array([0.5, 10.0, 0.5, 0.5])  # step 1 truncated: bootstrap from its final obs (10)
    terminated = jnp.array([False, False, True, False])
    episode_end = jnp.array([False, True, True, False])
    advantages, _ = gae(rewards, values, next_values, terminated, episode_end, 0.9, 0.8)
    # step 3: 4 + 0.9*0.5 - 0.5 = 3.95; step 2 terminal: 3 - 0.5 = 2.5 (no trace from step 3)
    # step 1 truncated: 2 + 0.9*10 - 0.5 = 10.5 (no trace); step 0: 1 + 0.45 - 0.5 + 0.72*10.5 = 8.51
    np.testing.assert_allclose(advantages, [8.51, 10.5, 2.5, 3.95], rtol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (1.0, 1.0), (0.0, 0.5)])
def test_gae_matches_loop_and_vmap(gamma, lam):
    rng = np.random.default_rng(0)
    T, E = 17, 3
    rewards, values, next_values = (rng.normal(size=(T, E)).astype(np.float32) for _ in range(3))
    episode_end = rng.random((T, E)) < 0.2
    terminated = episode_end & (rng.random((T, E)) < 0.5)
    advantages, returns = batched_gae(rewards, values, next_values, terminated, episode_end, gamma, lam)
    for e in range(E):
        expected = reference_gae(rewards[:, e], values[:, e], next_values[:, e], terminated[:, e],
                                 episode_end[:, e], gamma, lam)
        np.testing.assert_allclose(advantages[:, e], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, advantages + values, rtol=1e-6)


def test_gae_rejects_batched_input():
    x = jnp.zeros((3, 2))
    with pytest.raises(AssertionError):
        gae(x, x, x, x.astype(bool), x.astype(bool), 0.9, 0.9)


def test_compute_advantages_one_gae_per_cost():
    """Several costs: each cost's GAE is the single-cost GAE of that cost (the trailing axis is vmapped)."""
    from jaxsafe.rl.ppo import PPOHParams, compute_advantages
    from jaxsafe.types import Transition

    T, E, K = 6, 3, 2
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    normal = lambda k, shape: jax.random.normal(k, shape)  # noqa: E731
    terminated = jnp.zeros((T, E), bool).at[2, 0].set(True)
    truncated = jnp.zeros((T, E), bool).at[4, 1].set(True)
    traj = Transition(obs=jnp.zeros((T, E, 1)), action=jnp.zeros((T, E)), log_prob=jnp.zeros((T, E)),
                      value=normal(keys[0], (T, E)), cost_value=normal(keys[1], (T, E, K)),
                      reward=normal(keys[2], (T, E)), cost=jnp.abs(normal(keys[3], (T, E, K))),
                      terminated=terminated, truncated=truncated, next_value=normal(keys[4], (T, E)),
                      next_cost_value=normal(keys[5], (T, E, K)))
    hparams = PPOHParams(cost_gamma=0.9, cost_gae_lambda=0.8).as_arrays()
    _, _, cost_advantages, cost_targets = compute_advantages(traj, hparams)
    assert cost_advantages.shape == cost_targets.shape == (T, E, K)
    for k in range(K):
        single = traj._replace(cost=traj.cost[..., k], cost_value=traj.cost_value[..., k],
                               next_cost_value=traj.next_cost_value[..., k])
        _, _, want_advantages, want_targets = compute_advantages(single, hparams)
        np.testing.assert_allclose(cost_advantages[..., k], want_advantages, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cost_targets[..., k], want_targets, rtol=1e-6, atol=1e-6)
