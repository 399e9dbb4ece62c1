"""Bi-level experiments: the run directory of compare_estimators, its refusals, and the thin CLI on top."""

import json

import numpy as np
import pytest

from jaxsafe import cli as jaxsafe_cli
from jaxsafe.bilevel import experiment
from jaxsafe.logging import RunDirExists

SETTINGS = dict(seeds=2, iterations=5, samples=50)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bilevel") / "run"
    summary = experiment.compare_estimators("discrete_toy_r1", ["bchg", "bchg_no_guidance"], out,
                                            verbose=False, **SETTINGS)
    return out, summary


def test_compare_estimators_writes_a_run_directory(toy_run):
    run, summary = toy_run
    config = json.loads((run / "config.json").read_text())
    assert config["problem"] == "discrete_toy_r1" and config["estimators"] == ["bchg", "bchg_no_guidance"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 5
    assert {"run", "seed", "iteration", "steps", "leader_value", "nonfinite"} <= set(rows[0])
    assert [r["steps"] for r in rows[:5]] == [50, 100, 150, 200, 250]
    on_disk = json.loads((run / "summary.json").read_text())
    assert set(on_disk) == {"bchg", "bchg_no_guidance"} and "final_optimality_gap" in on_disk["bchg"]
    # The summary's final value is the mean over the last 10% (here: the last iteration) of each seed's curve.
    finals = [r["leader_value"] for r in rows if r["run"] == "bchg" and r["iteration"] == 4]
    np.testing.assert_allclose(on_disk["bchg"]["final_leader_value"]["mean"], np.mean(finals), rtol=1e-6)
    assert summary["bchg"]["final_leader_value"]["mean"] == pytest.approx(np.mean(finals), rel=1e-6)
    assert (run / "curves.png").stat().st_size > 1000


def test_a_new_run_never_touches_an_existing_directory(toy_run):
    run, _ = toy_run
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunDirExists):
        experiment.compare_estimators("discrete_toy_r1", "bchg", run, verbose=False, **SETTINGS)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(problem_name="discrete_toy_r1", estimators="hpgd_mc"), "estimator 'hpgd_mc' does not apply"),
    (dict(problem_name="nowhere", estimators="bchg"), "unknown bi-level problem 'nowhere'"),
    (dict(problem_name="discrete_toy_r1", estimators="bchg", seeds=0), "seeds must be an integer >= 1"),
    (dict(problem_name="discrete_toy_r1", estimators="bchg", leader_lr=-1.0), "BilevelHParams.leader_lr"),
    (dict(problem_name="discrete_toy_r1", estimators="bchg", critic="mc"), "BilevelConfig.critic must be"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        experiment.compare_estimators(out_dir=out, verbose=False, **{**SETTINGS, **kwargs})
    assert not out.exists()


def test_cli_is_a_thin_handler_with_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        jaxsafe_cli.main(["bilevel", "--help"])
    assert exited.value.code == 0 and "compare_estimators" in capsys.readouterr().out
    out = tmp_path / "cli_run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        jaxsafe_cli.main(["bilevel", "--problem", "discrete_toy_r1", "--seeds", "1", "--iters", "2",
                          "--samples", "20", "--out", str(out)])
    assert exited.value.code == 2 and str(out) in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
