"""The project's layering, checked from the source: who may import whom, and who writes markup.

    common/     shared contracts (run directory, records, configs, compare folder, figures, formats);
                imports no other package of the project at module level
    pipeline/   data: prepare, kernels, loaders             (imports common)
    models/     the network                                   (imports common)
    training/   fit loop, torchrun, compare driver            (never imports analysis)
    analysis/   inspection, model_use, compare, report        (never imports training, FFCV or typer)
                its sub-packages import only analysis' shared modules; report/ composes the others
    cli.py, cli_analysis.py   flags and printing (the only users of typer besides bench/)

Imports are read with `ast`, including those inside functions (the project imports heavy modules
lazily), so a rule holds for every code path, not just the ones a test happens to run. The
runtime check (`assert_stays_clear_of_ffcv_and_training`) complements it: it runs a command in a
fresh interpreter and looks at sys.modules, which also catches third-party modules that pull FFCV.

`python tests/test_structure.py` prints the package import graph.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pipeline", "models", "training", "analysis", "bench")
TOP_MODULES = ("cli", "cli_analysis", "cli_flags", "cli_model_use")
# Modules that build the report page: they compose analysis/report/html.py's helpers and never write markup.
REPORT_MODULES = ("analysis/report/report.py", "analysis/report/run_page.py", "analysis/report/compare_page.py",
                  "analysis/report/ensure.py", "analysis/outputs.py", "analysis/compare/tables.py")
# analysis/: what each sub-package may import besides its own modules and the shared top-level ones.
ANALYSIS_SHARED = {"loading", "gradcam", "gallery", "figures", "outputs"}
ANALYSIS_MAY_USE = {"inspection": set(), "model_use": set(), "compare": set(), "report": {"inspection", "compare"}}


def _files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.Module, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements; module_level: only those run on import (not in functions or TYPE_CHECKING)."""
    if not module_level:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)) and not _is_type_checking(node):
            stack += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            if isinstance(node, ast.Try):
                stack += [stmt for handler in node.handlers for stmt in handler.body]


def imported_modules(path: Path, module_level: bool = False) -> set[str]:
    """Absolute module names a file imports ("analysis.figures", "torch", ...)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in _import_nodes(tree, module_level):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif node.module and node.level == 0:
            names.add(node.module)
    return names


def imports_of(package: str, module_level: bool = False) -> dict[Path, set[str]]:
    """file → the top-level names (packages, modules) it imports."""
    return {path: {name.split(".")[0] for name in imported_modules(path, module_level)} for path in _files(package)}


def offenders(package: str, forbidden: tuple[str, ...], module_level: bool = False) -> list[str]:
    """'file: name' for every import of a forbidden top-level name by a file of package."""
    return [f"{path.relative_to(ROOT)}: {name}" for path, names in imports_of(package, module_level).items()
            for name in sorted(names & set(forbidden))]


def import_graph() -> dict[str, dict[str, set[str]]]:
    """package → {"module level": packages imported when it is imported, "lazy": only inside functions}."""
    ours = set(PACKAGES) | set(TOP_MODULES)
    graph = {}
    for package in PACKAGES:
        eager = set().union(*imports_of(package, module_level=True).values()) & ours - {package}
        every = set().union(*imports_of(package).values()) & ours - {package}
        graph[package] = {"module level": eager, "lazy": every - eager}
    return graph


def format_graph(graph: dict[str, dict[str, set[str]]]) -> str:
    lines = []
    for package, edges in graph.items():
        eager = ", ".join(sorted(edges["module level"])) or "—"
        lazy = f"  (inside functions: {', '.join(sorted(edges['lazy']))})" if edges["lazy"] else ""
        lines.append(f"{package:<9} → {eager}{lazy}")
    return "\n".join(lines)


# ---- layering ------------------------------------------------------------------------------------

def test_training_never_imports_analysis():
    """Training writes the run directory; analysis reads it. Shared code lives in common/."""
    assert offenders("training", ("analysis",)) == []


def test_analysis_never_imports_training():
    """The reverse, from the source; the runtime check below also catches FFCV."""
    assert offenders("analysis", ("training", "ffcv")) == []


def test_analysis_sub_packages_stay_in_their_concern():
    """Inspecting a run, using its model and the norm comparison are independent; only the report
    composes them. Shared helpers live at analysis/'s top level and import no sub-package."""
    found = []
    for path in _files("analysis"):
        parts = path.relative_to(ROOT / "analysis").parts
        own = parts[0] if len(parts) == 2 else None
        allowed = ANALYSIS_SHARED | ({own} | ANALYSIS_MAY_USE[own] if own else set())
        found += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(imported_modules(path))
                  if name.startswith("analysis.") and name.split(".")[1] not in allowed]
    assert found == []
    assert {p.name for p in (ROOT / "analysis").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ANALYSIS_MAY_USE)


def test_common_imports_no_higher_layer():
    """common/ is what every package shares, so importing it must not pull in any of them."""
    assert offenders("common", ("models", "training", "analysis", "pipeline", "bench"), module_level=True) == []


def test_library_never_imports_typer():
    """Printing and flags belong to cli.py and cli_analysis.py; library functions return results."""
    found = [o for package in ("common", "pipeline", "models", "training", "analysis")
             for o in offenders(package, ("typer",))]
    assert found == []


def assert_stays_clear_of_ffcv_and_training(imports: str, call: str) -> None:
    """Run `call` in a fresh interpreter and fail if FFCV or training/ got imported (~6 s of
    `import ffcv` that analysis must never pay)."""
    script = "\n".join(["import sys", f"sys.path.insert(0, {str(ROOT)!r})", imports, call,
                        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ffcv', 'training'))",
                        "assert not bad, bad", "print('ok')"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


# ---- the report renders through analysis/report/html.py only ----------------------------------------------

def _string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant except docstrings, f-string pieces included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_report_modules_write_no_markup():
    """Markup (and its escaping) is html.py's job; a '<' in page code would be a hand-built tag."""
    found = [f"{name}:{line}: {text[:60]!r}" for name in REPORT_MODULES
             for line, text in _string_literals(ROOT / name) if "<" in text]
    assert found == []


def test_markup_check_sees_f_strings():
    """The check above reads f-string pieces, so f'<b>{x}</b>' cannot slip past it."""
    tree = ast.parse("x = 1\ny = f'<b>{x}</b>'\n")
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert any("<b>" in t for t in texts)


if __name__ == "__main__":
    print(format_graph(import_graph()))
