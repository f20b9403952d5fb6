"""One Store protocol, two backends, capabilities checked at run time; no import circles inside distribution/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ptmpack.distribution.layout import LayoutStore
from ptmpack.distribution.reference import parse_reference
from ptmpack.distribution.registry import RegistryStore
from ptmpack.distribution.storetypes import BlobMounter, ClientOptions, LocalBlobs, Store

PACKAGE = Path(__file__).resolve().parents[2] / "ptmpack" / "distribution"


def test_layout_conforms(tmp_path: Path) -> None:
    store = LayoutStore(parse_reference(f"oci:{tmp_path / 'l'}:v1"), create=True)
    assert isinstance(store, Store) and isinstance(store, LocalBlobs) and not isinstance(store, BlobMounter)


def test_registry_conforms() -> None:
    store = RegistryStore(parse_reference("127.0.0.1:1/r/x:v1"), ClientOptions(plain_http=True))
    try:
        assert isinstance(store, Store) and isinstance(store, BlobMounter) and not isinstance(store, LocalBlobs)
    finally:
        store.close()


def _edges() -> dict[str, set[str]]:
    """module -> the distribution modules it imports, function bodies included."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ptmpack.distribution"):
                sub = node.module.removeprefix("ptmpack.distribution").lstrip(".")
                deps |= {sub} if sub else {a.name for a in node.names}
        out[name] = {d for d in deps if (PACKAGE / f"{d}.py").exists()} - {name}
    return out


def test_no_import_circles() -> None:
    edges = _edges()
    edges.pop("__init__")
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 1:
            pytest.fail("import circle: " + " -> ".join([*trail, m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            visit(d, [*trail, m])
        state[m] = 2

    for m in sorted(edges):
        visit(m, [])
    assert "pull" not in edges["delta"] and "stores" not in edges["registry"]
