"""The state-dependent flipping policy: its mixture distribution, the ChanceBandit optimum, and learning it.

The learning tests train PPO-Lagrangian and CPO with ``policy="flipping"`` on :mod:`jaxsafe.envs.chance_bandit` at
an episode-cost limit ``ALPHA`` (one-step episodes, so the limit is the chance constraint Pr{unsafe} <= ALPHA) and
compare with the closed-form / LP optimum, a flip between the two bump peaks. Measured with these seeds (final
policy, 200k samples): PPO-Lag flipping w_unsafe 0.249, candidates (+0.498, -0.500), reward 0.607, cost 0.249;
PPO-Lag Gaussian reward 0.498 (cost 0.000); CPO flipping w_unsafe 0.254, candidates (+0.499, -0.501), reward 0.627,
cost 0.254 (CPO Gaussian, not run here: reward 0.400 at cost 0.255); LP optimum 0.625, and the best Gaussian
under the constraint earns 0.5. Seeds 1 and 2 (measured, not run here) give PPO-Lag rewards 0.616 / 0.607 and CPO
rewards 0.609 / 0.621.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import spaces

from jaxsafe import envs
from jaxsafe.envs import chance_bandit
from jaxsafe.rl import cpo, ppo
from jaxsafe.rl.networks import FlippingActor, FlippingMixture, GaussianActor, make_actor

ALPHA = 0.25
EVAL_SAMPLES = 200_000

PPO_CONFIG = dict(num_envs=64, num_steps=4, total_steps=256 * 300, num_epochs=4, num_minibatches=4, hidden=(16,),
                  multiplier="lagrangian")
PPO_HPARAMS = dict(learning_rate=1e-3, entropy_coef=0.0, multiplier_lr=0.2, cost_limit=ALPHA)
CPO_CONFIG = dict(num_envs=64, num_steps=4, total_steps=256 * 150, hidden=(16,), method="cpo")


# --- the distribution ---------------------------------------------------------------------------------------------

def _mixture(candidates, scales, weight):
    weight = np.asarray(weight, np.float32)
    return FlippingMixture(jnp.asarray(candidates, jnp.float32), jnp.asarray(scales, jnp.float32),
                           jnp.asarray(np.log(weight) - np.log1p(-weight), jnp.float32))


OVERLAP = dict(candidates=[[0.0, 0.0], [0.5, -0.3]], scales=[[0.4, 0.6], [0.5, 0.3]], weight=0.3)
OTHER = dict(candidates=[[0.2, -0.1], [0.4, 0.1]], scales=[[0.5, 0.5], [0.3, 0.4]], weight=0.6)


def _normal_pdf(x, mean, scale):
    return np.exp(-0.5 * ((x - mean) / scale) ** 2) / (np.sqrt(2 * np.pi) * scale)


def test_log_prob_is_the_mixture_density():
    dist = _mixture(**OVERLAP)
    points = np.array([[0.0, 0.0], [0.5, -0.3], [1.0, 1.0], [-2.0, 0.7], [0.25, -3.0]])
    cand, scales, w = np.asarray(OVERLAP["candidates"]), np.asarray(OVERLAP["scales"]), OVERLAP["weight"]
    by_hand = np.log(w * np.prod(_normal_pdf(points, cand[0], scales[0]), -1)
                     + (1 - w) * np.prod(_normal_pdf(points, cand[1], scales[1]), -1))
    np.testing.assert_allclose(np.asarray(dist.log_prob(jnp.asarray(points, jnp.float32))), by_hand, rtol=1e-5)
    # a batch of distributions: [3, 2, D] candidates, [3] logits, [3, D] values
    batched = FlippingMixture(jnp.stack([dist.candidates] * 3), dist.scales, jnp.stack([dist.weight_logit] * 3))
    assert batched.batch_shape == (3,) and batched.event_shape == (2,)
    np.testing.assert_allclose(np.asarray(batched.log_prob(jnp.asarray(points[:3], jnp.float32))), by_hand[:3],
                               rtol=1e-5)


def test_samples_match_weight_and_components():
    candidates, scales, weight = [[-1.0, 2.0], [1.0, -2.0]], [[0.1, 0.2], [0.2, 0.05]], 0.3
    dist = _mixture(candidates, scales, weight)
    samples = np.asarray(dist.sample(seed=jax.random.PRNGKey(0), sample_shape=(100_000,)))
    first = samples[:, 0] < 0.0  # components are 5 sigma from 0 along the first axis
    assert abs(first.mean() - weight) < 0.006, first.mean()  # SE 0.0015
    np.testing.assert_allclose(samples[first].mean(0), candidates[0], atol=0.005)
    np.testing.assert_allclose(samples[~first].mean(0), candidates[1], atol=0.005)
    np.testing.assert_allclose(samples[first].std(0), scales[0], rtol=0.02)
    np.testing.assert_allclose(samples[~first].std(0), scales[1], rtol=0.02)
    a1, a2, w = dist.flip()
    np.testing.assert_allclose(np.asarray(a1), candidates[0])
    np.testing.assert_allclose(np.asarray(a2), candidates[1])
    assert abs(float(w) - weight) < 1e-6
    np.testing.assert_allclose(np.asarray(dist.mode()), candidates[1])  # w < 1/2: the second candidate
    np.testing.assert_allclose(np.asarray(_mixture(candidates, scales, 0.7).mode()), candidates[0])
    np.testing.assert_allclose(np.asarray(dist.mean()), 0.3 * np.asarray(candidates[0]) + 0.7 * np.asarray(
        candidates[1]), rtol=1e-6)


def _monte_carlo(values):
    values = np.asarray(values, np.float64)
    return values.mean(), values.std() / np.sqrt(values.size)


def test_entropy_and_kl_upper_bound_the_mixture_ones():
    key = jax.random.PRNGKey(1)
    for spec in (OVERLAP, dict(OVERLAP, candidates=[[0.0, 0.0], [5.0, -5.0]])):  # overlapping, then separated
        dist, other = _mixture(**spec), _mixture(**OTHER)
        samples = dist.sample(seed=key, sample_shape=(EVAL_SAMPLES,))
        entropy, entropy_se = _monte_carlo(-dist.log_prob(samples))
        kl, kl_se = _monte_carlo(dist.log_prob(samples) - other.log_prob(samples))
        joint_entropy, joint_kl = float(dist.entropy()), float(dist.kl_divergence(other))
        coin_entropy = -(0.3 * np.log(0.3) + 0.7 * np.log(0.7))
        assert entropy - 4 * entropy_se <= joint_entropy <= entropy + coin_entropy + 4 * entropy_se
        assert joint_kl >= kl - 4 * kl_se, (joint_kl, kl)
    # separated components: the entropy bound is tight; overlapping ones (checked above) leave a gap
    assert abs(joint_entropy - entropy) < 4 * entropy_se + 1e-3


def test_kl_to_itself_is_zero_with_zero_gradient_and_psd_hessian():
    dist = _mixture(**OVERLAP)
    theta = jnp.concatenate([dist.candidates.ravel(), jnp.log(dist.scales).ravel(), dist.weight_logit[None]])

    def unpack(theta):
        return FlippingMixture(theta[:4].reshape(2, 2), jnp.exp(theta[4:8]).reshape(2, 2), theta[8])

    def kl_from_old(theta_new):
        return unpack(jax.lax.stop_gradient(theta)).kl_divergence(unpack(theta_new))

    value, gradient, hessian = jax.jit(lambda t: (kl_from_old(t), jax.grad(kl_from_old)(t),
                                                  jax.hessian(kl_from_old)(t)))(theta)
    assert abs(float(value)) < 1e-7
    np.testing.assert_allclose(np.asarray(gradient), 0.0, atol=1e-6)
    # the Hessian at equality is the joint model's Fisher matrix: symmetric positive semi-definite
    hessian = np.asarray(hessian, np.float64)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-5)
    assert np.linalg.eigvalsh(hessian).min() > -1e-5
    # the same through the actor network: zero KL and zero gradient in the actor's parameters
    actor = FlippingActor(1, (8,))
    params = actor.init(jax.random.PRNGKey(0), jnp.ones((1,)))
    obs = jnp.linspace(-1, 1, 5)[:, None]
    old = actor.apply(params, obs)
    kl_fn = lambda p: old.kl_divergence(actor.apply(p, obs)).mean()  # noqa: E731
    value, gradient = jax.jit(jax.value_and_grad(kl_fn))(params)
    assert abs(float(value)) < 1e-7
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gradient)) < 1e-6


def test_vanishing_scales_collapse_onto_the_two_candidates():
    candidates, weight = [[0.3], [-0.7]], 0.2
    dist = _mixture(candidates, [[1e-6], [1e-6]], weight)
    samples = np.asarray(dist.sample(seed=jax.random.PRNGKey(2), sample_shape=(50_000,)))[:, 0]
    near_first, near_second = np.abs(samples - 0.3) < 1e-4, np.abs(samples + 0.7) < 1e-4
    assert np.all(near_first | near_second)
    assert abs(near_first.mean() - weight) < 0.01
    log_prob = np.asarray(dist.log_prob(jnp.asarray([[0.3], [-0.7], [0.0]])))
    assert np.all(np.isfinite(log_prob[:2])) and log_prob[0] > 10  # density ~ 1 / (sqrt(2 pi) 1e-6) at a candidate
    assert log_prob[2] < -1e6  # and (numerically) zero between them


def test_actor_init_and_the_gaussian_actor_is_unchanged():
    box = spaces.Box(-1.0, 1.0, (2,), jnp.float32)
    flipping = make_actor(box, (8,), policy="flipping")
    params = flipping.init(jax.random.PRNGKey(0), jnp.ones((3,)))
    assert set(params["params"]) == {"MLP_0", "candidate_1", "candidate_2", "coin", "log_std"}
    a1, a2, w = flipping.apply(params, jnp.ones((3,))).flip()
    assert np.all(np.asarray(a1 - a2) > 0.9) and abs(float(w) - 0.5) < 0.01  # candidates start apart, fair coin
    gaussian = make_actor(box, (8,))
    assert isinstance(gaussian, GaussianActor) and isinstance(make_actor(box, (8,), policy="gaussian"), GaussianActor)
    gaussian_params = gaussian.init(jax.random.PRNGKey(0), jnp.ones((3,)))
    assert set(gaussian_params["params"]) == {"MLP_0", "Dense_0", "log_std"}
    direct = GaussianActor(2, (8,)).init(jax.random.PRNGKey(0), jnp.ones((3,)))
    jax.tree.map(np.testing.assert_array_equal, gaussian_params, direct)


@pytest.mark.parametrize("build", [
    lambda: make_actor(spaces.Box(-1.0, 1.0, (1,), jnp.float32), (8,), policy="bogus"),
    lambda: ppo.PPOConfig(policy="bogus"),
    lambda: cpo.CPOConfig(policy="bogus"),
    lambda: make_actor(spaces.Discrete(3), (8,), policy="flipping"),
])
def test_bad_policy_names_field(build):
    with pytest.raises(ValueError, match="policy"):
        build()


# --- the bandit and its optimum -----------------------------------------------------------------------------------

def test_bandit_contract_and_values():
    env, params = envs.make("ChanceBandit")
    state, reset = env.reset(jax.random.PRNGKey(0), params)
    actions = jnp.asarray([-0.5, 0.5, 0.0, 0.25, -1.0, 3.0])
    _, steps = jax.vmap(env.step, in_axes=(None, None, 0, None))(jax.random.PRNGKey(1), state, actions[:, None],
                                                                 params)
    assert set(reset.info) == set(steps.info) and reset.cost.shape == (1,) and steps.cost.shape == (6, 1)
    np.testing.assert_allclose(np.asarray(steps.reward), [0.5, 1.0, 0.0, 0.75, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(steps.cost[:, 0]), [0, 1, 0, 1, 0, 1])
    assert bool(jnp.all(steps.terminated)) and not bool(jnp.any(steps.truncated))


@pytest.mark.parametrize("alpha", [0.05, 0.25, 0.6])
def test_enumeration_lp_finds_the_two_point_flip(alpha):
    solution = chance_bandit.solve_by_enumeration(alpha, grid=201)
    optimum = chance_bandit.flip_optimum(alpha)
    assert solution.support.size == 2
    np.testing.assert_allclose(solution.support, [optimum.safe_action, optimum.unsafe_action], atol=1e-9)
    np.testing.assert_allclose(solution.probs[solution.probs > 1e-9], [1 - alpha, alpha], atol=1e-9)
    assert abs(solution.value - optimum.value) < 1e-6 and abs(optimum.value - (0.5 + 0.5 * alpha)) < 1e-12
    assert solution.cost <= alpha + 1e-9
    # a grid that misses the peaks can only do worse; with no budget the optimum is deterministic (Thm 3)
    assert chance_bandit.solve_by_enumeration(alpha, grid=200).value < optimum.value
    assert chance_bandit.solve_by_enumeration(0.0).support.size == 1


# --- learning the flip --------------------------------------------------------------------------------------------

def _evaluate(actor, actor_params, key=jax.random.PRNGKey(123)):
    """(expected reward, Pr{unsafe}) of the learned stochastic policy from EVAL_SAMPLES actions (SE < 0.002)."""
    dist = actor.apply(actor_params, jnp.ones((1,)))
    actions = jnp.clip(dist.sample(seed=key, sample_shape=(EVAL_SAMPLES,)), -1.0, 1.0)
    reward, cost = chance_bandit.expected_reward_and_cost(actions)
    return float(reward), float(cost), dist


def _unsafe_weight_and_candidates(dist):
    a1, a2, w = (np.asarray(x).ravel() for x in dist.flip())
    assert a1[0] * a2[0] < 0, (a1, a2)  # one candidate on each side of the threshold
    return (float(w[0]), a1[0], a2[0]) if a1[0] > 0 else (1.0 - float(w[0]), a2[0], a1[0])


def _assert_recovers_flip(actor, actor_params):
    """The learned policy is the optimal flip: coin within 0.05 of ALPHA, each candidate within 0.05 of its bump's
    peak, Pr{unsafe} at most ALPHA + 0.03 and reward within 0.04 of the optimum. Returns (reward, safe candidate)."""
    optimum = chance_bandit.flip_optimum(ALPHA)
    reward, cost, dist = _evaluate(actor, actor_params)
    unsafe_weight, unsafe_candidate, safe_candidate = _unsafe_weight_and_candidates(dist)
    assert abs(unsafe_weight - ALPHA) < 0.05, unsafe_weight
    assert abs(unsafe_candidate - optimum.unsafe_action) < 0.05, unsafe_candidate
    assert abs(safe_candidate - optimum.safe_action) < 0.05, safe_candidate
    assert cost <= ALPHA + 0.03, cost
    assert reward >= optimum.value - 0.04, (reward, optimum.value)
    return reward, safe_candidate


def _train(module, config_cls, config_kwargs, hparams_kwargs, policy):
    env, env_params = envs.make("ChanceBandit")
    config = config_cls(**config_kwargs, policy=policy)
    hparams = config.default_hparams().replace(**{k: jnp.float32(v) for k, v in hparams_kwargs.items()})
    result = jax.jit(module.make_train(config, env, env_params))(jax.random.PRNGKey(0), hparams)
    actor = make_actor(env.action_space(env_params), config.hidden, config.activation, policy)
    return config, result, actor


@pytest.fixture(scope="module")
def ppo_runs():
    return {policy: _train(ppo, ppo.PPOConfig, PPO_CONFIG, PPO_HPARAMS, policy) for policy in ("flipping", "gaussian")}


@pytest.fixture(scope="module")
def cpo_flipping_run():
    return _train(cpo, cpo.CPOConfig, CPO_CONFIG, dict(cost_limit=ALPHA), "flipping")


def test_ppo_lagrangian_learns_the_flip_and_beats_the_gaussian(ppo_runs):
    config, result, actor = ppo_runs["flipping"]
    assert not np.any(np.asarray(result.metrics["nonfinite"]))
    # measured: coin 0.249, candidates 0.498 / -0.500, Pr{unsafe} 0.249, reward 0.607 (optimum 0.625)
    reward, safe_candidate = _assert_recovers_flip(actor, result.params.actor)
    # the same learner with the ordinary Gaussian policy: at most the best constrained Gaussian (0.5)
    _, gaussian_result, gaussian_actor = ppo_runs["gaussian"]
    gaussian_reward, gaussian_cost, _ = _evaluate(gaussian_actor, gaussian_result.params.actor)
    assert gaussian_reward < reward - 0.05, (gaussian_reward, reward)  # measured 0.498 vs 0.607
    # deterministic acting plays the more likely (here the safe) candidate
    env, env_params = envs.make("ChanceBandit")
    action = ppo.make_act(config, env, env_params)(result.params, jnp.ones((1,)), jax.random.PRNGKey(0), True)
    assert abs(float(action[0]) - safe_candidate) < 1e-6


def test_cpo_learns_the_flip_within_its_trust_region(cpo_flipping_run):
    config, result, actor = cpo_flipping_run
    metrics = jax.tree.map(np.asarray, result.metrics)
    assert not np.any(metrics["nonfinite"])
    assert np.all(metrics["approx_kl"] <= float(config.default_hparams().target_kl) + 1e-6)
    tail = slice(len(metrics["episode_cost"]) // 2, None)
    assert np.mean(metrics["episode_cost"][tail]) <= ALPHA + 0.03, metrics["episode_cost"][tail]
    # measured: coin 0.254, candidates 0.499 / -0.501, Pr{unsafe} 0.254, reward 0.627 (optimum 0.625)
    _assert_recovers_flip(actor, result.params.actor)
