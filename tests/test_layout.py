"""The layout the README's Architecture table promises: every module is listed in its package's row, and
each package imports only from the packages above it (``cli`` and ``testing`` from any; the results'
``_repr_html_``/``to_html`` import ``views`` inside the method, when called)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRUB = ROOT / "scrub"
LAZY_VIEWS = ("_repr_html_", "to_html")


def _table() -> list[tuple[str, str]]:
    """The Architecture table's rows: (first cell, second cell)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Architecture"):text.index("Data flows one way:")]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `scrub/")]
    return [(a.strip(), b.strip()) for a, b in rows]


def _rank() -> dict[str, int]:
    """Each top-level name of ``scrub`` (package or module) -> its row in the table."""
    rank: dict[str, int] = {}
    for i, (cell, _) in enumerate(_table()):
        for name in re.findall(r"`([^`]+)`", cell):
            rank[Path(name).stem if name.endswith(".py") else Path(name.rstrip("/")).name] = i
    return rank


def test_every_module_is_in_its_packages_row():
    rows = dict(_table())
    missing = []
    for package in sorted(p for p in SCRUB.iterdir() if (p / "__init__.py").exists()):
        cell = rows.get(f"`scrub/{package.name}/`")
        if cell is None:
            missing.append(f"scrub/{package.name}/ (no row)")
            continue
        for module in sorted(package.glob("*.py")):
            if module.stem not in ("__init__", "__main__") and f"`{module.stem}`" not in cell:
                missing.append(f"scrub/{package.name}/{module.name}")
    top = [p.stem for p in SCRUB.glob("*.py") if p.stem not in ("__init__", "__main__") and not p.stem.startswith("_")]
    missing += [f"scrub/{m}.py (no row)" for m in top if m not in _rank()]
    assert not missing, f"modules the README's Architecture table does not list: {missing}"


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported scrub module, whether the import sits inside a _repr_html_/to_html method)."""
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy = lazy or node.name in LAZY_VIEWS
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scrub."):
            out.append((node.module, lazy))
        elif isinstance(node, ast.Import):
            out.extend((a.name, lazy) for a in node.names if a.name.startswith("scrub."))
        for child in ast.iter_child_nodes(node):
            visit(child, lazy)

    visit(tree, False)
    return out


def test_dependencies_point_down_the_table():
    rank = _rank()
    wrong = []
    for path in sorted(SCRUB.rglob("*.py")):
        me = path.relative_to(SCRUB).with_suffix("").parts[0]
        if me not in rank or me in ("cli", "testing"):
            continue
        for module, lazy in _imports(ast.parse(path.read_text())):
            dep = module.split(".")[1]
            if dep in rank and dep != me and rank[dep] > rank[me] and not (lazy and dep == "views"):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, f"imports against the Architecture table's order: {wrong}"


def test_the_lazy_names_are_what_type_checkers_see_and_all_load():
    """``scrub`` and ``scrub.model`` load their names on first use (scrub.lazy): the EXPORTS table equals the
    TYPE_CHECKING imports, every name resolves to the object its module defines, and ``dir`` lists them."""
    import importlib

    for package in ("scrub", "scrub.model"):
        module = importlib.import_module(package)
        source = (SCRUB / Path(*package.split(".")[1:]) / "__init__.py").read_text()
        block = next(node for node in ast.parse(source).body if isinstance(node, ast.If)
                     and getattr(node.test, "id", None) == "TYPE_CHECKING")
        seen = {(n.module, a.name) for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names}
        table = {(home, name) for home, names in module.EXPORTS.items() for name in names}
        assert seen == table, package
        for home, name in table:
            assert getattr(module, name) is getattr(importlib.import_module(home), name)
            assert name in dir(module) and name in module.__all__
