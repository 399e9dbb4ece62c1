"""Generation: KV-cache greedy equals full recomputation, one compilation per shape,
stop tokens, processors, top-k / top-p, and input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import generate as gen

from .conftest import jit_logits

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [3]]


@pytest.fixture(scope="module")
def prompts():
    return gen.left_pad(PROMPTS)


@pytest.fixture(scope="module")
def greedy_output(tiny_model, prompts):
    tokens, mask = prompts
    return gen.generate(*tiny_model, tokens, mask, jax.random.PRNGKey(0),
                        gen.SamplingConfig(8, temperature=0.0))


def test_greedy_kv_cache_matches_full_recomputation(tiny_model, prompts, greedy_output):
    graphdef, params = tiny_model
    _, mask = prompts
    sequences = greedy_output.sequences
    full_mask = jnp.concatenate([mask, jnp.ones((3, 8), bool)], axis=1)
    full_logits = jit_logits(graphdef, params, sequences, None, full_mask)
    prompt_length = mask.shape[1]
    for step in range(8):
        recomputed = jnp.argmax(full_logits[:, prompt_length + step - 1], axis=-1)
        np.testing.assert_array_equal(sequences[:, prompt_length + step], recomputed, err_msg=f"step {step}")
    log_probs = jax.nn.log_softmax(full_logits[:, prompt_length - 1:-1], axis=-1)
    expected = jnp.take_along_axis(log_probs, sequences[:, prompt_length:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(greedy_output.response_logprobs, expected, atol=1e-4)
    # the generated tokens are not all the same (the check above would be weak otherwise)
    assert len(np.unique(np.asarray(greedy_output.response_tokens))) > 1


def test_generation_compiles_once_per_shape(tiny_model, prompts):
    traces = []

    def counting_processor(logits, step, tokens_so_far):
        traces.append(1)  # runs only while tracing
        return logits

    tokens, mask = prompts
    sampling = gen.SamplingConfig(6, temperature=1.0, top_k=5)
    before = gen._generate_jit._cache_size()
    with jax.log_compiles(False):
        for seed in range(3):
            out = gen.generate(*tiny_model, (tokens + seed) % 32, mask, jax.random.PRNGKey(seed), sampling,
                               processor=counting_processor)
    assert out.response_tokens.shape == (3, 6)
    assert len(traces) == 1  # traced once for 3 calls x 6 tokens
    assert gen._generate_jit._cache_size() == before + 1
    gen.generate(*tiny_model, *gen.left_pad(PROMPTS + [[4, 4]]), jax.random.PRNGKey(0), sampling,
                 processor=counting_processor)  # a new batch size is a new shape
    assert len(traces) == 2


def test_stop_tokens_pad_and_mask(tiny_model, prompts, greedy_output):
    tokens, mask = prompts
    stop = int(greedy_output.response_tokens[0, 2])  # row 0 emits this at step 2 (or earlier)
    out = gen.generate(*tiny_model, tokens, mask, jax.random.PRNGKey(0),
                       gen.SamplingConfig(8, temperature=0.0, stop_tokens=(stop,), pad_token=31))
    for row in range(3):
        response = np.asarray(out.response_tokens[row])
        greedy = np.asarray(greedy_output.response_tokens[row])
        hits = np.flatnonzero(greedy == stop)
        if hits.size:
            end = hits[0] + 1
            np.testing.assert_array_equal(response[:end], greedy[:end])
            assert (response[end:] == 31).all() and bool(out.stopped[row])
            assert int(out.response_lengths[row]) == end
            assert (np.asarray(out.response_logprobs[row, end:]) == 0).all()
        else:
            np.testing.assert_array_equal(response, greedy)
            assert not bool(out.stopped[row])
    assert bool(out.stopped[0]) and int(out.response_lengths[0]) <= 3
    np.testing.assert_array_equal(out.response_mask.sum(axis=1), out.response_lengths)
    prompt_length = mask.shape[1]
    np.testing.assert_array_equal(out.attention_mask[:, :prompt_length], mask)
    np.testing.assert_array_equal(out.attention_mask[:, prompt_length:], out.response_mask[:, prompt_length:])


def force_token_seven(logits, step, tokens_so_far):
    """Forces token 7 at even steps; at odd steps forbids repeating the previous token."""
    forced = jnp.full_like(logits, -1e9).at[:, 7].set(0.0)
    previous = jax.lax.dynamic_index_in_dim(tokens_so_far, tokens_so_far.shape[1] - 8 + step - 1, axis=1)
    no_repeat = jnp.where(jnp.arange(logits.shape[-1])[None] == previous, -1e9, logits)
    return jnp.where(step % 2 == 0, forced, no_repeat)


def test_processor_is_applied_every_step(tiny_model, prompts):
    tokens, mask = prompts
    out = gen.generate(*tiny_model, tokens, mask, jax.random.PRNGKey(0),
                       gen.SamplingConfig(8, temperature=1.0),
                       processor=force_token_seven)
    response = np.asarray(out.response_tokens)
    assert (response[:, ::2] == 7).all()
    assert (response[:, 1::2] != 7).all()


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_model, prompts, greedy_output):
    tokens, mask = prompts
    out = gen.generate(*tiny_model, tokens, mask, jax.random.PRNGKey(5),
                       gen.SamplingConfig(8, temperature=1.5, top_k=1))
    np.testing.assert_array_equal(out.response_tokens, greedy_output.response_tokens)
    logits = jax.random.normal(jax.random.PRNGKey(1), (64, 32))
    nucleus = jax.jit(gen.sample_tokens, static_argnums=2)(jax.random.PRNGKey(2), logits,
                                                           gen.SamplingConfig(1, top_p=1e-6))
    np.testing.assert_array_equal(nucleus, jnp.argmax(logits, axis=-1))


def test_filter_logits_hand_values():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    top2 = gen.filter_logits(logits, top_k=2)
    assert np.isfinite(top2[0, :2]).all() and np.isneginf(top2[0, 2:]).all()
    nucleus = gen.filter_logits(logits, top_p=0.7)  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: keep two
    assert np.isfinite(nucleus[0, :2]).all() and np.isneginf(nucleus[0, 2:]).all()
    nucleus = gen.filter_logits(logits, top_p=0.85)  # needs three
    assert np.isfinite(nucleus[0, :3]).all() and np.isneginf(nucleus[0, 3])


def test_sampling_follows_the_distribution():
    logits = jnp.log(jnp.array([[0.6, 0.3, 0.1, 0.0]]))
    samples = jax.vmap(lambda k: gen.sample_tokens(k, logits, gen.SamplingConfig(1)))(
        jax.random.split(jax.random.PRNGKey(0), 20000))
    frequencies = np.bincount(np.asarray(samples).ravel(), minlength=4) / 20000
    np.testing.assert_allclose(frequencies, [0.6, 0.3, 0.1, 0.0], atol=0.015)


def test_left_align_and_left_pad():
    tokens, mask = gen.left_align(jnp.array([[1, 2, 0, 0], [3, 4, 5, 6]]), jnp.array([2, 4]))
    np.testing.assert_array_equal(tokens, [[0, 0, 1, 2], [3, 4, 5, 6]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 1, 1, 1]])
    tokens, mask = gen.left_pad([[1, 2], [3]], pad_token=9)
    np.testing.assert_array_equal(tokens, [[1, 2], [9, 3]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=4, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=4, top_k=-2), "top_k"),
    (dict(max_new_tokens=4, top_p=0.0), "top_p"),
])
def test_bad_sampling_config(kwargs, match):
    with pytest.raises(ValueError, match=f"SamplingConfig.{match}"):
        gen.SamplingConfig(**kwargs)


def test_bad_generation_inputs(tiny_model, prompts):
    tokens, mask = prompts
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="left-padded"):
        gen.generate(*tiny_model, jnp.array([[1, 2, 0]]), jnp.array([[1, 1, 0]]), key, gen.SamplingConfig(2))
    with pytest.raises(ValueError, match="max_seq_len"):
        gen.generate(*tiny_model, tokens, mask, key, gen.SamplingConfig(40))
    with pytest.raises(ValueError, match="prompt_tokens: token ids"):
        gen.generate(*tiny_model, jnp.array([[1, 99]]), jnp.array([[1, 1]]), key, gen.SamplingConfig(2))
    with pytest.raises(ValueError, match="stop/pad token"):
        gen.generate(*tiny_model, tokens, mask, key, gen.SamplingConfig(2, stop_tokens=(32,)))
    with pytest.raises(ValueError, match="at least one token"):
        gen.left_pad([[1], []])
