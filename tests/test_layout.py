"""The source tree's layout rules, read from every import (``docs/design.md``, "Layers").

- The layers point one way: a package imports only from its own layer and the ones below.
- No module-level import cycle (``compression/``'s subpackage fronts re-export lazily).
- No learner imports another learner: a family (``learners/channel``...) reads the shared
  layer (``learners.base``, ``registry``, ``config``, ``run``, ``search``) and its own
  ``base`` / ``options`` / ``config`` / ``search_env``, never a sibling learner's module.
- No source module is longer than 350 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["datasets", "utils", "training", "nets", "compression", "deployment", "learners",
          "tools"]
TOP = {"examples", "benchmarks", "pocketflow_torch", "scripts"}   # may import everything
SHARED_LEARNER_MODULES = {"learners.base", "learners.registry", "learners.config", "learners.api",
                          "learners.launch"}
SHARED_LEARNER_PACKAGES = ("learners.run", "learners.search")
FAMILY_SHARED = {"base", "options", "config", "search_env", "schedule"}
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    found = {}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in (".venv", "tests", "build") or rel.parts[0].startswith("."):
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute imports of the project's packages in ``path`` (with their lines)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [(node.module, node.lineno)]
            names += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            names += [(a.name, node.lineno) for a in node.names]
    top = set(LAYERS) | TOP
    return [(n, line) for n, line in names if n.split(".")[0] in top]


MODULES = _modules()
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    head = module.split(".")[0]
    if head.endswith("_run") or head in TOP or module.endswith("_run"):
        return None
    return LAYERS.index(head) if head in LAYERS else None


def test_every_package_is_in_a_layer():
    heads = {name.split(".")[0] for name in MODULES} - TOP - {"setup"}
    assert heads <= set(LAYERS), heads - set(LAYERS)


def test_layers_point_one_way():
    wrong = []
    for module, imports in IMPORTS.items():
        own = _layer(module)
        if own is None:             # entry scripts, examples, benchmarks: the top
            continue
        for target, line in imports:
            head = target.split(".")[0]
            if head in TOP or (head in LAYERS and LAYERS.index(head) > own):
                wrong.append(f"{MODULES[module].relative_to(REPO)}:{line} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def _top_level_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it is imported (statements outside functions)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name in MODULES}


def test_no_import_cycles():
    """Importing any module never needs itself: the module-level imports form no cycle
    (package fronts re-export lazily, so a package never imports its modules eagerly)."""
    graph = {name: _top_level_imports(path) - {name} for name, path in MODULES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def _shared(module: str) -> bool:
    """A module (or a name in one) of the shared learner layer."""
    return any(module == m or module.startswith(m + ".")
               for m in (*SHARED_LEARNER_MODULES, *SHARED_LEARNER_PACKAGES))


def _family(module: str) -> tuple[str, str] | None:
    """``(family, module within it)`` of a learner module (``learners.channel.rmt`` ->
    ``("channel", "rmt")``), None for the shared layer."""
    if _shared(module):
        return None
    parts = module.split(".")
    if parts[0] != "learners" or len(parts) < 2:
        return None
    return parts[1], parts[2] if len(parts) > 2 else ""


def test_no_learner_imports_another():
    wrong = []
    for module, imports in IMPORTS.items():
        own = _family(module)
        if own is None:
            continue
        for target, line in imports:
            other = _family(target)
            if other is None or other == own:
                continue
            same_family_shared = other[0] == own[0] and other[1] in FAMILY_SHARED | {""}
            if not same_family_shared:
                wrong.append(f"{MODULES[module].relative_to(REPO)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_shared_learner_layer_knows_no_learner():
    """The runner, the context and the search are generic: no family is imported there."""
    wrong = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
             for m, imports in IMPORTS.items()
             if _shared(m) and m not in ("learners.launch", "learners.api")
             for t, line in imports if _family(t) is not None]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["compression", "learners", "deployment", "utils",
                                     "training", "nets", "datasets", "tools"])
def test_modules_stay_small(package):
    long = {str(path.relative_to(REPO)): n for name, path in MODULES.items()
            if name.split(".")[0] == package
            and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_the_rules_see_a_violation(tmp_path):
    """The reader is not blind: an upward import in a written module is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from learners.run.context import Context\nimport compression.graph\n")
    found = [name for name, _ in _imports(bad)]
    assert "learners.run.context" in found and "compression.graph" in found
    assert _layer("compression.graph.ops") < _layer("learners.run.context")
    assert _family("learners.channel.rmt") == ("channel", "rmt")
    assert _family("learners.run.runner") is None
