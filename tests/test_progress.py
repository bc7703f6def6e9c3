"""The command line's progress bars: on a real terminal (tmux), never when piped or --json.

The bar measures the files the library really has open and writes (``/proc/self/fd``), so
the in-process tests open and write such files, and the terminal test runs the installed
``asyncdrive`` console script on a file big enough to take a few seconds.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncdrive import SyncDrive
from asyncdrive._progress import Transfer
from asyncdrive._storage import TMP_PREFIX

MiB = 1 << 20
BIG = 400  # MiB: a put of it takes a second or two here, long enough to see the bar move
SCRIPT = Path(sys.executable).with_name("asyncdrive")  # the console script pip installed


def test_bar_counts_the_file_in_flight_and_the_ones_before(tmp_path: Path) -> None:
    uploads = tmp_path / "tmp"
    uploads.mkdir()
    sources = []
    for name, size in [("a.bin", 3000), ("b.bin", 5000), ("c.bin", 7000)]:
        (tmp_path / name).write_bytes(b"x" * size)
        sources.append(((tmp_path / name).resolve(), size))
    bar = Transfer("put", sources, writes_in=uploads.resolve())
    assert (bar.completed, bar.total) == (0, 15000)
    assert bar.poll() is None  # nothing open yet
    # The library reads b.bin (so a.bin is done) and has written 1234 bytes of its upload.
    with open(tmp_path / "b.bin", "rb"), open(uploads / f"{TMP_PREFIX}x1", "wb") as out:
        out.write(b"y" * 1234)
        out.flush()
        assert bar.poll() == "put b.bin"
        assert bar.completed == 3000 + 1234
        # A temporary file elsewhere (another folder) is not this upload.
        with open(tmp_path / f"{TMP_PREFIX}other", "wb") as stray:
            stray.write(b"z" * 4000)
            stray.flush()
            bar.poll()
            assert bar.completed == 3000 + 1234
    assert bar.poll() is None and bar.completed == 4234  # between files: never backwards
    bar.done_through(2)  # the library returned after the first two files
    assert bar.completed == 8000
    bar.done_through(99)
    assert bar.completed == 15000


@pytest.mark.parametrize("verb", ["put", "get"])
def test_bar_counts_a_file_written_without_a_name(tmp_path: Path, verb: str) -> None:
    """Uploads, and a get's copies, are made without a name (O_TMPFILE) where the disk
    allows: ``/proc/self/fd`` shows them as "#<inode> (deleted)" in their folder."""
    uploads = tmp_path / "tmp"
    uploads.mkdir()
    (tmp_path / "a.bin").write_bytes(b"x" * 5000)
    source = (tmp_path / "a.bin").resolve()
    bar = (
        Transfer("put", [(source, 5000)], writes_in=uploads.resolve())
        if verb == "put"
        else Transfer("get", [(source, 5000)])
    )
    folder = uploads if verb == "put" else tmp_path / "out"
    folder.mkdir(exist_ok=True)
    out = os.open(folder, os.O_WRONLY | os.O_TMPFILE)
    try:
        with open(source, "rb"):
            os.write(out, b"y" * 1234)
            assert bar.poll() == f"{verb} a.bin"
            assert bar.completed == 1234
    finally:
        os.close(out)
    if verb == "put":  # one in another folder is not this put's upload
        elsewhere = os.open(tmp_path, os.O_WRONLY | os.O_TMPFILE)
        try:
            with open(source, "rb"):
                os.write(elsewhere, b"z" * 4000)
                bar.poll()
                assert bar.completed == 1234
        finally:
            os.close(elsewhere)


def test_bar_of_a_get_whose_size_was_unknown(tmp_path: Path) -> None:
    drive_dir = tmp_path / "drives" / "d"
    (drive_dir / "default").mkdir(parents=True)
    (drive_dir / "default" / "late.bin").write_bytes(b"x" * 9000)
    bar = Transfer("get", [], reads_below=drive_dir.resolve())
    assert (bar.completed, bar.total) == (0, None)
    with (
        open(drive_dir / "default" / "late.bin", "rb"),
        open(tmp_path / f"{TMP_PREFIX}get", "wb") as out,
    ):
        out.write(b"y" * 2500)
        out.flush()
        bar.poll()
        assert (bar.completed, bar.total) == (2500, 9000)


def test_piped_and_json_show_no_bar(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    Path("big.bin").write_bytes(b"\x01" * (8 * MiB))
    Path("d").mkdir()
    Path("d/one.bin").write_bytes(b"1" * MiB)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
        )

    put = run("put", "big.bin", "d", f"{drive_id}/in/")
    assert (put.returncode, put.stderr) == (0, "")
    assert put.stdout == f"big.bin -> {drive_id}/in/big.bin\nd -> {drive_id}/in/d\n"
    got = run("get", f"{drive_id}/in", "out/")
    assert (got.returncode, got.stderr, got.stdout) == (0, "", f"{drive_id}/in -> out/in\n")
    assert filecmp.cmp("big.bin", "out/in/big.bin", shallow=False)
    assert Path("out/in/d/one.bin").read_bytes() == b"1" * MiB
    quiet = run("get", "--json", f"{drive_id}/in/big.bin", "copy.bin")
    assert (quiet.stderr, json.loads(quiet.stdout)) == ("", {"got": "copy.bin"})


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    """The tmux command on a private server (its own socket), killed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="adtmux-"))  # short: socket paths are limited
    command = ["tmux", "-S", str(folder / "sock"), "-f", "/dev/null"]
    try:
        yield command
    finally:
        subprocess.run([*command, "kill-server"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder)  # tmux leaves its socket behind


BAR = re.compile(r"^(put|get) big\.bin +[━╸╺]+ +([\d.]+)/([\d.]+) MiB", re.MULTILINE)
GET_BAR = re.compile(r"^get( big\.bin)? +[━╸╺]+ +[\d.]+/[\d.]+ MiB", re.MULTILINE)


@pytest.mark.slow
def test_bar_on_a_terminal(
    env: dict[str, str], workdir: Path, drive_id: str, tmux: list[str]
) -> None:
    block = bytes(range(256)) * (MiB // 256)
    with open("big.bin", "wb") as f:
        for i in range(BIG):
            f.write(i.to_bytes(4, "big") + block[4:])
    Path("small.txt").write_text("small")
    # Before the put and the get, the file they read leaves the page cache, so that they
    # read it from the disk: from memory (2 GB/s on some machines) either can end before
    # the bar's first refresh is captured.
    stored = Path(env["ASYNCDRIVE_ROOT"]) / "drives" / drive_id[6:] / "default" / "big.bin"

    def evict(path: Path) -> str:
        code = (
            f"import os; fd = os.open({str(path)!r}, os.O_RDONLY); os.fsync(fd); "
            "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)"
        )
        return f"{sys.executable} -c {shlex.quote(code)}"

    steps = [
        evict(workdir / "big.bin"),
        f"{SCRIPT} put big.bin {drive_id}/",
        evict(stored),
        f"{SCRIPT} get {drive_id}/big.bin out/",
        f"{SCRIPT} put --json small.txt {drive_id}/",
        f"{SCRIPT} put small.txt {drive_id}/again.txt > put.out",  # stdout not the terminal
    ]
    exports = "".join(
        f"export {key}={shlex.quote(env[key])}\n"
        for key in ("ASYNCDRIVE_ROOT", "ASYNCDRIVE_REDIS_URL", "PATH")
    )
    body = "".join(f"{step}\necho $? >> rcs\n" for step in steps)
    Path("run.sh").write_text(f"{exports}{body}touch finished\nsleep 120\n")
    started = subprocess.run(
        [*tmux, "new-session", "-d", "-s", "t", "-x", "120", "-y", "30", "-c", str(workdir),
         "sh run.sh"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    running: list[str] = []  # screens captured while a transfer was going on
    deadline = time.monotonic() + 120
    while not Path("finished").exists():
        assert time.monotonic() < deadline, "the transfers did not finish in 120 s"
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "t"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        if not Path("finished").exists():
            running.append(screen)
        time.sleep(0.02)
    final = subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "t"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert Path("rcs").read_text().split() == ["0"] * len(steps), final
    # While the put ran, a bar showed part of the file written.
    partial = [
        float(m[2])
        for screen in running
        for m in BAR.finditer(screen)
        if m[1] == "put" and m[3] == f"{BIG}.0" and 0 < float(m[2]) < BIG
    ]
    assert partial, "no partial put bar seen:\n" + "\n----\n".join(running[-5:])
    assert partial == sorted(partial)  # it only moves forward
    # A get bar showed up before the get printed its result (named after the file once the
    # bar has seen it open: a get from a fast disk can end before that).
    assert any("-> out/big.bin" not in screen and GET_BAR.search(screen) for screen in running), (
        "no get bar seen while the get ran:\n" + "\n----\n".join(running[-5:])
    )
    # Each finished bar stays complete; the --json put drew none.
    done = [(m[1], m[2], m[3]) for m in BAR.finditer(final)]
    assert done == [("put", f"{BIG}.0", f"{BIG}.0"), ("get", f"{BIG}.0", f"{BIG}.0")], final
    assert final.count(" MiB ") == 2, final  # no other bar
    assert f"big.bin -> {drive_id}/big.bin" in final
    assert f"{drive_id}/big.bin -> out/big.bin" in final
    assert '{"put": "small.txt", "to": "small.txt"}' in final
    assert Path("put.out").read_text() == f"small.txt -> {drive_id}/again.txt\n"
    assert "put small.txt" in final  # its bar still on the terminal
    # And the transfers really completed.
    assert filecmp.cmp("big.bin", "out/big.bin", shallow=False)
    with SyncDrive(drive_id) as drive:
        assert drive.info("big.bin").size == BIG * MiB
        assert drive.read_bytes("small.txt") == b"small"
    assert not list(Path(env["ASYNCDRIVE_ROOT"], "drives").glob(f"*/.tmp/{TMP_PREFIX}*"))
