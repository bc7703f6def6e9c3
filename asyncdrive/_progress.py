"""Progress of a put or a get, reported to a callback of the caller's: ``progress=``.

The bytes of a transfer are copied in worker threads (an async `Drive`'s disk threads, or
those a `SyncDrive`'s folder put borrows) or in the caller's own thread, as they go; the
callback always runs in the thread of the event loop that awaits the transfer: an async
`Drive`'s, or a `SyncDrive`'s calling thread. Counts from other threads reach it by one
`call_soon_threadsafe` at a time: however fast they come, the callback runs at most once a
turn of the loop, with the latest count.

The callback is called as ``progress(done, total)`` in bytes: with ``(0, total)`` once the
total is known, where it is before the first byte is copied (a folder, a large file), then
as the bytes are copied (each file's end; within a large file, every few MiB), and last
with ``(total, total)`` before the transfer returns. ``done`` never goes back. An exception
it raises stops the transfer, as any error would (nothing half-written stays), and is
raised by the put or get. A put of a file reports its last bytes before it commits them,
so an exception then leaves the file unstored; a folder's files stored before it stay;
a get's last report comes with its file in place.

Example:
    >>> def show(done: int, total: int) -> None:
    ...     print(f"{done}/{total} bytes")  # total is 0 for an empty file
    >>> await drive.put("ckpt", progress=show)
    0/73400320 bytes
    8388608/73400320 bytes
    ...
    73400320/73400320 bytes

"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol


class ProgressCallback(Protocol):
    """What ``put(..., progress=)`` and ``get(..., progress=)`` call: any such function.

    Called as ``progress(done, total)``, in bytes: ``(0, total)`` first, ``(total, total)``
    last; an exception it raises stops the transfer and is raised by it.

    Example:
        >>> def show(done: int, total: int) -> None:
        ...     print(f"{done}/{total} bytes")
        >>> await drive.put("model.pt", progress=show)
        0/73400320 bytes
        ...
        73400320/73400320 bytes

    """

    def __call__(self, done: int, total: int, /) -> object:
        """Report ``done`` of ``total`` bytes copied."""


#: What the copies call with each count of bytes they copy, in any thread.
OnCopied = Callable[[int], None]


class ProgressStopped(Exception):
    """Raised in a copy once the callback has failed: the transfer stops.

    The transfer then raises the callback's own exception instead (see `reporting`).
    """


class ProgressReporter:
    """Counts the bytes one transfer copies and hands them to the callback in the loop.

    Made in the event loop's thread (where the transfer is awaited), which the callback
    then runs in. `add` may be called from any thread.
    """

    def __init__(self, callback: ProgressCallback) -> None:
        self._callback = callback
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._done = 0
        self._total: int | None = None
        self._reported = -1
        self._reported_total: int | None = None
        self._scheduled = False
        self._closed = False
        #: What the callback raised, if it did: every copy stops at its next count. Any
        #: exception, KeyboardInterrupt too: raised from a callback of the loop's, it would
        #: leave the loop with the transfer's task unfinished.
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<ProgressReporter {self._done}/{self._total} bytes>"

    def expect(self, total: int) -> None:
        """Set the transfer's size in bytes and report ``(0, total)`` (in the loop).

        Raises what the callback raised, if it did: the transfer stops before it starts.
        """
        self._total = total
        self._report()
        if self.error is not None:
            raise self.error

    def add(self, count: int) -> None:
        """Count ``count`` more bytes copied; raise `ProgressStopped` if the callback failed."""
        if self.error is not None:
            raise ProgressStopped
        with self._lock:
            self._done += count
            if self._scheduled:
                return
            self._scheduled = True
        if threading.get_ident() == self._loop_thread:  # a copy made in the loop's thread
            self._report()
        else:
            self._loop.call_soon_threadsafe(self._report)
        if self.error is not None:
            raise ProgressStopped

    def complete(self, total: int | None = None) -> None:
        """Report every byte copied (``total``: the size, if not known or not right before).

        The total changes for a file that shrank or grew as it was copied.
        Copies that report nothing (small files) count here: a put calls it before its
        commit, so that a callback that fails on it stops the put. Raises `ProgressStopped`
        if the callback failed (`reporting` raises the callback's own exception instead).
        """
        if total is not None:
            self._total = total
        with self._lock:
            self._done = max(self._done, self._total or 0)
        self._report()
        if self.error is not None:
            raise ProgressStopped

    def finish(self, total: int | None = None) -> None:
        """`complete`, then report nothing more; raise what the callback raised, if it did."""
        with contextlib.suppress(ProgressStopped):
            self.complete(total)
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Report nothing more: a report still scheduled in the loop then does nothing."""
        self._closed = True

    def _report(self) -> None:
        with self._lock:
            self._scheduled = False
            done, total = self._done, self._total
        if self._closed or self.error is not None or total is None:
            return
        done = min(done, total)  # a file that grew since it was measured: up to the total
        if done <= self._reported and total == self._reported_total:
            return
        self._reported, self._reported_total = done, total
        try:
            self._callback(done, total)
        except BaseException as exc:
            self.error = exc


#: `reporting`'s answer without a callback: nothing to set up (reusable, ~0.2 us a use).
_NO_REPORTER: contextlib.nullcontext[None] = contextlib.nullcontext()


def reporting(
    callback: ProgressCallback | None,
) -> contextlib.AbstractContextManager[ProgressReporter | None]:
    """Give a reporter for ``callback`` (None without one); raise the callback's error.

    An error the transfer raises because the callback failed (`ProgressStopped`, or another
    that followed from it) gives way to the callback's own exception.
    """
    return _NO_REPORTER if callback is None else _reporting(callback)


@contextlib.contextmanager
def _reporting(callback: ProgressCallback) -> Iterator[ProgressReporter]:
    reporter = ProgressReporter(callback)
    try:
        yield reporter
    except BaseException as exc:
        if reporter.error is not None and not isinstance(exc, asyncio.CancelledError):
            raise reporter.error from None
        raise
    finally:
        reporter.close()
