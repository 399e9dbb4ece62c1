"""`make demo` at a tiny budget: both sweeps run, the table and the figure are produced."""

from jaxsafe import demo


def test_demo_quick(tmp_path, capsys):
    results = demo.main(out_dir=tmp_path / "demo", quick=True, progress=False)
    printed = capsys.readouterr().out
    assert set(results) == {*demo.COST_LIMITS, "ppo"}
    for limit in demo.COST_LIMITS:
        assert f"PPO-Lag, limit {limit:g}" in printed
    assert "PPO (unconstrained)" in printed
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "ppo_lag" / "summary.json").exists()
