"""The async `Drive`: the one implementation of every drive operation.

`SyncDrive` runs these same coroutines, on an event loop of the calling thread's own (or, for
watches and open files, on a background loop thread); no logic lives there.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import functools
import inspect
import logging
import os
import re
import resource
import select
import selectors
import stat
import sys
import threading
import time
import warnings
import weakref
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import (
    Any,
    BinaryIO,
    Concatenate,
    Literal,
    NamedTuple,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    overload,
)

import anyio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import MasterNotFoundError

from . import _paths, _progress, _watch
from ._client import (
    CLUSTER_MOVING,
    CLUSTER_PASSING,
    Connected,
    RedisClient,
    connect,
    refusal_at_accept,
)
from ._config import (
    DriveConfig,
    ResolvedConfig,
    absolute_root,
    check_component_name,
    check_flag,
    check_group_name,
    check_seconds,
    parse_drive_id,
    redact_url,
)
from ._events import parse_id, steady_now
from ._exceptions import (
    AmbiguousPathError,
    ConfigTypeError,
    DriveClosedError,
    DriveError,
    DriveFileExistsError,
    DriveFileNotFoundError,
    DriveIsADirectoryError,
    DriveNotADirectoryError,
    DriveTimeoutError,
    DriveTypeError,
    DriveUnavailableError,
    ExplainedOSError,
    GroupInUseError,
    IndexLostError,
    InvalidConfigError,
    InvalidPathError,
    PathTypeError,
    VersionConflictError,
    shorten,
    storage_error,
)
from ._files import DriveReader, DriveWriter, Opening, byte_view, check_data_type, check_mode
from ._index import DIRECT_WRITES, WRITES, Index, Keys, PutOutcome
from ._models import Buffer, FileInfo, FolderInfo, GcReport, GroupInfo
from ._progress import OnCopied, ProgressCallback, ProgressReporter
from ._server import ensure_server, forget_server, running_server, server_runs
from ._storage import (
    ACCESS_AS_EFFECTIVE,
    PATH_MAX,
    DiskStore,
    FileIdentity,
    NewFile,
    NotARegularFileError,
    OpenNew,
    OtherVersionError,
    PathClash,
    Staged,
    SyncTogether,
    committed_version,
    disk_path_bytes,
    is_local_filesystem,
    upload_identity,
)
from ._tasks import to_its_end
from ._threads import (
    CallBatcher,
    DiskThreads,
    NoThreads,
    QuickCalls,
    shared_disk_threads,
)
from ._watch import DEFAULT_CLAIM_IDLE, WaitingRoom, Watch
from ._wire import IN_ANOTHER_LOOP, LOOP_CLOSED_BY_HAND, Wire

__all__ = ["Drive"]

logger = logging.getLogger("asyncdrive")

P = ParamSpec("P")
T = TypeVar("T")
DriveT = TypeVar("DriveT", bound="Drive")

#: How much longer than its timeout a get waiting for its file may take to look at the index.
_LOOK_MARGIN = 1.0
#: How long a commit lock lives if its holder dies, and how long to wait for one.
LOCK_TTL = 30.0
LOCK_TIMEOUT = 60.0
#: write_bytes of at most this many bytes stages them before the first check.
_SMALL_WRITE = 1 << 20
#: How many paths a drive remembers the last version it put or deleted of (`Drive._remember`).
_REMEMBERED_PATHS = 4096
#: Files of a folder put stored side by side: their round trips and fsyncs overlap
#: (measured: a folder of 1,000 small files went in 1.6-2.7x faster, on 2 cores).
FOLDER_CONCURRENCY = 8
#: A folder put stores its small files in batches of at most this many files, or of this
#: many bytes once reached: a few calls for a whole batch (see `Drive._put_batch`).
_PUT_BATCH_FILES = 32
_PUT_BATCH_BYTES = 16 << 20
#: How long closing a connection may try to release the locks a cancellation or an outage
#: kept from being released (s): a server out of reach must not hold the close up.
_RELEASE_AT_CLOSE_MAX = 1.0
#: A recursive delete removes its files in batches of at most this many.
_DELETE_BATCH_FILES = 64
#: `Drive.gc` settles the stray files and the entries without bytes it finds in batches of
#: at most this many (a few round trips and worker-thread calls a batch).
_GC_BATCH = 64
#: A folder get copies its files in worker-thread calls of at most this many files, or of
#: this many bytes once reached (a cancelled get waits for the call under way to finish).
_COPY_BATCH_FILES = 64
_COPY_BATCH_BYTES = 16 << 20
#: `watch(claim_idle=)` at least this long (s; ~30,000 years) is refused: as inf, it would
#: leave a dead member's events forever, and the server counts no more than 2**63 ms.
_CLAIM_IDLE_MAX = 1e12
#: A drive measures the server's clock again, beside its calls, once its measure (or its
#: last try) is this old (s): the clocks of two machines drift apart, and may be set.
_CLOCK_MEASURED_FOR = 60.0
#: A measure of the server's clock whose round trip took longer (s) is not taken.
_CLOCK_ROUND_TRIP_MAX = 1.0
#: How many paths a get of a folder looks up in one round trip (and holds at a time).
_LOOKUP_CHUNK = 1000
#: Gets of files up to this size made by concurrent tasks share worker-thread calls, where
#: the root is on a local disk (see `_Connection.small_copies`); a larger file's copy, or
#: one from a network filesystem, has a call of its own.
_SHARED_COPY_MAX = 1 << 20
#: A get or `read_bytes` of one file up to this size copies or reads it in the event
#: loop's own thread, where that is safe and quick (see `_Connection.quick_calls`): the hop
#: to a worker thread and back costs more than such a copy.
_QUICK_COPY_MAX = 64 << 10
#: How long a read looks a path up again while the index still names a version whose bytes
#: are not on disk (a commit on its way; a writer died between its rename and its commit,
#: or a power cut lost the index's last commits: then for good, until gc() settles it).
_STUCK_FOR = 2.0
#: How long a read goes on looking a path up again while writers replace it faster than
#: it can be read (each look finding a newer version).
_REPLACED_FOR = 10.0

StrPath = str | os.PathLike[str]

# What a forked child inherited from its parent (connections, SyncDrive caller loops): never
# used, closed nor freed, as their cleanup would reach the parent's sockets (see _reset).
_inherited_after_fork: list[object] = []
#: The event loops drives connected in (see `_isolate_inherited_loops`).
_loops_with_connections: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _isolate_inherited_loops() -> None:
    """In a forked child: give each event loop a drive used an epoll instance of its own.

    Parent and child share their epoll instances (one open file): a socket that the child
    unregisters from one, as it closes or collects a transport it inherited (at its exit,
    say, a drive it never used), is gone from the parent's loop too, which then never hears
    from it again: the parent's next call waited for its whole timeout. Each loop gets a new
    instance holding what the old one did; the child's copy of the old one is closed.
    """
    for loop in list(_loops_with_connections):
        selector = getattr(loop, "_selector", None)
        shared: Any = getattr(selector, "_selector", None)
        if not isinstance(selector, selectors.EpollSelector) or not isinstance(shared, _EPOLL):
            continue  # (not asyncio's epoll loop: uvloop, another platform)
        own = select.epoll()
        for key in selector.get_map().values():
            events = (select.EPOLLIN if key.events & selectors.EVENT_READ else 0) | (
                select.EPOLLOUT if key.events & selectors.EVENT_WRITE else 0
            )
            with contextlib.suppress(OSError):
                own.register(key.fd, events)
        selector._selector = own  # type: ignore[attr-defined]
        shared.close()


_EPOLL: Any = getattr(select, "epoll", ())
if _EPOLL:  # (Linux)
    os.register_at_fork(after_in_child=_isolate_inherited_loops)


@dataclass
class _Connection:
    """What a drive holds once used in a process: resolved settings, Redis, the disk."""

    config: ResolvedConfig
    url: str
    connected: Connected
    client: RedisClient
    index: Index
    store: DiskStore
    #: The server's clock (ms since the epoch) at `steady_now()` ``clock_at``, measured at
    #: connect, and the uncertainty of that measure (ms): see `server_ms`.
    server_ms_at: float = 0.0
    clock_at: float = 0.0
    #: When (`steady_now()`) a measure beside the calls was last begun (see `_connection`).
    clock_tried_at: float = 0.0
    clock_error_ms: float = 0.0
    #: When (monotonic) the sentinels were last asked which server is primary (Sentinel).
    primary_checked_at: float = 0.0
    #: Whether the index was found present, and the disk marker written, in this connection.
    index_checked: bool = False
    disk_marked: bool = False
    #: False where the server's ACL denies its user every write (a reader's): a commit is
    #: then refused at its script's first write, before it changed anything.
    may_write: bool = True
    #: Run disk calls in the event loop's own thread: for a loop that runs one call at a
    #: time for a thread that waits on it (a SyncDrive's caller loop), where a hop to a
    #: worker thread would only add two thread wake-ups.
    inline: bool = False
    #: The process's disk threads (see `_SharedDiskThreads`), held while this connection is open.
    disk: DiskThreads | None = field(default=None, init=False)
    #: Whether `aclose` was called; and the generator that its event loop's shutdown
    #: closes, closing the connection (see `close_with_loop`).
    closed: bool = field(default=False, init=False)
    loop_end: AsyncGenerator[None, None] | None = field(default=None, init=False)
    #: The event loop it was opened in (see `close_with_loop`).
    loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    #: Work under way beside the calls, by name (see `start_chore`).
    chores: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)
    #: The gets waiting for their files (``timeout=``), made on first need.
    waiting_room: WaitingRoom | None = field(default=None, init=False)
    #: The copies of small files out of the drive (gets), each (file, local path,
    #: overwrite): those of concurrent tasks go together, a worker-thread call at a time.
    small_copies: CallBatcher[tuple[FileInfo, Path, bool], bool] = field(init=False)
    #: Whether a small file's read (from a root on this machine's disks), or a get's copy
    #: into a local folder (found on them by an earlier get's worker thread), may be made in
    #: the event loop's thread: while such calls stay quick.
    quick_calls: QuickCalls = field(init=False)

    def __post_init__(self) -> None:
        if not self.inline:
            self.disk = shared_disk_threads.acquire()
        self.quick_calls = QuickCalls(is_local_filesystem)
        self.small_copies = CallBatcher(
            self.run_sync,
            functools.partial(_copy_each, self.store, self.quick_calls),
            max_items=_COPY_BATCH_FILES,
            max_weight=_COPY_BATCH_BYTES,
        )
        self.small_creates: CallBatcher[_NewFile, _Created] = CallBatcher(
            self.run_sync,
            functools.partial(_install_new_each, self.store),
            max_items=_PUT_BATCH_FILES,
            max_weight=_PUT_BATCH_BYTES,
        )
        self.store.clock = self.server_time  # new versions' mtimes: see `server_ms`

    def server_ms(self, at: float) -> float:
        """Return the server's clock (ms since the epoch) at `steady_now()` ``at``.

        Carried from its last measure (`measure_clock`) by a clock that setting this
        machine's time does not move: by the wall clock, a watch made after a step forward
        of 2 s missed the events of its first 2 s, and after a step back replayed older ones.
        """
        return self.server_ms_at + (at - self.clock_at) * 1000

    def server_time(self) -> float:
        """Return the server's clock now, in seconds since the epoch (see `server_ms`)."""
        return self.server_ms(steady_now()) / 1000

    async def measure_clock(self) -> None:
        """Measure the server's clock again (one round trip, on the drive's `Wire` if any).

        The clocks of two machines drift apart (~4 s a day at 50 ppm, without NTP), and the
        server's may be set: measured at a watch's start, and beside the calls once a
        minute old (`measure_clock_quietly`), for the mtimes of new versions. A measure
        whose round trip took over `_CLOCK_ROUND_TRIP_MAX` is not taken: the last one stays
        (a stalled server; or a `SyncDrive`, whose loop runs only in its calls, paused
        between two of them with the measure under way).
        """
        measured = await _clock_of(self.client, self.index.keys.events, self.connected.wire)
        if measured[2] <= _CLOCK_ROUND_TRIP_MAX * 500 + 1:  # (the error: half the round trip)
            self.server_ms_at, self.clock_at, self.clock_error_ms = measured

    async def measure_clock_quietly(self) -> None:
        """`measure_clock` for at most a second; failing (an outage), the last one stays."""
        with anyio.move_on_after(_CLOCK_ROUND_TRIP_MAX):
            try:
                await self.measure_clock()
            except Exception as exc:  # (the calls meet the outage and say it)
                logger.debug("could not measure the server's clock: %s", exc)

    async def run_sync(
        self, func: Callable[..., T], *args: Any, dropped: Callable[[T], object] | None = None
    ) -> T:
        """Run a blocking disk call in a worker thread, at most `DISK_THREADS` at once.

        Like ``anyio.to_thread.run_sync``: the call sees the caller's context variables, and
        a cancellation waits for the thread to finish (a disk call cannot be interrupted,
        and must not go on behind the caller's back; a large copy stops at its next step,
        see `_threads.stop_request`), its result then handed to ``dropped`` where it holds
        what must be released. An ``inline`` connection runs it here.
        """
        if self.disk is None:
            return func(*args)  # (returned at once: no cancellation drops its result)
        try:
            return await self.disk.run(func, *args, dropped=dropped)
        except NoThreads:  # the interpreter is exiting and starts no threads: do it here
            return func(*args)

    @contextlib.contextmanager
    def side_by_side(self) -> Iterator[None]:
        """Give an inline connection the disk threads while it stores many files at once.

        Its calls are run one at a time by a thread that waits on each (see ``inline``):
        for the duration, the files of one call can use the disk side by side.
        """
        if self.disk is not None:
            yield
            return
        self.disk = shared_disk_threads.acquire()
        try:
            yield
        finally:
            pool, self.disk = self.disk, None
            shared_disk_threads.release(pool)

    def start_chore(self, name: str, chore: Coroutine[Any, Any, None]) -> None:
        """Run ``chore`` beside the calls, unless one of that ``name`` is under way.

        For what no call should wait for (asking the sentinels, releasing locks): its
        errors are its own to handle. `aclose` cancels those under way.
        """
        if name in self.chores:
            chore.close()
            return
        task = asyncio.get_running_loop().create_task(chore, name=f"asyncdrive-{name}")
        self.chores[name] = task
        task.add_done_callback(lambda _: self.chores.pop(name, None))

    async def aclose(self) -> None:
        """Close the Redis connections and let the disk threads go.

        Locks whose release was cut short (a cancellation, an outage: `Index.unreleased`)
        are released first, for a moment at most: each would else stand in its path's
        writers' way until its lease ends (30 s). So are those of calls ``asyncio.run``
        cancelled as it ended (tasks left running), which closes this connection then.
        """
        self.closed = True
        cut_short: BaseException | None = None
        if self.index.unreleased:
            try:  # (to its end, a second at most, whatever cancels the caller: then raised)
                await to_its_end(self._release_unreleased_for_a_moment())
            except BaseException as exc:
                cut_short = exc
        for chore in list(self.chores.values()):
            chore.cancel()
            with contextlib.suppress(BaseException):
                await chore
        try:
            await to_its_end(self.connected.aclose())
        finally:
            if self.disk is not None:
                shared_disk_threads.release(self.disk)
            loop_end, self.loop_end = self.loop_end, None
            if loop_end is not None:
                await loop_end.aclose()
        if cut_short is not None:
            raise cut_short

    async def _release_unreleased_for_a_moment(self) -> None:
        """`Index.release_unreleased`, for `_RELEASE_AT_CLOSE_MAX` at most; errors: logged."""
        with anyio.move_on_after(_RELEASE_AT_CLOSE_MAX):
            try:
                await self.index.release_unreleased()
            except Exception as exc:
                logger.debug("could not release locks at close: %s", exc)

    async def close_with_loop(self, drive: Drive) -> None:
        """Have the running event loop close this connection when it shuts down.

        An async generator started in a loop is one the loop finalizes when it shuts down
        (``asyncio.run``'s end): this one's end closes the connection then, and lets its
        drive connect afresh in a later loop, where a connection of a closed loop could
        neither be used nor closed.
        """
        self.loop = asyncio.get_running_loop()
        self.loop_end = _closes_with_its_loop(self, weakref.ref(drive))
        await anext(self.loop_end)


async def _closes_with_its_loop(
    conn: _Connection, drive: weakref.ref[Drive]
) -> AsyncGenerator[None, None]:
    """See `_Connection.close_with_loop`."""
    try:
        yield
    finally:
        if not conn.closed:  # not closed by its drive: the loop is shutting down
            owner = drive()
            if owner is not None and owner._conn is conn:
                owner._conn = None
            conn.loop_end = None  # (this generator: running)
            await conn.aclose()


def _in_the_current_folder(local: Path) -> str:
    """Return `` in '<cwd>'`` for a relative local path (in messages), "" for an absolute one."""
    return "" if local.is_absolute() else f" in {os.getcwd()!r}"


def _path_argument(args: tuple[object, ...]) -> str | os.PathLike[str] | None:
    """Return the first path among a call's arguments, the one its errors name."""
    return next((a for a in args if isinstance(a, str | os.PathLike)), None)


def _check_argument_types(
    drive: str, args: tuple[object, ...], kwargs: dict[str, Any], takes_data: bool
) -> None:
    """Raise `DriveTypeError` for a call's path, ``to``, data or ``progress`` of a wrong type.

    Before anything else: a TypeError from deep in the call would name neither the drive,
    nor the argument, nor the fix.
    """
    _paths.check_path_type(drive, args[0] if args else kwargs.get("path", "."))
    to = kwargs.get("to")
    if to is not None:
        _paths.check_path_type(drive, to, "to=")
    if takes_data and (len(args) > 1 or "data" in kwargs):  # (write_bytes)
        check_data_type(drive, args[1] if len(args) > 1 else kwargs["data"])
    for flag in ("exist_ok", "overwrite", "recursive"):
        check_flag(drive, flag, kwargs.get(flag, False))
    progress = kwargs.get("progress")
    if progress is not None and not callable(progress):
        raise DriveTypeError(
            f"Drive {drive!r}: progress={shorten(repr(progress), 100)} is not callable: pass "
            "a function of (bytes done, bytes in all), or None."
        )


#: The calls that never change the drive (a get copies to the local disk only).
_READS = frozenset(
    {"list", "list_info", "exists", "info", "_copies", "read_bytes", "get", "_get_file",
     "_open_reader", "groups"}
)  # fmt: skip


def _redis_errors_as_unavailable(
    method: Callable[Concatenate[DriveT, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[DriveT, P], Coroutine[Any, Any, T]]:
    """Turn what fails under ``method`` into DriveErrors that name the drive and the path.

    redis-py connection failures become `DriveUnavailableError`, and OSErrors of the disk
    (full, read-only, ...) `DriveStorageError`; each call cleans up what it wrote itself.
    """
    doing = {
        "_open_reader": "open", "_open_writer": "open", "_commit_upload": "close",
        "_get_file": "get",
    }.get(method.__name__, method.__name__)  # fmt: skip
    named = [*inspect.signature(method).parameters][1:3]  # (after self)
    takes_path, takes_data = named[:1] == ["path"], named == ["path", "data"]
    #: Whether a call of it may change the drive (what a close cuts short may stand then).
    changes = method.__name__ not in _READS

    async def wrapper(self: DriveT, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if takes_path:
            _check_argument_types(self.name, args, kwargs, takes_data)
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop: the call says so (`_connection`)
            task = None
        calls = self._calls
        if task is not None:  # (in flight: aclose() cancels it and waits, see there)
            calls[task] = calls.get(task, 0) + 1
        try:
            return await method(self, *args, **kwargs)
        except asyncio.CancelledError:
            if task is None or task not in self._cut_by_close:
                raise
            self._cut_by_close.discard(task)
            if task.uncancel() > 0:  # cancelled by someone else too: theirs goes on
                raise
            path = _path_argument(args)
            raise self._closed_error(
                f"{doing} of {os.fspath(path)!r}" if path else doing, changes=changes
            ) from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if self._closed:  # aclose() cut the connection under the call (a writer's commit)
                path = _path_argument(args)
                raise self._closed_error(
                    f"{doing} of {os.fspath(path)!r}" if path else doing, changes=changes
                ) from exc
            raise self._unavailable(exc) from exc
        except redis.exceptions.ResponseError as exc:  # an error reply: the server refused
            raise self._refused(exc) from exc
        except CLUSTER_MOVING as exc:
            raise self._unavailable(exc) from exc
        except OSError as exc:
            # Not the disk: ours, and the timeouts and broken connections of the builtins.
            if isinstance(exc, DriveError | TimeoutError | ConnectionError):
                raise
            to = kwargs.get("to")  # put's drive path, get's local one
            to = to if isinstance(to, str | os.PathLike) else None
            drive_dir = None if self._conn is None else self._conn.store.base
            path = _path_argument(args)
            reading = False if method.__name__ == "_open_writer" else None
            raise storage_error(
                self.name, exc, doing, path, to, drive_dir, reading=reading
            ) from exc
        finally:
            if task is not None:
                if calls[task] == 1:
                    del calls[task]
                    left = self._calls_left  # the last call aclose() waits for has left:
                    waited = self._cut_by_close & calls.keys()
                    if left is not None and not left.done() and not waited:
                        left.set_result(None)
                else:
                    calls[task] -= 1
            # The task holds the exception raised here, whose traceback holds this frame:
            # let go of it (see `_sync._CallerLoop._run_task`).
            task = None

    functools.update_wrapper(wrapper, method)
    return wrapper


def _loop_of(task: asyncio.Task[Any] | None) -> asyncio.AbstractEventLoop | None:
    return None if task is None else task.get_loop()


NOT_IN_ASYNCIO = (
    "A Drive runs in an asyncio event loop (asyncio.run(), or anyio.run() with its asyncio "
    "backend), and none runs in this thread: trio is not supported. From blocking code, "
    "use a SyncDrive."
)

#: The end of an error reply raised in a script: which line of ours it was.
_SCRIPT_LINE = re.compile(r" script: on @user_script:\d+\.?$")
#: Under Sentinel, a drive in use asks the sentinels at most this often (s) which server is
#: primary, and leaves one they no longer name (see `Connected.follow_primary`).
PRIMARY_CHECK_INTERVAL = 0.5
#: A drive that made no call for this long (s) asks before its next one (up to
#: `PRIMARY_CHECK_INTERVAL`): it would be made on the old primary of a failover meanwhile,
#: and lost with it, seconds after the switch.
_IDLE_FOR_A_FAILOVER = 3 * PRIMARY_CHECK_INTERVAL


def _denied(exc: redis.exceptions.ResponseError) -> bool:
    """Return whether an error reply is the server's ACL denying its user a command."""
    text = str(exc)
    return isinstance(exc, redis.exceptions.NoPermissionError) or (
        "NOPERM" in text or text.startswith("ACL failure") or "no permissions" in text
    )


def _before_writing(exc: redis.exceptions.ResponseError) -> bool:
    """Return whether an error reply refuses a script before it writes anything."""
    return isinstance(
        exc,
        (
            redis.exceptions.OutOfMemoryError,
            redis.exceptions.ReadOnlyError,
            redis.exceptions.NoScriptError,
            *CLUSTER_PASSING,  # (the command went to no node, or ran on none)
        ),
    ) or str(exc).startswith(("BUSY", "MISCONF", "LOADING", "NOREPLICAS"))


def _not_committed(conn: _Connection, refused: redis.exceptions.ResponseError) -> bool:
    """Tell whether a commit script's error reply means it wrote nothing.

    Refused before its first write (out of memory, a replica, busy, a denied write where
    all are: see `_Connection.may_write`). Other errors may come after writes (Redis does
    not roll a script back): what the put installed stays for the index, gc() settles it.
    """
    return _before_writing(refused) or (_denied(refused) and not conn.may_write)


async def _reachable(conn: _Connection) -> None:
    """Connect for a commit, unless connected; raise where the server cannot be reached.

    Then no commit was sent, and the caller undoes what its put installed. A commit that
    fails once sent (the connection dropped) may or may not have happened: the install
    stays, and gc() keeps or undoes it against the index once Redis is back. (On a
    Cluster, whose client connects as it sends, no such step: gc() settles it there.)
    """
    if conn.index.wire is not None:
        await conn.index.wire.connect()


#: In redis-py's MasterNotFoundError: what a sentinel that could not be reached met.
_SENTINEL_UNREACHED = re.compile(
    r"(?:ConnectionError|TimeoutError)(?::\s*|\(['\"])(.*?)(?=['\"]\)|, <redis\.|$)"
)

#: How a stopped embedded server starts again (a drive that connected never restarts it).
_RESTART = "create a new Drive (or SyncDrive) to start it again"

#: How to give a Redis user what a drive needs (an ACL user has no keys nor channels at first).
_ACL_FIX = (
    "Give it the drive's keys and the commands asyncdrive runs, e.g. ACL SETUSER <user> "
    "~asyncdrive:* &asyncdrive:* +@read +@write +@stream +@scripting +@transaction "
    "+@connection +info +time (or +@all)."
)

#: What a get's copy reports as the caller's to fix: a local file or folder in the way (or
#: above the target), or the drive's file gone.
_GET_REFUSED = (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


class Drive:
    """A shared folder named ``lit://<name>``, usable from any process that knows the name.

    File bytes live on a shared disk under ``root``; the index, ownership, locks and change
    events live in Redis. Creating a drive does no I/O: it connects on first use.

    Example:
        >>> async with Drive("lit://drive_1") as drive:
        ...     _ = Path("a.txt").write_text("Hello World !")
        ...     await drive.put("a.txt")
        ...     await drive.list(".")
        ['a.txt']

    Args:
        id: the drive id, ``lit://<name>``; the name is 1-128 letters, digits, ``.``, ``_``
            or ``-``, not starting with ``.``.
        component_name: who is writing; each component owns its own copies. Default:
            ``$ASYNCDRIVE_COMPONENT``, else ``"default"``.
        allow_duplicates: let several components put the same path, each keeping its own
            copy. When False, a path put by one component cannot be put by another.
        root: the shared directory holding the bytes. Default: ``$ASYNCDRIVE_ROOT``, else a
            per-user data directory.
        redis_url: the Redis server holding the index. Default: ``$ASYNCDRIVE_REDIS_URL``,
            else an embedded server started (or reused) for the root.

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
        name = parse_drive_id(id)
        if component_name is not None:
            check_component_name(component_name)
        check_flag(name, "allow_duplicates", allow_duplicates)
        if redis_url is not None and not isinstance(redis_url, str):  # (else a bare TypeError)
            raise ConfigTypeError(
                f"Drive {name!r}: redis_url={shorten(repr(redis_url), 100)} must be a str, "
                f"not {type(redis_url).__name__}."
            )
        self._config = DriveConfig(
            name=name,
            component_name=component_name,
            allow_duplicates=bool(allow_duplicates),
            root=absolute_root(root, name),
            redis_url=redis_url,
        )
        self._reset()
        self._closed = False
        #: See `_Connection.inline`; set by SyncDrive on the drives of its caller loops.
        self._disk_inline = False
        #: Whether connecting may start the root's embedded server (a new drive's first
        #: connection): not for the drive of a new thread of a SyncDrive that connected
        #: before, which, as any drive that did, does not start it again itself.
        self._starts_server = True

    def _reset(self) -> None:
        # Connection state belongs to one process: after fork the child starts afresh. The
        # parent's connections must not be closed or freed here: their cleanup would go
        # through the event loop's epoll, which parent and child share, and unregister the
        # parent's sockets. Keep them, untouched, for the child's lifetime (as redis-py's
        # own pools do after a fork).
        if getattr(self, "_conn", None) is not None:
            _inherited_after_fork.append(self._conn)
        self._pid = os.getpid()
        self._conn: _Connection | None = None
        #: The group watches whose member joined its group (see `_leave_groups`).
        self._group_members: weakref.WeakSet[Watch] = weakref.WeakSet()
        #: Connected (in this process) and not closed since: collected so, it warns, even
        #: where the end of an event loop closed its connection meanwhile.
        self._unclosed = False
        #: The loop connecting (or that connected) the drive, and its lock for that: a lock
        #: of another loop could not wake this one (see `_connect_lock_of_this_loop`).
        self._connect_lock: tuple[asyncio.AbstractEventLoop, anyio.Lock] | None = None
        self._connect_lock_guard = threading.Lock()
        #: The tasks in a call of this drive (how many deep), and those aclose() cancelled.
        self._calls: dict[asyncio.Task[Any], int] = {}
        self._cut_by_close: set[asyncio.Task[Any]] = set()
        #: Set by the last call aclose() cancelled as it leaves (see there).
        self._calls_left: asyncio.Future[None] | None = None
        #: (component, path) -> the version this drive last put (> 0) or deleted (< 0) of it,
        #: newest last (see `_remember`).
        self._last_versions: dict[tuple[str, str], int] = {}
        #: Whose copy a read takes, where it names none and this component owns one among
        #: others (the fsspec filesystem's component_name); else the one owner's, as ever.
        self._read_first: str | None = None
        #: The bytes a path's longest file path on the disk takes besides the path's own
        #: (the root, drive and component folders, a backup's metadata name): see
        #: `_check_fits_on_disk`. Known at the first put.
        self._disk_overhead: int | None = None

    # -- identity ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The drive id, e.g. ``"lit://drive_1"``."""
        return f"lit://{self._config.name}"

    @property
    def name(self) -> str:
        """The drive name, e.g. ``"drive_1"``."""
        return self._config.name

    @property
    def component_name(self) -> str:
        """The component this drive writes as, resolved in the current process."""
        return self._resolved().component_name

    @property
    def allow_duplicates(self) -> bool:
        """Whether several components may each keep a copy of the same path."""
        return self._config.allow_duplicates

    @property
    def root(self) -> Path:
        """The shared directory holding the bytes, resolved in the current process."""
        return self._resolved().root

    def _redis_timeout(self) -> float:
        conn = self._conn
        return conn.config.redis_timeout if conn is not None else self._resolved().redis_timeout

    def _configured_url(self) -> str:
        """Return the Redis URL the settings name, for messages ("the embedded server")."""
        with contextlib.suppress(DriveError):
            return self._resolved().redis_url or "the embedded server"
        return "the server"

    def _resolved(self) -> ResolvedConfig:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn.config
        return self._config.resolve()

    def __repr__(self) -> str:
        try:
            config: ResolvedConfig | DriveConfig = self._resolved()
        except DriveError:  # a malformed setting in the environment: show what was given
            config = self._config
        parts = [repr(self.id), f"component_name={config.component_name!r}"]
        if config.allow_duplicates:
            parts.append("allow_duplicates=True")
        if config.root is not None:
            parts.append(f"root={str(config.root)!r}")
        if config.redis_url:
            parts.append(f"redis_url={redact_url(config.redis_url)!r}")
        closed = " [closed]" if getattr(self, "_closed", False) else ""  # (as a socket's)
        return f"{type(self).__name__}({', '.join(parts)}){closed}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle the arguments as given, never connections: defaults are resolved again
        # in the process that unpickles, so a worker writes under its own component name.
        return (_restore, (type(self), self._config))

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:  # (its calls would all raise: say so here, as httpx's clients do)
            raise self._closed_error()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the drive's Redis connections. Idempotent; the drive cannot be used after.

        Calls of other tasks still in flight are cancelled, and raise `DriveClosedError`
        once the steps they are in (that must end once begun) have ended. Raises
        RuntimeError, changing nothing, in another event loop than the one the drive's
        connection serves while that one runs: close it there.
        """
        conn = self._conn
        owner = None if conn is None or self._pid != os.getpid() else conn.loop
        if owner is not None and owner.is_running() and owner is not asyncio._get_running_loop():
            raise RuntimeError(
                f"Drive {self.name!r}: aclose() was awaited in another event loop than the "
                "one its connection serves, which still runs: close it in that loop (e.g. "
                "asyncio.run_coroutine_threadsafe(drive.aclose(), loop)). Nothing was closed."
            )
        self._closed = True
        self._unclosed = False
        try:
            current = asyncio.current_task()
        except RuntimeError:  # (no asyncio loop: no calls either)
            current = None
        loop = _loop_of(current)
        calls = [t for t in self._calls if t is not current and t.get_loop() is loop]
        try:
            if calls:
                for task in calls:
                    if task not in self._cut_by_close:  # (not twice: one uncancel each)
                        self._cut_by_close.add(task)
                        task.cancel()
                # Until each has left its call of this drive (not until its task ends: it
                # may go on, or be the one awaiting this close).
                assert loop is not None
                left = self._calls_left  # (another aclose() may wait already: the same)
                if left is None or left.done():
                    self._calls_left = left = loop.create_future()
                if not self._cut_by_close & self._calls.keys() and not left.done():
                    left.set_result(None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(left), LOCK_TTL)
        finally:  # (cancelled meanwhile too: closed all the same)
            self._cut_by_close.difference_update(calls)
            conn, self._conn = self._conn, None
            # (Its loop closed by hand: its connections went with it, and cannot be closed.)
            lost = conn is not None and conn.loop is not None and conn.loop.is_closed()
            if conn is not None and self._pid == os.getpid() and not lost:
                try:
                    await to_its_end(self._leave_groups(conn))
                finally:
                    await conn.aclose()

    async def _leave_groups(self, conn: _Connection) -> None:
        """Have the group members of the drive's open watches leave, as their close would.

        Their watches end with the drive (their calls cut: DriveClosedError); left, their
        members stayed in their groups until idle for `IDLE_MEMBER_MS` (and the watches,
        collected, warned of it). A second at most; an error (an outage) leaves them there.
        """
        members, self._group_members = list(self._group_members), weakref.WeakSet()
        with anyio.move_on_after(_RELEASE_AT_CLOSE_MAX):
            for watch in members:
                try:
                    await watch.leave_group(conn)
                except (redis.exceptions.RedisError, OSError) as exc:
                    logger.debug("a group member could not leave at close: %s", exc)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_unclosed", False) and self._pid == os.getpid():
            _warn(
                f"unclosed Drive {self.id!r}: use 'async with' or 'await drive.aclose()'",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    async def _connection(
        self, *, check_index: bool = True, writing: str | None = None
    ) -> _Connection:
        """Return the drive's connection, connecting first if needed.

        ``writing``: what the caller will write (for the message), refused at once where
        the server's ACL lets the drive's user only read (see `_check_permissions`).
        """
        if self._closed:
            raise self._closed_error()
        if self._pid != os.getpid():
            self._reset()
        if self._conn is None:
            async with self._connect_lock_of_this_loop():
                if self._closed:  # while it waited for another task's connection
                    raise self._closed_error()
                if self._conn is None:
                    conn = await self._connect()
                    if self._closed:  # aclose() came while it connected: nobody closes it
                        await conn.aclose()
                        raise self._closed_error()
                    await conn.close_with_loop(self)
                    _loops_with_connections.add(asyncio.get_running_loop())
                    self._conn, self._unclosed = conn, True
        conn = self._conn
        if conn.loop is not None and conn.loop.is_closed():  # (on every kind of server)
            raise RuntimeError(LOOP_CLOSED_BY_HAND)
        if conn.connected.kind == "sentinel":
            now = time.monotonic()
            since = now - conn.primary_checked_at
            if since >= PRIMARY_CHECK_INTERVAL:
                conn.primary_checked_at = now
                if since < _IDLE_FOR_A_FAILOVER:  # in use: beside the call (it may hang)
                    conn.start_chore("primary", conn.connected.follow_primary())
                else:  # idle across a failover, maybe: before the call, for a moment at most
                    with anyio.move_on_after(PRIMARY_CHECK_INTERVAL):
                        await conn.connected.follow_primary()
        if check_index and not conn.index_checked:
            # Files on disk but no index: the server lost its data. Say so rather than serve
            # an empty drive. The disk's marker is written after a first commit, so once it
            # is seen the index is read again: a first commit by another writer between the
            # two reads is no loss.
            if (
                not await conn.index.is_indexed()
                and await conn.run_sync(conn.store.in_use)
                and not await conn.index.is_indexed()
            ):
                raise self._index_lost(conn)
            conn.index_checked = True
        now = steady_now()
        if now - max(conn.clock_at, conn.clock_tried_at) > _CLOCK_MEASURED_FOR:
            # Once a minute: a measure failed, or not taken, is not tried again at each call
            # (an outage would cost each call one). Beside the call, one at a time; in it
            # where the loop runs only in calls (a SyncDrive's: a measure left under way
            # past the call's end kept its connection from being seen closed meanwhile).
            conn.clock_tried_at = now
            if conn.inline:
                await conn.measure_clock_quietly()
            else:
                conn.start_chore("clock", conn.measure_clock_quietly())
        if conn.index.unreleased:  # locks an outage kept: let them go, once it is over
            conn.start_chore("unlocks", conn.index.release_unreleased())
        if writing is not None and not conn.may_write:
            raise InvalidConfigError(
                f"Drive {self.name!r}: Redis at {redact_url(conn.url)} lets its user only "
                f"read the drive's keys ({conn.index.keys.prefix}*): it cannot {writing}; "
                f"nothing was written. {_ACL_FIX}"
            )
        return conn

    def _connect_lock_of_this_loop(self) -> anyio.Lock:
        """Return the lock that tasks of the running loop take to connect the drive.

        Raises RuntimeError where another loop, still running, has it: that loop connects
        the drive (or did), whose connections cannot serve this one; or where no asyncio
        loop runs (trio, say).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(f"Drive {self.name!r}: {NOT_IN_ASYNCIO}") from None
        with self._connect_lock_guard:  # (threads: each thread's loop may come here at once)
            if self._connect_lock is not None:
                owner, lock = self._connect_lock
                if owner is loop:
                    return lock
                if owner.is_running():
                    raise RuntimeError(f"Drive {self.name!r}: {IN_ANOTHER_LOOP}")
            lock = anyio.Lock()
            self._connect_lock = (loop, lock)
            return lock

    async def _connect(
        self, *, again: bool = False, unanswered_since: float | None = None
    ) -> _Connection:
        """Connect to the drive's server (the embedded one started, if needed and allowed).

        ``again``: a second try, once the embedded server did not answer the first: its
        failure is the call's (a server that answers too slowly for the timeout would
        otherwise be tried for ever). ``unanswered_since``: when the first timed out
        (`time.monotonic`): a hung server is reported that much sooner.
        """
        config = self._config.resolve()
        embedded = config.redis_url is None
        if config.redis_url is not None:
            url = config.redis_url
        elif self._starts_server:
            try:
                url = await ensure_server(config.root, unanswered_since)
            except DriveUnavailableError as exc:  # (said of the root: said of the drive too)
                raise DriveUnavailableError(f"Drive {self.name!r}: {exc}") from None
        elif (url_running := await running_server(config.root)) is not None:
            url = url_running
        else:
            raise await self._not_started(config.root)
        connected: Connected | None = None
        tried_at = time.monotonic()
        try:
            connected = await connect(url, timeout=config.redis_timeout)
            events = Keys(config.name).events
            # (By redis-py: its errors, a refusal at the first command, are what follows
            # expects; the Wire connects at its first call.)
            server_ms_at, clock_at, clock_error_ms = await _clock_of(connected.client, events)
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"Drive {self.name!r}: {exc}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            if connected is not None:
                await to_its_end(connected.aclose())
            refusal = await anyio.to_thread.run_sync(refusal_at_accept, url)
            if refusal is not None:  # (it runs, and refuses: maxclients, say)
                raise self._unavailable(redis.exceptions.ConnectionError(refusal), url) from exc
            if not embedded or again:
                raise self._unavailable(exc, url) from exc
            # The embedded server went away since this process last saw it: start it again
            # (or, for a drive that may not, find it where another process started it).
            forget_server(config.root)
            if not self._starts_server:
                running = await running_server(config.root)
                if running is None or running == url:  # (not elsewhere now)
                    raise await self._not_started(config.root, exc) from exc
            timed_out = isinstance(exc, (redis.exceptions.TimeoutError, TimeoutError))
            return await self._connect(again=True, unanswered_since=tried_at if timed_out else None)
        except (redis.exceptions.RedisError, AttributeError, TypeError, ValueError) as exc:
            # An answer, but not Redis's (another service at that port; redis-py fails to
            # parse it), or a setting of the URL the server refuses (a database number).
            if connected is not None:
                await to_its_end(connected.aclose())
            if isinstance(exc, redis.exceptions.ResponseError) and _denied(exc):
                raise InvalidConfigError(
                    f"Drive {self.name!r}: the server at {redact_url(url)} refused the "
                    f"connection's setup to its user ({exc}). {_ACL_FIX}"
                ) from exc
            if isinstance(exc, redis.exceptions.ResponseError) and "DB index" not in str(exc):
                raise self._refused(exc, url) from exc  # (busy, loading, a cluster down...)
            refused = isinstance(exc, redis.exceptions.ResponseError)
            raise (InvalidConfigError if refused else DriveUnavailableError)(
                f"Drive {self.name!r}: the server at {redact_url(url)} "
                + (
                    f"refused the connection's setup ({exc})"
                    if refused
                    else f"does not answer as a Redis server does ({type(exc).__name__}: {exc})"
                )
                + ". Check the Redis URL (argument or ASYNCDRIVE_REDIS_URL): its host, port "
                "and database number."
            ) from exc
        except BaseException:  # cancelled (the drive's close, a timeout): nothing left open
            if connected is not None:
                await to_its_end(connected.aclose())
            raise
        logger.debug("drive %s connected to %s", config.name, redact_url(url))
        client = connected.client
        maxlen, max_age = config.retention
        try:  # (whatever fails now closes the connection: a failed call leaves none open)
            index = Index(
                client,
                config.name,
                events_maxlen=maxlen,
                events_max_age=max_age,
                wire=connected.wire,
                readers=connected.readers,
            )
            may_write = True
            if not embedded:
                await _check_server_settings(client, url)
                may_write = await self._check_permissions(index, url)
            return _Connection(
                config=config,
                url=url,
                connected=connected,
                client=client,
                index=index,
                may_write=may_write,
                store=DiskStore(config.root, config.name),
                inline=self._disk_inline,
                server_ms_at=server_ms_at,
                clock_at=clock_at,
                clock_error_ms=clock_error_ms,
            )
        except BaseException:
            await to_its_end(connected.aclose())
            raise

    async def _check_permissions(self, index: Index, url: str) -> bool:
        """Refuse a server whose ACL denies its user a command asyncdrive runs on the drive.

        Checked before any is run: a commit script denied one halfway would leave half a
        commit (Redis does not roll scripts back). A user denied every write may read:
        returns False for it.
        """
        try:
            denied = await index.denied_commands()
        except redis.exceptions.NoPermissionError as exc:
            raise InvalidConfigError(
                f"Drive {self.name!r}: Redis at {redact_url(url)} denies its user ({exc}) "
                "what asyncdrive needs: to run scripts (EVAL, EVALSHA) on the drive's keys "
                f"({index.keys.prefix}*). {_ACL_FIX}"
            ) from exc
        except redis.exceptions.ResponseError:
            return True  # (a server that cannot tell: each command is checked as it runs)
        # A user that may not write at all (a reader's) is refused cleanly, at a script's
        # first write; one that may write some things only would be refused halfway.
        # Where scripts that only read run as such (EVALSHA_RO), EVALSHA runs only those
        # that write: a user denied it (one allowed only to read the keys, '%R~') reads,
        # and of the writes only those made outside scripts could then be made at all.
        optional = {"EVALSHA"} if index.read_only_scripts else set()
        writes = DIRECT_WRITES if denied & optional else WRITES
        if denied - WRITES - optional or (denied & writes and writes - denied):
            raise InvalidConfigError(
                f"Drive {self.name!r}: Redis at {redact_url(url)} denies its user "
                f"{', '.join(sorted(denied))} on the drive's keys "
                f"({index.keys.prefix}*). {_ACL_FIX}"
            )
        return not denied & (writes | optional)

    async def _check_not_lost(self, conn: _Connection) -> None:
        """On an answer of nothing: raise `IndexLostError` if the index seen before is gone.

        The check on connecting sees a loss from before; this one, on the path of a miss
        (one round trip more there), sees a loss since, so that a long-lived drive never
        serves an empty drive for a lost one.
        """
        if conn.index.seen_index and not await conn.index.is_indexed():
            raise self._index_lost(conn)

    def _index_lost(self, conn: _Connection | None) -> IndexLostError:
        url = redact_url(conn.url) if conn else "(closed)"
        base = str(conn.store.base) if conn else str(self.root)
        wrong_url = ""
        if conn is not None and conn.config.redis_url is not None:
            wrong_url = (
                " (If the URL names another server or database than the one holding the "
                "index, fix the URL instead: a rebuild there would make a second index.)"
            )
        return IndexLostError(
            f"Drive {self.name!r}: the Redis server at {url} has no "
            f"index for this drive, but {base!r} holds its files: the "
            "server lost its data (restarted without persistence, flushed or "
            "replaced). Run 'await drive.rebuild_index()' or 'asyncdrive "
            f"rebuild-index {self.id}' to rebuild the index from the disk.{wrong_url}"
        )

    def _closed_error(
        self, cut_short: str | None = None, *, changes: bool = True
    ) -> DriveClosedError:
        """Return the error of a closed drive; ``cut_short`` names a call its aclose() cut.

        ``changes``: that call may have changed the drive (not a watch, say).
        """
        if cut_short is None:
            return DriveClosedError(
                f"Drive {self.name!r} is closed; create a new Drive to use it again."
            )
        may_stand = " (what it changed may stand: look again)" if changes else ""
        return DriveClosedError(
            f"Drive {self.name!r} was closed (aclose()) before its {cut_short} finished"
            f"{may_stand}; create a new Drive to use it again."
        )

    def _unavailable(self, exc: BaseException, url: str | None = None) -> DriveUnavailableError:
        url = url or (self._conn.url if self._conn else None) or self._configured_url()
        text = str(exc)
        sentinel = url.partition("://")[0].endswith("+sentinel")
        if (
            "NOAUTH" in text
            or "HELLO must be called with the client already auth" in text
            or text.startswith("Authentication required")
        ):
            fix = (
                "The server asks for a password, and the Redis URL has none: give it as "
                "redis://user:password@host:port (or redis://:password@host:port)."
            )
            if sentinel:
                fix = (
                    "A server asks for a password it was not given: the sentinels' goes in "
                    "the URL's query (?sentinel_password=...), the primary's before its "
                    "hosts (redis+sentinel://user:password@host:port/service)."
                )
            exc = redis.exceptions.AuthenticationError("authentication required")
        elif isinstance(exc, MasterNotFoundError):
            # (redis-py's text: each sentinel's client's repr, " - ", and what it met)
            unreached = _SENTINEL_UNREACHED.findall(text)
            if unreached and len(unreached) == (text.count(" - ") or len(unreached)):
                fix = (
                    "No sentinel of the URL could be reached: check that they run, and "
                    "their hosts and ports in the URL (redis+sentinel://host:port,...)."
                )
                exc = MasterNotFoundError(f"{text.split(' : ')[0]}: {unreached[0]}")
            else:
                fix = (
                    "No sentinel named a primary for that service: check the service name "
                    "in the URL (redis+sentinel://host:port/service), that the URL names "
                    "sentinels (not a Redis server), and their password "
                    "(?sentinel_password=...)."
                )
                exc = MasterNotFoundError(text.split(" : ")[0])  # (not the sentinels' reprs)
        elif "slots are not covered" in text:  # (redis-py's, at its first connection)
            fix = (
                "Its cluster does not serve every slot: it is being set up (are slots "
                "assigned to its nodes?), resharded or failing over. Retry once CLUSTER INFO "
                "says cluster_state:ok on its nodes."
            )
        elif isinstance(exc, (*CLUSTER_MOVING, *CLUSTER_PASSING)):
            fix = (
                "Its cluster is moving the drive's keys between nodes (resharding) or failing "
                "over: retry once it is done."
            )
        elif isinstance(exc, redis.exceptions.AuthenticationError):
            fix = "Check the user name and password in the Redis URL: the server refused them."
        elif "max number of clients reached" in text:
            fix = (
                "The server serves its most clients already (maxclients): raise maxclients, "
                "or close drives not in use (each holds a few connections)."
            )
        elif self._conn is not None and self._conn.config.redis_url is None:
            if isinstance(exc, redis.exceptions.BusyLoadingError):
                fix = "The drive's embedded server is loading its data (restarted): retry soon."
            elif server_runs(self._conn.store.root):  # (not stopped: no answer in time)
                fix = (
                    "The drive's embedded server runs, but did not answer in time (stalled, "
                    "overloaded, or this process was paused meanwhile): retry."
                )
            else:
                fix = (
                    "The drive's embedded server stopped (asyncdrive.stop_server, or it was "
                    f"killed: see {str(self._conn.store.root / 'server' / 'server.log')!r}); "
                    f"{_RESTART}."
                )
        else:
            fix = (
                "Check that the server is running and reachable from this machine, or "
                "configure no Redis URL (argument or ASYNCDRIVE_REDIS_URL) to use the "
                "embedded server."
            )
            if url.startswith("rediss"):  # (a server without TLS does not answer its hello)
                fix += " With rediss:// (TLS), check that the server speaks TLS on that port."
        # (Sentinel's errors hold whole reprs: shortened. A timeout of ours says nothing.)
        detail = str(exc) or ("no answer in time" if isinstance(exc, TimeoutError) else repr(exc))
        return DriveUnavailableError(
            f"Drive {self.name!r}: cannot reach Redis at {redact_url(url)} "
            f"({shorten(detail, 300)}). {fix}"
        )

    def _check_component(self, component_name: str, path: StrPath) -> None:
        """Raise the error of an invalid ``component_name=``, naming the drive and the path."""
        try:
            check_component_name(component_name)
        except InvalidConfigError as exc:
            reading = os.fspath(path)
            raise type(exc)(f"Drive {self.name!r}: cannot read {reading!r}: {exc}") from None

    async def _not_started(
        self, root: Path, exc: BaseException | None = None
    ) -> DriveUnavailableError:
        """Return the error of a drive that may not start its embedded server, not answering.

        Stopped (no process), or stalled (it runs: a ping found no answer in time).
        """
        if await anyio.to_thread.run_sync(server_runs, root):
            detail = f" ({exc or type(exc).__name__})" if exc is not None else ""
            return DriveUnavailableError(
                f"Drive {self.name!r}: cannot reach the embedded server of {str(root)!r}"
                f"{detail}. It runs, but did not answer in time (stalled, or overloaded): "
                "retry."
            )
        return DriveUnavailableError(
            f"Drive {self.name!r}: the embedded server of {str(root)!r} stopped "
            f"(asyncdrive.stop_server, or it was killed: see "
            f"{str(root / 'server' / 'server.log')!r}); {_RESTART}."
        )

    def _refused(self, exc: redis.exceptions.ResponseError, url: str | None = None) -> DriveError:
        """Return the `DriveError` of an error reply: the server refused a command."""
        url = redact_url(url or (self._conn.url if self._conn else None) or self._configured_url())
        at = f"Drive {self.name!r}: Redis at {url}"
        text = _SCRIPT_LINE.sub("", str(exc))  # (not the line of our script it ran)
        if _denied(exc):
            return InvalidConfigError(f"{at} refused a command to its user: {text}. {_ACL_FIX}")
        if isinstance(exc, redis.exceptions.AskError | redis.exceptions.TryAgainError):
            fix = "its cluster is moving the drive's keys between nodes (resharding): retry"
        elif isinstance(exc, redis.exceptions.ClusterDownError):  # (MasterDownError too)
            fix = "its cluster is failing over or down: retry"
        elif isinstance(exc, redis.exceptions.OutOfMemoryError):
            fix = "raise its maxmemory, or free memory there; nothing was stored"
        elif isinstance(exc, redis.exceptions.ReadOnlyError):
            fix = (
                "it is a read-only replica: give the URL of the primary (or of Sentinel, "
                "redis+sentinel://...); nothing was stored"
            )
        elif text.startswith("BUSY"):
            fix = "it is busy running another client's script: retry"
        elif text.startswith("MISCONF"):
            fix = "it cannot save its data (see its log): fix its disk, then retry"
        elif text.startswith("NOREPLICAS"):
            fix = (
                "it has fewer in-sync replicas than its min-replicas-to-write asks (a "
                "failover under way, or a replica down): retry; nothing was stored"
            )
        elif "unknown command" in text:
            return InvalidConfigError(
                f"{at} does not know a command asyncdrive sends ({text}): it is no Redis "
                "(6.2 or later) or Valkey server. Check the Redis URL (argument or "
                "ASYNCDRIVE_REDIS_URL): a Sentinel's is redis+sentinel://host:port/<service>."
            )
        else:
            fix = "see that server's message, and its log"
        return DriveUnavailableError(f"{at} refused a command ({text}): {fix}.")

    # -- errors ------------------------------------------------------------------------------

    def _not_found(
        self, path: str, owners: list[str], component: str | None, *, deleting: bool = False
    ) -> DriveError:
        who = f"component {component!r} has" if component else "there is"
        if path in ("", "."):  # (a recursive delete of the whole drive)
            return DriveFileNotFoundError(f"Drive {self.name!r}: {who} no file in the drive.")
        message = f"Drive {self.name!r}: {who} no file {path!r}"
        if owners and deleting:
            message += f" (owned by {', '.join(map(repr, owners))}; a component deletes only "
            message += "its own copies: use a Drive created with that component_name)."
        elif owners and component is not None:  # (given, and not one of them)
            choices = " or ".join(f"component_name={owner!r}" for owner in owners)
            message += f" (owned by {', '.join(map(repr, owners))}: pass {choices})."
        elif owners:
            message += f" (owned by {', '.join(map(repr, owners))}; pass component_name= "
            message += "to choose one)."
        else:
            message += f"; check the path with list() (e.g. list({_parent(path)!r}))."
        return DriveFileNotFoundError(message)

    def _pick(self, path: str, owners: dict[str, FileInfo], component: str | None) -> FileInfo:
        if component is not None:
            if component in owners:
                return owners[component]
            raise self._not_found(path, sorted(owners), component)
        if len(owners) == 1:
            return next(iter(owners.values()))
        if self._read_first in owners:
            return owners[self._read_first]
        if not owners:
            raise self._not_found(path, [], None)
        names = sorted(owners)
        raise AmbiguousPathError(
            f"Drive {self.name!r}: {path!r} is owned by several components "
            f"({', '.join(map(repr, names))}); pass component_name= to choose one.",
            names,
        )

    def _local_path(self, local: StrPath, argument: str) -> Path:
        r"""Return the local path ``local`` (the ``argument`` of a call); refuse a NUL in it.

        The system would cut a name there (``"a\0b"`` is ``"a"``), or refuse it with a
        bare `ValueError`.
        """
        text = os.fspath(local)
        if not isinstance(text, str):  # (a PathLike of bytes)
            raise PathTypeError(
                f"Drive {self.name!r}: the local path {local!r} ({argument}=) is bytes: "
                "pass a str or a PathLike of one (os.fsdecode() decodes bytes)."
            )
        if "\0" in text:
            raise InvalidPathError(
                f"Drive {self.name!r}: the local path {text!r} ({argument}=) holds a NUL "
                "character, which no file name can; pass another path."
            )
        return Path(text)

    def _path(
        self, path: StrPath, *, allow_root: bool = False, file: bool = False, new: bool = False
    ) -> str:
        """Return the normal form of a drive path (see `_paths.normalize`).

        ``file``: one that may name a file only; ``new``: a path to put.
        """
        if file and _paths.names_folder(path):
            raise _paths.not_a_file(self.name, path)
        norm = _paths.normalize(path, drive=self.name, allow_root=allow_root, new=new)
        if new:
            self._check_fits_on_disk(norm)
        return norm

    def _check_fits_on_disk(self, norm: str) -> None:
        """Raise `InvalidPathError` if a new file at ``norm`` would be past PATH_MAX on disk.

        Its paths there (its metadata's backup's, the longest) hold the root, the drive's
        and the component's names: under a long root, a path within the drive's limit
        could be stored, then neither replaced nor cleaned up after.
        """
        overhead = self._disk_overhead
        if overhead is None:
            config = self._resolved()
            overhead = disk_path_bytes(config.root, self.name, config.component_name, "")
            self._disk_overhead = overhead
        if overhead + len(norm) * 4 < PATH_MAX:  # (most paths are far too short to matter)
            return
        config = self._resolved()
        length = disk_path_bytes(config.root, self.name, config.component_name, norm)
        if length >= PATH_MAX:
            room = PATH_MAX - 1 - (length - len(norm.encode()))
            error = InvalidPathError(
                f"Drive {self.name!r}: {shorten(norm)!r} is too long to store under "
                f"{shorten(str(config.root))!r}: its files' paths on the disk would reach "
                f"{length} bytes, past the system's {PATH_MAX - 1}; use a path of at most "
                f"{max(room, 0)} bytes there, or a shorter root."
            )
            error.reason = f"too long to store under the drive's root (at most {room} bytes)."
            raise error

    def _file_not_folder(self, path: StrPath, drive_path: str) -> DriveNotADirectoryError:
        return DriveNotADirectoryError(
            f"Drive {self.name!r}: {os.fspath(path)!r} ends with '/', which names a folder, "
            f"but {drive_path!r} is a file; drop the '/'."
        )

    # -- writing -----------------------------------------------------------------------------

    @_redis_errors_as_unavailable
    async def put(
        self,
        path: StrPath,
        *,
        to: StrPath | None = None,
        if_version: int | None = None,
        exist_ok: bool = True,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Copy a local file, or a folder recursively, into the drive at the same path.

        ``path`` is relative to the current directory (or anywhere, with ``to``). A re-put by
        the same component replaces the file (a new version); readers see the old or the new
        file, never a mix. A folder's small files are stored in batches of up to 32 (one
        round trip locks them, one worker-thread call stores them, one round trip commits
        them, each file on its own), its larger files one by one, up to 8 batches or files
        at a time, in no set order; if one fails, no more start, and its error is raised
        once those under way are done (they stay stored).

        Example:
            >>> Path("a.txt").write_text("Hello World !")
            13
            >>> await drive.put("a.txt")
            >>> await drive.put("a.txt", if_version=1)  # only if nobody replaced version 1
            >>> await drive.put("/data/run-7/model.pt", to="ckpt/7.pt")
            >>> await drive.put("ckpt", progress=lambda done, total: print(done, total))
            0 14
            14 14

        Args:
            path: the local file or folder, and the drive path it goes to.
            to: put it at this drive path instead (``path`` may then be any local path);
                ending in ``/``, into that folder under its local name, as ``cp`` does.
            if_version: replace the file only if this component's copy has this version
                now (0: only if it has none), atomically; else `VersionConflictError`.
            exist_ok: False: create only; fail with `VersionConflictError` (a
                `DriveFileExistsError`) if this component already has the file.
            progress: called as ``progress(done, total)`` in bytes, in this event loop's
                thread, as the bytes are copied: ``(0, total)`` first where the total is
                known before copying (a folder, a large file), ``(total, total)`` last,
                before the commit of a file. An exception it raises stops the put (nothing
                of the file it was putting is stored) and is raised here.

        Raises:
            DriveFileNotFoundError: there is no local file or folder at ``path``; or
                ``if_version=N`` (N > 0) was given, and this component has no copy.
            DriveFileExistsError: another component owns the path (see ``allow_duplicates``),
                or a folder stands at the path in the drive.
            DriveNotADirectoryError: a file stands where a folder of the path should be.
            VersionConflictError: ``if_version`` is not the current version.
            InvalidPathError: ``path`` is absolute, leaves the drive or is empty.

        """
        # The local file the path names, as the system opens it ('link/../a.txt' is the
        # link's folder's parent's a.txt): the drive path alone is taken lexically.
        local = self._local_path(path, "path")
        if to is not None and _paths.names_folder(to):  # into that folder, as cp does
            name = _local_name(path)
            drive_path = _paths.join(self._path(to, allow_root=True), name)
            drive_path = self._path(drive_path, new=True)
        elif to is not None:
            drive_path = self._path(to, new=True)
        else:
            try:
                drive_path = self._path(path, new=True)
            except InvalidPathError as exc:  # a local path outside: a drive path is to=
                if not exc.reason.startswith(("drive paths are relative", "'..' would leave")):
                    raise
                name = PurePosixPath(os.fspath(path)).name or "<name>"
                why = "absolute" if exc.reason[0] == "d" else "outside the current folder"
                outside = InvalidPathError(
                    f"Drive {self.name!r}: cannot put {os.fspath(path)!r} at the same path in "
                    f"the drive: it is {why}. Name its drive path with to= (to={name!r}, say)."
                )
                outside.reason = exc.reason
                raise outside from None
        precondition = self._precondition(drive_path, if_version, exist_ok)
        conn = await self._connection(writing=f"put {os.fspath(path)!r}")
        with _progress.reporting(progress) as reporter:
            await self._put_local(
                conn, local, drive_path, precondition, if_version, reporter,
                as_folder=_paths.names_folder(path),
            )  # fmt: skip

    async def _put_local(
        self,
        conn: _Connection,
        local: Path,
        drive_path: str,
        precondition: str,
        if_version: int | None,
        reporter: ProgressReporter | None,
        *,
        as_folder: bool = False,
    ) -> None:
        """`put` once its arguments are checked: the local file or folder ``local``.

        ``as_folder``: the local path was written with a trailing ``/``; a file there is
        refused (as ``cp file/ x`` is).
        """
        on_copied = None if reporter is None else reporter.add
        # The common case first: one small local file, found, staged and installed in the
        # one worker-thread call that follows the lock. Anything else (a folder, a large or
        # missing file, a refused check) takes the general way below, which finds out what
        # is at ``local`` first and reports it in that order.
        with contextlib.suppress(_NotASmallFile):
            if as_folder:
                raise _NotASmallFile
            await self._put(
                conn, drive_path, functools.partial(_stage_small_file, conn.store, local),
                precondition, small=True, tentative=True,
                before_commit=None if reporter is None else reporter.complete,
            )  # fmt: skip
            if reporter is not None:
                reporter.finish()
            return
        files = await conn.run_sync(_local_files, local)
        if files is None:
            kind = await conn.run_sync(_special_kind, local)
            if kind is not None:
                raise InvalidPathError(
                    f"Drive {self.name!r}: cannot put {drive_path!r}: the local "
                    f"{str(local)!r} is {kind}, not a regular file or folder; put copies "
                    "those only."
                )
            where = _in_the_current_folder(local)
            raise DriveFileNotFoundError(
                f"Drive {self.name!r}: cannot put {drive_path!r}: there is no local file or "
                f"folder {str(local)!r}{where}."
                + ("" if where == "" else " Paths are relative to the current directory.")
            )
        if not files:
            raise DriveFileNotFoundError(
                f"Drive {self.name!r}: cannot put {drive_path!r}: the local folder "
                f"{str(local)!r} holds no files."
            )
        if as_folder and files[0][0] == "":
            raise DriveNotADirectoryError(
                f"Drive {self.name!r}: cannot put {drive_path!r}: the local path "
                f"{str(local) + '/'!r} ends with '/', which names a folder, but "
                f"{str(local)!r} is a file; drop the '/'."
            )
        for rel, _ in files:  # every name checked before any file is stored
            if rel:
                self._check_name_in_folder(local, drive_path, rel)
        if if_version is not None and [rel for rel, _ in files] != [""]:
            raise InvalidConfigError(
                f"Drive {self.name!r}: if_version applies to one file, and {drive_path!r} is "
                "a local folder; put its files one by one."
            )
        if reporter is not None:
            reporter.expect(sum(size for _, size in files))

        def drive_path_of(rel: str) -> str:
            return _paths.join(drive_path, rel) if rel else drive_path

        failed_at = ""  # the file a folder put failed at, where told (stored alone)

        async def put_some(batch: list[tuple[str, int]]) -> None:
            nonlocal failed_at
            if len(batch) == 1 and batch[0][1] > _SMALL_WRITE:
                rel, _ = batch[0]
                stage = functools.partial(
                    conn.store.stage_file, local / rel if rel else local, on_copied=on_copied
                )
                # A put of this one file: its last report before its commit, even if the
                # file shrank while copied (its last bytes reported were then not the total).
                last = reporter.complete if reporter is not None and not rel else None
                try:
                    await self._put(
                        conn, drive_path_of(rel), stage, precondition,
                        on_copied=on_copied, before_commit=last,
                    )  # fmt: skip
                except OSError:
                    failed_at = failed_at or f" ({os.path.join(local, rel)!r})"
                    raise
                return
            jobs = [(drive_path_of(rel), local / rel if rel else local) for rel, _ in batch]
            await self._put_batch(conn, jobs, precondition, on_copied)

        try:
            await _side_by_side(conn, _put_batches(files), put_some)
        except OSError as exc:  # the disk's, for one of a folder's files: the others, said
            if isinstance(exc, DriveError | TimeoutError | ConnectionError) or not files[0][0]:
                raise
            raise storage_error(
                self.name, exc, "put a folder", local, drive_path, conn.store.base,
                left=f"That file{failed_at} was not stored; of the folder's {len(files)} "
                "files, those stored before it or beside it stay (see "
                f"list({drive_path!r}, recursive=True)), the rest were not stored.",
            ) from exc  # fmt: skip
        if reporter is not None:
            reporter.finish()

    def _check_name_in_folder(self, local: Path, drive_path: str, rel: str) -> None:
        """Raise `InvalidPathError` if a folder put's file ``rel`` is no drive path."""
        try:
            norm = _paths.normalize(_paths.join(drive_path, rel), drive=self.name, new=True)
            self._check_fits_on_disk(norm)
        except InvalidPathError as exc:
            error = InvalidPathError(
                f"Drive {self.name!r}: cannot put the folder {str(local)!r}: its file {rel!r} "
                f"has a name the drive refuses ({exc.reason.rstrip('.')}). Rename or move "
                "that file; nothing was stored."
            )
            error.reason = exc.reason
            raise error from None

    async def _put_batch(
        self,
        conn: _Connection,
        jobs: Sequence[tuple[str, Path]],
        precondition: str,
        on_copied: OnCopied | None = None,
    ) -> None:
        """Put small local files, each a (drive path, local file), in a few calls for all.

        What `_put` does for one file, for many at once: one round trip asks for their
        commit locks (with the same checks), one worker-thread call stages and installs
        them, fsyncing each folder once for all of its files, and one round trip commits
        them. Each file is stored or refused on its own, atomically; the first error, in
        the order of ``jobs``, is raised once the others are done. ``on_copied``: see
        `DiskStore.stage_file`.
        """
        component = conn.config.component_name
        index = conn.index
        paths = [path for path, _ in jobs]
        asked = await index.lock_put_many(
            component, paths, conn.config.allow_duplicates, precondition, ttl=LOCK_TTL
        )
        errors: dict[int, BaseException] = {}
        granted = [
            (number, token, int(outcome.detail))
            for number, (token, outcome) in enumerate(asked)
            if outcome.status == "ok"
        ]
        waiting = []  # paths another writer holds: waited for once this batch's are done
        for number, (_, outcome) in enumerate(asked):
            if outcome.status == "locked":
                waiting.append(number)
            elif outcome.status != "ok":
                errors[number] = self._refusal(paths[number], outcome, precondition)
        # Between the first install and the last commit, a cancellation would leave the
        # disk and the index disagreeing, as in `_put`: finished whatever cancels.
        if granted:
            errors.update(await to_its_end(
                self._install_and_commit_batch(conn, jobs, granted, precondition, on_copied)
            ))  # fmt: skip
        # Never waiting while holding locks: another batch holding some of the paths waited
        # for here might be waiting for one of these (two puts of one folder at once).
        for number in waiting:
            token, outcome = await self._lock_put(conn, paths[number], precondition)
            if outcome.status != "ok":
                errors[number] = self._refusal(paths[number], outcome, precondition)
                continue
            one = [(number, token, int(outcome.detail))]
            errors.update(await to_its_end(
                self._install_and_commit_batch(conn, jobs, one, precondition, on_copied)
            ))  # fmt: skip
        if errors:
            raise errors[min(errors)]

    async def _install_and_commit_batch(
        self,
        conn: _Connection,
        jobs: Sequence[tuple[str, Path]],
        granted: Sequence[tuple[int, str, int]],
        precondition: str,
        on_copied: OnCopied | None,
    ) -> dict[int, BaseException]:
        """Stage, install and commit the ``granted`` jobs (number, lock token, version).

        Returns the errors of those that failed, by job number; their locks are released.
        """
        component = conn.config.component_name
        index, store = conn.index, conn.store

        def install_all() -> list[_Installed | Exception]:
            with store.sync_together(len(granted)) as together:
                return install_each(together)

        def install_each(together: SyncTogether) -> list[_Installed | Exception]:
            results: list[_Installed | Exception] = []
            unsettled: list[_Unsettled] = []
            for place, (number, _, current) in enumerate(granted):
                path, local = jobs[number]
                stage = functools.partial(store.stage_file, local, on_copied=on_copied)
                try:
                    # As concurrent new files (`_install_new_each`): where no file is at the
                    # path, written in place (or linked in), made durable once all are.
                    created = _install_new(
                        store, component, path, stage, current + 1,
                        sync=False, start_writing=not together.planned,
                    )  # fmt: skip
                    if isinstance(created, Staged):  # a file there: replaced, backed up
                        info, backup, identity = _install_staged(
                            store, component, path, created, current + 1, sync_folder=False
                        )
                        unsynced: _Unsynced = "folder"
                    else:
                        (info, identity, unsynced), backup = created, None
                except Exception as exc:  # this file's: the others go on
                    results.append(exc)
                    continue
                results.append((info, backup, identity))
                unsettled.append(_Unsettled(place, component, path, identity, backup, unsynced))
            _settle_installs(store, unsettled, results, together)
            return results

        try:
            results = await conn.run_sync(install_all)
        except BaseException:  # not one file's error: none is known to be installed or not
            await index.unlock_many(component, [(jobs[n][0], t) for n, t, _ in granted])
            raise
        errors: dict[int, BaseException] = {}
        installed: list[tuple[int, str, int, _Installed]] = []
        for (number, token, current), result in zip(granted, results, strict=True):
            if isinstance(result, PathClash):
                cleared = await self._clear_the_way(conn, jobs[number][0])
                errors[number] = self._clash_error(jobs[number][0], result, cleared=cleared)
            elif isinstance(result, Exception):
                errors[number] = result
            else:
                installed.append((number, token, current, result))
        if errors:
            await index.unlock_many(component, [(jobs[n][0], t) for n, t, _ in granted
                                                if n in errors])  # fmt: skip
        if not installed:
            return errors
        commits = [
            (jobs[number][0], current, info.size, info.mtime, info.checksum, token)
            for number, token, current, (info, _, _) in installed
        ]
        locks = [(jobs[n][0], t) for n, t, _, _ in installed]

        def restore_all() -> None:  # (each, whatever the others meet: gc() settles those)
            for number, _, _, (_, backup, identity) in installed:
                with contextlib.suppress(OSError):
                    store.restore(backup, component, jobs[number][0], installed=identity)

        try:
            await _reachable(conn)
        except BaseException:  # no commit was sent: undone, locks released once it can be
            index.unlock_later(component, locks)
            with contextlib.suppress(Exception):  # (the error to say is the server's)
                await conn.run_sync(restore_all)
            raise
        try:
            outcomes = await index.commit_put_many(
                component, conn.config.allow_duplicates, precondition, commits
            )
        except BaseException:
            # As in `_install_and_commit`: gc() settles them. Not undone on a refusal, even
            # one before its script wrote: a script a file, those before it may have
            # committed (the first refusal is what is raised).
            with contextlib.suppress(Exception):
                await index.unlock_many(component, locks)
            raise
        backups: list[Path | None] = []
        for (number, token, _, done), outcome in zip(installed, outcomes, strict=True):
            try:
                await self._refused_commit(conn, jobs[number][0], precondition, token, done,
                                           outcome)  # fmt: skip
            except DriveError as exc:
                errors[number] = exc
            else:
                backups.append(done[1])
        await self._finish_installs(conn, backups)
        return errors

    @_redis_errors_as_unavailable
    async def write_bytes(
        self,
        path: StrPath,
        data: Buffer,
        *,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> FileInfo:
        """Store ``data`` as the file ``path`` and return its new `FileInfo`.

        ``if_version`` and ``exist_ok`` are those of `put`.

        Example:
            >>> info = await drive.write_bytes("b.bin", b"...")
            >>> info.size
            3
            >>> (await drive.write_bytes("b.bin", b"new", if_version=info.version)).version
            2

        """
        drive_path = self._path(path, file=True, new=True)
        precondition = self._precondition(drive_path, if_version, exist_ok)
        view = byte_view(data)  # its bytes, whatever the items: a size in bytes
        conn = await self._connection(writing=f"write {os.fspath(path)!r}")
        stage = functools.partial(conn.store.stage_bytes, view)
        return await self._put(
            conn, drive_path, stage, precondition, small=len(view) <= _SMALL_WRITE
        )

    def _precondition(self, path: str, if_version: int | None, exist_ok: bool) -> str:
        check_flag(self.name, "exist_ok", exist_ok)  # (open() too)
        if if_version is None:
            return "" if exist_ok else "absent"
        wrong_type = isinstance(if_version, bool) or not isinstance(if_version, int)
        if wrong_type or if_version < 0:
            raise (ConfigTypeError if wrong_type else InvalidConfigError)(
                f"Drive {self.name!r}: if_version={if_version!r} for {path!r} must be a "
                "version number (FileInfo.version), or 0 for 'only if absent'."
            )
        if if_version > 0 and not exist_ok:
            raise InvalidConfigError(
                f"Drive {self.name!r}: if_version={if_version} and exist_ok=False contradict "
                f"each other for {path!r}; pass one of them."
            )
        return str(if_version) if if_version else "absent"

    async def _put(
        self,
        conn: _Connection,
        path: str,
        stage: _Stage | Staged,
        precondition: str,
        *,
        small: bool = False,
        tentative: bool = False,
        on_copied: OnCopied | None = None,
        before_commit: Callable[[int], None] | None = None,
        way_cleared: bool = False,
        on_commit: Callable[[FileInfo], None] | None = None,
    ) -> FileInfo:
        """Stage the bytes (unless already staged, as by a `DriveWriter`), then commit them.

        ``stage(sync)`` writes the upload. A large one is checked for, staged and fsynced
        before the commit lock is taken, so a refused put copies nothing and the lock is
        held only for the rename. A ``small`` one is staged in the same worker-thread call
        as its install: one thread hop and one fsync of the upload. Where no file is at the
        path yet, that takes no lock at all (`_create`); else it is under the lock.

        ``tentative``: a refused check raises `_NotASmallFile` instead of its error, as
        ``stage`` does when it finds no small file to stage (the lock is then released).
        ``on_copied``: the count ``stage`` reports to (see `ProgressReporter.add`), asked
        once more before the commit, so that a progress callback that failed during the
        copy stops the put then, whenever its report ran. ``before_commit(size)``: called
        once a ``small`` file is installed, before its commit; if it raises, the install
        is undone and the put raises that (a progress callback, told of the bytes staged).
        A put that removed bytes a delete cut short left in its way (`_clear_the_way`) is
        made once more (``way_cleared``), staged again from ``stage``, unless it came staged.
        ``on_commit(info)``: called with the commit's `FileInfo` where the caller was
        cancelled during the install and commit, which end all the same (a `DriveWriter`'s
        close: its ``info``), as the return value is then lost.
        """
        given = stage
        component = conn.config.component_name
        allow = conn.config.allow_duplicates
        #: A file `_create` installed without the lock and could not commit: the install
        #: below replaces it, and if this put fails, it goes too.
        uncommitted: FileIdentity | None = None
        # Not for if_version=N (a file is there), nor on a Cluster: `_create` needs a `Wire`.
        # Nor where this drive put the file itself: it most likely replaces it, and the
        # locked way saves the worker-thread call that would find it there.
        known = self._last_versions.get((component, path), 0)
        may_create = known <= 0 and precondition in ("", "absent") and conn.index.wire is not None
        if small and may_create and not isinstance(stage, Staged):
            created = await self._create(
                conn, path, stage, precondition, -known, tentative=tentative,
                before_commit=before_commit,
            )  # fmt: skip
            if isinstance(created, FileInfo):
                self._remember(component, path, created.version)
                return created
            if isinstance(created, Staged):
                stage = created
            else:
                uncommitted = created
        if not isinstance(stage, Staged) and not small:
            # Refuse early, before copying any bytes; the commit checks again atomically.
            checked = await conn.index.check_put(component, path, allow, precondition)
            await self._raise_put_refused(conn, path, checked, precondition)
            # A caller cancelled after the copy's last step drops the upload it made.
            stage = await conn.run_sync(stage, True, dropped=conn.store.discard)
        try:
            if on_copied is not None:
                on_copied(0)  # raises if the callback failed: no lock taken, nothing committed
            token, checked = await self._lock_put(conn, path, precondition)
            if tentative and checked.status != "ok":
                raise _NotASmallFile  # no lock held if refused
            await self._raise_put_refused(conn, path, checked, precondition)
            # Between here and the index commit, a cancellation would leave the disk and the
            # index disagreeing: the section is short (a rename and one Lua call), so it is
            # finished whatever cancels the caller (anyio's scopes, or asyncio's timeouts).
            current = int(checked.detail)

            async def tell_committed(info: FileInfo) -> None:  # (the caller was cancelled)
                if on_commit is not None:
                    on_commit(info)

            info = await to_its_end(
                self._install_and_commit(
                    conn, path, stage, precondition, current, token, before_commit
                ),
                tell_committed,
            )
        except BaseException as exc:

            async def clean_up() -> None:
                if isinstance(stage, Staged):  # once installed, it is gone: this is a no-op
                    await conn.run_sync(conn.store.discard, stage)
                if uncommitted is not None:
                    with contextlib.suppress(OSError, DriveError):
                        await self._remove_uncommitted(conn, path, uncommitted)

            await to_its_end(clean_up())
            if not isinstance(exc, _WayCleared):
                raise
            if isinstance(given, Staged) or way_cleared:
                raise exc.error from None
        else:
            self._remember(component, path, info.version)
            return info
        return await self._put(
            conn, path, given, precondition, small=small, tentative=tentative,
            on_copied=on_copied, before_commit=before_commit, way_cleared=True,
        )  # fmt: skip

    async def _create(
        self,
        conn: _Connection,
        path: str,
        stage: _Stage,
        precondition: str,
        current: int,
        *,
        tentative: bool,
        before_commit: Callable[[int], None] | None = None,
    ) -> FileInfo | Staged | FileIdentity:
        """Put a new small file without the commit lock: one round trip instead of two.

        Where no file is at the path on disk, the upload is moved in by a rename that
        cannot replace one, then committed by a script that refuses if another writer holds
        the path's lock meanwhile (it may have installed over this file, or be about to),
        or if the path's last version is not ``current``, which the file on disk follows:
        0 (the file says version 1), or the one this drive deleted last (`_remember`).
        Returns the new `FileInfo`, or what `_put` must then do the locked way: the upload,
        still staged, where a file stood at the path; or, where the commit met another
        writer or an older version, stage the bytes again and install them over this
        file, whose identity is returned. Other refusals undo the install and raise
        (``tentative``: as `_put`). It connects before the commit, so that a server that
        cannot be reached leaves nothing behind either, nor ``before_commit`` (see `_put`)
        raising.
        """
        component = conn.config.component_name
        store = conn.store

        async def install_and_commit() -> FileInfo | Staged | FileIdentity | PutOutcome:
            new_file = (component, path, stage, current + 1)
            if store.local_disk and not conn.inline:
                # With the new files of other tasks' puts, if any wait: one thread hop and
                # one fsync of each folder for all of them.
                created = await conn.small_creates.submit(new_file)
            else:
                created = await conn.run_sync(_install_new, store, *new_file)
            if isinstance(created, Staged):
                return created
            info, identity, _ = created
            try:
                if before_commit is not None:
                    before_commit(info.size)
                await _reachable(conn)
            except BaseException:
                await self._remove_uncommitted(conn, path, identity)
                raise
            try:
                outcome = await conn.index.commit_put(
                    component, path, conn.config.allow_duplicates, current, info.size,
                    info.mtime, info.checksum, precondition, token=None,
                )  # fmt: skip
            except redis.exceptions.ResponseError as refused:
                if _not_committed(conn, refused):
                    await self._remove_uncommitted(conn, path, identity)
                raise
            if outcome.status == "ok":
                await self._finish_installs(conn, [])
                return info
            if outcome.status in ("locked", "conflict"):
                return identity
            await self._remove_uncommitted(conn, path, identity)
            return outcome

        async def undo(outcome: FileInfo | Staged | FileIdentity | PutOutcome) -> None:
            # What `_put` would have finished, its caller cancelled: the file installed and
            # not committed (another writer's lock, an older version), or the upload.
            if isinstance(outcome, Staged):
                await conn.run_sync(store.discard, outcome)
            elif isinstance(outcome, tuple):
                await self._remove_uncommitted(conn, path, outcome)

        # As in `_put`, between the install and the commit a cancellation would leave the
        # disk and the index disagreeing: finished whatever cancels the caller (a small
        # file, written and committed), by anyio's scopes or by asyncio (a timeout).
        outcome = await to_its_end(install_and_commit(), undo)
        if not isinstance(outcome, PutOutcome):
            return outcome
        if tentative:
            raise _NotASmallFile
        await self._raise_put_refused(conn, path, outcome, precondition)
        raise AssertionError(f"not a refusal: {outcome}")

    def _remember(self, component: str, path: str, version: int) -> None:
        """Remember the version of ``path`` this drive put (> 0) or deleted (< 0) last.

        A put of a path it deleted goes without the lock as the next version (`_create`);
        of a path it put, the locked way at once. Only a guess: another process may have
        changed the path since, and both ways check.
        """
        versions = self._last_versions
        versions.pop((component, path), None)
        versions[component, path] = version
        if len(versions) > _REMEMBERED_PATHS:
            del versions[next(iter(versions))]

    async def _remove_uncommitted(
        self, conn: _Connection, path: str, identity: FileIdentity
    ) -> None:
        """Remove a file `_create` installed but did not commit, unless replaced since."""
        await conn.run_sync(
            functools.partial(conn.store.restore, installed=identity),
            None, conn.config.component_name, path,
        )  # fmt: skip

    async def _install_and_commit(
        self,
        conn: _Connection,
        path: str,
        stage: _Stage | Staged,
        precondition: str,
        current: int,
        token: str,
        before_commit: Callable[[int], None] | None = None,
    ) -> FileInfo:
        """Install under the lock ``token``, then commit, which releases it on success.

        ``before_commit(size)``: see `_put`.
        """
        component = conn.config.component_name
        store = conn.store

        def install() -> _Installed:
            staged = stage if isinstance(stage, Staged) else stage(False)
            return _install_staged(store, component, path, staged, current + 1)

        try:
            info, backup, installed = await conn.run_sync(install)
        except PathClash as clash:
            await conn.index.unlock(component, path, token)
            if await self._clear_the_way(conn, path):
                raise _WayCleared(self._clash_error(path, clash, cleared=True)) from None
            raise self._clash_error(path, clash) from None
        except BaseException:
            await conn.index.unlock(component, path, token)
            raise
        if before_commit is not None:
            try:
                before_commit(info.size)
            except BaseException:
                await self._undo_install(conn, path, token, (info, backup, installed))
                raise
        try:
            await _reachable(conn)
        except BaseException:
            with contextlib.suppress(Exception):  # (the error to say is the server's)
                await self._undo_install(conn, path, token, (info, backup, installed), unlock=False)
            raise
        try:
            outcome = await conn.index.commit_put(
                component, path, conn.config.allow_duplicates, current, info.size, info.mtime,
                info.checksum, precondition, token,
            )  # fmt: skip
        except BaseException as exc:
            # As `_reachable` says: the new bytes and the backup of the old ones stay, for
            # gc() to keep or undo the install against the index once Redis is back.
            if isinstance(exc, redis.exceptions.ResponseError) and _not_committed(conn, exc):
                with contextlib.suppress(Exception):  # (the refusal is the error to say)
                    await self._undo_install(conn, path, token, (info, backup, installed))
                raise
            with contextlib.suppress(Exception):  # the lock's lease ends it anyway
                await conn.index.unlock(component, path, token)
            raise
        await self._refused_commit(conn, path, precondition, token, (info, backup, installed),
                                   outcome)  # fmt: skip
        await self._finish_installs(conn, [backup])
        return info

    def _clash_error(self, path: str, clash: PathClash, *, cleared: bool = False) -> DriveError:
        # Another put of this component, of a path above or below this one, is between
        # its install and its commit: one of the two must fail, and this one has. Or a
        # delete cut short left its bytes there (see `_clear_the_way`), or a writer that
        # died before its commit.
        kind = DriveNotADirectoryError if isinstance(clash.__cause__, (
            NotADirectoryError, FileExistsError)) else DriveFileExistsError  # fmt: skip
        where = f"Drive {self.name!r}: cannot put {path!r}: "
        if cleared:
            return kind(
                f"{where}the bytes of files deleted from the index (by a delete cut short) "
                "stood in its way on the disk: they are removed now. Retry it."
            )
        return kind(
            f"{where}files of component {self._resolved().component_name!r} stand in its way "
            "on the disk, not indexed: a put of a path above or below it at the same moment "
            "(a path cannot be both a file and a folder: retry once that put is done), or a "
            "writer that died before its commit (gc() removes its files, and empty folders, "
            "once older than its grace: gc(grace=60), say)."
        )

    async def _clear_the_way(self, conn: _Connection, path: str) -> bool:
        """After a `PathClash`: remove what a delete cut short left in ``path``'s way.

        Such bytes were committed once: their version is one the index has counted, and
        no writer makes that version again (versions never repeat), while the file of a
        put between its install and its commit, however long it stalls, has a version
        the index has not counted yet: left alone (`gc` takes those of dead writers once
        older than its grace), as is a path whose lock is held (a writer at work: not
        waited for, as this put may hold locks). Returns whether anything was removed and
        nothing is left in the way (a folder, even empty, is left: a writer may be making
        it; gc removes empty ones).
        """
        component = conn.config.component_name
        found = await conn.run_sync(conn.store.in_the_way, component, path)
        clear = bool(found)
        for other in found:
            clear = await self._remove_deleted_bytes(conn, component, other) and clear
        return clear and not await conn.run_sync(conn.store.in_the_way, component, path)

    async def _remove_deleted_bytes(self, conn: _Connection, component: str, path: str) -> bool:
        """Remove ``component``'s bytes of ``path`` if the index deleted that version."""
        try:
            token = await conn.index.lock(component, path, ttl=LOCK_TTL, timeout=0)
        except TimeoutError:  # a writer of that path at work
            return False

        async def check_and_remove() -> bool:
            try:
                # In this order: a commit landing meanwhile (one whose lease ran out takes
                # no heed of the lock) is counted, or seen as an owner, or both.
                meta = await conn.run_sync(conn.store.read_meta, component, path)
                version = committed_version(meta)
                if version is None or version > await conn.index.last_version(component, path):
                    return False  # (never committed: maybe a live put's)
                if component in await conn.index.owners(path):  # committed: a real file
                    return False
                await conn.run_sync(conn.store.remove, component, path)
                return True
            finally:
                await conn.index.unlock(component, path, token)

        return await to_its_end(check_and_remove())

    async def _refused_commit(
        self,
        conn: _Connection,
        path: str,
        precondition: str,
        token: str,
        installed: _Installed,
        outcome: PutOutcome,
    ) -> None:
        """Undo an install whose commit was refused, release its lock and raise; or return."""
        if outcome.status == "ok":
            return
        # A "conflict": another writer committed the path since the lock was taken, so
        # the lock's lease ran out; that writer may have installed over this upload.
        await self._undo_install(conn, path, token, installed)
        await self._raise_put_refused(conn, path, outcome, precondition)

    async def _undo_install(
        self,
        conn: _Connection,
        path: str,
        token: str,
        installed: _Installed,
        *,
        unlock: bool = True,
    ) -> None:
        """Put back what an uncommitted install replaced (unless replaced since); unlock.

        ``unlock=False``: the server cannot be reached; the lock is released once it is.
        """
        _, backup, identity = installed
        component = conn.config.component_name
        try:
            await conn.run_sync(
                functools.partial(conn.store.restore, installed=identity), backup, component, path
            )
        finally:
            if unlock:
                await conn.index.unlock(component, path, token)
            else:
                conn.index.unlock_later(component, [(path, token)])

    async def _finish_installs(self, conn: _Connection, backups: Sequence[Path | None]) -> None:
        """Drop the backups of committed installs, and mark the drive in use (once).

        The marker tells a drive whose index the server lost from a new one. It is written
        after a commit, never before: then, another process connecting to a new drive whose
        first commit is under way would take it for a lost index. (A crash between the two,
        then the index lost too, leaves a drive that looks new but has files: `gc()` refuses
        to take them for orphans while the drive has no index at all, not once a put made
        one: README, Recovery, says to rebuild first.)
        """
        store = conn.store
        mark = not conn.disk_marked
        dropped = [backup for backup in backups if backup is not None]
        if dropped or mark:

            def finish() -> bool:
                # The commits are made: what fails here is told, never raised (the caller
                # would take its put for failed). A backup left is gc()'s to remove; the
                # marker is written again after the next commit.
                for backup in dropped:
                    try:
                        store.drop_backup(backup)
                    except OSError as exc:
                        logger.warning("drive %s: backup %s left: %s", self.name, backup, exc)
                try:
                    if mark:
                        store.mark_in_use()
                except OSError as exc:
                    logger.warning("drive %s: marker not written: %s", self.name, exc)
                    return False
                return True

            conn.disk_marked = await conn.run_sync(finish)

    def _refusal(self, path: str, outcome: PutOutcome, precondition: str) -> DriveError:
        """Return the error `_raise_put_refused` raises for a refused ``outcome``."""
        try:
            self._raise_refusal(path, outcome, precondition)
        except DriveError as exc:
            return exc
        raise AssertionError(f"not a refusal: {outcome}")

    async def _raise_put_refused(
        self, conn: _Connection, path: str, outcome: PutOutcome, precondition: str
    ) -> None:
        """Raise the error of a refused ``outcome`` (nothing if it is "ok")."""
        if outcome.status == "version" and outcome.detail == "0":  # or the index is lost
            await self._check_not_lost(conn)
        self._raise_refusal(path, outcome, precondition)

    def _raise_refusal(self, path: str, outcome: PutOutcome, precondition: str) -> None:
        status, detail = outcome.status, outcome.detail
        if status == "ok":
            return
        where = f"Drive {self.name!r}: cannot put {path!r}"
        component = self._resolved().component_name
        if status == "exists":  # a conflict with "no version yet": .current_version says
            raise VersionConflictError(
                f"{where}: component {component!r} has it already (version {detail}), and "
                "exist_ok=False (or if_version=0) asked to create only. Pass "
                f"if_version={detail} to replace that version, or delete it first.",
                int(detail),
            )
        if status == "version" and detail == "0":
            raise DriveFileNotFoundError(
                f"{where}: if_version={precondition} was given, but component {component!r} "
                "has no copy of it (never put, or deleted since). Read info() again, or put "
                "without if_version= to create it."
            )
        if status == "version":
            raise VersionConflictError(
                f"{where}: if_version={precondition} was given, but the copy of component "
                f"{component!r} is at version {detail} now (someone replaced it). Read info() "
                "again, then retry with the new version.",
                int(detail),
            )
        if status == "owned":
            raise DriveFileExistsError(
                f"{where}: it is owned by component {detail!r}. Choose another path, delete "
                f"it as {detail!r}, or create the drive with allow_duplicates=True."
            )
        if status == "isdir":
            raise DriveFileExistsError(
                f"{where}: a folder stands at that path in the drive. Choose another path or "
                "delete the folder first (delete(path, recursive=True))."
            )
        if status == "notadir":
            raise DriveNotADirectoryError(
                f"{where}: {detail!r} is a file in the drive, so it cannot hold other files. "
                "Choose another path or delete that file first."
            )
        if status == "conflict":
            raise DriveTimeoutError(
                f"{where}: it held the path's commit lock longer than the lock's "
                f"{LOCK_TTL:.0f} s lease (a stalled process, or a jump of the server's clock), "
                f"and another put of component {component!r} committed version {detail} "
                "meanwhile. Nothing of this put was kept; retry it."
            )
        if status == "indexlost":
            raise self._index_lost(self._conn)
        raise DriveError(f"{where}: the index changed during the commit ({status}); retry.")

    async def _lock_put(
        self, conn: _Connection, path: str, precondition: str
    ) -> tuple[str, PutOutcome]:
        component = conn.config.component_name
        try:
            return await conn.index.lock_put(
                component, path, conn.config.allow_duplicates, precondition,
                ttl=LOCK_TTL, timeout=LOCK_TIMEOUT,
            )  # fmt: skip
        except TimeoutError:
            raise self._lock_timeout(component, path) from None

    def _lock_timeout(self, component: str, path: str) -> DriveTimeoutError:
        return DriveTimeoutError(
            f"Drive {self.name!r}: waited {LOCK_TIMEOUT:.0f} s for another writer of "
            f"{path!r} (component {component!r}) to finish; retry later."
        )

    async def _lock(self, conn: _Connection, component: str, path: str) -> str:
        try:
            return await conn.index.lock(component, path, ttl=LOCK_TTL, timeout=LOCK_TIMEOUT)
        except TimeoutError:
            raise self._lock_timeout(component, path) from None

    @_redis_errors_as_unavailable
    async def delete(self, path: StrPath, *, recursive: bool = False) -> None:
        """Remove this component's copy of a file, or with ``recursive=True`` of a folder.

        Example:
            >>> await drive.delete("a.txt")
            >>> await drive.delete("ckpt", recursive=True)

        Raises:
            DriveFileNotFoundError: this component has no such file (the message names the
                components that do).
            DriveIsADirectoryError: ``path`` is a folder and ``recursive`` is False.

        """
        drive_path = self._path(path, allow_root=True)
        if not drive_path and ".." in os.fspath(path).split("/"):
            # As rm refuses 'sub/..': a folder's path climbing back to the top would
            # otherwise delete every file of the component.
            raise InvalidPathError(
                f"Drive {self.name!r}: {shorten(os.fspath(path))!r} climbs back to the whole "
                "drive through '..'; to delete every file of this component, pass '.'."
            )
        conn = await self._connection(writing=f"delete {os.fspath(path)!r}")
        component = conn.config.component_name
        if not drive_path and not recursive:
            raise DriveIsADirectoryError(
                f"Drive {self.name!r}: {shorten(os.fspath(path))!r} is the whole drive, a "
                f"folder; pass recursive=True to delete every file of component {component!r}."
            )
        owners = await conn.index.owners(drive_path) if drive_path else {}
        if owners and _paths.names_folder(path):
            raise self._file_not_folder(path, drive_path)
        if component in owners:
            await self._delete_file(conn, drive_path)
            return
        kind = await conn.index.kind(drive_path)
        if kind == "folder":
            if not recursive:
                raise DriveIsADirectoryError(
                    f"Drive {self.name!r}: {drive_path!r} is a folder; pass recursive=True to "
                    f"delete the files of component {component!r} in it."
                )
            _, files = await conn.index.list_files(drive_path, component)
            if not files:
                raise await self._none_of_ours(conn, drive_path, component)
            refused: dict[str, OSError] = {}

            async def delete_batch(batch: Sequence[str]) -> None:
                refused.update(await self._delete_files(conn, batch))

            batches = [
                files[start : start + _DELETE_BATCH_FILES]
                for start in range(0, len(files), _DELETE_BATCH_FILES)
            ]
            # Side by side: an unlink mostly waits for the disk (~110 µs a file here, ~40
            # of them CPU), so the batches' worker-thread calls overlap, as do their scripts.
            await _side_by_side(conn, batches, delete_batch)
            if refused:
                first = min(refused)
                raise self._delete_refused(
                    conn, first, refused[first], f"{first!r} and {len(refused) - 1} other "
                    "file(s) in folders this user may not change are still in the drive; the "
                    f"other {len(files) - len(refused)} are deleted.",
                )  # fmt: skip
            return
        if not owners:
            await self._check_not_lost(conn)
        raise self._not_found(drive_path, sorted(owners), component, deleting=True)

    async def _none_of_ours(self, conn: _Connection, folder: str, component: str) -> DriveError:
        """Return the error of a recursive delete of a folder holding no file of ``component``.

        It names the components whose files the folder holds (of its first 100 files).
        """
        _, files = await conn.index.list_files(folder, None)
        owners = {name for found in await conn.index.owners_many(files[:100]) for name in found}
        where = f"in folder {folder!r}" if folder else "in the drive"
        if not owners:  # (deleted meanwhile)
            return self._not_found(folder, [], component)
        return DriveFileNotFoundError(
            f"Drive {self.name!r}: component {component!r} has no file {where} (its files "
            f"are owned by {', '.join(map(repr, sorted(owners)))}; a component deletes only "
            "its own copies: use a Drive created with that component_name)."
        )

    async def _check_deletable(self, path: str) -> None:
        """Raise what `delete` would if this component does not own the file ``path``.

        (A folder, or nothing there, passes: fsspec's ``mv`` asks before it copies.)
        """
        conn = await self._connection()
        owners = await conn.index.owners(path)
        if owners and conn.config.component_name not in owners:
            raise self._not_found(path, sorted(owners), conn.config.component_name, deleting=True)

    def _delete_refused(self, conn: _Connection, path: str, exc: OSError, left: str) -> DriveError:
        """Return the error of a delete the disk would refuse, told before the index changed."""
        return storage_error(
            self.name, exc, "delete", path, drive_dir=conn.store.base,
            left=f"Nothing was deleted there: {left}",
        )  # fmt: skip

    async def _delete_file(self, conn: _Connection, path: str, *, missing_ok: bool = False) -> None:
        component = conn.config.component_name
        refused = await conn.run_sync(conn.store.removal_refused, component, [path])
        if refused:
            raise self._delete_refused(conn, path, refused[path], "the drive still lists it.")
        token = await self._lock(conn, component, path)

        async def delete_and_unlock() -> tuple[bool, list[str]]:
            try:
                done, others, version = await conn.index.commit_delete(component, path)
                if done:
                    self._remember(component, path, -version)
                    await conn.run_sync(conn.store.remove, component, path)
            finally:
                await conn.index.unlock(component, path, token)
            return done, others

        # Once the index lets the file go, its bytes go too, whatever cancels the caller.
        done, others = await to_its_end(delete_and_unlock())
        if not done and not missing_ok:
            raise self._not_found(path, others, component, deleting=True)

    async def _delete_files(self, conn: _Connection, paths: Sequence[str]) -> dict[str, OSError]:
        """`_delete_file` each path (missing ones are skipped), with a few calls for all.

        One worker-thread call asks whether their folders let them go, one round trip
        tries their locks, one removes them from the index (each file's own atomic
        script, with its event), one worker-thread call removes their bytes, one round
        trip releases the locks. A file whose lock another writer holds is deleted on its
        own once that writer is done. Returns, by path, why the disk would refuse those
        left in the drive (see `DiskStore.removal_refused`).
        """
        component = conn.config.component_name
        refused = await conn.run_sync(conn.store.removal_refused, component, paths)

        async def delete(locked: list[str]) -> None:
            outcomes = await conn.index.commit_delete_many(component, locked)
            gone = []
            for path, (done, _, version) in zip(locked, outcomes, strict=True):
                if done:
                    self._remember(component, path, -version)
                    gone.append(path)
            if gone:
                removals = await conn.run_sync(conn.store.remove_many, component, gone)
                # (The others removed first: a link planted at a path, a disk error.)
                failed = next((r for r in removals if isinstance(r, Exception)), None)
                if failed is not None:
                    raise failed

        # (As in `_delete_file`: finished whatever cancels the caller.)
        free = [path for path in paths if path not in refused]
        _, held = await _under_locks(conn, component, free, delete, None)
        for path in held:  # being put or deleted by another writer: wait for it
            await self._delete_file(conn, path, missing_ok=True)
        return refused

    # -- reading -----------------------------------------------------------------------------

    @_redis_errors_as_unavailable
    async def list(
        self, path: StrPath = ".", *, component_name: str | None = None, recursive: bool = False
    ) -> list[str]:
        """Return the files and folders directly under ``path``, sorted, as drive paths.

        With ``recursive=True``, return every file below ``path`` instead. Entries of all
        components are merged unless ``component_name`` is given.

        Example:
            >>> await drive.list("ckpt")
            ['ckpt/sub', 'ckpt/x.txt']
            >>> await drive.list("ckpt", recursive=True)
            ['ckpt/sub/y.txt', 'ckpt/x.txt']

        Raises:
            DriveNotADirectoryError: ``path`` is a file.

        """
        folder = self._path(path, allow_root=True)
        if component_name is not None:
            self._check_component(component_name, path)
        conn = await self._connection()
        if recursive:
            is_file, found = await conn.index.list_files(folder, component_name)
        else:
            is_file, names = await conn.index.list_children(folder, component_name)
            found = sorted(_paths.join(folder, name) for name in names)
        if is_file:
            raise DriveNotADirectoryError(
                f"Drive {self.name!r}: {folder!r} is a file, not a folder; use info() or "
                f"get() for a file, or list({_parent(folder)!r}) for its folder."
            )
        if not found:
            await self._check_not_lost(conn)
        return found

    @_redis_errors_as_unavailable
    async def list_info(
        self, path: StrPath = ".", *, component_name: str | None = None, recursive: bool = False
    ) -> builtins.list[FileInfo | FolderInfo]:
        """Return what the drive knows of each entry that `list` returns, in order.

        A `FolderInfo` for a folder; a `FileInfo` for each copy of a file: one per component
        that owns it, in the order of their names, or only ``component_name``'s if given.
        One round trip more than `list` for all the entries, two where some are folders
        (not one per entry, as `info` would take); an entry deleted in between is left
        out.

        Example:
            >>> for entry in await drive.list_info("ckpt"):
            ...     print(entry.path, getattr(entry, "size", "(folder)"))
            ckpt/sub (folder)
            ckpt/x.txt 13

        Raises:
            DriveNotADirectoryError: ``path`` is a file.

        """
        found = await self.list(path, component_name=component_name, recursive=recursive)
        conn = await self._connection()
        entries: list[FileInfo | FolderInfo] = []
        for start in range(0, len(found), _LOOKUP_CHUNK):  # (not every reply at once)
            chunk = found[start : start + _LOOKUP_CHUNK]
            described = await conn.index.describe_many(chunk, component_name, folders=not recursive)
            for entry, (owners, is_folder) in zip(chunk, described, strict=True):
                if component_name is not None:
                    owners = {c: info for c, info in owners.items() if c == component_name}
                if owners:
                    entries.extend(owners[c] for c in sorted(owners))
                elif is_folder:
                    entries.append(FolderInfo(entry))
        return entries

    @_redis_errors_as_unavailable
    async def exists(self, path: StrPath, *, component_name: str | None = None) -> bool:
        """Return True if a file or folder exists at ``path`` (for ``component_name``, if given).

        Example:
            >>> await drive.exists("a.txt")
            True

        """
        drive_path = self._path(path, allow_root=True)
        if component_name is not None:
            self._check_component(component_name, path)
        conn = await self._connection()
        kind = await conn.index.kind(drive_path, component_name)
        if kind is None:
            await self._check_not_lost(conn)
        if _paths.names_folder(path):  # "a.txt/": no such folder, as for os.path.exists
            return kind == "folder" or drive_path == ""
        return kind is not None

    @_redis_errors_as_unavailable
    async def info(self, path: StrPath, *, component_name: str | None = None) -> FileInfo:
        """Return the `FileInfo` of a file.

        Example:
            >>> (await drive.info("a.txt")).checksum[:8]
            '07f2bdef'

        Raises:
            DriveFileNotFoundError: no such file (for that component).
            AmbiguousPathError: several components own it and ``component_name`` is None.
            DriveIsADirectoryError: ``path`` is a folder.

        """
        drive_path = self._path(path, file=True)
        conn = await self._connection()
        return await self._file_info(conn, drive_path, component_name)

    @_redis_errors_as_unavailable
    async def _copies(self, path: StrPath) -> builtins.list[FileInfo]:
        """Return each component's copy of file ``path``, by component (for ``ls -l FILE``).

        Raises as `info` does where no component owns it.
        """
        drive_path = self._path(path, file=True)
        conn = await self._connection()
        owners = await conn.index.owners(drive_path)
        if not owners:
            await self._file_info(conn, drive_path, None)  # raises: said as info says it
        return [owners[component] for component in sorted(owners)]

    async def _file_info(
        self, conn: _Connection, path: str, component_name: str | None
    ) -> FileInfo:
        if component_name is not None:
            self._check_component(component_name, path)
        owners = await conn.index.owners(path)
        if not owners:
            if await conn.index.kind(path) == "folder":
                raise DriveIsADirectoryError(
                    f"Drive {self.name!r}: {path!r} is a folder; list({path!r}) shows its files."
                )
            await self._check_not_lost(conn)
        return self._pick(path, owners, component_name)

    @_redis_errors_as_unavailable
    async def read_bytes(self, path: StrPath, *, component_name: str | None = None) -> bytes:
        """Return the content of a file.

        Example:
            >>> await drive.read_bytes("a.txt")
            b'Hello World !'

        Raises:
            DriveFileNotFoundError: no such file (for that component), or the index has it
                without its bytes on this machine's root (the message says).
            AmbiguousPathError: several components own it and ``component_name`` is None.
            DriveTimeoutError: writers replaced it faster than it could be read, for 10 s;
                or its bytes on disk stay of another version than the index's (a writer
                died before its commit: gc() settles it).

        """
        drive_path = self._path(path, file=True)
        conn = await self._connection()
        store = conn.store

        async def read(info: FileInfo) -> bytes:
            if (
                info.size <= _QUICK_COPY_MAX
                and store.local_disk
                and not conn.inline
                and conn.quick_calls.allows()
            ):  # here, as a get's copy: no hop to a thread and back, which would cost more
                return conn.quick_calls.run(store.read, info.component_name, drive_path, info)
            return await conn.run_sync(_read_looking, store, info.component_name, drive_path, info)

        return await self._read_committed(conn, drive_path, component_name, read)

    async def _read_committed(
        self,
        conn: _Connection,
        path: str,
        component_name: str | None,
        read: Callable[[FileInfo], Awaitable[T]],
    ) -> T:
        """Return ``read(info)`` of the path's `FileInfo`, looked up again while it fails.

        ``read`` raises `OtherVersionError` where the bytes on disk are not those of the
        version looked up: replaced, deleted, or being written again since. Looked up
        again, the path is then of a newer version, or not found. A file the index still
        has, without its bytes, raises `DriveFileNotFoundError` saying so.
        """
        info = await self._file_info(conn, path, component_name)
        looks: _Looks | None = None
        while True:
            try:
                return await read(info)
            except FileNotFoundError as exc:
                looked, info = info, await self._file_info(conn, path, component_name)
                looks = looks or _Looks(self, conn)
                await looks.again(looked, info, exc)

    def _bytes_missing(self, conn: _Connection, info: FileInfo) -> DriveFileNotFoundError:
        where = conn.store.base / info.component_name / info.path
        return DriveFileNotFoundError(
            f"Drive {self.name!r}: the index has {info.path!r} (version {info.version} of "
            f"component {info.component_name!r}), but its bytes are not at {str(where)!r}. "
            f"Check that this machine's root ({str(conn.store.root)!r}) is the shared disk "
            "the writers use; if the file was removed from the disk by hand, gc() drops "
            "its entry."
        )

    @_redis_errors_as_unavailable
    async def get(
        self,
        path: StrPath,
        *,
        component_name: str | None = None,
        timeout: float | None = None,
        overwrite: bool = False,
        to: StrPath | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Copy a file, or a folder recursively, from the drive to the same local path.

        Parent folders are created. An identical local file is left as it is.

        Example:
            >>> await drive.get("a.txt")
            >>> Path("a.txt").read_text()
            'Hello World !'
            >>> await drive.get("ckpt/last.pt", timeout=60)  # wait for it to be put
            >>> await drive.get("ckpt", progress=lambda done, total: print(done, total))
            0 14
            14 14

        Args:
            path: the drive path, and the local path relative to the current directory.
            component_name: whose copy to get, when several components own the path.
            timeout: wait up to this many seconds for the path to appear (woken by the
                drive's change events), then raise `DriveTimeoutError`.
            overwrite: replace a local file whose content differs (atomically).
            to: the local path to write to instead (a folder's files go below it);
                ending in ``/``, into that folder under the drive name's last part, as
                ``cp`` does.
            progress: called as ``progress(done, total)`` in bytes, in this event loop's
                thread, as the bytes are copied: ``(0, total)`` first, ``(total, total)``
                last, with the file in place (a local file left as it is counts as copied).
                An exception it raises stops the get and is raised here.

        Raises:
            DriveFileNotFoundError: nothing at ``path`` (and no ``timeout``).
            AmbiguousPathError: several components own the path; name one.
            DriveFileExistsError: a different local file is in the way and not ``overwrite``.
            DriveTimeoutError: ``timeout`` passed before the path appeared; or its bytes
                could not be read as the index's version (see `read_bytes`).

        """
        drive_path = self._path(path)
        if component_name is not None:
            self._check_component(component_name, path)
        check_seconds(self.name, "timeout", timeout)
        conn = await self._connection()
        if timeout is not None:
            await self._wait_for(conn, drive_path, component_name, timeout)
        if to is None:
            local = Path(drive_path)
        else:
            local = self._local_path(to, "to")
            if _paths.names_folder(to) or os.fspath(to).endswith(os.sep):  # into it, as cp
                local /= PurePosixPath(drive_path).name
        as_folder = _paths.names_folder(path)
        with _progress.reporting(progress) as reporter:
            await self._get_to(
                conn, drive_path, local, component_name, overwrite, reporter, as_folder
            )

    @_redis_errors_as_unavailable
    async def _get_file(
        self, path: StrPath, *, to: StrPath, overwrite: bool, progress: ProgressCallback | None
    ) -> None:
        """`get` of a file to the local path ``to``, for fsspec's ``get_file``.

        A folder raises `FolderNotFileError`, nothing copied (its files are fsspec's
        recursive get's), found in the look-ups a get makes anyway.
        """
        drive_path = self._path(path)
        conn = await self._connection()
        with _progress.reporting(progress) as reporter:
            await self._get_to(
                conn, drive_path, self._local_path(to, "to"), None, overwrite, reporter,
                file_only=True,
            )  # fmt: skip

    async def _get_to(
        self,
        conn: _Connection,
        drive_path: str,
        local: Path,
        component_name: str | None,
        overwrite: bool,
        reporter: ProgressReporter | None,
        as_folder: bool = False,
        *,
        file_only: bool = False,
    ) -> None:
        """`get` once its arguments are checked (and the path waited for): into ``local``.

        ``as_folder``: the path was written with a trailing ``/``; a file there is refused.
        ``file_only``: a folder is refused (`FolderNotFileError`).
        """
        on_copied = None if reporter is None else reporter.add
        owners = await conn.index.owners(drive_path)
        if owners and as_folder:
            raise self._file_not_folder(f"{drive_path}/", drive_path)
        if owners:
            info = self._pick(drive_path, owners, component_name)
            if reporter is not None:
                reporter.expect(info.size)
            copied = await self._copy_out(conn, [(info, local)], overwrite, on_copied)
            if reporter is not None:
                reporter.finish(copied[0].size)  # its size, if replaced since looked up
            return
        _, files = await conn.index.list_files(drive_path, component_name)
        if not files:
            await self._check_not_lost(conn)
            raise self._not_found(drive_path, [], component_name)
        if file_only:
            raise FolderNotFileError(
                f"Drive {self.name!r}: {drive_path!r} is a folder; get it recursively "
                "(get(recursive=True) in fsspec) to copy its files."
            )

        #: Whose copy of each file is copied, as the first look-up picked it ("": none).
        picked: list[str] = []

        async def each_copy(first: bool) -> AsyncGenerator[tuple[FileInfo, Path], None]:
            # Looked up a chunk at a time: memory follows a chunk, not the folder (~1 KiB
            # a file, ~1 GiB for a folder of a million files, all looked up at once).
            for start in range(0, len(files), _LOOKUP_CHUNK):
                chunk = files[start : start + _LOOKUP_CHUNK]
                found = await conn.index.owners_many(chunk)
                for number, (file, owners) in enumerate(zip(chunk, found, strict=True)):
                    if first:  # refused here, before any copy (several own it, none named)
                        info = self._pick(file, owners, component_name) if owners else None
                        picked.append(sys.intern(info.component_name) if info else "")
                    else:  # that copy as it is now: gone if deleted since (skipped)
                        info = owners.get(picked[start + number])
                    if info is not None:  # (else deleted since listed: skipped)
                        yield info, local / file[len(drive_path) + 1 :]

        # Twice: first for what is refused before anything is copied, whose copy is copied,
        # and the bytes to expect; then to copy, a chunk at a time.
        expected = 0
        async for info, _ in each_copy(first=True):
            expected += info.size
        if reporter is not None:
            reporter.expect(expected)
        # One at a time (a get is mostly CPU here: side by side it ran no faster with an
        # async Drive, and 2-3x slower with a SyncDrive, whose copies then left its thread),
        # in batches, each one worker-thread call: for a small file the hop to a thread and
        # back costs more than its copy (measured: 2,000 files of 4 KiB, ~2,900/s one call
        # each, ~5,200/s in calls of 64).
        batch: list[tuple[FileInfo, Path]] = []
        batch_bytes = 0
        copied_bytes = 0  # of the versions copied: files replaced or deleted since listed

        async def copy_batch() -> None:
            nonlocal batch, batch_bytes, copied_bytes
            try:
                copied = await self._copy_out(conn, batch, overwrite, on_copied, in_folder=True)
            except OSError as exc:  # the files before it are copied: say so
                if isinstance(exc, DriveError | TimeoutError | ConnectionError):
                    raise
                raise storage_error(
                    self.name, exc, "get a folder", drive_path, local, conn.store.base
                ) from exc
            copied_bytes += sum(info.size for info in copied)
            batch, batch_bytes = [], 0

        async for info, dest in each_copy(first=False):
            batch.append((info, dest))
            batch_bytes += info.size
            if len(batch) == _COPY_BATCH_FILES or batch_bytes >= _COPY_BATCH_BYTES:
                await copy_batch()
        if batch:
            await copy_batch()
        if reporter is not None:
            reporter.finish(copied_bytes)

    async def _copy_out(
        self,
        conn: _Connection,
        copies: Sequence[tuple[FileInfo, Path]],
        overwrite: bool,
        on_copied: OnCopied | None = None,
        *,
        in_folder: bool = False,
    ) -> builtins.list[FileInfo]:
        """Copy each (drive file, local target) in one worker-thread call, in order.

        The first that fails stops the rest; those before it stay copied. A drive file
        whose bytes are not those of its `FileInfo` (`OtherVersionError`: replaced, deleted
        or being written again since it was looked up) is looked up again and copied as it
        is now; if deleted, the get raises `DriveFileNotFoundError`, or skips it when
        ``in_folder`` (a get of a folder, as a file deleted once listed). ``on_copied``:
        see `DiskStore.copy_out` (not called for one small file, copied at once). Returns
        the versions copied.
        """
        looks: _Looks | None = None
        copied: builtins.list[FileInfo] = []
        while copies:
            failed = await self._copy_out_once(conn, copies, overwrite, on_copied)
            if failed is None:
                return copied + [info for info, _ in copies]
            number, exc = failed
            copied += [info for info, _ in copies[:number]]
            info, dest = copies[number]
            if not isinstance(exc, FileNotFoundError):
                raise self._get_refused(info, dest, exc)
            newer = (await conn.index.owners(info.path)).get(info.component_name)
            if newer is None:
                await self._check_not_lost(conn)
                if not in_folder:
                    raise self._not_found(info.path, [], info.component_name)
                copies, looks = copies[number + 1 :], None
                continue
            if number or looks is None:  # another file than the one looked at last
                looks = _Looks(self, conn)
            await looks.again(info, newer, exc)
            copies = [(newer, dest), *copies[number + 1 :]]
        return copied

    async def _copy_out_once(
        self,
        conn: _Connection,
        copies: Sequence[tuple[FileInfo, Path]],
        overwrite: bool,
        on_copied: OnCopied | None,
    ) -> tuple[int, OSError] | None:
        """`_copy_out` without looking again: return (number, error) of the first failure."""
        store = conn.store

        def copy_all() -> tuple[int, OSError] | None:
            store.on_local_disk  # noqa: B018  # looked up once, here in a worker thread
            if len(copies) == 1:  # a get of one file: its folder, for the next (see below)
                conn.quick_calls.learn(QuickCalls.folder_of(copies[0][1]))
            found_in_place = False  # then look before copying (see `_copy_each`)
            for number, (info, dest) in enumerate(copies):
                try:
                    copied = store.copy_out(
                        info.component_name, info.path, dest, info.checksum, overwrite,
                        on_copied, info, look_first=found_in_place,
                    )  # fmt: skip
                except _GET_REFUSED as exc:
                    return number, exc
                found_in_place = found_in_place or not copied
            return None

        if (
            len(copies) == 1
            and copies[0][0].size <= _SHARED_COPY_MAX
            and not conn.inline
            and store.local_disk  # None until a first copy has looked (below)
        ):
            # One small file: with the small files of other tasks' gets, if any wait. Not
            # on a network filesystem, where copies mostly wait: side by side they overlap.
            info, dest = copies[0]
            try:
                if info.size <= _QUICK_COPY_MAX and conn.quick_calls.allows(
                    QuickCalls.folder_of(dest)
                ):  # here: no hop to a thread and back, which would cost more
                    conn.quick_calls.run(
                        store.copy_out,
                        *(info.component_name, info.path, dest, info.checksum, overwrite),
                        *(None, info),
                    )
                else:
                    await conn.small_copies.submit((info, dest, overwrite), info.size)
                return None
            except _GET_REFUSED as refused:
                return 0, refused
        return await conn.run_sync(copy_all)

    def _get_refused(self, info: FileInfo, dest: Path, exc: OSError) -> DriveError:
        """Return the error of a get of ``info`` refused by the local path ``dest`` (``exc``)."""
        here = _in_the_current_folder(dest)
        if isinstance(exc, IsADirectoryError) and not os.path.islink(dest):  # (a link: below)
            return DriveIsADirectoryError(
                f"Drive {self.name!r}: cannot get {info.path!r}: the local path {str(dest)!r}"
                f"{here} is a folder. Pass to= a file path (to="
                f"{str(dest / PurePosixPath(info.path).name)!r}, say), or move the folder away."
            )
        if isinstance(exc, NotADirectoryError):
            in_the_way = _local_file_above(dest) or exc.filename
            return DriveNotADirectoryError(
                f"Drive {self.name!r}: cannot get {info.path!r} to {str(dest)!r}{here}"
                f": a folder above it is a local file ({in_the_way!r}). Pass "
                "to= another local folder, or move that file away."
            )
        if isinstance(exc, NotARegularFileError):
            return DriveFileExistsError(
                f"Drive {self.name!r}: cannot get {info.path!r}: the local path "
                f"{str(dest)!r}{here} is not a regular file (a device, a pipe "
                "or a socket), which a get never replaces, even with overwrite=True. Pass "
                "to= another path."
            )
        if os.path.islink(dest):  # never followed: overwrite=True replaces a link to a file
            name = PurePosixPath(info.path).name
            if os.path.isdir(dest):  # (a link to a folder: as a folder, name a file in it)
                return DriveIsADirectoryError(
                    f"Drive {self.name!r}: cannot get {info.path!r}: the local path "
                    f"{str(dest)!r}{here} is a link to a folder, which a get "
                    f"never follows. Pass to= a file path (to={str(dest / name)!r}, say)."
                )
            return DriveFileExistsError(
                f"Drive {self.name!r}: cannot get {info.path!r}: the local path "
                f"{str(dest)!r}{here} is a symbolic link, which a get never "
                "follows: overwrite=True would replace the link itself. Pass to= the path "
                "it should write, or remove the link."
            )
        return DriveFileExistsError(  # FileExistsError
            f"Drive {self.name!r}: cannot get {info.path!r}: the local file "
            f"{str(dest)!r}{here} exists with other content (or content it "
            "cannot read). Pass overwrite=True to replace it, or move it away."
        )

    async def _wait_for(
        self, conn: _Connection, path: str, component: str | None, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        if conn.waiting_room is None:
            conn.waiting_room = WaitingRoom(self, conn)
        room = conn.waiting_room
        waiter = room.join(path, component)  # from now: nothing put after the look is missed

        async def look(first: bool = False) -> str | None:
            # Within the get's own timeout (and a second): a hung server holds a call up
            # to the client's reply timeout (10 s) otherwise.
            limit = max(0.0, deadline - time.monotonic()) + _LOOK_MARGIN
            try:
                with anyio.fail_after(limit):
                    kind = await conn.index.kind(path, component)
                    if kind is None and first:  # not waiting for a file the server forgot
                        await self._check_not_lost(conn)
                    return kind
            except TimeoutError:
                no_answer = TimeoutError(f"no answer within {limit:.3g} s")
                raise self._unavailable(no_answer) from None

        try:
            kind = await look(first=True)
            while kind is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await room.wait(waiter, remaining):
                    who = f" by component {component!r}" if component else ""
                    raise DriveTimeoutError(
                        f"Drive {self.name!r}: {path!r} was not put{who} within {timeout:g} "
                        "s; check that the writer is running, or wait longer."
                    )
                kind = await look()
        finally:
            room.leave(waiter)
            await room.ended()

    # -- maintenance -------------------------------------------------------------------------

    @_redis_errors_as_unavailable
    async def rebuild_index(self, *, verify: bool = False) -> int:
        """Rebuild the drive's whole index in Redis from the files and metadata on disk.

        For when the Redis server lost its data (`IndexLostError`). Listings, sizes,
        checksums, versions and ownership come back as they were; the change log is kept.
        Run it while no process writes to the drive. Cancelled while it scans the disk, it
        changes nothing; once it replaces the index, it does so to the end (killed then,
        the index counts as lost until it is run again).

        Example:
            >>> await drive.rebuild_index()
            1042

        Args:
            verify: recompute every checksum from the bytes instead of trusting the metadata
                (reads every byte of the drive), to find bytes changed by hand that kept their
                size. Those whose size changed are found either way; their metadata is fixed,
                so that readers take them for the version indexed.

        Returns:
            The number of files indexed.

        """
        check_flag(self.name, "verify", verify)
        conn = await self._connection(check_index=False, writing="rebuild the index")
        found = await conn.run_sync(
            # (Metadata found stale, fixed either way: readers would refuse what is indexed.)
            functools.partial(conn.store.scan, verify=verify, fix_meta=True)
        )
        files = [file for file in found if file.finished]
        # Once begun, to its end: cut short, the index would be half replaced (found lost by
        # new drives until a rerun, while this one, which has seen it, served the half).
        await to_its_end(conn.index.replace_all(files))
        conn.index_checked = False
        logger.info("drive %s: index rebuilt from disk (%d files)", self.name, len(files))
        return len(files)

    @_redis_errors_as_unavailable
    async def gc(self, *, grace: float = 3600.0) -> GcReport:
        """Clean up after writers that died: temporary files, half-done puts and deletes.

        Only what is older than ``grace`` seconds is touched, so work in progress is safe
        (aged by the disk's clock, which stamps the files: see `DiskStore.disk_time`); an
        index entry whose bytes are gone, which no work in progress leaves, goes at once.
        Empty folders (of a writer that died once it had made a file's folder) go too.
        Afterwards no index entry lacks its bytes, and no bytes lack their index entry.

        Example:
            >>> await drive.gc(grace=600)
            GcReport(uploads_removed=2, installs_undone=1, ...)

        """
        check_seconds(self.name, "grace", grace)  # below 0, it would touch work in progress
        conn = await self._connection(writing="collect garbage (gc)")
        store, index = conn.store, conn.index
        # Aged by the disk's clock: it stamps the files (a file server's, on a shared disk).
        uploads, backups = await conn.run_sync(store.leftovers, grace)
        uploads_removed = await conn.run_sync(_unlink_each, uploads)
        undone = kept = 0
        for backup in backups:
            target = store.backup_target(backup)
            if target is None:
                continue  # a name in the reserved space that is no backup: not ours to touch
            token = await self._lock(conn, *target)
            # Finished whatever cancels the caller, as a put's install and commit.
            outcome = await to_its_end(self._settle_backup(conn, backup, *target, token))
            undone += outcome == "undone"
            kept += outcome == "kept"
        # What is on disk (by component), less what the index holds, read 1,000 paths at a
        # time: not a drive's worth of both in memory.
        on_disk = await conn.run_sync(store.file_paths)
        dangling: list[tuple[str, str, int]] = []  # indexed, bytes missing
        indexed = False
        async with contextlib.aclosing(index.all_entries()) as chunks:
            async for entries in chunks:
                for entry in entries:
                    indexed = True
                    files = on_disk.get(entry.component_name)
                    if files is not None and entry.path in files:
                        files.remove(entry.path)
                    else:
                        dangling.append((entry.component_name, entry.path, entry.version))
        if not indexed and any(on_disk.values()) and not await index.is_indexed():
            # Files, and no index at all: the server lost it. Every file would look like an
            # orphan: say so rather than delete the drive.
            raise self._index_lost(conn)
        orphans = 0
        refused: list[OSError] = []  # stray files this user may not remove: the others go
        for component, files in on_disk.items():
            # Aged by the disk's clock, and their times read after it (see `DiskStore.aged_files`).
            aged = await conn.run_sync(store.aged_files, component, sorted(files), grace)
            for start in range(0, len(aged), _GC_BATCH):
                strays = aged[start : start + _GC_BATCH]
                for stray in await self._remove_orphans(conn, component, strays):
                    if isinstance(stray, OSError):
                        refused.append(stray)
                    elif isinstance(stray, Exception):  # (a link planted meanwhile)
                        raise stray
                    else:
                        orphans += stray
        removed = 0
        by_component: dict[str, list[tuple[str, int]]] = {}
        for component, path, version in sorted(dangling):
            by_component.setdefault(component, []).append((path, version))
        for component, lacking in by_component.items():
            for start in range(0, len(lacking), _GC_BATCH):
                removed += await self._remove_dangling_many(
                    conn, component, lacking[start : start + _GC_BATCH]
                )
        folders = await conn.run_sync(store.remove_empty_folders, grace)
        report = GcReport(uploads_removed, undone, kept, orphans, removed, folders)
        if refused:
            raise storage_error(
                self.name, refused[0], "gc", None, drive_dir=store.base,
                left=f"It did the rest ({report}); the {len(refused)} stray file(s) it could "
                "not remove stay, for a gc() that can.",
            )  # fmt: skip
        return report

    async def _remove_dangling_many(
        self, conn: _Connection, component: str, entries: Sequence[tuple[str, int]]
    ) -> int:
        """`_remove_dangling` of each (path, version) of ``component``, in a few calls for all.

        One worker-thread call looks for their bytes, one round trip tries their locks; then,
        under the locks, one round trip reads their entries, one call looks again, one
        round trip drops those still of that version and still without bytes, one releases
        the locks. A path whose lock another writer holds is settled on its own once that
        writer is done. Returns how many entries were dropped.
        """
        store, index = conn.store, conn.index
        versions = dict(entries)
        paths = await conn.run_sync(store.missing_files, component, list(versions))

        async def check_and_delete(locked: list[str]) -> int:
            found = await index.owners_many(locked)
            same = [
                path
                for path, owners in zip(locked, found, strict=True)
                if (entry := owners.get(component)) and entry.version == versions[path]
            ]  # (not deleted or put meanwhile)
            still = await conn.run_sync(store.missing_files, component, same)
            outcomes = await index.commit_delete_many(component, still) if still else []
            return sum(done for done, _, _ in outcomes)

        removed, held = await _under_locks(conn, component, paths, check_and_delete, 0)
        for path in held:  # being put or deleted by another writer: wait for it
            removed += await self._remove_dangling(conn, component, path, versions[path])
        return removed

    async def _remove_dangling(
        self, conn: _Connection, component: str, path: str, version: int
    ) -> int:
        """Drop the index entry of ``version`` of a file whose bytes are gone; 1 if dropped.

        Under the path's lock, checked again: a put may have committed it meanwhile.
        """
        if not await conn.run_sync(conn.store.missing_files, component, [path]):
            return 0
        token = await self._lock(conn, component, path)

        async def check_and_delete() -> int:
            try:
                entry = (await conn.index.owners(path)).get(component)
                if entry is None or entry.version != version:  # deleted or put meanwhile
                    return 0
                if not await conn.run_sync(conn.store.missing_files, component, [path]):
                    return 0
                done, _, _ = await conn.index.commit_delete(component, path)
                return int(done)
            finally:
                await conn.index.unlock(component, path, token)

        return await to_its_end(check_and_delete())

    async def _settle_backup(
        self, conn: _Connection, backup: Path, component: str, path: str, token: str
    ) -> Literal["undone", "kept", "gone"]:
        """Keep or undo the install a dead writer's ``backup`` is of, under the lock ``token``."""
        store, index = conn.store, conn.index
        try:
            if not await conn.run_sync(os.path.lexists, backup):
                return "gone"  # its writer was only slow, and has finished meanwhile
            entry = (await index.owners(path)).get(component)
            installed = await conn.run_sync(store.installed_version, component, path)
            if entry is None:  # deleted since, or never indexed: nothing to keep
                await conn.run_sync(store.drop_backup, backup)
                await conn.run_sync(store.remove, component, path)
                return "undone"
            if entry.version == installed:
                await conn.run_sync(store.drop_backup, backup)
                return "kept"
            # Installed, then the writer died before the commit: undo.
            await conn.run_sync(store.restore, backup, component, path)
            return "undone"
        finally:
            await index.unlock(component, path, token)

    async def _remove_orphans(
        self, conn: _Connection, component: str, paths: Sequence[str]
    ) -> builtins.list[int | Exception]:
        """`_remove_orphan` of each path of ``component``, in a few calls for all.

        One round trip tries their locks; under them, one reads their entries, one
        worker-thread call removes the files still of no entry, one releases the locks.
        A path whose lock another writer holds is settled on its own once that writer is
        done. Returns, for each path, 1 if its file was removed, 0 if not (committed
        meanwhile, or removed by another gc), or why the disk refused it.
        """

        async def remove(locked: list[str]) -> dict[str, bool | Exception]:
            found = await conn.index.owners_many(locked)
            unowned = [
                path
                for path, owners in zip(locked, found, strict=True)
                if component not in owners  # (not committed meanwhile)
            ]
            outcomes = await conn.run_sync(conn.store.remove_many, component, unowned)
            return dict(zip(unowned, outcomes, strict=True))

        none: dict[str, bool | Exception] = {}
        settled, held = await _under_locks(conn, component, paths, remove, none)
        removed: builtins.list[int | Exception] = []
        for path in paths:
            if path in held:  # being put or deleted by another writer: wait for it
                try:
                    removed.append(await self._remove_orphan(conn, component, path))
                except OSError as exc:
                    if isinstance(exc, DriveError | TimeoutError | ConnectionError):
                        raise
                    removed.append(exc)
            else:
                outcome = settled.get(path, False)
                removed.append(outcome if isinstance(outcome, Exception) else int(outcome))
        return removed

    async def _remove_orphan(self, conn: _Connection, component: str, path: str) -> int:
        token = await self._lock(conn, component, path)

        async def remove_and_unlock() -> int:
            try:
                if component in await conn.index.owners(path):  # committed meanwhile
                    return 0
                # 0 if another gc() removed it first: each file is counted once.
                return int(await conn.run_sync(conn.store.remove, component, path))
            finally:
                await conn.index.unlock(component, path, token)

        return await to_its_end(remove_and_unlock())

    # -- streaming -----------------------------------------------------------------------------

    @overload
    def open(
        self, path: StrPath, mode: Literal["rb", "br"] = "rb", *, component_name: str | None = None
    ) -> Opening[DriveReader]: ...

    @overload
    def open(
        self,
        path: StrPath,
        mode: Literal["wb", "bw"],
        *,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> Opening[DriveWriter]: ...

    @overload
    def open(
        self,
        path: StrPath,
        mode: str,
        *,
        component_name: str | None = None,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> Opening[DriveReader | DriveWriter]: ...

    def open(
        self,
        path: StrPath,
        mode: str = "rb",
        *,
        component_name: str | None = None,
        if_version: int | None = None,
        exist_ok: bool = True,
    ) -> Opening[DriveReader | DriveWriter]:
        """Open a file of the drive as a stream: ``"rb"`` to read, ``"wb"`` to write.

        Await the result, or use it as an async context manager (aiofiles-style). A reader
        (`DriveReader`) sees one complete version from start to end, even while the file is
        replaced; it reads, seeks and reads ranges without loading the file. A writer
        (`DriveWriter`) streams into a temporary upload and commits it on close like `put`:
        nothing is visible before, and nothing is left if the block fails.

        Example:
            >>> async with drive.open("big.bin") as f:
            ...     position = await f.seek(1 << 20)
            ...     chunk = await f.read(4096)
            >>> async with drive.open("out/log.txt", "wb") as f:
            ...     written = await f.write(b"results")
            >>> f.info.version if f.info else None  # committed on leaving the block
            1

        Args:
            path: the drive path.
            mode: ``"rb"`` or ``"wb"``; files are binary.
            component_name: (reading) whose copy to open, when several components own it.
            if_version: (writing) commit only if this component's copy has this version
                then (0: only if it has none); see `put`.
            exist_ok: (writing) False: create only; see `put`.

        Raises:
            DriveFileNotFoundError: (reading) no such file.
            AmbiguousPathError: (reading) several components own it; name one.
            DriveTimeoutError: (reading) see `read_bytes`.
            InvalidConfigError: a mode other than ``"rb"``/``"wb"``, or an argument of the
                other mode.

        """
        _paths.check_path_type(self.name, path)
        reading = check_mode(self.name, os.fspath(path), mode) == "rb"
        drive_path = self._path(path, file=True, new=not reading)
        if reading:
            if if_version is not None or not exist_ok:
                raise InvalidConfigError(
                    f"Drive {self.name!r}: if_version and exist_ok apply to writing; open "
                    f"{drive_path!r} with mode 'wb' to use them."
                )
            if component_name is not None:
                self._check_component(component_name, path)
            return Opening(
                functools.partial(self._open_reader, drive_path, component_name),
                f"lit://{self.name}/{drive_path} 'rb'",
            )
        if component_name is not None:
            raise InvalidConfigError(
                f"Drive {self.name!r}: a writer of {drive_path!r} writes as the drive's own "
                "component; create the Drive with component_name= instead."
            )
        precondition = self._precondition(drive_path, if_version, exist_ok)
        return Opening(
            functools.partial(self._open_writer, drive_path, precondition),
            f"lit://{self.name}/{drive_path} 'wb'",
        )

    @_redis_errors_as_unavailable
    async def _open_reader(self, path: str, component_name: str | None) -> DriveReader:
        conn = await self._connection()

        async def open_reader(info: FileInfo) -> DriveReader:
            # A caller cancelled meanwhile gets no reader: the file it opened is closed.
            fd = await conn.run_sync(_open_version, conn.store, info, dropped=os.close)
            return DriveReader(self.name, info, fd)

        return await self._read_committed(conn, path, component_name, open_reader)

    @_redis_errors_as_unavailable
    async def _open_writer(self, path: str, precondition: str) -> DriveWriter:
        conn = await self._connection(writing=f"write {path!r}")
        checked = await conn.index.check_put(
            conn.config.component_name, path, conn.config.allow_duplicates, precondition
        )
        await self._raise_put_refused(conn, path, checked, precondition)
        # A caller cancelled meanwhile gets no writer: the upload it made is dropped.
        out, tmp, named = await conn.run_sync(conn.store.open_upload, dropped=_drop_upload)
        commit = functools.partial(self._commit_upload, conn.store, path, precondition)
        return DriveWriter(self.name, path, out, tmp, named, commit, lambda: self._closed)

    @_redis_errors_as_unavailable
    async def _commit_upload(
        self,
        store: DiskStore,
        path: str,
        precondition: str,
        staged: Staged,
        on_commit: Callable[[FileInfo], None],
    ) -> FileInfo:
        if self._closed:  # (closed as it finished the upload)
            await anyio.to_thread.run_sync(store.discard, staged)
            raise self._closed_error(f"close of {path!r}", changes=False)
        # The connection of the loop closing the file: the one it was opened in may have
        # ended since (a writer kept from one asyncio.run() to the next).
        try:
            conn = await self._connection(writing=f"write {path!r}")
        except BaseException:
            await anyio.to_thread.run_sync(store.discard, staged)
            raise
        return await self._put(conn, path, staged, precondition, on_commit=on_commit)

    # -- watching ----------------------------------------------------------------------------

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
    ) -> Watch:
        """Return a `Watch` of the changes below ``path``: an async iterator of `DriveEvent`.

        The starting point is fixed now: every change committed after this call is delivered,
        in the drive's order, even if iteration starts later.

        Example:
            >>> async for event in drive.watch("ckpt"):
            ...     print(event.change, event.path)
            added ckpt/3.pt

            >>> async with drive.watch(since=saved_id, timeout=5) as events:
            ...     async for event in events:
            ...         saved_id = event.id

        Args:
            path: the folder (or file) to watch; ``"."`` for the whole drive.
            recursive: include changes in sub-folders; False: direct children only.
            since: resume right after this event id (a `DriveEvent.id` or `Watch.cursor`);
                ``"0"`` replays every event retained. A cursor older than the log raises
                `CursorExpiredError`.
            group: join this consumer group: each event goes to exactly one member, and is
                acknowledged when the member asks for the next one (or closes the watch).
            timeout: end the iteration (normally) after this many seconds without an event.
            claim_idle: in a group, hand an event to another member when the member holding
                it has not acknowledged it for this many seconds (it died, say).
            member: in a group, this member's name, kept across restarts (default: one of
                its own per watch): a member of that name that died holding an event gets
                it back at its first read, at once, rather than another member after
                ``claim_idle``. Give each running member a name of its own.

        """
        if self._closed:  # (said here, as by SyncDrive.watch: not at its first read)
            raise self._closed_error()
        folder = self._path(path, allow_root=True)
        check_flag(self.name, "recursive", recursive)
        if group is not None:
            check_group_name(self.name, group)
        if member is not None:
            if group is None:
                raise InvalidConfigError(
                    f"Drive {self.name!r}: member={member!r} names a consumer group's member: "
                    "pass group= too."
                )
            check_group_name(self.name, member, "member name")
        check_seconds(self.name, "timeout", timeout)
        check_seconds(self.name, "claim_idle", claim_idle, optional=False)
        if claim_idle >= _CLAIM_IDLE_MAX:  # (inf; or more ms than the server counts)
            raise InvalidConfigError(
                f"Drive {self.name!r}: claim_idle={claim_idle!r} would leave a dead member's "
                "events unhandled forever; give the longest time a member may take over an "
                f"event (below {_CLAIM_IDLE_MAX:.0e} s)."
            )
        if since is not None:
            try:
                parse_id(since if isinstance(since, str) else "")
            except ValueError:
                raise (InvalidConfigError if isinstance(since, str) else ConfigTypeError)(
                    f"Drive {self.name!r}: since={since!r} is not an event id; pass a "
                    "DriveEvent.id, a Watch.cursor, or '0' to replay everything retained."
                ) from None
        return Watch(
            self,
            folder,
            recursive=recursive,
            since=since,
            group=group,
            timeout=timeout,
            claim_idle=claim_idle,
            member=member,
        )

    @_redis_errors_as_unavailable
    async def groups(self) -> builtins.list[GroupInfo]:
        """Return the drive's consumer groups (``watch(group=...)``), sorted by name.

        Example:
            >>> [(g.name, g.members, g.pending, g.lag) for g in await drive.groups()]
            [('evaluators', 2, 1, 0)]

        """
        conn = await self._connection(check_index=False)
        return await conn.index.groups()

    @_redis_errors_as_unavailable
    async def remove_group(self, group: str, *, force: bool = False) -> bool:
        """Remove a consumer group: its position in the change log, and its members.

        Groups are kept when their last member leaves (the next one goes on from there):
        remove those no longer used, such as a finished run's. Events of the drive are not
        touched; other groups and plain watches go on as before.

        Example:
            >>> await drive.remove_group("evaluators")
            True

        Args:
            group: the group's name.
            force: remove it even while a member works: one that holds an event not yet
                acknowledged, or read within the last 10 s. Such a member's next read
                raises `CursorExpiredError` (the event it held counts as handled).

        Returns:
            True if the group was removed; False if the drive had no such group.

        Raises:
            GroupInUseError: a member works (see ``force``); nothing was removed.

        """
        check_group_name(self.name, group)
        check_flag(self.name, "force", force)
        conn = await self._connection(check_index=False, writing=f"remove group {group!r}")
        reply = await conn.index.remove_group(
            group, active_ms=int(_watch.ACTIVE_MEMBER * 1000), force=force
        )
        if reply[0] == "busy":
            member, held, idle_ms = reply[1:]
            doing = (
                f"holds {held} event{'' if held == 1 else 's'} not yet acknowledged"
                if held
                else f"read {idle_ms / 1000:.1f} s ago"
            )
            raise GroupInUseError(
                f"Drive {self.name!r}: consumer group {group!r} is in use (member "
                f"{member!r} {doing}); nothing was removed. Close its members' watches "
                "first, or pass force=True to remove it under them (their next read "
                "raises CursorExpiredError; a member that died holding events stays in "
                "the group: removing it then takes force=True)."
            )
        logger.info("drive %s: consumer group %r %s", self.name, group, reply[0])
        return bool(reply[0] == "removed")


_checked_servers: set[str] = set()


async def _check_server_settings(client: RedisClient, url: str) -> None:
    """Warn (once per server and process) if the server may lose a drive's index."""
    if url in _checked_servers:
        return
    _checked_servers.add(url)
    try:
        settings: dict[Any, Any] = {}
        for name in ("maxmemory-policy", "appendonly", "save"):
            settings.update(await client.config_get(name))
    except redis.exceptions.ResponseError:  # CONFIG is disabled (managed services)
        return
    policy = settings.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        logger.warning(
            "Redis at %s has maxmemory-policy %s: it may evict a drive's index under memory "
            "pressure. Set maxmemory-policy noeviction.",
            redact_url(url),
            policy,
        )
    if settings.get("appendonly") == "no" and not settings.get("save"):
        logger.warning(
            "Redis at %s keeps no persistence (appendonly no, no save points): a restart "
            "loses every drive's index (rebuild_index() can recover it from the disk). Set "
            "appendonly yes.",
            redact_url(url),
        )


def _restore(cls: type[DriveT], config: DriveConfig) -> DriveT:
    return cls(
        f"lit://{config.name}",
        component_name=config.component_name,
        allow_duplicates=config.allow_duplicates,
        root=config.root,
        redis_url=config.redis_url,
    )


def _parent(path: str) -> str:
    return path.rpartition("/")[0] or "."


async def _side_by_side(
    conn: _Connection, items: Sequence[T], move: Callable[[T], Awaitable[None]]
) -> None:
    """Await ``move(item)`` for each item, `FOLDER_CONCURRENCY` at a time.

    For the batches of a folder put's files, and of a recursive delete's.

    The first failure stops the rest from starting (those under way finish) and is raised
    as itself, not in an exception group. A single item is moved directly, without tasks.
    """
    if len(items) == 1:
        await move(items[0])
        return
    pending = iter(items)
    failures: list[Exception] = []

    async def mover() -> None:
        for item in pending:
            if failures:
                return
            try:
                await move(item)
            except Exception as exc:
                failures.append(exc)
                return

    with conn.side_by_side():
        async with anyio.create_task_group() as movers:
            for _ in range(min(FOLDER_CONCURRENCY, len(items), _batches_the_fds_allow())):
                movers.start_soon(mover)
    if failures:
        raise failures[0]


async def _under_locks(
    conn: _Connection,
    component: str,
    paths: Sequence[str],
    work: Callable[[list[str]], Awaitable[T]],
    none_taken: T,
) -> tuple[T, list[str]]:
    """Try the commit locks of ``paths`` (one round trip) and run ``work`` on those taken.

    ``work(locked paths)`` runs to its end whatever cancels the caller (what it changes in
    the index and on disk goes together), then the locks are released (one round trip).
    Returns what it returned (``none_taken`` if no lock was taken), and the paths whose
    lock another writer holds, in their order: the caller settles those on their own.
    """
    index = conn.index
    tokens = await index.try_lock_many(component, paths, ttl=LOCK_TTL) if paths else []
    locked = [(path, token) for path, token in zip(paths, tokens, strict=True) if token]
    held = [path for path, token in zip(paths, tokens, strict=True) if token is None]
    if not locked:
        return none_taken, held

    async def work_and_unlock() -> T:
        try:
            return await work([path for path, _ in locked])
        finally:
            await index.unlock_many(component, locked)

    return await to_its_end(work_and_unlock()), held


def _batches_the_fds_allow() -> int:
    """Return how many batches of a folder put this process's open-file limit leaves room for.

    A batch keeps its new files open until they are made durable together, and reads as
    many: ~2 descriptors a file. Under a low limit (``ulimit -n 256``), 8 batches at once
    ran out (EMFILE) where one after the other would not. At least 1.
    """
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return FOLDER_CONCURRENCY
    if soft == resource.RLIM_INFINITY:
        return FOLDER_CONCURRENCY
    return max(1, (soft - in_use) // (4 * _PUT_BATCH_FILES))


#: What an install hands its commit: the new file's info, the backup of the bytes it
#: replaced (None: none) and the identity of the upload it installed.
_Installed = tuple[FileInfo, Path | None, FileIdentity]


def _install_staged(
    store: DiskStore,
    component: str,
    path: str,
    staged: Staged,
    version: int,
    *,
    sync_folder: bool = True,
) -> _Installed:
    """Install ``staged`` as ``version`` of ``path`` (in a worker thread); discard it on error."""
    info, meta = _new_version(store, component, path, staged, version)
    try:
        identity = upload_identity(staged)
        backup = store.install(staged, component, path, meta, sync_folder=sync_folder)
    except BaseException:
        store.discard(staged)
        raise
    return info, backup, identity


async def _clock_of(
    client: RedisClient, events: str, wire: Wire | None = None
) -> tuple[float, float, float]:
    """Measure the clock of the server holding the change log ``events`` (one round trip).

    Returns its time (ms since the epoch), the `steady_now()` it was at, and the measure's
    uncertainty (ms): half the round trip, and a millisecond. On the ``wire`` where there
    is one (no connection of its own); in a Cluster, on the node that stamps the log's
    ids, not any other: their clocks may differ.
    """
    before = steady_now()
    if wire is not None:
        seconds, micros = (int(part) for part in await wire.call("TIME"))
    elif isinstance(client, RedisCluster):
        node = client.get_node_from_key(events)
        seconds, micros = await client.execute_command("TIME", target_nodes=node)
    else:
        seconds, micros = await client.time()
    after = steady_now()
    return seconds * 1000 + micros / 1000, (before + after) / 2, (after - before) * 500 + 1


def _new_version(
    store: DiskStore, component: str, path: str, staged: Staged, version: int
) -> tuple[FileInfo, dict[str, object]]:
    """Return the `FileInfo` of ``staged`` installed as ``version``, and its disk metadata."""
    info = FileInfo(path, staged.size, store.clock(), staged.checksum, version, component)
    return info, {"size": info.size, "mtime": info.mtime, "checksum": info.checksum,
                  "version": version}  # fmt: skip


def _install_new(
    store: DiskStore,
    component: str,
    path: str,
    stage: _Stage,
    version: int,
    *,
    sync: bool = True,
    start_writing: bool = True,
) -> _Created:
    """Stage and install ``version`` of a new file without its lock (in a worker thread).

    Returns its info, its identity and what remains to make it durable (see `_Unsynced`:
    nothing, unless ``sync`` is False; ``start_writing``: see `DiskStore.settle_new`); or
    the upload, still staged, where no new file can be made at the path (a file there
    already, ...): the put then takes the lock. Where the disk allows (`DiskStore.open_new`)
    the file is written straight at its path, else staged as an upload and linked or
    renamed there (`DiskStore.install_new`).
    """
    store.on_local_disk  # noqa: B018  # looked up once, here in a worker thread
    opened: list[NewFile] = []

    def open_new() -> NewFile | None:  # once the source is found to be a small file
        new = store.open_new(component, path)
        opened.extend([new] if new is not None else [])
        return new

    try:
        staged = stage(False, open_new)
        info, meta = _new_version(store, component, path, staged, version)
        if staged.in_place:
            if store.settle_new(staged, meta, sync=sync, start_writing=start_writing):
                return info, opened[0].identity, None if sync else staged
            # No attribute after all: the way of uploads, which keeps the metadata in files.
            store.restore(None, component, path, installed=opened[0].identity)
            opened.clear()
            staged = stage(False)
            info, meta = _new_version(store, component, path, staged, version)
    except BaseException:
        if opened:
            store.restore(None, component, path, installed=opened[0].identity)
        raise
    try:
        identity = store.install_new(staged, component, path, meta, sync_folder=sync)
    except BaseException:
        store.discard(staged)
        raise
    return staged if identity is None else (info, identity, None if sync else "folder")


#: What a new file installed with ``sync=False`` (`_install_new`) still needs to survive a
#: crash: nothing (None); the fsync of its folder ("folder": linked in as an upload); or,
#: written in place, its own fsync (`DiskStore.sync_new` of the Staged).
_Unsynced = Literal["folder"] | Staged | None


class _Stage(Protocol):
    """Writes an upload: ``stage(sync)``, or into a new file at its path (`DiskStore.open_new`)."""

    def __call__(self, sync: bool, into: OpenNew | None = None, /) -> Staged: ...


_NewFile = tuple[str, str, _Stage, int]  # component, path, stage, version
#: A new file installed (its info, its identity, what it still needs to survive a crash),
#: or the upload, still staged, for the locked way.
_Created = tuple[FileInfo, FileIdentity, _Unsynced] | Staged


def _install_new_each(store: DiskStore, files: list[_NewFile]) -> list[_Created | BaseException]:
    """`_install_new` for each file, then the fsyncs that make them all durable.

    Files written in place are fsynced one after the other once all are written (the
    disk writes them meanwhile); each folder that uploads were linked into is fsynced once
    for all of them. A file whose fsync fails is taken back, and a folder whose fsync
    fails takes back the files linked into it (their outcome: the error); the others stand.
    """
    if len(files) == 1:
        component, path, stage, version = files[0]
        try:
            return [_install_new(store, component, path, stage, version)]
        except Exception as exc:
            return [exc]
    outcomes: list[_Created | BaseException] = []
    unsettled: list[_Unsettled] = []
    with store.sync_together(len(files)) as together:
        for number, (component, path, stage, version) in enumerate(files):
            try:
                created = _install_new(store, component, path, stage, version, sync=False,
                                       start_writing=not together.planned)  # fmt: skip
            except Exception as exc:  # this file's: the others go on
                outcomes.append(exc)
                continue
            if isinstance(created, tuple):
                info, identity, unsynced = created
                unsettled.append(_Unsettled(number, component, path, identity, None, unsynced))
                created = (info, identity, None)
            outcomes.append(created)
        _settle_installs(store, unsettled, outcomes, together)
    return outcomes


class _Unsettled(NamedTuple):
    """A file a worker-thread call installed, not yet durable (see `_settle_installs`)."""

    place: int  # in the call's outcomes
    component: str
    path: str
    identity: FileIdentity
    backup: Path | None  # of the file it replaced
    unsynced: _Unsynced


def _settle_installs(
    store: DiskStore,
    installs: Sequence[_Unsettled],
    outcomes: list[Any],
    together: SyncTogether,
) -> None:
    """Make what one worker-thread call installed durable; what cannot be, taken back.

    With one syncfs of the filesystem for all, where that applies (``together``, opened
    before the installs: see `SyncTogether`). Else the files written in place are fsynced
    one after the other (all written by now: the disk wrote them meanwhile), then each
    folder that files were linked or renamed into, once for all of them. A file whose
    fsync fails is taken back, and a folder whose fsync fails takes back the files put into
    it: their outcome becomes the error.
    """
    if together.sync([install.identity for install in installs if install.unsynced]):
        for install in installs:
            if isinstance(install.unsynced, Staged):
                store.close_new(install.unsynced)
        return
    by_folder: dict[tuple[str, str], list[_Unsettled]] = {}
    for install in installs:
        if isinstance(install.unsynced, Staged):
            try:
                store.sync_new(install.unsynced)
            except OSError as exc:  # it might not survive a crash: undo it
                store.restore(None, install.component, install.path, installed=install.identity)
                outcomes[install.place] = exc
        elif install.unsynced == "folder":
            folder = (install.component, _parent(install.path))
            by_folder.setdefault(folder, []).append(install)
    for group in by_folder.values():
        try:
            store.sync_folder_of(group[0].component, group[0].path)
        except OSError as exc:  # the new names might not survive a crash: undo them
            for install in group:
                store.restore(install.backup, install.component, install.path,
                              installed=install.identity)  # fmt: skip
                outcomes[install.place] = exc


def _put_batches(files: Sequence[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Group a folder put's files (relative path, size) for `Drive._put_batch`, in order.

    Small files go in batches of at most `_PUT_BATCH_FILES` files or `_PUT_BATCH_BYTES`
    bytes; a file over `_SMALL_WRITE` bytes goes alone (staged before its lock is taken).
    """
    batches: list[list[tuple[str, int]]] = []
    batch: list[tuple[str, int]] = []
    batch_bytes = 0
    for rel, size in files:
        if size > _SMALL_WRITE:
            batches.append([(rel, size)])
            continue
        batch.append((rel, size))
        batch_bytes += size
        if len(batch) == _PUT_BATCH_FILES or batch_bytes >= _PUT_BATCH_BYTES:
            batches.append(batch)
            batch, batch_bytes = [], 0
    if batch:
        batches.append(batch)
    return batches


class _Looks:
    """A read's looks at a path again, while its bytes on disk are not the index's version.

    Each look that finds a newer version is progress (writers replace the path while it is
    read): the read goes on for up to `_REPLACED_FOR` seconds. Looks that find the index
    where it was, with other bytes on disk, go on for up to `_STUCK_FOR` seconds, further
    and further apart.
    """

    def __init__(self, drive: Drive, conn: _Connection) -> None:
        self.drive = drive
        self.conn = conn
        self.stuck_since: float | None = None
        self.pause = 0.01
        self.deadline = time.monotonic() + _REPLACED_FOR

    async def again(self, looked: FileInfo, found: FileInfo, exc: FileNotFoundError) -> None:
        """Return if ``found`` is to be read, or raise why not.

        ``found``: the path looked up again after reading ``looked`` failed with ``exc``.
        """
        drive, path = self.drive, looked.path
        now = time.monotonic()
        if (found.component_name, found.version) != (looked.component_name, looked.version):
            self.stuck_since, self.pause = None, 0.01
            if now < self.deadline:
                return
            raise DriveTimeoutError(
                f"Drive {drive.name!r}: {path!r} was replaced faster than it could be read, "
                f"for {_REPLACED_FOR:g} s (version {found.version} now); retry when its "
                "writers pause."
            ) from None
        if not isinstance(exc, OtherVersionError):
            raise drive._bytes_missing(self.conn, found) from None
        if self.stuck_since is None:
            self.stuck_since = now
        elif now - self.stuck_since >= _STUCK_FOR:
            raise DriveTimeoutError(
                f"Drive {drive.name!r}: the bytes of {path!r} on disk are not version "
                f"{found.version}, the index's, however often looked up: a writer died "
                "between installing a new version and committing it (run gc() to settle "
                "it), or, after a power cut, the Redis server lost its last commits (run "
                "rebuild_index() first: gc() would take the files it lost for orphans)."
            ) from None
        await anyio.sleep(self.pause)  # a commit on its way, maybe
        self.pause = min(self.pause * 2, 0.2)


class FolderNotFileError(DriveIsADirectoryError):
    """A get of a file only (`Drive._get_file`) found a folder in the drive: nothing copied."""


class _WayCleared(Exception):
    """A put met bytes a delete cut short left in its way on disk, and removed them.

    ``error``: what to raise if the put cannot be tried again (its upload went).
    """

    def __init__(self, error: DriveError) -> None:
        super().__init__(str(error))
        self.error = error


class _NotASmallFile(Exception):
    """What `put` tried first (one small local file) does not apply: take the general way."""


def _drop_upload(upload: tuple[BinaryIO, Path, bool]) -> None:
    """Close and remove an upload `DiskStore.open_upload` made, for a caller cancelled."""
    out, tmp, named = upload
    out.close()
    if named:
        tmp.unlink(missing_ok=True)


def _open_version(store: DiskStore, info: FileInfo) -> int:
    """Open the bytes of ``info``; return the descriptor (see `DiskStore.open_file`)."""
    return store.open_file(info.component_name, info.path, info)[0]


def _read_looking(store: DiskStore, component: str, path: str, expected: FileInfo) -> bytes:
    """`DiskStore.read`, in a worker thread, having looked where the root is.

    Once the root is known to be on this machine's disks, the next small reads are made in
    the event loop's thread (see `Drive.read_bytes`), even by a drive that only reads.
    """
    store.on_local_disk  # noqa: B018  # looked up once, here in a worker thread
    return store.read(component, path, expected)


def _copy_each(
    store: DiskStore, quick: QuickCalls, copies: list[tuple[FileInfo, Path, bool]]
) -> list[bool | BaseException]:
    """Copy each (drive file, local path, overwrite) out; return what each returned or raised.

    Then, for the next gets, look whether each local folder is on this machine's disks.
    """
    outcomes: list[bool | BaseException] = []
    # Once a local file is found at a copy's path (a folder got again), the next copies look
    # before they copy: a copy made first, then dropped, costs a new file's inode each.
    found_in_place = False
    for info, dest, overwrite in copies:
        try:
            copied = store.copy_out(
                info.component_name, info.path, dest, info.checksum, overwrite,
                None, info, look_first=found_in_place,
            )  # fmt: skip
            outcomes.append(copied)
            found_in_place = found_in_place or not copied
        except Exception as exc:  # this file's: the others go on
            outcomes.append(exc)
            found_in_place = found_in_place or isinstance(exc, FileExistsError)
        quick.learn(QuickCalls.folder_of(dest))
    return outcomes


def _stage_small_file(
    store: DiskStore, local: Path, sync: bool, into: OpenNew | None = None
) -> Staged:
    """Stage ``local`` if it is a regular file of at most `_SMALL_WRITE` bytes.

    Else (missing, a folder, larger, not a regular file, not even readable for its size)
    raise `_NotASmallFile`, having opened nothing: a FIFO is never opened.
    """
    try:
        st = local.stat()
    except OSError:
        raise _NotASmallFile from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _SMALL_WRITE:
        raise _NotASmallFile
    return store.stage_file(local, sync, into)


def _local_file_above(dest: Path) -> str | None:
    """Return the local file that stands where a folder above ``dest`` must be, if one does."""
    for folder in dest.parents:
        if os.path.lexists(folder):  # the nearest that is there: a folder, or the culprit
            return None if folder.is_dir() else str(folder)
    return None


def _special_kind(local: Path) -> str | None:
    """Return what is at ``local`` if neither a file nor a folder ("a FIFO", ...), else None."""
    try:
        mode = local.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "a broken link" if local.is_symlink() else None
    except OSError as exc:  # a link loop, say
        return f"unreadable ({exc.strerror})"
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), None)


def _local_name(path: StrPath) -> str:
    """Return the name of the local file or folder ``path`` (of ``.`` and ``..``: their own)."""
    return os.path.basename(os.path.abspath(path))


def _unlink_each(paths: Sequence[Path]) -> int:
    """Remove each path; return how many were there to remove (not gone already)."""
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _local_files(local: Path) -> list[tuple[str, int]] | None:
    """Return [("", size)] for a local file, or (relative path, size) of a folder's files.

    A folder's files come sorted; None means there is neither file nor folder at ``local``.
    Links to files are followed; links to folders, broken links and special files (pipes,
    sockets) are left out. Folders that cannot be read or searched, and files that cannot
    be read, raise (PermissionError, naming them all, after the whole walk): a put must not
    store a folder without telling what it left out, nor store part of it before it finds
    a file it cannot read.
    """
    try:
        st = local.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(st.st_mode):
        return [("", st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        return None
    found: list[tuple[str, int]] = []
    refused: list[str] = []
    folders = [""]  # (walked without recursion: os.walk's fails ~1000 folders down)
    while folders:
        rel = folders.pop()
        try:
            entries = os.scandir(local / rel if rel else local)
        except PermissionError as exc:
            refused.append(os.fsdecode(exc.filename))
            continue
        with entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    if entry.is_dir():  # a link to a folder is not walked, as by os.walk
                        if not entry.is_symlink():
                            folders.append(name)
                        continue
                    st = os.stat(entry.path)  # links to files are followed
                except PermissionError:  # (a folder that cannot be searched)
                    refused.append(entry.path)
                    continue
                except OSError as exc:
                    if exc.errno in _BROKEN_LINK:
                        continue
                    raise
                if stat.S_ISREG(st.st_mode):
                    if not os.access(entry.path, os.R_OK, effective_ids=ACCESS_AS_EFFECTIVE):
                        refused.append(entry.path)
                    found.append((name, st.st_size))
    if refused:
        raise _unreadable(sorted(refused))
    return sorted(found)


def _unreadable(paths: list[str]) -> OSError:
    """Return the error of a folder put that cannot read ``paths`` (files, folders) of it."""
    if len(paths) == 1:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), paths[0])
    shown = ", ".join(shorten(path) for path in paths[:_UNREADABLE_SHOWN])
    more = len(paths) - _UNREADABLE_SHOWN
    shown += f" and {more} more" if more > 0 else ""
    # (No one filename: the reason names them.)
    reason = f"permission denied to read {len(paths)} files or folders: {shown}"
    return ExplainedOSError(errno.EACCES, None, reason, "")


#: How many of the paths a put cannot read its error names (then: "and N more").
_UNREADABLE_SHOWN = 5


#: What `os.stat` of a link meets where the link leads nowhere: gone, through a file, a loop.
_BROKEN_LINK = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
