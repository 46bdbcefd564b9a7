"""The package's import graph has no cycle, and each layer the README names imports only the layers below it."""

import ast
import re
from pathlib import Path

import finetrace

PACKAGE = Path(finetrace.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The finetrace modules `path` imports by name, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finetrace"):
            named = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= (named & modules) or {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return path[path.index(imported) :] + [imported] if imported in path else [module, imported]
            if imported not in state and (found := visit(imported, [*path, imported])):
                return found
        state[module] = "done"
        return None

    return next((found for module in sorted(graph) if module not in state and (found := visit(module, [module]))), None)


def test_no_module_imports_itself_round_a_cycle():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


README = PACKAGE.parents[1] / "README.md"


def _readme_layers() -> list[set[str]]:
    """The layers of the README's "The code" table, top first: the package's folders and modules
    named in each row's first cell."""
    section = README.read_text(encoding="utf-8").split("## The code", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [{name.strip("/").removesuffix(".py") for name in re.findall(r"`([^`]+)`", row)} for row in rows]


def _unit(module: str) -> str:
    """The folder or top-level module a module belongs to (`finetrace` itself is `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _upward(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """The imports of `graph` (module: modules it imports) that reach their own layer or one above."""
    rank = {unit: len(layers) - i for i, layer in enumerate(layers) for unit in layer}
    rank["__main__"] = len(layers) + 1  # `python -m finetrace`: the command line's own door
    return sorted(
        f"{_unit(module)} -> {_unit(imported)} ({module} imports {imported})"
        for module, imports in graph.items()
        for imported in imports
        if _unit(imported) != _unit(module) and rank[_unit(imported)] >= rank[_unit(module)]
    )


def test_each_folder_imports_only_the_layers_below_it_in_the_readme():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    layers = _readme_layers()
    named = set().union(*layers) | {"__main__"}
    assert set(map(_unit, paths)) == named, "the README's table names every folder and module, and only those"
    upward = _upward({name: _imports(path, set(paths)) for name, path in paths.items()}, layers)
    assert not upward, "imports at or above their own layer:\n" + "\n".join(upward)


def test_the_layer_check_finds_an_import_that_runs_up_or_across():
    layers = [{"verbs"}, {"adl", "evals"}, {"models"}]
    graph = {
        "finetrace.models.pair": {"finetrace.verbs.diff", "finetrace.models.load"},
        "finetrace.adl.steer": {"finetrace.evals.drift", "finetrace.models.pair"},
        "finetrace.verbs.diff": {"finetrace.adl.steer"},
    }
    assert _upward(graph, layers) == [
        "adl -> evals (finetrace.adl.steer imports finetrace.evals.drift)",
        "models -> verbs (finetrace.models.pair imports finetrace.verbs.diff)",
    ]
