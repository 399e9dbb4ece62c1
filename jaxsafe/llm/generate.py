"""Jitted batched sampling with a KV cache and a logit-processor hook.

Prompts are left-padded ``[B, P]`` token arrays with a ``prompt_mask`` (use
:func:`left_pad` for lists of token lists, or :func:`left_align` for right-padded
arrays with lengths). Generation runs as one ``lax.while_loop`` (prefill, then one
cached decode step per token, stopping early once every row is done), so it compiles
once per (graphdef, sampling config, processor, B, P) and never per token.

Each step: ``logits -> processor(logits, step, tokens_so_far[, processor_state]) -> temperature / top-k /
top-p -> sample``. Rows that produced a stop token are done; later positions hold
``pad_token`` and are excluded from ``response_mask``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsafe.llm import model as model_lib

# processor(logits [B, V] float32, step int32 scalar, tokens_so_far [B, P + N]) -> logits [B, V].
# tokens_so_far holds the left-padded prompt then the tokens generated so far; positions
# P + step and later hold pad_token. A processor given a ``processor_state`` (any pytree of arrays, e.g. a
# debiasing table) receives it as a fourth argument; the state is traced, so new values reuse the compilation.
LogitProcessor = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (hashable; one compilation per distinct value).

    max_new_tokens: tokens to generate, >= 1.
    temperature: >= 0; 0 means greedy (argmax).
    top_k: keep the k largest logits, 0 = off; >= 0.
    top_p: nucleus mass in (0, 1]; 1 = off.
    stop_tokens: ids that end a row (the stop token itself is kept in the response).
    pad_token: id written after a row is done.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    pad_token: int = 0

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"SamplingConfig.max_new_tokens: must be an integer >= 1, "
                             f"got {self.max_new_tokens!r}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"SamplingConfig.temperature: must be finite and >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"SamplingConfig.top_k: must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p: must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


class GenerationOutput(NamedTuple):
    """Result of :func:`generate` (N = max_new_tokens).

    sequences [B, P + N]: left-padded prompt followed by the generated tokens.
    attention_mask [B, P + N]: True at real tokens (prompt and response).
    response_mask [B, P + N]: True at generated tokens (stop token included).
    response_tokens [B, N]: the generated part (pad after a stop).
    response_logprobs [B, N]: log-prob of each generated token under the processed
      logits at temperature 1 (0 at padding).
    response_lengths [B]: generated tokens per row.
    stopped [B]: whether the row ended with a stop token.
    """

    sequences: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    response_tokens: jax.Array
    response_logprobs: jax.Array
    response_lengths: jax.Array
    stopped: jax.Array


# ----------------------------------------------------------------------------- prompt layout


def left_pad(prompts: Sequence[Sequence[int]], pad_token: int = 0, length: int | None = None):
    """Lists of token ids -> ``(tokens [B, P] int32, mask [B, P] bool)``, left-padded."""
    if not prompts:
        raise ValueError("prompts: must contain at least one prompt")
    longest = max(len(p) for p in prompts)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt must have at least one token")
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length: must be >= the longest prompt ({longest}), got {length}")
    tokens = np.full((len(prompts), length), pad_token, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            tokens[row, length - len(prompt):] = prompt
            mask[row, length - len(prompt):] = True
    return jnp.asarray(tokens), jnp.asarray(mask)


def left_align(tokens: jax.Array, lengths: jax.Array, pad_token: int = 0):
    """Right-padded ``tokens [B, P]`` with ``lengths [B]`` -> left-padded ``(tokens, mask)``."""
    length = tokens.shape[1]
    shift = length - lengths
    source = (jnp.arange(length)[None, :] - shift[:, None]) % length
    mask = jnp.arange(length)[None, :] >= shift[:, None]
    return jnp.where(mask, jnp.take_along_axis(tokens, source, axis=1), pad_token), mask


# ----------------------------------------------------------------------------- sampling


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set logits [B, V] outside the top-k / top-p (nucleus) set to -inf."""
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        kept = mass_before < top_p  # always keeps the most likely token
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg_inf, logits)
    return logits


def sample_tokens(key: jax.Array, logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """One token per row [B] from logits [B, V] under ``sampling``."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- generation


@jax.jit(static_argnums=(0, 1, 2))
def _generate_jit(graphdef, sampling: SamplingConfig, processor, params, prompt_tokens, prompt_mask, key,
                  processor_state=None):
    batch, prompt_length = prompt_tokens.shape
    total_length = prompt_length + sampling.max_new_tokens
    decoder = nnx.merge(graphdef, params)
    cache = decoder.init_cache(batch, total_length)
    positions = model_lib.positions_from_mask(prompt_mask)
    if hasattr(decoder, "hidden") and hasattr(decoder, "unembed"):
        # the prefill needs the logits of the last prompt position only: unembed [B, 1, D], not [B, P, D]
        hidden, cache = decoder.hidden(prompt_tokens, positions, prompt_mask, cache)
        prompt_logits = decoder.unembed(hidden[:, -1:])
    else:
        prompt_logits, cache = model_lib.apply(graphdef, params, prompt_tokens, positions, prompt_mask, cache)

    pad = jnp.int32(sampling.pad_token)
    sequences = jnp.concatenate(
        [prompt_tokens.astype(jnp.int32), jnp.full((batch, sampling.max_new_tokens), pad)], axis=1)
    stop_tokens = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)

    def keep_going(carry):
        step, _, _, _, _, _, done, _, _ = carry
        return (step < sampling.max_new_tokens) & ~jnp.all(done)

    def decode_step(carry):
        step, key, next_logits, cache, sequences, logprobs, done, active, last_position = carry
        if processor is not None and processor_state is not None:
            next_logits = processor(next_logits, step, sequences, processor_state)
        elif processor is not None:
            next_logits = processor(next_logits, step, sequences)
        key, sample_key = jax.random.split(key)
        token = sample_tokens(sample_key, next_logits, sampling)
        token_logprob = jnp.take_along_axis(jax.nn.log_softmax(next_logits, axis=-1), token[:, None],
                                            axis=1)[:, 0]
        token = jnp.where(done, pad, token)
        sequences = jax.lax.dynamic_update_slice(sequences, token[:, None], (0, prompt_length + step))
        logprobs = jax.lax.dynamic_update_slice(logprobs,
                                                jnp.where(done, 0.0, token_logprob)[:, None], (0, step))
        active = jax.lax.dynamic_update_slice(active, ~done[:, None], (0, step))
        done = done | jnp.isin(token, stop_tokens)
        position = last_position + 1
        step_logits, cache = model_lib.apply(graphdef, params, token[:, None], position[:, None],
                                             jnp.ones((batch, 1), bool), cache)
        return step + 1, key, step_logits[:, -1], cache, sequences, logprobs, done, active, position

    initial = (jnp.int32(0), key, prompt_logits[:, -1], cache, sequences,
               jnp.zeros((batch, sampling.max_new_tokens), jnp.float32), jnp.zeros((batch,), bool),
               jnp.zeros((batch, sampling.max_new_tokens), bool), positions[:, -1])
    _, _, _, _, sequences, logprobs, done, active, _ = jax.lax.while_loop(keep_going, decode_step, initial)
    response_mask = jnp.concatenate([jnp.zeros_like(prompt_mask, bool), active], axis=1)
    return GenerationOutput(
        sequences=sequences, attention_mask=jnp.concatenate([prompt_mask.astype(bool), active], axis=1),
        response_mask=response_mask, response_tokens=sequences[:, prompt_length:], response_logprobs=logprobs,
        response_lengths=active.sum(axis=1).astype(jnp.int32), stopped=done)


def generate(graphdef, params, prompt_tokens, prompt_mask, key: jax.Array, sampling: SamplingConfig,
             processor: LogitProcessor | None = None, processor_state=None) -> GenerationOutput:
    """Sample ``sampling.max_new_tokens`` tokens after left-padded prompts.

    graphdef, params: a decoder from :func:`jaxsafe.llm.model.init_params`, or any module with
      the same ``(tokens, positions, mask, cache) -> (logits, cache)`` call, an ``init_cache``
      method and a ``config`` (e.g. :class:`jaxsafe.llm.merge.LogitMixture`).
    prompt_tokens [B, P] int; prompt_mask [B, P] bool, left-padded (zeros then ones).
    key: PRNG key (unused when greedy).
    processor: optional hashable callable ``(logits [B, V], step, tokens_so_far [B, P+N]) -> logits``,
      applied at every step before temperature/top-k/top-p (debiasing, constraints).
    processor_state: optional pytree of arrays passed to ``processor`` as a fourth argument (traced: a new value
      of the same shapes reuses the compiled sampler; e.g. :class:`jaxsafe.llm.tsdi.TSDIState`).

    Inputs are validated on the host when they are concrete (not traced).
    """
    config = nnx.merge(graphdef, params).config
    prompt_tokens = jnp.asarray(prompt_tokens)
    prompt_mask = jnp.asarray(prompt_mask).astype(bool)
    if prompt_tokens.ndim != 2 or prompt_mask.shape != prompt_tokens.shape:
        raise ValueError(f"prompt_tokens/prompt_mask: must both be [B, P]; got {prompt_tokens.shape} and "
                         f"{prompt_mask.shape}")
    total = prompt_tokens.shape[1] + sampling.max_new_tokens
    if total > config.max_seq_len:
        raise ValueError(f"max_new_tokens: prompt length {prompt_tokens.shape[1]} + max_new_tokens "
                         f"{sampling.max_new_tokens} = {total} exceeds max_seq_len={config.max_seq_len}")
    for token in sampling.stop_tokens + (sampling.pad_token,):
        if not 0 <= token < config.vocab_size:
            raise ValueError(f"SamplingConfig: stop/pad token {token} outside [0, {config.vocab_size})")
    if not isinstance(prompt_tokens, jax.core.Tracer) and not isinstance(prompt_mask, jax.core.Tracer):
        model_lib.check_tokens(prompt_tokens, config.vocab_size, "prompt_tokens")
        mask = np.asarray(prompt_mask)
        if not mask[:, -1].all() or (np.diff(mask.astype(np.int8), axis=1) < 0).any():
            raise ValueError("prompt_mask: prompts must be left-padded (zeros then ones, last column real); "
                             "use left_pad() or left_align()")
    if processor_state is not None and processor is None:
        raise ValueError("processor_state: given without a processor to receive it")
    return _generate_jit(graphdef, sampling, processor, params, prompt_tokens, prompt_mask, key, processor_state)
