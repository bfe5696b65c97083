"""House rules a reviewer would otherwise check by eye (docs/architecture.md): a private
name (or module) stays inside the package that defines it, and functions stay short."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
# Functions allowed to be longer, each with its reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _modules():
    return sorted((ROOT / "pydiffgen").rglob("*.py"))


def _private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _is_module(dotted: tuple[str, ...]) -> bool:
    p = ROOT.joinpath(*dotted)
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _owner(dotted: tuple[str, ...]) -> tuple[str, ...] | None:
    """The package that a dotted pydiffgen path's first private part belongs to: the
    part's parent when that is a package, else the package of the parent module."""
    for i, part in enumerate(dotted):
        if _private(part):
            return dotted[:i] if ROOT.joinpath(*dotted[:i]).is_dir() else dotted[: i - 1]
    return None


def private_reaches(relpath: str, source: str) -> list[str]:
    """Every import or attribute in `source` (the module at `relpath`) that uses a private
    name of another package: `from a.b import _x`, `from a._m import y`, `m._x` for an
    imported module m."""
    here = Path(relpath).parent.parts
    out, modules = [], {}

    def check(dotted, lineno):
        owner = _owner(dotted)
        if owner is not None and here[: len(owner)] != owner:
            out.append(f"{relpath}:{lineno} uses {'.'.join(dotted)}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = tuple((node.module or "").split(".")) if node.module else ()
            if node.level:
                base = here[: len(here) - node.level + 1] + base
            if not base or base[0] != "pydiffgen":
                continue
            for alias in node.names:
                dotted = base + (alias.name,)
                check(dotted, node.lineno)
                if _is_module(dotted):
                    modules[alias.asname or alias.name] = dotted
        elif isinstance(node, ast.Import):
            for alias in node.names:
                dotted = tuple(alias.name.split("."))
                if dotted[0] == "pydiffgen":
                    check(dotted, node.lineno)
                    if alias.asname:
                        modules[alias.asname] = dotted
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and _private(node.attr)):
            check(modules[node.value.id] + (node.attr,), node.lineno)
    return out


def test_no_private_names_across_packages():
    found = [v for p in _modules()
             for v in private_reaches(str(p.relative_to(ROOT)), p.read_text())]
    assert found == []


def test_the_rule_sees_each_kind_of_reach():
    bad = ("from pydiffgen.ops.knn import _centre\n"
           "from ..ops import _dispatch\n"
           "from pydiffgen.ops import empirical as E\n"
           "E._partials\n")
    assert len(private_reaches("pydiffgen/analysis/x.py", bad)) == 3
    # inside the package that owns them, private names are fine
    assert private_reaches("pydiffgen/ops/x.py", bad.replace("..ops", ".")) == []
    # a subpackage may use its parent package's private helpers
    parent_helper = "from pydiffgen._checks import check_tensor\n"
    assert private_reaches("pydiffgen/ops/x.py", parent_helper) == []


def test_functions_are_short():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                key = f"{path.relative_to(ROOT)}:{node.name}"
                if n > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    long.append(f"{key} ({n} lines)")
    assert long == []
