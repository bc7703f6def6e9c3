"""One background event-loop thread per process, shared by every `SyncDrive`.

The thread runs an anyio `BlockingPortal`. It starts with the first SyncDrive that needs it,
stops when the last one is closed or at interpreter exit, and is forgotten in a forked child
(where the parent's thread does not exist), so the child starts its own.

`run`, the path of the blocking calls that need the loop thread (watches, open files),
hands the coroutine straight to the loop with `loop.call_soon_threadsafe`: one wake-up of
the loop thread and one of the caller.
`BlockingPortal.start_task_soon` first waits for the loop to spawn the task into the portal's
task group (a second round trip between the threads), which cost more than a whole small
operation (``bench/sync_overhead.py`` measures it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._exceptions import DriveClosedError

T = TypeVar("T")

THREAD_NAME = "asyncdrive-loop"


class _Portal(BlockingPortal):
    """A `BlockingPortal` that knows its asyncio loop, for `run`'s one-hop path."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()


class _LoopThread:
    """The process's loop thread and how many users hold it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.thread: threading.Thread | None = None
        # Set before the thread starts, so that a start interrupted by Ctrl-C is found (and
        # reused or stopped) by the next call instead of leaving an orphaned thread.
        self.ready: _Starting | None = None
        self.closers: dict[int, Callable[[], Coroutine[Any, Any, None]]] = {}

    def portal(self) -> BlockingPortal | None:
        """Return the running portal, waiting for one that is starting; None if none is."""
        return self.ready.result() if self.ready is not None else None


class _Starting:
    """The loop thread's portal once it is up, or why it could not start.

    Not a `concurrent.futures.Future`, whose condition a Ctrl-C landing inside it could
    leave held for ever (see `run`): the loop thread releases a plain lock once, which the
    first waiter takes (in `_wait`) and keeps; after that, `done` answers.
    """

    def __init__(self) -> None:
        self.portal: BlockingPortal | None = None
        self.error: BaseException | None = None
        self._ready = threading.Lock()
        self._ready.acquire()

    def set(self, portal: BlockingPortal | None = None, error: BaseException | None = None) -> None:
        """On the loop thread: report the portal, or the error that stopped the start."""
        self.portal, self.error = portal, error
        self._ready.release()

    def done(self) -> bool:
        return self.portal is not None or self.error is not None

    def result(self) -> BlockingPortal:
        # The callers wait one at a time (under _LoopThread.lock), so at most one takes the
        # lock; once it is taken, the portal or the error is set.
        if not self.done():
            _wait(self._ready)
        if self.error is not None:
            raise self.error
        assert self.portal is not None
        return self.portal


_state = _LoopThread()
_atexit_registered = False


#: Set once the interpreter exits: the watches the loop thread's drives close then end
#: their iteration, as at their own close, rather than raise in their daemon threads.
exiting = False


def _after_fork_in_child() -> None:
    global _state, exiting
    # The loop thread was not copied into the child; its locks may be held forever.
    _state = _LoopThread()
    exiting = False  # (a child forked at exit runs on)


os.register_at_fork(after_in_child=_after_fork_in_child)


#: The event loops that blocking calls run in their caller's thread (a `SyncDrive`'s), for
#: `check_not_in_event_loop`'s message.
BLOCKING_CALL_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def check_not_in_blocking_call(what: str) -> None:
    """Raise RuntimeError if this thread is inside a blocking call (in its progress callback).

    ``what`` names the call, e.g. ``"SyncDrive.close"``.
    """
    # asyncio's low-level query, which returns None rather than raising (on every call).
    running = asyncio._get_running_loop()
    if running is not None and running in BLOCKING_CALL_LOOPS:
        raise RuntimeError(
            f"{what}() blocks, and was called inside another blocking SyncDrive call of this "
            "thread (from its progress= callback, say), whose event loop it would freeze. "
            "Call it once that call has returned, or from another thread."
        )


def check_not_in_event_loop(what: str) -> None:
    """Raise RuntimeError if this thread runs an event loop (a blocking call would hang it).

    ``what`` names the call, e.g. ``"SyncDrive.exists"``.
    """
    if asyncio._get_running_loop() is None:
        return
    check_not_in_blocking_call(what)
    raise RuntimeError(
        f"{what}() blocks, and was called inside a running event loop, which it would freeze. "
        "Use the async Drive and 'await' its methods instead."
    )


def _start(state: _LoopThread) -> BlockingPortal:
    ready = _Starting()

    async def serve() -> None:
        async with _Portal() as portal:
            ready.set(portal)
            await portal.sleep_until_stopped()

    def loop() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # pragma: no cover - the loop could not start
            if not ready.done():
                ready.set(error=exc)

    state.ready = ready
    state.thread = threading.Thread(target=loop, name=THREAD_NAME, daemon=True)
    state.thread.start()
    return ready.result()


def acquire(key: int, closer: Callable[[], Coroutine[Any, Any, None]]) -> BlockingPortal:
    """Count a user of the loop thread (starting it if needed) and return its portal.

    ``closer`` is awaited on the loop at interpreter exit if the user is still open then.
    """
    global _atexit_registered
    state = _state
    with state.lock:
        portal = state.portal() or _start(state)
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
        if key not in state.closers:  # once per user, however many of its threads race
            state.users += 1
        state.closers[key] = closer
        return portal


def is_running(portal: BlockingPortal) -> bool:
    """Tell whether ``portal`` is the process's running portal (not one stopped at exit)."""
    ready = _state.ready
    return ready is not None and ready.done() and ready.result() is portal


def release(key: int) -> None:
    """Forget a user; stop the loop thread when it was the last one."""
    state = _state
    with state.lock:
        if state.closers.pop(key, None) is None:
            return
        state.users -= 1
        if state.users == 0:
            _stop(state)


def _stop(state: _LoopThread) -> None:
    portal, thread = state.portal(), state.thread
    state.ready = state.thread = None
    if portal is not None:
        with contextlib.suppress(RuntimeError):  # already stopped
            # Through `run`, as every call: no `concurrent.futures.Future` wait that a
            # Ctrl-C could leave with its condition held (see `run`).
            run(portal, portal.stop)
    if thread is not None:
        thread.join()


def quiet_closed_drives_at_exit() -> None:
    """From now on (interpreter exit), a daemon thread ended by `DriveClosedError` is quiet.

    The exit closes the drives (`SyncDrive`, the fsspec filesystem's) under daemon threads
    still using them, as it ends those threads: their next call, or the one in flight,
    raises `DriveClosedError`, which, uncaught, ended each with an "Exception in thread"
    traceback on the way out. Wraps `threading.excepthook` (once): any other exception
    is reported as before.
    """
    global _quiet_hook_installed
    if _quiet_hook_installed:
        return
    _quiet_hook_installed = True
    previous = threading.excepthook

    def quiet_about_closed_drives(args: threading.ExceptHookArgs) -> None:
        closed = args.exc_type is not None and issubclass(args.exc_type, DriveClosedError)
        if closed and args.thread is not None and args.thread.daemon:
            return
        previous(args)

    threading.excepthook = quiet_about_closed_drives


_quiet_hook_installed = False


def _shutdown_at_exit() -> None:
    global exiting
    exiting = True
    quiet_closed_drives_at_exit()
    state = _state
    with state.lock:
        closers = list(state.closers.values())
        state.closers.clear()
        state.users = 0
        portal = state.portal()
        if portal is not None:
            for closer in closers:
                with contextlib.suppress(Exception):
                    run(portal, closer)
        _stop(state)


def run(portal: BlockingPortal, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``func()`` on the loop and wait for it; Ctrl-C cancels it there.

    Ctrl-C raises KeyboardInterrupt in this thread between any two bytecodes, so this
    thread holds neither a lock that Python code takes and releases nor the coroutine: an
    interrupt inside `concurrent.futures.Future`'s condition (``add_done_callback``,
    ``result``) left it held, and the loop thread blocked on it for ever (seen in CI:
    Ctrl-C in a blocking watch). The loop creates the coroutine and its task, which
    reports back by releasing a plain lock, in C; an interrupted wait cancels the task
    through the loop.
    """
    if not isinstance(portal, _Portal):  # pragma: no cover - every portal here is one
        raise TypeError(f"not a portal of asyncdrive's loop thread: {portal!r}")
    portal._check_running()  # RuntimeError once stopped, or on the loop thread itself
    loop = portal.loop
    done = threading.Lock()
    done.acquire()
    started: list[asyncio.Task[T] | BaseException] = []  # appended on the loop (atomic)

    def start() -> None:
        try:
            task = loop.create_task(func())
        except BaseException as exc:  # not even a coroutine: report it
            started.append(exc)
            done.release()
            return
        started.append(task)
        task.add_done_callback(lambda _: done.release())

    try:
        loop.call_soon_threadsafe(start)
        _wait(done)
    except BaseException:
        # The loop has closed (interpreter exit), or KeyboardInterrupt: cancel the task on
        # the loop rather than leave it running unobserved, as anyio's portal does it.
        with contextlib.suppress(RuntimeError):  # closed: nothing of the call runs there
            loop.call_soon_threadsafe(_cancel, started)
        raise
    outcome = started[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome.result()


#: How often a thread waiting on the loop thread wakes up to let a Ctrl-C in (see `_wait`).
INTERRUPT_POLL = 0.25


def _wait(done: threading.Lock) -> None:
    """Acquire ``done``, waking up every `INTERRUPT_POLL` s to let a Ctrl-C's handler run.

    A signal's handler runs in the main thread, between two bytecodes. A signal that this
    thread takes just before it blocks in the lock's wait (after the interpreter's last
    check), or that another thread takes, does not end that wait: its handler would run
    only once the call returns, never for a blocking watch with no events (seen in CI: 1
    run in ~20 of a Ctrl-C test hung, its handler never run).
    """
    while not done.acquire(timeout=INTERRUPT_POLL):
        pass


def _cancel(started: list[asyncio.Task[Any] | BaseException]) -> None:
    """On the loop: cancel the call's task, if it has one.

    (It has none if the interrupt came before ``start`` was queued; else ``start`` ran
    first, as the loop runs its callbacks in order.)
    """
    if started and isinstance(started[0], asyncio.Task):
        started[0].cancel()
