"""SACPO / P-SACPO against the exact oracle of the synthetic safety language, and the Safe-RLHF baseline.

One module-scoped fixture trains the stepwise pipeline for a two-point lambda grid (one
vmapped program) and one-shot DPO on the combined preference; the learning tests read
it. Exact identities (stepwise composition, log-prob merge, dual) need no training.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import cli
from jaxsafe.llm import generate as gen
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import sacpo
from jaxsafe.llm import safe_rlhf
from jaxsafe.llm.tasks import safety_language as lang

BETA = 0.5
LAMBDAS = (1.0, 2.0)  # lambda_bar = 2 for P-SACPO; q = 0.5 gives lambda = 1
THRESHOLD = 0.0  # E[g] >= 0: binds (step 1 and the reference are unsafe)
N_PAIRS = 16384

logprob_table = jax.jit(lang.response_logprob_table, static_argnums=0)
PROMPT_PROBS = lang.prompt_distribution()
R, G = (jnp.asarray(t) for t in lang.reward_tables())


def _pick(tree, index):
    return jax.tree.map(lambda x: x[index], tree)


@pytest.fixture(scope="module")
def policy():
    """A small random decoder (1 layer, width 32) as the reference policy: full support over responses."""
    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8, d_model=32, n_layers=1, d_ff=128)
    graphdef, params = model_lib.init_params(config, jax.random.key(0))
    return graphdef, params, logprob_table(graphdef, params)


@pytest.fixture(scope="module")
def trained(policy):
    graphdef, reference, reference_table = policy
    reward_pairs, ids = lang.preference_pairs(jax.random.key(1), reference_table, PROMPT_PROBS, N_PAIRS, "reward")
    safety_pairs, _ = lang.preference_pairs(jax.random.key(2), reference_table, PROMPT_PROBS, N_PAIRS, "safety")
    combined_pairs = sacpo.relabel_pairs(jax.random.key(3), ids["chosen_ids"], ids["rejected_ids"], ids["prompt_ids"],
                                         R + LAMBDAS[0] * G, lang.sequences)
    config = sacpo.SACPOConfig(n_steps=400, batch_size=128, learning_rate=3e-3)
    vocab_mask = lang.response_vocab_mask()
    grid = sacpo.run_grid(config, graphdef, reference, {"reward": reward_pairs, "safety": safety_pairs},
                          sacpo.stack_hparams([BETA] * len(LAMBDAS), LAMBDAS),
                          jax.random.split(jax.random.key(4), len(LAMBDAS)), vocab_mask)
    one_shot_config = sacpo.SACPOConfig(stages=("reward",), n_steps=400, batch_size=128, learning_rate=3e-3)
    one_shot = sacpo.run_single(one_shot_config, graphdef, reference, {"reward": combined_pairs},
                                sacpo.SACPOHparams(jnp.float32(BETA), jnp.zeros((0,))), jax.random.key(5), vocab_mask)
    return {
        "step1": logprob_table(graphdef, _pick(grid.stage_params[0], 0)),
        "step1_bar": logprob_table(graphdef, _pick(grid.stage_params[0], 1)),  # step 1 of the lambda_bar run
        "sacpo": [logprob_table(graphdef, _pick(grid.stage_params[1], i)) for i in range(len(LAMBDAS))],
        "one_shot": logprob_table(graphdef, one_shot.stage_params[0]),
        "params_step1": _pick(grid.stage_params[0], 1),  # the step-1 model of the lambda_bar run
        "params_bar": _pick(grid.stage_params[1], 1),
        "metrics": grid.metrics,
    }


def _target(reference_table, lagrange_multiplier):
    return lang.optimal_policy_logprobs(reference_table, R, G, BETA, lagrange_multiplier)


def _kl(p, q):
    return float(lang.kl_divergence(p, q, PROMPT_PROBS))


def _safety(table):
    return float(lang.expected_value(table, G, PROMPT_PROBS))


# ----------------------------------------------------------------------------- validation


def test_bad_config_and_hparams_raise(policy):
    with pytest.raises(ValueError, match="SACPOConfig.n_steps"):
        sacpo.SACPOConfig(n_steps=0)
    with pytest.raises(ValueError, match="SACPOConfig.learning_rate"):
        sacpo.SACPOConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="SACPOConfig.stages"):
        sacpo.SACPOConfig(stages=("reward", "reward"))
    with pytest.raises(ValueError, match="SACPOConfig.label_smoothing"):
        sacpo.SACPOConfig(label_smoothing=0.5)
    with pytest.raises(ValueError, match="lagrange_multipliers"):
        sacpo.stack_hparams([0.5, 0.5], [1.0, 0.0])
    with pytest.raises(ValueError, match="betas"):
        sacpo.stack_hparams([-0.5], [1.0])
    config = sacpo.SACPOConfig(stages=("reward", "safety", "honesty"))
    with pytest.raises(ValueError, match="one entry per constraint stage"):
        sacpo.validate_hparams(config, sacpo.stack_hparams([0.5], [1.0]))
    graphdef, params, _ = policy
    with pytest.raises(ValueError, match="no dataset for stage 'reward'"):
        sacpo.make_train(sacpo.SACPOConfig(), graphdef, params, {})
    with pytest.raises(ValueError, match="SafeRLHFConfig.samples_per_prompt"):
        safe_rlhf.SafeRLHFConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match="SafeRLHFConfig.multiplier"):
        safe_rlhf.SafeRLHFConfig(multiplier="adam")
    # stage coefficients: beta for the reward, beta / lambda_i for constraint i, in stage order
    coefficients = config.stage_coefficients(sacpo.SACPOHparams(jnp.float32(0.5), jnp.array([2.0, 4.0])))
    np.testing.assert_allclose(coefficients, [0.5, 0.25, 0.125])


def test_cli_rejects_bad_arguments_before_compiling(capsys):
    parser = argparse.ArgumentParser(prog="jaxsafe")
    cli.add_subparser(parser.add_subparsers(dest="command", required=True))
    for bad, field in ((["--beta", "-1"], "--beta"), (["--lambdas", "1", "0"], "--lambdas"),
                       (["--pairs", "64", "--batch-size", "128"], "--batch-size"), (["--steps", "0"], "--steps")):
        namespace = parser.parse_args(["align", "sacpo", "--out", "unused", *bad])
        with pytest.raises(SystemExit) as exit_info:
            namespace.func(namespace)
        assert exit_info.value.code == 2 and field in capsys.readouterr().err
    quick = cli.args_from_namespace(parser.parse_args(["align", "sacpo", "--quick", "--steps", "7"]))
    assert quick.steps == 7 and quick.pairs == cli.QUICK["pairs"]


# ----------------------------------------------------------------------------- exact identities


def test_stepwise_composition_is_the_constrained_optimum_exactly(policy):
    _, _, reference_table = policy
    for lagrange_multiplier in (0.5, 2.0):
        target = _target(reference_table, lagrange_multiplier)
        coefficient = BETA / lagrange_multiplier
        forward = sacpo.stepwise_target_logprobs(reference_table, [R, G], [BETA, coefficient])
        reverse = sacpo.stepwise_target_logprobs(reference_table, [G, R], [coefficient, BETA])
        np.testing.assert_allclose(forward, target, atol=2e-5)
        np.testing.assert_allclose(reverse, target, atol=2e-5)
    # two constraints in sequence (g split into its negative and positive parts) = one combined constraint
    g_harm, g_refuse = jnp.minimum(G, 0.0), jnp.maximum(G, 0.0)
    two = sacpo.stepwise_target_logprobs(reference_table, [R, g_harm, g_refuse], [BETA, BETA / 1.0, BETA / 3.0])
    combined = lang.optimal_policy_logprobs(reference_table, R, g_harm + 3.0 * g_refuse, BETA, 1.0)
    np.testing.assert_allclose(two, combined, atol=2e-5)
    # and the identity is not vacuous: the wrong coefficient gives a different policy
    wrong = sacpo.stepwise_target_logprobs(reference_table, [R, G], [BETA, BETA])
    assert _kl(wrong, _target(reference_table, 2.0)) > 0.1


def test_logprob_merge_is_exact_optimum_at_q_lambda_bar(policy):
    _, _, reference_table = policy
    lambda_bar = 4.0
    endpoint_reward, endpoint_bar = _target(reference_table, 0.0), _target(reference_table, lambda_bar)
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        merged = sacpo.sequence_logprob_merge(endpoint_reward, endpoint_bar, q)
        np.testing.assert_allclose(merged, _target(reference_table, q * lambda_bar), atol=2e-5)
    # the arithmetic (probability) mixture is not the optimum
    arithmetic = jnp.logaddexp(jnp.log(0.5) + endpoint_reward, jnp.log(0.5) + endpoint_bar)
    assert _kl(arithmetic, _target(reference_table, 0.5 * lambda_bar)) > 0.05


def test_dual_minimiser_meets_the_threshold(policy):
    _, _, reference_table = policy
    lagrange_multiplier = float(sacpo.minimize_dual(reference_table, R, G, PROMPT_PROBS, BETA, THRESHOLD))
    assert 0.5 < lagrange_multiplier < 2.0
    # complementary slackness: the constraint is active at lambda*
    assert abs(_safety(_target(reference_table, lagrange_multiplier)) - THRESHOLD) < 1e-3
    dual = lambda lam: float(sacpo.dual_objective(lam, reference_table, R, G, PROMPT_PROBS, BETA, THRESHOLD))
    assert all(dual(lagrange_multiplier) <= dual(lam) + 1e-6 for lam in (0.0, 0.5, 1.0, 1.5, 3.0))
    # an easy threshold is met without the constraint: lambda* = 0
    assert float(sacpo.minimize_dual(reference_table, R, G, PROMPT_PROBS, BETA, -5.0)) == 0.0
    # Monte-Carlo dual (256 reference samples per prompt) lands near the exact multiplier
    samples = jax.random.categorical(jax.random.key(9), reference_table[:, None, :], axis=-1,
                                     shape=(reference_table.shape[0], 256))
    rows = jnp.arange(reference_table.shape[0])[:, None]
    estimate = float(sacpo.minimize_dual(jnp.full(samples.shape, -jnp.log(256.0)), R[rows, samples],
                                         G[rows, samples], PROMPT_PROBS, BETA, THRESHOLD))
    assert abs(estimate - lagrange_multiplier) < 0.3 * lagrange_multiplier


def test_select_feasible_hand_values():
    assert sacpo.select_feasible([1.0, 0.8, 0.5], [-0.5, 0.1, 0.4], 0.0) == (1, True)
    assert sacpo.select_feasible([1.0, 0.8], [-0.5, -0.1], 0.0) == (1, False)
    with pytest.raises(ValueError, match="expected_rewards"):
        sacpo.select_feasible([1.0], [0.0, 1.0], 0.0)


# ----------------------------------------------------------------------------- learned pipeline


def test_sacpo_reaches_the_exact_constrained_optimum(policy, trained):
    _, _, reference_table = policy
    kl_step1 = _kl(trained["step1"], _target(reference_table, 0.0))
    assert kl_step1 < 0.15 * _kl(reference_table, _target(reference_table, 0.0)), kl_step1
    for lagrange_multiplier, table in zip(LAMBDAS, trained["sacpo"]):
        target = _target(reference_table, lagrange_multiplier)
        kl_sacpo = _kl(table, target)
        assert kl_sacpo < 0.15 * _kl(reference_table, target), (lagrange_multiplier, kl_sacpo)
        assert kl_sacpo < 0.1 * _kl(trained["step1"], target), (lagrange_multiplier, kl_sacpo)
    # step-2 metrics exist per grid point and the safety DPO loss went down
    loss = np.asarray(trained["metrics"]["safety/loss"])
    assert loss.shape == (len(LAMBDAS), 400) and (loss[:, -40:].mean(1) < loss[:, :40].mean(1)).all()


def test_one_shot_dpo_on_combined_preference_reaches_the_same_target(policy, trained):
    _, _, reference_table = policy
    target = _target(reference_table, LAMBDAS[0])
    kl_one_shot = _kl(trained["one_shot"], target)
    assert kl_one_shot < 0.15 * _kl(reference_table, target), kl_one_shot
    # one-shot and stepwise agree with each other about as well as each agrees with the target
    assert _kl(trained["one_shot"], trained["sacpo"][0]) < 0.15 * _kl(reference_table, target)


def test_sacpo_meets_the_threshold_while_step1_does_not(trained):
    assert _safety(trained["step1"]) < THRESHOLD - 0.5
    assert _safety(trained["sacpo"][1]) > THRESHOLD  # lambda = 2
    rewards = [float(lang.expected_value(t, R, PROMPT_PROBS)) for t in trained["sacpo"]]
    safeties = [_safety(t) for t in trained["sacpo"]]
    selection = sacpo.select_feasible(rewards, safeties, THRESHOLD)
    assert selection.feasible and safeties[selection.index] >= THRESHOLD


def test_learned_merges_track_the_optimum_at_q_lambda_bar(policy, trained):
    graphdef, _, reference_table = policy
    q, lambda_bar = 0.5, LAMBDAS[1]
    gaps = sacpo.merge_gaps(graphdef, trained["params_step1"], trained["params_bar"], [q],
                            lambda q_: _target(reference_table, q_ * lambda_bar), logprob_table, PROMPT_PROBS)
    target = gaps.targets[0]
    scale = _kl(reference_table, target)
    assert float(gaps.sequence_logprob_merge[0]) < 0.15 * scale, gaps
    # the token-level logit mixture (deployable) is close too; the weight merge lands between the endpoints
    endpoint_gap = min(_kl(trained["step1_bar"], target), _kl(trained["sacpo"][1], target))
    assert float(gaps.token_logit_merge[0]) < 0.5 * endpoint_gap, (gaps, endpoint_gap)
    assert float(gaps.weight_merge[0]) < endpoint_gap, (gaps, endpoint_gap)


def test_kto_stages_move_towards_helpfulness_then_safety(policy):
    graphdef, reference, reference_table = policy
    reward_pairs, _ = lang.preference_pairs(jax.random.key(6), reference_table, PROMPT_PROBS, 2048, "reward")
    prompt_ids, response_ids = lang.sample_pairs(jax.random.key(7), reference_table, PROMPT_PROBS, 4096)
    sequences = lang.sequences(prompt_ids, response_ids)
    safe = G[prompt_ids, response_ids] >= 0  # each response labelled by its own safety flag (SACPO repo)
    datasets = {
        "reward": sacpo.unpaired_from_pairs(reward_pairs, jax.random.key(8)),
        "safety": sacpo.unpaired_batch(sequences.tokens, sequences.attention_mask, sequences.response_mask, safe,
                                       jax.random.key(9)),
    }
    kl_tokens = np.asarray(datasets["safety"].kl_tokens)
    np.testing.assert_array_equal(kl_tokens[:, :2], np.asarray(sequences.tokens)[:, :2])  # own prompt kept
    assert (kl_tokens[:, 2:] != np.asarray(sequences.tokens)[:, 2:]).any(axis=1).mean() > 0.5  # other completion
    config = sacpo.SACPOConfig(n_steps=80, batch_size=64, learning_rate=3e-3)
    hparams = sacpo.SACPOHparams(jnp.float32(BETA), jnp.array([2.0]))
    result = sacpo.run_single(config, graphdef, reference, datasets, hparams, jax.random.key(10),
                              lang.response_vocab_mask())
    step1 = logprob_table(graphdef, result.stage_params[0])
    step2 = logprob_table(graphdef, result.stage_params[1])
    reward = lambda table: float(lang.expected_value(table, R, PROMPT_PROBS))
    assert reward(step1) > reward(reference_table) + 0.3
    assert _safety(step2) > _safety(step1) + 0.5
    assert "safety/kl" in result.metrics and result.metrics["safety/loss"].shape == (80,)


def test_safe_rlhf_multiplier_trades_helpfulness_for_safety(policy):
    graphdef, reference, reference_table = policy
    reward_pairs, _ = lang.preference_pairs(jax.random.key(11), reference_table, PROMPT_PROBS, 4096, "reward")
    safety_pairs, ids = lang.preference_pairs(jax.random.key(12), reference_table, PROMPT_PROBS, 4096, "safety")
    cost_pairs = safe_rlhf.CostPairs(safety_pairs, G[ids["prompt_ids"], ids["chosen_ids"]] >= 0,
                                     G[ids["prompt_ids"], ids["rejected_ids"]] >= 0)
    config = safe_rlhf.SafeRLHFConfig(n_iterations=20, prompts_per_iteration=16, samples_per_prompt=4, ppo_epochs=2,
                                      learning_rate=5e-3, score_steps=80, score_batch_size=64)
    models = safe_rlhf.train_score_models(config, graphdef, reference, reward_pairs, cost_pairs, jax.random.key(13))
    assert float(models.metrics["reward_model/accuracy"][-30:].mean()) > 0.6
    assert float(models.metrics["cost_model/sign_accuracy"][-30:].mean()) > 0.8
    inputs = safe_rlhf.PolicyInputs(reference, models.reward_params, models.cost_params,
                                    jnp.asarray(lang.prompt_tokens()), PROMPT_PROBS, lang.response_vocab_mask())
    sampling = gen.SamplingConfig(lang.MAX_RESPONSE_LENGTH, stop_tokens=(lang.EOS,), pad_token=lang.PAD)
    # a limit no policy violates (multiplier stays 0) against a tight one
    hparams = safe_rlhf.stack_hparams(config, cost_limit=[100.0, -3.0], multiplier_lr=[0.2, 0.2])
    params, metrics = safe_rlhf.run_grid(config, graphdef, models, sampling, lang.response_processor, inputs,
                                         hparams, jax.random.split(jax.random.key(14), 2))
    free, constrained = (logprob_table(graphdef, _pick(params, i)) for i in range(2))
    reward = lambda table: float(lang.expected_value(table, R, PROMPT_PROBS))
    assert float(np.asarray(metrics["multiplier"])[0].max()) == 0.0
    assert float(np.asarray(metrics["multiplier"])[1, -1]) > 0.0
    assert reward(free) > reward(reference_table) + 0.3
    assert _safety(constrained) > _safety(free) + 0.5
