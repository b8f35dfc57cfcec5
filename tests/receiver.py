"""A real webhook receiver for tests: a threaded ``http.server`` on 127.0.0.1 that records every
request and answers from a script of status codes (``"hang"``: never answer until stopped)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """``with Receiver([500, 500]) as rx:`` answers 500 twice, then 200; ``rx.url``."""

    def __init__(self, script: list[int | str] | None = None, default: int | str = 200) -> None:
        self.script = list(script or [])
        self.default = default
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.time())
                    )
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                if answer == "hang":
                    receiver.stopping.wait(120)
                    return
                self.send_response(int(answer))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r.body for r in self.received]

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)
