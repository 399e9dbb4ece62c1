"""Exact hypergradients against central finite differences (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from jaxsafe.bilevel import exact, problems


def _central_differences(fn, x, step=1e-5):
    basis = np.eye(x.shape[0])
    return np.array([(fn(x + step * e) - fn(x - step * e)) / (2 * step) for e in basis])


@pytest.mark.parametrize("which", ["reward_mdp", "transition_mdp"])
def test_mdp_hypergradient_matches_finite_differences(which, request):
    problem = request.getfixturevalue(which)
    with enable_x64():
        x = jnp.asarray(problem.initial_params, jnp.float64) + 0.2
        objective = jax.jit(lambda x: exact.mdp_leader_objective(problem, x, 0.4, 0.85, 0.9))
        value, gradient = jax.jit(lambda x: exact.mdp_exact_hypergradient(problem, x, 0.4, 0.85, 0.9))(x)
        np.testing.assert_allclose(gradient, _central_differences(objective, x), rtol=1e-6, atol=1e-8)
        assert np.linalg.norm(gradient) > 1e-2  # a non-trivial gradient, so the comparison can fail
        # The temperature and discount are differentiable too (implicit derivative w.r.t. everything).
        d_temperature = jax.jit(jax.grad(lambda t: exact.mdp_leader_objective(problem, x, t, 0.85, 0.9)))(0.4)
        fd = (objective_t(problem, x, 0.4 + 1e-5) - objective_t(problem, x, 0.4 - 1e-5)) / 2e-5
        np.testing.assert_allclose(d_temperature, fd, rtol=1e-5, atol=1e-8)


def objective_t(problem, x, temperature):
    return exact.mdp_leader_objective(problem, x, temperature, 0.85, 0.9)


def test_game_hypergradient_matches_finite_differences(random_game):
    with enable_x64():
        x = jnp.asarray(random_game.initial_params, jnp.float64)
        objective = jax.jit(lambda x: exact.game_leader_objective(random_game, x, 0.3, 0.85, 0.9))
        _, gradient = jax.jit(lambda x: exact.game_exact_hypergradient(random_game, x, 0.3, 0.85, 0.9))(x)
        np.testing.assert_allclose(gradient, _central_differences(objective, x), rtol=1e-6, atol=1e-8)
        assert np.linalg.norm(gradient) > 1e-2


@pytest.mark.parametrize("name", ["building_thermal", "lqr_game"])
def test_lq_hypergradient_matches_finite_differences(name):
    problem = problems.make_problem(name)
    with enable_x64():
        x = jnp.asarray(problem.initial_params, jnp.float64) + 0.1
        objective = jax.jit(lambda x: exact.lq_leader_objective(problem, x, 0.1, 0.9, 0.9))
        _, gradient = jax.jit(lambda x: exact.lq_exact_hypergradient(problem, x, 0.1, 0.9, 0.9))(x)
        np.testing.assert_allclose(gradient, _central_differences(objective, x, 1e-6), rtol=1e-5, atol=1e-8)
        assert np.linalg.norm(gradient) > 1e-3


def test_lq_leader_value_matches_simulation():
    """The closed-form leader value equals a long Monte Carlo average of discounted leader rewards."""
    from jaxsafe.bilevel import bchg, followers

    problem = problems.building_thermal()
    x = jnp.asarray(problem.initial_params)
    system = problem.system(x)
    sol = followers.maxent_lqr(system.dynamics, system.control, system.follower_state_cost,
                               system.follower_action_cost, system.noise_cov, 0.9, 0.1, 300)
    batch = jax.jit(bchg.sample_lq_batch, static_argnums=(4, 5))(jax.random.PRNGKey(0), system, sol.gain,
                                                               sol.policy_cov, 1000, 120)
    rewards = -(jnp.einsum("eti,ij,etj->et", batch.state, system.leader_state_cost, batch.state)
                + jnp.einsum("eti,ij,etj->et", batch.action, system.leader_action_cost, batch.action)
                + system.leader_constant_cost)
    simulated = jnp.mean(jnp.sum(rewards * 0.9 ** jnp.arange(120), axis=1))
    closed = exact.lq_leader_objective(problem, x, 0.1, 0.9, 0.9)
    np.testing.assert_allclose(simulated, closed, rtol=2e-2)
