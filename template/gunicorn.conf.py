"""Gunicorn settings, read from the environment the platform provides."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

# Build the app once in the master: a configuration error stops the server with
# one clear line instead of every worker failing to boot, and workers share memory.
preload_app = True

# On SIGTERM, workers finish the requests they are serving, then exit. The grace
# period stays under the platform's kill deadline (Heroku and Kubernetes: 30 s).
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "25"))
timeout = 30

# No runtime control socket: nothing on the host can reconfigure the server.
control_socket_disable = True

# Workers touch a heartbeat file on every request; keep it in memory, not on a disk
# or a container's overlay filesystem, where that write can stall a worker.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# The app writes one log line per request itself, with the request id.
accesslog = None
errorlog = "-"
