"""The SBC's serial console: a ring buffer fed from the UART.

Bytes carry absolute offsets so a reader can ask for "everything since N"
and learn how much it missed when the ring wrapped.
"""


class Console:
    def __init__(self, uart, size=4096):
        self.uart = uart
        self.size = size
        # A board without a console UART holds no ring; UART bytes go straight into it.
        self.ring = bytearray(size) if uart is not None else None
        self._ringv = memoryview(self.ring) if uart is not None else None
        self.end = 0  # absolute offset of the next byte to arrive

    def poll(self):
        """Move what the UART holds into the ring; returns bytes moved."""
        # Run every pass: the usual case (nothing came) in a frame MicroPython keeps
        # on the C stack; the copy's larger one goes on the heap only when bytes came.
        uart = self.uart
        if uart is None or not uart.any():
            return 0
        return self._drain(uart)

    def _drain(self, uart):
        moved = 0
        size = self.size
        # Ask for no more than the UART holds: rp2's readinto waits for further bytes
        # as long as they keep coming, which with the SBC printing without a pause
        # would hold the main loop (and starve the watchdog). At most a ring per pass.
        while moved < size:
            n = uart.any()
            if not n:
                break
            start = self.end % size
            k = uart.readinto(self._ringv[start:], min(n, size - start, size - moved))
            if not k:
                break
            self.end += k
            moved += k
        return moved

    def start(self):
        """Oldest offset still held."""
        return max(0, self.end - self.size)

    def read_into(self, since, out):
        """Copy bytes from offset `since` into `out`; returns (count, lost)."""
        oldest = self.start()
        lost = 0
        if since < oldest:
            lost = oldest - since
            since = oldest
        n = min(len(out), self.end - since)
        if n <= 0:
            return 0, lost
        size = self.size
        start = since % size
        first = min(n, size - start)
        ring = self._ringv
        out[:first] = ring[start : start + first]
        if first < n:
            out[first:n] = ring[0 : n - first]
        return n, lost

    def write(self, data):
        """Bytes the UART took (its transmit buffer may be full: fewer, or 0)."""
        if self.uart is None:
            return 0
        return self.uart.write(data) or 0
