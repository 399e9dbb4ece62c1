"""The Multi-Game Decision Transformer: tokenisation, the relaxed causal mask, training, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsafe.nn.transformer import Transformer, TransformerConfig
from jaxsafe.offline import mgdt
from jaxsafe.offline import multigame as mg
from jaxsafe.offline.dataset import from_transitions

import _mgdt_tiny as tiny


def test_return_bins_round_trip_and_count():
    config = mgdt.MGDTConfig()
    assert config.num_return_bins == 121  # [-20, 100] inclusive (the colab's 120 rows are one too few)
    returns = jnp.arange(-20, 101, dtype=jnp.float32)
    bins = mgdt.bin_returns(returns, 1.0, -20, 100)
    np.testing.assert_array_equal(np.asarray(bins), np.arange(121))
    np.testing.assert_array_equal(np.asarray(mgdt.unbin_returns(bins, 1.0, -20)), np.asarray(returns))
    # a reward scale of 0.2 maps CartPole's 0..500 onto 0..100, multiples of 5 round trip exactly
    cartpole = jnp.arange(0, 501, 5, dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(mgdt.unbin_returns(mgdt.bin_returns(cartpole, 0.2, -20, 100), 0.2, -20)),
                               np.asarray(cartpole), rtol=1e-6)
    # outside the range clips to the end bins
    np.testing.assert_array_equal(np.asarray(mgdt.bin_returns(jnp.array([-50.0, 300.0]), 1.0, -20, 100)), [0, 120])


def test_reward_classes_follow_the_colab():
    np.testing.assert_array_equal(np.asarray(mgdt.reward_classes(jnp.array([0.0, 2.0, -0.5, 1.0]))), [0, 1, 3, 1])


def test_relaxed_query_slots():
    # K = 2 steps of P = 2 patches + return, action, reward: a patch sees up to its frame's last patch
    np.testing.assert_array_equal(mgdt.relaxed_query_slots(2, 2), [1, 1, 2, 3, 4, 6, 6, 7, 8, 9])


def test_relaxed_mask_patches_see_their_frame_and_nothing_sees_the_future():
    context, patches = 2, 3
    length = context * (patches + 3)
    core = Transformer(TransformerConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=length,
                                         block_style="gpt2"), rngs=nnx.Rngs(0))
    slots = mgdt.relaxed_query_slots(context, patches)
    mask = jnp.ones((1, length), bool)
    tokens = jax.random.normal(jax.random.PRNGKey(1), (1, length, 8))
    jac = jax.jacobian(lambda x: mgdt.relaxed_core(core, x, mask, jnp.asarray(slots)))(tokens)
    influence = np.abs(np.asarray(jac)).sum(axis=(0, 2, 3, 5))  # [query t, key s]
    allowed = np.arange(length)[None, :] <= slots[:, None]
    assert np.all(influence[~allowed] == 0.0)  # nothing sees the future
    assert np.all(influence[allowed] > 0.0)
    assert influence[0, patches - 1] > 0  # the first patch sees the frame's last patch (not allowed causally)


def test_patchify_image_tiles_and_vector_pieces():
    layout = mgdt.SuiteLayout((10, 10, 3), True, 4, 75, 3)
    obs = jnp.arange(300.0).reshape(10, 10, 3)
    tiles = mgdt.patchify(obs, layout, 5)
    assert tiles.shape == (4, 75)
    np.testing.assert_array_equal(np.asarray(tiles[1]), np.asarray(obs[:5, 5:].reshape(-1)))
    np.testing.assert_array_equal(np.asarray(tiles[2]), np.asarray(obs[5:, :5].reshape(-1)))
    vector = mgdt.SuiteLayout((6,), False, 2, 3, 3)
    np.testing.assert_array_equal(np.asarray(mgdt.patchify(jnp.arange(6.0), vector, 5)), [[0, 1, 2], [3, 4, 5]])


@pytest.fixture(scope="module")
def small_data():
    return tiny.data()  # shared with test_mtro.py (built once per process)


def test_layout_pads_to_shared_shapes(small_data):
    layout = mgdt.suite_layout(mgdt.MGDTConfig(n_patches=2), small_data)
    assert layout.obs_shape == (50,) and layout.n_patches == 2 and layout.patch_dim == 25
    assert layout.num_actions == 3


def test_training_lowers_the_loss_and_a_vmapped_lane_is_a_single_run():
    # the vmapped lanes are the ones test_mtro.py plays (tests/offline/_mgdt_tiny.py: d_model 16, 1 layer,
    # 16 windows, 150 updates)
    loss = np.asarray(tiny.lanes().metrics["loss"])
    assert loss.shape == (tiny.LANES, tiny.CONFIG.num_updates) and np.all(np.isfinite(loss))
    assert np.all(loss[:, -10:].mean(1) < loss[:, :10].mean(1) - 0.5)
    single = jax.jit(tiny.train())(tiny.keys()[1], tiny.hparams())
    np.testing.assert_allclose(np.asarray(single.metrics["loss"]), loss[1], rtol=1e-4, atol=1e-4)


def test_bad_input_is_refused_with_the_field_named(small_data):
    with pytest.raises(ValueError, match="valid games: Asterix, Breakout, Freeway, Seaquest, SpaceInvaders"):
        mg.make_game("minatar", "Pong")
    with pytest.raises(ValueError, match="return_low/return_high.*Catch's returns-to-go.*range \\[-10, 10\\]"):
        mgdt.prepare(mgdt.MGDTConfig(return_low=-5), small_data)
    image = from_transitions(np.zeros((3, 8, 8, 2)), np.zeros((3, 8, 8, 2)), np.zeros(3, np.int32), np.ones(3),
                             np.zeros(3), np.array([False, False, True]), np.zeros(3, bool))
    mixed = small_data._replace(datasets=(small_data.datasets[0], image))
    with pytest.raises(ValueError, match="datasets.observations"):
        mgdt.suite_layout(mgdt.MGDTConfig(), mixed)
    with pytest.raises(ValueError, match="MGDTConfig.batch_size"):
        mgdt.prepare(mgdt.MGDTConfig(batch_size=15), small_data)
    with pytest.raises(ValueError, match="no dataset for 'Breakout'"):
        mg.load_suite("minatar", "/nonexistent-dir", games=["Breakout"])


def test_image_torso_for_ppo_on_minatar_observations():
    from gymnax.environments import spaces

    from jaxsafe.rl.networks import Critic, make_actor

    obs = jnp.zeros((7, 10, 10, 4))
    for torso in ("flatten", "conv"):
        actor = make_actor(spaces.Discrete(3), (16,), "relu", torso=torso)
        params = actor.init(jax.random.PRNGKey(0), obs[0])
        assert actor.apply(params, obs).logits.shape == (7, 3)
        critic = Critic((16,), "relu", torso=torso)
        assert critic.apply(critic.init(jax.random.PRNGKey(0), obs[0]), obs).shape == (7,)
    with pytest.raises(ValueError, match="torso"):
        make_actor(spaces.Discrete(3), (16,), torso="cnn")
