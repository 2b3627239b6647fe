"""The floors of the tree, read from its imports (every ``import`` and ``from ... import``,
also those inside functions): no test of behaviour, a test of shape that fails the day a
change breaks it.

- ``protocol`` imports nothing else of the project;
- a party package (``actors/<party>/``) imports no other party;
- nothing imports ``bench`` (the ``setpay`` entry runs it as ``python -m bench``); only the
  entry (``cli``) at the top imports the demo and the test environment;
- the ground package ``setpay`` imports no layer;
- no two files import each other, directly or through others (no cycles).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "keystore", "broker", "actors", "setpay", "bench", "cli")
PARTIES = ("ca", "wallet", "merchant", "gateway", "issuer")
TOP_ONLY = ("bench", "actors.demo", "actors.demo_cases", "actors.environment")
ENTRY = "cli"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """Every project module ``path`` imports (``from a import b`` counts ``a.b`` if it is a
    module, ``a`` otherwise)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [s for s in subs if s in MODULES] or [node.module]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                yield name


GRAPH = {name: sorted(set(_imports(path)) - {name}) for name, path in MODULES.items()}


def _party(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "actors" and len(parts) > 2 and parts[1] in PARTIES else None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_walk_sees_the_tree() -> None:
    assert len(MODULES) > 100
    assert "protocol.codec" in GRAPH["protocol.wrapper"]
    assert "actors.runtime" in GRAPH["actors.party"]


def test_protocol_imports_nothing_else_of_the_project() -> None:
    bad = [
        f"{m} -> {n}"
        for m, targets in GRAPH.items()
        if _under(m, "protocol")
        for n in targets
        if not _under(n, "protocol")
    ]
    assert bad == []


def test_no_party_imports_another_party() -> None:
    bad = [
        f"{m} -> {n}"
        for m, targets in GRAPH.items()
        for n in targets
        if _party(m) and _party(n) and _party(m) != _party(n)
    ]
    assert bad == []


def test_only_the_entry_imports_bench_the_demo_or_the_environment() -> None:
    bad = [
        f"{m} -> {n}"
        for m, targets in GRAPH.items()
        if not _under(m, ENTRY) and not any(_under(m, t) for t in TOP_ONLY)
        for n in targets
        if any(_under(n, t) for t in TOP_ONLY)
    ]
    assert bad == []
    # bench is imported by nothing outside itself, the entry included (it runs `python -m bench`)
    bench_users = {m for m, t in GRAPH.items() if any(_under(n, "bench") for n in t)}
    assert {m for m in bench_users if not _under(m, "bench")} == set()


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the module graph: each must be one file."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # iterative enough for this graph's depth
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_ground_package_imports_no_layer() -> None:
    """``setpay/`` (configuration, logging, lifecycle, store) is imported by every layer and
    imports none of them."""
    bad = [
        f"{m} -> {n}"
        for m, targets in GRAPH.items()
        if _under(m, "setpay")
        for n in targets
        if not _under(n, "setpay")
    ]
    assert bad == []
