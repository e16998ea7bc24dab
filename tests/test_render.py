"""Rendering: every variant, its exact file set, and output free of Jinja debris."""

import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import DATABASES, LAYOUTS, QUESTIONS, ROOT

COMMON = {
    ".copier-answers.yml",
    ".dockerignore",
    ".env.example",
    ".flaskenv",
    ".gitattributes",
    ".github/dependabot.yml",
    ".github/workflows/ci.yml",
    ".gitignore",
    "Dockerfile",
    "LICENSE",
    "Procfile",
    "README.md",
    "compose.yaml",
    "gunicorn.conf.py",
    "migrations/alembic.ini",
    "migrations/env.py",
    "migrations/script.py.mako",
    "migrations/versions/0001_create_items.py",
    "pyproject.toml",
    "tests/conftest.py",
    "tests/test_cli.py",
    "tests/test_config.py",
    "tests/test_database.py",
    "tests/test_errors.py",
    "tests/test_health.py",
    "tests/test_items.py",
    "tests/test_middleware.py",
    "tests/test_openapi.py",
    "tests/test_responses.py",
    "tests/test_serving.py",
}
# deploy/kubernetes/, rendered with `docker`: SQLite's single pod keeps its
# database on a volume; PostgreSQL's pods scale, and migrate in a Job first.
KUBERNETES_FILES = {
    database: {f"deploy/kubernetes/{name}.yaml" for name in names}
    for database, names in {
        "sqlite": ("configmap", "deployment", "pvc", "service"),
        "postgresql": (
            "configmap",
            "deployment",
            "hpa",
            "migrate-job",
            "pdb",
            "service",
        ),
    }.items()
}
LAYOUT_FILES = {
    "single-file": {"app.py"},
    "single-module": {
        f"my_api/{name}.py"
        for name in (
            "__init__",
            "cli",
            "config",
            "errors",
            "extensions",
            "log",
            "middleware",
            "models",
            "openapi",
            "responses",
            "schemas",
            "views",
        )
    },
    "large": {
        f"my_api/{name}.py"
        for name in (
            "__init__",
            "api",
            "core/__init__",
            "core/cli",
            "core/config",
            "core/errors",
            "core/extensions",
            "core/log",
            "core/middleware",
            "core/models",
            "core/responses",
            "core/schemas",
            "core/views",
            "health/__init__",
            "health/views",
            "items/__init__",
            "items/cli",
            "items/models",
            "items/schemas",
            "items/views",
            "openapi",
        )
    },
}
TEXT_FILES = re.compile(
    r"(\.(py|toml|yml|yaml|md|ini|mako|example)|Procfile|Dockerfile|"
    r"LICENSE|\.flaskenv|\.git\w+|\.dockerignore)$"
)

# Every file copier renders: the `.jinja` files and what they include.
TEMPLATE_SOURCES = sorted(
    [*(ROOT / "template").rglob("*.jinja"), *(ROOT / "includes").rglob("*.*")]
)
BLOCK_OR_COMMENT_TAG = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def files_of(project):
    return {
        path.relative_to(project).as_posix()
        for path in project.rglob("*")
        if path.is_file()
    }


def test_variants_cover_every_choice():
    assert LAYOUTS == ["single-file", "single-module", "large"]
    assert DATABASES == ["sqlite", "postgresql"]
    assert QUESTIONS["layout"]["default"] == "single-module"


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_file_set_of_each_variant(render, layout, database):
    project = render(layout=layout, database=database)
    expected = COMMON | LAYOUT_FILES[layout] | KUBERNETES_FILES[database]
    assert files_of(project) == expected


@pytest.mark.parametrize("layout", LAYOUTS)
def test_optional_files_can_be_left_out(render, layout):
    project = render(layout=layout, docker=False, github_actions=False)
    left_out = {
        ".dockerignore",
        "Dockerfile",
        "compose.yaml",
        ".github/dependabot.yml",
        ".github/workflows/ci.yml",
    }
    assert files_of(project) == (COMMON - left_out) | LAYOUT_FILES[layout]
    assert not (project / ".github").exists()
    assert not (project / "deploy").exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rate_limit_adds_its_tests(render, layout):
    project = render(layout=layout, rate_limit=True)
    rate_limit_files = {"tests/test_rate_limit.py"}
    expected = COMMON | LAYOUT_FILES[layout] | KUBERNETES_FILES["sqlite"]
    assert files_of(project) == expected | rate_limit_files


# What `auth` adds: its tests and migration, and its modules in the package layouts.
AUTH_FILES = {
    "api-key": {
        "migrations/versions/0002_create_api_keys.py",
        "tests/test_api_keys.py",
        "tests/test_auth.py",
    },
    "jwt": {"tests/test_auth.py", "tests/test_jwt.py"},
}
AUTH_MODULES = {
    ("single-module", "api-key"): {"my_api/auth.py"},
    ("single-module", "jwt"): {"my_api/auth.py"},
    ("large", "api-key"): {
        f"my_api/auth/{module}.py"
        for module in ("__init__", "credentials", "models", "cli")
    },
    ("large", "jwt"): {"my_api/auth/__init__.py", "my_api/auth/credentials.py"},
}


@pytest.mark.parametrize("auth", AUTH_FILES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_file_set_with_auth(render, layout, auth):
    project = render(layout=layout, auth=auth)
    added = AUTH_FILES[auth] | AUTH_MODULES.get((layout, auth), set())
    expected = COMMON | LAYOUT_FILES[layout] | KUBERNETES_FILES["sqlite"] | added
    assert files_of(project) == expected
    assert_no_debris(project)


@pytest.mark.parametrize("rate_limit", [False, True], ids=["defaults", "rate_limit"])
@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_jinja_debris(render, layout, database, rate_limit):
    assert_no_debris(render(layout=layout, database=database, rate_limit=rate_limit))


def assert_no_debris(project):
    for name in files_of(project):
        if not TEXT_FILES.search(name):
            continue
        text = (project / name).read_text()
        without_actions = re.sub(r"\$\{\{ [\w.-]+ \}\}", "", text)
        assert not re.search(r"\{\{|\{%|\{#|%\}|#\}", without_actions), name
        assert "\r" not in text, name
        assert text.endswith("\n") and not text.endswith("\n\n"), name
        assert not re.search(r"[ \t]+$", text, re.MULTILINE), name
        assert "\n\n\n\n" not in text, name
        if not name.endswith((".py", ".mako")):
            assert "\n\n\n" not in text, name


def test_no_tag_ends_a_line_of_text():
    """trim_blocks drops the newline after a block or comment tag. After a tag alone
    on its line that is what we want; after text, that text runs into the next line
    (v0.1.0's README said "the `flask` commandand points it at")."""
    glued = []
    for path in TEMPLATE_SOURCES:
        source = path.read_text()
        for tag in BLOCK_OR_COMMENT_TAG.finditer(source):
            if source[tag.end() : tag.end() + 1] != "\n":
                continue
            line_start = source.rfind("\n", 0, tag.start()) + 1
            text_before = BLOCK_OR_COMMENT_TAG.sub("", source[line_start : tag.start()])
            if text_before.strip():
                line = source.count("\n", 0, tag.start()) + 1
                glued.append(f"{path.relative_to(ROOT)}:{line}")
    assert TEMPLATE_SOURCES
    assert glued == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_procfile_serves_the_rendered_factory(render, layout):
    project = render(layout=layout)
    lines = dict(
        line.split(": ", 1) for line in (project / "Procfile").read_text().splitlines()
    )
    target = re.search(r"'(\w+):create_app\(\)'", lines["web"]).group(1)
    module = project / f"{target}.py"
    if not module.exists():
        module = project / target / "__init__.py"
    assert "\ndef create_app(" in module.read_text()
    assert lines["web"].startswith("gunicorn --config gunicorn.conf.py ")
    assert lines["release"].endswith(f"flask --app {target} db upgrade")


@pytest.mark.parametrize("version", QUESTIONS["python_version"]["choices"])
def test_ci_python_matches_requires_python(render, version):
    project = render(python_version=version)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={version}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + version.replace(
        ".", ""
    )
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    matrix = workflow["jobs"]["test"]["strategy"]["matrix"]["python-version"]
    assert matrix[0] == version
    assert matrix[-1] == QUESTIONS["python_version"]["choices"][-1]


@pytest.mark.parametrize("version", QUESTIONS["python_version"]["choices"])
def test_coverage_measures_through_sys_monitoring_where_it_is_not_the_default(
    render, version
):
    """With sys.monitoring the rendered suite takes half the time it takes under the
    C tracer; coverage picks it itself from Python 3.14 on, and 3.11 has none."""
    project = render(python_version=version)
    config = subprocess.run(
        [sys.executable, "-m", "coverage", "debug", "config"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    core = re.search(r"^ *core: (.*)$", config, re.MULTILINE).group(1)
    assert core == ("sysmon" if version in {"3.12", "3.13"} else "None")


@pytest.mark.parametrize(
    ("license", "heading", "expression"),
    [
        ("MIT", "MIT License", "MIT"),
        ("Apache-2.0", "Apache License", "Apache-2.0"),
        ("BSD-3-Clause", "BSD 3-Clause License", "BSD-3-Clause"),
        ("Proprietary", "All rights reserved.", "LicenseRef-Proprietary"),
    ],
)
def test_license(render, license, heading, expression):
    project = render(license=license, author_name="Ada Lovelace")
    text = (project / "LICENSE").read_text()
    assert heading in text
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == expression
    if license != "Apache-2.0":
        assert "Ada Lovelace" in text


def test_answers_file_records_the_answers(render):
    project = render(layout="large", database="postgresql", project_name="Shop")
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["layout"] == "large"
    assert answers["database"] == "postgresql"
    assert answers["project_slug"] == "shop"
    assert "app_module" not in answers


@pytest.mark.parametrize("database", DATABASES)
def test_dependencies_follow_the_database(render, database):
    project = render(database=database)
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert any(d.startswith("psycopg") for d in dependencies) == (
        database == "postgresql"
    )
    assert any(d.startswith("apispec[marshmallow]") for d in dependencies)
    for dependency in dependencies:
        assert "<" in dependency and ">=" in dependency, dependency


@pytest.mark.parametrize("rate_limit", [False, True])
def test_dependencies_follow_rate_limit(render, rate_limit):
    """Flask-Limiter with the Redis client, and limits, which the settings use to
    check RATELIMIT_DEFAULT; bounded like the others."""
    project = render(rate_limit=rate_limit)
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    limiting = [
        d for d in dependencies if d.startswith(("flask-limiter[redis]>=", "limits>="))
    ]
    assert len(limiting) == (2 if rate_limit else 0)
    for dependency in limiting:
        assert "<" in dependency, dependency


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_container_files(render, layout, database):
    project = render(layout=layout, database=database)
    dockerfile = (project / "Dockerfile").read_text()
    web = (project / "Procfile").read_text().splitlines()[0]
    target = re.search(r"'(\w+:create_app\(\))'", web).group(1)
    assert dockerfile.startswith("# ")
    assert "FROM python:3.11-slim\n" in dockerfile
    assert "\nUSER 10001:10001\n" in dockerfile
    entrypoint = f'ENTRYPOINT ["gunicorn", "--config", "gunicorn.conf.py", "{target}"]'
    assert dockerfile.rstrip().endswith(entrypoint)
    ignored = (project / ".dockerignore").read_text().split()
    assert {".env", ".git", "instance", ".venv"} <= set(ignored)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert ("db" in compose["services"]) == (database == "postgresql")
    if database == "postgresql":
        # The README's `docker compose up -d db`, then `flask db upgrade` on the host.
        assert compose["services"]["db"]["ports"] == ["127.0.0.1:${DB_PORT:-5432}:5432"]
        assert "@localhost:5432/" in (project / ".env.example").read_text()
    web_service = compose["services"]["web"]
    assert web_service["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert web_service["environment"]["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert "redis" not in compose["services"]
    assert "RATELIMIT_STORAGE_URI" not in web_service["environment"]


@pytest.mark.parametrize("database", DATABASES)
def test_compose_shares_rate_limits_on_redis(render, database):
    project = render(database=database, rate_limit=True)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    web = compose["services"]["web"]
    assert web["depends_on"]["redis"] == {"condition": "service_healthy"}
    storage = web["environment"]["RATELIMIT_STORAGE_URI"]
    assert storage.startswith("redis://redis:6379/")
    assert "socket_timeout=" in storage and "socket_connect_timeout=" in storage
    # The migration needs no Redis.
    assert "redis" not in compose["services"]["migrate"].get("depends_on", {})
    assert ("db" in compose["services"]) == (database == "postgresql")


LONGEST = {
    "project_name": "Abcdefghij Klmnopqrst Uvwxyzabcd Efghijklmn Opqrstuvwx Yzabc",
    "project_slug": "abcdefghij-klmnopqrst-uvwxyzabcd-efghijk",
    "description": "A description long enough to need wrapping in docstrings. " * 4,
}


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_longest_allowed_names_render_ruff_clean(render, layout, database):
    assert len(LONGEST["project_name"]) == 60
    assert len(LONGEST["project_slug"]) == 40
    project = render(layout=layout, database=database, **LONGEST)
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            cwd=project,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_dev_dependencies_are_bounded(render):
    project = render()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert "optional-dependencies" not in pyproject["project"]
    dev = pyproject["dependency-groups"]["dev"]
    assert any(d.startswith("openapi-spec-validator") for d in dev)
    for dependency in dev:
        assert "<" in dependency and ">=" in dependency, dependency


def test_every_pip_install_instruction_upgrades_pip_and_takes_the_dev_group(render):
    """pip reads dependency groups from 25.1 on; a fresh venv may have an older one.
    `nox -s installs` runs the README's commands; these must say the same."""
    project = render()
    readme = (project / "README.md").read_text()
    install = re.search(r"^## Install\n.*?^```sh\n(.*?)^```", readme, re.M | re.S)[1]
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    steps = [step["run"] for step in workflow["jobs"]["test"]["steps"] if "run" in step]
    message = QUESTIONS["_message_after_copy"]
    for text in (install, "\n".join(steps), message):
        commands = [line.split("#")[0].strip() for line in text.splitlines()]
        pip = [command for command in commands if command.startswith("python -m pip")]
        assert pip == [
            "python -m pip install --upgrade pip",
            "python -m pip install -e . --group dev",
        ], text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_openapi_has_the_same_names_in_every_layout(render, layout):
    project = render(layout=layout)
    module = "app.py" if layout == "single-file" else "my_api/openapi.py"
    text = (project / module).read_text()
    for definition in (
        "class APIBlueprint(flask_smorest.Blueprint):",
        "class Api(flask_smorest.Api):",
        "def build_openapi(app: Flask)",
        "def openapi_json()",
        "def export_openapi(",
        'openapi_bp = Blueprint("openapi", __name__)',
    ):
        assert text.count(definition) == 1, definition


@pytest.mark.parametrize("layout", ["single-file", "large"])
def test_the_flask_command_runs_development_in_debug_mode(render, layout):
    """`.flaskenv` gives the `flask` command development settings, DEBUG included:
    Flask's command sets the debug flag from FLASK_DEBUG, over the config's."""
    project = render(layout=layout)
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"APP_ENV", "DATABASE_URL"} and not key.startswith("FLASK_")
    }
    shown = subprocess.run(
        [sys.executable, "-m", "flask", "my-api", "show-config"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "APP_ENV='development'\n" in shown.stdout
    assert "DEBUG=True\n" in shown.stdout
