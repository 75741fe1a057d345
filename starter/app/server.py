"""Starter web app: a health endpoint and a greeting naming the commit it was built from.

Standard library only, so the image needs no package installs. It writes nothing to disk
(the container's root filesystem is read-only) and logs one line per request to stdout.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

APP_NAME = "starter-app"
HEALTH_PATH = "/healthz"
DEFAULT_PORT = 8080


class StarterServer(ThreadingHTTPServer):
    """The HTTP server, holding the greeting that ``GET /`` answers with."""

    # Request threads must not keep a stopping pod alive.
    daemon_threads = True

    def __init__(self, address: tuple[str, int], greeting: str) -> None:
        super().__init__(address, StarterHandler)
        self.greeting = greeting


class StarterHandler(BaseHTTPRequestHandler):
    """Answers ``/healthz`` and ``/``; every other path is 404."""

    # No Python version in the Server header.
    server_version = APP_NAME
    sys_version = ""

    def do_GET(self) -> None:
        """Serve the health check, the greeting, or 404."""
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        """Same status and headers as GET, without the body."""
        self._respond(with_body=False)

    def _respond(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            status, text = HTTPStatus.OK, "ok\n"
        elif path == "/":
            server = self.server
            status, text = HTTPStatus.OK, server.greeting if isinstance(server, StarterServer) else greeting("unknown")
        else:
            status, text = HTTPStatus.NOT_FOUND, "not found\n"
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stdout, where the cluster collects container logs."""
        sys.stdout.write(f"{self.address_string()} [{self.log_date_time_string()}] {format % args}\n")
        sys.stdout.flush()


def greeting(commit: str) -> str:
    """The text ``GET /`` answers with."""
    return f"Hello from {APP_NAME}, built from commit {commit}\n"


def main() -> int:
    """Serve on ``0.0.0.0:$PORT`` until SIGTERM or SIGINT, then return 0."""
    port = int(os.environ.get("PORT", str(DEFAULT_PORT)))
    commit = os.environ.get("COMMIT_HASH") or "unknown"
    # All interfaces: the pod's IP is where the Service and the kubelet's probes connect.
    server = StarterServer(("0.0.0.0", port), greeting(commit))  # noqa: S104

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this same thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    # Kubernetes stops a pod with SIGTERM; stop accepting and exit 0 rather than be killed.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{APP_NAME} (commit {commit}) listening on 0.0.0.0:{port}", flush=True)
    with server:
        server.serve_forever()
    print(f"{APP_NAME} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
