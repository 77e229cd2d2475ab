"""The import structure of gpmlip: arrows only point down (docs/theory.md §1).

Parses every module with :mod:`ast` (imports at the top and inside functions alike) and fails on
an import cycle between gpmlip modules, and on code outside ``gpmlip/gp/`` that reaches into a
fitted model's private or fitted attributes instead of its public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpmlip"

FITTED_ATTRIBUTES = {"posterior_", "kmm_", "stats_", "sparse_", "frames_", "features_",
                     "sparse_origin_", "e0_", "signal_variance_", "noise_", "state_"}
"""What a SparseGP keeps after fitting; outside ``gpmlip/gp/`` only its public API reads it."""

PUBLIC_MODEL_API = ("is_fitted", "check_fitted", "state", "training_frames", "sparse_set",
                    "signal_variances", "noise", "reference_energies", "version", "species",
                    "n_sparse_points", "log_likelihood", "predict", "pair_energies",
                    "local_std_normalised", "fit", "update", "optimise_hyperparameters",
                    "with_hyperparameters", "force_uncertainty", "set_state",
                    "save", "from_state")
"""What other modules use of a SparseGP (documentation for this test; see gpmlip.gp.model)."""


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """gpmlip modules ``name`` imports anywhere in its body (``from pkg import submodule``
    counts as the submodule; importing ``a.b.c`` does not count its parent packages)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                out.add(full if full in MODULES else module)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_function_level_imports():
    assert "gpmlip.errors" in GRAPH["gpmlip.gp.model"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    detail = ["; ".join(f"{a} -> {sorted(GRAPH[a] & set(c))}" for a in c) for c in cycles]
    assert not cycles, "import cycles between gpmlip modules:\n" + "\n".join(detail)


def _package(name: str) -> str:
    """``gpmlip.gp.model`` -> ``gpmlip.gp``; a top-level module is its own package."""
    return ".".join(name.split(".")[:2])


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, deps in graph.items():
        if a == "gpmlip":      # the top-level package re-exports everything: not a layer
            continue
        out.setdefault(_package(a), set())
        out[_package(a)].update(_package(b) for b in deps
                                if b != "gpmlip" and _package(b) != _package(a))
    for deps in list(out.values()):
        for b in deps:
            out.setdefault(b, set())
    return out


def test_no_package_imports_one_that_imports_it_back():
    graph = _package_graph(GRAPH)
    assert _cycles(_package_graph({"gpmlip.a.x": {"gpmlip.b.y"}, "gpmlip.b.y": set(),
                                   "gpmlip.b.z": {"gpmlip.a.w"}, "gpmlip.a.w": set()})) \
        == [["gpmlip.a", "gpmlip.b"]]
    cycles = _cycles(graph)
    detail = ["; ".join(f"{a} -> {b}" for a in sorted(GRAPH) for b in sorted(GRAPH[a])
                        if _package(a) in c and _package(b) in c and _package(a) != _package(b))
              for c in cycles]
    assert not cycles, "package cycles:\n" + "\n".join(detail)


GP_PUBLIC = {"gpmlip.gp", "gpmlip.gp.model", "gpmlip.gp.files", "gpmlip.gp.container",
             "gpmlip.gp.validation", "gpmlip.gp.calibration", "gpmlip.gp.selection",
             "gpmlip.gp.stress_std", "gpmlip.gp.energy_std"}
"""What other packages may import from ``gpmlip.gp``: the model, its files, leave-one-out and the
noise search, calibration, the energy and stress stds and sparse selection.  Kernels, kernel rows, the solver, the state and
the terms are GP internals."""


def test_gp_internals_stay_inside_gp():
    outside = [f"{a} -> {b}" for a in sorted(GRAPH) if not a.startswith("gpmlip.gp")
               and a != "gpmlip" for b in sorted(GRAPH[a])
               if b.startswith("gpmlip.gp.") and b not in GP_PUBLIC]
    assert not outside, ("GP internals imported outside gpmlip/gp/ (use the model's public "
                         "API):\n" + "\n".join(outside))


def _private_uses(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value.id if isinstance(node.value, ast.Name) else None
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        if node.attr in FITTED_ATTRIBUTES or (private and owner not in ("self", "cls")):
            out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return out


@pytest.mark.parametrize("name", [n for n in MODULES if not n.startswith("gpmlip.gp")])
def test_no_private_model_attributes_outside_gp(name):
    uses = _private_uses(MODULES[name])
    assert not uses, ("use the public SparseGP API (e.g. " + ", ".join(PUBLIC_MODEL_API[:8])
                      + ") instead of:\n" + "\n".join(uses))


def test_one_start_method_policy():
    """Child processes get their start method from gpmlip.parallel.mp_context only."""
    calls = []
    for name, path in MODULES.items():
        if name == "gpmlip.parallel":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute)
                    and node.attr in ("get_context", "set_start_method", "get_all_start_methods")):
                calls.append(f"{name}:{node.lineno}")
    assert not calls, f"use gpmlip.parallel.mp_context(kind) instead: {calls}"


def test_soap_satisfies_the_descriptor_protocol():
    import inspect

    from gpmlip.descriptors import SOAP, Descriptor
    from gpmlip.gp.model import SparseGP

    soap = SOAP(species=["Cu"], r_cut=4.0, n_max=3, l_max=2)
    assert isinstance(soap, Descriptor)
    assert inspect.signature(SparseGP).parameters["descriptor"].annotation == "Descriptor"


TERM_MODULES = {"gpmlip.gp.twobody", "gpmlip.gp.terms"}
"""Where the GP's terms live (gpmlip/gp/terms.py); the model's constructor checks its
``two_body`` setting's type and the package re-exports the settings class."""


def test_no_branch_on_a_terms_kind_outside_the_terms():
    importers = {a for a, deps in GRAPH.items() if "gpmlip.gp.twobody" in deps}
    assert importers <= TERM_MODULES | {"gpmlip.gp", "gpmlip.gp.model"}, sorted(importers)
    uses = []
    for name, path in MODULES.items():
        if name in TERM_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "two_body" and \
                    not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                uses.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not uses, ("use the Term protocol (state.terms, gpmlip.gp.terms) instead of the "
                      "two-body term by name:\n" + "\n".join(uses))


def test_the_two_body_term_satisfies_the_term_protocol():
    from gpmlip.gp.terms import TERM_TYPES, Term
    from gpmlip.gp.twobody import TwoBody

    term = TwoBody(r_cut=4.0, n_sparse=3).fitted(4.0, [29], 1e-8)
    assert isinstance(term, Term) and TERM_TYPES[term.parameter] is type(term)
    assert len(term) == 3 and term.kmm.shape == (3, 3)


def test_one_neighbour_search():
    """Every consumer gets its pairs from gpmlip.descriptors.neighbours.neighbour_list (one
    pair-list type, one search): nobody imports ASE's neighbour list or matscipy's."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            module = node.module if isinstance(node, ast.ImportFrom) else \
                " ".join(a.name for a in node.names) if isinstance(node, ast.Import) else ""
            if module and ("neighborlist" in module or "matscipy" in module):
                found.append(f"{name}:{node.lineno}: {module}")
    assert not found, found


def test_species_are_checked_in_one_place():
    """UnknownSpeciesError is raised by gpmlip.species.check_known (and by the LAMMPS bridge,
    which parses pair_coeff's element names), nowhere else."""
    raising = []
    for name, path in MODULES.items():
        if name in ("gpmlip.species", "gpmlip.lammps.bridge"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None and \
                    "UnknownSpeciesError" in ast.unparse(node.exc):
                raising.append(f"{name}:{node.lineno}")
    assert not raising, f"use gpmlip.species.check_known instead: {raising}"
