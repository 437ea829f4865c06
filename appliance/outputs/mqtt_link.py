"""The box's connection to the hospital broker: birth and will, the outbox, commands in.

Results never travel through paho's memory alone. The recorder commits each result
and its outbox row in one SQLite transaction; this module sends outbox rows in
sequence order and deletes a row only when the broker's PUBACK for it arrives.
Delivery is at least once: after a reconnect everything not yet acknowledged is
sent again, and consumers de-duplicate by ``msg_id`` (docs/mqtt.md).

Threads: paho's network loop (``loop_start``) runs the callbacks; one publisher
thread moves outbox rows to paho. After a reconnect the rows that were waiting
(the backlog) go out at ``mqtt.replay_rate_per_s`` while new results go out at
once, so a long outage never delays the live picture on the dashboard.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from appliance.config import ConfigError, MqttConfig
from appliance.outputs.outbox import Outbox, OutboxMessage
from appliance.outputs.store import StoreError

_log = logging.getLogger(__name__)
# Publisher: how often it looks for new outbox rows when nobody wakes it (a message
# enqueued by another process, or a wake-up missed between two checks).
_IDLE_WAIT_S = 0.2
_RECONNECT_DELAY_S = (1, 30)
_EARLY_ACK_TTL_S = 5.0  # paho's exponential reconnect back-off, min and max


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and whether to use TLS."""

    host: str
    port: int
    tls: bool


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``; ConfigError naming the key."""
    parts = urlparse(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("mqtt.url",
                          f"{url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError("mqtt.url", f"{url!r}: bad port ({exc})") from exc
    return BrokerAddress(parts.hostname, port, tls)


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from its file or environment variable (never logged)."""
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("mqtt.password_file",
                              f"cannot read {cfg.password_file}: {exc.strerror}") from exc
    if cfg.password_env:
        return os.environ.get(cfg.password_env) or None
    return None


@dataclass
class LinkStats:
    """Counters for the metrics topic and the health state."""

    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    sent: int = 0
    acked: int = 0
    last_error: str = ""


class MqttLink:
    """One broker connection; ``start`` once, ``close`` (idempotent) at the end."""

    def __init__(self, cfg: MqttConfig, *, client_id: str, topics: Any, outbox: Outbox,
                 birth: bytes, will: bytes, stopped: bytes,
                 on_command: Callable[[str, bytes], None] | None = None,
                 client_factory: Callable[..., paho.Client] = paho.Client) -> None:
        self.cfg = cfg
        self.address = parse_url(cfg.url)
        self.topics = topics
        self.outbox = outbox
        self.stats = LinkStats()
        self._birth, self._will, self._stopped = birth, will, stopped
        self._on_command = on_command
        self._retained: dict[str, bytes] = {}  # topic → last payload, re-sent on connect
        self._lock = threading.Lock()
        self._in_flight: dict[int, str] = {}  # paho mid → our msg_id
        # PUBACKs that beat the bookkeeping, with when they came: only fresh ones count, so
        # a parked health/metrics acknowledgement can never settle a later message whose
        # packet id (16 bits, reused) happens to match.
        self._early_acks: dict[int, tuple[ReasonCode, float]] = {}
        self._cursor = 0  # highest seq handed to paho on this connection
        self._backlog_end = 0  # rows up to this seq were waiting when we connected
        self._connected = threading.Event()
        self._new_rows = threading.Event()  # set by wake(): something was committed
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        self._client = self._make_client(client_factory, client_id)

    # ------------------------------------------------------------ set-up

    def _make_client(self, factory: Callable[..., paho.Client], client_id: str) -> paho.Client:
        protocol = (MQTTProtocolVersion.MQTTv5 if self.cfg.protocol == "5"
                    else MQTTProtocolVersion.MQTTv311)
        kwargs: dict[str, Any] = {"callback_api_version": CallbackAPIVersion.VERSION2,
                                  "client_id": client_id, "protocol": protocol}
        if protocol is MQTTProtocolVersion.MQTTv311:
            kwargs["clean_session"] = True
        client = factory(**kwargs)
        client.will_set(self.topics.status, self._will, qos=1, retain=True)
        if self.address.tls:
            client.tls_set(ca_certs=self.cfg.tls_ca or None, certfile=self.cfg.tls_cert or None,
                           keyfile=self.cfg.tls_key or None, cert_reqs=ssl.CERT_REQUIRED)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, read_password(self.cfg))
        client.max_inflight_messages_set(self.cfg.max_in_flight)
        client.reconnect_delay_set(*_RECONNECT_DELAY_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (a broker that is down now is retried) and publish."""
        self._client.connect_async(self.address.host, self.address.port,
                                   keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        self._publisher = threading.Thread(target=self._publish_loop, name="eyepiece-mqtt",
                                           daemon=True)
        self._publisher.start()

    def close(self, *, drain_s: float = 5.0) -> None:
        """Send what the outbox holds for up to ``drain_s``, say ``stopped``, disconnect."""
        if self._stop.is_set():
            return
        deadline = time.monotonic() + drain_s
        while (self._connected.is_set() and self.outbox.depth() > 0
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self._stop.set()
        self._new_rows.set()
        if self._publisher is not None:
            self._publisher.join(timeout=5)
        if self._connected.is_set():
            info = self._client.publish(self.topics.status, self._stopped, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError) as exc:
                _log.warning("mqtt: 'stopped' not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------ publishing

    def wake(self) -> None:
        """A message was just committed to the outbox: send it now, not at the next poll."""
        self._new_rows.set()

    def set_birth(self, birth: bytes) -> None:
        """A new retained ``online`` message (the assay changed): sent now and on reconnect."""
        self._birth = birth
        if self._connected.is_set():
            self._client.publish(self.topics.status, birth, qos=1, retain=True)

    def publish_state(self, topic: str, payload: bytes, *, retain: bool) -> bool:
        """Health, metrics: sent now if connected (QoS 1); retained ones again on reconnect.

        Not through the outbox: an old metrics message has no value after an outage, and
        the newest health is re-sent on every connect.
        """
        if retain:
            with self._lock:
                self._retained[topic] = payload
        if not self._connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def _publish_loop(self) -> None:
        next_backlog = time.monotonic()
        while not self._stop.is_set():
            if not self._connected.wait(_IDLE_WAIT_S):
                continue
            with self._lock:
                room = self.cfg.max_in_flight - len(self._in_flight)
                cursor = self._cursor
            rows = self.outbox.pending(after_seq=cursor, limit=max(0, room)) if room > 0 else []
            if not rows:
                self._new_rows.wait(_IDLE_WAIT_S)
                self._new_rows.clear()
                continue
            for row in rows:
                if row.seq <= self._backlog_end:  # a waiting row: at the replay rate
                    delay = next_backlog - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    next_backlog = max(next_backlog, time.monotonic()) + (
                        1.0 / self.cfg.replay_rate_per_s)
                if not self._connected.is_set() or not self._send(row):
                    break

    def _send(self, row: OutboxMessage) -> bool:
        # Never call paho while holding our lock: paho runs on_publish under its own lock,
        # and on_publish takes ours. A PUBACK may therefore beat the bookkeeping below;
        # such early acknowledgements are parked and settled here.
        info = self._client.publish(self.topics.prefix + row.topic_suffix, row.payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.stats.last_error = paho.error_string(info.rc)
            return False
        with self._lock:
            self._cursor = row.seq
            self.stats.sent += 1
            early = self._early_acks.pop(info.mid, None)
            if early is None or time.monotonic() - early[1] >= _EARLY_ACK_TTL_S:
                self._in_flight[info.mid] = row.msg_id
                early = None
        if early is not None:
            self._settle(row.msg_id, early[0])
        return True

    def _settle(self, msg_id: str, reason: ReasonCode) -> None:
        """The broker's answer to one of our messages: delete it from the outbox, or keep it."""
        self._new_rows.set()  # a place in the in-flight window is free again
        if reason.is_failure:  # MQTT 5: refused (e.g. not authorised); kept for a retry
            self.stats.last_error = f"broker refused message {msg_id}: {reason}"
            _log.error("mqtt: broker refused message %s: %s", msg_id, reason)
            return
        try:
            self.outbox.ack(msg_id)
        except StoreError as exc:  # the row stays and goes again: a duplicate, not a loss
            self.stats.last_error = f"outbox: {exc}"
            _log.error("mqtt: delivered message %s could not be marked sent: %s", msg_id, exc)
            return
        self.stats.acked += 1

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f"connection refused: {reason}"
            _log.error("mqtt: broker %s:%d refused the connection: %s", self.address.host,
                       self.address.port, reason)
            return
        with self._lock:
            # Everything not acknowledged goes again, in order (at least once).
            self._in_flight.clear()
            self._early_acks.clear()
            self._cursor = 0
            self._backlog_end = self.outbox.newest_seq()
            retained = dict(self._retained)
        # Subscribe before the birth: the broker handles one client's packets in order, so
        # a dashboard that sees "online" can send a command at once and it is delivered.
        client.subscribe(self.topics.cmd_filter, qos=1)
        client.publish(self.topics.status, self._birth, qos=1, retain=True)
        for topic, payload in retained.items():
            client.publish(topic, payload, qos=1, retain=True)
        self.stats.connected = True
        self.stats.connects += 1
        _log.info("mqtt: connected to %s:%d; %d messages waiting", self.address.host,
                  self.address.port, self.outbox.depth())
        self._connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        self._connected.clear()
        self.stats.connected = False
        self.stats.disconnects += 1
        if not self._stop.is_set():
            self.stats.last_error = f"disconnected: {reason}"
            _log.warning("mqtt: disconnected from %s:%d (%s); results wait in the outbox",
                         self.address.host, self.address.port, reason)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Any) -> None:
        with self._lock:
            msg_id = self._in_flight.pop(mid, None)
            if msg_id is None:  # health/metrics, or ours acknowledged before _send ended
                now = time.monotonic()
                self._early_acks = {m: (r, t) for m, (r, t) in self._early_acks.items()
                                    if now - t < _EARLY_ACK_TTL_S}
                self._early_acks[mid] = (reason, now)
        if msg_id is not None:
            self._settle(msg_id, reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._on_command is None:
            return
        try:
            self._on_command(message.topic, bytes(message.payload))
        except Exception:  # a command must never take the network loop down
            _log.exception("mqtt: command on %s failed", message.topic[:200])
