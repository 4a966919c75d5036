"""The package's layers: every import of a searchlab module points down a layer or stays in its own, inside
functions too; the imports form no cycle; and an import inside a function is there only to defer a heavy module.

LAYERS is the one list of the layers (the README's Layout describes them in this order).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "searchlab"

# Lowest first: a module may import modules of its own layer and of the layers before it.
LAYERS = {
    "base": ["errors", "settings"],
    "core": [
        "catalog",
        "space",
        "trial",
        "study",
        "tasks",
        "data",
        "transfer",
        "model",
        "train",
        "checkpoint",
        "pack_optim",
        "pack_chain",
        "pack",
        "check",
    ],
    "stores": [
        "storage",
        "locks",
        "tracking",
        "endpoints",
        "mlflow_ui",
        "mlflow_app",
        "unsent",
        "sender",
        "results",
        "window",
        "latest",
        "compaction",
        "weights",
        "registry",
        "report",
    ],
    "running": [
        "devices",
        "config",
        "budget",
        "recovery",
        "signals",
        "objective",
        "outcome",
        "packing",
        "preparation",
        "worker",
        "publish",
        "forkserver",
        "preload",
        "summary",
        "pool",
        "lifecycle",
    ],
    "operations": ["nights", "nightly", "schedule", "viewers", "replay", "resume"],
    "face": ["cli_options", "cli_search", "cli_view", "cli", "__main__", "__init__"],
}
# The documented calls up a layer: (importer, imported) → why.
EXCEPTIONS = {("study", "lifecycle"): "Study.run, the `python FILE` entry point, runs the study as `searchlab run`"}
# Third-party packages worth importing inside a function: each costs a noticeable share of a command's start-up.
HEAVY = {
    "torch",
    "torchmetrics",
    "mlflow",
    "optuna",
    "optuna_dashboard",
    "matplotlib",
    "plotly",
    "sklearn",
    "sqlalchemy",
    "numpy",
    "croniter",
    "yaml",
    "tqdm",
    "uvicorn",
}


@dataclass(frozen=True)
class Import:
    importer: str  # a searchlab module
    target: str  # a searchlab module (without the package name), or a top-level third-party/stdlib package
    searchlab: bool
    line: int
    in_function: bool

    def where(self) -> str:
        return f"searchlab/{self.importer}.py:{self.line}"


def read_imports(module: str, source: str) -> list[Import]:
    """Every import statement of a module, at module level or inside a function (TYPE_CHECKING blocks aside)."""
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue  # annotations only: never executed
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(target_of(module, alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module == "searchlab":  # from searchlab import schedule
                    found.extend(
                        target_of(module, f"searchlab.{alias.name}", child.lineno, in_function) for alias in child.names
                    )
                else:
                    found.append(target_of(module, child.module, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                raise AssertionError(f"searchlab/{module}.py:{child.lineno}: use absolute imports")
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def target_of(module: str, dotted: str, line: int, in_function: bool) -> Import:
    parts = dotted.split(".")
    if parts[0] == "searchlab" and len(parts) > 1:
        return Import(module, parts[1], True, line, in_function)
    return Import(module, parts[0], parts[0] == "searchlab", line, in_function)


def package_imports(package: Path = PACKAGE) -> dict[str, list[Import]]:
    return {path.stem: read_imports(path.stem, path.read_text()) for path in sorted(package.glob("*.py"))}


def layer_index() -> dict[str, int]:
    return {module: index for index, modules in enumerate(LAYERS.values()) for module in modules}


def upward_imports(imports: dict[str, list[Import]]) -> list[str]:
    """Each import of a module of a higher layer, as ``file:line: importer (layer) imports target (layer)``."""
    index, names = layer_index(), list(LAYERS)
    return [
        f"{each.where()}: {each.importer} ({names[index[each.importer]]}) imports {each.target} "
        f"({names[index[each.target]]}), a higher layer"
        for module_imports in imports.values()
        for each in module_imports
        if each.searchlab
        and each.target in index
        and index[each.target] > index[each.importer]
        and (each.importer, each.target) not in EXCEPTIONS
    ]


def cycles(imports: dict[str, list[Import]]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (the exceptions left out)."""
    graph = {
        module: sorted(
            {
                each.target
                for each in found
                if each.searchlab and each.target != module and (module, each.target) not in EXCEPTIONS
            }
        )
        for module, found in imports.items()
    }
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for target in graph.get(module, []):
            if target not in order:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in graph:
        if module not in order:
            connect(module)
    return components


def heavy_modules(imports: dict[str, list[Import]]) -> set[str]:
    """The searchlab modules whose module-level imports load a HEAVY package, directly or through others."""
    heavy = {
        module
        for module, found in imports.items()
        if any(not each.in_function and not each.searchlab and each.target in HEAVY for each in found)
    }
    while True:
        more = {
            module
            for module, found in imports.items()
            if module not in heavy
            and any(not each.in_function and each.searchlab and each.target in heavy for each in found)
        }
        if not more:
            return heavy
        heavy |= more


def needless_lazy_imports(imports: dict[str, list[Import]]) -> list[str]:
    """Imports inside a function that defer nothing heavy: they belong at the top of the module."""
    heavy = heavy_modules(imports)
    return [
        f"{each.where()}: {each.importer} imports {each.target} inside a function, but it loads nothing heavy: "
        "import it at the top"
        for found in imports.values()
        for each in found
        if each.in_function
        and (each.importer, each.target) not in EXCEPTIONS
        and not (each.target in heavy if each.searchlab else each.target in HEAVY)
    ]


def test_every_module_has_one_layer() -> None:
    placed = [module for modules in LAYERS.values() for module in modules]
    assert len(placed) == len(set(placed)), "a module is listed in two layers"
    assert sorted(placed) == sorted(package_imports()), "list each searchlab module in LAYERS, once"


def test_imports_point_down_the_layers() -> None:
    found = upward_imports(package_imports())
    assert not found, "\n".join(found)


def test_imports_form_no_cycle() -> None:
    found = cycles(package_imports())
    assert not found, "; ".join("modules in one import cycle: " + ", ".join(cycle) for cycle in found)


def test_imports_inside_functions_only_defer_heavy_modules() -> None:
    found = needless_lazy_imports(package_imports())
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        (
            "errors",
            "def f():\n    from searchlab.cli import main\n",
            "searchlab/errors.py:2: errors (base) imports cli (face), a higher layer",
        ),
        (
            "storage",
            "import os\nimport searchlab.lifecycle\n",
            "searchlab/storage.py:2: storage (stores) imports lifecycle (running), a higher layer",
        ),
    ],
)
def test_a_planted_upward_import_fails_with_its_file_and_line(importer: str, source: str, expected: str) -> None:
    imports = package_imports()
    imports[importer] = read_imports(importer, source)
    assert upward_imports(imports) == [expected]


def test_a_planted_cycle_and_a_needless_lazy_import_are_found() -> None:
    imports = package_imports()
    imports["settings"] = read_imports("settings", "def f():\n    import searchlab.errors\n    import json\n")
    imports["errors"] = read_imports("errors", "import searchlab.settings\n")
    assert cycles(imports) == [["errors", "settings"]]
    assert needless_lazy_imports(imports) == [
        "searchlab/settings.py:2: settings imports errors inside a function, but it loads nothing heavy: import it at "
        "the top",
        "searchlab/settings.py:3: settings imports json inside a function, but it loads nothing heavy: import it at "
        "the top",
    ]
