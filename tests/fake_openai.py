"""A scripted fake OpenAI-compatible chat endpoint on 127.0.0.1, shared by the tests of the
LLM judge and of the paraphraser. Never any other address."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    """What the fake server does for one request."""

    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: Any) -> Reply:
    """A well-formed chat-completions reply with ``content``."""
    payload = {"id": "x", "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop"}]}
    return Reply(body=json.dumps(payload).encode())


@dataclass
class Seen:
    headers: dict[str, str]
    payload: Any
    method: str = "POST"
    path: str = ""


class FakeServer:
    """A ThreadingHTTPServer whose reply to the n-th request is ``script(n, payload)``.

    Every request is recorded in ``seen`` (headers, JSON payload, method, path), whatever its
    method, so a test can assert what a second server never received.
    """

    def __init__(self) -> None:
        self.script: Callable[[int, Any], Reply] = lambda index, payload: completion("")
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = None
                with owner._lock:
                    index = len(owner.seen)
                    owner.seen.append(Seen(dict(self.headers.items()), payload, self.command,
                                           self.path))
                reply = owner.script(index, payload)
                try:
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            do_GET = do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def redirect(location: str, status: int = 307) -> Reply:
    """A redirect to ``location`` (absolute or relative)."""
    return Reply(status=status, headers={"Location": location})
