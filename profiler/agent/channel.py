"""The agent's socket to the collector: whole frames out, control frames in.

Only the sender thread writes during normal operation; the lock makes the final flush at
exit (on the main thread) safe too. Every write has a timeout, so a stuck collector costs
the sender thread a few seconds, never the application.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any

from .. import wire

__all__ = ["Channel", "connect"]

SEND_TIMEOUT = 5.0


def connect(address: str, timeout: float = 2.0) -> socket.socket:
    """A connected Unix stream socket; `@name` is an abstract-namespace address."""
    target = "\0" + address[1:] if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.settimeout(SEND_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


class Channel:
    """Frames over one connection; `broken` once any I/O on it failed."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()
        self._decoder = wire.FrameDecoder(wire.COLLECTOR_KINDS)
        self.broken = False
        self.bytes_sent = 0

    @property
    def connected(self) -> bool:
        """True while the connection is open and has not failed."""
        return self._sock is not None and not self.broken

    def send(self, kind: int, body: Any) -> bool:
        """Send one frame; False (and `broken`) if the collector is gone."""
        return self.send_frame(wire.encode_frame(kind, body))

    def send_frame(self, data: bytes) -> bool:
        """Send one complete frame (wire.encode_frame's); False (and `broken`) if the
        collector is gone."""
        with self._lock:
            sock = self._sock
            if sock is None or self.broken:
                return False
            try:
                sock.sendall(data)
            except OSError:
                self.broken = True
                return False
        self.bytes_sent += len(data)
        return True

    def receive(self) -> list[tuple[int, Any]]:
        """Control frames that have arrived, without waiting. A closed peer sets `broken`."""
        sock = self._sock
        if sock is None or self.broken:
            return []
        frames: list[tuple[int, Any]] = []
        try:
            while select.select([sock], [], [], 0)[0]:
                data = sock.recv(65536)
                if not data:
                    self.broken = True
                    break
                frames.extend(self._decoder.feed(data))
        except (OSError, wire.WireError):
            self.broken = True
        return frames

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
