"""The rendered Python reads as written by hand: no name defined twice in a module,
and nothing of a database or a feature the user did not choose."""

import ast

import pytest
from conftest import DATABASES, LAYOUTS

# Text that only a postgresql render may carry: its driver as a dependency, its pool
# settings, its service in compose and CI, and its way of naming a broken constraint.
POSTGRESQL_ONLY = ("psycopg[binary]>=", "pool_pre_ping", "postgres:17", 'constraint "')
# Text that only a rate_limit render may carry: its dependencies, its settings, the
# limiter in the code, Redis in compose, gunicorn's warning and the documented 429.
RATE_LIMIT_ONLY = (
    "flask-limiter[redis]>=",
    "limits>=",
    "RATELIMIT_",
    "limiter",
    "redis:8-alpine",
    "def when_ready(",
    "TooManyRequests",
)


def found(project, markers):
    """The markers that some file of `project` contains."""
    texts = [
        path.read_text()
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.parts
    ]
    return {marker for marker in markers if any(marker in t for t in texts)}


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


def assert_no_name_defined_twice(project):
    for path in sorted(project.rglob("*.py")):
        module = ast.parse(path.read_text())
        names = [name for node in module.body for name in module_level_names(node)]
        twice = sorted({name for name in names if names.count(name) > 1})
        assert not twice, f"{path.relative_to(project)} defines {twice} twice"


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_module_level_name_is_defined_twice(render, layout, database):
    assert_no_name_defined_twice(render(layout=layout, database=database))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sqlite_renders_carry_nothing_of_postgresql(render, layout):
    sqlite = render(layout=layout)
    postgresql = render(layout=layout, database="postgresql")
    assert found(sqlite, POSTGRESQL_ONLY) == set()
    assert found(postgresql, POSTGRESQL_ONLY) == set(POSTGRESQL_ONLY)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_renders_without_rate_limit_carry_nothing_of_it(render, layout):
    """No dependency, setting, code, compose service or test file: a project that
    did not ask for rate limits reads as if the feature did not exist."""
    without = render(layout=layout)
    limited = render(layout=layout, rate_limit=True)
    assert found(without, RATE_LIMIT_ONLY) == set()
    assert not (without / "tests/test_rate_limit.py").exists()
    assert found(limited, RATE_LIMIT_ONLY) == set(RATE_LIMIT_ONLY)
    assert (limited / "tests/test_rate_limit.py").is_file()
    assert_no_name_defined_twice(limited)
