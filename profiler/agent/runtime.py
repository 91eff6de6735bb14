"""The agent's life: start inside the target, report, and stop leaving nothing behind."""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time
import weakref
from typing import Any

from .. import wire
from .accelerator import AcceleratedTracker, new_tracker
from .bursts import Bursts
from .channel import Channel, connect
from .codefilter import CodeFilter
from .monitoring import Installation, NoFreeToolId, claim_tool_id
from .sender import Sender
from .settings import AgentSettings
from .tasks import LoopWatcher, adopt_existing
from .tracker import Tracker

__all__ = ["AGENT_VERSION", "Agent", "active", "start"]

AGENT_VERSION = "0.1.0"
TOOL_NAME = "async-inspect"
_active: Agent | None = None
_active_lock = threading.Lock()


def active() -> Agent | None:
    """The agent running in this process, if any."""
    return _active


def start(
    sock: socket.socket, address: str, settings: dict[str, Any], token: str, mode: str
) -> Agent | None:
    """Start observing this process, reporting over `sock` (connected to `address`, which
    the agent now owns). Returns None (after telling the collector why) if it cannot run.
    """
    global _active
    # `address` as we reached it: getpeername() would give the path the collector bound,
    # which is not ours to use from inside a container.
    channel = Channel(sock, address)
    agent = Agent(channel, AgentSettings.from_wire(settings), token, mode)
    with _active_lock:
        if not agent.start():
            return None
        _active = agent
    return agent


class Agent:
    """Tool id, tracker, task factories and sender, started and stopped as one."""

    def __init__(self, channel: Channel, settings: AgentSettings, token: str, mode: str) -> None:
        self.settings = settings
        self.token = token
        self.mode = mode
        self._channel = channel
        self._stop_lock = threading.Lock()
        self.stopped = False
        self.tracker: Tracker | None = None
        self.accelerator = ""  # which callbacks run, and why (HELLO)
        self._installation: Installation | None = None
        self._watcher: LoopWatcher | None = None
        self._sender: Sender | None = None
        self._bursts: Bursts | None = None
        self._loops = 0
        self._adopted = 0
        self._pid = os.getpid()
        self._since = time.strftime("%H:%M:%S")

    @property
    def connected(self) -> bool:
        """True while the collector connection is up."""
        sender = self._sender
        return (sender.channel if sender is not None else self._channel).connected

    def start(self) -> bool:
        """Install everything; False if this process cannot be observed (reported)."""
        try:
            tool = claim_tool_id(TOOL_NAME)
        except NoFreeToolId as exc:
            self._channel.send(wire.ERROR, ("no_free_tool_id", str(exc)))
            self._channel.close()
            return False
        tracker, self.accelerator = new_tracker(self.settings, CodeFilter(self.settings), tool)
        watcher = LoopWatcher(tracker)
        tracker.on_new_loop = watcher.ensure
        installation = Installation(tool, tracker)
        self.tracker, self._watcher, self._installation = tracker, watcher, installation
        installation.install()
        tracker.watch_selector_wakeups()
        self._loops, self._adopted = adopt_existing(tracker, watcher)
        if Bursts.wanted(self.settings):
            self._bursts = Bursts(self.settings, installation, time.monotonic())
        sender = Sender(tracker, self._channel, self.hello, self._stop_from_sender, self._bursts)
        self._sender = sender
        self._channel.send(wire.HELLO, self.hello(False))
        sender.start()
        atexit.register(self._at_exit)
        _register_fork_hook(self)
        return True

    def hello(self, reconnect: bool) -> dict[str, Any]:
        """What the collector needs to know about this process."""
        tracker = self.tracker
        return {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "token": self.token,
            "mode": self.mode,
            "reconnect": reconnect,
            "agent_version": AGENT_VERSION,
            "tool_id": tracker.tool if tracker is not None else -1,
            "python": ".".join(map(str, sys.version_info[:3])),
            "implementation": sys.implementation.name,
            "executable": sys.executable,
            "argv": list(sys.orig_argv),
            "program": _program_name(),
            "hostname": socket.gethostname(),
            "env": {k: os.environ[k] for k in _ENV_FORWARDED if k in os.environ},
            "clock": (time.time_ns(), time.perf_counter_ns()),
            "started": tracker.started_at if tracker is not None else 0,
            "loops": self._loops,
            "adopted_spans": self._adopted,
            "free_threaded": not getattr(sys, "_is_gil_enabled", lambda: True)(),
            "accelerator": isinstance(tracker, AcceleratedTracker),
            "accelerator_detail": self.accelerator,
        }

    def stop(self, reason: str) -> None:
        """Stop observing: remove every hook, flush what was seen, say goodbye. Idempotent."""
        global _active
        with self._stop_lock:
            if self.stopped:
                return
            self.stopped = True
        if self._installation is not None:
            self._installation.remove()
        if self._watcher is not None:
            self._watcher.restore_all()
        sender = self._sender
        if sender is not None:
            sender.stop()
            tracker = sender.tracker
            sender.ship(with_stats=True, extra=tracker.in_flight(tracker.now()))
            sender.channel.send(wire.BYE, {"reason": reason})
            sender.channel.close()
            tracker.clear()
        else:
            self._channel.close()
        if reason == wire.ORPHANED and self.mode == "attach":
            _remove_rendezvous(self._channel.address)
        atexit.unregister(self._at_exit)
        with _active_lock:
            if _active is self:
                _active = None
        _forget_private_modules()

    def describe(self) -> str:
        """One line naming this agent's session, for 'already attached' messages."""
        return f"agent {AGENT_VERSION}, {self.mode} session since {self._since}"

    def _stop_from_sender(self, reason: str) -> None:
        self.stop(reason)

    def _at_exit(self) -> None:
        self.stop("exit")

    def after_fork_in_child(self) -> None:
        """A forked child: forget the parent's spans and report as a new process."""
        if self.stopped or self._sender is None or os.getpid() == self._pid:
            return
        self._pid = os.getpid()
        old = self._sender
        tracker = old.tracker
        tracker.clear()
        try:
            channel = Channel(connect(old.channel.address), old.channel.address)
        except OSError:
            channel = old.channel
            channel.broken = True
        self._channel = channel
        self._sender = Sender(tracker, channel, self.hello, self._stop_from_sender, self._bursts)
        channel.send(wire.HELLO, self.hello(False))
        channel.send(wire.CODES, tracker.all_codes())
        self._sender.start()


_ENV_FORWARDED = ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES")


def _program_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", ""):
        return str(spec.name).removesuffix(".__main__")
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-"):
        return os.path.basename(sys.executable) or "python"
    return os.path.basename(argv0).removesuffix(".py") or "python"


def _forget_private_modules() -> None:
    # Only the private copy loaded into a target is removed; tests import us as `profiler`.
    # That includes the compiled callbacks (`_async_inspect.agent._accel`): an extension
    # cannot be unloaded, so its code stays mapped, but nothing refers to it any more (its
    # callbacks are unregistered, its Hooks freed with the tracker) and no import finds it.
    root = __name__.split(".", 1)[0]
    if not root.startswith("_async_inspect"):
        return
    for name in [n for n in sys.modules if n == root or n.startswith(root + ".")]:
        sys.modules.pop(name, None)


def _register_fork_hook(agent: Agent) -> None:
    # os.register_at_fork has no unregister: the hook holds only a weak reference, so after
    # a detach it is a no-op that keeps nothing of ours alive.
    # It is built by eval with a globals dict of its own so it does not pin this module.
    hook = eval(
        "lambda: (lambda agent: agent is not None and agent.after_fork_in_child())(ref())",
        {"ref": weakref.ref(agent)},
    )
    os.register_at_fork(after_in_child=hook)


def _remove_rendezvous(address: str) -> None:
    """Delete the private folder the collector made for us (its socket, the bootstrap
    script), when the collector died without doing so: nothing is left in our /tmp."""
    folder = os.path.dirname(address)
    if address.startswith("@") or not os.path.basename(folder).startswith(wire.RENDEZVOUS_PREFIX):
        return
    try:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    except OSError:
        pass  # another user's folder, or already gone: nothing more to do
