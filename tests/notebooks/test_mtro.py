from .conftest import outputs_text


def test_mtro_runs_at_small_size(run_small):
    nb = run_small("mtro")
    text = outputs_text(nb)
    assert "model return accuracy a_g" in text
    assert "derd_barp" in text and "95% CI" in text
