"""The tabular toolkit: closed forms on 2-3-state MDPs, soft value iteration on one state, and the constrained
occupancy LP against enumeration of deterministic policies (K = 1 and K = 2)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsafe.exact import lp
from jaxsafe.exact import tabular as tab

GAMMA = 0.9


def two_state_mdp(num_costs=1):
    """State 0: action 0 pays 1 and stays w.p. 0.5 (else moves to 1); action 1 pays 0 and ends. State 1 pays 2
    (any action) and ends. State 2 is terminal. Action 0 in state 0 costs 1 (every cost)."""
    transitions = np.zeros((3, 2, 3))
    transitions[0, 0, 0] = transitions[0, 0, 1] = 0.5
    transitions[0, 1, 2] = 1.0
    transitions[1, :, 2] = 1.0
    rewards = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    costs = np.zeros((3, 2, num_costs))
    costs[0, 0] = 1.0
    initial, terminal = np.array([1.0, 0.0, 0.0]), np.array([False, False, True])
    return tab.TabularMDP(transitions, rewards, costs, initial, terminal)


def test_policy_evaluation_occupancy_and_action_values_closed_form():
    mdp = two_state_mdp()
    q = 0.7  # pi(a=0 | s=0)
    policy = jnp.asarray([[q, 1 - q], [0.5, 0.5], [0.5, 0.5]])
    values = tab.policy_evaluation(policy, jnp.asarray(mdp.rewards), jnp.asarray(mdp.transitions), GAMMA)
    v0 = q * (1 + GAMMA) / (1 - 0.5 * GAMMA * q)  # V0 = q (1 + gamma (0.5 V0 + 0.5 * 2))
    np.testing.assert_allclose(values, [v0, 2.0, 0.0], rtol=1e-6)
    q_table = tab.action_values(values, jnp.asarray(mdp.rewards), jnp.asarray(mdp.transitions), GAMMA)
    np.testing.assert_allclose(q_table[0], [1 + GAMMA * (0.5 * v0 + 1.0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(policy * q_table, axis=-1), values, rtol=1e-6)
    occupancy = tab.occupancy_measure(policy, jnp.asarray(mdp.transitions), jnp.asarray(mdp.initial), GAMMA)
    d0 = 1.0 / (1 - 0.5 * GAMMA * q)
    np.testing.assert_allclose(occupancy.sum(-1)[:2], [d0, GAMMA * 0.5 * q * d0], rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(occupancy * mdp.rewards), v0, rtol=1e-6)
    result = tab.evaluate_policy(mdp, policy, GAMMA)
    np.testing.assert_allclose(result.value, v0, rtol=1e-6)
    np.testing.assert_allclose(result.cost_values, [q * d0], rtol=1e-6)  # cost 1 per visit-and-act of (0, 0)


def test_soft_value_iteration_one_state_closed_form():
    # One self-looping state: V = lambda logsumexp(r / lambda) + gamma V.
    reward = jnp.asarray([[0.3, -0.2, 1.0]])
    transitions = jnp.ones((1, 3, 1))
    temperature, gamma = 0.5, 0.6
    v, q = tab.soft_value_iteration(reward, transitions, temperature, gamma, num_iterations=80)
    expected = temperature * np.log(np.exp(np.asarray(reward[0]) / temperature).sum()) / (1 - gamma)
    np.testing.assert_allclose(v, [expected], rtol=1e-6)
    np.testing.assert_allclose(tab.soft_policy(q, temperature)[0],
                               jax.nn.softmax(reward[0] / temperature), rtol=1e-6)
    # the soft optimum beats the best deterministic return by the entropy bonus, and live=0 zeroes the value
    assert expected > float(reward.max()) / (1 - gamma)
    v_dead, _ = tab.soft_value_iteration(reward, transitions, temperature, gamma, 5, live=jnp.zeros(1))
    np.testing.assert_array_equal(v_dead, [0.0])


def test_two_state_lp_closed_form_and_multiplier():
    mdp = two_state_mdp()
    # Unconstrained: action 0 at state 0, V0 = (1 + gamma) / (1 - gamma/2), cost d0 = 1 / (1 - gamma/2).
    free = tab.solve_constrained_mdp(mdp, GAMMA)
    np.testing.assert_allclose(free.value, (1 + GAMMA) / (1 - GAMMA / 2), rtol=1e-9)
    np.testing.assert_allclose(free.cost_multipliers, [0.0])
    # Limit 1: pi(0|0) = q with q d0(q) = 1 -> q = 1 / (1 + gamma/2); the value is linear in the cost budget.
    limit = 1.0
    solution = tab.solve_constrained_mdp(mdp, GAMMA, limit)
    q = 1.0 / (1 + GAMMA / 2)
    np.testing.assert_allclose(solution.policy[0], [q, 1 - q], rtol=1e-9)
    np.testing.assert_allclose(solution.cost_values, [limit], rtol=1e-9)
    value_of = lambda q: q * (1 + GAMMA) / (1 - 0.5 * GAMMA * q)
    np.testing.assert_allclose(solution.value, value_of(q), rtol=1e-9)
    # The multiplier is d value / d limit (value = (1 + gamma) * cost, since V0 = q d0 (1 + gamma)).
    np.testing.assert_allclose(solution.cost_multipliers, [1 + GAMMA], rtol=1e-9)
    assert tab.solve_min_cost(mdp, GAMMA) == pytest.approx([0.0])


def random_cmdp(seed, num_costs, num_live=3, num_actions=2, terminal_prob=0.3):
    rng = np.random.default_rng(seed)
    num_states = num_live + 1
    to_live = rng.dirichlet(np.ones(num_live), size=(num_states, num_actions))
    transitions = np.concatenate([(1 - terminal_prob) * to_live,
                                  np.full((num_states, num_actions, 1), terminal_prob)], axis=-1)
    transitions[-1] = 0.0
    live = np.r_[np.ones(num_live), 0.0]
    rewards = rng.uniform(size=(num_states, num_actions)) * live[:, None]
    costs = rng.uniform(size=(num_states, num_actions, num_costs)) * live[:, None, None]
    initial = np.r_[rng.dirichlet(np.ones(num_live)), 0.0]
    return tab.TabularMDP(transitions, rewards, costs, initial, live == 0)


def deterministic_points(mdp, gamma):
    """(value [P], cost_values [P, K]) of every deterministic policy (live states only), vmapped."""
    num_live = int((~mdp.terminal).sum())
    choices = np.array(list(itertools.product(range(mdp.num_actions), repeat=num_live)))
    choices = np.concatenate([choices, np.zeros((len(choices), 1), int)], axis=1)
    policies = jax.nn.one_hot(choices, mdp.num_actions)
    values = jax.jit(jax.vmap(lambda p: tab.evaluate_policy(mdp, p, gamma)))(policies)
    return np.asarray(values.value, np.float64), np.asarray(values.cost_values, np.float64)


def between(mdp, gamma, fraction=0.5):
    """Limits strictly between each cost's minimum and its cost under the unconstrained optimum."""
    unconstrained = tab.solve_constrained_mdp(mdp, gamma).cost_values
    minimum = tab.solve_min_cost(mdp, gamma)
    assert np.all(unconstrained > minimum + 1e-3)
    return minimum + fraction * (unconstrained - minimum)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_cost_lp_equals_best_mixture_of_two_deterministic_policies(seed):
    mdp = random_cmdp(seed, num_costs=1)
    limit = float(between(mdp, GAMMA)[0])
    values, costs = deterministic_points(mdp, GAMMA)
    costs = costs[:, 0]
    best = values[costs <= limit].max(initial=-np.inf)
    for i, j in itertools.permutations(range(len(values)), 2):
        if costs[i] <= limit < costs[j]:
            weight = (costs[j] - limit) / (costs[j] - costs[i])  # on i; the mixture spends exactly the limit
            best = max(best, weight * values[i] + (1 - weight) * values[j])
    solution = tab.solve_constrained_mdp(mdp, GAMMA, limit)
    np.testing.assert_allclose(solution.value, best, rtol=1e-5)
    assert solution.value < values.max() - 1e-4  # the constraint binds
    np.testing.assert_allclose(solution.cost_values, [limit], rtol=1e-6)
    # The LP policy's exact evaluation agrees with the LP, and the multiplier is d value / d limit.
    evaluated = tab.evaluate_policy(mdp, solution.policy, GAMMA)
    np.testing.assert_allclose([evaluated.value, evaluated.cost_values[0]], [solution.value, limit],
                               rtol=1e-5)
    bumped = tab.solve_constrained_mdp(mdp, GAMMA, limit + 1e-4)
    np.testing.assert_allclose((bumped.value - solution.value) / 1e-4, solution.cost_multipliers[0],
                               rtol=1e-4)
    assert solution.cost_multipliers[0] > 0


def test_two_costs_one_constraint_each():
    mdp = random_cmdp(3, num_costs=2, num_live=3, num_actions=3)
    limits = between(mdp, GAMMA, fraction=0.4)
    solution = tab.solve_constrained_mdp(mdp, GAMMA, limits)
    assert np.all(solution.cost_values <= limits + 1e-9)
    # Enumeration: the best mixture of deterministic policies under both limits (an LP over mixture weights,
    # a different formulation from the occupancy LP).
    values, costs = deterministic_points(mdp, GAMMA)
    mixture = lp.solve_lp(values, costs.T, limits, np.ones((1, len(values))), [1.0], maximize=True)
    np.testing.assert_allclose(solution.value, mixture.value, rtol=1e-5)
    # Each limit alone gives a higher value than both together, and the multipliers are the sensitivities.
    for k in range(2):
        alone = np.where(np.arange(2) == k, limits, np.inf)
        assert tab.solve_constrained_mdp(mdp, GAMMA, alone).value >= solution.value - 1e-9
        bumped = tab.solve_constrained_mdp(mdp, GAMMA, limits + 1e-4 * (np.arange(2) == k))
        np.testing.assert_allclose((bumped.value - solution.value) / 1e-4, solution.cost_multipliers[k],
                                   rtol=1e-3, atol=1e-6)
    assert np.all(solution.cost_multipliers >= 0)
    evaluated = tab.evaluate_policy(mdp, solution.policy, GAMMA)
    np.testing.assert_allclose(evaluated.cost_values, solution.cost_values, rtol=1e-5)


def test_infeasible_and_malformed_limits_are_named():
    mdp = random_cmdp(0, num_costs=2)
    minimum = tab.solve_min_cost(mdp, GAMMA)
    with pytest.raises(ValueError, match="infeasible: the smallest achievable cost returns are"):
        tab.solve_constrained_mdp(mdp, GAMMA, minimum - 0.01)
    with pytest.raises(ValueError, match=r"cost_limits must have one entry per cost, shape \(2,\)"):
        tab.solve_constrained_mdp(mdp, GAMMA, 1.0)
    with pytest.raises(ValueError, match="gamma must be in"):
        tab.solve_constrained_mdp(mdp, 0.0, None)
    with pytest.raises(ValueError, match=r"TabularMDP.rewards must have shape \(4, 2\)"):
        tab.solve_constrained_mdp(mdp._replace(rewards=mdp.rewards[:, :1]), GAMMA)
