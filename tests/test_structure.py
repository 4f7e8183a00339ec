"""Package structure rules (ARCHITECTURE.md): no private names across modules, no import cycle, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "natsdeploy"
WARN_LINES = 500
MAX_LINES = 1000


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, *, module_level: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each import; `module_level`: only those run at import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if module_level:
        nodes = []
        todo = list(tree.body)
        while todo:
            n = todo.pop()
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                continue  # typing-only imports never run
            if isinstance(n, (ast.If, ast.Try)):
                todo += n.body + n.orelse + getattr(n, "finalbody", []) + [
                    s for h in getattr(n, "handlers", []) for s in h.body]
            else:
                nodes.append(n)
    else:
        nodes = list(ast.walk(tree))
    out = []
    for n in nodes:
        if isinstance(n, ast.Import):
            out += [(a.name, []) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            out.append((_absolute(module, path, n), [a.name for a in n.names]))
    return out


def test_no_private_name_imported_across_modules():
    bad = []
    for module, path in _modules().items():
        for target, names in _imports(module, path, module_level=False):
            if not target.startswith("natsdeploy") or target == module:
                continue
            bad += [f"{module}: from {target} import {name}" for name in names
                    if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))]
            bad += [f"{module}: import {target}" for part in target.split(".") if part.startswith("_")
                    and not part.startswith("__")]
    assert bad == []


def test_import_graph_has_no_cycle():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for target, names in _imports(module, path, module_level=True):
            if target in mods and target != module:
                graph[module].add(target)
            for name in names:
                sub = f"{target}.{name}"
                if sub in mods and sub != module:
                    graph[module].add(sub)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_module_size_is_a_warning_not_a_rule():
    """Modules split by job, not by line count: over ~500 lines is a smell to look at (a warning);
    over 1000 is two jobs in one file (a failure)."""
    import warnings

    counts = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in _modules().items()}
    for m, n in sorted(counts.items()):
        if n > WARN_LINES:
            warnings.warn(f"{m}: {n} lines, over {WARN_LINES}: does it hold more than one job?", stacklevel=1)
    assert {m: n for m, n in counts.items() if n > MAX_LINES} == {}


BASE = ("natsdeploy.errors", "natsdeploy.extras", "natsdeploy.examples", "natsdeploy.files", "natsdeploy.onnx_utils", "natsdeploy.cli_values", "natsdeploy.specs",
        "natsdeploy.arch", "natsdeploy.arch_schema", "natsdeploy.targets", "natsdeploy.timing", "natsdeploy.runtime", "natsdeploy.checkpoint",
        "natsdeploy.shapes", "natsdeploy.loops", "natsdeploy.loop_skeleton")
ABOVE_BASE = ("natsdeploy.models", "natsdeploy.data", "natsdeploy.export", "natsdeploy.verify", "natsdeploy.bench",
              "natsdeploy.search", "natsdeploy.train", "natsdeploy.runners", "natsdeploy.pipeline", "natsdeploy.cli",
              "natsdeploy.align", "natsdeploy.convert")


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_base_layer_imports_nothing_above_it():
    """Layer 0 (ARCHITECTURE.md: errors, files, onnx_utils, cli_values, specs, arch, targets, timing/, runtime/,
    checkpoint, and the deprecated shims shapes, loops, loop_skeleton) never imports models, data or a stage, not even lazily, so every stage can
    build on it."""
    bad = []
    for module, path in _modules().items():
        if not _within(module, BASE):
            continue
        for target, names in _imports(module, path, module_level=False):
            wanted = [target] + [f"{target}.{n}" for n in names]
            bad += [f"{module}: {t}" for t in wanted if _within(t, ABOVE_BASE)]
    assert bad == []


def test_architecture_md_names_every_module_and_the_base_layer_matches_it():
    """ARCHITECTURE.md is the map: every module appears in it, and its layer-0 row lists exactly BASE."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    missing = [m for m, p in _modules().items() if p.name != "__init__.py"
               and str(p.relative_to(PACKAGE)) not in text and f"`{p.name}`" not in text]
    assert missing == []
    row = next(line for line in text.splitlines() if line.startswith("| 0 base |")).split("|")[2]
    while re.search(r"\([^()]*\)", row):  # drop the descriptions in parentheses (they name submodules)
        row = re.sub(r"\([^()]*\)", "", row)
    assert {f"natsdeploy.{name}" for name in re.findall(r"`(\w+)(?:\.py|/)`", row)} == set(BASE)



def test_one_entry_point_per_job():
    """Every ONNX Runtime session is made by the ORT runner, and a trunk becomes ONNX only through
    `export.onnx.to_onnx` (the fold -> rewrite -> emit chain is written once)."""
    sessions, folds = [], []
    for module, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if "InferenceSession(" in text and module != "natsdeploy.runners.ort":
            sessions.append(module)
        if re.search(r"(?<!def )fold_trunk\(", text) and module not in ("natsdeploy.export.onnx", "natsdeploy.export.fold"):
            folds.append(module)
    assert sessions == [] and folds == []
