"""The transformer core on its own: embeddings in, hidden states out (no token embedding anywhere)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.nn import transformer

STYLES = ("llama", "gpt2")
D_MODEL = 32
BASE = dict(d_model=D_MODEL, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)


def _config(style):
    return transformer.TransformerConfig(**BASE, n_kv_heads=2, block_style=style)


@pytest.fixture(scope="module")
def cores():
    """(config, graphdef, params, jitted apply) per block style, built once."""
    out = {}
    for style in STYLES:
        config = _config(style)
        graphdef, params = transformer.init_params(config, jax.random.PRNGKey(0))
        out[style] = (config, graphdef, params, jax.jit(transformer.apply, static_argnums=0))
    return out


def _embeddings(key, batch=2, length=6):
    return jax.random.normal(key, (batch, length, D_MODEL))


@pytest.mark.parametrize("style", STYLES)
def test_changing_a_future_embedding_leaves_past_outputs_unchanged(cores, style):
    _, graphdef, params, apply = cores[style]
    x = _embeddings(jax.random.PRNGKey(1))
    changed = x.at[:, 4].add(jax.random.normal(jax.random.PRNGKey(2), (2, D_MODEL)))
    hidden, cache = apply(graphdef, params, x)
    hidden_changed, _ = apply(graphdef, params, changed)
    assert hidden.shape == (2, 6, D_MODEL) and cache is None
    np.testing.assert_allclose(hidden_changed[:, :4], hidden[:, :4], atol=1e-6)
    # the changed entry and the ones after it do move (the test can fail)
    assert np.abs(np.asarray(hidden_changed[:, 4:] - hidden[:, 4:])).min(axis=-1).max() > 1e-3


@pytest.mark.parametrize("style", STYLES)
def test_padding_entries_are_not_attended(cores, style):
    _, graphdef, params, apply = cores[style]
    x = _embeddings(jax.random.PRNGKey(3), batch=1, length=5)
    mask = jnp.array([[1, 1, 0, 1, 1]], bool)
    hidden, _ = apply(graphdef, params, x, attention_mask=mask)
    scrambled, _ = apply(graphdef, params, x.at[:, 2].set(100.0), attention_mask=mask)
    real = np.asarray(mask[0])
    np.testing.assert_allclose(np.asarray(scrambled)[:, real], np.asarray(hidden)[:, real], atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_cache_incremental_equals_full_forward(cores, style):
    config, graphdef, params, apply = cores[style]
    x = _embeddings(jax.random.PRNGKey(4), length=7)
    mask = jnp.ones((2, 7), bool).at[1, :2].set(False)  # row 1 left-padded
    positions = transformer.positions_from_mask(mask)
    full, _ = apply(graphdef, params, x, positions, mask)
    cache = transformer.init_cache(config, 2, 7)
    prefix, cache = apply(graphdef, params, x[:, :3], positions[:, :3], mask[:, :3], cache)
    stepped = [prefix]
    for t in range(3, 7):
        out, cache = apply(graphdef, params, x[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1], cache)
        stepped.append(out)
    stepped = np.asarray(jnp.concatenate(stepped, axis=1))
    real = np.asarray(mask)
    np.testing.assert_allclose(stepped[real], np.asarray(full)[real], atol=1e-5)
    assert int(cache.end_index) == 7 and cache.keys[0].shape == (2, 7, 2, D_MODEL // 4)


def test_rotary_positions_matter_only_for_llama_blocks(cores):
    x = _embeddings(jax.random.PRNGKey(5), batch=1, length=4)
    shifted = jnp.arange(4)[None] + 3
    for style, moves in (("llama", True), ("gpt2", False)):
        _, graphdef, params, apply = cores[style]
        base, _ = apply(graphdef, params, x)
        moved, _ = apply(graphdef, params, x, shifted)
        # a uniform shift keeps relative positions, so only absolute-position effects could show: the first
        # entry attends to itself alone and is shift-invariant; later entries are too under RoPE (relative)
        np.testing.assert_allclose(moved, base, atol=1e-4)
        scattered, _ = apply(graphdef, params, x, jnp.array([[0, 5, 6, 11]]))
        assert (not np.allclose(scattered, base, atol=1e-4)) == moves, style


def test_shapes_params_and_validation():
    config = _config("llama")
    _, params = transformer.init_params(config, jax.random.PRNGKey(0))
    assert set(params) == {"blocks", "final_norm"}  # no token embedding: the caller brings embeddings
    assert params["blocks"][0]["attn"]["k_proj"]["kernel"][...].shape == (D_MODEL, 2 * D_MODEL // 4)
    gpt2 = _config("gpt2")
    assert gpt2.qkv_bias and gpt2.mlp_bias and gpt2.activation == "gelu_tanh" and not gpt2.uses_rope
    for field, value in (("n_heads", 0), ("n_kv_heads", 3), ("d_model", 30), ("block_style", "mamba"),
                         ("activation", "relu"), ("norm_eps", 0.0), ("dtype",
                                                                     "float16"), ("max_seq_len", 1.5)):
        with pytest.raises(ValueError, match=f"TransformerConfig.{field} must be"):
            transformer.TransformerConfig(**{**BASE, field: value})
    with pytest.raises(ValueError, match="TransformerConfig.head_dim must be even"):
        transformer.TransformerConfig(**BASE, head_dim=7)
    transformer.TransformerConfig(**BASE, head_dim=7,
                                  block_style="gpt2")  # odd head widths are fine without rotary positions
    with pytest.raises(ValueError, match="cache_length"):
        transformer.init_cache(config, 1, 17)
    graphdef, params = transformer.init_params(config, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"x: embeddings must be \[B, T, d_model=32\]"):
        transformer.apply(graphdef, params, jnp.zeros((1, 3, 16)))


def test_dropout_at_rate_zero_is_the_plain_forward_and_keeps_causality():
    from flax import nnx

    config = _config("gpt2")
    graphdef, params = transformer.init_params(config, jax.random.PRNGKey(0))
    model = nnx.merge(graphdef, params)

    @jax.jit
    def forward(x, key, rate):
        return model(x, dropout=transformer.Dropout(key, rate, rate))[0]

    x = _embeddings(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(5)
    np.testing.assert_allclose(forward(x, key, 0.0), model(x)[0], atol=1e-6)
    dropped = forward(x, key, 0.5)
    assert np.abs(np.asarray(dropped - model(x)[0])).max() > 1e-2  # a positive rate does drop something
    # the same key drops the same entries, so a change in the future still leaves the past untouched
    changed = forward(x.at[:, 4].add(1.0), key, 0.5)
    np.testing.assert_allclose(changed[:, :4], dropped[:, :4], atol=1e-6)
    # inverted dropout keeps the expectation: the mean of many masks of a constant is the constant
    kept = jax.vmap(lambda k: transformer.inverted_dropout(k, jnp.ones(1000), 0.3))(jax.random.split(key, 64))
    assert abs(float(kept.mean()) - 1.0) < 0.01 and float((kept == 0).mean()) == pytest.approx(0.3, abs=0.01)


def test_dropout_bits_are_uniform_and_unrelated_across_keys_entries_and_lanes():
    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    words = jax.jit(jax.vmap(lambda k: transformer.dropout_bits(k, (64, 1024))))(keys)
    np.testing.assert_array_equal(words[2], transformer.dropout_bits(keys[2], (64, 1024)))  # a lane is a call
    u = np.asarray(words, np.float64).reshape(8, -1) / 2.0 ** 32  # 8 keys x 65,536 draws
    n = u.shape[1]
    # uniform: mean, variance and every decile's share within 5 standard errors
    assert np.all(np.abs(u.mean(axis=1) - 0.5) < 5 * np.sqrt(1 / 12 / n))
    assert np.all(np.abs(u.var(axis=1) - 1 / 12) < 5 * np.sqrt(1 / 180 / n))
    share = np.stack([np.histogram(row, bins=10, range=(0, 1))[0] / n for row in u])
    assert np.abs(share - 0.1).max() < 5 * np.sqrt(0.09 / n)
    # unrelated: neighbouring entries, entries one row apart and different keys have correlation ~ 0
    bound = 5 / np.sqrt(n)
    for lag in (1, 1024):
        assert np.abs([np.corrcoef(row[:-lag], row[lag:])[0, 1] for row in u]).max() < bound
    assert np.abs(np.corrcoef(u)[np.triu_indices(8, 1)]).max() < bound
    # the mask's rate is the requested one, traced or not
    drop = jax.jit(lambda rate: (transformer.inverted_dropout(keys[0], jnp.ones(200_000), rate) == 0).mean())
    for rate in (0.0, 0.1, 0.5):
        assert float(drop(rate)) == pytest.approx(rate, abs=5 * np.sqrt(0.25 / 200_000))
    with pytest.raises(ValueError, match=r"dropout: at most 2\*\*32 - 1 entries"):
        transformer.dropout_bits(keys[0], (2 ** 16, 2 ** 16))


def test_projections_are_nnx_linear_as_2d_products_without_backward_transposes():
    """transformer.Linear keeps nnx.Linear's parameters and values and, on XLA:CPU, computes the weight gradient of
    a [B, T, d] projection without materialising a transpose of the activations (the plain nnx.Linear's backward
    transposes both MLP hidden states per layer)."""
    from flax import nnx

    rngs = nnx.Rngs(0)
    ours = transformer.Linear(16, 48, rngs=rngs)
    plain = nnx.Linear(16, 48, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 16))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(plain(x)), rtol=1e-6, atol=1e-6)
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(plain))

    def transposes(layer_call):
        def loss(w, x):
            hidden = jax.nn.silu(layer_call(x, w[0]))
            return jnp.sum(layer_call(hidden, w[1]) ** 2)

        weights = (jnp.ones((16, 48)) * 0.1, jnp.ones((48, 16)) * 0.1)
        text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(weights, x).compile().as_text()
        return text.count(" transpose(") + text.count(" copy(")

    flat = transformer.flat_matmul
    assert transposes(lambda v, w: flat(lambda u: u @ w, v)) == 0
    if jax.default_backend() == "cpu":  # the layout copies this avoids (documents why flat_matmul exists)
        assert transposes(lambda v, w: v @ w) > 0
