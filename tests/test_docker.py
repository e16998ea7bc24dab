"""The container image: its Dockerfile passes hadolint, and its recipe's steps work.

There is no Docker engine here, so the image's steps are replayed on this machine:
the dependency list from pyproject.toml alone, the project's wheel, the wheel
installed into a prefix like the image's virtualenv, compose's migrate command, the
ENTRYPOINT and the HEALTHCHECK, each taken from the rendered files themselves.
"""

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import DATABASES, LAYOUTS

SCRIPTS = Path(sysconfig.get_path("scripts"))
BIN = Path(sys.executable).parent
VENV = "/opt/venv"


def instructions(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments); continuation
    lines are joined and comments dropped."""
    stages = []
    for line in re.sub(r"\\\n\s*", "", dockerfile).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, arguments = line.partition(" ")
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, arguments.strip()))
    return stages


def arguments(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [args for word, args in stage if word == instruction]


def exec_form(arguments: str) -> list[str]:
    command = json.loads(arguments)
    assert isinstance(command, list), arguments
    return command


def healthcheck_command(runtime: list[tuple[str, str]]) -> list[str]:
    (healthcheck,) = arguments(runtime, "HEALTHCHECK")
    return exec_form(healthcheck.split(" CMD ", 1)[1])


def run_healthcheck(command: list[str], env: dict[str, str]) -> int:
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_hadolint_finds_nothing_above_info(render, tmp_path):
    """Every layout (their entrypoints differ) and database."""
    dockerfiles = []
    for layout in LAYOUTS:
        for database in DATABASES:
            project = render(layout=layout, database=database)
            dockerfiles.append(str(project / "Dockerfile"))
    result = subprocess.run(
        [SCRIPTS / "hadolint", "--no-color", "--failure-threshold", "warning"]
        + dockerfiles,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_image_is_multi_stage_non_root_and_installs_a_wheel(render, layout, database):
    project = render(layout=layout, database=database)
    build, runtime = instructions((project / "Dockerfile").read_text())
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert runtime[0] == ("FROM", "python:3.11-slim")
    # Dependencies first, from pyproject.toml alone; the rest of the context after.
    copies = [(i, args) for i, (word, args) in enumerate(build) if word == "COPY"]
    assert [args for _, args in copies] == ["pyproject.toml .", ". ."]
    between = [args for word, args in build[copies[0][0] : copies[1][0]]]
    assert any("--requirement requirements.txt" in args for args in between)
    (wheel,) = arguments(build[copies[1][0] :], "RUN")
    wheel_dir = re.fullmatch(r"pip wheel --no-deps --wheel-dir (\S+) \.", wheel)[1]
    # The runtime stage gets the virtualenv and the wheel, never the source tree.
    install = "\n".join(arguments(runtime, "RUN"))
    assert f"source={wheel_dir}," in install
    assert f"pip install --no-deps {wheel_dir}/*.whl" in install
    assert "--editable" not in install and " -e " not in install
    assert f"--from=build {VENV} {VENV}" in arguments(runtime, "COPY")
    assert [args for args in arguments(runtime, "COPY") if "--from" not in args] == [
        "gunicorn.conf.py .",
        "migrations migrations",
    ]
    (user,) = arguments(runtime, "USER")
    assert all(int(part) > 0 for part in user.split(":")), user
    assert runtime[-1][0] == "ENTRYPOINT"
    assert exec_form(runtime[-1][1])[0] == "gunicorn"
    assert healthcheck_command(runtime)[:2] == ["python", "-c"]
    ignored = (project / ".dockerignore").read_text().splitlines()
    assert {".env", ".git", "instance", ".venv", "build", "dist"} <= set(ignored)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def module_files(project: Path, module: str) -> set[str]:
    if (project / f"{module}.py").is_file():
        return {f"{module}.py"}
    return {
        path.relative_to(project).as_posix()
        for path in (project / module).rglob("*.py")
    }


def build_wheel(project: Path, tmp_path: Path) -> Path:
    """The build stage's wheel. The image builds it in isolation; this uses the
    setuptools installed here, checked against the rendered build-system, to spare
    a download per run."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        + ["--no-build-isolation", "--check-build-dependencies"]
        + ["--wheel-dir", wheels, project],
        check=True,
    )
    (wheel,) = wheels.glob("*.whl")
    return wheel


def install_runtime(
    project: Path, runtime: list[tuple[str, str]], wheel: Path, tmp_path: Path
) -> tuple[Path, Path, Path]:
    """The runtime stage: the wheel installed (not editable) into a prefix, as in
    the image's virtualenv, and a working directory holding only what the stage
    copies from the context. Returns the prefix, its site-packages and that
    directory."""
    prefix = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        + ["--prefix", prefix, wheel],
        check=True,
    )
    (site,) = prefix.glob("lib/python*/site-packages")
    workdir = tmp_path / "app"
    workdir.mkdir()
    for args in arguments(runtime, "COPY"):
        if "--from" not in args:
            source, target = shlex.split(args)
            copy = shutil.copytree if (project / source).is_dir() else shutil.copy
            copy(project / source, workdir / target)
    return prefix, site, workdir


# single-module packs like large (one package); large adds subpackages.
@pytest.mark.parametrize("layout", ["single-file", "large"])
def test_image_recipe_serves_and_passes_its_healthcheck(render, tmp_path, layout):
    project = render(layout=layout)
    build, runtime = instructions((project / "Dockerfile").read_text())
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    # The build stage's dependency list, computed from pyproject.toml alone.
    (listing,) = re.findall(r'python -c "[^"]*"', "\n".join(arguments(build, "RUN")))
    alone = tmp_path / "pyproject-only"
    alone.mkdir()
    shutil.copy(project / "pyproject.toml", alone)
    listed = subprocess.run(
        ["sh", "-c", listing], cwd=alone, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == pyproject["project"]["dependencies"]

    # The project's wheel holds every module the ENTRYPOINT and compose import.
    entrypoint = exec_form(runtime[-1][1])
    module = entrypoint[-1].split(":")[0]
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    migrate = compose["services"]["migrate"]["entrypoint"]
    assert migrate[:3] == ["flask", "--app", module]
    wheel = build_wheel(project, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if name.endswith(".py")}
    assert packaged == module_files(project, module)

    prefix, site, workdir = install_runtime(project, runtime, wheel, tmp_path)
    port = free_port()
    env |= {
        "PYTHONPATH": str(site),
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
    }
    # The instance folder is where the Dockerfile makes it and compose mounts it.
    instance = f"var/{module}-instance"
    assert f"mkdir -p {VENV}/{instance}" in "\n".join(arguments(runtime, "RUN"))
    assert compose["services"]["web"]["volumes"] == [f"instance:{VENV}/{instance}"]
    subprocess.run(migrate, cwd=workdir, env=env, check=True, capture_output=True)
    assert list((prefix / instance).glob("*.sqlite3"))

    healthcheck = healthcheck_command(runtime)
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen(
        entrypoint, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while run_healthcheck(healthcheck, env) != 0:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready") as response:
            assert response.status == 200
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
        log.close()
    assert run_healthcheck(healthcheck, env) != 0
