"""The first code async-inspect runs inside a target: connect back, load the agent, start it.

It is shipped as source text (by the sitecustomize of `run`, or by gdb / remote execution
for `attach`) and executed in a namespace of its own, so it imports only the standard
library, defines no module, and never raises. The collector answers its BOOT frame with
the agent's source, which is loaded from memory under the private package `_async_inspect`
(the target may have its own `profiler` package), so nothing has to exist on the target's
filesystem: a target in a container needs only to reach the socket.

The compiled callbacks (`_accel`, see agent/accelerator.py) come in the same frame, as the
bytes of the host's binary. A shared object must be mapped from a file, so the bootstrap
uses the first of: the host's own file, if this process sees the very same bytes at that
path (`run`, or `attach` outside a container); an anonymous memfd (nothing on any file
system, fine with a read-only or noexec /tmp); a file in the private folder of the socket,
deleted as soon as it is mapped. If none loads (another libc or architecture...), the agent
runs its pure-Python callbacks and says why.
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
        package = _load(body["modules"], body.get("accelerator"), address)
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


def _load(
    modules: dict[str, tuple[str, bool]],
    accelerator: dict[str, Any] | None = None,
    address: str = "",
) -> Any:
    """Import the agent from `modules` ({relative name: (source, is_package)}), in memory,
    and its compiled callbacks from `accelerator` ({"path", "data"} or {"reason"})."""
    import importlib
    import importlib.abc
    import importlib.machinery
    import importlib.util
    import types

    extension = PACKAGE + ".agent._accel"

    class MemoryLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def __init__(self) -> None:
            self.extension_loader: Any = None

        def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
            if fullname == extension:
                return importlib.util.spec_from_loader(fullname, self)
            entry = (
                modules.get(fullname[len(PACKAGE) + 1 :])
                if fullname.startswith(PACKAGE + ".")
                else None
            )
            if entry is None:
                return None
            return importlib.util.spec_from_loader(fullname, self, is_package=entry[1])

        def create_module(self, spec: Any) -> Any:
            if spec.name != extension:
                return None
            module, self.extension_loader, spec.origin, spec.loader_state = _load_extension(
                spec.name, accelerator, address
            )
            return module

        def exec_module(self, module: ModuleType) -> None:
            if module.__name__ == extension:
                self.extension_loader.exec_module(module)
                return
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


def _load_extension(
    name: str, accelerator: dict[str, Any] | None, address: str
) -> tuple[Any, Any, str, str]:
    """(module, loader, path, which place) of the compiled callbacks, from the first place
    this process can map them; ImportError with every reason if none. Leaves no file."""
    import importlib.machinery
    import importlib.util

    if not accelerator or not accelerator.get("data"):
        raise ImportError((accelerator or {}).get("reason") or "not shipped by the collector")
    errors = []
    for where, place in (
        ("host file", _host_file),
        ("memfd", _memory_file),
        ("socket folder", _folder_file),
    ):
        try:
            path, done = place(accelerator, address)
        except Exception as exc:
            errors.append(f"{where}: {exc}")
            continue
        try:
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            spec = importlib.util.spec_from_file_location(name, path, loader=loader)
            return loader.create_module(spec), loader, path, where  # type: ignore[arg-type]
        except Exception as exc:  # another libc, another architecture, noexec...
            errors.append(f"{where}: {exc}")
        finally:
            done()
    raise ImportError("; ".join(errors))


def _host_file(accelerator: dict[str, Any], address: str) -> tuple[str, Any]:
    # The host's own binary, if this process sees the same bytes at the same path.
    path, data = accelerator.get("path") or "", accelerator["data"]
    with open(path, "rb") as handle:
        if handle.read(len(data) + 1) != data:
            raise ValueError("another file at the host's path")
    return path, lambda: None


def _memory_file(accelerator: dict[str, Any], address: str) -> tuple[str, Any]:
    # MFD_EXEC (0x10): kernels that restrict executable memfds want it said; older ones
    # refuse the unknown flag, so ask again without it.
    try:
        fd = os.memfd_create("async-inspect-accel", os.MFD_CLOEXEC | 0x10)
    except OSError:
        fd = os.memfd_create("async-inspect-accel", os.MFD_CLOEXEC)
    try:
        _write_all(fd, accelerator["data"])
    except BaseException:
        os.close(fd)
        raise
    return f"/proc/self/fd/{fd}", lambda: os.close(fd)  # the mapping outlives the fd


def _folder_file(accelerator: dict[str, Any], address: str) -> tuple[str, Any]:
    import tempfile

    folder = os.path.dirname(address) if address and not address.startswith("@") else None
    fd, path = tempfile.mkstemp(prefix="_accel-", suffix=".abi3.so", dir=folder)
    try:
        _write_all(fd, accelerator["data"])
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)

    def remove() -> None:  # the mapping outlives the file
        try:
            os.unlink(path)
        except OSError:
            pass

    return path, remove


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
