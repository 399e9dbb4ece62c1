"""The committed notebooks follow the conventions of ``scripts/notebooks.py`` (no kernel needed)."""

import re

import nbformat
import pytest

from .conftest import ROOT, notebooks

NAMES = notebooks.notebook_names()


def test_there_are_notebooks_and_each_has_a_test_file():
    assert NAMES, "notebooks/ holds no notebook"
    missing = [n for n in NAMES if not (ROOT / "tests" / "notebooks" / f"test_{n}.py").exists()]
    assert not missing, f"notebooks without a test file tests/notebooks/test_<name>.py: {missing}"


def test_repository_url_is_a_github_address():
    assert notebooks.github_path(notebooks.repository_url())


@pytest.mark.parametrize("name", NAMES)
def test_notebook_conventions(name):
    nb = nbformat.read(notebooks.path_of(name), as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell: a title"
    assert notebooks.badge(name) in nb.cells[0].source, "the title cell's Colab badge is not the pyproject address"
    install = nb.cells[notebooks.tagged(nb, "install")]
    assert install.source == notebooks.install_cell_source(), "install cell out of sync: scripts/notebooks.py sync"
    parameters = nb.cells[notebooks.tagged(nb, "parameters")]
    assert re.search(r"^SMALL = False\b", parameters.source, re.M), "the parameters cell must set SMALL = False"
    assert notebooks.tagged(nb, "install") < notebooks.tagged(nb, "parameters")


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_a_real_run(name):
    """Committed with the outputs of a run at the default size: every code cell ran, no errors, figures shown,
    no machine-specific paths."""
    nb = nbformat.read(notebooks.path_of(name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "some code cells were not executed"
    counts = [c.execution_count for c in code]
    assert counts == sorted(counts), "cells were executed out of order"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs), "an output is an error"
    assert notebooks.images(nb) >= 1, "no figure in the committed outputs"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), "committed at SMALL"
    assert not notebooks.machine_paths(nb), notebooks.machine_paths(nb)


def test_readme_links_every_notebook():
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in NAMES if notebooks.colab_url(n) not in readme]
    assert not missing, f"README has no Colab badge for: {missing}"
