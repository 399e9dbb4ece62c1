"""Decoder-only language model (Flax NNX) with a functional training path.

The language model is token embedding (+ learned absolute positions for GPT-2) + the shared transformer core
(:mod:`jaxsafe.nn.transformer`: attention with GQA and a KV cache, MLP, norms, RoPE, the final norm) + the
unembedding. One frozen config, :class:`LMConfig`, describes three families:

* ``family="llama"`` / ``"qwen2"``: the core's "llama" blocks (pre-norm RMSNorm, rotary positions in HF's
  ``rotate_half`` convention, SwiGLU MLP, grouped-query attention), optional q/k/v bias (Qwen2), optional tied
  embeddings.
* ``family="gpt2"``: the core's "gpt2" blocks (LayerNorm, GELU (tanh) MLP, biases everywhere) with learned
  absolute positions added to the token embeddings, tied embeddings. The fused ``c_attn`` projection of HF
  GPT-2 is split into separate q/k/v projections by :mod:`jaxsafe.llm.convert`.

The parameter tree is ``embed``, ``position_embed`` (gpt2), ``core/blocks/<i>/{attn_norm, attn, mlp_norm,
mlp}``, ``core/final_norm`` and ``lm_head`` (untied models). Training code never calls the module directly. It
uses the functional path::

    graphdef, params = init_params(config, key)           # nnx.split; key = jax.random.PRNGKey(seed)
    logits = logits(graphdef, params, tokens, positions, attention_mask)

where every function merges ``graphdef`` and ``params`` inside the traced code, so a loss is a pure function
of ``params`` (jit-able, vmap-able over hyperparameters, differentiable twice).

Shapes: ``B`` batch, ``T`` query length, ``S`` cache length (slots), ``V`` vocab, ``D`` model width, ``H``
query heads, ``K`` key/value heads, ``Dh`` head width. Token-position conventions:
``attention_mask[b, t] == 1`` marks a real token; padding may sit on the left (prompts for generation) or on
the right (training); ``positions`` default to ``cumsum(attention_mask) - 1`` so both layouts work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsafe.nn import transformer
from jaxsafe.nn.transformer import (KVCache, TransformerConfig, positions_from_mask,  # noqa: F401
                                    rotary_embedding)
from jaxsafe.validation import is_int, require

FAMILIES = ("llama", "qwen2", "gpt2")
ACTIVATIONS = transformer.ACTIVATIONS
DTYPES = transformer.DTYPES

# Per-family defaults of the optional core fields, applied when a field is left as None.
_FAMILY_DEFAULTS = {
    "llama": dict(qkv_bias=False, attn_out_bias=False, mlp_bias=False, activation="silu"),
    "qwen2": dict(qkv_bias=True, attn_out_bias=False, mlp_bias=False, activation="silu"),
    "gpt2": dict(qkv_bias=True, attn_out_bias=True, mlp_bias=True, activation="gelu_tanh"),
}
_BLOCK_STYLE = {"llama": "llama", "qwen2": "llama", "gpt2": "gpt2"}


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Static description of a decoder. Hashable, so it can be a jit static argument.

    Fields:
      vocab_size: number of token ids, >= 1.
      d_model: residual width D, >= 1.
      n_layers: number of blocks, >= 1.
      n_heads: query heads H, >= 1.
      d_ff: MLP hidden width, >= 1.
      max_seq_len: longest sequence (prompt + generation), >= 1. For gpt2 this is also
        the size of the learned position table.
      family: "llama", "qwen2" (llama blocks with q/k/v bias) or "gpt2".
      n_kv_heads: key/value heads K, 1 <= K <= H and H % K == 0; None means K = H.
      head_dim: Dh; None means d_model // n_heads (then d_model % n_heads must be 0).
      tie_embeddings: unembedding reuses the token embedding (always True for gpt2 in HF).
      qkv_bias, attn_out_bias, mlp_bias: bias flags; None takes the family default.
      activation: "silu" (SwiGLU), "gelu" (exact) or "gelu_tanh"; None = family default.
      norm_eps: epsilon of RMSNorm / LayerNorm, > 0.
      rope_theta: rotary base, > 0 (llama/qwen2 only).
      init_std: standard deviation of the random normal initialiser, > 0.
      dtype: compute dtype, "float32" or "bfloat16" (parameters are always float32).

    Every field but ``vocab_size``, ``family`` and ``tie_embeddings`` belongs to the core; :attr:`core` is the
    :class:`~jaxsafe.nn.transformer.TransformerConfig` they make.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_seq_len: int
    family: str = "llama"
    n_kv_heads: int | None = None
    head_dim: int | None = None
    tie_embeddings: bool = False
    qkv_bias: bool | None = None
    attn_out_bias: bool | None = None
    mlp_bias: bool | None = None
    activation: str | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        require(self.family in FAMILIES, "LMConfig.family", f"one of {FAMILIES}", self.family)
        require(is_int(self.vocab_size, 1), "LMConfig.vocab_size", "an integer >= 1", self.vocab_size)
        transformer.resolve_core_fields(self, "LMConfig", _BLOCK_STYLE[self.family],
                                        _FAMILY_DEFAULTS[self.family])

    @property
    def core(self) -> TransformerConfig:
        """The transformer core's config (block style "gpt2" for gpt2, "llama" for llama and qwen2)."""
        return TransformerConfig(block_style=_BLOCK_STYLE[self.family],
                                 **{name: getattr(self, name) for name in transformer.CORE_FIELDS})

    @property
    def uses_rope(self) -> bool:
        return self.family != "gpt2"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> "LMConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict[str, Any]] = {
    # Test-size model: 2 layers, width 64.
    "tiny": dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256,
                 max_seq_len=64, family="llama", tie_embeddings=True),
    "tiny-gpt2": dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=64,
                      family="gpt2", tie_embeddings=True),
    # Shapes of JackFram/llama-160m.
    "llama-160m": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                       max_seq_len=2048, family="llama", norm_eps=1e-6),
    # Shapes of HuggingFaceTB/SmolLM-135M (llama family, GQA 9/3, tied).
    "smollm-135m": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                        max_seq_len=2048, family="llama", tie_embeddings=True, norm_eps=1e-5),
    # Shapes of Qwen/Qwen2-0.5B.
    "qwen2-0.5b": dict(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, d_ff=4864,
                       max_seq_len=32768, family="qwen2", tie_embeddings=True, norm_eps=1e-6,
                       rope_theta=1_000_000.0),
    # Shapes of openai-community/gpt2 (124M).
    "gpt2": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024,
                 family="gpt2", tie_embeddings=True, norm_eps=1e-5),
}


def preset(name: str, **overrides) -> LMConfig:
    """An :class:`LMConfig` from a named preset (see ``PRESETS``), with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset name: unknown {name!r}; allowed: {sorted(PRESETS)}")
    return LMConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- the model


def init_cache(config: LMConfig, batch_size: int, cache_length: int) -> KVCache:
    """An empty cache with ``cache_length`` slots per sequence (:func:`jaxsafe.nn.transformer.init_cache`)."""
    return transformer.init_cache(config.core, batch_size, cache_length)


class Decoder(nnx.Module):
    """The language model: token embedding (+ positions) + core + unembedding. Holds only ``nnx.Param``
    variables (so ``nnx.split`` gives params)."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(config.init_std)
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=config.compute_dtype,
                               embedding_init=init, rngs=rngs)
        if not config.uses_rope:
            self.position_embed = nnx.Embed(config.max_seq_len, config.d_model, dtype=config.compute_dtype,
                                            embedding_init=init, rngs=rngs)
        self.core = transformer.Transformer(config.core, rngs=rngs)
        if not config.tie_embeddings:
            self.lm_head = transformer.linear(config, config.d_model, config.vocab_size, False, rngs)

    def embed_tokens(self, tokens, positions):
        """Input embeddings [B, T, D]: token embedding, plus the learned position embedding for gpt2."""
        x = self.embed(tokens)
        if not self.config.uses_rope:
            x = x + self.position_embed(positions)
        return x

    def hidden(self, tokens, positions, attention_mask, cache: KVCache | None = None):
        """Final-normed hidden states [B, T, D] and the updated cache (None without a cache)."""
        return self.core(self.embed_tokens(tokens, positions), positions, attention_mask, cache)

    def init_cache(self, batch_size: int, cache_length: int) -> KVCache:
        """An empty :class:`KVCache` for this decoder."""
        return init_cache(self.config, batch_size, cache_length)

    def unembed(self, hidden):
        """Logits [..., V] (float32) from hidden states [..., D]."""
        if self.config.tie_embeddings:
            out = transformer.flat_matmul(self.embed.attend, hidden)
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, tokens, positions, attention_mask, cache: KVCache | None = None):
        hidden, cache = self.hidden(tokens, positions, attention_mask, cache)
        return self.unembed(hidden), cache


class ScoreModel(nnx.Module):
    """Reward / cost model: a decoder plus a linear head read at the last real token."""

    def __init__(self, config: LMConfig, n_outputs: int = 1, *, rngs: nnx.Rngs):
        if n_outputs < 1:
            raise ValueError(f"n_outputs: must be >= 1, got {n_outputs}")
        self.config = config
        self.decoder = Decoder(config, rngs=rngs)
        self.head = nnx.Linear(config.d_model, n_outputs,
                               kernel_init=nnx.initializers.normal(config.init_std), rngs=rngs)

    def __call__(self, tokens, positions, attention_mask):
        hidden, _ = self.decoder.hidden(tokens, positions, attention_mask)
        return self.head(last_token_hidden(hidden, attention_mask)).astype(jnp.float32)


# ----------------------------------------------------------------------------- functional API


def init_params(config: LMConfig, key: jax.Array):
    """A randomly initialised decoder, split into ``(graphdef, params)``.

    ``graphdef`` is static (hashable; pass it as a jit static argument or close over it);
    ``params`` is an ``nnx.State`` pytree of float32 arrays.
    """
    return nnx.split(Decoder(config, rngs=nnx.Rngs(params=key)))


def init_score_model(config: LMConfig, key: jax.Array, n_outputs: int = 1):
    """A randomly initialised :class:`ScoreModel` as ``(graphdef, params)``."""
    return nnx.split(ScoreModel(config, n_outputs, rngs=nnx.Rngs(params=key)))


def score_model_from_decoder(decoder_graphdef, decoder_params, key: jax.Array, n_outputs: int = 1):
    """A :class:`ScoreModel` whose decoder is initialised from given decoder params."""
    model = ScoreModel(nnx.merge(decoder_graphdef, decoder_params).config, n_outputs,
                       rngs=nnx.Rngs(params=key))
    nnx.update(model.decoder, decoder_params)
    return nnx.split(model)


def _defaults(tokens, positions, attention_mask):
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    if positions is None:
        positions = positions_from_mask(attention_mask)
    return positions, attention_mask


def apply(graphdef, params, tokens, positions=None, attention_mask=None, cache: KVCache | None = None):
    """Pure forward pass: ``(logits [B, T, V] float32, cache)``.

    tokens [B, T] int; positions [B, T] int (default: from the mask); attention_mask [B, T]
    (default: all real). With ``cache`` the T tokens are written at slots
    ``cache.end_index ... + T`` and attend to every earlier real slot; the updated cache is
    returned (else None).
    """
    positions, attention_mask = _defaults(tokens, positions, attention_mask)
    return nnx.merge(graphdef, params)(tokens, positions, attention_mask, cache)


def logits(graphdef, params, tokens, positions=None, attention_mask=None) -> jax.Array:
    """Next-token logits [B, T, V] (float32) for a full sequence, no cache."""
    return apply(graphdef, params, tokens, positions, attention_mask)[0]


def hidden_states(graphdef, params, tokens, positions=None, attention_mask=None) -> jax.Array:
    """Last hidden layer [B, T, D]: the final-normed states that feed the unembedding."""
    positions, attention_mask = _defaults(tokens, positions, attention_mask)
    return nnx.merge(graphdef, params).hidden(tokens, positions, attention_mask)[0]


def last_token_hidden(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Hidden state [B, D] at the last real token of each row (any padding layout)."""
    length = attention_mask.shape[-1]
    last_index = length - 1 - jnp.argmax(attention_mask[:, ::-1].astype(bool), axis=-1)
    return jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)[:, 0]


def scores(graphdef, params, tokens, positions=None, attention_mask=None) -> jax.Array:
    """Score-model outputs [B, n_outputs] read at the last real token."""
    positions, attention_mask = _defaults(tokens, positions, attention_mask)
    return nnx.merge(graphdef, params)(tokens, positions, attention_mask)


def count_params(params) -> int:
    """Total number of parameter scalars in a params pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> None:
    """Raise ``ValueError`` naming ``name`` if any id is outside ``[0, vocab_size)`` (host-side)."""
    import numpy as np

    array = np.asarray(tokens)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: must be integer token ids, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        bad = array[(array < 0) | (array >= vocab_size)]
        bad_ids = sorted(set(bad.tolist()))[:10]
        raise ValueError(f"{name}: token ids must be in [0, {vocab_size}), got {bad_ids}")
