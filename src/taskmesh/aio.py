"""
``taskmesh.aio``: the asyncio client (see ``taskmesh.client.asyncio_client``).

    client = await taskmesh.aio.connect("localhost:9001")
    print(await client.submit(add, 2, 3))

Native asyncio: importing or using it never imports Twisted's reactor.
"""

from taskmesh.client.asyncio_client import AsyncClient, TaskFuture, connect

__all__ = ["AsyncClient", "TaskFuture", "connect"]
