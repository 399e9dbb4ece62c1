"""Log-prob masking and every loss against hand-computed values."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib


def test_token_logprobs_hand_values():
    # position 0 predicts token 1 with p = 1/2; position 1 predicts token 0 with p = 3/4
    logits = jnp.array([[[0.0, 0.0], [jnp.log(3.0), 0.0], [5.0, -5.0]]])
    out = losses.token_logprobs(logits, jnp.array([[1, 1, 0]]))
    np.testing.assert_allclose(out, [[0.0, np.log(0.5), np.log(0.75)]], rtol=1e-6)
    summed = losses.sum_response_logprobs(out, jnp.array([[0, 0, 1]]))
    np.testing.assert_allclose(summed, [np.log(0.75)], rtol=1e-6)
    averaged = losses.sum_response_logprobs(out, jnp.array([[0, 1, 1]]), average=True)
    np.testing.assert_allclose(averaged, [(np.log(0.5) + np.log(0.75)) / 2], rtol=1e-6)


def test_vocab_mask_renormalises_and_masked_positions_cannot_leak_nan():
    logits = jnp.zeros((1, 3, 3))
    mask = jnp.array([True, True, False])
    out = losses.token_logprobs(logits, jnp.array([[0, 1, 2]]), vocab_mask=mask)
    np.testing.assert_allclose(out[0, 1], np.log(0.5), rtol=1e-6)
    assert np.isneginf(out[0, 2])  # a disallowed token ...
    total = losses.sum_response_logprobs(out, jnp.array([[0, 1, 0]]))  # ... outside the response is ignored
    np.testing.assert_allclose(total, [np.log(0.5)], rtol=1e-6)


@pytest.fixture(scope="module")
def sequences():
    tokens = jnp.array([[3, 4, 5, 6, 7, 0], [8, 9, 10, 11, 0, 0]])
    attention_mask = tokens > 0
    response_mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 0, 0]], bool)
    return tokens, attention_mask, response_mask


def test_sequence_logprobs_masks_prompt_and_padding(tiny_model, sequences):
    graphdef, params = tiny_model
    tokens, attention_mask, response_mask = sequences
    seq_fn = jax.jit(losses.sequence_logprobs, static_argnums=0)
    logps = seq_fn(graphdef, params, tokens, attention_mask, response_mask)
    per_token = jax.jit(losses.per_token_logprobs, static_argnums=0)(graphdef, params, tokens, attention_mask)
    np.testing.assert_allclose(logps[0], per_token[0, 2:5].sum(), rtol=1e-5)
    np.testing.assert_allclose(logps[1], per_token[1, 3], rtol=1e-5)
    # changing padding tokens changes nothing; including the prompt would change the value
    np.testing.assert_allclose(seq_fn(graphdef, params, tokens.at[:, -1].set(9), attention_mask,
                                      response_mask),
                               logps, rtol=1e-5)
    with_prompt = seq_fn(graphdef, params, tokens, attention_mask, response_mask.at[:, 1].set(True))
    assert np.all(np.asarray(with_prompt) < np.asarray(logps))


POLICY_CHOSEN, POLICY_REJECTED = jnp.array([-1.0]), jnp.array([-2.0])
REF_CHOSEN, REF_REJECTED = jnp.array([-1.5]), jnp.array([-1.5])


def test_dpo_hand_values():
    # d = (-1 + 1.5) - (-2 + 1.5) = 1, beta d = 0.5, loss = log(1 + e^-0.5)
    out = losses.dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5)
    np.testing.assert_allclose(out.loss, 0.474077, rtol=1e-5)
    np.testing.assert_allclose(out.chosen_rewards, [0.25])
    np.testing.assert_allclose(out.rejected_rewards, [-0.25])
    assert out.accuracy == 1.0
    smoothed = losses.dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5,
                               label_smoothing=0.1)
    np.testing.assert_allclose(smoothed.loss, 0.9 * 0.474077 + 0.1 * 0.974077, rtol=1e-5)


def test_ipo_hand_values():
    at_target = losses.ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5)
    np.testing.assert_allclose(at_target.loss, 0.0, atol=1e-7)  # d = 1 = 1 / (2 * 0.5)
    off_target = losses.ipo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.25)
    np.testing.assert_allclose(off_target.loss, 1.0, rtol=1e-6)  # (1 - 2)^2


def test_kto_hand_values_trl_semantics():
    policy, reference = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.5])
    desirable = jnp.array([True, False])
    policy_kl, reference_kl = jnp.array([-1.0, -3.0]), jnp.array([-2.0, -2.5])  # z = mean(1, -0.5) = 0.25
    out = losses.kto_loss(policy, reference, desirable, policy_kl, reference_kl, beta=1.0)
    np.testing.assert_allclose(out.kl, 0.25)
    np.testing.assert_allclose(out.per_example, [1 - 0.562177, 1 - 0.679179], rtol=1e-5)
    np.testing.assert_allclose(out.loss, (0.437823 + 0.320821) / 2, rtol=1e-5)
    weighted = losses.kto_loss(policy, reference, desirable, policy_kl, reference_kl, beta=1.0,
                               desirable_weight=2.0, undesirable_weight=0.5)
    np.testing.assert_allclose(weighted.per_example, [2 * 0.437823, 0.5 * 0.320821], rtol=1e-5)
    clamped = losses.kto_loss(policy, reference, desirable, policy_kl - 5.0, reference_kl, beta=1.0)
    assert clamped.kl == 0.0  # the reference point is clamped at zero
    # no gradient flows through the reference point z
    grad_kl = jax.grad(lambda p: losses.kto_loss(policy, reference, desirable, p, reference_kl,
                                                 1.0).loss)(policy_kl)
    np.testing.assert_array_equal(grad_kl, 0.0)


def test_bradley_terry_fractional_labels():
    chosen, rejected = jnp.array([1.0, 1.0, 1.0]), jnp.array([0.0, 0.0, 0.0])
    out = losses.bradley_terry_loss(chosen, rejected, jnp.array([1.0, 0.8, 0.5]))
    np.testing.assert_allclose(out, [0.313262, 0.8 * 0.313262 + 0.2 * 1.313262, 0.5 * (0.313262 + 1.313262)],
                               rtol=1e-5)


def _preference_batch():
    chosen = jnp.array([[3, 4, 5, 6, 0], [8, 9, 10, 0, 0]])
    rejected = jnp.array([[3, 4, 7, 0, 0], [8, 9, 11, 12, 13]])
    prompt = jnp.zeros_like(chosen, bool).at[:, :2].set(True)
    return losses.PreferenceBatch(chosen, chosen > 0, (chosen > 0) & ~prompt, rejected, rejected > 0,
                                  (rejected > 0) & ~prompt)


@pytest.fixture(scope="module")
def reference_params(tiny_model):
    _, params = tiny_model
    noise = np.random.default_rng(9)
    return jax.tree.map(lambda x: x + 0.05 * noise.standard_normal(x.shape).astype(np.float32), params)


def test_dpo_objective_single_pass_equals_separate_passes(tiny_model, reference_params):
    graphdef, params = tiny_model
    batch = _preference_batch()
    hparams = losses.DPOHParams(jnp.float32(0.3), jnp.float32(0.05))
    loss, metrics = jax.jit(losses.dpo_objective, static_argnums=0)(graphdef, params, reference_params, batch,
                                                                     hparams)
    seq = jax.jit(losses.sequence_logprobs, static_argnums=0)
    separate = losses.dpo_loss(
        seq(graphdef, params, batch.chosen_tokens, batch.chosen_attention_mask, batch.chosen_response_mask),
        seq(graphdef, params, batch.rejected_tokens, batch.rejected_attention_mask,
            batch.rejected_response_mask),
        seq(graphdef, reference_params, batch.chosen_tokens, batch.chosen_attention_mask,
            batch.chosen_response_mask),
        seq(graphdef, reference_params, batch.rejected_tokens, batch.rejected_attention_mask,
            batch.rejected_response_mask), 0.3, 0.05)
    np.testing.assert_allclose(loss, separate.loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["margin"],
                               jnp.mean(separate.chosen_rewards - separate.rejected_rewards),
                               rtol=1e-4, atol=1e-6)


def test_dpo_objective_vmaps_over_beta_and_differentiates_twice(tiny_model, reference_params):
    graphdef, params = tiny_model
    batch = _preference_batch()
    objective = functools.partial(losses.dpo_objective, graphdef)

    def loss_at(beta):
        return objective(params, reference_params, batch, losses.DPOHParams(beta, jnp.float32(0.0)))[0]

    # d/d beta of the parameter gradient (a mixed second derivative), against finite differences
    def grad_dot(beta):
        grads = jax.grad(lambda p: objective(p, reference_params, batch,
                                             losses.DPOHParams(beta, 0.0))[0])(params)
        return sum(jnp.sum(g) for g in jax.tree.leaves(grads))

    step = 1e-2

    @jax.jit
    def everything():
        grid = jax.vmap(loss_at)(jnp.array([0.1, 0.5, 1.0]))
        _, second = jax.jvp(grad_dot, (jnp.float32(0.5),), (jnp.float32(1.0),))
        below, above = jax.vmap(grad_dot)(jnp.array([0.5 - step, 0.5 + step]))
        return grid, second, (above - below) / (2 * step)

    grid, second, finite = everything()
    assert grid[0] != grid[1] != grid[2]
    np.testing.assert_allclose(grid[1], loss_at(0.5), rtol=1e-5)  # eager, no extra compilation
    np.testing.assert_allclose(second, finite, rtol=2e-2, atol=1e-5)
    assert abs(float(second)) > 1e-6


def test_reward_model_objective_matches_bradley_terry(tiny_config):
    graphdef, params = model_lib.init_score_model(tiny_config, jax.random.PRNGKey(4))
    batch = _preference_batch()
    loss, _ = jax.jit(losses.reward_model_objective, static_argnums=0)(graphdef, params, batch, 0.7)
    score = jax.jit(model_lib.scores, static_argnums=0)
    chosen = score(graphdef, params, batch.chosen_tokens, None, batch.chosen_attention_mask)[:, 0]
    rejected = score(graphdef, params, batch.rejected_tokens, None, batch.rejected_attention_mask)[:, 0]
    np.testing.assert_allclose(loss, jnp.mean(losses.bradley_terry_loss(chosen, rejected, 0.7)), rtol=1e-5)


def test_sft_objective_is_mean_nll_over_mask(tiny_model, sequences):
    graphdef, params = tiny_model
    tokens, attention_mask, response_mask = sequences
    loss, _ = jax.jit(losses.sft_objective, static_argnums=0)(graphdef, params, tokens, attention_mask,
                                                              response_mask)
    per_token = jax.jit(losses.per_token_logprobs, static_argnums=0)(graphdef, params, tokens, attention_mask)
    np.testing.assert_allclose(loss, -np.asarray(per_token)[np.asarray(response_mask)].mean(), rtol=1e-5)


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match="loss_type"):
        losses.dpo_objective(None, None, None, _preference_batch(), losses.DPOHParams(0.1), loss_type="hinge")
    with pytest.raises(ValueError, match="length"):
        losses.pad_to_length(jnp.zeros((2, 5)), 3)
