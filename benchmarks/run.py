"""Run every benchmark and print one table with each figure beside its target.

`nox -s bench` renders the default variant, installs it with its dev dependencies in
the session's virtualenv, and calls this script:

    python benchmarks/run.py --project RENDERED_PROJECT --work SCRATCH_DIR

1. Render time of every variant (copier CLI, `--vcs-ref HEAD`) against copier's floor,
   the near-empty template in `benchmarks/empty-template/` rendered the same way.
2. Requests per second of the rendered project, served by its Procfile's web command
   with its gunicorn.conf.py and production settings, against `bare_app.py` (bare
   Flask, and its floor: bare Flask plus what SPEC.md asks) under the same
   gunicorn.conf.py; load from wrk on 127.0.0.1, the runs of a round alternated.
3. CPU microseconds per request in process (a direct WSGI call), app vs bare Flask
   and the floor, and each construct that exists only for speed against the plain
   Flask idiom.
4. Wall and CPU time of the rendered project's test suite, and the gunicorn workers'
   memory.

Every figure is a median over alternated runs; the machine may be busy, so compare
the ratios, which share the noise, rather than the absolute numbers.
"""

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

BENCHMARKS = Path(__file__).resolve().parent
TEMPLATE = BENCHMARKS.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# Variables the rendered app reads; cleared so the caller's shell cannot steer it.
APP_VARIABLES = (
    "APP_ENV",
    "SECRET_KEY",
    "DATABASE_URL",
    "CORS_ORIGINS",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "MAINTENANCE_MODE",
    "TRUSTED_PROXIES",
    "MAX_CONTENT_LENGTH",
    "HOST",
    "PORT",
)

# Targets from the issue that asked for these benchmarks.
HEALTH_TARGET = 0.85  # /health at least this share of bare Flask's requests/s
ITEM_READ_TARGET = 0.6  # GET /api/v1/items/<id>, likewise
RENDER_TARGET = 1.5  # a render at most this many times copier's floor
SUITE_TARGET = 5.0  # the rendered test suite, seconds
# The floor without its JSON access log line (bare_app.py): what that line costs alone.
UNLOGGED_FLOOR = "floor_unlogged"
# A construct that exists only for speed stays while the plain Flask idiom it
# replaces costs at least this many times its CPU per request.
CONSTRUCT_TARGET = 1.05


@dataclass
class Row:
    measurement: str
    app: str
    baseline: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def alternate(names: list[str], round_number: int) -> list[str]:
    """Rotate the order every round so no contender always runs first."""
    shift = round_number % len(names)
    return names[shift:] + names[:shift]


# --- 1. Render time ---------------------------------------------------------------


def variants() -> list[dict[str, str]]:
    questions = yaml.safe_load((TEMPLATE / "copier.yml").read_text())
    return [
        {"layout": layout, "database": database}
        for layout in questions["layout"]["choices"].values()
        for database in questions["database"]["choices"].values()
    ]


def floor_template(work: Path, files: int = 1) -> Path:
    """The empty template as a git repository, so `--vcs-ref HEAD` clones it too;
    with `files`, that many one-line files, to show what copier spends per file."""
    repository = work / f"empty-template-{files}"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(BENCHMARKS / "empty-template", repository)
    for number in range(2, files + 1):
        (repository / f"file{number}.md.jinja").write_text("# {{ project_name }}\n")
    git = ["git", "-C", str(repository), "-c", "user.name=bench"]
    git += ["-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Empty template"], check=True)
    return repository


def rendered_files(destination: Path) -> int:
    """How many files the default render writes."""
    shutil.rmtree(destination, ignore_errors=True)
    command = [str(BIN / "copier"), "copy", "--quiet", "--defaults"]
    command += ["--vcs-ref", "HEAD", str(TEMPLATE), str(destination)]
    subprocess.run(command, check=True, capture_output=True)
    count = sum(1 for path in destination.rglob("*") if path.is_file())
    shutil.rmtree(destination)
    return count


def time_render(template: Path, destination: Path, answers: dict[str, str]) -> float:
    shutil.rmtree(destination, ignore_errors=True)
    data = [
        arg for key, value in answers.items() for arg in ("--data", f"{key}={value}")
    ]
    command = [str(BIN / "copier"), "copy", "--quiet", "--defaults"]
    command += ["--vcs-ref", "HEAD", *data, str(template), str(destination)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"copier failed rendering {template} {answers}:\n{result.stderr}")
    shutil.rmtree(destination)
    return elapsed


def bench_render(work: Path, rounds: int) -> list[Row]:
    files = rendered_files(work / "render")
    contenders = {
        "copier floor": (floor_template(work), {}),
        "copier floor, many files": (floor_template(work, files), {}),
    }
    for answers in variants():
        contenders[f"{answers['layout']} {answers['database']}"] = (TEMPLATE, answers)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_number in range(rounds):
        for name in alternate(list(contenders), round_number):
            template, answers = contenders[name]
            times[name].append(time_render(template, work / "render", answers))
        log(f"render round {round_number + 1}/{rounds} done")
    floor = statistics.median(times.pop("copier floor"))
    many = statistics.median(times.pop("copier floor, many files"))
    rows = []
    for name, values in times.items():
        ratio = statistics.median(values) / floor
        rows.append(
            Row(
                f"render {name}",
                f"{statistics.median(values):.2f} s",
                f"{floor:.2f} s (floor)",
                f"{ratio:.2f}x",
                f"<= {RENDER_TARGET}x",
                verdict(ratio <= RENDER_TARGET),
            )
        )
    rows.append(
        Row(
            f"  copier's floor for {files} one-line files (the default render's count)",
            f"{many:.2f} s",
            f"{floor:.2f} s (floor)",
            f"{many / floor:.2f}x",
        )
    )
    return rows


# --- 2. Requests per second under gunicorn ------------------------------------------


def procfile(project: Path) -> dict[str, str]:
    lines = (project / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def split_command(command: str, env: dict[str, str]) -> tuple[list[str], dict]:
    """`KEY=value cmd args` as (argv, env with KEY set): run with no shell between."""
    argv, env = shlex.split(command), dict(env)
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    return argv, env


def production_environment(work: Path, port: int) -> dict[str, str]:
    """The rendered app's production settings; its database is a file in `work`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in APP_VARIABLES and not key.startswith("FLASK_")
    }
    env.update(
        APP_ENV="production",
        SECRET_KEY=secrets.token_hex(32),
        CORS_ORIGINS="https://app.example",
        DATABASE_URL=f"sqlite:///{work / 'bench.sqlite3'}",
        HOST=HOST,
        PORT=str(port),
    )
    return env


def release(project: Path, work: Path) -> None:
    """A fresh SQLite database, built by the Procfile's release command."""
    for stale in work.glob("bench.sqlite3*"):
        stale.unlink()
    argv, env = split_command(
        procfile(project)["release"], production_environment(work, 0)
    )
    with open(work / "release.log", "w") as release_log:
        result = subprocess.run(
            argv, cwd=project, env=env, stdout=release_log, stderr=release_log
        )
    if result.returncode != 0:
        sys.exit(f"the release command failed; see {work / 'release.log'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """One gunicorn master, started from a command line, stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict, log_file):
        self.name, self.port = name, int(env["PORT"])
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url("/health"), timeout=5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    sys.exit(f"{name} did not start; see {log_file.name}")
                time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def workers(self) -> list[int]:
        """Pids of the master's children, read from /proc."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def worker_cpu_seconds(self) -> float:
        """User and system CPU time of the workers so far, from /proc/<pid>/stat."""
        ticks = 0
        for pid in self.workers():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def worker_rss_mib(self) -> list[float]:
        sizes = []
        for pid in self.workers():
            status = Path(f"/proc/{pid}/status").read_text()
            kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
            sizes.append(kib / 1024)
        return sizes

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, as a platform stops it: in-flight requests finish first."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wrk(url: str, duration: int, post_prefix: str | None = None) -> tuple[float, int]:
    """(requests/s, requests) of one wrk run; any non-2xx answer invalidates it.

    With `post_prefix`, wrk POSTs items named `<prefix>-t<thread>-<n>`, all unique.
    """
    command = ["wrk", "-t1", "-c4", f"-d{duration}s", url]
    if post_prefix is not None:
        command[1:1] = ["-s", str(BENCHMARKS / "post_items.lua")]
        command += ["--", post_prefix]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed:\n{result.stdout}{result.stderr}")
    output = result.stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        sys.exit(f"{url}: {bad.group(1)} non-2xx answers under load:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    return rate, int(re.search(r"(\d+) requests in", output).group(1))


def load_cases(item_id: int) -> list[tuple[str, str, bool, float | None]]:
    """(name, path, whether it POSTs new items, target ratio) for each load run."""
    return [
        ("GET /health", "/health", False, HEALTH_TARGET),
        ("GET /api/v1/items/<id>", f"/api/v1/items/{item_id}", False, ITEM_READ_TARGET),
        ("POST /api/v1/items", "/api/v1/items", True, None),
    ]


def paired_ratio(values: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median of each round's ratio: the runs of a round are back to back, so a
    change in the machine's load hits them alike."""
    return statistics.median(
        a / b for a, b in zip(values[name], values[baseline], strict=True)
    )


def load_rows(
    case: str,
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    target: float | None,
) -> list[Row]:
    """Requests/s and worker CPU per request of one case: the app and the floor
    against bare Flask, and the app against the floor."""
    rate, cpu_used = (
        {name: statistics.median(v) for name, v in values.items()}
        for values in (rates, cpu)
    )
    app_ratio = paired_ratio(rates, "app", "bare")
    return [
        Row(
            f"{case} under gunicorn",
            f"{rate['app']:.0f} req/s",
            f"{rate['bare']:.0f} req/s",
            f"{app_ratio:.2f}x",
            f">= {target}x" if target else "",
            verdict(app_ratio >= target) if target else "",
        ),
        Row(
            "  floor: bare Flask + what SPEC.md asks",
            f"{rate['floor']:.0f} req/s",
            f"{rate['bare']:.0f} req/s",
            f"{paired_ratio(rates, 'floor', 'bare'):.2f}x",
        ),
        Row(
            "  the floor without its access log line",
            f"{rate[UNLOGGED_FLOOR]:.0f} req/s",
            f"{rate['bare']:.0f} req/s",
            f"{paired_ratio(rates, UNLOGGED_FLOOR, 'bare'):.2f}x",
        ),
        Row(
            "  the app against the floor",
            f"{rate['app']:.0f} req/s",
            f"{rate['floor']:.0f} req/s (floor)",
            f"{paired_ratio(rates, 'app', 'floor'):.2f}x",
        ),
        Row(
            f"{case} worker CPU per request",
            f"{cpu_used['app']:.0f} us",
            f"{cpu_used['bare']:.0f} us",
            f"{paired_ratio(cpu, 'app', 'bare'):.2f}x",
        ),
        Row(
            "  the floor's worker CPU per request",
            f"{cpu_used['floor']:.0f} us",
            f"{cpu_used['bare']:.0f} us",
            f"{paired_ratio(cpu, 'floor', 'bare'):.2f}x",
        ),
    ]


def bench_http(
    project: Path, app_module: str, work: Path, rounds: int, duration: int
) -> list[Row]:
    """The rendered app as its Procfile serves it, bare Flask and its floor (see
    bare_app.py) under the same gunicorn.conf.py, loaded by wrk in turn."""
    commands = procfile(project)
    env = production_environment(work, free_port())

    with contextlib.ExitStack() as stack:
        web, web_env = split_command(commands["web"], env)
        app_log = stack.enter_context(open(work / "app.log", "w"))
        app = stack.enter_context(
            Server("rendered app", web, project, web_env, app_log)
        )
        created = post_json(app.url("/api/v1/items"), {"name": "benchmark item"})
        item = created["data"]["item"]

        # Same gunicorn.conf.py and environment: same bind, workers, worker class.
        bare_argv = ["gunicorn", "--config", str(project / "gunicorn.conf.py")]
        servers = {"app": app}
        for name, call in [
            ("bare", "create_app()"),
            ("floor", "create_app(True)"),
            (UNLOGGED_FLOOR, "create_app(True, access_line=False)"),
        ]:
            bare_env = {
                **web_env,
                "PORT": str(free_port()),
                "BARE_APP_ITEM": json.dumps(item),
                "BARE_APP_MODULE": app_module,
                "PYTHONPATH": str(project),
            }
            bare_log = stack.enter_context(open(work / f"{name}.log", "w"))
            servers[name] = stack.enter_context(
                Server(
                    f"bare Flask ({name})",
                    [*bare_argv, f"bare_app:{call}"],
                    BENCHMARKS,
                    bare_env,
                    bare_log,
                )
            )

        rows = []
        for case, path, posts, target in load_cases(item["id"]):
            rates: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for name in servers:  # warm-up, not recorded
                wrk(servers[name].url(path), 1, f"warm-{name}" if posts else None)
            for round_number in range(rounds):
                for name in alternate(list(servers), round_number):
                    prefix = f"r{round_number}-{name}" if posts else None
                    cpu_before = servers[name].worker_cpu_seconds()
                    rate, requests = wrk(servers[name].url(path), duration, prefix)
                    cpu_used = servers[name].worker_cpu_seconds() - cpu_before
                    rates[name].append(rate)
                    cpu[name].append(cpu_used / requests * 1e6)
            log(f"{case}: {rates} req/s")
            rows += load_rows(case, rates, cpu, target)
        rss = {name: server.worker_rss_mib() for name, server in servers.items()}
        rows.append(
            Row(
                "gunicorn worker RSS after load",
                " / ".join(f"{mib:.0f}" for mib in rss["app"]) + " MiB",
                " / ".join(f"{mib:.0f}" for mib in rss["bare"]) + " MiB",
            )
        )
    return rows


# --- 3. In process ------------------------------------------------------------------


def bench_in_process(
    project: Path, app_module: str, work: Path, rounds: int
) -> list[Row]:
    env = production_environment(work, free_port())
    with open(work / "inprocess.log", "w") as log_file:
        result = subprocess.run(
            [sys.executable, str(BENCHMARKS / "inprocess.py"), app_module]
            + ["--rounds", str(rounds)],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    if result.returncode != 0:
        sys.exit(f"inprocess.py failed; see {work / 'inprocess.log'}")
    results = json.loads(result.stdout)
    constructs = results.pop("constructs")
    rows = []
    for case, timings in results.items():
        rows += [
            Row(
                f"{case} in process (CPU)",
                f"{timings['app']:.0f} us",
                f"{timings['bare']:.0f} us",
                f"+{timings['app'] - timings['bare']:.0f} us",
            ),
            Row(
                "  the floor in process (CPU)",
                f"{timings['floor']:.0f} us",
                f"{timings['bare']:.0f} us",
                f"+{timings['floor'] - timings['bare']:.0f} us",
            ),
        ]
    for construct, timings in constructs.items():
        ratio = timings["ratio"]
        rows.append(
            Row(
                f"{construct} vs plain, {timings['case']} in process",
                f"{timings['with']:.0f} us",
                f"{timings['plain']:.0f} us (plain)",
                f"{ratio:.2f}x",
                f">= {CONSTRUCT_TARGET}x",
                "pays" if ratio >= CONSTRUCT_TARGET else "DOES NOT PAY",
            )
        )
    return rows


# --- 4. The rendered test suite -----------------------------------------------------


def run_suite(project: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user and system, the whole process tree) of one run of
    the rendered project's pytest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "pytest"), "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"the rendered test suite failed:\n{result.stdout[-3000:]}")
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    return wall, cpu


def bench_suite(project: Path, rounds: int) -> list[Row]:
    """The suite as a developer runs it: the second run onwards, with the bytecode
    the first one wrote (PYTHONDONTWRITEBYTECODE, if the caller sets it, would
    make every run compile every module again), on SQLite."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in APP_VARIABLES
        and not key.startswith("FLASK_")
        and key not in {"PYTHONDONTWRITEBYTECODE", "TEST_DATABASE_URL"}
    }
    run_suite(project, env)
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = run_suite(project, env)
        walls.append(wall)
        cpus.append(cpu)
    log(f"test suite: wall {walls}, CPU {cpus}")
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return [
        Row(
            "rendered test suite (pytest, coverage on)",
            f"{wall:.1f} s",
            "",
            "",
            f"<= {SUITE_TARGET:.0f} s",
            verdict(wall <= SUITE_TARGET),
        ),
        Row("rendered test suite, CPU", f"{cpu:.1f} s", ""),
    ]


# --- The table ----------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = Row("measurement", "rendered app", "baseline", "ratio", "target", "")
    cells = [list(vars(row).values()) for row in [header, *rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header.__dict__))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--project", type=Path, required=True, help="rendered, installed"
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder")
    parser.add_argument("--render-rounds", type=int, default=5)
    parser.add_argument("--http-rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--suite-rounds", type=int, default=3)
    args = parser.parse_args()
    project, work = args.project.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    app_module = (
        "app" if answers["layout"] == "single-file" else answers["package_name"]
    )

    load_before = os.getloadavg()[0]
    rows = bench_render(work, args.render_rounds)
    release(project, work)
    rows += bench_http(project, app_module, work, args.http_rounds, args.duration)
    rows += bench_in_process(project, app_module, work, args.http_rounds)
    rows += bench_suite(project, args.suite_rounds)
    print()
    print(f"Rendered project: {answers['layout']} {answers['database']}")
    python = sys.version.split()[0]
    print(
        f"Machine: {os.cpu_count()} cores, Python {python}; load average (1 min) "
        f"{load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after it"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
