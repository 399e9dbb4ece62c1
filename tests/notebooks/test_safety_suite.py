from .conftest import outputs_text


def test_safety_suite_runs_at_small_size(run_small):
    nb = run_small("safety_suite")
    text = outputs_text(nb)
    assert "final return" in text and "SafePointGoal1" in text
    assert "random policy" in text and "cost/step" in text
