"""The package's modules import one another without a cycle, counting the imports made inside
functions (lazy ones included): a cycle makes the order of imports matter and sends a reader of
one module back into the other.

The graph is read from the source (tinybig_cuda/*.py), not from an import, so that every import
counts, also one that no test happens to run."""

import ast
from pathlib import Path

PACKAGE = "tinybig_cuda"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE
COMPILED = {"_C", "_build_info"}  # made by the build; they import nothing of the package
# The calls whose module is a variable, each known to import outside the package: (file, call).
IMPORTS_OF_OTHER_PACKAGES = {("drop_in.py", "importlib.import_module(name)")}  # tinyBIG's modules


def _module_name(path):
    return PACKAGE if path.stem == "__init__" else path.stem


def _imported_module(node, modules, where):
    """The package's module that an `importlib.import_module(...)` call names."""
    argument = node.args[0] if node.args else None
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        name = argument.value
    elif (isinstance(argument, ast.JoinedStr) and len(argument.values) == 2
          and isinstance(argument.values[0], ast.FormattedValue)
          and isinstance(argument.values[0].value, ast.Name) and argument.values[0].value.id in ("__name__", "__package__")
          and isinstance(argument.values[1], ast.Constant)):
        name = PACKAGE + argument.values[1].value
    elif (where.split(":")[0], ast.unparse(node)) in IMPORTS_OF_OTHER_PACKAGES:
        return None
    else:
        raise AssertionError(f"{where}: cannot read which module importlib.import_module imports: {ast.unparse(node)}")
    return _package_module(name, modules, where)


def _package_module(dotted, modules, where):
    """The graph's node for an absolute module name, None outside the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return PACKAGE
    if parts[1] in COMPILED:
        return None
    assert parts[1] in modules, f"{where}: imports {dotted}, which is no module of the package"
    return parts[1]


def imports_of(source, filename, modules):
    """The package's modules that `source` (the text of `filename`) imports anywhere."""
    edges = set()
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            edges |= {_package_module(alias.name, modules, where) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level <= 1, f"{where}: an import from above the package"
            base = node.module if node.level == 0 else ".".join(filter(None, [PACKAGE, node.module]))
            if base != PACKAGE:
                edges.add(_package_module(base, modules, where))
            else:  # from . import a, b: submodules, or names of the package's __init__
                for alias in node.names:
                    if alias.name in modules:
                        edges.add(alias.name)
                    elif alias.name not in COMPILED:
                        edges.add(PACKAGE)
        elif isinstance(node, ast.Call):
            function = ast.unparse(node.func)
            if function in ("importlib.import_module", "import_module"):
                edges.add(_imported_module(node, modules, where))
            assert function != "__import__", f"{where}: __import__, which this test cannot read"
    edges.discard(None)
    return edges


def import_graph():
    """{module: set of the package's modules it imports anywhere in its source}."""
    paths = sorted(path for path in SOURCE.glob("*.py") if path.stem not in COMPILED)
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): imports_of(path.read_text(), path.name, modules) - {_module_name(path)} for path in paths}


def find_cycle(graph):
    """One cycle of `graph` as a list of modules (its first repeated at the end), or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_reader_sees_every_kind_of_import():
    source = """
import torch
import tinybig_cuda.a
from tinybig_cuda import b
from . import c, _C, some_name
from .d import something

def lazily():
    from . import e
    import importlib
    return importlib.import_module(f"{__package__}.f"), importlib.import_module("tinybig_cuda.g")
"""
    modules = set("abcdefg")
    assert imports_of(source, "x.py", modules) == {"a", "b", "c", PACKAGE, "d", "e", "f", "g"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    listing = "\n".join(f"  {module} -> {', '.join(sorted(graph[module])) or '(nothing)'}" for module in sorted(graph))
    assert cycle is None, f"import cycle {' -> '.join(cycle)}; the graph:\n{listing}"
