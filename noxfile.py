"""Render every variant of the template and run each rendered project's own checks.

`nox` with no arguments runs everything that needs no external service: lint, the
template's own test suite, one session per variant (layout x database) and one per
entry of a fixed sample of feature combinations. The variants and the features'
answers are read from copier.yml, so a new choice there is a new session here.
`nox -s features` renders every combination of the features.
"""

import contextlib
import csv
import functools
import html
import http.server
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import nox
import yaml

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
QUESTIONS = yaml.safe_load((ROOT / "copier.yml").read_text())
LAYOUTS = list(QUESTIONS["layout"]["choices"].values())
DATABASES = list(QUESTIONS["database"]["choices"].values())


def answers_to(question: dict) -> list:
    """What a copier question accepts, its default first."""
    if question["type"] == "bool":
        choices = [False, True]
    elif isinstance(question["choices"], dict):
        choices = list(question["choices"].values())
    else:
        choices = list(question["choices"])
    return sorted(choices, key=lambda answer: answer != question["default"])


# The questions that switch a feature on or off, with their answers (default first):
# every yes/no question, and every choice but the variant axes and the answers that
# only fill in text.
NOT_FEATURES = {"layout", "database", "python_version", "license"}
FEATURES = {
    name: answers_to(question)
    for name, question in QUESTIONS.items()
    if not name.startswith("_")
    and question.get("when") is not False
    and name not in NOT_FEATURES
    and (question["type"] == "bool" or "choices" in question)
}
# The features whose code the rendered suites test. The default run's sample gives
# each of their answers but the default a variant of its own, the layouts and the
# databases taken in turn so that the sample covers them all between its entries.
# (docker and github_actions add files, which tests/test_render.py checks.)
SAMPLED_FEATURES = ["auth", "rate_limit"]
SAMPLE = [
    {
        "layout": LAYOUTS[-1 - number % len(LAYOUTS)],
        "database": DATABASES[-1 - number % len(DATABASES)],
        feature: answer,
    }
    for number, (feature, answer) in enumerate(
        (feature, answer)
        for feature in SAMPLED_FEATURES
        for answer in FEATURES[feature][1:]
    )
]
COPIER = nox.project.dependency_groups(PYPROJECT, "render")[0]
# Schemathesis checks for `fuzz`. Two are left out on purpose: the API trims `name`
# before checking its length, which JSON Schema cannot express, so a padded name of
# 101 characters is accepted (negative_data_rejection) and a blank one is refused
# (positive_data_acceptance), as SPEC.md says it must be.
FUZZ_EXCLUDED_CHECKS = "negative_data_rejection,positive_data_acceptance"
FUZZ_EXAMPLES_PER_OPERATION = 200
FUZZ_MIN_REQUESTS = 1000
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# The OpenAPI linters `openapi` installs from npm into its own folder, and the
# settings that keep Redocly from sending usage data or checking for updates.
OPENAPI_LINTERS = ["@redocly/cli@2.77.0", "@stoplight/spectral-cli@6.16.3"]
REDOCLY_OFFLINE = {
    "REDOCLY_TELEMETRY": "off",
    "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true",
    "REDOCLY_SUPPRESS_NOTIFICATIONS": "true",
}
# Without Access-Control-Max-Age, Chromium keeps a preflight's answer for 5 s: the
# `browser` page waits longer than that between its two POSTs.
BROWSER_PAUSE_SECONDS = 6
# Headless Chromium for `browser` and `openapi`, with nothing that reaches beyond
# 127.0.0.1 (no other host name resolves); the page's console goes to stderr.
CHROMIUM = [
    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--dump-dom",
]  # fmt: skip
# What Chromium logs for each thing a page's Content-Security-Policy blocked.
CSP_VIOLATION = re.compile(r"CONSOLE.*Content Security Policy.*")

# Use the interpreters on this machine; never let uv download one.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests", "variant", "sample"]


def answer_text(answer: object) -> str:
    """An answer as copier's --data takes it (true, not True)."""
    return str(answer).lower() if isinstance(answer, bool) else str(answer)


def render(session: nox.Session, name: str, **answers: object) -> Path:
    """Render the working tree (uncommitted changes included) with the copier CLI."""
    destination = Path(session.create_tmp()).resolve() / name
    shutil.rmtree(destination, ignore_errors=True)
    data = [
        arg
        for key, value in answers.items()
        for arg in ("--data", f"{key}={answer_text(value)}")
    ]
    session.run(
        "uv", "tool", "run", "--from", COPIER, "copier", "copy", "--quiet",
        "--defaults", "--vcs-ref", "HEAD", *data, str(ROOT), str(destination),
    )  # fmt: skip
    return destination


def render_name(answers: dict[str, object]) -> str:
    """`large-postgresql-rate_limit`: the layout, the database, then each feature
    answer (a yes/no feature by its name alone)."""
    parts = [answers["layout"], answers["database"]]
    for name, answer in answers.items():
        if name in FEATURES and answer is not False:
            parts.append(name if answer is True else f"{name}-{answer}")
    return "-".join(map(str, parts))


def install(session: nox.Session, project: Path) -> None:
    """The project, editable, with its `dev` dependency group (read from the
    pyproject.toml in the working directory)."""
    session.chdir(project)
    session.install("-e", ".", "--group", "dev")


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


def check(session: nox.Session, project: Path, *pytest_args: str) -> None:
    """Install a rendered project and run its own ruff and pytest."""
    install(session, project)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("pytest", *pytest_args, *session.posargs)


@nox.session
@nox.parametrize("database", DATABASES, ids=DATABASES)
@nox.parametrize("layout", LAYOUTS, ids=LAYOUTS)
def variant(session: nox.Session, layout: str, database: str) -> None:
    """Render one variant, install it, and run its own ruff and pytest."""
    check(
        session,
        render(session, f"{layout}-{database}", layout=layout, database=database),
    )


@nox.session
@nox.parametrize("answers", SAMPLE, ids=[render_name(answers) for answers in SAMPLE])
def sample(session: nox.Session, answers: dict[str, object]) -> None:
    """One feature combination of the sample: render, install, its ruff and pytest.

    Its tests run in reverse order, the variants' in order: most of them share one
    app, so a test that leaves state behind for the next fails in one of the two.
    """
    session.install(*nox.project.dependency_groups(PYPROJECT, "reverse"))
    check(session, render(session, render_name(answers), **answers), "--reverse")


@nox.session
def features(session: nox.Session) -> None:
    """Every combination of the features' answers, in every layout and database.

    Each render must pass ruff, then build its app and answer /health (an import
    wrong for one layout fails there; tests/features.py renders and builds). The
    suites are not run here: the variants and the sample run them, and one per
    combination would take far longer than the rest of the default run.
    """
    feature_answers = [
        dict(zip(FEATURES, chosen, strict=True))
        for chosen in itertools.product(*FEATURES.values())
    ]
    combinations = [
        {"layout": layout, "database": database, **chosen}
        for layout, database, chosen in itertools.product(
            LAYOUTS, DATABASES, feature_answers
        )
    ]
    work = Path(session.create_tmp()).resolve()
    folder, listing = work / "features", work / "features.json"
    shutil.rmtree(folder, ignore_errors=True)
    listing.write_text(json.dumps([[render_name(a), a] for a in combinations]))
    script = str(ROOT / "tests" / "features.py")
    session.install(COPIER)
    session.run("python", script, "render", str(folder), str(listing))
    # Every dependency any of them has, and ruff from this repository's lint group.
    dependencies = {
        dependency
        for pyproject in folder.glob("*/pyproject.toml")
        for dependency in nox.project.load_toml(pyproject)["project"]["dependencies"]
    }
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"), *dependencies)
    # ruff reads each project's own settings.
    session.run("ruff", "check", "--quiet", str(folder))
    session.run("ruff", "format", "--check", "--quiet", str(folder))
    session.run("python", script, "build", str(folder), env={"LOG_LEVEL": "WARNING"})


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


@nox.session
@nox.parametrize(
    ("kind", "layout"),
    [("jwt", "large"), ("api-key", "single-file")],
    ids=["jwt", "api-key"],
)
def auth(session: nox.Session, kind: str, layout: str) -> None:
    """Serve an `auth` render under gunicorn, as the Procfile says, and use it.

    jwt: a provider on 127.0.0.1 publishes an RSA key as a JWKS; a token it signed
    writes, and each bad token (missing, malformed, another scheme, expired, another
    audience or issuer, an unknown key, `alg: none`, HS256 with the public key) gets
    a 401. api-key: a key from `create-api-key` writes until `revoke-api-key` runs,
    and is never stored. Neither ever reaches the server's log.
    """
    project = render(session, f"auth-{kind}", layout=layout, auth=kind)
    install(session, project)
    session.run("python", str(ROOT / "tests" / "auth_check.py"), str(project))


@nox.session
def installs(session: nox.Session) -> None:
    """A rendered project installed as its README says: pip, then `uv sync`.

    The README's Install commands run as written (a fresh venv, pip upgraded, the
    `dev` group); another render runs `uv sync`. Each suite runs in what was made.
    """
    for_pip, for_uv = render(session, "installs-pip"), render(session, "installs-uv")
    readme = (for_pip / "README.md").read_text()
    commands = re.search(r"^## Install\n.*?^```sh\n(.*?)^```", readme, re.M | re.S)[1]
    # The default render is the sqlite variant: its suite runs on SQLite even where
    # TEST_DATABASE_URL names a PostgreSQL for the postgres session (as in .ci/run).
    on_sqlite = {"TEST_DATABASE_URL": None}
    session.chdir(for_pip)
    session.run("sh", "-e", "-c", commands, external=True)
    session.run(".venv/bin/python", "-m", "pytest", "-q", env=on_sqlite, external=True)

    session.chdir(for_uv)
    # uv's own project environment (.venv), never nox's; an installed interpreter of
    # the project's minimum version, never a download.
    uv_env = {
        **on_sqlite,
        "VIRTUAL_ENV": None,
        "UV_PYTHON": QUESTIONS["python_version"]["default"],
    }
    session.run("uv", "sync", env=uv_env)
    session.run("uv", "run", "pytest", "-q", env=uv_env)


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
        "pytest",
        "tests/test_update.py",
        "tests/test_update_release.py",
        "tests/test_questions.py",
        *session.posargs,
    )


def procfile(project: Path) -> dict[str, str]:
    lines = (project / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def release(session: nox.Session, project: Path, **settings: str) -> dict[str, str]:
    """Run the Procfile's release command as the serving sessions serve: production,
    a fresh SECRET_KEY, JSON logs at INFO, and `settings`. Return that environment."""
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        **settings,
    }
    session.run("sh", "-c", procfile(project)["release"], env=env, external=True)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(command: list[str], log: Path, **options) -> Iterator[subprocess.Popen]:
    """Run a command in the background, its output to `log`; stop it on the way out."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, **options
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(
    session: nox.Session,
    ready: Callable[[], bool],
    what: str,
    process: subprocess.Popen,
    log: Path,
    seconds: float = 30,
) -> None:
    """Poll `ready` until it holds; fail if `process` exits or `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None:
            session.error(f"{what}: the process exited early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            session.error(f"{what}: not within {seconds} s")
        time.sleep(0.1)


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def serve(
    session: nox.Session,
    project: Path,
    env: dict[str, str],
    log: Path,
    port: int | None = None,
) -> Iterator[str]:
    """Run the Procfile's web command on 127.0.0.1 (on `port`, or a free one); yield
    its URL once it answers, then stop it (SIGTERM) and wait until it has exited."""
    port = port or free_port()
    env = {
        **os.environ,
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PATH": f"{session.bin}{os.pathsep}{os.environ['PATH']}",
    }
    url = f"http://127.0.0.1:{port}"
    command = ["sh", "-c", f"exec {procfile(project)['web']}"]
    with running(command, log, cwd=project, env=env) as server:
        wait_until(
            session, lambda: answers(f"{url}/health"), f"gunicorn on {url}", server, log
        )
        yield url


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
    env = release(session, project, OPENAPI_ENABLED="true", WEB_CONCURRENCY="2")
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


def apt_install(session: nox.Session, command: str, package: str) -> None:
    """Install a Debian package when its command is missing: only as root on Debian."""
    if shutil.which(command) is not None:
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.error(
            f"{session.name} needs {command} on PATH; install it (Debian and Ubuntu: "
            f"apt-get install {package}) or run this session as root."
        )
    session.run("apt-get", "update", "-qq", external=True)
    session.run("apt-get", "install", "-y", "-qq", package, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, run only by name: render time, requests/s, overhead, suite time.

    Prints one table with every figure beside its target; see benchmarks/README.md.
    Needs wrk, which it installs from Debian's packages when it runs as root.
    """
    apt_install(session, "wrk", "wrk")
    session.install(COPIER, "pyyaml")
    project = render(session, "bench-project")
    install(session, project)
    session.chdir(ROOT)
    session.run(
        "python", "benchmarks/run.py", "--project", str(project),
        "--work", session.create_tmp(), *session.posargs,
    )  # fmt: skip


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """A folder's files, without a log line per request, and `/pause`, which
    answers after BROWSER_PAUSE_SECONDS."""

    def do_GET(self) -> None:
        if self.path != "/pause":
            super().do_GET()
            return
        time.sleep(BROWSER_PAUSE_SECONDS)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve a folder's files on 127.0.0.1 from a thread; yield the origin."""
    handler = functools.partial(PageHandler, directory=str(directory))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()


# The pages for `browser`. Each fetch records what the page's own code can read;
# the findings go into the DOM as JSON, which Chromium dumps when the page is done.
BROWSER_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>CORS check</title>
<pre id="result">not run</pre>
<script>
const config = %s;

async function postItem(api, name) {
  const response = await fetch(`${api}/api/v1/items`, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({name}),
  });
  return {
    status: response.status,
    requestId: response.headers.get("X-Request-ID"),
    location: response.headers.get("Location"),
    retryAfter: response.headers.get("Retry-After"),
  };
}

async function attempt(step) {
  try {
    return await step();
  } catch (error) {
    return {rejected: String(error)};
  }
}

async function run() {
  const result = {};
  if (config.refused) {
    result.refused = await attempt(async () => {
      const response = await fetch(`${config.api}/api/v1/items`);
      return {status: response.status};
    });
  } else {
    result.first = await attempt(() => postItem(config.api, "first"));
    await fetch("/pause");
    result.second = await attempt(() => postItem(config.api, "second"));
    result.down = await attempt(() => postItem(config.down, "third"));
  }
  document.getElementById("result").textContent = JSON.stringify(result);
}

run();
</script>
"""


def load_page(url: str) -> subprocess.CompletedProcess:
    """Load a page in headless Chromium with a fresh profile: its DOM once loaded
    on stdout, its console on stderr."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [*CHROMIUM, f"--user-data-dir={profile}", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def run_page(session: nox.Session, url: str) -> dict:
    """Load a test page in Chromium; return its findings."""
    dom = load_page(url).stdout
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.DOTALL)
    if found is None or found[1] == "not run":
        session.error(f"the page at {url} did not finish:\n{dom}")
    return json.loads(html.unescape(found[1]))


def requests_logged(log: Path) -> list[tuple[str, str, int]]:
    """Method, path and status of each request in the app's JSON access log."""
    entries = [
        json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"
    ]
    return [
        (entry["method"], entry["path"], entry["status"])
        for entry in entries
        if "method" in entry
    ]


@nox.session
def browser(session: nox.Session) -> None:
    """What browser code on another origin can do with the API, in headless Chromium.

    A page from an allowed origin POSTs JSON twice (one preflight, cached for the
    second thanks to Access-Control-Max-Age), reads X-Request-ID and Location, and
    reads Retry-After from a server in maintenance; a page from another origin cannot
    read any answer. Needs Debian's chromium, which it installs when run as root.
    """
    apt_install(session, "chromium", "chromium")
    session.run("chromium", "--version", external=True)
    project = render(session, "browser-project")
    install(session, project)
    pages = Path(session.create_tmp()).resolve() / "browser-pages"
    shutil.rmtree(pages, ignore_errors=True)
    pages.mkdir()
    env = release(session, project)
    api_log, down_log = project / "api.log", project / "down.log"
    with (
        serve_directory(pages) as allowed,
        serve_directory(pages) as refused,
        serve(session, project, {**env, "CORS_ORIGINS": allowed}, api_log) as api,
        serve(
            session,
            project,
            {**env, "CORS_ORIGINS": allowed, "MAINTENANCE_MODE": "true"},
            down_log,
        ) as down,
    ):
        for name, config in [
            ("allowed", {"api": api, "down": down}),
            ("refused", {"api": api, "refused": True}),
        ]:
            (pages / f"{name}.html").write_text(BROWSER_PAGE % json.dumps(config))
        started = time.monotonic()
        found = run_page(session, f"{allowed}/allowed.html")
        found |= run_page(session, f"{refused}/refused.html")
        elapsed = time.monotonic() - started
    api_requests, down_requests = requests_logged(api_log), requests_logged(down_log)
    methods = [method for method, _, _ in api_requests]
    preflights = methods.count("OPTIONS")
    session.log(f"two page loads in {elapsed:.1f} s; what the pages read: {found}")
    session.log(
        f"preflights: {preflights} for {methods.count('POST')} JSON POSTs "
        f"{BROWSER_PAUSE_SECONDS} s apart; maintenance server: {down_requests}"
    )
    first, second, maintenance = found["first"], found["second"], found["down"]
    checks = {
        "both POSTs answered 201": first.get("status") == second.get("status") == 201,
        "X-Request-ID read": all(
            REQUEST_ID.fullmatch(answer.get("requestId") or "")
            for answer in (first, second)
        ),
        "Location read": all(
            (answer.get("location") or "").startswith("/api/v1/items/")
            for answer in (first, second)
        ),
        "Retry-After read on a 503": maintenance.get("status") == 503
        and (maintenance.get("retryAfter") or "").isdigit(),
        "one preflight for two POSTs": preflights == 1,
        "another origin cannot read an answer": "rejected" in found["refused"]
        and ("GET", "/api/v1/items", 200) in api_requests,
    }
    failed = [check for check, passed in checks.items() if not passed]
    if failed:
        session.error("the browser could not confirm: " + "; ".join(failed))


@nox.session
def openapi(session: nox.Session) -> None:
    """The OpenAPI document, put to the tools its readers will use.

    Each layout exports the same document with `flask <slug> openapi`. It, and the
    document of an `auth=jwt` render whose reads need a token and writes a scope
    (the bearer scheme, `security`, 401 and 403), must pass openapi-spec-validator,
    and Redocly's (`recommended`) and Spectral's (`spectral:oas`, .spectral.yaml)
    rules with no error; both linters come from npm, pinned, into this session's
    folder, and run with `--offline`. A client that
    openapi-python-client generates from it drives a served project: it creates an
    item, PATCHes its name alone (the description must stay), reads and lists.
    Headless Chromium loads the docs page: Swagger UI must show every operation,
    with nothing blocked by the page's Content-Security-Policy and no file from
    another host. Needs npm (Node.js 20.19 or newer) and chromium, which it
    installs with apt-get as root.
    """
    apt_install(session, "npx", "npm")
    apt_install(session, "chromium", "chromium")
    session.install(*nox.project.dependency_groups(PYPROJECT, "openapi"))
    work = Path(session.create_tmp()).resolve()
    projects = {
        layout: render(session, f"openapi-{layout}", layout=layout)
        for layout in LAYOUTS
    }
    secured = render(session, "openapi-jwt", layout="single-file", auth="jwt")
    # Exported first, as the layouts' installs below replace it; every part of
    # `auth`'s description is in a document built with these settings.
    install(session, secured)
    secured_document = export_openapi(
        session, secured, AUTH_REQUIRED_FOR_READS="true", JWT_WRITE_SCOPE="write:items"
    )
    documents = {}
    for layout, project in projects.items():
        install(session, project)
        documents[layout] = json.loads(export_openapi(session, project).read_text())
    differing = [name for name in LAYOUTS if documents[name] != documents[LAYOUTS[0]]]
    if differing:
        session.error(f"the document differs from {LAYOUTS[0]}'s in: {differing}")

    # The layout installed last serves the checks below.
    project = projects[LAYOUTS[-1]]
    exported = project / "openapi.json"
    linted = [str(exported), str(secured_document)]
    session.run("openapi-spec-validator", *linted)
    npm = work / "npm"
    # No install scripts: one in Spectral's dependencies reports each install.
    session.run(
        "npm", "install", "--prefix", str(npm), "--no-audit", "--no-fund",
        "--ignore-scripts", *OPENAPI_LINTERS, external=True,
    )  # fmt: skip
    npx = ["npx", "--yes", "--offline", "--prefix", str(npm)]
    session.run(
        *npx, "redocly", "lint", "--extends=recommended", "--format=stylish",
        *linted, env=REDOCLY_OFFLINE, external=True,
    )  # fmt: skip
    session.run(
        *npx, "spectral", "lint", "--ruleset", str(ROOT / ".spectral.yaml"),
        *linted, external=True,
    )  # fmt: skip
    clients = work / "openapi-clients"
    shutil.rmtree(clients, ignore_errors=True)
    clients.mkdir()
    session.run(
        "openapi-python-client", "generate", "--path", str(exported),
        "--meta", "none", "--output-path", str(clients / "api_client"),
    )  # fmt: skip
    env = release(
        session,
        project,
        OPENAPI_ENABLED="true",
        # A new database each run, in the freshly rendered project.
        DATABASE_URL=f"sqlite:///{project / 'openapi.sqlite3'}",
    )
    log = project / "gunicorn.log"
    with serve(session, project, env, log) as url:
        session.run(
            "python", str(ROOT / "tests" / "generated_client.py"), url,
            env={"PYTHONPATH": str(clients)},
        )  # fmt: skip
        docs = f"{url}/api/v1/docs"
        with urllib.request.urlopen(docs, timeout=10) as response:
            page = response.read().decode()
        started = time.monotonic()
        loaded = load_page(docs)
        elapsed = time.monotonic() - started
    check_docs_page(session, documents[LAYOUTS[-1]], page, loaded, log)
    session.log(f"the docs page rendered in {elapsed:.1f} s")


def export_openapi(session: nox.Session, project: Path, **settings: str) -> Path:
    """`project`'s OpenAPI document, as `flask <slug> openapi` writes it with
    `settings` in the environment, in its openapi.json."""
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    exported = project / "openapi.json"
    session.run(
        "flask", answers["project_slug"], "openapi", "--output", str(exported),
        env=settings,
    )  # fmt: skip
    return exported


def check_docs_page(
    session: nox.Session,
    document: dict,
    page: str,
    loaded: subprocess.CompletedProcess,
    log: Path,
) -> None:
    """Fail unless Swagger UI showed every operation of `document` from the app's
    own files, and the browser neither blocked nor tried anything else."""
    # Swagger UI gives each operation an element with the id operations-TAG-ID.
    operations = {
        f"operations-{operation['tags'][0]}-{operation['operationId']}"
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    shown = set(re.findall(r'id="(operations-[\w-]+)"', loaded.stdout))
    blocked = CSP_VIOLATION.findall(loaded.stderr)
    requested = {(path, status) for _, path, status in requests_logged(log)}
    checks = {
        "every operation shown": operations <= shown,
        "nothing blocked by the page's policy": not blocked,
        "no URL to another host in the page": "//" not in page,
        "the page, its files and the document loaded": {
            ("/api/v1/docs", 200),
            ("/api/v1/docs/swagger-ui.css", 200),
            ("/api/v1/docs/swagger-ui-bundle.js", 200),
            ("/api/v1/docs/docs.js", 200),
            ("/api/v1/openapi.json", 200),
        }
        <= requested,
    }
    failed = [check for check, passed in checks.items() if not passed]
    if failed:
        session.error(
            "the docs page: " + "; ".join(failed) + f"\nnot shown: "
            f"{sorted(operations - shown)}\nblocked: {blocked}\nrequests: {requested}"
        )


# The balancer of `cluster`: round robin over the nodes, each checked on /ready twice
# a second. HAProxy sends a request again, to the other node (redispatch), only when
# no node has read it: the connection was refused, or closed with no answer by a node
# on its way out (its workers exit with connections still queued on the socket). A
# request's body is buffered before it goes to a node, so a POST can be sent again.
# Only abnormal requests are logged: errors, and those sent more than once.
HAPROXY_CONFIG = """\
global
    stats socket {socket} level admin
    log stderr format short local0 info

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    option forwardfor
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request

frontend api
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 2
{servers}
"""
# How long `cluster`'s load runs before the first restart and after the last.
CLUSTER_LOAD_BEFORE_SECONDS = 3
CLUSTER_LOAD_AFTER_SECONDS = 5


class Node:
    """A node of `cluster`: the Procfile's web command on a port that stays its own
    across restarts. Each run logs to a file of its own (node1-1.log, node1-2.log)."""

    def __init__(
        self,
        session: nox.Session,
        project: Path,
        env: dict[str, str],
        name: str,
        work: Path,
    ) -> None:
        self.session, self.project, self.env = session, project, env
        self.name, self.work = name, work
        self.port = free_port()
        self.logs: list[Path] = []
        self.server = contextlib.ExitStack()

    def start(self) -> None:
        """Start it; return once it answers /health."""
        log = self.work / f"{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        serving = serve(self.session, self.project, self.env, log, self.port)
        self.server.enter_context(serving)

    def stop(self) -> None:
        """SIGTERM; return once it has exited (a no-op when it is not running)."""
        self.server.close()


class Balancer:
    """HAProxy in front of `cluster`'s nodes, and what its runtime API tells."""

    def __init__(self, session: nox.Session, nodes: list[Node], work: Path) -> None:
        self.session, self.nodes = session, nodes
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.socket, self.log = work / "haproxy.sock", work / "haproxy.log"
        self.config = work / "haproxy.cfg"
        servers = [f"    server {node.name} 127.0.0.1:{node.port}" for node in nodes]
        self.config.write_text(
            HAPROXY_CONFIG.format(
                socket=self.socket, port=port, servers="\n".join(servers)
            )
        )
        session.run("haproxy", "-c", "-q", "-f", str(self.config), external=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Run HAProxy; return once its checks found every node ready."""
        with running(["haproxy", "-db", "-f", str(self.config)], self.log) as process:
            self.process = process
            self.wait_in_rotation(*self.nodes)
            yield

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's figures for the backend (row BACKEND) and each node."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            answer = b"".join(iter(functools.partial(sock.recv, 65536), b""))
        rows = csv.DictReader(answer.decode().removeprefix("# ").splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == "nodes"}

    def wait_in_rotation(self, *nodes: Node) -> None:
        """Return once HAProxy's checks found each of `nodes` ready: it sends them
        traffic."""

        def in_rotation() -> bool:
            try:
                stats = self.stats()
            except OSError:
                return False
            return all(stats.get(node.name, {}).get("status") == "UP" for node in nodes)

        what = f"HAProxy finds {', '.join(node.name for node in nodes)} ready"
        wait_until(self.session, in_rotation, what, self.process, self.log)


def restart(node: Node, balancer: Balancer) -> str:
    """Replace a node as a rolling restart does; say how long each step took."""
    began = time.monotonic()
    node.stop()
    stopped = time.monotonic()
    node.start()
    answering = time.monotonic()
    balancer.wait_in_rotation(node)
    ended = time.monotonic()
    return (
        f"{node.name}: exited {stopped - began:.1f} s after SIGTERM; the new one "
        f"answered {answering - stopped:.1f} s later, was in rotation "
        f"{ended - answering:.1f} s after that (restart: {ended - began:.1f} s)"
    )


def restart_under_load(
    session: nox.Session, nodes: list[Node], balancer: Balancer, work: Path
) -> tuple[dict, list[str]]:
    """Restart the nodes one at a time while tests/cluster_load.py runs through the
    balancer; return the load's report and how each restart went."""
    report, log = work / "load.json", work / "load.log"
    command = [
        str(Path(session.bin, "python")), str(ROOT / "tests" / "cluster_load.py"),
        balancer.url, str(report),
    ]  # fmt: skip
    with running(command, log) as load:
        started = time.monotonic()
        time.sleep(CLUSTER_LOAD_BEFORE_SECONDS)
        restarts = [restart(node, balancer) for node in nodes]
        restarts.append(
            f"restarts from {CLUSTER_LOAD_BEFORE_SECONDS} s to "
            f"{time.monotonic() - started:.1f} s into the load"
        )
        time.sleep(CLUSTER_LOAD_AFTER_SECONDS)
        if load.poll() is not None:
            session.error(f"the load ended before it was stopped:\n{log.read_text()}")
        load.terminate()
        if load.wait(timeout=60) != 0:
            session.error(f"the load generator failed:\n{log.read_text()}")
    return json.loads(report.read_text()), restarts


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16) == b"+PONG\r\n"
    except OSError:
        return False


# The `cluster` session's rate limit, and the client whose count it reads: an
# address from the documentation range, sent as X-Forwarded-For and never contacted.
CLUSTER_LIMIT = 1_000_000
CLUSTER_CLIENT = "203.0.113.7"


def limit_left(port: int) -> int:
    """RateLimit-Remaining for CLUSTER_CLIENT after one read from the node at `port`."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/items?per_page=1",
        headers={"X-Forwarded-For": CLUSTER_CLIENT},
    )
    with urllib.request.urlopen(request, timeout=10) as got:
        return int(got.headers["RateLimit-Remaining"])


def status_through(url: str) -> int:
    try:
        with urllib.request.urlopen(
            f"{url}/api/v1/items?per_page=1", timeout=10
        ) as got:
            return got.status
    except urllib.error.HTTPError as error:
        return error.code


def stored_item_ids(url: str) -> set[int]:
    """The id of every item the API lists, page by page."""
    ids, page, per_page = set(), 1, 100
    while True:
        query = f"page={page}&per_page={per_page}"
        with urllib.request.urlopen(f"{url}/api/v1/items?{query}", timeout=10) as got:
            data = json.load(got)["data"]
        ids |= {item["id"] for item in data["items"]}
        if page * per_page >= data["total"]:
            return ids
        page += 1


def above_info(log: Path) -> list[str]:
    """The lines of a server's JSON log above INFO, and any line that is not JSON."""
    lines = []
    for line in log.read_text().splitlines():
        try:
            level = json.loads(line)["level"]
        except (ValueError, KeyError):
            level = None
        if level not in {"DEBUG", "INFO"}:
            lines.append(line)
    return lines


@nox.session
def cluster(session: nox.Session) -> None:
    """Two nodes behind HAProxy, restarted one at a time under load: nothing is lost.

    The large postgresql render runs its Procfile's release command on the database
    at TEST_DATABASE_URL, then its web command on two ports of 127.0.0.1 behind
    HAProxy, which checks each node on /ready. Redis runs beside them, as in a
    deployment with `rate_limit`, and the nodes are given its URL. While
    tests/cluster_load.py writes and reads through HAProxy, each node in turn gets
    SIGTERM, is waited for (gunicorn finishes what it is serving, then exits), and
    is replaced on its port by a fresh node, which HAProxy must find ready before
    the next one goes. Then no request may have failed, every write the API
    acknowledged must be stored, and every run of a node must have served the load
    and logged nothing above INFO. The render has `rate_limit`: one client asking
    node1, node2, node1... must see one count go down on Redis, and once Redis is
    stopped the API must still answer (fail open, with Flask-Limiter's warning in
    the log). Needs haproxy and redis-server, which it installs with apt-get as root.
    """
    database = os.environ.get("TEST_DATABASE_URL")
    if not database:
        session.error("Set TEST_DATABASE_URL to a PostgreSQL database.")
    apt_install(session, "haproxy", "haproxy")
    apt_install(session, "redis-server", "redis-server")
    project = render(
        session, "cluster", layout="large", database="postgresql", rate_limit=True
    )
    install(session, project)
    work = project / "cluster"
    work.mkdir()
    redis_port = free_port()
    env = release(session, project, DATABASE_URL=database, TRUSTED_PROXIES="1")
    env |= {
        "WEB_CONCURRENCY": "2",
        # High enough for the load, which comes from one address: the checks read
        # the count rather than run it out.
        "RATELIMIT_DEFAULT": f"{CLUSTER_LIMIT} per hour",
        "RATELIMIT_STORAGE_URI": (
            f"redis://127.0.0.1:{redis_port}/0?socket_connect_timeout=1&socket_timeout=1"
        ),
    }
    nodes = [Node(session, project, env, name, work) for name in ("node1", "node2")]
    balancer = Balancer(session, nodes, work)
    with contextlib.ExitStack() as stack:
        redis_log = work / "redis.log"
        redis = stack.enter_context(
            running(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                 "--save", "", "--appendonly", "no", "--dir", str(work)],
                redis_log,
            )
        )  # fmt: skip
        wait_until(
            session, lambda: redis_answers(redis_port), "redis", redis, redis_log
        )
        for node in nodes:
            stack.callback(node.stop)
            node.start()
        stack.enter_context(balancer.running())
        figures, restarts = restart_under_load(session, nodes, balancer, work)
        stored = stored_item_ids(balancer.url)
        backend = balancer.stats()["BACKEND"]
        counted = [limit_left(node.port) for node in nodes * 3]
        redis.terminate()
        redis.wait(timeout=30)
        without_redis = [status_through(balancer.url) for _ in range(6)]
    acknowledged = set(figures["acknowledged"])
    session.log(
        f"{figures['requests']} requests from {figures['clients']} clients in "
        f"{figures['seconds']} s, {figures['failures']} failed; latency p50 "
        f"{figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
        f"max {figures['max_ms']} ms"
    )
    session.log(
        f"writes acknowledged: {len(acknowledged)}, found in the database: "
        f"{len(acknowledged & stored)}; HAProxy's retries: {backend['wretr']}, "
        f"redispatches (a request sent to the other node): {backend['wredis']}"
    )
    session.log("rolling restart:\n" + "\n".join(restarts))
    served = {
        log.name: sum(path.startswith("/api/") for _, path, _ in requests_logged(log))
        for node in nodes
        for log in node.logs
    }
    session.log(f"API requests served by each run of a node: {served}")
    session.log(
        f"one client asking node1, node2, node1...: RateLimit-Remaining {counted}; "
        f"with Redis stopped, through HAProxy: {without_redis}"
    )
    if counted != list(range(counted[0], counted[0] - len(counted), -1)):
        session.error("the nodes do not share one rate limit count on Redis")
    if counted[0] != CLUSTER_LIMIT - 1:
        session.error(f"the first request's count is {counted[0]}, not the limit - 1")
    if without_redis != [200] * len(without_redis):
        session.error("with Redis stopped, the API did not answer every request")
    if figures["failures"]:
        failures = "\n".join(figures["failures_first"])
        session.error(
            f"failed requests:\n{failures}\nHAProxy's log:\n{balancer.log.read_text()}"
        )
    if acknowledged - stored:
        missing = sorted(acknowledged - stored)
        session.error(f"{len(missing)} acknowledged writes are missing: {missing[:20]}")
    if not all(served.values()):
        session.error("a run of a node served none of the load")
    # Flask-Limiter's own warning that Redis is gone is expected, once the check
    # above has stopped it: that is the fail-open log line.
    logged = [
        f"{log.name}: {line}"
        for node in nodes
        for log in node.logs
        for line in above_info(log)
        if '"logger": "flask-limiter"' not in line
    ]
    limiter_warned = any(
        '"logger": "flask-limiter"' in line
        for node in nodes
        for log in node.logs
        for line in above_info(log)
    )
    if not limiter_warned:
        session.error("no node logged that the rate-limit storage was unreachable")
    if logged:
        session.error("the nodes logged above INFO:\n" + "\n".join(logged))
