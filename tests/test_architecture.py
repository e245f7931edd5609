"""The package layout's rules (docs/architecture.md): `care/` never imports ZenML or the packages built on
it, and the top-level packages import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("care", "care_cli", "steps", "pipelines", "zenml_registry")
ALLOWED = {  # package -> the project packages it may import
    "care": set(),
    "zenml_registry": {"care"},
    "steps": {"care", "zenml_registry"},
    "pipelines": {"care", "steps", "zenml_registry"},
    "care_cli": {"care", "pipelines", "zenml_registry"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _graph() -> dict[str, set[str]]:
    graph = {}
    for pkg in PACKAGES:
        found = set()
        for path in (ROOT / pkg).rglob("*.py"):
            found |= _imports(path)
        graph[pkg] = found
    return graph


def test_care_imports_no_zenml_and_no_package_built_on_it():
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"zenml", *PACKAGES[1:]})
                 for p in (ROOT / "care").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_top_level_packages_follow_the_layering_without_cycles():
    graph = _graph()
    for pkg, imported in graph.items():
        project = (imported & set(PACKAGES)) - {pkg}
        assert project <= ALLOWED[pkg], f"{pkg} imports {sorted(project - ALLOWED[pkg])}"
    order, seen = [], set()

    def visit(pkg: str, stack: tuple[str, ...]) -> None:
        assert pkg not in stack, f"import cycle: {' -> '.join(stack + (pkg,))}"
        if pkg in seen:
            return
        for dep in sorted((graph[pkg] & set(PACKAGES)) - {pkg}):
            visit(dep, stack + (pkg,))
        seen.add(pkg)
        order.append(pkg)

    for pkg in PACKAGES:
        visit(pkg, ())
    assert order[0] == "care"


CARE_LAYERS = {  # care's sub-packages -> the sub-packages they may import (the core modules are open to all)
    "data": set(),
    "model": {"data"},
    "evaluation": {"data", "model"},
    "release": {"data", "model", "evaluation"},
    "registry": set(),
    "run": {"data", "model", "evaluation", "release"},
    "report": {"data"},
}
CORE = {"errors", "fsutil", "params", "cache", "safe_yaml", "logs"}


def test_care_sub_packages_follow_the_data_path():
    for sub, allowed in CARE_LAYERS.items():
        used = set()
        for path in (ROOT / "care" / sub).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_bytes())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                used.update(n.split(".")[1] for n in names if n.startswith("care.") and n.split(".")[1] != sub)
        assert used - CORE <= allowed, f"care.{sub} imports care.{sorted(used - CORE - allowed)}"


def test_care_top_level_modules_are_the_core_modules():
    assert {p.stem for p in (ROOT / "care").glob("*.py")} - {"__init__"} == CORE


REGISTRY_MODULES = {  # zenml_registry's modules -> the modules of it they may import (no cycle: client on top)
    "storage": set(),  # content-addressed package storage in the artifact store, verified fetch
    "lock": set(),  # the promotion lock (a ZenML tag)
    "client": {"storage", "lock"},  # register, promote, list, show, pull
}


def test_registry_modules_are_listed_and_layered():
    root = ROOT / "zenml_registry"
    assert {p.stem for p in root.glob("*.py")} - {"__init__"} == set(REGISTRY_MODULES)
    for module, allowed in REGISTRY_MODULES.items():
        tree = ast.parse((root / f"{module}.py").read_bytes())
        used = {n.split(".")[1] for node in ast.walk(tree)
                for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                          [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                if n.startswith("zenml_registry.")}
        assert used <= allowed, f"zenml_registry.{module} imports {sorted(used - allowed)}"
