"""Timing keys and settings shared by the board file (`bmc.boardfile`) and the runtime
settings (`bmc.config`): kept apart so the running BMC need not hold the board-file
validator to check a setting.
"""

# Timing keys, their defaults and allowed ranges (ms).
TIMING = {
    "rail_delay_ms": (10, 0, 10000),  # after a rail's pgood, before the next enable
    "rail_off_delay_ms": (10, 0, 10000),  # between rail disables on power-off
    "pgood_off_timeout_ms": (3000, 1, 60000),  # power-good must be gone by then
    "pgood_debounce_ms": (10, 0, 1000),  # pgood low this long while On or powering on = lost
    "graceful_timeout_ms": (60000, 1000, 3600000),
    "min_off_ms": (5000, 0, 600000),
    "reset_pulse_ms": (100, 1, 10000),
    "button_press_ms": (200, 1, 10000),  # shutdown-request / power-button pulse
    "halt_settle_ms": (2000, 0, 60000),  # after halted, before rails go off
    "boot_select_hold_ms": (1000, 0, 60000),  # after On / after a RUN pulse
}
DEFAULT_PGOOD_TIMEOUT_MS = 1000
PGOOD_TIMEOUT_RANGE = (1, 60000)
RESTORE_POLICIES = ("AlwaysOff", "AlwaysOn", "LastState")
