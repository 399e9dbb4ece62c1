from .conftest import outputs_text


def test_ogsrl_runs_at_small_size(run_small):
    nb = run_small("ogsrl")
    text = outputs_text(nb)
    assert "TRUE: mortality" in text and "GMB-CPO" in text and "SoC (clinicians)" in text
    assert "ICU-Sepsis track skipped" in text or "clinician episodes" in text
