"""The import graph of the installed packages: no cycles, and arrows that point down only.

Every module belongs to one layer of ``LAYERS`` (top first; ARCHITECTURE.md draws the same
floors). A module may import its own layer or any layer below it, never one above, and no module
may import one that imports it back, however indirectly. Imports inside functions and under
``TYPE_CHECKING`` count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGES = ("ui", "agent", "tools", "prompts")

#: Floors, top first: (name, module prefixes). The longest matching prefix places a module.
LAYERS = (
    ("ui", ("ui",)),
    ("commands", ("agent.cli",)),
    ("services", ("agent.workspace", "agent.analysis", "agent.reports", "agent.samples", "agent.pacs_studies",
                  "agent.viewer", "agent.comparison", "agent.preread")),
    ("model backends", ("agent.models",)),
    ("conversation", ("agent.conversation", "agent.tool_calls", "agent.toolbox", "agent.answer_check")),
    ("storage, privacy, evaluation, PACS", ("agent.store", "agent.privacy", "agent.evaluation", "agent.pacs")),
    ("agent vocabulary", ("agent.events", "agent.settings")),
    ("tool registry", ("tools.registry",)),
    ("tools", ("tools.load_study", "tools.detect_anomalies", "tools.verify_coordinates", "tools.fit_gaussian",
               "tools.set_finding_size", "tools.render_overlay", "tools.draft_report", "tools.revise_report",
               "tools.second_read", "tools.compare_with_prior")),
    ("tool context", ("tools.context",)),
    ("imaging engines", ("tools.detection", "tools.gaussian", "tools.measure", "tools.render", "tools.report",
                         "tools.checklists", "tools.compare")),
    ("imaging foundation", ("tools.study", "tools.errors", "tools.coordinates", "tools.findings",
                            "tools.normal_wording")),
    ("prompts", ("prompts",)),
)


def _package_files(package: str) -> dict[str, Path]:
    """Module name -> file, for every module of the installed ``package``."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed as a package"
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def _graph() -> dict[str, set[str]]:
    files = {name: path for package in PACKAGES for name, path in _package_files(package).items()}
    return {name: _imported(name, path, set(files)) for name, path in files.items()}


def _layer(module: str) -> int | None:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


GRAPH = _graph()


def test_every_module_has_a_floor():
    """A new module is placed on purpose: add it to LAYERS here and to ARCHITECTURE.md."""
    package_roots = set(PACKAGES)
    assert sorted(m for m in GRAPH if m not in package_roots and _layer(m) is None) == []


def test_arrows_point_down():
    upward = sorted(f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
                    for module, targets in GRAPH.items() if _layer(module) is not None
                    for target in targets if _layer(target) is not None and _layer(target) < _layer(module))
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_the_layer_check_sees_an_upward_import():
    assert _layer("tools.context") > _layer("tools.registry") > _layer("agent.events")
    assert _layer("agent.cli.main") < _layer("agent.models.gemini") < _layer("agent.conversation")
