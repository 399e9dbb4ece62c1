from .conftest import outputs_text


def test_bilevel_runs_at_small_size(run_small):
    nb = run_small("bilevel")
    text = outputs_text(nb)
    assert "cosine to exact" in text
    assert "final leader value" in text
