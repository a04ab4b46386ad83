"""A minimal keep-alive HTTP/1.1 client for the hot path (POST /prompt, GET /view to ComfyUI).

httpx costs about a millisecond of CPU per request here (its pool checks every idle
connection's socket on each request); this sends one pre-serialised JSON body over a
pooled asyncio stream and reads a Content-Length (or chunked) answer. Everything else
goes through httpx.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

# aiohttp (ComfyUI's server) drops idle keep-alive connections after 75 s; stay well below.
IDLE_LIMIT_S = 15.0


class FastPostError(ConnectionError):
    """The request could not be sent or no answer came back."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class FastPoster:
    """POST JSON bytes to one origin over a small pool of persistent connections."""

    def __init__(self, base_url: str, timeout: float = 30.0, pool: int = 16) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("fast path only for plain http")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc
        self.timeout = timeout
        self.pool_size = pool
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 3.0)
        return _Conn(reader, writer)

    def _take(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used < IDLE_LIMIT_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of POST path; FastPostError when the server cannot be reached."""
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        return await self._exchange(head + body)

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of GET path (path already URL-encoded, query included)."""
        return await self._exchange(
            f"GET {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n\r\n".encode()
        )

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request over a pooled connection (a fresh one when a reused one was stale)."""
        for attempt in (1, 2):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                try:
                    conn = await self._connect()
                except (OSError, asyncio.TimeoutError) as exc:
                    raise FastPostError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
            try:
                conn.writer.write(request)
                status, payload, keep = await asyncio.wait_for(self._read(conn.reader), self.timeout)
            except _StaleConnection:
                conn.close()
                # A reused connection the server had already closed: nothing was processed.
                if reused and attempt == 1:
                    continue
                raise FastPostError("connection closed before an answer") from None
            except (ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 1:
                    continue
                raise FastPostError(f"{type(exc).__name__}: {exc}") from exc
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                raise FastPostError(f"{type(exc).__name__}: {exc}") from exc
            if keep and len(self._idle) < self.pool_size:
                conn.used = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()
            return status, payload
        raise FastPostError("no answer")

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        line = await reader.readline()
        if not line:
            raise _StaleConnection()
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        length = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection":
                keep = value.lower() == b"keep-alive" or (keep and value.lower() != b"close")
        if chunked:
            out = bytearray()
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readline()
                    break
                out += await reader.readexactly(size)
                await reader.readline()
            return status, bytes(out), keep
        if length is None:
            return status, await reader.read(), False
        return status, await reader.readexactly(length), keep

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class _StaleConnection(Exception):
    pass
