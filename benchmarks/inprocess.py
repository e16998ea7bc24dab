"""Per-request cost in process: the rendered app against bare Flask, no network.

Both apps answer the same requests through Flask's test client, so the difference
between them is what the rendered app's middleware, error handling, validation and
database add to each request. Run from the rendered project's folder, with its
production environment (`benchmarks/run.py` sets it up), and send stderr to a file:
the rendered app logs one line per request.

    python inprocess.py APP_MODULE [--requests N] [--rounds N]   # JSON on stdout
    python inprocess.py APP_MODULE --profile "GET /health"       # cProfile report
"""

import argparse
import cProfile
import importlib
import itertools
import json
import pstats
import re
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

BENCHMARKS = Path(__file__).resolve().parent
STDLIB = sysconfig.get_paths()["stdlib"]
CASES = ("GET /health", "GET /api/v1/items/<id>", "POST /api/v1/items")


def request_maker(app: Flask, case: str, item_id: int) -> Callable[[], int]:
    """A function that sends one request of `case` and returns its status."""
    client = app.test_client()
    if case == "GET /health":
        return lambda: client.get("/health").status_code
    if case == "GET /api/v1/items/<id>":
        return lambda: client.get(f"/api/v1/items/{item_id}").status_code
    names = (f"in-process {time.time_ns()} {n}" for n in itertools.count())
    return lambda: client.post("/api/v1/items", json={"name": next(names)}).status_code


def microseconds_per_request(send: Callable[[], int], requests: int) -> float:
    """CPU time per request: unlike wall time, it ignores the other processes that
    share the machine's cores."""
    start = time.process_time()
    for _ in range(requests):
        send()
    return (time.process_time() - start) / requests * 1e6


def load_apps(app_module: str) -> tuple[Flask, Flask, int]:
    """The rendered app (production settings from the environment), bare Flask, and
    the id of an item created through the rendered app."""
    sys.path.insert(0, str(BENCHMARKS))
    bare_app = importlib.import_module("bare_app")
    rendered = importlib.import_module(app_module).create_app()
    created = rendered.test_client().post(
        "/api/v1/items", json={"name": f"in-process item {time.time_ns()}"}
    )
    assert created.status_code == 201, created.json
    return rendered, bare_app.create_app(), created.json["data"]["item"]["id"]


def measure(app_module: str, requests: int, rounds: int) -> dict:
    rendered, bare, item_id = load_apps(app_module)
    results = {}
    for case in CASES:
        senders = {
            "app": request_maker(rendered, case, item_id),
            "bare": request_maker(bare, case, item_id),
        }
        expected = 201 if case.startswith("POST") else 200
        for name, send in senders.items():
            status = send()  # also warms up caches
            assert status == expected, f"{name} {case}: {status}"
        timings: dict[str, list[float]] = {"app": [], "bare": []}
        for round_number in range(rounds):
            order = ["app", "bare"] if round_number % 2 == 0 else ["bare", "app"]
            for name in order:
                timings[name].append(microseconds_per_request(senders[name], requests))
        results[case] = {
            name: statistics.median(values) for name, values in timings.items()
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
    rendered, _, item_id = load_apps(app_module)
    send = request_maker(rendered, case, item_id)
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
