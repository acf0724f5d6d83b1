"""The house's import picture, read from the source with `ast` (nothing is imported):

1. each room imports only what docs/architecture.md lets it (gan/ knows no Prefect, MLflow or
   Zarr; storage/ no Prefect and MLflow only in its registry modules; tasks/ never reaches
   up into flows/ or the CLI; clips/ and report/ sit beside storage/ under tasks/);
2. no module imports itself back through others at import time (module-level imports,
   also inside a folder): code two modules share lives in a third that both import;
3. every file in tasks/ defines at least one Prefect task (helpers live in their rooms).

A failure names the module, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the rooms of docs/architecture.md, with clips/ (source clips -> rows) and report/ (figures,
# gallery, progress); bench/ and scripts/ only take part in the cycle check
ROOMS = ("gan", "storage", "clips", "report", "tasks", "flows", "audio_wgan")
PACKAGES = (*ROOMS, "bench", "scripts")
NOT_FOR_PRODUCT = ("bench", "tests", "scripts")  # no room imports benchmarks or tests
STORES = ("zarr", "numcodecs", "fsspec", "s3fs")
# storage/'s modules that talk to the MLflow registry (the registered model's code included)
REGISTRY_MODULES = ("storage.registry", "storage.pyfunc_generator")
# what clips/ may take from storage/: the row format (`mel_sums`) and the crash-test hooks
CLIPS_FROM_STORAGE = ("storage.store_layout", "storage.fault_points")


@dataclass(frozen=True)
class Import:
    """One imported module as `module` names it: where, and when it runs."""

    module: str  # the importer, dotted
    target: str  # the imported module, dotted (`from a import b` is `a.b` when b is one)
    line: int
    when: str  # "module" (at import time), "function" (when called), "typing" (never)

    @property
    def root(self) -> str:
        return self.target.split(".")[0]

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}, {self.when} level) imports {self.target}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))
            if ".venv" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, source: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """Every import in `source`: absolute and relative, module and function level."""
    known = set(known)
    out: list[Import] = []

    def base_of(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        return ".".join([*parts, *([node.module] if node.module else [])])

    def visit(node: ast.AST, when: str) -> None:
        if isinstance(node, ast.Import):
            out.extend(Import(module, a.name, node.lineno, when) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = base_of(node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(module, sub if sub in known else base, node.lineno, when))
        inner = when
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "function" if when == "module" else when
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, inner)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source), "module")
    return out


def all_imports(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    return [imp for name, path in modules.items()
            for imp in imports_of(name, path.read_text(), path.name == "__init__.py", modules)]


def room_of(module: str) -> str:
    return module.split(".")[0]


def broken_rules(imports: Iterable[Import]) -> list[str]:
    """Each import a room may not make, with the rule it breaks."""
    broken: list[str] = []
    for imp in imports:
        room, root, target = room_of(imp.module), imp.root, imp.target
        if imp.when == "typing":
            continue

        def no(rule: str, imp: Import = imp) -> None:
            broken.append(f"{imp}: {rule}")

        if room in ROOMS and root in NOT_FOR_PRODUCT:
            no(f"{room}/ is product code: it never imports {root}/")
        if room == "gan":
            if root in ("prefect", "mlflow", *STORES):
                no("gan/ is pure PyTorch: no Prefect, MLflow or store libraries")
            elif root in ROOMS and root != "gan":
                no("gan/ imports no other room of the project")
        elif room == "storage":
            if root == "prefect":
                no("storage/ knows no Prefect")
            elif root == "mlflow" and not imp.module.startswith(REGISTRY_MODULES):
                no(f"storage/ imports mlflow only in its registry modules {REGISTRY_MODULES}")
            elif root in ("tasks", "flows", "audio_wgan", "clips", "report"):
                no("storage/ imports only gan/ of the project (arrows point one way)")
        elif room == "clips":
            if root in ("prefect", "mlflow"):
                no("clips/ runs in worker processes and Dask workers: no Prefect or MLflow")
            elif root in ("tasks", "flows", "audio_wgan", "report"):
                no("clips/ imports only gan/ and storage/ of the project")
            elif root == "storage" and not target.startswith(CLIPS_FROM_STORAGE):
                no(f"clips/ takes from storage/ only {CLIPS_FROM_STORAGE}")
        elif room == "report":
            if root == "mlflow":
                no("report/ knows no MLflow")
            elif root == "prefect" and imp.when == "module":
                no("report/ imports Prefect only inside functions (the CLI imports it first)")
            elif root in ("tasks", "flows", "audio_wgan", "clips"):
                no("report/ imports only gan/ and storage/ of the project")
        elif room == "tasks":
            if root in ("flows", "audio_wgan"):
                no("tasks/ never imports flows/ or audio_wgan/ (arrows point one way)")
        elif room == "flows":
            if root == "audio_wgan":
                no("flows/ never imports the CLI (audio_wgan/)")
    return broken


def import_graph(imports: Iterable[Import], known: Iterable[str]) -> dict[str, set[str]]:
    """Module-level edges between project modules (what runs when a module is imported)."""
    known = set(known)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for imp in imports:
        if imp.when == "module" and imp.target in known and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def defines_task(source: str) -> bool:
    """A module-level `@task` / `@task(...)` function, or `name = task(...)`."""

    def is_task(expr: ast.expr) -> bool:
        if isinstance(expr, ast.Call):
            expr = expr.func
        return (isinstance(expr, ast.Name) and expr.id == "task") or (
            isinstance(expr, ast.Attribute) and expr.attr == "task")

    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if any(is_task(d) for d in node.decorator_list):
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            if is_task(node.value.func) or is_task(node.value):
                return True
    return False


# --- the house ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def house() -> list[Import]:
    return all_imports()


def test_the_rooms_import_only_what_they_may(house: list[Import]) -> None:
    broken = broken_rules(house)
    assert not broken, "imports that break the room rules:\n" + "\n".join(broken)


def test_no_import_cycle(house: list[Import]) -> None:
    graph = import_graph(house, project_modules())
    assert "clips.pools" in graph["tasks.precompute"]  # the parser sees the real picture
    found = cycles(graph)
    assert not found, "modules that import each other at import time:\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_every_tasks_file_defines_a_task() -> None:
    files = [p for p in sorted((ROOT / "tasks").glob("*.py")) if p.name != "__init__.py"]
    assert len(files) > 5
    missing = [p.name for p in files if not defines_task(p.read_text())]
    assert not missing, ("files in tasks/ that define no Prefect task (move their helpers to "
                         f"the room whose name fits): {missing}")


# --- the checks themselves can fail -----------------------------------------------------

def test_the_parser_sees_every_kind_of_import() -> None:
    src = ("import prefect\nfrom . import sibling\nfrom ..storage import mel_store\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mlflow\n"
           "def f():\n    from tasks.train import x\n    import zarr\n")
    got = {(i.target, i.when) for i in imports_of(
        "gan.models", src, False, ["gan.sibling", "storage.mel_store", "tasks.train"])}
    assert got == {("prefect", "module"), ("gan.sibling", "module"),
                   ("storage.mel_store", "module"), ("typing", "module"),
                   ("mlflow", "typing"), ("tasks.train", "function"), ("zarr", "function")}


def test_a_broken_rule_is_named() -> None:
    bad = [Import("gan.models", "zarr", 3, "function"),
           Import("storage.mel_store", "mlflow", 4, "module"),
           Import("storage.registry", "mlflow", 5, "module"),
           Import("clips.features", "storage.mel_store", 6, "module"),
           Import("report.progress", "prefect.artifacts", 7, "function"),
           Import("report.gallery", "prefect", 8, "module"),
           Import("tasks.train", "flows.train", 9, "function")]
    broken = broken_rules(bad)
    assert [b.split(" ")[0] for b in broken] == [
        "gan.models", "storage.mel_store", "clips.features", "report.gallery", "tasks.train"]
    assert "line 9" in broken[-1] and "never imports flows/" in broken[-1]


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_task_is_recognised() -> None:
    assert defines_task("from prefect import task\n@task\ndef f(): ...\n")
    assert defines_task("import prefect\n@prefect.task(name='x')\ndef f(): ...\n")
    assert defines_task("f_task = task(f, name='f')\n")
    assert not defines_task("def task(): ...\ndef f():\n    return task(g)\n")
