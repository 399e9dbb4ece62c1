"""Follower solvers against brute force and closed forms (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from scipy.linalg import solve_discrete_are

from jaxsafe.bilevel import exact, followers
from jaxsafe.bilevel.followers import GameValueParams, MDPValueParams
from jaxsafe.exact import tabular


def _brute_force_soft_q(reward, transitions, live, temperature, gamma, iterations=3000):
    """Plain numpy soft Bellman iteration to machine precision (the reference)."""
    q = np.zeros_like(reward)
    for _ in range(iterations):
        z = q / temperature
        v = live * temperature * (np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1))
        q = reward + gamma * transitions @ v
    return q


def test_soft_solvers_match_brute_force(reward_mdp):
    with enable_x64():
        x = jnp.asarray(reward_mdp.initial_params, jnp.float64)
        reward = np.asarray(reward_mdp.follower_reward(x))
        transitions = np.asarray(reward_mdp.transition_fn(x))
        live = np.asarray(reward_mdp.live, np.float64)
        temperature, gamma = 0.3, 0.9
        reference = _brute_force_soft_q(reward, transitions, live, temperature, gamma)
        params = MDPValueParams(jnp.float64(temperature), jnp.asarray(live))
        q_newton, info = followers.newton_soft_bellman(jnp.asarray(reward), jnp.asarray(transitions), gamma,
                                                      followers.mdp_soft_value, params)
        q_iter = followers.soft_q_iteration(jnp.asarray(reward), jnp.asarray(transitions), gamma,
                                            followers.mdp_soft_value, params, 600)
        v_vi, q_vi = tabular.soft_value_iteration(jnp.asarray(reward), jnp.asarray(transitions), temperature,
                                                  gamma, 600, live=jnp.asarray(live))
        np.testing.assert_allclose(q_newton, reference, atol=1e-10)
        np.testing.assert_allclose(q_iter, reference, atol=1e-10)
        np.testing.assert_allclose(q_vi, reference, atol=1e-10)
        assert int(info.iterations) < 20  # Newton = soft policy iteration: a handful of steps
        # The Boltzmann policy is optimal for the regularised objective: V = E_pi[Q] + lambda H(pi).
        policy = tabular.soft_policy(q_newton, temperature)
        entropy = -jnp.sum(policy * jnp.log(policy), axis=1)
        np.testing.assert_allclose(live * (jnp.sum(policy * q_newton, 1) + temperature * entropy), v_vi, atol=1e-10)


def test_partly_converged_follower_error_shrinks(reward_mdp):
    x = jnp.asarray(reward_mdp.initial_params)
    reward, transitions = reward_mdp.follower_reward(x), reward_mdp.transition_fn(x)
    params = MDPValueParams(jnp.float32(0.3), jnp.asarray(reward_mdp.live))
    exact_q, _ = followers.newton_soft_bellman(reward, transitions, 0.9, followers.mdp_soft_value, params)
    errors = [float(jnp.max(jnp.abs(followers.partly_converged_follower(
        reward, transitions, 0.9, followers.mdp_soft_value, params, jnp.zeros_like(reward), k, False) - exact_q)))
        for k in (1, 5, 25)]
    assert errors[0] > errors[1] > errors[2]
    # Carrying the Q-table across calls continues the iteration.
    once = followers.partly_converged_follower(reward, transitions, 0.9, followers.mdp_soft_value, params,
                                               jnp.zeros_like(reward), 5, True)
    twice = followers.partly_converged_follower(reward, transitions, 0.9, followers.mdp_soft_value, params, once,
                                                5, True)
    np.testing.assert_allclose(twice, followers.soft_q_iteration(reward, transitions, 0.9, followers.mdp_soft_value,
                                                                 params, 10), rtol=1e-5, atol=1e-6)


def test_game_follower_matches_brute_force(random_game):
    with enable_x64():
        leader_policy = random_game.leader_policy_fn(jnp.asarray(random_game.initial_params, jnp.float64))
        params = GameValueParams(jnp.float64(0.4), jnp.asarray(random_game.live, jnp.float64), leader_policy)
        reward = jnp.asarray(random_game.follower_reward, jnp.float64)
        transitions = jnp.asarray(random_game.transitions, jnp.float64)
        q_newton, _ = followers.newton_soft_bellman(reward, transitions, 0.85, followers.game_soft_value, params)
        q_iter = followers.soft_q_iteration(reward, transitions, 0.85, followers.game_soft_value, params, 800)
        np.testing.assert_allclose(q_newton, q_iter, atol=1e-10)


def test_maxent_lqr_matches_riccati_closed_form():
    with enable_x64():
        rng = np.random.default_rng(0)
        n, m = 3, 2
        a = rng.normal(size=(n, n)) * 0.5
        b = rng.normal(size=(n, m))
        q, r = np.eye(n), 0.5 * np.eye(m)
        gamma, temperature = 0.9, 0.2
        noise = 0.01 * np.eye(n)
        sol = followers.maxent_lqr(jnp.asarray(a), jnp.asarray(b), jnp.asarray(q), jnp.asarray(r),
                                   jnp.asarray(noise), gamma, temperature, 2000)
        reference = solve_discrete_are(np.sqrt(gamma) * a, np.sqrt(gamma) * b, q, r)
        np.testing.assert_allclose(sol.value_matrix, reference, rtol=1e-9, atol=1e-9)
        hessian = r + gamma * b.T @ reference @ b
        np.testing.assert_allclose(sol.gain, gamma * np.linalg.solve(hessian, b.T @ reference @ a), atol=1e-9)
        np.testing.assert_allclose(sol.policy_cov, 0.5 * temperature * np.linalg.inv(hessian), atol=1e-12)


def test_maxent_lqr_soft_bellman_by_quadrature():
    """Scalar system: V(z) = beta log int exp(Q(z, a) / beta) da, checked by numerical quadrature."""
    with enable_x64():
        a, b, q, r, gamma, temperature, noise = 0.9, 0.7, 1.0, 0.3, 0.8, 0.25, 0.04
        sol = followers.maxent_lqr(jnp.array([[a]]), jnp.array([[b]]), jnp.array([[q]]), jnp.array([[r]]),
                                   jnp.array([[noise]]), gamma, temperature, 2000)
        p, c = float(sol.value_matrix[0, 0]), float(sol.value_offset)
        value = lambda z: -p * z * z - c
        for z in (-1.0, 0.3, 2.0):
            actions = np.linspace(-30, 30, 200001)
            # E_w[V(a z + b u + w)] = -p ((a z + b u)^2 + noise) - c
            soft_q = -q * z * z - r * actions ** 2 + gamma * (-p * ((a * z + b * actions) ** 2 + noise) - c)
            peak = soft_q.max()
            integral = np.trapezoid(np.exp((soft_q - peak) / temperature), actions)
            np.testing.assert_allclose(peak + temperature * np.log(integral), value(z), rtol=1e-7, atol=1e-7)


def test_implicit_derivative_matches_unrolled_solver(reward_mdp):
    """The implicit (custom_jvp) derivative equals differentiating a long unrolled soft Q-iteration."""
    with enable_x64():
        x = jnp.asarray(reward_mdp.initial_params, jnp.float64)
        live = jnp.asarray(reward_mdp.live, jnp.float64)

        def unrolled(x):
            params = MDPValueParams(jnp.float64(0.3), live)
            return followers.soft_q_iteration(reward_mdp.follower_reward(x), reward_mdp.transition_fn(x), 0.8,
                                              followers.mdp_soft_value, params, 160)

        implicit = jax.jit(jax.jacfwd(lambda x: exact.mdp_follower_q(reward_mdp, x, 0.3, 0.8)))(x)
        np.testing.assert_allclose(implicit, jax.jit(jax.jacfwd(unrolled))(x), atol=1e-9)
        reverse = jax.jit(jax.jacrev(lambda x: exact.mdp_follower_q(reward_mdp, x, 0.3, 0.8)))(x)
        np.testing.assert_allclose(reverse, implicit, atol=1e-10)
