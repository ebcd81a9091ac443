"""A persistent, bounded event log.

    log = EventLog(store, clock, boot_count, capacity=64)
    seq = log.add("fault", "pgood_lost", "rail 5v")
    log.entries(since=0)   # [{"seq", "boot", "uptime_ms", "kind", "cause", "detail"}]

Every entry is appended to `events.jsonl` as it happens (nothing is held back,
so the record of a fault survives any reset that follows it). The file is
compacted (temp-then-rename) to the newest `capacity` entries once it holds
2 * capacity lines, so flash sees one small append per event and one rewrite
per `capacity` events. RAM holds at most `capacity` entries; the oldest are
dropped and `dropped` counts them (sequence numbers are continuous, so
dropped = seq of the oldest kept - 1). A corrupt file or torn last line is
skipped, reported by an event of kind "store", and never stops the firmware.

Kinds used by the core: "bmc" (start), "power" (state changes), "action"
(accepted requests), "fault", "warning", "store", "config".
"""

import json

DETAIL_MAX = 96
_NAME = "events"


class EventLog:
    def __init__(self, store, clock, boot_count=0, capacity=64, name=_NAME, deferred=False):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._store = store
        # deferred: `add` only records in RAM and the main loop calls `flush` on a
        # pass that takes no request; a flash write never delays an answer.
        self.deferred = deferred
        self._pending = 0
        self._clock = clock
        self.boot = boot_count
        self.capacity = capacity
        self._name = name
        self._buf = []
        self.last_seq = 0
        self.write_errors = 0
        self.added = 0
        bad = 0
        lines = 0
        for line in store.read_lines(name):
            lines += 1
            try:
                e = json.loads(line)
                if not (isinstance(e, list) and len(e) == 6 and isinstance(e[0], int)):
                    raise ValueError("bad entry")
                if e[0] <= self.last_seq:
                    raise ValueError("sequence goes back")
            except MemoryError:
                raise
            except Exception:
                bad += 1
                continue
            self.last_seq = e[0]
            self._buf.append(tuple(e))
            if len(self._buf) > capacity:
                self._buf.pop(0)
        self._file_lines = lines
        if bad:
            # Rewrite so the torn/corrupt lines are gone, then say so.
            self._compact()
            self.add("store", "corrupt", "%s: %d unreadable line(s) skipped" % (name, bad))

    @property
    def dropped(self):
        if self._buf:
            return self._buf[0][0] - 1
        return self.last_seq

    def __len__(self):
        return len(self._buf)

    def add(self, kind, cause, detail=""):
        """Record an event now; returns its sequence number."""
        if len(detail) > DETAIL_MAX:
            detail = detail[:DETAIL_MAX]
        self.last_seq += 1
        self.added += 1
        e = (self.last_seq, self.boot, self._clock.uptime_ms(), kind, cause, detail)
        self._buf.append(e)
        if len(self._buf) > self.capacity:
            self._buf.pop(0)
        self._pending += 1
        if not self.deferred:
            self.flush()
        return self.last_seq

    def flush(self):
        """Put the entries added since the last flush on flash (one append)."""
        n = self._pending
        if not n:
            return
        self._pending = 0
        try:
            if self._file_lines + n >= 2 * self.capacity or n > len(self._buf):
                self._compact()
            else:
                buf = self._buf
                lines = [json.dumps(list(buf[i])) for i in range(len(buf) - n, len(buf))]
                self._store.append_lines(self._name, lines)
                self._file_lines += n
        except OSError:
            self.write_errors += 1
            self._file_lines = 2 * self.capacity  # compact (rewrite all) next time

    def _compact(self):
        self._store.save_lines(self._name, [json.dumps(list(e)) for e in self._buf])
        self._file_lines = len(self._buf)

    def entries(self, since=0, limit=None):
        """Entries with seq > since, oldest first, as dicts."""
        out = []
        for e in self._buf:
            if e[0] > since:
                out.append(as_dict(e))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def last(self):
        return as_dict(self._buf[-1]) if self._buf else None


def as_dict(e):
    return {
        "seq": e[0],
        "boot": e[1],
        "uptime_ms": e[2],
        "kind": e[3],
        "cause": e[4],
        "detail": e[5],
    }
