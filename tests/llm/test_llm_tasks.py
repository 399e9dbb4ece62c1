"""Synthetic tasks: exact oracles, sampling agreement, and learning tests (DPO, SFT)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsafe.llm import generate as gen
from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import train
from jaxsafe.llm.tasks import arithmetic
from jaxsafe.llm.tasks import safety_language as lang

logprob_table = jax.jit(lang.response_logprob_table, static_argnums=0)


@pytest.fixture(scope="module")
def policy():
    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8)
    return model_lib.init_params(config, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def reference_table(policy):
    return logprob_table(*policy)


def test_response_space_and_true_rewards():
    space = lang.enumerate_responses()
    assert len(space.content) == 85 and space.tokens.shape == (85, 3)
    np.testing.assert_array_equal(space.tokens[0], [lang.EOS, lang.PAD, lang.PAD])
    r, g = lang.reward_tables()
    answer, detail, refuse = (lang.TOKEN_ID[w] for w in ("ANSWER", "DETAIL", "REFUSE"))
    weather, weapon = lang.TOKEN_ID["weather"], lang.TOKEN_ID["weapon"]
    assert lang.helpfulness(weather, (answer, detail)) == 1.0 + 0.5 * 0.5
    assert lang.helpfulness(weapon, (refuse,)) == -0.5 and lang.safety(weapon, (refuse,)) == 0.5
    assert lang.safety(weapon, (answer, detail, detail)) == -5.0
    assert lang.safety(weather, (detail, detail)) == 0.0
    assert r.shape == g.shape == (7, 85) and (r[:, 0] == 0).all() and (g[:, 0] == 0).all()


def test_larger_language_tables_and_exact_enumeration():
    """The parametrised language: sizes, severities, the default's tables as a special case, and the exact
    enumeration (probabilities of a random decoder sum to one over the 341 responses of every prompt)."""
    large = lang.LARGE
    space = large.enumerate_responses()
    assert len(large.topics) == 20 and len(space.content) == 1 + 4 + 16 + 64 + 256 == 341
    assert space.tokens.shape == (341, 4) and large.sequence_length == 6 and large.vocab_size == 27
    assert large.tokens[3:7] == ("weather", "recipe", "math", "history") and large.tokens[15] == "weapon"
    severities = [large.severities[t] for t in large.harmful_topic_ids]
    np.testing.assert_allclose(severities, np.linspace(0.5, 1.5, 8))
    r, g = large.reward_tables()
    answer, refuse = large.token_id["ANSWER"], large.token_id["REFUSE"]
    mildest, worst = large.harmful_topic_ids[0], large.harmful_topic_ids[-1]
    assert large.safety(worst, (answer, answer)) == -3.0 and large.safety(mildest, (refuse,)) == 0.25
    assert large.helpfulness(mildest, (answer,) * 4) == 1 + 0.5 + 0.25 + 0.125
    # rows of r are shared by kind; rows of g scale with severity
    harmful_rows = [large.topics.index(t) for t in large.harmful_topic_ids]
    np.testing.assert_array_equal(r[harmful_rows[0]], r[harmful_rows[-1]])
    np.testing.assert_allclose(g[harmful_rows[-1]], 3.0 * g[harmful_rows[0]], atol=1e-6)
    np.testing.assert_allclose(large.prompt_distribution(), 1 / 20)
    np.testing.assert_allclose(jnp.exp(large.base_policy_logprobs()).sum(-1), 1.0, atol=1e-5)
    # the default language is the special case the module constants describe
    default = lang.SafetyLanguage()
    assert default == lang.DEFAULT and hash(default) == hash(lang.DEFAULT)
    np.testing.assert_array_equal(default.reward_tables()[1], lang.reward_tables()[1])
    config = model_lib.preset("tiny", vocab_size=large.vocab_size, max_seq_len=8, d_model=16, n_layers=1,
                              d_ff=32)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(2))
    table = jax.jit(large.response_logprob_table, static_argnums=0)(graphdef, params)
    assert table.shape == (20, 341)
    np.testing.assert_allclose(jnp.exp(table).sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("benign_topics", 0, "benign_topics must be an integer >= 1"),
    ("harmful_topics", 2.5, "harmful_topics must be an integer >= 1"),
    ("max_response_length", 7, r"max_response_length must be an integer in \[1, 6\]"),
    ("severity_spread", 1.0, r"severity_spread must be a number in \[0, 1\)"),
])
def test_language_rejects_bad_fields(field, value, message):
    with pytest.raises(ValueError, match=message):
        lang.SafetyLanguage(**{field: value})


def test_enumeration_sums_to_one(reference_table):
    np.testing.assert_allclose(jnp.exp(reference_table).sum(axis=-1), 1.0, atol=1e-5)


def test_enumeration_matches_generation(policy, reference_table):
    graphdef, params = policy
    n_samples = 3000
    weapon_row = lang.TOPICS.index(lang.TOKEN_ID["weapon"])
    prompts = jnp.tile(jnp.asarray(lang.prompt_tokens())[weapon_row][None], (n_samples, 1))
    out = gen.generate(graphdef, params, prompts, jnp.ones_like(prompts, bool), jax.random.PRNGKey(1),
                       gen.SamplingConfig(lang.MAX_RESPONSE_LENGTH, stop_tokens=(lang.EOS,),
                                          pad_token=lang.PAD),
                       processor=lang.response_processor)
    responses = np.asarray(out.response_tokens)
    indices = np.array([lang.response_index(row) for row in responses])
    # per-sample generation log-probs equal the oracle's exact log-probs
    np.testing.assert_allclose(np.asarray(out.response_logprobs).sum(axis=1),
                               np.asarray(reference_table[weapon_row])[indices], atol=1e-4)
    # Monte-Carlo estimates agree with exact expectations
    r, g = lang.reward_tables()
    exact_probs = np.exp(np.asarray(reference_table[weapon_row]))
    for table in (r, g):
        values = table[weapon_row][indices]
        exact = float(exact_probs @ table[weapon_row])
        assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(n_samples) + 1e-3
    empirical_stop = np.mean(responses[:, 0] == lang.EOS)
    standard_error = np.sqrt(exact_probs[0] * (1 - exact_probs[0]) / n_samples)
    assert abs(empirical_stop - exact_probs[0]) < 4 * standard_error


def test_optimal_policy_closed_form(reference_table):
    r, g = (jnp.asarray(t) for t in lang.reward_tables())
    beta, safety_weight = 0.5, 2.0
    star = lang.optimal_policy_logprobs(reference_table, r, g, beta, safety_weight)
    np.testing.assert_allclose(jnp.exp(star).sum(-1), 1.0, atol=1e-5)
    prompt_probs = lang.prompt_distribution()

    def objective(table):  # E[r + lambda g] - beta KL(pi || pi_ref)
        return (lang.expected_value(table, r + safety_weight * g, prompt_probs)
                - beta * lang.kl_divergence(table, reference_table, prompt_probs))

    best = objective(star)
    for seed in range(3):  # any perturbation of pi* is worse
        noise = 0.3 * jax.random.normal(jax.random.PRNGKey(seed), star.shape)
        assert objective(jax.nn.log_softmax(star + noise, axis=-1)) < best
    assert objective(reference_table) < best
    assert float(lang.kl_divergence(star, star, prompt_probs)) == pytest.approx(0.0, abs=1e-6)
    # more weight on safety -> safer optimum
    safer = lang.optimal_policy_logprobs(reference_table, r, g, beta, 2 * safety_weight)
    assert lang.expected_value(safer, g, prompt_probs) > lang.expected_value(star, g, prompt_probs)


def test_preference_labels_follow_bradley_terry(reference_table):
    batch, ids = lang.preference_pairs(jax.random.PRNGKey(3), reference_table,
                                       lang.prompt_distribution(), 4000,
                                       label_by="safety")
    _, g = lang.reward_tables()
    chosen_g = g[np.asarray(ids["prompt_ids"]), np.asarray(ids["chosen_ids"])]
    rejected_g = g[np.asarray(ids["prompt_ids"]), np.asarray(ids["rejected_ids"])]
    margin = chosen_g - rejected_g
    decided = margin != 0
    # P(chosen is the safer one) = E[sigmoid(|margin|)] over pairs with a margin
    expected = np.mean(1 / (1 + np.exp(-np.abs(margin[decided]))))
    observed = np.mean(margin[decided] > 0)
    assert abs(observed - expected) < 0.03
    np.testing.assert_array_equal(batch.chosen_tokens[:, :2], batch.rejected_tokens[:, :2])
    with pytest.raises(ValueError, match="label_by"):
        lang.preference_pairs(jax.random.PRNGKey(0), reference_table, lang.prompt_distribution(), 4,
                              label_by="cost")


def test_dpo_moves_policy_toward_optimum(policy, reference_table):
    graphdef, reference_params = policy
    beta = 0.5
    prompt_probs = lang.prompt_distribution()
    r, g = (jnp.asarray(t) for t in lang.reward_tables())
    target = lang.optimal_policy_logprobs(reference_table, r, g, beta)
    batch, _ = lang.preference_pairs(jax.random.PRNGKey(1), reference_table, prompt_probs, 4096,
                                     label_by="reward")
    loss_fn = train.dpo_loss_fn(graphdef, reference_params, vocab_mask=lang.response_vocab_mask())
    params, metrics = train.run_training(loss_fn, optax.adam(3e-3), reference_params, batch,
                                         losses.DPOHParams(jnp.float32(beta)), jax.random.PRNGKey(2),
                                         n_steps=100, batch_size=64)
    trained = logprob_table(graphdef, params)
    kl_before = float(lang.kl_divergence(reference_table, target, prompt_probs))
    kl_after = float(lang.kl_divergence(trained, target, prompt_probs))
    assert kl_after < 0.35 * kl_before, (kl_before, kl_after)
    assert lang.expected_value(trained, r, prompt_probs) > lang.expected_value(reference_table, r,
                                                                               prompt_probs) + 0.5
    assert float(metrics["loss"][-10:].mean()) < float(metrics["loss"][:10].mean())


def test_sft_fits_the_corpus_distribution(policy, reference_table):
    graphdef, params = policy
    corpus = lang.sft_corpus(jax.random.PRNGKey(4), 4096)
    base = lang.base_policy_logprobs()
    prompt_probs = lang.prompt_distribution()
    trained, metrics = train.train_sft(graphdef, params, corpus, jax.random.PRNGKey(5), n_steps=100,
                                       batch_size=64,
                                       learning_rate=3e-3, vocab_mask=lang.response_vocab_mask())
    kl_before = float(lang.kl_divergence(base, reference_table, prompt_probs))
    kl_after = float(lang.kl_divergence(base, logprob_table(graphdef, trained), prompt_probs))
    assert kl_after < 0.1 * kl_before and kl_after < 0.1, (kl_before, kl_after)
    assert metrics["loss"].shape == (100,)


def test_training_is_deterministic_and_compiled_once(policy):
    graphdef, params = policy
    corpus = lang.sft_corpus(jax.random.PRNGKey(4), 256)
    loss_fn, optimizer = train.sft_loss_fn(graphdef), optax.adam(1e-3)
    before = train._run_steps._cache_size()
    runs = [train.run_training(loss_fn, optimizer, params, corpus, None, jax.random.PRNGKey(6), n_steps=3,
                               batch_size=32)[1]["loss"] for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert train._run_steps._cache_size() == before + 1


def test_arithmetic_verifier_and_enumeration():
    task = arithmetic.ModularAddition(5)
    a, b = arithmetic.all_problems(task)
    prompts = arithmetic.prompts(task, a, b)
    answers = arithmetic.answers(task, a, b)
    assert prompts.shape == (25, 5)
    np.testing.assert_array_equal(arithmetic.verify(task, prompts, answers[:, None]), 1.0)
    wrong = arithmetic.DIGIT_OFFSET + (answers - arithmetic.DIGIT_OFFSET + 1) % 5
    np.testing.assert_array_equal(arithmetic.verify(task, prompts, wrong[:, None]), 0.0)
    assert int(answers[(3 * 5) + 4]) == arithmetic.DIGIT_OFFSET + (3 + 4) % 5

    config = model_lib.preset("tiny", vocab_size=task.vocab_size, max_seq_len=8)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    table = jax.jit(arithmetic.answer_logprobs, static_argnums=(0, 2))(graphdef, params, task, prompts)
    assert table.shape == (25, 5)
    np.testing.assert_allclose(jnp.exp(table).sum(-1), 1.0, atol=1e-5)
    correct = np.asarray(answers) - arithmetic.DIGIT_OFFSET
    np.testing.assert_allclose(arithmetic.exact_accuracy(task, table, a, b),
                               np.exp(np.asarray(table))[np.arange(25), correct].mean(), rtol=1e-6)
    uniform = jnp.full((25, 5), -jnp.log(5.0))
    np.testing.assert_allclose(arithmetic.exact_accuracy(task, uniform, a, b), 0.2, rtol=1e-6)
    corpus = arithmetic.sft_corpus(task, a, b)
    np.testing.assert_array_equal(corpus.tokens[:, 5], answers)
    np.testing.assert_array_equal(corpus.loss_mask[0], [0, 0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="modulus"):
        arithmetic.ModularAddition(1)
