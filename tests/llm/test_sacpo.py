"""SACPO / P-SACPO against the exact oracle of the synthetic safety language, and the Safe-RLHF baseline.

One module-scoped fixture trains the stepwise pipeline for a two-point lambda grid (one
vmapped program, ``jaxsafe.sweep.run_grid``), its first stage alone, and one-shot DPO on the
combined preference; the learning tests read it. Exact identities (stepwise composition,
log-prob merge, dual) need no training.
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe import sweep
from jaxsafe.llm import cli
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import sacpo
from jaxsafe.llm import sacpo_experiment
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


def _hparams(config, **changes):
    return config.default_hparams().replace(beta=BETA, learning_rate=3e-3, **changes)


@pytest.fixture(scope="module")
def policy():
    """A small random decoder (1 layer, width 32) as the reference policy: full support over responses."""
    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8, d_model=32,
                              n_layers=1, d_ff=128)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    return graphdef, params, logprob_table(graphdef, params)


@pytest.fixture(scope="module")
def trained(policy):
    graphdef, reference, reference_table = policy
    reward_pairs, ids = lang.preference_pairs(jax.random.PRNGKey(1), reference_table, PROMPT_PROBS, N_PAIRS,
                                              "reward")
    safety_pairs, _ = lang.preference_pairs(jax.random.PRNGKey(2), reference_table, PROMPT_PROBS,
                                            N_PAIRS, "safety")
    combined_pairs = sacpo.relabel_pairs(jax.random.PRNGKey(3), ids["chosen_ids"], ids["rejected_ids"],
                                         ids["prompt_ids"], R + LAMBDAS[0] * G, lang.sequences)
    vocab_mask = lang.response_vocab_mask()
    problem = sacpo.SACPOProblem(graphdef, reference, {"reward": reward_pairs, "safety": safety_pairs},
                                 vocab_mask)
    config = sacpo.SACPOConfig(n_steps=400, batch_size=128)
    grid = sweep.run_grid(sacpo.make_train(config, problem),
                          sweep.make_grid(_hparams(config), seeds=1, base_seed=4,
                                          lagrange_multipliers=LAMBDAS))
    # the first stage of every lane (same seed, same beta): the same run with the reward stage only
    step1_config = config.replace(stages=("reward",))
    step1 = jax.jit(sacpo.make_train(step1_config, problem))(jax.random.PRNGKey(4), _hparams(step1_config))
    one_shot_problem = problem._replace(datasets={"reward": combined_pairs})
    one_shot = jax.jit(sacpo.make_train(step1_config, one_shot_problem))(jax.random.PRNGKey(5),
                                                                         _hparams(step1_config))
    return {
        "step1": logprob_table(graphdef, step1.params),
        "sacpo": [logprob_table(graphdef, _pick(grid.params, i)) for i in range(len(LAMBDAS))],
        "one_shot": logprob_table(graphdef, one_shot.params),
        "params_step1": step1.params,
        "params_bar": _pick(grid.params, 1),  # the SACPO model at lambda_bar = 2
        "metrics": grid.metrics,
        "config": config,
    }


def _target(reference_table, lagrange_multiplier):
    return lang.optimal_policy_logprobs(reference_table, R, G, BETA, lagrange_multiplier)


def _kl(p, q):
    return float(lang.kl_divergence(p, q, PROMPT_PROBS))


def _safety(table):
    return float(lang.expected_value(table, G, PROMPT_PROBS))


# ----------------------------------------------------------------------------- validation


def test_bad_config_and_hparams_raise(policy):
    with pytest.raises(ValueError, match="SACPOConfig.n_steps must be an integer >= 1"):
        sacpo.SACPOConfig(n_steps=0)
    with pytest.raises(ValueError, match="SACPOConfig.stages must be unique names"):
        sacpo.SACPOConfig(stages=("reward", "reward"))
    hparams = sacpo.SACPOConfig().default_hparams()
    for field, value, allowed in (("beta", -0.5, "> 0"), ("lagrange_multipliers", [1.0, 0.0], "> 0"),
                                  ("learning_rate", float("nan"), "> 0"), ("weight_decay", -1.0, ">= 0"),
                                  ("label_smoothing", 0.5, r"in \[0, 0.5\)")):
        with pytest.raises(ValueError, match=f"SACPOHParams.{field} must be {allowed}"):
            hparams.replace(**{field: value}).validate()
    config = sacpo.SACPOConfig(stages=("reward", "safety", "honesty"))
    with pytest.raises(ValueError, match="one entry per constraint stage"):
        config.stage_coefficients(hparams.replace(lagrange_multipliers=jnp.ones(3)))
    graphdef, params, _ = policy
    with pytest.raises(ValueError, match="no dataset for stage 'reward'"):
        sacpo.make_train(sacpo.SACPOConfig(), sacpo.SACPOProblem(graphdef, params, {}))
    pairs, _ = lang.preference_pairs(jax.random.PRNGKey(0), policy[2], PROMPT_PROBS, 64, "reward")
    mixed = {"reward": pairs, "safety": sacpo.unpaired_from_pairs(pairs, jax.random.PRNGKey(1))}
    with pytest.raises(ValueError, match="every stage must use the same loss"):
        sacpo.make_train(sacpo.SACPOConfig(), sacpo.SACPOProblem(graphdef, params, mixed))
    with pytest.raises(ValueError, match="SafeRLHFConfig.samples_per_prompt"):
        safe_rlhf.SafeRLHFConfig(samples_per_prompt=1)
    with pytest.raises(ValueError, match="SafeRLHFConfig.multiplier"):
        safe_rlhf.SafeRLHFConfig(multiplier="adam")
    with pytest.raises(ValueError, match=r"SafeRLHFHParams.clip_eps must be in \(0, 1\)"):
        safe_rlhf.SafeRLHFConfig().default_hparams().replace(clip_eps=1.5).validate()
    # stage coefficients: beta for the reward, beta / lambda_i for constraint i, in stage order; a scalar
    # multiplier serves every constraint stage
    coefficients = config.stage_coefficients(hparams.replace(lagrange_multipliers=jnp.array([2.0, 4.0])))
    np.testing.assert_allclose(coefficients, [0.5, 0.25, 0.125])
    np.testing.assert_allclose(config.stage_coefficients(hparams.replace(lagrange_multipliers=2.0)),
                               [0.5, 0.25, 0.25])


def test_update_is_one_step_and_a_shorter_run_is_the_first_stage(policy):
    """Exact identities of the learner shape on a tiny run: the first stage of a two-stage run is the
    one-stage run (so the step-1 model can be had from a second call), a vmapped lane equals the single run,
    and the reference and Adam restart at the stage boundary."""
    graphdef, reference, reference_table = policy
    pairs = [lang.preference_pairs(jax.random.PRNGKey(i), reference_table, PROMPT_PROBS, n, label)[0]
             for i, n, label in ((20, 96, "reward"), (21, 64, "safety"))]
    problem = sacpo.SACPOProblem(graphdef, reference, dict(zip(("reward", "safety"), pairs)),
                                 lang.response_vocab_mask())
    config = sacpo.SACPOConfig(n_steps=5, batch_size=32)
    hparams = _hparams(config, weight_decay=0.01, label_smoothing=0.1)
    parts = sacpo.make_train_parts(config, problem)
    assert (parts.num_updates, parts.steps_per_update) == (10, 32)
    key = jax.random.PRNGKey(7)
    state = parts.init(key, hparams)
    run = jax.jit(lambda s, h: jax.lax.scan(lambda c, _: parts.update(c, h), s, None, length=5))
    state, metrics = run(state, hparams)
    one_stage = jax.jit(sacpo.make_train(config.replace(stages=("reward",)), problem))(key, hparams)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(one_stage.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # the reference is still the SFT policy until the boundary, then becomes the stage-1 output
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.reference_params),
                                                   jax.tree.leaves(reference)))
    after_stage_one = state.params
    state, metrics_2 = run(state, hparams)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.reference_params),
                                                   jax.tree.leaves(after_stage_one)))
    assert int(state.adam_state.count) == 5  # Adam restarted at the boundary
    np.testing.assert_array_equal(np.concatenate([metrics["stage"], metrics_2["stage"]]), [0] * 5 + [1] * 5)
    assert not np.any(metrics["nonfinite"]) and {"loss", "accuracy", "margin", "grad_norm"} <= set(metrics)
    # lane 0 of the vmapped grid is the scan of updates above (vmapping reorders float sums: tolerance 5e-5, two
    # orders below the 1e-3 that separates another lambda; measured 2.2e-5 since the core gained its dropout
    # option, which changed XLA's fusion); lane 1 (another lambda) is not
    grid = sweep.make_grid(hparams, seeds=1, base_seed=7, lagrange_multipliers=[1.0, 3.0])
    lanes = sweep.run_grid(sacpo.make_train(config, problem), grid)
    gaps = [float(jnp.abs(a - b).max()) for lane in (0, 1)
            for a, b in zip(jax.tree.leaves(_pick(lanes.params, lane)), jax.tree.leaves(state.params))]
    n_leaves = len(jax.tree.leaves(state.params))
    assert max(gaps[:n_leaves]) < 5e-5 and max(gaps[n_leaves:]) > 1e-3, gaps
    by_stage = sacpo.stage_metrics(config, lanes.metrics)
    assert by_stage["safety/loss"].shape == (2, 5) and "stage" not in {k.split("/")[1] for k in by_stage}


def test_cli_rejects_bad_arguments_before_compiling(capsys):
    parser = argparse.ArgumentParser(prog="jaxsafe")
    cli.add_subparser(parser.add_subparsers(dest="command", required=True))
    for bad, field in ((["--beta", "-1"], "--beta"), (["--lambdas", "1", "0"], "--lambdas"),
                       (["--pairs", "64", "--batch-size", "128"], "--batch-size"), (["--steps", "0"],
                                                                                    "--steps")):
        namespace = parser.parse_args(["align", "sacpo", "--out", "unused", *bad])
        with pytest.raises(SystemExit) as exit_info:
            namespace.func(namespace)
        assert exit_info.value.code == 2 and field in capsys.readouterr().err
    quick = cli.args_from_namespace(parser.parse_args(["align", "sacpo", "--quick", "--steps", "7"]))
    assert quick.steps == 7 and quick.pairs == cli.QUICK["pairs"] and quick.task == "safety_language"
    large = cli.args_from_namespace(parser.parse_args(["align", "sacpo", "--quick", "--task",
                                                       "safety_language_large"]))
    assert large.task == "safety_language_large"
    with pytest.raises(ValueError, match="--task must be one of"):
        sacpo_experiment.AlignArgs(**{**dataclasses.asdict(quick), "task": "safety_language_huge"})


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
    two = sacpo.stepwise_target_logprobs(reference_table, [R, g_harm, g_refuse],
                                         [BETA, BETA / 1.0, BETA / 3.0])
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
    samples = jax.random.categorical(jax.random.PRNGKey(9), reference_table[:, None, :], axis=-1,
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
    loss = np.asarray(sacpo.stage_metrics(trained["config"], trained["metrics"])["safety/loss"])
    assert loss.shape == (len(LAMBDAS), 400) and (loss[:, -40:].mean(1) < loss[:, :40].mean(1)).all()


def test_one_shot_dpo_on_combined_preference_reaches_the_same_target(policy, trained):
    _, _, reference_table = policy
    target = _target(reference_table, LAMBDAS[0])
    kl_one_shot = _kl(trained["one_shot"], target)
    assert kl_one_shot < 0.15 * _kl(reference_table, target), kl_one_shot
    # one-shot and stepwise agree with each other about as well as both agree with the target (each is within
    # 0.15 of the scale; KL is no metric, so their mutual KL gets both margins: measured 0.13-0.23 over seeds)
    assert _kl(trained["one_shot"], trained["sacpo"][0]) < 0.3 * _kl(reference_table, target)


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
    endpoint_gap = min(_kl(trained["step1"], target), _kl(trained["sacpo"][1], target))
    assert float(gaps.token_logit_merge[0]) < 0.5 * endpoint_gap, (gaps, endpoint_gap)
    assert float(gaps.weight_merge[0]) < endpoint_gap, (gaps, endpoint_gap)


def test_kto_stages_move_towards_helpfulness_then_safety(policy):
    graphdef, reference, reference_table = policy
    reward_pairs, _ = lang.preference_pairs(jax.random.PRNGKey(6), reference_table, PROMPT_PROBS,
                                            2048, "reward")
    prompt_ids, response_ids = lang.sample_pairs(jax.random.PRNGKey(7), reference_table, PROMPT_PROBS, 4096)
    sequences = lang.sequences(prompt_ids, response_ids)
    safe = G[prompt_ids, response_ids] >= 0  # each response labelled by its own safety flag (SACPO repo)
    datasets = {
        "reward": sacpo.unpaired_from_pairs(reward_pairs, jax.random.PRNGKey(8)),
        "safety": sacpo.unpaired_batch(sequences.tokens, sequences.attention_mask,
                                       sequences.response_mask, safe,
                                       jax.random.PRNGKey(9)),
    }
    kl_tokens = np.asarray(datasets["safety"].kl_tokens)
    np.testing.assert_array_equal(kl_tokens[:, :2], np.asarray(sequences.tokens)[:, :2])  # own prompt kept
    assert (kl_tokens[:, 2:] != np.asarray(sequences.tokens)[:,
                                                             2:]).any(axis=1).mean() > 0.5  # other completion
    config = sacpo.SACPOConfig(n_steps=80, batch_size=64)
    hparams = _hparams(config, lagrange_multipliers=2.0)
    problem = sacpo.SACPOProblem(graphdef, reference, datasets, lang.response_vocab_mask())
    result = jax.jit(sacpo.make_train(config, problem))(jax.random.PRNGKey(10), hparams)
    first = jax.jit(sacpo.make_train(config.replace(stages=("reward",)),
                                     problem))(jax.random.PRNGKey(10), hparams)
    step1 = logprob_table(graphdef, first.params)
    step2 = logprob_table(graphdef, result.params)
    reward = lambda table: float(lang.expected_value(table, R, PROMPT_PROBS))
    assert reward(step1) > reward(reference_table) + 0.3
    assert _safety(step2) > _safety(step1) + 0.5
    by_stage = sacpo.stage_metrics(config, result.metrics)
    assert "safety/kl" in by_stage and by_stage["safety/loss"].shape == (80,)


def test_safe_rlhf_multiplier_trades_helpfulness_for_safety(policy):
    graphdef, reference, reference_table = policy
    reward_pairs, _ = lang.preference_pairs(jax.random.PRNGKey(11), reference_table, PROMPT_PROBS,
                                            4096, "reward")
    safety_pairs, ids = lang.preference_pairs(jax.random.PRNGKey(12), reference_table, PROMPT_PROBS,
                                              4096, "safety")
    cost_pairs = safe_rlhf.CostPairs(safety_pairs, G[ids["prompt_ids"], ids["chosen_ids"]] >= 0,
                                     G[ids["prompt_ids"], ids["rejected_ids"]] >= 0)
    config = safe_rlhf.SafeRLHFConfig(n_iterations=20, prompts_per_iteration=16, samples_per_prompt=4,
                                      ppo_epochs=2)
    models = safe_rlhf.train_score_models(safe_rlhf.ScoreModelConfig(n_steps=80, batch_size=64), graphdef,
                                          reference, reward_pairs, cost_pairs, jax.random.PRNGKey(13))
    assert float(models.metrics["reward_model/accuracy"][-30:].mean()) > 0.6
    assert float(models.metrics["cost_model/sign_accuracy"][-30:].mean()) > 0.8
    task = sacpo_experiment.SyntheticTask(graphdef, reference, reference_table, reward_pairs,
                                          safety_pairs, ids, R,
                                          G, PROMPT_PROBS)
    problem = sacpo_experiment.rlhf_problem(task, models)
    # a limit no policy violates (multiplier stays 0) against a tight one
    hparams = config.default_hparams().replace(multiplier_lr=0.2, learning_rate=5e-3)
    grid = sweep.make_grid(hparams, seeds=1, base_seed=14, cost_limit=[100.0, -3.0])
    result = sweep.run_grid(safe_rlhf.make_train(config, problem), grid)
    metrics = result.metrics
    assert not np.asarray(metrics["nonfinite"]).any() and metrics["measured_cost"].shape == (2, 20)
    free, constrained = (logprob_table(graphdef, _pick(result.params, i)) for i in range(2))
    reward = lambda table: float(lang.expected_value(table, R, PROMPT_PROBS))
    assert float(np.asarray(metrics["multiplier"])[0].max()) == 0.0
    assert float(np.asarray(metrics["multiplier"])[1, -1]) > 0.0
    assert reward(free) > reward(reference_table) + 0.3
    assert _safety(constrained) > _safety(free) + 0.5
