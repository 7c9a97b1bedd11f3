"""The package's layers: every ``import`` in src/edmlab (in-function ones too) points down or sideways, never up, and
no two modules import each other, directly or through others.

    infra → nets, data → design → sampling → io, viz → evaluation → training → cli → edmlab (the top-level API)

The core (nets … io) never imports Lightning, Hydra, OmegaConf or W&B: ``edmlab.sample`` and ``edmlab.load`` need
only torch."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edmlab"
LAYERS = {"infra": 0, "nets": 1, "data": 1, "codec": 1, "design": 2, "sampling": 3, "io": 4, "viz": 4,
          "evaluation": 5, "training": 6, "cli": 7}
TOP = max(LAYERS.values()) + 1  # edmlab/__init__.py
FRAMEWORKS = ("lightning", "hydra", "omegaconf", "wandb")
CORE = ("nets", "data", "design", "sampling", "io")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported name) of every import statement, relative ones made absolute."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _owner(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def layer(module: str) -> int:
    parts = module.split(".")
    return TOP if len(parts) == 1 else LAYERS[parts[1]]


def edges() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, name in _imports(module, path):
            target = _owner(name) if name.startswith("edmlab") else None
            if target and target != module:
                graph[module].add(target)
    return graph


def test_every_module_sits_in_a_layer():
    top_level = sorted(m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in LAYERS)
    assert top_level == [], f"modules outside the layer folders: {top_level}"


def test_no_import_points_up():
    upward = []
    for module, path in MODULES.items():
        for line, name in _imports(module, path):
            target = _owner(name) if name.startswith("edmlab") else None
            if target and layer(target) > layer(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def test_the_core_needs_no_training_framework():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
             for module, path in MODULES.items() if module.split(".")[1:2] and module.split(".")[1] in CORE
             for line, name in _imports(module, path) if name.split(".")[0] in FRAMEWORKS]
    assert found == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), a package's own __init__ excepted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = [c for c in _cycles(edges()) if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert cycles == []  # a package importing its own modules is not one


@pytest.mark.parametrize("graph, expected", [({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
                                             ({"a": {"b"}, "b": {"c"}, "c": set()}, [])])
def test_the_cycle_finder_finds_a_cycle_and_only_one(graph, expected):
    assert _cycles(graph) == expected


def test_an_upward_import_is_seen_in_a_function_body(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from edmlab.training.run import train\n")
    assert (2, "edmlab.training.run.train") in _imports("edmlab.design.x", source)
