"""Work that must finish once begun, whatever cancels the task waiting for it.

A put between its install and its commit, a delete between the index and the disk, a
lock that may have been taken: cut short, they leave the disk and the index disagreeing,
or a path locked until its lease ends. ``anyio.CancelScope(shield=True)`` guards against
anyio's cancel scopes only; asyncio's own cancellation (``task.cancel()``, as
``asyncio.timeout`` and task groups use) still reaches into it. `to_its_end` guards
against both.

Example:
    >>> info = await to_its_end(install_and_commit())

"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio

from ._threads import stop_request

T = TypeVar("T")

logger = logging.getLogger("asyncdrive")


async def to_its_end(
    work: Coroutine[Any, Any, T], undo: Callable[[T], Awaitable[object]] | None = None
) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; return its result.

    In a task of its own, which no cancel scope of the caller reaches and no
    ``task.cancel()`` of asyncio's (``asyncio.timeout``, a task group) interrupts, where
    ``anyio.CancelScope(shield=True)`` stops only anyio's. A cancelled caller waits for the
    work, then is cancelled: its error is dropped, and its result too, after ``undo(result)``
    (to its end as well) where the result holds what the caller would have had to finish
    or release (an open file, a file installed but not committed). Its disk steps see no
    stop request (`_threads.stop_request`): a large copy in it runs to its end too.
    """
    # In a context of its own with no stop request (a SyncDrive call's, requested by Ctrl-C):
    # its disk steps are to run to their end too.
    context = contextvars.copy_context()
    context.run(stop_request.set, None)
    task = asyncio.get_running_loop().create_task(work, context=context)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):  # not cancelled again at every turn of the loop
            while not task.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(task)
            if not task.cancelled() and task.exception() is None and undo is not None:
                try:
                    await to_its_end(_awaited(undo(task.result())))
                except Exception:  # the caller is cancelled all the same: say what is left
                    logger.warning("undoing %r after a cancellation failed", work, exc_info=True)
        raise


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
