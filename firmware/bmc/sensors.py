"""Sensors: the RP2040 die temperature, ADC channels and an INA219 on I2C.

Built from the board definition (`bmc.boardfile`): every `adc` entry is a
channel with `value = volts_at_pin * scale + offset` (kind "voltage" gives
volts, kind "current" amperes: a shunt amplifier, scale = 1 / (shunt * gain)),
and an optional `ina219` entry is a current/voltage monitor on I2C.

The INA219 driver reads the shunt-voltage and bus-voltage registers and
computes current and power itself, so it needs no calibration register (which
the chip forgets whenever it loses power); it re-writes its configuration
when a read-back shows the chip was reset.

A read that fails (I2C error, missing ADC) counts in `errors[name]` and
returns None: a sensor never takes the BMC down.
"""

from bmc.compat import const

VREF = 3.3
DIE_CHANNEL = const(4)

_REG_CONFIG = const(0x00)
_REG_SHUNT = const(0x01)
_REG_BUS = const(0x02)
# Config: BRNG=1 (32 V), BADC = SADC = 0b0011 (12 bit, 532 us), mode 0b111
# (shunt and bus, continuous); the PGA bits (12..11) come from the current range.
_CONFIG_BASE = const(0x219F)
_PGA_MV = (40, 80, 160, 320)


def die_celsius(raw):
    """RP2040 datasheet 4.9.5: T = 27 - (V - 0.706) / 0.001721."""
    v = raw * VREF / 65535
    return 27 - (v - 0.706) / 0.001721


def _s16(hi, lo):
    v = (hi << 8) | lo
    if v & 0x8000:
        v -= 0x10000
    return v


class INA219:
    """Texas Instruments INA219 over an I2C object with readfrom_mem/writeto_mem."""

    def __init__(self, i2c, spec):
        self.i2c = i2c
        self.address = spec["address"]
        self.shunt_ohms = spec["shunt_ohms"]
        max_mv = spec["max_current_a"] * spec["shunt_ohms"] * 1000
        pga = 3
        for i in range(4):
            if max_mv <= _PGA_MV[i]:
                pga = i
                break
        self.config = _CONFIG_BASE | (pga << 11)
        self._buf = bytearray(2)
        self.configured = False

    def _read(self, reg):
        b = self.i2c.readfrom_mem(self.address, reg, 2)
        if len(b) != 2:
            raise OSError(5)  # EIO: a short read is a failed read
        return b[0], b[1]

    def _configure(self):
        b = self._buf
        b[0] = self.config >> 8
        b[1] = self.config & 0xFF
        self.i2c.writeto_mem(self.address, _REG_CONFIG, b)
        self.configured = True

    def read(self):
        """(bus volts, shunt amperes, watts); OSError when the chip does not answer."""
        hi, lo = self._read(_REG_CONFIG)
        if not self.configured or ((hi << 8) | lo) != self.config:
            self._configure()
        hi, lo = self._read(_REG_SHUNT)
        shunt_v = _s16(hi, lo) * 0.00001  # 10 uV per LSB
        hi, lo = self._read(_REG_BUS)
        bus_v = (((hi << 8) | lo) >> 3) * 0.004  # 4 mV per LSB, bits 15..3
        amps = shunt_v / self.shunt_ohms
        return bus_v, amps, bus_v * amps


class Sensors:
    """Every sensor the board declares, read on demand (by the metrics renderer)."""

    def __init__(self, board, defn):
        self.errors = {}
        self.die = self._adc(board, DIE_CHANNEL, "die")
        self.channels = []  # (name, kind, scale, offset, adc)
        adc = defn.get("adc") or {}
        for name in sorted(adc):
            spec = adc[name]
            a = self._adc(board, spec["channel"], name)
            if a is not None:
                self.channels.append((name, spec["kind"], spec["scale"], spec["offset"], a))
        self.ina219 = None
        spec = defn.get("ina219")
        if spec is not None:
            try:
                i2c = board.i2c(spec["bus"], spec["sda"], spec["scl"], spec["freq"])
                self.ina219 = INA219(i2c, spec)
            except (OSError, ValueError, AttributeError):
                self._error("ina219")

    def _error(self, name):
        self.errors[name] = self.errors.get(name, 0) + 1

    def _adc(self, board, channel, name):
        try:
            return board.adc(channel)
        except (OSError, ValueError, AttributeError):
            self._error(name)
            return None

    def die_celsius(self):
        if self.die is None:
            return None
        try:
            return die_celsius(self.die.read_u16())
        except OSError:
            self._error("die")
            return None

    def read_channel(self, i):
        """(name, kind, value) of the i-th declared ADC channel; value None on error."""
        name, kind, scale, offset, a = self.channels[i]
        try:
            return name, kind, a.read_u16() * VREF / 65535 * scale + offset
        except OSError:
            self._error(name)
            return name, kind, None

    def read_ina219(self):
        """(bus volts, amperes, watts) or None (no chip declared, or it did not answer)."""
        if self.ina219 is None:
            return None
        try:
            return self.ina219.read()
        except OSError:
            self.ina219.configured = False
            self._error("ina219")
            return None
