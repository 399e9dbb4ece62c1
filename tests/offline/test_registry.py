"""The offline learners in the algorithm registry: a dataset file is the problem."""

import numpy as np
import pytest

from jaxsafe.algorithms import get_algorithm
from jaxsafe.offline import registry
from jaxsafe.offline.dataset import from_transitions, save_npz


def test_offline_algorithms_are_registered_on_dataset_files(tmp_path):
    n = 6
    obs = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    data = from_transitions(obs, obs, np.zeros((n, 1), np.float32), np.ones(n, np.float32), np.zeros(n, np.float32),
                            np.zeros(n, bool), np.arange(n) % 3 == 2)
    path = save_npz(data, tmp_path / "data.npz")
    for name, safe_only in (("bc_all", False), ("bc_safe", True), ("cdt", None), ("bcq_lag", None)):
        algo = get_algorithm(name)
        assert algo.problems is registry.DATASETS and algo.make_act is None
        if safe_only is not None:
            assert algo.make_config().safe_only is safe_only
    loaded = registry.make_dataset(str(path))
    np.testing.assert_array_equal(loaded.returns_to_go, data.returns_to_go)
    parts = get_algorithm("cdt").make_train_parts(get_algorithm("cdt").make_config(context_len=3, d_model=8,
                                                                                    n_heads=2, n_layers=1), loaded)
    assert parts.num_updates == 100_000 and parts.steps_per_update == 2048
    with pytest.raises(ValueError, match="does not exist"):
        registry.make_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="takes no overrides"):
        registry.make_dataset(str(path), horizon=3)
