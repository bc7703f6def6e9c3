"""The command line, through the real entry point (``python -m asyncdrive``) in a subprocess."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import asyncdrive
from asyncdrive._exceptions import rewrite_list_hints

from .conftest import raw_redis


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncdrive", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_server_start_status_stop(tmp_path: Path) -> None:
    root = tmp_path / "r"
    try:
        status = cli("server", "status", "--root", str(root))
        assert (status.returncode, status.stdout.strip(), status.stderr) == (3, "not running", "")
        with_url = subprocess.run(
            [sys.executable, "-m", "asyncdrive", "server", "status", "--root", str(root)],
            env={**os.environ, "ASYNCDRIVE_REDIS_URL": "redis://elsewhere:6379"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (with_url.returncode, with_url.stdout) == (3, "not running\n")
        assert "ASYNCDRIVE_REDIS_URL is set: drives use that server" in with_url.stderr
        started = cli("server", "start", "--root", str(root))
        assert started.returncode == 0, started.stderr
        url = asyncdrive.server_url(root)
        assert url is not None
        assert started.stdout.strip() == f"running: {url}"
        again = cli("server", "start", "--root", str(root))
        assert again.stdout == started.stdout  # reused, not started twice
        stopped = cli("server", "stop", "--root", str(root))
        assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped")
        assert asyncdrive.server_url(root) is None
        assert cli("server", "stop", "--root", str(root)).stdout.strip() == "not running"
    finally:
        asyncdrive.stop_server(root)


def test_help_and_bad_usage() -> None:
    helped = cli("--help")
    assert helped.returncode == 0
    assert "server" in helped.stdout
    assert cli("--version").stdout == f"asyncdrive {asyncdrive.__version__}\n"
    bad = cli("server", "explode")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr
    not_a_drive = cli("ls", "x")  # a usage error, as argparse's own (it was 1)
    assert (not_a_drive.returncode, not_a_drive.stderr) == (
        2, "asyncdrive: error: 'x' is not a drive path: write lit://<drive>/<path>.\n"
    )  # fmt: skip


def test_rebuild_index_and_gc(env: dict[str, str], root: Path, redis_url: str) -> None:
    names = ["lit://cli_a", "lit://cli_b"]
    for drive_id in names:
        with asyncdrive.SyncDrive(drive_id) as drive:
            drive.write_bytes("x/1.bin", b"1")
            drive.write_bytes("x/2.bin", b"2")

    async def forget(names: list[str]) -> None:  # (the server of any kind: a Cluster's node)
        async with raw_redis(redis_url) as client:
            for name in names:
                keys = [key async for key in client.scan_iter(match=f"asyncdrive:{{{name}}}:*")]
                assert keys
                await client.delete(*keys)

    asyncio.run(forget(["cli_a", "cli_b"]))
    listed = cli("rebuild-index", "lit://cli_a")
    assert (listed.returncode, listed.stdout) == (0, "lit://cli_a: 2 files indexed\n")
    every = cli("rebuild-index", "--all")
    assert every.stdout.splitlines() == [
        "lit://cli_a: 2 files indexed",
        "lit://cli_b: 2 files indexed",
    ]
    with asyncdrive.SyncDrive("lit://cli_c") as drive:
        drive.write_bytes("one.bin", b"1")
    one = cli("rebuild-index", "lit://cli_c")
    assert (one.returncode, one.stdout) == (0, "lit://cli_c: 1 file indexed\n")
    with asyncdrive.SyncDrive("lit://cli_b") as drive:
        assert drive.list("x") == ["x/1.bin", "x/2.bin"]
    cleaned = cli("gc", "lit://cli_a", "--grace", "0")
    assert cleaned.returncode == 0
    assert cleaned.stdout.startswith("lit://cli_a: 0 uploads removed, 0 installs undone, ")
    report = json.loads(cli("gc", "--json", "lit://cli_a/").stdout)  # a '/' as ls takes it
    assert report["drive"] == "lit://cli_a" and report["folders_removed"] == 0
    assert cli("gc", "lit://cli_typo").returncode == 0  # nothing to clean: nothing made
    assert not (root / "drives" / "cli_typo").exists()
    # --all takes the drives' folders alone (marked at their first commit), not strays.
    (root / "drives" / "NOTES").write_text("not a drive")
    (root / "drives" / "stray").mkdir()
    assert cli("rebuild-index", "--all").stdout.count("indexed") == 3
    nothing = cli("gc", "--all", "--root", str(root / "empty"))
    assert (nothing.returncode, nothing.stdout) == (0, "")
    assert nothing.stderr == f"asyncdrive: no drives under {root / 'empty'}\n"
    # A failure every drive would meet is said once, not once a drive.
    down = cli("gc", "--all", "--redis-url", "redis://127.0.0.1:1")
    assert down.returncode == 6 and len(down.stderr.splitlines()) == 1
    bad_grace = cli("gc", "--grace", "-1", "lit://cli_a")
    assert "--grace -1.0 must be" in bad_grace.stderr  # the option, not grace=
    both = cli("gc", "lit://cli_a", "--all")
    assert (both.returncode, both.stderr.strip()) == (
        2,  # a usage error, as argparse's own
        "asyncdrive: error: name one drive (lit://<name>) or pass --all, not both.",
    )
    neither = cli("gc")
    assert (neither.returncode, neither.stderr.strip()) == (
        2,
        "asyncdrive: error: name a drive (lit://<name>), or pass --all for every drive.",
    )
    bad = cli("rebuild-index", "s3://nope")
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert "lit://" in bad.stderr


def test_output_is_whole_or_said_to_fail(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    data = os.urandom(3 << 20)
    Path("big.bin").write_bytes(data)
    assert cli("put", "big.bin", f"{drive_id}/big.bin").returncode == 0
    unbuffered = {**env, "PYTHONUNBUFFERED": "1"}  # stdout then takes part of a large write
    cat = subprocess.run(
        [sys.executable, "-m", "asyncdrive", "cat", f"{drive_id}/big.bin"],
        capture_output=True, env=unbuffered, timeout=60, check=False,
    )  # fmt: skip
    assert (cat.returncode, cat.stdout == data) == (0, True)
    with open("/dev/full", "w") as full:  # a full disk: one line, status 1
        failed = subprocess.run(
            [sys.executable, "-m", "asyncdrive", "ls", "-r", drive_id],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stderr == "asyncdrive: error: cannot write the output: No space left on device\n"
    with open("/dev/full", "w") as full:  # argparse's own output too (it exited 0, silent)
        helped = subprocess.run(
            [sys.executable, "-m", "asyncdrive", "--help"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert (helped.returncode, helped.stderr) == (1, failed.stderr)
    # Started with stdout closed (>&-): one line too (it was an AttributeError's traceback),
    # for ls and for cat's bytes; and with stderr closed, nothing said, the status kept.
    for command, target in [
        ("ls", drive_id), ("cat", f"{drive_id}/big.bin"), ("--help", "--version")
    ]:  # fmt: skip  # (argparse's own output too: it exited 120, "Exception ignored")
        closed = subprocess.run(
            ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "asyncdrive", command,
             target],
            stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (closed.returncode, closed.stderr) == (
            1, "asyncdrive: error: cannot write the output: Bad file descriptor\n"
        )  # fmt: skip
    unsaid = subprocess.run(
        ["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "asyncdrive", "cat",
         f"{drive_id}/nope"],
        stdout=subprocess.PIPE, timeout=60, check=False,
    )  # fmt: skip
    assert (unsaid.returncode, unsaid.stdout) == (4, b"")
    # A reader that leaves before a short output is flushed: no traceback at exit.
    for command in ("ls", "info"):
        target = drive_id if command == "ls" else f"{drive_id}/big.bin"
        gone = subprocess.run(
            f"{sys.executable} -m asyncdrive {command} {target} | true",
            shell=True, env={k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert gone.stderr == ""


def test_put_of_stdin_streams_and_stores_nothing_if_interrupted(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    data = os.urandom((3 << 20) + 5)  # several chunks
    command = [sys.executable, "-m", "asyncdrive", "put", "-", f"{drive_id}/in/data.bin"]
    put = subprocess.run(command, input=data, capture_output=True, timeout=60, check=False)
    assert (put.returncode, put.stdout) == (0, f"- -> {drive_id}/in/data.bin\n".encode())
    assert cli("info", "--json", f"{drive_id}/in/data.bin").stdout.count(f'"size": {len(data)}')
    cat = subprocess.run([*command[:3], "cat", command[-1]], capture_output=True, timeout=60)
    assert cat.stdout == data
    for wrong in (["-", f"{drive_id}/in/"], ["-", "a.txt", f"{drive_id}/in/"]):
        refused = cli("put", *wrong)
        assert refused.returncode == 2 and "'-' (stdin) is put alone" in refused.stderr
    closed = subprocess.run(
        [*command[:-1], f"{drive_id}/closed.bin"], stdin=subprocess.DEVNULL, capture_output=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert closed.returncode == 0  # an empty stdin: an empty file, as `cat /dev/null |`
    # A stdin another process made non-blocking (a shared pipe): "nothing yet" is no end.
    reading, writing = os.pipe()
    os.set_blocking(reading, False)
    slow = subprocess.Popen([*command[:-1], f"{drive_id}/slow.bin"], stdin=reading)
    os.close(reading)
    # Until it has found nothing yet and waits for stdin (select: the kernel's poll wait).
    wchan = Path(f"/proc/{slow.pid}/wchan")
    deadline = time.monotonic() + 30
    while "poll_schedule" not in wchan.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "poll_schedule" in wchan.read_text(), wchan.read_text()
    os.write(writing, b"late bytes")
    os.close(writing)
    assert slow.wait(timeout=30) == 0
    late = subprocess.run([*command[:3], "cat", f"{drive_id}/slow.bin"], capture_output=True)
    assert late.stdout == b"late bytes"
    # Interrupted before stdin's end (Ctrl-C): exit 130, nothing stored, no upload left.
    replaced = [*command[:-1], f"{drive_id}/in/data.bin"]
    writer = subprocess.Popen(replaced, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdin is not None
    writer.stdin.write(data[: 1 << 20])
    writer.stdin.flush()
    deadline = time.monotonic() + 30
    while _unread(writer.stdin.fileno()) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the command has read it: its upload has begun
    assert _unread(writer.stdin.fileno()) == 0
    writer.send_signal(signal.SIGINT)
    assert writer.wait(timeout=30) == 130
    writer.stdin.close()
    assert writer.stderr is not None and writer.stderr.read() == b""
    writer.stderr.close()
    after = subprocess.run([*command[:3], "cat", command[-1]], capture_output=True, timeout=60)
    assert after.stdout == data  # as it was
    gc = json.loads(cli("gc", "--json", "--grace", "0", drive_id).stdout)
    assert gc["uploads_removed"] == 0  # the upload went with the interruption


def _unread(fd: int) -> int:
    """The bytes written into a pipe that its reader has not read yet."""
    (count,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))
    return int(count)


def test_write_all_writes_what_a_stream_takes_in_parts() -> None:
    class Narrow(io.RawIOBase):
        def __init__(self) -> None:
            self.taken = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            part = bytes(data[:3])
            self.taken += part
            return len(part)

    from asyncdrive.__main__ import _write_all

    out = Narrow()
    _write_all(out, b"0123456789")  # type: ignore[arg-type]
    assert out.taken == b"0123456789"


def test_drive_paths_where_local_ones_go_and_root_options(
    env: dict[str, str], workdir: Path, drive_id: str, root: Path
) -> None:
    Path("a.txt").write_text("A")
    other = f"lit://o{drive_id[7:]}"
    put = cli("put", "a.txt", f"{drive_id}/", f"{other}/")  # lit://d/ taken as a LOCAL
    assert put.returncode == 2 and "is a drive path, where put takes a local one" in put.stderr
    assert cli("ls", other).stdout == ""  # nothing stored, none before it either
    assert cli("put", "a.txt", f"{drive_id}/a.txt").returncode == 0
    get = cli("get", f"{drive_id}/a.txt", f"{other}/x")
    assert get.returncode == 2 and not Path("lit:").exists()
    # --root before the command too; '' is the default root, as ASYNCDRIVE_ROOT=''.
    assert cli("--root", str(root), "ls", drive_id).stdout == "a.txt\n"
    assert cli("ls", "--root", "", drive_id).stdout == "a.txt\n"  # ($ASYNCDRIVE_ROOT here)
    # ls of a file lists it, as ls does; with a '/', a folder is asked for.
    assert cli("ls", f"{drive_id}/a.txt").stdout == "a.txt\n"
    assert cli("ls", "-l", f"{drive_id}/a.txt").stdout.split()[:2] == ["1", "v1"]
    copy = cli("put", "--component", "w2", "--allow-duplicates", "a.txt", f"{drive_id}/")
    assert copy.returncode == 0
    both = cli("ls", "-l", f"{drive_id}/a.txt").stdout.splitlines()  # each copy, as ls -l DIR
    assert [line.split()[2] for line in both] == ["default", "w2"]
    not_folder = cli("ls", f"{drive_id}/a.txt/")
    assert not_folder.returncode == 1 and "is a file, not a folder" in not_folder.stderr
    assert not Path("server").exists()


def test_file_commands(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    Path("a.txt").write_text("hello")
    Path("d").mkdir()
    Path("d/x.bin").write_bytes(b"x")
    assert cli("put", "a.txt", f"{drive_id}/").stdout == f"a.txt -> {drive_id}/a.txt\n"
    assert cli("put", "d", f"{drive_id}/data/").stdout == f"d -> {drive_id}/data/d\n"
    assert cli("put", "a.txt", f"{drive_id}/renamed.txt").returncode == 0
    other = f"{drive_id}_here"  # (this drive's events are checked below)
    here = subprocess.run(  # "." by its own name, as cp -r does
        [sys.executable, "-m", "asyncdrive", "put", ".", f"{other}/copy/"],
        cwd="d", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert here.stdout == f". -> {other}/copy/d\n", here.stderr
    assert cli("ls", "-r", other).stdout == "copy/d/x.bin\n"
    Path("d/sub").mkdir()
    up = subprocess.run(  # ".." too
        [sys.executable, "-m", "asyncdrive", "put", "..", f"{other}/up/"],
        cwd="d/sub", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert up.stdout == f".. -> {other}/up/d\n", up.stderr
    Path("d/sub").rmdir()
    assert cli("ls", drive_id).stdout.splitlines() == ["a.txt", "data", "renamed.txt"]
    listed = cli("ls", "-r", "--json", f"{drive_id}/data")
    assert json.loads(listed.stdout) == ["data/d/x.bin"]
    long = cli("ls", "-l", drive_id).stdout.splitlines()
    assert [line.split()[:3] + line.split()[-1:] for line in long] == [
        ["5", "v1", "default", "a.txt"],
        ["-", "-", "-", "data/"],
        ["5", "v1", "default", "renamed.txt"],
    ]
    assert len({line.rindex(line.split()[-1]) for line in long}) == 1  # paths in a column
    long_json = json.loads(cli("ls", "-l", "-r", "--json", f"{drive_id}/data").stdout)
    assert [(e["type"], e["path"], e["size"], e["version"]) for e in long_json] == [
        ("file", "data/d/x.bin", 1, 1)
    ]
    assert json.loads(cli("ls", "-l", "--json", drive_id).stdout)[1] == {
        "path": "data",
        "type": "folder",
    }
    assert cli("cat", f"{drive_id}/renamed.txt").stdout == "hello"
    info = json.loads(cli("info", "--json", f"{drive_id}/a.txt").stdout)
    assert (info["size"], info["version"], info["component_name"]) == (5, 1, "default")
    Path("out").mkdir()
    assert cli("get", f"{drive_id}/a.txt", "out/").returncode == 0
    assert Path("out/a.txt").read_text() == "hello"
    Path("out/a.txt").write_text("changed")
    refused = cli("get", f"{drive_id}/a.txt", "out/a.txt")
    assert (refused.returncode, refused.stdout) == (5, "")
    assert refused.stderr.startswith("asyncdrive: error: ")
    assert "Pass -f to replace it" in refused.stderr  # the command's flag, not the library's
    assert len(refused.stderr.splitlines()) == 1  # one line, no traceback
    assert cli("get", "-f", f"{drive_id}/a.txt", "out/a.txt").returncode == 0
    assert Path("out/a.txt").read_text() == "hello"
    missing = cli("get", f"{drive_id}/nope.txt")
    assert missing.returncode == 4 and "nope.txt" in missing.stderr
    assert f"check the path with 'asyncdrive ls {drive_id}'." in missing.stderr
    deeper = cli("cat", f"{drive_id}/x/y/nope.txt")
    assert f"check the path with 'asyncdrive ls {drive_id}/x/y'." in deeper.stderr
    debug = cli("--debug", "get", f"{drive_id}/nope.txt")
    assert "Traceback" in debug.stderr and debug.returncode == 4  # the same status
    assert "Traceback" in cli("get", f"{drive_id}/nope.txt", "--debug").stderr  # after it too
    # A trailing '/' names a folder, as for cp: refused for a file, and nothing done.
    for command in (["cat"], ["info"], ["rm"], ["get"]):
        slashed = cli(*command, f"{drive_id}/a.txt/")
        assert slashed.returncode != 0 and "names a folder" in slashed.stderr, slashed
    assert cli("cat", f"{drive_id}/a.txt").stdout == "hello"
    not_recursive = cli("rm", f"{drive_id}/data")
    assert not_recursive.returncode == 1 and "pass -r" in not_recursive.stderr
    whole = cli("rm", drive_id)  # (not -r): the drive, as the user named it
    assert whole.returncode == 1 and whole.stderr == (
        f"asyncdrive: error: Drive {drive_id[6:]!r}: {drive_id} is the whole drive, a folder; "
        "pass -r to delete every file of component 'default'.\n"
    )
    for subcommand in ("cat", "info", "get"):
        named = cli(subcommand, drive_id)
        assert named.returncode == 1 and named.stderr.endswith(
            f": {drive_id} is the whole drive; name a file or folder in it ({drive_id}/<path>).\n"
        ), named
    climbing = cli("rm", "-r", f"{drive_id}/data/..")  # refused, as rm refuses 'data/..'
    assert climbing.returncode == 1, climbing
    assert climbing.stderr.endswith(
        f"to delete every file of this component, name the drive ('asyncdrive rm -r {drive_id}').\n"
    )
    assert cli("cat", f"{drive_id}/a.txt").stdout == "hello"
    for _ in range(2):  # a folder got again (no LOCAL) is got into ./data again, not nested
        assert cli("get", f"{drive_id}/data").stdout == f"{drive_id}/data -> data\n"
    assert sorted(str(p) for p in Path("data").rglob("*")) == ["data/d", "data/d/x.bin"]
    assert cli("rm", "-r", f"{drive_id}/data").returncode == 0
    events = cli("watch", "--since", "0", "--timeout", "0.3", "--json", drive_id)
    changes = [(e["change"], e["path"]) for e in map(json.loads, events.stdout.splitlines())]
    assert changes == [
        ("added", "a.txt"),
        ("added", "data/d/x.bin"),
        ("added", "renamed.txt"),
        ("deleted", "data/d/x.bin"),
    ]
    owned = cli("put", "--component", "other", "a.txt", f"{drive_id}/a.txt")
    assert owned.returncode == 5 and "pass --allow-duplicates" in owned.stderr
    both = cli("put", "--component", "other", "--allow-duplicates", "a.txt", f"{drive_id}/")
    assert both.returncode == 0, both.stderr
    ambiguous = cli("cat", f"{drive_id}/a.txt")
    assert "pass --component to choose one" in ambiguous.stderr
    assert cli("cat", "--component", "other", f"{drive_id}/a.txt").stdout == "hello"
    bad_name = cli("cat", "--component", "a b", f"{drive_id}/a.txt")
    assert bad_name.returncode == 2 and "--component 'a b'" in bad_name.stderr
    assert cli("rm", "--component", "other", f"{drive_id}/a.txt").returncode == 0
    theirs = cli("rm", "--component", "other", f"{drive_id}/a.txt")  # only default's now
    assert theirs.returncode == 4 and "(owned by 'default';" in theirs.stderr
    assert "deletes only its own copies: pass --component with that name" in theirs.stderr
    nobodys = cli("cat", "--component", "other", f"{drive_id}/a.txt")
    assert nobodys.returncode == 4 and "(owned by 'default': pass --component 'default')" in (
        nobodys.stderr
    )
    slashed = cli("cat", f"{drive_id}//abs")
    assert slashed.returncode == 1 and "current directory" not in slashed.stderr
    assert "drive paths are relative to the drive; drop the leading '/'" in slashed.stderr
    bad = cli("ls", "s3://bucket")
    assert bad.returncode == 2 and "lit://" in bad.stderr
    for long in ([], ["-l"]):
        nothing = cli("ls", *long, f"{drive_id}/no/such/folder")
        assert (nothing.returncode, nothing.stdout) == (4, "")  # as ls does, not an empty list
        assert "'no/such/folder'" in nothing.stderr and len(nothing.stderr.splitlines()) == 1
    # A reader that leaves early (| head -c0): no traceback, the status of a SIGPIPE.
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncdrive", "ls", "-r", drive_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert (proc.wait(60), err) == (141, "")


def test_console_script_paths_groups_and_exit_statuses(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    script = Path(sys.executable).with_name("asyncdrive")  # the console script pip installed
    helped = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert helped.returncode == 0
    commands = ("ls", "put", "get", "cat", "rm", "info", "watch", "groups", "rebuild-index", "gc")
    for command in commands:
        assert command in helped.stdout
    Path("a.txt").write_text("A")
    Path("b.txt").write_text("B")
    put = cli("put", "--json", "a.txt", "b.txt", f"{drive_id}/two")  # several: into a folder
    assert [json.loads(line) for line in put.stdout.splitlines()] == [
        {"put": "a.txt", "to": "two/a.txt"},
        {"put": "b.txt", "to": "two/b.txt"},
    ]
    Path("a.txt").unlink()
    assert cli("get", f"{drive_id}/two/a.txt").stdout == f"{drive_id}/two/a.txt -> a.txt\n"
    assert Path("a.txt").read_text() == "A"  # no LOCAL: its base name, here
    assert cli("get", f"{drive_id}/two").returncode == 0  # a folder, by its base name
    assert sorted(p.name for p in Path("two").iterdir()) == ["a.txt", "b.txt"]
    # A consumer group hands each event to one member: a second member finds none left.
    first = cli("watch", "--group", "g", "--since", "0", "--timeout", "0.3", drive_id)
    assert [line.split()[1:3] for line in first.stdout.splitlines()] == [
        ["added", "two/a.txt"],
        ["added", "two/b.txt"],
    ]
    again = cli("watch", "--group", "g", "--since", "0", "--timeout", "0.3", drive_id)
    assert (again.returncode, again.stdout) == (0, "")
    named = cli(
        "watch", "--group", "n", "--member", "m1", "--since", "0", "--timeout", "0.3", drive_id
    )
    assert named.returncode == 0 and len(named.stdout.splitlines()) == 2
    # A member killed while it holds an event gets it back when restarted, counted.
    holder = subprocess.Popen(
        [sys.executable, "-m", "asyncdrive", "watch", "--group", "h", "--member", "m2",
         "--since", "0", drive_id],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    held = holder.stdout.readline().strip()
    holder.kill()
    holder.communicate(timeout=60)
    restarted = cli("watch", "--group", "h", "--member", "m2", "--timeout", "0.3", drive_id)
    # (It may have taken the next event, acknowledging the one printed, before the kill.)
    again_first, *rest = restarted.stdout.splitlines()
    events = named.stdout.splitlines()  # (the same events, from a group of its own)
    assert again_first.removesuffix(" (delivery 2)") in events[events.index(held) :]
    assert again_first.endswith(" (delivery 2)") and not any("(delivery" in x for x in rest)
    alone = cli("watch", "--member", "m1", "--timeout", "0.3", drive_id)
    assert alone.returncode == 2 and "--member 'm1' names" in alone.stderr  # usage
    assert "pass --group too" in alone.stderr
    # The group stays (its members left): listed, then removed.
    listed = cli("groups", drive_id)
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["GROUP", "PATH", "MEMBERS", "PENDING", "LAG", "IDLE"],
        ["g", "./**", "0", "0", "0", "-"],
        ["h", "./**", "0", "0", "0", "-"],
        ["n", "./**", "0", "0", "0", "-"],
    ]
    for name in ("n", "h"):
        assert cli("groups", "--remove", name, drive_id).returncode == 0
    (group,) = json.loads(cli("groups", "--json", drive_id).stdout)
    assert (group["name"], group["members"], group["idle"]) == ("g", 0, None)
    removed = cli("groups", "--remove", "g", drive_id)
    assert (removed.returncode, removed.stdout) == (0, f"{drive_id}: group 'g' removed\n")
    missing = cli("groups", "--remove", "g", drive_id)
    assert (missing.returncode, missing.stdout) == (4, "")
    assert missing.stderr == f"asyncdrive: {drive_id} has no group 'g'\n"
    assert cli("groups", drive_id).stdout == ""
    assert cli("groups", f"{drive_id}/two").returncode == 2  # a drive's, not a path's
    assert cli("rm", f"{drive_id}/two/a.txt").returncode == 0
    gone = cli("cat", f"{drive_id}/two/a.txt")
    assert (gone.returncode, gone.stdout) == (4, "")
    waited = cli("get", "--timeout", "0.2", f"{drive_id}/late.txt")
    assert waited.returncode == 7 and "late.txt" in waited.stderr
    down = cli("ls", "--redis-url", "redis://127.0.0.1:1/0", drive_id)
    assert down.returncode == 6 and len(down.stderr.splitlines()) == 1
    # As cp: a source that fails is said, the others are put, and the status says it.
    some = cli("put", "a.txt", "missing.txt", "b.txt", "gone.txt", f"{drive_id}/three")
    assert some.returncode == 4, some.stderr  # a FileNotFoundError's, the first failure's
    assert some.stdout.splitlines() == [f"a.txt -> {drive_id}/three/a.txt",
                                        f"b.txt -> {drive_id}/three/b.txt"]  # fmt: skip
    assert some.stderr.count("error:") == 2  # each said
    assert "missing.txt" in some.stderr and "gone.txt" in some.stderr
    down = cli("put", "--redis-url", "redis://127.0.0.1:1/0", "a.txt", "b.txt", drive_id)
    assert down.returncode == 6 and len(down.stderr.splitlines()) == 1  # said once


def test_empty_listings_print_nothing_and_flags_go_where_they_do_something(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    for args in (["ls", drive_id], ["ls", "-l", drive_id]):
        listed = cli(*args)
        assert (listed.returncode, listed.stdout) == (0, ""), args  # was one empty line
    assert cli("ls", "--json", drive_id).stdout == "[]\n"
    for command in ("cat", "rm"):  # --json did nothing there: refused as unknown
        flagged = cli(command, "--json", f"{drive_id}/a.txt")
        assert flagged.returncode == 2 and "--json" in flagged.stderr, command
    for command in ("ls", "cat", "info", "rm", "watch"):  # they never put
        flagged = cli(command, "--allow-duplicates", f"{drive_id}/a.txt")
        assert flagged.returncode == 2 and "--allow-duplicates" in flagged.stderr, command
    Path("a.txt").write_text("a")
    assert cli("put", "--allow-duplicates", "--json", "a.txt", f"{drive_id}/").returncode == 0


def test_paths_are_taken_normalised_and_ls_lists_a_components_files(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    Path("dir/sub").mkdir(parents=True)
    Path("dir/x").write_text("x")
    Path("dir/sub/y").write_text("y")
    assert cli("put", "dir", f"{drive_id}/").returncode == 0
    # 'dir/sub/..' is 'dir', as the library takes it: got as ./dir, not into '..' (its name).
    Path("nest/a").mkdir(parents=True)
    Path("nest/x").write_text("precious")
    got = subprocess.run(
        [sys.executable, "-m", "asyncdrive", "get", "-f", f"{drive_id}/dir/sub/.."],
        cwd="nest/a", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (got.returncode, got.stdout) == (0, f"{drive_id}/dir -> dir\n"), got.stderr
    assert Path("nest/x").read_text() == "precious"
    assert sorted(p.name for p in Path("nest/a/dir").iterdir()) == ["sub", "x"]
    assert cli("ls", f"{drive_id}/./dir/../dir/x").stdout == "dir/x\n"
    assert cli("ls", "--json", f"{drive_id}/./dir/x").stdout == '["dir/x"]\n'
    put = cli("put", "dir/x", f"{drive_id}/./b.txt")
    assert put.stdout == f"dir/x -> {drive_id}/b.txt\n"
    # As cp: a file put where a folder is goes into it (it was refused: a folder there).
    into = cli("put", "dir/x", f"{drive_id}/dir/sub")
    assert (into.returncode, into.stdout) == (0, f"dir/x -> {drive_id}/dir/sub/x\n")
    again = cli("put", "dir", f"{drive_id}/dir")  # a folder: re-put, into the same folder
    assert again.stdout == f"dir -> {drive_id}/dir\n"
    assert cli("ls", "-r", f"{drive_id}/dir").stdout.split() == ["dir/sub/x", "dir/sub/y", "dir/x"]
    # --component: only that component's files, as the library lists them.
    assert cli("put", "--component", "w6", "dir/x", f"{drive_id}/w6.txt").returncode == 0
    assert cli("ls", "--component", "w6", drive_id).stdout == "w6.txt\n"
    (line,) = cli("ls", "-l", "--component", "w6", drive_id).stdout.splitlines()
    assert (line.split()[2], line.split()[-1]) == ("w6", "w6.txt")
    for args in (["ls"], ["ls", "-l"]):
        mine = cli(*args, "--component", "w6", f"{drive_id}/w6.txt")
        assert (mine.returncode, mine.stdout.split()[-1]) == (0, "w6.txt")
        not_mine = cli(*args, "--component", "w6", f"{drive_id}/b.txt")
        assert (not_mine.returncode, not_mine.stdout) == (4, "")
        assert "nothing of component 'w6' at 'b.txt'" in not_mine.stderr
        none = cli(*args, "--component", "w6", f"{drive_id}/dir")
        assert (none.returncode, none.stdout) == (4, "")


def test_names_not_utf8_print_and_hints_are_the_command_lines(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    # A local name that is not UTF-8, printed on a strict UTF-8 stdout (any UTF-8 locale but
    # C's): its bytes, not a traceback once the work is done.
    name = os.fsdecode(b"bad\xffname")
    Path(name).write_text("b")
    strict = {**env, "PYTHONIOENCODING": "utf-8:strict"}
    for args in (["put", name, f"{drive_id}/good"], ["get", f"{drive_id}/good", f"{name}2"]):
        done = subprocess.run(
            [sys.executable, "-m", "asyncdrive", *args],
            capture_output=True, env=strict, timeout=60, check=False,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (0, b""), done.stderr
        assert os.fsencode(name) in done.stdout
    assert Path(f"{name}2").read_text() == "b"
    # The library's hints, in the command line's words (quoted for a shell where needed).
    Path("a.txt").write_text("a")
    for folder in ("it's", "a b"):
        assert cli("put", "a.txt", f"{drive_id}/{folder}/").returncode == 0
    told = cli("info", f"{drive_id}/it's").stderr
    assert f""""asyncdrive ls '{drive_id}/it'"'"'s'" shows its files""" in told, told
    told = cli("get", f"{drive_id}/a b/c").stderr
    assert f"""check the path with "asyncdrive ls '{drive_id}/a b'".""" in told, told
    told = cli("put", name, f"{drive_id}/odd/").stderr
    assert told.endswith("rename it, or name it in the drive path.\n"), told
    # A stdin that cannot be read: one line, nothing stored.
    with open("write-only", "w") as write_only:
        unread = subprocess.run(
            [sys.executable, "-m", "asyncdrive", "put", "-", f"{drive_id}/in.txt"],
            stdin=write_only, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert (unread.returncode, unread.stderr) == (
        1, "asyncdrive: error: cannot read stdin: Bad file descriptor\n"
    )  # fmt: skip
    assert cli("ls", f"{drive_id}/in.txt").returncode == 4


def test_list_hints_are_rewritten_from_any_repr_and_left_where_none() -> None:
    """The hint's folder is read back from its repr (quotes and escapes); text that only
    looks like one (an invalid escape) is left as it is, never an error of its own."""

    def ls(folder: str) -> str:
        return f"<{folder}>"

    assert rewrite_list_hints("""list('a') list("it's") list('we\\'ird"q')""", ls) == (
        """<a> <it's> <we'ird"q>"""
    )
    assert rewrite_list_hints("e.g. list() (e.g. list('a/b'))", ls) == "e.g. <a/b>"
    assert rewrite_list_hints("list('\\x')", ls) == "list('\\x')"
