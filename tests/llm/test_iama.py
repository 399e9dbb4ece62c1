"""IAMA: transforms, functional derivatives and the exact tabular layer against enumeration, finite differences,
closed forms (Proposition 3.1) and Theorem 5.2's rate."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import iama

BON4_SUM = iama.Objective.parse("bon:4", weights=(0.5, 0.5))


def conflicting_problem(size: int, seed: int = 0):
    """Rewards [K, 2] with r_2 = 1 - r_1 (a tie included) and a random full-support reference (log, [K])."""
    rng = np.random.default_rng(seed)
    r1 = rng.uniform(size=size)
    r1[1] = r1[0]
    return np.stack([r1, 1.0 - r1], axis=1), np.log(rng.dirichlet(np.ones(size)))


def brute_force_bon(probs, rewards, n):
    """The best-of-n law by enumerating every n-tuple of draws (uniform tie-breaking among the top draws)."""
    law = np.zeros(len(probs))
    for draw in itertools.product(range(len(probs)), repeat=n):
        weight = np.prod([probs[i] for i in draw])
        best = max(rewards[i] for i in draw)
        top = [i for i in draw if rewards[i] == best]
        for i in top:
            law[i] += weight / len(top)
    return law


# ----------------------------------------------------------------------------- transforms and values


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bon_law_and_value_match_enumeration_with_ties(n):
    rewards = np.array([0.3, 0.1, 0.3, 0.9, 0.5], np.float32)
    probs = np.array([0.1, 0.2, 0.3, 0.25, 0.15], np.float32)
    law = iama.bon_distribution(jnp.asarray(probs), jnp.asarray(rewards), n)
    np.testing.assert_allclose(law, brute_force_bon(probs, rewards, n), atol=1e-6)
    np.testing.assert_allclose(iama.bon_value(rewards, n, probs), law @ rewards, atol=1e-6)


def test_monte_carlo_values_match_exact():
    rewards = jnp.array([0.3, 0.1, 0.3, 0.9, 0.5])
    probs = jnp.array([0.1, 0.2, 0.3, 0.25, 0.15])
    draws = jax.random.categorical(jax.random.PRNGKey(0), jnp.log(probs), shape=(40_000, 4))
    assert abs(float(iama.bon_value_mc(rewards[draws])) - float(iama.bon_value(rewards, 4, probs))) < 6e-3
    assert abs(float(iama.tilted_value_mc(rewards[draws[:, 0]], 0.2))
               - float(iama.tilted_value(rewards, 0.2, probs))) < 8e-3
    tilted = iama.tilted_distribution(probs, rewards, 0.2)
    np.testing.assert_allclose(tilted @ rewards, iama.tilted_value(rewards, 0.2, probs), rtol=1e-6)
    # Best-of-N at inference picks the largest reward; soft best-of-N draws by softmax(r / tau).
    np.testing.assert_array_equal(iama.select_best_of_n(rewards[draws]), jnp.argmax(rewards[draws], axis=1))
    picks = iama.select_soft_best_of_n(jax.random.PRNGKey(1), jnp.tile(rewards, (40_000, 1)), 0.2)
    np.testing.assert_allclose(np.bincount(np.asarray(picks), minlength=5) / 40_000,
                               jax.nn.softmax(rewards / 0.2), atol=6e-3)


# ----------------------------------------------------------------------------- functional derivatives


@pytest.mark.parametrize("transform", ["bon:1", "bon:2", "bon:4", "soft:0.2", "plain"])
def test_derivative_is_the_first_variation(transform):
    """Finite differences of the exact value along pi + eps (delta_y - pi) equal d(y) - E_pi d (float64)."""
    rewards, log_probs = conflicting_problem(8, seed=3)
    rewards, probs = rewards[:, 0], np.exp(log_probs)
    transform = iama.Transform.parse(transform)
    eps = 1e-5
    with jax.enable_x64(True):
        r, p = jnp.asarray(rewards), jnp.asarray(probs)
        derivative = np.asarray(iama.transform_derivative(transform, r, p))
        moves = jnp.eye(len(probs)) - p
        finite = np.array([(iama.transform_value(transform, r, p + eps * m) - iama.transform_value(transform, r, p - eps * m))
                           / (2 * eps) for m in moves])
    np.testing.assert_allclose(finite, derivative - probs @ derivative, atol=1e-8)
    if transform.kind == "bon":
        assert derivative[0] == derivative[1]  # the tie: one value per reward level
        assert derivative[np.argmax(rewards)] == 0.0


def test_n1_reduces_to_the_plain_reward():
    rewards = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 2))
    np.testing.assert_allclose(iama.bon_derivative(rewards[0, :, 0], 1), rewards[0, :, 0] - rewards[0, :, 0].max(),
                               atol=1e-6)
    shaped = iama.make_reward_transform(iama.Objective.parse("bon:1", weights=(0.3, 0.7)))(rewards)
    plain = rewards @ jnp.array([0.3, 0.7])

    def normalised(x):  # GRPO's group normalisation removes the per-criterion constants
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)

    np.testing.assert_allclose(normalised(shaped), normalised(plain), atol=1e-5)
    # Tabular: N = 1 iterates converge to the plain-reward optimum pi_ref exp(r_plain / beta).
    problem, log_reference = conflicting_problem(6)
    objective = iama.Objective.parse("bon:1", weights=(0.3, 0.7))
    final, _ = iama.proximal_iterate(objective, jnp.asarray(log_reference), jnp.asarray(problem),
                                     jnp.asarray(log_reference), 0.5, 10.0, 200)
    np.testing.assert_allclose(np.exp(final), np.exp(iama.standard_optimum(objective, problem, log_reference, 0.5)),
                               atol=1e-5)


@pytest.mark.parametrize("aggregate", ["sum", "min", "smooth_min"])
def test_chain_rule_matches_autodiff(aggregate):
    rewards, log_probs = conflicting_problem(7, seed=1)
    rewards = rewards * np.array([1.0, 0.8])  # no tie between the two criteria's values
    objective = iama.Objective.parse(["bon:4", "soft:0.3"], aggregate=aggregate, weights=(0.4, 0.6),
                                     temperature=2.0)
    probs = jnp.exp(jnp.asarray(log_probs, jnp.float32))
    rewards = jnp.asarray(rewards, jnp.float32)
    autodiff = jax.grad(lambda w: iama.objective_value(objective, rewards, w))(probs)
    np.testing.assert_allclose(iama.objective_derivative(objective, rewards, probs), autodiff, atol=1e-5)


def test_smooth_min_tends_to_min():
    values = jnp.array([0.2, 0.5, 0.9])
    sharp = iama.Objective.parse("bon:2", aggregate="smooth_min", weights=(0.2, 0.3, 0.5), temperature=500.0)
    assert abs(float(iama.aggregate_value(sharp, values)) - 0.2) < 5e-3
    np.testing.assert_allclose(iama.aggregate_gradient(sharp, values), [1.0, 0.0, 0.0], atol=1e-6)
    tie = iama.Objective.parse("bon:2", aggregate="min", weights=(0.5, 0.5))
    np.testing.assert_allclose(iama.aggregate_gradient(tie, jnp.array([0.3, 0.3])), [0.5, 0.5])


def test_reward_transform_is_the_per_prompt_derivative_of_the_empirical_law():
    """The vmapped transform equals one prompt at a time, and the M-sample derivative equals the exact tabular
    derivative at the empirical law (counts / M on the distinct responses)."""
    objective = iama.Objective.parse(["bon:4", "soft:0.1"], aggregate="smooth_min", temperature=3.0)
    rewards = jnp.round(jax.random.uniform(jax.random.PRNGKey(2), (5, 8, 2)), 1)  # ties within groups
    shaped = iama.make_reward_transform(objective)(rewards)
    single = jax.jit(lambda group: iama.objective_derivative(objective, group))
    loop = jnp.stack([single(rewards[i]) for i in range(5)])
    np.testing.assert_allclose(shaped, loop, atol=1e-6)
    responses = jnp.array([0, 1, 1, 2, 0, 3, 1, 2])  # M = 8 samples of a 4-response set
    table = jnp.array([[0.1, 0.9], [0.5, 0.5], [0.7, 0.2], [0.2, 0.6]])
    counts = jnp.zeros(4).at[responses].add(1.0)
    exact = iama.objective_derivative(objective, table, counts / 8)
    np.testing.assert_allclose(iama.objective_derivative(objective, table[responses]), exact[responses], atol=1e-6)


def test_derivative_error_shrinks_like_one_over_m():
    """The M-sample BoN derivative against finite differences of the exact value (span seminorm): the mean squared
    error and the bias both fall like 1/M (log-log slope near -1)."""
    rng = np.random.default_rng(1)
    size, n = 16, 4
    rewards = jnp.asarray(rng.uniform(size=size), jnp.float32)
    probs = jnp.asarray(rng.dirichlet(np.ones(size)), jnp.float32)
    with jax.enable_x64(True):
        r64, p64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (rewards, probs))
        eps = 1e-4
        value = jax.vmap(lambda w: iama.bon_value(r64, n, w))
        moves = jnp.eye(size) - p64
        finite = np.asarray((value(p64 + eps * moves) - value(p64 - eps * moves)) / (2 * eps))
    truth = jnp.asarray(finite, jnp.float32)

    @jax.jit
    def errors(samples):  # samples [R, M] response indices
        counts = jax.vmap(lambda s: jnp.zeros(size).at[s].add(1.0))(samples)
        estimates = jax.vmap(lambda c: iama.bon_derivative(rewards, n, c / samples.shape[1]))(counts) - truth
        spans = estimates.max(1) - estimates.min(1)
        bias = estimates.mean(0)
        return jnp.mean(spans ** 2), bias.max() - bias.min()

    sizes = [8, 16, 32, 64, 128]
    measured = np.array([errors(jax.random.categorical(jax.random.PRNGKey(m), jnp.log(probs), shape=(4000, m)))
                         for m in sizes])
    mse_slope = np.polyfit(np.log(sizes), np.log(measured[:, 0]), 1)[0]
    bias_slope = np.polyfit(np.log(sizes), np.log(measured[:, 1]), 1)[0]
    assert -1.2 < mse_slope < -0.85, mse_slope
    assert -1.3 < bias_slope < -0.75, bias_slope


# ----------------------------------------------------------------------------- the exact tabular layer


@pytest.mark.parametrize("n", [2, 4, 8])
def test_proposition_3_1_closed_form_is_the_tabular_optimum(n):
    """On the 400-bin grid, the closed form's bins satisfy first-order optimality exactly (the derivative is constant:
    concave objective, full support), they are uniform at N = 2, and the independent L-BFGS optimum agrees."""
    _, rewards = iama.proposition_3_1_problem(400)
    objective = iama.Objective.parse(f"bon:{n}", weights=(0.5, 0.5))
    closed = iama.proposition_3_1_bins(400, n)
    assert abs(closed.sum() - 1.0) < 1e-12
    with jax.enable_x64(True):
        derivative = np.asarray(iama.objective_derivative(objective, jnp.asarray(rewards), jnp.asarray(closed)))
    assert np.ptp(derivative) < 1e-12
    if n == 2:
        np.testing.assert_allclose(closed, np.full(400, 1 / 400), rtol=1e-12)
    if n == 4:  # one L-BFGS solve (about two seconds)
        optimum = np.exp(iama.solve_lbfgs(objective, rewards, np.full(400, -np.log(400)), 0.0))
        assert 0.5 * np.abs(optimum - closed).sum() < 1e-3


def test_proposition_3_1_density_integrates_to_the_bins():
    y = (np.arange(4000) + 0.5) / 4000
    midpoint = iama.proposition_3_1_density(y, 4).reshape(400, 10).mean(1) / 400
    # Midpoint rule inside; the two edge bins hold the integrable y^(alpha - 1) singularity.
    np.testing.assert_allclose(midpoint[1:-1], iama.proposition_3_1_bins(400, 4)[1:-1], rtol=2e-3)
    np.testing.assert_allclose(iama.proposition_3_1_density(y, 2), 1.0)


def test_proximal_iteration_meets_the_theorem_5_2_rate():
    rewards, log_reference = conflicting_problem(10)
    beta = 0.1
    smoothness = iama.relative_smoothness(BON4_SUM, rewards)
    assert smoothness == pytest.approx(0.5 * 4 * 3 / 4 * np.ptp(rewards[:, 0]) * 2)
    with jax.enable_x64(True):
        optimum = iama.solve_lbfgs(BON4_SUM, rewards, log_reference, beta)
        reference = jnp.asarray(log_reference)
        best = float(iama.tabular_objective(BON4_SUM, jnp.asarray(optimum), jnp.asarray(rewards), reference, beta))
        final, trace = iama.proximal_iterate(BON4_SUM, reference, jnp.asarray(rewards), reference, beta,
                                             1.0 / smoothness, 400)
        initial_kl = float(iama.kl_divergence(jnp.asarray(optimum), reference))
    gap = best - np.asarray(trace)
    bound = iama.theorem_5_2_bound(beta, smoothness, initial_kl, np.arange(1, 401))
    assert np.all(gap[1:] <= bound + 1e-12)
    assert gap[0] > 1e-2 and gap[-1] < 1e-12  # from far away to the L-BFGS optimum
    np.testing.assert_allclose(np.exp(final), np.exp(optimum), atol=1e-7)
    assert np.all(np.diff(trace) >= -1e-12)  # monotone ascent


@pytest.mark.parametrize("size", [6, 10, 16])
def test_plain_reward_gives_a_strictly_worse_objective(size):
    """Mutation test: iterating on the plain reward (standard alignment) ends strictly below the derivative's value."""
    rewards, log_reference = conflicting_problem(size, seed=size)
    beta, eta = 0.1, 1.0 / iama.relative_smoothness(BON4_SUM, rewards)
    reference = jnp.asarray(log_reference)
    _, iama_trace = iama.proximal_iterate(BON4_SUM, reference, jnp.asarray(rewards, jnp.float32), reference, beta,
                                          eta, 300)
    plain, plain_trace = iama.proximal_iterate(BON4_SUM, reference, jnp.asarray(rewards, jnp.float32), reference,
                                               beta, eta, 300, plain=True)
    np.testing.assert_allclose(np.exp(plain), np.exp(iama.standard_optimum(BON4_SUM, rewards, log_reference, beta)),
                               atol=1e-5)
    assert float(iama_trace[-1]) > float(plain_trace[-1]) + 1e-2


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, message", [
    ("bon:0", "bon:N.*integer >= 1"), ("bon:x", "bon:N.*integer"), ("soft:0", "soft:TAU.*> 0"),
    ("soft:-1", "soft:TAU.*> 0"), ("soft:nan", "soft:TAU.*> 0"), ("greedy:3", "bon:N, soft:TAU or plain"),
])
def test_bad_transforms_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        iama.Transform.parse(text)


def test_bad_objectives_are_named():
    with pytest.raises(ValueError, match="weights must be numbers that sum to one"):
        iama.Objective.parse("bon:4", weights=(0.5, 0.6))
    with pytest.raises(ValueError, match=r"aggregate must be one of \('sum', 'min', 'smooth_min'\)"):
        iama.Objective.parse("bon:4", aggregate="max", weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="weights must be 2 numbers"):
        iama.Objective.parse(["bon:4", "bon:4"], weights=(1.0,))
    with pytest.raises(ValueError, match="temperature.*> 0"):
        iama.Objective.parse("bon:4", aggregate="smooth_min", weights=(0.5, 0.5), temperature=0.0)
    transform = iama.make_reward_transform(BON4_SUM)
    with pytest.raises(ValueError, match="group size G.*>= 2, got 1"):
        transform(jnp.zeros((3, 1, 2)))
    with pytest.raises(ValueError, match="K = 3 criteria"):
        transform(jnp.zeros((3, 8, 3)))
    with pytest.raises(ValueError, match="N.*>= 2"):
        iama.proposition_3_1_bins(400, 1)
    with pytest.raises(ValueError, match="aggregate must be 'sum'"):
        iama.relative_smoothness(iama.Objective.parse("bon:4", aggregate="min", weights=(0.5, 0.5)), np.zeros((3, 2)))


# ----------------------------------------------------------------------------- the experiment and the command


def test_cli_tabular_run_writes_a_run_directory_and_refuses_to_reuse_it(tmp_path, capsys):
    import json

    from jaxsafe import cli

    out = tmp_path / "tabular"
    assert cli.main(["align", "iama", "--task", "tabular", "--transform", "bon:4", "--aggregate", "sum",
                     "--responses", "6", "--steps", "60", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    study = summary["studies"][0]
    assert study["iama_objective"] > study["standard_objective"] + 1e-2
    assert study["bound_holds"] and (out / "convergence.png").is_file() and (out / "metrics.jsonl").is_file()
    assert "IAMA" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit):
        cli.main(["align", "iama", "--task", "tabular", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("flags, message", [
    (["--transform", "bon:0"], "bon:N.*integer >= 1"), (["--transform", "soft:0"], "soft:TAU.*> 0"),
    (["--aggregate", "max"], "aggregate must be one of"), (["--weights", "0.5", "0.6"], "sum to one"),
    (["--task", "safety", "--transform", "bon:4", "bon:2"], "one transform for --task safety"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
])
def test_cli_bad_flags_are_named_before_any_work(tmp_path, capsys, flags, message):
    from jaxsafe import cli

    with pytest.raises(SystemExit):
        cli.main(["align", "iama", *flags, "--out", str(tmp_path / "never")])
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "never").exists()


def test_safety_front_is_exact_and_iama_wins_its_own_objective():
    from jaxsafe.llm import iama_experiment as E

    front = E.safety_front("bon:4", (0.5,), beta=0.1, steps=2500)
    half = front["points"][0]
    assert half["last_step_change"] < 1e-9  # converged
    assert half["iama"]["objective"] > half["standard"]["objective"] + 1e-2
    # Under BoN at inference IAMA is more helpful and safer than the standard optimum at w = 0.5 (measured front).
    assert half["iama"]["inference"][0] > half["standard"]["inference"][0]
    assert half["iama"]["inference"][1] > half["standard"]["inference"][1]
    # The inference values are the exact BoN values of the tables, checked here by the BoN law for one prompt.
    rewards, prompt_probs, reference = E.safety_problem()
    law = iama.bon_distribution(jnp.exp(jnp.asarray(reference[4], jnp.float32)), jnp.asarray(rewards[4, :, 0],
                                                                                            jnp.float32), 4)
    assert float(law @ rewards[4, :, 0]) == pytest.approx(float(iama.bon_value(
        jnp.asarray(rewards[4, :, 0], jnp.float32), 4, jnp.exp(jnp.asarray(reference[4], jnp.float32)))), abs=1e-5)


def test_length_rewards_and_one_grpo_update_with_the_derivative_reward():
    """The length task's criteria from response masks, and one non-linear GRPO update through the trainer's
    reward_transform hook is finite, with a positive gradient."""
    grpo = pytest.importorskip("jaxsafe.llm.grpo")
    from jaxsafe.llm import iama_experiment as E
    from jaxsafe.llm import model as model_lib

    mask = jnp.arange(24)[None, :] < jnp.array([[1], [5], [15], [24]])
    np.testing.assert_allclose(E.length_reward_fn(None, None, mask),
                               -((np.array([[1], [5], [15], [24]]) - np.array([5, 15])) / 24) ** 2, rtol=1e-6)
    config = model_lib.preset("tiny", vocab_size=len(E.LENGTH_TOKENS), max_seq_len=E.MAX_LENGTH + 1, d_model=16,
                              n_layers=1, d_ff=32, n_heads=2, n_kv_heads=1)
    graphdef, params = model_lib.init_params(config, jax.random.PRNGKey(0))
    problem = E.length_problem(graphdef, params, num_prompts=2)
    grpo_config = E.length_config(BON4_SUM, iterations=1, group_size=4, prompts_per_batch=2)
    assert grpo_config.reward_transform is E.make_length_transform(BON4_SUM)
    parts = grpo.make_train_parts(grpo_config, problem)
    hparams = grpo_config.default_hparams()
    state = parts.init(jax.random.PRNGKey(1), hparams)
    _, metrics = jax.jit(parts.update)(state, hparams)
    assert not bool(metrics["nonfinite"]) and float(metrics["grad_norm"]) > 0


def test_safety_reward_fn_is_the_languages_oracle():
    from jaxsafe.llm import iama_experiment as E
    from jaxsafe.llm.tasks import safety_language as lang

    space = lang.enumerate_responses()
    r, g = lang.reward_tables()
    prompts = np.repeat(lang.prompt_tokens(), len(space.content), axis=0)
    out = E.safety_reward_fn(jnp.asarray(prompts), jnp.asarray(np.tile(space.tokens, (7, 1))),
                             jnp.asarray(np.tile(space.response_mask, (7, 1))))
    np.testing.assert_allclose(out, np.stack([r.ravel(), g.ravel()], axis=1), atol=1e-6)
    lo, hi = E.SAFETY_REWARD_RANGE
    assert lo <= float(out.min()) and float(out.max()) <= hi
