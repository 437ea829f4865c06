"""The sd_notify protocol: tell systemd that the service is ready, what it is doing, alive.

systemd hands a ``Type=notify`` service the address of a datagram socket in
``$NOTIFY_SOCKET``; each message is one datagram of newline-separated ``KEY=VALUE``
assignments (sd_notify(3)). ``systemd.daemon.notify`` (systemd-python) is used when it
is installed; otherwise the datagram is sent here, which needs nothing but the standard
library. Without ``$NOTIFY_SOCKET`` (a run from a shell, the tests) nothing is sent but
every message is still recorded, so what the service would have said can be checked.

A notification that cannot be sent is logged once per kind of error and never raised:
losing a status line must not stop the scoring (a lost WATCHDOG=1 makes systemd restart
the service, which is the right outcome when the socket is really gone).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

_log = logging.getLogger(__name__)
_RECORDED = 256  # messages kept for inspection; WATCHDOG=1 is sent forever, so bounded


class _Transport(Protocol):
    def send(self, message: str) -> None: ...

    def close(self) -> None: ...


class _NoTransport:
    """No service manager listening: nothing to send."""

    def send(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class _DatagramTransport:
    """One AF_UNIX datagram per message to the socket systemd named."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, message: str) -> None:
        self._sock.sendto(message.encode("utf-8"), self._address)

    def close(self) -> None:
        self._sock.close()


class _SystemdPythonTransport:
    """systemd-python's sd_notify binding (it reads ``$NOTIFY_SOCKET`` itself)."""

    def __init__(self, notify: Callable[[str], bool]) -> None:
        self._notify = notify

    def send(self, message: str) -> None:
        if not self._notify(message):
            raise OSError(f"sd_notify refused {message.splitlines()[0]!r}")

    def close(self) -> None:
        pass


def socket_address(notify_socket: str) -> str:
    """The AF_UNIX address for a ``$NOTIFY_SOCKET`` value.

    A leading "@" names a socket in the abstract namespace, whose address starts with a
    NUL byte. Other schemes (systemd 254's ``vsock:``) are refused by name.
    """
    if not notify_socket:
        raise ValueError("NOTIFY_SOCKET is empty")
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    if not notify_socket.startswith("/"):
        raise ValueError(f"NOTIFY_SOCKET {notify_socket!r} is neither an absolute path nor an "
                         "abstract name (@...); other socket kinds are not supported")
    return notify_socket


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """systemd's watchdog interval (WatchdogSec=) in seconds, None when it is not for us.

    ``WATCHDOG_USEC`` is set by systemd when the unit has a watchdog; ``WATCHDOG_PID``,
    when set, names the process the pings are expected from (a child that inherited the
    environment must not feed its parent's watchdog).
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    want_pid = env.get("WATCHDOG_PID", "")
    if want_pid and want_pid != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        raise ValueError(f"WATCHDOG_USEC must be a whole number of microseconds, "
                         f"got {usec!r}") from None
    if value <= 0:
        raise ValueError(f"WATCHDOG_USEC must be positive, got {value}")
    return value / 1_000_000


def _one_line(text: str) -> str:
    """A STATUS= value: a newline would start another assignment, so lines are joined."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _systemd_notify() -> Callable[[str], bool] | None:
    """systemd-python's ``systemd.daemon.notify`` when it is installed."""
    # By name: the repository's own systemd/ folder (unit files) would otherwise pass
    # for a namespace package to type checkers; at run time a real package wins.
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None
    notify: Callable[[str], bool] = daemon.notify
    return notify


class Notifier:
    """Sends sd_notify messages; see :meth:`from_environment`.

    ``sent`` holds the latest messages as sent (or as they would have been), oldest
    first. Thread-safe; :meth:`close` is idempotent and later messages are only recorded.
    """

    def __init__(self, transport: _Transport, *, watchdog_s: float | None = None,
                 monotonic_usec: Callable[[], int] = _monotonic_usec) -> None:
        self._transport = transport
        self._watchdog_s = watchdog_s
        self._monotonic_usec = monotonic_usec
        self._lock = threading.Lock()
        self._sent: deque[str] = deque(maxlen=_RECORDED)
        self._failed_kinds: set[str] = set()
        self._closed = False
        self.send_errors = 0

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for the service manager named in ``env`` (default: os.environ).

        systemd-python is used only for the process environment, which is the one it
        reads; an explicit ``env`` always gets the datagram socket.
        """
        real_env = env is None
        env = os.environ if env is None else env
        watchdog_s = watchdog_interval_s(env, os.getpid())
        notify_socket = env.get("NOTIFY_SOCKET", "")
        if not notify_socket:
            return cls(_NoTransport(), watchdog_s=watchdog_s)
        binding = _systemd_notify() if real_env else None
        if binding is not None:
            return cls(_SystemdPythonTransport(binding), watchdog_s=watchdog_s)
        return cls(_DatagramTransport(socket_address(notify_socket)), watchdog_s=watchdog_s)

    @property
    def sent(self) -> list[str]:
        """The latest messages, oldest first."""
        with self._lock:
            return list(self._sent)

    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog interval for this process in seconds; None without one."""
        return self._watchdog_s

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is complete: READY=1, with a status line if given."""
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """The one-line state shown by ``systemctl status`` (newlines become spaces)."""
        self._send(None, text)

    def watchdog(self) -> None:
        """Keep-alive ping: WATCHDOG=1."""
        self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> None:
        """Shutdown has begun: STOPPING=1."""
        self._send("STOPPING=1", status)

    def reloading(self, status: str | None = None) -> None:
        """A configuration reload has begun; call :meth:`ready` when it is over.

        MONOTONIC_USEC= goes with RELOADING=1: systemd 253+ matches it against the time
        of ``systemctl reload`` for Type=notify-reload and older ones ignore it.
        """
        self._send(f"RELOADING=1\nMONOTONIC_USEC={self._monotonic_usec()}", status)

    def close(self) -> None:
        """Release the socket (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            transport, self._transport = self._transport, _NoTransport()
        transport.close()

    def _send(self, head: str | None, status: str | None) -> None:
        lines = [head] if head else []
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        message = "\n".join(lines)
        with self._lock:
            self._sent.append(message)
            try:
                self._transport.send(message)
            except OSError as exc:
                self._send_failed(message, exc)

    def _send_failed(self, message: str, exc: OSError) -> None:
        """Count it; log the first of each kind (a ping fails every interval)."""
        self.send_errors += 1
        kind = type(exc).__name__
        if kind not in self._failed_kinds:
            self._failed_kinds.add(kind)
            _log.error("sd_notify: %r could not be sent (%s); the service goes on, further "
                       "%s errors are only counted", message.splitlines()[0], exc, kind)
