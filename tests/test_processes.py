"""Drives across real processes: atomic replacement, pickling, fork, the embedded server.

Every process here is a real one (subprocess, multiprocessing or os.fork) talking to a real
server; the embedded-server tests start and always stop a private server for their own root.
"""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

import anyio.to_thread
import pytest

import asyncdrive
from asyncdrive import Drive, DriveError, DriveUnavailableError, SyncDrive
from asyncdrive._storage import DiskStore

from .conftest import run_python
from .procs import stop_all

MiB = 1 << 20

# Python 3.12+ warns when a process with threads forks (the loop thread is one): the tests
# below fork on purpose, to check that asyncdrive survives it.
allow_fork_with_threads = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asyncdrive-loop"]


def popen(code: str, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- atomic replacement of a large file ----------------------------------------------------------

BIG_SIZE = 256 * MiB
VERSIONS = 3
#: Reads (a get and an in-place read of 256 MiB each, while the writer fsyncs as much) that
#: the reader makes in its 60 s at least. 30 took more than 60 s once, in a full run on a
#: loaded 2-core machine; what matters is that the reads overlap every version's put.
MIN_READS = 12

WRITER = """
    import itertools, os, sys
    from pathlib import Path
    from asyncdrive import SyncDrive

    drive_id, versions, stop = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    base = os.getcwd()
    puts = 0
    with SyncDrive(drive_id, component_name="writer") as drive:
        for i in itertools.count():
            if stop.exists() or i >= 500:
                break
            # v0/big.bin, v1/big.bin, ...: each put replaces the drive's big.bin.
            os.chdir(os.path.join(base, f"v{i % versions}"))
            drive.put("big.bin")
            puts += 1
    print(puts, flush=True)
"""

READER = """
    import hashlib, json, sys, time
    from pathlib import Path
    from asyncdrive import SyncDrive

    drive_id, valid, min_reads = sys.argv[1], set(json.loads(sys.argv[2])), int(sys.argv[3])

    def sha256(path):
        with open(path, "rb") as f:  # hashed in chunks: never the whole file in memory
            return hashlib.file_digest(f, "sha256").hexdigest()

    reads = []
    with SyncDrive(drive_id) as drive:
        drive.get("big.bin", timeout=60)  # wait for the first put
        stored = drive.root / "drives" / drive.name / "writer" / "big.bin"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            drive.get("big.bin", overwrite=True)
            reads.append(["get", sha256("big.bin")])
            reads.append(["file", sha256(stored)])  # the drive's own file, read in place
            seen = {checksum for _, checksum in reads}
            # Done once enough reads saw every version: the writer replaced it meanwhile.
            if len(reads) >= min_reads and valid <= seen:
                break
    print(json.dumps(reads), flush=True)
"""


def write_version(path: Path, version: int) -> str:
    """Write a distinct 256 MiB content, 1 MiB at a time; return its SHA-256."""
    path.parent.mkdir(parents=True)
    block = bytearray(os.urandom(MiB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(BIG_SIZE // MiB):
            # Every 1 MiB chunk differs from the others, within and across versions.
            block[:16] = version.to_bytes(8, "big") + i.to_bytes(8, "big")
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
def test_readers_see_whole_versions_while_a_large_file_is_replaced(
    env: dict[str, str], tmp_path: Path, root: Path, drive_id: str
) -> None:
    writer_dir, reader_dir = tmp_path / "writer", tmp_path / "reader"
    reader_dir.mkdir()
    valid = [write_version(writer_dir / f"v{v}" / "big.bin", v) for v in range(VERSIONS)]
    assert len(set(valid)) == VERSIONS
    stop = tmp_path / "stop"
    writer = popen(WRITER, drive_id, str(VERSIONS), str(stop), cwd=writer_dir, env=env)
    reader = popen(READER, drive_id, json.dumps(valid), str(MIN_READS), cwd=reader_dir, env=env)
    try:
        reader_out, reader_err = reader.communicate(timeout=120)
        stop.touch()
        writer_out, writer_err = writer.communicate(timeout=120)
        assert reader.returncode == 0, reader_err
        assert writer.returncode == 0, writer_err
        reads = json.loads(reader_out)
        invalid = [(how, checksum) for how, checksum in reads if checksum not in valid]
        assert invalid == [], f"{len(invalid)} of {len(reads)} reads saw a torn file"
        assert len(reads) >= MIN_READS
        assert {checksum for _, checksum in reads} == set(valid), "reads did not overlap puts"
        assert int(writer_out) >= VERSIONS
        with SyncDrive(drive_id) as drive:
            info = drive.info("big.bin")
            assert info.component_name == "writer"
            assert info.size == BIG_SIZE
            assert info.checksum in valid
            assert info.version == int(writer_out)
        stored = root / "drives" / drive_id[6:] / "writer" / "big.bin"
        with open(stored, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == info.checksum
        # No upload, backup or download temporary was left behind.
        assert DiskStore(root, drive_id[6:]).leftovers(grace=0) == ([], [])
        assert sorted(p.name for p in reader_dir.iterdir()) == ["big.bin"]
    finally:
        stop.touch()
        stop_all([reader, writer])
        # A gigabyte or two of test data: don't keep it among pytest's retained tmp dirs.
        for folder in (writer_dir, reader_dir, root / "drives"):
            shutil.rmtree(folder, ignore_errors=True)


# -- pickling --------------------------------------------------------------------------------


def settings(drive: Drive | SyncDrive) -> tuple[Any, ...]:
    return (
        type(drive),
        drive.id,
        drive.name,
        drive.component_name,
        drive.allow_duplicates,
        drive.root,
        repr(drive),
    )


@pytest.mark.parametrize("cls", [Drive, SyncDrive])
def test_pickle_keeps_the_arguments(
    cls: type[Drive] | type[SyncDrive],
    env: dict[str, str],
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    explicit = cls(
        "lit://pickled",
        component_name="w1",
        allow_duplicates=True,
        root=tmp_path / "elsewhere",
        redis_url=redis_url,
    )
    defaulted = cls("lit://pickled")
    for drive in (explicit, defaulted):
        assert settings(pickle.loads(pickle.dumps(drive))) == settings(drive)
    # Defaults are not frozen into the pickle: they are resolved where it is unpickled.
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "one")
    data = pickle.dumps(cls("lit://pickled")), pickle.dumps(explicit)
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "two")
    assert [pickle.loads(d).component_name for d in data] == ["two", "w1"]


def test_unpickled_syncdrive_works_after_use(env: dict[str, str], drive_id: str) -> None:
    drive = SyncDrive(drive_id, component_name="w1")
    try:
        drive.write_bytes("a.txt", b"one")  # connected, with a loop thread: still pickles
        copy = pickle.loads(pickle.dumps(drive))
        try:
            assert copy is not drive
            assert copy.read_bytes("a.txt") == b"one"
            copy.write_bytes("b.txt", b"two")
            assert copy.info("b.txt").component_name == "w1"
        finally:
            copy.close()
        # Closing the copy leaves the original open.
        assert drive.list(".") == ["a.txt", "b.txt"]
    finally:
        drive.close()


async def test_unpickled_drive_works_after_use(env: dict[str, str], drive_id: str) -> None:
    async with Drive(drive_id, component_name="w1") as drive:
        await drive.write_bytes("a.txt", b"one")
        async with pickle.loads(pickle.dumps(drive)) as copy:
            assert isinstance(copy, Drive)
            assert await copy.read_bytes("a.txt") == b"one"
            await copy.write_bytes("b.txt", b"two")
        assert await drive.list(".") == ["a.txt", "b.txt"]


def new_process(
    method: str, target: Callable[..., object], *args: object
) -> multiprocessing.process.BaseProcess:
    """A multiprocessing child of the given start method, not started."""
    context: Any = multiprocessing.get_context(method)
    child: multiprocessing.process.BaseProcess = context.Process(target=target, args=args)
    return child


def join_child(child: multiprocessing.process.BaseProcess, timeout: float = 120) -> int | None:
    """Wait for a started ``child`` (killing it if it overruns) and return its exit code."""
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
    return child.exitcode


def put_in_child(drive: SyncDrive, workdir: str, name: str) -> None:
    """The target of the multiprocessing children below: put a file named ``name``."""
    os.chdir(workdir)
    Path(name).write_text(f"from pid {os.getpid()}")
    with drive:
        drive.put(name)


@pytest.mark.parametrize(
    "method",
    [pytest.param("fork", marks=allow_fork_with_threads), "spawn", "forkserver"],
)
def test_syncdrive_passed_to_a_child(
    method: str, tmp_path: Path, workdir: Path, redis_url: str, drive_id: str
) -> None:
    # Explicit settings: a forkserver child inherits the environment of the fork server,
    # started by whichever earlier test first used it, not this test's.
    with SyncDrive(
        drive_id, component_name="explicit_c", root=tmp_path / "root", redis_url=redis_url
    ) as drive:
        assert drive.list(".") == []  # used: the parent holds a loop thread and connections
        child = new_process(method, put_in_child, drive, str(workdir), f"{method}.txt")
        child.start()
        assert join_child(child) == 0
        assert drive.list(".") == [f"{method}.txt"]
        assert drive.info(f"{method}.txt").component_name == "explicit_c"
        text = drive.read_bytes(f"{method}.txt").decode()
        assert text == f"from pid {child.pid}" != f"from pid {os.getpid()}"
        drive.write_bytes("parent.txt", b"still works")  # and the parent carries on


@pytest.mark.parametrize("method", [pytest.param("fork", marks=allow_fork_with_threads), "spawn"])
def test_child_resolves_its_own_component(
    method: str,
    env: dict[str, str],
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaulted = SyncDrive(drive_id, allow_duplicates=True)
    explicit = SyncDrive(drive_id, component_name="chosen", allow_duplicates=True)
    try:
        assert defaulted.component_name == "default"
        defaulted.list(".")
        # Only the children's environment names the component (spawn and fork copy
        # os.environ when the child starts).
        monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "worker_x")
        children = [
            new_process(method, put_in_child, drive, str(workdir), name)
            for drive, name in ((defaulted, "defaulted.txt"), (explicit, "explicit.txt"))
        ]
        for child in children:
            child.start()
        monkeypatch.delenv("ASYNCDRIVE_COMPONENT")
        assert [join_child(child) for child in children] == [0, 0]
        assert defaulted.info("defaulted.txt").component_name == "worker_x"
        assert defaulted.info("explicit.txt").component_name == "chosen"
        assert defaulted.component_name == "default"  # the parent's own is unchanged
    finally:
        defaulted.close()
        explicit.close()


def test_pickled_to_a_fresh_interpreter(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    with SyncDrive(drive_id, allow_duplicates=True) as parent:
        parent.write_bytes("parent.txt", b"p")
        data = pickle.dumps(
            [parent, SyncDrive(drive_id, component_name="chosen", allow_duplicates=True)]
        )
        code = f"""
            import pickle
            from pathlib import Path
            defaulted, explicit = pickle.loads(bytes.fromhex({data.hex()!r}))
            Path("x.txt").write_text("x")
            with defaulted, explicit:
                defaulted.put("x.txt")
                explicit.put("x.txt")
                print(defaulted.component_name, explicit.component_name)
        """
        done = run_python(
            textwrap.dedent(code),
            cwd=workdir,
            env={**env, "ASYNCDRIVE_COMPONENT": "worker_x"},
            timeout=60,
        )
        assert done.stdout.split() == ["worker_x", "chosen"]
        assert parent.list(".", component_name="worker_x") == ["x.txt"]
        assert parent.list(".", component_name="chosen") == ["x.txt"]


# -- fork after use --------------------------------------------------------------------------


WarningAction = Literal["error", "always"]


def use_after_fork(drive: SyncDrive, report_fd: int, warning_action: WarningAction) -> NoReturn:
    """In the forked child: use the parent's drive, report on ``report_fd``, never return."""
    code = 1
    report: dict[str, Any] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(warning_action)
            drive.write_bytes("child.txt", b"from the child")
            report["listed"] = drive.list(".")
            report["read"] = drive.read_bytes("parent-before.txt").decode()
            with drive.open("parent-before.txt") as f:  # on the child's own loop thread
                assert f.read() == b"parent"
            report["threads_open"] = len(loop_threads())
            gc.collect()
            drive.close()
            for thread in loop_threads():
                thread.join(10)
            report["threads_closed"] = len(loop_threads())
            report["warnings"] = [str(w.message) for w in caught]
        code = 0
    except BaseException:
        report["error"] = traceback.format_exc()
    finally:
        try:
            os.write(report_fd, json.dumps(report).encode())
        finally:
            os._exit(code)


def fork_and_use(drive: SyncDrive, warning_action: WarningAction) -> tuple[int, dict[str, Any]]:
    """Fork; the child runs `use_after_fork` while the parent keeps writing; join it.

    ``warning_action`` is the child's filter: "always" records warnings and carries on, as a
    program without -W error does; "error" raises them (inside a finalizer, that also stops
    the finalizer short).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        use_after_fork(drive, write_fd, warning_action)
    os.close(write_fd)
    try:
        for i in range(10):  # the parent keeps working while the child does
            drive.write_bytes(f"parent-during-{i}.txt", b"p")
    finally:
        status = wait_for_child(pid)
        with os.fdopen(read_fd) as pipe:
            report = json.loads(pipe.read() or "{}")
    return os.waitstatus_to_exitcode(status), report


def wait_for_child(pid: int, timeout: float = 60.0) -> int:
    """Reap the forked child ``pid``, killing it if it has not ended within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.01)


@allow_fork_with_threads
def test_fork_after_use_child_gets_a_fresh_loop(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    drive = SyncDrive(drive_id, component_name="shared")
    try:
        drive.write_bytes("parent-before.txt", b"parent")
        with drive.open("parent-before.txt") as f:  # the loop thread serves open files
            assert f.read() == b"parent"
        (parent_thread,) = loop_threads()
        # "error": the child's finalizers of the parent's connections stop short, which
        # keeps the bug tested by the next test out of this one.
        exitcode, report = fork_and_use(drive, "error")
        assert exitcode == 0, report.get("error")
        assert "child.txt" in report["listed"]
        assert "parent-before.txt" in report["listed"]
        assert report["read"] == "parent"
        assert (report["threads_open"], report["threads_closed"]) == (1, 0)
        # The child's close did not close the parent's drive nor stop its thread.
        assert loop_threads() == [parent_thread]
        assert drive.read_bytes("child.txt") == b"from the child"
    finally:
        drive.close()


@allow_fork_with_threads
def test_fork_after_use_leaves_the_parent_working(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    drive = SyncDrive(drive_id, component_name="shared")
    try:
        drive.write_bytes("parent-before.txt", b"parent")
        exitcode, report = fork_and_use(drive, "always")
        assert exitcode == 0, report.get("error")
        # The parent's connections were not the child's to close, nor to warn about.
        assert report["warnings"] == []
        expected = sorted(
            ["child.txt", "parent-before.txt", *(f"parent-during-{i}.txt" for i in range(10))]
        )
        for _ in range(3):  # every pooled connection of the parent still answers
            assert drive.list(".") == expected
    finally:
        drive.close()


def test_a_forked_child_exiting_leaves_the_parents_loops_working(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A child that never uses the drives it inherited and exits normally (its interpreter
    collects them) must not take the parent's sockets from the epoll instance they share:
    the parent's next call through them waited its whole timeout, then failed."""
    code = f"""
        import gc, os, sys
        from asyncdrive import Drive, DriveNotADirectoryError, SyncDrive
        drive = SyncDrive({drive_id!r})
        drive.write_bytes("a.bin", b"a")
        watch = drive.watch()  # (the background loop thread, connected)
        pid = os.fork()
        if pid == 0:
            del drive, watch
            gc.collect()
            sys.exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        try:
            drive.open("a.bin/x", "wb")  # answered by the server, through redis-py's pool
        except DriveNotADirectoryError:
            print("refused")
        drive.write_bytes("b.bin", b"b")
        print(sorted(drive.list(".")))
        watch.close()
        drive.close()
    """
    done = run_python(
        textwrap.dedent(code), cwd=workdir, env={**env, "ASYNCDRIVE_REDIS_TIMEOUT": "3"}
    )
    assert done.stdout.split("\n")[:2] == ["refused", "['a.bin', 'b.bin']"], done.stderr


def test_a_forked_child_leaves_the_parents_open_files_alone(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A child's copies of the parent's open reader and writer, collected, warned of being
    unclosed and dropped the upload (its name too, where it has one: the parent's commit
    then failed); the parent commits what it wrote."""
    code = f"""
        import gc, os, warnings
        from asyncdrive import SyncDrive
        drive = SyncDrive({drive_id!r})
        drive.write_bytes("r.txt", b"read me")
        reader = drive.open("r.txt")
        assert reader.read(4) == b"read"
        writer = drive.open("w.bin", "wb")
        writer.write(b"x" * (3 << 20))
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                del reader, writer
                gc.collect()
            os._exit(len(caught))
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0  # no warning
        writer.write(b"y")
        writer.close()
        print(reader.read().decode(), drive.info("w.bin").size)
        reader.close()
        drive.close()
    """
    done = run_python(textwrap.dedent(code), cwd=workdir, env=env)
    assert done.stdout.split() == ["me", str((3 << 20) + 1)], done


def test_a_watch_forked_mid_read_reads_in_the_child(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A watch that a thread of the parent was reading from when the process forked: its
    read's lock, held by a task the child does not have, no longer hangs the child's."""
    code = f"""
        import os, threading, time
        from asyncdrive import SyncDrive
        drive = SyncDrive({drive_id!r})
        watch = drive.watch()
        reader = threading.Thread(target=watch.next, args=(5,))
        reader.start()
        while watch._watch._reading is None:  # until the thread waits in its read
            time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            drive.write_bytes("child.txt", b"c")
            event = watch.next(10)
            print("child:", event and event.path, flush=True)
            os._exit(0)
        deadline = time.monotonic() + 30
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                print("child hung", flush=True)
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)
        reader.join()
        watch.close()
        drive.close()
    """
    done = run_python(textwrap.dedent(code), cwd=workdir, env=env, timeout=90)
    assert done.stdout.splitlines() == ["child: child.txt"], done.stdout + done.stderr


# -- the embedded server -----------------------------------------------------------------------


def server_processes(root: Path) -> list[int]:
    """Pids of live processes running in ``<root>/server`` (the server chdirs to its --dir)."""
    folder = (root / "server").resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == folder and running(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue  # gone, or not ours to inspect
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs: exists and is not a zombie (reaped by nobody, in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def server_pid(root: Path) -> int:
    pid: int = json.loads((root / "server" / "server.json").read_text())["pid"]
    return pid


@pytest.fixture
def embedded_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh root with no Redis URL configured; its embedded server is stopped after."""
    root = tmp_path / "eroot"
    monkeypatch.setenv("ASYNCDRIVE_ROOT", str(root))
    monkeypatch.delenv("ASYNCDRIVE_REDIS_URL", raising=False)
    monkeypatch.delenv("ASYNCDRIVE_COMPONENT", raising=False)
    try:
        yield root
    finally:
        try:
            asyncdrive.stop_server(root)
        finally:
            for pid in server_processes(root):  # whatever stop_server could not stop
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_processes_starting_at_once_share_one_embedded_server(
    embedded_root: Path, workdir: Path
) -> None:
    code = """
        import sys
        from pathlib import Path
        import asyncdrive
        from asyncdrive import SyncDrive

        i = sys.argv[1]
        Path(f"f{i}.txt").write_text(i)
        print("ready", flush=True)
        sys.stdin.readline()  # go: all of them at once
        with SyncDrive("lit://shared", component_name=f"p{i}") as drive:
            drive.put(f"f{i}.txt")
        print(asyncdrive.server_url(), flush=True)
    """
    env = dict(os.environ)
    procs = [popen(code, str(i), cwd=workdir, env=env) for i in range(8)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        # Before the fixture stops the server: a straggler could start it again after.
        stop_all(procs)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    urls = {out.strip() for out, _ in outputs}
    assert len(urls) == 1
    assert urls == {asyncdrive.server_url(embedded_root)}
    pid = server_pid(embedded_root)
    assert server_processes(embedded_root) == [pid]
    with SyncDrive("lit://shared") as drive:
        assert drive.list(".") == [f"f{i}.txt" for i in range(8)]
        assert [drive.info(f"f{i}.txt").component_name for i in range(8)] == [
            f"p{i}" for i in range(8)
        ]
    assert asyncdrive.stop_server(embedded_root) is True
    assert not running(pid)
    assert server_processes(embedded_root) == []
    assert asyncdrive.server_url(embedded_root) is None
    assert asyncdrive.stop_server(embedded_root) is False


async def test_embedded_server_data_survives_a_restart(embedded_root: Path, workdir: Path) -> None:
    Path("a.txt").write_bytes(b"kept")
    async with Drive("lit://durable") as drive:
        await drive.put("a.txt")
    first = server_pid(embedded_root)
    assert await anyio.to_thread.run_sync(asyncdrive.stop_server, embedded_root) is True
    assert not running(first)
    async with Drive("lit://durable") as drive:
        assert await drive.list(".") == ["a.txt"]
        assert await drive.read_bytes("a.txt") == b"kept"
        assert (await drive.info("a.txt")).version == 1
    second = server_pid(embedded_root)
    assert second != first
    assert running(second)


UNREACHABLE = [
    "redis://127.0.0.1:1",
    "redis://user:s3cret@127.0.0.1:1",
    "redis://:s3cret@127.0.0.1:1/0",
    "redis://127.0.0.1:1/0?password=s3cret",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", UNREACHABLE)
def test_unreachable_configured_server(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    monkeypatch.setenv("ASYNCDRIVE_ROOT", str(root))
    monkeypatch.delenv("ASYNCDRIVE_COMPONENT", raising=False)
    failures: list[BaseException] = []
    # Given as an argument,
    monkeypatch.delenv("ASYNCDRIVE_REDIS_URL", raising=False)
    with (
        SyncDrive("lit://far", redis_url=url) as drive,
        pytest.raises(DriveUnavailableError) as caught,
    ):
        drive.list(".")
    failures.append(caught.value)
    # and configured through the environment.
    monkeypatch.setenv("ASYNCDRIVE_REDIS_URL", url)
    with SyncDrive("lit://far") as drive, pytest.raises(DriveUnavailableError) as caught:
        drive.write_bytes("a.txt", b"x")
    failures.append(caught.value)
    for exc in failures:
        assert isinstance(exc, ConnectionError)
        assert isinstance(exc, DriveError)
        assert "'far'" in str(exc)
        assert "127.0.0.1:1" in str(exc)
        assert "s3cret" not in "".join(traceback.format_exception(exc))
    # A configured server is never replaced by an embedded one.
    assert not (root / "server").exists()


@pytest.mark.timeout(60)
async def test_unreachable_configured_server_async(tmp_path: Path) -> None:
    drive = Drive("lit://far", root=tmp_path / "root", redis_url="redis://user:s3cret@127.0.0.1:1")
    async with drive:
        with pytest.raises(DriveUnavailableError) as caught:
            await drive.exists("a.txt")
    assert isinstance(caught.value, ConnectionError)
    assert "s3cret" not in "".join(traceback.format_exception(caught.value))
