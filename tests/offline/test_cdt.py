"""CDT: the causal mask, reproducing conditioned behaviour on a deterministic chain, deployed targets, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsafe.evaluate import rollout_episodes
from jaxsafe.learner import train_from_parts
from jaxsafe.offline import cdt
from jaxsafe.offline.dataset import collect_dataset
from jaxsafe.offline.feedback import RewardCostFeedback
from jaxsafe.policy import stateless
from jaxsafe.types import TimeStep

HORIZON = 5


class Chain:
    """A deterministic chain of ``HORIZON`` steps: obs ``[t / H]``, action ``a`` in ``[-1, 1]``, reward ``1 + |a|``
    (``1 + a`` with ``v_shaped=False``), cost ``max(a, 0)``; the episode is truncated after ``HORIZON`` steps."""

    name = "Chain"
    n_costs = 1
    default_params = None

    def __init__(self, v_shaped: bool = True):
        self.v_shaped = v_shaped

    def reset(self, key, params):
        return jnp.zeros((), jnp.int32), TimeStep(jnp.zeros((1,)), jnp.zeros(()), jnp.zeros((1,)),
                                                  jnp.zeros((), bool), jnp.zeros((), bool), {})

    def step(self, key, t, action, params):
        a = jnp.reshape(action, ())
        t = t + 1
        reward = 1.0 + (jnp.abs(a) if self.v_shaped else a)
        return t, TimeStep(jnp.full((1,), t / HORIZON), reward, jnp.maximum(a, 0.0)[None], jnp.zeros((), bool),
                           t >= HORIZON, {})


# (return, cost) = (10, 0), (5, 0), (10, 5): the first and the last differ only in cost, so a CDT that ignores its
# cost-to-go cannot reproduce both
BEHAVIOURS = (-1.0, 0.0, 1.0)
CONFIG = cdt.CDTConfig(context_len=HORIZON, d_model=32, n_layers=1, n_heads=2, max_episode_len=HORIZON,
                       batch_size=64, num_updates=1200, warmup_steps=10, augment_fraction=0.0)
HPARAMS = CONFIG.default_hparams().replace(learning_rate=jnp.float32(1e-3), dropout=jnp.float32(0.0),
                                           cost_offset=jnp.float32(0.0), cost_scale=jnp.float32(0.2),
                                           cost_sample_cap=jnp.float32(0.0), temperature_lr=jnp.float32(1e-3))


def _chain_dataset(v_shaped: bool = True):
    parts = []
    for i, a in enumerate(BEHAVIOURS):
        policy = stateless(lambda obs, key, a=a: jnp.full((1,), a))
        parts.append(collect_dataset(Chain(v_shaped), None, policy, jax.random.PRNGKey(i), 4, HORIZON))
    fields = {name: np.concatenate([getattr(p, name) for p in parts]) for name in parts[0]._fields}
    fields["episode_ids"] = np.repeat(np.arange(12, dtype=np.int32), HORIZON)
    return parts[0]._replace(**fields)


@pytest.fixture(scope="module")
def chain_data():
    return _chain_dataset()


@pytest.fixture(scope="module")
def trained(chain_data):
    result = jax.jit(train_from_parts(cdt.make_train_parts(CONFIG, chain_data)))(jax.random.PRNGKey(0), HPARAMS)
    return result


def test_action_prediction_ignores_future_tokens():
    config = CONFIG.replace(context_len=4)
    graphdef, init_params = cdt.make_model(config, 3, 2)
    params = init_params(jax.random.PRNGKey(1))

    @jax.jit  # one compiled forward pass for the three inputs (eager, every op would compile on its own)
    def model(**kwargs):
        return nnx.merge(graphdef, params)(**kwargs)

    keys = jax.random.split(jax.random.PRNGKey(2), 8)
    inputs = dict(returns=jax.random.normal(keys[0], (1, 4)), costs=jax.random.normal(keys[1], (1, 4)),
                  states=jax.random.normal(keys[2], (1, 4, 3)), actions=jax.random.normal(keys[3], (1, 4, 2)))
    timesteps, mask = jnp.arange(4)[None], jnp.ones((1, 4), bool)
    (mean, log_std), cost_logits = model(**inputs, timesteps=timesteps, mask=mask)
    t = 1  # change a_1 and every token of steps 2, 3
    future = {"returns": inputs["returns"].at[:, t + 1:].add(5.0), "costs": inputs["costs"].at[:, t + 1:].add(5.0),
              "states": inputs["states"].at[:, t + 1:].add(5.0), "actions": inputs["actions"].at[:, t:].add(5.0)}
    (mean_f, log_std_f), _ = model(**future, timesteps=timesteps, mask=mask)
    np.testing.assert_array_equal(mean_f[:, :t + 1], mean[:, :t + 1])
    np.testing.assert_array_equal(log_std_f[:, :t + 1], log_std[:, :t + 1])
    assert not np.allclose(mean_f[:, t + 1:], mean[:, t + 1:])  # the later predictions do see them
    # a change in the past (a_0) does change the prediction at t
    (mean_p, _), _ = model(**{**inputs, "actions": inputs["actions"].at[:, 0].add(5.0)}, timesteps=timesteps,
                           mask=mask)
    assert not np.allclose(mean_p[:, t], mean[:, t])
    assert mean.shape == (1, 4, 2) and cost_logits.shape == (1, 4, 2)


def test_every_weight_starts_at_osrls_normal_002():
    """OSRL initialises every Linear and Embedding weight N(0, 0.02^2) with zero biases; the scalar return and
    cost tokens then start on the scale of the timestep embedding instead of swamping it."""
    _, init_params = cdt.make_model(cdt.CDTConfig(d_model=128, n_layers=1, n_heads=2, max_episode_len=200), 28, 2)
    params = nnx.to_pure_dict(init_params(jax.random.PRNGKey(0)))
    for name in ("embed_return", "embed_cost", "embed_state", "embed_action", "action_mean", "action_log_std",
                 "cost_head"):
        np.testing.assert_allclose(np.std(params[name]["kernel"]), 0.02, rtol=0.25, err_msg=name)
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
    np.testing.assert_allclose(np.std(params["embed_time"]["embedding"]), 0.02, rtol=0.05)


def test_cdt_reproduces_the_conditioned_behaviour_episode(chain_data, trained):
    assert not bool(trained.metrics["nonfinite"].any())
    assert float(trained.metrics["action_nll"][-20:].mean()) < float(trained.metrics["action_nll"][:20].mean())
    env = RewardCostFeedback(Chain())

    @jax.jit
    def play(target_return, target_cost, key):  # traced targets: one compiled program for every target
        policy = cdt.make_policy(CONFIG, chain_data, trained.params, HPARAMS, target_return, target_cost, -1.0, 1.0)
        return rollout_episodes(env, None, policy, key, 2, HORIZON)

    # the behaviours are 5 apart; with nnx's unit-scale embedding init the (5, 0) target played 8.5 (OSRL's 0.02:
    # 5.8). After 400 updates that target played 7.4 on an AVX2 CPU; 1200 updates bring it within 0.6 on 5 seeds.
    for a in BEHAVIOURS:
        target_return, target_cost = HORIZON * (1.0 + abs(a)), HORIZON * max(a, 0.0)
        episodes = play(jnp.float32(target_return), jnp.float32(target_cost), jax.random.PRNGKey(0))
        np.testing.assert_allclose(episodes.returns, target_return, atol=1.0)
        np.testing.assert_allclose(episodes.costs, target_cost, atol=1.0)


def test_deployed_targets_decrease_by_realised_reward_and_cost(chain_data, trained):
    policy = cdt.make_policy(CONFIG, chain_data, trained.params, HPARAMS, 10.0, 5.0, -1.0, 1.0)
    state = jax.jit(policy.init)(jax.random.PRNGKey(0))
    step = jax.jit(policy.step)
    obs = {"obs": jnp.zeros((1,)), "reward": jnp.float32(0.0), "cost": jnp.float32(0.0)}
    state, _ = step(state, obs, jax.random.PRNGKey(0))
    state, _ = step(state, {**obs, "reward": jnp.float32(2.0), "cost": jnp.float32(1.0)}, jax.random.PRNGKey(0))
    assert float(state.target_return) == 8.0 and float(state.target_cost) == 4.0 and int(state.t) == 2
    np.testing.assert_allclose(state.returns[-2:], [10.0 * 0.1, 8.0 * 0.1], rtol=1e-6)
    np.testing.assert_array_equal(state.mask, [False, False, False, True, True])
    np.testing.assert_array_equal(state.timesteps[-2:], [0, 1])


def test_bad_targets_and_context_are_refused(chain_data, trained):
    with pytest.raises(ValueError, match="target_cost"):
        cdt.make_policy(CONFIG, chain_data, trained.params, HPARAMS, 5.0, -1.0, -1.0, 1.0)
    with pytest.warns(UserWarning, match="target_return=20.0 is outside"):
        cdt.make_policy(CONFIG, chain_data, trained.params, HPARAMS, 20.0, 0.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="CDTConfig.context_len"):
        cdt.make_train_parts(CONFIG.replace(context_len=HORIZON + 1, max_episode_len=10), chain_data)
    with pytest.raises(ValueError, match="CDTConfig.d_model"):
        cdt.CDTConfig(d_model=30, n_heads=4)
    assert cdt.CDTConfig.preset("osrl") == cdt.CDTConfig()



def test_cdt_vmapped_lane_equals_single_run(chain_data, trained):
    from jaxsafe.sweep import lane, make_grid, run_grid

    # the first 20 of the `trained` run's 400 updates (no schedule depends on num_updates)
    train = train_from_parts(cdt.make_train_parts(CONFIG.replace(num_updates=20), chain_data))
    grid = make_grid(HPARAMS, seeds=[0], cost_offset=[0.0, 10.0])  # lane 0 is the `trained` run (key 0, HPARAMS)
    results = run_grid(train, grid)
    # float32 reductions differ in the last bit under vmap and 400 chaotic updates amplify that: the early updates
    # agree to rounding (another key or hparams would differ from the first one)
    for name in ("loss", "action_nll", "cost_ce", "temperature"):
        np.testing.assert_allclose(lane(results, 0).metrics[name], trained.metrics[name][:20], rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    assert not np.allclose(lane(results, 1).metrics["loss"], trained.metrics["loss"][:20])  # the lanes differ


def test_frontier_augmentation_relabels_episodes_to_targets_above_the_frontier():
    """The windows of an augmented episode read the real steps of its source episode, with returns- and costs-to-go
    shifted so that they start at the augmented target (OSRL's relabelling)."""
    from jaxsafe.offline.training import episode_table

    chain_data = _chain_dataset(v_shaped=False)  # (return, cost) = (0, 0), (5, 0), (10, 5)
    table = episode_table(chain_data)
    episodes = cdt.training_episodes(CONFIG.replace(augment_fraction=1.0), chain_data)
    aug = episodes.augmentation
    real = table.starts.size
    assert episodes.starts.shape == (2 * real,) and aug.source.shape == (real,)
    np.testing.assert_array_equal(episodes.starts[:real], table.starts)
    np.testing.assert_array_equal(episodes.return_shift[:real], 0.0)
    start = episodes.starts[real:]
    np.testing.assert_allclose(chain_data.returns_to_go[start] + episodes.return_shift[real:], aug.target_return,
                               rtol=1e-6)
    np.testing.assert_allclose(chain_data.costs_to_go[start].sum(-1) + episodes.cost_shift[real:], aug.target_cost,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(episodes.costs[real:], aug.target_cost)
    # the frontier through (cost, return) = (0, 5) and (5, 10) is R = 5 + C; every target lies above it
    np.testing.assert_allclose(aug.frontier([0.0, 5.0]), [5.0, 10.0], atol=1e-6)
    assert np.all(aug.target_return >= 5.0 + aug.target_cost + 1.0 - 1e-6)
    assert cdt.training_episodes(CONFIG, chain_data).starts.shape == (real,)  # augment_fraction 0: none


def test_stochastic_deployment_samples_the_gaussian_head(chain_data, trained):
    """``deterministic=False`` plays ``mean + exp(log_std) * N(0, 1)`` with the step's key (then clamped); the
    default plays the mean; both see the same context."""
    kwargs = dict(config=CONFIG, dataset=chain_data, params=trained.params, hparams=HPARAMS, target_return=5.0,
                  target_cost=0.0, action_low=-1.0, action_high=1.0)
    sampled = cdt.make_policy(**kwargs, deterministic=False)
    mean_policy = cdt.make_policy(**kwargs)
    obs = {"obs": jnp.zeros((1,)), "reward": jnp.float32(0.0), "cost": jnp.float32(0.0)}
    key = jax.random.PRNGKey(3)
    state, action = jax.jit(sampled.step)(sampled.init(key), obs, key)
    _, mean_action = jax.jit(mean_policy.step)(mean_policy.init(key), obs, key)
    graphdef, _ = cdt.make_model(CONFIG, 1, 1)
    (mean, log_std), _ = nnx.merge(graphdef, trained.params)(
        state.returns[None], state.costs[None], state.states[None], jnp.zeros_like(state.actions)[None],
        state.timesteps[None], state.mask[None])
    np.testing.assert_allclose(mean_action, np.clip(mean[0, -1], -1, 1), rtol=1e-5, atol=1e-6)
    expected = mean[0, -1] + np.exp(log_std[0, -1]) * jax.random.normal(key, (1,))
    np.testing.assert_allclose(action, np.clip(expected, -1, 1), rtol=1e-5, atol=1e-6)
    # a different key, a different action (the deterministic one does not depend on the key)
    other = jax.random.PRNGKey(4)
    assert not np.allclose(jax.jit(sampled.step)(sampled.init(other), obs, other)[1], action)
    np.testing.assert_array_equal(jax.jit(mean_policy.step)(mean_policy.init(other), obs, other)[1], mean_action)
