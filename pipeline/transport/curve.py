"""CURVE encryption and authentication for graphs on tcp.

Each machine of a graph has a key pair, made by `drivecast keys DIR NAME...`: `DIR/NAME.key` (public,
shareable) and `DIR/NAME.key_secret` (secret, mode 0600; copy it only to that machine). A node's
publishers are CURVE servers with their machine's secret key; its subscribers are CURVE clients that
know the publishing machine's public key, so traffic is encrypted and the subscriber knows whom it
talks to. A ZAP handler on each publisher accepts only clients whose public key is in `DIR/*.key`:
a peer with any other key is refused, and the refusal is logged (once per key).

A graph on tcp on one machine without `security:` gets a key pair made for its run, in its 0700 run
directory (any local user can reach a loopback port); only `insecure: true` sends plaintext.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from pipeline.errors import ConfigError

__all__ = ["Curve", "generate_keys"]

log = logging.getLogger("security")


def generate_keys(keys_dir: Path, names: list[str]) -> list[Path]:
    """Make a key pair per name; the secret files are readable by their owner only."""
    made = []
    old = os.umask(0o077)  # secrets are never readable by others, not even for a moment
    try:
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in names:
            if (keys_dir / f"{name}.key_secret").exists():
                raise ConfigError(f"{keys_dir / (name + '.key_secret')}: exists; remove it to make a new key pair")
            public, secret = zmq.auth.create_certificates(keys_dir, name)
            os.chmod(public, 0o644)
            made += [Path(public), Path(secret)]
    finally:
        os.umask(old)
    return made


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        mode = path.stat().st_mode if secret else 0
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:  # OSError: also a name longer than the OS allows
        raise ConfigError(f"{path}: cannot load CURVE {'secret ' if secret else ''}key: {exc}") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: secret key is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    if secret and not sec:
        raise ConfigError(f"{path}: holds no secret key (expected the NAME.key_secret file)")
    return public, sec


class _Allowed:
    """ZAP credentials callback: allow known public keys, log each unknown one once."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys = set(zmq.auth.load_certificates(keys_dir))
        self.refused: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        if key not in self.refused:
            self.refused.add(key)
            log.warning("refused a peer with unknown CURVE key %s", key.decode(errors="replace"))
        return False


class Curve:
    """The CURVE settings of one machine: its own key pair and the peers' public keys."""

    def __init__(self, keys_dir: Path, machine: str) -> None:
        self.keys_dir = keys_dir
        self.machine = machine
        self.public, self.secret = _load(keys_dir / f"{machine}.key_secret", secret=True)
        self._auth: ThreadAuthenticator | None = None

    def server_key(self, machine: str) -> bytes:
        return _load(self.keys_dir / f"{machine}.key", secret=False)[0]

    def start_authenticator(self, ctx: zmq.Context[Any]) -> None:
        """One ZAP handler per context checks every client of every publisher in this process."""
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=_Allowed(self.keys_dir))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def make_server(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def make_client(self, sock: zmq.Socket[Any], server_machine: str) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_key(server_machine)
