"""Persistent BMC state: boot count, reset cause, the SBC power state we intend.

    st = BmcState(store, reset_cause=board.reset_cause())   # counts this boot
    st.boot_count, st.reset_cause, st.prev_reset_cause
    st.sbc_on          # True/False: what the BMC last intended; None: never known
    st.set_sbc_on(True)   # saved only when it changes (flash wear)
    st.problem         # None, "missing" or "corrupt: ..." from loading

`sbc_on` serves the LastState restore policy and detects power lost while the
BMC was away (SBC found off at start while `sbc_on` was True).
"""

_NAME = "state"
RESET_CAUSES = ("power_on", "watchdog", "soft", "unknown")


class BmcState:
    def __init__(self, store, reset_cause="unknown", deferred=False):
        self._store = store
        self.deferred = deferred
        self._dirty = False
        data, self.problem = store.load(_NAME, {})
        bc = data.get("boot_count", 0)
        if not (isinstance(bc, int) and not isinstance(bc, bool) and bc >= 0):
            bc = 0
            self.problem = self.problem or "corrupt: boot_count"
        on = data.get("sbc_on", None)
        if on not in (True, False, None):
            on = None
            self.problem = self.problem or "corrupt: sbc_on"
        prev = data.get("reset_cause", None)
        self.prev_reset_cause = prev if prev in RESET_CAUSES else None
        if reset_cause not in RESET_CAUSES:
            reset_cause = "unknown"
        self.reset_cause = reset_cause
        self.boot_count = bc + 1
        self.sbc_on = on
        self.write_errors = 0
        self._save()

    def _save(self):
        try:
            self._store.save(
                _NAME,
                {
                    "boot_count": self.boot_count,
                    "reset_cause": self.reset_cause,
                    "sbc_on": self.sbc_on,
                },
            )
        except OSError:
            self.write_errors += 1

    def set_sbc_on(self, on):
        on = bool(on)
        if on != self.sbc_on:
            self.sbc_on = on
            self._dirty = True
            if not self.deferred:
                self.flush()

    def flush(self):
        """Save if something changed (deferred mode: the main loop calls this when quiet)."""
        if self._dirty:
            self._dirty = False
            self._save()
