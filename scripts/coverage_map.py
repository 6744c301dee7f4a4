"""The coverage map (issue 21): the public functions of core/ and plugins/ that no test runs.

Reads coverage's JSON report (`coverage json`, coverage >= 7.5 for its per-function regions) and writes a
Markdown page: totals per package, then every public function or method with zero lines hit. "Public": no
part of its dotted name starts with an underscore (dunders count as public: `__call__` is the API), and
it is not nested in another function. numba-compiled functions (`@njit`, `@vectorize`, ...) run as machine
code the tracer never sees, so they are listed apart: their tests compare them with references instead.

    python scripts/coverage_map.py coverage.json docs/coverage.md --command "scripts/coverage-map.sh"
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path

import attrs

JIT_DECORATORS = {"njit", "jit", "vectorize", "guvectorize", "cfunc", "generated_jit", "stencil"}


@attrs.frozen
class Uncovered:
    module: str  # dotted, e.g. corert.plugins.kv_cache.paged.blocks
    function: str  # dotted inside the module, e.g. PagePool.allocate
    lines: int  # statements in its body
    jit: bool


@attrs.frozen
class PackageTotal:
    package: str
    statements: int
    covered: int

    @property
    def percent(self) -> float:
        return 100.0 * self.covered / self.statements if self.statements else 100.0


def module_name(path: str) -> str:
    """core/x/y.py -> corert.x.y; plugins/a/b.py -> corert.plugins.a.b (setup.py's renaming)."""
    parts = list(Path(path).with_suffix("").parts)
    root = parts.index("core") if "core" in parts else parts.index("plugins")
    head = ["corert"] if parts[root] == "core" else ["corert", "plugins"]
    tail = parts[root + 1:]
    if tail and tail[-1] == "__init__":
        tail = tail[:-1]
    return ".".join(head + tail)


def package_of(module: str) -> str:
    """The group a module's lines are totalled in: corert's own top level, or its first sub-package."""
    parts = module.split(".")
    if parts[:2] == ["corert", "plugins"]:
        return ".".join(parts[:3]) if len(parts) > 3 else "corert.plugins"
    return ".".join(parts[:2]) if len(parts) > 2 else "corert"


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def top_level_functions(source: str) -> dict[str, bool]:
    """Dotted names of the module's functions and its classes' methods (not nested in a function),
    each with whether numba compiles it."""
    found: dict[str, bool] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                jit = any(_decorator_name(d) in JIT_DECORATORS for d in node.decorator_list)
                found[prefix + node.name] = jit
            elif isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")

    visit(ast.parse(source).body, "")
    return found


def is_public(dotted: str) -> bool:
    return all(not part.startswith("_") or (part.startswith("__") and part.endswith("__"))
               for part in dotted.split("."))


def read_map(report: dict, root: Path) -> tuple[list[Uncovered], list[PackageTotal]]:
    uncovered: list[Uncovered] = []
    statements: dict[str, int] = defaultdict(int)
    covered: dict[str, int] = defaultdict(int)
    for path, data in report["files"].items():
        if "functions" not in data:
            raise SystemExit("coverage_map: the JSON has no per-function regions (coverage >= 7.5 needed)")
        module = module_name(path)
        summary = data["summary"]
        statements[package_of(module)] += summary["num_statements"]
        covered[package_of(module)] += summary["covered_lines"]
        defined = top_level_functions((root / path).read_text(encoding="utf-8"))
        for name, region in data["functions"].items():
            if name not in defined or not is_public(name):
                continue
            if region["summary"]["covered_lines"] == 0 and region["summary"]["num_statements"] > 0:
                uncovered.append(Uncovered(module, name, region["summary"]["num_statements"], defined[name]))
    totals = [PackageTotal(p, statements[p], covered[p]) for p in sorted(statements) if statements[p]]
    return sorted(uncovered, key=lambda u: (u.module, u.function)), totals


def render(uncovered: list[Uncovered], totals: list[PackageTotal], command: str, note: str) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    all_statements = sum(t.statements for t in totals)
    all_covered = sum(t.covered for t in totals)
    out = [
        "# Coverage map", "",
        f"Measured {today} with `{command}`{note}. A map of what no test runs, not a target.", "",
        "## Lines covered, per package", "",
        "| package | statements | covered | % |", "| --- | ---: | ---: | ---: |",
    ]
    out += [f"| {t.package} | {t.statements} | {t.covered} | {t.percent:.1f} |" for t in totals]
    out += [f"| **all** | {all_statements} | {all_covered} | {100.0 * all_covered / max(all_statements, 1):.1f} |", ""]
    traced = [u for u in uncovered if not u.jit]
    jitted = [u for u in uncovered if u.jit]
    out += [f"## Public functions with no line run ({len(traced)})", "",
            "`module: function` (statements in it).", ""]
    for module in sorted({u.module for u in traced}):
        names = ", ".join(f"`{u.function}` ({u.lines})" for u in traced if u.module == module)
        out.append(f"- {module}: {names}")
    out += ["", f"## numba-compiled, invisible to the tracer ({len(jitted)})", "",
            "Their tests compare them with scalar references; listed so the map is complete.", ""]
    for module in sorted({u.module for u in jitted}):
        out.append(f"- {module}: " + ", ".join(f"`{u.function}`" for u in jitted if u.module == module))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="coverage's JSON report")
    parser.add_argument("out", type=Path, help="the Markdown page to write")
    parser.add_argument("--root", type=Path, default=Path("."), help="the checkout the report's paths are in")
    parser.add_argument("--command", default="scripts/coverage-map.sh", help="the command to quote on the page")
    parser.add_argument("--note", default="", help="text after the command (e.g. how the run was split)")
    args = parser.parse_args(argv)
    uncovered, totals = read_map(json.loads(args.report.read_text()), args.root)
    args.out.write_text(render(uncovered, totals, args.command, args.note))
    print(f"coverage_map: {sum(not u.jit for u in uncovered)} public functions with no line run -> {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
