"""The SBC's serial console: a ring buffer fed from the UART.

Bytes carry absolute offsets so a reader can ask for "everything since N"
and learn how much it missed when the ring wrapped.
"""

from bmc.compat import const

_CHUNK = const(256)


class Console:
    def __init__(self, uart, size=4096):
        self.uart = uart
        self.size = size
        self.ring = bytearray(size)
        self.end = 0  # absolute offset of the next byte to arrive
        self._rx = bytearray(_CHUNK)
        self._rxv = memoryview(self._rx)

    def poll(self):
        """Move what the UART holds into the ring; returns bytes moved."""
        uart = self.uart
        if uart is None:
            return 0
        moved = 0
        while uart.any():
            k = uart.readinto(self._rx)
            if not k:
                break
            self._put(self._rxv[:k])
            moved += k
        return moved

    def _put(self, data):
        n = len(data)
        size = self.size
        if n >= size:
            data = data[n - size :]
            self.end += n - size
            n = size
        start = self.end % size
        first = min(n, size - start)
        self.ring[start : start + first] = data[:first]
        if first < n:
            self.ring[0 : n - first] = data[first:]
        self.end += n

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
        out[:first] = memoryview(self.ring)[start : start + first]
        if first < n:
            out[first:n] = memoryview(self.ring)[0 : n - first]
        return n, lost

    def write(self, data):
        if self.uart is None:
            return 0
        return self.uart.write(data)
