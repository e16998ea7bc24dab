"""Serve a rendered project with its Procfile under gunicorn and check it over HTTP.

Run by `nox -s smoke` with the rendered project's interpreter:
`python tests/smoke.py PROJECT`. Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ALLOWED_ORIGIN = "https://app.example"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
IN_FLIGHT = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile(project: Path) -> dict[str, str]:
    lines = (project / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def request(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    payload = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json"} if payload else {}
    all_headers.update(headers or {})
    connection.request(method, path, body=payload, headers=all_headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    parsed = json.loads(data) if data else None
    return response.status, response.headers, parsed


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke: FAILED: {message}")
    print(f"smoke: ok: {message}")


def wait_until_serving(port: int, server: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"smoke: FAILED: gunicorn exited with {server.returncode}")
        try:
            if request(port, "GET", "/health")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("smoke: FAILED: gunicorn did not answer /health in time")


def start_without(
    project: Path, env: dict[str, str], variable: str
) -> subprocess.CompletedProcess:
    """The Procfile's web command, run to its end with `variable` unset."""
    env = {key: value for key, value in env.items() if key != variable}
    return subprocess.run(
        ["bash", "-c", procfile(project)["web"]],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_refuses_without_secret(project: Path, env: dict[str, str]) -> None:
    result = start_without(project, env, "SECRET_KEY")
    errors = result.stderr.strip().splitlines()
    check(result.returncode != 0, "production without SECRET_KEY refuses to start")
    check(
        errors[-1:] and errors[-1].startswith("SECRET_KEY must be set"),
        f"the refusal is one clear line naming SECRET_KEY: {errors[-1:]}",
    )
    check("Traceback" not in result.stderr, "the refusal prints no traceback")


def check_api(port: int) -> None:
    status, headers, body = request(
        port, "GET", "/health", headers={"X-Request-ID": "smoke-1"}
    )
    check(
        status == 200 and body == {"status": "success", "data": {"status": "ok"}},
        "GET /health",
    )
    for name, value in SECURITY_HEADERS.items():
        check(headers[name] == value, f"{name} header")
    check(
        headers["Strict-Transport-Security"].startswith("max-age="),
        "HSTS in production",
    )
    check(headers["X-Request-ID"] == "smoke-1", "X-Request-ID is echoed")

    status, _, body = request(port, "GET", "/ready")
    check(status == 200 and body["data"]["database"] == "ok", "GET /ready")

    status, headers, body = request(port, "POST", "/api/v1/items", {"name": "Smoke"})
    check(status == 201, f"POST /api/v1/items: {status} {body}")
    location = headers["Location"]
    status, _, fetched = request(port, "GET", location)
    check(status == 200 and fetched["data"] == body["data"], f"GET {location}")
    status, _, patched = request(port, "PATCH", location, {"description": "Seen."})
    check(status == 200 and patched["data"]["item"]["description"] == "Seen.", "PATCH")
    status, _, body = request(port, "POST", "/api/v1/items", {"name": "Smoke"})
    check(status == 409 and list(body["data"]) == ["name"], "duplicate name is 409")
    status, _, body = request(port, "POST", "/api/v1/items", {"nme": "typo"})
    check(status == 400 and body["status"] == "fail", "unknown field is 400 fail")
    status, headers, body = request(port, "GET", "/nowhere")
    check(status == 404 and headers["X-Frame-Options"] == "DENY", "404 carries headers")
    status, _, _ = request(port, "DELETE", location)
    check(status == 200, "DELETE")
    check(request(port, "GET", location)[0] == 404, "deleted item is gone")

    preflight = {"Access-Control-Request-Method": "POST", "Origin": ALLOWED_ORIGIN}
    status, headers, _ = request(port, "OPTIONS", "/api/v1/items", headers=preflight)
    check(
        status == 200 and headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN,
        "CORS preflight from an allowed origin",
    )
    preflight["Origin"] = "https://evil.example"
    _, headers, _ = request(port, "OPTIONS", "/api/v1/items", headers=preflight)
    check("Access-Control-Allow-Origin" not in headers, "CORS refuses other origins")


def start_slow_posts(port: int, count: int) -> list[tuple[socket.socket, bytes]]:
    """Open requests whose bodies are only half sent: they are in flight."""
    pending = []
    for number in range(count):
        body = json.dumps({"name": f"In flight {number}"}).encode()
        head = (
            f"POST /api/v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(head + body[:5])
        pending.append((sock, body[5:]))
    return pending


def finish(sock: socket.socket, rest: bytes) -> int:
    sock.sendall(rest)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    sock.close()
    return response.status


def check_graceful_shutdown(port: int, server: subprocess.Popen) -> None:
    pending = start_slow_posts(port, IN_FLIGHT)
    time.sleep(1)  # let the workers accept and start reading the requests
    server.send_signal(signal.SIGTERM)
    time.sleep(1)
    statuses = [finish(sock, rest) for sock, rest in pending]
    check(
        statuses == [201] * IN_FLIGHT,
        f"requests in flight at SIGTERM finish: {statuses}",
    )
    try:
        code = server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        raise SystemExit("smoke: FAILED: gunicorn did not exit after SIGTERM") from None
    check(code == 0, f"gunicorn exits 0 after SIGTERM (got {code})")


def check_every_line_is_json(log: str) -> None:
    """With LOG_FORMAT=json, gunicorn's own lines are JSON like the app's."""
    entries = []
    for line in log.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise SystemExit(
                f"smoke: FAILED: a log line is not JSON: {line!r}"
            ) from None
    check(bool(entries), f"every one of the server's {len(entries)} log lines is JSON")
    messages = [(entry["logger"], entry["message"]) for entry in entries]
    for expected in (
        "Starting gunicorn",
        "Booting worker",
        "Handling signal: term",
        "Shutting down",
    ):
        check(
            any(
                logger == "gunicorn.error" and message.startswith(expected)
                for logger, message in messages
            ),
            f"gunicorn's '{expected}' line is JSON",
        )
    check(
        any(
            entry.get("path") == "/health" and entry["request_id"] == "smoke-1"
            for entry in entries
        ),
        "the app's request lines are JSON, with the request id",
    )
    check(
        all(logger != "gunicorn.access" for logger, _ in messages),
        "gunicorn writes no access line of its own",
    )


def main(project: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "CORS_ORIGINS": ALLOWED_ORIGIN,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(IN_FLIGHT),
        "GRACEFUL_TIMEOUT": "20",
        "LOG_FORMAT": "json",
    }
    check_refuses_without_secret(project, env)
    commands = procfile(project)
    release = subprocess.run(["bash", "-c", commands["release"]], cwd=project, env=env)
    check(release.returncode == 0, f"release: {commands['release']}")
    print(f"smoke: starting web: {commands['web']} on port {port}")
    log = project / "gunicorn.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["bash", "-c", f"exec {commands['web']}"],
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(port, server, time.monotonic() + 60)
        check_api(port)
        check_graceful_shutdown(port, server)
    except BaseException:
        print(f"smoke: the server's log:\n{log.read_text()}", file=sys.stderr)
        raise
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    check_every_line_is_json(log.read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
