"""Runtime directories (the admin socket's, the apps' sockets'): created safely, verified before use.

Runs in the master (and in `railcar start` before it daemonizes). Whoever can write to the
directory of a socket or log can replace the socket or plant a symlink where railcar writes,
so a directory is used only if it is:
- not a symlink, and a directory;
- owned by the uid running railcar (`strict`: railcar's default directories, /run/railcar and
  /tmp/railcar-UID) or, for a directory the admin named, by that uid or root;
- not writable by group or others (a directory the admin named may be, with the sticky bit,
  like /tmp: then no one can remove or rename what railcar puts there).
Anything else is refused with RuntimeDirError naming the path and what is wrong. A missing
directory is created (parents too) with `mode` and owned by the running uid.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from .settings import default_run_dir


class RuntimeDirError(RuntimeError):
    """The directory is unsafe to use; the message names it and says why."""


def _owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def is_default(path: str) -> bool:
    """True for railcar's own default runtime directory (held to the strict rules)."""
    return os.path.abspath(path) == os.path.abspath(default_run_dir())


def check(path: str, strict: bool) -> os.stat_result:
    """Verify an existing directory (see the module docstring); returns its lstat."""
    info = os.lstat(path)
    uid = os.geteuid()
    if stat.S_ISLNK(info.st_mode):
        raise RuntimeDirError(f"{path} is a symlink; railcar uses only a real directory here "
                              f"(remove it, or choose another path)")
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(f"{path} exists and is not a directory")
    trusted = {uid} if strict else {uid, 0}
    if info.st_uid not in trusted:
        raise RuntimeDirError(
            f"{path} is owned by {_owner_name(info.st_uid)}, not by {_owner_name(uid)} who runs "
            "railcar: another account could replace its sockets or plant symlinks there "
            "(remove it, or choose another path)")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 and (strict or not mode & stat.S_ISVTX):
        who = {0o020: "its group", 0o002: "others", 0o022: "group and others"}[mode & 0o022]
        raise RuntimeDirError(
            f"{path} is writable by {who} (mode {mode:04o}): another account could replace its sockets or plant symlinks "
            f"there (chmod go-w {path}, or remove it and let railcar create it)")
    return info


def ensure(path: str, mode: int = 0o700, strict: bool | None = None) -> None:
    """Create `path` with `mode` if it is missing, then verify it (RuntimeDirError if unsafe).
    `strict` defaults to whether `path` is railcar's default runtime directory."""
    if strict is None:
        strict = is_default(path)
    try:
        os.makedirs(path, mode=mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create the directory {path}: {exc.strerror}") from None
    else:
        os.chmod(path, mode)    # makedirs' mode is filtered by the umask
    try:
        check(path, strict)
    except FileNotFoundError:
        raise RuntimeDirError(f"{path} vanished while railcar was setting it up") from None


def open_to_group(path: str, gid: int) -> None:
    """Let members of group `gid` traverse the directory `path` (ours, verified): if neither
    others nor that group can, it becomes group `gid`, mode g+rx."""
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o001 or (info.st_gid == gid and mode & 0o010):
        return
    try:
        os.chown(path, -1, gid)
        os.chmod(path, mode | 0o050)
    except OSError as exc:
        raise RuntimeDirError(f"cannot give {path} to group {_group_name(gid)}: {exc.strerror} "
                              "(the account running railcar must be a member of that group)"
                              ) from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
