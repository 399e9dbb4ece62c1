"""The reward-cost Pareto frontier and OSRL's frontier return augmentation, on hand-made episode sets."""

import numpy as np
import pytest

from jaxsafe.offline import pareto


def test_pareto_front_by_hand():
    costs = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 0.0, 2.0])
    returns = np.array([1.0, 3.0, 2.0, 3.0, 5.0, 1.0, 4.0])
    # (0, 1) twice, (1, 3), (2, 4), (3, 5) are non-dominated; (1, 2) and (2, 3) are dominated
    assert pareto.pareto_front(costs, returns).tolist() == [0, 5, 1, 6, 4]


def test_frontier_fit_is_exact_through_collinear_points_and_lowers_its_degree():
    costs, returns = np.array([0.0, 1.0, 2.0, 1.0]), np.array([1.0, 3.0, 5.0, 0.0])
    frontier = pareto.fit_frontier(costs, returns, degree=4)  # 3 distinct frontier costs: degree 2 at most
    assert frontier.order <= 2
    np.testing.assert_allclose(frontier([0.0, 0.5, 2.0]), [1.0, 2.0, 5.0], atol=1e-9)


def test_augmented_targets_sit_above_the_frontier_on_no_costlier_episodes():
    rng = np.random.default_rng(0)
    costs = rng.uniform(0, 50, 200)
    returns = 10 * np.sqrt(costs) + rng.normal(0, 5, 200)
    aug = pareto.augment_targets(costs, returns, 0.3, degree=2, min_above=1.0, max_return=90.0, seed=1)
    assert aug.source.shape == (60,)
    np.testing.assert_allclose(aug.target_cost, np.linspace(costs.min(), costs.max(), 60))
    assert np.all(aug.target_return >= aug.frontier(aug.target_cost) + 1.0 - 1e-9)
    assert np.all(aug.target_return <= np.maximum(90.0, aug.frontier(aug.target_cost) + 1.0) + 1e-9)
    assert np.all(costs[aug.source] <= aug.target_cost + 1e-9)  # never relabels a costlier episode
    np.testing.assert_allclose(returns[aug.source] + aug.return_shift, aug.target_return)
    np.testing.assert_allclose(costs[aug.source] + aug.cost_shift, aug.target_cost)
    again = pareto.augment_targets(costs, returns, 0.3, degree=2, min_above=1.0, max_return=90.0, seed=1)
    np.testing.assert_array_equal(again.source, aug.source)  # deterministic in the seed
    assert pareto.augment_targets(costs, returns, 0.0).source.size == 0


def test_repeated_nearest_episodes_are_spread_over_close_ones():
    # Every target's nearest no-costlier episode is episode 0 (cost 0): the repeats go to episodes with cost <= 0
    # and return >= its return - max_decrease, i.e. episodes 0 and 1 here, never 2 (too poor) or 3 (costlier)
    costs, returns = np.array([0.0, 0.0, 0.0, 5.0]), np.array([10.0, 9.0, 0.0, 20.0])
    aug = pareto.augment_targets(costs, returns, 5.0, degree=0, max_return=30.0, max_decrease=2.0, seed=0)
    assert set(aug.source[aug.target_cost < 5.0].tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="augment_beta"):
        pareto.augment_targets(costs, returns, 0.5, beta=0.0)


def test_frontier_is_flat_beyond_the_costliest_front_point():
    # the front is (0, 0), (1, 2), (2, 3); the costlier episodes (5, 1) and (9, 2.5) are dominated, so the fit
    # (degree 2 through the three front points: -x^2/2 + 5x/2) is held at f(2) = 3 from cost 2 on
    costs, returns = np.array([0.0, 1.0, 2.0, 5.0, 9.0]), np.array([0.0, 2.0, 3.0, 1.0, 2.5])
    frontier = pareto.fit_frontier(costs, returns, degree=4)
    assert (frontier.order, frontier.cost_low, frontier.cost_high) == (2, 0.0, 2.0)
    np.testing.assert_allclose(frontier([0.5, 2.0, 5.0, 9.0]), [1.125, 3.0, 3.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(frontier.poly(9.0), -40.5 + 22.5, atol=1e-9)  # the raw polynomial would dive
    aug = pareto.augment_targets(costs, returns, 2.0, degree=4, min_above=1.0, seed=0)
    beyond = aug.target_cost >= 2.0
    # above the held frontier (f + min_above = 4 from cost 2 on), never below what the data reaches there
    np.testing.assert_allclose(aug.target_return[beyond], 4.0, atol=1e-9)
    assert np.all(aug.target_return >= frontier(aug.target_cost) + 1.0 - 1e-9)
