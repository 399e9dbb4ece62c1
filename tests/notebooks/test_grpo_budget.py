from .conftest import outputs_text


def test_grpo_budget_runs_at_small_size(run_small):
    nb = run_small("grpo_budget")
    text = outputs_text(nb)
    assert "censored_gamma_mle" in text          # the estimator table fitted the censored caps
    assert "dJ/1k tokens" in text                # the results table
    assert "peak per token at xi0" in text
