"""SACPO and Safe-RLHF in the algorithm registry: problems by name, and the generic chunked runner."""

import jax
import numpy as np
import pytest

from jaxsafe import algorithms, runner, sweep
from jaxsafe.llm import sacpo, sacpo_experiment

TINY_TASK = {"pairs": 256, "sft_steps": 5}


def test_registry_entries_and_problem_options_are_checked_before_any_work():
    assert {"sacpo", "safe_rlhf"} <= set(algorithms.list_algorithms())
    entry = algorithms.get_algorithm("sacpo")
    assert entry.step_unit == "examples" and entry.cost_limit_field is None and "loss" in entry.curve_metrics
    assert entry.problems.names() == ["safety_language", "safety_language_large"]
    assert algorithms.get_algorithm("safe_rlhf").cost_limit_field == "cost_limit"
    with pytest.raises(ValueError, match="unknown option.*'temperature'"):
        entry.problems.make("safety_language", temperature=2.0)
    with pytest.raises(ValueError, match="problem must be one of"):
        entry.problems.make("arithmetic")
    with pytest.raises(ValueError, match="loss must be one of"):
        entry.problems.make("safety_language", loss="ipo")
    with pytest.raises(ValueError, match="n_pairs must be an integer >= 2"):
        entry.problems.make("safety_language", pairs=1)


def test_chunked_and_resumed_run_equals_one_train_call(tmp_path):
    """``jaxsafe sweep sacpo --problem safety_language --grid lagrange_multipliers=...`` through the runner:
    the learner state (nnx params, Adam moments, raw key) checkpoints, and a run stopped after one chunk and
    resumed ends where one ``train`` call over the same grid ends (to float reassociation: chunked scans are
    compiled apart from the one whole scan; the params move by ~6e-3)."""
    spec = runner.make_spec("sacpo", "safety_language",
                            overrides={"n_steps": 3, "batch_size": 32, "beta": "0.5"},
                            problem_overrides=TINY_TASK, grid={"lagrange_multipliers": [0.5,
                                                                                        2.0]}, num_chunks=3)
    out = tmp_path / "run"
    runner.run_training(spec, out, progress=False, plot=False, stop_after_chunks=1)
    resumed = runner.resume_training(out, progress=False, plot=False)
    assert resumed.summary["complete"] and resumed.summary["step_unit"] == "examples"
    rows = resumed.rows
    assert {"loss", "grad_norm", "stage", "lagrange_multipliers"} <= set(rows[-1]) and len(rows) == 2 * 3

    problem = sacpo_experiment.make_problem("safety_language", **TINY_TASK)
    config = sacpo.SACPOConfig(n_steps=3, batch_size=32)
    grid = sweep.make_grid(config.default_hparams(), seeds=1, lagrange_multipliers=[0.5, 2.0])
    direct = sweep.run_grid(sacpo.make_train(config, problem), grid)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(direct.params)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_safe_rlhf_runs_from_the_registry(tmp_path):
    """The Safe-RLHF entry end to end at toy size: the problem (SFT, data, reward and cost models) by name, two PPO
    iterations through the runner, the learner state (with the multiplier state) checkpointed."""
    spec = runner.make_spec("safe_rlhf", "safety_language",
                            overrides={"n_iterations": 2, "prompts_per_iteration": 2, "samples_per_prompt": 2,
                                       "ppo_epochs": 1, "cost_limit": "-1"},
                            problem_overrides={**TINY_TASK, "score_steps": 3}, num_chunks=2)
    result = runner.run_training(spec, tmp_path / "run", progress=False, plot=False)
    assert result.summary["complete"] and result.summary["step_unit"] == "samples"
    last = result.rows[-1]
    assert last["steps"] == 2 * 4 and {"measured_cost", "measured_reward", "multiplier"} <= set(last)
    assert (tmp_path / "run" / "checkpoints").is_dir()
