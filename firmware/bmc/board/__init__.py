"""The board layer: the only code that touches hardware (`rp2`) or the simulated wires (`sim`).

A board object (`bmc.board.rp2.Board(board_def)` on an RP2040,
`bmc.board.sim.Board(board_def, wires_path, ...)` under the unix port) offers:

- `clock`: a `bmc.clock.Clock`.
- `root`: path prefix of the writable filesystem ("" on the RP2040, "/flash" in the
  simulator); data lives in `root + "/data"`, the board file is `root + "/board.json"`.
- `input(pin, pull)`: a pin with `.value()`; `pull` is "up", "down" or None.
- `output(pin, value, open_drain)`: an output created with its first level in the same
  call (no glitch); `.value(v=None)`. Open-drain: 0 drives low, 1 releases the line.
- `adc(channel)`: `.read_u16()`; channel 4 is the RP2040's die temperature sensor.
- `uart(uart_id, tx, rx, baud)`: `.read(n)` / `.readinto(buf)` (non-blocking, None when
  empty), `.write(b)`, `.any()`.
- `link`: the USB CDC stream to the host. `.readinto(buf)` is non-blocking (None or 0 when
  empty); `.write(buf)` returns how many bytes the host took: it waits at most
  `LINK_WRITE_TIMEOUT_MS` for a host that does not read, then gives up with a short
  count, so a host that stops reading cannot hang the firmware (the codec then abandons
  the rest of that response: `codec.LinkStalled`).
- `wait(timeout_ms)`: block until the link, a UART or the wires have input, or the
  timeout passes.
- `bootsel()`: True while BOOTSEL is held (physical presence).
- `unique_id()`: bytes, the flash chip's id (the serial is its hex).
- `reset_cause()`: "power_on", "watchdog", "soft" or "unknown".
- `wdt_start(ms)`, `wdt_feed()`: hardware watchdog (clamped to 8388 ms, the RP2040's
  limit); once started it cannot be stopped.
- `reboot()`: restart the BMC; the SBC keeps running.
- `i2c(bus, sda, scl, freq)`: `.readfrom_mem(addr, reg, n)`, `.writeto_mem(addr, reg, b)`.

The board layer moves raw levels; polarity, pulls and roles belong to `bmc.lines`.
"""

WDT_MAX_MS = 8388
LINK_WRITE_TIMEOUT_MS = 500


def clamp_wdt(ms):
    """A watchdog timeout the RP2040 accepts (1..8388 ms)."""
    if ms > WDT_MAX_MS:
        return WDT_MAX_MS
    if ms < 1:
        return 1
    return ms
