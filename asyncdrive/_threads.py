"""The worker threads that make the blocking disk calls of every drive in a process.

A lean stand-in for `concurrent.futures.ThreadPoolExecutor` + `asyncio.wrap_future`, for
one use: `DiskThreads.run` hands a call to an idle thread with the event loop waiting for
it, and the thread reports the outcome through the loop's `_Inbox`: one
`loop.call_soon_threadsafe` for all the outcomes that arrive before the loop takes them.
No `concurrent.futures.Future` (and its condition variable) in between, nor the two-way
chaining of `wrap_future`: a hop costs about half as much (~70 µs of CPU instead of ~140,
measured), and a small put or get makes one.

Like the executor, threads start on demand, at most ``max_threads``, end on `shutdown`,
and are waited for at interpreter exit, so a call in flight finishes its disk work.

Example:
    >>> threads = DiskThreads(8)
    >>> await threads.run(os.stat, "a.txt")
    os.stat_result(...)
    >>> threads.shutdown()

"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextvars
import copy
import itertools
import logging
import os
import queue
import resource
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

logger = logging.getLogger("asyncdrive")

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: The names of the threads, followed by a number: what a debugger or py-spy shows.
THREAD_NAME = "asyncdrive-disk"

if hasattr(resource, "RUSAGE_THREAD"):  # Linux

    def _thread_waits() -> int:
        """How many times this thread has waited (voluntary context switches, ~0.5 µs)."""
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw

else:  # no count of this thread's own: as if every call waited
    _thread_waits = itertools.count().__next__


#: The result of a call skipped (its caller cancelled before a thread took it).
_NOT_MADE = object()


class _Call:
    """One call handed to a thread, and what the event loop waits on for its outcome."""

    __slots__ = (
        "abandoned", "args", "context", "error", "finished", "func", "inbox", "loop", "result",
        "waiter",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
        func: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.inbox = _inbox(loop)
        self.context = context
        self.func = func
        self.args = args
        #: Set in the loop's thread when the call has returned or raised (or was skipped).
        self.finished = False
        #: Its outcome, once finished (a result `_NOT_MADE`: skipped): kept for a cancelled
        #: caller, whose waiter may have been cancelled before it came.
        self.result: object = _NOT_MADE
        self.error: BaseException | None = None
        #: Set by a cancelled caller: a thread that has not started the call skips it.
        self.abandoned = False
        #: The future the caller awaits; replaced by a new one if the caller is cancelled
        #: (see `DiskThreads.run`).
        self.waiter: asyncio.Future[Any] = loop.create_future()

    def settle(self, result: object, error: BaseException | None) -> None:
        """Record the outcome (in the loop's thread) for whoever awaits the call now."""
        self.finished = True
        self.result, self.error = result, error
        if self.waiter.done():
            return
        if error is None:
            self.waiter.set_result(result)
        else:
            self.waiter.set_exception(error)


class _Inbox:
    """The outcomes of one event loop's calls, handed over by the threads that made them.

    A thread adds its outcome and wakes the loop only if no wake-up is pending: under load
    (64 tasks putting small files) several outcomes arrive per turn of the loop, and each
    wake-up saved is a write to the loop's self-pipe, a system call during which the
    thread lets go of the interpreter lock (measured: 64 concurrent small puts ~6%, gets
    ~3% faster).
    """

    __slots__ = ("__weakref__", "lock", "outcomes", "wake_pending")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: list[tuple[_Call, object, BaseException | None]] = []
        self.wake_pending = False

    def add(self, call: _Call, result: object, error: BaseException | None) -> None:
        """Hand ``call``'s outcome to its loop (from the thread that made the call)."""
        with self.lock:
            self.outcomes.append((call, result, error))
            if self.wake_pending:
                return
            self.wake_pending = True
        try:
            call.loop.call_soon_threadsafe(self._settle_all)
        except RuntimeError:  # the loop closed: nobody waits any more
            with self.lock:
                self.outcomes.clear()
                self.wake_pending = False

    def _settle_all(self) -> None:
        with self.lock:
            outcomes, self.outcomes = self.outcomes, []
            self.wake_pending = False
        for call, result, error in outcomes:
            call.settle(result, error)


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox]
_inboxes = weakref.WeakKeyDictionary()
_inboxes_lock = threading.Lock()  # loops may run in several threads


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    """Return the `_Inbox` of ``loop`` (made on first use, gone with the loop)."""
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _inboxes_lock:
            inbox = _inboxes.setdefault(loop, _Inbox())
    return inbox


class StopRequest:
    """A caller's request that the blocking work it waits for stop at its next step.

    Blocking work that can stop midway (a large file's copy, in 8 MiB steps) looks at
    `stop_request` between steps with `raise_if_requested`: it raises
    `asyncio.CancelledError` once this request, or one of the callers it was made for
    (``parent``: the caller's caller, such as a `SyncDrive` call), has been made.

    Example:
        >>> stop = StopRequest()
        >>> token = stop_request.set(stop)
        >>> stop.request()
        >>> raise_if_requested()
        Traceback (most recent call last):
        asyncio.exceptions.CancelledError

    """

    __slots__ = ("_requested", "parent")

    def __init__(self, parent: StopRequest | None = None) -> None:
        self.parent = parent
        self._requested = False

    def __repr__(self) -> str:
        return f"<StopRequest {'requested' if self.requested else 'not requested'}>"

    @property
    def requested(self) -> bool:
        """Whether this request or its parent's has been made."""
        return self._requested or (self.parent is not None and self.parent.requested)

    def request(self) -> None:
        """Ask the work to stop at its next step (from any thread)."""
        self._requested = True


#: The stop request of the work whose context this is: set for each call `DiskThreads.run`
#: makes (requested when its caller is cancelled) and for each `SyncDrive` call (requested
#: by Ctrl-C or a close). A large file's copy would else run to its end before the
#: cancellation was raised (minutes on a slow disk), and a get's land in place.
stop_request: contextvars.ContextVar[StopRequest | None] = contextvars.ContextVar(
    "asyncdrive_stop_request", default=None
)


def raise_if_requested() -> None:
    """Raise `asyncio.CancelledError` if this context's work was asked to stop."""
    stop = stop_request.get()
    if stop is not None and stop.requested:
        raise asyncio.CancelledError


class NoThreads(RuntimeError):
    """No thread can take the call: shut down, or the interpreter is exiting."""


_STOP = None
_live: weakref.WeakSet[DiskThreads] = weakref.WeakSet()


def _drop(dropped: Callable[[Any], object], result: object) -> None:
    """Hand a cancelled caller's ``result`` to ``dropped``, here, in the loop's thread.

    Not in a worker thread: a call handed to one could be skipped (the caller cancelled
    again while it waits for a thread), or refused (the threads shut down), and what the
    result holds left open. Releasing it is quick (a close, an unlink), and rare.
    """
    try:
        dropped(result)
    except Exception:
        logger.warning("releasing what a cancelled disk call made failed", exc_info=True)


class DiskThreads:
    """Up to ``max_threads`` worker threads, started when needed, for blocking disk calls."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: Released by each thread that waits for work: how many are idle, at least.
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._closed = False
        self._numbers = itertools.count()
        _live.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DiskThreads {state}, {len(self._threads)}/{self.max_threads} threads>"

    async def run(
        self,
        func: Callable[..., T],
        *args: Any,
        dropped: Callable[[T], object] | None = None,
    ) -> T:
        """Run ``func(*args)`` in a worker thread and return its result, or raise its error.

        The call sees the caller's context variables. A cancellation waits for the call to
        finish before it goes on (a disk call cannot be interrupted, and must not go on
        behind the caller's back): it is raised after, and the result dropped, handed first
        to ``dropped`` (see `_drop`) where it holds what must be released (an open file, an
        upload). It requests the call's `stop_request`, so work made of steps
        stops at its next one. A call still waiting for a thread is not made at all.

        Raises:
            NoThreads: the threads were shut down, or the interpreter starts no more (before
                the call began: it can be made another way).

        """
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        stop = StopRequest(context.get(stop_request))
        context.run(stop_request.set, stop)
        call = _Call(loop, context, func, args)
        self._submit(call)
        try:
            result: T = await call.waiter
            return result
        except asyncio.CancelledError:
            call.abandoned = True
            stop.request()
            # Shielded from anyio's cancel scopes, which cancel the task again at every turn
            # of the loop until it leaves the scope: waiting like that would keep the loop
            # busy, and the call's thread waiting for the interpreter lock.
            with anyio.CancelScope(shield=True):
                while not call.finished:
                    call.waiter = loop.create_future()
                    try:
                        await call.waiter
                    except asyncio.CancelledError:  # cancelled again (asyncio): still waiting
                        continue
                    except BaseException:  # the call's own error: dropped, as its result
                        continue
                if dropped is not None and call.error is None and call.result is not _NOT_MADE:
                    _drop(dropped, call.result)
            raise

    def _submit(self, call: _Call) -> None:
        # Under the lock: a call is queued before `shutdown`'s stops, or refused.
        with self._lock:
            if self._closed:
                raise NoThreads("the disk threads were shut down")
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=self._work,
                    name=f"{THREAD_NAME}_{next(self._numbers)}",
                    daemon=True,  # waited for at exit by `_join_at_exit` instead
                )
                try:
                    thread.start()
                except RuntimeError as exc:  # the interpreter is shutting down
                    raise NoThreads(str(exc)) from exc
                self._threads.append(thread)
            self._queue.put(call)

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            if call is _STOP:
                return
            result: object = _NOT_MADE
            error: BaseException | None = None
            try:
                if not call.abandoned:
                    result = call.context.run(call.func, *call.args)
            except BaseException as exc:  # handed to the caller, as the executor does
                error = exc
            # Idle before the caller hears: its next call, made at once, finds this thread.
            self._idle.release()
            call.inbox.add(call, result, error)
            del call, result, error  # not kept alive while this thread waits

    def shutdown(self, wait: bool = False) -> None:
        """Let the threads end once the calls handed to them are done (``wait``: join them)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._queue.put(_STOP)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


#: Worker threads a process uses at most for the disk calls of all its drives. More add
#: contention for the interpreter lock (measured: 64 concurrent gets on 2 cores ran up to
#: half as fast with anyio's default of 40) without more disk throughput.
DISK_THREADS = 8


class SharedDiskThreads:
    """The worker threads doing every drive's disk calls in this process, at most a few.

    Shared, so that however many drives, threads and loops a process runs, its disk calls
    take at most `DISK_THREADS` threads; and not anyio's, whose threads end with the task
    that started them (each call of a SyncDrive runs in a loop of its own). The threads stop
    when the last connection using them closes, and a forked child starts its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: DiskThreads | None = None
        self._users = 0
        self._pid = os.getpid()

    def acquire(self) -> DiskThreads:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's threads are not here
                self._threads, self._users, self._pid = None, 0, os.getpid()
            if self._threads is None:
                self._threads = DiskThreads(DISK_THREADS)
            self._users += 1
            return self._threads

    def borrow(self) -> DiskThreads | None:
        """Return the threads if drives keep them, without keeping them (see `acquire`).

        Without the lock (a fork while another thread holds it would leave it held in the
        child): the threads may be shut down meanwhile (`NoThreads`).
        """
        threads = self._threads
        return threads if threads is not None and self._pid == os.getpid() else None

    def release(self, threads: DiskThreads) -> None:
        with self._lock:
            if threads is not self._threads:
                return
            self._users -= 1
            if self._users == 0:
                self._threads = None
                threads.shutdown()


shared_disk_threads = SharedDiskThreads()


async def in_a_disk_thread(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` in the process's shared disk threads, where drives keep them.

    As `DiskThreads.run` (a cancellation waits for the call): for the disk calls of what
    has no drive connection at hand (an open file, the fsspec filesystem). Not
    ``anyio.to_thread`` where the shared threads run: its every call, in a loop started
    with ``run_forever`` (fsspec's), looks for the loop's root task through all its tasks,
    thousands in an fsspec bulk transfer, which then slowed down with each file in flight.
    Where no drive keeps them (its drives closed: a file used after), anyio's, rather than
    threads started and stopped for each call.
    """
    threads = shared_disk_threads.borrow()
    if threads is not None:
        try:
            return await threads.run(func, *args)
        except NoThreads:  # shut down meanwhile, as its last drive closed
            pass
    return await anyio.to_thread.run_sync(func, *args)


def _forget_after_fork() -> None:
    # A forked child has none of its parent's threads, and their locks may be held.
    global _inboxes, _inboxes_lock
    _live.clear()
    _inboxes, _inboxes_lock = weakref.WeakKeyDictionary(), threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _join_at_exit() -> None:
    # The threads are daemons, so that an interpreter whose drives were never closed does
    # not hang at exit waiting for idle threads; here they finish what they hold, and end.
    for threads in list(_live):
        threads.shutdown(wait=True)


class _Queued(Generic[ItemT, ResultT]):
    """One item waiting in a `CallBatcher`, and the future its caller awaits."""

    __slots__ = ("abandoned", "future", "item", "taken", "weight")

    def __init__(self, item: ItemT, weight: int, future: asyncio.Future[ResultT]) -> None:
        self.item = item
        self.weight = weight
        self.future = future
        self.taken = False  # in a batch handed to a thread
        self.abandoned = False  # its caller was cancelled before that: skipped


def _copy_of(exc: Exception) -> Exception:
    """Return a copy of ``exc`` caused by it, for another caller to raise (a traceback each)."""
    try:
        copied = copy.copy(exc)
    except Exception:  # an exception that cannot be copied: shared, as before
        return exc
    copied.__traceback__ = None
    copied.__cause__ = exc
    return copied


class CallBatcher(Generic[ItemT, ResultT]):
    """Items of concurrent callers handled by ``handle`` in one worker-thread call per batch.

    One call at a time: an item submitted while none is in flight is handled alone, at
    once (a caller on its own pays nothing more); those submitted meanwhile wait, and go
    together in the next call, at most ``max_items`` and ``max_weight`` of them. Under load
    from many tasks, this makes one thread hop per batch instead of one per item, and one
    thread busy instead of several, which take turns with the event loop for the
    interpreter lock at each system call (measured: 64 tasks getting small files ~1.4x ->
    ~2x the rate of one, where side by side calls of one item each made more threads wait).

    ``handle(items)`` returns one outcome per item, in order: its result, or the exception
    it raised (raised to that item's caller alone). As with `DiskThreads.run`, a caller
    cancelled once its item is in a call waits for the call to finish, then is cancelled;
    one cancelled before is skipped.

    Example:
        >>> copies = CallBatcher(conn.run_sync, copy_each, max_items=64, max_weight=16 << 20)
        >>> await copies.submit(("a.bin", "local/a.bin"), weight=4096)

    """

    def __init__(
        self,
        run_sync: Callable[..., Awaitable[list[ResultT | BaseException]]],
        handle: Callable[[list[ItemT]], list[ResultT | BaseException]],
        *,
        max_items: int,
        max_weight: int,
    ) -> None:
        self._run_sync = run_sync
        self._handle = handle
        self.max_items = max_items
        self.max_weight = max_weight
        self._waiting: collections.deque[_Queued[ItemT, ResultT]] = collections.deque()
        self._busy = False  # a call is in flight, or the drainer is about to make one
        self._drainer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "busy" if self._busy else "idle"
        return f"<CallBatcher {state}, {len(self._waiting)} waiting>"

    async def submit(self, item: ItemT, weight: int = 0) -> ResultT:
        """Handle ``item`` (alone, or with others'); return its result or raise its error."""
        if not self._busy:
            self._busy = True
            try:
                (outcome,) = await self._run_sync(self._handle, [item])
            finally:
                self._next()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        loop = asyncio.get_running_loop()
        queued: _Queued[ItemT, ResultT] = _Queued(item, weight, loop.create_future())
        self._waiting.append(queued)
        try:
            return await asyncio.shield(queued.future)
        except asyncio.CancelledError:
            if not queued.future.done() and not queued.taken:
                queued.abandoned = True
                raise
            with anyio.CancelScope(shield=True):  # as in `DiskThreads.run`
                while not queued.future.done():  # in a call under way: wait for it
                    try:
                        await asyncio.shield(queued.future)
                    except BaseException:  # cancelled again, or its own error: dropped below
                        continue
            if not queued.future.cancelled():
                queued.future.exception()  # retrieved: the caller is cancelled instead
            raise

    def _next(self) -> None:
        """After a call: hand what waits to the drainer, or be idle."""
        if any(not queued.abandoned for queued in self._waiting):
            if self._drainer is None or self._drainer.done():
                self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._waiting.clear()
            self._busy = False

    async def _drain(self) -> None:
        """Handle the waiting items, a batch per call, until none waits."""
        batch: list[_Queued[ItemT, ResultT]] = []
        try:
            while True:
                batch = self._take()
                if not batch:
                    break
                try:
                    outcomes = await self._run_sync(self._handle, [q.item for q in batch])
                except Exception as exc:  # not one item's: every item of the call gets it
                    outcomes = [exc, *(_copy_of(exc) for _ in batch[1:])]
                for queued, outcome in zip(batch, outcomes, strict=True):
                    if queued.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        queued.future.set_exception(outcome)
                    else:
                        queued.future.set_result(outcome)
                batch = []
        finally:  # cancelled (its loop is ending): so are the callers still waiting
            for queued in (*batch, *self._waiting):
                queued.future.cancel()
            self._waiting.clear()
            self._busy = False

    def _take(self) -> list[_Queued[ItemT, ResultT]]:
        batch: list[_Queued[ItemT, ResultT]] = []
        weight = 0
        while self._waiting and len(batch) < self.max_items:
            queued = self._waiting[0]
            if queued.abandoned:
                self._waiting.popleft()
                continue
            if batch and weight + queued.weight > self.max_weight:
                break
            self._waiting.popleft()
            queued.taken = True
            batch.append(queued)
            weight += queued.weight
        return batch


class QuickCalls:
    """Decides which short disk calls run in the event loop's own thread, with no hop.

    A hop to a worker thread and back costs two thread wake-ups: more than the copy of a
    small file between folders of this machine's disks (measured in this VM: a sequential
    get of a 4 KiB file ~310 µs with the hop, ~215 µs without). A call may skip it only
    for a folder that a worker thread has found on a filesystem of this machine
    (``is_local``; a network filesystem can make any call wait for seconds, and the event
    loop must never wait like that), and while such calls stay quick: ``strikes`` calls
    slower than ``slow`` seconds within ``window`` seconds, or one ten times slower, send
    them all to the threads for ``pause`` seconds. Only calls that waited count (the thread
    slept: a disk under load, a cold read): one slow because the machine gave the thread's
    CPU to another process meanwhile, or because the kernel had much to do, would be as
    slow in a worker thread, and the hop would only add to it. Nor does one call a little
    slow among many: it would cost every call after it the hop for ``pause`` seconds.

    Example:
        >>> quick = QuickCalls(is_local_filesystem)
        >>> quick.learn("/data/out")  # in a worker thread, after a call there
        >>> if quick.allows("/data/out"):
        ...     quick.run(copy, "a.bin", "/data/out/a.bin")

    """

    #: At most this many folders are remembered; past it, they are all forgotten.
    MAX_FOLDERS = 1024

    def __init__(
        self,
        is_local: Callable[[str], bool],
        *,
        slow: float = 0.001,
        strikes: int = 3,
        window: float = 1.0,
        pause: float = 10.0,
    ) -> None:
        self._is_local = is_local
        self.slow = slow
        self.window = window
        self.pause = pause
        #: Each folder looked at, and whether it is on a filesystem of this machine.
        self._folders: dict[str, bool] = {}
        self._paused_until = 0.0
        #: When the last ``strikes`` slow calls ended (`time.monotonic`).
        self._slow_calls: collections.deque[float] = collections.deque(maxlen=strikes)

    def __repr__(self) -> str:
        paused = " (paused)" if time.monotonic() < self._paused_until else ""
        return f"<QuickCalls {len(self._folders)} folders{paused}>"

    @staticmethod
    def folder_of(path: os.PathLike[str] | str) -> str:
        """Return the key of ``path``'s folder: absolute (a relative path hangs on the cwd)."""
        return os.path.dirname(os.path.abspath(path))

    def learn(self, folder: str) -> None:
        """Look whether ``folder`` is on a local filesystem (blocking: in a worker thread)."""
        if folder in self._folders:
            return
        if len(self._folders) >= self.MAX_FOLDERS:
            self._folders.clear()
        self._folders[folder] = self._is_local(folder)

    def allows(self, folder: str | None = None) -> bool:
        """Whether a short call into ``folder`` may run here, in the event loop's thread.

        ``None``: a call that touches no folder but the drive's own (the caller knows that
        one is on this machine's disks).
        """
        if folder is not None and not self._folders.get(folder, False):
            return False
        return not self._paused_until or time.monotonic() >= self._paused_until

    def run(self, func: Callable[..., T], *args: Any) -> T:
        """Call ``func(*args)`` here; if calls are slow, send the next ones to threads a while."""
        started = time.perf_counter()
        waits = _thread_waits()
        try:
            return func(*args)
        finally:
            took = time.perf_counter() - started
            if took > self.slow and _thread_waits() > waits:
                self._struck(took)

    def _struck(self, took: float) -> None:
        now = time.monotonic()
        slow_calls = self._slow_calls
        slow_calls.append(now)
        if took > 10 * self.slow or (
            len(slow_calls) == slow_calls.maxlen and now - slow_calls[0] <= self.window
        ):
            self._paused_until = now + self.pause
            slow_calls.clear()
