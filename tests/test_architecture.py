"""The layout is the architecture: imports run one way (surfaces -> engine -> models -> errors), with no cycle,
and no module or function grows past what a reader takes in at once."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cocoa_clip"
LAYERS = {"errors": 0, "models": 1, "engine": 2, "cli": 3, "batch": 3, "web": 3}  # a layer imports only lower ones
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 120


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; `from module import name`, the module
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {module for module in found if module in known and module != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None  # None: the top-level package, which exports all


def test_the_graph_sees_the_imports_that_exist():
    edges = graph()
    assert "cocoa_clip.models" in edges["cocoa_clip.engine.rise"]
    assert "cocoa_clip.engine.explain" in edges["cocoa_clip.cli.commands"]
    assert "cocoa_clip.models.weights" in edges["cocoa_clip.models.families.openai"]


def test_imports_run_one_way_between_layers():
    def allowed(module: str, target: str) -> bool:
        here, there = layer(module), layer(target)
        if there is None:  # the top-level package is the public API over engine and models: for surfaces only
            return here == 3
        if here == there == 3:  # surfaces stay apart, except the CLI, which fronts `batch` and `serve`
            return target.split(".")[1] == module.split(".")[1] or module.startswith("cocoa_clip.cli")
        return there <= here

    wrong = [(module, target) for module, targets in graph().items() for target in targets
             if layer(module) is not None and not allowed(module, target)]
    assert wrong == []


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_giant_module_or_function():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.name}: {length} lines")
    assert too_long == []
