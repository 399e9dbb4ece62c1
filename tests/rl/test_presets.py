"""Per-task presets: applied under the user's overrides, skippable, and every field real."""

import dataclasses

import pytest

from jaxsafe import runner
from jaxsafe.algorithms import get_algorithm
from jaxsafe.cli import build_parser
from jaxsafe.rl import presets
from jaxsafe.rl.cpo import CPOConfig
from jaxsafe.rl.ppo import PPOConfig


@pytest.mark.parametrize("preset", list(presets.PRESETS.values()), ids=lambda p: p.name)
def test_every_preset_field_is_a_config_or_hparams_field(preset):
    for cls_name, fields in preset.overrides.items():
        config_cls = {"PPOConfig": PPOConfig, "CPOConfig": CPOConfig}[cls_name]
        names = {f.name for f in dataclasses.fields(config_cls)}
        names |= {f.name for f in dataclasses.fields(config_cls().default_hparams())}
        assert set(fields) <= names, set(fields) - names


def test_navigation_preset_applies_under_user_overrides():
    spec = runner.make_spec("ppo_lag", "SafePointGoal1", overrides={"num_envs": "8", "cost_limit": "10"})
    nav = presets.PRESETS["navigation"].overrides["PPOConfig"]
    assert spec.config["num_envs"] == 8  # the user's value wins
    assert spec.config["num_steps"] == nav["num_steps"] and spec.config["num_epochs"] == nav["num_epochs"]
    assert spec.config["anneal_lr"] is True and spec.config["max_grad_norm"] == 40.0
    assert spec.hparams["entropy_coef"] == nav["entropy_coef"] and spec.hparams["cost_limit"] == 10.0
    assert spec.hparams["initial_multiplier"] == pytest.approx(0.001)


def test_no_preset_and_tasks_without_one_keep_the_learner_defaults():
    plain = runner.make_spec("ppo_lag", "SafePointGoal1", preset=False)
    assert plain.config["num_envs"] == PPOConfig().num_envs and plain.config["num_epochs"] == PPOConfig().num_epochs
    cartpole = runner.make_spec("ppo", "SafeCartPole")
    assert cartpole.config["num_envs"] == PPOConfig().num_envs
    assert get_algorithm("ppo").preset("SafeCartPole") == (None, {})


def test_cpo_gets_its_own_fields_of_the_preset():
    name, fields = get_algorithm("cpo").preset("SafeCarGoal1")
    assert name == "navigation" and fields["critic_epochs"] == 10 and "num_minibatches" not in fields
    spec = runner.make_spec("cpo", "SafeCarGoal1")
    assert spec.config["num_envs"] == 40 and spec.config["critic_minibatches"] == 20


def test_cli_flag_and_table():
    args = build_parser().parse_args(["train", "ppo_lag", "--env", "SafePointGoal1", "--no-preset"])
    assert args.no_preset
    table = presets.describe_presets()
    assert "| navigation | PPOConfig |" in table and "`num_steps=500`" in table
