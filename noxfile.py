"""Render every variant of the template and run each rendered project's own checks.

`nox` with no arguments runs everything that needs no external service: lint, the
template's own test suite, and one session per variant (layout x database). The
variant list is read from copier.yml, so a new choice there is a new session here.
"""

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nox
import yaml

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
QUESTIONS = yaml.safe_load((ROOT / "copier.yml").read_text())
LAYOUTS = list(QUESTIONS["layout"]["choices"].values())
DATABASES = list(QUESTIONS["database"]["choices"].values())
COPIER = nox.project.dependency_groups(PYPROJECT, "render")[0]
# Schemathesis checks for `fuzz`. Two are left out on purpose: the API trims `name`
# before checking its length, which JSON Schema cannot express, so a padded name of
# 101 characters is accepted (negative_data_rejection) and a blank one is refused
# (positive_data_acceptance), as SPEC.md says it must be.
FUZZ_EXCLUDED_CHECKS = "negative_data_rejection,positive_data_acceptance"
FUZZ_EXAMPLES_PER_OPERATION = 200
FUZZ_MIN_REQUESTS = 1000

# Use the interpreters on this machine; never let uv download one.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests", "variant"]


def render(session: nox.Session, name: str, **answers: str) -> Path:
    """Render the working tree (uncommitted changes included) with the copier CLI."""
    destination = Path(session.create_tmp()).resolve() / name
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
@nox.parametrize("layout", LAYOUTS, ids=LAYOUTS)
def smoke(session: nox.Session, layout: str) -> None:
    """Serve the Procfile's release and web commands under gunicorn; check over HTTP."""
    project = render(session, layout, layout=layout)
    install(session, project)
    session.run("python", str(ROOT / "tests" / "smoke.py"), str(project))


MIN_COPIER = QUESTIONS["_min_copier_version"]


@nox.session
@nox.parametrize(
    "copier",
    [f"copier=={MIN_COPIER}", "copier"],
    ids=[f"copier-{MIN_COPIER}", "copier-newest"],
)
def update(session: nox.Session, copier: str) -> None:
    """The update and question tests on the oldest and the newest copier.

    The oldest is `_min_copier_version` from copier.yml; the newest has no upper
    bound, so a new copier major breaks this session before it breaks a user.
    """
    test_group = nox.project.dependency_groups(PYPROJECT, "test")
    others = [spec for spec in test_group if not spec.startswith("copier")]
    session.install("--upgrade", copier, *others)
    session.run("copier", "--version")
    session.run(
        "pytest", "tests/test_update.py", "tests/test_questions.py", *session.posargs
    )


def procfile(project: Path) -> dict[str, str]:
    lines = (project / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(
    session: nox.Session, project: Path, env: dict[str, str], log: Path
) -> Iterator[str]:
    """Run the Procfile's web command on 127.0.0.1; yield its URL, then stop it."""
    port = free_port()
    env = {
        **os.environ,
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PATH": f"{session.bin}{os.pathsep}{os.environ['PATH']}",
    }
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["sh", "-c", f"exec {procfile(project)['web']}"],
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                session.error(f"gunicorn exited early:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    session.error(f"gunicorn did not answer on {url}")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


@nox.session
@nox.parametrize("layout", LAYOUTS, ids=LAYOUTS)
def fuzz(session: nox.Session, layout: str) -> None:
    """Serve a rendered project under gunicorn and fuzz it from its OpenAPI document.

    Schemathesis generates requests from /api/v1/openapi.json and checks every
    answer: no server error, and status, content type, headers and body as
    documented. Production settings, with the document switched on.
    """
    session.install(*nox.project.dependency_groups(PYPROJECT, "fuzz"))
    project = render(session, f"fuzz-{layout}", layout=layout)
    install(session, project)
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "OPENAPI_ENABLED": "true",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "WEB_CONCURRENCY": "2",
    }
    session.run("sh", "-c", procfile(project)["release"], env=env, external=True)
    log = project / "gunicorn.log"
    report = project / "schemathesis.json"
    started = time.monotonic()
    with serve(session, project, env, log) as url:
        session.run(
            "st", "run", f"{url}/api/v1/openapi.json", "--url", url,
            "--checks", "all", "--exclude-checks", FUZZ_EXCLUDED_CHECKS,
            "--max-examples", str(FUZZ_EXAMPLES_PER_OPERATION),
            "--report", "json", "--report-json-path", str(report),
        )  # fmt: skip
    generated = json.loads(report.read_text())["test_cases"]["generated"]
    # LOG_FORMAT=json: every line the server writes is JSON, gunicorn's own included.
    lines = log.read_text().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            session.error(f"the server wrote a line that is not JSON: {line!r}")
    served = sum("status" in entry for entry in entries)
    errors = [
        line
        for line, entry in zip(lines, entries, strict=True)
        if entry["level"] in {"ERROR", "CRITICAL"}
    ]
    session.log(
        f"{layout}: {generated} test cases, {served} requests served "
        f"in {time.monotonic() - started:.0f} s"
    )
    if errors:
        session.error("the server logged errors:\n" + "\n".join(errors))
    if min(generated, served) < FUZZ_MIN_REQUESTS:
        session.error(f"fewer than {FUZZ_MIN_REQUESTS} requests")


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
