"""Decoder-only language model (Flax NNX) with a functional training path.

One frozen config, :class:`LMConfig`, describes two block styles:

* ``family="llama"`` / ``"qwen2"``: pre-norm RMSNorm blocks, rotary positions (HF
  ``rotate_half`` convention), SwiGLU MLP, grouped-query attention, optional q/k/v
  bias (Qwen2), optional tied embeddings.
* ``family="gpt2"``: learned absolute positions, LayerNorm, GELU (tanh) MLP, biases
  everywhere, tied embeddings. The fused ``c_attn`` projection of HF GPT-2 is split
  into separate q/k/v projections by :mod:`jaxsafe.llm.convert`.

Training code never calls the module directly. It uses the functional path::

    graphdef, params = init_params(config, key)           # nnx.split
    logits = logits(graphdef, params, tokens, positions, attention_mask)

where every function merges ``graphdef`` and ``params`` inside the traced code, so a
loss is a pure function of ``params`` (jit-able, vmap-able over hyperparameters,
differentiable twice).

Shapes: ``B`` batch, ``T`` query length, ``S`` cache length (slots), ``V`` vocab,
``D`` model width, ``H`` query heads, ``K`` key/value heads, ``Dh`` head width.
Token-position conventions: ``attention_mask[b, t] == 1`` marks a real token;
padding may sit on the left (prompts for generation) or on the right (training);
``positions`` default to ``cumsum(attention_mask) - 1`` so both layouts work.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

FAMILIES = ("llama", "qwen2", "gpt2")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
DTYPES = ("float32", "bfloat16")

# Per-family defaults for the bias flags, applied when a flag is left as None.
_FAMILY_BIAS_DEFAULTS = {
    "llama": dict(qkv_bias=False, attn_out_bias=False, mlp_bias=False),
    "qwen2": dict(qkv_bias=True, attn_out_bias=False, mlp_bias=False),
    "gpt2": dict(qkv_bias=True, attn_out_bias=True, mlp_bias=True),
}
_FAMILY_ACTIVATION = {"llama": "silu", "qwen2": "silu", "gpt2": "gelu_tanh"}


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"LMConfig.{field}: {message}")


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
        _require(self.family in FAMILIES, "family", f"must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                     f"must be an integer >= 1, got {value!r}")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        _require(isinstance(self.n_kv_heads, int) and 1 <= self.n_kv_heads <= self.n_heads, "n_kv_heads",
                 f"must be an integer in [1, n_heads={self.n_heads}], got {self.n_kv_heads!r}")
        _require(self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
                 f"must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
        if self.head_dim is None:
            _require(self.d_model % self.n_heads == 0, "d_model",
                     f"must be divisible by n_heads={self.n_heads} when head_dim is None, got {self.d_model}")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        _require(isinstance(self.head_dim, int) and self.head_dim >= 1, "head_dim",
                 f"must be an integer >= 1, got {self.head_dim!r}")
        if self.family != "gpt2":
            _require(self.head_dim % 2 == 0, "head_dim", f"must be even for rotary positions, got {self.head_dim}")
        for name, default in _FAMILY_BIAS_DEFAULTS[self.family].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.activation is None:
            object.__setattr__(self, "activation", _FAMILY_ACTIVATION[self.family])
        _require(self.activation in ACTIVATIONS, "activation",
                 f"must be one of {ACTIVATIONS}, got {self.activation!r}")
        _require(self.norm_eps > 0 and math.isfinite(self.norm_eps), "norm_eps",
                 f"must be a finite float > 0, got {self.norm_eps!r}")
        _require(self.rope_theta > 0 and math.isfinite(self.rope_theta), "rope_theta",
                 f"must be a finite float > 0, got {self.rope_theta!r}")
        _require(self.init_std > 0 and math.isfinite(self.init_std), "init_std",
                 f"must be a finite float > 0, got {self.init_std!r}")
        _require(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")

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


# ----------------------------------------------------------------------------- KV cache


class KVCache(NamedTuple):
    """Key/value cache for incremental decoding (a pytree).

    keys, values: tuple over layers of [B, S, K, Dh] arrays.
    key_mask: [B, S] bool, True where a slot holds a real (non-padding) token.
    end_index: int32 scalar, number of slots written so far (the next write position).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    key_mask: jax.Array
    end_index: jax.Array


def init_cache(config: LMConfig, batch_size: int, cache_length: int) -> KVCache:
    """An empty cache with ``cache_length`` slots per sequence."""
    if cache_length > config.max_seq_len:
        raise ValueError(f"cache_length: must be <= max_seq_len={config.max_seq_len}, got {cache_length}")
    shape = (batch_size, cache_length, config.n_kv_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, config.compute_dtype) for _ in range(config.n_layers))
    return KVCache(keys=zeros, values=zeros, key_mask=jnp.zeros((batch_size, cache_length), bool),
                   end_index=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- layers


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate ``x`` [B, T, heads, Dh] by ``positions`` [B, T] (HF ``rotate_half`` layout)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, Dh]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated_half = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos + rotated_half * sin).astype(x.dtype)


def _activation(name: str):
    return {"silu": jax.nn.silu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}[name]


def _linear(config: LMConfig, d_in: int, d_out: int, use_bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=config.compute_dtype,
                      kernel_init=nnx.initializers.normal(config.init_std), rngs=rngs)


def _norm(config: LMConfig, rngs: nnx.Rngs) -> nnx.Module:
    if config.family == "gpt2":
        return nnx.LayerNorm(config.d_model, epsilon=config.norm_eps, use_fast_variance=False, rngs=rngs)
    return nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)


class Attention(nnx.Module):
    """Causal grouped-query self-attention with an optional KV cache."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        q_width, kv_width = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.q_proj = _linear(config, config.d_model, q_width, config.qkv_bias, rngs)
        self.k_proj = _linear(config, config.d_model, kv_width, config.qkv_bias, rngs)
        self.v_proj = _linear(config, config.d_model, kv_width, config.qkv_bias, rngs)
        self.o_proj = _linear(config, q_width, config.d_model, config.attn_out_bias, rngs)

    def __call__(self, x, positions, key_mask, query_slots, layer_cache):
        """x [B, T, D]; positions [B, T]; key_mask [B, S]; query_slots [T] slot index of each query.

        layer_cache: None (keys are the T current tokens, S == T) or (keys, values, end_index),
        each cache array [B, S, K, Dh]. Returns (out [B, T, D], (keys, values) written).
        """
        cfg = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, cfg.n_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(batch, length, cfg.n_kv_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(batch, length, cfg.n_kv_heads, cfg.head_dim)
        if cfg.uses_rope:
            q = rotary_embedding(q, positions, cfg.rope_theta)
            k = rotary_embedding(k, positions, cfg.rope_theta)
        if layer_cache is not None:
            cached_k, cached_v, end_index = layer_cache
            k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), (0, end_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), (0, end_index, 0, 0))
        key_slots = jnp.arange(k.shape[1])
        allowed = (key_slots[None, :] <= query_slots[:, None])[None] & key_mask[:, None, :]  # [B, T, S]

        groups = cfg.n_heads // cfg.n_kv_heads
        q = q.reshape(batch, length, cfg.n_kv_heads, groups, cfg.head_dim)  # head h = kv * groups + g
        scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(cfg.head_dim))
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(batch, length, cfg.n_heads * cfg.head_dim)
        return self.o_proj(out), (k, v)


class MLP(nnx.Module):
    """SwiGLU (llama/qwen2: down(act(gate x) * up x)) or plain GELU MLP (gpt2: down(act(up x)))."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.gated = config.family != "gpt2"
        self.activation = config.activation
        if self.gated:
            self.gate_proj = _linear(config, config.d_model, config.d_ff, config.mlp_bias, rngs)
        self.up_proj = _linear(config, config.d_model, config.d_ff, config.mlp_bias, rngs)
        self.down_proj = _linear(config, config.d_ff, config.d_model, config.mlp_bias, rngs)

    def __call__(self, x):
        act = _activation(self.activation)
        hidden = act(self.gate_proj(x)) * self.up_proj(x) if self.gated else act(self.up_proj(x))
        return self.down_proj(hidden)


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.attn_norm = _norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = _norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, key_mask, query_slots, layer_cache):
        attn_out, written = self.attn(self.attn_norm(x), positions, key_mask, query_slots, layer_cache)
        x = x + attn_out
        x = x + self.mlp(self.mlp_norm(x))
        return x, written


class Decoder(nnx.Module):
    """The language model. Holds only ``nnx.Param`` variables (so ``nnx.split`` gives params)."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(config.init_std)
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=config.compute_dtype,
                               embedding_init=init, rngs=rngs)
        if not config.uses_rope:
            self.position_embed = nnx.Embed(config.max_seq_len, config.d_model, dtype=config.compute_dtype,
                                            embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layers)])
        self.final_norm = _norm(config, rngs)
        if not config.tie_embeddings:
            self.lm_head = _linear(config, config.d_model, config.vocab_size, False, rngs)

    def hidden(self, tokens, positions, attention_mask, cache: KVCache | None = None):
        """Final-normed hidden states [B, T, D] and the updated cache (None without a cache)."""
        cfg = self.config
        attention_mask = attention_mask.astype(bool)
        x = self.embed(tokens)
        if not cfg.uses_rope:
            x = x + self.position_embed(positions)
        length = tokens.shape[1]
        if cache is None:
            key_mask, query_slots = attention_mask, jnp.arange(length)
        else:
            key_mask = jax.lax.dynamic_update_slice(cache.key_mask, attention_mask, (0, cache.end_index))
            query_slots = cache.end_index + jnp.arange(length)
        new_keys, new_values = [], []
        for layer, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.keys[layer], cache.values[layer], cache.end_index)
            x, (k, v) = block(x, positions, key_mask, query_slots, layer_cache)
            new_keys.append(k)
            new_values.append(v)
        x = self.final_norm(x)
        new_cache = None if cache is None else KVCache(tuple(new_keys), tuple(new_values), key_mask,
                                                       cache.end_index + length)
        return x, new_cache

    def init_cache(self, batch_size: int, cache_length: int) -> KVCache:
        """An empty :class:`KVCache` for this decoder."""
        return init_cache(self.config, batch_size, cache_length)

    def unembed(self, hidden):
        """Logits [..., V] (float32) from hidden states [..., D]."""
        if self.config.tie_embeddings:
            out = self.embed.attend(hidden)
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
        self.head = nnx.Linear(config.d_model, n_outputs, kernel_init=nnx.initializers.normal(config.init_std),
                               rngs=rngs)

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


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions [B, T] = index among real tokens (0 for leading padding)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


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
        raise ValueError(f"{name}: token ids must be in [0, {vocab_size}), got {sorted(set(bad.tolist()))[:10]}")
