"""Bells: a pipe per subscriber that the publisher writes to when it stores a message.

ZeroMQ wakes a subscriber through three threads; one pipe write wakes it directly. A subscriber
hands the write end of its `Bell` to the publisher of each segment it maps, over a unix socket in
the run directory (`bell_path`, mode 0600). The publisher's `Bells` takes only a non-blocking
pipe's write end from a peer of its own user, 64 at most, forgets it when the connection ends, and
rings from a notifier thread (see `Bells.kick`). A bell only speeds up what ZeroMQ delivers anyway.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path

__all__ = ["BELLS_POSSIBLE", "Bell", "Bells", "bell_path", "hand_in"]

BELLS_POSSIBLE = hasattr(os, "eventfd") and sys.platform.startswith("linux")
_MAX_BELLS = 64  # subscribers' bells one publisher rings at most (each costs it two fds)
_HAND_IN_S = 1.0  # longest a connection to the bell socket may take to send its bell
_UNIX_PATH_MAX = 108


def bell_path(run_dir: Path, topic: str) -> Path:
    """The publisher's unix socket where subscribers hand in their bells: in the run directory,
    which only its owner can enter (segments may live in the world-writable /dev/shm)."""
    return Path(run_dir) / f"{topic.replace('/', '.')}.bell"


class Bell:
    """A subscriber's bell: a non-blocking pipe. The publisher gets the write end; we keep one
    too, so that the pipe never reads as closed (poll() would then never wait)."""

    def __init__(self) -> None:
        self.fd, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def drain(self) -> None:
        """Empty the pipe, so that poll() waits for the next ring."""
        with contextlib.suppress(OSError):
            while len(os.read(self.fd, 4096)) == 4096:
                pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.write_end)


def hand_in(bell: Bell, path: Path) -> socket.socket | None:
    """Give `bell` to the publisher listening at `path`; the connection stays open while the bell
    is in use (its end tells the publisher to forget the bell). None if that fails: messages then
    keep coming over ZeroMQ alone."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(0.05)
        conn.connect(str(path))
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            raise PermissionError(f"{path}: the publisher is another user")
        socket.send_fds(conn, [b"bell"], [bell.write_end])
        return conn
    except OSError:
        conn.close()
        return None


class Bells:
    """The publisher's side: the listening socket, the subscribers' pipes (`fds`), and the
    notifier thread that rings them when `kick`ed."""

    def __init__(self, run_dir: Path, topic: str, name: str) -> None:
        self.fds: list[int] = []
        self._name = name
        self._bells: list[tuple[socket.socket, int]] = []  # (connection, pipe): EOF = subscriber gone
        self._waiting: list[tuple[socket.socket, float]] = []  # connections whose bell has not come yet
        self._lock = threading.Lock()  # keeps an fd from closing mid-ring
        self._kick = -1  # eventfd that wakes the notifier thread (made with the first bell)
        self._notifier: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._poll = select.poll()  # the listener and the connections
        self._path = bell_path(run_dir, topic)
        self._ino = -1
        if BELLS_POSSIBLE and len(str(self._path)) < _UNIX_PATH_MAX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)  # an earlier incarnation's, after a kill -9
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                listener.bind(str(self._path))
                os.chmod(self._path, 0o600)
                self._ino = os.stat(self._path).st_ino
                listener.listen(_MAX_BELLS)
                self._listener = listener
                self._poll.register(listener, select.POLLIN)
            except OSError:
                listener.close()

    def accept(self) -> None:
        """Take the bells handed in since the last call and forget those of subscribers that went
        away. One poll() when nothing changed; never waits: a connection whose bell has not
        arrived yet is looked at again next time, and dropped after `_HAND_IN_S`."""
        if self._listener is None or not (self._poll.poll(0) or self._waiting):
            return
        alive: list[tuple[socket.socket, int]] = []
        dead: list[tuple[socket.socket, int]] = []
        for bell in self._bells:
            try:
                gone = bell[0].recv(1, socket.MSG_DONTWAIT) == b""  # they never send: readable = gone
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            (dead if gone else alive).append(bell)
        now = time.monotonic()
        while len(alive) + len(self._waiting) < _MAX_BELLS:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # none waiting (or out of fds: try again later)
                break
            conn.setblocking(False)
            self._poll.register(conn, select.POLLIN)
            self._waiting.append((conn, now + _HAND_IN_S))
        waiting = []
        for conn, deadline in self._waiting:
            try:
                fd = _take_bell(conn)
            except BlockingIOError:
                if now < deadline:
                    waiting.append((conn, deadline))
                    continue
                fd = None
            if fd is None:
                dead.append((conn, -1))
            else:
                alive.append((conn, fd))
        self._waiting = waiting
        if alive and self._notifier is None:
            self._kick = os.eventfd(0, os.EFD_CLOEXEC)
            self._notifier = threading.Thread(target=self._notify_loop, name=f"bells {self._name}", daemon=True)
            self._notifier.start()
        for conn, _ in dead:
            self._poll.unregister(conn)
        with self._lock:
            self._bells = alive
            self.fds = [fd for _, fd in alive]
            _close_bells(dead)

    def kick(self) -> None:
        """Have the notifier thread ring every bell (only while `fds` is not empty)."""
        os.eventfd_write(self._kick, 1)

    def _ring(self) -> None:
        """One byte down each subscriber's pipe (a full pipe already says "look")."""
        with self._lock:
            for fd in self.fds:
                # full, or its reader is gone (its connection tells, and it is dropped): no matter
                with contextlib.suppress(OSError):
                    os.write(fd, b"\0")

    def _notify_loop(self) -> None:
        """Rings the bells whenever kicked. Not the publishing thread: the kernel runs a task
        woken through a pipe on the waker's CPU, and the publisher's is busy with the copy;
        rung from here, the subscriber wakes on another CPU and decodes while the copy goes on
        (numpy releases the GIL while it copies)."""
        while True:
            try:
                os.eventfd_read(self._kick)
            except OSError:
                return
            if self._notifier is None:
                return
            self._ring()

    def close(self) -> None:
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            os.eventfd_write(self._kick, 1)
            notifier.join(1.0)
            if not notifier.is_alive():  # else it may still read it: leave the fd to the process
                os.close(self._kick)
        with self._lock:
            _close_bells(self._bells + [(conn, -1) for conn, _ in self._waiting])
            self._bells, self.fds, self._waiting = [], [], []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self._path).st_ino == self._ino:  # not a successor's (a late close)
                    os.unlink(self._path)


def _take_bell(conn: socket.socket) -> int | None:
    """The pipe a subscriber of this user handed in on `conn`, reopened write-only, non-blocking
    and close-on-exec through /proc (a file description of our own: the sender cannot make our
    writes block), or None for anything else. Raises BlockingIOError while nothing has arrived."""
    fds: list[int] = []
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 8, 1, socket.MSG_CMSG_CLOEXEC)
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid == os.getuid() and msg == b"bell" and len(fds) == 1 and stat.S_ISFIFO(os.fstat(fds[0]).st_mode):
            return os.open(f"/proc/self/fd/{fds[0]}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BlockingIOError:
        raise
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)
    return None


def _close_bells(bells: list[tuple[socket.socket, int]]) -> None:
    for conn, fd in bells:
        conn.close()
        if fd >= 0:
            os.close(fd)
