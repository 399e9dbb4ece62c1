"""Bi-level RL: follower solvers, exact and Boltzmann-covariance hypergradients (BC-HG), baselines, leader loop.

A leader chooses parameters ``x`` (incentives, environment design, its own policy) and sees only the behaviour of
a follower that solves its entropy-regularised problem. See ``docs/bilevel.md``.

Modules: ``followers`` (soft VI / Q-iteration / Newton, MaxEnt-LQR), ``exact`` (implicit-differentiation
oracle), ``bchg`` (the estimator from rollouts), ``baselines`` (naive, HPGD, oracle), ``problems`` (FourRooms,
warehouse, building thermal, DiscreteToy, LQR game, random instances), ``train`` (``make_train_parts``,
``make_train``), ``registry`` (one algorithm per estimator), ``experiment`` (``compare_estimators``), ``cli``,
``diagnostics`` (hypergradient quality at a fixed ``x``: each ingredient exact or estimated).
"""

from jaxsafe.bilevel import baselines, bchg, diagnostics, exact, followers, problems, train
from jaxsafe.bilevel.experiment import compare_estimators
from jaxsafe.bilevel.problems import ConfigurableMDP, LQProblem, MarkovGame, make_problem
from jaxsafe.bilevel.train import BilevelConfig, BilevelHParams, LeaderState, make_train, make_train_parts

__all__ = [
    "baselines", "bchg", "diagnostics", "exact", "followers", "problems", "train",
    "ConfigurableMDP", "LQProblem", "MarkovGame", "make_problem",
    "BilevelConfig", "BilevelHParams", "LeaderState", "make_train", "make_train_parts", "compare_estimators",
]
