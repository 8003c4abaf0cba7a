"""The listening socket: asyncio turns Nagle off on the connections it accepts."""

from __future__ import annotations

import asyncio
import socket

from server.serving import bind


async def test_accepted_connections_have_nagle_off() -> None:
    """Without TCP_NODELAY a close frame waited for the peer's delayed ACK (43 ms a
    connection); asyncio sets it only on sockets created as IPPROTO_TCP."""
    listener = bind("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    port = listener.getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(accepted, 5) == 1
    writer.close()
    server.close()
    await server.wait_closed()
