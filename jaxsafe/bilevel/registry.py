"""The bi-level learners in the algorithm registry (see :mod:`jaxsafe.algorithms`): one entry per
hypergradient estimator, all on the leader loop of :mod:`jaxsafe.bilevel.train`.

Their problem space is :data:`jaxsafe.bilevel.problems.PROBLEMS`
(``jaxsafe train bchg --problem four_rooms``); progress is counted in samples (``num_samples`` transitions per
leader iteration) and the curve is the exact leader value. An estimator that does not apply to a problem's
kind (``ESTIMATORS``) is refused by ``make_train_parts`` with a ``ValueError`` naming both, before anything is
compiled.
"""

from __future__ import annotations

from jaxsafe.algorithms import Algorithm, ProblemSpace, register_algorithm
from jaxsafe.bilevel import problems, train

BILEVEL_PROBLEMS = ProblemSpace("bi-level problem", problems.make_problem, problems.describe_problems)

#: registry name -> (``BilevelConfig.estimator``, description).
ESTIMATOR_ENTRIES: dict[str, tuple[str, str]] = {
    "bchg": ("bchg", "BC-HG: Boltzmann-covariance hypergradient from rollouts (bi-level RL)"),
    "bchg_no_guidance": ("bchg_no_guidance",
                         "BC-HG without the follower-guidance term (Markov games; the myopic baseline)"),
    "hpgd_mc": ("hpgd_mc", "HPGD hypergradient with Monte-Carlo leader returns (configurable MDPs)"),
    "hpgd_sarsa": ("hpgd_sarsa", "HPGD hypergradient with a SARSA leader critic (configurable MDPs)"),
    "naive_hypergradient": ("naive", "naive hypergradient that ignores the follower's response"),
    "oracle_hypergradient": ("oracle", "exact hypergradient by implicit differentiation (needs the model)"),
}


def _entry(name: str, estimator: str, description: str) -> Algorithm:
    return Algorithm(
        name=name, description=description, config_cls=train.BilevelConfig,
        config_defaults={"estimator": estimator}, make_train_parts=train.make_train_parts,
        problems=BILEVEL_PROBLEMS,
        default_hparams=lambda config, problem: config.default_hparams(problem),
        curve_metrics=("leader_value",), chunk_means=("leader_value",), step_unit="samples",
        cost_limit_field=None,
    )


for _name, (_estimator, _description) in ESTIMATOR_ENTRIES.items():
    register_algorithm(_entry(_name, _estimator, _description))
