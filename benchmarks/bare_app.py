"""Bare Flask: the baseline the rendered app is measured against.

The same routes and the same JSON bodies as the rendered API, served by the same
gunicorn configuration, but with nothing in between: no middleware, no security
headers, no request ids, no logging, no validation and no database.
"""

import itertools
import json
import os
from datetime import UTC, datetime

from flask import Flask, request

# The rendered app's item, so both answer with the same body (set by benchmarks/run.py).
SAMPLE_ITEM = {
    "created_at": "2026-01-01T00:00:00.000000+00:00",
    "description": "",
    "id": 1,
    "name": "benchmark item",
    "updated_at": "2026-01-01T00:00:00.000000+00:00",
}


def create_app() -> Flask:
    app = Flask(__name__)
    item = json.loads(os.environ.get("BARE_APP_ITEM", "null")) or SAMPLE_ITEM
    ids = itertools.count(item["id"] + 1)

    @app.get("/health")
    def health() -> dict:
        return {"status": "success", "data": {"status": "ok"}}

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

    return app
