"""The import contract: cli → api → engines → storage → leaves, and nothing points back up.

Every ``import`` in ptmpack, including those inside function bodies, is read from the
source and mapped to its room (the first package under ``ptmpack``); an edge that the
table below does not allow fails, naming the file and the line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ptmpack"

LEAVES = {"errors", "lazy", "jsonio", "tensors", "crypto", "quant", "format", "codecs", "metadata", "config", "reports"}
STORAGE = LEAVES | {"storage"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "lazy": set(),
    "jsonio": {"errors"},
    "tensors": {"errors"},
    "crypto": {"errors"},
    "quant": {"errors"},
    "format": {"errors", "jsonio", "tensors"},
    "codecs": {"errors", "format", "lazy"},
    "metadata": {"errors", "jsonio"},
    "config": {"errors", "crypto", "format"},
    "reports": {"format"},
    "storage": LEAVES - {"storage"},
    # engines: each calls storage and the leaves, and only the engines listed before it
    "ir": STORAGE,
    "importers": STORAGE | {"ir"},
    "residual": STORAGE,
    "compress": STORAGE | {"ir", "importers"},
    "distribution": STORAGE | {"residual"},
    "api": STORAGE | {"ir", "importers", "residual", "compress", "distribution"},
    "cli": {"api", "config", "reports", "errors"},
    "__main__": {"cli"},
    "__init__": {"api"},  # the root package re-exports the api verbs lazily (from ptmpack import open_package)
}
"""What each room may import (besides itself and ``ptmpack.__version__``)."""


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "ptmpack" or len(parts) == 1:
        return None
    return parts[1]


def _imports() -> list[tuple[str, str, int, str]]:
    """(importing room, imported room, line, file) for every ptmpack import in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        here = _room(".".join(rel.with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "ptmpack":
                    names = [f"ptmpack.{a.name}" for a in node.names if a.name != "__version__"]
            else:
                continue
            for name in names:
                there = _room(name)
                if there is not None and there != here:
                    found.append((here or "ptmpack", there, node.lineno, str(rel)))
    return found


def test_the_allowed_table_is_a_layering() -> None:
    try:
        order = list(TopologicalSorter(ALLOWED).static_order())
    except CycleError as exc:  # pragma: no cover - the table itself is wrong
        pytest.fail(f"the layer table has a cycle: {exc.args[1]}")
    assert order.index("cli") > max(order.index(room) for room in ALLOWED["api"])


def test_every_room_is_in_the_table() -> None:
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    rooms |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert rooms <= set(ALLOWED), f"rooms without a place in the layer table: {sorted(rooms - set(ALLOWED))}"


def test_no_import_points_up_or_sideways() -> None:
    bad = [f"{file}:{line}: {here} imports {there}" for here, there, line, file in _imports()
           if there not in ALLOWED.get(here, set())]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_reader_does_not_import_the_writer() -> None:
    source = (PACKAGE / "format" / "reader.py").read_text()
    assert "ptmpack.format.writer" not in source


HEAVY = ("numpy", "rich", "ml_dtypes", "jsonschema", "cryptography", "torch", "safetensors", "zstandard", "httpx")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["pack", "--help"]])
def test_start_up_imports_nothing_heavy(argv: list[str]) -> None:
    """``ptmpack --version``/``--help`` load click and ptmpack's CLI root only (a set, not a time)."""
    code = (
        "import sys\nfrom ptmpack.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(proc.stderr.strip().splitlines()[-1].split(","))
    heavy = sorted(loaded & set(HEAVY))
    if argv == ["pack", "--help"]:
        heavy = sorted(set(heavy) - {"cryptography"})  # the pack options module names the ciphers
    assert not heavy, f"ptmpack {' '.join(argv)} imported {heavy}"


def test_import_of_the_cli_root_loads_only_click() -> None:
    code = "import sys, ptmpack.cli; print(sorted(m for m in sys.modules if m.startswith('ptmpack')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "['ptmpack', 'ptmpack.cli', 'ptmpack.errors']"


def test_every_api_export_resolves() -> None:
    """Each name ``ptmpack.api`` lists loads from its family module (the lazy table cannot drift)."""
    from ptmpack import api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing, f"ptmpack.api lists names no family module defines: {missing}"


def test_every_cli_command_loads() -> None:
    """Each command the root lists (with its one-line help) imports and is a click command."""
    import click

    from ptmpack.cli import COMMANDS, cli

    ctx = click.Context(cli)
    assert all(isinstance(cli.get_command(ctx, name), click.Command) for name in COMMANDS)


COMPRESS = PACKAGE / "compress"
COMPRESS_ALLOWED: dict[str, set[str]] = {
    "spec": {"methods"},
    "methods": set(),
    "report": set(),
    "step": {"spec", "report"},
    "tree": set(),
    "eval": {"tree", "step", "spec", "report"},
    "quant": {"tree", "eval", "step", "spec", "report"},
    "structure": {"tree", "eval", "step", "spec", "report"},
    "pipeline": {"tree", "eval", "step", "spec", "methods", "report"},
    "__init__": set(),
}
"""What each room inside ``compress/`` may import: shared plumbing (``tree/``) imports no method, the
methods (``quant/``, ``structure/``) never import each other, and ``pipeline`` reaches the methods only
through the ``methods`` table (by name, at run time)."""


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_graph() -> dict[str, list[tuple[str, int]]]:
    """Every ptmpack module and the ptmpack modules it imports anywhere in its body (with the line)."""
    modules = {_module_of(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from pkg import mod" imports the submodule pkg.mod when there is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target.startswith("ptmpack.") and target != name:
                    edges.append((target, node.lineno))
        graph[name] = edges
    return graph


def _compress_room(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["ptmpack", "compress"]:
        return None
    return parts[2] if len(parts) > 2 else "__init__"


def test_every_compress_room_is_in_its_table() -> None:
    rooms = {p.name for p in COMPRESS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    rooms |= {p.stem for p in COMPRESS.glob("*.py")}
    assert rooms <= set(COMPRESS_ALLOWED), f"compress rooms without a row: {sorted(rooms - set(COMPRESS_ALLOWED))}"
    TopologicalSorter(COMPRESS_ALLOWED).static_order()  # the table itself has no cycle (raises CycleError)


def test_no_compress_import_points_up_or_sideways() -> None:
    bad = []
    for module, edges in _module_graph().items():
        here = _compress_room(module)
        if here is None:
            continue
        for target, line in edges:
            there = _compress_room(target)
            if there is not None and there != here and there not in COMPRESS_ALLOWED.get(here, set()):
                bad.append(f"{module}:{line}: compress/{here} imports compress/{there} ({target})")
    assert not bad, "imports against the compress rooms:\n" + "\n".join(bad)


def test_no_import_cycle_inside_a_room() -> None:
    """No two modules of one room (or of one compress room) import each other, even inside function bodies."""
    def room(module: str) -> str:
        return f"compress/{_compress_room(module)}" if _compress_room(module) else str(_room(module))

    graph = _module_graph()
    cycles = []
    for name in sorted({room(m) for m in graph}):
        members = {m for m in graph if room(m) == name}
        sub = {m: {t for t, _ in graph[m] if t in members} for m in members}
        try:
            list(TopologicalSorter(sub).static_order())
        except CycleError as exc:
            cycles.append(f"{name}: {' -> '.join(exc.args[1])}")
    assert not cycles, "import cycles inside a room:\n" + "\n".join(cycles)


def test_the_module_graph_sees_imports_inside_functions() -> None:
    """The checks above read imports in function bodies too (``fake_quant`` loads the torch span runner lazily)."""
    edges = {t for t, _ in _module_graph()["ptmpack.compress.quant.ptq.fake_quant"]}
    assert "ptmpack.compress.eval.torch_span" in edges


def test_the_methods_table_loads_no_method_and_names_real_functions() -> None:
    """``compress/methods.py`` and ``spec.py`` load nothing heavy; every row's entry is a class implementing the
    Step protocol (``check(spec)``, ``run(tree, ctx)``), built without arguments."""
    import importlib
    import inspect

    code = ("import sys, ptmpack.compress.spec, ptmpack.compress.methods\n"
            "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert not set(proc.stdout.strip().split(",")) & set(HEAVY)
    from ptmpack.compress.methods import METHODS, SLOTS

    for m in METHODS:
        module, _, name = m.entry.partition(":")
        cls = getattr(importlib.import_module(module), name)
        assert m.slot in SLOTS and inspect.isclass(cls), m
        step = cls()
        assert list(inspect.signature(step.check).parameters) == ["spec"], m
        assert list(inspect.signature(step.run).parameters) == ["tree", "ctx"], m
