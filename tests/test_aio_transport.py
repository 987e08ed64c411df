"""
The asyncio client's own transport, against real loopback sockets served by
a bare asyncio server (no scheduler needed for what is tested here): a frame
that starts must finish within ``frame_timeout``, and the endpoint strings
it takes (``tcp:``, ``unix:``) reach the server.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

import taskmesh.aio
from taskmesh.errors import SchedulerGone

BOUND = 20.0


async def trickling_server(started: asyncio.Event, unix: Path | None = None) -> asyncio.Server:
    """Takes the client's hello, then starts a 100-byte frame and never finishes it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        await reader.readexactly(length)  # the hello
        writer.write(struct.pack(">I", 100) + b"x" * 10)
        await writer.drain()
        started.set()
        await reader.read()  # until the client closes

    if unix is not None:
        return await asyncio.start_unix_server(serve, str(unix))
    return await asyncio.start_server(serve, "127.0.0.1", 0)


def connect_to_trickler(address_of: object, unix: Path | None = None) -> str:
    async def main() -> str:
        started = asyncio.Event()
        server = await trickling_server(started, unix)
        port = server.sockets[0].getsockname()[1] if unix is None else 0
        address = address_of(port) if callable(address_of) else str(address_of)
        try:
            async with asyncio.timeout(BOUND):
                with pytest.raises(SchedulerGone) as caught:
                    await taskmesh.aio.connect(address, timeout=BOUND, frame_timeout=0.2, secret=b"s" * 32)
            assert started.is_set()
            return str(caught.value)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def test_a_frame_that_starts_must_finish_within_the_frame_timeout() -> None:
    reason = connect_to_trickler(lambda port: f"127.0.0.1:{port}")
    assert "a frame took longer than 0.2 s to arrive (14 bytes of it came)" in reason


def test_tcp_endpoint_strings_reach_the_scheduler() -> None:
    reason = connect_to_trickler(lambda port: f"tcp:host=127.0.0.1:port={port}")
    assert "a frame took longer" in reason
    reason = connect_to_trickler(lambda port: f"tcp:127.0.0.1:{port}:timeout=5")
    assert "a frame took longer" in reason


def test_unix_endpoint_strings_reach_the_scheduler(tmp_path: Path) -> None:
    socket_path = tmp_path / "s.sock"
    reason = connect_to_trickler(f"unix:path={socket_path}", unix=socket_path)
    assert "a frame took longer" in reason


def test_the_frame_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="frame_timeout"):
        asyncio.run(taskmesh.aio.connect("127.0.0.1:1", frame_timeout=0, secret=b"s" * 32))
