"""USB identity of a Racklet BMC: what `bmc.board.rp2` announces and what discovery matches.

The ids are MicroPython's RP2040 ids (Raspberry Pi's vendor id 0x2E8A, product 0x0005), which
any MicroPython board has; the manufacturer and product strings name it a Racklet BMC.
"""

from bmc.compat import const

VID = const(0x2E8A)
PID = const(0x0005)
MANUFACTURER = "Racklet"
PRODUCT = "Racklet BMC"
