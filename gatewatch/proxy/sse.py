"""An incremental Server-Sent Events parser that keeps each event's raw bytes, so events can be
relayed unchanged (or dropped) while their data is read."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]


@dataclass(slots=True)
class SSEEvent:
    raw: bytes  # the event's bytes as received, blank-line terminator included
    event: str | None
    data: bytes  # data lines joined with b"\n"


class SSEParser:
    """Feed bytes as they arrive; get back every event completed by them.

    Lines end in LF or CRLF; an event ends at a blank line. Bytes of an incomplete event wait
    in the buffer, so where the chunks were cut never changes the events."""

    __slots__ = ("_buf", "_scan")

    def __init__(self) -> None:
        self._buf = b""
        self._scan = 0  # bytes of _buf already known to hold no complete event

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        start = 0
        pos = max(self._scan - 1, 0)
        n = len(buf)
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            # a blank line: this LF directly follows the previous line's LF (or CRLF)
            if (nl > start and buf[nl - 1 : nl] == b"\n") or (
                nl > start + 1 and buf[nl - 2 : nl] == b"\n\r"
            ):
                raw = buf[start : nl + 1]
                events.append(self._parse(raw))
                start = nl + 1
            elif nl == start:  # stray blank line between events
                start = nl + 1
            pos = nl + 1
        self._buf = buf[start:] if start < n else b""
        self._scan = len(self._buf)
        return events

    @property
    def pending(self) -> bytes:
        return self._buf

    @staticmethod
    def _parse(raw: bytes) -> SSEEvent:
        event: str | None = None
        data: list[bytes] = []
        for line in raw.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line or line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                data.append(value)
            elif field == b"event":
                event = value.decode("utf-8", "replace")
        return SSEEvent(raw, event, b"\n".join(data))
