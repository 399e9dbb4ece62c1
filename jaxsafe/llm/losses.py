"""Sequence log-probabilities and preference / reward-model losses (pure functions).

Sequence layout: ``tokens [B, T]`` hold prompt then response (any padding layout);
``attention_mask [B, T]`` marks real tokens and ``response_mask [B, T]`` marks the
tokens whose log-probabilities count (the response; the prompt is masked out). Token
``t`` is scored by the logits at ``t - 1``, so ``response_mask[:, 0]`` must be False.

Preference losses take per-sequence log-probabilities ``[B]`` of the policy and of a
frozen reference and return a :class:`PreferenceLoss`. Their conventions follow TRL:

* DPO (sigmoid): ``-(1 - ls) log sigma(beta * d) - ls log sigma(-beta * d)`` with
  ``d = (pi_c - pi_r) - (ref_c - ref_r)`` and label smoothing ``ls``.
* IPO: ``(d - 1 / (2 beta))^2`` (TRL feeds it length-averaged log-probs; use
  ``average=True`` in :func:`sequence_logprobs`).
* KTO: ``1 - sigma(beta (r - z))`` for desirable and ``1 - sigma(beta (z - r))`` for
  undesirable examples, ``r = pi - ref`` and ``z = max(mean(pi_KL - ref_KL), 0)``
  (no gradient) estimated from mismatched prompt/completion pairs.
* Bradley-Terry reward-model loss with fractional labels ``p``:
  ``-p log sigma(s_c - s_r) - (1 - p) log sigma(s_r - s_c)``.

GRPO (TRL conventions): :func:`group_advantages` (``scale_rewards`` group / batch / none), :func:`k3_kl`, and
:func:`grpo_loss`, the clipped token-level surrogate plus ``beta * k3`` aggregated by ``loss_type``
(:func:`aggregate_token_loss`: grpo, bnpo, dr_grpo, dapo); the trainer is :mod:`jaxsafe.llm.grpo`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from jaxsafe.learner import HParams
from jaxsafe.llm import model as model_lib
from jaxsafe.validation import positive


class PreferenceLoss(NamedTuple):
    """loss []: batch mean; per_example [B]; chosen_rewards / rejected_rewards [B]: implicit
    rewards ``beta * (pi - ref)``; accuracy []: fraction with chosen reward > rejected."""

    loss: jax.Array
    per_example: jax.Array
    chosen_rewards: jax.Array
    rejected_rewards: jax.Array
    accuracy: jax.Array


class PreferenceBatch(NamedTuple):
    """Chosen / rejected sequences, each [B, T] (same T for both; see :func:`pad_to_length`)."""

    chosen_tokens: jax.Array
    chosen_attention_mask: jax.Array
    chosen_response_mask: jax.Array
    rejected_tokens: jax.Array
    rejected_attention_mask: jax.Array
    rejected_response_mask: jax.Array


#: Conservative-DPO label smoothing is in [0, 0.5) (at 0.5 the loss no longer prefers either response).
LABEL_SMOOTHING_RULE = (lambda v: (v >= 0) & (v < 0.5), "in [0, 0.5)")


@struct.dataclass
class DPOHParams(HParams):
    """Traced (vmappable) DPO hyperparameters: beta > 0, label_smoothing in [0, 0.5)."""

    rules = {"beta": positive(), "label_smoothing": LABEL_SMOOTHING_RULE}

    beta: Any = 0.1
    label_smoothing: Any = 0.0


def masked_log_softmax(logits: jax.Array, vocab_mask: jax.Array | None = None) -> jax.Array:
    """log-softmax over the last axis, restricted to ``vocab_mask [V]`` (others -inf)."""
    if vocab_mask is not None:
        logits = jnp.where(vocab_mask, logits, -jnp.inf)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def token_logprobs(logits: jax.Array, tokens: jax.Array, vocab_mask: jax.Array | None = None) -> jax.Array:
    """``out [B, T]``: ``out[:, t] = log p(tokens[:, t] | tokens[:, :t])`` and ``out[:, 0] = 0``.

    logits [B, T, V] from a forward pass over ``tokens [B, T]``; vocab_mask [V] optionally
    restricts the policy to a sub-vocabulary (renormalised).
    """
    log_probs = masked_log_softmax(logits[:, :-1], vocab_mask)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)


def per_token_logprobs(graphdef, params, tokens, attention_mask, vocab_mask=None) -> jax.Array:
    """Model forward + :func:`token_logprobs`: [B, T] (position 0 and padding are not meaningful)."""
    logits = model_lib.logits(graphdef, params, tokens, attention_mask=attention_mask)
    return token_logprobs(logits, tokens, vocab_mask)


def sum_response_logprobs(per_token: jax.Array, response_mask: jax.Array, average: bool = False) -> jax.Array:
    """Sum (or mean) of per-token log-probs [B, T] over ``response_mask`` -> [B]."""
    response_mask = response_mask.astype(bool)
    total = jnp.sum(jnp.where(response_mask, per_token, 0.0), axis=-1)
    if average:
        total = total / jnp.maximum(response_mask.sum(axis=-1), 1)
    return total


def sequence_logprobs(graphdef, params, tokens, attention_mask, response_mask, *, average: bool = False,
                      vocab_mask=None) -> jax.Array:
    """log pi(response | prompt) per sequence [B]: response tokens summed, prompt masked.

    ``average=True`` divides by the number of response tokens (IPO convention).
    """
    per_token = per_token_logprobs(graphdef, params, tokens, attention_mask, vocab_mask)
    return sum_response_logprobs(per_token, response_mask, average)


def _pair_metrics(losses, chosen_rewards, rejected_rewards) -> PreferenceLoss:
    return PreferenceLoss(loss=jnp.mean(losses), per_example=losses, chosen_rewards=chosen_rewards,
                          rejected_rewards=rejected_rewards,
                          accuracy=jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32)))


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta,
             label_smoothing=0.0) -> PreferenceLoss:
    """Sigmoid DPO with label smoothing (conservative DPO). All log-prob inputs [B]."""
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    margin = beta * (chosen_logratio - rejected_logratio)
    losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin)
              - label_smoothing * jax.nn.log_sigmoid(-margin))
    return _pair_metrics(losses, jax.lax.stop_gradient(beta * chosen_logratio),
                         jax.lax.stop_gradient(beta * rejected_logratio))


def ipo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta) -> PreferenceLoss:
    """IPO: squared distance of the log-ratio margin from 1 / (2 beta). Inputs [B]."""
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    losses = (chosen_logratio - rejected_logratio - 1.0 / (2.0 * beta)) ** 2
    return _pair_metrics(losses, jax.lax.stop_gradient(beta * chosen_logratio),
                         jax.lax.stop_gradient(beta * rejected_logratio))


class KTOLoss(NamedTuple):
    """loss []: batch mean; per_example [B]; rewards [B] = beta * (pi - ref); kl []: the reference point z."""

    loss: jax.Array
    per_example: jax.Array
    rewards: jax.Array
    kl: jax.Array


def kto_loss(policy_logps, reference_logps, desirable, policy_kl_logps, reference_kl_logps, beta,
             desirable_weight=1.0, undesirable_weight=1.0) -> KTOLoss:
    """KTO with TRL semantics.

    policy_logps, reference_logps [B]: log-probs of each example's own completion.
    desirable [B] bool: the example's label.
    policy_kl_logps, reference_kl_logps [M]: log-probs of mismatched (prompt, completion)
      pairs, used for the reference point ``z = max(mean(policy_kl - reference_kl), 0)``,
      which carries no gradient.
    """
    kl = jnp.maximum(jnp.mean(jax.lax.stop_gradient(policy_kl_logps - reference_kl_logps)), 0.0)
    logratio = policy_logps - reference_logps
    desirable_losses = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (logratio - kl)))
    undesirable_losses = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (kl - logratio)))
    losses = jnp.where(desirable, desirable_losses, undesirable_losses)
    return KTOLoss(loss=jnp.mean(losses), per_example=losses,
                   rewards=jax.lax.stop_gradient(beta * logratio), kl=kl)


def bradley_terry_loss(chosen_scores, rejected_scores, labels=1.0) -> jax.Array:
    """Per-pair BT negative log-likelihood [B]; ``labels`` = P(chosen preferred) in [0, 1]."""
    margin = chosen_scores - rejected_scores
    return -labels * jax.nn.log_sigmoid(margin) - (1.0 - labels) * jax.nn.log_sigmoid(-margin)


# ----------------------------------------------------------------------------- batched objectives


def pad_to_length(array: jax.Array, length: int, value=0) -> jax.Array:
    """Right-pad ``array [B, T]`` to [B, length]."""
    if array.shape[1] > length:
        raise ValueError(f"length: {length} is shorter than the array ({array.shape[1]})")
    return jnp.pad(array, ((0, 0), (0, length - array.shape[1])), constant_values=value)


def concatenated_logprobs(graphdef, params, batch: PreferenceBatch, *, average: bool = False,
                          vocab_mask=None):
    """``(chosen [B], rejected [B])`` sequence log-probs from ONE forward pass over 2B rows."""
    tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens], axis=0)
    attention_mask = jnp.concatenate([batch.chosen_attention_mask, batch.rejected_attention_mask], axis=0)
    response_mask = jnp.concatenate([batch.chosen_response_mask, batch.rejected_response_mask], axis=0)
    logps = sequence_logprobs(graphdef, params, tokens, attention_mask, response_mask, average=average,
                              vocab_mask=vocab_mask)
    half = batch.chosen_tokens.shape[0]
    return logps[:half], logps[half:]


def dpo_objective(graphdef, params, reference_params, batch: PreferenceBatch, hparams: DPOHParams, *,
                  loss_type: str = "sigmoid", vocab_mask=None):
    """Scalar DPO/IPO loss and metrics: a pure function of ``params`` (vmappable over ``hparams``).

    loss_type: "sigmoid" (DPO with label smoothing) or "ipo" (length-averaged log-probs).
    ``reference_params`` are frozen (no gradient flows into them).
    """
    if loss_type not in ("sigmoid", "ipo"):
        raise ValueError(f"loss_type: must be 'sigmoid' or 'ipo', got {loss_type!r}")
    average = loss_type == "ipo"
    policy_chosen, policy_rejected = concatenated_logprobs(graphdef, params, batch, average=average,
                                                           vocab_mask=vocab_mask)
    reference_chosen, reference_rejected = jax.lax.stop_gradient(
        concatenated_logprobs(graphdef, reference_params, batch, average=average, vocab_mask=vocab_mask))
    if loss_type == "sigmoid":
        out = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, hparams.beta,
                       hparams.label_smoothing)
    else:
        out = ipo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, hparams.beta)
    metrics = {"loss": out.loss, "accuracy": out.accuracy, "chosen_reward": jnp.mean(out.chosen_rewards),
               "rejected_reward": jnp.mean(out.rejected_rewards),
               "margin": jnp.mean(out.chosen_rewards - out.rejected_rewards)}
    return out.loss, metrics


def reward_model_objective(graphdef, params, batch: PreferenceBatch, labels=1.0, output_index: int = 0):
    """Bradley-Terry loss of a :class:`~jaxsafe.llm.model.ScoreModel` on preference pairs.

    Chosen and rejected sequences share one forward pass; the score is read at the last
    real token. Returns ``(loss [], metrics)``.
    """
    tokens = jnp.concatenate([batch.chosen_tokens, batch.rejected_tokens], axis=0)
    attention_mask = jnp.concatenate([batch.chosen_attention_mask, batch.rejected_attention_mask], axis=0)
    all_scores = model_lib.scores(graphdef, params, tokens, attention_mask=attention_mask)[:, output_index]
    half = batch.chosen_tokens.shape[0]
    chosen_scores, rejected_scores = all_scores[:half], all_scores[half:]
    losses = bradley_terry_loss(chosen_scores, rejected_scores, labels)
    loss = jnp.mean(losses)
    return loss, {"loss": loss, "accuracy": jnp.mean((chosen_scores > rejected_scores).astype(jnp.float32))}


def sft_objective(graphdef, params, tokens, attention_mask, loss_mask, vocab_mask=None):
    """Mean next-token negative log-likelihood over ``loss_mask [B, T]`` tokens; ``(loss, metrics)``."""
    per_token = per_token_logprobs(graphdef, params, tokens, attention_mask, vocab_mask)
    loss_mask = loss_mask.astype(bool).at[:, 0].set(False)
    loss = -jnp.sum(jnp.where(loss_mask, per_token, 0.0)) / jnp.maximum(loss_mask.sum(), 1)
    return loss, {"loss": loss}


# ----------------------------------------------------------------------------- GRPO

#: TRL's ``loss_type`` values (token aggregations of the per-token GRPO loss).
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
#: TRL's ``scale_rewards`` values (the denominator of the group advantage).
SCALE_REWARDS = ("group", "batch", "none")
#: TRL's epsilon in ``(r - mean) / (std + eps)``.
GRPO_ADVANTAGE_EPS = 1e-4


def group_advantages(rewards: jax.Array, scale: str = "group", eps: float = GRPO_ADVANTAGE_EPS) -> jax.Array:
    """Group-relative advantages [P, G] from scalar rewards ``[P prompts, G responses]``.

    As TRL's ``GRPOTrainer`` computes them (https://huggingface.co/docs/trl/main/grpo_trainer, "Computing the
    advantage"; ``scale_rewards``): ``A_ij = (r_ij - mean_j r_ij) / (std + eps)`` with the group mean, and ``std``
    the Bessel-corrected (``ddof=1``), NaN-aware standard deviation of the group (``"group"``, the default) or of
    the whole batch (``"batch"``); ``"none"`` skips the division (Dr. GRPO). ``eps = 1e-4``.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale!r}")
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, group] with group >= 2, got shape {rewards.shape}")
    centred = rewards - jnp.nanmean(rewards, axis=1, keepdims=True)
    if scale == "none":
        return centred
    if scale == "group":
        std = jnp.nanstd(rewards, axis=1, keepdims=True, ddof=1)
    else:
        std = jnp.nanstd(rewards, ddof=1)
    return centred / (std + eps)


def k3_kl(logprobs: jax.Array, reference_logprobs: jax.Array) -> jax.Array:
    """Schulman's k3 estimator of ``KL(pi || pi_ref)`` per token: ``exp(ref - logp) - (ref - logp) - 1`` (TRL's
    per-token KL), elementwise. Non-negative, and unbiased: ``E_{a ~ pi}[k3] = KL(pi || pi_ref)``."""
    log_ratio = reference_logprobs - logprobs
    return jnp.expm1(log_ratio) - log_ratio


def aggregate_token_loss(per_token: jax.Array, mask: jax.Array, loss_type: str,
                         max_completion_length: int | None = None, num_items_in_batch=None) -> jax.Array:
    """Reduce a per-token loss ``[B, L]`` over ``mask [B, L]`` as TRL's ``loss_type`` does
    (https://huggingface.co/docs/trl/main/grpo_trainer, "Loss types"):

    * ``grpo``: each sequence's token mean, then the mean over sequences (DeepSeekMath's GRPO);
    * ``bnpo``: the sum over the batch's tokens / the number of active tokens in this (local) batch;
    * ``dr_grpo``: the sum / ``(B * max_completion_length)`` (Dr. GRPO's constant normaliser; default ``L``);
    * ``dapo``: the sum / ``num_items_in_batch``, the active tokens of the whole (global, accumulated) generation
      batch (DAPO); with no accumulation (the default ``None``) that is this batch's count, i.e. ``bnpo``.
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {GRPO_LOSS_TYPES}, got {loss_type!r}")
    mask = mask.astype(per_token.dtype)
    total = jnp.sum(per_token * mask)
    if loss_type == "grpo":
        return jnp.mean(jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))
    if loss_type == "bnpo":
        return total / jnp.maximum(jnp.sum(mask), 1.0)
    if loss_type == "dr_grpo":
        length = per_token.shape[-1] if max_completion_length is None else max_completion_length
        return total / (per_token.shape[0] * length)
    count = jnp.sum(mask) if num_items_in_batch is None else num_items_in_batch
    return total / jnp.maximum(count, 1.0)


class GRPOLoss(NamedTuple):
    """loss []: aggregated; per_token [B, L]: clipped-surrogate loss plus ``beta * k3``; clip_fraction []: share of
    active tokens whose ratio left the clip range; kl []: mean k3 KL to the reference over active tokens."""

    loss: jax.Array
    per_token: jax.Array
    clip_fraction: jax.Array
    kl: jax.Array


def grpo_loss(logprobs, old_logprobs, advantages, mask, *, loss_type: str = "dapo", clip_eps=0.2,
              clip_eps_high=None, beta=0.0, reference_logprobs=None, max_completion_length: int | None = None,
              num_items_in_batch=None, kl_ratio_correction: bool = False) -> GRPOLoss:
    """TRL's GRPO loss on response tokens.

    logprobs, old_logprobs, reference_logprobs [B, L]: token log-probs under the policy being optimised, the
    policy that sampled, and the frozen reference; advantages [B] (one per sequence, broadcast over its tokens);
    mask [B, L] active tokens. Per token, with ``r = exp(logp - old)``:
    ``-min(r A, clip(r, 1 - clip_eps, 1 + clip_eps_high) A) + beta * k3(logp, ref)``, then
    :func:`aggregate_token_loss` by ``loss_type``. ``clip_eps_high`` defaults to ``clip_eps`` (DAPO uses 0.28);
    ``beta = 0`` (TRL's default) drops the KL term and ``reference_logprobs`` may be None.
    ``kl_ratio_correction`` multiplies the per-token k3 by the (unclipped) ratio ``r``, TRL's
    ``use_bias_correction_kl`` (its default in TRL 1.16): with samples from the old policy, ``r * k3`` has the
    expectation of k3 under the current one, and its gradient keeps the score-function term ``k3 grad log pi``
    (so the KL gradient is unbiased). Off by default (the GRPO paper's loss): at ``r = 1`` the two losses have equal
    values but different gradients. ``GRPOLoss.kl`` is the term that enters the loss.
    """
    clip_eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.astype(bool)
    # Inactive positions may hold -inf log-probs (a pad token outside a masked alphabet); zero them before any
    # arithmetic, so neither the forward pass nor the gradient sees inf - inf.
    logprobs = jnp.where(mask, logprobs, 0.0)
    old_logprobs = jnp.where(mask, old_logprobs, 0.0)
    if reference_logprobs is not None:
        reference_logprobs = jnp.where(mask, reference_logprobs, 0.0)
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    advantage = advantages[:, None]
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
    per_token = -jnp.minimum(ratio * advantage, clipped * advantage)
    if reference_logprobs is not None:
        kl = jnp.where(mask, k3_kl(logprobs, reference_logprobs), 0.0)
        if kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    else:
        kl = jnp.zeros_like(per_token)
    active = jnp.maximum(jnp.sum(mask), 1)
    outside = ((ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_eps_high)) & mask
    return GRPOLoss(aggregate_token_loss(per_token, mask, loss_type, max_completion_length, num_items_in_batch),
                    per_token, jnp.sum(outside) / active, jnp.sum(kl) / active)
