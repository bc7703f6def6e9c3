"""`Watch`: a lossless, ordered, resumable feed of a drive's changes.

A watch reads the drive's change log (a Redis stream), so it loses nothing while it is slow or
briefly disconnected, and it works across machines, where file-system notifications do not.
With ``group=`` the members of a consumer group share the events, each handled by exactly one
member, and events held by a member that died are handed to another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import redis.exceptions

from . import _index, _portal
from ._client import CLUSTER_MOVING, CLUSTER_PASSING, CONNECTION_LOST
from ._config import check_seconds
from ._events import Change, DriveEvent, parse_id, steady_now
from ._exceptions import (
    CursorExpiredError,
    DriveClosedError,
    DriveError,
    DriveTypeError,
    InvalidConfigError,
)
from ._tasks import to_its_end

if TYPE_CHECKING:
    from ._drive import Drive, _Connection
    from ._index import GroupStep

__all__ = ["Watch"]

logger = logging.getLogger("asyncdrive")

#: A blocking read waits at most this long per call, well inside the client's reply timeout.
BLOCK_SLICE = 5.0
#: How long a watch keeps retrying a lost connection before it gives up.
RECONNECT_TIMEOUT = 60.0
#: Default idle time after which a group member's unacknowledged event goes to another member.
DEFAULT_CLAIM_IDLE = 30.0
#: A group member that read this recently (s) keeps the group's path: one watching another
#: path is refused meanwhile. (A waiting member reads at least every `BLOCK_SLICE`.)
ACTIVE_MEMBER = 2 * BLOCK_SLICE
#: How much longer than its blocking time a read's reply may take, in a call with a timeout,
#: before the server counts as not answering (hung): the call's timeout holds then too.
_REPLY_MARGIN = 1.0

_BATCH = 500
#: What a watch retries (for up to `RECONNECT_TIMEOUT`): a lost connection, a cluster's
#: slot moving (resharding) or failing over.
_RETRIED = (*CONNECTION_LOST, *CLUSTER_MOVING, *CLUSTER_PASSING)


def _for_a_while(refused: redis.exceptions.ResponseError) -> bool:
    """Tell whether a server refuses for a while only: a watch retries as for a lost link.

    A group's step writes (it takes an event): during a failover the old primary is read
    only or short of replicas (`min-replicas-to-write`), a new one may still load its data;
    a server may be busy with another client's script. A plain watch only reads.
    """
    return isinstance(
        refused, redis.exceptions.ReadOnlyError | redis.exceptions.BusyLoadingError
    ) or str(refused).startswith(("NOREPLICAS", "MASTERDOWN", "BUSY", "LOADING"))


class Watch:
    """An async iterator (and async context manager) of the events (`DriveEvent`) of a drive.

    Made by `Drive.watch`; its starting point is fixed when it is made, so nothing committed
    after ``drive.watch()`` returns is missed, however late iteration starts.

    Example:
        >>> async with drive.watch("ckpt", timeout=60) as events:
        ...     async for event in events:
        ...         print(event.change, event.path)
        added ckpt/1.pt

    ``cursor`` is the id of the last event handed out: save it, and pass it as
    ``watch(since=cursor)`` to resume after it in another process or after a restart.

    """

    def __init__(
        self,
        drive: Drive,
        folder: str,
        *,
        recursive: bool,
        since: str | None,
        group: str | None,
        timeout: float | None,
        claim_idle: float,
        member: str | None = None,
    ) -> None:
        self._drive = drive
        self._folder = folder
        self._recursive = recursive
        # Without since: "now", on this machine's steady clock, turned into an event id on
        # the server's clock at the first read: see `_resolve_start`. Guessed now from the
        # drive's last measure, if it has one.
        self._called_at = steady_now()
        conn = drive._conn
        self._start_guess = conn.server_ms(self._called_at) if conn is not None else None
        self._read_cursor = since or ""
        self._since = since
        self._group = group
        self._timeout = timeout
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._consumer = member or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: Named by the user, it takes back what a member of its name held (it was restarted)
        #: at its first steps, until none is left.
        self._named = member is not None
        self._own_first = self._named
        self._buffer: collections.deque[DriveEvent] = collections.deque()
        self._cursor = since or ""
        self._started = False
        #: The server the last read was of, where known (see `_read`), and whether its
        #: cursor is an event it read (not a start made from the clock, or an id given).
        self._server: tuple[str, int] | None = None
        self._read_an_event = False
        self._to_ack: str | None = None
        self._joined = False  # a group member that has read (and so may leave the group)
        self._done = False
        self._failing_since: float | None = None
        #: What its last read failed on, while it is failing (`_failing_since`).
        self._last_failure: BaseException | None = None
        #: One `next` at a time: two tasks (or threads) sharing a watch get each event once.
        self._next_lock = anyio.Lock()
        self._pid = os.getpid()
        #: The read under way, which `aclose` cuts short (from another task).
        self._reading: anyio.CancelScope | None = None

    @property
    def cursor(self) -> str:
        """The id to resume after (``watch(since=cursor)``): the last event handed out.

        Before the first: the ``since`` given; else ``""`` until the watch has looked at the
        log (its first `next`, or `pin_start`), then the newest event it found there
        (``"0-0"``: none yet).
        """
        return self._cursor

    @property
    def group(self) -> str | None:
        """The consumer group this watch belongs to, if any."""
        return self._group

    def __reduce__(self) -> Any:
        raise DriveTypeError(
            f"cannot pickle {self!r}: it reads on this process's connection; pass its cursor "
            "and watch again there: drive.watch(path, since=cursor)"
        )

    def __repr__(self) -> str:
        parts = [repr(self._drive.id), f"path={self._folder or '.'!r}"]
        if not self._recursive:
            parts.append("recursive=False")
        if self._group:
            parts.append(f"group={self._group!r}")
        if self._named:
            parts.append(f"member={self._consumer!r}")
        if self._cursor:
            parts.append(f"cursor={self._cursor!r}")
        return f"Watch({', '.join(parts)})" + (" [closed]" if self._done else "")

    # -- iteration ---------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> DriveEvent:
        event = await self.next(self._timeout)
        if event is None:  # watch(timeout=...): the iteration ends, and with it the watch
            await self.aclose()  # (in a group: the last event handled, the member gone)
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float | None = None) -> DriveEvent | None:
        """Return the next event, or None if none comes within ``timeout`` s.

        The watch stays open after None: call ``next`` again to keep polling. ``timeout=0``
        takes an event already committed, without waiting for one. None is said once the
        change log is read to its end: a backlog of other paths' events (a watch of a
        folder replaying a busy drive's log) is read through first, which can take longer
        than ``timeout``. Returns None at once, or as soon as it is, once the watch is
        closed (by another task, say).
        """
        check_seconds(self._drive.name, "timeout", timeout)
        if self._done:
            return None
        if self._pid != os.getpid():  # forked: a parent's read in flight holds it for ever
            self._pid, self._next_lock, self._reading = os.getpid(), anyio.Lock(), None
        async with self._next_lock:
            try:
                return await self._next(timeout)
            except DriveClosedError:
                if not _portal.exiting:
                    raise
                self._done = True  # its drive closed at interpreter exit: ended, as by close
                return None

    async def _next(self, timeout: float | None) -> DriveEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        #: The watch has read the log to its newest event (since this call began): only
        #: then is "no event" an answer. A read of a full batch (or a group step that
        #: skipped events of other paths) leaves more to read, waited for or not.
        caught_up = False
        while not self._done:
            while self._buffer:
                event = self._buffer.popleft()
                self._cursor = event.id
                if self._group is not None:
                    self._to_ack = event.id  # acknowledged by the next step (or aclose)
                if self._matches(event):
                    return event
            remaining = None if deadline is None else deadline - time.monotonic()
            if caught_up and remaining is not None and remaining <= 0:
                return None
            # A blocking read must end well within the reply timeout.
            block = min(BLOCK_SLICE, self._drive._redis_timeout() / 2)
            block = block if remaining is None else max(0.0, min(remaining, block))
            with anyio.CancelScope() as self._reading:
                try:
                    conn = await self._drive._connection(
                        writing=None if self._group is None else f"join group {self._group!r}"
                    )
                    # With a timeout, a server that does not answer (hung) keeps to it too.
                    limit = None if deadline is None else block + _REPLY_MARGIN
                    with anyio.fail_after(limit):
                        if self._group is None:
                            read_all = await self._read(conn, block)
                        else:
                            read_all = await self._read_group(conn, block, limit)
                except _RETRIED as exc:
                    if await self._ran_out_here(exc, deadline):
                        return None
                    await self._backoff(exc, deadline)
                except redis.exceptions.ResponseError as exc:  # refused: out of memory, ...
                    if not _for_a_while(exc):
                        raise self._drive._refused(exc) from exc
                    await self._backoff(exc, deadline)  # (a group's step, in a failover)
                else:
                    self._failing_since = None
                    caught_up = read_all
                finally:
                    self._reading = None
        return None

    def _matches(self, event: DriveEvent) -> bool:
        folder = self._folder
        if not self._recursive:
            return event.path.rpartition("/")[0] == folder or event.path == folder
        return not folder or event.path == folder or event.path.startswith(folder + "/")

    async def _ran_out_here(self, exc: BaseException, deadline: float | None) -> bool:
        """Tell whether a read's time limit, past the caller's timeout, ran out in this process.

        As when the process was paused (a debugger, SIGSTOP, a suspended machine) through
        the read: the server answers now, so no event came in time, which is no outage.
        (Nothing is lost: the cursor stays; a group's step cut short is claimed later.)
        """
        if deadline is None or time.monotonic() < deadline or self._failing_since is not None:
            return False
        conn = self._drive._conn
        return isinstance(exc, TimeoutError) and conn is not None and not await _unanswered(conn)

    async def _backoff(self, exc: BaseException, deadline: float | None) -> None:
        """Wait before the next attempt to reconnect; raise once retrying is over.

        Over after `RECONNECT_TIMEOUT`, or at ``deadline`` (the caller's timeout: it cannot
        tell that no event came, so it says why it could not look).
        """
        if self._drive._closed:  # aclose() cut the connection: no reconnecting
            raise self._drive._closed_error("watch", changes=False) from exc
        now = time.monotonic()
        self._last_failure = exc
        refused = exc if isinstance(exc, redis.exceptions.ResponseError) else None
        if self._failing_since is None:
            self._failing_since = now
            what = "lost its connection" if refused is None else "was refused"
            logger.warning("watch of %s %s (%s); retrying", self._drive.id, what, exc)
        if now - self._failing_since > RECONNECT_TIMEOUT or (
            deadline is not None and now >= deadline
        ):
            if refused is not None:
                raise self._drive._refused(refused) from exc
            raise self._drive._unavailable(exc) from exc
        pause = min(2.0, 0.05 * 2 ** min(10, int(now - self._failing_since)))
        await anyio.sleep(pause if deadline is None else min(pause, deadline - now))

    async def _resolve_start(self, conn: _Connection) -> None:
        if not self._read_cursor:
            # Stream ids are the server's time in ms: every event committed after watch()
            # was called has a larger id than this. By a measure made now (the clocks may
            # have drifted since the last), and the guess of the call's time from the last:
            # the earlier of the two, for the server's clock may have been set since, back
            # (new ids then stay past its time, up to the newest) or forward (a measure
            # after the step puts the call later than the events that came before it).
            await conn.measure_clock()
            guesses = [conn.server_ms(self._called_at), self._start_guess]
            server_ms = min(g for g in guesses if g is not None) - conn.clock_error_ms
            self._read_cursor = f"{max(0, int(server_ms) - 1)}-0"
        self._cursor = self._cursor or self._read_cursor  # resumable before its first event

    async def pin_start(self) -> None:
        """Fix the starting point exactly, at the newest event now in the log (one round trip).

        An async ``watch()`` cannot do I/O, so it fixes its start from the clock (a change
        committed a moment before the call may come too); this fixes it at the log's newest
        event, and gives `cursor` a value to save before any event came. `SyncDrive.watch`
        does it at once.

        Example:
            >>> watch = drive.watch("ckpt")
            >>> await watch.pin_start()
            >>> save(watch.cursor)  # resume from here, even if no event comes first

        """
        if not self._read_cursor:
            conn = await self._drive._connection()
            try:
                self._read_cursor = await conn.index.last_event_id()
            except _RETRIED as exc:  # an outage: said as a drive's call says it
                raise self._drive._unavailable(exc) from exc
            except redis.exceptions.ResponseError as exc:
                raise self._drive._refused(exc) from exc
            self._cursor = self._cursor or self._read_cursor

    async def _read(self, conn: _Connection, block: float) -> bool:
        """Read the next batch of events into the buffer; tell whether it was the last."""
        await self._resolve_start(conn)
        if self._since == "0" and not self._started:
            # Replay what is retained: start after the newest event trimmed so far.
            trimmed = await conn.index.trimmed()
            if parse_id(trimmed) > parse_id(self._read_cursor):
                self._read_cursor = trimmed
        self._started = True
        events, trimmed, server = await _read_events(conn, self._read_cursor, block, _BATCH)
        # Trimming removes the oldest events: if it reached past the cursor, events after the
        # cursor were lost (or, rarely, the ones just read were trimmed right after: the
        # watcher is at the very edge of what is retained either way). Never skip silently.
        if parse_id(trimmed) > parse_id(self._read_cursor):
            raise self._expired(self._cursor or self._read_cursor)
        if server is not None and server != self._server:
            # Another server than the last read's: a failover (Sentinel). Events the old
            # primary took in its last moments are lost with it: if this watch read one,
            # its cursor is past events the new one holds (of other writers, already on
            # it), which a read after the cursor would skip. Said, never skipped silently.
            # (Trimmed at the cursor is no loss. Until the check passes the server is not
            # taken: each read says it again, as the trim check does.)
            lost = (
                self._read_an_event
                and parse_id(trimmed) < parse_id(self._read_cursor)
                and not await conn.index.has_event(self._read_cursor)
            )
            if lost:
                raise self._lost_in_failover(self._cursor or self._read_cursor, server)
            self._server = server
        if events:
            self._buffer.extend(events)
            self._read_cursor = events[-1].id
            self._read_an_event = True
        return len(events) < _BATCH

    def _lost_in_failover(self, cursor: str, server: tuple[str, int]) -> CursorExpiredError:
        return CursorExpiredError(
            f"Drive {self._drive.name!r}: watch cursor {cursor!r} has expired: the server now "
            f"primary ({server[0]}:{server[1]}, after a failover) does not have the event this "
            "watch read last, which the old primary took and lost; events before it may have "
            "been missed. Re-list the drive (list(recursive=True)), then watch from now, or "
            "with since='0' to replay what is retained."
        )

    def _expired(self, cursor: str, *, group_moved_to: str = "") -> CursorExpiredError:
        if group_moved_to:
            what_now = (
                "Re-list the drive (list(recursive=True)) to find what they changed. Group "
                f"{self._group!r} now goes on from the oldest event retained (after "
                f"{group_moved_to!r}); its other members were not told."
            )
        else:
            what_now = (
                "Re-list the drive (list(recursive=True)), then watch from now, or with "
                "since='0' to replay what is retained."
            )
        return CursorExpiredError(
            f"Drive {self._drive.name!r}: watch cursor {cursor!r} has expired: events after it "
            "were trimmed from the change log (see ASYNCDRIVE_EVENTS_MAXLEN and "
            f"ASYNCDRIVE_EVENTS_MAX_AGE). {what_now}"
        )

    # -- consumer groups ---------------------------------------------------------------------

    async def _read_group(self, conn: _Connection, block: float, limit: float | None) -> bool:
        """One step of the group, then (if it took nothing) a wait for the next event.

        Returns whether the group had nothing more to hand out (after the wait, if any:
        the next call takes what came meanwhile), as `_read` does.

        ``limit``: how long the step's reply may take (a hung server): cut short then, the
        step may have taken an event, claimed from this member later (at least once).
        """
        group = self._group
        assert group is not None
        await self._resolve_start(conn)

        async def step_and_keep() -> GroupStep:
            with anyio.fail_after(limit):
                step = await conn.index.group_step(
                    group,
                    self._consumer,
                    self._claim_idle_ms,
                    self._to_ack,
                    self._read_cursor,
                    self._group_path(),
                    int(ACTIVE_MEMBER * 1000),
                    joined=self._joined,
                    own_first=self._own_first,
                )
            if step.kind in ("path", "removed"):
                return step
            self._own_first = step.own  # (one a step: it asks again until none is left)
            self._to_ack = None  # acknowledged by the step
            if not self._joined:
                self._joined = True
                self._drive._group_members.add(self)  # (leaves with the drive's close)
            if step.event is not None:
                self._buffer.append(step.event)
            return step

        # Once sent, the step is kept even if the caller is cancelled meanwhile: the event it
        # took is this member's now (cut short, it would wait for another member's claim).
        step = await to_its_end(step_and_keep())
        if step.kind == "path":
            raise self._other_path(step.path)
        if step.kind == "removed":
            raise CursorExpiredError(
                f"Drive {self._drive.name!r}: consumer group {self._group!r} is gone "
                "while this member read it (removed with remove_group(), or lost by the "
                "server): its position, and any event handed out and not acknowledged, are "
                "gone. Watch again (with since=, or from now) to start the group anew."
            )
        if step.kind == "expired":
            raise self._expired(step.last, group_moved_to=step.trimmed)
        elif step.kind == "lost" and step.own:
            raise CursorExpiredError(
                f"Drive {self._drive.name!r}: events {', '.join(step.lost)} of group "
                f"{self._group!r}, held by member {self._consumer!r} when it stopped, were "
                "trimmed from the change log before it came back (see "
                "ASYNCDRIVE_EVENTS_MAXLEN and ASYNCDRIVE_EVENTS_MAX_AGE). Re-list the drive "
                "(list(recursive=True)) to find what they changed, then watch again."
            )
        elif step.kind == "lost":
            raise CursorExpiredError(
                f"Drive {self._drive.name!r}: events {', '.join(step.lost)} of group "
                f"{self._group!r}, held by a member that did not acknowledge them, were "
                "trimmed from the change log before another member could take them (see "
                "ASYNCDRIVE_EVENTS_MAXLEN and ASYNCDRIVE_EVENTS_MAX_AGE). Re-list the drive "
                "(list(recursive=True)) to find what they changed, then watch again."
            )
        elif step.kind == "none" and block > 0:
            # Nothing for the group now: wait for the next event after its last delivered
            # one (the step then takes it), waking up often enough to claim a dead member's
            # events in time.
            await _read_events(conn, step.last, min(block, self._claim_idle_ms / 2000), 1)
        return step.kind == "none"

    def _group_path(self) -> str:
        """Return what this member watches, as its group keeps it: "r:<folder>" or "d:<folder>"."""
        return f"{'r' if self._recursive else 'd'}:{self._folder}"

    def _other_path(self, group_path: str) -> InvalidConfigError:
        def described(path: str) -> str:
            kind, _, folder = path.partition(":")
            if kind == "r":
                return f"{folder!r} and its sub-folders" if folder else "the whole drive"
            return f"{folder or '.'!r}, direct children only"

        return InvalidConfigError(
            f"Drive {self._drive.name!r}: consumer group {self._group!r} watches "
            f"{described(group_path)}; this watch is of {described(self._group_path())}. The "
            "members of a group share one position in the change log, so they must watch the "
            "same path (a member would take, and drop, events the others wait for). Watch "
            "the group's path, or give this path a group of its own; a group takes another "
            "path once its members have left it (closed their watches), or have not read "
            f"for {ACTIVE_MEMBER:g} s nor held an event for claim_idle "
            f"({self._claim_idle_ms / 1000:g} s)."
        )

    # -- closing -----------------------------------------------------------------------------

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # A plain watch holds nothing a collection would not free; a group member does.
        if getattr(self, "_joined", False) and not self._done:
            held = (
                "holding its last event until another member claims it (claim_idle), or a "
                "member of its name takes it back"
                if self._to_ack is not None
                else f"until the group drops it, idle for {_index.IDLE_MEMBER_MS / 60_000:g} min"
            )
            _warn(
                f"unclosed {self!r}: its member stays in group {self._group!r}, {held}; use "
                "'async with drive.watch(...)' or 'await watch.aclose()'",
                ResourceWarning,
                source=self,
            )

    def _let_go(self) -> None:
        """End the watch without its event loop (closed with its drive): nothing acknowledged."""
        self._done = True
        self._buffer.clear()

    async def leave_group(self, conn: _Connection) -> None:
        """Have its group member leave as its drive closes, as `aclose` would.

        The watch itself says so at its next use (DriveClosedError), as any of the drive's.
        """
        joined, self._joined = self._joined, False
        if joined:
            assert self._group is not None
            await conn.index.group_leave(self._group, self._consumer, self._to_ack)
            self._to_ack = None

    async def aclose(self) -> None:
        """End the watch. Idempotent.

        In a group, the last event handed out counts as handled (acknowledged), and the
        member leaves the group unless it holds events (another member claims them, or a
        member of its name, ``member=``, takes them back).
        """
        self._done = True
        self._buffer.clear()
        if self._reading is not None:  # another task's next(): it returns None now
            self._reading.cancel()
        joined, self._joined = self._joined, False
        if joined and self._drive._conn is not None:
            assert self._group is not None
            try:
                conn = await self._drive._connection()
                await to_its_end(conn.index.group_leave(self._group, self._consumer, self._to_ack))
            except CONNECTION_LOST as exc:
                raise self._drive._unavailable(exc) from exc
            self._to_ack = None

    def _check_open(self) -> None:
        """Raise `DriveClosedError` if the watch was closed (entered again)."""
        if self._done:
            again = [repr(self._folder or ".")]
            if not self._recursive:
                again.append("recursive=False")
            if self._group is not None:
                again.append(f"group={self._group!r}")
                if self._named:
                    again.append(f"member={self._consumer!r}")
            elif self._cursor:
                again.append(f"since={self._cursor!r}")
            raise DriveClosedError(
                f"{self!r} is closed (a watch is entered once); to go on where it ended, "
                f"watch again: drive.watch({', '.join(again)})"
            )

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            # The event in hand was not handled: leave it for another group member.
            self._to_ack = None
        await self.aclose()


@dataclasses.dataclass(eq=False)
class Waiter:
    """One call waiting in a `WaitingRoom` for ``path`` to be put (by ``component``, if set)."""

    path: str
    component: str | None
    woken: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: What ended the room's watch, if it failed: the waiter raises (a copy of) it.
    error: BaseException | None = None


class WaitingRoom:
    """The calls of a drive connection waiting for paths to be put, on one shared watch.

    ``get(path, timeout=)`` waits for its file: a watch of its own each would hold a Redis
    connection each (a blocking read cannot share one), so a thousand waiting gets took a
    thousand connections, and the drive's pool refused those past its size. One watch of
    the whole drive wakes the waiters each event concerns instead (the path itself, or a
    path below it: a folder appears with its first file), for as long as any wait.

    A waiter joins before it looks at the index: the room's watch, made then if there is
    none, starts from that moment (or earlier), so no event committed after the look is
    missed. It is read from the first wait on, and dropped when the last waiter leaves. It
    rides out outages as any watch does (`RECONNECT_TIMEOUT`); lost events (the log
    trimmed past it) wake everyone to look again.

    Example:
        >>> waiter = room.join("ckpt/3.pt", None)
        >>> try:
        ...     while not await looked_and_found():
        ...         await room.wait(waiter, timeout=5)
        ... finally:
        ...     room.leave(waiter)

    """

    def __init__(self, drive: Drive, conn: _Connection) -> None:
        self._drive = drive
        self._conn = conn
        self._waiting: dict[str, set[Waiter]] = {}
        self._watch: Watch | None = None
        self._reader: asyncio.Task[None] | None = None
        #: The reader the last waiter's leaving cancelled, until `ended`.
        self._ending: asyncio.Task[None] | None = None
        self._readers_started = 0

    def __repr__(self) -> str:
        count = sum(len(waiters) for waiters in self._waiting.values())
        return f"<WaitingRoom lit://{self._drive.name} {count} waiting>"

    def join(self, path: str, component: str | None) -> Waiter:
        """Register a waiter for ``path`` (before it looks at the index)."""
        waiter = Waiter(path, component)
        self._waiting.setdefault(path, set()).add(waiter)
        if self._watch is None:
            self._watch = self._drive.watch(".")  # its start is fixed now: before the look
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Unregister ``waiter``; the last to leave ends the room's watch."""
        waiters = self._waiting.get(waiter.path)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiting[waiter.path]
        if not self._waiting:  # (a watch never read holds nothing: dropped as it is)
            reader, self._reader, self._watch = self._reader, None, None
            if reader is not None:
                reader.cancel()
                self._ending = reader

    async def ended(self) -> None:
        """Wait for the watch the last waiter's leaving ended to let its connection go.

        A blocking call's event loop runs only during its calls: unless waited for here,
        the read would end at the thread's next call, its connection held meanwhile.
        """
        ending, self._ending = self._ending, None
        if ending is not None and not ending.done():
            await asyncio.wait([ending])

    async def wait(self, waiter: Waiter, timeout: float) -> bool:
        """Wait until an event concerns ``waiter``; False if none did within ``timeout`` s.

        Raises what ended the room's watch, if it failed (the server out of reach for
        `RECONNECT_TIMEOUT`, say), and `DriveUnavailableError` if it could not read when
        ``timeout`` passed (it cannot tell that nothing came).
        """
        if self._watch is None:  # (its last one ended by itself, and no other could start)
            self._watch = self._drive.watch(".")
        watch = self._watch
        if self._reader is None:
            self._readers_started += 1
            name = f"waiting-room-{self._readers_started}"
            self._conn.start_chore(name, self._read(watch))
            self._reader = self._conn.chores.get(name)
            if self._reader is not None:
                self._reader.add_done_callback(self._reader_done)
        try:
            async with asyncio.timeout(timeout):
                await waiter.woken.wait()
        except TimeoutError:
            # Not "not put" where it could not look: the server out of reach, or hung.
            failure = watch._last_failure if watch._failing_since else await _unanswered(self._conn)
            if failure is not None:
                raise self._drive._unavailable(failure) from failure
            return False
        waiter.woken.clear()
        if waiter.error is not None:
            try:  # each waiter its own copy, with a traceback of its own
                error = copy.copy(waiter.error)
            except Exception:  # (an error that cannot be made again from its args)
                raise waiter.error from None
            raise error from waiter.error
        return True

    def _reader_done(self, reader: asyncio.Task[None]) -> None:
        """Tell the waiters of a reader cancelled before it ran (its drive closed at once)."""
        if reader.cancelled() and self._reader is reader:  # (else it told them, or none wait)
            self._reader = self._watch = None
            error = self._drive._closed_error("wait for a file", changes=False)
            for waiters in self._waiting.values():
                for waiter in waiters:
                    waiter.error = error
            self._wake(None)

    def _wake(self, event: DriveEvent | None) -> None:
        """Wake the waiters ``event`` concerns; everyone if None."""
        if event is None:
            for waiters in self._waiting.values():
                for waiter in waiters:
                    waiter.woken.set()
            return
        if event.change == Change.DELETED:
            return
        path = event.path
        while True:  # the path, then each folder above it
            for waiter in self._waiting.get(path, ()):
                if waiter.component in (None, event.component_name):
                    waiter.woken.set()
            path, slash, _ = path.rpartition("/")
            if not slash:
                return

    async def _read(self, watch: Watch) -> None:
        try:
            while True:
                try:
                    event = await watch.next()  # (no timeout: ends when cancelled)
                except CursorExpiredError:  # events were lost: everyone looks again
                    await watch.aclose()
                    if self._watch is not watch:
                        return
                    watch = self._watch = self._drive.watch(".")
                    self._wake(None)
                    continue
                if event is None:  # (closed)
                    return
                self._wake(event)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if self._watch is watch:  # still the room's: its waiters are told (else none wait)
                self._watch = self._reader = None
                # The connection closing (the drive's closing), or what the watch raised.
                error = (
                    self._drive._closed_error("wait for a file", changes=False)
                    if cancelled
                    else exc
                )
                for waiters in self._waiting.values():
                    for waiter in waiters:
                        waiter.error = error
                self._wake(None)
            if cancelled or not isinstance(exc, Exception):
                raise
        finally:
            if self._watch is watch:  # ended by itself (its watch closed): all look again
                self._watch = None
                with contextlib.suppress(DriveError):  # (its drive closed: they hear of it)
                    self._watch = self._drive.watch(".") if self._waiting else None
                self._wake(None)
            if self._reader is asyncio.current_task():
                self._reader = None
            await to_its_end(watch.aclose())


async def _unanswered(conn: _Connection) -> BaseException | None:
    """Return why the server did not answer a round trip in time, if it did not.

    A watch finds a hung server out only at the client's reply timeout (10 s): a call
    whose own timeout ends before that asks once more, briefly.
    """
    try:
        with anyio.fail_after(_REPLY_MARGIN):
            await conn.index.ping()
    except TimeoutError:
        return TimeoutError(f"no answer within {_REPLY_MARGIN:g} s")
    except _RETRIED as exc:
        return exc
    return None


#: The server ends a blocked read's wait on its own clock, which ticks every 100 ms (hz
#: 10): `XREAD BLOCK 1` waits ~100 ms. Shorter waits are made here instead.
_SERVER_TICK = 0.1


async def _read_events(
    conn: _Connection, after: str, block: float, count: int
) -> tuple[list[DriveEvent], str, tuple[str, int] | None]:
    """Wait up to ``block`` s for events after id ``after`` (`Index.read_events`).

    A wait shorter than the server's clock can time is a read now, a sleep here, and a
    read again: ``next(timeout=0)`` takes what is there at once, and ``next(0.01)`` is
    back within ~10 ms, not ~100.
    """
    if block >= _SERVER_TICK:
        return await conn.index.read_events(after, int(block * 1000), count)
    events, trimmed, server = await conn.index.read_events(after, None, count)
    if events or block <= 0:
        return events, trimmed, server
    await anyio.sleep(block)
    return await conn.index.read_events(after, None, count)
