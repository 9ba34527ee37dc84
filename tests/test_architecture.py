"""The package's own architecture: layers import only downwards, modules import no cycle, and the pure arithmetic
imports no torch (read from the source, every import counted, the lazy ones inside functions too)."""

import ast
from pathlib import Path

import pytest

from llava_nb.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "llava_nb"
#: lowest first: a module may import its own layer and the layers before it
LAYERS = ["_compat", "_lazy", "errors", "paths", "models", "methods", "memory", "data", "training", "viz", "lab", "cli_memory", "cli_train", "cli",
          "live",
          "__main__", "__init__"]
#: modules that must stay free of torch and transformers (the calculators, the CLI's arithmetic verbs)
PURE = ["models/specs.py", "models/layout.py", "models/image_tokens.py", "models/params.py", "methods/registry.py",
        "methods/counts.py", "methods/deepspeed.py", "memory/shapes.py", "memory/formulas.py", "memory/estimate.py",
        "data/convert.py", "models/checkpoint_check.py", "data/lengths.py", "models/flops.py", "training/plan.py",
        "memory/reports.py", "memory/activations.py", "memory/host.py", "live.py", "cli_memory.py", "models/local.py"]


def _imports(path: Path, top_level: bool = False) -> list[str]:
    """Every llava_nb module ``path`` imports, as dotted names relative to the package (``models.specs``), and
    every third-party top-level package (``!torch``); with ``top_level``, only what importing the module runs."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(rel[:-1])
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                found.append(".".join(base + node.module.split(".")))
            else:
                found += [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append("!" + node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found += ["!" + a.name.split(".")[0] for a in node.names]
    return found


def _modules() -> dict[str, list[str]]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_layers_import_only_downwards():
    wrong = []
    for module, imports in _modules().items():
        here = LAYERS.index(module.split(".")[0])
        for target in imports:
            if not target.startswith("!") and target.split(".")[0] in LAYERS:
                if LAYERS.index(target.split(".")[0]) > here:
                    wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = {m: {t for t in imports if not t.startswith("!") and t != m} for m, imports in _modules().items()}
    graph = {m: {t for t in targets if t in graph and not t.endswith("__init__")} for m, targets in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


@pytest.mark.parametrize("module", PURE)
def test_pure_arithmetic_imports_no_torch(module):
    """Importing the module, and every package module it imports on the way, imports no heavy library (a function
    may import torch when it is handed a torch object; tests/test_shapes.py checks what a real run imports)."""
    heavy = {"!torch", "!transformers", "!peft", "!accelerate", "!deepspeed", "!bitsandbytes", "!numpy"}
    seen, todo = set(), [module.removesuffix(".py").replace("/", ".")]
    while todo:
        name = todo.pop()
        path = PACKAGE / (name.replace(".", "/") + ".py")
        if name in seen or not path.exists():
            continue
        seen.add(name)
        imports = set(_imports(path, top_level=True))
        assert not imports & heavy, f"{module} imports {name}, which imports {sorted(imports & heavy)}"
        todo += [t for t in imports if not t.startswith("!")]
