"""Local Unix sockets with an explicit mode, and who is on the other end.

Every listening socket of gridctl (the OPC UA feed, the control sockets) is
bound here. The mode is set before ``listen()``: a connect() to a bound socket
that does not listen yet is refused, so there is no moment in which the socket
accepts a peer under the mode the umask gave it. Paths are never shortened
into the shared temporary directory, where another user could take the name
first: a path too long for ``sun_path`` goes to the per-user runtime directory
(``$XDG_RUNTIME_DIR/gridctl``) or is refused naming its length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import hashlib
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

# sun_path is 108 bytes on Linux, including the terminating NUL.
SUN_PATH_MAX = 107
PRIVATE_DIR_MODE = 0o700
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class SocketPathError(ValueError):
    """A socket path that cannot be used; the message names the path and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer of a connected Unix socket, as the kernel recorded it (SO_PEERCRED).

    For the connecting side, the listener's credentials at ``listen()``; for the
    accepting side, the connecting process's at ``connect()``. ``pid`` is 0 when
    the peer lives in another pid namespace.
    """

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: Any) -> PeerCredentials:
    """``sock``: a socket, or the socket-like object asyncio/uvloop transports expose."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def path_bytes(path: Path | str) -> int:
    return len(os.fsencode(str(path)))


def check_socket_path(path: Path | str, what: str = "socket path") -> None:
    n = path_bytes(path)
    if n > SUN_PATH_MAX:
        raise SocketPathError(
            f"{what} {str(path)!r} is {n} bytes; a Unix socket path may have at most "
            f"{SUN_PATH_MAX} (use a shorter state_dir, or set XDG_RUNTIME_DIR)"
        )


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter (mode 0700), created if missing.

    Refuses a directory owned by another user: its owner could swap the socket.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SocketPathError(f"{path} is not a directory (a symlink or a file is refused)")
    if st.st_uid != os.getuid():
        raise SocketPathError(
            f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
        )
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR/gridctl`` (0700) when XDG_RUNTIME_DIR is set, absolute, ours
    and closed to others (0700, as the XDG spec has it), else None."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if not base or not os.path.isabs(base):
        return None
    try:
        st = os.stat(base)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return private_dir(Path(base) / "gridctl")


def short_socket_path(path: Path, what: str = "socket path") -> Path:
    """``path`` if a Unix socket can bind it, else its name in the runtime directory.

    The runtime name is derived from the absolute path, so two state directories
    never share a socket. Raises SocketPathError naming the path and its length
    when neither fits (never a name in the shared temporary directory).
    """
    if path_bytes(path) <= SUN_PATH_MAX:
        return path
    run = runtime_dir()
    if run is not None:
        digest = hashlib.sha256(os.fsencode(str(path.absolute()))).hexdigest()[:16]
        candidate = run / f"{path.stem}-{digest}{path.suffix}"
        if path_bytes(candidate) <= SUN_PATH_MAX:
            return candidate
    check_socket_path(path, what)
    return path  # not reached: the check raised


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SocketPathError(f"no group named {name!r} on this machine") from None


def bind_listening_socket(path: Path, mode: int, group: int | None = None) -> socket.socket:
    """A Unix stream socket bound at ``path`` with exactly ``mode`` (and ``group``).

    Not listening yet: the caller's server calls ``listen()``, after the mode and
    group are set. A stale socket at ``path`` is replaced; any other file there
    is refused rather than deleted.
    """
    check_socket_path(path)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # The name is ours until listen(); a peer that connects before then is refused.
        if group is not None:
            try:
                os.chown(path, -1, group)
            except PermissionError:
                raise SocketPathError(
                    f"{path}: cannot give the socket to group id {group} "
                    "(this user must be a member of it)"
                ) from None
        os.chmod(path, mode)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return sock
