from .conftest import outputs_text


def test_quickstart_runs_at_small_size(run_small):
    nb = run_small("quickstart")
    text = outputs_text(nb)
    assert "final return" in text and "PPO (unconstrained)" in text
    assert "runs in one program" in text
