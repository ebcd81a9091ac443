"""A persistent, bounded event log.

    log = EventLog(store, clock, boot_count, capacity=64)
    seq = log.add("fault", "pgood_lost", "rail 5v")
    log.entries(since=0)   # [{"seq", "boot", "uptime_ms", "kind", "cause", "detail"}]
    log.iter_entries(0)    # the same, one at a time

The log lives on flash, in `events.jsonl`, one JSON list a line; it keeps the
newest `capacity` entries. Every entry is appended as it happens (deferred: at
the end of the loop pass, after any reply; nothing is held back longer, so the
record of a fault survives any reset that follows it). The file is compacted
(the newest `capacity` lines copied to a temp file, renamed over it) once it
holds 2 * capacity lines, so flash sees one small append per event and one
rewrite per `capacity` events. RAM holds only the entries not yet appended and
a few counters: 64 entries kept in RAM took about 11 KB of heap, and reading
the log is rare (the `events` command), so it is read from flash, a line at a
time. `dropped` counts the entries no longer kept (sequence numbers are
continuous). A corrupt file or torn last line is skipped, reported by an event
of kind "store", and never stops the firmware: a line that is not UTF-8 or is
longer than LINE_MAX (read in pieces, never whole) is skipped like any line
that is not an entry, and the lines after it are read.

Kinds used by the core: "bmc" (start), "power" (state changes), "action"
(accepted requests), "fault", "warning", "store", "config".
"""

import json

DETAIL_MAX = 96
LINE_MAX = 1024  # bytes: the longest line read whole (the log writes ~700 at most)
_NAME = "events"


def _parse(line):
    """The entry (a list of 6) of one line, or None when the line is not one."""
    try:
        e = json.loads(line)
    except MemoryError:
        raise
    except Exception:
        return None
    if isinstance(e, list) and len(e) == 6 and isinstance(e[0], int):
        return e
    return None


class EventLog:
    def __init__(self, store, clock, boot_count=0, capacity=64, name=_NAME, deferred=False):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._store = store
        # deferred: `add` only records in RAM and the main loop calls `flush` on a
        # pass that takes no request; a flash write never delays an answer.
        self.deferred = deferred
        self._pending = []  # entries not on flash yet
        self._clock = clock
        self.boot = boot_count
        self.capacity = capacity
        self._name = name
        self.last_seq = 0
        self.write_errors = 0
        self.added = 0
        self._file_lines = 0  # good lines in the file
        self._dirty = False  # added to since the last flush
        self._broken = False  # a write failed: the file is rewritten whole next time
        bad = 0
        for line in store.read_lines(name, LINE_MAX):
            e = _parse(line)
            if e is None or e[0] <= self.last_seq:
                bad += 1
                continue
            self.last_seq = e[0]
            self._file_lines += 1
        if bad:
            # Rewrite so the torn/corrupt lines are gone, then say so. A full flash
            # (ENOSPC) must not stop the start: the next flush rewrites it, as after
            # any failed write.
            try:
                self._compact()
            except OSError:
                self.write_errors += 1
                self._broken = True
            self.add("store", "corrupt", "%s: %d unreadable line(s) skipped" % (name, bad))

    def __len__(self):
        """Entries kept."""
        return min(self.capacity, self._file_lines + len(self._pending))

    @property
    def dropped(self):
        """Entries no longer kept, the oldest first (torn ones too)."""
        return self.last_seq - len(self)

    def add(self, kind, cause, detail=""):
        """Record an event now; returns its sequence number."""
        if len(detail) > DETAIL_MAX:
            detail = detail[:DETAIL_MAX]
        self.last_seq += 1
        self.added += 1
        e = (self.last_seq, self.boot, self._clock.uptime_ms(), kind, cause, detail)
        self._pending.append(e)
        self._dirty = True
        if len(self._pending) > self.capacity:
            self._pending.pop(0)  # never written: a burst longer than the log
        if not self.deferred:
            self.flush()
        return self.last_seq

    def flush(self):
        """Put the entries added since the last flush on flash (one append). After a
        failed write the entries stay pending, and the next flush, after the next
        event, rewrites the file whole (what the failed append left is not known)."""
        p = self._pending
        if not p or not self._dirty:
            return
        self._dirty = False
        try:
            if self._broken or self._file_lines + len(p) >= 2 * self.capacity:
                self._compact()
            else:
                self._store.append_lines(self._name, [json.dumps(list(e)) for e in p])
                self._file_lines += len(p)
                self._pending = []
        except OSError:
            self.write_errors += 1
            self._broken = True

    def _compact(self):
        """Rewrite the file with the kept entries (those pending included), a line at
        a time: the old file's lines are read while the new one is written."""
        self._file_lines = 0
        for _ in self._good_lines():
            self._file_lines += 1
        n = len(self)
        self._store.save_lines(self._name, self._kept_lines())
        self._file_lines = n
        self._pending = []
        self._broken = False

    def _good_lines(self):
        """(line, entry) of each line that holds an entry newer than the one before."""
        last = 0
        for line in self._store.read_lines(self._name, LINE_MAX):
            e = _parse(line)
            if e is not None and e[0] > last:
                last = e[0]
                yield line, e

    def _kept(self):
        """(line, entry) of each entry kept, oldest first: the good lines of the file,
        then the pending entries (line None), the newest `capacity` of them."""
        skip = self._file_lines + len(self._pending) - self.capacity
        last = 0
        for line, e in self._good_lines():
            last = e[0]
            if skip > 0:
                skip -= 1
            else:
                yield line, e
        for e in self._pending:
            if skip > 0:
                skip -= 1
            elif e[0] > last:
                yield None, e

    def _kept_lines(self):
        for line, e in self._kept():
            yield json.dumps(list(e)) if line is None else line.rstrip("\n")

    def iter_entries(self, since=0):
        """Entries with seq > since, oldest first, as dicts, read one at a time."""
        for _, e in self._kept():
            if e[0] > since:
                yield as_dict(e)

    def entries(self, since=0, limit=None):
        """Entries with seq > since, oldest first, as dicts."""
        out = []
        for d in self.iter_entries(since):
            out.append(d)
            if limit is not None and len(out) >= limit:
                break
        return out

    def last(self):
        d = None
        for d in self.iter_entries(self.last_seq - 1):
            pass
        return d


def as_dict(e):
    return {
        "seq": e[0],
        "boot": e[1],
        "uptime_ms": e[2],
        "kind": e[3],
        "cause": e[4],
        "detail": e[5],
    }
