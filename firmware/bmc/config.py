"""Runtime settings, layered over the board file's defaults.

    cfg = Config(store, defn, events=None)   # store: a bmc.store.Store or a root path
    cfg.get()                 # {"restore_policy": ..., "min_off_ms": ..., ...,
                              #  "pgood_timeout_ms.<rail>": ...}  (effective values)
    cfg.value("min_off_ms")   # one effective value (fast path for the power machine)
    cfg.set("min_off_ms", 8000)       # validate, persist; returns the value
    cfg.unset("min_off_ms")           # back to the board's default
    cfg.overrides()           # only what differs from the board file
    cfg.problem               # None, "missing" or "corrupt: ..." from loading

`set` raises ValueError with a message naming the key for an unknown key or a
bad value (ints may be given as decimal strings, e.g. from a CLI). Only the
overrides are stored (`config.json`); a corrupt file falls back to the board's
defaults and logs a "store" event. A stored override that no longer validates
against the board (e.g. a rail renamed) is dropped with a "config" event.
"""

from bmc.store import Store
from bmc.timing import PGOOD_TIMEOUT_RANGE, RESTORE_POLICIES, TIMING

_NAME = "config"
_PGOOD = "pgood_timeout_ms."


class Config:
    def __init__(self, store, defn, events=None):
        if isinstance(store, str):
            store = Store(store)
        self._store = store
        self._defn = defn
        self._events = events
        self._defaults = {"restore_policy": defn["restore_policy"]}
        for k in TIMING:
            self._defaults[k] = defn["timing"][k]
        for r in defn["rails"]:
            self._defaults[_PGOOD + r["name"]] = r["pgood_timeout_ms"]
        data, self.problem = store.load(_NAME, {})
        if self.problem and self.problem != "missing" and events is not None:
            events.add("store", "corrupt", "config: " + self.problem + "; defaults used")
        self._over = {}
        for k in data:
            try:
                self._over[k] = self._check(k, data[k])
            except ValueError as e:
                if events is not None:
                    events.add("config", "dropped", str(e))
        self._eff = {}
        self._rebuild()

    def _rebuild(self):
        eff = dict(self._defaults)
        for k in self._over:
            eff[k] = self._over[k]
        self._eff = eff

    def keys(self):
        return list(self._defaults.keys())

    def get(self):
        return dict(self._eff)

    def value(self, key):
        return self._eff[key]

    def pgood_timeout_ms(self, rail_index):
        return self._eff[_PGOOD + self._defn["rails"][rail_index]["name"]]

    def overrides(self):
        return dict(self._over)

    def _check(self, key, value):
        if not isinstance(key, str) or key not in self._defaults:
            raise ValueError(
                "unknown setting %s (known: %s)" % (_shown(key), ", ".join(sorted(self._defaults)))
            )
        if key == "restore_policy":
            if value not in RESTORE_POLICIES:
                raise ValueError(
                    "restore_policy: expected one of %s, got %s"
                    % (", ".join(RESTORE_POLICIES), _shown(value))
                )
            return value
        if key.startswith(_PGOOD):
            lo, hi = PGOOD_TIMEOUT_RANGE
        else:
            lo, hi = TIMING[key][1], TIMING[key][2]
        if isinstance(value, str):
            s = value.strip()
            if s and (s.isdigit() or (s[0] == "-" and s[1:].isdigit())):
                value = int(s)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("%s: expected an integer (ms), got %s" % (key, _shown(value)))
        if value < lo or value > hi:
            raise ValueError("%s: %s outside %d-%d" % (key, _shown(value), lo, hi))
        return value

    def set(self, key, value):
        value = self._check(key, value)
        new = dict(self._over)
        if value == self._defaults[key]:
            new.pop(key, None)
        else:
            new[key] = value
        self._store.save(_NAME, new)  # OSError propagates; nothing changed then
        self._over = new
        self._rebuild()
        if self._events is not None:
            self._events.add("config", "set", "%s=%s" % (key, value))
        return value

    def unset(self, key):
        if key not in self._defaults:
            self._check(key, None)  # raises the unknown-key error
        return self.set(key, self._defaults[key])


def _shown(value):
    """A value for a message, cut short: a request of nearly a frame's length quoted
    whole would not fit the answer's frame."""
    r = repr(value)
    return r if len(r) <= 40 else r[:40] + "..."
