"""The API reference (``make docs``: scripts/docs.py) and the guides it links.

The reference is built once, by the same function ``make docs`` calls, with every pdoc warning an error; then
every public module must have a page reachable from its package's page, the landing page must link every guide
in docs/, and every relative link in docs/papers.md must name a file that exists.
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("jaxsafe_docs", ROOT / "scripts" / "docs.py")
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)

MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def page_of(out: Path, name: str) -> Path:
    return out / f"{name.replace('.', '/')}.html"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(output folder, documented module names); the build raises on any pdoc warning."""
    out = tmp_path_factory.mktemp("docs")
    return out, docs.build(out, show_source=False)


def test_every_public_module_has_a_page(reference):
    out, names = reference
    assert {"jaxsafe", "jaxsafe.rl", "jaxsafe.rl.ppo", "jaxsafe.envs.core", "jaxsafe.llm.tasks.arithmetic"} <= set(
        names)
    assert not [name for name in names if name.split(".")[-1].startswith("_")]
    assert not [name for name in names if not page_of(out, name).is_file()]
    assert 'url=./jaxsafe.html' in (out / "index.html").read_text()  # the landing page is the package docstring


def test_every_module_page_is_linked_from_its_package_page(reference):
    out, names = reference
    unlinked = []
    for name in names[1:]:
        parent, child = name.rsplit(".", 1)
        if f'href="{parent.rsplit(".", 1)[-1]}/{child}.html"' not in page_of(out, parent).read_text():
            unlinked.append(name)
    assert not unlinked, f"no link from the package page to {unlinked}"


def test_no_page_shows_a_restructuredtext_literal_marker(reference):
    out, names = reference
    assert not [name for name in names if "::</p>" in page_of(out, name).read_text()]  # "Usage::" reads "Usage:"


def test_a_pdoc_warning_fails_the_build(tmp_path, monkeypatch):
    (tmp_path / "docs_bad_annotation.py").write_text(
        '"""A module."""\nfrom __future__ import annotations\n\n\n'
        'def f(x: NotImported) -> None:  # noqa: F821\n    """A function."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(RuntimeError, match="NotImported"):
            docs.render(["docs_bad_annotation"], tmp_path / "out")
    finally:
        sys.modules.pop("docs_bad_annotation", None)


def test_landing_page_links_every_guide():
    import jaxsafe

    guides = f"{docs.repository_url()}/blob/main/docs/"
    links = [link for link in MARKDOWN_LINK.findall(jaxsafe.__doc__) if "://" in link]
    assert links and all(link.startswith(guides) for link in links), links  # pyproject's [project.urls] Repository
    linked = {link[len(guides):] for link in links}
    assert not [name for name in linked if not (ROOT / "docs" / name).is_file()]
    assert not sorted({p.name for p in (ROOT / "docs").glob("*.md")} - linked)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown page (lower case, punctuation dropped, spaces to '-')."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_paper_map_links_resolve():
    papers = ROOT / "docs" / "papers.md"
    links = [link for link in MARKDOWN_LINK.findall(papers.read_text()) if not re.match(r"[a-z]+:", link)]
    assert len(links) > 40
    missing, bad_anchors = set(), set()
    for link in links:
        path, _, anchor = link.partition("#")
        target = (papers.parent / path) if path else papers
        if not target.exists():
            missing.add(path)
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text()):
            bad_anchors.add(link)
    assert not missing, f"docs/papers.md links to files that do not exist: {sorted(missing)}"
    assert not bad_anchors, f"docs/papers.md links to headings that do not exist: {sorted(bad_anchors)}"
