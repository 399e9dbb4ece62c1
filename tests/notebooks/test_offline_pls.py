from .conftest import outputs_text


def test_offline_pls_runs_at_small_size(run_small):
    nb = run_small("offline_pls")
    text = outputs_text(nb)
    assert "within b = 3" in text                # the dataset summary
    assert "norm. reward" in text                # the CDT / BC-Safe evaluation table
    assert "naive_search" in text and "violations" in text   # PLS against the naive search
