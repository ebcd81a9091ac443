"""What the MicroPython unit harnesses (boot_units, manifest_units) share: a request
that catches what a command streams, digests, checks that survive -O2, and the run."""

import binascii
import hashlib
import sys

from bmc.dispatch import Request


def hx(b):
    return binascii.hexlify(hashlib.sha256(b).digest()).decode()


def check(ok, what):
    """An assert that stays when the harness is compiled with -O2 (which drops asserts)."""
    if not ok:
        raise AssertionError(what)


class Req(Request):
    """The firmware's Request, as its own frame writer: `out` holds the chunks' bytes."""

    def __init__(self, cmd="boot-file-read", role="operator"):
        Request.__init__(self, self, 1, cmd, {}, role, None)
        self.buf = bytearray(2048)
        self.out = bytearray()
        self.chunks = 0
        self.stale = 0  # chunks sent with a CRC that does not match their bytes
        self.whole = True  # every chunk so far ends at the end of a line

    def payload_view(self):
        return memoryview(self.buf)

    def send_prepared(self, kind, rid, n, pcrc=None):
        if pcrc is not None and pcrc != binascii.crc32(self.buf[:n]) & 0xFFFFFFFF:
            self.stale += 1
        self.out.extend(self.buf[:n])
        self.chunks += 1
        self.whole = self.whole and n > 0 and self.buf[n - 1] == 0x0A


def main(run):
    """`run(TMPDIR)` from the command line; FAIL and the traceback, exit 1, on an error."""
    try:
        run(sys.argv[1])
    except Exception as e:
        print("FAIL", repr(e))
        sys.print_exception(e)
        sys.exit(1)
