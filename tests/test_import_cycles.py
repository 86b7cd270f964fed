"""No import circles inside a package: a module never imports (directly or through others) a module that
imports it back.

Why: a circle makes the import order decide what is defined (a partly initialised module), and it ties
modules that should change apart. The graph is grimp's (what import-linter checks the contracts on), lazy
imports inside functions included; a package's ``__init__`` counts as a module of it.
"""

from __future__ import annotations

import graphlib

import grimp
import pytest

PACKAGES = [
    "featstore",
    "featstore.store",
    "featstore.datasets",
    "distill",
    "distill.models",
    "distill.training",
    "distill.losses",
    "distill.evaluation",
    "cli",
]
"""The packages held free of circles (each room on its own, so a failure names it; ``distill`` as a whole for
circles between rooms)."""


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # annotation-only imports (under TYPE_CHECKING) are left out, as in the import-linter contracts
    return grimp.build_graph("featstore", "distill", "cli", cache_dir=None, exclude_type_checking_imports=True)


def import_cycle(graph: grimp.ImportGraph, package: str) -> list[str] | None:
    """One circle of imports among ``package``'s modules (each importing the next, the last the first), or None."""
    modules = {m for m in graph.modules if m == package or m.startswith(f"{package}.")}
    imports = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    try:
        graphlib.TopologicalSorter(imports).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_cycle_finder_sees_a_circle():
    circle = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        circle.add_module(module)
    circle.add_import(importer="pkg.a", imported="pkg.b")
    circle.add_import(importer="pkg.b", imported="pkg.c")
    circle.add_import(importer="pkg.c", imported="pkg.a")
    assert set(import_cycle(circle, "pkg")) == {"pkg.a", "pkg.b", "pkg.c"}
    circle.remove_import(importer="pkg.c", imported="pkg.a")
    assert import_cycle(circle, "pkg") is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(graph, package):
    cycle = import_cycle(graph, package)
    assert cycle is None, f"import circle in {package}: {' -> '.join(cycle)}"
