"""An incremental Server-Sent Events parser that keeps each event's raw bytes, so events can be
relayed unchanged (or dropped) while their data is read."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_EVENT_BYTES", "EventTooLarge", "SSEEvent", "SSEParser"]

# The most bytes of one event the parser holds while waiting for its end (docs/proxy.md,
# "Streaming"): a stream past it is broken, not a reason to grow without end.
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024

# A blank line ends an event: two line ends in a row, each CRLF, LF or CR. A CR followed by an
# LF is one line end. A CR at the end of the bytes so far is a line end at once (so a stream of
# bare CRs is read as it comes), except right after a CRLF: there the LF is awaited.
_BLANK_LINE: Final = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
# The start of an event waits as bytes, joined to each chunk; from this size on it grows in
# place (a bytearray), so a long event costs time in proportion to its size, not its square.
_GROW_IN_PLACE: Final = 64 * 1024


@dataclass(slots=True)
class SSEEvent:
    raw: bytes  # the event's bytes as received, blank-line terminator included
    event: str | None
    data: bytes  # data lines joined with b"\n"


class EventTooLarge(ValueError):
    """More than ``limit`` bytes arrived without the end of an event. ``events`` are the
    events the same chunk completed before it; the parser has let go of the bytes it held."""

    def __init__(self, limit: int, events: list[SSEEvent]) -> None:
        size = f"{limit >> 20} MiB" if limit and not limit & 0xFFFFF else f"{limit} bytes"
        super().__init__(f"more than {size} without the end of an SSE event")
        self.limit = limit
        self.events = events


class SSEParser:
    """Feed bytes as they arrive; get back every event completed by them.

    Lines end in LF, CRLF or CR (all three, as the SSE spec allows); an event ends at a blank
    line. Bytes of an incomplete event wait in the buffer, so where the chunks were cut never
    changes the events. At most ``max_pending`` bytes wait: past that ``feed`` raises
    ``EventTooLarge``. Call ``end`` when the stream ends."""

    __slots__ = ("_buf", "_cr", "_scan", "max_pending")

    def __init__(self, max_pending: int = MAX_EVENT_BYTES) -> None:
        self.max_pending = max_pending
        self._buf: bytes | bytearray = b""  # the bytes of the event on its way
        self._scan = 0  # _buf holds no blank line that starts before this offset
        self._cr = False  # a CR was seen: line ends are looked for as any of the three

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._cr and b"\r" in chunk:
            self._cr = True
        pos = 0
        pending = self._buf
        if not pending:
            buf = chunk
            sep = _separator(buf, 0, self._cr)
        elif isinstance(pending, bytes):
            buf = pending + chunk
            pos = self._scan
            sep = _separator(buf, pos, self._cr)
            self._buf = b""
        else:  # a long event: it grows in place and is copied out once, when its end has come
            pending += chunk
            pos = self._scan
            sep = _separator(pending, pos, self._cr)
            if (
                _BLANK_LINE.search(pending, pos) is None
                if sep is None
                else pending.find(sep, pos) < 0
            ):
                self._keep(pending, 0, [])
                return []
            buf = bytes(pending)
            self._buf = b""
        events: list[SSEEvent] = []
        start = 0
        if sep is None:
            search = _BLANK_LINE.search
            n = len(buf)
            while (m := search(buf, pos)) is not None:
                pos = m.end()
                if pos == n and buf.endswith(b"\r\n\r"):
                    break  # a CRLF stream cut in its last CRLF: the LF will follow (see end)
                if m.start() != start:  # a blank line before any field ends no event
                    events.append(_parse(buf[start:pos]))
                start = pos
        else:
            find = buf.find
            width = len(sep)
            while (i := find(sep, pos)) >= 0:
                pos = i + width
                if i != start:
                    events.append(_parse(buf[start:pos]))
                start = pos
        if start < len(buf):
            self._keep(buf, start, events)
        return events

    def _keep(self, buf: bytes | bytearray, start: int, events: list[SSEEvent]) -> None:
        """Hold ``buf[start:]``, the start of an event, for the next chunks."""
        size = len(buf) - start
        if size > self.max_pending:
            self._buf = b""
            raise EventTooLarge(self.max_pending, events)
        if size < _GROW_IN_PLACE:
            if start or not isinstance(buf, bytes):
                buf = bytes(memoryview(buf)[start:])
        elif start or not isinstance(buf, bytearray):
            buf = bytearray(memoryview(buf)[start:])
        self._buf = buf
        # the next search starts where a blank line may begin (with a CRLF's CR, not its LF)
        scan = max(size - 3, 0)
        if scan and buf[scan] == 10 and buf[scan - 1] == 13:
            scan -= 1
        self._scan = scan

    def end(self) -> list[SSEEvent]:
        """The stream has ended: the event still held because its blank line ended the stream
        with a CR (after a CRLF, where an LF could have followed), if any. The bytes of an
        incomplete event are dropped, as the SSE spec says."""
        buf, self._buf = self._buf, b""
        if buf.endswith(b"\r\n\r") and buf.strip(b"\r\n"):
            return [_parse(bytes(buf))]
        return []

    @property
    def pending(self) -> bytes:
        """The bytes of the event on its way (a copy)."""
        return bytes(self._buf)

    @property
    def pending_size(self) -> int:
        return len(self._buf)


def _separator(buf: bytes | bytearray, pos: int, cr: bool) -> bytes | None:
    """The blank line to look for in ``buf[pos:]``: ``\\n\\n`` in a stream that has sent no CR,
    ``\\r\\n\\r\\n`` where every line ends in CRLF, else None (any mix: the regular expression)."""
    if not cr:
        return b"\n\n"
    crlf = buf.count(b"\r\n", pos)
    if buf.count(b"\r", pos) == crlf == buf.count(b"\n", pos):
        return b"\r\n\r\n"
    return None


def _parse(raw: bytes) -> SSEEvent:
    event: str | None = None
    data: list[bytes] = []
    for line in raw.splitlines():
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
