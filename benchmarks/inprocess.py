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
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask

BENCHMARKS = Path(__file__).resolve().parent
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
    start = time.perf_counter()
    for _ in range(requests):
        send()
    return (time.perf_counter() - start) / requests * 1e6


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


def profile(app_module: str, case: str, requests: int) -> None:
    rendered, _, item_id = load_apps(app_module)
    send = request_maker(rendered, case, item_id)
    send()
    profiler = cProfile.Profile()
    profiler.runcall(microseconds_per_request, send, requests)
    report = pstats.Stats(profiler, stream=sys.stdout)
    report.strip_dirs().sort_stats("tottime").print_stats(30)
    report.sort_stats("cumulative").print_stats(40)


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
