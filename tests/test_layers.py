"""The layer rule, read from the source with ``ast`` so it cannot regress: plugins never import an engine,
and engines never import a plugin.  Anything both need lives in the host (corert.interfaces,
corert.numba_setup, corert.kernels, corert.sampling, corert.prefill, corert.llama_lib).

Every import counts, at module level or inside a function, absolute or relative; relative imports are
resolved against the module's own package (core/ is installed as ``corert``, plugins/ as
``corert.plugins``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "corert", "plugins": "corert.plugins"}

#: (importing module, imported module) pairs allowed to break the rule, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("corert.cli", "corert.tools.cases"): "the CLI lists the bench cases and runs the measurement commands",
}


def _module_name(path: Path) -> str:
    top, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[top], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` read as that file) imports, as absolute dotted names
    (``from a import b`` gives a and a.b)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _breaks(folder: str, forbidden: str) -> list[str]:
    bad = []
    for path in _modules(folder):
        importer = _module_name(path)
        for imported in sorted(imports_of(path)):
            if _within(imported, forbidden) and not any(
                    importer == who and _within(imported, what) for who, what in EXCEPTIONS):
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    return bad


def test_plugins_never_import_an_engine():
    assert _breaks("plugins", "corert.engines") == []


def test_engines_never_import_a_plugin():
    assert _breaks("core/engines", "corert.plugins") == []


def test_only_the_cli_imports_the_measurement_package():
    """corert.tools (bench, ab, perplexity, corpus) may import anything; the runtime, engines and plugins
    never import it, so measurement code never runs (or loads) on the inference path."""
    outside = [b for b in _breaks("core", "corert.tools") + _breaks("plugins", "corert.tools")
               if not b.startswith("core/tools/")]
    assert outside == []


@pytest.mark.parametrize("source, expected", [
    ("from corert.engines.native.simd import prefetch", "corert.engines.native.simd"),
    ("import corert.engines.native", "corert.engines.native"),
    ("def f():\n    from corert.engines import common\n", "corert.engines.common"),
    ("from ....engines.native import model", "corert.engines.native.model"),  # climbs out of the plugins
])
def test_the_check_sees_every_kind_of_import(source, expected):
    as_plugin = ROOT / "plugins" / "kv_cache" / "paged" / "layer_probe.py"  # a name only; never written
    assert expected in imports_of(as_plugin, source)


def test_relative_imports_resolve_against_the_package():
    found = imports_of(ROOT / "core" / "engines" / "native" / "batching.py")
    assert {"corert.numba_setup", "corert.batch_service.Stream", "corert.errors.InputError"} <= found


def test_the_exceptions_are_still_needed():
    modules = {_module_name(p): p for p in _modules("core") + _modules("plugins")}
    for (importer, imported), why in EXCEPTIONS.items():
        if importer in modules:  # a module that moved away needs no exception either
            assert imported in imports_of(modules[importer]), f"{importer} no longer imports {imported}: drop it"
