"""Traffic in the last *window* seconds, from the usage rollups (no scan of raw records).

The rollups keep one row per UTC hour (and group); an hour's row only grows while its records are
stored. So what was stored between two moments is the difference of the rows read at those two
moments. Each evaluation of a rule reads the hour rows its window touches and keeps the current
hour's row as a *snapshot*; the traffic of ``[now - window, now)`` is then

    every hour row from the hour holding ``now - window`` to the current one
    minus the part of that first hour stored before ``now - window``

where that part is the snapshot taken at or just before ``now - window`` (so windows are exact to
within one evaluation interval), or, for the first window after the engine starts (no snapshot
that old yet), the first hour's row scaled by the share of the hour already past at
``now - window`` (traffic assumed even within that hour). Histograms subtract bin by bin, so the
p95 latency of a 5-minute window is as accurate as the rollups' bins (9.1 %).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gatewatch.store import RequestQuery, Scope, Store
from gatewatch.store.rollups import NBINS, NS, UsageSpec, percentile, plan, sum_hist

__all__ = ["HOUR", "Totals", "WindowReader", "latency_p95"]

HOUR = 3600
# Columns of a usage row a window keeps: requests, errors, cost in nano-USD, then (for latency
# rules) the latency histogram.
_SCALARS = (0, 1, 7)
REQUESTS, ERRORS, COST_NUSD = 0, 1, 2
_FILTER_NAMES = {"user": "initiator"}  # rule dimension → its §A1 filter name

Vec = npt.NDArray[np.float64]
Group = tuple[str, ...]
# group values → summed columns
Totals = dict[Group, Vec]


def latency_p95(vec: Vec) -> float | None:
    return percentile([round(x) for x in vec[len(_SCALARS) :]], 0.95)


@dataclass(slots=True)
class _Snapshot:
    at: float
    hour: int
    rows: Totals


@dataclass(slots=True)
class WindowReader:
    """One rule's windowed traffic: ``filters`` (rule dimension → values), split by ``per``,
    inside ``scope``; ``latency`` keeps the latency histogram too."""

    filters: Mapping[str, Sequence[str]]
    per: tuple[str, ...]
    latency: bool = False
    snapshots: deque[_Snapshot] = field(default_factory=deque)

    def spec(self, lo: int, hi: int) -> UsageSpec:
        query = RequestQuery({_FILTER_NAMES.get(d, d): list(v) for d, v in self.filters.items()})
        return UsageSpec(lo, hi, tuple(range(lo, hi + 1, HOUR)), self.per, query)

    def answerable(self, scope: Scope) -> bool:
        """Whether the rollups answer this rule (settings keep rules to those that do)."""
        return plan(scope, self.spec(0, HOUR)) is not None

    def _columns(self, metrics: Sequence[Any]) -> Vec:
        cols = [float(metrics[i]) for i in _SCALARS]
        if self.latency:  # the latency half of the row's summed histogram blobs
            cols.extend(float(c) for c in sum_hist(metrics[NS])[:NBINS])
        return np.array(cols, dtype=np.float64)

    def read(self, store: Store, scope: Scope, lo: int, hi: int) -> dict[int, Totals]:
        """Hour rows of [lo, hi) (whole hours): hour start → group → columns."""
        _, rows = store.usage_rows(scope, self.spec(lo, hi))
        out: dict[int, Totals] = {}
        for (index, group), metrics in rows.items():
            out.setdefault(lo + index * HOUR, {})[group] = self._columns(metrics)
        return out

    def totals(self, store: Store, scope: Scope, now: float, window: float) -> Totals:
        """Traffic of [now - window, now) per group (see the module's docstring); records this
        evaluation's snapshot."""
        start = now - window
        first, current = int(start) // HOUR * HOUR, int(now) // HOUR * HOUR
        hours = self.read(store, scope, first, current + HOUR)
        out: Totals = {}
        for rows in hours.values():
            for group, vec in rows.items():
                have = out.get(group)
                out[group] = vec.copy() if have is None else have + vec
        before = self._before(hours.get(first, {}), first, start, now)
        for group, vec in before.items():
            if group in out:
                out[group] = np.maximum(out[group] - vec, 0.0)
        self.snapshots.append(_Snapshot(now, current, hours.get(current, {})))
        self._prune(start)
        return out

    def _before(self, first_rows: Totals, first: int, start: float, now: float) -> Totals:
        """What the hour ``first`` had stored at ``start``."""
        in_hour = [s for s in self.snapshots if s.hour == first]
        taken_before = [s for s in in_hour if s.at <= start]
        if taken_before:
            return taken_before[-1].rows
        if in_hour:  # the engine's first look came after the window's start: scale it back
            s = in_hour[0]
            share = (start - first) / (s.at - first) if s.at > first else 0.0
            return {g: v * share for g, v in s.rows.items()}
        end = min(now, first + HOUR)
        share = (start - first) / (end - first) if end > first else 0.0
        return {g: v * share for g, v in first_rows.items()}

    def _prune(self, start: float) -> None:
        """Drop snapshots older than the newest one taken at or before the window's start
        (later windows start later)."""
        while len(self.snapshots) > 1 and self.snapshots[1].at <= start:
            self.snapshots.popleft()
