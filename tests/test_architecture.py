"""The layout the code promises (issues 15 and 25): no import cycles, packages in layers (README: code
layout), and functions short enough to read. Checked on the source, imports inside functions included."""
import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "imgclass").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], started: bool = True) -> set[str]:
    """imgclass modules that `name` imports anywhere in its source (top level or inside functions), and those it
    starts in another process (`python -m imgclass...`, or `-c` code importing imgclass): a re-entry through a
    subprocess is an import too for the layers (started=False: imports alone, for the cycle check: a process that
    starts another running its own module is no cycle). `from . import x` of a submodule counts as importing it."""
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
        elif isinstance(node, ast.List) and started:
            targets = _started(node)
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _started(node: ast.List) -> list[str]:
    """The imgclass modules a command line written as a list starts: [..., "-m", "imgclass.x", ...] runs that
    module (`-m imgclass` runs imgclass/__main__.py), [..., "-c", CODE, ...] whatever CODE imports."""
    words = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
    started = []
    for flag, word in zip(words, words[1:]):
        if flag == "-m" and word and word.split(".")[0] == "imgclass":
            started.append(word + ".__main__" if word == "imgclass" else word)
        elif flag == "-c" and word:
            started += [m.group(1) for m in re.finditer(r"(?:from|import)\s+(imgclass[\w.]*)", word)]
    return started


def _graph(started: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules, started) for name, path in modules.items()}


def test_no_import_cycles():
    graph, state, cycles = _graph(started=False), {}, []

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


def test_the_walk_sees_imports_inside_functions_and_subprocesses():
    """The checker itself: a deferred import is an edge too, and so is a module started in a child process
    (otherwise the tests above and below could not fail)."""
    graph = _graph()
    assert "imgclass.evaluation.evaluate" in graph["imgclass.training.run"]     # imported inside a function
    assert "imgclass.models.inference" in graph["imgclass.inference.engines"]
    assert "imgclass.training.worker" in graph["imgclass.training.run"]          # torchrun -m imgclass.training.worker
    tree = ast.parse('cmd = [sys.executable, "-m", "imgclass", "train"]; c = ["python", "-c", "import imgclass.api"]')
    lists = [n for n in ast.walk(tree) if isinstance(n, ast.List)]
    assert [_started(n) for n in lists] == [["imgclass.__main__"], ["imgclass.api"]]


# The packages in layers, lowest first: a module may import its own package and the layers below, never a layer
# above nor another package of its own layer (exports and serving stand side by side, neither importing the
# other). Training is layered inside too: its options, then the loop, the integrations (trackers, callbacks) and
# the stages, then the run that puts them together.
LAYERS = [
    {"core"},                  # errors, files, logging, the run folder, figures: what every layer shares
    {"data"},
    {"models"},                # the networks, the model file, the tasks
    {"inference"},             # a model file loaded into an engine; runtime choice; every graph export
    {"prediction"},            # jobs over many images: submissions, shards, Ray, embeddings, explanations
    {"exports", "serving"},
    {"evaluation"},
    {"curation"},
    {"training.config"},
    {"training.loop"},
    {"training.integrations"},
    {"training.stages"},
    {"training"},
    {"tuning"},
    {"workbench"},             # imgclass app: the local web app over runs (reads runs; serves; reviews labels)
    {"requests"},              # each verb's options: one light dataclass per verb (api and cli build them)
    {"api"},
    {"cli"},
    {"__main__", ""},          # "": the package itself (imgclass/__init__.py, the lazy API)
]
TRAINING_PARTS = {"config", "loop", "integrations", "stages"}


def package_of(module: str) -> str:
    parts = module.split(".")[1:]
    if len(parts) > 1 and parts[0] == "training" and parts[1] in TRAINING_PARTS:
        return f"training.{parts[1]}"
    return parts[0] if parts else ""


def layer_of(module: str) -> int:
    found = [i for i, names in enumerate(LAYERS) if package_of(module) in names]
    assert found, f"{module} belongs to no layer: add it to LAYERS"
    return found[0]


def wrong_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, or of another package of the same layer."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if layer_of(b) > layer_of(a) or layer_of(b) == layer_of(a) and package_of(b) != package_of(a))


def test_packages_import_only_their_layer_and_below():
    assert wrong_imports(_graph()) == []


def test_the_layer_check_fails_on_an_upward_or_sideways_import():
    """The checker itself: an import from a lower layer into a higher one, or between two packages of one layer,
    is reported."""
    graph = {"imgclass.data.find": {"imgclass.training.run"}, "imgclass.training.run": {"imgclass.data.find"},
             "imgclass.serving.app": {"imgclass.exports.hub"},
             "imgclass.training.loop.fit": {"imgclass.training.stages.budget", "imgclass.training.config"}}
    assert wrong_imports(graph) == ["imgclass.data.find -> imgclass.training.run",
                                    "imgclass.serving.app -> imgclass.exports.hub",
                                    "imgclass.training.loop.fit -> imgclass.training.stages.budget"]


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
