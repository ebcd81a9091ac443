"""Role-named lines over the board's raw pins.

    lines = Lines(board, defn)     # creates the INPUTS only (power-good, halted)
    ... read lines.pgood_all(), decide what the SBC is doing ...
    lines.start_outputs(rails_on, status_on)   # now create every output, each
                                               # with its first level (no glitch)

Polarity lives here, not in the board layer: `Line.set(True)` asserts the
signal, whatever its polarity. An open-drain output drives low or releases;
`board.output(pin, value, open_drain)` gets the raw level (1 = release).

Attributes after `start_outputs`: `enables` (one Line or None per rail; the
GLOBAL_EN rail's Line is also `global_en`), `run`, `boot_select`,
`shutdown_req`, `power_button`, `status_led`, `identify_led` (None when the
board lacks the role). Inputs: `pgoods` (one per rail), `halted`.
"""

OUTPUT_ROLES = (
    "run",
    "global_en",
    "boot_select",
    "shutdown_req",
    "power_button",
    "usb_mux",
    "status_led",
    "identify_led",
)


class Line:
    """One signal: `get()` is True when asserted; outputs also `set(bool)`."""

    def __init__(self, name, pin_obj, sig, raw=None):
        self.name = name
        self.pin_no = sig["pin"]
        self._pin = pin_obj
        self._hi = sig["active_high"]
        self.is_output = sig["output"]
        self._raw = raw

    def get(self):
        if self.is_output:
            return (self._raw == 1) == self._hi
        return (self._pin.value() == 1) == self._hi

    def set(self, asserted):
        raw = 1 if (asserted == self._hi) else 0
        if raw != self._raw:
            self._pin.value(raw)
            self._raw = raw


def raw_level(sig, asserted):
    """The raw pin level that puts `sig` in the asserted/deasserted state."""
    return 1 if (bool(asserted) == sig["active_high"]) else 0


class Lines:
    # Output roles, set by start_outputs (None where the board lacks one).
    run = None
    global_en = None
    boot_select = None
    shutdown_req = None
    power_button = None
    status_led = None
    identify_led = None
    usb_mux = None

    def __init__(self, board, defn):
        self._board = board
        self._defn = defn
        self.pgoods = []
        for r in defn["rails"]:
            p = r["pgood"]
            self.pgoods.append(Line("pgood." + r["name"], board.input(p["pin"], p["pull"]), p))
        h = defn["signals"]["halted"]
        self.halted = Line("halted", board.input(h["pin"], h["pull"]), h)
        self.enables = [None] * len(defn["rails"])
        for role in OUTPUT_ROLES:
            setattr(self, role, None)
        self.started = False

    def pgood_all(self):
        """Power-good of every rail, a list of bools in rail order."""
        return [p.get() for p in self.pgoods]

    def _out(self, name, sig, asserted):
        raw = raw_level(sig, asserted)
        pin = self._board.output(sig["pin"], raw, sig["open_drain"])
        return Line(name, pin, sig, raw)

    def start_outputs(self, rails_on, status_on=False):
        """Create every output with its first level.

        `rails_on[i]`: rail i's enable asserted (match what power-good says the
        SBC is doing). Every other output starts deasserted, except the status
        LED (`status_on`).
        """
        if self.started:
            raise RuntimeError("outputs already started")
        sigs = self._defn["signals"]
        for i, r in enumerate(self._defn["rails"]):
            if r["enable"] is None:
                continue
            role = r["enable_role"]
            line = self._out(role or ("enable." + r["name"]), r["enable"], rails_on[i])
            self.enables[i] = line
            if role:
                setattr(self, role, line)
        for role in OUTPUT_ROLES:
            if role in sigs and getattr(self, role) is None:
                setattr(self, role, self._out(role, sigs[role], role == "status_led" and status_on))
        self.started = True
