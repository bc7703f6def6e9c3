"""The fsspec filesystem ``lit://``: through fsspec's registry, with the real pandas and pyarrow."""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import multiprocessing
import os
import pickle
import re
import stat
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import fsspec.asyn
import numpy
import pandas as pd
import pytest
from fsspec.asyn import AsyncFileSystem
from fsspec.callbacks import Callback

import asyncdrive
from asyncdrive import (
    AmbiguousPathError,
    DriveClosedError,
    DriveError,
    DriveFileExistsError,
    DriveIsADirectoryError,
    DriveUnavailableError,
    InvalidConfigError,
    InvalidPathError,
    SyncDrive,
)
from asyncdrive._fsspec import _KEPT_DRIVES, DriveFileSystem

from .conftest import run_python

MiB = 1 << 20


@pytest.fixture
def fs(env: dict[str, str], workdir: Path) -> Iterator[DriveFileSystem]:
    """The filesystem fsspec's registry gives for ``lit``; every cached instance closed after."""
    DriveFileSystem.clear_instance_cache()
    filesystem = fsspec.filesystem("lit")
    assert isinstance(filesystem, DriveFileSystem)
    yield filesystem
    for instance in [filesystem, *DriveFileSystem._cache.values()]:
        instance.close()
    DriveFileSystem.clear_instance_cache()


@pytest.fixture
def name(drive_id: str) -> str:
    return drive_id.removeprefix("lit://")


def test_registered_for_the_lit_protocol() -> None:
    assert fsspec.get_filesystem_class("lit") is DriveFileSystem
    assert asyncdrive.DriveFileSystem is DriveFileSystem
    with pytest.raises(AttributeError, match="Nothing"):
        asyncdrive.Nothing  # type: ignore[attr-defined]  # noqa: B018
    assert "lit" in fsspec.available_protocols()


def test_files_and_folders(fs: DriveFileSystem, walked: DriveFileSystem, name: str) -> None:
    url = f"lit://{name}"
    fs.pipe(f"{url}/a.txt", b"Hello World !")
    fs.pipe({f"{url}/ckpt/1.pt": b"one", f"{url}/ckpt/sub/2.pt": b"two!"})
    assert fs.cat(f"{url}/a.txt") == b"Hello World !"
    assert fs.cat_file(f"{url}/a.txt", start=6, end=11) == b"World"
    assert fs.cat_file(f"{url}/a.txt", start=-1) == b"!"
    assert fs.ls(url, detail=False) == [f"{name}/a.txt", f"{name}/ckpt"]
    detail = {e["name"]: e for e in fs.ls(f"{url}/ckpt")}
    assert detail[f"{name}/ckpt/sub"]["type"] == "directory"
    one = detail[f"{name}/ckpt/1.pt"]
    assert (one["type"], one["size"], one["version"]) == ("file", 3, 1)
    assert one["checksum"] == hashlib.sha256(b"one").hexdigest()
    assert fs.info(f"{url}/ckpt/1.pt") == one
    assert fs.info(f"{url}/ckpt")["type"] == "directory"
    assert fs.ls(f"{url}/a.txt", detail=False) == [f"{name}/a.txt"]  # a file lists as itself
    assert fs.find(url) == [f"{name}/a.txt", f"{name}/ckpt/1.pt", f"{name}/ckpt/sub/2.pt"]
    assert fs.find(url, maxdepth=1) == [f"{name}/a.txt"]
    assert fs.find(url, withdirs=True) == [  # the folder itself too, as fsspec does
        name, f"{name}/a.txt", f"{name}/ckpt", f"{name}/ckpt/1.pt", f"{name}/ckpt/sub",
        f"{name}/ckpt/sub/2.pt",
    ]  # fmt: skip
    assert fs.glob(f"{url}/**/*.pt") == [f"{name}/ckpt/1.pt", f"{name}/ckpt/sub/2.pt"]
    assert [(root, dirs, files) for root, dirs, files in fs.walk(url)] == [
        (name, ["ckpt"], ["a.txt"]),
        (f"{name}/ckpt", ["sub"], ["1.pt"]),
        (f"{name}/ckpt/sub", [], ["2.pt"]),
    ]
    assert fs.isfile(f"{url}/a.txt") and fs.isdir(f"{url}/ckpt") and fs.isdir(url)
    assert not fs.exists(f"{url}/missing") and fs.exists(f"{url}/ckpt/sub/2.pt")
    # A path no drive may have: nothing is there (as os.path.exists and fsspec's answer).
    for invalid in (".asyncdrive-meta.x", "a\nb", "../x"):
        assert not fs.exists(f"{url}/{invalid}")
    assert not fs.exists("lit://.hidden/a")
    assert fs.du(url) == 13 + 3 + 4
    assert fs.du(url, total=False) == {
        f"{name}/a.txt": 13, f"{name}/ckpt/1.pt": 3, f"{name}/ckpt/sub/2.pt": 4,
    }  # fmt: skip
    # Details of every file below, in two reads of the index: as fsspec's walk finds them,
    # one folder at a time (see test_find_answers_as_fsspecs_walk).
    found = fs.find(url, detail=True)
    assert list(found) == fs.find(url)
    assert found == walked.find(url, detail=True)
    assert found[f"{name}/ckpt/1.pt"] == one
    assert fs.find(f"{url}/a.txt", detail=True) == {f"{name}/a.txt": fs.info(f"{url}/a.txt")}
    assert fs.find(f"{url}/missing", detail=True) == {}
    assert name in fs.ls("", detail=False)  # the root lists the drives
    fs.rm(f"{url}/a.txt")
    fs.rm(f"{url}/ckpt", recursive=True)
    assert fs.ls(url) == [] and not fs.exists(f"{url}/ckpt")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{url}/a.txt")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{url}/nothing/here")
    with pytest.raises(FileNotFoundError) as missing:
        fs.cat(f"{url}/a.txt")
    # The hints in fsspec's terms: fs.ls(), not the library's list().
    assert f"check the path with fs.ls('{url}')" in str(missing.value), missing.value
    fs.pipe(f"{url}/once", b"1", mode="create")
    creates: list[Callable[[], object]] = [
        lambda: fs.pipe(f"{url}/once", b"2", mode="create"),
        lambda: fs.open(f"{url}/once", "xb"),
    ]
    for create in creates:
        with pytest.raises(FileExistsError) as exists:
            create()
        message = str(exists.value)
        assert "mode 'xb' (or pipe's mode='create') asked to create only" in message, message
        assert "Write it with mode 'wb' to replace it" in message and "if_version" not in message
    with pytest.raises(FileNotFoundError, match="no such drive") as no_drive:
        fs.info("lit://never-made")
    assert isinstance(no_drive.value, DriveError)


def test_listings_are_never_stale(fs: DriveFileSystem, name: str, env: dict[str, str]) -> None:
    url = f"lit://{name}"
    fs.pipe(f"{url}/first", b"1")
    assert fs.ls(url, detail=False) == [f"{name}/first"]
    with SyncDrive(f"lit://{name}") as other:  # another writer, behind fsspec's back
        other.write_bytes("second", b"2")
        assert fs.ls(url, detail=False) == [f"{name}/first", f"{name}/second"]
        other.delete("first")
    assert fs.ls(url, detail=False) == [f"{name}/second"]
    assert not fs.exists(f"{url}/first")


def test_open_read_and_write(fs: DriveFileSystem, name: str) -> None:
    url = f"lit://{name}/data.bin"
    data = os.urandom(3 * MiB + 5)
    with fsspec.open(url, "wb") as f:
        f.write(data[:MiB])
        f.write(data[MiB:])
        assert not fs.exists(url)  # nothing visible before the close
    assert fs.info(url)["size"] == len(data)
    with fsspec.open(url, "rb") as r:
        assert r.read(10) == data[:10]
        r.seek(-5, os.SEEK_END)
        assert r.read() == data[-5:]
        r.seek(MiB)
        assert r.read(MiB) == data[MiB : 2 * MiB]
        fs.pipe(url, b"replaced while open")
        r.seek(0)
        assert r.read() == data  # the version opened, to the end
    with fsspec.open(url, "r") as text:  # fsspec's text layer on top
        assert text.read() == "replaced while open"
    # A failing block commits nothing: the previous version stays. (fsspec.open's own
    # OpenFile closes, so commits, whatever happened: use fs.open, or a transaction.)
    with pytest.raises(RuntimeError, match="half"), fs.open(url, "wb") as w:
        w.write(b"x" * (6 * MiB))  # more than one block: the upload has begun
        raise RuntimeError("half written")
    with pytest.raises(RuntimeError, match="half"), fs.transaction, fsspec.open(url, "wb") as w:
        w.write(b"y" * (6 * MiB))
        raise RuntimeError("half written")
    assert fs.cat(url) == b"replaced while open"
    assert fs.info(url)["version"] == 2
    assert fs.modified(url).timestamp() == pytest.approx(fs.info(url)["mtime"], abs=1e-5)
    assert fs.modified(url).tzinfo is not None
    uploads = Path(os.environ["ASYNCDRIVE_ROOT"]) / "drives" / name / ".tmp"
    assert not any(uploads.iterdir())
    with pytest.raises(DriveFileExistsError):
        fs.open(url, "xb")  # at open, as for local files: not after every byte is written
    with fs.open(f"lit://{name}/new.bin", "xb", block_size=MiB) as x:
        x.write(b"z" * (3 * MiB))
    assert fs.cat(f"lit://{name}/new.bin") == b"z" * (3 * MiB)
    with pytest.raises(InvalidConfigError, match="'ab'"):
        fs.open(url, "ab")


def test_a_file_written_as_its_filesystem_closes_says_nothing_was_stored(
    fs: DriveFileSystem, name: str, env: dict[str, str]
) -> None:
    """It said "Drive 'd' is closed; create a new Drive to use it again", naming no file,
    to a user of fsspec, who makes no Drive."""
    small = fs.open(f"lit://{name}/small.bin", "wb")  # (buffered: its upload opens at close)
    small.write(b"x" * 10)
    large = fs.open(f"lit://{name}/large.bin", "wb", block_size=MiB)
    large.write(b"y" * (3 * MiB))  # (its upload under way)
    fs.close()
    for file, path in ((small, "small.bin"), (large, "large.bin")):
        with pytest.raises(DriveClosedError) as closed:
            file.close()
        said = str(closed.value)
        assert f"'lit://{name}/{path}'" in said and "fs.close()" in said, said
        assert "nothing was stored" in said and "new Drive" not in said
    assert fs.ls(f"lit://{name}/", detail=False) == []  # (connected anew)
    tmp = Path(env["ASYNCDRIVE_ROOT"]) / "drives" / name / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_a_file_dropped_unclosed_closes_at_once(fs: DriveFileSystem, name: str) -> None:
    """pyarrow's parquet reader drops the files it opens unclosed: fsspec's cache held the
    file's bound method, the file its cache, and each stayed open until the cycle collector
    ran (its descriptor with it)."""
    fs.pipe(f"lit://{name}/a.bin", b"x" * 100_000)
    gc.collect()
    gc.disable()
    try:
        file = fs.open(f"lit://{name}/a.bin", "rb")
        assert file.read(10) == b"x" * 10
        dropped = weakref.ref(file)
        del file
        assert dropped() is None
    finally:
        gc.enable()


def test_transactions_commit_at_the_end(fs: DriveFileSystem, name: str) -> None:
    with fs.transaction:
        with fs.open(f"lit://{name}/a", "wb") as f:
            f.write(b"a")
        assert not fs.exists(f"lit://{name}/a")
    assert fs.cat(f"lit://{name}/a") == b"a"


class Counting(Callback):  # type: ignore[misc]  # fsspec is untyped
    def __init__(self) -> None:
        super().__init__()
        self.updates: list[int] = []

    def call(self, *args: object, **kwargs: object) -> None:
        self.updates.append(self.value)


def test_put_and_get_with_progress(fs: DriveFileSystem, name: str, workdir: Path) -> None:
    local = workdir / "in"
    (local / "sub").mkdir(parents=True)
    big = os.urandom(9 * MiB)
    (local / "big.bin").write_bytes(big)
    (local / "sub" / "small.txt").write_bytes(b"small")
    progress = Counting()
    fs.put_file(str(local / "big.bin"), f"lit://{name}/big.bin", callback=progress)
    assert progress.size == len(big) and progress.updates[-1] == len(big)
    assert len(progress.updates) >= 3  # reported piece by piece, not once at the end
    fs.put(str(local) + "/", f"lit://{name}/tree", recursive=True)
    assert fs.find(f"lit://{name}/tree") == [f"{name}/tree/big.bin", f"{name}/tree/sub/small.txt"]
    progress = Counting()
    fs.get_file(f"lit://{name}/big.bin", str(workdir / "out" / "big.bin"), callback=progress)
    assert (workdir / "out" / "big.bin").read_bytes() == big
    # The mode a plain open() gives, as Drive.get's copies have (not mkstemp's 0o600).
    (workdir / "plain").write_bytes(b"")
    plain_mode = stat.S_IMODE(os.stat(workdir / "plain").st_mode)
    assert stat.S_IMODE(os.stat(workdir / "out" / "big.bin").st_mode) == plain_mode
    assert progress.updates[-1] == len(big)
    fs.get(f"lit://{name}/tree/", str(workdir / "copy"), recursive=True)
    assert (workdir / "copy" / "sub" / "small.txt").read_bytes() == b"small"
    assert sorted(p.name for p in (workdir / "copy").iterdir()) == ["big.bin", "sub"]
    assert not [p for p in (workdir / "out").iterdir() if p.name.startswith(".")]


def test_get_file_of_a_folder_makes_a_folder_as_local_files_do(
    fs: DriveFileSystem, name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fs.get_file of a folder copied its whole tree (get(recursive=True)'s work), where
    fsspec's LocalFileSystem makes an empty folder."""
    fs.pipe({f"lit://{name}/a/b.txt": b"b", f"lit://{name}/a/c/d.txt": b"d"})
    local = fsspec.filesystem("file")
    (workdir / "src" / "a" / "c").mkdir(parents=True)
    local.pipe({f"{workdir}/src/a/b.txt": b"b", f"{workdir}/src/a/c/d.txt": b"d"})
    local.get_file(f"{workdir}/src/a", f"{workdir}/from_local")
    with monkeypatch.context() as no_info:  # told by the get's own look-ups: no info()
        no_info.setattr(asyncdrive.Drive, "info", None)  # round trip more a file
        fs.get_file(f"lit://{name}/a", str(workdir / "from_drive"))
        fs.get_file(f"lit://{name}/a/b.txt", str(workdir / "b.txt"))
    assert (workdir / "b.txt").read_bytes() == b"b"
    assert os.listdir(workdir / "from_drive") == os.listdir(workdir / "from_local") == []
    fs.get(f"lit://{name}/a", str(workdir / "whole"), recursive=True)  # its files: as before
    assert sorted(local.find(str(workdir / "whole"))) == [
        f"{workdir}/whole/b.txt", f"{workdir}/whole/c/d.txt",
    ]  # fmt: skip


def test_pandas_csv_and_parquet(fs: DriveFileSystem, name: str) -> None:
    frame = pd.DataFrame({"step": [1, 2, 3], "loss": [0.9, 0.5, 0.25], "tag": ["a", "b", "c"]})
    frame.to_csv(f"lit://{name}/metrics.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(f"lit://{name}/metrics.csv"), frame)
    frame.to_parquet(f"lit://{name}/metrics.parquet", engine="pyarrow")
    back = pd.read_parquet(f"lit://{name}/metrics.parquet", engine="pyarrow")
    pd.testing.assert_frame_equal(back, frame)
    assert fs.cat(f"lit://{name}/metrics.parquet")[:4] == b"PAR1"


class WalkedWay(DriveFileSystem):
    """The lit filesystem as fsspec walks any: one ``ls`` a folder."""

    _walk = AsyncFileSystem._walk
    _find = AsyncFileSystem._find
    _du = AsyncFileSystem._du


@pytest.fixture
def walked(fs: DriveFileSystem) -> Iterator[WalkedWay]:
    walked = WalkedWay()
    yield walked
    walked.close()


TREE = ("top.txt", "a/1.txt", "a/b/2.txt", "a/b/c/3.txt", "a/b/c/d/4.txt", "a/b-c/5", "e/6.txt")
PLACES = ("", "/a", "/a/b", "/a/b/c/d", "/e", "/missing", "/a/1.txt", "/./a/../a/b/", "/a/")


def test_find_answers_as_fsspecs_walk(
    fs: DriveFileSystem, walked: WalkedWay, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"lit://{name}"
    for path in TREE:
        fs.pipe(f"{url}/{path}", path.encode())
    for where in PLACES:
        for maxdepth in (None, 1, 2, 3, 4):
            for withdirs in (False, True):
                for detail in (False, True):
                    options = {"maxdepth": maxdepth, "withdirs": withdirs, "detail": detail}
                    expected = walked.find(url + where, **options)
                    assert fs.find(url + where, **options) == expected, (where, options)
            for total in (True, False):  # du from the same listing, as fsspec's from find
                options = {"maxdepth": maxdepth, "total": total}
                if where == "/missing":
                    continue  # (fsspec's du of a missing path: 0 or {}; ours the same below)
                expected = walked.du(url + where, **options)
                assert fs.du(url + where, **options) == expected, (where, options)
    assert fs.du(f"{url}/missing") == walked.du(f"{url}/missing") == 0
    infos: list[str] = []
    info = DriveFileSystem._info

    async def counting(self: DriveFileSystem, path: str, **kwargs: Any) -> Any:
        infos.append(path)
        return await info(self, path, **kwargs)

    monkeypatch.setattr(DriveFileSystem, "_info", counting)
    assert fs.du(url) == sum(len(path) for path in TREE)
    assert infos == []  # one listing, not a lookup a file
    with pytest.raises(ValueError, match="maxdepth"):
        fs.find(url, maxdepth=0)


def test_walk_answers_as_fsspecs(fs: DriveFileSystem, walked: WalkedWay, name: str) -> None:
    url = f"lit://{name}"
    for path in TREE:
        fs.pipe(f"{url}/{path}", path.encode())
    for where in PLACES:
        for maxdepth in (None, 1, 2, 3):
            for topdown in (True, False):
                for detail in (False, True):
                    options = {"maxdepth": maxdepth, "topdown": topdown, "detail": detail}
                    expected = list(walked.walk(url + where, **options))
                    assert list(fs.walk(url + where, **options)) == expected, (where, options)
    # Top down, the folders left out of what was yielded are not walked.
    for way in (fs, walked):
        seen = []
        for folder, dirs, _files in way.walk(url):
            seen.append(folder)
            if "b" in dirs:
                dirs.remove("b")
        assert seen == [name, f"{name}/a", f"{name}/a/b-c", f"{name}/e"]
    with pytest.raises(ValueError, match="maxdepth"):
        list(fs.walk(url, maxdepth=0))


def test_walk_of_an_unreachable_server_goes_as_fsspecs(
    env: dict[str, str], workdir: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing that fails is taken as ``on_error`` says, once, as fsspec's walk does."""
    unreachable = "redis://127.0.0.1:1/0"  # nothing listens there
    url = f"lit://{name}/a"
    tries: list[str] = []
    listed = asyncdrive.Drive.list

    async def counted(self: asyncdrive.Drive, *args: Any, **kwargs: Any) -> Any:
        tries.append(str(args[0]))
        return await listed(self, *args, **kwargs)

    monkeypatch.setattr(asyncdrive.Drive, "list", counted)
    for way in (DriveFileSystem(redis_url=unreachable), WalkedWay(redis_url=unreachable)):
        try:
            tries.clear()
            assert list(way.walk(url)) == [(f"{name}/a", [], [])]
            assert len(tries) == 1  # not a second wait for the server, through fsspec's way
            for detail, empty in ((False, []), (True, {})):
                assert list(way.walk(url, detail=detail)) == [(f"{name}/a", empty, empty)]
            seen: list[BaseException] = []
            assert list(way.walk(url, on_error=seen.append)) == [(f"{name}/a", [], [])]
            assert [type(e) for e in seen] == [DriveUnavailableError]
            with pytest.raises(DriveUnavailableError, match=r"127\.0\.0\.1:1"):
                list(way.walk(url, on_error="raise"))
        finally:
            way.close()


def test_components_through_storage_options(env: dict[str, str], name: str) -> None:
    url = f"lit://{name}/shared.csv"
    for who in ("one", "two"):
        pd.DataFrame({"who": [who]}).to_csv(
            url, index=False, storage_options={"component_name": who, "allow_duplicates": True}
        )
    with pytest.raises(AmbiguousPathError):
        pd.read_csv(url)
    two = pd.read_csv(url, storage_options={"component_name": "two", "allow_duplicates": True})
    assert two["who"].tolist() == ["two"]
    # Listings with details show the reading component's own copy, whoever wrote last.
    for who, size in (("one", 1), ("two", 22)):
        reader = fsspec.filesystem("lit", component_name=who, allow_duplicates=True)
        reader.pipe(f"lit://{name}/sized/x.bin", b"x" * size)
    for who, size in (("one", 1), ("two", 22)):
        reader = fsspec.filesystem("lit", component_name=who, allow_duplicates=True)
        (listed,) = reader.ls(f"lit://{name}/sized")
        (found,) = reader.find(f"lit://{name}/sized", detail=True).values()
        assert (listed["size"], found["size"]) == (size, size)
    for instance in DriveFileSystem._cache.values():
        instance.close()
    DriveFileSystem.clear_instance_cache()


def test_instances_follow_the_environment(
    env: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec caches instances by their arguments: a changed environment makes another."""
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "one")
    first = fsspec.filesystem("lit")
    first.pipe(f"lit://{name}/a", b"1")
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "two")
    second = fsspec.filesystem("lit")
    second.pipe(f"lit://{name}/b", b"2")
    assert second.info(f"lit://{name}/b")["component_name"] == "two"
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "one")
    assert fsspec.filesystem("lit") is first
    for instance in DriveFileSystem._cache.values():
        instance.close()
    DriveFileSystem.clear_instance_cache()


def test_a_relative_root_is_the_current_folders_when_made(
    env: dict[str, str], name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was resolved again at each call: after a chdir, ls found nothing, and new drives
    went to a second root under the new folder."""
    fs = fsspec.filesystem("lit", root="rel", skip_instance_cache=True)
    fs.pipe(f"lit://{name}/a", b"1")
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    assert fs.ls("", detail=False) == [name]
    fs.pipe(f"lit://{name}-2/b", b"2")
    assert sorted(os.listdir(workdir / "rel" / "drives")) == [name, f"{name}-2"]
    assert not (workdir / "elsewhere" / "rel").exists()
    fs.close()


def test_a_component_reads_what_another_wrote(env: dict[str, str], name: str) -> None:
    """component_name chooses whose copy to read where several own a path, and only then."""
    url = f"lit://{name}/run/a.csv"
    pd.DataFrame({"x": [1]}).to_csv(url, index=False, storage_options={"component_name": "t"})
    loader = {"component_name": "loader", "allow_duplicates": True}
    assert pd.read_csv(url, storage_options=loader)["x"].tolist() == [1]  # the one owner's
    fs = fsspec.filesystem("lit", **loader)
    assert fs.info(url)["component_name"] == "t" and fs.exists(url) and fs.isfile(url)
    assert fs.du(f"lit://{name}") == len("x\n1\n")
    fs.pipe(url, b"mine")
    assert fs.cat_file(url) == b"mine" and fs.info(url)["component_name"] == "loader"
    # Owned by two, neither of them the reader: a file, though reading it needs a choice.
    anyone = fsspec.filesystem("lit")
    assert anyone.exists(url) and anyone.isfile(url)
    assert anyone.info(url)["component_name"] == "loader"  # the copy ls shows
    assert anyone.du(f"lit://{name}") == len(b"mine")  # counted once
    with pytest.raises(AmbiguousPathError, match=r"\(a storage option\) to choose one"):
        anyone.cat_file(url)
    for instance in DriveFileSystem._cache.values():
        instance.close()
    DriveFileSystem.clear_instance_cache()


@pytest.mark.parametrize("compression", [None, "gzip", "bz2"])
def test_text_and_compressed_files_commit_on_close_and_drop_on_failure(
    fs: DriveFileSystem, name: str, compression: str | None
) -> None:
    """fsspec's text and compression layers close nothing under them: ours do."""
    url = f"lit://{name}/log.txt"
    with fs.open(url, "w", compression=compression) as text:
        text.write("whole\n")
    with fs.open(url, "r", compression=compression) as text:
        assert text.read() == "whole\n"
    with fs.open(url, "rb", compression=compression) as raw:
        assert isinstance(raw, io.IOBase) and next(raw) == b"whole\n"
    for mode, data in (("w", "half"), ("wb", b"half")):
        with (
            pytest.raises(RuntimeError, match="failed"),
            fs.open(url, mode, compression=compression) as f,
        ):
            f.write(data)
            raise RuntimeError("the block failed")
    unclosed = fs.open(url, "w", compression=compression)
    unclosed.write("never closed")
    del unclosed  # collected: dropped, as an unclosed drive file is (not committed)
    gc.collect()
    plain = fs.open(url, "wb", compression=compression)
    plain.write(b"closed")
    plain.close()
    with fs.open(url, "rb", compression=compression) as raw:
        assert raw.read() == b"closed"
    assert fs.info(url)["version"] == 2  # the failed blocks committed nothing
    uploads = Path(os.environ["ASYNCDRIVE_ROOT"]) / "drives" / name / ".tmp"
    assert not any(uploads.iterdir())


def test_rm_expands_globs_down_to_maxdepth(fs: DriveFileSystem, name: str) -> None:
    url = f"lit://{name}"
    for path in ("a.txt", "b.bin", "sub/c.txt", "sub/d.bin", "sub/deep/e.txt", "sub/deep/f.bin"):
        fs.pipe(f"{url}/{path}", b"x")
    fs.rm(f"{url}/**/*.txt")
    assert fs.find(url) == [f"{name}/{p}" for p in ("b.bin", "sub/d.bin", "sub/deep/f.bin")]
    fs.rm(f"{url}/sub", recursive=True, maxdepth=1)  # not what is deeper
    assert fs.find(url) == [f"{name}/b.bin", f"{name}/sub/deep/f.bin"]
    with pytest.raises(IsADirectoryError, match=f"matches the folder '{name}/sub'"):
        fs.rm(f"{url}/*")  # a folder matched, without recursive: nothing deleted
    assert fs.find(url) == [f"{name}/b.bin", f"{name}/sub/deep/f.bin"]
    fs.rm(f"{url}/*", recursive=True)
    assert fs.find(url) == []
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        fs.rm(f"{url}/nomatch*")  # as fsspec's rm: a typo is not silence
    fs.pipe({f"{url}/mine/a": b"1", f"{url}/b": b"2"})
    theirs = fsspec.filesystem("lit", component_name="other")
    theirs.pipe({f"{url}/theirs/c": b"3", f"{url}/mine/d": b"4"})
    fs.rm(f"{url}/**", recursive=True)  # the whole drive: this component's copies
    assert fs.find(url) == [f"{name}/mine/d", f"{name}/theirs/c"]
    fs.pipe(f"{url}/again/a", b"1")
    fs.rm(url, recursive=True)  # the drive named alone too (as delete('.', recursive=True))
    assert fs.find(url) == [f"{name}/mine/d", f"{name}/theirs/c"]
    theirs.close()


def test_messages_speak_fsspec(fs: DriveFileSystem, name: str, workdir: Path) -> None:
    """Hints name fsspec's calls and storage options, not the library's Python arguments."""
    url = f"lit://{name}"
    fs.pipe({f"{url}/a.txt": b"a", f"{url}/sub/b.txt": b"b"})
    with pytest.raises(FileNotFoundError, match=rf"fs\.ls\('lit://{name}'\)"):
        pd.read_csv(f"{url}/nope.csv")
    with pytest.raises(FileNotFoundError, match=rf"fs\.ls\('lit://{name}/sub'\)"):
        fs.cat_file(f"lit:///{name}/sub/nope")  # named by its other spelling
    with pytest.raises(IsADirectoryError, match=rf"fs\.ls\('lit://{name}/sub'\)"):
        fs.open(f"{url}/sub")
    fs.pipe(f"{url}/it's/a", b"a")  # (its repr in the library's hint: "it's")
    with pytest.raises(FileNotFoundError, match=rf"""fs\.ls\("lit://{name}/it's"\)"""):
        fs.cat(f"{url}/it's/zz")
    both = "we'ird\"q"  # (its repr escapes one of the quotes)
    fs.pipe(f"{url}/{both}/a", b"a")
    with pytest.raises(FileNotFoundError) as quoted:
        fs.cat(f"{url}/{both}/zz")
    assert f"fs.ls({f'lit://{name}/{both}'!r})" in str(quoted.value), quoted.value
    for root_of_the_drives in ("lit://", "lit:///"):
        with pytest.raises(IsADirectoryError) as root_named:
            fs.cat_file(root_of_the_drives)
        assert str(root_named.value) == (
            f"{root_of_the_drives!r} is the root of the drives, a folder: name a file in it "
            "(lit://<drive>/<path>)."
        )
    calls: list[Callable[[], object]] = [
        lambda: fs.cat_file(url),
        lambda: fs.pipe(url, b"x"),
        lambda: fs.open(url),
    ]
    for call in calls:
        with pytest.raises(IsADirectoryError, match=rf"is drive '{name}', a folder: name a file"):
            call()
    with pytest.raises(FileExistsError, match=r"\(fs\.rm\(path, recursive=True\)\)"):
        fs.pipe(f"{url}/sub", b"x")
    with pytest.raises(IsADirectoryError, match="Name a file in it") as into_folder:
        fs.get_file(f"{url}/a.txt", str(workdir))
    assert isinstance(into_folder.value, DriveError)
    fs.get(f"{url}/a.txt", f"{workdir}/")  # into it, as the hint says
    assert (workdir / "a.txt").read_bytes() == b"a"
    late = fs.open(f"{url}/late.txt", "xb")
    fs.pipe(f"{url}/late.txt", b"first")
    late.write(b"second")
    with pytest.raises(FileExistsError, match=r"mode 'xb'.*Write it with mode 'wb'"):
        late.close()
    other = fsspec.filesystem("lit", component_name="other")
    with pytest.raises(FileNotFoundError, match=r"pass that component_name \(a storage option\)"):
        other.rm(f"{url}/a.txt")


def test_copy_and_move_folders(fs: DriveFileSystem, name: str) -> None:
    url = f"lit://{name}"
    fs.pipe({f"{url}/f/one": b"1", f"{url}/f/sub/two": b"2"})
    fs.cp(f"{url}/f", f"{url}/g", recursive=True)
    fs.mv(f"{url}/f", f"{url}/h", recursive=True)
    assert fs.find(url) == [f"{name}/{p}" for p in ("g/one", "g/sub/two", "h/one", "h/sub/two")]
    assert fs.cat(f"{url}/h/sub/two") == b"2"
    theirs = fsspec.filesystem("lit", component_name="other")
    theirs.pipe(f"{url}/h/sub/three", b"3")
    for source, recursive in ((f"{url}/h/sub/three", False), (f"{url}/h", True)):
        # Its copy would stay (a component deletes only its own): refused before copying.
        with pytest.raises(FileNotFoundError, match=r"owned by 'other'.*Nothing was moved\."):
            fs.mv(source, f"{url}/i", recursive=recursive)
    assert not fs.exists(f"{url}/i")
    with pytest.raises(FileNotFoundError, match="Nothing was moved"):  # (async mode's one)
        fsspec.asyn.sync(fs.loop, fs._mv_file, f"{url}/h/sub/three", f"{url}/i")
    assert not fs.exists(f"{url}/i")
    theirs.mv(f"{url}/h/sub/three", f"{url}/j/three")
    assert fs.find(f"{url}/h") == [f"{name}/h/one", f"{name}/h/sub/two"]
    assert fs.cat(f"{url}/j/three") == b"3"
    theirs.close()


def test_mkdir_and_makedirs_answer_as_the_local_filesystem(
    fs: DriveFileSystem, name: str, workdir: Path
) -> None:
    """Folders exist by their files, so nothing is made; what is in the way is an error."""
    url = f"lit://{name}"
    fs.pipe({f"{url}/a.txt": b"1", f"{url}/f/b.txt": b"2"})
    local = fsspec.filesystem("file", auto_mkdir=True)
    local.pipe({f"{workdir}/a.txt": b"1", f"{workdir}/f/b.txt": b"2"})
    for base in (url, str(workdir)):  # the same calls, the same errors
        on = local if base == str(workdir) else fs
        with pytest.raises(FileExistsError):
            on.mkdir(f"{base}/a.txt")
        with pytest.raises(FileExistsError):
            on.makedirs(f"{base}/a.txt", exist_ok=True)
        with pytest.raises(FileExistsError):
            on.mkdir(f"{base}/f")
        with pytest.raises(FileExistsError):
            on.makedirs(f"{base}/f")
        with pytest.raises(NotADirectoryError):
            on.makedirs(f"{base}/a.txt/x/y", exist_ok=True)
        on.makedirs(f"{base}/f", exist_ok=True)
        on.makedirs(f"{base}/new/deep", exist_ok=False)
    with pytest.raises(FileExistsError, match=rf"Drive '{name}': 'a.txt' is a file.*fs\.rm"):
        fs.makedirs(f"{url}/a.txt", exist_ok=True)
    with pytest.raises(FileExistsError, match=r"folder 'f' already exists.*exist_ok=True"):
        fs.makedirs(f"{url}/f/")
    with pytest.raises(NotADirectoryError, match=r"'a.txt' is a file, so 'a.txt/x' cannot") as e:
        fs.mkdir(f"{url}/a.txt/x")
    assert isinstance(e.value, DriveError)
    with pytest.raises(FileExistsError, match=rf"Drive '{name}' already exists"):
        fs.mkdir(url)
    fs.mkdir(f"{url}/new")  # nothing is written: it appears with its first file
    assert fs.find(url) == [f"{name}/a.txt", f"{name}/f/b.txt"]
    fs.makedirs("lit://no-such-drive-yet", exist_ok=False)
    assert not fs.exists("lit://no-such-drive-yet")


def test_leading_slashes_name_the_drive(fs: DriveFileSystem, name: str) -> None:
    fs.pipe(f"lit://{name}/x", b"1")
    for url in (f"lit:///{name}/x", f"/{name}/x", f"//{name}/x"):
        assert fs.cat(url) == b"1" and fs.info(url)["name"] == f"{name}/x"
    # Not the filesystem's root: a missing file is missing.
    assert not fs.exists(f"lit:///{name}/missing")
    assert not fs.isdir("/nothing/here")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"lit:///{name}/missing/deep")


def test_text_files_left_open_are_dropped_even_at_exit(
    fs: DriveFileSystem, name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec's own text layer (fsspec.open) closes its file from its finalizer: at exit,
    with fsspec's loop gone, a commit would wait forever. Dropped, as unclosed files are."""
    script = f"""
import fsspec
f = fsspec.open("lit://{name}/left.txt", "w").open()
f.write("never closed")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=60, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not fs.exists(f"lit://{name}/left.txt")
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(LookupError):
        fs.open(f"lit://{name}/x.txt", "w", encoding="no such encoding")
    gc.collect()
    assert unraisable == []  # (its finalizer met a wrapper its __init__ left unmade)


def test_probing_drives_that_do_not_exist_keeps_nothing_open(fs: DriveFileSystem) -> None:
    assert not any(fs.exists(f"lit://nothing{i}") for i in range(5))
    assert not any(fs.exists(f"lit://nothing{i}/a/b") for i in range(5))
    fs.makedirs("lit://nothing/a/b", exist_ok=True)
    assert fs._drives == {}  # (each Drive kept would hold its connections)


def test_a_folder_put_into_a_new_drive(fs: DriveFileSystem, name: str, workdir: Path) -> None:
    """fsspec's put checks its target folders at once (makedirs): the probe of the new
    drive closed the drive the others were using (DriveClosedError)."""
    (workdir / "src" / "sub" / "deeper").mkdir(parents=True)
    for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        (workdir / "src" / rel).write_text(rel)
    fs.put(f"{workdir}/src/", f"lit://{name}", recursive=True)
    assert fs.find(f"lit://{name}") == [
        f"{name}/{rel}" for rel in ("a.txt", "sub/b.txt", "sub/deeper/c.txt")
    ]


def test_bad_urls(fs: DriveFileSystem) -> None:
    with pytest.raises(InvalidPathError, match="drive name"):
        fs.ls("lit://bad name/x")
    with pytest.raises(ValueError, match="would leave the drive"):
        fs.cat("lit://d/../../etc/passwd")
    with pytest.raises(DriveIsADirectoryError, match="'lit://d' is a whole drive; pass recursive"):
        fs.rm("lit://d")


def test_arguments_of_a_wrong_type_are_drive_type_errors(
    fs: DriveFileSystem, name: str, workdir: Path
) -> None:
    """Paths of another type reached fsspec's or our own code as bare AttributeErrors and
    TypeErrors ('NoneType' object has no attribute 'startswith'), rm(b"...") took each
    byte for a path, and fsspec's maxdepth checks raised bare ValueErrors."""
    url = f"lit://{name}/a.txt"
    fs.pipe(url, b"x")
    calls: dict[str, Callable[[], object]] = {}
    for bad in (None, 1, url.encode()):
        methods = ("cat", "info", "ls", "exists", "find", "glob", "open", "rm", "du",
                   "makedirs", "isdir", "cat_file", "size", "modified", "expand_path")  # fmt: skip
        for method in methods:
            calls[f"{method}({bad!r})"] = functools.partial(getattr(fs, method), bad)
        calls[f"pipe({bad!r})"] = functools.partial(fs.pipe, bad, b"y")
        calls[f"put(.., {bad!r})"] = functools.partial(fs.put, "local.txt", bad)
        calls[f"get({bad!r})"] = functools.partial(fs.get, bad, "out")
        calls[f"mv(.., {bad!r})"] = functools.partial(fs.mv, url, bad)  # type: ignore[arg-type]
        calls[f"rm([.., {bad!r}])"] = functools.partial(fs.rm, [url, bad])
    Path("local.txt").write_bytes(b"local")
    for what, call in calls.items():
        with pytest.raises(asyncdrive.DriveTypeError, match="is not a path") as refused:
            call()
        assert isinstance(refused.value, TypeError), what
    for mode in (None, 1):
        with pytest.raises(asyncdrive.DriveTypeError, match=f"mode={mode}: a mode is a str"):
            fs.open(url, mode)  # type: ignore[arg-type]
    for maxdepth, error in ((0, InvalidConfigError), (-1, InvalidConfigError),
                            ("2", asyncdrive.DriveTypeError)):  # fmt: skip
        for call in (fs.find, fs.glob, functools.partial(fs.rm, recursive=True)):
            with pytest.raises(error, match=f"maxdepth={maxdepth!r} must be"):
                call(f"lit://{name}/*" if call is fs.glob else f"lit://{name}", maxdepth=maxdepth)
    assert fs.cat(url) == b"x" and fs.find(f"lit://{name}") == [f"{name}/a.txt"]
    assert sorted(os.listdir()) == ["local.txt"]
    # Taken: paths of a PathLike (they reached fsspec's own code as bare errors), and a
    # maxdepth of numpy's int (refused by the first check of its type).
    assert fs.cat(PurePosixPath(f"{name}/a.txt")) == b"x"
    assert fs.expand_path(PurePosixPath(f"{name}/a.txt")) == [f"{name}/a.txt"]
    assert fs.glob(PurePosixPath(f"{name}/*.txt")) == [f"{name}/a.txt"]
    fs.pipe(PurePosixPath(f"{name}/p.txt"), b"p")
    assert fs.cat(f"lit://{name}/p.txt") == b"p"
    assert fs.find(f"lit://{name}", maxdepth=numpy.int64(1)) == [f"{name}/a.txt", f"{name}/p.txt"]


def test_options_are_checked_when_the_filesystem_is_made(fs: DriveFileSystem) -> None:
    """A misspelled option was taken and ignored (fsspec's base class takes any): the files
    went to component "default"; the others were refused only at the first call."""
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"componet_name": "loader"}, asyncdrive.DriveTypeError,
         "no option 'componet_name' (did you mean 'component_name'?)"),
        ({"redis_url": 5}, asyncdrive.DriveTypeError, "redis_url=5 must be a str"),
        ({"component_name": "a:b"}, InvalidConfigError, "Invalid component name 'a:b'"),
        ({"allow_duplicates": "no"}, asyncdrive.DriveTypeError, "allow_duplicates='no' must"),
    ]  # fmt: skip
    for options, error, says in cases:
        with pytest.raises(error, match=re.escape(says)):
            fsspec.filesystem("lit", skip_instance_cache=True, **options)
    # fsspec's own options are taken; so are those of its files fsspec.open hands over.
    own = DriveFileSystem(skip_instance_cache=True, use_listings_cache=False, batch_size=4)
    assert own.batch_size == 4
    own.close()
    with fsspec.open("lit://optioned/a.txt", "wb", block_size=1 << 20, cache_type="none") as f:
        f.write(b"a")
    with fsspec.open("lit://optioned/a.txt", "rb", block_size=1 << 20) as f:
        assert f.read() == b"a"


def test_a_get_below_a_local_file_is_a_drive_error(
    fs: DriveFileSystem, name: str, workdir: Path
) -> None:
    """fsspec's get makes the local folders first: a local file in the way raised a bare
    FileExistsError."""
    fs.pipe({f"lit://{name}/a.txt": b"a", f"lit://{name}/dir/b.txt": b"b"})
    Path("afile").write_bytes(b"mine")
    for rpath, lpath, recursive in [(f"lit://{name}/a.txt", "afile/x", False),
                                    (f"lit://{name}/dir", "afile", True),
                                    (f"lit://{name}/a.txt", "afile/x/y/a.txt", False),
                                    (f"lit://{name}/dir", "afile/x/", True)]:  # fmt: skip
        with pytest.raises(asyncdrive.DriveNotADirectoryError, match="is a local file") as caught:
            fs.get(rpath, lpath, recursive=recursive)
        assert "'afile'" in str(caught.value) or "afile'" in str(caught.value)
    assert os.listdir() == ["afile"] and Path("afile").read_bytes() == b"mine"


def test_exit_is_quiet_about_a_daemon_threads_call_it_cut_short(
    env: dict[str, str], name: str, workdir: Path
) -> None:
    """A daemon thread reading in a loop as the interpreter exits: the exit closed the
    filesystem's drives under its call in flight, which ended the thread with an
    "Exception in thread" traceback of DriveClosedError (2 exits in 3, in debug mode)."""
    code = f"""
        import threading, time, fsspec
        fs = fsspec.filesystem("lit")
        fs.pipe_file("lit://{name}/a.txt", b"x")
        calls = 0

        def loop():
            global calls
            while True:
                fs.cat_file("lit://{name}/a.txt")
                calls += 1

        threading.Thread(target=loop, daemon=True).start()
        while calls < 20:
            time.sleep(0.01)
        print("exiting", flush=True)
    """
    debug = {**env, "PYTHONDEVMODE": "1"}  # (slower: the exit meets a call more often)
    for _ in range(3):
        done = run_python(textwrap.dedent(code), cwd=workdir, env=debug, timeout=60)
        assert done.stdout == "exiting\n" and "Traceback" not in done.stderr, done.stderr


def test_the_filesystems_drives_are_closed_at_exit(
    env: dict[str, str], name: str, workdir: Path
) -> None:
    """Closed by asyncdrive's exit handler calling each filesystem's finalizer: which did
    nothing once weakref's own exit handler had run (registered with the first finalizer,
    after asyncdrive's: it runs first), and a put in flight kept its lock for 30 s."""
    code = f"""
        import atexit
        drives = []
        atexit.register(lambda: print("closed:", [d._closed for d in drives], flush=True))
        import fsspec  # (after: its exit handler runs before the one above)
        fs = fsspec.filesystem("lit")
        fs.pipe_file("lit://{name}/a.txt", b"x")
        drives.extend(fs._drives.values())
    """
    done = run_python(textwrap.dedent(code), cwd=workdir, env=env, timeout=60)
    assert done.stdout == "closed: [True]\n", done


def test_bulk_transfers_make_no_anyio_thread_calls(
    fs: DriveFileSystem, name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsspec runs its loop with run_forever, where each anyio.to_thread call looks for the
    loop's root task through all its tasks: a recursive put, get or cat of thousands of
    files (fsspec keeps ~1,280 in flight) slowed down with each file more (measured: 3,000
    files put in 9.2 s, got in 8.2 s, read in 3.6 s; 2.3, 1.3 and 0.4 s without). Their
    disk calls go to the drives' own disk threads."""
    import anyio.to_thread

    calls: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await run_sync(func, *args, **kwargs)

    Path("tree").mkdir()
    for i in range(20):
        Path(f"tree/f{i}.bin").write_bytes(os.urandom(100 + i))
    fs.pipe_file(f"lit://{name}/warm", b"x")  # (connected: the drive's own first steps)
    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    fs.put("tree/", f"lit://{name}/x", recursive=True)
    paths = fs.find(f"lit://{name}/x")
    assert len(fs.cat(paths)) == 20
    fs.get(f"lit://{name}/x", "out", recursive=True)
    with fs.open(f"lit://{name}/w.bin", "wb") as f:
        f.write(b"w")
    assert sorted(os.listdir("out")) == sorted(os.listdir("tree"))
    assert calls == []


def _read_in_child(url: str, queue: multiprocessing.Queue[bytes]) -> None:
    queue.put(fsspec.open(url, "rb").open().read())


def _read_with(fs: DriveFileSystem, url: str, queue: multiprocessing.Queue[bytes]) -> None:
    queue.put(fs.cat(url))
    fs.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fork_and_spawn_safe(fs: DriveFileSystem, name: str, method: str) -> None:
    url = f"lit://{name}/a.txt"
    fs.pipe(url, b"from the parent")
    assert fs.cat(url) == b"from the parent"  # the parent's drives are connected
    ctx: Any = multiprocessing.get_context(method)
    queue: multiprocessing.Queue[bytes] = ctx.Queue()
    for target, args in ((_read_in_child, (url, queue)), (_read_with, (fs, url, queue))):
        child = ctx.Process(target=target, args=args)
        child.start()
        try:
            assert queue.get(timeout=30) == b"from the parent"
        finally:
            child.join(timeout=60)
        assert child.exitcode == 0
    assert fs.cat(url) == b"from the parent"  # and the parent's still work
    assert pickle.loads(pickle.dumps(fs)).cat(url) == b"from the parent"


async def test_asynchronous_use(env: dict[str, str], name: str) -> None:
    fs = DriveFileSystem(asynchronous=True, skip_instance_cache=True)
    try:
        await fs._pipe_file(f"lit://{name}/a.txt", b"async")
        assert await fs._cat_file(f"lit://{name}/a.txt", start=1) == b"sync"
        assert await fs._ls(f"lit://{name}", detail=False) == [f"{name}/a.txt"]
        assert (await fs._info(f"lit://{name}/a.txt"))["size"] == 5
    finally:
        await fs.aclose()
    assert repr(fs) == "DriveFileSystem()"
    secret = DriveFileSystem(
        redis_url="redis://me:S3cr3t@host:6379/0", component_name="c", skip_instance_cache=True
    )
    assert "S3cr3t" not in repr(secret) and "component_name='c'" in repr(secret)
    assert "redis://me:***@host:6379/0" in repr(secret), repr(secret)


DROPPED_COMPRESSED_FILE = """
import gc, fsspec
fs = fsspec.filesystem("lit")
for compression in ("gzip", "bz2"):
    f = fs.open("lit://{name}/log.txt", "w", compression=compression)
    f.write("never committed")
    del f  # dropped, never closed
    gc.collect()
print(fs.exists("lit://{name}/log.txt"))
fs.close()
"""


def test_a_dropped_compressed_file_closes_its_codec_quietly(
    env: dict[str, str], workdir: Path, name: str
) -> None:
    """The codec's finalizer wrote its last bytes into the dropped drive file, which raised:
    ignored before Python 3.13, reported since (and under -X dev)."""
    code = DROPPED_COMPRESSED_FILE.format(name=name)
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # (Debug mode also logs any step of fsspec's loop over 0.1 s: a busy machine's, not ours.)
    reported = [line for line in proc.stderr.splitlines() if not SLOW_STEP.match(line)]
    assert (proc.returncode, proc.stdout, reported) == (0, "False\n", [])


#: asyncio's debug-mode report of a slow step (`loop.slow_callback_duration`).
SLOW_STEP = re.compile(r"Executing <.*> took \d+\.\d+ seconds$")


def test_drives_used_once_are_closed_not_kept_for_ever(fs: DriveFileSystem, name: str) -> None:
    """A drive per run (``lit://run-<n>/metrics.csv``) kept a connected drive (two
    connections, two descriptors) per name until the filesystem closed: ~500 runs ran a
    process out of descriptors. Kept now: those in use, those handed out, the last used."""
    held = fs.open(f"lit://{name}-held/open.txt", "wb")  # open through all that follows
    held.write(b"written first")
    handed = fs.drive(f"{name}-handed")  # the user holds it: never closed under them
    descriptors = []
    for run in range(80):
        if run % 40 == 0:
            descriptors.append(len(os.listdir("/proc/self/fd")))
        with fsspec.open(f"lit://{name}-run{run}/metrics.csv", "w") as f:
            f.write(f"run,{run}\n")
        assert fs.cat(f"lit://{name}-run{run}/metrics.csv") == f"run,{run}\n".encode()
    descriptors.append(len(os.listdir("/proc/self/fd")))
    held.write(b", then committed")
    held.close()
    assert fs.cat(f"lit://{name}-held/open.txt") == b"written first, then committed"
    assert fs.ls(f"lit://{name}-run0", detail=False) == [f"{name}-run0/metrics.csv"]
    assert not handed._closed and len(fs._drives) <= _KEPT_DRIVES + 2
    # Flat once as many drives are kept as may be: 40 names more, no descriptor more.
    assert descriptors[2] - descriptors[1] <= 4, descriptors


def test_a_write_in_a_transaction_keeps_its_drive_until_the_transaction_ends(
    fs: DriveFileSystem, name: str
) -> None:
    """Given back at close, its drive was closed by the use of 16 others before the
    transaction's end committed it: the write was lost (DriveClosedError)."""
    with fs.transaction:
        with fs.open(f"lit://{name}-tx/result.bin", "wb") as f:
            f.write(b"payload")
        for other in range(_KEPT_DRIVES + 4):
            fs.pipe(f"lit://{name}-other{other}/x.bin", b"x")
    assert fs.cat(f"lit://{name}-tx/result.bin") == b"payload"
    assert fs._users == {}  # every drive given back


def test_files_alone_close_the_drives_no_longer_needed(fs: DriveFileSystem, name: str) -> None:
    """Files give their drive back when closed, with no call after that would close the
    drives no longer needed: the filesystem's loop does it then."""
    for run in range(_KEPT_DRIVES + 24):
        with fsspec.open(f"lit://{name}-file{run}/metrics.csv", "w") as f:
            f.write(f"run,{run}\n")
    deadline = time.monotonic() + 10
    while len(fs._drives) > _KEPT_DRIVES:  # (closed by the loop, just after the close)
        assert time.monotonic() < deadline, len(fs._drives)
        time.sleep(0.01)
    assert fs.cat(f"lit://{name}-file0/metrics.csv") == b"run,0\n"


def test_a_whole_drive_copies_gets_and_moves_as_a_folder(
    fs: DriveFileSystem, name: str, workdir: Path
) -> None:
    url = f"lit://{name}"
    fs.pipe({f"{url}/a.txt": b"a", f"{url}/sub/b.txt": b"b"})
    fs.get(url, "copy", recursive=True)  # (the drive is among the paths find() gives)
    fs.get(f"{url}/", "copy2/", recursive=True)
    for copy in ("copy", "copy2"):
        found = sorted(p.relative_to(copy).as_posix() for p in Path(copy).rglob("*.txt"))
        assert found == ["a.txt", "sub/b.txt"], copy
    fs.cp(url, f"{url}-dst", recursive=True)
    assert fs.find(f"{url}-dst") == [f"{name}-dst/a.txt", f"{name}-dst/sub/b.txt"]
    fs.mv(f"{url}-dst", f"{url}-moved", recursive=True)  # (copied all, then raised)
    assert fs.find(f"{url}-moved") == [f"{name}-moved/a.txt", f"{name}-moved/sub/b.txt"]
    assert fs.find(f"{url}-dst") == []
    # mv down to a depth moves what it copies: fsspec's own deleted the files deeper down.
    fs.pipe(f"{url}/c.txt", b"c")
    fs.mv(url, f"{url}-top", recursive=True, maxdepth=1)
    assert fs.find(f"{url}-top") == [f"{name}-top/a.txt", f"{name}-top/c.txt"]
    assert fs.find(url) == [f"{name}/sub/b.txt"]
    # Into a folder there, a whole drive goes as a folder of its name (its files merged
    # into the folder, over those of the same names, before).
    fs.pipe({f"{url}-b/a.txt": b"b's", f"{url}-top/a.txt": b"top's"})
    Path("backups").mkdir()
    for source in (url, f"{url}-b"):
        fs.get(source, "backups/", recursive=True)
    assert Path(f"backups/{name}/sub/b.txt").read_bytes() == b"b"
    assert Path(f"backups/{name}-b/a.txt").read_bytes() == b"b's"
    fs.cp(f"{url}-b", f"{url}-top", recursive=True)
    assert fs.cat(f"{url}-top/a.txt") == b"top's"
    assert fs.cat(f"{url}-top/{name}-b/a.txt") == b"b's"
    # A move onto itself, however written, moves nothing and deletes nothing; into itself,
    # it is refused before anything is copied (it copied, then deleted all).
    fs.mv(f"{url}-b/a.txt", f"{url}-b//a.txt")
    for inside in (f"{url}/sub/", f"{url}/./sub/", f"{url}/sub/inner"):
        with pytest.raises(InvalidPathError, match="into itself"):
            fs.mv(f"{url}/sub", inside, recursive=True)
    fsspec.asyn.sync(fs.loop, fs._mv_file, f"{url}-b/a.txt", f"{url}-b/./a.txt")
    assert fs.cat(f"{url}-b/a.txt") == b"b's" and fs.cat(f"{url}/sub/b.txt") == b"b"
    with pytest.raises(InvalidPathError, match="the root of the drives"):  # (said 'lit:/a')
        fs.copy(url, "lit://", recursive=True)
    # The root of the drives is no drive: rm says so (it built a drive named '').
    for root in ("lit://", ""):
        with pytest.raises(InvalidPathError, match="names the root of the drives"):
            fs.rm(root, recursive=True)
    for drive in (url, f"{url}-moved", f"{url}-top", f"{url}-b"):
        fs.rm(drive, recursive=True)


def test_odd_urls_files_pickled_and_text_encodings(fs: DriveFileSystem, name: str) -> None:
    fs.pipe(f"lit://{name}/sub/x", b"0123456789")
    # An empty part after the drive's name, as f"lit://d/{prefix}/x" with no prefix.
    assert fs.info(f"lit://{name}//sub/x")["type"] == "file"
    assert fs.info(f"lit://{name}//sub")["type"] == "directory"
    # Named as the drive takes the path (not as written), as the files found below.
    assert fs.info(f"lit://{name}/./sub/../sub")["name"] == f"{name}/sub"
    assert fs.info(f"lit://{name}/./sub/x")["name"] == f"{name}/sub/x"
    # A file open for reading pickles (to a worker) as its place in the file.
    with fs.open(f"lit://{name}/sub/x", "rb") as f:
        f.seek(3)
        with pickle.loads(pickle.dumps(f)) as again:
            assert (again.read(3), again.tell()) == (b"345", 6)
    # Text files start as their encoding says: UTF-16 with its byte order mark.
    for encoding in ("utf-16", "utf-32", "utf-8-sig"):
        fs.write_text(f"lit://{name}/t.txt", "héllo", encoding=encoding)
        assert fs.cat(f"lit://{name}/t.txt") == "héllo".encode(encoding), encoding
        assert fs.read_text(f"lit://{name}/t.txt", encoding=encoding) == "héllo"
        with fs.open(f"lit://{name}/t.txt", "w", encoding=encoding) as text:
            assert text.tell() == 0
            text.write("a")
    with fs.open(f"lit://{name}/t.txt", "wb") as binary:
        assert binary.seekable() is True  # (at 0: a text layer over it writes a BOM)
        binary.write(b"x")
        assert binary.seekable() is False  # (a write only appends)
    # So do fsspec's own text layer and pandas over it.
    with fsspec.open(f"lit://{name}/u.txt", "w", encoding="utf-16") as text:
        text.write("héllo")
    assert fs.cat(f"lit://{name}/u.txt") == "héllo".encode("utf-16")
    frame = pd.DataFrame({"name": ["héllo"], "n": [1]})
    frame.to_csv(f"lit://{name}/x.csv", encoding="utf-16", index=False)
    assert pd.read_csv(f"lit://{name}/x.csv", encoding="utf-16").equals(frame)


def test_the_filesystems_of_a_process_keep_few_drives_together(
    fs: DriveFileSystem, name: str
) -> None:
    """fsspec keeps an instance per set of arguments (a component name per run, say), and
    each kept its last 16 drives connected: connections grew with every new set. The
    drives kept idle are the 16 used last by any of them."""
    fs.pipe(f"lit://{name}/a.txt", b"a")
    descriptors = []
    for run in range(60):
        if run % 20 == 0:
            descriptors.append(len(os.listdir("/proc/self/fd")))
        with fsspec.open(f"lit://{name}/a.txt", "rb", component_name=f"c{run}") as f:
            assert f.read() == b"a"
    descriptors.append(len(os.listdir("/proc/self/fd")))
    instances = [i for i in DriveFileSystem._cache.values() if isinstance(i, DriveFileSystem)]
    assert len(instances) >= 60  # (fsspec's cache: one each)
    deadline = time.monotonic() + 10  # (closed on their loop, soon after)
    while sum(len(i._drives) for i in instances) > _KEPT_DRIVES and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(len(i._drives) for i in instances) <= _KEPT_DRIVES
    assert descriptors[3] - descriptors[1] <= 4, descriptors  # flat, past the first 16
