"""The disk side of a put, on a real filesystem: uploads, their metadata, the link checks."""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from asyncdrive import FileInfo, InvalidPathError
from asyncdrive import _storage as storage
from asyncdrive._storage import DiskStore, Staged, temp_fd_in

from .conftest import opens, quiet_syncfs

CHECKSUM = hashlib.sha256(b"x").hexdigest()
META = {"checksum": CHECKSUM, "mtime": 1764000000.123456, "size": 1,
        "version": 3}  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path / "root", "d")


@pytest.fixture(params=["openat2", "walk"])
def link_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Check for links both ways: one openat2 call, and the lstat of each part."""
    if request.param == "walk":
        monkeypatch.setattr(storage, "_openat2", None)
    elif storage._openat2 is None:
        pytest.skip("this kernel or sandbox has no openat2")
    return str(request.param)


def upload_bytes(staged: Staged) -> bytes:
    """The bytes of an upload: through its descriptor while open (it may have no name yet)."""
    if staged.fd is not None:
        return os.pread(staged.fd, os.fstat(staged.fd).st_size, 0)
    return staged.tmp.read_bytes()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "meta",
    [
        META,
        {**META, "mtime": 1e20, "size": 0, "version": 1},
        {**META, "mtime": 5e-324},
        {**META, "mtime": 2},  # an int: the general encoder
        {**META, "mtime": float("nan")},
        {**META, "checksum": 'a"b\\c'},
        {**META, "checksum": "é"},
        {**META, "extra": [1]},
        {"size": True, "mtime": 1.0, "checksum": "ab", "version": 1},
        {"checksum": "ab", "mtime": 1.5, "size": 2, "version": 1},
    ],
)
def test_metadata_is_encoded_as_json_dumps_would(meta: dict[str, object]) -> None:
    assert (
        storage._meta_json(meta) == json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    )


@pytest.mark.parametrize(
    ("meta", "packed"),
    [
        (META, True),
        ({**META, "mtime": float("nan"), "size": 2**64 - 1, "version": 2**32 - 1}, True),
        ({**META, "version": 2**32}, False),  # too big for the packed field
        ({**META, "size": -1}, False),
        ({**META, "checksum": CHECKSUM.upper()}, False),  # hex() would not give it back
        ({**META, "checksum": CHECKSUM[:-2]}, False),
        ({**META, "checksum": "zz" * 32}, False),
        ({**META, "mtime": 2}, False),  # an int stays an int
        ({**META, "extra": [1]}, False),
    ],
)
def test_the_metadata_attribute_is_packed_where_it_fits_and_reads_back_the_same(
    meta: dict[str, object], packed: bool
) -> None:
    value = storage._meta_attribute(meta)
    assert (len(value) == 53) is packed
    if not packed:
        assert value == storage._meta_json(meta)
    found = storage._parse_meta_attribute(value)
    assert json.dumps(found, sort_keys=True) == json.dumps(meta, sort_keys=True)  # NaN too


def test_metadata_is_read_from_a_json_attribute_too(store: DiskStore) -> None:
    """Files written before the packed form (or with odd metadata) keep JSON: both read."""
    store.install(store.stage_bytes(b"x"), "w", "a.bin", META)
    data = store.file_path("w", "a.bin")
    assert len(os.getxattr(data, storage.META_XATTR)) == 53
    assert store.read_meta("w", "a.bin") == META
    os.setxattr(data, storage.META_XATTR, storage._meta_json({**META, "version": 4}))
    assert store.read_meta("w", "a.bin") == {**META, "version": 4}
    os.setxattr(data, storage.META_XATTR, b"\x01" + b"x" * 10)  # neither form
    assert store.read_meta("w", "a.bin") is None


def test_a_small_file_takes_no_block_for_its_metadata(store: DiskStore, tmp_path: Path) -> None:
    """Where the filesystem keeps 53 bytes of attribute in the inode (ext4), none is allocated."""
    probe = tmp_path / "probe"
    probe.touch()
    os.setxattr(probe, storage.META_XATTR, b"x" * 53)
    in_inode = os.stat(probe).st_blocks == 0
    os.setxattr(probe, storage.META_XATTR, storage._meta_json(META))
    if not in_inode or os.stat(probe).st_blocks == 0:
        pytest.skip("this filesystem stores no attribute in the inode, or every one there")
    empty = {**META, "checksum": hashlib.sha256(b"").hexdigest(), "size": 0}
    store.install(store.stage_bytes(b""), "w", "empty.bin", empty)
    assert os.stat(store.file_path("w", "empty.bin")).st_blocks == 0
    assert store.read_meta("w", "empty.bin") == empty


@pytest.mark.parametrize("unnamed", [True, False])
@pytest.mark.parametrize("sync", [True, False])
def test_an_upload_stays_open_when_unsynced_or_unnamed(
    store: DiskStore, sync: bool, unnamed: bool
) -> None:
    """Unsynced, or without a name, the upload's descriptor is kept for the install, which
    closes it; a discarded one is closed and removed."""
    if unnamed and not store.unnamed_uploads:
        pytest.skip("this system has no O_TMPFILE")
    store.unnamed_uploads = unnamed
    staged = store.stage_bytes(b"abc", sync)
    assert upload_bytes(staged) == b"abc"
    assert staged.named is not unnamed
    assert (staged.fd is None) == (sync and not unnamed)
    fd = staged.fd
    store.discard(staged)
    store.discard(staged)  # twice: a no-op
    assert staged.fd is None and not staged.tmp.exists()
    assert fd is None or not is_open(fd)
    staged = store.stage_bytes(b"new", sync)
    fd = staged.fd
    assert store.install(staged, "c", "a/f.bin", META) is None
    assert staged.fd is None and (fd is None or not is_open(fd))
    assert store.read_meta("c", "a/f.bin") == META
    assert store.file_path("c", "a/f.bin").read_bytes() == b"new"
    assert list(store.tmp_dir.iterdir()) == []


def test_an_install_that_fails_leaves_the_upload_for_discard(store: DiskStore) -> None:
    """The upload stays open while nothing was installed, so the caller's discard closes it."""
    store.install(store.stage_bytes(b"file"), "c", "a", META)
    staged = store.stage_bytes(b"below a file", sync=False)
    with pytest.raises(storage.PathClash):
        store.install(staged, "c", "a/b", META)
    assert staged.fd is None  # the metadata went on and the upload was fsynced first
    store.discard(staged)
    assert list(store.tmp_dir.iterdir()) == []
    planted = store.stage_bytes(b"x", sync=False)
    (store.base / "c" / "link").symlink_to(store.base)
    with pytest.raises(InvalidPathError, match="symbolic link"):
        store.install(planted, "c", "link/x", META)
    assert planted.fd is not None and is_open(planted.fd)
    store.discard(planted)
    assert planted.fd is None and list(store.tmp_dir.iterdir()) == []


def test_a_local_file_is_staged_whole_and_hashed(store: DiskStore, tmp_path: Path) -> None:
    for size in (0, 1, 4096, storage.CHUNK + 17):
        local = tmp_path / f"local-{size}"
        local.write_bytes(os.urandom(size))
        staged = store.stage_file(local, sync=False)
        assert staged.size == size
        assert staged.checksum == hashlib.sha256(local.read_bytes()).hexdigest()
        assert upload_bytes(staged) == local.read_bytes()
        store.discard(staged)
    with pytest.raises(IsADirectoryError):
        store.stage_file(tmp_path, sync=False)
    with pytest.raises(FileNotFoundError):
        store.stage_file(tmp_path / "missing")
    assert list(store.tmp_dir.iterdir()) == []


def test_a_small_file_is_copied_in_one_read_unless_it_grew_since_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read = os.read

    def counted(fd: int, n: int) -> bytes:
        data = read(fd, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counted)
    local = tmp_path / "local"
    data = os.urandom(4096)
    local.write_bytes(data)
    out = tmp_path / "out"
    for expected, want_reads in ((4096, [4096]), (-1, [4096, 0])):  # known size, or not
        reads.clear()
        with open(local, "rb") as src, open(out, "wb") as dst:
            size, digest = storage._copy_fd(src.fileno(), dst.fileno(), 4097, expected)
        assert (size, digest, reads) == (4096, hashlib.sha256(data).hexdigest(), want_reads)
        assert out.read_bytes() == data
    # Grown since its size was taken: copied to its end all the same.
    local.write_bytes(data * 3)
    reads.clear()
    with open(local, "rb") as src, open(out, "wb") as dst:
        size, digest = storage._copy_fd(src.fileno(), dst.fileno(), 4097, 4096)
    assert size == 3 * 4096 and out.read_bytes() == data * 3 and reads[-1] == 0
    assert digest == hashlib.sha256(data * 3).hexdigest()


def test_an_unsynced_upload_is_fsynced_where_the_disk_keeps_no_attributes(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata in a file beside the bytes: the bytes themselves are still fsynced."""
    store.meta_in_xattr = False
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    staged = store.stage_bytes(b"bytes", sync=False)
    inode = os.fstat(staged.fd).st_ino if staged.fd is not None else -1
    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.install(staged, "c", "f.bin", META)
    monkeypatch.undo()
    assert inode in synced
    assert store.meta_path("c", "f.bin").exists()
    assert store.read_meta("c", "f.bin") == META


def _next_temp_name(_: object) -> str:
    return storage._temp_names.next()


@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's default start here")
def test_an_unsynced_upload_has_no_name_until_it_is_installed(store: DiskStore) -> None:
    if not store.unnamed_uploads:
        pytest.skip("this system has no O_TMPFILE")
    staged = store.stage_bytes(b"new", sync=False)
    assert not staged.named and not staged.tmp.exists() and upload_bytes(staged) == b"new"
    assert list(store.tmp_dir.iterdir()) == []
    store.install(store.stage_bytes(b"old"), "c", "f", META)
    backup = store.install(staged, "c", "f", META)  # the locked way: named first, then moved
    assert backup is not None and backup.read_bytes() == b"old"
    assert (store.base / "c" / "f").read_bytes() == b"new" and store.read_meta("c", "f") == META
    assert staged.fd is None and list(store.tmp_dir.iterdir()) == []
    dropped = store.stage_bytes(b"dropped", sync=False)
    held = storage.upload_identity(dropped)
    store.discard(dropped)
    assert not opens(held) and list(store.tmp_dir.iterdir()) == []
    # One no caller discards (its put cancelled as it was staged) is closed when dropped.
    forgotten = store.stage_bytes(b"forgotten", sync=True)
    held = storage.upload_identity(forgotten)
    assert opens(held)
    del forgotten
    gc.collect()
    assert not opens(held)


def test_an_install_links_an_unnamed_upload_in_where_no_file_is(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the lock (a folder put's files), a new file never takes a name in .tmp."""
    if not store.unnamed_uploads:
        pytest.skip("this system has no O_TMPFILE")
    named: list[str] = []
    name_upload = DiskStore._name_upload

    def spy(self: DiskStore, staged: Staged) -> None:
        named.append(staged.tmp.name)
        name_upload(self, staged)

    monkeypatch.setattr(DiskStore, "_name_upload", spy)
    (store.base / "c" / "a").mkdir(parents=True)
    assert store.install(store.stage_bytes(b"new", sync=False), "c", "a/f", META) is None
    assert (store.base / "c" / "a" / "f").read_bytes() == b"new"
    assert store.read_meta("c", "a/f") == META and named == []
    # A replacement goes by .tmp: the rename replaces the file, a link cannot.
    backup = store.install(store.stage_bytes(b"newer", sync=False), "c", "a/f", META)
    assert backup is not None and backup.read_bytes() == b"new" and len(named) == 1
    assert (store.base / "c" / "a" / "f").read_bytes() == b"newer"
    assert list(store.tmp_dir.iterdir()) == []


def test_uploads_have_names_where_the_disk_cannot_make_unnamed_files(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An O_TMPFILE open where the kernel or filesystem lacks it fails as opening the folder
    # for writing does: with EISDIR (or EOPNOTSUPP). The store then names its uploads.
    monkeypatch.setattr(storage, "_TMPFILE_FLAGS", os.O_RDWR | os.O_DIRECTORY | os.O_CLOEXEC)
    staged = store.stage_bytes(b"named", sync=False)
    assert staged.named and staged.tmp.read_bytes() == b"named"
    assert store.unnamed_uploads is False
    assert store.install_new(staged, "c", "f", META) is not None
    assert (store.base / "c" / "f").read_bytes() == b"named"
    assert list(store.tmp_dir.iterdir()) == []


def _stage_and_die(root: str, named: bool, sync: bool) -> None:
    store = DiskStore(Path(root), "d")
    store.unnamed_uploads = store.unnamed_uploads and not named
    store.stage_bytes(b"x" * 4096, sync=sync)
    os._exit(0)  # as a process killed mid-put: nothing cleaned up


@pytest.mark.parametrize("sync", [False, True])  # True: as a large file is staged
@pytest.mark.parametrize("named", [False, True])
def test_a_process_that_dies_with_an_unnamed_upload_leaves_nothing_behind(
    store: DiskStore, named: bool, sync: bool
) -> None:
    if not named and not store.unnamed_uploads:
        pytest.skip("this system has no O_TMPFILE")
    child = multiprocessing.get_context("spawn").Process(
        target=_stage_and_die, args=(str(store.root), named, sync)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert len(list(store.tmp_dir.iterdir())) == named  # a named one is left for gc()


def test_temporary_names_differ_in_a_forked_child() -> None:
    mine = {storage._temp_names.next() for _ in range(3)}
    assert len(mine) == 3
    with multiprocessing.get_context("fork").Pool(2) as pool:
        theirs = set(pool.map(_next_temp_name, range(4)))
    assert len(theirs) == 4 and not mine & theirs
    prefixes = {name.rsplit(".", 1)[0] for name in mine | theirs}
    assert len(prefixes) >= 2


LAYOUTS = [
    # (link planted at, pointing to, path checked, refused?)
    ("e", "outside", "e/x", True),  # a component folder
    ("c/a", "outside", "c/a/b/c/x", True),
    ("c/a/b", "outside", "c/a/b", True),  # the file itself
    ("c/a/b", "c/real", "c/a/b/x", True),  # a link inside the root is a link still
    (None, None, "c/real/x", False),
    (None, None, "c/missing/deeper/x", False),
    (None, None, "c/real/file/x", False),  # a file where a folder goes: for the caller
]


@pytest.mark.parametrize(("link", "to", "checked", "refused"), LAYOUTS)
def test_links_are_refused_by_the_probe_as_by_the_walk(
    store: DiskStore,
    tmp_path: Path,
    link_check: str,
    link: str | None,
    to: str | None,
    checked: str,
    refused: bool,
) -> None:
    (store.base / "c" / "real").mkdir(parents=True)
    (store.base / "c" / "real" / "file").write_bytes(b"f")
    (tmp_path / "outside").mkdir()
    if link is not None and to is not None:
        planted = store.base / link
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.symlink_to(tmp_path / to if to == "outside" else store.base / to)
    component, _, path = checked.partition("/")
    if refused:
        with pytest.raises(InvalidPathError, match=f"{link}' is a symbolic link"):
            store.file_path(component, path)
        with pytest.raises(InvalidPathError, match=f"{link}' is a symbolic link"):
            store.open_file(component, path)
        return
    assert store.file_path(component, path) == store.base / checked
    # (A file where a folder of the path goes: missing too, as a reader finds it.)
    with pytest.raises(FileNotFoundError):
        store.open_file(component, path)
    fd, size = store.open_file("c", "real/file")
    os.close(fd)
    assert size == 1 and store.read("c", "real/file") == b"f"


def test_files_are_removed_by_folder_and_folders_left_empty_go(
    store: DiskStore, tmp_path: Path, link_check: str
) -> None:
    """`remove_many`: each regular file (and a metadata file beside it) goes, a folder or a
    link at a path stays, and folders left empty are pruned, the deepest first."""
    store.meta_in_xattr = False  # metadata in files beside: they go with their files
    for path in ("top", "a/x", "a/b/y", "a/b/z", "keep/k"):
        store.install(store.stage_bytes(path.encode(), sync=False), "c", path, META)
    base = store.base / "c"
    (base / "a" / "dir").mkdir()
    paths = ["a/b/y", "top", "a/x", "missing/m", "a/b/z", "a/dir", "a/gone"]
    assert store.remove_many("c", paths) == [True, True, True, False, True, False, False]
    kept_meta = store.meta_path("c", "keep/k").relative_to(base).as_posix()
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*")) == [
        "a", "a/dir", "keep", kept_meta, "keep/k",
    ]  # fmt: skip
    assert store.remove_many("c", ["keep/k"]) == [True] and not (base / "keep").exists()
    # A link at a path or on the way to its folder is refused, as `file_path` refuses it,
    # and kept; the other paths are removed.
    for name in ("real/f", "real/g", "other/h"):
        (base / name).parent.mkdir(exist_ok=True)
        (base / name).write_bytes(b"f")
    (base / "via").symlink_to(base / "real")
    (base / "real" / "link").symlink_to(base / "real" / "f")
    on_the_way, *others = store.remove_many("c", ["via/f", "other/h", "real/g"])
    assert isinstance(on_the_way, InvalidPathError) and others == [True, True]
    assert "via' is a symbolic link" in str(on_the_way)
    at_the_path, file = store.remove_many("c", ["real/link", "real/f"])
    assert isinstance(at_the_path, InvalidPathError) and file is True
    assert "real/link' is a symbolic link" in str(at_the_path)
    with pytest.raises(InvalidPathError, match=r"real/link' is a symbolic link"):
        store.remove("c", "real/link")
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*")) == [
        "a", "a/dir", "real", "real/link", "via",
    ]  # fmt: skip


def test_a_get_copies_exactly_the_file_and_makes_folders_only_for_it(
    store: DiskStore, tmp_path: Path
) -> None:
    data = os.urandom(3 * storage.CHUNK + 5)
    store.install(store.stage_bytes(data), "c", "f.bin", META)
    dest = tmp_path / "out" / "deep" / "f.bin"
    with pytest.raises(FileNotFoundError):
        store.copy_out("c", "missing.bin", dest, CHECKSUM, overwrite=False)
    assert not (tmp_path / "out").exists()  # a failed get leaves no folders behind
    assert store.copy_out("c", "f.bin", dest, CHECKSUM, overwrite=False)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]
    empty = tmp_path / "empty.out"
    store.install(store.stage_bytes(b""), "c", "empty", META)
    assert store.copy_out("c", "empty", empty, CHECKSUM, overwrite=False)
    assert empty.read_bytes() == b""


def test_a_get_reads_a_local_file_in_the_way_only_if_it_may_be_the_same(
    store: DiskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local file of another size is other content, never read (it may be large, and the
    copy may run in the event loop's thread); one of the same size is compared."""
    data = b"drive bytes"
    store.install(store.stage_bytes(data), "c", "f.bin", META)
    checksum = hashlib.sha256(data).hexdigest()
    hashed: list[str] = []
    file_checksum = storage.file_checksum

    def spied(path: Path) -> str:
        hashed.append(path.name)
        return file_checksum(path)

    monkeypatch.setattr(storage, "file_checksum", spied)
    (tmp_path / "local").mkdir()
    for name, local in [("longer", data * 1000), ("same size", b"other bytes"), ("same", data)]:
        dest = tmp_path / "local" / name
        dest.write_bytes(local)
        if local == data:
            assert not store.copy_out("c", "f.bin", dest, checksum, overwrite=False)  # as is
        else:
            with pytest.raises(FileExistsError):
                store.copy_out("c", "f.bin", dest, checksum, overwrite=False)
        assert dest.read_bytes() == local
    assert hashed == ["same size", "same"]
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["longer", "same", "same size"]


@pytest.fixture(params=["unnamed", "renameat2", "link"])
def local_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Place a get's copy in every way: made without a name (O_TMPFILE) and linked in, or
    made under a temporary name and renamed by renameat2(RENAME_NOREPLACE), or by a link
    then an unlink (an old C library, NFS). Where unnamed, no temporary name is made."""
    if request.param == "unnamed":
        if not storage._CAN_TMPFILE or storage._linkat is None:
            pytest.skip("this system has no O_TMPFILE")

        def no_temp_name(folder: Path) -> Any:
            raise AssertionError(f"a temporary name made in {folder}")

        monkeypatch.setattr(storage, "temp_fd_in", no_temp_name)
    else:
        monkeypatch.setattr(storage, "_CAN_TMPFILE", False)
    if request.param == "link":
        monkeypatch.setattr(storage, "_renameat2", None)
    elif request.param == "renameat2" and storage._renameat2 is None:
        pytest.skip("this system has no renameat2")
    return str(request.param)


@pytest.mark.parametrize("looks_first", [False, True])
def test_a_get_never_replaces_a_local_file_made_while_it_copies(
    store: DiskStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_way: str,
    looks_first: bool,
) -> None:
    """Without overwrite, the copy goes into place by a link or rename that never
    replaces: a local file (or link) made meanwhile stays, and no temporary file is left.
    A small file is copied before looking (``looks_first``: a larger one looks first)."""
    if looks_first:
        monkeypatch.setattr(storage, "_COPY_BEFORE_LOOKING_MAX", 0)
    data = b"drive bytes"
    store.install(store.stage_bytes(data), "c", "f.bin", META)
    checksum = hashlib.sha256(data).hexdigest()
    local = tmp_path / "local"
    local.mkdir()
    copy_all = storage._FdCopier.copy_all
    in_the_way: list[Any] = []

    def made_meanwhile(self: Any, size: int | None = None, on_copied: Any = None) -> Any:
        in_the_way[0]()
        return copy_all(self, size)

    monkeypatch.setattr(storage._FdCopier, "copy_all", made_meanwhile)
    dest = local / "a"
    for make, refusal in [
        (lambda: dest.write_bytes(b"other bytes"), FileExistsError),  # same size, other bytes
        (lambda: dest.write_bytes(data), None),  # the same: as if copied
        (lambda: dest.symlink_to(tmp_path / "nowhere"), FileExistsError),  # a link to nowhere
        (lambda: dest.mkdir(), IsADirectoryError),  # (Drive.get says: pass to= a file path)
    ]:
        in_the_way[:] = [make]
        if refusal is None:
            assert not store.copy_out("c", "f.bin", dest, checksum, overwrite=False)
        else:
            with pytest.raises(refusal):
                store.copy_out("c", "f.bin", dest, checksum, overwrite=False)
        assert os.listdir(local) == ["a"]  # no temporary file left
        if dest.is_symlink() or dest.is_file():
            assert dest.is_symlink() or dest.read_bytes() in (b"other bytes", data)
            dest.unlink()
        else:
            dest.rmdir()
    in_the_way[:] = [lambda: None]
    assert store.copy_out("c", "f.bin", dest, checksum, overwrite=False)
    assert dest.read_bytes() == data and os.listdir(local) == ["a"]
    dest.unlink()
    in_the_way[:] = [lambda: dest.symlink_to(tmp_path / "nowhere")]
    monkeypatch.setattr(storage, "temp_fd_in", temp_fd_in)  # a replacement is renamed in
    assert store.copy_out("c", "f.bin", dest, checksum, overwrite=True)  # replaced
    assert not dest.is_symlink() and dest.read_bytes() == data


def test_a_get_that_fails_halfway_leaves_no_file(
    store: DiskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_way: str
) -> None:
    store.install(store.stage_bytes(b"drive bytes"), "c", "f.bin", META)
    copy_all = storage._FdCopier.copy_all

    def fails_halfway(self: Any, size: int | None = None, on_copied: Any = None) -> Any:
        copy_all(self, 4)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage._FdCopier, "copy_all", fails_halfway)
    (tmp_path / "local").mkdir()
    with pytest.raises(OSError, match="No space left"):
        store.copy_out("c", "f.bin", tmp_path / "local" / "a", CHECKSUM, overwrite=False)
    assert os.listdir(tmp_path / "local") == []
    (tmp_path / "local" / "there").mkdir()
    # Nor the folders it made for the file (a replacement takes a temporary name).
    for overwrite in (False,) if local_way == "unnamed" else (False, True):
        with pytest.raises(OSError, match="No space left"):
            store.copy_out(
                "c", "f.bin", tmp_path / "local" / "there" / "new" / "deeper" / "a", CHECKSUM,
                overwrite=overwrite,
            )  # fmt: skip
        assert os.listdir(tmp_path / "local") == ["there"]
        assert os.listdir(tmp_path / "local" / "there") == []


def test_a_get_whose_local_folder_goes_says_so(
    store: DiskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_way: str
) -> None:
    # Not FileNotFoundError, which a get reads as "no such file in the drive".
    store.install(store.stage_bytes(b"drive bytes"), "c", "f.bin", META)
    copy_all = storage._FdCopier.copy_all
    local = tmp_path / "local"

    def folder_goes(self: Any, size: int | None = None, on_copied: Any = None) -> Any:
        shutil.rmtree(local)  # with a temporary name in it, if any
        return copy_all(self, size)

    monkeypatch.setattr(storage._FdCopier, "copy_all", folder_goes)
    for overwrite in (False,) if local_way == "unnamed" else (False, True):  # see local_way
        local.mkdir()
        with pytest.raises(storage.LocalPathGoneError) as gone:
            store.copy_out("c", "f.bin", local / "a", CHECKSUM, overwrite=overwrite)
        assert not isinstance(gone.value, FileNotFoundError)
        assert gone.value.filename == str(local / "a")
        assert not local.exists()


def test_a_get_names_its_copy_where_the_local_disk_cannot_make_unnamed_files(
    store: DiskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for uploads (above): the kernel refuses the open of a folder for writing, with
    # EISDIR, as it does an O_TMPFILE open where it lacks it. The get then names its copy.
    monkeypatch.setattr(storage, "_UNNAMED_LOCAL_FLAGS", os.O_WRONLY | os.O_DIRECTORY)
    named: list[Path] = []

    def recorded(folder: Path) -> tuple[int, Path]:
        fd, path = temp_fd_in(folder)
        named.append(path)
        return fd, path

    monkeypatch.setattr(storage, "temp_fd_in", recorded)
    store.install(store.stage_bytes(b"drive bytes"), "c", "f.bin", META)
    dest = tmp_path / "local" / "a"
    assert store.copy_out("c", "f.bin", dest, CHECKSUM, overwrite=False)
    assert dest.read_bytes() == b"drive bytes" and len(named) == 1
    assert os.listdir(dest.parent) == ["a"]


def _get_and_die(root: str, dest: str) -> None:
    def dies_halfway(self: Any, size: int | None = None, on_copied: Any = None) -> Any:
        storage._FdCopier.copy_all = copy_all  # type: ignore[method-assign]
        copy_all(self, 4)
        os._exit(0)  # as a process killed mid-get: nothing cleaned up

    copy_all = storage._FdCopier.copy_all
    storage._FdCopier.copy_all = dies_halfway  # type: ignore[method-assign]
    DiskStore(Path(root), "d").copy_out("c", "f.bin", Path(dest), CHECKSUM, overwrite=False)


def test_a_process_killed_during_a_get_leaves_no_file_behind(
    store: DiskStore, tmp_path: Path
) -> None:
    """The copy has no name until it is whole (O_TMPFILE): nothing to clean up after."""
    if not storage._CAN_TMPFILE or storage._linkat is None:
        pytest.skip("this system has no O_TMPFILE")
    store.install(store.stage_bytes(b"drive bytes"), "c", "f.bin", META)
    (tmp_path / "local").mkdir()
    child = multiprocessing.get_context("spawn").Process(
        target=_get_and_die, args=(str(store.root), str(tmp_path / "local" / "a"))
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert os.listdir(tmp_path / "local") == []


def test_a_copy_of_a_known_size_stops_there(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_bytes(b"0123456789")
    for size, expected in ((None, b"0123456789"), (10, b"0123456789"), (4, b"0123")):
        src = os.open(source, os.O_RDONLY)
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            assert storage._FdCopier(src, dst).copy_all(size) == len(expected)
        finally:
            os.close(src)
            os.close(dst)
        assert target.read_bytes() == expected


def test_a_root_reached_through_a_link_is_used(tmp_path: Path) -> None:
    """Links above the root are the user's own: only those inside it are refused."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    store = DiskStore(tmp_path / "alias", "d")
    staged: Staged = store.stage_bytes(b"x", sync=False)
    store.install(staged, "c", "a/f", META)
    assert (tmp_path / "real" / "drives" / "d" / "c" / "a" / "f").read_bytes() == b"x"


def test_the_filesystem_type_is_read_from_the_mount_table_by_device(tmp_path: Path) -> None:
    device = os.stat(tmp_path).st_dev
    here = f"{os.major(device)}:{os.minor(device)}"
    table = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        f"90 27 {here} /export /mnt/shared rw,relatime shared:5 - nfs4 srv:/export rw,vers=4.2\n"
    )
    assert storage.filesystem_type(tmp_path, table) == "nfs4"
    assert storage.filesystem_type(tmp_path, table.replace(here, "7:7")) is None
    assert storage.filesystem_type(tmp_path / "not" / "made yet", table) == "nfs4"  # its folder
    assert storage.filesystem_type(tmp_path) is not None  # this machine's own table
    assert DiskStore(tmp_path, "d").on_local_disk == (
        storage.filesystem_type(tmp_path) in storage._LOCAL_FILESYSTEMS
    )


def test_a_file_is_opened_in_one_call_from_the_top_until_a_link_is_on_the_roots_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openat2 from the top, with no link allowed anywhere, while the root's path has none
    (settings resolve it); once a link is on that path, below the root opened, as before."""
    if storage._openat2 is None:
        pytest.skip("this kernel or sandbox has no openat2")
    calls: list[tuple[int, int]] = []  # (dir_fd, fd or -errno) of each call
    openat2 = storage._openat2

    def spy(dir_fd: int, path: bytes, *args: int) -> tuple[int, int]:
        fd, error = openat2(dir_fd, path, *args)
        calls.append((dir_fd, fd if fd >= 0 else -error))
        return fd, error

    monkeypatch.setattr(storage, "_openat2", spy)
    (tmp_path / "real").mkdir()
    store = DiskStore(tmp_path / "real" / "root", "d")
    store.install(store.stage_bytes(b"x"), "c", "a/f", META)
    calls.clear()
    fd, size = store.open_file("c", "a/f")
    os.close(fd)
    assert size == 1 and len(calls) == 1 and calls[0][0] == storage._AT_FDCWD
    # The root's folder moves, and a link takes its place: the first call finds the link
    # (ELOOP), the second opens below the root.
    (tmp_path / "real").rename(tmp_path / "moved")
    (tmp_path / "real").symlink_to(tmp_path / "moved")
    calls.clear()
    fd, size = store.open_file("c", "a/f")
    os.close(fd)
    assert size == 1 and len(calls) == 2
    assert calls[0] == (storage._AT_FDCWD, -errno.ELOOP) and calls[1][1] >= 0
    # A link below the root is still refused.
    (store.base / "c" / "a" / "g").symlink_to(
        tmp_path / "moved" / "root" / "drives" / "d" / "c" / "a" / "f"
    )
    with pytest.raises(InvalidPathError, match="symbolic link"):
        store.open_file("c", "a/g")


def test_uploads_never_go_through_a_planted_temporary_folder(
    store: DiskStore, tmp_path: Path, link_check: str
) -> None:
    first = store.stage_bytes(b"x")  # makes .tmp
    store.discard(first)
    outside = tmp_path / "outside"
    outside.mkdir()
    store.tmp_dir.rmdir()
    store.tmp_dir.symlink_to(outside)
    with pytest.raises(InvalidPathError, match="symbolic link"):
        store.stage_bytes(b"escape", sync=False)
    assert list(outside.iterdir()) == []
    store.tmp_dir.unlink()
    staged = store.stage_bytes(b"back", sync=False)  # a missing .tmp is made again
    assert staged.tmp.parent == store.tmp_dir and upload_bytes(staged) == b"back"
    store.discard(staged)


def test_an_install_never_replaces_a_planted_link(
    store: DiskStore, tmp_path: Path, link_check: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    store.install(store.stage_bytes(b"mine"), "c", "a/f", META)
    planted = store.base / "c" / "a" / "f"
    planted.unlink()
    planted.symlink_to(secret)
    staged = store.stage_bytes(b"overwrite", sync=False)
    with pytest.raises(InvalidPathError, match="symbolic link"):
        store.install(staged, "c", "a/f", META)
    store.discard(staged)
    assert secret.read_bytes() == b"not yours" and planted.is_symlink()
    assert list(store.tmp_dir.iterdir()) == []


def test_an_install_whose_folder_a_delete_removed_makes_it_again(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the opening of the target's folder and the rename into it, a delete of its
    last file may prune the folder: the rename then goes by path, making it again."""
    folder = store.base / "c" / "a"
    folder.mkdir(parents=True)
    open_folder = DiskStore._open_folder
    opened: list[int] = []

    def open_then_prune(self: DiskStore, parts: list[str]) -> int:
        fd = open_folder(self, parts)
        opened.append(fd)
        folder.rmdir()  # as DiskStore._prune does after another component's delete
        return fd

    monkeypatch.setattr(DiskStore, "_open_folder", open_then_prune)
    store.install(store.stage_bytes(b"again", sync=False), "c", "a/f", META)
    assert (folder / "f").read_bytes() == b"again"
    assert store.read_meta("c", "a/f") == META
    assert len(opened) == 1 and (opened[0] >= 0) == (storage._openat2 is not None)
    assert list(store.tmp_dir.iterdir()) == []


def test_an_install_whose_folders_a_delete_prunes_as_they_are_made_makes_them_again(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its folders missing, an install makes them; a delete of another file of the same
    folders may prune one just made, before the one below it is: that mkdir's ENOENT was
    the put's error (seen once in CI, under concurrent puts and deletes of one component)."""
    store.base.joinpath("c").mkdir(parents=True)
    pruned: list[str] = []
    real_mkdir = os.mkdir

    def mkdir_as_a_delete_prunes(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == store.base / "c" / "a" / "b" and not pruned:
            pruned.append(str(path))
            (store.base / "c" / "a").rmdir()  # made just before, pruned by a delete
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(DiskStore, "_open_folder", lambda self, parts: -1)  # (by paths)
    monkeypatch.setattr(os, "mkdir", mkdir_as_a_delete_prunes)
    store.install(store.stage_bytes(b"made again", sync=False), "c", "a/b/f", META)
    assert pruned and (store.base / "c" / "a" / "b" / "f").read_bytes() == b"made again"
    assert list(store.tmp_dir.iterdir()) == []


def test_a_rename_into_folders_one_of_which_a_delete_prunes_as_it_is_looked_at_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder found there, then pruned by a delete before it is checked to be a folder:
    no file stands there (it said NotADirectoryError, "a file where a folder must be"); it
    is made again."""
    (tmp_path / "a").mkdir()
    upload = tmp_path / "upload.tmp"
    upload.write_bytes(b"x")
    real_lexists = os.path.lexists
    pruned: list[str] = []

    def pruned_once_found(path: Any) -> bool:
        found = real_lexists(path)
        if found and Path(path) == tmp_path / "a" and not pruned:
            pruned.append(str(path))
            (tmp_path / "a").rmdir()  # a delete of its last file prunes it
        return found

    monkeypatch.setattr(os.path, "lexists", pruned_once_found)
    storage._replace_into(upload, tmp_path / "a" / "b" / "f")
    assert pruned and (tmp_path / "a" / "b" / "f").read_bytes() == b"x"


@pytest.fixture(params=["unnamed", "renameat2", "link"])
def rename_way(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, store: DiskStore
) -> str:
    """Move new files in every way: an upload without a name linked in (O_TMPFILE), and a
    named one by renameat2(RENAME_NOREPLACE), or by a link then an unlink (NFS)."""
    if request.param == "unnamed":
        if not store.unnamed_uploads:
            pytest.skip("this system has no O_TMPFILE")
    else:
        store.unnamed_uploads = False
    if request.param == "link":
        monkeypatch.setattr(storage, "_renameat2", None)
    elif request.param == "renameat2" and storage._renameat2 is None:
        pytest.skip("this system has no renameat2")
    return str(request.param)


def test_a_new_file_is_installed_without_replacing_anything(
    store: DiskStore, rename_way: str
) -> None:
    (store.base / "c" / "a").mkdir(parents=True)
    staged = store.stage_bytes(b"x", sync=False)
    identity = store.install_new(staged, "c", "a/f", META)
    target = store.base / "c" / "a" / "f"
    assert identity == storage.file_identity(target)
    assert target.read_bytes() == b"x" and store.read_meta("c", "a/f") == META
    assert staged.fd is None and list(store.tmp_dir.iterdir()) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["f"]  # no backup


def put_in_the_way(folder: Path, standing: str, outside: Path | None = None) -> None:
    """Make ``folder`` (for the file ``folder/f``), with what ``standing`` says in the way:
    a "file" or "folder" at ``f``, a "file above" in the folder's place, or a "link" at
    ``f`` or a "link above" in the folder's place, pointing into ``outside``."""
    folder.parent.mkdir(parents=True)
    if standing == "file above":
        folder.write_bytes(b"a file where a folder of the path goes")
    elif standing == "link above":
        assert outside is not None
        folder.symlink_to(outside)
    else:
        folder.mkdir()
    if standing == "file":
        (folder / "f").write_bytes(b"old")
    elif standing == "folder":
        (folder / "f").mkdir()
    elif standing == "link":
        assert outside is not None
        (folder / "f").symlink_to(outside / "f")


@pytest.mark.parametrize("standing", ["file", "folder", "file above"])
def test_a_new_file_install_leaves_the_upload_staged_where_it_does_not_apply(
    store: DiskStore, standing: str
) -> None:
    folder = store.base / "c" / "a"
    put_in_the_way(folder, standing)
    staged = store.stage_bytes(b"new", sync=False)
    assert store.install_new(staged, "c", "a/f", META) is None
    # Nothing moved, and the upload is as it was: open, for the one fsync of `install`.
    assert staged.fd is not None and is_open(staged.fd) and upload_bytes(staged) == b"new"
    if standing == "file":
        assert (folder / "f").read_bytes() == b"old"
        backup = store.install(staged, "c", "a/f", META)
        assert backup is not None and backup.read_bytes() == b"old"
        assert (folder / "f").read_bytes() == b"new"
    else:
        store.discard(staged)
        assert folder.is_file() == (standing == "file above")
        assert (folder / "f").is_dir() == (standing == "folder")
    assert list(store.tmp_dir.iterdir()) == []


def test_a_new_file_makes_its_missing_folders_but_follows_no_link(
    store: DiskStore, tmp_path: Path, link_check: str
) -> None:
    staged = store.stage_bytes(b"x", sync=False)
    identity = store.install_new(staged, "c", "a/b/f", META)
    target = store.base / "c" / "a" / "b" / "f"
    if link_check == "walk":  # no folder opened ahead, no new file without the lock
        assert identity is None and not target.parent.exists()
        store.discard(staged)
    else:
        assert identity == storage.file_identity(target) and target.read_bytes() == b"x"
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.base / "c").mkdir(parents=True, exist_ok=True)
    (store.base / "c" / "l").symlink_to(outside)
    staged = store.stage_bytes(b"escape", sync=False)
    assert store.install_new(staged, "c", "l/new/f", META) is None
    assert list(outside.iterdir()) == []
    with pytest.raises(InvalidPathError, match="symbolic link"):  # as the locked way says
        store.install(staged, "c", "l/new/f", META)
    store.discard(staged)
    assert list(store.tmp_dir.iterdir()) == []


def test_a_file_that_appears_before_the_rename_is_not_replaced(
    store: DiskStore, rename_way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer's file lands between the check for one and the rename: it stays."""
    folder = store.base / "c" / "a"
    folder.mkdir(parents=True)
    attach = DiskStore._attach_meta

    def attach_then_race(self: DiskStore, staged: Staged, meta: dict[str, object]) -> bool:
        attached = attach(self, staged, meta)
        (folder / "f").write_bytes(b"theirs")
        return attached

    monkeypatch.setattr(DiskStore, "_attach_meta", attach_then_race)
    staged = store.stage_bytes(b"mine", sync=False)
    assert store.install_new(staged, "c", "a/f", META) is None
    assert (folder / "f").read_bytes() == b"theirs"
    assert upload_bytes(staged) == b"mine"  # still staged, for the locked install
    store.discard(staged)
    assert list(store.tmp_dir.iterdir()) == []


def test_a_new_file_whose_folder_a_delete_removed_is_left_staged(
    store: DiskStore, rename_way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = store.base / "c" / "a"
    folder.mkdir(parents=True)
    open_folder = DiskStore._open_folder

    def open_then_prune(self: DiskStore, parts: list[str]) -> int:
        fd = open_folder(self, parts)
        folder.rmdir()  # as DiskStore._prune does after another component's delete
        return fd

    if storage._openat2 is None:
        pytest.skip("without openat2 the folder is not opened ahead")
    monkeypatch.setattr(DiskStore, "_open_folder", open_then_prune)
    staged = store.stage_bytes(b"new", sync=False)
    assert store.install_new(staged, "c", "a/f", META) is None
    assert upload_bytes(staged) == b"new" and not folder.exists()
    store.discard(staged)


@pytest.fixture
def in_place(store: DiskStore) -> DiskStore:
    """A store that writes new small files in place: its disk makes a new file's name
    durable with the file's fsync, and keeps metadata in an attribute."""
    if storage._openat2 is None:
        pytest.skip("this kernel or sandbox has no openat2")
    store.tmp_dir.mkdir(parents=True)
    probe = store.tmp_dir / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, storage.META_XATTR, b"{}")
    except OSError:
        pytest.skip("this filesystem keeps no user attributes")
    probe.unlink()
    store.local_disk, store.new_names_durable, store.meta_in_xattr = True, True, True
    return store


def test_a_new_file_is_written_at_its_path_and_finished_by_settle_new(
    in_place: DiskStore,
) -> None:
    new = in_place.open_new("c", "a/b/f")  # its folders made
    assert new is not None
    target = in_place.base / "c" / "a" / "b" / "f"
    assert new.path == target and new.identity == storage.file_identity(target)
    # While it is written, it says so: a rebuild of the index would skip it.
    [found] = in_place.scan(verify=False)
    assert (found.path, found.finished) == ("a/b/f", False)
    staged = in_place.stage_bytes(b"x", False, lambda: new)
    assert staged.in_place and staged.tmp == target and staged.fd == new.fd
    assert in_place.settle_new(staged, META) is True
    assert staged.fd is None and not opens(new.identity)
    assert target.read_bytes() == b"x" and in_place.read_meta("c", "a/b/f") == META
    [found] = in_place.scan(verify=False)
    assert found.finished and found.version == 3
    assert list(in_place.tmp_dir.iterdir()) == []  # no upload went through .tmp


@pytest.mark.parametrize("standing", ["file", "folder", "file above", "link", "link above"])
def test_no_new_file_is_opened_where_anything_stands_at_its_path(
    in_place: DiskStore, tmp_path: Path, standing: str
) -> None:
    folder = in_place.base / "c" / "a"
    outside = tmp_path / "outside"
    outside.mkdir()
    put_in_the_way(folder, standing, outside)
    assert in_place.open_new("c", "a/f") is None
    assert list(outside.iterdir()) == []
    if standing == "file":
        assert (folder / "f").read_bytes() == b"old"


@pytest.mark.parametrize("missing", ["durable names", "attributes known", "openat2"])
def test_no_new_file_is_opened_in_place_without_what_it_needs(
    in_place: DiskStore, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    if missing == "durable names":
        in_place.new_names_durable = False  # NFS, ext2, ...: the folder needs its fsync
    elif missing == "attributes known":
        in_place.meta_in_xattr = None  # the first put finds out, the way of uploads
    else:
        monkeypatch.setattr(storage, "_openat2", None)
    assert in_place.open_new("c", "a/f") is None
    assert not (in_place.base / "c").exists()


def test_which_filesystems_make_a_new_files_name_durable_with_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for kind, durable in (("ext4", True), ("xfs", True), ("ext2", False), ("nfs4", False)):
        monkeypatch.setattr(storage, "filesystem_type", lambda path, kind=kind: kind)
        store = DiskStore(tmp_path, "d")
        assert store.new_names_durable is False  # not looked up yet
        assert store.on_local_disk is (kind != "nfs4")
        assert store.new_names_durable is durable, kind


@pytest.fixture
def syncfs_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors syncfs is called with (a real syncfs each; see `quiet_syncfs`)."""
    syncfs = quiet_syncfs(monkeypatch)
    calls: list[int] = []

    def counted(fd: int) -> int:
        calls.append(fd)
        return syncfs(fd)

    monkeypatch.setattr(storage, "_syncfs", counted)
    return calls


def new_files(folder: Path, count: int) -> list[storage.FileIdentity]:
    folder.mkdir(parents=True, exist_ok=True)
    identities = []
    for number in range(count):
        (folder / f"{number}.txt").write_bytes(b"new")
        identities.append(storage.file_identity(folder / f"{number}.txt"))
    return identities


def test_one_syncfs_is_made_for_two_files_or_more_of_the_roots_filesystem(
    store: DiskStore, syncfs_calls: list[int]
) -> None:
    files = new_files(store.base / "c", 3)
    with store.sync_together(len(files)) as together:
        assert together.planned and "planned=True" in repr(together)
        assert not together.sync(files[:1])  # one file: its own fsync is as cheap
        device, inode = files[0]
        assert not together.sync([files[1], (device + 1, inode)])  # another filesystem's
        assert syncfs_calls == []
        assert together.sync(files)
        assert len(syncfs_calls) == 1 and is_open(syncfs_calls[0])
    assert not is_open(syncfs_calls[0]) and repr(together) == "<SyncTogether closed>"
    assert not together.sync(files)  # closed


def test_no_syncfs_is_planned_where_it_does_not_apply(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, syncfs_calls: list[int]
) -> None:
    files = new_files(store.base / "c", 2)
    assert not store.sync_together(1).planned  # one file
    store.local_disk = False  # a network filesystem: flushed its own way
    with store.sync_together(2) as together:
        assert not together.planned and not together.sync(files)
    store.local_disk = True
    # Much data waits to be written: a syncfs would wait for all of it.
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_MAX_UNWRITTEN", -1)
    with store.sync_together(2) as together:
        assert not together.planned and not together.sync(files)
    monkeypatch.undo()
    assert syncfs_calls == []
    monkeypatch.setattr(storage, "_SYNCFS_REPORTS_ERRORS", False)
    with store.sync_together(2) as together:  # a kernel whose syncfs hides write errors
        assert not together.planned and not together.sync(files)


def test_a_failed_syncfs_says_the_files_are_not_synced(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "_syncfs", lambda fd: -1)  # EIO from some file's writeback
    monkeypatch.setattr(storage, "_SYNCFS_REPORTS_ERRORS", True)
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_MAX_UNWRITTEN", 1 << 62)
    files = new_files(store.base / "c", 2)
    with store.sync_together(2) as together:
        assert together.planned and not together.sync(files)


def test_unwritten_data_and_kernel_versions_are_read() -> None:
    meminfo = "MemTotal: 100 kB\nDirty:  12 kB\nWriteback:  4 kB\nWritebackTmp: 9 kB\n"
    assert storage.unwritten_bytes(meminfo) == 16 * 1024
    assert storage.unwritten_bytes("Dirty: many kB\n") is None  # unknown: no syncfs
    assert isinstance(storage.unwritten_bytes(), int)  # read from this machine's /proc
    assert storage._kernel_at_least(5, 8, "6.18.44-fc-v1272")
    assert storage._kernel_at_least(5, 8, "5.8.0")
    assert not storage._kernel_at_least(5, 8, "5.4.0-150-generic")
    assert not storage._kernel_at_least(5, 8, "unknown")


def test_a_slow_syncfs_turns_the_syncfs_of_calls_off_for_a_while(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, syncfs_calls: list[int]
) -> None:
    files = new_files(store.base / "c", 2)
    with store.sync_together(2) as together:
        assert together.sync(files)  # quick: the next is planned too
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_SLOW", 0.0)  # as if every syncfs took long
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_SLOW_PER_FILE", 0.0)
    with store.sync_together(2) as together:
        assert together.planned and together.sync(files)  # made, and found slow
    with store.sync_together(2) as together:
        assert not together.planned and not together.sync(files)  # an fsync each meanwhile
    assert len(syncfs_calls) == 2
    device = files[0][0]
    assert storage._slow_syncfs_until[device] > time.monotonic()
    storage._slow_syncfs_until[device] = time.monotonic() - 1  # the pause is over
    with store.sync_together(2) as together:
        assert together.planned


@pytest.mark.parametrize("size", [0, 5000, storage.PARALLEL_HASH_MIN + 3 * storage.CHUNK + 7])
def test_copies_count_every_byte_they_copy(store: DiskStore, tmp_path: Path, size: int) -> None:
    """``on_copied`` (for ``progress=``): in steps for a large file, once for a small one."""
    data = os.urandom(size)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    staged_counts: list[int] = []
    staged = store.stage_file(source, on_copied=staged_counts.append)
    assert sum(staged_counts) == staged.size == size
    assert len(staged_counts) == (size // storage._KERNEL_STEP + 1 if size > 5000 else size > 0)
    store.install(staged, "c", "f.bin", META)
    checksum = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "local" / "f.bin"
    for copied in (True, False):  # a local file with the same content counts as copied
        got_counts: list[int] = []
        assert store.copy_out("c", "f.bin", dest, checksum, False, got_counts.append) is copied
        assert sum(got_counts) == size and dest.read_bytes() == data


def version_of(path: str, data: bytes, version: int) -> tuple[dict[str, object], FileInfo]:
    """The metadata of ``data`` as ``version`` of ``path``, and the index's `FileInfo` of it."""
    checksum = hashlib.sha256(data).hexdigest()
    meta: dict[str, object] = {
        "checksum": checksum, "mtime": 1.0, "size": len(data), "version": version}  # fmt: skip
    return meta, FileInfo(path, len(data), 1.0, checksum, version, "c")


def test_a_read_of_a_version_finds_its_backup(store: DiskStore) -> None:
    """`open_file(..., expected)`: the path's file if it is that version, else the backup of
    that version beside it (a replacement not committed), else `OtherVersionError`."""
    meta_1, v1 = version_of("d/f.bin", b"version 1", 1)
    meta_2, v2 = version_of("d/f.bin", b"version 2!", 2)
    meta_g, g1 = version_of("d/g.bin", b"other file", 1)
    store.install(store.stage_bytes(b"version 1"), "c", "d/f.bin", meta_1)
    store.install(store.stage_bytes(b"other file"), "c", "d/g.bin", meta_g)
    assert store.read("c", "d/f.bin", v1) == b"version 1"
    backup = store.install(store.stage_bytes(b"version 2!"), "c", "d/f.bin", meta_2)
    assert backup is not None
    assert store.read("c", "d/f.bin", v1) == b"version 1"  # from the backup
    assert store.read("c", "d/f.bin", v2) == store.read("c", "d/f.bin") == b"version 2!"
    fd, size = store.open_file("c", "d/f.bin", v1)
    try:
        assert (size, storage.meta_on_disk(fd)) == (9, meta_1)
    finally:
        os.close(fd)
    store.drop_backup(backup)  # committed, and the backup dropped: the index has changed
    with pytest.raises(storage.OtherVersionError):
        store.read("c", "d/f.bin", v1)
    with pytest.raises(storage.OtherVersionError):  # no backup of it at all
        store.read("c", "d/g.bin", dataclasses.replace(g1, version=7))
    assert store.read("c", "d/g.bin") == b"other file"  # no version asked for


def test_a_read_tells_two_makings_of_one_version_apart(store: DiskStore) -> None:
    """Two writers made version 2 (the first one's lease ran out): the bytes of the one the
    index does not have are not read as the index's, told by the checksum."""
    meta_1, _ = version_of("f.bin", b"version 1", 1)
    meta_2, v2 = version_of("f.bin", b"version 2, committed", 2)
    other, _ = version_of("f.bin", b"version 2, late writer", 2)
    store.install(store.stage_bytes(b"version 1"), "c", "f.bin", meta_1)
    committed = store.install(store.stage_bytes(b"version 2, committed"), "c", "f.bin", meta_2)
    assert committed is not None
    store.drop_backup(committed)
    late = store.install(store.stage_bytes(b"version 2, late writer"), "c", "f.bin", other)
    assert late is not None
    assert store.read("c", "f.bin", v2) == b"version 2, committed"  # its backup
    store.restore(late, "c", "f.bin")  # the late writer's commit refused, its install undone
    assert store.read("c", "f.bin", v2) == b"version 2, committed"


def test_a_file_without_metadata_is_told_by_its_size(store: DiskStore) -> None:
    """A new file written at its path has no attribute for a moment (created, still empty),
    as every file on a disk that keeps metadata files: a read checks its size."""
    meta, v1 = version_of("f.bin", b"version 1", 1)
    store.install(store.stage_bytes(b"version 1"), "c", "f.bin", meta)
    os.removexattr(store.file_path("c", "f.bin"), storage.META_XATTR)
    assert store.read("c", "f.bin", v1) == b"version 1"
    store.file_path("c", "f.bin").write_bytes(b"")  # as a new file the moment it is made
    with pytest.raises(storage.OtherVersionError):
        store.read("c", "f.bin", v1)


def test_a_new_file_written_in_place_is_no_version(in_place: DiskStore) -> None:
    """A new file being written at its path (`open_new`) is marked unfinished: a read of
    any version finds another one there, never the bytes written so far."""
    store = in_place
    new = store.open_new("c", "d/f.bin")
    assert new is not None
    try:
        os.write(new.fd, b"half")
        fd, _ = store.open_file("c", "d/f.bin")  # no version asked for: as it is
        try:
            assert storage.meta_on_disk(fd) == {"unfinished": True}
        finally:
            os.close(fd)
        for data, version in ((b"half", 1), (b"whole file", 2)):
            _, expected = version_of("d/f.bin", data, version)
            with pytest.raises(storage.OtherVersionError, match=f"version {version} is not"):
                store.read("c", "d/f.bin", expected)
    finally:
        os.close(new.fd)


def test_a_read_finds_a_backup_by_its_metadata_file_too(store: DiskStore) -> None:
    """On a disk that keeps metadata files, a replacement not committed yet (its writer slow
    or dead) leaves the index's version in a backup with a metadata file of its own: read
    there, not given up on."""
    store.meta_in_xattr = False
    meta_1, v1 = version_of("f.bin", b"version 1", 1)
    meta_2, v2 = version_of("f.bin", b"version 2, not committed", 2)
    store.install(store.stage_bytes(b"version 1"), "c", "f.bin", meta_1)
    backup = store.install(store.stage_bytes(b"version 2, not committed"), "c", "f.bin", meta_2)
    assert backup is not None and storage._meta_backup(backup).exists()  # no attributes
    assert store.read("c", "f.bin", v1) == b"version 1"
    assert store.read("c", "f.bin", v2) == b"version 2, not committed"


def test_a_failed_get_leaves_a_folder_another_get_copies_into(
    store: DiskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Get A makes out/new for its file and fails; get B copies into out/new meanwhile, its
    file without a name until linked: the folder looks empty, and stays for B."""
    meta, v1 = version_of("f.bin", b"drive bytes", 1)
    store.install(store.stage_bytes(b"drive bytes"), "c", "f.bin", meta)
    b_copying, a_failed = threading.Event(), threading.Event()
    copy_all = storage._FdCopier.copy_all

    def copy_in_turn(self: Any, size: int | None = None, on_copied: Any = None) -> Any:
        if threading.current_thread().name == "get-a":
            assert b_copying.wait(10)
            raise OSError(errno.ENOSPC, "No space left on device")
        b_copying.set()
        assert a_failed.wait(10)
        return copy_all(self, size, on_copied)

    monkeypatch.setattr(storage._FdCopier, "copy_all", copy_in_turn)
    folder = tmp_path / "out" / "new"
    outcomes: dict[str, object] = {}

    def get(name: str) -> None:
        try:
            outcomes[name] = store.copy_out("c", "f.bin", folder / name, v1.checksum, False,
                                            None, v1)  # fmt: skip
        except OSError as exc:
            outcomes[name] = exc
        finally:
            if name == "a":
                a_failed.set()

    a = threading.Thread(target=get, args=("a",), name="get-a")
    a.start()
    while not folder.exists():  # A made the folders first
        time.sleep(0.001)
    b = threading.Thread(target=get, args=("b",), name="get-b")
    b.start()
    a.join(30)
    b.join(30)
    assert isinstance(outcomes["a"], OSError) and outcomes["b"] is True, outcomes
    assert os.listdir(folder) == ["b"] and (folder / "b").read_bytes() == b"drive bytes"
