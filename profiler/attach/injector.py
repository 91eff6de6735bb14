"""Getting the bootstrap to run inside a live process: remote execution on 3.14+, else gdb.

PEP 768 remote execution (3.14+) needs no stop of the target: the request is written into
every Python thread's state, so whichever thread runs Python first picks it up (a loop in a
worker thread while the main thread waits in join() included). A thread parked in its event
loop's epoll_wait runs no Python, so it is woken without touching the app's own descriptors.
If still nothing runs the request and gdb is present, gdb takes over at a safe point. Older
targets go through gdb directly. A 3.14+ target started with remote debugging disabled is
refused, not attached by gdb behind its owner's back. Success means the agent reported back
(`confirmed`), not that an injector returned.
"""

from __future__ import annotations

import shutil
import threading

from profiler.errors import AttachError, AttachTimeout, RemoteDebugDisabled
from profiler.payload import bootstrap_source

from . import remote_exec
from .gdb import inject_with_gdb
from .process import TargetInfo
from .rendezvous import Rendezvous

__all__ = ["bootstrap_code", "inject_bootstrap"]

SCRIPT_NAME = "bootstrap.py"
_REMOTE_WAIT = 0.3  # seconds for a busy thread to pick the request up before waking idle ones
_WAKE_WAIT = 0.5


def bootstrap_code(address: str, token: str) -> str:
    """Source that, run once in the target, connects back to `address` and starts the agent."""
    return f"{bootstrap_source()}\nboot_in_thread({address!r}, {token!r}, 'attach')\n"


def _guarded(code: str) -> str:
    # sys.remote_exec runs the file in the target's main namespace and prints exceptions to
    # the target's stderr: run it in a namespace of its own and let nothing out.
    return (
        "try:\n"
        f"    exec(compile({code!a}, '<async-inspect>', 'exec'),"
        " {'__name__': '__async_inspect__'})\n"
        "except BaseException:\n"
        "    pass\n"
    )


def inject_bootstrap(
    target: TargetInfo,
    rendezvous: Rendezvous,
    code: str,
    confirmed: threading.Event,
    timeout: float = 5.0,
) -> str:
    """Make `target` run `code`; returns the method used once `confirmed` is set.

    Raises AttachTimeout if the agent did not report within `timeout`, or the injector's
    own AttachError (InjectorMissing, PermissionDenied, ...).
    """
    if target.version >= (3, 14):
        try:
            method = _via_remote_exec(target, rendezvous, code, confirmed)
        except RemoteDebugDisabled as exc:
            # Whoever started the target asked for no code injection: we do not go around
            # that with gdb.
            raise RemoteDebugDisabled(
                exc.message,
                "it was started with -X disable-remote-debug or PYTHON_DISABLE_REMOTE_DEBUG; "
                "restart it without them to attach",
            ) from None
        if method is not None:
            return method
        if shutil.which("gdb") is None:
            raise AttachTimeout(
                f"PID {target.pid} did not run the remote-execution request: no thread ran "
                "Python code and none could be woken",
                "install gdb so async-inspect can use a safe point, or retry under load",
            )
    method = inject_with_gdb(target, code, timeout=timeout)
    if not confirmed.wait(timeout):
        raise AttachTimeout(
            f"the agent did not report back from PID {target.pid} within {timeout:.0f}s",
            "check that the target can reach its /tmp and lets a new thread run (a loop that"
            " keeps the GIL can starve the agent's boot thread); run `async-inspect doctor PID`",
        )
    return method


def _via_remote_exec(
    target: TargetInfo, rendezvous: Rendezvous, code: str, confirmed: threading.Event
) -> str | None:
    with open(rendezvous.host_path(SCRIPT_NAME), "w", encoding="utf-8") as script:
        script.write(_guarded(code))
    rendezvous.hand_over(SCRIPT_NAME)
    path = rendezvous.target_path(SCRIPT_NAME)
    threads = [thread.native_id for thread in remote_exec.list_python_threads(target.pid)]
    if not threads:
        raise AttachError(f"PID {target.pid} has no Python thread to run the request")
    try:
        for thread_id in threads:
            remote_exec.remote_exec(target.pid, path, thread_id=thread_id)
        if confirmed.wait(_REMOTE_WAIT):
            return "remote exec"
        for thread_id in threads:
            if remote_exec.wake_idle_thread(target.pid, thread_id=thread_id):
                break
        if confirmed.wait(_WAKE_WAIT):
            return "remote exec (woke an idle event loop)"
        return None
    finally:
        # Requests not picked up must not fire later (the bootstrap would only ignore them).
        for thread_id in threads:
            try:
                remote_exec.cancel_remote_exec(target.pid, thread_id=thread_id)
            except AttachError:
                pass
