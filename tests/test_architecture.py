"""The code's shape, as ARCHITECTURE.md states it: no import cycles, no imports hidden in functions, no sys.path edits.

The import direction between layers is checked by import-linter (`lint-imports`, contracts in
pyproject.toml, run by .ci/run); this test covers what its contracts do not: cycles inside a
layer, and the ways cycles used to be dodged.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "comfyfleet").rglob("*.py"):
        if "hostside" in path.parts:
            continue  # scripts that run on hosts, not modules of the package
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` runs pkg/__init__ too: a dependency on both
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_comfyfleet_imports_inside_functions() -> None:
    hidden = []
    for name, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("comfyfleet")
                ):
                    hidden.append(f"{name}:{node.lineno}")
                elif isinstance(node, ast.Import) and any(
                    a.name.startswith("comfyfleet") for a in node.names
                ):
                    hidden.append(f"{name}:{node.lineno}")
    assert hidden == []


def test_the_package_and_scripts_never_edit_sys_path() -> None:
    offenders = []
    for path in [
        *(SRC / "comfyfleet").rglob("*.py"),
        *(ROOT / "scripts").glob("*.py"),
        *(ROOT / "comfyui-api" / "src").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                break
    assert offenders == []


def test_modules_stay_small_enough_to_hold_in_your_head() -> None:
    # Host-side scripts must stay one file each (they are uploaded and run alone).
    big = {
        str(p.relative_to(ROOT)): n
        for p in [*(SRC / "comfyfleet").rglob("*.py"), *(ROOT / "comfyui-api" / "src").rglob("*.py")]
        if "hostside" not in p.parts and (n := len(p.read_text().splitlines())) > 560
    }
    assert big == {}


def _calls_and_attributes(path: Path) -> list[ast.AST]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Call, ast.Attribute))]


def test_host_data_is_read_only_through_host_config() -> None:
    # inventory validates host data into HostConfig; context and pyinfra_compat sit below it.
    allowed = {"comfyfleet.inventory", "comfyfleet.context", "comfyfleet.pyinfra_compat"}
    files = {name: path for name, path in _modules().items() if not name.startswith("comfyfleet.devkit")}
    files |= {f"deploy/{p.name}": p for p in (ROOT / "deploy").glob("*.py")}  # pyinfra's CLI doors
    raw = [
        f"{name}:{node.lineno}"
        for name, path in files.items()
        if name not in allowed
        for node in _calls_and_attributes(path)
        if isinstance(node, ast.Attribute)
        and node.attr == "data"
        and isinstance(node.value, ast.Name)
        and node.value.id == "host"
    ]
    assert raw == [], "read host data as host_config(host).<key> (comfyfleet.inventory.HostConfig)"


def test_sudo_is_host_data_never_an_operation_argument() -> None:
    # `_sudo` is set once per host from its config (inventory.run_data / validate_inventory) and
    # pyinfra applies host data to every operation and fact. Left: `_sudo=False` (a command that
    # must run as the SSH user itself), and host.run_shell_command inside a FunctionCommand, to
    # which pyinfra does not pass the operation's arguments.
    passed = []
    for name, path in _modules().items():
        for node in _calls_and_attributes(path):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg != "_sudo":
                    continue
                as_ssh_user = isinstance(kw.value, ast.Constant) and kw.value.value is False
                raw_command = isinstance(node.func, ast.Attribute) and node.func.attr == "run_shell_command"
                if not (as_ssh_user or raw_command):
                    passed.append(f"{name}:{node.lineno}")
    assert passed == []


def test_facts_live_in_facts_and_operations_in_operations() -> None:
    pending: set[str] = set()
    misplaced = []
    for name, path in _modules().items():
        if (
            name.startswith(("comfyfleet.facts", "comfyfleet.operations", "comfyfleet.devkit"))
            or name in pending
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")) == "FactBase" for b in node.bases
            ):
                misplaced.append(f"{name}:{node.lineno} fact {node.name}")
            elif isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "operation"
                for d in node.decorator_list
            ):
                misplaced.append(f"{name}:{node.lineno} operation {node.name}")
    assert misplaced == []
