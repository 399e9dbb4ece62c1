"""Decoder: config validation, presets, cache consistency, padding, functional path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsafe.llm import model as model_lib
from .conftest import jit_apply, jit_hidden_states, jit_logits, jit_scores


@pytest.mark.parametrize("field, value, match", [
    ("vocab_size", 0, "vocab_size"),
    ("n_kv_heads", 3, "n_kv_heads"),
    ("n_kv_heads", 8, "n_kv_heads"),
    ("d_model", 66, "d_model"),
    ("family", "mamba", "family"),
    ("activation", "relu", "activation"),
    ("norm_eps", 0.0, "norm_eps"),
    ("dtype", "float16", "dtype"),
    ("head_dim", 7, "head_dim"),
])
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=f"LMConfig.{match}"):
        model_lib.preset("tiny", **{field: value})


def test_unknown_preset_lists_allowed():
    with pytest.raises(ValueError, match="tiny"):
        model_lib.preset("llama-70b")


@pytest.mark.parametrize("name, n_params", [
    ("llama-160m", 162_417_408),  # JackFram/llama-160m
    ("gpt2", 124_439_808),  # openai-community/gpt2
    ("qwen2-0.5b", 494_032_768),  # Qwen/Qwen2-0.5B
])
def test_presets_match_published_parameter_counts(name, n_params):
    config = model_lib.preset(name)
    abstract = nnx.eval_shape(lambda: model_lib.Decoder(config, rngs=nnx.Rngs(0)))
    assert model_lib.count_params(nnx.state(abstract)) == n_params


def test_family_bias_defaults():
    assert model_lib.preset("qwen2-0.5b").qkv_bias and not model_lib.preset("qwen2-0.5b").attn_out_bias
    assert not model_lib.preset("llama-160m").qkv_bias
    assert model_lib.preset("gpt2").mlp_bias and model_lib.preset("gpt2").activation == "gelu_tanh"


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-gpt2"])
def test_cached_decoding_matches_full_forward(preset_name):
    config = model_lib.preset(preset_name, vocab_size=32, max_seq_len=16)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(1))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 7), 1, 32)
    mask = jnp.ones((2, 7), bool).at[1, :2].set(False)  # row 1 left-padded
    full = jit_logits(graphdef, params, tokens, attention_mask=mask)
    positions = model_lib.positions_from_mask(mask)
    cache = model_lib.init_cache(config, 2, 7)
    prefix_logits, cache = jit_apply(graphdef, params, tokens[:, :4], positions[:, :4], mask[:, :4], cache)
    stepped = [prefix_logits]
    for t in range(4, 7):
        step_logits, cache = jit_apply(graphdef, params, tokens[:, t:t + 1], positions[:, t:t + 1],
                                             mask[:, t:t + 1], cache)
        stepped.append(step_logits)
    stepped = jnp.concatenate(stepped, axis=1)
    np.testing.assert_allclose(np.asarray(stepped)[np.asarray(mask)], np.asarray(full)[np.asarray(mask)],
                               atol=1e-5)
    assert int(cache.end_index) == 7


def test_padding_does_not_change_real_token_logits(tiny_model):
    graphdef, params = tiny_model
    tokens = jnp.array([[5, 6, 7, 8]])
    plain = jit_logits(graphdef, params, tokens)
    left = jit_logits(graphdef, params, jnp.array([[0, 0, 5, 6, 7, 8]]),
                            attention_mask=jnp.array([[0, 0, 1, 1, 1, 1]]))
    right = jit_logits(graphdef, params, jnp.array([[5, 6, 7, 8, 0, 0]]),
                             attention_mask=jnp.array([[1, 1, 1, 1, 0, 0]]))
    np.testing.assert_allclose(left[:, 2:], plain, atol=1e-5)
    np.testing.assert_allclose(right[:, :4], plain, atol=1e-5)


def test_causality(tiny_model):
    graphdef, params = tiny_model
    a = jit_logits(graphdef, params, jnp.array([[3, 4, 5, 6]]))
    b = jit_logits(graphdef, params, jnp.array([[3, 4, 5, 9]]))
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not np.allclose(a[:, 3], b[:, 3])


def test_hidden_states_feed_the_unembedding(tiny_model, tiny_config):
    graphdef, params = tiny_model
    tokens = jnp.array([[3, 4, 5], [6, 7, 8]])
    hidden = jit_hidden_states(graphdef, params, tokens)
    assert hidden.shape == (2, 3, tiny_config.d_model)
    embedding = params["embed"]["embedding"][...]  # tied
    np.testing.assert_allclose(hidden @ embedding.T, jit_logits(graphdef, params, tokens), atol=1e-4)
    last = model_lib.last_token_hidden(hidden, jnp.array([[1, 1, 0], [1, 1, 1]]))
    np.testing.assert_allclose(last, jnp.stack([hidden[0, 1], hidden[1, 2]]))


def test_functional_path_is_vmappable_and_twice_differentiable(tiny_model):
    graphdef, params = tiny_model
    tokens = jnp.array([[3, 4, 5, 6]])

    def loss(params, scale):
        return scale * jnp.mean(model_lib.logits(graphdef, params, tokens) ** 2)

    values = jax.jit(jax.vmap(loss, in_axes=(None, 0)))(params, jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(values[1], 2 * values[0], rtol=1e-6)
    # Hessian-vector product via forward-over-reverse: finite and non-zero.
    grad_fn = jax.grad(loss)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, hvp = jax.jit(lambda p, t: jax.jvp(lambda q: grad_fn(q, 1.0), (p,), (t,)))(params, tangent)
    leaves = jax.tree.leaves(hvp)
    assert all(np.isfinite(leaf).all() for leaf in leaves)
    assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0


def test_score_model_reads_last_real_token(tiny_config, tiny_model):
    graphdef, params = model_lib.score_model_from_decoder(*tiny_model, jax.random.PRNGKey(3))
    tokens = jnp.array([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7]])
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = jit_scores(graphdef, params, tokens, attention_mask=mask)
    alone = jit_scores(graphdef, params, jnp.array([[3, 4, 5]]))
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out[0], alone[0], atol=1e-5)
    # the decoder inside really carries the given params
    hidden = jit_hidden_states(*tiny_model, jnp.array([[3, 4, 5]]))
    head = params["head"]
    np.testing.assert_allclose(alone[0], hidden[0, -1] @ head["kernel"][...] + head["bias"][...], atol=1e-5)


def test_check_tokens():
    model_lib.check_tokens(np.array([[0, 5]]), 6)
    with pytest.raises(ValueError, match=r"tokens: token ids must be in \[0, 6\)"):
        model_lib.check_tokens(np.array([[0, 6]]), 6)


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-gpt2"])
def test_decoder_is_token_embedding_plus_the_core(preset_name):
    from jaxsafe.nn import transformer

    config = model_lib.preset(preset_name, vocab_size=32, max_seq_len=16)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(1))
    tokens = jnp.array([[3, 4, 5, 6], [7, 8, 9, 10]])
    positions = model_lib.positions_from_mask(jnp.ones(tokens.shape, bool))
    embeddings = params["embed"]["embedding"][...][tokens]
    if preset_name == "tiny-gpt2":
        embeddings = embeddings + params["position_embed"]["embedding"][...][positions]
    core_graphdef, _ = transformer.init_params(config.core, jax.random.PRNGKey(2))
    hidden, _ = transformer.apply(core_graphdef, params["core"], embeddings, positions)
    np.testing.assert_allclose(hidden, jit_hidden_states(graphdef, params, tokens), atol=1e-5)
