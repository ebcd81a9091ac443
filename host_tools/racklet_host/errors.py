"""Exceptions of the host tools: one class per error class, each with a one-line message.

`BmcError` is the base. Errors the BMC reports carry its wire code (`bmc.errors`) in
`.code`; host-side failures (no BMC, port busy, link gone, timeout) have their own
codes. `.exit_code` is what `bmcctl` exits with when this is the failure.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

from bmc import errors as wire

# exit codes of bmcctl (documented in its --help and docs/protocol.md)
EXIT_OK = 0
EXIT_FAILED = 1  # some target failed (BMC refused or reported an error)
EXIT_USAGE = 2  # bad command line, unreadable or unsafe key file
EXIT_NO_BMC = 3  # no BMC found / target not found
EXIT_AUTH = 4  # auth refused, forbidden, locked out
EXIT_NOT_ALLOWED = 5  # not allowed in this state, physical presence required
EXIT_LINK = 6  # timeout, device gone, port busy
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports it


class BmcError(Exception):
    """Base of every error the client library raises."""

    code = "error"
    exit_code = EXIT_FAILED

    def __init__(self, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: Dict[str, Any] = data or {}


# -- host side ---------------------------------------------------------------


class NoBmcFound(BmcError):
    code = "no_bmc"
    exit_code = EXIT_NO_BMC


class PortBusy(BmcError):
    code = "port_busy"
    exit_code = EXIT_LINK


class LinkGone(BmcError):
    code = "link_gone"
    exit_code = EXIT_LINK


class Timeout(BmcError):
    code = "timeout"
    exit_code = EXIT_LINK


class ProtocolError(BmcError):
    """The BMC answered with something that is not a valid response."""

    code = "protocol"


class KeyFileError(BmcError):
    code = "key_file"
    exit_code = EXIT_USAGE


# -- reported by the BMC -----------------------------------------------------


class BadRequest(BmcError):
    code = wire.BAD_REQUEST


class UnsupportedVersion(BmcError):
    code = wire.UNSUPPORTED_VERSION


class UnknownCommand(BmcError):
    code = wire.UNKNOWN_COMMAND
    exit_code = EXIT_USAGE


class Invalid(BmcError):
    code = wire.INVALID
    exit_code = EXIT_USAGE


class AuthRequired(BmcError):
    code = wire.AUTH_REQUIRED
    exit_code = EXIT_AUTH


class AuthFailed(BmcError):
    code = wire.AUTH_FAILED
    exit_code = EXIT_AUTH


class Forbidden(BmcError):
    code = wire.FORBIDDEN
    exit_code = EXIT_AUTH


class LockedOut(BmcError):
    code = wire.LOCKED_OUT
    exit_code = EXIT_AUTH


class NotAllowed(BmcError):
    code = wire.NOT_ALLOWED
    exit_code = EXIT_NOT_ALLOWED


class PresenceRequired(BmcError):
    code = wire.PRESENCE_REQUIRED
    exit_code = EXIT_NOT_ALLOWED


class NotFound(BmcError):
    code = wire.NOT_FOUND


class Conflict(BmcError):
    code = wire.CONFLICT


class StorageError(BmcError):
    code = wire.STORAGE


class Busy(BmcError):
    code = wire.BUSY


class InternalError(BmcError):
    code = wire.INTERNAL


WIRE_ERRORS: Dict[str, Type[BmcError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnsupportedVersion,
        UnknownCommand,
        Invalid,
        AuthRequired,
        AuthFailed,
        Forbidden,
        LockedOut,
        NotAllowed,
        PresenceRequired,
        NotFound,
        Conflict,
        StorageError,
        Busy,
        InternalError,
    )
}


def from_wire(code: str, message: str, data: Optional[Dict[str, Any]] = None) -> BmcError:
    """The exception for an error response (an unknown code becomes a plain BmcError)."""
    cls = WIRE_ERRORS.get(code)
    if cls is None:
        err = BmcError(f"{code}: {message}", data)
        err.code = code
        return err
    return cls(message, data)
