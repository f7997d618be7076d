"""Usage rollups (§A4): aggregates of the request records per UTC hour and per UTC day, kept in
the same transaction that stores each batch of records, so a usage query reads a few thousand
pre-summed rows instead of millions of records.

Each rollup table (a "cuboid") keeps the metrics for one set of dimensions. A query is answered
from the smallest cuboid that has every dimension it groups or filters by (plus the scope's:
org for an admin, user for a member); anything no cuboid covers (session, status_code,
``meta.*``, time zones whose offset is not a whole hour, …) is answered from the raw records
with the same SQL shape, so both paths give the same numbers.

Latency and time to first token are kept as fixed-bucket histograms: bin 0 holds values under
1 ms, bin k (1 <= k < 74) holds [g^(k-1), g^k) ms with g = 1.2, the last bin everything from
g^73 (about 608 s). A percentile is reported as its bin's representative value 2*lo*g/(g+1),
within (g-1)/(g+1) = 9.1 % of the true value for values between 1 ms and 608 s. Bins are counted
in SQL (a sum of comparisons), so the write path costs no Python time per record. Costs are
summed as integer nano-dollars: totals are exact and do not depend on the order records arrive.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gatewatch.store.query import ROLLUP_FILTERS, RequestQuery, Scope, and_where, rollup_where

__all__ = [
    "CUBOIDS",
    "DIMENSIONS",
    "NBINS",
    "NS",
    "RELATIVE_ERROR",
    "SCALARS",
    "Cuboid",
    "UsageRows",
    "UsageSpec",
    "percentile",
]

GAMMA = 1.2
EDGES: tuple[float, ...] = tuple(round(GAMMA**k, 4) for k in range(74))
NBINS = len(EDGES) + 1
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)

# Summed metrics, in the order of every rollup row and every query answer; the histogram of
# latency (bins 0..74) and time to first token (bins 75..149) follows them.
SCALARS: tuple[str, ...] = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nusd",  # cost in nano-USD (integer: exact sums)
    "unpriced",  # requests whose model has no price (cost_usd null)
    "duration_ms_sum",
)
NS = len(SCALARS)
HIST_BINS = 2 * NBINS

# The dimensions of §A4 → the rollup column that holds them.
DIMENSIONS: dict[str, str] = {
    "org": "org_id",
    "user": "user_id",
    "api_key": "api_key_id",
    "provider": "provider",
    "model": "model",
    "status": "status",
    "client": "client",
    "workflow": "workflow",
    "end_user": "end_user",
    "tag": "tag",
}


@dataclass(frozen=True, slots=True)
class Cuboid:
    table: str
    dims: tuple[str, ...]  # §A4 dimension names (model also carries model_requested)

    @property
    def columns(self) -> tuple[str, ...]:
        cols = [DIMENSIONS[d] for d in self.dims]
        if "model" in self.dims:
            cols.insert(cols.index("model"), "model_requested")
        return tuple(cols)


# Smallest first: a query uses the first cuboid that has every dimension it needs.
CUBOIDS: tuple[Cuboid, ...] = (
    Cuboid("rollup_user", ("org", "user")),
    Cuboid("rollup_model", ("org", "provider", "model", "status")),
    Cuboid("rollup_client", ("org", "provider", "client", "status")),
    Cuboid("rollup_tag", ("org", "user", "tag")),
    Cuboid("rollup_end_user", ("org", "user", "end_user")),
    Cuboid(
        "rollup_base",
        ("org", "user", "api_key", "provider", "model", "status", "client", "workflow"),
    ),
)
_BY_TABLE = {c.table: c for c in CUBOIDS}


def schema(tables: Sequence[str]) -> str:
    """CREATE statements of these rollup tables (their migrations')."""
    out = []
    metric_cols = ", ".join(f"{m} INTEGER NOT NULL DEFAULT 0" for m in SCALARS)
    for c in (_BY_TABLE[t] for t in tables):
        dims = ", ".join(f"{col} TEXT NOT NULL" for col in c.columns)
        key = ", ".join(("grain", "bucket", *c.columns))
        out.append(
            f"CREATE TABLE {c.table} (grain TEXT NOT NULL, bucket INTEGER NOT NULL, {dims},"
            f" {metric_cols}, hist BLOB, PRIMARY KEY ({key})) WITHOUT ROWID;"
        )
        if "user_id" in c.columns:  # a member's queries: its own rows only
            out.append(f"CREATE INDEX {c.table}_user ON {c.table}(user_id, grain, bucket);")
    return "\n".join(out)


# ---- histograms as blobs: sparse (a byte per bin number, then a uint32 count per bin) while
# that is smaller, else dense (a uint32 count for every bin). ---------------------------------

_DENSE_BYTES = HIST_BINS * 4
_PACK = [struct.Struct(f"<{n}I").pack for n in range(_DENSE_BYTES // 5 + 1)]
_U4 = np.dtype("<u4")


def hist_bins(duration_ms: float, ttft_ms: float | None) -> tuple[int, int]:
    """The latency bin and the time-to-first-token bin (-1: none)."""
    return bisect_right(EDGES, duration_ms), (
        -1 if ttft_ms is None else NBINS + bisect_right(EDGES, ttft_ms)
    )


def encode(hist: dict[int, int]) -> bytes:
    n = len(hist)
    if n * 5 < _DENSE_BYTES:  # the usual case: a handful of bins
        bins = sorted(hist)
        return bytes(bins) + _PACK[n](*[hist[b] for b in bins])
    dense = np.zeros(HIST_BINS, _U4)
    for b, c in hist.items():
        dense[b] = c
    return dense.tobytes()


def _dense(blob: bytes | None) -> npt.NDArray[np.uint32]:
    if not blob:
        return np.zeros(HIST_BINS, _U4)
    if len(blob) == _DENSE_BYTES:
        return np.frombuffer(blob, _U4).copy()
    m = len(blob) // 5
    out = np.zeros(HIST_BINS, _U4)
    out[np.frombuffer(blob[:m], np.uint8)] = np.frombuffer(blob[m:], _U4)
    return out


def _encode_dense(dense: npt.NDArray[Any]) -> bytes:
    nz = np.flatnonzero(dense)
    if len(nz) * 5 < _DENSE_BYTES:
        return bytes(nz.astype(np.uint8).tobytes() + dense[nz].astype(_U4).tobytes())
    return bytes(dense.astype(_U4).tobytes())


def decode_into(blob: bytes | None, dense: list[int]) -> None:
    if not blob:
        return
    for b, c in enumerate(_dense(blob).tolist()):
        if c:
            dense[b] += c


def _sparse(blob: bytes) -> dict[int, int]:
    m = len(blob) // 5
    counts = array("I")
    counts.frombytes(blob[m:])
    return dict(zip(blob[:m], counts, strict=True))


def hist_add(a: bytes | None, b: bytes | None) -> bytes:
    """SQL function gw_hist_add: two histograms merged (called once per updated rollup row, so
    the common case, two short sparse histograms, stays in plain Python)."""
    if not a or not b:
        return a or b or b""
    if len(a) == _DENSE_BYTES or len(b) == _DENSE_BYTES:
        return _encode_dense(_dense(a) + _dense(b))
    merged = _sparse(a)
    for k, c in _sparse(b).items():
        merged[k] = merged.get(k, 0) + c
    return encode(merged)


def _sum_blobs(blobs: list[bytes]) -> npt.NDArray[np.uint64]:
    """The sum of many histogram blobs, decoded all at once (a Python step per blob would cost
    more than the rest of a usage query)."""
    total = np.zeros(HIST_BINS, np.uint64)
    dense = [b for b in blobs if len(b) == _DENSE_BYTES]
    if dense:
        total += np.frombuffer(b"".join(dense), _U4).reshape(-1, HIST_BINS).sum(0, np.uint64)
    sparse = [b for b in blobs if len(b) != _DENSE_BYTES]
    if sparse:
        raw = np.frombuffer(b"".join(sparse), np.uint8)
        lens = np.fromiter(map(len, sparse), np.int64, len(sparse))
        m = lens // 5  # entries per blob: m bin bytes, then m uint32 counts
        starts = np.cumsum(lens) - lens
        blob = np.repeat(np.arange(len(sparse)), m)
        nth = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
        bins = raw[starts[blob] + nth]
        at = starts[blob] + m[blob] + 4 * nth
        counts = (
            raw[at].astype(np.uint64)
            | raw[at + 1].astype(np.uint64) << np.uint64(8)
            | raw[at + 2].astype(np.uint64) << np.uint64(16)
            | raw[at + 3].astype(np.uint64) << np.uint64(24)
        )
        total += np.bincount(bins, weights=counts, minlength=HIST_BINS).astype(np.uint64)
    return total


def _sum_grouped(blobs: list[bytes], groups: npt.NDArray[np.int64], n: int) -> npt.NDArray[Any]:
    """Histogram blobs summed per group (``groups[i]``: blob i's group, < n), all in one
    vectorised pass: an (n, HIST_BINS) array of counts."""
    total = np.zeros(n * HIST_BINS, np.int64)
    lens = np.fromiter(map(len, blobs), np.int64, len(blobs))
    is_dense = lens == _DENSE_BYTES
    if is_dense.any():
        dense = [b for b, d in zip(blobs, is_dense, strict=True) if d]
        rows = np.frombuffer(b"".join(dense), _U4).reshape(-1, HIST_BINS).astype(np.int64)
        np.add.at(total.reshape(n, HIST_BINS), groups[is_dense], rows)
    sparse_at = np.flatnonzero(~is_dense)
    if len(sparse_at):
        raw = np.frombuffer(b"".join([blobs[i] for i in sparse_at]), np.uint8)
        lens = lens[sparse_at]
        m = lens // 5  # entries per blob: m bin bytes, then m uint32 counts
        starts = np.cumsum(lens) - lens
        blob = np.repeat(np.arange(len(sparse_at)), m)
        nth = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
        bins = raw[starts[blob] + nth].astype(np.int64)
        at = starts[blob] + m[blob] + 4 * nth
        counts = (
            raw[at].astype(np.int64)
            | raw[at + 1].astype(np.int64) << 8
            | raw[at + 2].astype(np.int64) << 16
            | raw[at + 3].astype(np.int64) << 24
        )
        flat = groups[sparse_at][blob] * HIST_BINS + bins
        total += np.bincount(flat, weights=counts, minlength=n * HIST_BINS).astype(np.int64)
    return total.reshape(n, HIST_BINS)


class _HistSum:
    """SQL aggregate gw_hist_sum(hist): the merged histogram of a group."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def step(self, blob: bytes | None) -> None:
        if blob:
            self.blobs.append(blob)

    def finalize(self) -> bytes:
        return _encode_dense(_sum_blobs(self.blobs))


class _HistRaw:
    """SQL aggregate gw_hist_raw(duration_ms, ttft_ms): the histogram of raw records."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def step(self, duration_ms: float, ttft_ms: float | None) -> None:
        lb, tb = hist_bins(duration_ms, ttft_ms)
        self.counts[lb] = self.counts.get(lb, 0) + 1
        if tb >= 0:
            self.counts[tb] = self.counts.get(tb, 0) + 1

    def finalize(self) -> bytes:
        return encode(self.counts)


def register(db: sqlite3.Connection) -> None:
    """The SQL functions rollup reads and writes use, on one connection."""
    db.create_function("gw_hist_add", 2, hist_add, deterministic=True)
    db.create_aggregate("gw_hist_sum", 1, _HistSum)  # type: ignore[arg-type]
    db.create_aggregate("gw_hist_raw", 2, _HistRaw)  # type: ignore[arg-type]


# ---- writing -----------------------------------------------------------------------------------

# What one record adds to the rollups, computed on the request path (a few microseconds):
# (base key, scalar metrics, latency bin, ttft bin, end_user, tags). The base key is
# (hour, day, org, user, api_key, provider, model_requested, model, status, client, workflow).
Facts = tuple[tuple[object, ...], tuple[int, ...], int, int, str, tuple[str, ...]]


def facts(
    started: float,
    duration_ms: float,
    ttft_ms: float | None,
    org_id: str | None,
    user_id: str | None,
    api_key_id: str | None,
    provider: str | None,
    model_requested: str | None,
    model: str | None,
    status: str,
    client: str | None,
    workflow: str | None,
    end_user: str | None,
    tags: Sequence[str],
    tokens: Sequence[int | None],
    cost_usd: float | None,
) -> Facts:
    hour = int(started) // 3600 * 3600
    key = (
        hour,
        hour // 86400 * 86400,
        org_id or "",
        user_id or "",
        api_key_id or "",
        provider or "",
        model_requested or "",
        model or model_requested or "",
        status,
        client or "",
        workflow or "",
    )
    scalars = (
        1,
        int(status == "error"),
        *(t or 0 for t in tokens),
        0 if cost_usd is None else _round(cost_usd * 1e9),
        int(cost_usd is None),
        _round(duration_ms),
    )
    lb, tb = hist_bins(duration_ms, ttft_ms)
    return key, scalars, lb, tb, end_user or "", tuple(dict.fromkeys(tags))


def _round(x: float) -> int:
    """Half away from zero, as SQLite's round() (the raw-record path) does."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


_Acc = dict[tuple[object, ...], list[Any]]  # key → [scalars..., {bin: count}]


def _add(acc: _Acc, key: tuple[object, ...], scalars: Sequence[int], hist: dict[int, int]) -> None:
    have = acc.get(key)
    if have is None:
        acc[key] = [*scalars, dict(hist)]
        return
    for i in range(NS):
        have[i] += scalars[i]
    h = have[NS]
    for b, c in hist.items():
        h[b] = h.get(b, 0) + c


def aggregate(batch: Sequence[Facts]) -> dict[str, _Acc]:
    """Rollup rows (table → (grain, bucket, dims…) → metrics) that a batch of records adds.
    Records are first summed per base key, and the smaller rollups derived from those sums:
    traffic that repeats a key (most of it) costs one dictionary update per record."""
    base: _Acc = {}
    extra: dict[str, _Acc] = {"rollup_end_user": {}, "rollup_tag": {}}
    for key, scalars, lb, tb, end_user, tags in batch:
        hist = {lb: 1} if tb < 0 else {lb: 1, tb: 1}
        _add(base, key, scalars, hist)
        if end_user or tags:
            hour, day, org, user = key[:4]
            for grain, bucket in (("h", hour), ("d", day)):
                if end_user:
                    _add(extra["rollup_end_user"], (grain, bucket, org, user, end_user),
                         scalars, hist)  # fmt: skip
                for tag in tags:
                    _add(extra["rollup_tag"], (grain, bucket, org, user, tag), scalars, hist)
    out: dict[str, _Acc] = {
        "rollup_base": {}, "rollup_user": {}, "rollup_model": {}, "rollup_client": {}, **extra,
    }  # fmt: skip
    for key, metrics in base.items():
        hour, day, org, user, _k, provider, model_req, model, status, client = key[:10]
        sums, h = metrics[:NS], metrics[NS]
        for grain, bucket in (("h", hour), ("d", day)):
            _add(out["rollup_base"], (grain, bucket, *key[2:]), sums, h)
            _add(out["rollup_user"], (grain, bucket, org, user), sums, h)
            _add(out["rollup_model"], (grain, bucket, org, provider, model_req, model, status),
                 sums, h)  # fmt: skip
            _add(out["rollup_client"], (grain, bucket, org, provider, client, status), sums, h)
    return out


def upsert_sql(table: str) -> str:
    c = _BY_TABLE[table]
    cols = ("grain", "bucket", *c.columns, *SCALARS, "hist")
    updates = ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in SCALARS)
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT ({', '.join(('grain', 'bucket', *c.columns))}) DO UPDATE SET {updates},"
        f" hist = gw_hist_add({table}.hist, excluded.hist)"
    )


UPSERTS = {c.table: upsert_sql(c.table) for c in CUBOIDS}


def write(db: sqlite3.Connection, batch: Sequence[Facts]) -> None:
    """Add a batch's rollups, inside the caller's transaction."""
    for table, rows in aggregate(batch).items():
        if rows:
            db.executemany(UPSERTS[table], [(*k, *m[:NS], encode(m[NS])) for k, m in rows.items()])


def rollup_sums(histograms: bool = True, scalars: Sequence[str] = SCALARS) -> str:
    """The sums of a rollup read (alias r): ``scalars`` summed, the others 0."""
    hist = "gw_hist_sum(r.hist)" if histograms else "NULL"
    return ", ".join([*(f"sum(r.{m})" if m in scalars else "0" for m in SCALARS), hist])


def raw_sums(histograms: bool = True) -> str:
    """The same sums over raw records (alias r): the fallback path."""
    return ", ".join(
        [
            "count(*)",
            "sum(CASE WHEN r.status = 'error' THEN 1 ELSE 0 END)",
            "sum(coalesce(r.input_tokens, 0))",
            "sum(coalesce(r.output_tokens, 0))",
            "sum(coalesce(r.cache_read_tokens, 0))",
            "sum(coalesce(r.cache_write_tokens, 0))",
            "sum(coalesce(r.reasoning_tokens, 0))",
            "sum(CAST(round(coalesce(r.cost_usd, 0) * 1e9) AS INTEGER))",
            "sum(CASE WHEN r.cost_usd IS NULL THEN 1 ELSE 0 END)",
            "sum(CAST(round(r.duration_ms) AS INTEGER))",
            "gw_hist_raw(r.duration_ms, r.ttft_ms)" if histograms else "NULL",
        ]
    )


_RAW_DIM = {
    "org": "coalesce(r.org_id, '')",
    "user": "coalesce(r.user_id, '')",
    "api_key": "coalesce(r.api_key_id, '')",
    "provider": "coalesce(r.provider, '')",
    "model": "coalesce(r.model, r.model_requested, '')",
    "status": "r.status",
    "client": "coalesce(r.client, '')",
    "workflow": "coalesce(r.workflow, '')",
    "end_user": "coalesce(r.end_user, '')",
    "tag": "f.value",
}


def raw_dim(dim: str) -> str:
    """A dimension's value on a raw record (alias r; tags from the facet join f)."""
    return _RAW_DIM[dim]


def bucket_index(column: str, boundaries: Sequence[int]) -> str:
    """SQL for the index i of the bucket [boundaries[i], boundaries[i+1]) holding ``column``.

    Runs of equal steps (days of a time zone between its daylight-saving changes) are one
    division each, found by a tree of comparisons: a ``CASE`` of every boundary in turn would
    cost a comparison per bucket on every row read."""
    runs: list[tuple[int, int, int]] = []  # (first boundary's index, its value, step)
    for i, (a, b) in enumerate(itertools.pairwise(boundaries)):
        if runs and b - a == runs[-1][2] and runs[-1][1] + (i - runs[-1][0]) * runs[-1][2] == a:
            continue
        runs.append((i, a, b - a))

    def tree(lo: int, hi: int) -> str:  # runs[lo:hi]
        if hi - lo == 1:
            first, value, step = runs[lo]
            return f"({first} + ({column} - {value}) / {step})"
        mid = (lo + hi) // 2
        return (
            f"(CASE WHEN {column} < {runs[mid][1]} THEN {tree(lo, mid)} ELSE {tree(mid, hi)} END)"
        )

    return tree(0, len(runs))


# Cuboids in the order reads prefer them, fewest rows first. The ones without user hold a row
# per organization, provider, model (or client) and status, whatever the number of users: at
# 10,000,000 records and 3,000 users, 30 days are 20k day rows of rollup_model or rollup_client
# against 89k of rollup_user, 333k of rollup_end_user, 453k of rollup_tag, 715k of rollup_base.
_SMALLEST_FIRST = ("rollup_model", "rollup_client", "rollup_user", "rollup_end_user",
                   "rollup_tag", "rollup_base")  # fmt: skip


def choose(needed: set[str]) -> Cuboid | None:
    for table in (*_SMALLEST_FIRST, *_BY_TABLE):
        if needed <= set(_BY_TABLE[table].dims):
            return _BY_TABLE[table]
    return None


def representative(k: int) -> float:
    """The value reported for histogram bin k of either half (latency or TTFT)."""
    k %= NBINS
    if k == 0:
        return 0.5
    lo = EDGES[k - 1]
    if k == NBINS - 1:
        return lo
    return 2 * lo * GAMMA / (GAMMA + 1)


def percentile(bins: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram, nearest rank; None when it is empty."""
    n = sum(bins)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n - 1e-9))
    acc = 0
    for k, c in enumerate(bins):
        acc += c
        if acc >= rank:
            return round(representative(k), 1)
    return round(representative(len(bins) - 1), 1)  # pragma: no cover - acc reaches n


_SHOWN = np.array([round(representative(k), 1) for k in range(NBINS)])


def percentiles(halves: npt.NDArray[Any], qs: Sequence[float]) -> list[list[float | None]]:
    """``percentile`` of many histogram halves (an (n, NBINS) array) for several q at once:
    one list per q, one value per histogram."""
    cum = np.cumsum(halves, axis=1)
    n = cum[:, -1]
    empty = n == 0
    out = []
    for q in qs:
        rank = np.maximum(1, np.ceil(q * n - 1e-9))
        shown = _SHOWN[np.minimum((cum < rank[:, None]).sum(axis=1), NBINS - 1)]
        out.append([None if e else float(v) for e, v in zip(empty, shown, strict=True)])
    return out


# ---- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageSpec:
    """A usage question in UTC seconds: records started in [lo, hi), counted into the buckets
    [boundaries[i], boundaries[i+1]), grouped by up to two dimensions."""

    lo: int
    hi: int
    boundaries: tuple[int, ...]
    group_by: tuple[str, ...]
    query: RequestQuery
    force_raw: bool = False
    histograms: bool = True  # False: no latency/TTFT histograms (no percentiles), cheaper
    # the scalar sums wanted (the others answer 0): a rollup read sums each row's in a sort,
    # which costs by the width of what it sums
    scalars: tuple[str, ...] = SCALARS
    # just these values of each group_by dimension (None: all of them)
    only: tuple[tuple[str, ...] | None, ...] = ()


# (where the numbers came from: "rollups" | "records", {(bucket index, group values): metrics})
UsageRows = tuple[str, dict[tuple[int, tuple[str, ...]], list[Any]]]


def ulid_floor(ts: float) -> str:
    """The smallest id of the millisecond ``ts`` (ids are ULIDs that start with their time)."""
    from ulid import ULID

    return str(ULID.from_bytes(ULID.from_timestamp(float(ts)).bytes[:6] + b"\x00" * 10))


def _merge(out: dict[tuple[int, tuple[str, ...]], list[Any]], rows: Sequence[Sequence[Any]],
           ngroups: int) -> None:  # fmt: skip
    """Rows of (bucket index, group values…, scalar sums…, histogram blob) into ``out``: per
    key the NS scalar sums, then the list of histogram blobs (summed when an answer needs
    them, see ``sum_hist``: a dense histogram per key would cost far more memory)."""
    for row in rows:
        key = (int(row[0]), tuple(str(v) for v in row[1 : 1 + ngroups]))
        have = out.get(key)
        if have is None:
            have = out[key] = [0] * NS + [[]]
        for i, v in enumerate(row[1 + ngroups : 1 + ngroups + NS]):
            have[i] += int(v or 0)
        hist = row[-1]
        if isinstance(hist, list):  # PostgreSQL: the group's histograms, to be summed here
            have[NS].extend(h for h in hist if h)
        elif hist:
            have[NS].append(hist)


def sum_hist(blobs: Sequence[bytes | npt.NDArray[Any]]) -> list[int]:
    """The latency and TTFT histogram (HIST_BINS counts) of a list of histograms: blobs, or
    arrays of counts (as ``query`` gives them)."""
    return [int(c) for c in hist_array(blobs)]


def hist_array(hists: Sequence[bytes | npt.NDArray[Any]]) -> npt.NDArray[np.int64]:
    """``sum_hist`` as an array."""
    blobs = [h for h in hists if isinstance(h, bytes | bytearray | memoryview)]
    total = np.zeros(HIST_BINS, np.int64)
    if blobs:
        total += _sum_blobs([bytes(b) for b in blobs]).astype(np.int64)
    for h in hists:
        if isinstance(h, np.ndarray):
            total += h
    return total


def plan(scope: Scope, spec: UsageSpec) -> tuple[Cuboid, tuple[str, list[object]]] | None:
    """The cuboid (and its WHERE) that answers ``spec``, or None when only raw records can."""
    edges = (spec.lo, spec.hi, *spec.boundaries)
    if spec.force_raw or any(t % 3600 for t in edges):
        return None
    where = rollup_where(spec.query, scope)
    if where is None:
        return None
    needed = set(spec.group_by) | {
        ROLLUP_FILTERS[n] for n in spec.query.filters if n in ROLLUP_FILTERS
    }
    if scope.role == "admin":
        needed.add("org")
    elif scope.role == "member":
        needed.add("user")
    cuboid = choose(needed)
    return None if cuboid is None else (cuboid, where)


def _grains(lo: int, hi: int) -> list[tuple[str, int, int]]:
    """[lo, hi) (whole hours) as hour rows around the day rows of the whole UTC days inside."""
    d0, d1 = -(-lo // 86400) * 86400, hi // 86400 * 86400
    if d0 < d1:
        return [(g, a, b) for g, a, b in (("h", lo, d0), ("d", d0, d1), ("h", d1, hi)) if a < b]
    return [("h", lo, hi)]


_MAX_LISTED = 2000  # buckets named one by one in an admin's read, at most
_FEW_USERS = 100  # users whose rows are read through the user index rather than the key
_MANY_ROWS = 3  # rows of the grain per bucket from which SQLite sums the histograms (see query)


def _scan(
    cuboid: Cuboid, scope: Scope, select: str, where: str, grain: str, lo: int, hi: int,
    tail: str = "", users: Sequence[str] | None = None,
) -> tuple[str, list[object]]:  # fmt: skip
    """``SELECT <select>`` over the rows of ``cuboid`` (alias r) of one grain in [lo, hi) that
    meet ``where``, then ``tail``; and the parameters that go before where's.

    The rows are found by the primary key (grain, bucket, org_id, …) as a range of buckets,
    which holds every organization's and user's rows, unless the scope or ``users`` (the only
    users ``where`` or ``tail`` can match) narrow them:

    * a member's rows, or those of a few users, are read through the cuboid's user index.
      SQLite, with no statistics, prefers the primary key's range (30-100 times slower at a
      few thousand users), so the index is read as a table of its own (``u``, covering: it
      holds the whole key) and each of its rows fetched by that key;
    * an admin's buckets are named one by one (``bucket IN (…)``), so the key's org_id applies
      too and each bucket's rows of that organization are read, not every organization's."""
    step = 86400 if grain == "d" else 3600
    if scope.role == "member":
        users = [scope.user_id]
    if users is not None and "user_id" in cuboid.columns:
        on = " AND ".join(f"r.{c} = u.{c}" for c in ("grain", "bucket", *cuboid.columns))
        head = (
            f"SELECT {select} FROM {cuboid.table} u CROSS JOIN {cuboid.table} r"
            f" WHERE u.user_id IN ({','.join('?' * len(users))}) AND u.grain = ?"
            f" AND u.bucket >= ? AND u.bucket < ? AND {on}"
        )
        params: list[object] = [*users, grain, lo, hi]
    elif scope.role == "admin" and 0 < (hi - lo) // step <= _MAX_LISTED and lo % step == 0:
        buckets = list(range(lo, hi, step))
        marks = ",".join("?" * len(buckets))
        head = f"SELECT {select} FROM {cuboid.table} r WHERE r.grain = ? AND r.bucket IN ({marks})"
        params = [grain, *buckets]
    else:
        head = (
            f"SELECT {select} FROM {cuboid.table} r"
            " WHERE r.grain = ? AND r.bucket >= ? AND r.bucket < ?"
        )
        params = [grain, lo, hi]
    return f"{head}{and_where(where, 'AND')}{tail}", params


def _only(spec: UsageSpec, column: Callable[[str], str]) -> tuple[str, list[object]]:
    """``spec.only`` as conditions (`` AND …``) on ``column(dimension)``."""
    sql, params = "", list[object]()
    for dim, values in zip(spec.group_by, spec.only, strict=False):
        if values is not None:
            sql += f" AND {column(dim)} IN ({','.join('?' * len(values))})"
            params.extend(values)
    return sql, params


def query(db: sqlite3.Connection, scope: Scope, spec: UsageSpec) -> UsageRows:
    planned = plan(scope, spec)
    if planned is None:
        return "records", _raw(db, scope, spec)
    cuboid, (where, params) = planned
    lo, hi = spec.lo, spec.hi
    ranges = [("h", lo, hi)]
    # day rows for the whole UTC days that lie inside one bucket: every day when the buckets are
    # whole UTC days (or one bucket covers the range), none otherwise (days of other zones)
    if len(spec.boundaries) == 2 or all(b % 86400 == 0 for b in spec.boundaries):
        ranges = _grains(lo, hi)
    groups = "".join(f", r.{DIMENSIONS[d]}" for d in spec.group_by)
    only, only_params = _only(spec, lambda d: f"r.{DIMENSIONS[d]}")
    few = dict(zip(spec.group_by, spec.only, strict=False)).get("user")
    users = few if few is not None and 0 < len(few) <= _FEW_USERS else None
    bi = bucket_index("r.bucket", spec.boundaries)
    longest = max(b - a for a, b in itertools.pairwise(spec.boundaries))
    out: dict[tuple[int, tuple[str, ...]], list[Any]] = {}
    keys: dict[tuple[Any, ...], int] = {}  # (bucket index, group values…) as read → number
    blobs: list[bytes] = []
    of: list[int] = []
    ng = len(spec.group_by)
    for grain, a, b in ranges:
        # Histograms, two ways. Where a group has a row or two per bucket (a day's rows for day
        # buckets), the rows are read as they are and summed per group in one vectorised pass:
        # numpy's cost per call would dominate a sum per group. Where it has many (the hour
        # rows of a time zone's days: about 300 a group at 10M records), SQLite sums them as it
        # groups the sums (gw_hist_sum), one read instead of two and no Python step per row.
        whole = spec.histograms and longest // (86400 if grain == "d" else 3600) >= _MANY_ROWS
        sums = f"{bi} AS bi{groups}, {rollup_sums(whole, spec.scalars)}"
        sql, args = _scan(cuboid, scope, sums, where, grain, a, b, f"{only} GROUP BY bi{groups}",
                          users)  # fmt: skip
        args += [*params, *only_params]
        _merge(out, db.execute(sql, args).fetchall(), ng)
        if spec.histograms and not whole:
            hists = f"{bi} AS bi{groups}, r.hist"
            sql = _scan(cuboid, scope, hists, where, grain, a, b, only, users)[0]
            rows = [row for row in db.execute(sql, args).fetchall() if row[-1]]
            of.extend([keys.setdefault(row[:-1], len(keys)) for row in rows])
            blobs.extend([row[-1] for row in rows])
    if blobs:
        summed = _sum_grouped(blobs, np.array(of, np.int64), len(keys))
        for read, i in keys.items():
            out[(int(read[0]), tuple(str(v) for v in read[1:]))][NS].append(summed[i])
    return "rollups", out


def _raw(
    db: sqlite3.Connection, scope: Scope, spec: UsageSpec
) -> dict[tuple[int, tuple[str, ...]], list[Any]]:
    where, params = spec.query.where(scope)
    conds = [where] if where else []
    conds += ["r.id >= ?", "r.id < ?"]
    params = [*params, ulid_floor(spec.lo), ulid_floor(spec.hi)]
    join = (
        " JOIN request_facets f ON f.request_id = r.id AND f.name = 'tag'"
        if "tag" in spec.group_by
        else ""
    )
    only, only_params = _only(spec, raw_dim)
    if only:
        conds.append(only.removeprefix(" AND "))
        params.extend(only_params)
    groups = "".join(f", {raw_dim(d)}" for d in spec.group_by)
    group_nums = "".join(f", {i + 2}" for i in range(len(spec.group_by)))
    t = "unixepoch(r.started_at)"
    sql = (
        f"SELECT {bucket_index(t, spec.boundaries)}{groups}, {raw_sums(spec.histograms)}"
        f" FROM requests r{join} WHERE {' AND '.join(conds)}"
        f" AND {t} >= ? AND {t} < ? GROUP BY 1{group_nums}"
    )
    out: dict[tuple[int, tuple[str, ...]], list[Any]] = {}
    _merge(out, db.execute(sql, [*params, spec.lo, spec.hi]).fetchall(), len(spec.group_by))
    return out


def facet_values(
    db: sqlite3.Connection, scope: Scope, dim: str, lo: int, hi: int, limit: int
) -> list[tuple[str, int]]:
    """Distinct values of ``dim`` seen in [lo, hi) (hour-aligned) in scope, most used first."""
    needed = {dim, "org"} if scope.role == "admin" else {dim, "user"}
    if scope.role == "owner":
        needed = {dim}
    cuboid = choose(needed)
    if cuboid is None:  # pragma: no cover - every dimension has a cuboid
        raise ValueError(dim)
    where, params = scope.clause()
    col = f"r.{DIMENSIONS[dim]}"
    ranges = _grains(lo, hi)
    scans = [_scan(cuboid, scope, f"{col} AS v, r.requests AS n", where, *r) for r in ranges]
    union = " UNION ALL ".join(sql for sql, _ in scans)
    args = [p for _, range_params in scans for p in (*range_params, *params)]
    rows = db.execute(
        f"SELECT v, sum(n) FROM ({union}) AS x WHERE v != '' GROUP BY v ORDER BY 2 DESC, 1 LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [(str(v), int(n)) for v, n in rows]
