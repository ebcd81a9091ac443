# Runs under the MicroPython unix port: a real bmc.app.App on a minimal fake
# board (pins, ADCs, an INA219 on a fake I2C bus, a link that collects frames),
# then one or more `metrics` requests; the frames it answers go to stdout raw.
# argv: ROOT_DIR BOARD_JSON [RENDERS]
import sys

from bmc import app as bmc_app
from bmc import codec
from bmc.clock import Clock


class Pin:
    def __init__(self, v=0):
        self.v = v

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class Adc:
    def __init__(self, raw):
        self.raw = raw

    def read_u16(self):
        if self.raw is None:
            raise OSError(5)
        return self.raw


class I2C:
    """An INA219 at 0x40: shunt 25 mV (250 mA over 0.1 ohm), bus 5.1 V."""

    def __init__(self):
        self.regs = {0: 0x399F, 1: 2500, 2: (1275 << 3) | 2}
        self.fail = False

    def readfrom_mem(self, addr, reg, n):
        if self.fail or addr != 0x40:
            raise OSError(19)
        v = self.regs.get(reg, 0)
        return bytes([(v >> 8) & 0xFF, v & 0xFF])

    def writeto_mem(self, addr, reg, buf):
        if self.fail or addr != 0x40:
            raise OSError(19)
        self.regs[reg] = (buf[0] << 8) | buf[1]


class Link:
    """The USB CDC: requests in; frames out go to stdout as raw bytes (decoded by the test)."""

    def __init__(self):
        self.inbox = bytearray()

    def readinto(self, buf):
        n = min(len(buf), len(self.inbox))
        if not n:
            return None
        buf[:n] = self.inbox[:n]
        self.inbox = self.inbox[n:]
        return n

    def write(self, b):
        sys.stdout.buffer.write(b)
        return len(b)


class Board:
    def __init__(self, root):
        self.root = root
        self.clock = Clock()
        self.link = Link()
        self.i2c_bus = I2C()
        self.adcs = {4: Adc(14000), 3: Adc(30000), 0: Adc(50000), 1: Adc(2000)}

    def input(self, pin, pull):
        return Pin(0)

    def output(self, pin, value, open_drain):
        return Pin(value)

    def adc(self, ch):
        return self.adcs[ch]

    def uart(self, *a):
        return None

    def i2c(self, bus, sda, scl, freq):
        return self.i2c_bus

    def bootsel(self):
        return False

    def unique_id(self):
        return b"\xe6\x61\x38\x52\x83\x4a\x2b\x2f"

    def reset_cause(self):
        return "watchdog"

    def wait(self, ms):
        pass

    def wdt_start(self, ms):
        pass

    def wdt_feed(self):
        pass

    def reboot(self):
        raise SystemExit(0)


root = sys.argv[1]
with open(sys.argv[2]) as f:
    text = f.read()
with open(root + "/board.json", "w") as f:
    f.write(text)
renders = int(sys.argv[3]) if len(sys.argv) > 3 else 1
board = Board(root)
a = bmc_app.App(board)
if "--i2c-fail" in sys.argv:
    board.i2c_bus.fail = True
for i in range(renders):
    board.link.inbox += codec.encode_frame(
        codec.KIND_REQUEST, 7 + i, b'{"cmd":"metrics","args":{}}'
    )
    a.dispatch.poll()
