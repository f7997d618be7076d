"""The durable spool (§S): where request records wait, on disk, while the database is slow,
locked or down.

A spool is a directory of append-only segment files, one record per line:
``<crc32 as 8 hex digits> <record as JSON>\\n``. Segment names are ULIDs, so name order is
the order records were spooled in. Each process holds an exclusive ``flock`` on the segments
it writes; a segment nobody holds (its process crashed, or stopped with the database down) is
an orphan that the next writer to look adopts and replays. The spool never decides what a line
means: the store encodes and decodes its own prepared records.

Durability: lines are written with ``os.write`` (in the kernel's page cache at once, so a killed
process loses nothing it wrote) and ``fsync``'d by ``sync``, which the writer calls at least
once a second (a machine crash loses at most that second)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gatewatch.records import new_id

__all__ = ["Segment", "Spool"]

log = logging.getLogger("gatewatch.spool")

_SUFFIX = ".spool"
_READ_BLOCK = 1 << 22  # bytes read at a time when replaying


def frame(payload: bytes) -> bytes:
    """One spool line: a checksum, the payload, a newline (payloads are JSON: no raw newline)."""
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


def unframe(line: bytes) -> bytes | None:
    """The payload of a spool line, or None when the line is torn or damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    return payload if zlib.crc32(payload) == crc else None


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    size: int = 0  # bytes written (or found) so far
    records: int = 0  # lines in it
    done_bytes: int = 0  # bytes already replayed into the database
    done_records: int = 0
    sealed: bool = False  # no more appends (full, or adopted from another process)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.path.name

    @property
    def waiting(self) -> int:
        return self.records - self.done_records


class Spool:
    """Segments this process holds, oldest first. Not thread-safe: the record writer calls it
    under its own lock."""

    def __init__(self, directory: str | Path, max_bytes: int, segment_bytes: int = 16 << 20):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(max_bytes // 4, 4096))
        self.segments: list[Segment] = []
        self.dirty = False
        self.damaged = 0  # torn or corrupt lines skipped (from crashed writers)

    # ---- state ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes spooled and not yet replayed."""
        return sum(s.size - s.done_bytes for s in self.segments)

    @property
    def records(self) -> int:
        """Records spooled and not yet replayed."""
        return sum(s.waiting for s in self.segments)

    def room(self, size: int) -> bool:
        return sum(s.size for s in self.segments) + size <= self.max_bytes

    # ---- writing ---------------------------------------------------------------------------

    def append(self, payloads: list[bytes]) -> None:
        """Append records (the caller checked ``room``, or accepts going over by one batch)."""
        if not payloads:
            return
        data = b"".join(frame(p) for p in payloads)
        seg = self.segments[-1] if self.segments else None
        if seg is None or seg.sealed or seg.size + len(data) > self.segment_bytes:
            seg = self._new_segment()
        view = memoryview(data)
        while view:
            written = os.write(seg.fd, view)
            view = view[written:]
        seg.size += len(data)
        seg.records += len(payloads)
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            for seg in self.segments:
                if not seg.sealed or seg is self.segments[-1]:
                    os.fsync(seg.fd)

    def _new_segment(self) -> Segment:
        if self.segments:
            last = self.segments[-1]
            if not last.sealed:
                os.fsync(last.fd)
                last.sealed = True
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{new_id()}{_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        seg = Segment(path, fd)
        self.segments.append(seg)
        _fsync_dir(self.dir)
        return seg

    # ---- reading ---------------------------------------------------------------------------

    def read(self, seg: Segment, max_records: int) -> tuple[list[bytes], int, int]:
        """Up to ``max_records`` payloads after what is replayed, and how far they reach:
        (payloads, end offset, lines consumed incl. damaged ones). A torn last line (a process
        killed in the middle of a write) is skipped as damaged."""
        out: list[bytes] = []
        offset, lines, want = seg.done_bytes, 0, _READ_BLOCK
        while len(out) < max_records and offset < seg.size:
            block = os.pread(seg.fd, min(want, seg.size - offset), offset)
            if not block:
                break
            pos = 0
            while len(out) < max_records:
                end = block.find(b"\n", pos)
                if end < 0:
                    break
                payload = unframe(block[pos:end])
                if payload is None:
                    self.damaged += 1
                    log.error("spool %s: skipped a damaged line at byte %d", seg.name, offset + pos)
                else:
                    out.append(payload)
                lines += 1
                pos = end + 1
            offset += pos
            if pos == 0:
                if offset + len(block) < seg.size:
                    want *= 2  # one record longer than a block (a large body): read more
                    continue
                self.damaged += 1  # the segment ends in a line without its end
                log.error("spool %s: skipped a torn last line", seg.name)
                offset, lines = seg.size, lines + 1
                break
            want = _READ_BLOCK
        return out, offset, lines

    def mark_done(self, seg: Segment, offset: int, lines: int) -> None:
        if seg not in self.segments:  # dropped meanwhile (spool full)
            return
        seg.done_bytes = offset
        seg.done_records = min(seg.done_records + lines, seg.records)
        if seg.done_bytes >= seg.size and (seg.sealed or seg is not self.segments[-1]):
            self.remove(seg)

    def remove(self, seg: Segment) -> None:
        """Forget a segment and delete its file (replayed, or dropped when the spool is full)."""
        self.segments.remove(seg)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        os.close(seg.fd)

    def reset_active(self) -> None:
        """The last segment is fully replayed and nothing waits: start afresh on the next spill
        (its file goes, rather than growing with lines already stored)."""
        if self.segments and self.segments[-1].done_bytes >= self.segments[-1].size:
            self.remove(self.segments[-1])

    # ---- orphans ---------------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Take over the segments no live process holds (a crashed or stopped writer's), and
        return how many records they hold. They replay before anything spooled after."""
        if not self.dir.is_dir():
            return 0
        mine = {s.name for s in self.segments}
        found = 0
        adopted: list[Segment] = []
        for path in sorted(self.dir.glob(f"*{_SUFFIX}")):
            if path.name in mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live process holds it
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            if size == 0:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            seg = Segment(path, fd, size=size, sealed=True)
            seg.records = _count_lines(fd, size)
            adopted.append(seg)
            found += seg.records
        if adopted:
            # older than anything this process spooled itself: replay them first
            self.segments = sorted(adopted, key=lambda s: s.name) + self.segments
            log.warning(
                "spool: adopted %d segment(s) holding %d record(s) left by an earlier process;"
                " replaying them",
                len(adopted),
                found,
            )
        return found

    def close(self) -> None:
        """Release the segments (their files stay for the next start to replay)."""
        self.sync()
        for seg in self.segments:
            os.close(seg.fd)
        self.segments.clear()

    def __iter__(self) -> Iterator[Segment]:
        return iter(list(self.segments))


def _count_lines(fd: int, size: int) -> int:
    count, offset = 0, 0
    while offset < size:
        block = os.pread(fd, min(_READ_BLOCK, size - offset), offset)
        if not block:
            break
        count += block.count(b"\n")
        offset += len(block)
    if size and os.pread(fd, 1, size - 1) != b"\n":
        count += 1  # a torn last line: read (and skipped as damaged) like any other
    return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
