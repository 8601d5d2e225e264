"""A real local HTTP server speaking the OpenAI chat-completions API, for tests.

It listens on 127.0.0.1 (random port), answers POST .../chat/completions from a
script of replies, and records every request (path, headers, JSON body). A
reply can be a model answer (content), an HTTP error status, a non-JSON body,
or a slow answer (to trip the client's timeout).

    with ChatServer() as server:
        server.script(Reply.answer('{"task": ...}'), Reply.error(429))
        ... OpenAI(base_url=server.base_url, ...) ...
        server.requests[0].body["model"]
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted reply."""

    status: int = 200
    content: str | None = None  # the model's message content (wrapped in a completion)
    raw: str | None = None  # a raw body instead (e.g. non-JSON)
    delay: float = 0.0  # seconds to wait before answering
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def answer(cls, content: str | dict[str, Any], *, delay: float = 0.0) -> Reply:
        text = content if isinstance(content, str) else json.dumps(content)
        return cls(content=text, delay=delay)

    @classmethod
    def error(cls, status: int, message: str = "scripted error") -> Reply:
        body = json.dumps({"error": {"message": message, "type": "scripted", "code": status}})
        # retry-after-ms keeps the openai client's own retry fast
        return cls(status=status, raw=body, headers={"retry-after-ms": "10"})

    @classmethod
    def slow(cls, delay: float, content: str = "{}") -> Reply:
        return cls(content=content, delay=delay)

    @classmethod
    def non_json_body(cls, body: str = "<html>bad gateway</html>") -> Reply:
        return cls(raw=body, headers={"content-type": "text/html"})


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []


class ChatServer:
    """Scripted chat-completions server on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # lifecycle
    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # scripting
    def script(self, *replies: Reply | str | dict[str, Any]) -> None:
        """Queue replies, served in order (a str/dict is a model answer)."""
        with self._lock:
            for r in replies:
                self._script.append(r if isinstance(r, Reply) else Reply.answer(r))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    def _next(self) -> Reply:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        return Reply.error(500, "chat_server: no scripted reply left")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                data = self.rfile.read(length)
                try:
                    body: Any = json.loads(data)
                except ValueError:
                    body = data.decode("utf-8", "replace")
                with server._lock:
                    server.requests.append(
                        Recorded(
                            "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                reply = server._next()
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw is not None:
                    payload = reply.raw.encode()
                else:
                    payload = json.dumps(_completion(body, reply)).encode()
                try:
                    self.send_response(reply.status)
                    headers = {"content-type": "application/json", **reply.headers}
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
                    pass

        return Handler


def _completion(request: Any, reply: Reply) -> dict[str, Any]:
    model = request.get("model", "test-model") if isinstance(request, dict) else "test-model"
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


#: The API key the `chat` fixture puts in the environment; tests check it never leaks.
KEY = "sk-test-9f8e7d6c5b4a-SECRET"

