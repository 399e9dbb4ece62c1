"""Per-task presets for the on-policy learners, as OmniSafe keeps per-environment configurations.

``jaxsafe train ppo_lag --env SafePointGoal1`` starts from the ``navigation`` preset instead of the learner's
generic defaults (which are sized for the classic control tasks); ``--set`` overrides any field of it, and
``--no-preset`` (``runner.make_spec(..., preset=False)``) ignores it. The run directory's ``config.json`` stores the
resulting config and hparams, so a run resumes with what it started with whatever the presets say later.

=============  ==========================================================  ===================================
preset         tasks                                                       what it changes
=============  ==========================================================  ===================================
navigation     SafePoint*/SafeCar* (Goal, Button, Circle, Run)             40 envs x 500 steps (20,000 steps per
                                                                           update, OmniSafe's steps_per_epoch),
                                                                           10 epochs x 20 minibatches, lr 1e-3
                                                                           decayed linearly, entropy 0.01,
                                                                           grad-norm clip 40, multiplier from
                                                                           0.001 at lr 0.035 (OmniSafe's PPOLag)
velocity       SafeHalfCheetahVelocity, SafeHopperVelocity, ... (brax)     the same update shape
=============  ==========================================================  ===================================

The values start from OmniSafe's on-policy Safety-Gymnasium defaults (``configs/on-policy/PPOLag.yaml``:
``steps_per_epoch`` 20,000, ``update_iters`` 40 of minibatch 64, ``target_kl`` early stop, entropy 0, grad-norm 40,
Lagrange init 0.001 and lr 0.035), with the update reshaped for vectorised environments: OmniSafe's 40 passes of
minibatch 64 early-stopped by KL are about 12,000 tiny gradient steps per epoch on one CPU environment; here 10
epochs of 20 minibatches of 1,000. The learning rate (1e-3 of {1e-4, 3e-4, 1e-3}) and the entropy bonus (0.01 of
{0, 0.01}) were then chosen by one vmapped sweep of PPO-Lagrangian on SafePointGoal1 at 10^6 steps, 2 seeds: the
highest return within the cost limit 25 (return 9.7, cost 23.0; ``benchmarks/results/presets_sweep.{json,md,png}``,
made by ``benchmarks/presets_sweep.py``).
CPO and TRPO-Lagrangian take the same rollout shape with 10 critic epochs of 20 minibatches (OmniSafe's CPO:
``update_iters`` 10).

One difference is kept on purpose for now: OmniSafe steps its multiplier with Adam at lr 0.035
(``lambda_optimizer: Adam``), the presets with plain projected ascent at the same lr (``multiplier="lagrangian"``),
which moves the multiplier by 0.035 per unit of excess episode cost instead of about 0.035 per update. The stored
10^7-step results use the plain rule; ``--set multiplier=lagrangian_adam`` gives OmniSafe's
(:func:`jaxsafe.constraints.lagrangian_adam`).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Preset", "PRESETS", "preset_for", "preset_overrides", "describe_presets"]


class Preset(NamedTuple):
    """One preset: the tasks it applies to and its field overrides per config class name."""

    name: str
    description: str
    tasks: tuple[str, ...]
    overrides: dict  # {config class name: {field: value}} (config or hparams fields)


_ROLLOUT = {"num_envs": 40, "num_steps": 500, "anneal_lr": True, "max_grad_norm": 40.0}
_PPO = {**_ROLLOUT, "num_epochs": 10, "num_minibatches": 20, "learning_rate": 1e-3, "entropy_coef": 0.01,
        "multiplier_lr": 0.035, "initial_multiplier": 0.001}
_CPO = {"num_envs": 40, "num_steps": 500, "critic_epochs": 10, "critic_minibatches": 20, "multiplier_lr": 0.035,
        "initial_multiplier": 0.001}

_NAVIGATION_TASKS = ("SafePointGoal1", "SafePointGoal2", "SafeCarGoal1", "SafeCarGoal2", "SafePointButton1",
                     "SafePointCircle", "SafePointRun")
_VELOCITY_TASKS = ("SafeHalfCheetahVelocity", "SafeHopperVelocity", "SafeWalker2dVelocity", "SafeAntVelocity",
                   "SafeSwimmerVelocity", "SafeHumanoidVelocity")

PRESETS: dict[str, Preset] = {
    "navigation": Preset("navigation", "Safety-Gymnasium navigation (1,000-step episodes, lidar observations)",
                         _NAVIGATION_TASKS, {"PPOConfig": _PPO, "CPOConfig": _CPO}),
    "velocity": Preset("velocity", "brax velocity-constrained locomotion (1,000-step episodes)",
                       _VELOCITY_TASKS, {"PPOConfig": _PPO, "CPOConfig": _CPO}),
}


def preset_for(task: str) -> Preset | None:
    """The preset whose tasks include ``task`` (``None``: the learner's own defaults apply)."""
    for preset in PRESETS.values():
        if task in preset.tasks:
            return preset
    return None


def preset_overrides(config_cls: type, task: str) -> tuple[str | None, dict]:
    """``(preset name, {field: value})`` for a learner's config class on ``task``; ``(None, {})`` without one."""
    preset = preset_for(task)
    if preset is None or config_cls.__name__ not in preset.overrides:
        return None, {}
    return preset.name, dict(preset.overrides[config_cls.__name__])


def describe_presets() -> str:
    """A markdown table of every preset's fields per learner config (for the docs and ``jaxsafe list``)."""
    lines = ["| preset | learner config | fields |", "|---|---|---|"]
    for preset in PRESETS.values():
        for cls_name, fields in preset.overrides.items():
            lines.append(f"| {preset.name} | {cls_name} | " + ", ".join(f"`{k}={v}`" for k, v in fields.items()) + " |")
    return "\n".join(lines)
