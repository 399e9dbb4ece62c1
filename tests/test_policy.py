"""The stateful policy interface and the rollout that drives it: state resets per episode, per-episode coins."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe import envs
from jaxsafe.evaluate import rollout_episodes, rollout_trajectories
from jaxsafe.policy import Policy, from_act, stateless
from jaxsafe.rl import flipping

STEPS = 30


def counting_policy() -> Policy:
    """Acts with the number of steps it has taken in the current episode (its state), as a 2-D action."""

    def init(key):
        del key
        return jnp.zeros((), jnp.int32)

    def step(count, obs, key):
        return count + 1, jnp.full((2,), count, jnp.float32)

    return Policy(init, step)


def test_policy_state_resets_at_every_episode():
    env, params = envs.make("ChancePoint2D", max_steps=7)  # every episode is truncated after 7 steps
    run = jax.jit(lambda key: rollout_trajectories(env, params, counting_policy(), key, 5, STEPS))
    steps = run(jax.random.PRNGKey(0))
    valid = np.asarray(steps.valid)
    np.testing.assert_array_equal(valid.sum(1), 7)
    actions = np.asarray(steps.actions)[..., 0]
    # within each episode the counter counts 0, 1, ..., 6 from the first step: init ran at the episode start
    np.testing.assert_array_equal(actions[:, :7], np.broadcast_to(np.arange(7), (5, 7)))
    # and the summary rollout plays the same episodes
    summary = jax.jit(lambda key: rollout_episodes(env, params, counting_policy(), key, 5, STEPS))(
        jax.random.PRNGKey(0))
    np.testing.assert_allclose(summary.returns, np.where(valid, steps.rewards, 0.0).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(summary.lengths, 7)
    assert np.all(np.asarray(summary.finished))


def test_episode_coin_is_constant_within_an_episode_and_step_coin_is_not():
    env, params = envs.make("ChancePoint2D", max_steps=STEPS)
    low = stateless(lambda obs, key: jnp.array([1.0, 1.0]))
    high = stateless(lambda obs, key: jnp.array([-1.0, -1.0]))
    n, weight = 400, 0.3

    def actions(mode, key):
        policy = flipping.mixture_policy(low, high, weight, mode)
        return rollout_trajectories(env, params, policy, key, n, STEPS).actions[..., 0]

    episode = np.asarray(jax.jit(lambda k: actions("episode", k))(jax.random.PRNGKey(1)))
    step = np.asarray(jax.jit(lambda k: actions("step", k))(jax.random.PRNGKey(1)))
    played_low = episode[:, 0] > 0
    np.testing.assert_array_equal(episode, np.where(played_low[:, None], 1.0, -np.ones_like(episode)))  # one policy
    assert abs(played_low.mean() - weight) < 4 * np.sqrt(weight * (1 - weight) / n)
    # per-step flipping changes policy inside episodes, at the same rate
    switches = (np.diff(step, axis=1) != 0).any(1)
    assert switches.mean() > 0.99
    assert abs((step > 0).mean() - weight) < 4 * np.sqrt(weight * (1 - weight) / (n * STEPS))


def test_mixture_keeps_both_policies_states():
    env, params = envs.make("ChancePoint2D", max_steps=STEPS)
    mixture = flipping.mixture_policy(counting_policy(), counting_policy(), 0.5, "episode")
    steps = jax.jit(lambda k: rollout_trajectories(env, params, mixture, k, 4, 5))(jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(steps.actions)[..., 0], np.broadcast_to(np.arange(5), (4, 5)))


def test_from_act_is_the_learner_act_with_its_params():
    def act(params, obs, key, deterministic):
        return obs * params + jnp.where(deterministic, 0.0, jax.random.normal(key, obs.shape))

    obs, key = jnp.array([1.0, 2.0]), jax.random.PRNGKey(3)
    policy = from_act(act, jnp.float32(2.0), deterministic=True)
    state, action = policy.step(policy.init(key), obs, key)
    np.testing.assert_array_equal(action, [2.0, 4.0])
    noisy = from_act(act, jnp.float32(2.0))
    _, action = noisy.step(noisy.init(key), obs, key)
    np.testing.assert_allclose(action, obs * 2.0 + jax.random.normal(key, (2,)), rtol=1e-6)
