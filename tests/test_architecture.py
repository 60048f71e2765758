"""The layout's rules, checked on the source: no import cycles in the engine, dependencies pointing down, the UI
talking to the engine only through ``training.contract``, and the UI process free of torch.

Imports are read from the source (every ``import``, also inside functions and under TYPE_CHECKING), so a cycle or
an upward dependency fails here even when it happens to work at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]

# Lower layers never import higher ones; a package may import its own layer's modules and anything below.
LAYERS = [
    {"training.contract"},
    {"training.data", "training.models", "training.networks"},
    {"training.lora_files", "training.plan", "training.caption"},
    {"training.run"},
    {"training.__main__", "training.bench", "training.demo", "training.compare", "training.options_doc",
     "training.tools", "training.contract.services"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (``from pkg import mod`` counts as ``pkg.mod`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: ``from . import x`` in package a.b is a.b.x
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def project_modules(*packages: str) -> dict[str, Path]:
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


@pytest.fixture(scope="module")
def engine_graph() -> dict[str, set[str]]:
    modules = project_modules("training")
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if colour.get(nxt) == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int | None:
    """The highest layer whose package prefix names the module (contract.services sits above contract)."""
    hits = [i for i, names in enumerate(LAYERS) for name in names if module == name or module.startswith(name + ".")]
    return max(hits) if hits else None


def test_the_engine_has_no_import_cycle(engine_graph):
    assert find_cycle(engine_graph) is None, " -> ".join(find_cycle(engine_graph) or [])


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_every_engine_module_has_a_layer(engine_graph):
    unplaced = sorted(m for m in engine_graph if m != "training" and layer_of(m) is None)
    assert unplaced == [], "add these to LAYERS (and docs/architecture.md)"


def test_dependencies_point_down(engine_graph):
    upward = sorted(f"{m} imports {dep}" for m, deps in engine_graph.items() for dep in deps
                    if dep != "training" and m != "training" and layer_of(dep) > layer_of(m))
    assert upward == []


def test_nothing_in_the_engine_imports_the_ui_door(engine_graph):
    users = sorted(m for m, deps in engine_graph.items() if "training.contract.services" in deps)
    assert users == []


def test_the_ui_imports_only_the_contract():
    engine = set(project_modules("training"))
    ui = project_modules("app") | {"launch": ROOT / "launch.py"}
    outside = sorted(f"{name} imports {dep}" for name, path in ui.items()
                     for dep in imported_modules(path, engine | {"training"})
                     if not (dep == "training.contract" or dep.startswith("training.contract.")))
    assert outside == []


def test_the_ui_imports_without_torch():
    """Every app module imports in a process where torch and the ML stack cannot be imported at all."""
    probe = """
import importlib, pkgutil, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"}:
            raise ImportError(f"{name} is not allowed in the UI process")
sys.meta_path.insert(0, Refuse())
import app
for mod in pkgutil.walk_packages(app.__path__, "app."):
    importlib.import_module(mod.name)
print("ok", len(sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=scaled(120))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
