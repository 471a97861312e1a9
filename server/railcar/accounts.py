"""Accounts and groups of the apps, resolved when a master starts (runs in the master).

When the master runs as root, everything of an app (interpreter check, preloader, workers,
hooks) runs as the app's `user` (default: the owner of the app root) and `group` (default:
that user's primary group), with the user's supplementary groups; root only with
`allow_root`. Each error is a ConfigError naming where the setting came from and its key.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from dataclasses import dataclass
from typing import Any

from .settings import ConfigError

WEB_SERVER_GROUP = "www-data"   # default group of app sockets when the master runs as root
# Prints each argument the shell cannot open for reading, one a line. It opens them rather
# than ask `[ -r ]`, whose answer from some shells and libcs comes from the mode bits alone.
_UNREADABLE = 'for path; do { true; } <"$path" || printf "%s\\n" "$path"; done'


@dataclass(frozen=True)
class Account:
    """Who an app's workers run as: names for people, ids for the kernel."""

    user: str
    group: str
    uid: int
    gid: int
    extra_groups: tuple[int, ...] = ()

    def process_options(self) -> dict[str, Any]:
        """Keyword arguments of subprocess.Popen/run that start a process as this account."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.extra_groups)}

    def unreadable(self, paths: list[str]) -> list[str]:
        """Those of `paths` this account cannot read, asked of the kernel as the account:
        a short `sh` started as it opens each for reading (so modes, ACLs and every directory
        on the way count). Runs in a root master, which reads anything itself."""
        try:
            result = subprocess.run(
                ["/bin/sh", "-c", _UNREADABLE, "sh", *paths], capture_output=True, text=True,
                errors="replace", timeout=30, cwd="/", env={"PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL, **self.process_options())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot check what account {self.user} may read: {exc}") from None
        return result.stdout.splitlines()

    def environ(self) -> dict[str, str]:
        """USER, LOGNAME and HOME of the account, for the environment of its processes."""
        try:
            home = pwd.getpwuid(self.uid).pw_dir
        except KeyError:
            home = "/"
        return {"USER": self.user, "LOGNAME": self.user, "HOME": home}


def group_id(name: str, where: str, key: str) -> int:
    try:
        return grp.getgrgid(int(name)).gr_gid if name.isdigit() else grp.getgrnam(name).gr_gid
    except (KeyError, OverflowError):
        raise ConfigError(f"{where}: {key}: no such group {name!r}") from None


def app_account(values: dict[str, Any], root: str, where: str) -> Account | None:
    """The account an app runs as under a root master: `user` (default: the owner of the app
    root) and `group` (default: the user's primary group). Root only with `allow_root`, which
    returns None (the app then runs as the master does); otherwise root is a ConfigError.
    """
    user = values.get("user")
    allow_root = values.get("allow_root")
    try:
        if user is None:
            entry = pwd.getpwuid(os.stat(root).st_uid)
        else:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        if user is None:
            raise ConfigError(f"{where}: user: the owner of {root} has no account; "
                              "set user") from None
        raise ConfigError(f"{where}: user: no such user {user!r}") from None
    if entry.pw_uid == 0:
        if allow_root:
            return None
        if user is not None:
            raise ConfigError(f"{where}: user: workers never run as root ({user!r} is root): "
                              "nothing of an app runs as root unless allow_root is set "
                              "(--allow-root)")
        raise ConfigError(
            f"{where}: user: {root} is owned by root, and an app never runs as root: set "
            "user (--user ACCOUNT, or `user` in the server config) to the app's account, or "
            "give the app root to that account, or set allow_root (--allow-root) to run the "
            "app as root anyway")
    group = values.get("group")
    gid = group_id(group, where, "group") if group else entry.pw_gid
    if gid == 0 and not allow_root:
        raise ConfigError(f"{where}: group: workers never run with the root group unless "
                          "allow_root is set (--allow-root)")
    extra = tuple(g for g in os.getgrouplist(entry.pw_name, gid)
                  if g != gid and (g != 0 or allow_root))
    return Account(user=entry.pw_name, group=grp.getgrgid(gid).gr_name, uid=entry.pw_uid,
                   gid=gid, extra_groups=extra)


def socket_group(values: dict[str, Any], where: str) -> int | None:
    name = values.get("socket_group")
    if name:
        return group_id(name, where, "socket_group")
    if os.getuid() == 0:
        try:
            return grp.getgrnam(WEB_SERVER_GROUP).gr_gid
        except KeyError:
            return None
    return None
