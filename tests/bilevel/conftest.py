"""Shared fixtures for the bilevel tests: tiny random problems, built once per module."""

import pytest

from jaxsafe.bilevel import problems


@pytest.fixture(scope="module")
def reward_mdp():
    return problems.random_configurable_mdp(0, transition_dependent=False)


@pytest.fixture(scope="module")
def transition_mdp():
    return problems.random_configurable_mdp(1, transition_dependent=True)


@pytest.fixture(scope="module")
def random_game():
    return problems.random_markov_game(2)
