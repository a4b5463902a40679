"""The layout the code promises (issues 15 and 25): no import cycles, packages in layers (README: code
layout), and functions short enough to read. Checked on the source, imports inside functions included."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "imgclass").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """imgclass modules that `name` imports anywhere in its source (top level or inside functions).
    `from . import x` of a submodule counts as importing the submodule, not its package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in modules] + ([base] if any(t not in modules for t in subs) else [])
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_walk_sees_imports_inside_functions():
    """The checker itself: a deferred import is an edge too (otherwise the test above could not fail)."""
    graph = _graph()
    assert "imgclass.evaluation.evaluate" in graph["imgclass.training.run"]     # imported inside a function
    assert "imgclass.models.inference" in graph["imgclass.prediction.engines"]


# The packages in layers, lowest first: a module may import its own layer and the layers below, never one
# above. The first layer is what every layer shares (errors, files, logging, the config, the run folder).
LAYERS = [
    {"errors", "extras", "version", "files", "log", "config", "rundir", "notebook", "figures"},
    {"data"},
    {"models", "modelfile"},
    {"prediction"},
    {"exports", "serving"},
    {"evaluation", "curation"},
    {"training"},
    {"tuning"},
    {"api", "digits_demo"},
    {"cli", "__main__", ""},  # "": the package itself (imgclass/__init__.py, the lazy API)
]


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if part in names]
    assert found, f"{module} belongs to no layer: add it to LAYERS"
    return found[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_packages_import_only_their_layer_and_below():
    assert upward_imports(_graph()) == []


def test_the_layer_check_fails_on_an_upward_import():
    """The checker itself: an import from a lower layer into a higher one is reported."""
    graph = {"imgclass.data.find": {"imgclass.training.run"}, "imgclass.training.run": {"imgclass.data.find"}}
    assert upward_imports(graph) == ["imgclass.data.find -> imgclass.training.run"]


def test_functions_are_short():
    long = []
    for path in (SRC / "imgclass").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                limit = 60 if node.name == "train" and path.name == "run.py" else 80
                if length > limit:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_the_model_header_is_read_by_attribute_outside_model_header():
    """issue 25: the model file's header is a typed ModelHeader; only models/header.py reads its JSON by key."""
    import re
    by_key = re.compile(r"""\b(header|hdr|h)\w*(\[\s*["']|\.get\(\s*["'])""")
    assert by_key.search('n = predictor.header["classes"]') and by_key.search("h.get('inference', {})")
    found = [f"{path.relative_to(SRC)}:{n}" for path in (SRC / "imgclass").rglob("*.py")
             if path.name != "header.py" for n, line in enumerate(path.read_text().splitlines(), 1)
             if by_key.search(line) and "headers" not in line]
    assert found == []
