"""The first code async-inspect runs inside a target: connect back, load the agent, start it.

It is shipped as source text (by the sitecustomize of `run`, or by gdb / remote execution
for `attach`) and executed in a namespace of its own, so it imports only the standard
library, defines no module, and never raises. The collector answers its BOOT frame with
the agent's source, which is loaded from memory under the private package `_async_inspect`
(the target may have its own `profiler` package), so nothing has to exist on the target's
filesystem: a target in a container needs only to reach the socket.
"""

from __future__ import annotations

import marshal
import os
import socket
import struct
import sys
import threading
from types import ModuleType
from typing import Any

PACKAGE = "_async_inspect"
# Mirrors profiler.wire (this file cannot import it before the agent arrives); a unit test
# keeps the two in step.
HEADER = struct.Struct("!2sBBI")
MAGIC = b"AI"
VERSION = 1
BOOT = 1
ERROR = 6
PAYLOAD = 64
STOP = 65
MAX_PAYLOAD = 16 * 1024 * 1024


def boot(address: str, token: str, mode: str, timeout: float = 5.0) -> bool:
    """Connect to the collector at `address`, load and start the agent. True if started."""
    try:
        return _boot(address, token, mode, timeout)
    except Exception:
        return False


def boot_in_thread(address: str, token: str, mode: str, timeout: float = 5.0) -> None:
    """Run `boot` on a new daemon thread, so an injected call returns at once.

    An attach may ask several threads to run this (whichever runs Python first wins), so
    only the first caller for a token starts a thread: `setdefault` on sys.modules is
    atomic, and the marker is removed once the boot is over.
    """
    marker = object()
    key = PACKAGE + ".booting." + token
    if sys.modules.setdefault(key, marker) is not marker:  # type: ignore[arg-type]
        return

    def run() -> None:
        try:
            boot(address, token, mode, timeout)
        finally:
            sys.modules.pop(key, None)

    thread = threading.Thread(target=run, name="async-inspect-bootstrap")
    thread.daemon = True
    thread.start()


def _boot(address: str, token: str, mode: str, timeout: float) -> bool:
    if sys.version_info < (3, 12):
        return False
    agent_module = sys.modules.get(PACKAGE + ".agent")
    current = agent_module.active() if agent_module is not None else None
    if current is not None and current.token == token:
        return False  # this very session is already running here: a late duplicate request
    sock = _connect(address, timeout)
    try:
        _send(sock, BOOT, _facts(token, mode))
        kind, body = _receive(sock)
        if kind != PAYLOAD:
            sock.close()
            return False
        agent_module = sys.modules.get(PACKAGE + ".agent")
        if agent_module is not None and not _replace(agent_module, sock):
            sock.close()
            return False
        package = _load(body["modules"])
        started = package.start(sock, address, body["settings"], token, mode)
        return started is not None
    except BaseException:
        sock.close()
        raise


def _replace(agent_module: Any, sock: socket.socket) -> bool:
    """An agent is already here: refuse if its collector is alive, else take over."""
    current = agent_module.active()
    if current is not None and current.connected:
        _send(sock, ERROR, ("already_attached", current.describe()))
        return False
    if current is not None:
        current.stop("takeover")
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        sys.modules.pop(name, None)
    return True


def _facts(token: str, mode: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "token": token,
        "mode": mode,
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "argv": list(getattr(sys, "orig_argv", sys.argv)),
    }


def _connect(address: str, timeout: float) -> socket.socket:
    target = "\0" + address[1:] if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def _send(sock: socket.socket, kind: int, body: Any) -> None:
    data = marshal.dumps(body)
    sock.sendall(HEADER.pack(MAGIC, VERSION, kind, len(data)) + data)


def _receive(sock: socket.socket) -> tuple[int, Any]:
    magic, version, kind, length = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if magic != MAGIC or version != VERSION or length > MAX_PAYLOAD:
        raise ValueError("not an async-inspect collector")
    return kind, marshal.loads(_read_exactly(sock, length))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("collector closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _load(modules: dict[str, tuple[str, bool]]) -> Any:
    """Import the agent from `modules` ({relative name: (source, is_package)}), in memory."""
    import importlib
    import importlib.abc
    import importlib.machinery
    import importlib.util
    import types

    class MemoryLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
            entry = (
                modules.get(fullname[len(PACKAGE) + 1 :])
                if fullname.startswith(PACKAGE + ".")
                else None
            )
            if entry is None:
                return None
            return importlib.util.spec_from_loader(fullname, self, is_package=entry[1])

        def create_module(self, spec: Any) -> None:
            return None

        def exec_module(self, module: ModuleType) -> None:
            relative = module.__name__[len(PACKAGE) + 1 :]
            source, is_package = modules[relative]
            filename = "<async-inspect agent>/" + relative.replace(".", "/")
            filename += "/__init__.py" if is_package else ".py"
            exec(compile(source, filename, "exec"), module.__dict__)

    root = types.ModuleType(PACKAGE)
    root.__path__ = []
    root.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    sys.modules[PACKAGE] = root
    finder = MemoryLoader()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(PACKAGE + ".agent")
    except BaseException:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            sys.modules.pop(name, None)
        raise
    finally:
        sys.meta_path.remove(finder)
