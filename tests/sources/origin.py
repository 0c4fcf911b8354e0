"""A real HTTP origin on an ephemeral loopback port, for url-source tests.

Written on asyncio streams rather than a web framework so that it can misbehave on purpose (a
Content-Length that lies, a body that stalls), and it counts the connections it accepts: the
SSRF tests prove that a refused fetch never reached it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyvips

Handler = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


def sample_jpeg(width: int = 64, height: int = 48) -> bytes:
    return (
        pyvips.Image.black(width, height, bands=3)
        .add([30, 120, 200])
        .cast("uchar")
        .jpegsave_buffer(Q=90)
    )


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Origin:
    host: str = "127.0.0.1"
    port: int = 0
    accepted: int = 0
    requests: list[Request] = field(default_factory=list)
    routes: dict[str, Handler] = field(default_factory=dict)
    server: asyncio.Server | None = None
    # Set: the origin speaks https with this context's certificate.
    tls: ssl.SSLContext | None = None

    def url(self, path: str = "/", host: str | None = None) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                request = Request(method, target, headers)
                self.requests.append(request)
                handler = self.routes.get(target.split("?", 1)[0], not_found)
                await handler(request, writer)
                await writer.drain()
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()


def respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
) -> None:
    """One response; ``content_length`` overrides (lies about) the body's length."""
    lines = [f"HTTP/1.1 {status} X"]
    all_headers = {"Content-Length": str(len(body) if content_length is None else content_length)}
    all_headers.update(headers or {})
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def static(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        respond(writer, status, body, headers)

    return handle


async def not_found(request: Request, writer: asyncio.StreamWriter) -> None:
    respond(writer, 404, b"not found")


def redirect(location: str, status: int = 302) -> Handler:
    return static(status, b"", {"Location": location})
