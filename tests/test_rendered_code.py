"""The rendered Python reads as written by hand: no name defined twice in a module,
nothing of a database or feature the user did not choose, the same functions and
classes in every layout, and no feature importing another."""

import ast
from collections import Counter
from pathlib import Path

import pytest
from conftest import DATABASES, LAYOUTS, QUESTIONS

# Text that only a postgresql render may carry: its driver as a dependency, its pool
# settings, its service in compose and CI, and its way of naming a broken constraint.
POSTGRESQL_ONLY = ("psycopg[binary]>=", "pool_pre_ping", "postgres:17", 'constraint "')
AUTHS = list(QUESTIONS["auth"]["choices"].values())
# Text that only a render with `auth` may carry: its setting, its check, the header
# browser code reads on a 401; then what only one kind of credential needs: the
# table and its commands, or the dependency and its settings.
AUTH_ONLY = ("AUTH_REQUIRED_FOR_READS", "def authenticate(", '"WWW-Authenticate",')
API_KEY_ONLY = ("api_keys", "create-api-key", "class ApiKey(", "test_api_keys")
JWT_ONLY = ("PyJWT[crypto]>=", "import jwt", "JWT_AUDIENCE", "JWT_JWKS_URL")
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


def texts_of(project):
    """Every file's text, its path included (file names are part of a render)."""
    return [
        f"{path.relative_to(project)}\n{path.read_text()}"
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.parts
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_auth_choice_carries_only_its_own_code(render, layout):
    """`none` renders no code, dependency, table or setting of authentication."""
    expected = {
        "none": set(),
        "api-key": {*AUTH_ONLY, *API_KEY_ONLY},
        "jwt": {*AUTH_ONLY, *JWT_ONLY},
    }
    assert list(expected) == AUTHS
    for auth in AUTHS:
        texts = texts_of(render(layout=layout, auth=auth))
        markers = AUTH_ONLY + API_KEY_ONLY + JWT_ONLY
        found = {marker for marker in markers if any(marker in t for t in texts)}
        assert found == expected[auth], auth


def defined_names(project):
    """How many times the application code defines each function and class."""
    names = Counter()
    for path in project.rglob("*.py"):
        if path.parts[len(project.parts)] in {"tests", "migrations"}:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names[node.name] += 1
    return names


@pytest.mark.parametrize("auth", AUTHS)
def test_every_layout_defines_the_same_functions_and_classes(render, auth):
    """One source per piece: the layouts differ in where code lives, not in what
    there is of it."""
    single_file, *others = [
        defined_names(render(layout=layout, auth=auth)) for layout in LAYOUTS
    ]
    assert "create_app" in single_file
    for names in others:
        assert names == single_file


def imported_modules(path: Path, root: Path) -> set[str]:
    """The absolute names of the modules a file under `root` imports from."""
    package = path.relative_to(root.parent).with_suffix("").parts[:-1]
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            modules.add(".".join([*base, *filter(None, [node.module])]))
    return modules


def cross_feature_imports(package: Path) -> dict[str, set[str]]:
    """Per file of a feature package (any but `core`), the other features' modules
    it imports."""
    features = {path.parent.name for path in package.glob("*/__init__.py")} - {"core"}
    found = {}
    for feature in features:
        others = {f"{package.name}.{other}" for other in features - {feature}}
        for path in (package / feature).rglob("*.py"):
            imported = {
                module
                for module in imported_modules(path, package)
                if ".".join(module.split(".")[:2]) in others
            }
            if imported:
                found[path.relative_to(package).as_posix()] = imported
    return found


def test_imports_from_another_feature_are_found(tmp_path):
    package = tmp_path / "shop"
    files = {
        "core/__init__.py": "",
        "core/views.py": "from ..items.models import Item\n",
        "items/__init__.py": "",
        "items/models.py": "import json\n",
        "orders/__init__.py": "",
        "orders/views.py": "from ..core.views import x\nfrom ..items import models\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    assert imported_modules(package / "orders/views.py", package) == {
        "shop.core.views",
        "shop.items",
    }
    assert cross_feature_imports(package) == {"orders/views.py": {"shop.items"}}


@pytest.mark.parametrize("auth", AUTHS)
def test_no_feature_imports_another(render, auth):
    """What two resources share lives in core: a feature imports core (and the
    OpenAPI module's blueprint), never another feature; `auth` is a feature too."""
    package = render(layout="large", auth=auth) / "my_api"
    features = {"core", "health", "items"} | ({"auth"} if auth != "none" else set())
    assert {path.parent.name for path in package.glob("*/__init__.py")} == features
    assert cross_feature_imports(package) == {}
