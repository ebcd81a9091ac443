"""Key files: 64 hex characters and a newline, mode 0600.

A key is 32 random bytes; its id is the first 8 bytes of its SHA-256, in hex. Keys
come only from files (`--key-file` or `BMC_KEY_FILE`), never from a command line.
A key file that group or others may read or write is refused, and so is a symbolic
link (name the file itself).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from typing import Optional

from bmc.hmac256 import HmacKey

from .errors import KeyFileError

KEY_BYTES = 32
ENV_KEY_FILE = "BMC_KEY_FILE"


def key_id_of(secret: bytes) -> str:
    return hashlib.sha256(secret).digest()[:8].hex()


class Key:
    """A secret key: `.key_id` is safe to show, `.secret` is not."""

    __slots__ = ("secret", "key_id", "path", "_hmac")

    def __init__(self, secret: bytes, path: Optional[str] = None) -> None:
        if len(secret) != KEY_BYTES:
            raise KeyFileError(f"a key is {KEY_BYTES} bytes, not {len(secret)}")
        self.secret = bytes(secret)
        self.key_id = key_id_of(self.secret)
        self.path = path
        self._hmac = HmacKey(self.secret)

    @classmethod
    def generate(cls) -> Key:
        return cls(secrets.token_bytes(KEY_BYTES))

    def mac(self, msg: bytes) -> bytes:
        return bytes(self._hmac.mac(msg))

    def hex(self) -> str:
        return self.secret.hex()

    def __repr__(self) -> str:  # never the secret
        return f"Key(id={self.key_id})"


def load_key(path: str) -> Key:
    """Read a key file, refusing one that group or others can read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):  # O_NOFOLLOW
            raise KeyFileError(
                f"key file {path} is a symbolic link: give the file itself"
            ) from None
        raise KeyFileError(f"cannot open key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} can be read or written by others (mode {mode:04o});"
                f" run: chmod 600 {path}"
            )
        raw = os.read(fd, 200)
    finally:
        os.close(fd)
    text = raw.decode("ascii", "replace").strip()
    if len(text) != 2 * KEY_BYTES:
        raise KeyFileError(f"key file {path} must hold {2 * KEY_BYTES} hex characters")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"key file {path} does not hold hex characters") from None
    return Key(secret, path)


def write_new_key(path: str) -> Key:
    """Create `path` (it must not exist) with a new random key, mode 0600."""
    return write_key(path, Key.generate())


def write_key(path: str, key: Key, replace: bool = False) -> Key:
    """Write `key` to a new file `path` with mode 0600.

    With `replace`, an existing file is replaced atomically (temp file, then rename).
    """
    target = path
    if replace:
        path = path + ".new"
        if os.path.lexists(path):
            os.unlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists") from None
    except OSError as e:
        raise KeyFileError(f"cannot create key file {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (key.hex() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(path, target)
    key.path = target
    return key


def load_or_create(path: str) -> tuple[Key, bool]:
    """The key in `path`, or a new one written there; (key, created)."""
    if os.path.lexists(path):
        return load_key(path), False
    return write_new_key(path), True


def key_file_path(explicit: Optional[str]) -> Optional[str]:
    """`--key-file` if given, else `BMC_KEY_FILE`, else None."""
    return explicit or os.environ.get(ENV_KEY_FILE) or None
