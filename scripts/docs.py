"""The API reference: pdoc renders every public module of jaxsafe to HTML from its docstrings; any warning pdoc
raises fails the build.

    python scripts/docs.py [OUT]        # default build/docs (what `make docs` runs); open OUT/index.html

The landing page is the ``jaxsafe`` package docstring, which links the guides in ``docs/``. Docstrings are
Google style (``Args:``) with reStructuredText roles (``:func:`x```), pdoc's ``google`` format. The "Edit on
GitHub" links come from ``[project.urls] Repository`` in pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "jaxsafe"
DEFAULT_OUT = ROOT / "build" / "docs"

# Each package page lists every documented module below it. pdoc's own list follows a package's ``__all__``
# (which names functions, not submodules, in e.g. jaxsafe.envs) and skips folders without ``__init__.py``
# (jaxsafe/rl), so those pages would be reachable only through the search box.
_NAV_TEMPLATE = """{% extends "default/module.html.jinja2" %}
{% block nav_submodules %}
    {% set children = documented_below(module.modulename, all_modules) %}
    {% if children %}
        <h2>Submodules</h2>
        <ul>
            {% for name in children %}
                <li>{{ all_modules[name].taken_from | link(text=name[module.modulename | length + 1:]) }}</li>
            {% endfor %}
        </ul>
    {% endif %}
{% endblock %}
"""


# reStructuredText's "Usage::" opens a literal block and reads "Usage:" ("Usage ::" and a lone "::" read as
# nothing); pdoc's reStructuredText conversion keeps the "::", so it is rewritten before each conversion.
_SPACED_LITERAL_MARKER = re.compile(r"(^|[ \t]+)::$", flags=re.M)
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", flags=re.M)


def _without_literal_markers(docstring: str) -> str:
    return _LITERAL_MARKER.sub(":", _SPACED_LITERAL_MARKER.sub("", docstring))


def repository_url() -> str:
    """The repository address from ``[project.urls] Repository`` (the notebooks' one reader of it)."""
    spec = importlib.util.spec_from_file_location("jaxsafe_notebook_conventions", ROOT / "scripts" / "notebooks.py")
    conventions = importlib.util.module_from_spec(spec)  # by path: "notebooks" is also the tests' package name
    spec.loader.exec_module(conventions)
    return conventions.repository_url()


def module_names() -> list[str]:
    """Every public module of the package, found from its files: each ``.py`` file and each folder of them (a
    folder without ``__init__.py``, such as jaxsafe/rl, is a namespace package); a part starting with ``_`` is
    private."""
    package_dir = Path(importlib.import_module(PACKAGE).__file__).parent
    names = set()
    for path in package_dir.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(package_dir).with_suffix("").parts)
        for depth in range(1, len(parts) + 1):
            name = parts[:depth] if parts[depth - 1] != "__init__" else parts[:depth - 1]
            if not any(part.startswith("_") for part in name):
                names.add(".".join(name))
    return sorted(names)


def documented_below(name: str, all_modules) -> list[str]:
    """The documented modules under ``name`` whose parents between them and ``name`` have no page of their own."""
    below = sorted(m for m in all_modules if m.startswith(name + "."))
    return [m for m in below if not any(p in all_modules for p in _parents_between(name, m))]


def _parents_between(name: str, module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(name.split(".")) + 1, len(parts))]


def _resolve_named_tuple_annotations(modules) -> None:
    """Point each NamedTuple's generated ``__new__`` at its defining module, so pdoc resolves its field types.

    ``collections.namedtuple`` compiles ``__new__`` in a namespace of its own (``__module__`` is
    ``namedtuple_Name``), so with ``from __future__ import annotations`` pdoc finds none of the names in a field
    annotation and warns for every field (pdoc issue #765, open in pdoc 16). Only this process's classes change.
    """
    for module in modules:
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields")
                    and obj.__module__ == module.__name__
                    and getattr(obj.__new__, "__module__", "").startswith("namedtuple_")):
                obj.__new__.__module__ = module.__name__


def build(out: Path | str = DEFAULT_OUT, show_source: bool = True) -> list[str]:
    """Render the reference into ``out`` (``out/index.html`` opens the landing page); returns the documented
    module names. ``show_source=False`` leaves out each member's highlighted source, which is half the build
    time (the tests build without it: pdoc's warnings come from signatures and docstrings, not from the source).
    Raises ``RuntimeError`` as :func:`render` does.
    """
    names = module_names()
    modules = [importlib.import_module(name) for name in names]  # import warnings of dependencies are not pdoc's
    _resolve_named_tuple_annotations(modules)
    render(names, out, show_source=show_source, footer_text=f"{PACKAGE} {modules[0].__version__}",
           edit_url_map={PACKAGE: f"{repository_url()}/blob/main/{PACKAGE}/"})
    return names


def render(specs: list[str], out: Path | str, **options) -> None:
    """pdoc's render of ``specs`` (module names or paths, the first one walked with its submodules) into ``out``
    in this reference's style (``options`` go to ``pdoc.render.configure``). Raises ``RuntimeError`` listing
    every warning pdoc raised (a type annotation it cannot resolve, a module it cannot import, a docstring it
    cannot convert) once everything has been rendered."""
    import jax
    import jinja2
    import pdoc
    import pdoc.extract
    import pdoc.render

    pdoc.render.configure(docformat="google", **options)
    env = pdoc.render.env
    default_loader = env.loader
    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader({"module.html.jinja2": _NAV_TEMPLATE}), default_loader])
    env.globals["documented_below"] = documented_below
    default_to_markdown = env.filters["to_markdown"]
    env.filters["to_markdown"] = jinja2.pass_context(
        lambda context, docstring: default_to_markdown(context, _without_literal_markers(docstring)))
    # jax sets ``jax.Array.__module__ = "jax"`` but leaves the qualname "jaxlib._jax.Array", so every signature
    # would read ``jax.jaxlib._jax.Array``; for the render it reads ``jax.Array``, as the annotations say.
    array_qualname, jax.Array.__qualname__ = jax.Array.__qualname__, "Array"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # The first spec walked, then only the modules its walk misses, so that no page is rendered twice.
            walked = pdoc.extract.walk_specs(specs[:1])
            pdoc.pdoc(*specs[:1], *(s for s in specs[1:] if s not in walked), output_directory=Path(out))
    finally:
        jax.Array.__qualname__ = array_qualname
        env.loader = default_loader
        env.filters["to_markdown"] = default_to_markdown
        del env.globals["documented_below"]
    problems = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    if problems:
        raise RuntimeError(f"pdoc raised {len(problems)} warning(s):\n" + "\n".join(problems))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_OUT
    try:
        names = build(out)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{len(names)} modules documented in {out}/ (open {out}/index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
