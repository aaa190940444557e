"""The runtime-API client against a plain unix socket: a full accept queue is waited out, not an error."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from mesh.engine.haproxy_api import RuntimeAPI


def fill_accept_queue(path: Path) -> list[socket.socket]:
    """Connections that fill the socket's accept queue (nobody accepts them), until a connect would be refused."""
    fillers = []
    while len(fillers) < 1000:
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)
        try:
            client.connect(str(path))
        except BlockingIOError:
            client.close()
            return fillers
        fillers.append(client)
    raise AssertionError("the accept queue never filled")


async def test_a_full_accept_queue_is_waited_out(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(0)
    server.setblocking(False)
    fillers = fill_accept_queue(path)
    loop = asyncio.get_running_loop()
    call = asyncio.create_task(RuntimeAPI(path).run("show info"))
    await asyncio.sleep(0)  # the call's first connect has been refused (EAGAIN) by now
    assert not call.done(), call.exception() if call.done() else None
    try:
        async with asyncio.timeout(10):  # a call that gave up on a broken connection is never accepted
            for _ in fillers:  # the queue drains: the call's connection is next
                accepted, _address = await loop.sock_accept(server)
                accepted.close()
            connection, _address = await loop.sock_accept(server)
        connection.setblocking(False)
        with connection:
            assert await loop.sock_recv(connection, 100) == b"show info\n"
            await loop.sock_sendall(connection, b"Name: HAProxy\n")
        assert await call == "Name: HAProxy\n"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_a_socket_nobody_listens_on_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))  # the file exists; nothing listens
        with pytest.raises(ConnectionRefusedError):
            await RuntimeAPI(path).run("show info")
