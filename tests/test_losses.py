"""The shared policy-gradient losses (:mod:`jaxsafe.losses`): exact values on tiny inputs, one and two costs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import losses


def test_mix_advantages_one_cost_hand_values():
    reward, cost = jnp.array([1.0, -2.0]), jnp.array([0.5, 4.0])
    # m = 3: (A - 3 A_c) / 4
    np.testing.assert_allclose(losses.mix_advantages(reward, cost, jnp.float32(3.0)), [-0.125, -3.5], rtol=1e-6)
    np.testing.assert_array_equal(losses.mix_advantages(reward, cost, jnp.float32(0.0)), reward)


def test_mix_advantages_two_costs_hand_values():
    reward = jnp.array([1.0, -2.0, 0.0])
    cost = jnp.array([[0.5, 2.0], [4.0, -1.0], [1.0, 1.0]])  # [batch, n_costs]
    multiplier = jnp.array([1.0, 3.0])
    # (A - 1 A_c0 - 3 A_c1) / (1 + 4)
    want = [(1.0 - 0.5 - 6.0) / 5, (-2.0 - 4.0 + 3.0) / 5, (0.0 - 1.0 - 3.0) / 5]
    np.testing.assert_allclose(losses.mix_advantages(reward, cost, multiplier), want, rtol=1e-6)
    # a zero multiplier on one cost is that cost ignored: the one-cost mixing of the other
    np.testing.assert_allclose(losses.mix_advantages(reward, cost, jnp.array([0.0, 3.0])),
                               losses.mix_advantages(reward, cost[:, 1], jnp.float32(3.0)), rtol=1e-6)
    with pytest.raises(ValueError, match="cost axis"):
        losses.mix_advantages(reward, cost, jnp.array([1.0, 2.0, 3.0]))


def test_standardise_and_centre_hand_values():
    x = jnp.array([1.0, 2.0, 3.0, 6.0])  # mean 3, population std sqrt(3.5)
    np.testing.assert_allclose(losses.centre(x), [-2.0, -1.0, 0.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(losses.standardise(x), np.array([-2.0, -1.0, 0.0, 3.0]) / (np.sqrt(3.5) + 1e-8),
                               rtol=1e-6)
    mask = jnp.array([True, True, False, False])  # mean 1.5, std 0.5 over the valid entries
    np.testing.assert_allclose(losses.standardise(x, mask)[:2], [-1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(losses.masked_mean(x, mask), 1.5)
    assert float(losses.masked_mean(x, jnp.zeros(4, bool))) == 0.0


def test_clipped_surrogate_hand_values():
    old = jnp.zeros(4)
    log_prob = jnp.log(jnp.array([1.5, 0.5, 1.1, 0.7]))  # ratios
    advantage = jnp.array([1.0, 1.0, -2.0, -1.0])
    out = losses.clipped_surrogate(log_prob, old, advantage, 0.2)
    # min(r A, clip(r, 0.8, 1.2) A): 1.2, 0.5, -2.2, -0.8
    np.testing.assert_allclose(out.loss, -(1.2 + 0.5 - 2.2 - 0.8) / 4, rtol=1e-6)
    np.testing.assert_allclose(out.ratio, [1.5, 0.5, 1.1, 0.7], rtol=1e-6)
    np.testing.assert_allclose(out.clip_fraction, 3 / 4)  # 1.5, 0.5 and 0.7 left [0.8, 1.2]
    r = np.array([1.5, 0.5, 1.1, 0.7])
    np.testing.assert_allclose(out.approx_kl, np.mean((r - 1) - np.log(r)), rtol=1e-5)
    # an asymmetric upper clip, and a mask that drops the second entry (whose log-prob may be anything)
    masked = losses.clipped_surrogate(log_prob.at[1].set(jnp.inf), old, advantage, 0.2,
                                      mask=jnp.array([True, False, True, True]), clip_eps_high=0.3)
    np.testing.assert_allclose(masked.loss, -(1.3 - 2.2 - 0.8) / 3, rtol=1e-6)
    assert np.isfinite(float(masked.approx_kl))


def test_clipped_surrogate_gradient_vanishes_outside_the_clip():
    advantage = jnp.array([1.0, 1.0])
    grad = jax.grad(lambda lp: losses.clipped_surrogate(lp, jnp.zeros(2), advantage, 0.2).loss)(
        jnp.log(jnp.array([1.5, 1.0])))
    # ratio 1.5 with A > 0 is clipped (no gradient); ratio 1 gives d(-r A / 2)/d log r = -1/2
    np.testing.assert_allclose(grad, [0.0, -0.5], rtol=1e-6)


def test_value_loss_hand_values():
    np.testing.assert_allclose(losses.value_loss(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])), (0.5 + 2.0) / 2)
