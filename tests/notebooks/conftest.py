"""Notebook tests: each notebook runs top to bottom at its small setting (``SMALL = True``) in a fresh kernel.

Each notebook has its own test file (``test_<name>.py``), so ``--dist loadfile`` spreads them over the workers.
The conventions (install cell, parameters cell, figures, no machine paths) live in ``scripts/notebooks.py``.
"""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("jaxsafe_notebooks", ROOT / "scripts" / "notebooks.py")
notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebooks)

SMALL_RUN_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


@pytest.fixture(scope="module")
def run_small(tmp_path_factory):
    """``run_small(name)`` executes ``notebooks/NAME.ipynb`` with ``SMALL = True`` and returns the executed
    notebook; fails on any cell error, on a notebook that draws no figure, or on outputs naming machine paths."""
    import nbformat

    def run(name):
        nb = notebooks.with_small(nbformat.read(notebooks.path_of(name), as_version=4))
        # The kernel (started by execute, inheriting this environment) compiles with XLA's cheapest CPU code
        # generation: the small runs are mostly compilation (23-40% less CPU per notebook, same results to ~6
        # digits); restored afterwards so that this worker's other tests are unaffected.
        saved = os.environ.get("XLA_FLAGS")
        os.environ["XLA_FLAGS"] = f"{saved or ''} {SMALL_RUN_XLA_FLAGS}".strip()
        try:
            notebooks.execute(nb, tmp_path_factory.mktemp(name), timeout=600)
        finally:
            if saved is None:
                os.environ.pop("XLA_FLAGS")
            else:
                os.environ["XLA_FLAGS"] = saved
        assert notebooks.images(nb) >= 1, f"{name}: the small run drew no figure"
        assert not notebooks.machine_paths(nb), f"{name}: outputs name machine paths: {notebooks.machine_paths(nb)}"
        return nb

    return run


def outputs_text(nb) -> str:
    """All text the notebook's code cells printed or displayed (for asserting on results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)
