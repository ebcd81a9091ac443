"""Time for the firmware core: one clock, wrap-safe deadlines.

`Clock()` is the real clock (`ticks_ms` from `bmc.compat`). `ManualClock(start)`
is a fake for tests: time moves only by `advance(ms)` (or `sleep_ms`), and its
ticks wrap at 2**30 exactly as on a 32-bit port such as the RP2040, so a test can
start just below the wrap and prove that deadlines survive it (the unix port
wraps at 2**62 and would hide the bug).

Both offer `ticks_ms()`, `ticks_diff(a, b)`, `ticks_add(t, delta)`,
`sleep_ms(ms)` and `uptime_ms()`. Core code never compares raw ticks with `<`.
`uptime_ms()` keeps counting past the wrap as long as it is called at least
once every 2**29 ms (~6 days); the main loop calls it every pass.
"""

import time as _time

from bmc.compat import const, ticks_add, ticks_diff, ticks_ms

_HAS_SLEEP_MS = hasattr(_time, "sleep_ms")


def _sleep_ms(ms):
    if _HAS_SLEEP_MS:
        _time.sleep_ms(ms)
    else:  # CPython
        _time.sleep(ms / 1000)


_PERIOD = const(0x40000000)  # 2**30
_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)


class Clock:
    """The real clock of the port this runs on."""

    def __init__(self):
        self._up_last = self.ticks_ms()
        self._up_total = 0

    def ticks_ms(self):
        return ticks_ms()

    def ticks_diff(self, a, b):
        return ticks_diff(a, b)

    def ticks_add(self, t, delta):
        return ticks_add(t, delta)

    def sleep_ms(self, ms):
        if ms > 0:
            _sleep_ms(ms)

    def uptime_ms(self):
        """Milliseconds since this clock was created (wrap-proof, see module doc)."""
        now = self.ticks_ms()
        d = self.ticks_diff(now, self._up_last)
        if d > 0:
            self._up_total += d
            self._up_last = now
        return self._up_total


class ManualClock(Clock):
    """A fake clock that wraps at 2**30 like a 32-bit MicroPython port.

    `ManualClock(start)` starts at `start` (e.g. `2**30 - 500` to cross the wrap
    half a second in). `advance(ms)` and `sleep_ms(ms)` move time forward.
    """

    PERIOD = _PERIOD

    def __init__(self, start=0):
        self._now = start & _MASK
        Clock.__init__(self)

    def ticks_ms(self):
        return self._now

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def ticks_add(self, t, delta):
        return (t + delta) & _MASK

    def advance(self, ms):
        if ms < 0:
            raise ValueError("time only moves forward")
        # Step in chunks so uptime_ms() never misses a half period.
        while ms > 0:
            step = ms if ms < _HALF // 2 else _HALF // 2
            self._now = (self._now + step) & _MASK
            self.uptime_ms()
            ms -= step

    def sleep_ms(self, ms):
        if ms > 0:
            self.advance(ms)
