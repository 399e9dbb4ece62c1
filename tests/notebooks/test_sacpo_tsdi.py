from .conftest import outputs_text


def test_sacpo_tsdi_runs_at_small_size(run_small):
    nb = run_small("sacpo_tsdi")
    text = outputs_text(nb)
    assert "lambda* of the exact dual" in text
    assert "KL->pi*" in text  # the exact scoring table
    assert "benign refusal" in text  # the TSDI table
    assert "dominated area, SACPO + TSDI" in text
