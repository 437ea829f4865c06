"""MQTT store-and-forward benchmark: throughput, backlog drain, added latency.

    python -m tools.bench_mqtt [--results 2000] [--backlog 2000] [--out build/bench_mqtt]

Starts a local mosquitto (must be installed: `make test` installs it) on a free
port, and drives the real store + outbox + MqttLink with a real scored field
result (the JSON a dashboard receives). Prints figures, writes a JSON report and a
chart; asserts nothing. One run, one machine: compare ratios, not absolutes.

1. Sustained: results committed (store + outbox, one transaction each) as fast as
   possible while connected; results/s until the last PUBACK.
2. Added latency: from ``ResultStore.add`` returning to the message arriving at a
   subscriber, p50/p95, at a steady 20 results/s.
3. Backlog drain: N results stored while the broker is down, then the broker
   starts; messages/s from reconnect to an empty outbox, at the default
   ``mqtt.replay_rate_per_s`` and with the limit raised.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tqdm import tqdm

from appliance.assays.her2.assay import Her2Assay
from appliance.assays.her2.types import FieldResult
from appliance.capture.frame import Frame
from appliance.config import Config, MqttConfig
from appliance.outputs import mqtt_contract as contract
from appliance.outputs.mqtt_link import MqttLink
from appliance.outputs.outbox import Outbox
from appliance.outputs.result_json import result_to_dict
from appliance.outputs.store import ResultStore
from tools.numbers import save_chart
from tools.synth.her2_fields import FieldSpec, generate_field

DEVICE = "bench-box"


class Broker:
    """mosquitto on a free port of 127.0.0.1 (restartable on the same port)."""

    def __init__(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise SystemExit("mosquitto is not installed (apt install mosquitto, or make test)")
        self.exe = exe
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def real_result() -> FieldResult:
    """One scored generated field: the payload size a dashboard really gets."""
    cfg = Config()
    with Her2Assay.from_config(cfg) as assay:
        image = generate_field(FieldSpec(seed=990_700, target_score="2+")).image
        return assay.score(Frame(image=image, seq=1, timestamp=0.0, source="bench"))


class Arrivals:
    """A subscriber that notes when each seq arrives."""

    def __init__(self, port: int) -> None:
        self.at: dict[int, float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.client.on_connect = lambda c, *_: c.subscribe(f"eyepiece/{DEVICE}/field", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.at.setdefault(json.loads(msg.payload)["seq"], time.monotonic())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def setup(folder: Path, port: int, rate: float) -> tuple[ResultStore, Outbox, MqttLink]:
    m = MqttConfig(url=f"mqtt://127.0.0.1:{port}", device_id=DEVICE, replay_rate_per_s=rate,
                   outbox_max_messages=1_000_000)
    store = ResultStore(folder / "results.sqlite")
    outbox = Outbox(store, max_messages=m.outbox_max_messages,
                    warn_fraction=m.outbox_warn_fraction)
    topics = contract.Topics(f"eyepiece/{DEVICE}/")
    link = MqttLink(m, client_id=f"eyepiece-{DEVICE}", topics=topics, outbox=outbox,
                    birth=contract.encode(contract.will(DEVICE)),
                    will=contract.encode(contract.will(DEVICE)),
                    stopped=contract.encode(contract.stopped(DEVICE)))
    return store, outbox, link


def add(store: ResultStore, result: FieldResult, seq_hint: int,
        link: MqttLink | None = None) -> None:
    body = result_to_dict(replace(result, seq=seq_hint))

    def build(msg_id: str, seq: int) -> tuple[str, bytes]:
        return "field", contract.encode(contract.field_message(DEVICE, body, msg_id=msg_id,
                                                               seq=seq))
    store.add(result, config_sha256="0" * 64, outbox=build)
    if link is not None:
        link.wake()  # as the service's recorder does after each commit


def wait_empty(outbox: Outbox, total: int, desc: str) -> float:
    t0 = time.monotonic()
    with tqdm(total=total, desc=desc, leave=False) as bar:
        while (depth := outbox.depth()) > 0:
            bar.n = total - depth
            bar.refresh()
            time.sleep(0.05)
    return time.monotonic() - t0


def bench_sustained(result: FieldResult, n: int, tmp: Path) -> dict[str, float]:
    broker = Broker()
    broker.start()
    store, outbox, link = setup(tmp / "sustained", broker.port, rate=50.0)
    try:
        link.start()
        t0 = time.monotonic()
        for i in tqdm(range(n), desc="sustained: committing", leave=False):
            add(store, result, i, link)
        committed = time.monotonic() - t0
        wait_empty(outbox, n, "sustained: acknowledged")
        total = time.monotonic() - t0
    finally:
        link.close(drain_s=0)
        store.close()
        broker.stop()
    return {"results": n, "commit_per_s": n / committed, "delivered_per_s": n / total}


def bench_latency(result: FieldResult, n: int, tmp: Path) -> dict[str, float]:
    broker = Broker()
    broker.start()
    store, outbox, link = setup(tmp / "latency", broker.port, rate=50.0)
    sub = Arrivals(broker.port)
    added: dict[int, float] = {}
    try:
        link.start()
        time.sleep(0.5)
        for i in tqdm(range(n), desc="latency at 20 results/s", leave=False):
            add(store, result, i, link)
            added[i + 1] = time.monotonic()  # seqs start at 1 in a fresh store
            time.sleep(0.05)
        wait_empty(outbox, n, "latency: acknowledged")
        time.sleep(0.5)
    finally:
        sub.close()
        link.close(drain_s=0)
        store.close()
        broker.stop()
    lat = [1000.0 * (sub.at[s] - t) for s, t in added.items() if s in sub.at]
    return {"results": n, "received": len(lat), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95))}


def bench_backlog(result: FieldResult, n: int, tmp: Path, rate: float) -> dict[str, float]:
    broker = Broker()  # not started: the hospital network is down
    store, outbox, link = setup(tmp / f"backlog-{rate:g}", broker.port, rate=rate)
    try:
        link.start()
        for i in tqdm(range(n), desc="backlog: storing while offline", leave=False):
            add(store, result, i)
        broker.start()
        while not link.stats.connected:
            time.sleep(0.02)
        seconds = wait_empty(outbox, n, f"backlog drain at {rate:g}/s")
    finally:
        link.close(drain_s=0)
        store.close()
        broker.stop()
    return {"results": n, "replay_rate_per_s": rate, "drain_s": seconds,
            "drained_per_s": n / seconds}


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars: committed, delivered, backlog drained per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {"committed (store+outbox)": report["sustained"]["commit_per_s"],
            "delivered (PUBACK)": report["sustained"]["delivered_per_s"]}
    for b in report["backlog"]:
        bars[f"backlog drain, limit {b['replay_rate_per_s']:g}/s"] = b["drained_per_s"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(list(bars), list(bars.values()), color="#009E73")
    for i, v in enumerate(bars.values()):
        ax.text(v, i, f" {v:.0f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("results per second")
    lat = report["latency"]
    ax.set_title(f"Store-and-forward, local mosquitto; added latency p50 {lat['p50_ms']:.1f} ms,"
                 f" p95 {lat['p95_ms']:.1f} ms")
    save_chart(fig, path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three parts, print, write the report and the chart."""
    p = argparse.ArgumentParser(prog="python -m tools.bench_mqtt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=int, default=2000)
    p.add_argument("--backlog", type=int, default=2000)
    p.add_argument("--latency-results", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("build/bench_mqtt"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="eyepiece-bench-mqtt-"))
    for sub in ("sustained", "latency", "backlog-50", "backlog-10000"):
        (tmp / sub).mkdir()
    result = real_result()
    payload = len(contract.encode(contract.field_message(
        DEVICE, result_to_dict(result), msg_id="0" * 32, seq=1)))
    s = bench_sustained(result, args.results, tmp)
    lat = bench_latency(result, args.latency_results, tmp)
    backlog = [bench_backlog(result, args.backlog, tmp, rate) for rate in (50.0, 10000.0)]
    report = {"payload_bytes": payload, "sustained": s, "latency": lat, "backlog": backlog}
    (args.out / "bench_mqtt.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(report, args.out / "bench_mqtt.png")
    print(f"payload {payload} bytes per field message")
    print(f"sustained: {s['commit_per_s']:.0f} results/s committed, {s['delivered_per_s']:.0f}/s "
          f"delivered (PUBACK), {s['results']} results")
    print(f"added latency (add() -> subscriber), 20 results/s: p50 {lat['p50_ms']:.1f} ms, "
          f"p95 {lat['p95_ms']:.1f} ms ({lat['received']}/{lat['results']} received)")
    for b in backlog:
        print(f"backlog of {b['results']} at limit {b['replay_rate_per_s']:g}/s: drained in "
              f"{b['drain_s']:.1f} s ({b['drained_per_s']:.0f}/s)")
    print(f"report: {args.out / 'bench_mqtt.json'}  chart: {args.out / 'bench_mqtt.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
