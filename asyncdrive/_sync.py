"""`SyncDrive`: the blocking face of `Drive`, for ordinary (non-async) worker code.

Every method runs the async core's coroutine; no drive logic lives here. A one-shot call
(put, get, list, ...) runs on an event loop of the calling thread's own, with that thread's
own `Drive`, so it costs no hop between threads; what lives across calls (watches, open
files) runs on the process's one background event-loop thread (see ``_portal``).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub: see _set_handler
import asyncio
import atexit
import builtins
import contextlib
import contextvars
import functools
import inspect
import io
import itertools
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, Self, TypeVar, overload

from anyio.from_thread import BlockingPortal

from . import _portal
from ._drive import Drive, StrPath, _inherited_after_fork, _restore
from ._events import DriveEvent
from ._exceptions import DriveClosedError, DriveError
from ._files import DriveReader, DriveWriter, FileT
from ._models import Buffer, FileInfo, FolderInfo, GcReport, GroupInfo
from ._progress import ProgressCallback
from ._threads import StopRequest, stop_request
from ._watch import DEFAULT_CLAIM_IDLE, Watch

__all__ = ["SyncDrive", "SyncDriveReader", "SyncDriveWriter", "SyncWatch"]

P = ParamSpec("P")
T = TypeVar("T")

_keys = itertools.count()

# The C functions behind signal.signal/getsignal, which wrap them in enum conversions that
# cost ~9 us per handler swap here (a SyncDrive call in the main thread makes two).
_SIGINT = signal.SIGINT.value
_set_handler: Callable[[int, Any], Any] = _signal.signal
_get_handler: Callable[[int], Any] = _signal.getsignal


_F = TypeVar("_F", bound=Callable[..., Any])
#: ``(await drive.info("a"))`` in an example: the call alone once blocking.
_AWAITED_IN_PARENS = re.compile(r"\(await ([\w.]+\([^()]*\))\)")


def _blocking_doc(doc: str) -> str:
    """Return a `Drive` coroutine's docstring as its blocking `SyncDrive` method's.

    One text for both faces: the examples drop ``await`` (and ``async with``/``async for``
    become ``with``/``for``), and what runs "in this event loop's thread" runs in the
    calling thread.
    """
    lines = []
    for line in inspect.cleandoc(doc).splitlines():
        if line.lstrip().startswith((">>>", "...")):
            line = _AWAITED_IN_PARENS.sub(r"\1", line)
            line = line.replace("async with ", "with ").replace("async for ", "for ")
            line = line.replace("await ", "")
        lines.append(line)
    text = "\n".join(lines).replace("in this event loop's\n", "in the calling\n")
    text = text.replace("in this event loop's thread", "in the calling thread")
    return text + "\n"


def _documented_by(coroutine: Callable[..., Any]) -> Callable[[_F], _F]:
    """Give a `SyncDrive` method the docstring of the `Drive` coroutine it runs."""

    def document(method: _F) -> _F:
        method.__doc__ = _blocking_doc(coroutine.__doc__ or "")
        return method

    return document


class _CallerLoop:
    """One calling thread's event loop and `Drive`, for a SyncDrive's one-shot calls.

    Each call runs as one task, like `asyncio.Runner.run` (Ctrl-C in the main thread
    cancels the task, so its shielded steps complete, then raises KeyboardInterrupt), at a
    fraction of its cost per call (see `_set_handler`). Any thread may close it
    (`SyncDrive.close`); the lock keeps that from meeting a call.
    """

    def __init__(self, drive: Drive) -> None:
        self.drive = drive
        self.thread = threading.current_thread()
        # A loop of our own, never set as the thread's current one. Its callbacks do the
        # call's disk work in place, by design: not "slow" ones for debug mode (-X dev).
        self.loop = asyncio.new_event_loop()
        self.loop.slow_callback_duration = float("inf")
        _portal.BLOCKING_CALL_LOOPS.add(self.loop)
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.closed = False
        #: Set by `close` before it waits for a call in flight: no other call starts.
        self.closing = False
        #: The task of the call in flight, if any (`close` cancels it).
        self.task: asyncio.Task[Any] | None = None
        #: Set by `close_after_the_call`: closed once the call in flight ends.
        self.close_after_call = False
        #: The stop request of the call in flight's disk work (see `_threads.stop_request`).
        self.stop: StopRequest | None = None
        self.interrupts = 0
        # The main thread's wake-up for Ctrl-C (see _wake_on_signals), made on first need.
        self.wakeup: tuple[socket.socket, socket.socket] | None = None

    def run(self, call: Callable[[Drive], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(drive)`` (made here: an interrupt before never leaves it unawaited)."""
        with self.lock:
            if self.closed or self.closing:
                raise _closed_error(self.drive.name)
            try:
                return self._run_task(call(self.drive))
            finally:
                if self.close_after_call:
                    self._close()

    def close_after_the_call(self) -> None:
        """Cancel the call in flight in this thread, and close once it has ended.

        For `SyncDrive.close` called inside that call (a signal's handler, its progress
        callback), which cannot wait for it: the call raises `DriveClosedError` (a large
        file's copy stops at its next step, as for Ctrl-C).
        """
        self.closing = self.close_after_call = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            self._stop_copies()

    def _stop_copies(self) -> None:
        """Have the copies of the call in flight stop at their next step."""
        stop = self.stop
        if stop is not None:
            stop.request()

    def _run_task(self, coro: Coroutine[Any, Any, T]) -> T:
        on_sigint = None
        old_wakeup: int | None = None
        try:
            # Its own stop request for its copies, in the task's context (and so in the
            # disk threads it hands copies to, which run them in that context).
            self.stop = stop = StopRequest()
            context = contextvars.copy_context()
            context.run(stop_request.set, stop)
            task = self.loop.create_task(coro, context=context)
        except BaseException:  # (a signal's handler raised in it, or just after)
            made = [t for t in asyncio.all_tasks(self.loop) if t.get_coro() is coro]
            for task in made:  # never to run: cancelled before its first step
                task.cancel()
            if not made:
                coro.close()
            raise
        try:  # (at once: a signal's exception before it left the task to the drive's close)
            self.task = task
            in_main_thread = threading.current_thread() is threading.main_thread()
            # Counted from here, and the handler set inside the try: a Ctrl-C as it is set
            # cancels this call (not taken for a second one, which left it pending, to run
            # during a later call).
            self.interrupts = 0
            if in_main_thread and _get_handler(_SIGINT) is signal.default_int_handler:
                on_sigint = functools.partial(self._on_sigint, task)
                _set_handler(_SIGINT, on_sigint)
                old_wakeup = self._wake_on_signals()
            _run_until_done(self.loop, task)
            return task.result()
        except asyncio.CancelledError:
            if self.interrupts and task.uncancel() == 0:
                raise KeyboardInterrupt from None
            raise
        except BaseException:  # SystemExit, KeyboardInterrupt out of the task's step
            if not task.done():
                self._wind_down(task)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: it is the one raised here (else logged)
            raise
        finally:
            self.task = None
            if on_sigint is not None:
                if old_wakeup is not None:
                    signal.set_wakeup_fd(old_wakeup)
                elif self.wakeup is not None:  # (interrupted as it was set: if it was, undo)
                    previous = signal.set_wakeup_fd(-1)
                    if previous != self.wakeup[1].fileno():  # not set: as it was
                        signal.set_wakeup_fd(previous)
                if _get_handler(_SIGINT) is on_sigint:
                    _set_handler(_SIGINT, signal.default_int_handler)
            # The task holds the exception raised here, whose traceback holds this frame:
            # let go of it, so that the exception, and the SyncDrive its frames hold, are
            # freed when the caller drops it (not left to the cyclic collector, whose
            # finalizers, run in any order, would report the drive's parts unclosed).
            del task, on_sigint

    def _wind_down(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task``, left pending by an exception out of the loop, and let it end.

        Such an exception comes from a signal's handler (SIGTERM's ``sys.exit()``, say),
        raised wherever the loop was: the task is cancelled and run to its end, as
        ``asyncio.run()`` does with what is left, so that its shielded steps complete now,
        not when the drive's close next runs the loop (failing there, unseen). For up to
        `WIND_DOWN` seconds: the exception may have cut a wake-up short, which the task
        would wait for until its reply timeout. Left pending then, its end is not logged.
        """
        task.cancel()
        deadline = time.monotonic() + WIND_DOWN
        while not task.done() and (left := deadline - time.monotonic()) > 0:
            waiter = self.loop.create_task(asyncio.wait([task], timeout=left))
            try:
                _run_until_done(self.loop, waiter)
            except RuntimeError:  # the loop cannot run (left running by a raise in it)
                waiter.cancel()
                break
            except BaseException:  # raised again by a step of it: on with the rest
                waiter.cancel()
        if not task.done():  # abandoned: neither logged when it ends, nor waited for
            task.add_done_callback(_retrieved)
            self.drive._calls.pop(task, None)  # (by the drive's close: see Drive.aclose)

    def _wake_on_signals(self) -> int:
        """Have a signal wake this loop from its wait; return the wake-up fd it replaces.

        A signal's handler runs in the main thread between two bytecodes. One that another
        thread takes, or that lands just before the loop blocks in ``epoll``, does not end
        that wait, so the handler (and the call's cancellation) would wait for the call's
        next event: up to its whole timeout for a get waiting for a file. The interpreter
        also writes each signal to this socket (`signal.set_wakeup_fd`), which the loop
        watches, as asyncio's own signal handling does.
        """
        if self.wakeup is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self.loop.add_reader(reader, _drain, reader)
            self.wakeup = (reader, writer)
        return signal.set_wakeup_fd(self.wakeup[1].fileno())

    def _on_sigint(self, task: asyncio.Task[Any], signum: int, frame: object) -> None:
        # As asyncio.Runner: the first Ctrl-C cancels the call, a second one interrupts it.
        self.interrupts += 1
        if self.interrupts == 1 and not task.done():
            task.cancel()
            self._stop_copies()  # a copy under way stops at its next step
            self.loop.call_soon_threadsafe(lambda: None)  # wake the loop from its select
            return
        raise KeyboardInterrupt

    def close(self, *, at_exit: bool = False) -> None:
        """Close the drive and the loop; a call in flight in its thread is cancelled first.

        That call raises `DriveClosedError` once the step it is in ends (a disk call is
        never cut short, but a large file's copy stops at its next step). ``at_exit``: a
        call in flight then is a daemon thread's (the others were joined): the process
        ends under it, not waiting for it.
        """
        self.closing = True
        while not self.lock.acquire(timeout=0.05):
            if at_exit:
                return
            task = self.task
            if task is not None:
                self._stop_copies()
                with contextlib.suppress(RuntimeError):  # (done and closed meanwhile)
                    self.loop.call_soon_threadsafe(task.cancel)
        try:
            self._close()
        finally:
            self.lock.release()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        try:
            self._run_task(self.drive.aclose())
            # None are left by a drive, but by a call a signal's handler cut short (see
            # `_wind_down`): given a last chance to end, and then abandoned, quietly.
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.wait(left, timeout=WIND_DOWN))
            for task in left | asyncio.all_tasks(loop):  # (and those they started)
                if task.done():
                    _retrieved(task)
                else:  # (asyncio's own flag, which its internal tasks clear the same way)
                    task._log_destroy_pending = False  # type: ignore[attr-defined]
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            if self.wakeup is not None:
                for sock in self.wakeup:
                    sock.close()


#: How long (s) a SyncDrive call's task may take to end once an exception out of its loop
#: (a signal handler's) left it pending: see `_CallerLoop._wind_down`.
WIND_DOWN = 2.0


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # empty: woken already
        while sock.recv(4096):
            pass


#: The loop iteration that `_run_until_done` may turn itself (None if asyncio has no such).
_ASYNCIO_RUN_ONCE = getattr(asyncio.BaseEventLoop, "_run_once", None)


def _run_until_done(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Run ``loop`` in this thread until ``task`` is done: `loop.run_until_complete`, cheaper.

    ``run_until_complete`` wraps `loop.run_forever` in a done callback that stops the loop,
    which costs one more turn of the loop (an ``epoll`` wait) and the callback's set-up and
    tear-down: ~28 µs a call here against ~12 µs for this, for a no-op (measured), where a
    one-round-trip call such as `SyncDrive.exists` takes ~150 µs in all
    (``bench/sync_overhead.py``). This does what
    ``run_forever`` does around its loop (CPython 3.11 to 3.14: the running loop, the thread,
    the async generator hooks), then runs the task's first step at once (no poll for I/O
    before it: nothing else is ready) and turns asyncio's own iteration only while the task
    is pending. Any other loop (another event loop policy's, such as uvloop's, or a subclass
    that changes the iteration) and a loop in debug mode take the public path.
    """
    if (
        _ASYNCIO_RUN_ONCE is None
        or getattr(type(loop), "_run_once", None) is not _ASYNCIO_RUN_ONCE
        or loop.get_debug()
    ):
        # (Until the task is done, not for its result: run_until_complete(task) would raise
        # the task's exception from a frame holding the task, which holds the exception.)
        loop.run_until_complete(asyncio.wait([task]))
        return
    if loop.is_running():  # as run_forever: never two runs of one loop at once
        raise RuntimeError("This event loop is already running")
    base_loop: Any = loop  # its private attributes, as run_forever sets them
    old_hooks = sys.get_asyncgen_hooks()
    ready = base_loop._ready

    def run_ready() -> None:
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    try:
        # Set in the try, undone in the finally whatever raises meanwhile (a signal's
        # handler): a loop left marked as running would refuse every later call.
        base_loop._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=base_loop._asyncgen_firstiter_hook,
            finalizer=base_loop._asyncgen_finalizer_hook,
        )
        asyncio._set_running_loop(loop)
        if len(ready) == 1:
            # The task's first step, and nothing else, is ready: run it now. A turn of the
            # loop would poll for I/O and timers first (~5-10 µs), then run it first anyway.
            ready.popleft()._run()
        polled = False
        while not task.done():
            if polled and ready:
                # What the last turn's I/O made ready (a reply's future woke the task):
                # run it now, not after another poll. Every other turn still polls, so
                # callbacks that keep rescheduling themselves never starve I/O or timers.
                run_ready()
                polled = False
            else:
                base_loop._run_once()
                polled = True
        # The task's done callbacks, as run_until_complete runs them before it returns:
        # anyio's, say, which ends the worker thread of an `anyio.to_thread` call when the
        # task that made it ends (else that thread, not a daemon, would keep the
        # interpreter from exiting until a next call ran it).
        run_ready()
    except BaseException:
        # The task ended by SystemExit or KeyboardInterrupt, which asyncio raises out of
        # the loop: its done callbacks too, or the interpreter would hang at exit.
        if task.done():
            with contextlib.suppress(Exception):
                run_ready()
        raise
    finally:
        try:
            asyncio._set_running_loop(None)
        finally:
            try:
                base_loop._thread_id = None
            finally:
                sys.set_asyncgen_hooks(*old_hooks)


def _closed_error(name: str) -> DriveClosedError:
    return DriveClosedError(
        f"SyncDrive {name!r} is closed; create a new SyncDrive to use it again."
    )


#: SyncDrives with caller loops, closed at interpreter exit if their owners did not.
_with_caller_loops: weakref.WeakSet[SyncDrive] = weakref.WeakSet()


@atexit.register
def _close_caller_loops_at_exit() -> None:
    _portal.exiting = True
    _portal.quiet_closed_drives_at_exit()  # (daemon threads still calling: see there)
    for drive in list(_with_caller_loops):
        drive._close_caller_loops(at_exit=True)


class SyncDrive:
    """The blocking mirror of `Drive`: the same methods, the same arguments, no ``await``.

    Example:
        >>> with SyncDrive("lit://drive_1") as drive:
        ...     drive.put("a.txt")
        ...     drive.list(".")
        ...     drive.delete("a.txt")
        ['a.txt']

    A call runs in the calling thread, on an event loop (and connections) of that thread's
    own: many threads may share one SyncDrive, and calls from different threads run side by
    side. Watches and open files, which live across calls, run on one background
    event-loop thread per process, shared by all SyncDrives; it stops when the last one is
    closed, and at interpreter exit. A SyncDrive pickles as its arguments and works in
    forked and spawned children. Calling one from inside a running event loop raises
    `RuntimeError`: use `Drive` there.

    Args are those of `Drive`.

    """

    def __init__(
        self,
        id: str,
        *,
        component_name: str | None = None,
        allow_duplicates: bool = False,
        root: StrPath | None = None,
        redis_url: str | None = None,
    ) -> None:
        self._drive = Drive(
            id,
            component_name=component_name,
            allow_duplicates=allow_duplicates,
            root=root,
            redis_url=redis_url,
        )
        self._key = next(_keys)
        self._pid = os.getpid()
        self._portal: BlockingPortal | None = None
        self._closed = False
        #: The thread closing it, and set once it has: a close() of another thread waits.
        self._closer: threading.Thread | None = None
        self._close_ended = threading.Event()
        self._close_guard = threading.RLock()  # (a signal's handler may close inside)
        self._here = threading.local()  # .loop: this thread's _CallerLoop
        self._caller_loops: list[_CallerLoop] = []
        self._caller_loops_lock = threading.Lock()
        #: The process in which one of its drives connected: a new thread's drive does not
        #: start the embedded server there, as a drive that connected does not restart it.
        self._connected_in: int | None = None

    def _run(self, what: str, call: Callable[[Drive], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(drive)`` on this thread's own loop and drive (made on first use)."""
        _portal.check_not_in_event_loop(f"SyncDrive.{what}")
        if self._closed:
            raise _closed_error(self.name)
        here: _CallerLoop | None = getattr(self._here, "loop", None)
        if here is None or here.pid != os.getpid():
            drive = _restore(Drive, self._drive._config)
            drive._disk_inline = True  # this thread waits on each call: no disk-thread hop
            drive._starts_server = self._connected_in != os.getpid()
            here = _CallerLoop(drive)
            try:
                with self._caller_loops_lock:
                    if self._closed:  # closed meanwhile, by another thread: its loops are gone
                        raise _closed_error(self.name)
                    self._forget_inherited_loops()
                    # Threads come and go (a pool, a thread per request): the loops of those
                    # that ended are closed as new ones come, so they never pile up.
                    ended = [loop for loop in self._caller_loops if not loop.thread.is_alive()]
                    self._caller_loops = [c for c in self._caller_loops if c not in ended]
                    self._caller_loops.append(here)
            except BaseException:  # closed meanwhile, or Ctrl-C: the new loop is nobody's
                if here not in self._caller_loops:
                    here.close()
                raise
            _with_caller_loops.add(self)
            self._here.loop = here
            for loop in ended:
                loop.close()
        try:
            return here.run(call)
        except asyncio.CancelledError:
            if self._closed:  # close() from another thread cancelled it
                raise _closed_error(self.name) from None
            raise
        finally:
            if here.drive._conn is not None:
                self._connected_in = here.pid

    def _forget_inherited_loops(self) -> None:
        pid = os.getpid()
        inherited = [loop for loop in self._caller_loops if loop.pid != pid]
        if inherited:  # in a forked child: the parent's loops are not ours to close or free
            _inherited_after_fork.extend(inherited)
            self._caller_loops = [loop for loop in self._caller_loops if loop.pid == pid]

    def _close_caller_loops(
        self, *, at_exit: bool = False, in_flight: _CallerLoop | None = None
    ) -> None:
        """Close the loops of this drive's threads (``in_flight``'s once its call ends)."""
        with self._caller_loops_lock:
            self._forget_inherited_loops()
            loops, self._caller_loops = self._caller_loops, []
        if in_flight is not None:
            loops.remove(in_flight)
            in_flight.close_after_the_call()
        pid = os.getpid()
        errors: list[BaseException] = []

        def close_all() -> None:
            for loop in loops:
                if loop.pid == pid:
                    try:
                        loop.close(at_exit=at_exit)
                    except Exception as exc:  # close the others, then raise the first
                        errors.append(exc)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            close_all()
        else:  # closed from async code: another loop cannot run in this thread
            closer = threading.Thread(target=close_all, name="asyncdrive-close")
            closer.start()
            closer.join()
        if errors:
            raise errors[0]

    def _call(
        self,
        method: Callable[P, Coroutine[Any, Any, T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        _portal.check_not_in_event_loop(_blocking_name(method))
        if self._closed:
            raise _closed_error(self.name)
        if self._pid != os.getpid():
            self._pid, self._portal = os.getpid(), None
        if self._portal is None:
            self._portal = _portal.acquire(self._key, self._drive.aclose)
        self._drive._starts_server = self._connected_in != os.getpid()
        try:
            return _portal.run(self._portal, functools.partial(method, *args, **kwargs))
        except (asyncio.CancelledError, DriveError, RuntimeError) as exc:
            # close() from another thread closed the drive, or stopped the loop, under the
            # call; or the interpreter's exit did (a daemon thread's call, whose loop
            # thread is stopped: anyio's RuntimeError): say so in this facade's words.
            closing = (asyncio.CancelledError, DriveError, DriveClosedError)
            if (self._closed and type(exc) in closing) or (
                _portal.exiting and type(exc) in (*closing, RuntimeError)
            ):
                raise _closed_error(self.name) from None
            raise
        finally:
            if self._drive._conn is not None:
                self._connected_in = os.getpid()

    # -- identity and lifecycle --------------------------------------------------------------

    @property
    def id(self) -> str:
        """The drive id, e.g. ``"lit://drive_1"``."""
        return self._drive.id

    @property
    def name(self) -> str:
        """The drive name, e.g. ``"drive_1"``."""
        return self._drive.name

    @property
    def component_name(self) -> str:
        """The component this drive writes as, resolved in the current process."""
        return self._drive.component_name

    @property
    def allow_duplicates(self) -> bool:
        """Whether several components may each keep a copy of the same path."""
        return self._drive.allow_duplicates

    @property
    def root(self) -> Path:
        """The shared directory holding the bytes, resolved in the current process."""
        return self._drive.root

    @property
    def drive(self) -> Drive:
        """The async `Drive` this wraps (use it only from the SyncDrive's loop thread)."""
        return self._drive

    def __repr__(self) -> str:
        text = "Sync" + repr(self._drive)
        return text if not self._closed or text.endswith(" [closed]") else f"{text} [closed]"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self._drive._config))

    def __enter__(self) -> Self:
        if self._closed:  # (its calls would all raise: say so here)
            raise _closed_error(self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and release the loop thread. Idempotent.

        Calls in flight in other threads raise `DriveClosedError`; so does one of this
        thread's, where close() is called inside it (from a signal's handler, say, or its
        progress callback): cancelled, it closes its loop once it has ended.
        """
        if self._closed:
            self._wait_for_the_close()
            return
        in_flight = self._call_in_flight_here()
        if in_flight is None:  # inside another drive's call: it would wait for that call
            _portal.check_not_in_blocking_call("SyncDrive.close")
        with self._close_guard:
            first = not self._closed
            if first:  # (the closer first: a close() by a signal's handler between the two
                # finds the drive closing by its own thread, and never waits for itself)
                self._closer = threading.current_thread()
                self._closed = True
        if not first:  # (another thread came first, just now)
            self._wait_for_the_close()
            return
        try:
            self._close_caller_loops(in_flight=in_flight)
        finally:
            try:
                self._close_portal_drive()
            finally:
                self._close_ended.set()

    def _wait_for_the_close(self) -> None:
        """Wait until the close() under way in another thread has closed everything.

        Not in the closing thread itself (a signal's handler calling close() inside it),
        nor inside a blocking call of this thread (its progress callback, a signal's
        handler): the close under way may be waiting for that very call to end.
        """
        if self._closer is threading.current_thread():
            return
        if asyncio._get_running_loop() in _portal.BLOCKING_CALL_LOOPS:
            return
        while not self._close_ended.wait(0.05):
            closer = self._closer
            if closer is None or not closer.is_alive():  # (forked during it: not here)
                return

    def _call_in_flight_here(self) -> _CallerLoop | None:
        """Return the loop of this drive's call this thread is inside, if any."""
        running = asyncio._get_running_loop()
        if running is None:
            return None
        with self._caller_loops_lock:
            return next((loop for loop in self._caller_loops if loop.loop is running), None)

    def _close_portal_drive(self) -> None:
        portal, self._portal = self._portal, None
        if portal is None or self._pid != os.getpid():
            self._drive._closed = True
            return
        try:
            if _portal.is_running(portal):  # not after interpreter exit stopped the loop
                _portal.run(portal, self._drive.aclose)
        finally:
            _portal.release(self._key)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_closed", True) or self._pid != os.getpid():
            return
        portal = self._portal
        # Not those closed at interpreter exit, with the loop thread.
        portal_open = portal is not None and _portal.is_running(portal)
        if not portal_open and not any(not loop.closed for loop in self._caller_loops):
            return
        # The id only: a full repr resolves settings, which may fail during shutdown.
        try:
            _warn(f"unclosed SyncDrive {self.id!r}: use 'with' or call close()",
                  ResourceWarning, source=self)  # fmt: skip
        finally:  # closed also where warnings are errors
            self._close_when_collected()

    def _close_when_collected(self) -> None:
        in_a_loop = threading.current_thread().name == _portal.THREAD_NAME
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            in_a_loop = True
        if not in_a_loop:
            self.close()
            return
        # Collected inside a running loop, which closing here would block (the process's
        # loop thread would wait for itself): closed by a thread of its own instead.
        with contextlib.suppress(RuntimeError):  # none started at interpreter exit: atexit's
            threading.Thread(target=self.close, name="asyncdrive-close", daemon=True).start()

    # -- operations: each has its Drive coroutine's docstring, read as blocking -------------
    # (`_documented_by`: the one-line docstrings below are for readers of this file)

    @_documented_by(Drive.put)
    def put(
        self,
        path: StrPath,
        *,
        to: StrPath | None = None,
        if_version: int | None = None,
        exist_ok: bool = True,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Copy a local file or folder into the drive (see `Drive.put`).

        ``progress(done, total)`` is called in this thread.
        """
        return self._run(
            "put",
            lambda d: d.put(
                path, to=to, if_version=if_version, exist_ok=exist_ok, progress=progress
            ),
        )

    @_documented_by(Drive.write_bytes)
    def write_bytes(
        self,
        path: StrPath,
        data: Buffer,
        *,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> FileInfo:
        """Store ``data`` as the file ``path`` (see `Drive.write_bytes`)."""
        return self._run(
            "write_bytes",
            lambda d: d.write_bytes(path, data, if_version=if_version, exist_ok=exist_ok),
        )

    @_documented_by(Drive.delete)
    def delete(self, path: StrPath, *, recursive: bool = False) -> None:
        """Remove this component's copy of a file or folder (see `Drive.delete`)."""
        return self._run("delete", lambda d: d.delete(path, recursive=recursive))

    @_documented_by(Drive.list)
    def list(
        self, path: StrPath = ".", *, component_name: str | None = None, recursive: bool = False
    ) -> list[str]:
        """List a folder (see `Drive.list`)."""
        return self._run(
            "list", lambda d: d.list(path, component_name=component_name, recursive=recursive)
        )

    @_documented_by(Drive.list_info)
    def list_info(
        self, path: StrPath = ".", *, component_name: str | None = None, recursive: bool = False
    ) -> builtins.list[FileInfo | FolderInfo]:
        """List a folder with what the drive knows of each entry (see `Drive.list_info`)."""
        return self._run(
            "list_info",
            lambda d: d.list_info(path, component_name=component_name, recursive=recursive),
        )

    @_documented_by(Drive.exists)
    def exists(self, path: StrPath, *, component_name: str | None = None) -> bool:
        """Tell whether a file or folder exists (see `Drive.exists`)."""
        return self._run("exists", lambda d: d.exists(path, component_name=component_name))

    @_documented_by(Drive.info)
    def info(self, path: StrPath, *, component_name: str | None = None) -> FileInfo:
        """Return a file's `FileInfo` (see `Drive.info`)."""
        return self._run("info", lambda d: d.info(path, component_name=component_name))

    @_documented_by(Drive.read_bytes)
    def read_bytes(self, path: StrPath, *, component_name: str | None = None) -> bytes:
        """Return a file's content (see `Drive.read_bytes`)."""
        return self._run("read_bytes", lambda d: d.read_bytes(path, component_name=component_name))

    @_documented_by(Drive.get)
    def get(
        self,
        path: StrPath,
        *,
        component_name: str | None = None,
        timeout: float | None = None,
        overwrite: bool = False,
        to: StrPath | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Copy a file or folder to the same local path (see `Drive.get`).

        ``progress(done, total)`` is called in this thread.
        """
        return self._run(
            "get",
            lambda d: d.get(
                path, component_name=component_name, timeout=timeout, overwrite=overwrite,
                to=to, progress=progress,
            ),
        )  # fmt: skip

    @_documented_by(Drive.rebuild_index)
    def rebuild_index(self, *, verify: bool = False) -> int:
        """Rebuild the index from the disk (see `Drive.rebuild_index`)."""
        return self._run("rebuild_index", lambda d: d.rebuild_index(verify=verify))

    @_documented_by(Drive.gc)
    def gc(self, *, grace: float = 3600.0) -> GcReport:
        """Clean up after writers that died (see `Drive.gc`)."""
        return self._run("gc", lambda d: d.gc(grace=grace))

    @_documented_by(Drive.groups)
    def groups(self) -> builtins.list[GroupInfo]:
        """Return the drive's consumer groups (see `Drive.groups`)."""
        return self._run("groups", lambda d: d.groups())

    @_documented_by(Drive.remove_group)
    def remove_group(self, group: str, *, force: bool = False) -> bool:
        """Remove a consumer group (see `Drive.remove_group`)."""
        return self._run("remove_group", lambda d: d.remove_group(group, force=force))

    @overload
    def open(
        self, path: StrPath, mode: Literal["rb", "br"] = "rb", *, component_name: str | None = None
    ) -> SyncDriveReader: ...

    @overload
    def open(
        self,
        path: StrPath,
        mode: Literal["wb", "bw"],
        *,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> SyncDriveWriter: ...

    @overload
    def open(
        self,
        path: StrPath,
        mode: str,
        *,
        component_name: str | None = None,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> SyncDriveReader | SyncDriveWriter: ...

    def open(
        self,
        path: StrPath,
        mode: str = "rb",
        *,
        component_name: str | None = None,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> SyncDriveReader | SyncDriveWriter:
        """Open a file as a blocking stream, ``"rb"`` or ``"wb"`` (see `Drive.open`).

        Example:
            >>> with drive.open("big.bin") as f:
            ...     position = f.seek(1 << 20)
            ...     chunk = f.read(4096)
            >>> with drive.open("out/result.bin", "wb") as f:  # committed on close
            ...     written = f.write(b"results")

        """
        opening = self._drive.open(
            path,
            mode,
            component_name=component_name,
            if_version=if_version,
            exist_ok=exist_ok,
        )
        file = self._call(opening.open)
        if isinstance(file, DriveReader):
            return SyncDriveReader(self, file)
        return SyncDriveWriter(self, file)

    def watch(
        self,
        path: StrPath = ".",
        *,
        recursive: bool = True,
        since: str | None = None,
        group: str | None = None,
        timeout: float | None = None,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        member: str | None = None,
    ) -> SyncWatch:
        """Return a blocking iterator of the drive's changes (see `Drive.watch`).

        Example:
            >>> with SyncDrive("lit://d") as drive:
            ...     for event in drive.watch(timeout=5.0):
            ...         print(event.change, event.path)
            added a.txt

        """
        _portal.check_not_in_event_loop("SyncDrive.watch")
        watch = self._drive.watch(
            path,
            recursive=recursive,
            since=since,
            group=group,
            timeout=timeout,
            claim_idle=claim_idle,
            member=member,
        )
        if since is None:
            # A blocking call may do I/O: fix the start exactly, at the newest event now.
            self._call(watch.pin_start)
        return SyncWatch(self, watch)


def _blocking_name(method: Callable[..., object]) -> str:
    """Return the name of the blocking method that calls ``method`` of the core: its mirror's.

    ``Watch.next`` is ``SyncWatch.next``; ``DriveReader.aclose``, ``SyncDriveReader.close``.
    """
    owner = getattr(method, "__self__", None)
    mirror = "SyncDrive" if owner is None or isinstance(owner, Drive) else type(owner).__name__
    if not mirror.startswith("Sync"):
        mirror = f"Sync{mirror}"
    name = {"aclose": "close", "__aexit__": "__exit__"}.get(method.__name__, method.__name__)
    return f"{mirror}.{name}"


class _Mirror:
    """What the blocking mirrors of the core's async objects share: ``with`` ends one there."""

    _drive: SyncDrive

    def _mirrored(self) -> Watch | DriveReader | DriveWriter:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _let_go(self) -> None:
        """End it without the drive's loop, closed with the drive: nothing committed."""
        self._mirrored()._let_go()

    def __enter__(self) -> Self:
        self._mirrored()._check_open()  # (reads a flag: no need of the drive's loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._drive._closed:  # the drive's loop is gone (see each close)
            if exc_type is None:
                self.close()
            else:
                self._let_go()  # the block's own exception is the one to raise
            return
        self._drive._call(self._mirrored().__aexit__, exc_type, exc, tb)


class SyncWatch(_Mirror):
    """The blocking mirror of `Watch`: an iterator and context manager of `DriveEvent`.

    Example:
        >>> with drive.watch("ckpt", group="evaluators") as events:
        ...     for event in events:
        ...         evaluate(event.path)

    """

    def __init__(self, drive: SyncDrive, watch: Watch) -> None:
        self._drive = drive
        self._watch = watch

    @property
    def cursor(self) -> str:
        """The id to resume after (``watch(since=cursor)``): see `Watch.cursor`.

        A blocking watch looks at the log when it is made: never ``""``.
        """
        return self._watch.cursor

    @property
    def group(self) -> str | None:
        """The consumer group this watch belongs to, if any."""
        return self._watch.group

    def __repr__(self) -> str:
        return "Sync" + repr(self._watch)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> DriveEvent:
        event = self.next(self._watch._timeout)
        if event is None:  # watch(timeout=...): the iteration ends, and with it the watch
            self.close()
            raise StopIteration
        return event

    def next(self, timeout: float | None = None) -> DriveEvent | None:
        """Return the next event, or None if none comes within ``timeout`` s (see `Watch.next`)."""
        try:
            return self._drive._call(self._watch.next, timeout)
        except DriveClosedError:
            # Its drive closed at interpreter exit (the loop thread stopped before this
            # call, or under it): the watch ends, as the watch itself says in the loop.
            if not _portal.exiting:
                raise
            return None

    def close(self) -> None:
        """End the watch (in a group, the last event handed out counts as handled). Idempotent."""
        if self._drive._closed or _portal.exiting:  # closed with its drive (at exit too)
            self._let_go()  # (which acknowledged nothing more)
            return
        self._drive._call(self._watch.aclose)

    def _mirrored(self) -> Watch:
        return self._watch


class _SyncFile(_Mirror, Generic[FileT]):
    """What the blocking mirrors of `DriveReader` and `DriveWriter` share."""

    def __init__(self, drive: SyncDrive, file: FileT) -> None:
        self._drive = drive
        self._file = file

    @property
    def mode(self) -> str:
        """``"rb"`` or ``"wb"``."""
        return self._file.mode

    @property
    def path(self) -> str:
        """The drive path."""
        return self._file.path

    @property
    def closed(self) -> bool:
        """Whether the file was closed."""
        return self._file.closed

    def __repr__(self) -> str:
        return "<Sync" + repr(self._file)[1:]

    def readable(self) -> bool:
        """Return whether the file reads."""
        return self._file.readable()

    def writable(self) -> bool:
        """Return whether the file writes."""
        return self._file.writable()

    def seekable(self) -> bool:
        """Return whether the file can seek."""
        return self._file.seekable()

    def tell(self) -> int:
        """Return the position (for a writer: how many bytes were written)."""
        return self._drive._call(self._file.tell)

    def close(self) -> None:
        """Close the file (a writer commits; see `DriveWriter.aclose`). Idempotent."""
        if self._file.closed:
            return
        if self._drive._closed:
            # Closed with the drive's loop thread, which this file used: let go of it here.
            self._let_go()
            self._closed_with_the_drive()
            return
        self._drive._call(self._file.aclose)

    def _closed_with_the_drive(self) -> None:
        """Raise what `close` says of a file let go of by its drive's close (a reader: nothing)."""

    def _mirrored(self) -> FileT:
        return self._file


class SyncDriveReader(_SyncFile[DriveReader]):
    """The blocking mirror of `DriveReader`, from ``SyncDrive.open(path)``.

    Example:
        >>> with drive.open("data.csv") as f:
        ...     for line in f:
        ...         handle(line)

    """

    @property
    def info(self) -> FileInfo:
        """The `FileInfo` of the version opened."""
        return self._file.info

    @property
    def size(self) -> int:
        """The size of the file in bytes."""
        return self._file.size

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all the rest if negative or None) and advance."""
        return self._drive._call(self._file.read, size)

    def read_range(self, start: int, end: int | None = None) -> bytes:
        """Return the bytes from ``start`` to ``end``, leaving the position alone."""
        return self._drive._call(self._file.read_range, start, end)

    def readinto(self, buffer: Buffer, /) -> int:
        """Read up to ``len(buffer)`` bytes into ``buffer``; return how many (0: the end)."""
        return self._drive._call(self._file.readinto, buffer)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, newline included."""
        return self._drive._call(self._file.readline, size)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        """Return the next line (`readline`), as ``for line in f`` iterates."""
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position like `io.IOBase.seek` and return it."""
        return self._drive._call(self._file.seek, offset, whence)

    def flush(self) -> None:
        """Do nothing: a reader has nothing to write (``io.TextIOWrapper`` calls it)."""

    # What else makes it a binary file to io (``io.TextIOWrapper(reader)`` reads text), as
    # an `io.BufferedReader` of a file opened "rb" answers them.

    @property
    def name(self) -> str:
        """The file's drive path (what io's files call their name)."""
        return self.path

    def write(self, data: Buffer, /) -> int:
        """Refuse: a reader does not write (`io.UnsupportedOperation`, as io's readers)."""
        raise io.UnsupportedOperation(f"{self.path!r} was opened for reading")

    def truncate(self, size: int | None = None, /) -> int:
        """Refuse: a reader does not write (`io.UnsupportedOperation`, as io's readers)."""
        raise io.UnsupportedOperation(f"{self.path!r} was opened for reading")

    def fileno(self) -> int:
        """Refuse: a drive file has no descriptor of the caller's (`io.UnsupportedOperation`)."""
        raise io.UnsupportedOperation("a drive file has no file descriptor to lend")

    def isatty(self) -> bool:
        """Return False: a drive file is no terminal."""
        return False


class SyncDriveWriter(_SyncFile[DriveWriter]):
    """The blocking mirror of `DriveWriter`, from ``SyncDrive.open(path, "wb")``.

    Closing it (leaving its ``with`` block) commits the file; an exception drops it.

    Example:
        >>> with drive.open("out/result.bin", "wb") as f:
        ...     written = f.write(b"results")
        >>> f.info.size
        7

    """

    @property
    def info(self) -> FileInfo | None:
        """The `FileInfo` of the committed file, once closed (None before)."""
        return self._file.info

    def write(self, data: Buffer) -> int:
        """Append ``data`` and return how many bytes that was."""
        return self._drive._call(self._file.write, data)

    def flush(self) -> None:
        """Do nothing: the bytes are committed, fsynced, on close."""
        self._drive._call(self._file.flush)

    def _closed_with_the_drive(self) -> None:
        raise DriveClosedError(
            f"SyncDrive {self._drive.name!r} was closed before {self.path!r} was "
            "committed, so nothing was stored: close a writer before its drive, or "
            "write the file again with a new SyncDrive."
        )

    def abort(self) -> None:
        """Drop what was written without committing it. Idempotent."""
        if self._file.closed:
            return
        if self._drive._closed:  # its loop thread is gone: drop the upload here
            self._let_go()
        else:
            self._drive._call(self._file.abort)
