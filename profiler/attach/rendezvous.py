"""Where an attached target can reach us: a folder in the target's own file system.

A target in a container sees another /tmp than ours. Through /proc/PID/root we create a
private folder in the target's /tmp (or /dev/shm, /var/tmp when /tmp is read-only), owned by
the target's user, mode 0700; the collector's socket and, for remote execution, the bootstrap
script go there. The target reaches them by the same path without the /proc prefix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from profiler.errors import AttachError, PermissionDenied
from profiler.wire import RENDEZVOUS_PREFIX

from .process import TargetInfo

__all__ = ["Rendezvous", "prepare_rendezvous"]

_CANDIDATES = ("tmp", "dev/shm", "var/tmp")


@dataclass(frozen=True)
class Rendezvous:
    """A private folder shared with one target."""

    host_dir: str  # the folder as this process opens it (through /proc/PID/root)
    target_dir: str  # the same folder as the target sees it
    uid: int  # the target's effective user and group, who must be able to use the folder
    gid: int
    same_root: bool = False  # the target's / is ours: target_dir is also our path to it

    def host_path(self, name: str) -> str:
        """Path of `name` in the folder, for us."""
        return os.path.join(self.host_dir, name)

    def target_path(self, name: str) -> str:
        """Path of `name` in the folder, for the target."""
        return os.path.join(self.target_dir, name)

    def hand_over(self, name: str) -> None:
        """Give a file we created in the folder to the target's user (0600)."""
        path = self.host_path(name)
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def remove(self) -> None:
        """Delete the folder and all in it (idempotent)."""
        shutil.rmtree(self.host_dir, ignore_errors=True)
        if self.same_root:  # /proc/PID/root is gone once the target has exited
            shutil.rmtree(self.target_dir, ignore_errors=True)


def prepare_rendezvous(target: TargetInfo) -> Rendezvous:
    """Create the folder for `target`; raises AttachError if none of its dirs is writable."""
    uid, gid = _owner(target.pid)
    errors = []
    for candidate in _CANDIDATES:
        base = os.path.join(target.root, candidate)
        try:
            host_dir = tempfile.mkdtemp(prefix=RENDEZVOUS_PREFIX, dir=base)
        except PermissionError as exc:
            errors.append(f"/{candidate}: {exc.strerror}")
            if candidate == "tmp" and not os.access(target.root, os.R_OK):
                raise PermissionDenied(
                    f"cannot reach the file system of PID {target.pid} ({exc.strerror})",
                    "run as root or as the target's user",
                ) from None
            continue
        except OSError as exc:
            errors.append(f"/{candidate}: {exc.strerror}")
            continue
        os.chmod(host_dir, 0o700)
        if os.geteuid() == 0:
            os.chown(host_dir, uid, gid)
        relative = os.path.relpath(host_dir, target.root)
        return Rendezvous(host_dir, "/" + relative, uid, gid, _same_root(target.root))
    raise AttachError(
        f"no writable folder in the file system of PID {target.pid} ({'; '.join(errors)})",
        "give the target a writable /tmp (e.g. an emptyDir volume)",
    )


def _same_root(root: str) -> bool:
    try:
        return os.path.samestat(os.stat(root), os.stat("/"))
    except OSError:
        return False


def _owner(pid: int) -> tuple[int, int]:
    uid = gid = os.geteuid()
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Uid:"):
                    uid = int(line.split()[2])  # effective
                elif line.startswith("Gid:"):
                    gid = int(line.split()[2])
    except OSError:
        pass
    return uid, gid
