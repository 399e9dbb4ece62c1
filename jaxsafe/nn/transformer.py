"""The transformer core: a causal stack of pre-norm blocks on embeddings (Flax NNX), with a KV cache.

The core knows nothing about tokens. It maps embeddings ``x [B, T, D]`` (plus positions, a padding mask and an
optional :class:`KVCache`) to final-normed hidden states ``[B, T, D]`` (plus the updated cache). Every model
that needs a causal transformer is "its embeddings + this core + its heads":

* the language model (:mod:`jaxsafe.llm.model`): token embedding (+ learned positions for GPT-2) + core +
  unembedding;
* a decision transformer: per-modality embeddings of return-to-go, cost-to-go, state and action (+ a timestep
  embedding), interleaved into one ``[B, 3K or 4K, D]`` sequence + core + action / cost heads read at the
  right token positions.

Two block styles, set by :class:`TransformerConfig` ``block_style``:

* ``"llama"``: RMSNorm, rotary positions (HF ``rotate_half`` convention) applied to q and k inside attention,
  SwiGLU MLP ``down(act(gate x) * up x)``, grouped-query attention, no biases by default.
* ``"gpt2"``: LayerNorm, GELU (tanh) MLP ``down(act(up x))``, biases everywhere, no rotary positions: position
  information must already be in the embeddings (learned position / timestep tables are the caller's).

Functional use (the same split/merge path as the language model)::

    config = TransformerConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=32,
                               block_style="gpt2")
    graphdef, params = init_params(config, jax.random.PRNGKey(0))
    hidden, _ = apply(graphdef, params, embeddings)                     # [B, T, D], causal
    cache = init_cache(config, batch_size=B, cache_length=32)
    hidden, cache = apply(graphdef, params, embeddings[:, :5], cache=cache)   # a prefix, then step by step

or as a submodule: ``self.core = Transformer(config, rngs=rngs)`` and ``hidden, cache = self.core(x,
positions, attention_mask, cache)``.

Shapes: ``B`` batch, ``T`` query length, ``S`` cache length (slots), ``D`` model width, ``H`` query heads,
``K`` key/value heads, ``Dh`` head width. ``attention_mask[b, t] == 1`` marks a real entry; padding may sit on
the left or the right; ``positions`` default to ``cumsum(attention_mask) - 1`` so both layouts work. Attention
is always causal: entry ``t`` sees entries ``<= t`` that are real.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsafe.random import hash32
from jaxsafe.validation import is_int, require

__all__ = ["BLOCK_STYLES", "ACTIVATIONS", "DTYPES", "TransformerConfig", "KVCache", "init_cache", "Attention",
           "MLP", "Block", "Transformer", "init_params", "apply", "positions_from_mask", "rotary_embedding",
           "resolve_core_fields", "CORE_FIELDS", "Dropout", "dropout_bits", "inverted_dropout", "linear", "Linear",
           "flat_matmul"]

BLOCK_STYLES = ("llama", "gpt2")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
DTYPES = ("float32", "bfloat16")

#: Defaults of the optional fields per block style (applied where a field is left as None).
STYLE_DEFAULTS = {
    "llama": dict(qkv_bias=False, attn_out_bias=False, mlp_bias=False, activation="silu"),
    "gpt2": dict(qkv_bias=True, attn_out_bias=True, mlp_bias=True, activation="gelu_tanh"),
}

#: The fields a core config has (the language model's config carries the same names).
CORE_FIELDS = ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "n_kv_heads", "head_dim", "qkv_bias",
               "attn_out_bias", "mlp_bias", "activation", "norm_eps", "rope_theta", "init_std", "dtype")


def resolve_core_fields(config, prefix: str, block_style: str, defaults: dict) -> None:
    """Fill the ``None`` fields of a frozen config holding :data:`CORE_FIELDS` and validate them all.

    Shared by :class:`TransformerConfig` and the language model's ``LMConfig``, so both name the bad field
    with their own class (``ValueError("LMConfig.n_kv_heads must be ..., got ...")``).
    """

    def field(name):
        return f"{prefix}.{name}"

    def fill(name, value):
        if getattr(config, name) is None:
            object.__setattr__(config, name, value)

    for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
        require(is_int(getattr(config, name), 1), field(name), "an integer >= 1", getattr(config, name))
    fill("n_kv_heads", config.n_heads)
    require(is_int(config.n_kv_heads, 1) and config.n_kv_heads <= config.n_heads, field("n_kv_heads"),
            f"an integer in [1, n_heads={config.n_heads}]", config.n_kv_heads)
    require(config.n_heads % config.n_kv_heads == 0, field("n_kv_heads"),
            f"a divisor of n_heads={config.n_heads}", config.n_kv_heads)
    if config.head_dim is None:
        require(config.d_model % config.n_heads == 0, field("d_model"),
                f"divisible by n_heads={config.n_heads} when head_dim is None", config.d_model)
        fill("head_dim", config.d_model // config.n_heads)
    require(is_int(config.head_dim, 1), field("head_dim"), "an integer >= 1", config.head_dim)
    if block_style == "llama":
        require(config.head_dim % 2 == 0, field("head_dim"), "even (rotary positions rotate pairs)",
                config.head_dim)
    for name, default in defaults.items():
        fill(name, default)
    require(config.activation in ACTIVATIONS, field("activation"), f"one of {ACTIVATIONS}", config.activation)
    for name in ("norm_eps", "rope_theta", "init_std"):
        value = getattr(config, name)
        require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, field(name),
                "a finite float > 0", value)
    require(config.dtype in DTYPES, field("dtype"), f"one of {DTYPES}", config.dtype)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Static description of a transformer core. Hashable, so it can be a jit static argument.

    Fields:
      d_model: residual width D, >= 1.
      n_layers: number of blocks, >= 1.
      n_heads: query heads H, >= 1.
      d_ff: MLP hidden width, >= 1.
      max_seq_len: the longest sequence (and KV cache) the core is used with, >= 1.
      block_style: "llama" (RMSNorm, RoPE, SwiGLU) or "gpt2" (LayerNorm, GELU MLP, positions in the
        embeddings).
      n_kv_heads: key/value heads K, 1 <= K <= H and H % K == 0; None means K = H.
      head_dim: Dh; None means d_model // n_heads (then d_model % n_heads must be 0). Even for "llama".
      qkv_bias, attn_out_bias, mlp_bias: bias flags; None takes the block style's default.
      activation: "silu", "gelu" (exact) or "gelu_tanh"; None takes the block style's default.
      norm_eps: epsilon of RMSNorm / LayerNorm, > 0.
      rope_theta: rotary base, > 0 (used by "llama" only).
      init_std: standard deviation of the normal initialiser of every projection, > 0.
      dtype: compute dtype, "float32" or "bfloat16" (parameters are always float32).
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_seq_len: int
    block_style: str = "llama"
    n_kv_heads: int | None = None
    head_dim: int | None = None
    qkv_bias: bool | None = None
    attn_out_bias: bool | None = None
    mlp_bias: bool | None = None
    activation: str | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    dtype: str = "float32"

    def __post_init__(self):
        require(self.block_style in BLOCK_STYLES, "TransformerConfig.block_style", f"one of {BLOCK_STYLES}",
                self.block_style)
        resolve_core_fields(self, "TransformerConfig", self.block_style, STYLE_DEFAULTS[self.block_style])

    @property
    def uses_rope(self) -> bool:
        return self.block_style == "llama"

    @property
    def gated_mlp(self) -> bool:
        return self.block_style == "llama"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- KV cache


class KVCache(NamedTuple):
    """Key/value cache for incremental decoding (a pytree).

    keys, values: tuple over layers of [B, S, K, Dh] arrays.
    key_mask: [B, S] bool, True where a slot holds a real (non-padding) entry.
    end_index: int32 scalar, number of slots written so far (the next write position).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    key_mask: jax.Array
    end_index: jax.Array


def init_cache(config: TransformerConfig, batch_size: int, cache_length: int) -> KVCache:
    """An empty cache with ``cache_length`` slots per sequence."""
    if cache_length > config.max_seq_len:
        raise ValueError(f"cache_length: must be <= max_seq_len={config.max_seq_len}, got {cache_length}")
    shape = (batch_size, cache_length, config.n_kv_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, config.compute_dtype) for _ in range(config.n_layers))
    return KVCache(keys=zeros, values=zeros, key_mask=jnp.zeros((batch_size, cache_length), bool),
                   end_index=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- layers


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions [B, T] = index among real entries (0 for leading padding)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


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


def flat_matmul(fn, x: jax.Array) -> jax.Array:
    """``fn`` (a map on the last axis) applied to ``x [..., d]`` as one 2-D product ``[N, d]``.

    XLA:CPU canonicalises a dot whose contraction spans several axes (the weight gradient of a projection of
    ``[B, T, d]`` contracts over B and T) with an explicit transpose of the activation; on 2-D operands the GEMM
    reads either operand transposed in place. At llama-160m shapes that removed every transpose of the MLP's
    backward pass (one ``[3072, B, T]`` copy per projection and layer) and about 15% of the MLP's gradient time.
    """
    lead = x.shape[:-1]
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


class Linear(nnx.Linear):
    """``nnx.Linear`` (same parameters, ``kernel [d_in, d_out]`` and ``bias``) computed as a 2-D product
    (:func:`flat_matmul`)."""

    def __call__(self, x):
        return flat_matmul(super().__call__, x)


def linear(config, d_in: int, d_out: int, use_bias: bool, rngs: nnx.Rngs) -> Linear:
    """A projection in the core's dtype and initialiser (``config``: ``compute_dtype`` and ``init_std``)."""
    return Linear(d_in, d_out, use_bias=use_bias, dtype=config.compute_dtype,
                  kernel_init=nnx.initializers.normal(config.init_std), rngs=rngs)


def norm(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    """LayerNorm for "gpt2" blocks, RMSNorm for "llama" blocks (width ``d_model``)."""
    if config.block_style == "gpt2":
        return nnx.LayerNorm(config.d_model, epsilon=config.norm_eps, use_fast_variance=False, rngs=rngs)
    return nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)


class Dropout(NamedTuple):
    """Training-time dropout for :meth:`Transformer.__call__` (GPT-2 / minGPT placement): ``attention`` on the
    attention probabilities, ``residual`` on each block's attention and MLP outputs before they join the residual
    stream. Rates may be traced (sweepable); each layer draws from its own fold of ``key``."""

    key: jax.Array
    attention: float | jax.Array = 0.0
    residual: float | jax.Array = 0.0


def dropout_bits(key: jax.Array, shape) -> jax.Array:
    """Uniform uint32 words of ``shape`` for dropout masks: a counter-based hash of each entry's flat index,
    keyed by 64 bits drawn from ``key`` (``hash32(hash32(index + k0) ^ k1)``, :func:`jaxsafe.random.hash32`).

    Not a substitute for :func:`jax.random.bits` in general: it is a cheap generator for masks only. A mask is
    elementwise, so XLA fuses it into the op that applies it; threefry (20 rounds per pair of words, as
    ``jax.random.bernoulli`` draws) made dropout about half of a CDT training step at OSRL's size on CPU.
    Distinct keys (``split``, ``fold_in``, vmapped lanes) give unrelated masks.
    """
    size = math.prod(shape)
    if size >= 2 ** 32:
        raise ValueError(f"dropout: at most 2**32 - 1 entries per mask, got shape {tuple(shape)}")
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return hash32(hash32(index + k0) ^ k1)


def inverted_dropout(key: jax.Array, x: jax.Array, rate) -> jax.Array:
    """Inverted dropout: each entry of ``x`` is zeroed with probability ``rate`` (in [0, 1), to 2**-32) and the
    rest scaled by ``1 / (1 - rate)``, so the expectation is unchanged; ``rate`` may be traced. Masks come from
    :func:`dropout_bits`."""
    threshold = (jnp.asarray(rate, jnp.float32) * 4294967296.0).astype(jnp.uint32)  # P(bits < threshold) = rate
    keep = dropout_bits(key, x.shape) >= threshold
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


class Attention(nnx.Module):
    """Causal grouped-query self-attention with an optional KV cache."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        q_width, kv_width = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        self.q_proj = linear(config, config.d_model, q_width, config.qkv_bias, rngs)
        self.k_proj = linear(config, config.d_model, kv_width, config.qkv_bias, rngs)
        self.v_proj = linear(config, config.d_model, kv_width, config.qkv_bias, rngs)
        self.o_proj = linear(config, q_width, config.d_model, config.attn_out_bias, rngs)

    def __call__(self, x, positions, key_mask, query_slots, layer_cache, drop: Dropout | None = None):
        """x [B, T, D]; positions [B, T]; key_mask [B, S]; query_slots [T] slot index of each query.

        layer_cache: None (keys are the T current entries, S == T) or (keys, values, end_index),
        each cache array [B, S, K, Dh]. drop: dropout on the attention probabilities (``drop.attention``).
        Returns (out [B, T, D], (keys, values) written).
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
        if drop is not None:
            weights = inverted_dropout(drop.key, weights, drop.attention)
        out = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(batch, length, cfg.n_heads * cfg.head_dim)
        return self.o_proj(out), (k, v)


class MLP(nnx.Module):
    """SwiGLU ("llama": down(act(gate x) * up x)) or plain MLP ("gpt2": down(act(up x)))."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.gated = config.gated_mlp
        self.activation = config.activation
        if self.gated:
            self.gate_proj = linear(config, config.d_model, config.d_ff, config.mlp_bias, rngs)
        self.up_proj = linear(config, config.d_model, config.d_ff, config.mlp_bias, rngs)
        self.down_proj = linear(config, config.d_ff, config.d_model, config.mlp_bias, rngs)

    def __call__(self, x):
        act = _activation(self.activation)
        hidden = act(self.gate_proj(x)) * self.up_proj(x) if self.gated else act(self.up_proj(x))
        return self.down_proj(hidden)


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.attn_norm = norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, key_mask, query_slots, layer_cache, drop: Dropout | None = None):
        if drop is None:
            attn_out, written = self.attn(self.attn_norm(x), positions, key_mask, query_slots, layer_cache)
            x = x + attn_out
            return x + self.mlp(self.mlp_norm(x)), written
        attention_key, attn_out_key, mlp_out_key = jax.random.split(drop.key, 3)
        attn_out, written = self.attn(self.attn_norm(x), positions, key_mask, query_slots, layer_cache,
                                      drop._replace(key=attention_key))
        x = x + inverted_dropout(attn_out_key, attn_out, drop.residual)
        x = x + inverted_dropout(mlp_out_key, self.mlp(self.mlp_norm(x)), drop.residual)
        return x, written


class Transformer(nnx.Module):
    """The core: ``n_layers`` blocks and the final norm. Holds only ``nnx.Param`` variables."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layers)])
        self.final_norm = norm(config, rngs)

    def __call__(self, x, positions=None, attention_mask=None, cache: KVCache | None = None,
                 dropout: Dropout | None = None):
        """Final-normed hidden states ``[B, T, D]`` of embeddings ``x [B, T, D]``, and the updated cache.

        positions [B, T] int (rotary positions; default from the mask); attention_mask [B, T] (default: all
        real). With ``cache`` the T entries are written at slots ``cache.end_index ... + T`` and attend to
        every earlier real slot; the updated cache is returned (else None). ``dropout`` (a :class:`Dropout`,
        training only; None: none) drops attention probabilities and block outputs.
        """
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x: embeddings must be [B, T, d_model={cfg.d_model}], got shape {x.shape}")
        batch, length, _ = x.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), bool)
        attention_mask = attention_mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        x = x.astype(cfg.compute_dtype)
        if cache is None:
            key_mask, query_slots = attention_mask, jnp.arange(length)
        else:
            key_mask = jax.lax.dynamic_update_slice(cache.key_mask, attention_mask, (0, cache.end_index))
            query_slots = cache.end_index + jnp.arange(length)
        new_keys, new_values = [], []
        for layer, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.keys[layer], cache.values[layer], cache.end_index)
            drop = None if dropout is None else dropout._replace(key=jax.random.fold_in(dropout.key, layer))
            x, (k, v) = block(x, positions, key_mask, query_slots, layer_cache, drop)
            new_keys.append(k)
            new_values.append(v)
        x = self.final_norm(x)
        new_cache = None if cache is None else KVCache(tuple(new_keys), tuple(new_values), key_mask,
                                                       cache.end_index + length)
        return x, new_cache

    def init_cache(self, batch_size: int, cache_length: int) -> KVCache:
        """An empty :class:`KVCache` for this core."""
        return init_cache(self.config, batch_size, cache_length)


# ----------------------------------------------------------------------------- functional API


def init_params(config: TransformerConfig, key: jax.Array):
    """A randomly initialised core, split into ``(graphdef, params)`` (``key``: a ``jax.random.PRNGKey``)."""
    return nnx.split(Transformer(config, rngs=nnx.Rngs(params=key)))


def apply(graphdef, params, x, positions=None, attention_mask=None, cache: KVCache | None = None):
    """Pure forward pass of a core: ``(hidden [B, T, D], cache)`` (see :meth:`Transformer.__call__`)."""
    return nnx.merge(graphdef, params)(x, positions, attention_mask, cache)
