"""Process and load measurement for bench/run.py: wrk runs and their parsing, RSS and CPU
sampling from /proc, and process helpers. Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class BenchError(Exception):
    """The harness cannot go on (a process did not start, wrk failed, …)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None, name: str, timeout: float) -> int | None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.  Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {proc.pid}) did not exit {timeout:.0f}s after SIGTERM: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def proc_status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces: fields resume after the last ')'.
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_mb(pid: int) -> float:
    """VmRSS of the gateway plus any worker processes it started, in MB (MiB)."""
    kb = sum(proc_status_kb(p, "VmRSS") for p in [pid, *descendants(pid)])
    return kb / 1024.0


class RssSampler:
    """Samples the gateway's RSS every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.max_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        mb = rss_mb(self.pid)
        self.max_mb = max(self.max_mb, mb)
        return mb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)


_TICK = float(os.sysconf("SC_CLK_TCK"))


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def _system_busy_s() -> float:
    """CPU seconds the machine spent in processes (all cores): user, nice, system and steal.
    Interrupt time (loopback networking is mostly softirq) belongs to no process: left out."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
            int(x) for x in f.readline().split()[1:9]
        )
    return (user + nice + system + steal) / _TICK


class CpuProbe:
    """Who used the CPU during a measurement: the gateway, the upstream, wrk, and everything
    else on the machine (other load makes the figures noisy)."""

    def __init__(self, gateway_pid: int, upstream_pid: int) -> None:
        self.pids = {"gateway": gateway_pid, "upstream": upstream_pid}

    def snapshot(self) -> dict[str, float]:
        gw = self.pids["gateway"]
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished (waited) wrk runs
        me = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "t": time.monotonic(),
            "busy": _system_busy_s(),
            "gateway": sum(_proc_cpu_s(p) for p in [gw, *descendants(gw)]),
            "upstream": _proc_cpu_s(self.pids["upstream"]),
            "wrk": kids.ru_utime + kids.ru_stime,
            "harness": me.ru_utime + me.ru_stime,
        }

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Average cores used by each party between two snapshots."""
        wall = max(after["t"] - before["t"], 1e-9)
        used = {k: (after[k] - before[k]) / wall for k in before if k != "t"}
        busy = used.pop("busy")
        used["other"] = max(0.0, busy - sum(used.values()))
        return used


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    label: str
    connections: int
    requests: int  # completed responses (any status)
    non2xx: int
    socket_errors: dict[str, int]
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    max_us: float
    cpu_cores: dict[str, float] = field(default_factory=dict)  # gateway/upstream/wrk/other

    @property
    def gateway_cpu_us_per_req(self) -> float | None:
        if "gateway" not in self.cpu_cores or self.rps <= 0:
            return None
        return self.cpu_cores["gateway"] * 1e6 / self.rps

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())


_RESULT_RE = re.compile(r"^BENCH_RESULT (\{.*\})\s*$", re.M)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ", re.M)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_RPS_RE = re.compile(r"^Requests/sec:\s*([\d.]+)", re.M)


def parse_wrk(label: str, connections: int, out: str) -> WrkResult:
    m = _RESULT_RE.search(out)
    if not m:
        raise BenchError(f"wrk output has no BENCH_RESULT line ({label}):\n{out}")
    data = json.loads(m.group(1))
    summary = _REQUESTS_RE.search(out)
    requests = int(summary.group(1)) if summary else int(data["requests"])
    non2xx_m = _NON2XX_RE.search(out)
    non2xx = int(non2xx_m.group(1)) if non2xx_m else int(data["errors_status"])
    rps_m = _RPS_RE.search(out)
    duration_s = max(int(data["duration_us"]) / 1e6, 1e-9)
    rps = float(rps_m.group(1)) if rps_m else requests / duration_s
    return WrkResult(
        label=label,
        connections=connections,
        requests=requests,
        non2xx=non2xx,
        socket_errors={
            k: int(data[f"errors_{k}"]) for k in ("connect", "read", "write", "timeout")
        },
        rps=rps,
        p50_us=float(data["p50_us"]),
        p90_us=float(data["p90_us"]),
        p99_us=float(data["p99_us"]),
        mean_us=float(data["mean_us"]),
        max_us=float(data["max_us"]),
    )


def run_wrk(
    wrk: str,
    label: str,
    url: str,
    script: Path,
    connections: int,
    duration: int,
    probe: CpuProbe | None = None,
) -> WrkResult:
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    log(f"{label}: wrk -t1 -c{connections} -d{duration}s {url}")
    before = probe.snapshot() if probe else None
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish in time ({label})") from exc
    after = probe.snapshot() if probe else None
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({label}, exit {proc.returncode}):\n{proc.stderr}")
    res = parse_wrk(label, connections, proc.stdout)
    if before and after:
        res.cpu_cores = CpuProbe.cores(before, after)
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in res.cpu_cores.items())
    errors = {k: v for k, v in res.socket_errors.items() if v}
    log(
        f"{label}: {res.rps:,.0f} req/s, p50 {res.p50_us:.0f} us, p99 {res.p99_us:.0f} us, "
        f"{res.requests} requests, non-2xx {res.non2xx}, socket errors {errors or 0}"
        + (f"; cores: {cpu}" if cpu else "")
    )
    if res.non2xx:
        log(f"!!! {label}: {res.non2xx} NON-2xx RESPONSES — see the gateway log")
    return res


# --------------------------------------------------------------------------- records
