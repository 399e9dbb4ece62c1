"""TSDI: token-level safety-debiased inference for safety-aligned language models (learning-free).

Safety alignment can teach a *context-independent* preference for some tokens (refusal openers): with SACPO,
``log pi_s - log pi_ref = (lambda / beta) g(x, y) - log Z(x)``, and if the learned safety signal ``g`` holds a part
``h(y)`` that does not depend on the prompt, averaging the log-ratio over *random* prompts recovers it up to a
constant. TSDI estimates that per-position bias and subtracts it while decoding the first ``L`` tokens
(``../shared/papers/tsdi.md`` §5.3):

    b_i(v) = mean_n [ log pi_s(v | x_n, y_n,<i) - log pi_ref(v | x_n, y_n,<i) ]        (i = 1..L)
    log pi_TSDI(v | x, y_<i) = log pi_s(v | x, y_<i) - alpha b_i(v) - log Z_i          (i <= L; plain pi_s after)

with ``x_n`` a random prompt and ``y_n,<i`` a random prefix, both drawn from a token pool. ``alpha = 1`` is the
paper's method; the strength is a traced argument so a sweep compiles once.

* :func:`random_contexts` draws the contexts; :func:`estimate_bias` is one batched forward pass of each model over
  ``[N, prompt_length + L - 1]`` tokens (a causal model's logits at position ``prompt_length - 1 + (i - 1)`` are the
  next-token distribution after a prefix of ``i - 1`` tokens, so every position comes out of the same pass);
* :func:`debias_logits` / :func:`debiased_processor` are the decoding side for
  :func:`jaxsafe.llm.generate.generate` (the bias and strength travel as the processor's state, so the sampler
  compiles once per shape, for any model the LLM module loads);
* :func:`debiased_token_logprobs` scores given sequences under the debiased policy (exact evaluation by enumeration
  on the synthetic languages);
* :func:`save_bias` / :func:`load_bias` keep the estimate beside a model as a small safetensors file.

Shapes: ``N`` contexts, ``P`` prompt length, ``L`` debiased positions, ``V`` vocabulary, ``B`` batch, ``T`` length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib

__all__ = ["TSDIState", "random_contexts", "model_logits", "estimate_bias", "debias_logits", "debiased_processor",
           "generate", "debiased_token_logprobs", "save_bias", "load_bias", "LogitsFn"]

#: ``logits_fn(tokens [B, T], attention_mask [B, T]) -> logits [B, T, V]``: any causal language model.
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


class TSDIState(NamedTuple):
    """What debiased decoding needs: ``bias [L, V]`` (position ``i`` of the response is row ``i - 1``) and the
    strength ``alpha`` (a scalar; 0 leaves the model unchanged, 1 is the paper's method)."""

    bias: jax.Array
    strength: jax.Array


def model_logits(graphdef, params) -> LogitsFn:
    """The :data:`LogitsFn` of a decoder from :func:`jaxsafe.llm.model.init_params` (or a loaded checkpoint)."""
    return lambda tokens, attention_mask: model_lib.logits(graphdef, params, tokens, attention_mask=attention_mask)


def _check_positive_int(value, field: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


def random_contexts(key: jax.Array, pool, num_prompts: int, prompt_length: int, positions: int,
                    prefix_pool=None, prompt_prefix=None) -> jax.Array:
    """``[N, P + L - 1]`` random contexts: a random prompt of ``prompt_length`` tokens then ``L - 1`` random prefix
    tokens.

    Args:
      pool: token ids the random prompts are drawn from (uniformly, with replacement).
      prefix_pool: token ids of the random response prefixes (default: ``pool``).
      prompt_prefix: fixed leading tokens of every prompt (a BOS or a chat template's opening), counted in
        ``prompt_length``.

    Raises:
      ValueError: ``num_prompts``, ``prompt_length`` or ``positions`` not positive, an empty pool, or a fixed
        prefix longer than the prompt.
    """
    for value, field in ((num_prompts, "num_prompts"), (prompt_length, "prompt_length"), (positions, "positions")):
        _check_positive_int(value, field)
    pool = jnp.asarray(pool, jnp.int32).reshape(-1)
    prefix_pool = pool if prefix_pool is None else jnp.asarray(prefix_pool, jnp.int32).reshape(-1)
    if pool.size == 0 or prefix_pool.size == 0:
        raise ValueError("pool / prefix_pool must hold at least one token id")
    fixed = jnp.zeros((0,), jnp.int32) if prompt_prefix is None else jnp.asarray(prompt_prefix, jnp.int32).reshape(-1)
    if fixed.size > prompt_length:
        raise ValueError(f"prompt_prefix has {fixed.size} tokens, more than prompt_length={prompt_length}")
    prompt_key, prefix_key = jax.random.split(key)
    random_part = jax.random.choice(prompt_key, pool, (num_prompts, prompt_length - fixed.size))
    prefix = jax.random.choice(prefix_key, prefix_pool, (num_prompts, positions - 1))
    return jnp.concatenate([jnp.broadcast_to(fixed, (num_prompts, fixed.size)), random_part, prefix], axis=1)


def _check_vocab(tokens, vocab_size: int, field: str) -> None:
    if not isinstance(tokens, jax.core.Tracer):
        model_lib.check_tokens(np.asarray(tokens), vocab_size, field)


def estimate_bias(aligned: LogitsFn, reference: LogitsFn, contexts: jax.Array, prompt_length: int,
                  positions: int, vocab_mask: jax.Array | None = None) -> jax.Array:
    """The per-position bias ``b [L, V]`` of ``aligned`` against ``reference`` over random ``contexts``.

    Args:
      contexts: ``[N, P + L - 1]`` tokens from :func:`random_contexts` (real tokens only).
      prompt_length: ``P``; ``positions``: ``L``.
      vocab_mask: ``[V]`` bool, the policies' sub-vocabulary (the bias is 0 outside it).

    Each row is centred over the (allowed) vocabulary: a constant in ``v`` cancels when decoding renormalises, so
    centring only makes estimates comparable. Pure and jit-able (``prompt_length`` and ``positions`` static).

    Raises:
      ValueError: the contexts are not ``P + L - 1`` long, or the two models' vocabularies differ.
    """
    _check_positive_int(prompt_length, "prompt_length")
    _check_positive_int(positions, "positions")
    if contexts.ndim != 2 or contexts.shape[1] != prompt_length + positions - 1:
        raise ValueError(f"contexts must be [N, prompt_length + positions - 1 = {prompt_length + positions - 1}], "
                         f"got shape {contexts.shape}")
    mask = jnp.ones(contexts.shape, bool)
    aligned_logits, reference_logits = aligned(contexts, mask), reference(contexts, mask)
    if aligned_logits.shape[-1] != reference_logits.shape[-1]:
        raise ValueError(f"the aligned and reference models have different vocabularies "
                         f"({aligned_logits.shape[-1]} vs {reference_logits.shape[-1]} tokens)")
    _check_vocab(contexts, aligned_logits.shape[-1], "contexts (the prompt pool)")
    rows = slice(prompt_length - 1, prompt_length - 1 + positions)
    difference = (losses.masked_log_softmax(aligned_logits[:, rows], vocab_mask)
                  - losses.masked_log_softmax(reference_logits[:, rows], vocab_mask))  # [N, L, V]
    allowed = jnp.ones(difference.shape[-1], bool) if vocab_mask is None else jnp.asarray(vocab_mask, bool)
    bias = jnp.where(allowed, difference, 0.0).mean(axis=0)
    centre = jnp.sum(jnp.where(allowed, bias, 0.0), axis=-1, keepdims=True) / jnp.maximum(allowed.sum(), 1)
    return jnp.where(allowed, bias - centre, 0.0)


def debias_logits(logits: jax.Array, step: jax.Array, state: TSDIState) -> jax.Array:
    """``logits [B, V]`` of generated position ``step + 1`` (``step`` 0-based) minus ``alpha b[step]`` while
    ``step < L``; unchanged after."""
    positions = state.bias.shape[0]
    row = jax.lax.dynamic_index_in_dim(state.bias, jnp.minimum(step, positions - 1), keepdims=False)
    return jnp.where(step < positions, logits - state.strength * row, logits)


def debiased_processor(base=None):
    """A processor for :func:`jaxsafe.llm.generate.generate` with ``processor_state=TSDIState(...)``.

    ``base`` is an optional stateless processor applied first (e.g. a sub-vocabulary restriction). The returned
    function is memoised per ``base``, so repeated calls with new biases or strengths reuse the compiled sampler.
    """
    return _PROCESSORS.setdefault(base, _make_processor(base))


def _make_processor(base):
    def processor(logits, step, tokens_so_far, state: TSDIState):
        if base is not None:
            logits = base(logits, step, tokens_so_far)
        return debias_logits(logits, step, state)

    return processor


_PROCESSORS: dict = {}


def generate(graphdef, params, prompt_tokens, prompt_mask, key: jax.Array, sampling, state: TSDIState,
             base=None):
    """Debiased sampling: :func:`jaxsafe.llm.generate.generate` with the TSDI processor, after checking that the
    bias fits the model's vocabulary and is no longer than the generation (ValueError naming the field)."""
    from flax import nnx

    from jaxsafe.llm import generate as generate_lib

    vocab_size = nnx.merge(graphdef, params).config.vocab_size
    positions, width = state.bias.shape
    if width != vocab_size:
        raise ValueError(f"TSDIState.bias covers {width} tokens but the model's vocabulary has {vocab_size}")
    if positions > sampling.max_new_tokens:
        raise ValueError(f"TSDIState.bias debiases {positions} positions, more than max_new_tokens="
                         f"{sampling.max_new_tokens}")
    return generate_lib.generate(graphdef, params, prompt_tokens, prompt_mask, key, sampling,
                                 debiased_processor(base), processor_state=state)


def debiased_token_logprobs(logits_fn: LogitsFn, tokens: jax.Array, attention_mask: jax.Array,
                            response_start: int, state: TSDIState, vocab_mask: jax.Array | None = None
                            ) -> jax.Array:
    """Per-token log-probs ``[B, T]`` of ``tokens`` under the debiased policy (as :func:`losses.token_logprobs`:
    entry ``t`` scores token ``t`` given ``t' < t``; position 0 is 0).

    ``response_start`` is the index of the first response token (prompts of one length, as in the synthetic
    languages); response position ``i`` (1-based) is debiased with ``bias[i - 1]`` when ``i <= L``.
    """
    logits = logits_fn(tokens, attention_mask)[:, :-1]  # predicts tokens 1..T-1
    predicted = jnp.arange(1, tokens.shape[1])  # index of the token each row of logits predicts
    steps = predicted - response_start  # 0-based generated step of that token
    positions = state.bias.shape[0]
    rows = jnp.take(state.bias, jnp.clip(steps, 0, positions - 1), axis=0)  # [T-1, V]
    in_window = ((steps >= 0) & (steps < positions))[:, None]
    logits = jnp.where(in_window[None], logits - state.strength * rows[None], logits)
    log_probs = losses.masked_log_softmax(logits, vocab_mask)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)


def save_bias(path, bias, *, positions: int, strength_default: float = 1.0, metadata: dict | None = None) -> Path:
    """Write ``bias [L, V]`` as a safetensors file (with its settings in the header metadata). Never overwrites."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new file")
    bias = np.asarray(bias, np.float32)
    if bias.ndim != 2 or bias.shape[0] != positions:
        raise ValueError(f"bias must be [positions={positions}, V], got shape {bias.shape}")
    info = {"positions": str(positions), "strength_default": str(strength_default),
            "jaxsafe": json.dumps(metadata or {}, sort_keys=True)}
    save_file({"bias": bias}, str(path), metadata=info)
    return path


def load_bias(path, vocab_size: int | None = None) -> tuple[jax.Array, dict]:
    """``(bias [L, V], metadata)`` from :func:`save_bias`'s file.

    Raises:
      ValueError: not a TSDI bias file, or its vocabulary differs from ``vocab_size`` (the model it is used with).
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            if "bias" not in handle.keys():
                raise ValueError(f"{path} holds no 'bias' tensor; is it a TSDI bias file?")
            bias = handle.get_tensor("bias")
            info = dict(handle.metadata() or {})
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    if bias.ndim != 2:
        raise ValueError(f"{path}: bias must be [L, V], got shape {bias.shape}")
    if vocab_size is not None and bias.shape[1] != vocab_size:
        raise ValueError(f"{path}: the bias covers {bias.shape[1]} tokens but the model's vocabulary has "
                         f"{vocab_size}; estimate it for this model")
    metadata = json.loads(info.get("jaxsafe", "{}"))
    metadata.update(positions=int(info.get("positions", bias.shape[0])),
                    strength_default=float(info.get("strength_default", 1.0)))
    return jnp.asarray(bias), metadata
