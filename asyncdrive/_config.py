"""Configuration: the ``lit://`` id, component names, and where root and Redis come from.

Each setting is resolved in the same order: the explicit argument, then an environment
variable, then a default. Settings that came from the environment or a default are resolved
again in every process that uses a drive (see `DriveConfig.resolve`), so a drive pickled by a
coordinator writes under the worker's own ``ASYNCDRIVE_COMPONENT``.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from ._exceptions import (
    ConfigTypeError,
    DriveIdTypeError,
    DriveTypeError,
    InvalidConfigError,
    InvalidDriveIdError,
    shorten,
)

ENV_ROOT = "ASYNCDRIVE_ROOT"
ENV_REDIS_URL = "ASYNCDRIVE_REDIS_URL"
ENV_COMPONENT = "ASYNCDRIVE_COMPONENT"
ENV_REDIS_TIMEOUT = "ASYNCDRIVE_REDIS_TIMEOUT"
#: Seconds an operation waits for Redis (connecting, or any one reply) before it fails.
DEFAULT_REDIS_TIMEOUT = 10.0
ENV_EVENTS_MAXLEN = "ASYNCDRIVE_EVENTS_MAXLEN"
ENV_EVENTS_MAX_AGE = "ASYNCDRIVE_EVENTS_MAX_AGE"
#: Events kept in a drive's change log by default, and their default longest age (0: no limit).
DEFAULT_EVENTS_MAXLEN = 100_000
DEFAULT_EVENTS_MAX_AGE = 0.0
DEFAULT_COMPONENT = "default"
SCHEME = "lit://"

_NAME_RULE = "1-128 characters of letters, digits, '.', '_' or '-', not starting with '.'"
_NAME_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}")


def is_valid_name(name: str) -> bool:
    """Tell whether ``name`` follows the rule for drive and component names."""
    return _NAME_RE.fullmatch(name) is not None


def parse_drive_id(drive_id: str) -> str:
    """Return the name of a ``lit://<name>`` drive id.

    Example:
        >>> parse_drive_id("lit://drive_1")
        'drive_1'

    Raises:
        InvalidDriveIdError: the id has another scheme or a malformed name.

    """
    if not isinstance(drive_id, str):
        raise DriveIdTypeError(
            f"Drive id must be a str like 'lit://my_drive', got {type(drive_id).__name__}."
        )
    if not drive_id.startswith(SCHEME):
        raise InvalidDriveIdError(
            f"Invalid drive id {drive_id!r}: it must start with 'lit://', as in 'lit://my_drive'."
        )
    name = drive_id[len(SCHEME) :]
    if not is_valid_name(name):
        raise InvalidDriveIdError(
            f"Invalid drive id {drive_id!r}: the name after 'lit://' must be {_NAME_RULE}."
        )
    return name


def check_component_name(component_name: str, what: str = "component name") -> str:
    """Return ``component_name`` if it follows the naming rule, else raise `InvalidConfigError`.

    Example:
        >>> check_component_name("root.work_1")
        'root.work_1'

    """
    if not isinstance(component_name, str):
        raise ConfigTypeError(f"Invalid {what} {component_name!r}: it must be a str, {_NAME_RULE}.")
    if not is_valid_name(component_name):
        raise InvalidConfigError(f"Invalid {what} {component_name!r}: it must be {_NAME_RULE}.")
    return component_name


def check_group_name(drive: str, group: str, what: str = "group name") -> None:
    """Raise `InvalidConfigError` unless ``group`` is a valid consumer group (member) name.

    Example:
        >>> check_group_name("d", "evaluators")

    """
    try:
        check_component_name(group, what)
    except InvalidConfigError as exc:  # (a ConfigTypeError stays one)
        raise type(exc)(f"Drive {drive!r}: {exc}") from None


def check_flag(drive: str, name: str, value: object) -> None:
    """Raise `DriveTypeError` unless ``value`` (an argument ``name``) is a flag.

    A bool, an int (0 is false; numpy's too), or numpy's bool: not a str ("false" is
    true), None, a float (nan is true) or a collection (an empty one is false), which are
    mistakes.

    Example:
        >>> check_flag("d", "recursive", True)

    """
    kind = type(value)
    if isinstance(value, numbers.Integral) or (
        kind.__module__ == "numpy" and kind.__name__ in _NUMPY_BOOLS
    ):
        return
    where = f"Drive {drive!r}: " if drive else ""
    raise DriveTypeError(
        f"{where}{name}={shorten(repr(value), 100)} must be True or False, not {kind.__name__}"
        + (" (a non-empty str is true)." if isinstance(value, str | bytes) else ".")
    )


#: The names of numpy's bool type (numpy 1, numpy 2), taken as flags without importing it.
_NUMPY_BOOLS = ("bool_", "bool")


def check_seconds(drive: str, name: str, value: float | None, *, optional: bool = True) -> None:
    """Raise `InvalidConfigError` unless ``value`` (an argument ``name``) is None or >= 0.

    ``optional=False``: None is refused too (`ConfigTypeError`).

    Example:
        >>> check_seconds("d", "timeout", 2.5)

    """
    if value is None:
        if optional:
            return
    elif type(value) in (int, float) and value >= 0:
        return
    # (A number of another type, numpy's say, is one; a bool is not, though an int.)
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not value >= 0:  # type: ignore[operator]  # (a number: not None)
        kind = InvalidConfigError if number else ConfigTypeError
        where = f"Drive {drive!r}: " if drive else ""  # ("": not a drive's, stop_server's)
        raise kind(f"{where}{name}={value!r} must be a number of seconds, 0 or more.")


def default_root() -> Path:
    """Return the per-user data directory used when no root is configured.

    ``$XDG_DATA_HOME/asyncdrive`` (``~/.local/share/asyncdrive``) on Linux,
    ``~/Library/Application Support/asyncdrive`` on macOS.
    """
    if os.uname().sysname == "Darwin":
        return Path.home() / "Library" / "Application Support" / "asyncdrive"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "asyncdrive"


def _root_path(root: str | os.PathLike[str], drive: str = "") -> str:
    """Return ``root`` as a str, refusing one that names no folder ("", a NUL in it)."""
    where = f"Drive {drive!r}: " if drive else ""
    path = os.fspath(root) if isinstance(root, str | os.PathLike) else None
    if not isinstance(path, str):  # (bytes, from a PathLike too: no drive path is bytes)
        raise ConfigTypeError(
            f"{where}root={shorten(repr(root), 100)} must be a str or an os.PathLike, "
            f"not {type(root).__name__}."
        )
    problem = "names no folder" if path == "" else "holds a NUL character" if "\0" in path else ""
    if problem:
        raise InvalidConfigError(
            f"{where}root={root!r} {problem}; pass the path of the shared folder (root='.' "
            "for the current one), or none for the default."
        )
    return path


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """Resolve the shared root: the argument, else ``$ASYNCDRIVE_ROOT``, else `default_root`.

    ``$ASYNCDRIVE_ROOT`` must be absolute: every process reads it on its own, from its own
    working directory, so a relative one would name a different folder in each.
    """
    if root is not None:
        root = _root_path(root)
    else:
        from_env = os.environ.get(ENV_ROOT)
        if from_env and not os.path.isabs(os.path.expanduser(from_env)):
            raise InvalidConfigError(
                f"{ENV_ROOT}={from_env!r} must be an absolute path: each process resolves it "
                f"from its own working directory. Use e.g. {os.path.abspath(from_env)!r}."
            )
        root = from_env or default_root()
    return Path(root).expanduser().resolve()


def absolute_root(root: str | os.PathLike[str] | None, drive: str = "") -> str | None:
    """Fix an explicit ``root=`` argument to an absolute path, before a drive is pickled.

    Raises `InvalidConfigError` (naming ``drive``, if given) for a root that names no
    folder: ``""``, or a path with a NUL character.
    """
    return None if root is None else os.path.abspath(os.path.expanduser(_root_path(root, drive)))


def resolve_redis_url(redis_url: str | None) -> str | None:
    """Resolve the Redis URL: the argument, else ``$ASYNCDRIVE_REDIS_URL``, else None (embedded)."""
    return redis_url or os.environ.get(ENV_REDIS_URL) or None


def resolve_component(component_name: str | None) -> str:
    """Resolve who is writing: the argument, else ``$ASYNCDRIVE_COMPONENT``, else ``"default"``."""
    name = component_name or os.environ.get(ENV_COMPONENT) or DEFAULT_COMPONENT
    return check_component_name(name)


def resolve_redis_timeout() -> float:
    """Return how long to wait for Redis: ``$ASYNCDRIVE_REDIS_TIMEOUT`` seconds, default 10."""
    raw = os.environ.get(ENV_REDIS_TIMEOUT) or DEFAULT_REDIS_TIMEOUT
    try:
        timeout = float(raw)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise InvalidConfigError(
            f"{ENV_REDIS_TIMEOUT}={raw!r} must be a positive number of seconds, e.g. 10."
        )
    return timeout


#: The longest ``ASYNCDRIVE_EVENTS_MAX_AGE`` (s, ~30,000 years): the server counts ms in
#: 64 bits, and Lua in doubles.
_MAX_AGE_MAX = 1e12


def resolve_retention() -> tuple[int, float]:
    """Return (events kept, longest age in seconds) of change logs, from the environment.

    ``ASYNCDRIVE_EVENTS_MAXLEN`` (default 100000) and ``ASYNCDRIVE_EVENTS_MAX_AGE`` (seconds,
    default 0: no age limit). Every process writing to a drive should use the same values.
    """
    try:
        maxlen = int(os.environ.get(ENV_EVENTS_MAXLEN) or DEFAULT_EVENTS_MAXLEN)
        max_age = float(os.environ.get(ENV_EVENTS_MAX_AGE) or DEFAULT_EVENTS_MAX_AGE)
    except ValueError as exc:
        raise InvalidConfigError(
            f"Invalid {ENV_EVENTS_MAXLEN} or {ENV_EVENTS_MAX_AGE}: {exc}. Use a whole number of "
            "events and a number of seconds."
        ) from None
    if maxlen < 1 or not 0 <= max_age <= _MAX_AGE_MAX:  # (not nan, nor too many ms)
        raise InvalidConfigError(
            f"{ENV_EVENTS_MAXLEN} must be at least 1 and {ENV_EVENTS_MAX_AGE} a number of "
            f"seconds from 0 (no age limit) to {_MAX_AGE_MAX:.0e}."
        )
    return maxlen, max_age


_USERINFO_PASSWORD = re.compile(r"^([a-z0-9+.\-]*://[^/@:]*):[^/@]*@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for logs and messages.

    Both places redis-py takes a password are covered: ``user:password@`` and the query
    (``?password=``, ``?sentinel_password=``).

    Example:
        >>> redact_url("redis://user:secret@host:6379/0")
        'redis://user:***@host:6379/0'

    """
    redacted = _USERINFO_PASSWORD.sub(r"\1:***@", url)
    base, question, query = redacted.partition("?")
    if not question:
        return redacted
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any("password" in key.lower() for key, _ in pairs):
        return redacted
    hidden = [(key, "***" if "password" in key.lower() else value) for key, value in pairs]
    return f"{base}?{urlencode(hidden, safe='*')}"


@dataclass(frozen=True)
class DriveConfig:
    """The arguments a drive was created with, exactly as given (None where defaulted).

    This is what a drive pickles as: connections are never pickled, and settings left to the
    environment are resolved again by `resolve` in the process that uses the drive.
    """

    name: str
    component_name: str | None = None
    allow_duplicates: bool = False
    root: str | None = None
    redis_url: str | None = None

    def resolve(self) -> ResolvedConfig:
        """Resolve the defaults in the current process.

        An invalid setting raises `InvalidConfigError` naming this drive (the environment's
        settings are read here, at a drive's first use, not where they were set).
        """
        try:
            return ResolvedConfig(
                name=self.name,
                component_name=resolve_component(self.component_name),
                allow_duplicates=self.allow_duplicates,
                root=resolve_root(self.root),
                redis_url=resolve_redis_url(self.redis_url),
                retention=resolve_retention(),
                redis_timeout=resolve_redis_timeout(),
            )
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"Drive {self.name!r}: {exc}") from None


@dataclass(frozen=True)
class ResolvedConfig:
    """A `DriveConfig` with every default filled in for the current process."""

    name: str
    component_name: str
    allow_duplicates: bool
    root: Path
    redis_url: str | None
    retention: tuple[int, float] = (DEFAULT_EVENTS_MAXLEN, DEFAULT_EVENTS_MAX_AGE)
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
