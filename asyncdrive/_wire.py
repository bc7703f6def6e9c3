"""One pipelined Redis connection for a drive's short commands.

A command sent through redis-py's asyncio client spends ~150 µs of CPU in the client's
layers (the command's way through the client, the pool's lock and health check, a timeout
context per read, metrics), where the round trip itself costs ~50 µs (measured, Python
3.11). A small put makes two such commands, a get one. A `Wire` writes each command to one
connection that it keeps to itself and hands the replies to the callers in order, as Redis
sends them: no pool, no task per command, one timer for all the replies awaited. Commands
of concurrent tasks share the connection, pipelined: with 64 tasks, ~20 µs each; those
queued in one turn of the event loop while others await their replies go out in one write.

It connects through redis-py's own connection class and settings (the pool's: password,
database, TLS, Sentinel's current primary), then takes its transport over: each reply is
parsed and handed to its caller as the bytes arrive (no reading task, no stream buffer
between, one turn of the event loop less per reply than a reader task). Only for commands
that the server answers at once: a blocking read (``XREAD BLOCK``) would hold up every
reply queued behind it, so those keep to redis-py's client.

Failures are redis-py's exceptions, as the client raises them. A closed connection, or no
reply within the timeout, fails every command awaiting one (`ConnectionError`,
`TimeoutError`) and closes the connection; the next command connects again. Nothing is
retried: a commit run twice would be refused as a conflict after it succeeded. A caller
cancelled while it waits gives up its reply, which is read and dropped when it comes.

Example:
    >>> wire = Wire(client.connection_pool, timeout=10.0)
    >>> await wire.call("HGETALL", "some-hash")
    {'field': 'value'}
    >>> await wire.aclose()

"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import select
from collections.abc import AsyncIterator, Sequence
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, ReadOnlyError, TimeoutError

#: How much a command may leave unsent in the transport's buffer before the caller waits
#: for it to drain (the transport's own high-water mark is 64 KiB).
_WRITE_BUFFER_LIMIT = 64 * 1024


#: What a connection used after its event loop was closed by hand says.
LOOP_CLOSED_BY_HAND = (
    "A drive's Redis connection was opened in an event loop that was then closed without "
    "shutting down its async generators, which closes the drive's connections with it: "
    "await drive.aclose() before closing that loop, call loop.shutdown_asyncgens() (as "
    "asyncio.run() does), or run it with asyncio.run(). This drive's connections went "
    "with that loop: create a new Drive."
)

IN_ANOTHER_LOOP = (
    "A drive's Redis connection is used in another event loop than the one it was opened "
    "in (each asyncio.run() makes a new loop). Create the Drive in the loop that uses it, "
    "or use a SyncDrive from blocking code."
)


class Wire:
    """A drive's connection for commands answered at once, shared and pipelined."""

    def __init__(self, pool: ConnectionPool, *, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _WireProtocol | None = None
        #: The callers awaiting a reply, oldest first, with when each command was sent.
        self._awaiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Lock | None = None
        #: How many tries to connect have ended, and the error of the last, if it failed:
        #: the callers that waited for it fail with it (see `_connect`).
        self._attempts = 0
        self._last_failure: Exception | None = None
        self._closed = False
        #: Commands queued but not yet written: those of one turn of the event loop go out
        #: in one write (`_flush`), and their bytes.
        self._outgoing: list[bytes] = []
        self._outgoing_size = 0
        #: The (host, port) of the server the connection reached (None: not connected yet,
        #: or a unix socket's): under Sentinel, which primary it is.
        self.server: tuple[str, int] | None = None

    def __repr__(self) -> str:
        state = (
            "closed" if self._closed
            else f"connected, {len(self._awaiting)} awaiting" if self._protocol is not None
            else "not connected"
        )  # fmt: skip
        return f"<Wire {state}>"

    async def connect(self) -> None:
        """Connect now, unless connected: the next command is then written at once.

        Lets a caller tell a server that cannot be reached (this raises, and nothing was
        sent) from a command lost on the way (which may or may not have run).
        """
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        if protocol is None or loop is not self._loop or self._hung_up(protocol):
            await self._connect(loop)

    async def call(self, *args: Any) -> Any:
        """Send one command (str, bytes and int arguments) and return its reply, unparsed.

        The reply is as the connection's protocol gives it: in RESP3, redis-py's default,
        HGETALL gives a dict; in RESP2 (``?protocol=2`` in the URL), a flat list. An error
        reply is raised as redis-py raises it (`ResponseError` and its subclasses).
        """
        # Packed before the caller takes its place in the queue: an argument that cannot be
        # sent must not leave a place that the next reply would fill.
        command = hiredis.pack_command(args)
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        if protocol is None or loop is not self._loop or self._hung_up(protocol):
            protocol = await self._connect(loop)
        (waiter,) = self._queue(protocol, loop, command, 1)
        await self._drained(protocol)
        return self.checked(await waiter)

    async def call_many(
        self, commands: Sequence[Sequence[Any]], *, raise_errors: bool = True
    ) -> list[Any]:
        """Send several commands in one write and return their replies, as `call` does.

        They reach the server one after the other, with no other caller's command between
        them: a ``MULTI`` ... ``EXEC`` sent this way is a transaction. Every reply is read
        before the first error reply, if any, is raised; or, with ``raise_errors=False``,
        returned in its place, for the caller to `checked` (a lost connection still raises).
        """
        packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        if protocol is None or loop is not self._loop or self._hung_up(protocol):
            protocol = await self._connect(loop)
        waiters = self._queue(protocol, loop, packed, len(commands))
        await self._drained(protocol)
        try:
            replies = [await waiter for waiter in waiters]
        except BaseException:  # cancelled, or the connection failed: give up the rest
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()
                elif not waiter.cancelled():
                    waiter.exception()  # retrieved: no "never retrieved" warning
            raise
        if raise_errors:
            for reply in replies:
                self.checked(reply)
        return replies

    def _queue(
        self, protocol: _WireProtocol, loop: asyncio.AbstractEventLoop, packed: bytes, count: int
    ) -> list[asyncio.Future[Any]]:
        """Take ``count`` places in the reply queue and send ``packed`` (that many commands).

        Written at once where no other command awaits its reply; else at the end of this
        turn of the event loop, with the commands other callers queue in it, in one write
        (`_flush`): 64 tasks putting or getting at once make one system call a turn, not
        one each (measured: ~7% more puts and ~10% more gets a second). The commands go
        out in the order of their places in the queue.
        """
        sent_at = loop.time()
        waiters = [loop.create_future() for _ in range(count)]
        idle = not self._awaiting
        self._awaiting.extend((waiter, sent_at) for waiter in waiters)
        if idle:  # no other caller is waiting: most likely none will join it
            protocol.transport.write(packed)
        else:
            self._outgoing.append(packed)
            self._outgoing_size += len(packed)
            if len(self._outgoing) == 1:
                loop.call_soon(self._flush, protocol)
        if self._timer is None and self._timeout:
            self._timer = loop.call_at(sent_at + self._timeout, self._check_overdue)
        return waiters

    def _hung_up(self, protocol: _WireProtocol) -> bool:
        """Drop a connection the server closed unseen (see `_WireProtocol.hung_up`): True.

        Only where no caller awaits a reply: then none is lost by it, and a new connection
        is safe (with callers waiting, the loop runs and sees the close).
        """
        # (Waiters all given up, their replies are nobody's: a measure of the clock cut at
        # its time limit, say, on a loop that runs only in calls, a SyncDrive's.)
        if any(not waiter.done() for waiter, _ in self._awaiting) or not protocol.hung_up():
            return False
        self._fail(ConnectionError, "The drive's server closed the connection")
        return True

    def _flush(self, protocol: _WireProtocol) -> None:
        """Write the queued commands, unless their connection failed (their callers with it)."""
        if protocol is not self._protocol:
            return
        outgoing, self._outgoing, self._outgoing_size = self._outgoing, [], 0
        if outgoing:
            protocol.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    async def _drained(self, protocol: _WireProtocol) -> None:
        """Wait while too much is unsent (a lost connection fails the waiters meanwhile)."""
        pending = self._outgoing_size + protocol.transport.get_write_buffer_size()
        if pending > _WRITE_BUFFER_LIMIT:
            self._flush(protocol)
            await protocol.drain()

    def checked(self, reply: Any) -> Any:
        """Return ``reply``, or raise it if it is an error reply."""
        if isinstance(reply, Exception):
            if isinstance(reply, ReadOnlyError) and getattr(self._pool, "is_master", False):
                # Sentinel: the primary this connection reached has become a replica. The
                # next command connects to the one Sentinel names now (as redis-py does).
                lost = "The drive's primary server has become a replica"
                self._fail(ConnectionError, lost)
                raise ConnectionError(lost) from reply
            raise reply
        return reply

    async def run_script(
        self, script: AsyncScript, keys: list[str], args: list[str], *, read_only: bool = False
    ) -> Any:
        """Run a registered script by its hash, sending its source once if the server lacks it.

        ``read_only``: as ``EVALSHA_RO`` (Redis 7+, Valkey), for a script that only reads.
        """
        ro = "_RO" if read_only else ""
        try:
            return await self.call(f"EVALSHA{ro}", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed server: the script did not run
            return await self.call(f"EVAL{ro}", script.script, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Close the connection; commands still awaiting a reply fail. Idempotent."""
        protocol = self._protocol
        self.abort()
        if protocol is not None and self._loop is asyncio.get_running_loop():
            await protocol.closed  # the transport's end: no socket is left open

    def disconnect(self, reason: str) -> None:
        """Drop the connection (commands awaiting replies fail): the next call reconnects."""
        self._fail(ConnectionError, reason)

    def abort(self) -> None:
        """Close the connection without waiting for it to end, as `aclose` does otherwise."""
        self._closed = True
        self._fail(ConnectionError, "The drive's connection was closed")

    # -- the connection ----------------------------------------------------------------

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _WireProtocol:
        if self._closed:
            raise ConnectionError("The drive's connection was closed")
        if self._loop is None:
            self._loop, self._connecting = loop, asyncio.Lock()
        elif loop is not self._loop:
            # As redis-py's connections: a stream opened in one event loop cannot be used,
            # nor even closed, in another (a drive belongs to the loop it first ran in).
            if self._loop.is_closed():  # (asyncio.run() would have closed the drive's)
                raise RuntimeError(LOOP_CLOSED_BY_HAND)
            raise RuntimeError(IN_ANOTHER_LOOP)
        assert self._connecting is not None
        attempts_before = self._attempts
        async with self._connecting:
            if self._protocol is not None:
                return self._protocol
            failure = self._last_failure
            if failure is not None and self._attempts != attempts_before:
                # One was tried while this caller waited, and failed: so does this call. Each
                # trying its own would make the last of N callers of a hung server wait N
                # timeouts in turn (one is what an operation may wait).
                raise _copy_of(failure)
            # redis-py's connection, of the pool's class and settings, says hello to the
            # server (password, database, TLS, Sentinel's primary); then the stream is ours.
            conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
            except BaseException as exc:
                self._attempts += 1
                # A copy, with no traceback: the caller's frames (its data) are not kept.
                self._last_failure = _copy_of(exc) if isinstance(exc, Exception) else None
                await conn.disconnect(nowait=True)
                raise
            self._attempts += 1
            self._last_failure = None
            host, port = getattr(conn, "host", None), getattr(conn, "port", None)
            self.server = (host, port) if isinstance(host, str) and isinstance(port, int) else None
            reader: asyncio.StreamReader | None = conn._reader
            writer: asyncio.StreamWriter | None = conn._writer
            conn._reader = conn._writer = None
            if reader is None or writer is None:
                raise ConnectionError("The connection to the drive's server closed at once")
            encoder = conn.encoder
            decoding: dict[str, Any] = {}
            if encoder.decode_responses:
                decoding = {"encoding": encoder.encoding, "errors": encoder.encoding_errors}
            parser = hiredis.Reader(replyError=BaseParser.parse_error, **decoding)
            protocol = _WireProtocol(self, writer, parser, loop)
            transport = protocol.transport
            # The stream's protocol hands the transport over: from now on the bytes come
            # to this one (after any the stream had buffered, none after the handshake).
            transport.set_protocol(protocol)
            self._protocol = protocol
            stream: Any = reader  # its buffer and flow control: private, as in 3.11-3.14
            if stream._buffer:
                protocol.data_received(bytes(stream._buffer))
            if stream._paused:
                transport.resume_reading()
            if transport.is_closing() or self._protocol is not protocol:
                self._fail(ConnectionError, "The drive's server closed the connection at once")
                raise ConnectionError("The drive's server closed the connection at once")
            return protocol

    def _check_overdue(self) -> None:
        """Fail every command if the oldest has awaited its reply longer than the timeout."""
        self._timer = None
        if not self._awaiting or not self._timeout or self._loop is None:
            return
        overdue_at = self._awaiting[0][1] + self._timeout
        if self._loop.time() >= overdue_at:
            self._fail(TimeoutError, "Timeout reading from the drive's server")
        else:
            self._timer = self._loop.call_at(overdue_at, self._check_overdue)

    def _fail(self, error: type[Exception], message: str) -> None:
        """Close the connection, failing each command that awaits a reply with ``error``."""
        protocol, self._protocol = self._protocol, None
        self.server = None
        self._outgoing, self._outgoing_size = [], 0  # never to be sent: a new connection
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if protocol is not None:
            # After a change of event loop, the old loop may be closed: then it cannot be.
            with contextlib.suppress(RuntimeError):
                protocol.transport.close()
        awaiting, self._awaiting = self._awaiting, collections.deque()
        for waiter, _ in awaiting:
            if not waiter.done():
                waiter.set_exception(error(message))  # one each: tracebacks are per raise
                # Marked seen: its caller, if still there, gets it all the same; one that
                # an exception (a signal's SystemExit) took away between the send and the
                # wait logged "Future exception was never retrieved" at its collection.
                waiter.exception()


#: How many wires a `WirePool` keeps idle for the next reads; more, once returned, close.
_MAX_IDLE_WIRES = 4


class WirePool:
    """Wires for blocking reads (``XREAD BLOCK``): one caller at a time on each, reused.

    A blocking read cannot share a `Wire` (the replies queued behind it would wait), and
    redis-py's client costs ~40 µs more on the way from the server to the watcher than a
    wire, each event (measured, p50). A wire whose caller failed or was cancelled is
    closed, not reused: its blocked read may still be pending on the server.

    Example:
        >>> readers = WirePool(client.connection_pool, timeout=10.0)
        >>> async with readers.borrowed() as wire:
        ...     await wire.call("XREAD", "BLOCK", 1000, "STREAMS", "events", "$")
        >>> await readers.aclose()

    """

    def __init__(self, pool: ConnectionPool, *, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._idle: list[Wire] = []
        self._lent: set[Wire] = set()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._idle)} idle, {len(self._lent)} lent"
        return f"<WirePool {state}>"

    @contextlib.asynccontextmanager
    async def borrowed(self) -> AsyncIterator[Wire]:
        """Lend a wire for the block's duration (a new one if none is idle)."""
        if self._closed:
            raise ConnectionError("The drive's connection was closed")
        wire = self._idle.pop() if self._idle else Wire(self._pool, timeout=self._timeout)
        self._lent.add(wire)
        try:
            yield wire
        except BaseException:
            self._lent.discard(wire)
            wire.abort()
            raise
        self._lent.discard(wire)
        if self._closed:
            wire.abort()
        elif len(self._idle) >= _MAX_IDLE_WIRES:  # after many at once: back to a few
            await wire.aclose()
        else:
            self._idle.append(wire)

    def disconnect_unless(self, server: tuple[str, int], reason: str) -> None:
        """Drop the connections to any other server than ``server`` (see `Wire.disconnect`)."""
        for wire in [*self._idle, *self._lent]:
            if wire.server is not None and wire.server != server:
                wire.disconnect(reason)

    async def aclose(self) -> None:
        """Close every wire: those lent fail their callers' reads. Idempotent."""
        self._closed = True
        idle, self._idle = self._idle, []
        for wire in self._lent:
            wire.abort()
        for wire in idle:
            await wire.aclose()


#: What `_WireProtocol.hung_up` polls for: the server's end closed (Linux; else not checked).
_HANGUP = getattr(select, "POLLRDHUP", 0)


class _WireProtocol(asyncio.Protocol):
    """A `Wire`'s connection once connected: parses replies as they arrive, in order."""

    def __init__(
        self,
        wire: Wire,
        writer: asyncio.StreamWriter,
        parser: hiredis.Reader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.wire = wire
        # Kept: a stream writer dropped before its transport is closed closes it (and warns).
        self.writer = writer
        self.transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        self.parser = parser
        self.loop = loop
        #: Done when the transport has closed (`connection_lost`).
        self.closed: asyncio.Future[None] = loop.create_future()
        self._writable: asyncio.Future[None] | None = None  # while writing is paused
        self._hangup: select.poll | None = None
        sock = self.transport.get_extra_info("socket")
        if _HANGUP and sock is not None:
            self._hangup = select.poll()
            self._hangup.register(sock.fileno(), _HANGUP)

    def hung_up(self) -> bool:
        """Return whether the server closed the connection while no event loop ran to see it.

        A `SyncDrive`'s loop runs only during its calls: a server restarted (or a client
        killed, an idle timeout) between two calls leaves a closed connection it has not
        seen, which the next command would be sent on, and fail. One ``poll`` (~1 µs).
        """
        return self._hangup is not None and bool(self._hangup.poll(0))

    def data_received(self, data: bytes) -> None:
        """Hand each complete reply to the oldest caller awaiting one."""
        if self.wire._protocol is not self:  # failed, and closing: its queue is gone
            return
        parser = self.parser
        awaiting = self.wire._awaiting
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                if not awaiting:
                    raise ConnectionError(f"Unexpected reply from the server: {reply!r}")
                waiter, _ = awaiting.popleft()
                if not waiter.done():  # else its caller was cancelled
                    waiter.set_result(reply)
        except Exception as exc:  # a reply nobody asked for, or bytes that are no reply
            self._lost(f"Error while reading from the drive's server: {exc}")
        except BaseException as exc:
            # A signal's handler raised (SIGTERM's sys.exit(), Ctrl-C) amid the replies: those
            # read and not handed out are gone, so the callers awaiting them fail now (not
            # at their timeout), as do those behind them, and the connection is dropped.
            self._lost(f"Reading from the drive's server was interrupted ({exc!r})")
            raise

    def eof_received(self) -> bool:
        self._lost("Error while reading from the drive's server: Connection closed by server.")
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._lost(f"Error while reading from the drive's server: {exc}")
        else:
            self._lost("Error while reading from the drive's server: Connection closed by server.")
        if not self.closed.done():
            self.closed.set_result(None)
        self._resume()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._resume()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def _resume(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _lost(self, message: str) -> None:
        if self.wire._protocol is self:  # else the wire has moved on (or failed already)
            self.wire._fail(ConnectionError, message)


def _copy_of(exc: Exception) -> Exception:
    """Return a copy of ``exc`` without its traceback, to raise in another caller too."""
    try:
        copied: Exception = copy.copy(exc)
    except Exception:  # (an exception that cannot be copied: a plain one, saying the same)
        return ConnectionError(str(exc))
    return copied.with_traceback(None)
