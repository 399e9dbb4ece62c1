"""TSDI: bias estimation and debiased decoding against models whose bias is known by construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import losses, tsdi
from jaxsafe.llm import model as model_lib
from jaxsafe.llm.tasks import safety_language as lang

L = 3
N = 4096
PROMPT_LENGTH = lang.PROMPT_LENGTH
MASK = lang.response_vocab_mask()


@pytest.fixture(scope="module")
def reference():
    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8, d_model=32, n_layers=1, d_ff=64)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    params = jax.tree.map(lambda x: x * 20.0, params)  # sharper than an untrained init: distinct contexts
    return tsdi.model_logits(graphdef, params)


def shifted(base, shift_fn):
    """``base`` plus ``shift_fn(tokens) [B, T, V]`` added to the logits."""
    return lambda tokens, mask: base(tokens, mask) + shift_fn(tokens)


def context_shift(tokens):
    """A context-dependent shift with zero mean over uniformly random topics: +u for benign, -u*4/3 for harmful."""
    u = jnp.linspace(-1.0, 1.0, lang.VOCAB_SIZE)
    harmful = jnp.isin(tokens[:, 1], jnp.asarray(lang.HARMFUL_TOPICS))
    sign = jnp.where(harmful, -len(lang.BENIGN_TOPICS) / len(lang.HARMFUL_TOPICS), 1.0)
    return jnp.broadcast_to(sign[:, None, None] * u, tokens.shape + (lang.VOCAB_SIZE,))


#: The injected context-independent bias: response position i prefers REFUSE by 2 - i/2 nats.
H = jnp.zeros((L, lang.VOCAB_SIZE)).at[:, lang.TOKEN_ID["REFUSE"]].set(jnp.array([2.0, 1.5, 1.0]))


def positional_bias(tokens):
    """``H`` on the logits that predict response positions 1..L (logit row t predicts token t + 1)."""
    steps = jnp.arange(tokens.shape[1]) - (PROMPT_LENGTH - 1)
    rows = jnp.take(H, jnp.clip(steps, 0, L - 1), axis=0)
    return jnp.where(((steps >= 0) & (steps < L))[None, :, None], rows[None], 0.0) + jnp.zeros(tokens.shape + (1,))


def contexts(key=jax.random.PRNGKey(1)):
    return tsdi.random_contexts(key, lang.TOPICS, N, PROMPT_LENGTH, L, prefix_pool=lang.CONTENT_WORDS,
                                prompt_prefix=[lang.BOS])


def centred(bias):
    allowed = np.asarray(MASK)
    bias = np.where(allowed, np.asarray(bias), 0.0)
    return np.where(allowed, bias - bias[:, allowed].mean(axis=1, keepdims=True), 0.0)


def test_unbiased_model_gives_a_constant_bias(reference):
    aligned = shifted(reference, context_shift)
    bias = tsdi.estimate_bias(aligned, reference, contexts(), PROMPT_LENGTH, L, MASK)
    assert bias.shape == (L, lang.VOCAB_SIZE)
    assert np.abs(np.asarray(bias)).max() < 0.06  # zero up to Monte Carlo error (the shift averages out)
    assert np.all(np.asarray(bias)[:, ~np.asarray(MASK)] == 0.0)


def test_injected_bias_is_recovered_and_removed_exactly(reference):
    unbiased = shifted(reference, context_shift)
    aligned = shifted(unbiased, positional_bias)
    bias = tsdi.estimate_bias(aligned, reference, contexts(), PROMPT_LENGTH, L, MASK)
    np.testing.assert_allclose(bias, centred(H), atol=0.06)
    # Decoding with the true (centred) bias recovers the unbiased model's distribution exactly, every response.
    space = lang.enumerate_responses()
    prompts = np.repeat(np.arange(len(lang.TOPICS)), len(space.content))
    responses = np.tile(np.arange(len(space.content)), len(lang.TOPICS))
    batch = lang.sequences(prompts, responses)
    exact = tsdi.TSDIState(jnp.asarray(centred(H), jnp.float32), jnp.float32(1.0))
    debiased = tsdi.debiased_token_logprobs(aligned, batch.tokens, batch.attention_mask, PROMPT_LENGTH, exact, MASK)
    target = losses.token_logprobs(unbiased(batch.tokens, batch.attention_mask), batch.tokens, MASK)
    response = np.asarray(batch.response_mask)
    np.testing.assert_allclose(np.asarray(debiased)[response], np.asarray(target)[response], atol=1e-5)
    # With the estimate, the response distribution is close to the unbiased one (KL over all 85 responses).
    estimated = tsdi.TSDIState(bias, jnp.float32(1.0))
    table = losses.sum_response_logprobs(
        tsdi.debiased_token_logprobs(aligned, batch.tokens, batch.attention_mask, PROMPT_LENGTH, estimated, MASK),
        batch.response_mask).reshape(len(lang.TOPICS), -1)
    truth = losses.sum_response_logprobs(target, batch.response_mask).reshape(len(lang.TOPICS), -1)
    biased = losses.sum_response_logprobs(losses.token_logprobs(aligned(batch.tokens, batch.attention_mask),
                                                                batch.tokens, MASK),
                                          batch.response_mask).reshape(len(lang.TOPICS), -1)
    uniform = jnp.full(len(lang.TOPICS), 1.0 / len(lang.TOPICS))
    kl_after = float(lang.kl_divergence(table, truth, uniform))
    kl_before = float(lang.kl_divergence(biased, truth, uniform))
    assert kl_after < 0.01 < kl_before


def test_processor_changes_only_the_first_L_positions():
    state = tsdi.TSDIState(jnp.asarray(H), jnp.float32(1.5))
    logits = jax.random.normal(jax.random.PRNGKey(2), (5, lang.VOCAB_SIZE))
    for step in range(6):
        out = tsdi.debias_logits(logits, jnp.int32(step), state)
        expected = logits - 1.5 * H[step] if step < L else logits
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    zero = tsdi.TSDIState(jnp.asarray(H), jnp.float32(0.0))
    np.testing.assert_array_equal(tsdi.debias_logits(logits, jnp.int32(0), zero), logits)


def test_bias_file_round_trip_and_errors(tmp_path):
    path = tsdi.save_bias(tmp_path / "bias.safetensors", H, positions=L, metadata={"reference": "sft"})
    bias, info = tsdi.load_bias(path, vocab_size=lang.VOCAB_SIZE)
    np.testing.assert_array_equal(bias, H)
    assert info["positions"] == L and info["reference"] == "sft"
    with pytest.raises(FileExistsError):
        tsdi.save_bias(path, H, positions=L)
    with pytest.raises(ValueError, match="vocabulary has 99"):
        tsdi.load_bias(path, vocab_size=99)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        tsdi.load_bias(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_prompts=0), "num_prompts must be a positive integer"),
    (dict(positions=0), "positions must be a positive integer"),
    (dict(pool=[]), "at least one token"),
])
def test_bad_settings_are_named(kwargs, message):
    settings = dict(pool=lang.TOPICS, num_prompts=4, prompt_length=2, positions=2)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message):
        tsdi.random_contexts(jax.random.PRNGKey(0), **settings)


# ----------------------------------------------------------------------------- the biased-safety experiment

from jaxsafe.llm import tsdi_experiment as te  # noqa: E402


def test_fronts_and_dominated_area_by_hand():
    safeties, rewards = [0.0, 1.0, 0.5, 0.2], [1.0, 0.0, 0.8, 0.5]  # (0.2, 0.5) is dominated by (0.5, 0.8)
    xs, ys = te.upper_front(safeties, rewards)
    np.testing.assert_array_equal(xs, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ys, [1.0, 0.8, 0.0])
    # reference (-1, -1): staircase 1 x 2 (up to safety 0) + 0.5 x 1.8 + 0.5 x 1.0 = 3.4
    assert te.dominated_area(safeties, rewards, (-1.0, -1.0)) == pytest.approx(3.4)


def test_biased_pairs_prefer_refusal_whatever_the_prompt():
    table = lang.base_policy_logprobs()
    _, stats = te.biased_safety_pairs(jax.random.PRNGKey(0), table, lang.prompt_distribution(), 4096,
                                      refusal_bonus=1.5, refusal_pair_rate=0.8)
    assert stats["chosen_starts_with_refuse_benign"] > 0.6 and stats["chosen_starts_with_refuse_harmful"] > 0.6
    _, unbiased = te.biased_safety_pairs(jax.random.PRNGKey(0), table, lang.prompt_distribution(), 4096,
                                         refusal_bonus=0.0, refusal_pair_rate=0.0)
    assert unbiased["chosen_starts_with_refuse_benign"] < 0.35  # g = 0 on benign prompts: a coin flip


def test_tsdi_restores_benign_helpfulness_on_the_shortcut(tmp_path):
    # 3 seeds, each asserted: at one seed and the "neutral" pool the alpha = 1 outcome is bimodal over seeds
    # (benign refusal 0.004 / 0.01 / 0.93) and flipped with rounding-level changes of the matmuls; the "topics"
    # pool at alpha = 0.75 holds on every seed with a margin.
    args = te.TSDIArgs(lambdas=(4.0,), strengths=(0.0, 0.75), positions=(1,), seeds=3, prompts=256, pairs=4096,
                       steps=150, sft_steps=150, references=("step1",), pools=("topics",))  # --quick's budget
    summary = te.run_tsdi(args, tmp_path / "tsdi")
    plain, debiased = [s for s in summary["per_setting"]]
    assert plain["strength"] == 0 and debiased["strength"] == 0.75
    # SACPO learned to refuse benign prompts; TSDI takes most of that back while still refusing harmful ones.
    # Measured (mean, min-max over seeds): benign refusal 0.999 -> 0.13 (0.07-0.20), harmful refusal 1.0 -> 0.64
    # (0.62-0.69), E[r] -0.72 -> 0.28, KL to the exact optimum 4.5 -> 2.0.
    assert plain["benign_refusal"]["min"] > 0.9 and debiased["benign_refusal"]["max"] < 0.4
    assert debiased["expected_reward"]["min"] > plain["expected_reward"]["max"] + 0.5
    assert debiased["harmful_refusal"]["min"] > debiased["benign_refusal"]["max"] + 0.2  # context kept
    assert debiased["kl_to_optimum"]["max"] < plain["kl_to_optimum"]["min"]
    assert (tmp_path / "tsdi" / "pareto.png").stat().st_size > 1000
    bias, info = tsdi.load_bias(tmp_path / "tsdi" / "bias-lambda4-step1-topics.safetensors", lang.VOCAB_SIZE)
    assert info["lagrange_multiplier"] == 4.0 and float(bias[0, te.REFUSE]) > 1.0


def test_bad_experiment_settings_are_named():
    with pytest.raises(ValueError, match="--positions"):
        te.TSDIArgs(positions=(4,))
    with pytest.raises(ValueError, match="--reference"):
        te.TSDIArgs(references=("rlhf",))
    with pytest.raises(ValueError, match="--prompts"):
        te.TSDIArgs(prompts=0)


def test_sampler_with_the_processor_compiles_once_and_debiases_only_the_first_positions():
    from jaxsafe.llm import generate

    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8, d_model=32, n_layers=1, d_ff=64)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    prompts = jnp.asarray(lang.prompt_tokens())
    mask = jnp.ones(prompts.shape, bool)
    sampling = generate.SamplingConfig(3, temperature=0.0)  # greedy: the argmax shows what the logits became
    processor = tsdi.debiased_processor(lang.response_processor)
    plain = generate.generate(graphdef, params, prompts, mask, jax.random.PRNGKey(1), sampling,
                              lang.response_processor)
    refuse_first = jnp.zeros((1, lang.VOCAB_SIZE)).at[0, lang.TOKEN_ID["REFUSE"]].set(-100.0)  # b: subtract -100
    before = generate._generate_jit._cache_size()
    outputs = [generate.generate(graphdef, params, prompts, mask, jax.random.PRNGKey(1), sampling, processor,
                                 processor_state=tsdi.TSDIState(refuse_first * scale, jnp.float32(1.0)))
               for scale in (0.0, 1.0)]
    assert generate._generate_jit._cache_size() == before + 1  # one compilation for both biases
    np.testing.assert_array_equal(outputs[0].sequences, plain.sequences)  # zero bias: the plain sampler
    first = np.asarray(outputs[1].response_tokens[:, 0])
    assert np.all(first == lang.TOKEN_ID["REFUSE"])  # position 1 forced by the bias
    with pytest.raises(ValueError, match="processor_state"):
        generate.generate(graphdef, params, prompts, mask, jax.random.PRNGKey(1), sampling,
                          processor_state=outputs[0])


def test_cli_on_a_sacpo_run_directory(tmp_path, capsys):
    from jaxsafe import cli

    run = tmp_path / "sacpo"
    assert cli.main(["train", "sacpo", "--problem", "safety_language", "--problem-set", "pairs=512",
                     "--problem-set", "sft_steps=30", "--set", "n_steps=10", "--set", "batch_size=64", "--chunks", "1",
                     "--quiet", "--out", str(run)]) == 0
    out = tmp_path / "debiased"
    assert cli.main(["align", "tsdi", str(run), "--positions", "1", "--prompts", "64", "--strength", "0", "1",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lane 0 alpha 1" in printed and (out / "bias-lane0.safetensors").exists()
    assert (out / "pareto.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # a new directory only
        cli.main(["align", "tsdi", str(run), "--out", str(out)])


def test_bias_that_does_not_fit_the_model_is_refused(reference):
    from jaxsafe.llm import generate

    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8, d_model=32, n_layers=1, d_ff=64)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    prompts = jnp.asarray(lang.prompt_tokens())
    mask = jnp.ones(prompts.shape, bool)
    with pytest.raises(ValueError, match="more than max_new_tokens=2"):
        tsdi.generate(graphdef, params, prompts, mask, jax.random.PRNGKey(0), generate.SamplingConfig(2),
                      tsdi.TSDIState(jnp.zeros((3, lang.VOCAB_SIZE)), jnp.float32(1.0)))
    with pytest.raises(ValueError, match="vocabulary has 14"):
        tsdi.generate(graphdef, params, prompts, mask, jax.random.PRNGKey(0), generate.SamplingConfig(3),
                      tsdi.TSDIState(jnp.zeros((1, 99)), jnp.float32(1.0)))
    bad = contexts()[:8].at[0, 1].set(99)
    with pytest.raises(ValueError, match="prompt pool"):
        tsdi.estimate_bias(reference, reference, bad, PROMPT_LENGTH, L, MASK)
