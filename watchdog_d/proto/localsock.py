"""The agent's unix socket: the transport of the messages in ``local`` (one JSON line each).

The socket is created 0660 in the agent's runtime directory; a peer's uid comes
from SO_PEERCRED, never from the message.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from typing import Callable

from .local import Message, decode, encode

MAX_LINE = 1 << 20


class Conn:
    """One end of a connection; send() is thread-safe, recv() is for one reader."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = b""
        self._wlock = threading.Lock()
        self.closed = False

    def send(self, msg: Message) -> bool:
        data = encode(msg)
        try:
            with self._wlock:
                self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def recv(self, timeout: float | None = None) -> Message | None:
        """Next message; None on EOF (or a line over MAX_LINE). Raises TimeoutError when
        nothing came in time, local.MessageError for a line that is no valid message (the
        line is consumed: the next call reads on)."""
        try:
            self.sock.settimeout(timeout)
        except OSError:            # closed under us (another thread's close()): EOF
            self.closed = True
            return None
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError from None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                self.closed = True
                return None
        line, self._buf = self._buf.split(b"\n", 1)
        return decode(line)

    def peer(self) -> tuple[int, int, int]:
        """(pid, uid, gid) of the process at the other end."""
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def connect(path: str, timeout: float = 3.0) -> Conn:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return Conn(sock)


class Server:
    """Accepts wrappers; runs ``handler(conn)`` in a thread per connection."""

    def __init__(self, path: str, handler: Callable[[Conn], None]):
        self.path = path
        self.handler = handler
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)   # created 0660, no window where it is wider
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        self.sock.listen(64)
        self._thread = threading.Thread(target=self._accept, name="agent-socket", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handler, args=(Conn(sock),), daemon=True).start()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the accept() thread
        except OSError:
            pass
        try:
            self.sock.close()
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass
