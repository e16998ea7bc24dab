"""Bare Flask: the baseline the rendered app is measured against, and its floor.

`create_app()` has the same routes and the same JSON bodies as the rendered API,
served by the same gunicorn configuration, but with nothing in between: no
middleware, no security headers, no request ids, no logging, no validation and no
database.

`create_app(floor=True)` is the least any app can do and still keep SPEC.md's
promises on these routes: what SPEC.md asks of every response (the security headers,
a request id, one access log line through `logging`, which gunicorn.conf.py sets up
as the rendered app's), in a WSGI wrapper as cheap as can be; and the items read and
written through Flask-SQLAlchemy, on the rendered app's model and database, with
nothing else (no schema, ETag, validation or transaction set-up). The rendered app
can come close to it, but not below it. `create_app(floor=True, access_line=False)`
is the floor without its access log line, to show what that line costs alone.
"""

import importlib
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from sqlalchemy import event

# What every response carries (SPEC.md, "Headers on every response"), production.
CONTRACT_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Cache-Control", "no-store"),
    ("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),
]

# The rendered app's item, so both answer with the same body (set by benchmarks/run.py).
SAMPLE_ITEM = {
    "created_at": "2026-01-01T00:00:00.000000+00:00",
    "description": "",
    "id": 1,
    "name": "benchmark item",
    "updated_at": "2026-01-01T00:00:00.000000+00:00",
}


def with_contract(
    wsgi_app: Callable[..., Iterable[bytes]], access_line: bool = True
) -> Callable:
    """The headers and the access log line, in a WSGI wrapper as cheap as can be."""
    logger = logging.getLogger("bare_app.request")

    def contract(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = secrets.token_hex(16)
        statuses = []

        def start(status: str, headers: list, *exc_info: Any) -> Any:
            headers += CONTRACT_HEADERS
            headers.append(("X-Request-ID", request_id))
            statuses.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, *exc_info)

        body = wsgi_app(environ, start)
        if not access_line:
            return body
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        logger.info(
            "%s %s %s %.2fms",
            method,
            path,
            statuses[-1],
            duration_ms,
            extra={
                "method": method,
                "path": path,
                "status": statuses[-1],
                "duration_ms": duration_ms,
            },
        )
        return body

    return contract


def add_routes_without_database(app: Flask) -> None:
    """The item routes answering from memory: the item run.py created, and new ones."""
    item = json.loads(os.environ.get("BARE_APP_ITEM", "null")) or SAMPLE_ITEM
    ids = itertools.count(item["id"] + 1)

    @app.get("/api/v1/items/<int:item_id>")
    def get_item(item_id: int) -> dict:
        return {"status": "success", "data": {"item": {**item, "id": item_id}}}

    @app.post("/api/v1/items")
    def create_item() -> tuple[dict, int, dict[str, str]]:
        body = request.get_json()
        now = datetime.now(UTC).isoformat()
        new = {
            "created_at": now,
            "description": body.get("description", ""),
            "id": next(ids),
            "name": body["name"],
            "updated_at": now,
        }
        location = f"/api/v1/items/{new['id']}"
        return {"status": "success", "data": {"item": new}}, 201, {"Location": location}


def set_sqlite_journal(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def add_routes_through_orm(app: Flask, rendered: Flask) -> None:
    """The item routes on the rendered app's database and model, through
    Flask-SQLAlchemy's `session.get`, `add` and `commit`, and nothing else.

    On SQLite, the journal settings SPEC.md's several workers need (as the rendered
    app sets them): without WAL and `synchronous=NORMAL`, each commit would wait for
    more disk syncs than the app's, and the floor would write slower than the app.
    """
    db = rendered.extensions["sqlalchemy"]
    [model] = [
        mapper.class_
        for mapper in db.Model.registry.mappers
        if mapper.class_.__tablename__ == "items"
    ]
    app.config["SQLALCHEMY_DATABASE_URI"] = rendered.config["SQLALCHEMY_DATABASE_URI"]
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", set_sqlite_journal)

    def fields(item: Any) -> dict[str, Any]:
        values = {column.key: getattr(item, column.key) for column in model.__table__.c}
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in values.items()
        }

    @app.get("/api/v1/items/<int:item_id>")
    def get_item(item_id: int) -> dict:
        item = db.session.get(model, item_id)
        return {"status": "success", "data": {"item": fields(item)}}

    @app.post("/api/v1/items")
    def create_item() -> tuple[dict, int, dict[str, str]]:
        item = model(**request.get_json())
        db.session.add(item)
        db.session.commit()
        location = f"/api/v1/items/{item.id}"
        return (
            {"status": "success", "data": {"item": fields(item)}},
            201,
            {"Location": location},
        )


def create_app(
    floor: bool = False, rendered: Flask | None = None, access_line: bool = True
) -> Flask:
    """Bare Flask, or with `floor` the contract's floor (see the module docstring).

    The floor borrows the rendered app's model and database: `rendered`, or else the
    app of the module named by BARE_APP_MODULE (set by benchmarks/run.py).
    """
    app = Flask(__name__)

    @app.get("/health")
    def health() -> dict:
        return {"status": "success", "data": {"status": "ok"}}

    if not floor:
        add_routes_without_database(app)
        return app
    if rendered is None:
        module = importlib.import_module(os.environ["BARE_APP_MODULE"])
        rendered = module.create_app()
    add_routes_through_orm(app, rendered)
    app.wsgi_app = with_contract(app.wsgi_app, access_line)
    return app
