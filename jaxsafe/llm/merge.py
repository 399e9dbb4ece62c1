"""Model merging: weight-space interpolation and logit-space mixing of two models.

Weight space: ``(1 - w) * params_a + w * params_b`` leaf by leaf (the models must share a
graphdef). Logit space: per token, either the geometric mixture
``(1 - w) log p_a + w log p_b`` (renormalised) or the arithmetic mixture
``log((1 - w) p_a + w p_b)``. :class:`LogitMixture` wraps two decoders as one model with
the decoder call signature, so :func:`jaxsafe.llm.generate.generate`, log-prob and loss
functions work on the mixture unchanged (its weight is a traced variable).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

MIX_MODES = ("geometric", "arithmetic")


def _check_same_structure(trees, name="params"):
    first = jax.tree.structure(trees[0])
    for i, tree in enumerate(trees[1:], start=1):
        if jax.tree.structure(tree) != first:
            raise ValueError(f"{name}[{i}]: pytree structure differs from {name}[0]")
        for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(tree)):
            if a.shape != b.shape:
                raise ValueError(f"{name}[{i}]: leaf shape {b.shape} differs from {name}[0] shape {a.shape}")


def linear_merge(params_list: Sequence, weights: Sequence[float] | jax.Array):
    """``sum_i weights[i] * params_list[i]`` leaf by leaf (weights need not sum to one)."""
    if len(params_list) == 0 or len(params_list) != len(weights):
        raise ValueError(f"weights: need one weight per params tree, got {len(weights)} for "
                         f"{len(params_list)}")
    _check_same_structure(list(params_list))
    weights = jnp.asarray(weights, jnp.float32)
    return jax.tree.map(lambda *leaves: sum(w * leaf for w, leaf in zip(weights, leaves)), *params_list)


def interpolate_params(params_a, params_b, weight):
    """``(1 - weight) * params_a + weight * params_b`` (weight may be traced)."""
    return linear_merge([params_a, params_b], jnp.stack([1.0 - jnp.asarray(weight), jnp.asarray(weight)]))


def mix_logits(logits_a: jax.Array, logits_b: jax.Array, weight, mode: str = "geometric") -> jax.Array:
    """Normalised log-probs [..., V] of the mixture of two next-token distributions."""
    if mode not in MIX_MODES:
        raise ValueError(f"mode: must be one of {MIX_MODES}, got {mode!r}")
    log_a, log_b = jax.nn.log_softmax(logits_a, axis=-1), jax.nn.log_softmax(logits_b, axis=-1)
    if mode == "geometric":
        return jax.nn.log_softmax((1.0 - weight) * log_a + weight * log_b, axis=-1)
    weight = jnp.clip(weight, 0.0, 1.0)
    return jnp.logaddexp(jnp.log1p(-weight) + log_a, jnp.log(weight) + log_b)


class MixtureWeight(nnx.Variable):
    """The mixing weight of a :class:`LogitMixture` (kept apart from ``nnx.Param``)."""


class LogitMixture(nnx.Module):
    """Two decoders combined in logit space; call signature and cache like a decoder."""

    def __init__(self, model_a: nnx.Module, model_b: nnx.Module, weight: float, mode: str = "geometric"):
        if model_a.config.vocab_size != model_b.config.vocab_size:
            raise ValueError(f"model_b: vocab_size {model_b.config.vocab_size} differs from model_a's "
                             f"{model_a.config.vocab_size}")
        if mode not in MIX_MODES:
            raise ValueError(f"mode: must be one of {MIX_MODES}, got {mode!r}")
        self.model_a, self.model_b, self.mode = model_a, model_b, mode
        self.config = model_a.config.replace(max_seq_len=min(model_a.config.max_seq_len,
                                                             model_b.config.max_seq_len))
        self.weight = MixtureWeight(jnp.asarray(weight, jnp.float32))

    def init_cache(self, batch_size: int, cache_length: int):
        return (self.model_a.init_cache(batch_size, cache_length),
                self.model_b.init_cache(batch_size, cache_length))

    def __call__(self, tokens, positions, attention_mask, cache=None):
        cache_a, cache_b = (None, None) if cache is None else cache
        logits_a, cache_a = self.model_a(tokens, positions, attention_mask, cache_a)
        logits_b, cache_b = self.model_b(tokens, positions, attention_mask, cache_b)
        mixed = mix_logits(logits_a, logits_b, self.weight[...], self.mode)
        return mixed, (None if cache is None else (cache_a, cache_b))


def make_logit_mixture(graphdef_a, params_a, graphdef_b, params_b, weight: float, mode: str = "geometric"):
    """``(graphdef, state)`` of a :class:`LogitMixture`; usable wherever a decoder's are."""
    mixture = LogitMixture(nnx.merge(graphdef_a, params_a), nnx.merge(graphdef_b, params_b), weight, mode)
    return nnx.split(mixture)
