"""Against a real Mosquitto: TLS, passwords, the ACL of deploy/, the Last Will, the harness.

Where mosquitto 2.0.11 answers differently to MQTT 3.1.1 and 5, each test says so: a PUBLISH
the ACL refuses gets PUBACK "not authorized" (0x87) under MQTT 5 but a plain PUBACK under
3.1.1 (dropped all the same, and logged "Denied PUBLISH"). So "never delivered" is checked on
a subscriber for both protocols, with a later allowed message as the barrier: the broker is
single-threaded and keeps one publisher's order, so once the later message has arrived the
refused one would have arrived before it.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests import broker as broker_module
from tests.broker import (
    ACL_EXAMPLE,
    HOST,
    PROTOCOLS,
    BrokerError,
    ClientTls,
    Mosquitto,
    ProbeClient,
    ProbeError,
    TlsListener,
    find_program,
    live_broker_pids,
    render_config,
    write_password_file,
)
from tests.certs import CertPair, CertSet, make_ca, make_client_cert

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_CONF = REPO / "deploy" / "mosquitto" / "eyepiece.conf"
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code; paho maps MQTT 3.1.1's CONNACK 5 onto it too
# What mosquitto writes in its CONNACK for a bad password: 3.1.1 return code, 5 reason code.
RAW_CONNACK_REFUSED = {"3.1.1": 5, "5": NOT_AUTHORIZED}


# ------------------------------------------------------------------------ helpers


def client_for(b: Mosquitto, user: str | None, protocol: str, *, password: str | None = None,
               tls: ClientTls | None = None, tag: str = "") -> ProbeClient:
    """A probe logged in as ``user``: its real password unless one is given, the broker's CA.

    ``tag`` tells apart two connections of one user (same client id: one would evict the
    other).
    """
    if tls is None and b.tls is not None:
        tls = ClientTls(b.tls.ca)
    if user is not None and password is None:
        password = b.users[user]
    return ProbeClient(b.port, protocol=protocol, client_id=f"{user or 'anon'}{tag}-{protocol}",
                       username=user, password=password, tls=tls)


def denied_topics(b: Mosquitto) -> list[str]:
    """Topics of every PUBLISH the broker has refused, from its log."""
    return re.findall(r"Denied PUBLISH from \S+ \([^']*'([^']*)'", b.log())


def processes_with_config(config: Path) -> list[int]:
    """Process ids whose command line holds ``config`` (a broker started on that file)."""
    wanted = str(config).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if wanted in args:
            pids.append(int(entry.name))
    return pids


# ----------------------------------------------------------------- the harness itself


def test_render_config_plain_is_anonymous_and_without_persistence() -> None:
    lines = render_config(1234).splitlines()
    assert f"listener 1234 {HOST}" in lines
    assert "allow_anonymous true" in lines
    assert "persistence false" in lines
    assert not [line for line in lines if line.startswith(("password_file", "acl_file",
                                                           "cafile", "certfile"))]


def test_render_config_secure_lists_every_file(tmp_path: Path) -> None:
    tls = TlsListener(tmp_path / "ca.crt", tmp_path / "s.crt", tmp_path / "s.key",
                      require_certificate=True)
    lines = render_config(1234, password_file=tmp_path / "pw", acl_file=ACL_EXAMPLE, tls=tls,
                          persistence_dir=tmp_path / "db").splitlines()
    for expected in ("allow_anonymous false", f"password_file {tmp_path / 'pw'}",
                     f"acl_file {ACL_EXAMPLE}", f"cafile {tmp_path / 'ca.crt'}",
                     f"certfile {tmp_path / 's.crt'}", f"keyfile {tmp_path / 's.key'}",
                     "require_certificate true", "persistence true",
                     f"persistence_location {tmp_path / 'db'}/"):
        assert expected in lines


def test_missing_mosquitto_fails_with_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker_module, "_SBIN_DIRS", ())
    with pytest.raises(BrokerError, match=r"mosquitto is not installed.*make test"):
        find_program("mosquitto")
    # The fixtures turn that into a failed test, never a skip.
    with pytest.raises(pytest.fail.Exception, match="make test"):
        broker_module._started(Mosquitto(tmp_path / "b"))


def test_broken_config_fails_with_the_brokers_log(tmp_path: Path) -> None:
    b = Mosquitto(tmp_path / "b", extra_config=["no_such_option 1"])
    with pytest.raises(BrokerError, match=r"did not start(.|\n)*Unknown configuration variable"):
        b.start()
    assert not b.running


def test_stop_and_start_again_on_the_same_port(broker: Mosquitto) -> None:
    port = broker.port
    with ProbeClient(port).connect_ok() as c:
        assert c.subscribe("t/#").value == 1  # granted QoS 1
    broker.stop()
    assert not broker.running
    with pytest.raises(ConnectionRefusedError):
        ProbeClient(port).connect()
    broker.start()
    assert broker.port == port
    with ProbeClient(port).connect_ok():
        pass
    broker.kill()
    assert not broker.running
    assert broker.log().count("mosquitto version 2.") >= 2  # both starts are in one log


def test_brokers_never_outlive_their_context(tmp_path: Path) -> None:
    b = Mosquitto(tmp_path / "b")
    with pytest.raises(RuntimeError, match="a test failing inside"), b:
        pid = b.pid
        assert pid is not None and processes_with_config(b.config_path) == [pid]
        raise RuntimeError("a test failing inside the with block")
    assert processes_with_config(b.config_path) == []
    assert pid not in live_broker_pids()
    killed = Mosquitto(tmp_path / "killed").start()
    killed_pid = killed.pid
    killed.kill()
    assert processes_with_config(killed.config_path) == []
    assert killed_pid not in live_broker_pids()


@pytest.mark.parametrize("persistence", [True, False])
def test_persistence_keeps_retained_messages_across_a_restart(tmp_path: Path,
                                                              persistence: bool) -> None:
    with Mosquitto(tmp_path / "b", persistence=persistence) as b:
        with ProbeClient(b.port).connect_ok() as pub:
            pub.publish("eyepiece/box-a/status", b"online", retain=True)
        b.stop()
        b.start()
        with ProbeClient(b.port).connect_ok() as sub, ProbeClient(b.port).connect_ok() as pub:
            sub.subscribe("eyepiece/box-a/status")
            # Retained messages are queued with the SUBACK: this one comes after them.
            pub.publish("eyepiece/box-a/status", b"marker")
            sub.wait_message("eyepiece/box-a/status", b"marker")
            payloads = [m.payload for m in sub.messages]
    assert payloads == ([b"online", b"marker"] if persistence else [b"marker"])


# ------------------------------------------------------------ passwords and the ACL


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_password_unknown_user_and_anonymous_are_refused(secure_broker: Mosquitto,
                                                               protocol: str) -> None:
    b = secure_broker
    attempts = [client_for(b, "box-a", protocol, password="not-the-password"),
                client_for(b, "intruder", protocol, password="guess"),
                client_for(b, None, protocol)]
    for probe in attempts:
        rc = probe.connect()
        assert rc.is_failure and rc.value == NOT_AUTHORIZED, str(rc)
    raw = RAW_CONNACK_REFUSED[protocol]
    assert b.log().count(f"(0, {raw})\n") == len(attempts)
    with client_for(b, "box-a", protocol).connect_ok():
        pass  # the right password still works


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_device_cannot_publish_under_another_devices_prefix(secure_broker: Mosquitto,
                                                            protocol: str) -> None:
    b = secure_broker
    with client_for(b, "dashboard", protocol).connect_ok() as dash, \
            client_for(b, "box-a", protocol).connect_ok() as box_a:
        dash.subscribe("eyepiece/#")
        foreign = box_a.publish("eyepiece/box-b/field", b"forged by box-a")
        own = box_a.publish("eyepiece/box-a/field", b"box-a result")
        assert own.value == 0
        dash.wait_message("eyepiece/box-a/field", b"box-a result")
        assert dash.topics() == ["eyepiece/box-a/field"]
    assert foreign.value == (NOT_AUTHORIZED if protocol == "5" else 0)
    assert denied_topics(b) == ["eyepiece/box-b/field"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_only_the_dashboard_commands_a_device(secure_broker: Mosquitto, protocol: str) -> None:
    b = secure_broker
    with client_for(b, "dashboard", protocol).connect_ok() as dash, \
            client_for(b, "box-a", protocol).connect_ok() as box_a, \
            client_for(b, "box-b", protocol).connect_ok() as box_b:
        assert box_b.subscribe("eyepiece/box-b/cmd/#").value == 1
        sneaky = box_a.publish("eyepiece/box-b/cmd/end_case", b"{}")
        allowed = dash.publish("eyepiece/box-b/cmd/ping", b'{"id": 1}')
        assert allowed.value == 0
        box_b.wait_message("eyepiece/box-b/cmd/ping", b'{"id": 1}')
        assert box_b.topics() == ["eyepiece/box-b/cmd/ping"]
    assert sneaky.value == (NOT_AUTHORIZED if protocol == "5" else 0)
    assert denied_topics(b) == ["eyepiece/box-b/cmd/end_case"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_device_reads_only_its_own_commands(secure_broker: Mosquitto, protocol: str) -> None:
    b = secure_broker
    with client_for(b, "dashboard", protocol).connect_ok() as dash, \
            client_for(b, "box-a", protocol).connect_ok() as box_a, \
            client_for(b, "box-b", protocol).connect_ok() as box_b:
        dash.subscribe("eyepiece/#")
        box_a.subscribe("eyepiece/box-a/cmd/#")
        # Subscribing to everything is granted, but the ACL filters every delivery.
        assert box_b.subscribe("#").value == 1
        assert box_a.publish("eyepiece/box-a/cmd/ping/reply", b"pong").value == 0
        dash.publish("eyepiece/box-a/cmd/ping", b"a")
        dash.publish("eyepiece/box-b/cmd/ping", b"b")
        box_a.wait_message("eyepiece/box-a/cmd/ping", b"a")
        box_b.wait_message("eyepiece/box-b/cmd/ping", b"b")
        dash.wait_message("eyepiece/box-b/cmd/ping", b"b")
        # box-a never gets its own reply back as if it were a command, nor box-b's traffic.
        assert box_a.topics() == ["eyepiece/box-a/cmd/ping"]
        assert box_b.topics() == ["eyepiece/box-b/cmd/ping"]
        assert dash.topics() == ["eyepiece/box-a/cmd/ping/reply", "eyepiece/box-a/cmd/ping",
                                 "eyepiece/box-b/cmd/ping"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dashboard_cannot_forge_results_or_replies(secure_broker: Mosquitto,
                                                   protocol: str) -> None:
    b = secure_broker
    with client_for(b, "dashboard", protocol).connect_ok() as dash, \
            client_for(b, "dashboard", protocol, tag="-reader").connect_ok() as reader:
        reader.subscribe("eyepiece/#")
        codes = [dash.publish(topic, b"forged").value
                 for topic in ("eyepiece/box-a/field", "eyepiece/box-a/cmd/ping/reply")]
        dash.publish("eyepiece/box-a/cmd/ping", b"real")
        reader.wait_message("eyepiece/box-a/cmd/ping", b"real")
        assert reader.topics() == ["eyepiece/box-a/cmd/ping"]
    assert codes == [NOT_AUTHORIZED if protocol == "5" else 0] * 2
    assert denied_topics(b) == ["eyepiece/box-a/field", "eyepiece/box-a/cmd/ping/reply"]


# ---------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_trusts_the_generated_ca_only(secure_broker: Mosquitto, tls_certs: CertSet,
                                          protocol: str) -> None:
    b = secure_broker
    with client_for(b, "box-a", protocol, tls=ClientTls(tls_certs.ca.cert)).connect_ok():
        pass
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        client_for(b, "box-a", protocol, tls=ClientTls(tls_certs.other_ca.cert)).connect()
    # Plain MQTT on the TLS port: the broker hangs up without a CONNACK.
    plain = ProbeClient(b.port, protocol=protocol, username="box-a",
                        password=b.users["box-a"])
    with pytest.raises(ProbeError, match="closed the connection before its CONNACK"):
        plain.connect()


@pytest.fixture
def mutual_tls_broker(tmp_path: Path, tls_certs: CertSet) -> Iterator[Mosquitto]:
    """The secure broker with require_certificate: a client certificate is mandatory."""
    b = Mosquitto(tmp_path / "mtls", users={"box-a": "box-a-password"}, acl_file=ACL_EXAMPLE,
                  tls=TlsListener.from_certs(tls_certs, require_certificate=True))
    with b:
        yield b


def test_mutual_tls_needs_a_certificate_from_the_ca(mutual_tls_broker: Mosquitto,
                                                    tls_certs: CertSet, tmp_path: Path) -> None:
    b = mutual_tls_broker
    mine = tls_certs.clients["box-a"]
    with client_for(b, "box-a", "5", tls=ClientTls(tls_certs.ca.cert, mine.cert,
                                                   mine.key)).connect_ok():
        pass
    with pytest.raises(ProbeError, match="closed the connection before its CONNACK"):
        client_for(b, "box-a", "5", tls=ClientTls(tls_certs.ca.cert)).connect()
    assert "peer did not return a certificate" in b.log()
    rogue_ca = make_ca(tmp_path / "rogue", "rogue-ca")
    rogue = make_client_cert(tmp_path / "rogue", rogue_ca, "box-a")
    # TLS 1.3: the broker checks the client's certificate after the client's handshake ends.
    with pytest.raises(ProbeError, match="closed the connection before its CONNACK"):
        client_for(b, "box-a", "5", tls=ClientTls(tls_certs.ca.cert, rogue.cert,
                                                  rogue.key)).connect()
    assert "certificate verify failed" in b.log()


# ------------------------------------------------------------- the production config


def localise(conf: str, values: Mapping[str, str], extra: list[str]) -> str:
    """``conf`` with the value of each key in ``values`` replaced; every key must be there."""
    out, seen = [], set()
    for line in conf.splitlines():
        key = line.split(" ", 1)[0]
        if key in values:
            if key in seen:
                raise AssertionError(f"{PRODUCTION_CONF.name}: '{key}' set twice")
            seen.add(key)
            line = f"{key} {values[key]}"
        out.append(line)
    missing = set(values) - seen
    assert not missing, f"{PRODUCTION_CONF.name} has no line for {sorted(missing)}"
    return "\n".join(out + extra) + "\n"


def production_broker(workdir: Path, certs: CertSet, users: Mapping[str, str]) -> Mosquitto:
    """deploy/mosquitto/eyepiece.conf with its paths moved into ``workdir``."""
    workdir.mkdir(parents=True)
    passwords = write_password_file(workdir / "eyepiece.passwd", users)
    (workdir / "db").mkdir()
    me = render_config(0).splitlines()
    user_line = next(line for line in me if line.startswith("user "))

    def config(port: int) -> str:
        return localise(PRODUCTION_CONF.read_text(encoding="utf-8"), {
            "listener": f"{port} {HOST}", "password_file": str(passwords),
            "acl_file": str(ACL_EXAMPLE), "cafile": str(certs.ca.cert),
            "certfile": str(certs.server.cert), "keyfile": str(certs.server.key),
            "persistence_location": f"{workdir / 'db'}/", "log_dest": "stderr",
        }, [user_line])

    return Mosquitto(workdir, users=users, tls=TlsListener.from_certs(certs),
                     config_factory=config)


def test_production_config_runs_and_enforces_tls_passwords_and_acl(
        tmp_path: Path, tls_certs: CertSet) -> None:
    users = {"dashboard": "dashboard-pw", "box-a": "box-a-pw", "box-b": "box-b-pw"}

    def tls(name: str) -> ClientTls:
        pair: CertPair = tls_certs.clients[name]
        return ClientTls(tls_certs.ca.cert, pair.cert, pair.key)

    with production_broker(tmp_path / "prod", tls_certs, users) as b:
        assert client_for(b, "box-a", "5", password="wrong", tls=tls("box-a")).connect().value \
            == NOT_AUTHORIZED
        with pytest.raises(ProbeError):  # require_certificate: no client certificate, no entry
            client_for(b, "box-a", "5", tls=ClientTls(tls_certs.ca.cert)).connect()
        with client_for(b, "dashboard", "5", tls=tls("dashboard")).connect_ok() as dash, \
                client_for(b, "box-a", "5", tls=tls("box-a")).connect_ok() as box_a:
            dash.subscribe("eyepiece/#")
            assert box_a.publish("eyepiece/box-b/status", b"x").value == NOT_AUTHORIZED
            assert box_a.publish("eyepiece/box-a/status", b"online", retain=True).value == 0
            dash.wait_message("eyepiece/box-a/status", b"online")
        b.stop()  # a clean stop writes the persistence database
        assert (tmp_path / "prod" / "db" / "mosquitto.db").is_file()


# ----------------------------------------------------------------------- Last Will

WILL_CLIENT = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    port, topic, protocol = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="will-" + protocol,
                    protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    c.will_set(topic, b"offline", qos=1, retain=True)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    c.publish(topic, b"online", qos=1, retain=True).wait_for_publish(5)
    print("ready", flush=True)
    time.sleep(60)
""")


def read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of the child's stdout, or an assertion error after ``timeout_s``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"the child printed nothing within {timeout_s} s")
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_last_will_is_published_when_the_client_process_is_killed(broker: Mosquitto,
                                                                  protocol: str) -> None:
    topic = "eyepiece/box-a/status"
    with ProbeClient(broker.port, protocol=protocol).connect_ok() as watcher:
        watcher.subscribe(topic)
        proc = subprocess.Popen([sys.executable, "-c", WILL_CLIENT, str(broker.port), topic,
                                 protocol], stdout=subprocess.PIPE, text=True)
        try:
            assert read_line(proc, 10) == "ready"
            watcher.wait_message(topic, b"online")
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(5) == -signal.SIGKILL
            watcher.wait_message(topic, b"offline")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # Retained: whoever subscribes later learns the box is offline.
    with ProbeClient(broker.port, protocol=protocol).connect_ok() as late:
        late.subscribe(topic)
        assert late.wait_message(topic).payload == b"offline"
