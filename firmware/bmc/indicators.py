"""Status and identify LEDs.

Status: on while the SBC is on, slow blink while it changes state, fast
blink in Fault, off when off. Identify: blinks for the requested time.
"""

from bmc.compat import const

_SLOW_MS = const(500)
_FAST_MS = const(125)
_IDENTIFY_MS = const(250)


class Indicators:
    def __init__(self, clock, status_led, identify_led):
        self.clock = clock
        self.status_led = status_led  # bmc.lines.Line or None
        self.identify_led = identify_led
        self._identify_until = None

    def identify(self, ms):
        self._identify_until = self.clock.ticks_add(self.clock.ticks_ms(), ms) if ms else None
        if not ms and self.identify_led is not None:
            self.identify_led.set(False)

    def identify_left_ms(self):
        if self._identify_until is None:
            return 0
        return max(0, self.clock.ticks_diff(self._identify_until, self.clock.ticks_ms()))

    def tick(self, state):
        now = self.clock.ticks_ms()
        if self.status_led is not None:
            if state == "On":
                level = True
            elif state == "Off":
                level = False
            else:
                period = _FAST_MS if state == "Fault" else _SLOW_MS
                level = (now // period) & 1 == 0
            self.status_led.set(level)
        if self._identify_until is not None:
            left = self.clock.ticks_diff(self._identify_until, now)
            if left <= 0:
                self._identify_until = None
                if self.identify_led is not None:
                    self.identify_led.set(False)
            elif self.identify_led is not None:
                self.identify_led.set((now // _IDENTIFY_MS) & 1 == 0)

    def ms_to_next(self):
        """How long the main loop may sleep without an LED missing an edge."""
        return _FAST_MS if self._identify_until is not None else _SLOW_MS
