"""A real Mosquitto for the tests: plain or TLS + password + ACL, on a free port.

``Mosquitto`` writes a config into a folder of its own, starts ``mosquitto -c`` as a child
process, waits until the port accepts connections and is a context manager that always stops
it. ``stop()`` / ``kill()`` and ``start()`` again on the same port serve the outage tests.
``ProbeClient`` is a small synchronous paho-mqtt 2 client for asserting what a broker does.

A missing mosquitto fails the tests with how to install it: a broker test that skips would
let a security regression pass unseen.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.certs import CertSet

REPO = Path(__file__).resolve().parents[1]
ACL_EXAMPLE = REPO / "deploy" / "mosquitto" / "acl.example"
HOST = "127.0.0.1"
INSTALL_HINT = ("install it with `make test` (installs Debian's mosquitto package as root) or "
                "`apt-get install mosquitto`")
# Debian installs the broker in /usr/sbin, which is not on every user's PATH.
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
PROTOCOLS = ("3.1.1", "5")  # the values of MqttConfig.protocol
SECURE_USERS = ("dashboard", "box-a", "box-b")
WAIT_S = 5.0  # longest wait for anything a local broker does; far above what it needs

# Brokers started by this module and not yet stopped: the safety net at exit, and the leak
# check's reference.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The broker could not be found, started or stopped; the message says why."""


def find_program(name: str) -> str:
    """Path of a mosquitto program (``mosquitto``, ``mosquitto_passwd``) or a clear error."""
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    found = shutil.which(name, path=path)
    if found is None:
        raise BrokerError(f"{name} is not installed: the MQTT tests need a real broker; "
                          f"{INSTALL_HINT}")
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int, timeout_s: float = 0.2) -> bool:
    """True when something accepts a TCP connection on ``HOST:port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class TlsListener:
    """The broker side of TLS: its CA (to check client certificates), certificate and key."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False

    @classmethod
    def from_certs(cls, certs: CertSet, *, require_certificate: bool = False) -> TlsListener:
        """The listener files of a generated :class:`CertSet`."""
        return cls(certs.ca.cert, certs.server.cert, certs.server.key, require_certificate)


def render_config(port: int, *, password_file: Path | None = None,
                  acl_file: Path | None = None, tls: TlsListener | None = None,
                  persistence_dir: Path | None = None, extra: Sequence[str] = ()) -> str:
    """The text of a mosquitto 2.0 config for one listener on ``127.0.0.1:port``."""
    lines = [
        f"listener {port} {HOST}",
        # Without a password file the test broker is anonymous (2.0 refuses that by default).
        f"allow_anonymous {'false' if password_file else 'true'}",
        # Run as root (containers, CI), mosquitto would switch to the "mosquitto" user, which
        # cannot read the test's files; as any other user this line has no effect.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        "log_dest stderr",
        "log_type all",
        "connection_messages true",
    ]
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    if tls is not None:
        lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}",
                  f"require_certificate {'true' if tls.require_certificate else 'false'}"]
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/"]
    else:
        lines.append("persistence false")
    lines += list(extra)
    return "\n".join(lines) + "\n"


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file for ``users`` (name -> password), hashed by mosquitto_passwd."""
    if not users:
        raise BrokerError("a password file needs at least one user")
    bad = [name for name in users if ":" in name or not name]
    if bad:
        raise BrokerError(f"user names must be non-empty and contain no ':': {bad}")
    path.write_text("".join(f"{name}:{pw}\n" for name, pw in users.items()), encoding="utf-8")
    path.chmod(0o600)
    # -U hashes every plain-text line in place: one process for all users.
    proc = subprocess.run([find_program("mosquitto_passwd"), "-U", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise BrokerError(f"mosquitto_passwd -U {path} failed ({proc.returncode}): "
                          f"{proc.stdout}{proc.stderr}")
    return path


class Mosquitto:
    """A mosquitto child process on a free port of 127.0.0.1, always stopped on exit.

    :param workdir: folder for its config, log, password file and persistence database.
    :param users: user name -> password; ``None`` = anonymous clients allowed.
    :param acl_file: a mosquitto ACL file (e.g. ``deploy/mosquitto/acl.example``).
    :param tls: serve TLS on the port instead of plain MQTT.
    :param persistence: keep sessions and queued messages on disk across restarts.
    :param extra_config: more mosquitto.conf lines (e.g. ``max_queued_messages 10``).
    :param config_factory: port -> the whole config text, instead of one rendered from the
        options above (to run a config file of the project, e.g. ``deploy/mosquitto``'s).
    """

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 acl_file: Path | None = None, tls: TlsListener | None = None,
                 persistence: bool = False, extra_config: Sequence[str] = (),
                 config_factory: Callable[[int], str] | None = None,
                 start_timeout_s: float = WAIT_S) -> None:
        self.workdir = workdir
        self.users: Mapping[str, str] = dict(users or {})
        self.acl_file = acl_file
        self.tls = tls
        self.persistence = persistence
        self.extra_config = tuple(extra_config)
        self.config_factory = config_factory
        self.start_timeout_s = start_timeout_s
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The port, fixed at the first start and kept by every restart."""
        if self._port is None:
            raise BrokerError("the broker has no port before its first start()")
        return self._port

    @property
    def pid(self) -> int | None:
        """The running broker's process id; ``None`` when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        """``mqtt://`` or ``mqtts://`` URL of this broker, as ``mqtt.url`` takes it."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{HOST}:{self.port}"

    def log(self) -> str:
        """Everything the broker has logged so far, over all its starts."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Mosquitto:
        """Start the broker (same port as before, if any) and wait until it accepts clients."""
        if self.running:
            raise BrokerError(f"the broker on port {self.port} is already running")
        first = self._port is None
        # A port picked by free_port() can be taken before mosquitto binds it: only the first
        # start may move to another one; a restart must keep its port or fail.
        for _ in range(3 if first else 1):
            if first:
                self._port = free_port()
            self._launch()
            if self._wait_ready() or not first or "Address already in use" not in self.log():
                break
        if not self.running:
            raise BrokerError(f"mosquitto did not start on port {self._port}; its log:\n"
                              f"{self.log()}")
        return self

    def stop(self, timeout_s: float = WAIT_S) -> None:
        """SIGTERM and wait (mosquitto saves its database); SIGKILL if it will not stop."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._forget()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BrokerError(f"mosquitto on port {self.port} ignored SIGTERM for "
                              f"{timeout_s} s and was killed") from None
        self._forget()

    def kill(self) -> None:
        """SIGKILL: the broker dies at once, as in a power cut (no database save)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
        self._forget()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -------------------------------------------------------------- internals

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config_factory is not None:
            self.config_path.write_text(self.config_factory(self.port), encoding="utf-8")
            return
        password_file = None
        if self.users:
            password_file = write_password_file(self.workdir / "passwords", self.users)
        db_dir = None
        if self.persistence:
            db_dir = self.workdir / "db"
            db_dir.mkdir(exist_ok=True)
        self.config_path.write_text(
            render_config(self.port, password_file=password_file, acl_file=self.acl_file,
                          tls=self.tls, persistence_dir=db_dir, extra=self.extra_config),
            encoding="utf-8")

    def _launch(self) -> None:
        exe = find_program("mosquitto")
        self._write_files()
        with self.log_path.open("ab") as log:
            log.write(f"--- eyepiece test: starting {exe} on port {self.port}\n".encode())
            log.flush()
            self._proc = subprocess.Popen([exe, "-c", str(self.config_path)],
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        _LIVE[self._proc.pid] = self._proc

    def _wait_ready(self) -> bool:
        """Poll the port until the broker accepts; False (process reaped) if it exits."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._forget()
                return False
            if accepts_connections(self.port):
                return True
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not accept connections on port {self.port} within "
                          f"{self.start_timeout_s} s; its log:\n{self.log()}")

    def _forget(self) -> None:
        if self._proc is not None:
            _LIVE.pop(self._proc.pid, None)


def live_broker_pids() -> list[int]:
    """Process ids of brokers this module started that are still running."""
    return [pid for pid, proc in _LIVE.items() if proc.poll() is None]


@atexit.register
def _kill_leftovers() -> None:
    # The safety net for a test run interrupted between start() and stop().
    for proc in list(_LIVE.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)


# ------------------------------------------------------------------ MQTT probe client


@dataclass(frozen=True)
class ClientTls:
    """The client side of TLS: the CA to trust and, for mutual TLS, a certificate and key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


class ProbeError(AssertionError):
    """The broker did not answer a probe as expected (no CONNACK, PUBACK, SUBACK in time)."""


class ProbeClient:
    """A synchronous paho-mqtt 2 client: each call waits for the broker's answer.

    Messages received on subscriptions are kept in ``messages`` (in arrival order).
    """

    def __init__(self, port: int, *, protocol: str = "3.1.1", client_id: str | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: ClientTls | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        self.port = port
        self.protocol = protocol
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
            # A probe reports what the broker did: no silent reconnection behind its back.
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca),
                                certfile=str(tls.cert) if tls.cert else None,
                                keyfile=str(tls.key) if tls.key else None)
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._acks: dict[int, Any] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    # paho callbacks (its network thread) --------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode,
                    _p: Properties | None) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode,
                    _p: Properties | None) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, rcs: list[ReasonCode],
                      _p: Properties | None) -> None:
        with self._cond:
            self._acks[mid] = rcs
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: ReasonCode,
                       _p: Properties | None) -> None:
        with self._cond:
            self.disconnected.set()
            self._cond.notify_all()

    # the synchronous API -----------------------------------------------------

    def _wait(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout_s):
                raise ProbeError(f"no {what} from the broker on port {self.port} within "
                                 f"{timeout_s} s")

    def connect(self, timeout_s: float = WAIT_S) -> ReasonCode:
        """Connect and return the CONNACK's reason code (refused ones too).

        TLS errors raise from here (the handshake happens in paho's connect()).
        """
        self.client.connect(HOST, self.port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnected.is_set(), "CONNACK",
                   timeout_s)
        if self.connack is None:
            # e.g. TLS refused after the handshake (TLS 1.3 checks client certificates late).
            self.close()
            raise ProbeError(f"the broker on port {self.port} closed the connection before "
                             "its CONNACK")
        if self.connack.is_failure:
            self.close()
        return self.connack

    def connect_ok(self, timeout_s: float = WAIT_S) -> ProbeClient:
        """Connect, and fail with the broker's reason unless it accepts."""
        rc = self.connect(timeout_s)
        if rc.is_failure:
            raise ProbeError(f"the broker on port {self.port} refused the connection: {rc}")
        return self

    def subscribe(self, topic: str, qos: int = 1, timeout_s: float = WAIT_S) -> ReasonCode:
        """Subscribe and return the SUBACK's reason code for ``topic``."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ProbeError(f"subscribe({topic!r}) not sent: {mqtt.error_string(result)}")
        self._wait(lambda: mid in self._acks, f"SUBACK for {topic!r}", timeout_s)
        codes: list[ReasonCode] = self._acks.pop(mid)
        return codes[0]

    def publish(self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False,
                timeout_s: float = WAIT_S) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code (MQTT 3.1.1: always success)."""
        if qos != 1:
            raise ValueError("ProbeClient.publish waits for a PUBACK: QoS 1 only")
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ProbeError(f"publish to {topic!r} not sent: {mqtt.error_string(info.rc)}")
        self._wait(lambda: info.mid in self._acks, f"PUBACK for {topic!r}", timeout_s)
        rc: ReasonCode = self._acks.pop(info.mid)
        return rc

    def wait_message(self, topic: str, payload: bytes | None = None,
                     timeout_s: float = WAIT_S) -> mqtt.MQTTMessage:
        """The first message received on ``topic`` (and with ``payload``, if given)."""
        def match() -> mqtt.MQTTMessage | None:
            for msg in self.messages:
                if msg.topic == topic and (payload is None or msg.payload == payload):
                    return msg
            return None

        self._wait(lambda: match() is not None, f"message on {topic!r}", timeout_s)
        found = match()
        assert found is not None
        return found

    def topics(self) -> list[str]:
        """Topics of the messages received so far, in arrival order."""
        with self._cond:
            return [msg.topic for msg in self.messages]

    def close(self) -> None:
        """Disconnect (no Last Will) and stop paho's thread; safe to call twice."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> ProbeClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------- fixtures


def _started(broker: Mosquitto) -> Mosquitto:
    """Start ``broker`` or fail the test with why (mosquitto missing: how to install it)."""
    try:
        return broker.start()
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain broker: anonymous clients, no TLS, no persistence; stopped after the test."""
    b = Mosquitto(tmp_path / "mosquitto")
    try:
        yield _started(b)
    finally:
        b.stop()


@pytest.fixture
def secure_broker(tmp_path: Path, tls_certs: CertSet) -> Iterator[Mosquitto]:
    """TLS (certificates of ``tls_certs``) + password file + ``deploy/mosquitto/acl.example``.

    Users: ``dashboard``, ``box-a``, ``box-b`` with random passwords in ``broker.users``.
    Client certificates are accepted but not required (``Mosquitto(tls=TlsListener(...,
    require_certificate=True))`` for mutual TLS).
    """
    b = Mosquitto(tmp_path / "mosquitto-secure",
                  users={name: secrets.token_urlsafe(12) for name in SECURE_USERS},
                  acl_file=ACL_EXAMPLE, tls=TlsListener.from_certs(tls_certs))
    try:
        yield _started(b)
    finally:
        b.stop()
