"""Steady writes and reads through a load balancer until stopped; every answer counts.

Run by `nox -s cluster` while it restarts the nodes behind the balancer:
`python tests/cluster_load.py URL REPORT`; it runs until SIGTERM (MAX_SECONDS at
most), then writes its report. Each client thread keeps one HTTP/1.1 connection open
(keep-alive, as a real client would) and repeats: POST an item with a name no other
request uses, GET that item back (round robin: often from the other node), GET
a page of the list. A request fails when it answers anything but 2xx, answers a read
with another item, or breaks off (the client then reconnects). The report (JSON)
holds the counts, the failures, the latencies, and the id of every write the API
acknowledged with a 201.
"""

import http.client
import json
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

CLIENTS = 4
MAX_SECONDS = 120
TIMEOUT_SECONDS = 10
FAILURES_KEPT = 20


class Client(threading.Thread):
    def __init__(self, address: tuple[str, int], stop: threading.Event) -> None:
        super().__init__()
        self.address, self.stop = address, stop
        self.connection = self.connect()
        self.requests = 0
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.acknowledged: list[int] = []

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*self.address, timeout=TIMEOUT_SECONDS)

    def send(self, method: str, path: str, body: dict | None = None) -> dict | None:
        """The answer's JSON body when it is a 2xx; None after recording a failure,
        with the time and the client's port to find it in the balancer's log."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        self.requests += 1
        started = time.monotonic()
        failure = f"{time.strftime('%H:%M:%S')} {method} {path}"
        try:
            if self.connection.sock is None:
                self.connection.connect()
            failure += f" from port {self.connection.sock.getsockname()[1]}"
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.connection.close()
            self.connection = self.connect()
            self.failures.append(f"{failure}: {error!r}")
            return None
        finally:
            self.latencies.append(time.monotonic() - started)
        if not 200 <= response.status < 300:
            self.failures.append(f"{failure}: {response.status} {data[:200]!r}")
            return None
        return json.loads(data)

    def run(self) -> None:
        while not self.stop.is_set():
            name = f"cluster {uuid.uuid4()}"
            created = self.send("POST", "/api/v1/items", {"name": name})
            if created is None:
                continue
            item_id = created["data"]["item"]["id"]
            self.acknowledged.append(item_id)
            read = self.send("GET", f"/api/v1/items/{item_id}")
            if read is not None and read["data"]["item"]["name"] != name:
                self.failures.append(f"GET /api/v1/items/{item_id}: {read}")
            self.send("GET", "/api/v1/items?per_page=5")
        self.connection.close()


def main(url: str, report: Path) -> None:
    parts = urlsplit(url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    clients = [Client((parts.hostname, parts.port), stop) for _ in range(CLIENTS)]
    started = time.monotonic()
    for client in clients:
        client.start()
    stop.wait(MAX_SECONDS)
    stop.set()
    for client in clients:
        client.join()
    seconds = time.monotonic() - started
    latencies = sorted(latency for client in clients for latency in client.latencies)
    centiles = statistics.quantiles(latencies, n=100)
    failures = [failure for client in clients for failure in client.failures]
    summary = {
        "seconds": round(seconds, 1),
        "clients": CLIENTS,
        "requests": sum(client.requests for client in clients),
        "failures": len(failures),
        "failures_first": failures[:FAILURES_KEPT],
        "p50_ms": round(centiles[49] * 1000, 1),
        "p99_ms": round(centiles[98] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "acknowledged": [item for client in clients for item in client.acknowledged],
    }
    report.write_text(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
