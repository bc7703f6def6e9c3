"""Opt-in leak check: fail each test that leaves a resource behind it.

Run the suite (or any part of it) with ``--leak-check``::

    pytest --leak-check
    pytest --leak-check tests/test_drive.py --server-kind cluster

It reads ``/proc`` (file descriptors, child processes): Linux only.

Without the option this module is not even imported (see ``pytest_configure`` in
conftest.py), so it costs nothing and changes nothing.

With it, after each test's teardown and a garbage collection, the test fails (an error at
teardown) if, compared to before it started, it left:

- a redis-py connection (async or sync) still connected, with where it was connected;
- a drive's pipelined connection (`asyncdrive._wire._WireProtocol`) still open;
- a file descriptor open (with what it points to);
- a thread alive, other than the library's shared ones (``asyncdrive-disk*``, the disk
  pool, and ``asyncdrive-loop``, the `SyncDrive` loop thread): those persist by design,
  and their counts over the session are shown in the terminal summary instead;
- an event loop not closed, a child process still running, or the embedded server it
  started still running;
- a resource that only the garbage collector closed (its ``ResourceWarning``).

Not blamed on the test: what fixtures of a wider scope than "function" open (the session's
server, say), whose setup may run inside any test's setup, and what such a live fixture
holds (a module's drive connects at its first call, in some test, and closes with the
fixture); helpers that other libraries start once for the rest of the process (fsspec's
"fsspecIO" loop thread, multiprocessing's resource tracker and fork server). Each leak is
reported once, by the test that made it: what stays open joins the baseline.

The check is cheap (within the noise of tests/test_drive.py's time): connections, loops
and drive connections are registered as they open rather than looked for in the heap, and
the heap of the collection's end is frozen (`gc.freeze`) so that the collection after each
test looks only at what was made since.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import io
import itertools
import json
import os
import select
import socket
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio.connection
import redis.connection

import asyncdrive
from asyncdrive import _portal, _server, _threads, _wire

#: Threads the library shares by design between drives and tests.
SHARED_THREAD_PREFIXES = (_threads.THREAD_NAME, _portal.THREAD_NAME)

#: Threads of other libraries that one first use starts for the rest of the process, by
#: design: fsspec's IO loop (a `fsspec.asyn.sync` call from blocking code starts it).
OTHERS_SHARED_THREADS = ("fsspecIO",)

#: How long to wait for what ends by itself (threads, processes, sockets closing) before
#: calling it a leak: a thread told to stop, or a transport closed on another loop's turn,
#: ends a moment after the teardown that asked it to.
GRACE_SECONDS = 1.5

#: The connect stacks keep only frames of these folders: the library's and the tests'.
_OUR_FOLDERS = (
    str(Path(asyncdrive.__file__).resolve().parent) + os.sep,
    str(Path(__file__).resolve().parent) + os.sep,
)
_ROOT = str(Path(asyncdrive.__file__).resolve().parent.parent) + os.sep


def _connect_site(frame: types.FrameType | None) -> tuple[str, ...]:
    """Return the frames of the library and the tests above ``frame``, innermost first.

    Only those: the rest (redis-py, asyncio, pytest) is the same for every connection.
    """
    lines: list[str] = []
    while frame is not None and len(lines) < 12:
        name = frame.f_code.co_filename
        if name.startswith(_OUR_FOLDERS) and name != __file__:
            where = name.removeprefix(_ROOT)
            lines.append(f"{where}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return tuple(lines)


@dataclass
class _Tracked:
    """An object that may stay open, and where and in which test it was opened."""

    ref: weakref.ref[Any]
    site: tuple[str, ...] = ()
    test: str | None = None


class _Registry:
    """The live objects of one kind, held weakly, each under a serial number.

    A registry rather than a scan of `gc.get_objects` after each test, which costs in
    proportion to the whole heap. Serial numbers rather than ids: an id is reused once its
    object is gone, and a new leak must not pass for the old object of the baseline.
    """

    def __init__(self, is_open: Callable[[Any], bool]) -> None:
        self.is_open = is_open
        self.tracked: dict[int, _Tracked] = {}
        self._serials: dict[int, int] = {}  # id -> serial, while the object lives
        self._next = itertools.count()

    def add(self, obj: Any, site: tuple[str, ...], test: str | None) -> None:
        serial = self._serials.get(id(obj))
        known = self.tracked.get(serial) if serial is not None else None
        if known is not None and known.ref() is obj:
            known.site, known.test = site, test  # reconnected: the latest connect counts
            return
        serial = next(self._next)

        def forget(ref: weakref.ref[Any], serial: int = serial, ident: int = id(obj)) -> None:
            self.tracked.pop(serial, None)
            if self._serials.get(ident) == serial:
                del self._serials[ident]

        self.tracked[serial] = _Tracked(weakref.ref(obj, forget), site, test)
        self._serials[id(obj)] = serial

    def open(self) -> dict[int, _Tracked]:
        """Return those still open."""
        found = {}
        for key, entry in list(self.tracked.items()):
            obj = entry.ref()
            with contextlib.suppress(Exception):
                if obj is not None and self.is_open(obj):
                    found[key] = entry
        return found


def _wire_is_open(protocol: _wire._WireProtocol) -> bool:
    """Whether a drive connection's socket is still open.

    Its ``closed`` future is set at ``connection_lost``; a transport closed in a loop that
    then stopped for good never gets there, but its socket is closed only at collection.
    """
    return not protocol.closed.done()


def _open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def _descendants() -> dict[tuple[int, str], str]:
    """Return this process's running descendants: (pid, start time) -> a description.

    By the kernel's lists of children (``/proc/PID/task/TID/children``), not a scan of
    every process; zombies (exited, not yet waited for) are not running and are left out.
    """
    found: dict[tuple[int, str], str] = {}
    parents = [os.getpid()]
    while parents:
        pid = parents.pop()
        children: set[int] = set()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                    children.update(map(int, f.read().split()))
        for child in children:
            try:
                with open(f"/proc/{child}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] in ("Z", "X"):
                continue
            found[(child, fields[19])] = f"pid {child}: {cmdline[:200]}"
            parents.append(child)
    return found


def _pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _shared_threads(prefixes: tuple[str, ...] = SHARED_THREAD_PREFIXES) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefixes)]


def _multiprocessing_helpers() -> tuple[set[int], set[int]]:
    """Return the pids and fds of multiprocessing's own helper processes, if started.

    The resource tracker (started by the first "spawn" or "forkserver" child) and the fork
    server run for the rest of the process by design, whichever test needed them first.
    """
    pids: set[int] = set()
    fds: set[int] = set()
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None:
        helper = getattr(tracker, "_resource_tracker", None)
        pids.add(getattr(helper, "_pid", None) or 0)
        fds.add(getattr(helper, "_fd", None) or -1)
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is not None:
        helper = getattr(forkserver, "_forkserver", None)
        pids.add(getattr(helper, "_forkserver_pid", None) or 0)
        fds.add(getattr(helper, "_forkserver_alive_fd", None) or -1)
    return pids, fds


@dataclass
class _Snapshot:
    """What is open at one moment, of each kind."""

    conns: set[int] = field(default_factory=set)
    wires: set[int] = field(default_factory=set)
    loops: set[int] = field(default_factory=set)
    fds: set[tuple[int, str]] = field(default_factory=set)
    threads: set[threading.Thread] = field(default_factory=set)
    procs: set[tuple[int, str]] = field(default_factory=set)

    def absorb(self, other: _Snapshot) -> None:
        self.conns |= other.conns
        self.wires |= other.wires
        self.loops |= other.loops
        self.fds |= other.fds
        self.threads |= other.threads
        self.procs |= other.procs

    def minus(self, other: _Snapshot) -> _Snapshot:
        return _Snapshot(
            self.conns - other.conns,
            self.wires - other.wires,
            self.loops - other.loops,
            self.fds - other.fds,
            self.threads - other.threads,
            self.procs - other.procs,
        )


class LeakCheck:
    """The plugin: registered by conftest.py only when ``--leak-check`` is given."""

    def __init__(self) -> None:
        self.conns = _Registry(lambda conn: bool(conn.is_connected))
        self.wires = _Registry(_wire_is_open)
        self.loops = _Registry(lambda loop: not loop.is_closed())
        #: Embedded servers' folders, by the test that started each.
        self.servers: list[tuple[Path, str | None]] = []
        self.baseline = _Snapshot()
        self.before: _Snapshot | None = None
        self.test: str | None = None
        self.shared_counts: list[int] = []
        #: The fixtures of a wider scope than "function" set up and not yet finalized.
        self.wider: dict[int, pytest.FixtureDef[Any]] = {}
        self._undo: list[Callable[[], None]] = []

    # -- recording what opens -------------------------------------------------------------

    def install(self) -> None:
        """Wrap what opens connections, loops and servers, to register them as they do."""
        for module in (redis.asyncio.connection, redis.connection):
            cls = module.AbstractConnection
            original = cls.connect_check_health
            if asyncio.iscoroutinefunction(original):
                wrapper = self._async_connect_wrapper(original)
            else:
                wrapper = self._sync_connect_wrapper(original)
            self._patch(cls, "connect_check_health", wrapper)
        self._patch_init(_wire._WireProtocol, self.wires, with_site=True)
        self._patch_init(asyncio.BaseEventLoop, self.loops, with_site=False)
        start_server = _server._start

        @functools.wraps(start_server)
        def started_server(folder: Path) -> str:
            url = start_server(folder)
            self.servers.append((folder, self.test))
            return url

        self._patch(_server, "_start", started_server)

    def uninstall(self) -> None:
        gc.unfreeze()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        original = owner.__dict__[name]
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, original))

    def _patch_init(self, cls: type, registry: _Registry, *, with_site: bool) -> None:
        init = cls.__dict__["__init__"]

        @functools.wraps(init)
        def registering_init(obj: Any, *args: Any, **kwargs: Any) -> None:
            init(obj, *args, **kwargs)
            site = _connect_site(sys._getframe(1)) if with_site else ()
            registry.add(obj, site, self.test)

        self._patch(cls, "__init__", registering_init)

    def _async_connect_wrapper(self, original: Any) -> Any:
        @functools.wraps(original)
        async def connect_check_health(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if conn.is_connected:
                return await original(conn, *args, **kwargs)
            site = _connect_site(sys._getframe(1))
            result = await original(conn, *args, **kwargs)
            if conn.is_connected:
                self.conns.add(conn, site, self.test)
            return result

        return connect_check_health

    def _sync_connect_wrapper(self, original: Any) -> Any:
        @functools.wraps(original)
        def connect_check_health(conn: Any, *args: Any, **kwargs: Any) -> Any:
            if conn.is_connected:
                return original(conn, *args, **kwargs)
            site = _connect_site(sys._getframe(1))
            result = original(conn, *args, **kwargs)
            if conn.is_connected:
                self.conns.add(conn, site, self.test)
            return result

        return connect_check_health

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> _Snapshot:
        return _Snapshot(
            conns=set(self.conns.open()),
            wires=set(self.wires.open()),
            loops=set(self.loops.open()),
            fds=set(_open_fds().items()),
            threads=set(threading.enumerate()),
            procs=set(_descendants()),
        )

    def _by_design(self) -> tuple[set[int], set[int]]:
        """Return the loops that the shared loop threads run, and those loops' own fds.

        The `SyncDrive` loop thread (and fsspec's) may outlive a test by design: its loop,
        selector and self-pipe with it.
        """
        idents = {t.ident for t in _shared_threads(SHARED_THREAD_PREFIXES + OTHERS_SHARED_THREADS)}
        loops: set[int] = set()
        fds: set[int] = set()
        for key, entry in self.loops.open().items():
            loop = entry.ref()
            if loop is None or getattr(loop, "_thread_id", None) not in idents:
                continue
            loops.add(key)
            with contextlib.suppress(Exception):
                fds.add(loop._selector.fileno())
            for sock in (getattr(loop, "_ssock", None), getattr(loop, "_csock", None)):
                if sock is not None:
                    fds.add(sock.fileno())
        return loops, fds

    # -- hooks ----------------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Freeze what is alive once the tests are collected: the modules the suite imports
        (pandas, pyarrow...). The collection after each test then looks only at what was
        made since: some 35 ms less a test, which was most of the check's cost.
        """
        gc.collect()
        gc.freeze()

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        """What a fixture of a wider scope opens is the baseline, not the current test's."""
        if fixturedef.scope == "function":
            return (yield)
        before = self.snapshot()
        servers = len(self.servers)
        try:
            return (yield)
        finally:
            self.baseline.absorb(self.snapshot().minus(before))
            self.servers[servers:] = [(folder, None) for folder, _ in self.servers[servers:]]
            self.wider[id(fixturedef)] = fixturedef

    def pytest_fixture_post_finalizer(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> None:
        self.wider.pop(id(fixturedef), None)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self.test = item.nodeid
        self.before = self.snapshot()
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        """After every other teardown (tryfirst: the outermost wrapper), look for leaks."""
        try:
            yield
        finally:
            self.test = None
        before, self.before = self.before, None
        if before is None:  # (the setup did not run)
            return
        leaks = self.leaks(before, item.nodeid)
        self.shared_counts.append(len(_shared_threads()))
        if leaks:
            pytest.fail(
                f"{item.nodeid} left behind:\n" + "\n".join(f"  {line}" for line in leaks),
                pytrace=False,
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Show how many shared threads there were after each test: to see them pile up."""
        counts = self.shared_counts
        if counts:
            terminalreporter.write_line(
                f"leak check: {len(counts)} tests; asyncdrive shared threads after each: "
                f"first {counts[0]}, max {max(counts)}, last {counts[-1]} "
                f"(now: {', '.join(sorted(t.name for t in _shared_threads())) or 'none'})"
            )

    # -- the check ------------------------------------------------------------------------

    def leaks(self, before: _Snapshot, test: str) -> list[str]:
        """Return a line for each thing left behind, after a grace for those that end late."""
        gc_messages = _collect()
        known = _Snapshot()
        known.absorb(before)
        known.absorb(self.baseline)
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            new = self.snapshot().minus(known)
            loops, by_design_fds = self._by_design()
            helper_pids, helper_fds = _multiprocessing_helpers()
            by_design_fds |= helper_fds
            new.loops -= loops
            new.fds = {(fd, target) for fd, target in new.fds if fd not in by_design_fds}
            new.procs = {(pid, start) for pid, start in new.procs if pid not in helper_pids}
            shared = SHARED_THREAD_PREFIXES + OTHERS_SHARED_THREADS
            new.threads = {t for t in new.threads if t.is_alive() and not t.name.startswith(shared)}
            if any([new.conns, new.wires, new.loops, new.fds]):
                self._excuse_what_fixtures_hold(new)
            servers = self._running_servers(test)
            found = any([new.conns, new.wires, new.loops, new.fds, new.threads, new.procs, servers])
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            gc_messages += _collect()
        # What stays open is the baseline from now on: each leak is named once.
        self.baseline.absorb(new)
        self.servers = [(folder, by) for folder, by in self.servers if _server_pid(folder)]
        return [
            *self._describe(self.conns, new.conns, test, "redis-py connection still connected"),
            *self._describe(self.wires, new.wires, test, "drive connection still open"),
            *self._describe(self.loops, new.loops, test, "event loop not closed"),
            *(f"fd {fd} still open -> {target}" for fd, target in sorted(new.fds)),
            *(f"thread still alive: {t!r}" for t in sorted(new.threads, key=lambda t: t.name)),
            *(f"child process still running: {_descendants().get(p, p)}" for p in new.procs),
            *(f"embedded server still running: {folder} (pid {pid})" for folder, pid in servers),
            *(f"closed only by the garbage collector: {m}" for m in gc_messages),
        ]

    def _excuse_what_fixtures_hold(self, new: _Snapshot) -> None:
        """Drop from ``new`` what a live fixture of a wider scope holds: not the test's.

        Such a fixture's drive, say, connects at its first call, in a test, and is closed
        at the fixture's end. Looked for (through `gc.get_referents`) only when something
        seems left behind: it is not quick.
        """
        roots = [f.cached_result[0] for f in self.wider.values() if f.cached_result is not None]
        if not roots:
            return
        held, fds = _reachable(roots)
        for registry, keys in (
            (self.conns, new.conns),
            (self.wires, new.wires),
            (self.loops, new.loops),
        ):
            for key in list(keys):
                entry = registry.tracked.get(key)
                if entry is not None and id(entry.ref()) in held:
                    keys.discard(key)
        new.fds = {(fd, target) for fd, target in new.fds if fd not in fds}

    def _running_servers(self, test: str) -> list[tuple[Path, int]]:
        """The embedded servers ``test`` started that still run (they outlive the process)."""
        found = []
        for folder, started_by in self.servers:
            pid = _server_pid(folder) if started_by == test else 0
            if pid:
                found.append((folder, pid))
        return found

    def _describe(self, registry: _Registry, keys: set[int], test: str, what: str) -> Iterator[str]:
        for key in keys:
            entry = registry.tracked.get(key)
            obj = entry.ref() if entry is not None else None
            if entry is None or obj is None:
                continue
            text = f"{what}: {obj!r}"
            if entry.test != test:
                text += f" (opened during {entry.test or 'no test'})"
            if entry.site:
                text += "".join(f"\n      {line}" for line in entry.site)
            yield text


#: Not looked into when following references: what they lead to is everybody's.
_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.MethodType,
)


def _reachable(roots: list[Any], limit: int = 500_000) -> tuple[set[int], set[int]]:
    """Return the ids of the objects ``roots`` hold (directly or not), and the fds of those
    that are sockets, selectors or files: the resources that are theirs.
    """
    modules = {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    seen: set[int] = set()
    fds: set[int] = set()
    stack = list(roots)
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in modules or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, (socket.socket, select.epoll, io.IOBase)):
            with contextlib.suppress(Exception):
                fds.add(obj.fileno())
        stack.extend(gc.get_referents(obj))
    return seen, fds


def _server_pid(folder: Path) -> int:
    """Return the pid of the embedded server running in ``folder``, or 0."""
    try:
        pid = json.loads((folder / "server.json").read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return 0
    return pid if isinstance(pid, int) and pid > 0 and _pid_running(pid) else 0


def _collect() -> list[str]:
    """Collect garbage, and return the warnings and errors that finalizers raised meanwhile.

    Recorded here, not left to pytest: a ``ResourceWarning`` at this collection says what
    the test left open, and pytest would blame it on whichever test runs next.
    """
    messages: list[str] = []
    hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        messages.append(f"{type(info.exc_value).__name__}: {info.exc_value}"[:300])

    sys.unraisablehook = unraisable
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
    finally:
        sys.unraisablehook = hook
    messages += [f"{w.category.__name__}: {w.message}"[:300] for w in caught]
    return messages
