"""The bi-level entries of the algorithm registry: one per estimator, the problem space, refusals before
compiling."""

import jax
import numpy as np
import pytest

from jaxsafe import algorithms
from jaxsafe.bilevel import problems
from jaxsafe.bilevel.registry import ESTIMATOR_ENTRIES
from jaxsafe.bilevel.train import ESTIMATORS
from jaxsafe.learner import train_from_parts

NAMES = ("bchg", "bchg_no_guidance", "hpgd_mc", "hpgd_sarsa", "naive_hypergradient", "oracle_hypergradient")


def test_one_entry_per_estimator_with_the_bilevel_contract():
    assert set(NAMES) <= set(algorithms.list_algorithms()) and tuple(ESTIMATOR_ENTRIES) == NAMES
    estimators = set()
    for name in NAMES:
        algo = algorithms.get_algorithm(name)
        config = algo.make_config(num_iterations=3)
        estimators.add(config.estimator)
        assert config.num_iterations == 3 and algo.make_act is None and algo.cost_limit_field is None
        assert algo.curve_metrics == ("leader_value",) and algo.chunk_means == ("leader_value",)
        assert algo.step_unit == "samples" and algo.problems.kind == "bi-level problem"
    assert estimators == {e for names in ESTIMATORS.values() for e in names}


def test_problem_space_names_and_refusals():
    space = algorithms.get_algorithm("bchg").problems
    assert space.names() == sorted(problems.PROBLEMS)
    assert "goal (11,11)" in space.describe()["four_rooms"]
    with pytest.raises(ValueError, match=r"unknown bi-level problem 'four_room'; choose one of \['building"):
        space.make("four_room")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['slip'\]; allowed overrides: \['inc"):
        space.make("four_rooms", slip=0.1)
    with pytest.raises(ValueError, match=r"allowed overrides: \['temperature'\]"):
        space.make("discrete_toy_r1", follower_payoff=3.0)  # the payoff is what names the problem
    assert space.make("discrete_toy_r2", temperature=0.1).default_temperature == 0.1


@pytest.mark.parametrize("name, problem_name", [
    ("hpgd_mc", "discrete_toy_r1"), ("bchg_no_guidance", "warehouse"), ("hpgd_sarsa", "lqr_game")])
def test_estimator_that_does_not_apply_is_refused_naming_both(name, problem_name):
    algo = algorithms.get_algorithm(name)
    problem = algo.problems.make(problem_name)
    estimator = algo.config_defaults["estimator"]
    message = f"estimator '{estimator}' does not apply to problem '{problem.name}'"
    with pytest.raises(ValueError, match=message):
        algo.make_train_parts(algo.make_config(), problem)


def test_registered_entry_trains_with_problem_defaults():
    algo = algorithms.get_algorithm("naive_hypergradient")
    problem = problems.random_configurable_mdp(0)
    config = algo.make_config(num_iterations=3, num_samples=16)
    hparams = algo.hparams_for(config, problem).validate()
    assert float(hparams.follower_temperature) == problem.default_temperature
    result = jax.jit(train_from_parts(algo.make_train_parts(config, problem)))(jax.random.PRNGKey(0), hparams)
    values = result.metrics["leader_value"]
    assert values.shape == (3,) and np.all(np.isfinite(values))
