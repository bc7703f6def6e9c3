"""Hostile input: paths and names that try to leave the drive, planted symlinks, the umask."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncdrive import InvalidDriveIdError, InvalidPathError, SyncDrive
from asyncdrive._index import Keys
from asyncdrive._storage import DiskStore

from .conftest import scandir_calling

SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "", "a", "ckpt", "..a", "...", "~", "$HOME", "\\", "a b"]),
    st.text(min_size=1, max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=60, max_size=260),
)
PATHS = st.lists(SEGMENT, min_size=1, max_size=5).map("/".join) | st.text(max_size=30)


@pytest.fixture(scope="module")
def hostile_env(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[Path, Path, SyncDrive]]:
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    outside.mkdir()
    with SyncDrive("lit://hostile", root=root, redis_url=redis_url) as drive:
        yield root, outside, drive


def every_file(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if not p.is_dir()} if folder.exists() else set()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=PATHS)
def test_paths_never_leave_the_drive(
    path: str, hostile_env: tuple[Path, Path, SyncDrive], workdir: Path
) -> None:
    root, outside, drive = hostile_env
    cwd_before = every_file(workdir)  # (its own: the repository's cwd changes as others work)
    try:
        info = drive.write_bytes(path, b"x")
    except InvalidPathError as refused:
        assert isinstance(refused, ValueError)
        assert "hostile" in str(refused)
    else:
        stored = root / "drives" / "hostile" / "default" / info.path
        assert stored.resolve().is_relative_to((root / "drives" / "hostile").resolve())
        assert stored.read_bytes() == b"x"
        assert drive.read_bytes(path) == b"x"
        drive.delete(path)
    assert every_file(outside) == set()
    assert every_file(workdir) == cwd_before


@given(name=st.text(max_size=140))
def test_drive_names_never_address_other_drives(name: str) -> None:
    try:
        drive = SyncDrive(f"lit://{name}")
    except InvalidDriveIdError:
        return
    keys = Keys(drive.name)
    # The hash tag is the whole name: no other drive's keys share the prefix.
    assert keys.prefix == f"asyncdrive:{{{name}}}:"
    assert not any(ch in name for ch in "{}:/\\\x00") and not name.startswith(".")
    assert (Path("/r/drives") / name).parent == Path("/r/drives")


def test_planted_symlinks_are_never_followed(
    env: dict[str, str], root: Path, tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("not yours")
    name = drive_id[6:]
    with SyncDrive(drive_id) as drive:
        drive.write_bytes("real/file.txt", b"mine")
        component_dir = root / "drives" / name / "default"
        # A folder link pointing out of the root, planted by someone with access to it.
        (component_dir / "evil").symlink_to(outside)
        with pytest.raises(InvalidPathError, match="symbolic link"):
            drive.write_bytes("evil/x.txt", b"escape")
        # A file replaced by a link to a file outside.
        planted = component_dir / "real" / "file.txt"
        planted.unlink()
        planted.symlink_to(secret)
        with pytest.raises(InvalidPathError, match="symbolic link"):
            drive.read_bytes("real/file.txt")
        with pytest.raises(InvalidPathError):
            drive.get("real/file.txt")
        with pytest.raises(InvalidPathError):
            drive.write_bytes("real/file.txt", b"overwrite through the link")
        # A recursive delete (two batches) of a folder holding a link: the link and what it
        # leads to stay, said; the folder's files go.
        for i in range(70):
            drive.write_bytes(f"many/{i}.txt", b"x")
        (component_dir / "many" / "33.txt").unlink()
        (component_dir / "many" / "33.txt").symlink_to(secret)
        with pytest.raises(InvalidPathError, match=r"many/33\.txt' is a symbolic link"):
            drive.delete("many", recursive=True)
        assert [p.name for p in (component_dir / "many").iterdir()] == ["33.txt"]
        assert drive.list("many") == []
        # The temporary folder itself replaced by a link: an upload refuses it (a new small
        # file may be written straight at its path, without the folder of uploads).
        tmp = root / "drives" / name / ".tmp"
        tmp.rmdir()
        tmp.symlink_to(outside)
        with pytest.raises(InvalidPathError), drive.open("other.txt", "wb") as f:
            f.write(b"x")
        # rebuild_index and gc skip links too.
        assert [f.path for f in DiskStore(root, name).scan(verify=True)] == []
    assert secret.read_text() == "not yours"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not Path("real").exists()


def test_links_made_while_the_disk_is_walked_are_never_followed(
    env: dict[str, str],
    root: Path,
    tmp_path: Path,
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder listed, then made a link before the walk goes into it; a file listed, then
    made a link before it is read: rebuild_index (and scan) take neither, nor anything
    outside the root behind them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    name = drive_id[6:]
    component_dir = root / "drives" / name / "default"

    def made_a_link(entry: os.DirEntry[str]) -> None:  # once listed
        if entry.name == "victim":
            (component_dir / "victim").rename(tmp_path / "moved")
            (component_dir / "victim").symlink_to(outside)
        elif entry.name == "t.txt":
            (component_dir / "t.txt").unlink()
            (component_dir / "t.txt").symlink_to(outside / "secret.txt")

    with SyncDrive(drive_id) as drive:
        for path in ("victim/a.txt", "t.txt", "o.txt"):
            drive.write_bytes(path, path.encode())
        with monkeypatch.context() as patch:  # (undone alone: not `env` too)
            patch.setattr(os, "scandir", scandir_calling(made_a_link))
            assert drive.rebuild_index() == 1
        assert drive.list(".", recursive=True) == ["o.txt"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_created_files_respect_the_umask(
    env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    code = f"""
import contextlib
import os
os.umask(0o027)
from asyncdrive import SyncDrive
open("local.txt", "w").write("x")
with SyncDrive({drive_id!r}) as drive:
    drive.put("local.txt")
    os.remove("local.txt")
    drive.get("local.txt")
"""
    subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True)
    component_dir = root / "drives" / drive_id[6:] / "default"
    for made in (component_dir / "local.txt", workdir / "local.txt"):
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o640, made
    assert stat.S_IMODE(os.stat(component_dir).st_mode) == 0o750


async def test_a_fifo_planted_in_the_root_is_refused_without_waiting_for_a_writer(
    env: dict[str, str], root: Path, workdir: Path, drive_id: str
) -> None:
    """Opening a FIFO for reading waits for a writer: a get (in a worker thread, or in the
    event loop's own thread) or a read would hang on one planted in place of a file."""
    from asyncdrive import Drive, DriveFileNotFoundError

    name = drive_id[6:]
    planted = root / "drives" / name / "default" / "f" / "a.bin"
    unblocked: list[bool] = []
    done = threading.Event()

    def unblock_waiters() -> None:  # if the drive waits: a writer, and a failure
        while not done.wait(5):
            with contextlib.suppress(OSError):  # ENXIO: nobody waits
                os.close(os.open(planted, os.O_WRONLY | os.O_NONBLOCK))
                unblocked.append(True)

    async with Drive(drive_id) as drive:
        await drive.write_bytes("f/a.bin", b"bytes")
        await drive.get("f/a.bin", to="out/first")  # its folder is looked at: then quick
        planted.unlink()
        os.mkfifo(planted)
        watchdog = threading.Thread(target=unblock_waiters, daemon=True)
        watchdog.start()
        try:
            for attempt in [
                drive.get("f/a.bin", to="out/again"),  # in the event loop's thread
                drive.get("f/a.bin", to="elsewhere/a.bin"),  # in a worker thread
                drive.read_bytes("f/a.bin"),
            ]:
                with pytest.raises(DriveFileNotFoundError, match=r"'f/a\.bin'"):
                    await attempt
        finally:
            done.set()
            watchdog.join()
    assert not unblocked
    assert sorted(os.listdir("out")) == ["first"] and not Path("elsewhere/a.bin").exists()
