"""A small HTTP endpoint served from a daemon thread: the operator's /metrics and the
outbox relay's probes and metrics. What to answer is the caller's; this only serves it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (status code, body, content type) for a request path (without its query string).
Answer = tuple[int, bytes, str]


def serve(answer: Callable[[str], Answer], address: str, port: int,
          thread_name: str) -> ThreadingHTTPServer:
    """Start answering GETs in a daemon thread; returns the server (its port if 0)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body, content_type = answer(self.path.split("?", 1)[0])
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # a line per probe or scrape would drown the process's own log

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=thread_name, daemon=True).start()
    return server
