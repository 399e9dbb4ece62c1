"""GRPO on verifiable rewards, on the learner contract (TRL's conventions).

One update is one GRPO iteration: draw ``prompts_per_batch`` prompts (shuffled epochs over the prompt set), sample
a group of ``group_size`` responses of at most ``max_new_tokens`` (the token budget H) per prompt with the jitted
sampler (:func:`jaxsafe.llm.generate.generate`; the response alphabet and a traced temperature through a logit
processor), score them with a pluggable verifiable ``reward_fn``, reduce the K criteria to one scalar per response
with ``reward_transform``, form group-relative advantages (:func:`~jaxsafe.llm.losses.group_advantages`,
``scale_rewards``), and take ``inner_epochs`` full-batch AdamW steps on the clipped token-level surrogate plus
``beta`` times the k3 KL to the frozen reference, aggregated by ``loss_type``
(:func:`~jaxsafe.llm.losses.grpo_loss`). The sampler's token log-probs are the "old" policy's.

Contracts (IAMA and other learners plug in here)::

    reward_fn(prompt_tokens [B, P], responses [B, H], response_mask [B, H]) -> rewards [B, K]   # K >= 1, in range
    reward_transform(rewards [num_prompts, G, K]) -> scalar rewards [num_prompts, G]          # default: weighted mean

``config = GRPOConfig(...)``, ``hparams = config.default_hparams()`` (:class:`GRPOHParams`: learning rate, clip
epsilons, beta, temperature), ``parts = make_train_parts(config, problem)`` (a :class:`GRPOProblem`), and
``train = make_train(config, problem)`` is the pure ``train(key, hparams) -> TrainResult`` (vmap it over seeds and
hparams). TRL's names: ``num_generations`` is ``group_size``; TRL's ``num_iterations`` (passes over each generated
batch, the GRPO paper's mu) is ``inner_epochs`` here, and ``num_iterations`` counts GRPO iterations (updates);
``max_completion_length`` is ``max_new_tokens``; ``epsilon`` / ``epsilon_high`` are ``clip_eps`` /
``clip_eps_high``.

Metrics per update: ``mean_reward``, ``pass_at_1`` (fraction of responses solved within H), ``group_reward_std``
(mean over groups of the within-group std), ``zero_variance_fraction`` (groups whose rewards are all equal: no
gradient, TRL's "loss is 0"), ``tokens_generated``, ``kl`` (mean per-token k3 to the reference), ``loss``,
``clip_fraction``, ``grad_norm``, ``reward_out_of_range`` (share of responses whose reward left the declared
range) and ``nonfinite``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxsafe.learner import Config, HParams, TrainParts, make_train_from_parts
from jaxsafe.llm import generate as generate_lib
from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import train as train_lib
from jaxsafe.llm.losses import GRPO_LOSS_TYPES, SCALE_REWARDS, group_advantages, grpo_loss, k3_kl
from jaxsafe.validation import is_int, non_negative, open_unit_interval, positive, require

__all__ = ["GRPOConfig", "GRPOHParams", "GRPOProblem", "GRPOState", "LOSS_TYPES", "SCALE_REWARDS",
           "group_advantages", "grpo_loss", "k3_kl", "weighted_mean_transform", "sample_group",
           "policy_token_logprobs", "make_train_parts", "make_train"]

LOSS_TYPES = GRPO_LOSS_TYPES


# ----------------------------------------------------------------------------- config / hparams


@struct.dataclass
class GRPOHParams(HParams):
    """Traced (vmappable) hyperparameters.

    learning_rate []: AdamW step size, > 0 (TRL's 1e-6 is for pretrained LLMs; the tiny decoders here use 1e-3).
    clip_eps, clip_eps_high []: lower / upper ratio clip, in (0, 1) (DAPO's clip-higher: 0.28).
    beta []: weight of the k3 KL to the reference, >= 0 (TRL's default 0).
    temperature []: sampling temperature, > 0; the loss's log-probs use the same tempered logits.
    weight_decay []: AdamW decoupled weight decay, >= 0.
    """

    rules = {"learning_rate": positive(), "clip_eps": open_unit_interval(), "clip_eps_high": open_unit_interval(),
             "beta": non_negative(), "temperature": positive(), "weight_decay": non_negative()}

    learning_rate: Any = 1e-3
    clip_eps: Any = 0.2
    clip_eps_high: Any = 0.2
    beta: Any = 0.0
    temperature: Any = 1.0
    weight_decay: Any = 0.0


def weighted_mean_transform(rewards: jax.Array, weights=None) -> jax.Array:
    """The default ``reward_transform``: ``[P, G, K] -> [P, G]``, the weighted mean over the K criteria (the
    squeeze when K = 1). TRL sums weighted rewards instead; with equal weights that is K times this."""
    if weights is None:
        return jnp.mean(rewards, axis=-1)
    weights = jnp.asarray(weights, jnp.float32)
    return jnp.sum(rewards * weights, axis=-1) / jnp.sum(weights)


@dataclasses.dataclass(frozen=True)
class GRPOConfig(Config):
    """Static settings (hashable; a jit static argument).

    group_size: G responses per prompt, >= 2 (TRL's ``num_generations``).
    prompts_per_batch: prompts per iteration, >= 1; the rollout batch is ``prompts_per_batch * G``.
    batch_size: rollouts per iteration (TRL's generation batch), or 0 (the default) to take
      ``prompts_per_batch * group_size``; a non-zero value must be a multiple of ``group_size`` and sets
      ``prompts_per_batch = batch_size // group_size``.
    max_new_tokens: the token budget H, >= 1.
    loss_type: one of :data:`LOSS_TYPES` (TRL's default "dapo").
    scale_rewards: one of :data:`SCALE_REWARDS` (TRL's default "group").
    num_iterations: GRPO iterations (sample, then ``inner_epochs`` steps), >= 1; one learner update each.
    inner_epochs: full-batch optimiser steps per generated batch, >= 1 (TRL's ``num_iterations``).
    reward_fn: ``(prompts [B, P], responses [B, H], mask [B, H]) -> [B, K]``; None takes the problem's verifier.
    reward_range: the declared ``(low, high)`` of ``reward_fn``'s values (required with ``reward_fn``; default the
      problem's). Rewards outside it are reported (``reward_out_of_range``) and fail the build-time probe.
    reward_transform: ``[num_prompts, G, K] -> [num_prompts, G]``; None is :func:`weighted_mean_transform` with
      ``reward_weights``.
    reward_weights: optional K weights of the default transform.
    kl_ratio_correction: multiply the k3 KL by the (differentiated) importance ratio, TRL's
      ``use_bias_correction_kl`` (its default in TRL 1.16); False (the default) is the GRPO paper's loss. Only
      matters with ``beta > 0``.
    log_kl: compute the ``kl`` metric (the k3 KL of the sampled tokens to the reference) even when ``beta == 0``,
      at the price of one forward pass of the reference per iteration (about a fifth of an iteration on a large
      model). False (TRL's behaviour: it loads no reference at ``beta == 0``) skips that pass whenever the
      traced ``beta`` is 0 and logs ``kl`` as NaN then; the loss and the updates are the same either way.
    """

    group_size: int = 8
    prompts_per_batch: int = 16
    max_new_tokens: int = 16
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    num_iterations: int = 100
    inner_epochs: int = 1
    reward_fn: Callable | None = None
    reward_range: tuple | None = None
    reward_transform: Callable | None = None
    reward_weights: tuple | None = None
    batch_size: int = 0
    kl_ratio_correction: bool = False
    log_kl: bool = True

    def __post_init__(self):
        require(is_int(self.group_size, 2), "GRPOConfig.group_size",
                "an integer >= 2 (a group needs two responses to compare)", self.group_size)
        require(is_int(self.batch_size, 0), "GRPOConfig.batch_size", "an integer >= 0 (0: prompts_per_batch * G)",
                self.batch_size)
        if self.batch_size:
            if self.batch_size % self.group_size:
                lower = self.batch_size // self.group_size * self.group_size
                raise ValueError(f"GRPOConfig.batch_size must be a multiple of group_size={self.group_size} (each "
                                 f"prompt gets a whole group), got {self.batch_size}; e.g. "
                                 f"{max(lower, self.group_size)} or {lower + self.group_size}")
            object.__setattr__(self, "prompts_per_batch", self.batch_size // self.group_size)
        for name in ("prompts_per_batch", "max_new_tokens", "num_iterations", "inner_epochs"):
            allowed = "an integer >= 1" + (" (the token budget H)" if name == "max_new_tokens" else "")
            require(is_int(getattr(self, name)), f"GRPOConfig.{name}", allowed, getattr(self, name))
        require(self.loss_type in LOSS_TYPES, "GRPOConfig.loss_type", f"one of {LOSS_TYPES}", self.loss_type)
        require(self.scale_rewards in SCALE_REWARDS, "GRPOConfig.scale_rewards", f"one of {SCALE_REWARDS}",
                self.scale_rewards)
        for name in ("kl_ratio_correction", "log_kl"):
            require(isinstance(getattr(self, name), bool), f"GRPOConfig.{name}", "True or False",
                    getattr(self, name))
        require(self.reward_fn is None or callable(self.reward_fn), "GRPOConfig.reward_fn", "a callable or None",
                self.reward_fn)
        require(self.reward_transform is None or callable(self.reward_transform), "GRPOConfig.reward_transform",
                "a callable or None", self.reward_transform)
        if self.reward_fn is not None:
            require(self.reward_range is not None, "GRPOConfig.reward_range",
                    "a (low, high) pair declaring reward_fn's range", self.reward_range)
        if self.reward_range is not None:
            ok = (len(tuple(self.reward_range)) == 2 and all(np.isfinite(v) or np.isinf(v) for v in self.reward_range)
                  and self.reward_range[0] < self.reward_range[1])
            require(ok, "GRPOConfig.reward_range", "a pair (low, high) with low < high", self.reward_range)
            object.__setattr__(self, "reward_range", tuple(float(v) for v in self.reward_range))
        if self.reward_weights is not None:
            weights = tuple(float(w) for w in self.reward_weights)
            require(len(weights) >= 1 and all(w >= 0 for w in weights) and sum(weights) > 0,
                    "GRPOConfig.reward_weights", "non-negative weights with a positive sum", self.reward_weights)
            object.__setattr__(self, "reward_weights", weights)

    @property
    def rollout_batch(self) -> int:
        return self.prompts_per_batch * self.group_size

    @property
    def num_updates(self) -> int:
        return self.num_iterations

    def default_hparams(self) -> GRPOHParams:
        return GRPOHParams().as_arrays()


# ----------------------------------------------------------------------------- problem / state


class GRPOProblem(NamedTuple):
    """What GRPO learns on.

    graphdef: the policy's static ``nnx.GraphDef``; params: the base (SFT) policy, the initialisation.
    prompt_tokens [N, P] int: the prompt set (all real tokens, one length).
    reward_fn: the task's verifiable reward on the contract above (hashable); reward_range: its declared range.
    success_fn: optional ``(prompts, responses, mask) -> bool [B]`` for ``pass_at_1`` (default: the transformed
      reward is above the range's low end).
    vocab_mask [V] bool or None: the response alphabet.
    reference_params: the frozen KL reference (None: ``params``).
    stop_tokens, pad_token: the sampler's (static).
    """

    graphdef: Any
    params: Any
    prompt_tokens: jax.Array
    reward_fn: Callable
    reward_range: tuple
    success_fn: Callable | None = None
    vocab_mask: jax.Array | None = None
    reference_params: Any = None
    stop_tokens: tuple = ()
    pad_token: int = 0


class GRPOState(NamedTuple):
    """Learner state (arrays only): policy params, Adam moments, the key, the update count."""

    params: Any
    adam_state: Any
    key: jax.Array
    step: jax.Array


# ----------------------------------------------------------------------------- sampling and log-probs


def _mask_and_temper(logits, step, tokens, state):
    """Logit processor: divide by the (traced) temperature, restrict to the (optional) response alphabet."""
    del step, tokens
    temperature, vocab_mask = state
    logits = logits / temperature
    return logits if vocab_mask is None else jnp.where(vocab_mask, logits, -jnp.inf)


def sample_group(graphdef, params, prompt_tokens, key, max_new_tokens: int, vocab_mask=None, temperature=1.0,
                 stop_tokens: tuple = (), pad_token: int = 0) -> generate_lib.GenerationOutput:
    """Responses to ``prompt_tokens [B, P]`` (all real) from the jitted sampler at a traced ``temperature``,
    restricted to ``vocab_mask``; ``response_logprobs`` are the tempered, masked policy's."""
    sampling = generate_lib.SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0,
                                           stop_tokens=tuple(stop_tokens), pad_token=pad_token)
    state = (jnp.asarray(temperature, jnp.float32), vocab_mask)
    return generate_lib.generate(graphdef, params, prompt_tokens, jnp.ones(prompt_tokens.shape, bool), key,
                                 sampling, _mask_and_temper, state)


def policy_token_logprobs(graphdef, params, tokens, attention_mask, vocab_mask=None, temperature=1.0) -> jax.Array:
    """Token log-probs [B, T] of the tempered, masked policy (the distribution :func:`sample_group` draws from)."""
    logits = model_lib.logits(graphdef, params, tokens, attention_mask=attention_mask) / temperature
    return losses.token_logprobs(logits, tokens, vocab_mask)


# ----------------------------------------------------------------------------- checks at the boundary


def _check_reward_fn(reward_fn, reward_range, problem: GRPOProblem, config: GRPOConfig) -> int:
    """The reward function's output shape (``jax.eval_shape``, no compilation) and, on a probe batch of random
    responses, its range; returns K. ValueError naming what is wrong."""
    batch, prompt_length = config.rollout_batch, problem.prompt_tokens.shape[1]
    horizon = config.max_new_tokens
    specs = (jax.ShapeDtypeStruct((batch, prompt_length), jnp.int32), jax.ShapeDtypeStruct((batch, horizon), jnp.int32),
             jax.ShapeDtypeStruct((batch, horizon), jnp.bool_))
    try:
        out = jax.eval_shape(reward_fn, *specs)
    except Exception as err:  # noqa: BLE001 - reported with the contract
        raise ValueError(f"reward_fn failed on prompts [{batch}, {prompt_length}], responses [{batch}, {horizon}] and "
                         f"a mask [{batch}, {horizon}]: {err}") from err
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != batch or out.shape[1] < 1:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"reward_fn must return rewards [B, K] = [{batch}, K >= 1] (one row per response, K "
                         f"criteria), got {shape}")
    vocab_size = nnx_config(problem).vocab_size
    alphabet = np.arange(vocab_size) if problem.vocab_mask is None else np.flatnonzero(np.asarray(problem.vocab_mask))
    rng = np.random.default_rng(0)
    prompts = np.asarray(problem.prompt_tokens)[rng.integers(0, len(problem.prompt_tokens), batch)]
    responses = alphabet[rng.integers(0, len(alphabet), (batch, horizon))].astype(np.int32)
    values = np.asarray(reward_fn(jnp.asarray(prompts), jnp.asarray(responses), jnp.ones((batch, horizon), bool)))
    low, high = reward_range
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if bad.any():
        raise ValueError(f"reward_fn returned values outside its declared range [{low:g}, {high:g}] on a probe batch "
                         f"of random responses (e.g. {values[bad][:5].tolist()}); fix the function or declare its "
                         f"range (GRPOConfig.reward_range)")
    return int(out.shape[1])


def nnx_config(problem: GRPOProblem) -> model_lib.LMConfig:
    from flax import nnx

    return nnx.merge(problem.graphdef, problem.params).config


def check_problem(config: GRPOConfig, problem: GRPOProblem) -> int:
    """Validate ``problem`` against ``config`` before anything compiles; returns the number of criteria K."""
    prompts = problem.prompt_tokens
    require(getattr(prompts, "ndim", 0) == 2 and prompts.shape[0] >= 1, "GRPOProblem.prompt_tokens",
            "an int array [N >= 1, P]", getattr(prompts, "shape", prompts))
    lm_config = nnx_config(problem)
    total = prompts.shape[1] + config.max_new_tokens
    require(total <= lm_config.max_seq_len, "GRPOConfig.max_new_tokens",
            f"<= max_seq_len - prompt length = {lm_config.max_seq_len - prompts.shape[1]}", config.max_new_tokens)
    require(config.prompts_per_batch <= prompts.shape[0], "GRPOConfig.prompts_per_batch",
            f"<= the number of prompts ({prompts.shape[0]})", config.prompts_per_batch)
    model_lib.check_tokens(prompts, lm_config.vocab_size, "GRPOProblem.prompt_tokens")
    reward_fn = problem.reward_fn if config.reward_fn is None else config.reward_fn
    reward_range = problem.reward_range if config.reward_fn is None else config.reward_range
    if config.reward_range is not None:
        reward_range = config.reward_range
    n_criteria = _check_reward_fn(reward_fn, reward_range, problem, config)
    if config.reward_weights is not None:
        require(len(config.reward_weights) == n_criteria, "GRPOConfig.reward_weights",
                f"{n_criteria} weights (one per reward criterion)", config.reward_weights)
    return n_criteria


# ----------------------------------------------------------------------------- the learner


def make_train_parts(config: GRPOConfig, problem: GRPOProblem) -> TrainParts:
    """GRPO from ``problem.params`` as ``init`` / ``update`` (one update = one GRPO iteration; see the module
    docstring for the metrics). Bad input raises ``ValueError`` here, before compilation."""
    check_problem(config, problem)
    reward_fn = problem.reward_fn if config.reward_fn is None else config.reward_fn
    low, high = problem.reward_range if config.reward_range is None else config.reward_range
    transform = config.reward_transform
    if transform is None:
        weights = config.reward_weights
        transform = lambda rewards: weighted_mean_transform(rewards, weights)  # noqa: E731
    graphdef, vocab_mask = problem.graphdef, problem.vocab_mask
    reference_params = problem.params if problem.reference_params is None else problem.reference_params
    n_prompts, prompt_length = problem.prompt_tokens.shape
    group, per_batch, horizon = config.group_size, config.prompts_per_batch, config.max_new_tokens

    def init(key, hparams):
        del hparams
        params = problem.params
        return GRPOState(params, train_lib.ADAM.init(params), key, jnp.zeros((), jnp.int32))

    def update(state: GRPOState, hparams: GRPOHParams):
        prompt_key, sample_key = jax.random.split(jax.random.fold_in(state.key, state.step))
        prompt_ids = train_lib.minibatch_at(prompt_key, n_prompts, per_batch, config.num_iterations,
                                            state.step % config.num_iterations)
        prompts = problem.prompt_tokens[jnp.repeat(prompt_ids, group)]
        out = sample_group(graphdef, state.params, prompts, sample_key, horizon, vocab_mask, hparams.temperature,
                           problem.stop_tokens, problem.pad_token)
        responses, response_mask = out.response_tokens, out.response_mask[:, prompt_length:]
        raw = jnp.asarray(reward_fn(prompts, responses, response_mask), jnp.float32)
        out_of_range = jnp.mean(jnp.any(~jnp.isfinite(raw) | (raw < low) | (raw > high), axis=-1))
        rewards = transform(raw.reshape(per_batch, group, raw.shape[-1]))
        advantages = jax.lax.stop_gradient(group_advantages(rewards, config.scale_rewards).reshape(-1))
        old_logprobs = out.response_logprobs

        def reference_pass():
            return jax.lax.stop_gradient(policy_token_logprobs(
                graphdef, reference_params, out.sequences, out.attention_mask, vocab_mask,
                hparams.temperature)[:, prompt_length:])

        if config.log_kl:
            reference_logprobs, kl_known = reference_pass(), True
        else:  # at beta == 0 the reference enters neither the loss nor its gradient: stand in the old log-probs
            kl_known = hparams.beta > 0
            reference_logprobs = jax.lax.cond(kl_known, reference_pass, lambda: old_logprobs)

        def objective(params):
            logprobs = policy_token_logprobs(graphdef, params, out.sequences, out.attention_mask, vocab_mask,
                                             hparams.temperature)[:, prompt_length:]
            result = grpo_loss(logprobs, old_logprobs, advantages, response_mask, loss_type=config.loss_type,
                               clip_eps=hparams.clip_eps, clip_eps_high=hparams.clip_eps_high, beta=hparams.beta,
                               reference_logprobs=reference_logprobs, max_completion_length=horizon,
                               kl_ratio_correction=config.kl_ratio_correction)
            return result.loss, {"loss": result.loss, "clip_fraction": result.clip_fraction}

        def epoch(carry, _):
            params, adam_state = carry
            (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
            params, adam_state = train_lib.adamw_update(grads, adam_state, params, hparams.learning_rate,
                                                        hparams.weight_decay)
            return (params, adam_state), {**metrics, "grad_norm": optax.tree.norm(grads)}

        (params, adam_state), epoch_metrics = jax.lax.scan(epoch, (state.params, state.adam_state), None,
                                                           length=config.inner_epochs)
        if problem.success_fn is not None:
            success = problem.success_fn(prompts, responses, response_mask).astype(jnp.float32)
        else:
            success = (rewards.reshape(-1) > low).astype(jnp.float32)
        active = response_mask.astype(bool)
        kl = jnp.sum(jnp.where(active, k3_kl(old_logprobs, reference_logprobs), 0.0)) / jnp.maximum(active.sum(), 1)
        kl = jnp.where(kl_known, kl, jnp.nan)
        metrics = {"mean_reward": jnp.mean(rewards), "pass_at_1": jnp.mean(success),
                   "group_reward_std": jnp.mean(jnp.std(rewards, axis=1, ddof=1)),
                   "zero_variance_fraction": jnp.mean(jnp.max(rewards, 1) == jnp.min(rewards, 1)),
                   "tokens_generated": jnp.sum(active).astype(jnp.float32), "kl": kl,
                   "reward_out_of_range": out_of_range, **{k: v[-1] for k, v in epoch_metrics.items()}}
        metrics["nonfinite"] = ~(jnp.all(jnp.isfinite(epoch_metrics["loss"]))
                                 & jnp.all(jnp.isfinite(epoch_metrics["grad_norm"])))
        return GRPOState(params, adam_state, state.key, state.step + 1), metrics

    return TrainParts(init, update, config.num_iterations, config.rollout_batch)


make_train = make_train_from_parts(make_train_parts)
