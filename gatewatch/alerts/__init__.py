"""Alerts (§N, §A7): rules over budgets, error rates, latency, spend and silence, evaluated in
the background from the live budget counters and the usage rollups, delivered to webhooks.

- ``engine``: rule evaluation and the firing/resolution state machine (``Alerts``);
- ``windows``: traffic over a sliding window from the hourly rollups;
- ``delivery``: Slack and JSON bodies, the webhook sender (queue, timeouts, retries);
- ``api``: ``/api/v1/alerts`` and ``/api/v1/alerts/rules``."""

from gatewatch.alerts.api import create_alerts_router
from gatewatch.alerts.engine import ActiveRule, Alerts, Observation

__all__ = ["ActiveRule", "Alerts", "Observation", "create_alerts_router"]
