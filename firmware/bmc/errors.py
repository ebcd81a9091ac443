"""Error codes on the wire, shared by firmware and host."""

BAD_REQUEST = "bad_request"  # not JSON, missing fields, wrong types
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_COMMAND = "unknown_command"
INVALID = "invalid"  # arguments that do not validate
AUTH_REQUIRED = "auth_required"
AUTH_FAILED = "auth_failed"  # unknown key, bad MAC, unknown/used/expired nonce
FORBIDDEN = "forbidden"  # valid key, role too low
LOCKED_OUT = "locked_out"
NOT_ALLOWED = "not_allowed"  # not in the current state
PRESENCE_REQUIRED = "presence_required"  # BOOTSEL must be held
NOT_FOUND = "not_found"
CONFLICT = "conflict"  # stale generation, manifest changed
STORAGE = "storage"
BUSY = "busy"
INTERNAL = "internal"


class CmdError(Exception):
    """A refusal with a code from this module, a message, and optional data."""

    def __init__(self, code, message, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
