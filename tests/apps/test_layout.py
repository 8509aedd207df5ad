"""The layout rules of the apps and packages: small files, short lines, one-way imports, scripts on the API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = sorted((ROOT / "apps").rglob("*.py"))
PACKAGES = sorted(p for p in (ROOT / "packages").glob("*/src/ssmad/*") if p.is_dir())


def test_no_app_file_over_400_lines_and_cli_under_300():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in APPS}
    assert not {p: n for p, n in sizes.items() if n > 400}
    assert sizes["apps/common/cli.py"] <= 300


def test_no_line_over_120_characters_in_the_apps():
    long = [f"{p.relative_to(ROOT)}:{i}" for p in APPS for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120]
    assert not long


def _module_imports(path: Path, package: str, root: Path) -> set[str]:
    """The modules of ``package`` that ``path`` imports at module level (imports inside functions run later and
    are not part of an import circle)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out.update(t.removesuffix(".__init__") for t in targets if t.startswith(package))
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("pkg", PACKAGES + [ROOT / "apps"], ids=lambda p: p.name)
def test_no_import_circle(pkg):
    root = pkg.parent.parent if pkg.name != "apps" else ROOT
    package = ".".join(pkg.relative_to(root).parts)
    graph: dict[str, set[str]] = {}
    for path in pkg.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in _module_imports(path, package, root) if m != name}
    # a name imported from a package is that package's attribute: keep only edges to modules that exist
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    # a package's __init__ importing its own modules is no circle with a module importing the package's name
    assert _cycle({k: {m for m in v if not k.startswith(m + ".")} for k, v in graph.items()}) is None


def test_scripts_import_only_the_api():
    allowed = {"apps.common", "apps.almrr", "apps.vmpfd"}
    bad = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("apps"):
                if node.module not in allowed:
                    bad.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                bad += [f"{path.name}: import {a.name}" for a in node.names
                        if a.name.startswith("apps") and a.name not in allowed]
    assert not bad
