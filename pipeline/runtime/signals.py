"""Ctrl-C and SIGTERM as a flag: commands stop where files and sockets close cleanly."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While installed, SIGINT and SIGTERM set `signum` (and call `on_stop`) instead of raising
    KeyboardInterrupt or killing the process. Call the object to ask "stop?" (it serves as the
    `stopped` callable of loops and publishers); `restore()` puts the previous handlers back."""

    def __init__(self, on_stop: Callable[[int], None] | None = None) -> None:
        self.signum: int | None = None
        self._on_stop = on_stop
        self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        # A launched node starts with them blocked (pipeline.runtime.launch): one sent while it started is taken now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self._on_stop is not None:
            self._on_stop(signum)

    def __call__(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopSignals:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()
