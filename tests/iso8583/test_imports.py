"""The package boundaries of the restructuring, read from the source (every import, also
those inside functions): ISO 8583 belongs to no party, the gateway reaches the issuer host
only through it, and no two modules of the issuer host or of ISO 8583 import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTIES = ("ca", "wallet", "merchant", "gateway", "issuer")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports; ``from pkg import name`` counts ``pkg.name`` as well,
    since ``name`` may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    found = sorted((ROOT / package.replace(".", "/")).glob("*.py"))
    assert found, f"no sources under {package}"
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_iso8583_imports_no_party() -> None:
    for path in sources("actors.iso8583"):
        for name in imported(path):
            party = [p for p in PARTIES if within(name, f"actors.{p}")]
            assert not party, f"{module_name(path)} imports {name}"


def test_gateway_imports_nothing_of_the_issuer_host() -> None:
    for path in sources("actors.gateway"):
        for name in imported(path):
            assert not within(name, "actors.issuer"), f"{module_name(path)} imports {name}"


def test_no_import_cycle_in_the_issuer_host_or_iso8583() -> None:
    paths = sources("actors.issuer") + sources("actors.iso8583")
    modules = {module_name(p): p for p in paths}
    graph = {
        name: {dep for dep in imported(path) if dep in modules and dep != name}
        for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, "import cycle: " + " -> ".join((*trail, name))
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, (*trail, name))
        done.add(name)

    for name in graph:
        visit(name, ())
