"""Alert rules: one alert a manager can trust, not one per photo.

A coop raises an alert for a sick label when at least ``min_hits`` of its last
``window_size`` analyses within ``window_s`` carry that label. After an alert,
the same coop and label stay quiet for ``cooldown_s``. The decision
(:func:`should_alert`) is pure; :class:`AlertRules` reads the recent verdicts
from PostgreSQL and records the alert under an advisory lock, so that several
hubs hearing the same analysis event raise it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farmeye.db import Connection
from farmeye.labels import HEALTHY
from hub import repository
from hub.database import Database
from hub.events import EventBus
from hub.metrics import HubMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertRule:
    """When a coop's verdicts add up to an alert."""

    min_hits: int = 3
    """Verdicts with the same sick label needed to raise an alert."""

    window_size: int = 5
    """How many of the coop's latest verdicts are looked at."""

    window_s: float = 6 * 3600.0
    """Verdicts older than this are not looked at."""

    cooldown_s: float = 12 * 3600.0
    """Quiet time after an alert for the same coop and label."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_hits <= self.window_size:
            raise ValueError(
                f"alert rule needs 1 <= min_hits <= window_size, got "
                f"{self.min_hits} of {self.window_size}"
            )


def should_alert(
    rule: AlertRule,
    label: str,
    recent_labels: Sequence[str],
    seconds_since_last_alert: float | None,
) -> bool:
    """Whether ``label`` among the coop's ``recent_labels`` warrants an alert.

    ``recent_labels`` are the coop's newest verdicts within the rule's window,
    newest first; ``seconds_since_last_alert`` is None when the coop never had
    an alert for ``label``.
    """
    if label == HEALTHY:
        return False
    if (
        seconds_since_last_alert is not None
        and seconds_since_last_alert < rule.cooldown_s
    ):
        return False
    window = recent_labels[: rule.window_size]
    return sum(1 for seen in window if seen == label) >= rule.min_hits


class AlertRules:
    """Applies an :class:`AlertRule` to every finished analysis this hub hears."""

    def __init__(
        self, database: Database, bus: EventBus, metrics: HubMetrics, rule: AlertRule
    ) -> None:
        self.database = database
        self.bus = bus
        self.metrics = metrics
        self.rule = rule
        self._tasks: set[asyncio.Task[Any]] = set()

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Event listener: look at sick analysis verdicts, ignore the rest."""
        if event.get("type") != "analysis" or event.get("label") in (None, HEALTHY):
            return
        task = asyncio.create_task(self.consider(event), name="alert-rule")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def consider(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        """Raise an alert for the event's coop if the rule says so."""
        try:
            alert = await self.database.run(
                self._decide,
                int(event["farm_id"]),
                int(event["coop_id"]),
                event.get("capture_id"),
                str(event["label"]),
            )
        except Exception:
            logger.exception("alert rule failed on %s", dict(event))
            return None
        if alert is None:
            return None
        logger.info("alert for coop %s: %s", alert["coop_id"], alert["message"])
        self.metrics.alerts.labels(alert["label"]).inc()
        await self.bus.emit(
            "alert",
            farm_id=alert["farm_id"],
            coop_id=alert["coop_id"],
            capture_id=alert["capture_id"],
            label=alert["label"],
            alert_id=alert["id"],
            message=alert["message"],
            level=alert["level"],
        )
        return alert

    def _decide(
        self,
        connection: Connection,
        farm_id: int,
        coop_id: int,
        capture_id: int | None,
        label: str,
    ) -> dict[str, Any] | None:
        """One transaction: lock the coop and label, look, maybe insert."""
        rule = self.rule
        repository.lock_coop_label(connection, coop_id, label)
        recent = repository.recent_analysis_labels(
            connection, coop_id, rule.window_s, rule.window_size
        )
        since_s = repository.seconds_since_alert(connection, coop_id, label)
        if not should_alert(rule, label, recent, since_s):
            return None
        hits = sum(1 for seen in recent if seen == label)
        message = (
            f"{hits} of the last {len(recent)} photos of this coop look like "
            f"{label}; check the birds and consider a vet visit"
        )
        return repository.insert_alert(
            connection, farm_id, coop_id, capture_id, label, message
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
