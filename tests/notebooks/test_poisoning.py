from .conftest import outputs_text


def test_poisoning_runs_at_small_size(run_small):
    nb = run_small("poisoning")
    text = outputs_text(nb)
    assert "dual bound at the LP multipliers" in text
    assert "fractional pairs <= rank everywhere: True" in text  # a vertex of the LP, on every cell
    assert "last-layer DPO length" in text
