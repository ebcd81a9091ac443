"""The simulated board: the firmware under the MicroPython unix port, wired to a virtual SBC.

- The USB CDC link is stdin/stdout: the master side of a PTY that `bmc-sim` opened with
  O_NONBLOCK, so `readinto` returns what is there (None when nothing) and never blocks.
  Nothing else may write to stdout; errors go to stderr.
- The wires are a Unix socket to the virtual SBC in `bmc-sim`, carrying only what wires
  would: pad states one way, levels, ADC readings, UART bytes and the BOOTSEL button the
  other (line protocol in docs/simulator.md). Input levels are cached here and updated when
  the SBC reports a change. What the firmware sends (pad changes, UART bytes, I2C requests)
  is queued in order in a preallocated buffer and goes out in one send when the pass waits
  (`wait`), before an I2C transfer waits for its answer, and at exit: a power action's reply
  does not wait on the SBC side's wake-ups (docs/simulator.md).
- The chip's watchdog is kept by `bmc-sim` (it is part of the silicon, not of the wires):
  `wdt_start`/`wdt_feed` report to it over a pipe, and when the deadline passes it kills
  this process and starts it again with reset cause "watchdog".
- `reboot()` exits with `EXIT_REBOOT`; `bmc-sim` starts the firmware again (reset cause
  "soft") on a fresh PTY, as a rebooting RP2040 drops off USB and enumerates again.
"""

import binascii
import select
import socket
import struct
import sys

from bmc.board import LINK_WRITE_TIMEOUT_MS, clamp_wdt
from bmc.clock import Clock
from bmc.compat import const, ticks_add, ticks_diff, ticks_ms

EXIT_REBOOT = const(3)  # reboot() asked for a restart
EXIT_WIRES = const(4)  # the wires are gone (bmc-sim stopped) or never came up
EXIT_CRASH = const(1)  # an uncaught exception (sim_main reports it on stderr)

_SYNC_TIMEOUT_MS = const(5000)
_FEED_EVERY_MS = const(200)
_UART_RXBUF = const(1024)  # as rp2.Board asks of machine.UART
_WIRES_BUF = const(1024)
_I2C_TIMEOUT_MS = const(100)
_NPINS = const(30)
_Z = const(2)
# The unix port has AF_UNIX; the RP2040 stubs the firmware is type-checked against do not.
_AF_UNIX = socket.AF_UNIX  # type: ignore[attr-defined]
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLLHUP_ERR = select.POLLHUP | select.POLLERR
_READY = const(1)  # Board._ready: a source has something
_HUP = const(2)  # ... nothing holds the other end of the PTY
_PAD_0 = const(0x30)  # "0": the pad states of a "P pin state" line, as bytes
_PAD_1 = const(0x31)  # "1"
_PAD_Z = const(0x7A)  # "z": released
_PAD_U = const(0x75)  # "u": released with the RP2040's pull-up
_PAD_D = const(0x64)  # "d": ... pull-down


def log(msg):
    sys.stderr.write("bmc-sim firmware: %s\n" % msg)


class _In:
    __slots__ = ("_board", "_pin", "_pull")

    def __init__(self, board, pin, pull):
        self._board = board
        self._pin = pin
        self._pull = 1 if pull == "up" else 0

    def value(self, v=None):
        lv = self._board._sbc_level[self._pin]
        return self._pull if lv == _Z else lv


class _Out:
    __slots__ = ("_board", "_pin", "_od", "_v")

    def __init__(self, board, pin, value, open_drain):
        self._board = board
        self._pin = pin
        self._od = open_drain
        self._v = 1 if value else 0
        board._pad(pin, self._state())

    def _state(self):
        if self._od and self._v:
            return _PAD_Z  # open-drain released
        return _PAD_1 if self._v else _PAD_0

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            self._board._pad(self._pin, self._state())
        return None


class _Adc:
    __slots__ = ("_board", "_ch")

    def __init__(self, board, channel):
        self._board = board
        self._ch = channel

    def read_u16(self):
        return self._board._adc[self._ch]


class _Uart:
    """Bytes from the SBC are buffered like the RP2040's UART FIFO + rxbuf (oldest kept)."""

    def __init__(self, board, uart_id):
        self._board = board
        self.id = uart_id
        self._buf = bytearray(_UART_RXBUF)
        self._n = 0
        self.overruns = 0

    def _feed(self, data):
        room = _UART_RXBUF - self._n
        if len(data) > room:
            self.overruns += len(data) - room
            data = data[:room]
        self._buf[self._n : self._n + len(data)] = data
        self._n += len(data)

    def any(self):
        return self._n

    def readinto(self, buf, nbytes=None):
        n = min(len(buf), self._n)
        if nbytes is not None:
            n = min(n, nbytes)
        if n == 0:
            return None
        buf[:n] = self._buf[:n]
        self._consume(n)
        return n

    def read(self, nbytes=None):
        n = self._n if nbytes is None else min(nbytes, self._n)
        if n == 0:
            return None
        data = bytes(self._buf[:n])
        self._consume(n)
        return data

    def _consume(self, n):
        left = self._n - n
        if left:
            self._buf[:left] = self._buf[n : self._n]
        self._n = left

    def write(self, data):
        if data:
            self._board._send("T %d %s\n" % (self.id, _hex(data)))
        return len(data)


class _I2C:
    """An I2C bus over the wires: each transfer is a request the SBC side answers.

    A device that is not there does not acknowledge (OSError EIO, as on the RP2040).
    """

    def __init__(self, board, bus):
        self._board = board
        self._bus = bus

    def readfrom_mem(self, addr, reg, n, addrsize=8):
        return self._board._i2c("%d %d %d r %d" % (self._bus, addr, reg, n))

    def writeto_mem(self, addr, reg, buf, addrsize=8):
        self._board._i2c("%d %d %d w %s" % (self._bus, addr, reg, _hex(buf)))


class _Link:
    """stdin/stdout (a non-blocking PTY master) as the CDC link."""

    def __init__(self):
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._wpoll = select.poll()
        self._wpoll.register(self._out, _POLLOUT)

    def readinto(self, buf):
        try:
            return self._in.readinto(buf)
        except OSError:
            return None  # EAGAIN, or EIO while no host side is open

    def write(self, buf):
        # Called once per frame of a stream: kept small, so that MicroPython keeps its
        # frame on the C stack (a larger one, a `try` here included, is allocated on the
        # heap at every call). A full PTY makes write() return None (EAGAIN); a PTY
        # master's writes do not fail otherwise, the host side closed or not.
        k = self._out.write(buf)
        if k == len(buf):
            return k
        return self._rest(buf, k or 0)

    def _rest(self, buf, done):
        """Finish a write the PTY took only part of: wait for room, a bounded time."""
        n = len(buf)
        mv = memoryview(buf)
        deadline = ticks_add(ticks_ms(), LINK_WRITE_TIMEOUT_MS)
        while done < n:
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                break  # the host does not read: give up with a short count
            for _ in self._wpoll.ipoll(left):
                pass
            done += self._out.write(mv[done:]) or 0
        return done


def _hex(data):
    return binascii.hexlify(data).decode()


def _unhex(text):
    return binascii.unhexlify(text)


class Board:
    root = "/flash"

    def __init__(
        self, board_def, wires_path, slot=1, reset_cause="power_on", uid=None, chip_fd=None
    ):
        self.board_def = board_def
        self.slot = slot
        self.clock = Clock()
        self._cause = reset_cause
        self._uid = uid if uid is not None else struct.pack(">Q", slot)
        self._sbc_level = bytearray(_NPINS)
        for i in range(_NPINS):
            self._sbc_level[i] = _Z
        self._adc = [0, 0, 0, 0, 0]
        self._bootsel = False
        self._uarts = {}
        self._rbuf = bytearray(_WIRES_BUF)
        self._rmv = memoryview(self._rbuf)
        self._rn = 0
        self._obuf = bytearray(_WIRES_BUF)  # lines to the SBC, sent when the pass waits
        self._on = 0
        self._synced = False
        self._i2c_reply = None
        self._wdt_ms = 0
        self._last_feed = 0
        self._chip = None
        if chip_fd is not None:
            self._chip = open("/proc/self/fd/%d" % chip_fd, "wb")
        self.link = _Link()
        self._sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(_sockaddr(wires_path))
        except OSError as e:
            log("cannot connect the wires %s: %r" % (wires_path, e))
            sys.exit(EXIT_WIRES)
        self._sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sys.stdin.buffer, _POLLIN)
        self._poll.register(self._sock, _POLLIN)
        self._wires_poll = select.poll()
        self._wires_poll.register(self._sock, _POLLIN)
        if hasattr(sys, "atexit"):
            sys.atexit(self._flush_at_exit)
        self._send("H %d\n" % slot)
        self._sync()

    # -- the wires -------------------------------------------------------------
    def _send(self, line):
        """Queue one line for the SBC (sent, in order, by the next `_flush`)."""
        data = line.encode()
        n = len(data)
        if self._on + n > _WIRES_BUF:
            self._flush()
            if n > _WIRES_BUF:
                self._send_now(data)
                return
        self._obuf[self._on : self._on + n] = data
        self._on += n

    def _pad(self, pin, state):
        """Queue "P pin state" without allocating (pin 0..29, state one of the _PAD_ bytes)."""
        if self._on + 6 > _WIRES_BUF:
            self._flush()
        b = self._obuf
        i = self._on
        b[i] = 0x50  # "P"
        b[i + 1] = 0x20
        i += 2
        if pin >= 10:
            b[i] = 0x30 + pin // 10
            i += 1
        b[i] = 0x30 + pin % 10
        b[i + 1] = 0x20
        b[i + 2] = state
        b[i + 3] = 0x0A
        self._on = i + 4

    def _flush(self):
        """Send what is queued for the SBC, in one send when the socket takes it all."""
        n = self._on
        if n:
            self._on = 0
            self._send_now(memoryview(self._obuf)[:n])

    def _flush_at_exit(self):
        # What the last pass set reaches the SBC before the process ends (crash, exit).
        try:
            self._flush()
        except BaseException:  # noqa: BLE001 - the wires are gone: nothing left to tell
            pass

    def _send_now(self, data):
        sock = self._sock
        done = 0
        n = len(data)
        while done < n:
            try:
                k = sock.send(data[done:] if done else data)
            except OSError as e:
                if e.args[0] == 11:  # EAGAIN: the SBC side is slow; wait for room
                    p = select.poll()
                    p.register(sock, _POLLOUT)
                    p.poll(100)
                    continue
                log("wires broken: %r" % (e,))
                sys.exit(EXIT_WIRES)
            done += k

    def _sync(self):
        self._flush()
        deadline = ticks_add(ticks_ms(), _SYNC_TIMEOUT_MS)
        while not self._synced:
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                log("the virtual SBC did not answer on the wires")
                sys.exit(EXIT_WIRES)
            if self._wires_poll.poll(left):
                self._read_wires()

    def _read_wires(self):
        """Take what the SBC sent (into a preallocated buffer); True when console bytes came."""
        n = self._rn
        try:
            k = self._sock.readinto(self._rmv[n:])
        except OSError as e:
            if e.args[0] == 11:
                return False
            k = 0
        if k is None:
            return False
        if not k:
            log("the virtual SBC closed the wires")
            sys.exit(EXIT_WIRES)
        n += k
        buf = self._rbuf
        uart_data = False
        start = 0
        while True:
            end = buf.find(b"\n", start, n)
            if end < 0:
                break
            if self._line(bytes(self._rmv[start:end])):
                uart_data = True
            start = end + 1
        if start:
            buf[: n - start] = self._rmv[start:n]
            n -= start
        elif n == len(buf):
            log("wires line longer than %d bytes dropped" % n)
            n = 0
        self._rn = n
        return uart_data

    def _line(self, line):
        parts = line.split()
        if not parts:
            return False
        op = parts[0]
        try:
            if op == b"L":
                pin = int(parts[1])
                v = parts[2]
                self._sbc_level[pin] = _Z if v == b"z" else (1 if v == b"1" else 0)
            elif op == b"A":
                self._adc[int(parts[1])] = int(parts[2]) & 0xFFFF
            elif op == b"R":
                u = self._uarts.get(int(parts[1]))
                if u is not None:
                    u._feed(_unhex(parts[2]))
                    return True
            elif op == b"B":
                self._bootsel = parts[1] == b"1"
            elif op == b"S":
                self._synced = True
            elif op == b"J":
                self._i2c_reply = parts[1] if len(parts) > 1 else b""
            else:
                log("unknown wires message %r" % line[:40])
        except (IndexError, ValueError) as e:
            log("bad wires message %r: %r" % (line[:40], e))
        return False

    # -- the board interface ---------------------------------------------------
    def input(self, pin, pull):
        self._pad(pin, _PAD_U if pull == "up" else (_PAD_D if pull == "down" else _PAD_Z))
        return _In(self, pin, pull)

    def output(self, pin, value, open_drain):
        return _Out(self, pin, value, open_drain)

    def adc(self, channel):
        if not 0 <= channel <= 4:
            raise ValueError("ADC channel %d" % channel)
        return _Adc(self, channel)

    def uart(self, uart_id, tx, rx, baud):
        u = _Uart(self, uart_id)
        self._uarts[uart_id] = u
        return u

    def i2c(self, bus, sda, scl, freq):
        return _I2C(self, bus)

    def _i2c(self, request):
        """One I2C transfer: send it, wait for the SBC's answer (other wires lines go on)."""
        self._i2c_reply = None
        self._send("I " + request + "\n")
        self._flush()
        deadline = ticks_add(ticks_ms(), _I2C_TIMEOUT_MS)
        while self._i2c_reply is None:
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                raise OSError(110)  # ETIMEDOUT, as a stuck bus
            if self._wires_poll.poll(left):
                self._read_wires()
        reply = self._i2c_reply
        self._i2c_reply = None
        if reply == b"-":
            raise OSError(5)  # EIO: no acknowledge
        return _unhex(reply)

    def wait(self, timeout_ms):
        # Run every pass: small frames (MicroPython allocates one of more than 11 words
        # on the heap at every call), the poll's loop apart in _ready.
        self._flush()  # what this pass set goes to the SBC before the board sleeps
        if timeout_ms < 0:
            timeout_ms = 0
        deadline = ticks_add(ticks_ms(), timeout_ms)
        while True:
            got = self._ready(timeout_ms)
            if got == _READY:
                return
            timeout_ms = ticks_diff(deadline, ticks_ms())
            if got == _HUP:
                # Nothing holds the other end of the PTY: wait on the wires alone.
                if timeout_ms > 0 and self._wires_poll.poll(timeout_ms):
                    self._read_wires()
                return
            if timeout_ms <= 0:
                return

    def _ready(self, timeout_ms):
        """Poll the link and the wires up to `timeout_ms`: _READY, _HUP or 0 (neither).

        Takes in every ready source before returning: wire levels (BOOTSEL,
        power-good) that arrived with a request must be seen by that request."""
        got = 0
        for obj, ev in self._poll.ipoll(timeout_ms):
            if obj is self._sock:
                self._read_wires()
                got = _READY
            elif ev & _POLLIN:
                got = _READY
            elif got == 0:
                got = _HUP
        return got

    def bootsel(self):
        return self._bootsel

    def unique_id(self):
        return self._uid

    def reset_cause(self):
        return self._cause

    def wdt_start(self, ms):
        if self._wdt_ms == 0:
            self._wdt_ms = clamp_wdt(ms)
            self._last_feed = ticks_ms()
            self._chip_write(("W %d\n" % self._wdt_ms).encode())

    def wdt_feed(self):
        # Feeds are passed on at most every _FEED_EVERY_MS (bmc-sim allows that much slack).
        if self._wdt_ms:
            now = ticks_ms()
            if ticks_diff(now, self._last_feed) >= _FEED_EVERY_MS:
                self._last_feed = now
                self._chip_write(b"F\n")

    def _chip_write(self, msg):
        if self._chip is not None:
            self._chip.write(msg)

    def reboot(self):
        self._flush()
        sys.exit(EXIT_REBOOT)


def _sockaddr(path):
    # The unix port takes a raw sockaddr_un: family (native u16), path, NUL.
    return struct.pack("H", _AF_UNIX) + path.encode() + b"\0"
