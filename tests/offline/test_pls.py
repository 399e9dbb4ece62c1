"""PLS: tinygp posteriors against the closed form, monotone bounds and safe sets, a synthetic target map with a known
optimum and unsafe region over 20 vmapped seeds, the L = 0 literal reading, the fake-observation expander, bad input,
the baselines, and ``jaxsafe offline pls`` end to end."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.learner import train_from_parts
from jaxsafe.offline import pls

THRESHOLD = 10.0
AXIS = np.linspace(0.0, 10.0, 11)
TARGETS = np.stack(np.meshgrid(AXIS, AXIS, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
SEEDS = 20


def true_reward(z):
    return z[..., 0] + 0.5 * z[..., 1]


def true_cost(z):  # misaligned with the target cost G, as a CDT's realised cost is; unsafe when > THRESHOLD
    return 0.3 * z[..., 0] + 0.9 * z[..., 1]


def evaluate(key, target):
    """20 noisy episodes of the synthetic map (per-episode noise std 0.5)."""
    reward_key, cost_key = jax.random.split(key)
    returns = true_reward(target) + 0.5 * jax.random.normal(reward_key, (20,))
    costs = jnp.maximum(true_cost(target) + 0.5 * jax.random.normal(cost_key, (20,)), 0.0)
    return returns, costs


PROBLEM = pls.PLSProblem(TARGETS, pls.seed_set_box(TARGETS, (0.0, 3.0), (0.0, 2.0)), evaluate, 0.0, 15.0)
HPARAMS = pls.PLSHParams(threshold=THRESHOLD, reward_lengthscale=5.0, cost_lengthscale=5.0, reward_noise=0.02,
                         cost_noise=0.02, zeta=0.5).as_arrays()
CONFIG = pls.PLSConfig(iterations=30)


def _run_seeds(config, hparams, seeds=SEEDS, problem=PROBLEM):
    train = train_from_parts(pls.make_train_parts(config, problem))
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    return jax.jit(jax.vmap(train, in_axes=(0, None)))(keys, hparams)


@pytest.fixture(scope="module")
def runs():
    return _run_seeds(CONFIG, HPARAMS)


def _kernel(a, b, lengthscale, variance):
    d = (a[:, None] - b[None]) / np.asarray(lengthscale, float)
    return variance * np.exp(-0.5 * (d ** 2).sum(-1))


def test_gp_posterior_matches_the_closed_form_and_ignores_unobserved_slots():
    rng = np.random.default_rng(0)
    points, test = rng.uniform(0, 3, (6, 2)), rng.uniform(0, 3, (5, 2))
    values, observed = rng.normal(size=6), np.array([1, 1, 0, 1, 1, 0], bool)
    lengthscale, variance, noise, prior = np.array([1.0, 2.0]), 2.0, 0.1, 0.3
    posterior = jax.jit(pls.gp_posterior, static_argnames="full_covariance")
    mean, var = posterior(test, points, values, observed, lengthscale, variance, noise, prior)
    _, cov = posterior(test, points, values, observed, lengthscale, variance, noise, prior, full_covariance=True)
    x, y = points[observed], values[observed]
    inverse = np.linalg.inv(_kernel(x, x, lengthscale, variance) + noise ** 2 * np.eye(len(x)))
    cross = _kernel(test, x, lengthscale, variance)
    np.testing.assert_allclose(mean, prior + cross @ inverse @ (y - prior), atol=2e-5)
    expected_cov = _kernel(test, test, lengthscale, variance) - cross @ inverse @ cross.T
    np.testing.assert_allclose(cov, expected_cov, atol=2e-4)
    np.testing.assert_allclose(var, np.diag(expected_cov), atol=2e-4)
    # no observation: the prior
    mean0, var0 = posterior(test, points, values, np.zeros(6, bool), lengthscale, variance, noise, prior)
    np.testing.assert_allclose(mean0, prior, atol=1e-6)
    np.testing.assert_allclose(var0, variance, atol=1e-5)


def test_srinivas_alpha():
    expected = math.sqrt(2 * math.log(900 * 9 * math.pi ** 2 / (6 * 0.05)))
    assert float(pls.srinivas_alpha(900, 3, 0.05)) == pytest.approx(expected, rel=1e-5)
    assert float(pls.srinivas_alpha(900, 3, 0.05, 0.5)) == pytest.approx(expected / 2, rel=1e-5)


def test_safe_set_never_shrinks_and_cost_bounds_are_monotone(runs):
    safe = np.asarray(runs.metrics["safe"])  # [seeds, N, |Z|]
    upper, lower = np.asarray(runs.metrics["cost_upper"]), np.asarray(runs.metrics["cost_lower"])
    assert np.all(safe[:, 1:] >= safe[:, :-1])
    assert np.all(upper[:, 1:] <= upper[:, :-1])
    assert np.all(lower[:, 1:] >= lower[:, :-1])
    assert np.all(safe[:, 0] >= np.asarray(PROBLEM.seed_mask))  # Y_0 = Z_0 stays safe
    assert np.all(safe[:, -1].sum(-1) > 2 * PROBLEM.seed_mask.sum())  # and it expanded


def test_synthetic_map_near_best_safe_target_and_never_an_unsafe_query(runs):
    index = np.asarray(runs.metrics["target_index"])  # [seeds, N]
    assert not np.any(true_cost(TARGETS[index]) > THRESHOLD)  # at Delta = 0.05, over 20 seeds x 30 queries
    phases = np.asarray(runs.metrics["phase"])
    assert np.all(phases[:, 0] == 0) and np.all(phases[:, -1] == 1)  # phase A, then phase B
    recommend = jax.jit(lambda data, safe: pls.recommend(PROBLEM, HPARAMS, data, safe))
    chosen = np.array([int(recommend(jax.tree.map(lambda x: x[i], runs.params), runs.metrics["safe"][i, -1]))
                       for i in range(SEEDS)])
    safe = true_cost(TARGETS) <= THRESHOLD
    best = true_reward(TARGETS[safe]).max()  # 13.5 at (10, 7)
    assert np.all(true_cost(TARGETS[chosen]) <= THRESHOLD)
    assert np.all(true_reward(TARGETS[chosen]) >= best - 1.0), true_reward(TARGETS[chosen])
    # lifetime violations (episodes over the threshold): only the per-episode noise of safe targets near the
    # boundary, at most one per run on average
    assert np.asarray(runs.metrics["violations"]).sum() <= SEEDS


def test_literal_union_with_lipschitz_zero_over_expands():
    config = pls.PLSConfig(iterations=6, safe_set="literal")
    train = jax.jit(jax.vmap(train_from_parts(pls.make_train_parts(config, PROBLEM)), in_axes=(0, None)))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    literal = train(keys, HPARAMS)
    safe = np.asarray(literal.metrics["safe"])
    assert np.all(safe[:, 0])  # Y_1 = Z: one certified seed makes every target "safe"
    index = np.asarray(literal.metrics["target_index"])
    assert np.any(true_cost(TARGETS[index]) > THRESHOLD)  # and the search then queries unsafe targets
    assert np.asarray(literal.metrics["violations"]).sum() > 0
    # with L > 0 the literal union is SafeOpt's and stays inside the certified neighbourhood
    lipschitz = train(keys, HPARAMS.replace(lipschitz=jnp.float32(0.2)))  # the same compiled search
    assert not np.any(np.asarray(lipschitz.metrics["safe"])[:, 0].all(-1))
    assert not np.any(true_cost(TARGETS[np.asarray(lipschitz.metrics["target_index"])]) > THRESHOLD)


def test_fake_observation_expanders_match_a_rank_one_update():
    config = pls.PLSConfig(iterations=8, expander="fake_observation", expander_candidates=TARGETS.shape[0])
    search = pls.make_search(config, PROBLEM)
    state = search.init(jax.random.PRNGKey(3), HPARAMS)
    update = jax.jit(search.update)
    for _ in range(4):
        state, _ = update(state, HPARAMS)
    _, after, info = jax.jit(search.acquire)(state, HPARAMS)
    data = state.params
    mask = np.asarray(data.observed)
    x, y = TARGETS[np.asarray(data.target_index)[mask]], np.asarray(data.cost)[mask]
    ls, var, noise = 5.0, 1.0, 0.02
    inverse = np.linalg.inv(_kernel(x, x, ls, var) + noise ** 2 * np.eye(len(x)))
    cross = _kernel(TARGETS, x, ls, var)
    mean = cross @ inverse @ y
    cov = _kernel(TARGETS, TARGETS, ls, var) - cross @ inverse @ cross.T
    alpha = float(info["alpha"])
    safe, lower = np.asarray(after.safe), np.asarray(after.cost_lower)
    expected = np.zeros(len(TARGETS), bool)
    for z in np.flatnonzero(safe):
        gain = cov[:, z] / (cov[z, z] + noise ** 2)
        new_mean = mean + gain * (lower[z] - mean[z])
        new_sd = np.sqrt(np.maximum(np.diag(cov) - gain * cov[:, z], 0.0))
        expected[z] = np.any(~safe & (new_mean + alpha * new_sd <= 1.0))
    got = np.asarray(info["expander_mask"])
    assert expected.any()
    assert (got != expected).sum() <= 1, (np.flatnonzero(got), np.flatnonzero(expected))  # float32 ties
    queried = []
    for _ in range(4):
        state, metrics = update(state, HPARAMS)
        queried.append(int(metrics["target_index"]))
    assert not np.any(true_cost(TARGETS[queried]) > THRESHOLD)


def test_run_from_python_equals_a_vmapped_lane(runs):
    seen = []
    key = jax.random.split(jax.random.PRNGKey(0), SEEDS)[3]  # lane 3 of `runs`
    _, metrics, chosen = pls.run(CONFIG, PROBLEM, HPARAMS, key,
                                 callback=lambda s, m: seen.append(int(m["target_index"])))
    np.testing.assert_array_equal(metrics["target_index"], runs.metrics["target_index"][3])
    np.testing.assert_allclose(metrics["cost"], runs.metrics["cost"][3], rtol=1e-5)
    assert seen == metrics["target_index"].tolist() and 0 <= chosen < len(TARGETS)


def test_an_unsafe_seed_set_stops_the_search():
    bad = PROBLEM._replace(seed_mask=pls.seed_set_box(TARGETS, (10.0, 10.0), (8.0, 10.0)))  # true cost 10.2 .. 12
    with pytest.raises(pls.UnsafeSeedSet, match="seed_set"):
        pls.run(pls.PLSConfig(iterations=3), bad, HPARAMS, jax.random.PRNGKey(0))
    scanned = jax.jit(train_from_parts(pls.make_train_parts(pls.PLSConfig(iterations=3), bad)))(
        jax.random.PRNGKey(0), HPARAMS)
    evaluated = np.asarray(scanned.metrics["evaluated"])
    assert bool(scanned.metrics["seed_unsafe"][0]) and evaluated.tolist() == [True, False, False]


def test_bad_input_names_the_field():
    for field, value in (("threshold", 0.0), ("threshold", -1.0), ("reward_lengthscale", 0.0),
                         ("cost_lengthscale", -2.0), ("cost_noise", 0.0), ("reward_noise", -0.1), ("delta", 1.0)):
        with pytest.raises(ValueError, match=f"PLSHParams.{field}"):
            HPARAMS.replace(**{field: jnp.float32(value)}).validate()
    with pytest.raises(ValueError, match="seed_set"):
        pls.seed_set_box(TARGETS, (20.0, 30.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="seed_set"):
        pls.make_train_parts(CONFIG, PROBLEM._replace(seed_mask=np.zeros(len(TARGETS), bool)))
    with pytest.raises(ValueError, match="PLSConfig.safe_set"):
        pls.PLSConfig(safe_set="union")
    with pytest.raises(ValueError, match="evaluate"):
        pls.make_train_parts(pls.PLSConfig(episodes_per_query=5), PROBLEM)
    with pytest.raises(ValueError, match="bullet"):
        pls.PLSHParams.preset("mujoco")
    assert float(pls.PLSHParams.preset("velocity").reward_variance) == 100.0


def test_target_grid_and_seed_set_from_a_dataset(tiny_dataset):
    dataset, returns, costs = tiny_dataset
    grid = pls.target_grid(dataset, 4, 3)
    assert grid.shape == (12, 2) and grid[:, 0].min() == pytest.approx(returns.min())
    assert grid[:, 1].max() == pytest.approx(costs.max())
    with pytest.raises(ValueError, match="return_range"):
        pls.target_grid(dataset, 4, 3, return_range=(returns.min() - 10.0, returns.max()))
    with pytest.raises(ValueError, match="cost_range"):
        pls.target_grid(dataset, 4, 3, cost_range=(0.0, costs.max() + 1.0))
    seeds = pls.seed_set_from_dataset(dataset, grid, threshold=float(costs.max()), margin=1.0)
    assert seeds.any() and np.all(grid[seeds, 1] <= costs.max())
    with pytest.raises(ValueError, match="seed_set"):
        pls.seed_set_from_dataset(dataset, grid, threshold=float(costs.max()), min_episodes=10_000)
    with pytest.raises(ValueError, match="threshold"):
        pls.seed_set_from_dataset(dataset, grid, threshold=0.0)
    # the reliability test only removes seeds, and what it keeps is safe near its return in that fraction
    threshold = float(np.median(costs))
    loose = pls.seed_set_from_dataset(dataset, grid, threshold, margin=1.0, safe_fraction=0.0)
    strict = pls.seed_set_from_dataset(dataset, grid, threshold, margin=1.0, safe_fraction=0.6)
    assert not np.any(strict & ~loose)
    tolerance = float(np.diff(np.unique(grid[:, 0])).min())
    for R in grid[strict, 0]:
        near = np.abs(np.asarray(returns) - R) <= tolerance
        assert np.mean(np.asarray(costs)[near] <= threshold) >= 0.6
    with pytest.raises(ValueError, match="seed_safe_fraction"):
        pls.seed_set_from_dataset(dataset, grid, threshold, safe_fraction=1.5)


def test_reliable_safe_return_ignores_lucky_episodes():
    """Hand values: the safe episode at return 52 sits among unsafe ones (a lucky episode of a costly behaviour),
    the one at 90 is alone."""
    returns = np.array([10.0, 11.0, 12.0, 50.0, 51.0, 52.0, 53.0, 90.0])
    costs = np.array([0.0, 0.0, 1.0, 5.0, 5.0, 0.0, 5.0, 0.0])
    count, fraction = pls.safe_fractions(returns, costs, threshold=2.0, tolerance=3.0)
    np.testing.assert_array_equal(count, [3, 3, 3, 4, 4, 4, 4, 1])
    np.testing.assert_allclose(fraction, [1, 1, 1, 0.25, 0.25, 0.25, 0.25, 1])
    assert pls.reliable_safe_return(returns, costs, 2.0, safe_fraction=0.0, tolerance=3.0, min_episodes=1) == 90.0
    assert pls.reliable_safe_return(returns, costs, 2.0, safe_fraction=0.8, tolerance=3.0, min_episodes=2) == 12.0
    assert pls.reliable_safe_return(returns, costs, 2.0, safe_fraction=0.2, tolerance=3.0, min_episodes=4) == 52.0
    with pytest.raises(ValueError, match="seed_set: empty"):
        pls.reliable_safe_return(returns, costs, 2.0, safe_fraction=1.0, tolerance=3.0, min_episodes=5)
    with pytest.raises(ValueError, match="seed_min_episodes"):
        pls.reliable_safe_return(returns, costs, 2.0, min_episodes=0)


def test_top_seed_box_sits_at_the_best_safe_return(tiny_dataset):
    import argparse

    from jaxsafe.offline.pls_experiment import PLSSettings, add_arguments, settings_from_namespace, top_seed_box

    dataset, returns, costs = tiny_dataset
    threshold = float(np.median(costs))
    best = float(returns[costs <= threshold].max())
    span = float(returns.max() - returns.min())
    box = top_seed_box(dataset, threshold, safe_fraction=0.0, min_episodes=1)  # the best safe dataset return
    np.testing.assert_allclose(box, (best - 0.1 * span, best, 0.0, 0.25 * threshold), rtol=1e-6)
    reliable = pls.reliable_safe_return(returns, costs, threshold, safe_fraction=0.5, min_episodes=2)
    np.testing.assert_allclose(top_seed_box(dataset, threshold, safe_fraction=0.5, min_episodes=2),
                               (reliable - 0.1 * span, reliable, 0.0, 0.25 * threshold), rtol=1e-6)
    assert reliable <= best
    with pytest.raises(ValueError, match="seed_set: empty"):  # too few episodes for the default rule
        top_seed_box(dataset, threshold, min_episodes=10_000)
    assert PLSSettings(threshold=threshold, seed_box="top").seed_box == "top"
    with pytest.raises(ValueError, match="seed-box"):
        PLSSettings(threshold=threshold, seed_box="best")
    parser = add_arguments(argparse.ArgumentParser())
    namespace = parser.parse_args(["runs/x", "--threshold", "5", "--seed-box", "top"])
    assert settings_from_namespace(namespace).seed_box == "top"


def test_baselines_on_the_synthetic_map():
    # the three baselines in one program (one XLA compile instead of three), each with the key it had alone
    naive, grid, fixed = jax.jit(lambda k: (pls.naive_search(PROBLEM, k, THRESHOLD, 30),
                                            pls.naive_search(PROBLEM, k, THRESHOLD, 5, mode="grid"),
                                            pls.fixed_target(PROBLEM, k, (10.0, 10.0), THRESHOLD, 4)))(
        jax.random.PRNGKey(0))
    unsafe = true_cost(TARGETS[np.asarray(naive["target_index"])]) > THRESHOLD
    assert unsafe.any() and int(np.asarray(naive["violations"]).sum()) >= 10 * unsafe.sum()  # no safety rule
    assert true_cost(TARGETS[int(naive["best"])]) <= THRESHOLD + 0.5
    np.testing.assert_array_equal(grid["target_index"], [0, 30, 60, 90, 120])
    assert np.asarray(fixed["violations"]).tolist() == [20] * 4  # true cost 12 > 10 in every episode
    np.testing.assert_allclose(np.asarray(fixed["cost"]), 1.2, atol=0.05)


# ---------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_dataset():
    from jaxsafe import envs
    from jaxsafe.offline.dataset import collect_dataset, episode_returns
    from jaxsafe.policy import stateless

    env, params = envs.make("SafePendulum")
    space = env.action_space(params)
    policy = stateless(lambda obs, key: jax.random.uniform(key, space.shape, minval=space.low, maxval=space.high))
    data = collect_dataset(env, params, policy, jax.random.PRNGKey(0), 16, 10)
    returns, costs = episode_returns(data)
    return data, returns, costs.sum(-1)


def test_offline_pls_cli_end_to_end(tiny_dataset, tmp_path, capsys):
    from jaxsafe.cli import main
    from jaxsafe.offline import collect
    from jaxsafe.offline.dataset import save_npz

    dataset, _, costs = tiny_dataset
    path = save_npz(dataset, tmp_path / "pendulum.npz")
    collect.save_card(dict(task="SafePendulum", max_steps=10), path)
    cdt_dir = tmp_path / "cdt"
    assert main(["offline", "train", "cdt", "--data", str(path), "--set", "num_updates=4", "--set", "batch_size=8",
                 "--set", "d_model=16", "--set", "n_layers=1", "--set", "n_heads=2", "--set", "context_len=3",
                 "--set", "max_episode_len=10", "--set", "warmup_steps=2", "--out", str(cdt_dir), "--quiet",
                 "--chunks", "1"]) == 0
    out = tmp_path / "pls"
    threshold = float(costs.max()) + 1.0  # the untrained CDT's seed targets stay safe
    args = ["offline", "pls", str(cdt_dir), "--threshold", str(threshold), "--iterations", "3",
            "--episodes-per-query", "4", "--grid", "3,3", "--seed-margin", "1.0", "--baselines", "fixed,finetune",
            "--finetune-episodes", "4", "--finetune-round-episodes", "4", "--finetune-updates", "1",
            "--final-episodes", "4", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "violations" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"pls", "cdt_fixed", "cdt_ft_4"}  # the naive search: the synthetic map's test
    assert summary["methods"]["pls"]["episodes"] == 12 and summary["methods"]["cdt_ft_4"]["episodes"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert sum(r["violations"] for r in rows) == summary["methods"]["pls"]["violations"]
    assert (out / "pls.png").is_file() and (out / "pls.npz").is_file()
    with pytest.raises(SystemExit):  # a threshold <= 0 is refused, naming the field
        main(args[:3] + ["--threshold", "0"] + args[5:-3] + ["--out", str(tmp_path / "other")])
    with pytest.raises(SystemExit):  # the run directory is never overwritten
        main(args)
