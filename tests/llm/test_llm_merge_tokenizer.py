"""Model merging (weight and logit space) and the tokenizer adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import generate as gen
from jaxsafe.llm import merge
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import tokenizer as tok

from .conftest import jit_logits


def test_weight_interpolation_hand_values():
    a = {"w": jnp.array([0.0, 2.0]), "b": jnp.array(1.0)}
    b = {"w": jnp.array([4.0, 2.0]), "b": jnp.array(3.0)}
    mid = merge.interpolate_params(a, b, 0.25)
    np.testing.assert_allclose(mid["w"], [1.0, 2.0])
    np.testing.assert_allclose(mid["b"], 1.5)
    np.testing.assert_allclose(merge.linear_merge([a, b, a], [1.0, 1.0, -1.0])["w"], b["w"])
    with pytest.raises(ValueError, match="params"):
        merge.interpolate_params(a, {"w": jnp.zeros(3), "b": jnp.array(0.0)}, 0.5)


def test_logit_mixing_hand_values():
    log_a, log_b = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
    arithmetic = merge.mix_logits(log_a, log_b, 0.5, mode="arithmetic")
    np.testing.assert_allclose(jnp.exp(arithmetic), [0.7, 0.3], rtol=1e-6)
    geometric = jnp.exp(merge.mix_logits(log_a, log_b, 0.5, mode="geometric"))
    np.testing.assert_allclose(geometric, np.array([0.75, 0.25]) / 1.0,
                               rtol=1e-6)  # sqrt(.45):sqrt(.05) = 3:1
    with pytest.raises(ValueError, match="mode"):
        merge.mix_logits(log_a, log_b, 0.5, mode="max")


def test_logit_mixture_model_generates_like_its_mixed_logits(tiny_model, tiny_config):
    graphdef, params = tiny_model
    _, other = model_lib.init_params(tiny_config, jax.random.PRNGKey(7))
    mix_graphdef, mix_state = merge.make_logit_mixture(graphdef, params, graphdef, other, 0.3)
    tokens, mask = gen.left_pad([[3, 4, 5], [6, 7]])
    out = gen.generate(mix_graphdef, mix_state, tokens, mask, jax.random.PRNGKey(0),
                       gen.SamplingConfig(4, temperature=0))
    full_mask = jnp.concatenate([mask, jnp.ones((2, 4), bool)], axis=1)
    mixed = merge.mix_logits(jit_logits(graphdef, params, out.sequences, None, full_mask),
                             jit_logits(graphdef, other, out.sequences, None, full_mask), 0.3)
    np.testing.assert_array_equal(out.response_tokens, jnp.argmax(mixed[:, 2:-1], axis=-1))


@pytest.fixture(scope="module")
def words_tokenizer():
    return tok.word_level_tokenizer(["how", "are", "you", "fine", "thanks", "bye"])


def test_word_level_round_trip_and_pairs(words_tokenizer, tmp_path):
    t = words_tokenizer
    assert t.vocab_size == 9 and t.encode("how are you") == [3, 4, 5]
    pairs = t.encode_pairs(["how are you", "bye"], ["fine thanks", "bye"], max_length=8)
    np.testing.assert_array_equal(pairs.tokens, [[1, 3, 4, 5, 6, 7, 2], [1, 8, 8, 2, 0, 0, 0]])
    np.testing.assert_array_equal(pairs.prompt_mask[0], [1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(pairs.response_mask[1], [0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(pairs.attention_mask, pairs.prompt_mask | pairs.response_mask)
    assert t.decode(pairs.tokens[0, 1:4]) == "how are you"
    # the same code path through a tokenizer.json file
    t.save(tmp_path)
    loaded = tok.load_tokenizer(tmp_path, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    np.testing.assert_array_equal(loaded.encode_pairs(["how are you"], ["fine"], 8).tokens,
                                  [[1, 3, 4, 5, 6, 2]])
    tokens, mask = loaded.encode_prompts(["how are you", "bye"], max_length=8)
    np.testing.assert_array_equal(tokens, [[1, 3, 4, 5], [0, 0, 1, 8]])
    np.testing.assert_array_equal(mask[1], [0, 0, 1, 1])


def test_tokenizer_errors_and_explicit_truncation(words_tokenizer, tmp_path):
    t = words_tokenizer
    with pytest.raises(ValueError, match=r"\['hello'\] not in the vocabulary"):
        t.encode("hello you")
    with pytest.raises(ValueError, match=r"token id\(s\) \[9\] outside the vocabulary"):
        t.decode([3, 9])
    with pytest.raises(ValueError, match=r"prompts\[0\].*exceed max_length=5"):
        t.encode_pairs(["how are you how"], ["fine"], max_length=5)
    truncated = t.encode_pairs(["how are you how"], ["fine"], max_length=5, truncate=True)
    np.testing.assert_array_equal(truncated.tokens, [[4, 5, 3, 6, 2]])  # prompt loses its left tokens
    with pytest.raises(ValueError, match=r"prompts\[0\].*max_length=2"):
        t.encode_prompts(["how are you"], max_length=2)
    with pytest.raises(ValueError, match="tokenizer.json"):
        tok.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="eos_token"):
        t.save(tmp_path)
        tok.load_tokenizer(tmp_path, eos_token="</s>")
