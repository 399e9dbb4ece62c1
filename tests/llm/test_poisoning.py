"""Minimum-cost label flipping: the LP against brute-force vertex enumeration, strong duality, the MILP
against grid enumeration, reward-model equality after post-processing, the baselines' selections, LM features
and last-layer DPO against the model's own log-probs, and the pipeline's run directory and bad-input
messages."""

import argparse
import itertools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.llm import losses
from jaxsafe.llm import model as model_lib
from jaxsafe.llm import poisoning as P
from jaxsafe.llm import poisoning_experiment as E
from jaxsafe.llm.tasks import safety_language as lang
from jaxsafe.logging import RunDirExists

jit_hidden_states = jax.jit(model_lib.hidden_states, static_argnums=0)
jit_sequence_logprobs = jax.jit(losses.sequence_logprobs, static_argnums=0)


def _oriented_pairs(seed, dim, n):
    """Gaussian feature differences, oriented chosen-minus-rejected by Bradley-Terry labels; theta_o = 1."""
    rng = np.random.default_rng(seed)
    difference = rng.normal(size=(dim, n))
    psi_true = rng.normal(size=dim)
    first = rng.random(n) < 1.0 / (1.0 + np.exp(-psi_true @ difference))
    return np.where(first, difference, -difference)


def _brute_force_min_cost(features, theta_original, target):
    """The LP optimum by enumerating its vertices: every set of rank(Phi) independent 'basic' pairs, every
    other pair at 0, theta_original or 1 (the breakpoints of |theta - theta_o|), the basic ones solved
    exactly."""
    dim, n = features.shape
    rank = np.linalg.matrix_rank(features)
    best = np.inf
    for basis in itertools.combinations(range(n), rank):
        columns = features[:, basis]
        if np.linalg.matrix_rank(columns) < rank:
            continue
        others = [i for i in range(n) if i not in basis]
        levels = [sorted({0.0, float(theta_original[i]), 1.0}) for i in others]
        for values in itertools.product(*levels):
            rhs = target - features[:, others] @ np.asarray(values)
            solved, *_ = np.linalg.lstsq(columns, rhs, rcond=None)
            if np.abs(columns @ solved - rhs).max() > 1e-9 or solved.min() < -1e-9 or solved.max() > 1 + 1e-9:
                continue
            theta = np.empty(n)
            theta[list(basis)], theta[others] = solved, values
            best = min(best, np.abs(theta - theta_original).sum())
    return best


@pytest.mark.parametrize("seed, dim, fractional_original", [(0, 2, False), (1, 3, False), (2, 2, True)])
def test_lp_optimum_equals_brute_force_vertex_enumeration(seed, dim, fractional_original):
    rng = np.random.default_rng(seed)
    n = 7
    features = rng.normal(size=(dim, n))
    theta_original = rng.choice([0.3, 0.6, 1.0], size=n) if fractional_original else np.ones(n)
    attack = theta_original.copy()
    flipped = rng.choice(n, 3, replace=False)
    attack[flipped] = 1.0 - attack[flipped]
    target = features @ attack
    solution = P.minimum_cost_flips(features, theta_original, target)
    assert solution.cost == pytest.approx(_brute_force_min_cost(features, theta_original, target), abs=1e-8)
    assert solution.cost <= P.flip_cost(attack, theta_original) + 1e-9
    np.testing.assert_allclose(features @ solution.theta, target, atol=1e-10)


@pytest.fixture(scope="module")
def attacked():
    """n = 300 pairs, d = 4, a 40-flip attack on length-like candidates, its LP post-processing and the
    fits."""
    features = _oriented_pairs(3, 4, 300)
    theta_original = np.ones(300)
    rng = np.random.default_rng(4)
    attack = theta_original.copy()
    attack[rng.choice(300, 40, replace=False)] = 0.0
    solution = P.postprocess_attack(features, theta_original, attack)
    return dict(features=features, theta_original=theta_original, attack=attack, solution=solution,
                psi_attack=P.fit_bradley_terry(features, attack).psi,
                psi_lp=P.fit_bradley_terry(features, solution.theta).psi)


def test_postprocessing_is_cheaper_and_keeps_the_reward_model(attacked):
    solution = attacked["solution"]
    assert solution.cost <= P.flip_cost(attacked["attack"], attacked["theta_original"])
    assert solution.cost < 30  # 40 random flips cost far more than the cheapest equivalent (measured ~13)
    np.testing.assert_allclose(attacked["psi_lp"], attacked["psi_attack"], atol=1e-6)
    psi_original = P.fit_bradley_terry(attacked["features"], np.ones(300)).psi
    assert np.abs(attacked["psi_attack"] - psi_original).max() > 0.1


def test_vertex_has_at_most_rank_fractional_pairs(attacked):
    assert 0 < attacked["solution"].fractional_pairs <= 4
    # A rank-deficient Phi (5 rows, rank 3) warns, and the vertex has at most 3 fractional pairs.
    base = _oriented_pairs(5, 3, 120)
    features = np.concatenate([base, base[:2] + base[1:3]])
    theta = np.ones(120)
    theta[:30] = 0.0
    with pytest.warns(P.RankDeficientWarning, match=r"rank 3 < d = 5"):
        solution = P.postprocess_attack(features, np.ones(120), theta)
    assert solution.fractional_pairs <= 3
    np.testing.assert_allclose(features @ solution.theta, features @ theta, atol=1e-9)


def test_strong_duality_and_weak_duality_for_any_multipliers(attacked):
    features, theta_original = attacked["features"], attacked["theta_original"]
    solution = attacked["solution"]
    assert solution.dual_bound == pytest.approx(solution.cost, rel=1e-8)
    dual_value, multipliers = P.solve_dual_lp(features, theta_original, solution.target)
    assert dual_value == pytest.approx(solution.cost, rel=1e-8)
    at_dual_optimum = P.dual_lower_bound(features, theta_original, solution.target, multipliers)
    assert at_dual_optimum == pytest.approx(dual_value, rel=1e-8)
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.1, 1.0, 10.0):
        for _ in range(20):
            lam = solution.multipliers + scale * rng.normal(size=4)
            assert P.dual_lower_bound(features, theta_original, solution.target, lam) <= solution.cost + 1e-9
    # With a moment tolerance: primal and dual agree again, and the relaxed LP is cheaper.
    relaxed = P.minimum_cost_flips(features, theta_original, solution.target, moment_tolerance=0.5)
    assert relaxed.dual_bound == pytest.approx(relaxed.cost, rel=1e-7)
    assert P.solve_dual_lp(features, theta_original, solution.target, 0.5)[0] == pytest.approx(relaxed.cost,
                                                                                              rel=1e-7)
    assert relaxed.cost <= solution.cost
    assert relaxed.moment_residual <= 1e-7


def test_column_generation_matches_the_full_lp():
    features = _oriented_pairs(8, 6, 3000)
    attack = np.ones(3000)
    attack[np.random.default_rng(9).choice(3000, 150, replace=False)] = 0.0
    full = P.postprocess_attack(features, np.ones(3000), attack, column_generation=False)
    generated = P.postprocess_attack(features, np.ones(3000), attack, column_generation=True)
    assert generated.cost == pytest.approx(full.cost, rel=1e-9)
    assert generated.dual_bound == pytest.approx(generated.cost, rel=1e-8)
    assert generated.fractional_pairs <= 6 and generated.moment_residual < 1e-9


def test_duplicate_pairs_are_merged_exactly():
    from jaxsafe.exact.lp import solve_lp

    base = _oriented_pairs(10, 4, 60)
    features = np.repeat(base, 3, axis=1)  # every pair three times: merged into one variable per group
    attack = np.ones(180)
    attack[np.random.default_rng(1).choice(180, 30, replace=False)] = 0.0
    solution = P.postprocess_attack(features, np.ones(180), attack)
    # The same LP without merging, straight through HiGHS: theta = 1 - x, 0 <= x <= 1, min sum(x).
    plain = solve_lp(np.ones(180), A_eq=-features, b_eq=features @ attack - features.sum(axis=1),
                     bounds=(0.0, 1.0))
    assert solution.cost == pytest.approx(plain.value, rel=1e-9)
    np.testing.assert_allclose(features @ solution.theta, features @ attack, atol=1e-9)
    fractional = (solution.theta > 1e-9) & (solution.theta < 1 - 1e-9)
    assert fractional.reshape(60, 3).sum(axis=1).max() <= 1 and fractional.sum() <= 4


def test_direct_target_reaches_the_target_reward_model(attacked):
    features = attacked["features"]
    psi_original = P.fit_bradley_terry(features, np.ones(300)).psi
    psi_target = psi_original + np.array([0.3, 0.0, 0.0, 0.0])
    solution = P.target_reward_flips(features, np.ones(300), psi_target)
    np.testing.assert_allclose(P.fit_bradley_terry(features, solution.theta).psi, psi_target, atol=1e-6)
    assert solution.dual_bound == pytest.approx(solution.cost, rel=1e-8)
    assert solution.fractional_pairs <= 4


def test_milp_equals_grid_enumeration_and_is_above_the_lp():
    features = _oriented_pairs(6, 2, 6)
    theta_original = np.ones(6)
    attack = np.array([0.0, 1, 0, 1, 1, 1])
    target = features @ attack
    lp = P.minimum_cost_flips(features, theta_original, target)
    # Tolerance 0: the attack itself is on the grid, so the MILP is feasible, and it costs at least the LP.
    exact = P.minimum_cost_flips_milp(features, theta_original, target, n_duplicates=2, moment_tolerance=0.0)
    assert exact.optimal and exact.cost >= lp.cost - 1e-9
    tolerance = 0.3
    milp = P.minimum_cost_flips_milp(features, theta_original, target, n_duplicates=2,
                                     moment_tolerance=tolerance)
    grid = np.array(list(itertools.product([0.0, 0.5, 1.0], repeat=6)))
    feasible = np.abs(grid @ features.T - target).max(axis=1) <= tolerance + 1e-9
    assert milp.cost == pytest.approx(np.abs(grid[feasible] - 1).sum(axis=1).min())
    assert milp.flipped_copies == round(2 * milp.cost)
    assert milp.moment_residual <= tolerance + 1e-7
    relaxation = P.minimum_cost_flips(features, theta_original, target, moment_tolerance=tolerance)
    assert milp.cost >= relaxation.cost - 1e-9 and milp.relaxation_cost == pytest.approx(relaxation.cost)
    assert milp.lower_bound <= milp.cost + 1e-9
    np.testing.assert_allclose(milp.theta * 2, np.round(milp.theta * 2))
    # Reduced-cost fixing from a feasible incumbent (the attack) keeps the optimum.
    fixed = P.minimum_cost_flips_milp(features, theta_original, target, 2, tolerance, incumbent=attack)
    assert fixed.cost == pytest.approx(milp.cost) and fixed.fixed_pairs > 0
    with pytest.raises(ValueError, match="incumbent must be a grid point"):
        P.minimum_cost_flips_milp(features, theta_original, target, 2, tolerance, incumbent=np.ones(6))


def test_rounding_lands_on_the_grid_and_moves_only_fractional_pairs(attacked):
    theta = attacked["solution"].theta
    rounded = P.round_to_duplicates(theta, 5)
    np.testing.assert_allclose(rounded * 5, np.round(rounded * 5))
    assert np.abs(rounded - theta).max() <= 0.1 + 1e-12
    moved = np.abs(rounded - theta) > 1e-12
    assert moved.sum() <= attacked["solution"].fractional_pairs


def test_rlhfpoison_selection_by_hand():
    # Pairs 0..7: chosen shorter (candidates) where length_difference > 0.
    length_difference = np.array([5, -3, 2, 8, 1, 4, 0, 6])
    margin = np.array([0.1, 0.0, 0.5, 2.0, 0.2, 0.3, 0.0, 0.05])
    theta = np.ones(8)
    # Candidates 0, 2, 3, 4, 5, 7; quality filter 0.5 -> 4 smallest |margin|: 7 (.05), 0 (.1), 4 (.2), 5 (.3).
    largest = P.rlhfpoison_flips(theta, length_difference, margin, 0.5, 0.25)
    np.testing.assert_array_equal(largest.flipped, [0, 7])       # disparities 5 and 6
    smallest = P.rlhfpoison_flips(theta, length_difference, margin, 0.5, 0.25, largest_disparity=False)
    np.testing.assert_array_equal(smallest.flipped, [4, 5])      # disparities 1 and 4
    assert largest.cost == 2.0 and largest.theta[[0, 7]].tolist() == [0.0, 0.0] and largest.theta.sum() == 6
    # A pair whose label already prefers the rejected (theta = 0) one is a candidate when the rejected is
    # shorter.
    np.testing.assert_array_equal(P.flip_candidates([0.0, 0.0, 1.0], [-2, 2, -2]), [True, False, False])


def test_random_flips_stay_on_candidates():
    mask = np.zeros(50, bool)
    mask[::3] = True
    attack = P.random_flips(jax.random.PRNGKey(0), np.ones(50), mask, 7)
    assert attack.flipped.size == 7 and np.all(mask[attack.flipped]) and attack.cost == 7
    again = P.random_flips(jax.random.PRNGKey(0), np.ones(50), mask, 7)
    np.testing.assert_array_equal(attack.flipped, again.flipped)
    with pytest.raises(ValueError, match=r"n_flips must be an integer in \[0, 17\]"):
        P.random_flips(jax.random.PRNGKey(0), np.ones(50), mask, 18)


def test_bradley_terry_fit_matches_an_independent_optimiser():
    from scipy.optimize import minimize

    features = _oriented_pairs(7, 3, 40)
    theta = np.random.default_rng(0).uniform(0.2, 1.0, 40)
    fit = P.fit_bradley_terry(features, theta, l2=0.5)

    def loss(psi):
        margins = features.T @ psi
        nll = theta * np.logaddexp(0, -margins) + (1 - theta) * np.logaddexp(0, margins)
        return np.sum(nll) + 0.25 * psi @ psi

    reference = minimize(loss, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(fit.psi, reference, atol=1e-6)
    np.testing.assert_allclose(P.target_moment(features, fit.psi, 0.5), features @ theta, atol=1e-9)


def test_loglinear_dpo_is_bradley_terry():
    """DPO on the log-linear policy pi ∝ pi_ref exp(psi . phi / beta) has exactly the BT loss in psi."""
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(2, 6, 3))                                   # [prompts, responses, D]
    reference = np.log(rng.dirichlet(np.ones(6), size=2))
    prompt, chosen, rejected = rng.integers(0, 2, 30), rng.integers(0, 6, 30), rng.integers(0, 6, 30)
    theta, psi, beta = rng.uniform(0, 1, 30), rng.normal(size=3), 0.1
    policy = P.loglinear_policy_logprobs(reference, phi, psi, beta)
    dpo = losses.dpo_loss(policy[prompt, chosen], policy[prompt, rejected], reference[prompt, chosen],
                          reference[prompt, rejected], beta, label_smoothing=1.0 - theta).loss
    features = (phi[prompt, chosen] - phi[prompt, rejected]).T
    bt = np.mean(theta * np.logaddexp(0, -features.T @ psi) + (1 - theta) * np.logaddexp(0, features.T @ psi))
    assert float(dpo) == pytest.approx(bt, rel=1e-5)


# ----------------------------------------------------------------------------- language-model features and
# DPO


@pytest.fixture(scope="module")
def safety_model():
    config = model_lib.preset("tiny", vocab_size=lang.VOCAB_SIZE, max_seq_len=8)
    return model_lib.init_params(config, jax.random.PRNGKey(0))


def test_preference_features_are_last_token_hidden_states(safety_model):
    graphdef, params = safety_model
    seqs = lang.sequences(jnp.array([0, 4, 6, 2, 5]), jnp.array([0, 3, 84, 20, 7]))
    rejected = lang.sequences(jnp.array([0, 4, 6, 2, 5]), jnp.array([1, 50, 2, 84, 0]))
    batch = losses.PreferenceBatch(seqs.tokens, seqs.attention_mask, seqs.response_mask, rejected.tokens,
                                   rejected.attention_mask, rejected.response_mask)
    features = P.preference_features(graphdef, params, batch, batch_size=2)  # 5 rows: a padded last batch
    assert features.shape == (64, 5)
    for row in range(5):
        vectors = []
        for tokens, mask in ((seqs.tokens, seqs.attention_mask), (rejected.tokens, rejected.attention_mask)):
            length = int(mask[row].sum())  # right padding: the real tokens come first
            hidden = jit_hidden_states(graphdef, params, tokens[row:row + 1, :length])
            vectors.append(np.asarray(hidden[0, -1]))
        np.testing.assert_allclose(features[:, row], vectors[0] - vectors[1], atol=1e-5)


@pytest.fixture(scope="module")
def head(safety_model):
    graphdef, params = safety_model
    seqs = lang.sequences(jnp.repeat(jnp.arange(7), 85), jnp.tile(jnp.arange(85), 7))
    head_tokens = np.flatnonzero(np.asarray(lang.response_vocab_mask()))
    hidden, head_logits = P.trunk_outputs(graphdef, params, seqs.tokens, seqs.attention_mask, head_tokens,
                                          batch_size=128)
    return seqs, P.head_table(seqs.tokens, seqs.response_mask, head_tokens, hidden, head_logits)


def test_head_at_zero_is_the_reference_policy(safety_model, head):
    graphdef, params = safety_model
    seqs, table = head
    expected = jit_sequence_logprobs(graphdef, params, seqs.tokens, seqs.attention_mask, seqs.response_mask,
                                     vocab_mask=lang.response_vocab_mask())
    ours = P.head_sequence_logprobs(jnp.zeros((64, table.reference_logits.shape[-1])), table)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    np.testing.assert_allclose(jax.jit(P.reference_sequence_logprobs)(table), expected, atol=1e-4)
    np.testing.assert_allclose(np.exp(np.asarray(ours).reshape(7, 85)).sum(axis=1), 1.0, atol=1e-4)


def test_fractional_dpo_loss_equals_the_duplicated_data_set(head):
    _, table = head
    rng = np.random.default_rng(0)
    chosen, rejected = rng.integers(0, 595, 12), rng.integers(0, 595, 12)
    copies = 4
    kept = rng.integers(0, copies + 1, 12)                        # copies keeping their orientation
    delta = jnp.asarray(rng.normal(scale=0.3, size=(64, table.reference_logits.shape[-1])), jnp.float32)
    fractional = P.last_layer_dpo_loss(delta, table, chosen, rejected, jnp.asarray(kept / copies), 0.1)
    dup_chosen = np.concatenate([np.repeat(chosen, kept), np.repeat(rejected, copies - kept)])
    dup_rejected = np.concatenate([np.repeat(rejected, kept), np.repeat(chosen, copies - kept)])
    duplicated = P.last_layer_dpo_loss(delta, table, dup_chosen, dup_rejected, jnp.ones(12 * copies), 0.1)
    assert float(fractional) == pytest.approx(float(duplicated), rel=1e-5)


# ----------------------------------------------------------------------------- the pipeline and the command


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("poison") / "linear"
    settings = E.PoisonSettings(source="linear", pairs=400, dim=4, postprocess="milp", milp_time_limit=20.0,
                                largest_disparity=False)
    return out, settings, E.run_poisoning(settings, out)


def test_linear_run_directory_and_summary(linear_run):
    out, _, summary = linear_run
    for name in ("config.json", "data.npz", "flips.npz", "summary.json", "costs.png"):
        assert (out / name).is_file(), name
    stored = json.loads((out / "summary.json").read_text())
    assert stored["lp"]["flipped_pairs"] == summary["lp"]["flipped_pairs"]
    lp, attack, milp = summary["lp"], summary["attack"], summary["milp"]
    assert attack["flipped_pairs"] == 20 and attack["fraction_of_pairs"] == 0.05
    assert lp["flipped_pairs"] < attack["flipped_pairs"] / 2  # released-code RLHFPoison is wasteful here
    assert lp["max_abs_psi_difference"] < 1e-6 and lp["fractional_pairs"] <= 4
    assert lp["dual_bound"] == pytest.approx(lp["flipped_pairs"], rel=1e-7)
    assert lp["dual_lp_value"] == pytest.approx(lp["flipped_pairs"], rel=1e-7)
    assert milp["flipped_pairs"] >= milp["relaxation_cost"] - 1e-9
    assert milp["flipped_pairs"] <= summary["rounded"]["flipped_pairs"] + 1e-9  # the rounded LP is feasible
    assert summary["length_target"]["max_abs_psi_difference"] < 1e-6
    rates = summary["longer_preferred_rate"]
    assert rates["attack"] > rates["original"] and rates["lp"] == pytest.approx(rates["attack"], abs=1e-9)
    flips = np.load(out / "flips.npz")
    assert set(flips.files) >= {"theta_original", "theta_attack", "theta_lp", "theta_rounded", "theta_milp"}


def test_run_directory_is_never_reused(linear_run):
    out, settings, _ = linear_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunDirExists):
        E.run_poisoning(settings, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_reruns_a_saved_data_file(linear_run, tmp_path, capsys):
    out, _, summary = linear_run
    parser = E.add_arguments(argparse.ArgumentParser())
    namespace = parser.parse_args(["--data", str(out / "data.npz"), "--smallest-disparity", "--quick",
                                   "--out", str(tmp_path / "again")])
    assert namespace.func(namespace) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["lp"]["flipped_pairs"] == pytest.approx(summary["lp"]["flipped_pairs"], abs=1e-9)
    assert "cost reduction" in capsys.readouterr().out


def test_lm_pipeline_post_processed_data_gives_the_attacks_loglinear_policy(tmp_path):
    settings = E.PoisonSettings(source="lm", model="tiny", pairs=1500, attack="random", dpo_steps=120,
                                batch_size=128)
    summary = E.run_poisoning(settings, tmp_path / "lm")
    assert (tmp_path / "lm" / "dpo_length.png").is_file() and (tmp_path / "lm" / "metrics.jsonl").is_file()
    lp, attack = summary["lp"], summary["attack"]
    assert lp["flipped_pairs"] < attack["flipped_pairs"] and lp["max_abs_psi_difference"] < 1e-6
    down = summary["downstream"]
    loglinear, token = down["loglinear_expected_length"], down["last_layer_dpo_expected_length"]
    assert loglinear["lp"] == pytest.approx(loglinear["attack"], abs=1e-6)  # exact for the log-linear policy
    assert token["attack"] - token["original"] > 0.1  # the attack lengthens last-layer DPO responses
    # The token-level head is not the log-linear class the LP is exact for: its shift under the cheaper data is
    # only measured (benchmarks/results/poisoning.md), not asserted.
    assert set(token) == {"original", "attack", "rounded"} and all(0 <= v <= 3 for v in token.values())
    loaded = E.load_preference_data(tmp_path / "lm" / "data.npz")
    assert loaded.has_language_model and loaded.model_preset == "tiny" and loaded.features.shape[0] == 64


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_named():
    features = _oriented_pairs(0, 2, 5)
    with pytest.raises(ValueError, match=r"theta_original must be in \[0, 1\].*1.5 at pair 2"):
        P.minimum_cost_flips(features, [1, 1, 1.5, 1, 1], features @ np.ones(5))
    with pytest.raises(ValueError, match=r"theta_original must have shape \(5,\)"):
        P.minimum_cost_flips(features, np.ones(4), features @ np.ones(5))
    bad = features.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="Phi must be finite, got 1 NaN"):
        P.minimum_cost_flips(bad, np.ones(5), np.zeros(2))
    with pytest.raises(ValueError, match=r"Phi must be a \[d, n\] array"):
        P.minimum_cost_flips(np.ones(5), np.ones(5), np.zeros(2))
    with pytest.raises(ValueError, match=r"target must have shape \(2,\)"):
        P.minimum_cost_flips(features, np.ones(5), np.zeros(3))
    with pytest.raises(ValueError, match=r"separable\)?: use l2 > 0"):
        P.fit_bradley_terry(np.abs(features) + 0.1, np.ones(5), l2=0.0, max_iterations=30)
    with pytest.raises(ValueError, match="moment_tolerance"):
        P.minimum_cost_flips_milp(features, np.ones(5), features @ np.array([0.3, 1, 1, 1, 1]), 2, 0.0)
    with pytest.raises(ValueError, match="--attack must be one of"):
        E.PoisonSettings(attack="gradient")
    with pytest.raises(ValueError, match="--pairs must be an integer >= 2"):
        E.PoisonSettings(pairs=1)


def test_infeasible_target_has_a_dual_certificate():
    features = np.array([[1.0, 2.0, -1.0, 0.5], [0.0, 1.0, 1.0, -1.0]])
    target = np.array([3.0, 4.0])  # the second row reaches at most 2
    with pytest.raises(P.InfeasibleTargetError, match="target is unreachable") as caught:
        P.minimum_cost_flips(features, np.ones(4), target)
    lam = caught.value.certificate
    assert caught.value.gap > 0 and caught.value.distance > 0
    # The certificate separates: lambda . target exceeds lambda . Phi theta for every theta in the box.
    assert lam @ target - np.maximum(0.0, features.T @ lam).sum() == pytest.approx(caught.value.gap)
    corners = np.array(list(itertools.product([0.0, 1.0], repeat=4)))
    assert np.all(corners @ (features.T @ lam) < lam @ target)
    # A rank-deficient Phi (rows 1 and 2 equal) and a target off its span: unreachable, certified as well.
    deficient = np.array([[1.0, 2.0, -1.0], [0.5, 1.0, 1.0], [0.5, 1.0, 1.0]])
    with pytest.warns(P.RankDeficientWarning), pytest.raises(P.InfeasibleTargetError) as caught:
        P.minimum_cost_flips(deficient, np.ones(3), np.array([1.0, 0.5, 0.7]))
    lam = caught.value.certificate
    assert lam @ np.array([1.0, 0.5, 0.7]) - np.maximum(0.0, deficient.T @ lam).sum() > 0


def test_bad_data_files_are_named(tmp_path):
    good = dict(features=np.ones((2, 3)), labels=np.ones(3), length_difference=np.zeros(3))
    np.savez(tmp_path / "labels.npz", **{**good, "labels": np.array([1.0, 2.0, 0.0])})
    with pytest.raises(ValueError, match=r"'labels' in .*labels.npz must be in \[0, 1\]"):
        E.load_preference_data(tmp_path / "labels.npz")
    np.savez(tmp_path / "nan.npz", **{**good, "features": np.array([[1.0, np.nan, 0], [0, 1, 1]])})
    with pytest.raises(ValueError, match="'features' in .*nan.npz must be finite"):
        E.load_preference_data(tmp_path / "nan.npz")
    np.savez(tmp_path / "shape.npz", **{**good, "labels": np.ones(4)})
    with pytest.raises(ValueError, match=r"'labels' in .* must have shape \(3,\)"):
        E.load_preference_data(tmp_path / "shape.npz")
    np.savez(tmp_path / "missing.npz", features=np.ones((2, 3)))
    with pytest.raises(ValueError, match="has no 'labels' array"):
        E.load_preference_data(tmp_path / "missing.npz")
    np.savez(tmp_path / "pickled.npz", **good, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        E.load_preference_data(tmp_path / "pickled.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good file loads without a rank warning escaping
        np.savez(tmp_path / "good.npz", **{**good, "features": np.array([[1.0, 0, 2], [0, 1, 1]])})
        assert E.load_preference_data(tmp_path / "good.npz").num_pairs == 3
