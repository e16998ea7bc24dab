"""The rendered Python reads as written by hand: no name defined twice in a module,
and nothing of a database the user did not choose."""

import ast

import pytest
from conftest import DATABASES, LAYOUTS

# Text that only a postgresql render may carry: its driver as a dependency, its pool
# settings, its service in compose and CI, and its way of naming a broken constraint.
POSTGRESQL_ONLY = ("psycopg[binary]>=", "pool_pre_ping", "postgres:17", 'constraint "')


def module_level_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Import | ast.ImportFrom):
        # `import logging.config` beside `import logging` binds no second name.
        return [alias.asname or alias.name for alias in node.names]
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        targets = [node.target]
    elif isinstance(node, ast.Assign):
        targets = node.targets
    else:
        return []
    return [
        name.id
        for target in targets
        for name in ast.walk(target)
        if isinstance(name, ast.Name)
    ]


def test_a_name_defined_twice_is_found():
    module = ast.parse("import os\nLIMIT = 1\ndef f(): pass\nLIMIT = 2\n")
    names = [name for node in module.body for name in module_level_names(node)]
    assert names == ["os", "LIMIT", "f", "LIMIT"]


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_module_level_name_is_defined_twice(render, layout, database):
    project = render(layout=layout, database=database)
    for path in sorted(project.rglob("*.py")):
        module = ast.parse(path.read_text())
        names = [name for node in module.body for name in module_level_names(node)]
        twice = sorted({name for name in names if names.count(name) > 1})
        assert not twice, f"{path.relative_to(project)} defines {twice} twice"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sqlite_renders_carry_nothing_of_postgresql(render, layout):
    sqlite = render(layout=layout)
    postgresql = render(layout=layout, database="postgresql")

    def found(project):
        texts = [
            path.read_text()
            for path in project.rglob("*")
            if path.is_file() and ".git" not in path.parts
        ]
        return {marker for marker in POSTGRESQL_ONLY if any(marker in t for t in texts)}

    assert found(sqlite) == set()
    assert found(postgresql) == set(POSTGRESQL_ONLY)
