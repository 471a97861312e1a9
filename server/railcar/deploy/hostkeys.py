"""Host keys: every SSH connection of railcar.deploy checks the host's key before anything.

Fabric (paramiko) would accept any key (AutoAddPolicy) and never read known_hosts. `guard`
replaces that on a Connection before it connects:

- the keys come from the user's known_hosts (ssh_config's UserKnownHostsFile for the host,
  else ~/.ssh/known_hosts), the system's (ssh_config's GlobalKnownHostsFile, else
  /etc/ssh/ssh_known_hosts) and the project file `railcar.known_hosts`, if set;
- a known host whose key differs is refused, always (paramiko raises BadHostKeyException,
  turned into HostKeyError naming the host, both fingerprints and the file to fix);
- an unknown host is refused with its fingerprint and how to trust it, unless
  trust-on-first-use is on (`railcar.trust_new_hosts: true` or RAILCAR_TRUST_NEW_HOSTS=1,
  like OpenSSH's StrictHostKeyChecking=accept-new): then its key is recorded in the project
  file (else in the user's file) and later connections check against it.

Fingerprints are printed the way `ssh-keygen -lf` prints them (SHA256:base64).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import weakref

import paramiko

TRUST_ENV = "RAILCAR_TRUST_NEW_HOSTS"
_record_lock = threading.Lock()
_checked_against = weakref.WeakKeyDictionary()   # Connection -> the files guard() reads


class HostKeyError(Exception):
    """A host's key is unknown or changed: nothing was sent to it."""


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def entry_name(hostname: str, port: int) -> str:
    """The known_hosts name of an address, as OpenSSH writes it."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def trust_on_first_use(config_value: bool, environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return bool(config_value) or environ.get(TRUST_ENV, "") in ("1", "yes", "true")


def user_files(connection) -> list[str]:
    """The user's known_hosts files for this connection: ssh_config's UserKnownHostsFile
    (which replaces the default, as in OpenSSH), else ~/.ssh/known_hosts."""
    configured = connection.ssh_config.get("userknownhostsfile")
    names = configured.split() if isinstance(configured, str) else list(configured or [])
    names = names or ["~/.ssh/known_hosts"]
    return [os.path.expanduser(name) for name in names]


def system_files(connection) -> list[str]:
    """The system's known_hosts files (read, never written)."""
    configured = connection.ssh_config.get("globalknownhostsfile")
    names = configured.split() if isinstance(configured, str) else list(configured or [])
    return names or ["/etc/ssh/ssh_known_hosts"]


class _Policy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a host none of the files knows."""

    def __init__(self, label: str, files: list[str], record_in: str | None, say):
        self.label, self.files, self.record_in, self.say = label, files, record_in, say

    def missing_host_key(self, client, hostname, key):
        name = hostname   # paramiko passes "[host]:port" for a port other than 22
        if self.record_in is None:
            raise HostKeyError(
                f"[{self.label}] unknown host key for {name}: {key.get_name()} "
                f"{fingerprint(key)} (not in {', '.join(self.files)}). Nothing was sent. "
                f"If that is the host's key (check on the host: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{key.get_name().replace('ssh-', '')}_key.pub), add it "
                f"(ssh-keyscan, or ssh once) or deploy once with {TRUST_ENV}=1 "
                f"(railcar.trust_new_hosts: true) to record it")
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        with _record_lock:
            directory = os.path.dirname(self.record_in)
            if directory:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            with open(self.record_in, "a") as handle:
                handle.write(line)
        client.get_host_keys().add(name, key.get_name(), key)
        self.say(f"[{self.label}] trust on first use: recorded {name} {key.get_name()} "
                 f"{fingerprint(key)} in {self.record_in}")


def guard(connection, label: str, project_file: str | None, trust_new: bool,
          say=print) -> None:
    """Make `connection` check host keys (see the module doc). Call before it connects."""
    files = user_files(connection)
    record_in = files[0]
    if project_file:
        files.append(project_file)
        record_in = project_file
    client = connection.client
    keys = client.get_host_keys()
    for path in files + system_files(connection):
        if os.path.exists(path):
            try:
                keys.load(path)
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"[{label}] cannot read known_hosts file {path}: {exc}") \
                    from None
    client.set_missing_host_key_policy(
        _Policy(label, files, record_in if trust_new else None, say))
    _checked_against[connection] = files
    gateway = getattr(connection, "gateway", None)
    if hasattr(gateway, "client"):     # ProxyJump: a Connection of Fabric's, checked alike
        guard(gateway, f"{label} (gateway {gateway.host})", project_file, trust_new, say)


def explain(exc: BaseException, label: str, connection=None) -> HostKeyError | None:
    """The HostKeyError for a key failure raised while connecting, else None."""
    if isinstance(exc, HostKeyError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        files = (_checked_against.get(connection) if connection is not None else None) \
            or ["known_hosts"]
        return HostKeyError(
            f"[{label}] HOST KEY CHANGED for {exc.hostname}: it offers {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, known_hosts has {exc.expected_key.get_name()} "
            f"{fingerprint(exc.expected_key)}. Nothing was sent. Someone may be intercepting "
            f"the connection, or the host was reinstalled: check with its admin, then remove "
            f"the old entry from {', '.join(files)} (ssh-keygen -R '{exc.hostname}' -f FILE)")
    return None
