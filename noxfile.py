"""Render every variant of the template and run each rendered project's own checks.

`nox` with no arguments runs everything that needs no external service: lint, the
template's own test suite, and one session per variant (layout x database). The
variant list is read from copier.yml, so a new choice there is a new session here.
"""

import os
import shutil
from pathlib import Path

import nox
import yaml

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
QUESTIONS = yaml.safe_load((ROOT / "copier.yml").read_text())
LAYOUTS = list(QUESTIONS["layout"]["choices"].values())
DATABASES = list(QUESTIONS["database"]["choices"].values())
COPIER = nox.project.dependency_groups(PYPROJECT, "render")[0]

# Use the interpreters on this machine; never let uv download one.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests", "variant"]


def render(session: nox.Session, name: str, **answers: str) -> Path:
    """Render the working tree (uncommitted changes included) with the copier CLI."""
    destination = Path(session.create_tmp()) / name
    shutil.rmtree(destination, ignore_errors=True)
    data = [
        arg for key, value in answers.items() for arg in ("--data", f"{key}={value}")
    ]
    session.run(
        "uv", "tool", "run", "--from", COPIER, "copier", "copy", "--quiet",
        "--defaults", "--vcs-ref", "HEAD", *data, str(ROOT), str(destination),
    )  # fmt: skip
    return destination


def install(session: nox.Session, project: Path) -> None:
    session.install("-e", f"{project}[dev]")
    session.chdir(project)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and format-check the template's own Python (noxfile, tests, benchmarks)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    """The template's own suite: questions, validators, file sets, updates."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize("database", DATABASES, ids=DATABASES)
@nox.parametrize("layout", LAYOUTS, ids=LAYOUTS)
def variant(session: nox.Session, layout: str, database: str) -> None:
    """Render one variant, install it, and run its own ruff and pytest."""
    project = render(session, f"{layout}-{database}", layout=layout, database=database)
    install(session, project)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("pytest", *session.posargs)


@nox.session
@nox.parametrize("layout", LAYOUTS, ids=LAYOUTS)
def postgres(session: nox.Session, layout: str) -> None:
    """The postgresql variants' suites on the real PostgreSQL at TEST_DATABASE_URL."""
    if not os.environ.get("TEST_DATABASE_URL"):
        session.error("Set TEST_DATABASE_URL to an empty PostgreSQL database.")
    project = render(session, layout, layout=layout, database="postgresql")
    install(session, project)
    session.run("pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, run only by name: render time, requests/s, overhead, suite time.

    Prints one table with every figure beside its target; see benchmarks/README.md.
    Needs wrk, which it installs from Debian's packages when it runs as root.
    """
    if shutil.which("wrk") is None:
        if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
            session.error(
                "bench needs the HTTP load generator wrk on PATH; install it "
                "(Debian and Ubuntu: apt-get install wrk) or run this session as root."
            )
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "wrk", external=True)
    session.install(COPIER, "pyyaml")
    project = render(session, "bench-project")
    install(session, project)
    session.chdir(ROOT)
    session.run(
        "python", "benchmarks/run.py", "--project", str(project),
        "--work", session.create_tmp(), *session.posargs,
    )  # fmt: skip
