"""asyncio waits on a descriptor, for the components that offer ``async`` reads.

Imported only by the async paths: asyncio is already loaded by whoever runs the loop, and
``import mmapkit`` must not load it for everyone else.
"""

from __future__ import annotations

import asyncio

__all__ = ["readable"]


async def readable(fd: int, timeout: float) -> None:
    """Return once ``fd`` is readable or ``timeout`` seconds have passed (whichever comes
    first; which one is for the caller to look at).  The loop keeps running meanwhile:
    a reader callback on ``fd``, never a thread."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def ring() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, ring)
    try:
        await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
