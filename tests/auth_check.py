"""Serve a rendered project with `auth` under gunicorn and check its credentials.

Run by `nox -s auth` with the rendered project's interpreter:
`python tests/auth_check.py PROJECT`; the project's answers file says which `auth` it
has. Production settings, the Procfile's commands, traffic on 127.0.0.1 only.

- jwt: an OIDC-style provider on 127.0.0.1 publishes the public half of an RSA key
  (a JWKS); a token it signed writes, and every bad token gets a 401.
- api-key: a key made by `create-api-key` writes, is refused once `revoke-api-key`
  ran, and never appears in the database file.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from smoke import free_port, procfile, request, start_without, wait_until_serving

AUDIENCE = "https://api.example"
ISSUER = "https://id.example/"
KID = "provider-key-1"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"auth: FAILED: {message}")
    print(f"auth: ok: {message}")


def run(project: Path, env: dict[str, str], *command: str) -> str:
    """A `flask` command as a platform runs one: past .flaskenv, on the app."""
    result = subprocess.run(
        ["flask", "--app", answers(project)["app_module"], *command],
        cwd=project,
        env={**env, "FLASK_SKIP_DOTENV": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise SystemExit(f"auth: FAILED: flask {' '.join(command)}: {result.stderr}")
    return result.stdout


def release(project: Path, env: dict[str, str]) -> None:
    """The Procfile's release command: `flask db upgrade`."""
    release = procfile(project)["release"]
    subprocess.run(["bash", "-c", release], cwd=project, env=env, check=True)


def answers(project: Path) -> dict[str, str]:
    """The answers the project was rendered with (flat `key: value` lines)."""
    lines = (project / ".copier-answers.yml").read_text().splitlines()
    found = dict(line.split(": ", 1) for line in lines if ": " in line)
    module = "app" if found["layout"] == "single-file" else found["package_name"]
    return {**found, "app_module": module}


class Server:
    """The Procfile's web command, serving in the background; its log in a file."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = project / "auth-check.log"
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {procfile(project)['web']}"],
                cwd=project,
                env={**env, "HOST": "127.0.0.1", "PORT": str(self.port)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_until_serving(self.port, self.process, time.monotonic() + 30)

    def write(self, authorization: str | None) -> tuple[int, dict, dict]:
        headers = {"Authorization": authorization} if authorization else {}
        body = {"name": f"Item {uuid.uuid4()}"}
        status, response_headers, data = request(
            self.port, "POST", "/api/v1/items", body, headers
        )
        return status, response_headers, data

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=60)
        check(self.process.returncode == 0, "gunicorn stops cleanly on SIGTERM")
        return self.log.read_text()


def production(project: Path, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_hex(32),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",
        "WEB_CONCURRENCY": "2",
        "DATABASE_URL": f"sqlite:///{project / 'auth-check.sqlite3'}",
        **settings,
    }


def check_refuses_without_audience(project: Path, env: dict[str, str]) -> None:
    result = start_without(project, env, "JWT_AUDIENCE")
    last = result.stderr.strip().splitlines()[-1:]
    check(
        result.returncode != 0 and last == ["JWT_AUDIENCE must be set in production."],
        f"production without JWT_AUDIENCE refuses to start, in one line: {last}",
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def check_jwt(project: Path) -> None:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    key_set = json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})
    fetches = []

    class JWKSHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            body = key_set.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    def token(private_key=key, kid=KID, algorithm="RS256", **changes) -> str:
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(time.time()) + 300,
            "sub": "client-1",
            **changes,
        }
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, private_key, algorithm, headers={"kid": kid})

    def by_hand(header: dict, sign) -> str:
        payload = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300}
        signing_input = ".".join(
            b64(json.dumps(part).encode()) for part in (header, payload)
        )
        return f"{signing_input}.{b64(sign(signing_input.encode()))}"

    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good = token()
    bad = {
        "missing": None,
        "wrong scheme": f"Basic {b64(b'client:secret')}",
        "malformed": "Bearer not.a.jwt",
        "expired": f"Bearer {token(exp=int(time.time()) - 3600)}",
        "without exp": f"Bearer {token(exp=None)}",
        "wrong audience": f"Bearer {token(aud='https://other.example')}",
        "wrong issuer": f"Bearer {token(iss='https://impostor.example/')}",
        "unknown key": f"Bearer {token(kid='not-published')}",
        "signed by another key": f"Bearer {token(private_key=stranger)}",
        "alg none": "Bearer " + by_hand({"alg": "none", "kid": KID}, lambda _: b""),
        "HS256 with the public key": "Bearer "
        + by_hand(
            {"alg": "HS256", "kid": KID},
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
    }

    with ThreadingHTTPServer(("127.0.0.1", 0), JWKSHandler) as provider:
        threading.Thread(target=provider.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{provider.server_port}/.well-known/jwks.json"
        env = production(
            project, JWT_JWKS_URL=url, JWT_ISSUER=ISSUER, JWT_AUDIENCE=AUDIENCE
        )
        release(project, env)
        check_refuses_without_audience(project, env)
        server = Server(project, env)
        try:
            for _ in range(4):  # two workers: each may fetch the key set once
                status, _, body = server.write(f"Bearer {good}")
                check(status == 201, f"a token the provider signed writes: {body}")
            for name, authorization in bad.items():
                status, headers, body = server.write(authorization)
                challenge = headers.get("WWW-Authenticate", "")
                check(
                    status == 401 and challenge.startswith("Bearer"),
                    f"{name}: 401, {challenge}",
                )
        finally:
            log = server.stop()
            provider.shutdown()
    check(1 <= len(fetches) <= 2, f"the key set was fetched once per worker: {fetches}")
    sent = [good, *(value.split(" ", 1)[1] for value in bad.values() if value)]
    check(not [value for value in sent if value in log], "no token in the server's log")


def check_api_key(project: Path) -> None:
    slug = answers(project)["project_slug"]
    env = production(project)
    database = project / "auth-check.sqlite3"
    database.unlink(missing_ok=True)
    release(project, env)
    key = run(project, env, slug, "create-api-key", "auth check").strip()
    check(len(key) == 43, "create-api-key prints a new key")
    server = Server(project, env)
    try:
        status, _, body = server.write(f"Bearer {key}")
        check(status == 201, f"the key writes: {body}")
        status, headers, _ = server.write(None)
        check(status == 401, "no key: 401")
        run(project, env, slug, "revoke-api-key", "auth check")
        status, headers, _ = server.write(f"Bearer {key}")
        check(
            status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"],
            "the revoked key: 401 invalid_token",
        )
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        stored = b"".join(
            path.read_bytes() for path in project.glob("auth-check.sqlite3*")
        )
        check(key.encode() not in stored, "the key is nowhere in the database files")
    finally:
        log = server.stop()
    check(key not in log and key_hash not in log, "no key in the server's log")


def main() -> None:
    project = Path(sys.argv[1]).resolve()
    auth = answers(project)["auth"]
    {"jwt": check_jwt, "api-key": check_api_key}[auth](project)
    print(f"auth: {auth} checked")


if __name__ == "__main__":
    main()
