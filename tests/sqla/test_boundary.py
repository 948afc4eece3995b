"""Only ``nplus1loader/_sqla.py`` touches SQLAlchemy's internals.

The promise of the boundary module is that a new SQLAlchemy release is one
file to fix.  It holds only while no other module of the package reaches
past it, so this test reads every other module's syntax tree and fails on:

* an import of a private SQLAlchemy module (``sqlalchemy.orm.strategies``,
  ``...context``, ``...loading``, ``...state``...);
* a private attribute (``x._name``) of anything but ``self``, ``cls`` or our
  own modules, also spelled as ``getattr(x, "_name")``;
* the public-looking names of SQLAlchemy mechanisms only the ORM's own code
  uses: an instance's ``load_options``, ``load_path``, ``committed_state``,
  ``callables``, an attribute's ``impl``, a state's ``__dict__``, the
  cache-key ``_traverse_internals``, the hooks of a loader option
  (``process_compile_state``), and indexing the row ``populators``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nplus1loader"
BOUNDARY = "_sqla.py"

PRIVATE_MODULES = (
    "sqlalchemy.orm.base",
    "sqlalchemy.orm.context",
    "sqlalchemy.orm.loading",
    "sqlalchemy.orm.path_registry",
    "sqlalchemy.orm.state",
    "sqlalchemy.orm.strategies",
    "sqlalchemy.orm.strategy_options",
    "sqlalchemy.sql.cache_key",
    "sqlalchemy.sql.traversals",
)
MECHANISMS = frozenset(
    {
        "load_options",
        "load_path",
        "committed_state",
        "callables",
        "impl",
        "__dict__",
        "_traverse_internals",
        "process_compile_state",
        "process_compile_state_replaced_entities",
        "expired_attribute_loader",
        "callable_",
    }
)
PRIVATE_MECHANISMS = frozenset(name for name in MECHANISMS if name.startswith("_"))
POPULATOR_NAMES = frozenset({"populators", "memoized_populators"})
# Names whose private attributes are ours: the instance, the class, and
# our own modules (``_sqla.stored_profile`` is the boundary itself).
OWN_NAMES = frozenset({"self", "cls", "_sqla", "sys"})


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*.py") if p.name != BOUNDARY)


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(PRIVATE_MODULES):
                report(node, f"imports {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PRIVATE_MODULES):
                    report(node, f"imports {alias.name}")
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner == "_sqla":
                continue
            if node.attr in MECHANISMS:
                report(node, f"uses .{node.attr}")
            elif (
                node.attr.startswith("_")
                and not node.attr.startswith("__")
                and owner not in OWN_NAMES
            ):
                report(node, f"reads private .{node.attr} of {owner or 'an expression'}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    attr = name.value
                    if attr in MECHANISMS or (attr.startswith("_") and not attr.startswith("__")):
                        report(node, f"{node.func.id}(..., {attr!r})")
        elif isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and node.value.id in POPULATOR_NAMES:
                report(node, f"indexes {node.value.id}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name in MECHANISMS:
                report(node, f"defines {node.name}()")
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.Assign | ast.AnnAssign):
                    targets = (
                        statement.targets
                        if isinstance(statement, ast.Assign)
                        else [statement.target]
                    )
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id in PRIVATE_MECHANISMS:
                            report(statement, f"defines {target.id}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


@pytest.mark.parametrize("module", _modules(), ids=lambda p: p.name)
def test_only_the_boundary_reaches_into_sqlalchemy(module: Path) -> None:
    assert _violations(module) == []


def test_the_check_sees_what_it_forbids(tmp_path: Path) -> None:
    """The rule itself: each forbidden spelling is reported (a check that
    cannot fail proves nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from sqlalchemy.orm.strategies import LazyLoader\n"
        "import sqlalchemy.orm.loading\n"
        "state.load_options\n"
        "state.__dict__['x'] = 1\n"
        "prop._get_strategy(key)\n"
        "getattr(state, '_deleted')\n"
        "populators['new'].append(x)\n"
        "class Option:\n"
        "    _traverse_internals = []\n"
        "    def process_compile_state(self, compile_state): pass\n"
        "x = self._mine\n"
        "y = _sqla.stored_profile(state)\n"
    )
    found = [line.split(": ", 1)[1] for line in _violations(sample)]
    assert found == [
        "imports sqlalchemy.orm.strategies",
        "imports sqlalchemy.orm.loading",
        "uses .load_options",
        "uses .__dict__",
        "reads private ._get_strategy of prop",
        "getattr(..., '_deleted')",
        "indexes populators",
        "defines _traverse_internals",
        "defines process_compile_state()",
    ]


def test_the_boundary_fails_loudly_on_a_moved_name() -> None:
    """What a SQLAlchemy release that moved an internal does: the import of
    nplus1loader fails, naming it."""
    from nplus1loader import _sqla

    with pytest.raises(ImportError, match="unsupported SQLAlchemy"):
        _sqla._first(_sqla._orm_strategies, "_NoSuchLoader", "NoSuchLoader")
    with pytest.raises(ImportError, match=r"has no _no_such_attribute: unsupported"):
        _sqla._require(_sqla.LazyLoader, "_no_such_attribute")
