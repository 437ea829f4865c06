"""The service's MQTT side: what goes to the hospital broker, and the commands it obeys.

- Every reported field is committed to the store together with its outbox message
  (:meth:`Telemetry.message_for`); :class:`~appliance.outputs.mqtt_link.MqttLink`
  sends it and deletes it on PUBACK.
- Every ``mqtt.metrics_interval_s``: the metrics message, and the retained health
  state (also at once whenever it changes).
- Commands arrive on ``<prefix>cmd/<name>`` and are answered on ``.../reply``; the
  handlers here act on the running assay (objective, assay) and the case state.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance.assays.hep2.types import Hep2Result
from appliance.assays.results import FieldAssay
from appliance.config import Config, ConfigError, with_overrides
from appliance.inference.manifest import ModelError
from appliance.outputs import hep2_json
from appliance.outputs import mqtt_contract as contract
from appliance.outputs.commands import Command, CommandDispatcher, CommandRefused
from appliance.outputs.mqtt_link import MqttLink
from appliance.outputs.outbox import MessageBuilder, Outbox
from appliance.outputs.result_json import result_to_dict
from appliance.outputs.store import AnyResult, ResultStore, StoreError
from appliance.pipeline.metrics import MetricsSnapshot
from appliance.service.cases import CaseError, CaseWorkflow
from appliance.service.health import Health, HealthReadings, assess
from appliance.service.reload import reload_config

_log = logging.getLogger(__name__)


class Telemetry:
    """Link, outbox, health and metrics publishing, and command handling for one box."""

    def __init__(self, cfg: Config, *, store: ResultStore, assay: FieldAssay, cases: CaseWorkflow,
                 config_path: Path | None, snapshot: Callable[[], MetricsSnapshot],
                 fatal: Callable[[], str] = lambda: "", hostname: str | None = None,
                 switch_assay: Callable[[str], None] | None = None) -> None:
        m = cfg.mqtt
        host = hostname or socket.gethostname()
        self.cfg = cfg
        self.assay = assay
        self.store = store
        self.device_id = contract.device_id_for(m, host)
        self.topics = contract.Topics(contract.topic_prefix(m, host))
        self.outbox = Outbox(store, max_messages=m.outbox_max_messages,
                             warn_fraction=m.outbox_warn_fraction)
        self._config_path = config_path
        self._snapshot = snapshot
        self._fatal = fatal
        self.cases = cases
        self._switch_assay = switch_assay  # the runner's: load another assay, swap it in
        self._last_health: Health | None = None
        self._last_extra: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        started = datetime.now(timezone.utc)
        self.dispatcher = CommandDispatcher(self._handlers(), device_id=self.device_id,
                                            max_bytes=m.max_command_bytes)
        self._started = started
        self.link = MqttLink(
            m, client_id=f"eyepiece-{self.device_id}", topics=self.topics, outbox=self.outbox,
            birth=self._birth(assay),
            will=contract.encode(contract.will(self.device_id)),
            stopped=contract.encode(contract.stopped(self.device_id)),
            on_command=self._on_command,
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect (in the background) and start the health/metrics publisher."""
        self.link.start()
        self._thread = threading.Thread(target=self._periodic, name="eyepiece-telemetry",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Publish the last health and metrics, drain the outbox briefly, say ``stopped``."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.publish_now()
        self.link.close()

    # ------------------------------------------------------------ results

    def message_for(self, result: AnyResult) -> MessageBuilder:
        """The outbox message of one reported field (built inside the store's transaction)."""
        if isinstance(result, Hep2Result):
            # HEp-2 fields carry no case tag: the case they join is the one open now.
            case_id, body = self._open_hep2_case(), hep2_json.result_to_dict(result)
        else:
            case_id = result.case.case_id if result.case is not None else None
            body = result_to_dict(result)

        def build(msg_id: str, seq: int) -> tuple[str, bytes]:
            return "field", contract.encode(contract.field_message(
                self.device_id, body, msg_id=msg_id, seq=seq, case_id=case_id))
        return build

    # ------------------------------------------------------------ health and metrics

    def _periodic(self) -> None:
        while not self._stop.wait(self.cfg.mqtt.metrics_interval_s):
            try:
                self.publish_now()
            except Exception:  # telemetry must never stop the scoring
                _log.exception("telemetry: publishing health/metrics failed")

    def publish_now(self) -> Health:
        """Publish metrics, and the health state (retained)."""
        snap = self._snapshot()
        extra = contract.system_readings(self.cfg.store.path)
        extra.update({"outbox_depth": self.outbox.depth(),
                      "outbox_capacity": self.cfg.mqtt.outbox_max_messages,
                      "outbox_dropped": self.outbox.dropped_total()})
        self._last_extra = extra
        health = self.health(snap, extra)
        self.link.publish_state(self.topics.health, contract.encode(contract.health(
            self.device_id, health.state, health.reasons)), retain=True)
        self.link.publish_state(self.topics.metrics, contract.encode(contract.metrics(
            self.device_id, snap.to_dict(), extra)), retain=False)
        if self._last_health is None or health.state != self._last_health.state:
            _log.log(logging.INFO if health.state == "ok" else logging.WARNING,
                     "health %s%s", health.state,
                     "".join(f"; {r.component}: {r.message}" for r in health.reasons))
        self._last_health = health
        return health

    def current_health(self, snap: MetricsSnapshot) -> Health:
        """Health now, with the system readings of the last publication (cheap: per tick)."""
        return self.health(snap, self._last_extra)

    def health(self, snap: MetricsSnapshot, extra: dict[str, Any]) -> Health:
        """The box's health now, from the pipeline, the link, the outbox and the system."""
        stats = self.link.stats
        return assess(HealthReadings(
            source_state=snap.source_state, source_reason=snap.source_reason,
            pipeline_failed=self._fatal(),
            broker_configured=True, broker_connected=stats.connected,
            broker_error=stats.last_error, outbox_depth=self.outbox.depth(),
            outbox_fill=self.outbox.fill(), outbox_degraded=self.outbox.degraded,
            outbox_dropped=self.outbox.dropped_total(),
            store_errors=self.store.pending() + self.store.dropped,
            disk_free_bytes=extra.get("disk_free_bytes"),
            temperatures_c=extra.get("temperatures_c", {}),
        ))

    def _open_hep2_case(self) -> str | None:
        try:
            case = self.cases.open_case()
        except StoreError as exc:
            _log.error("open case not readable, field sent without one: %s", exc)
            return None
        return case.case_id if case is not None and case.assay == "hep2" else None

    # ------------------------------------------------------------ commands

    def _on_command(self, topic: str, payload: bytes) -> None:
        answer = self.dispatcher.handle_message(self.topics, topic, payload)
        if answer is not None:
            reply_topic, body = answer
            self.link.publish_state(reply_topic, body, retain=False)

    def _handlers(self) -> dict[str, Callable[[Command], dict[str, Any] | None]]:
        return {"start_case": self._start_case, "end_case": self._end_case,
                "start_control": self._start_control, "end_control": self._end_control,
                "set_dilution": self._set_dilution,
                "set_assay": self._set_assay, "set_objective": self._set_objective,
                "snapshot": self._snapshot_command, "reload_config": self._reload_config}

    def _case_action(self, name: str, action: Callable[[], dict[str, Any]],
                     field: str | None = None) -> dict[str, Any]:
        """Run a case action; audit it; a CaseError is the command's refusal."""
        try:
            reply = action()
        except CaseError as exc:
            self.cases.record_command(name, f"refused: {exc}", source="mqtt")
            raise CommandRefused(str(exc), field=field) from exc
        self.cases.record_command(name, "done", source="mqtt", case_id=reply.get("case_id"))
        return reply

    def _start_case(self, command: Command) -> dict[str, Any]:
        raw = str(command.args["case_id"])
        running = self.assay.cfg.assay
        asked = command.args.get("assay")
        if asked is not None and asked != running:
            # A case takes only its own assay's fields: it would stay empty.
            raise CommandRefused(f"this box runs {running} now: send set_assay {asked} "
                                 "first", field="assay")
        slide = command.args.get("slide")
        if slide is not None:
            try:  # checked first, so that a refusal names the slide, not the case id
                self.cases.slide_id_for(str(slide), running)
            except CaseError as exc:
                self.cases.record_command("start_case", f"refused: {exc}", source="mqtt")
                raise CommandRefused(str(exc), field="slide") from exc

        def start() -> dict[str, Any]:
            row = self.cases.start_case(raw, source="mqtt", assay=running,
                                        slide=None if slide is None else str(slide))
            return {"case_id": row.case_id, "assay": running, "slide": row.slide}
        return self._case_action("start_case", start, field="case_id")

    def _end_case(self, command: Command) -> dict[str, Any]:
        raw = str(command.args["case_id"])

        def end() -> dict[str, Any]:
            summary = self.cases.end_case(self.cases.case_id_for(raw), source="mqtt")
            self.link.wake()  # the case message is in the outbox
            return summary
        return self._case_action("end_case", end, field="case_id")

    def _start_control(self, command: Command) -> dict[str, Any]:
        expected = command.args.get("expected")
        return self._case_action("start_control", lambda: self.cases.start_control(
            None if expected is None else str(expected), source="mqtt"))

    def _end_control(self, command: Command) -> dict[str, Any]:
        def end() -> dict[str, Any]:
            check = self.cases.end_control(source="mqtt")
            case = self.cases.live()
            return {"case_id": case.case_id if case else None, **check.to_dict()}
        return self._case_action("end_control", end)

    def _set_dilution(self, command: Command) -> dict[str, Any]:
        dilution = int(command.args["dilution"])
        return self._case_action("set_dilution", lambda: self.cases.set_dilution(
            dilution, source="mqtt"), field="dilution")

    def _set_assay(self, command: Command) -> dict[str, Any]:
        assay = str(command.args["assay"])
        if assay == self.assay.cfg.assay:
            return {"assay": assay}
        try:
            case = self.cases.open_case()
        except StoreError as exc:
            raise CommandRefused(f"cannot tell whether a case is open: {exc}") from exc
        if case is not None and case.assay != assay:
            # Its fields would stop joining it half-way through the patient's slide.
            raise CommandRefused(f"case {case.case_id} ({case.assay}) is open: end it before "
                                 f"switching to {assay}", field="assay")
        if self._switch_assay is None:
            raise CommandRefused(f"this box runs {self.assay.cfg.assay} only", field="assay")
        try:
            self._switch_assay(assay)
        except (ModelError, ConfigError) as exc:
            raise CommandRefused(f"cannot switch to {assay}: {exc}", field="assay") from exc
        self.link.set_birth(self._birth(self.assay))  # the dashboard sees the new assay
        return {"assay": assay}

    def _birth(self, assay: FieldAssay) -> bytes:
        """The retained ``online`` message for the assay now running."""
        return contract.encode(contract.birth(
            self.device_id, models=[assay.model], assay=assay.cfg.assay,
            config_sha256=assay.cfg.sha256(), started_at=self._started))

    def _set_objective(self, command: Command) -> dict[str, Any]:
        args = command.args
        overrides: dict[str, Any] = (
            {"optics.um_per_px": float(args["um_per_px"])} if "um_per_px" in args
            else {"optics.objective": args["objective"], "optics.um_per_px": 0.0})
        try:
            self.assay.cfg = with_overrides(self.assay.cfg, overrides)
        except ConfigError as exc:
            raise CommandRefused(exc.reason, field=exc.key.rsplit(".", 1)[-1]) from exc
        _log.info("objective set by command: %s", overrides)
        return {"objective": self.assay.cfg.optics.objective,
                "um_per_px": self.assay.cfg.optics.um_per_px or None}

    def _snapshot_command(self, command: Command) -> dict[str, Any]:
        snap = self._snapshot()
        health = self._last_health
        return {"metrics": snap.to_dict(),
                "health": health.state if health is not None else None,
                "outbox_depth": self.outbox.depth()}

    def _reload_config(self, command: Command) -> dict[str, Any]:
        """Re-read the config file; analysis settings apply at once, others at restart."""
        if self._config_path is None:
            raise CommandRefused("the service runs on its defaults: no config file to reload")
        try:
            outcome = reload_config(self.assay, self._config_path)
        except ConfigError as exc:
            raise CommandRefused(f"{exc}; nothing changed") from exc
        return {"applied": list(outcome.applied), "needs_restart": list(outcome.needs_restart)}
