from .conftest import outputs_text


def test_iama_runs_at_small_size(run_small):
    nb = run_small("iama")
    text = outputs_text(nb)
    assert "N = 1 is the plain reward" in text
    assert "Theorem 5.2" in text
    assert "derivative reward of sum[bon:4, bon:4]" in text
    assert "IAMA sum[bon:4,bon:4]" in text  # the GRPO table row
