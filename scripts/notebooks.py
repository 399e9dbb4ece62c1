"""The notebooks' conventions in one place: their install cell and Colab badge (from ``[project.urls]``), the
parameters cell, and execution in a fresh kernel.

    python scripts/notebooks.py list                  # the notebooks and their titles
    python scripts/notebooks.py sync                  # rewrite every install cell and badge from pyproject.toml
    python scripts/notebooks.py run NAME [NAME ...]   # execute at the notebook's default size, outputs saved in place
    python scripts/notebooks.py run NAME --small      # the tests' size, outputs not saved

Every notebook in ``notebooks/`` has, in order: a markdown title cell whose first line after the heading is the
Colab badge; the install cell (tagged ``install``); the parameters cell (tagged ``parameters``) that sets
``SMALL = False``. The test suite inserts ``SMALL = True`` right after the parameters cell (papermill's
convention), so every size the notebook uses must be derived from ``SMALL`` in a later cell.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT_S = 1800
# Output text that would leak the machine a notebook ran on.
MACHINE_PATHS = re.compile(r"(/work/|/home/|/root/|/tmp/|/private/var/|/Users/|C:\\\\Users|site-packages)")


def repository_url() -> str:
    """The repository address from ``[project.urls] Repository`` in pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def github_path(url: str) -> str:
    """``owner/name`` of a https://github.com/owner/name address."""
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?", url)
    if match is None:
        raise ValueError(f"[project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return match.group(1)


def colab_url(name: str, url: str | None = None) -> str:
    return f"https://colab.research.google.com/github/{github_path(url or repository_url())}/blob/main/notebooks/{name}.ipynb"


def badge(name: str, url: str | None = None) -> str:
    """The markdown Colab badge for ``notebooks/NAME.ipynb``."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name, url)})"


def install_source(url: str | None = None) -> str:
    return f"git+{url or repository_url()}.git"


def install_cell_source(url: str | None = None) -> str:
    """The first code cell of every notebook: installs jaxsafe unless it is already importable."""
    return (
        "# Installs jaxsafe from the repository when it is not importable (a fresh Colab runtime); skipped in a\n"
        "# checkout where jaxsafe is installed. JAXSAFE_SOURCE overrides what pip installs (a path or an address).\n"
        "import importlib.util, os, subprocess, sys\n"
        "\n"
        "if importlib.util.find_spec(\"jaxsafe\") is None:\n"
        f"    source = os.environ.get(\"JAXSAFE_SOURCE\", \"{install_source(url)}\")\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"--quiet\", source], check=True)"
    )


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def path_of(name: str) -> Path:
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        raise SystemExit(f"no notebook {name!r} in notebooks/ (have: {', '.join(notebook_names()) or 'none'})")
    return path


def tagged(nb, tag: str) -> int:
    """The index of the one cell tagged ``tag``."""
    hits = [i for i, cell in enumerate(nb.cells) if tag in cell.get("metadata", {}).get("tags", [])]
    if len(hits) != 1:
        raise ValueError(f"expected exactly one cell tagged {tag!r}, found {len(hits)}")
    return hits[0]


def sync(nb, name: str) -> bool:
    """Rewrite the install cell and the title cell's badge from pyproject.toml; True when anything changed."""
    changed = False
    install = nb.cells[tagged(nb, "install")]
    if install.source != install_cell_source():
        install.source, changed = install_cell_source(), True
    title = nb.cells[0]
    lines = title.source.split("\n")
    badge_lines = [i for i, line in enumerate(lines) if "colab-badge.svg" in line]
    if badge_lines:
        if lines[badge_lines[0]] != badge(name):
            lines[badge_lines[0]], changed = badge(name), True
    else:
        lines.insert(1, badge(name))
        changed = True
    title.source = "\n".join(lines)
    return changed


def with_small(nb):
    """A copy of ``nb`` with ``SMALL = True`` inserted after its parameters cell."""
    import copy

    import nbformat

    nb = copy.deepcopy(nb)
    at = tagged(nb, "parameters") + 1
    injected = nbformat.v4.new_code_cell("SMALL = True  # injected by the test suite", metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at, injected)
    return nb


def execute(nb, cwd: str | os.PathLike, timeout: int = CELL_TIMEOUT_S):
    """Run every cell of ``nb`` in a fresh kernel started in ``cwd``; raises ``CellExecutionError`` on an error."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def images(nb) -> int:
    """How many figures (PNG or SVG outputs) the notebook's outputs hold."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if any(k in out.get("data", {}) for k in ("image/png", "image/svg+xml")))


def machine_paths(nb) -> list[str]:
    """Output lines that name a path on the machine the notebook ran on."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts = [out.get("text", "")] + [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
            texts += out.get("traceback", [])
            for text in texts:
                text = "".join(text) if isinstance(text, list) else text
                found += [line.strip()[:200] for line in text.splitlines() if MACHINE_PATHS.search(line)]
    return found


def main(argv=None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    sub.add_parser("sync")
    run = sub.add_parser("run")
    run.add_argument("names", nargs="+")
    run.add_argument("--small", action="store_true", help="the tests' size; outputs are not saved")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in notebook_names():
            nb = nbformat.read(path_of(name), as_version=4)
            print(f"{name:24s} {nb.cells[0].source.splitlines()[0].lstrip('# ')}")
        return 0
    if args.command == "sync":
        for name in notebook_names():
            path = path_of(name)
            nb = nbformat.read(path, as_version=4)
            if sync(nb, name):
                nbformat.write(nb, path)
                print(f"synced {path.relative_to(ROOT)}")
        return 0
    for name in args.names:
        path = path_of(name)
        nb = nbformat.read(path, as_version=4)
        sync(nb, name)
        if args.small:
            nb = with_small(nb)
        with tempfile.TemporaryDirectory() as cwd:
            execute(nb, cwd)
        leaks = machine_paths(nb)
        print(f"{name}: {images(nb)} figures" + (f"; machine paths in outputs: {leaks}" if leaks else ""))
        if not args.small:
            nbformat.write(nb, path)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
