"""Per-request cost in process: the rendered app against bare Flask, no network.

The rendered app, bare Flask and bare Flask's floor (what SPEC.md asks of every
response, and the items through Flask-SQLAlchemy: see bare_app.py) answer the same
requests, called as WSGI applications with an environ built once per case (as a
server would hand it over), so the differences between them are what the contract
and the rendered app's own middleware, error handling, validation and database
work add to each request. Flask's test client would add about as much again to
each, and fill any profile with itself.

The rendered app is also measured with each construct that exists only for speed
replaced by the plain Flask idiom (see CONSTRUCTS): a construct stays only while
the plain idiom costs clearly more.

Run from the rendered project's folder, with its production environment
(`benchmarks/run.py` sets it up), and send stderr to a file: the rendered app logs
one line per request.

    python inprocess.py APP_MODULE [--requests N] [--rounds N]   # JSON on stdout
    python inprocess.py APP_MODULE --profile "GET /health"       # cProfile report
"""

import argparse
import cProfile
import importlib
import io
import itertools
import json
import pstats
import re
import runpy
import secrets
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import gunicorn.config
import gunicorn.glogging
from flask import Flask, Response, g, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.test import EnvironBuilder

BENCHMARKS = Path(__file__).resolve().parent
STDLIB = sysconfig.get_paths()["stdlib"]
CASES = ("GET /health", "GET /api/v1/items/<id>", "POST /api/v1/items")
# Sends one request, returns its status.
Sender = Callable[[], int]


def request_maker(app: Flask, case: str, item_id: int) -> Sender:
    """A function that sends one request of `case` to the WSGI app and returns its
    status, having read the whole body as a server would."""
    if case == "POST /api/v1/items":
        path, method = "/api/v1/items", "POST"
    else:
        path, method = case.split()[1].replace("<id>", str(item_id)), "GET"
    environ = EnvironBuilder(
        path=path,
        method=method,
        base_url="http://127.0.0.1:8000",
        headers={"User-Agent": "inprocess.py", "Accept": "*/*"},
        content_type="application/json" if method == "POST" else None,
    ).get_environ()
    names = (f"in-process {time.time_ns()} {n}" for n in itertools.count())
    statuses = []

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        statuses.append(status)

    def send() -> int:
        this = dict(environ)
        if method == "POST":
            body = json.dumps({"name": next(names)}).encode()
            this["CONTENT_LENGTH"] = str(len(body))
            this["wsgi.input"] = io.BytesIO(body)
        answer = app(this, start_response)
        try:
            b"".join(answer)
        finally:
            if hasattr(answer, "close"):
                answer.close()
        return int(statuses.pop().split()[0])

    return send


def microseconds_per_request(send: Sender, requests: int) -> float:
    """CPU time per request: unlike wall time, it ignores the other processes that
    share the machine's cores."""
    start = time.process_time()
    for _ in range(requests):
        send()
    return (time.process_time() - start) / requests * 1e6


# --- Constructs that exist only for speed, and the plain idiom each replaces ---------


def with_flask_sessions(app: Flask, send: Sender) -> Sender:
    """Flask's own cookie sessions instead of SessionOnDemand."""
    app.session_interface = SecureCookieSessionInterface()
    return send


def with_expiring_sessions(app: Flask, send: Sender) -> Sender:
    """Flask-SQLAlchemy's default sessions, which expire what they saved on commit
    (the app shares its session factory with every other app in the process, so it
    is switched around each request)."""
    factory = app.extensions["sqlalchemy"].session.session_factory

    def expiring() -> int:
        factory.configure(expire_on_commit=True)
        try:
            return send()
        finally:
            factory.configure(expire_on_commit=False)

    return expiring


def with_request_hooks(app: Flask, send: Sender) -> Sender:
    """RequestMiddleware's work (request id, security headers, access log line) done
    in Flask's request hooks instead of around the WSGI app."""
    middleware = app.wsgi_app
    assert type(middleware).__name__ == "RequestMiddleware", middleware
    module = sys.modules[type(middleware).__module__]
    app.wsgi_app = middleware.wsgi_app
    headers, logger = dict(middleware.headers), middleware.logger

    def start_request() -> None:
        g.started = time.perf_counter()
        request_id = request.headers.get("X-Request-ID", "")
        if not module.REQUEST_ID.fullmatch(request_id):
            request_id = secrets.token_hex(16)
        g.request_id = request_id
        g.request_id_token = module.current_request_id.set(request_id)

    def finish_request(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy", module.CONTENT_SECURITY_POLICY
        )
        response.headers.update(headers)
        response.headers["X-Request-ID"] = g.request_id
        duration_ms = round((time.perf_counter() - g.started) * 1000, 2)
        method, path, status = request.method, request.path, response.status_code
        logger.info(
            "%s %s %s %.2fms",
            method,
            path,
            status,
            duration_ms,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
            },
        )
        return response

    def end_request(exc: BaseException | None) -> None:
        module.current_request_id.reset(g.request_id_token)

    app.before_request_funcs.setdefault(None, []).insert(0, start_request)
    app.after_request_funcs.setdefault(None, []).append(finish_request)
    app.teardown_request_funcs.setdefault(None, []).append(end_request)
    return send


def with_gunicorn_logger(app: Flask, send: Sender) -> Sender:
    """Gunicorn's own Logger with its access line off by log level, instead of
    gunicorn.conf.py's ServerLogger, whose `access` does nothing: after each
    request, the worker has gunicorn's Logger gather that line's fields, then the
    level drops it. Runs in the project's folder, which has gunicorn.conf.py."""
    settings = runpy.run_path("gunicorn.conf.py")
    logconfig = settings["logconfig_dict"]
    loggers = {**logconfig["loggers"], "gunicorn.access": {"level": "WARNING"}}
    config = gunicorn.config.Config()
    config.set("logconfig_dict", {**logconfig, "loggers": loggers})
    logger = gunicorn.glogging.Logger(config)
    answer = app.test_client().get("/health")
    response = SimpleNamespace(
        status=answer.status, headers=list(answer.headers.items()), sent=answer.data
    )
    headers = {"Host": "127.0.0.1:8000", "User-Agent": "inprocess.py", "Accept": "*/*"}
    client = SimpleNamespace(headers=[(k.upper(), v) for k, v in headers.items()])
    environ = EnvironBuilder(path="/health", headers=headers).get_environ()
    environ.update(RAW_URI="/health", REMOTE_ADDR="127.0.0.1")

    def send_and_log() -> int:
        started = datetime.now()
        status = send()
        logger.access(response, client, environ, datetime.now() - started)
        return status

    return send_and_log


# Each construct, by its name in the rendered app: the request it is measured on,
# and the plain replacement, which takes a fresh app and a sender of that request.
CONSTRUCTS = {
    "SessionOnDemand": ("GET /health", with_flask_sessions),
    "RequestMiddleware": ("GET /health", with_request_hooks),
    "expire_on_commit=False": ("POST /api/v1/items", with_expiring_sessions),
    "ServerLogger": ("GET /health", with_gunicorn_logger),
}


def load_apps(app_module: str) -> tuple[Callable[[], Flask], Flask, Flask, int]:
    """A factory of rendered apps (production settings from the environment), bare
    Flask, its floor (see bare_app.py), and the id of an item created through the
    rendered app."""
    sys.path.insert(0, str(BENCHMARKS))
    bare_app = importlib.import_module("bare_app")
    create_app = importlib.import_module(app_module).create_app
    rendered = create_app()
    created = rendered.test_client().post(
        "/api/v1/items", json={"name": f"in-process item {time.time_ns()}"}
    )
    assert created.status_code == 201, created.json
    item_id = created.json["data"]["item"]["id"]
    floor = bare_app.create_app(floor=True, rendered=rendered)
    return create_app, bare_app.create_app(), floor, item_id


def timings(
    senders: dict[str, Sender], requests: int, rounds: int
) -> dict[str, list[float]]:
    """CPU microseconds per request of each sender, round by round; the order turns
    every round, so that no sender always runs first."""
    times: dict[str, list[float]] = {name: [] for name in senders}
    for round_number in range(rounds):
        names = list(senders)
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(microseconds_per_request(senders[name], requests))
    return times


def measure(app_module: str, requests: int, rounds: int) -> dict:
    create_app, bare, floor, item_id = load_apps(app_module)
    rendered = create_app()
    results = {}
    for case in CASES:
        senders = {
            "app": request_maker(rendered, case, item_id),
            "bare": request_maker(bare, case, item_id),
            "floor": request_maker(floor, case, item_id),
        }
        expected = 201 if case.startswith("POST") else 200
        for name, send in senders.items():
            status = send()  # also warms up caches
            assert status == expected, f"{name} {case}: {status}"
        times = timings(senders, requests, rounds)
        results[case] = {name: statistics.median(t) for name, t in times.items()}
    results["constructs"] = {}
    for construct, (case, replace) in CONSTRUCTS.items():
        plain = create_app()
        senders = {
            "with": request_maker(rendered, case, item_id),
            "plain": replace(plain, request_maker(plain, case, item_id)),
        }
        expected = 201 if case.startswith("POST") else 200
        for name, send in senders.items():
            assert send() == expected, f"{construct}, {name}"
        # Many short rounds, compared pair by pair: the machine's load changes
        # less within a round than over the whole run.
        times = timings(senders, max(requests // 4, 1), rounds * 4)
        ratios = [plain / with_ for with_, plain in zip(*times.values(), strict=True)]
        results["constructs"][construct] = {
            "case": case,
            "ratio": statistics.median(ratios),
            **{name: statistics.median(t) for name, t in times.items()},
        }
    return results


def owner(filename: str, function: str, app_module: str) -> str:
    """The package a profiled function belongs to, for the by-package summary."""
    if filename == "~":  # implemented in C: "<method 'x' of 'sqlite3.Cursor' objects>"
        module = re.search(r"(?:of '|built-in method )_?(\w+)", function)
        return f"{module.group(1) if module else 'builtins'} (C)"
    if filename.startswith("<frozen"):
        return "standard library"
    if filename.startswith("<"):  # generated code: "<sqlalchemy generated ...>"
        return filename[1:].split()[0].rstrip(">")
    path = Path(filename)
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1].removesuffix(".py")
    if filename.startswith(STDLIB):
        return "standard library"
    if app_module in path.parts or path.stem == app_module:
        return f"{app_module} (the rendered app)"
    return path.name


def profile(app_module: str, case: str, requests: int) -> None:
    """Where the rendered app's time goes for one case: by package, then by function."""
    create_app, _, _, item_id = load_apps(app_module)
    send = request_maker(create_app(), case, item_id)
    send()
    profiler = cProfile.Profile()
    profiler.runcall(microseconds_per_request, send, requests)
    report = pstats.Stats(profiler, stream=sys.stdout)
    by_owner: dict[str, float] = {}
    for (filename, _, function), (_, _, own_time, _, _) in report.stats.items():
        name = owner(filename, function, app_module)
        by_owner[name] = by_owner.get(name, 0.0) + own_time
    total = sum(by_owner.values())
    print(f"{case}: own time by package, {requests} requests under cProfile")
    for name, seconds in sorted(by_owner.items(), key=lambda pair: -pair[1]):
        print(f"{seconds / total:6.1%}  {seconds / requests * 1e6:7.1f} us  {name}")
    report.strip_dirs().sort_stats("tottime").print_stats(25)
    report.sort_stats("cumulative").print_stats(50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app_module", help="module with create_app (app or a package)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=CASES, help="profile one case instead")
    args = parser.parse_args()
    sys.path.insert(0, str(Path.cwd()))
    if args.profile:
        profile(args.app_module, args.profile, args.requests)
    else:
        print(json.dumps(measure(args.app_module, args.requests, args.rounds)))


if __name__ == "__main__":
    main()
