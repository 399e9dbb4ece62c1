"""Safe environments: the contract, wrappers, registry and tasks."""

from jaxsafe.envs import chance_bandit, classic, gridworld, locomotion, navigation, point2d, sepsis
from jaxsafe.envs.core import (
    AutoReset,
    EpisodeStats,
    GymnaxSafeEnv,
    SafeEnv,
    VecEnv,
    Wrapper,
    check_action,
    wrap_for_training,
)
from jaxsafe.envs.registry import describe_envs, list_envs, make, register
from jaxsafe.exact.tabular import TabularMDP, evaluate_policy, solve_constrained_mdp  # the exact toolkit
from jaxsafe.types import TimeStep

register("SafeCartPole", classic.safe_cartpole, "CartPole-v1; cost 1 when the cart leaves |x| <= cost_x_limit")
register("SafePendulum", classic.safe_pendulum, "Pendulum-v1; cost 1 when |angular speed| > cost_speed_limit")
register("SafeGridWorld", gridworld.GridWorld, "constrained gridworld with an exact model (layout=...)")
register("ChanceBandit", chance_bandit.ChanceBandit, "one-step chance-constrained bandit; optimum flips between 2 actions")
register("ChancePoint2D", point2d.ChancePoint2D, "2-D point with Gaussian disturbance and two hazards (flipping paper, App. K)")
register("SepsisSim", sepsis.SepsisSim, "septic-shock patients, 2-D fluid/vasopressor dose; costs SpO2 < 92 %, urine < 0.5 mL/kg/h")
navigation.register_navigation()
locomotion.register_locomotion()  # brax is imported only when a locomotion task is built

__all__ = [
    "AutoReset", "EpisodeStats", "GymnaxSafeEnv", "SafeEnv", "VecEnv", "Wrapper", "TimeStep", "TabularMDP",
    "check_action", "wrap_for_training", "make", "register", "list_envs", "describe_envs",
    "solve_constrained_mdp", "evaluate_policy",
]
