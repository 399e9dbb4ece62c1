from .conftest import outputs_text


def test_flipping_runs_at_small_size(run_small):
    nb = run_small("flipping")
    text = outputs_text(nb)
    assert "LP mixture (betas, w)" in text
    assert "flip once per episode / best deterministic" in text
