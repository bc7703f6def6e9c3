"""Ids, names, paths, configuration and the error tree: no server needed."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncdrive
from asyncdrive import (
    Drive,
    DriveError,
    DriveTypeError,
    InvalidConfigError,
    InvalidDriveIdError,
    InvalidPathError,
    SyncDrive,
)
from asyncdrive._config import DriveConfig, default_root, redact_url, resolve_retention
from asyncdrive._paths import normalize, parent_dirs


@pytest.mark.parametrize(
    "good", ["lit://drive_1", "lit://a", "lit://A-b.c_d", "lit://" + "x" * 128]
)
def test_valid_ids(good: str) -> None:
    drive = Drive(good)
    assert drive.id == good
    assert drive.name == good[6:]


@pytest.mark.parametrize(
    "bad",
    ["s3://x", "lit://", "lit://a/b", "lit://..", "lit://.hidden", "lit://a b", "drive_1",
     "lit://" + "x" * 129, "lit://a{b}", "LIT://a"],
)  # fmt: skip
def test_invalid_ids(bad: str) -> None:
    for cls in (Drive, SyncDrive):
        with pytest.raises(InvalidDriveIdError) as refused:
            cls(bad)
        assert isinstance(refused.value, ValueError)
        assert isinstance(refused.value, DriveError)
        assert repr(bad) in str(refused.value)
        assert "lit://" in str(refused.value)


def test_invalid_component_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidConfigError, match="component") as refused:
        Drive("lit://d", component_name="a:b")
    assert isinstance(refused.value, ValueError)
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "no spaces")
    with pytest.raises(InvalidConfigError, match=r"^Drive 'd': .*no spaces"):
        _ = Drive("lit://d").component_name


def test_relative_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    drive = Drive("lit://d", root="shared")
    # Fixed at creation, so a pickled drive names the same folder wherever it is used.
    assert drive._config.root == str(tmp_path / "shared")
    monkeypatch.chdir("/")
    assert drive.root == (tmp_path / "shared").resolve()
    monkeypatch.setenv("ASYNCDRIVE_ROOT", "relative/dir")
    with pytest.raises(InvalidConfigError, match=r"^Drive 'd': .*absolute"):
        _ = Drive("lit://d").root


@pytest.mark.parametrize(
    ("root", "error", "says"),
    [("", InvalidConfigError, "names no folder"),
     ("a\0b", InvalidConfigError, "holds a NUL character"),
     (b"/tmp", DriveTypeError, "must be a str or an os.PathLike, not bytes"),
     (1, DriveTypeError, "must be a str or an os.PathLike, not int")],
)  # fmt: skip
def test_a_root_that_names_no_folder_is_refused_by_every_entry(
    root: object, error: type[DriveError], says: str
) -> None:
    """root="" was the current folder (where an empty ASYNCDRIVE_ROOT is the default), a
    NUL raised a bare ValueError, and stop_server / fsspec took bytes or an int to a bare
    TypeError."""
    import fsspec

    makers: list[Callable[[], object]] = [
        lambda: Drive("lit://d", root=root),  # type: ignore[arg-type]
        lambda: SyncDrive("lit://d", root=root),  # type: ignore[arg-type]
        lambda: asyncdrive.stop_server(root),  # type: ignore[arg-type]
        lambda: asyncdrive.server_url(root),  # type: ignore[arg-type]
        lambda: fsspec.filesystem("lit", root=root, skip_instance_cache=True),
    ]
    for number, make in enumerate(makers):
        with pytest.raises(error, match=f"root={re.escape(repr(root))} {says}") as refused:
            make()
        assert isinstance(refused.value, DriveError)
        assert str(refused.value).startswith("Drive 'd': " if number < 2 else "root="), number


def test_settings_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ASYNCDRIVE_ROOT", raising=False)
    monkeypatch.delenv("ASYNCDRIVE_REDIS_URL", raising=False)
    monkeypatch.delenv("ASYNCDRIVE_COMPONENT", raising=False)
    resolved = DriveConfig(name="d").resolve()
    assert resolved.root == default_root().resolve()
    assert resolved.redis_url is None
    assert resolved.component_name == "default"

    monkeypatch.setenv("ASYNCDRIVE_ROOT", str(tmp_path))
    monkeypatch.setenv("ASYNCDRIVE_REDIS_URL", "redis://example:6379")
    monkeypatch.setenv("ASYNCDRIVE_COMPONENT", "root.work_1")
    resolved = DriveConfig(name="d").resolve()
    assert (resolved.root, resolved.redis_url) == (tmp_path.resolve(), "redis://example:6379")
    assert resolved.component_name == "root.work_1"

    explicit = DriveConfig(
        name="d", component_name="w", root=str(tmp_path / "x"), redis_url="redis://h"
    ).resolve()
    assert explicit.component_name == "w"
    assert explicit.root == (tmp_path / "x").resolve()
    assert explicit.redis_url == "redis://h"


@pytest.mark.parametrize(
    ("maxlen", "max_age"),
    [("0", ""), ("x", ""), ("", "-1"), ("", "inf"), ("", "nan"), ("", "1e306"), ("", "2e12")],
)
def test_retention_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch, maxlen: str, max_age: str
) -> None:
    """Not at a drive's first call, as OverflowError or ValueError (inf, nan, 1e306 s)."""
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", maxlen)
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAX_AGE", max_age)
    with pytest.raises(InvalidConfigError, match="ASYNCDRIVE_EVENTS_MAX"):
        resolve_retention()
    with pytest.raises(InvalidConfigError, match=r"^Drive 'd': .*ASYNCDRIVE_EVENTS_MAX"):
        _ = Drive("lit://d").root  # (read at a drive's first use: named)
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAXLEN", "10")
    monkeypatch.setenv("ASYNCDRIVE_EVENTS_MAX_AGE", "1e9")
    assert resolve_retention() == (10, 1e9)


def test_default_root_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_root() == tmp_path / "asyncdrive"
    monkeypatch.chdir(tmp_path)
    # The default does not depend on the working directory.
    assert Drive("lit://d").root == default_root().resolve()


def test_redact_url() -> None:
    assert redact_url("redis://u:s3cret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact_url("rediss://:s3cret@h") == "rediss://:***@h"
    assert redact_url("unix:///tmp/x.sock") == "unix:///tmp/x.sock"
    drive = Drive("lit://d", redis_url="redis://u:s3cret@h:6379")
    assert "s3cret" not in repr(drive)
    assert "s3cret" not in repr(SyncDrive("lit://d", redis_url="redis://u:s3cret@h:6379"))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("a.txt", "a.txt"), ("./a.txt", "a.txt"), ("a/../b", "b"), ("a//b/", "a/b"),
     ("x/./y", "x/y")],
)  # fmt: skip
def test_normalize(raw: str, normal: str) -> None:
    assert normalize(raw, drive="d") == normal


def test_normalize_root_and_pathlike() -> None:
    assert normalize(".", drive="d", allow_root=True) == ""
    assert normalize(Path("a") / "b", drive="d") == "a/b"
    with pytest.raises(InvalidPathError, match="whole drive"):
        normalize(".", drive="d")
    with pytest.raises(InvalidPathError, match="longer than"):
        normalize("x" * 300, drive="d")
    deepest = "/".join(["x"] * 256)  # 255 folders above its file
    assert normalize(deepest, drive="d") == deepest
    with pytest.raises(InvalidPathError, match="more than 255 folders above its file"):
        normalize(f"x/{deepest}", drive="d", new=True)  # (os.walk's recursion: ~1000)
    assert normalize(f"x/{deepest}", drive="d") == f"x/{deepest}"  # made before: still read


def test_parent_dirs() -> None:
    assert parent_dirs("a.txt") == [""]
    assert parent_dirs("a/b/c") == ["", "a", "a/b"]


@given(st.text(max_size=60))
def test_normalized_paths_stay_inside(raw: str) -> None:
    try:
        norm = normalize(raw, drive="d")
    except InvalidPathError:
        return
    assert norm and not norm.startswith("/")
    assert ".." not in norm.split("/")
    base = "/base/drive"
    assert os.path.normpath(os.path.join(base, norm)).startswith(base + "/")


def test_error_tree() -> None:
    pairs = {
        asyncdrive.InvalidDriveIdError: ValueError,
        asyncdrive.InvalidPathError: ValueError,
        asyncdrive.InvalidConfigError: ValueError,
        asyncdrive.CursorExpiredError: LookupError,
        asyncdrive.DriveFileNotFoundError: FileNotFoundError,
        asyncdrive.DriveFileExistsError: FileExistsError,
        asyncdrive.DriveNotADirectoryError: NotADirectoryError,
        asyncdrive.DriveIsADirectoryError: IsADirectoryError,
        asyncdrive.AmbiguousPathError: LookupError,
        asyncdrive.DriveTimeoutError: TimeoutError,
        asyncdrive.DriveUnavailableError: ConnectionError,
    }
    for cls, builtin in pairs.items():
        assert issubclass(cls, DriveError)
        assert issubclass(cls, builtin)
    error = asyncdrive.DriveFileNotFoundError("Drive 'd': no file 'a'")
    assert str(error) == "Drive 'd': no file 'a'"
