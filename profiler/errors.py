"""The errors async-inspect raises on the host side, as one small tree.

```
AsyncInspectError                 anything the CLI turns into one line and a non-zero exit
├── AttachError                   the agent could not be put into (or taken out of) a process
│   ├── ProcessNotFound           no such PID
│   ├── NotPython                 the PID is not a CPython process
│   ├── UnsupportedPython         CPython older than 3.12 (or a build we cannot observe)
│   ├── PermissionDenied          ptrace / process_vm_* refused: root or CAP_SYS_PTRACE needed
│   ├── ProcessStopped            the target is stopped (SIGSTOP) and cannot run the bootstrap
│   ├── RemoteDebugDisabled       3.14 target started with remote debugging disabled
│   ├── InjectorMissing           neither gdb nor remote execution is available
│   ├── AlreadyAttached           another async-inspect session owns the target
│   └── AttachTimeout             the agent did not report back in time
├── AgentError                    the agent started but reported that it cannot observe
├── ConfigError                   a setting (flag, environment variable, config file) is wrong
├── ProtocolError                 a malformed frame on the agent <-> collector channel
└── ExportError                   the OTLP exporter or an output file cannot be set up
```

Every error carries a `hint`: what the user can do about it in this environment.
The agent (which runs inside the target) never raises these: it reports over the wire instead.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AlreadyAttached",
    "AsyncInspectError",
    "AttachError",
    "AttachTimeout",
    "ConfigError",
    "ExportError",
    "InjectorMissing",
    "NotPython",
    "PermissionDenied",
    "ProcessNotFound",
    "ProcessStopped",
    "ProtocolError",
    "RemoteDebugDisabled",
    "UnsupportedPython",
]


class AsyncInspectError(Exception):
    """Base of every expected failure; `str()` is the one line the CLI prints."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class AttachError(AsyncInspectError):
    """The agent could not be injected into, or removed from, a process."""

    exit_code = 2


class ProcessNotFound(AttachError):
    """No process has this PID (or it exited while we looked at it)."""


class NotPython(AttachError):
    """The process is not running a CPython interpreter."""


class UnsupportedPython(AttachError):
    """The process runs a CPython we cannot observe (older than 3.12)."""


class PermissionDenied(AttachError):
    """The kernel refused ptrace or process memory access."""


class ProcessStopped(AttachError):
    """The target is in the stopped state (SIGSTOP / job control)."""


class RemoteDebugDisabled(AttachError):
    """A 3.14+ target was started with PYTHON_DISABLE_REMOTE_DEBUG or -X disable_remote_debug."""


class InjectorMissing(AttachError):
    """No injection method is usable: gdb is missing and remote execution is unavailable."""


class AlreadyAttached(AttachError):
    """Another async-inspect session is attached to the target."""


class AttachTimeout(AttachError):
    """The agent did not confirm it was running inside the target in time."""


class AgentError(AsyncInspectError):
    """The agent is inside the target but reported it cannot observe (e.g. no free tool id)."""

    exit_code = 3


class ConfigError(AsyncInspectError):
    """A setting is invalid; the message names the setting and the value."""

    exit_code = 64


class ProtocolError(AsyncInspectError):
    """A frame on the agent <-> collector channel is malformed."""


class ExportError(AsyncInspectError):
    """An exporter or output could not be set up."""
