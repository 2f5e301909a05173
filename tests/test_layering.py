"""The import direction ui -> agent -> tools, and what each layer may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module)
        found[str(path.relative_to(REPO))] = modules
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("tools", {"google", "openai", "streamlit", "agent", "ui"}),
    ("agent", {"streamlit", "ui"}),
    ("prompts", {"google", "streamlit", "agent", "ui", "tools"}),
])
def test_layer_does_not_import(package, forbidden):
    offenders = {path: sorted(_top(m) for m in modules if _top(m) in forbidden)
                 for path, modules in _imports(package).items()}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_google_genai_in_at_most_one_agent_module():
    users = [path for path, modules in _imports("agent").items() if any(m.startswith("google") for m in modules)]
    assert len(users) <= 1, users


def test_openai_sdk_in_exactly_one_agent_module():
    users = [path for path, modules in _imports("agent").items() if any(_top(m) == "openai" for m in modules)]
    assert users == ["agent/models/openai_compatible.py"]


def test_ui_holds_no_imaging_logic():
    """ui/ renders only: no array or image libraries, and from tools/ only the error types."""
    imaging = {"numpy", "pydicom", "scipy", "PIL", "highdicom", "matplotlib"}
    offenders = {
        path: sorted(m for m in modules if _top(m) in imaging or (_top(m) == "tools" and m != "tools.errors"))
        for path, modules in _imports("ui").items()
    }
    assert {p: m for p, m in offenders.items() if m} == {}
