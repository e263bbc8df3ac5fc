"""The package layout is the pipeline: a module imports only its own stage or earlier ones."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stages in pipeline order; a module may import from its own stage or any earlier one.
STAGES = ["propel.config", "propel.progress", "propel.lake", "propel.features", "propel.featurestore",
          "propel.training", "propel.serving", "propel.analytics", "propel.forget", "propel.demo",
          "propel.cli", "propel.docs"]
RANK = {"propel.config": 0, "propel.progress": 0, "propel.lake": 1, "propel.features": 2, "propel.featurestore": 3,
        "propel.training": 4, "propel.serving": 5, "propel.analytics": 6, "propel.forget": 7, "propel.demo": 8,
        "propel.cli": 9, "propel.docs": 9}


def stage(module: str) -> str | None:
    return next((s for s in sorted(RANK, key=len, reverse=True) if module == s or module.startswith(s + ".")), None)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, lazily inside functions included (`from pkg import sub` names pkg.sub;
    bench scripts import their siblings by bare name)."""
    siblings = {p.stem for p in path.parent.glob("*.py")} if path.parent.name == "bench" else set()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {f"bench.{a.name}" if a.name in siblings else a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = f"bench.{node.module}" if node.module in siblings else node.module
            subs = {f"{module}.{a.name}" for a in node.names}
            package = (ROOT / module.replace(".", "/")).is_dir()
            found |= {s for s in subs if (ROOT / (s.replace(".", "/") + ".py")).exists()} if package else {module}
    return found


def test_modules_import_only_earlier_stages():
    wrong = []
    for path in sorted((ROOT / "propel").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = stage(module)
        if own is None:
            continue
        for imported in imports(path):
            other = stage(imported)
            if other is not None and RANK[other] > RANK[own]:
                wrong.append(f"{module} imports {imported} (a later stage: {other})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_every_module_has_a_stage():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "propel").rglob("*.py")]
    assert all(stage(m) or m == "propel.__init__" for m in modules), [m for m in modules if not stage(m)]
    assert not [p for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name != "propel"]


def test_no_import_cycles():
    """Within a stage too: modules form a DAG (a cycle means a concept without one home)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in [*(ROOT / "propel").rglob("*.py"), *(ROOT / "bench").glob("*.py")]}
    graph = {m: {i for i in imports(p) if i in modules and i != m} for m, p in modules.items()}
    cycles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
