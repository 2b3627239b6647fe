"""The top of the tree: only ``cli/`` (and tests) import ``bench/``, the demo and the test
environment; the ground package ``setpay/`` imports no layer above it.

Rule 1: every ``import`` and ``from … import`` of every module is read with ``ast`` (function-
level imports included), relative imports resolved against the module's package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("actors", "bench", "broker", "cli", "keystore", "protocol", "setpay")
DEMO = ("actors.demo", "actors.demo_cases", "actors.environment")
TOP_ONLY = ("bench", *DEMO)
LAYERS = ("actors", "bench", "broker", "cli", "keystore", "protocol")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module name ``path`` imports, ``from a import b`` giving both ``a`` and ``a.b``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *filter(None, [node.module])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _is(name: str, target: str) -> bool:
    return name == target or name.startswith(target + ".")


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield _module_name(path), path


def test_only_the_top_imports_bench_the_demo_and_the_environment() -> None:
    offenders = []
    for module, path in _modules():
        if _is(module, "cli"):
            continue
        # The demo and the environment are one unit, bench another: each may import itself.
        unit = DEMO if any(_is(module, t) for t in DEMO) else ("bench",) * _is(module, "bench")
        for name in _imports(path):
            top = [t for t in TOP_ONLY if _is(name, t)]
            if top and top[0] not in unit:
                offenders.append(f"{module} imports {name}")
    assert offenders == []


def test_the_ground_package_imports_no_layer() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in _modules() if _is(module, "setpay")
        for name in _imports(path) if any(_is(name, layer) for layer in LAYERS)
    ]  # fmt: skip
    assert offenders == []


def test_the_walk_sees_the_imports_it_must_refuse() -> None:
    """The walker is not blind: the entry point's own imports of the top-only modules are
    found, and so are the demo's function-level ones."""
    entry = set(_imports(ROOT / "cli" / "main.py"))
    assert {"bench.cli", "actors.demo"} <= entry
    assert "actors.demo_cases" in set(_imports(ROOT / "actors" / "demo.py"))
    assert "protocol.softkey" in set(_imports(ROOT / "actors" / "demo.py"))
